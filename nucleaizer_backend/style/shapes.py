"""Database of real nucleus shapes, for synthetic masks (docs/METHOD.md section 4.4).

Each annotated nucleus that lies wholly inside its image is stored in a canonical frame: its
centroid at the centre of a ``size`` x ``size`` binary mask, its major axis (from the second
moments of its pixels) horizontal, scaled as large as fits with a 1 px margin. Its original
equivalent diameter (px), eccentricity and solidity are kept so that shapes can be matched to
the nuclei they stand in for, and :meth:`ShapeDB.render` scales a shape to any equivalent
diameter and angle.

The shipped database (``weights/nucleus_shapes.npz``, :func:`default_shape_db`) is built from
the DSB 2018 training labels by ``scripts/build_shape_db.py``. Files are compressed .npz with
the masks as packed bits and no pickled objects.
"""
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops

from ..errors import NucleaizerError
from ..labels import equivalent_diameters

SHAPE_SIZE = 32  # px per side of the canonical masks
MIN_AREA = 20  # px; smaller annotations are too coarse to be shapes
MAX_SHAPES = 3000
DEFAULT_SHAPE_DB = Path(__file__).resolve().parent.parent / "weights" / "nucleus_shapes.npz"
MATCH_CANDIDATES = 20  # sample() draws among this many best-matching shapes
ECCENTRICITY_TOLERANCE = 0.05  # eccentricity difference worth one log(1.5) of diameter ratio


def interior_labels(labels):
    """Copy of (H, W) ``labels`` with the nuclei that touch the image border set to 0."""
    labels = np.asarray(labels)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    out = labels.copy()
    out[np.isin(labels, border[border > 0])] = 0
    return out


def interior_nuclei(labels, min_area=MIN_AREA):
    """Nuclei of (H, W) ``labels`` that do not touch its border and cover >= ``min_area`` px:
    (skimage regionprops list, equivalent diameters (n,) px), in label order."""
    inner = interior_labels(labels)
    regions = regionprops(inner)
    diameters = equivalent_diameters(inner)
    keep = [i for i, r in enumerate(regions) if r.area >= min_area]
    return [regions[i] for i in keep], diameters[keep]


def canonical_mask(coords, size=SHAPE_SIZE):
    """(size, size) bool mask of the nucleus with pixel coordinates ``coords`` (n, 2) (row,
    col): centroid at the centre, major axis horizontal, scaled to fit with a 1 px margin."""
    coords = np.asarray(coords, np.float64)
    centre = coords.mean(0)
    _, vectors = np.linalg.eigh(np.cov((coords - centre).T, bias=True) + 1e-9 * np.eye(2))
    minor, major = vectors[:, 0], vectors[:, 1]  # (row, col) unit vectors
    offsets = coords - centre
    half_extent = max(np.abs(offsets @ major).max(), np.abs(offsets @ minor).max()) + 0.75
    step = half_extent / (size / 2.0 - 1.0)  # original px per canonical px
    # the nucleus as a float image around its centroid, to sample from
    lo = np.floor(coords.min(0)).astype(int) - 1
    image = np.zeros(np.ptp(coords, axis=0).astype(int) + 3, np.float32)
    image[tuple((coords - lo).astype(int).T)] = 1.0
    grid = np.arange(size) - (size - 1) / 2.0
    v, u = np.meshgrid(grid, grid, indexing="ij")  # canonical row (minor), column (major)
    rows = centre[0] - lo[0] + step * (u * major[0] + v * minor[0])
    cols = centre[1] - lo[1] + step * (u * major[1] + v * minor[1])
    mask = ndimage.map_coordinates(image, [rows, cols], order=1, cval=0.0) >= 0.5
    return largest_component(mask)


def largest_component(mask):
    """The largest 4-connected component of a bool mask (the mask itself when empty)."""
    parts, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))


