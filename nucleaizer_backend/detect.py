"""Detection at the working scale: rescale, tile, Mask R-CNN, merge, paint labels.

Coordinates: the *original* image is what the user gave; the *working* image is the original
rescaled by ``scale`` (px_working = scale * px_original) so that nuclei have the size the
model was trained at. Label images are always returned in the original geometry: masks are
pasted straight from the working-scale boxes into the original pixel grid (the one
resize-back of the project, in ``labels.instances_to_labels``).
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import NucleaizerError
from .labels import instances_to_labels
from .models.maskrcnn import predict_raw

DEFAULT_TILE = 2048  # px at the working scale (a 520x696 image at 2.5x fits in one tile)
DEFAULT_OVERLAP = 128  # px; >= 2 nucleus diameters at the 40 px working size


@dataclass
class Detections:
    """Detections at the working scale: boxes (N, 4) x0 y0 x1 y1, scores (N,), masks (N, M, M)."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    scale: float
    shape: tuple  # original (H, W)

    def __len__(self):
        return len(self.scores)

    def to_labels(self, confidence=0.5, min_area=1, with_probability=False):
        keep = self.scores >= confidence
        return instances_to_labels(self.boxes[keep], self.masks[keep], self.scores[keep],
                                   self.shape, self.scale, min_area, with_probability)


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


def owned_ranges(starts, tile, length):
    """Half-open [lo, hi) range each tile owns: boundaries at the middle of each overlap."""
    bounds = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        bounds.append((b + min(a + tile, length)) / 2.0)
    bounds.append(float(length))
    return list(zip(bounds[:-1], bounds[1:]))


def detect(model, image, scale, device, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
           batch_size=1, min_score=0.05):
    """Run ``model`` on a normalised (H, W, 3) image rescaled by ``scale``.

    Images larger than ``tile`` px (working scale) are cut into overlapping tiles; a detection
    belongs to the tile that owns its box centre, so nuclei cut by one tile's border are taken
    whole from the neighbour and none is found twice. Detections scoring below ``min_score``
    are not kept.
    """
    x = rescale_image(image, scale, device)
    _, hs, ws = x.shape
    ys, xs = tile_starts(hs, tile, overlap), tile_starts(ws, tile, overlap)
    own_y, own_x = owned_ranges(ys, tile, hs), owned_ranges(xs, tile, ws)
    jobs = [(y0, x0, oy, ox) for y0, oy in zip(ys, own_y) for x0, ox in zip(xs, own_x)]
    boxes, scores, masks = [], [], []
    use_amp = device.type == "cuda"
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        crops = [x[:, y0:y0 + tile, x0:x0 + tile] for y0, x0, _, _ in chunk]
        with torch.autocast(device.type, enabled=use_amp):
            outs = predict_raw(model, crops, min_score)
        for (y0, x0, (ly, hy), (lx, hx)), out in zip(chunk, outs):
            b = out["boxes"].float().cpu().numpy() + [x0, y0, x0, y0]
            cy, cx = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
            keep = (cy >= ly) & (cy < hy) & (cx >= lx) & (cx < hx)
            boxes.append(b[keep])
            scores.append(out["scores"].float().cpu().numpy()[keep])
            masks.append(out["masks"].float().cpu().numpy()[keep])
    m = masks[0].shape[-1] if masks and masks[0].ndim == 3 else 28
    return Detections(
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        masks=np.concatenate(masks) if masks else np.zeros((0, m, m), np.float32),
        scale=float(scale),
        shape=tuple(image.shape[:2]),
    )
