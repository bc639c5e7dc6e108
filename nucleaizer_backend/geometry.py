"""Geometry of the working scale: choosing the scale, rescaling images and maps, tiling.

Coordinates: the *original* image is what the user gave; the *working* image is the original
rescaled by ``scale`` (px_working = scale * px_original) so that nuclei have the size the
model was trained at. Label images are always returned in the original geometry: masks are
pasted straight from the working-scale boxes into the original pixel grid (the one
resize-back of the project, in ``labels.instances_to_labels``); probability maps are resized
back with ``map_to_original``.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .errors import NucleaizerError

SCALE_RANGE = (0.05, 10.0)  # working / original; outside it the scale is clamped
MAX_WORKING_PIXELS = 64e6  # bigger working images are scaled down (clamped) to this
DEFAULT_OVERLAP = 128  # px of tile overlap; >= 2 nucleus diameters at the 40 px working size


def choose_scale(diameter, working, shape):
    """Scale that brings nuclei of ``diameter`` px to the working size ``working``: a
    diameter in px, or a (min px, max px) range within which nuclei are not rescaled
    (smaller ones are enlarged to min, larger ones shrunk to max). Clamped to SCALE_RANGE
    and to MAX_WORKING_PIXELS for an image of ``shape`` (H, W, ...).

    Returns (scale, clamped)."""
    low, high = (working, working) if np.isscalar(working) else working
    wanted = float(np.clip(diameter, low, high)) / diameter
    scale = float(np.clip(wanted, *SCALE_RANGE))
    limit = np.sqrt(MAX_WORKING_PIXELS / float(shape[0] * shape[1]))
    scale = min(scale, limit)
    return scale, not np.isclose(scale, wanted)


def _resize(x, size):
    """Bilinear resize of a (C, H, W) tensor to ``size`` = (h, w) (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=shrink)[0]


def working_size(shape, scale):
    """(h, w) of an image of ``shape`` (H, W, ...) rescaled by ``scale``."""
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def rescale_image(image, scale, device):
    """(H, W, 3) float image -> (3, round(H*scale), round(W*scale)) tensor on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return _resize(x.to(device), working_size(image.shape, scale))


def map_to_original(x, shape):
    """A (h, w) working-scale map tensor (e.g. a probability) -> (H, W) float32 numpy array
    in the original geometry ``shape``."""
    return _resize(x[None].float(), tuple(shape[:2]))[0].cpu().numpy()


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of ``tile`` px covering ``length`` px with >= ``overlap`` px overlap."""
    if tile <= overlap:  # no tiling could keep the overlap (and nothing would be covered)
        raise NucleaizerError(f"tile size ({tile} px) must be larger than the tile overlap "
                              f"({overlap} px)")
    if length <= tile:
        return [0]
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def tiling(length, tile, overlap):
    """(start offsets, tile length) of the tiles covering ``length`` px: as many as tiles of
    ``tile`` px need (tile_starts), each shrunk to the least length that still keeps
    ``overlap`` px between neighbours, so that an image just over one tile is not segmented
    as four whole tiles (a 2150 px side: 2 tiles of 1139 px, not 2 of 2048)."""
    n = len(tile_starts(length, tile, overlap))
    if n > 1:
        tile = min(tile, -(-(length + (n - 1) * overlap) // n))
    return tile_starts(length, tile, overlap), tile


def owned_ranges(starts, tile, length):
    """Half-open [lo, hi) range each tile owns: boundaries at the middle of each overlap."""
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        bounds.append((b + min(a + tile, length)) / 2.0)
    bounds.append(float(length))
    return list(zip(bounds[:-1], bounds[1:]))