@dataclass
class ShapeDB:
    """Canonical nucleus shapes.

    masks: (n, size, size) bool; diameter_px, eccentricity, solidity: (n,) float32 of the
    original nuclei (equivalent diameter in px); source: str -> str/int, what they came from.
    """

    masks: np.ndarray
    diameter_px: np.ndarray
    eccentricity: np.ndarray
    solidity: np.ndarray
    source: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.masks)

    @property
    def size(self):
        return self.masks.shape[-1]

    def save(self, path):
        """Write a compressed .npz: masks as packed bits, the rest as plain arrays."""
        n, size = len(self.masks), self.size
        np.savez_compressed(
            path, bits=np.packbits(self.masks.reshape(n, size * size), axis=1),
            size=np.int32(size), diameter_px=self.diameter_px.astype(np.float32),
            eccentricity=self.eccentricity.astype(np.float32),
            solidity=self.solidity.astype(np.float32),
            source_keys=np.asarray(list(self.source), dtype=str),
            source_values=np.asarray([str(v) for v in self.source.values()], dtype=str))

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save` (no pickle)."""
        try:
            with np.load(path, allow_pickle=False) as f:
                size = int(f["size"])
                n = len(f["bits"])
                masks = np.unpackbits(f["bits"], axis=1, count=size * size).reshape(n, size, size)
                source = {str(k): _number_or_text(str(v))
                          for k, v in zip(f["source_keys"], f["source_values"])}
                return cls(masks.astype(bool), f["diameter_px"], f["eccentricity"],
                           f["solidity"], source)
        except (OSError, KeyError, ValueError) as e:
            raise NucleaizerError(f"{path}: not a nucleus shape database ({e})") from None

    def sample(self, rng, diameter_px, eccentricity=None, n=1):
        """Indices (n,) of shapes for a nucleus of ``diameter_px`` (px) and, when given,
        ``eccentricity``: drawn uniformly among the MATCH_CANDIDATES shapes nearest in
        (eccentricity, log diameter), eccentricity weighing most."""
        if len(self) == 0:
            raise NucleaizerError("the nucleus shape database is empty")
        cost = (np.log(self.diameter_px / max(float(diameter_px), 1e-6)) / np.log(1.5)) ** 2
        if eccentricity is not None:
            cost = cost + ((self.eccentricity - eccentricity) / ECCENTRICITY_TOLERANCE) ** 2
        best = np.argsort(cost, kind="stable")[:MATCH_CANDIDATES]
        return best[rng.integers(len(best), size=n)]

    def render(self, shape_index, diameter_px, angle_rad=0.0):
        """Shape ``shape_index`` scaled to equivalent diameter ``diameter_px`` (px), its major
        axis at ``angle_rad`` counter-clockwise from the x axis (as displayed, rows down).

        Returns an (h, h) bool mask, h odd, with the nucleus centroid at the centre pixel.
        """
        canonical = self.masks[shape_index].astype(np.float32)
        size = self.size
        zoom = np.sqrt(np.pi * diameter_px ** 2 / 4.0 / max(canonical.sum(), 1.0))
        half = int(np.ceil(size / np.sqrt(2.0) * zoom)) + 1
        dy, dx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
        c, s = np.cos(angle_rad), np.sin(angle_rad)
        u = (c * dx - s * dy) / zoom  # along the major axis (canonical column)
        v = (s * dx + c * dy) / zoom  # along the minor axis (canonical row)
        centre = (size - 1) / 2.0
        mask = ndimage.map_coordinates(canonical, [centre + v, centre + u], order=1) >= 0.5
        mask[half, half] = True  # never empty, even for a 1 px nucleus
        return largest_component(mask)


def _number_or_text(text):
    try:
        return int(text)
    except ValueError:
        return text


def build_shape_db(label_images, size=SHAPE_SIZE, max_shapes=MAX_SHAPES, min_area=MIN_AREA,
                   seed=0, source=None):
    """Shape database from annotated (H, W) label images (any iterable, read one at a time).

    Nuclei touching their image's border or smaller than ``min_area`` px are skipped; when
    more than ``max_shapes`` remain, a uniform random subset is kept (reservoir sampling with
    a fixed ``seed``), so images contribute in proportion to their nuclei. ``source``: dict
    recorded in the file (images and shapes are added).
    """
    rng = np.random.default_rng(seed)
    kept = []  # (canonical mask, diameter px, eccentricity, solidity)
    seen = n_images = 0
    for labels in label_images:
        n_images += 1
        regions, diameters = interior_nuclei(labels, min_area)
        for region, diameter in zip(regions, diameters):
            slot = len(kept) if len(kept) < max_shapes else int(rng.integers(seen + 1))
            seen += 1
            if slot < max_shapes:
                item = (canonical_mask(region.coords, size), diameter, region.eccentricity,
                        region.solidity)
                kept[slot:slot + 1] = [item]
    info = {"images": n_images, "shapes": len(kept), "nuclei_eligible": seen,
            "min_area_px": min_area}
    info.update(source or {})
    masks = np.asarray([k[0] for k in kept], bool).reshape(len(kept), size, size)
    d, ecc, sol = (np.asarray([k[i] for k in kept], np.float32) for i in (1, 2, 3))
    return ShapeDB(masks, d, ecc, sol, info)


@lru_cache(maxsize=1)
def default_shape_db():
    """The shipped shape database (weights/nucleus_shapes.npz), loaded once."""
    if not DEFAULT_SHAPE_DB.is_file():
        raise NucleaizerError(f"{DEFAULT_SHAPE_DB}: shipped nucleus shape database missing "
                              "(build it with scripts/build_shape_db.py)")
    return ShapeDB.load(DEFAULT_SHAPE_DB)
