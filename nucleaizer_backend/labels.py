"""Instance labels: Mask R-CNN detections -> a label image, and per-object geometry.

A label image is a 2D integer array, 0 = background, one positive id per nucleus, no overlaps.
"""
import numpy as np
from scipy import ndimage

# A detection keeps its label only if at least this fraction of its mask is not already
# claimed by a more confident one (otherwise it is a duplicate or a fragment).
MIN_VISIBLE_FRACTION = 0.5


def equivalent_diameters(labels):
    """Equivalent diameter sqrt(4 * area / pi) in px of every object of ``labels`` (1D array)."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / np.pi)


def relabel_sequential(labels):
    """Ids 1..N in order of first appearance of the old ids (sorted), dtype kept small."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int64)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels].astype(label_dtype(len(ids)))


def label_dtype(n_objects):
    """uint16 while ids fit, else uint32."""
    return np.uint16 if n_objects < 65535 else np.uint32


def _interpolation_matrix(n_out, start, stop, n_in):
    """(n_out, n_in) bilinear weights mapping ``n_in`` samples spread over [start, stop) in
    output pixel coordinates onto output pixels 0..n_out-1 (zero outside)."""
    centres = (np.arange(n_out) + 0.5 - start) / max(stop - start, 1e-6) * n_in - 0.5
    lo = np.floor(centres).astype(np.int64)
    frac = centres - lo
    w = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    for idx, weight in ((lo, 1.0 - frac), (lo + 1, frac)):
        ok = (idx >= 0) & (idx < n_in)
        w[rows[ok], idx[ok]] += weight[ok]
    return w


def paste_mask(mask, box, shape):
    """Resample an (M, M) mask probability that covers ``box`` = (x0, y0, x1, y1) (px, in the
    output frame) onto the output pixel grid. Returns (y0, x0, probabilities (h, w))."""
    x0, y0, x1, y1 = (float(v) for v in box)
    iy0, ix0 = max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0)
    iy1, ix1 = min(int(np.ceil(y1)), shape[0]), min(int(np.ceil(x1)), shape[1])
    if iy1 <= iy0 or ix1 <= ix0:
        return iy0, ix0, np.zeros((0, 0), np.float32)
    m = mask.shape[0]
    wy = _interpolation_matrix(iy1 - iy0, y0 - iy0, y1 - iy0, m)
    wx = _interpolation_matrix(ix1 - ix0, x0 - ix0, x1 - ix0, mask.shape[1])
    return iy0, ix0, wy @ mask.astype(np.float32) @ wx.T


def instances_to_labels(boxes, masks, scores, shape, scale=1.0, min_area=1,
                        with_probability=False):
    """Paint detections into a label image of ``shape`` (the original image geometry).

    boxes: (N, 4) x0, y0, x1, y1 in px of the *working* image (the original scaled by
    ``scale``); masks: (N, M, M) mask probabilities in those boxes; scores: (N,).
    Detections are painted from the most confident down; each keeps only unclaimed pixels
    and is dropped when less than MIN_VISIBLE_FRACTION of it remains or fewer than
    ``min_area`` px (original scale). Only the largest connected part of each is kept.

    Returns (labels (H, W) uint16/uint32, kept_scores (K,) where kept_scores[i] belongs to
    label i + 1, probability (H, W) float32 max mask probability or None).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) / scale
    order = np.argsort(-np.asarray(scores), kind="stable")
    labels = np.zeros(shape, np.uint32)
    prob = np.zeros(shape, np.float32) if with_probability else None
    kept = []
    for i in order:
        y0, x0, p = paste_mask(masks[i], boxes[i], shape)
        if p.size == 0:
            continue
        h, w = p.shape
        if prob is not None:
            np.maximum(prob[y0:y0 + h, x0:x0 + w], p, out=prob[y0:y0 + h, x0:x0 + w])
        fg = p > 0.5
        area = int(fg.sum())
        if area == 0:
            continue
        region = labels[y0:y0 + h, x0:x0 + w]
        free = fg & (region == 0)
        n_free = int(free.sum())
        if n_free < max(min_area, MIN_VISIBLE_FRACTION * area):
            continue
        parts, n_parts = ndimage.label(free)
        if n_parts > 1:
            sizes = np.bincount(parts.ravel())[1:]
            free = parts == (1 + int(np.argmax(sizes)))
            if sizes.max() < min_area:
                continue
        kept.append(float(scores[i]))
        region[free] = len(kept)
    n = len(kept)
    return labels.astype(label_dtype(n)), np.asarray(kept, np.float32), prob


def touching_border(labels):
    """Ids (sorted 1D array) of the objects of ``labels`` with a pixel on the image edge."""
    labels = np.asarray(labels)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    ids = np.unique(edge)
    return ids[ids != 0]


def outside_diameter_range(labels, min_px, max_px):
    """Ids of the objects of ``labels`` whose equivalent diameter (px) is under ``min_px``
    or over ``max_px``: IdentifyPrimaryObjects' rule, on areas pi * d^2 / 4."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))
    ids = np.nonzero(areas)[0]
    ids = ids[ids != 0]
    a = areas[ids]
    return ids[(a < np.pi * min_px ** 2 / 4) | (a > np.pi * max_px ** 2 / 4)]


def check_diameter_range(diameter_range, name="diameter range"):
    """(min px, max px) as floats; OptionError unless 0 <= min <= max (finite)."""
    from .errors import OptionError

    try:
        low, high = (float(v) for v in diameter_range)
    except (TypeError, ValueError):
        raise OptionError(f"{name} must be two numbers, MIN MAX in px (got "
                          f"{diameter_range!r})") from None
    if not (0 <= low <= high < np.inf):
        raise OptionError(f"{name} must be 0 <= MIN <= MAX px (got {low:g}, {high:g})")
    return low, high


def discard_objects(labels, scores, border=False, diameter_range=None):
    """IdentifyPrimaryObjects' two filters, in its order: objects whose equivalent diameter
    lies outside ``diameter_range`` = (min px, max px), then objects touching the image
    border (``border``).

    labels: (H, W) label image; scores: (N,) score of label i + 1 at index i.
    Returns (labels relabelled 1..K, scores (K,), {"size": n discarded, "border": n})."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float32)
    counts = {"size": 0, "border": 0}
    drop = np.zeros(int(labels.max()) + 1 if labels.size else 1, bool)
    if diameter_range is not None:
        ids = outside_diameter_range(labels, *check_diameter_range(diameter_range))
        drop[ids], counts["size"] = True, len(ids)
    if border:
        ids = touching_border(labels)
        ids = ids[~drop[ids]]
        drop[ids], counts["border"] = True, len(ids)
    if not drop.any():
        return labels, scores, counts
    kept = np.nonzero(~drop[1:len(scores) + 1])[0]
    out = labels.copy()
    out[drop[labels]] = 0
    return relabel_sequential(out), scores[kept], counts
