"""Post-processing of Mask R-CNN labels: the p1..p6 rules and U-Net contour correction
(docs/METHOD.md section 2.6; nucleAIzer Online Methods 2.2.2). Pure numpy: the U-Net's
probability comes from foreground.py.

All rules work on a label image in the *original* geometry with its per-object scores
(``scores[i]`` belongs to label ``i + 1``) and return a new (labels, scores) pair numbered
1..N. Areas and margins are given at the 40 px working scale, as in the paper, and converted
with ``scale`` (working px per original px): an area of p2 working px^2 is p2 / scale^2
original px^2; a margin of p4 working px is max(1, round(p4 / scale)) original px.

Order (``refine``): contained objects -> merge surrounded (p1) -> small objects (p2) -> U-Net
contour correction (p3, p4, p5) -> objects the U-Net does not believe in (p6).
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from .errors import OptionError
from .labels import label_dtype

#: allowed values of each parameter: (lowest, highest or None for no upper limit); units as
#: in PostprocessParams (fractions, probabilities, px^2 and px at the working scale)
PARAM_RANGES = {"p1": (0.0, 1.0), "p2": (0.0, None), "p3": (0.0, 1.0), "p4": (0.0, None),
                "p5": (0.0, None), "p6": (0.0, 1.0), "confidence": (0.0, 1.0)}


def allowed_range(name):
    """The allowed values of parameter ``name`` in words, e.g. "a number from 0 to 1"."""
    low, high = PARAM_RANGES[name]
    return f"a number from {low:g} to {high:g}" if high is not None else f"a number >= {low:g}"


def check_param(name, value, label=None):
    """``value`` of post-processing parameter ``name`` (p1..p6, confidence) as a float;
    OptionError, one line naming the parameter (as ``label``, default ``name``) and its
    allowed range, when it is not a finite number in PARAM_RANGES."""
    low, high = PARAM_RANGES[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < low or (
            high is not None and number > high):
        raise OptionError(f"{label or name} must be {allowed_range(name)} (got {value!r})")
    return number


@dataclass
class PostprocessParams:
    """The post-processing parameters; defaults are the paper's (tuned there on DSB).

    p1: merge an object into a neighbour touching more than this fraction of its perimeter;
    p2: minimum object area (px^2 at the working scale); p3: U-Net foreground threshold;
    p4, p5: contour margins inwards / outwards (px at the working scale) within which the
    contour follows the U-Net; p6: minimum mean U-Net probability of an object;
    confidence: minimum Mask R-CNN detection score.
    """

    p1: float = 0.17
    p2: float = 44.0
    p3: float = 0.9375
    p4: float = 1.0
    p5: float = 1.0
    p6: float = 0.8
    confidence: float = 0.5

    @classmethod
    def from_dict(cls, d):
        """The parameters of dict ``d`` (other keys ignored), each checked by check_param
        (OptionError naming the first one out of its range)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: check_param(k, v) for k, v in (d or {}).items() if k in names})

    def to_dict(self):
        return asdict(self)


# -- label bookkeeping ----------------------------------------------------------------------

def apply_lut(labels, scores, lut):
    """Relabel with ``lut`` (old id -> new id, 0 = removed; several old ids may share a new
    one) and renumber 1..N. A merged object keeps the highest score of its parts."""
    lut = np.asarray(lut, np.int64)
    lut[0] = 0
    ids = np.unique(lut[lut > 0])
    final = np.zeros(int(lut.max()) + 1, np.int64)
    final[ids] = np.arange(1, len(ids) + 1)
    lut = final[lut]
    new_scores = np.zeros(len(ids), np.float32)
    old = np.arange(1, len(lut))
    np.maximum.at(new_scores, lut[1:][lut[1:] > 0] - 1, np.asarray(scores)[old[lut[1:] > 0] - 1])
    return lut[labels].astype(label_dtype(len(ids))), new_scores


def object_areas(labels, n):
    """Area in px of objects 1..n as an (n + 1,) array (index 0 = background)."""
    return np.bincount(labels.ravel(), minlength=n + 1)[: n + 1]


def contacts(labels):
    """Touching object pairs and perimeters (4-connectivity).

    Returns (perimeter (n + 1,): pixel edges of each object facing anything else, image border
    excluded; pairs (K, 2) of touching ids a != b, both directions; shared (K,): pixel edges
    that a shares with b).
    """
    n = int(labels.max()) if labels.size else 0
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()]).astype(np.int64)
    diff = a != b
    a, b = a[diff], b[diff]
    a, b = np.concatenate([a, b]), np.concatenate([b, a])  # each edge seen from both sides
    perimeter = np.bincount(a, minlength=n + 1)
    both = (a > 0) & (b > 0)
    codes, shared = np.unique(a[both] * (n + 1) + b[both], return_counts=True)
    pairs = np.stack([codes // (n + 1), codes % (n + 1)], axis=1)
    return perimeter, pairs, shared


# -- the rules ------------------------------------------------------------------------------

def keep_confident(labels, scores, confidence):
    """Remove objects scoring below ``confidence`` (0-1); renumbered."""
    scores = np.asarray(scores)
    lut = np.arange(len(scores) + 1)
    lut[1:][scores < confidence] = 0
    return apply_lut(labels, scores, lut)


def restrict_to_mask(labels, scores, mask):
    """Keep objects with at least half their area inside ``mask`` ((H, W) bool), clipped to
    it; renumbered."""
    n = len(scores)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    inside = np.bincount(labels[mask].ravel(), minlength=n + 1)
    keep = (inside >= 0.5 * np.maximum(area, 1)) & (inside > 0)
    keep[0] = False
    lut = np.zeros(n + 1, np.int64)
    lut[keep] = np.arange(1, keep.sum() + 1)
    out = lut[labels]
    out[~mask] = 0
    return out.astype(label_dtype(int(keep.sum()))), scores[keep[1:]]


def merge_into_neighbours(labels, scores, min_fraction):
    """Merge every object into the neighbour that touches more than ``min_fraction`` of its
    perimeter (the larger of the two absorbs the smaller). ``min_fraction`` = 1 - 1e-9 merges
    only objects enclosed by one other object (the "contained objects" rule)."""
    n = len(scores)
    if n < 2:
        return labels, scores
    perimeter, pairs, shared = contacts(labels)
    area = object_areas(labels, n)
    frac = shared / np.maximum(perimeter[pairs[:, 0]], 1)
    parent = np.arange(n + 1)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # the smallest objects first, each into the neighbour with the largest shared fraction
    best = {}
    for (a, b), f in zip(pairs, frac):
        if f > min_fraction and area[a] <= area[b] and f > best.get(a, (0, -1))[1]:
            best[a] = (b, f)
    for a in sorted(best, key=lambda i: area[i]):
        ra, rb = root(a), root(best[a][0])
        if ra != rb:
            parent[ra] = rb
    lut = np.array([root(i) for i in range(n + 1)])
    return apply_lut(labels, scores, lut)


def remove_contained(labels, scores):
    """Objects lying entirely inside another object become part of it."""
    return merge_into_neighbours(labels, scores, 1.0 - 1e-9)


def remove_small(labels, scores, min_area):
    """Remove objects smaller than ``min_area`` px (original geometry)."""
    n = len(scores)
    lut = np.arange(n + 1)
    lut[object_areas(labels, n) < min_area] = 0
    return apply_lut(labels, scores, lut)


def inner_band(labels, width):
    """Pixels of objects within ``width`` px (chessboard distance) of their contour, i.e. with
    one of their 8 neighbours in the background or another object (the image border is not a
    contour), as an (H, W) bool array."""
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    edge = np.zeros(labels.shape, bool)
    for dy in range(3):
        for dx in range(3):
            edge |= padded[dy:dy + h, dx:dx + w] != labels
    edge &= labels > 0
    if width <= 1:
        return edge
    dist = ndimage.distance_transform_cdt(~edge, metric="chessboard")
    return (dist < width) & (labels > 0)


def correct_contours(labels, scores, prob, threshold, inward, outward):
    """Move contours to follow the U-Net: within ``inward`` px inside an object, pixels with
    foreground probability below ``threshold`` are removed; within ``outward`` px outside
    (chessboard distance), free pixels at or above it join the nearest object. Margins in
    original px (>= 1)."""
    if len(scores) == 0:
        return labels, scores
    out = labels.copy()
    if inward > 0:
        out[inner_band(labels, inward) & (prob < threshold)] = 0
    if outward > 0:
        dist, (iy, ix) = ndimage.distance_transform_cdt(labels == 0, metric="chessboard",
                                                        return_indices=True)
        grow = (labels == 0) & (dist <= outward) & (prob >= threshold)
        out[grow] = labels[iy[grow], ix[grow]]
    return largest_parts(out, scores)


def largest_parts(labels, scores):
    """Keep only the largest connected part of each object (and drop emptied objects)."""
    n = len(scores)
    out = labels.copy()
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if sl is None:
            continue
        obj = labels[sl] == i
        parts, k = ndimage.label(obj)
        if k > 1:
            sizes = np.bincount(parts.ravel())[1:]
            out[sl][obj & (parts != 1 + int(np.argmax(sizes)))] = 0
    return apply_lut(out, scores, np.arange(n + 1))


def remove_unconfident(labels, scores, prob, min_mean):
    """Remove objects whose mean U-Net foreground probability is below ``min_mean``."""
    n = len(scores)
    area = object_areas(labels, n)
    total = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n + 1)[: n + 1]
    lut = np.arange(n + 1)
    lut[total < min_mean * np.maximum(area, 1)] = 0
    return apply_lut(labels, scores, lut)


def apply_rules(labels, scores, scale, params):
    """The rules that need no U-Net: contained objects, p1 merges, p2 minimum area."""
    labels, scores = remove_contained(labels, scores)
    labels, scores = merge_into_neighbours(labels, scores, params.p1)
    return remove_small(labels, scores, params.p2 / scale ** 2)


def apply_unet(labels, scores, prob, scale, params):
    """U-Net contour correction (p3, p4, p5), then removal of unconfirmed objects (p6)."""
    margin = lambda px: max(1, int(round(px / scale))) if px > 0 else 0  # noqa: E731
    labels, scores = correct_contours(labels, scores, prob, params.p3, margin(params.p4),
                                      margin(params.p5))
    return remove_unconfident(labels, scores, prob, params.p6)


def refine(labels, scores, scale, params, prob=None):
    """All post-processing; the U-Net steps run when ``prob`` (H, W) is given."""
    labels, scores = apply_rules(labels, scores, scale, params)
    if prob is not None:
        labels, scores = apply_unet(labels, scores, prob, scale, params)
    return labels, scores

