"""Nucleus size estimation with the preseg network (docs/METHOD.md section 2.2).

The image's nucleus size is the median equivalent diameter sqrt(4 * area / pi) (px, original
image) of the preseg network's confident detections that look like single nuclei (solidity
>= ``SINGLE_SOLIDITY``: two nuclei detected as one make a concave outline and would count as
one big nucleus). preseg is trained on nuclei of about
12-100 px; when the first pass (native scale, or the scale that finds most nuclei) puts the
size outside its most accurate range, a second pass runs at the scale that brings nuclei to
``REFINE_DIAMETER`` px and its estimate is used.
"""
from dataclasses import dataclass, field

import numpy as np
from skimage.measure import regionprops_table

from .detect import detect
from .labels import equivalent_diameters

DEFAULT_DIAMETER = 20.0  # px; used (and flagged) when too few nuclei are found
SIZE_CONFIDENCE = 0.5  # preseg detections measured for the size (independent of the main
# network's tuned detection confidence)
MIN_NUCLEI = 5
# px; 20 instead of 32 since 2026-12-05: the same share within +-20% on val and train, 24%
# less time on val (research/experiments/size-passes/README.md)
REFINE_DIAMETER = 20.0
COMFORT_RANGE = (18.0, 70.0)  # px at the scale preseg ran at
SEARCH_SCALES = (2.5, 0.4)  # tried when the native scale finds fewer than MIN_NUCLEI
# chosen on 482 train images (within +-20%: 92.5% with every detection, 92.9% at 0.9, 92.7% at
# 0.88, 92.1% at 0.92), then checked on val (research/experiments/size-estimate-variants.md)
SINGLE_SOLIDITY = 0.9


@dataclass
class SizeEstimate:
    """Typical nucleus size of an image (or a pooled group of images).

    median_diameter: px in the original image; spread: interquartile range / median of the
    diameters (0 = all equal); count: nuclei measured (those that look like single nuclei,
    see the module doc; ``labels`` holds every nucleus found); reliable: False when fewer than
    MIN_NUCLEI nuclei were found (median_diameter is then DEFAULT_DIAMETER when none was
    found); diameters: every measured diameter (px), kept for pooling; labels: preseg's nuclei
    as an (H, W) label image of the original geometry, when asked for.
    """

    median_diameter: float
    spread: float
    count: int
    reliable: bool
    diameters: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    labels: np.ndarray = field(default=None, repr=False)

    @classmethod
    def from_diameters(cls, diameters, default=DEFAULT_DIAMETER):
        d = np.asarray(diameters, float)
        if len(d) < MIN_NUCLEI:
            median = float(np.median(d)) if len(d) else default
            return cls(default if len(d) == 0 else median, float("nan"), len(d), False, d)
        q1, med, q3 = np.percentile(d, [25, 50, 75])
        return cls(float(med), float((q3 - q1) / med), len(d), True, d)

    @classmethod
    def pooled(cls, estimates):
        """One estimate for a group of images from all their nuclei together."""
        diameters = [e.diameters for e in estimates if len(e.diameters)]
        return cls.from_diameters(np.concatenate(diameters) if diameters else [])

    def to_dict(self):
        """The estimate without its labels, as a JSON-serialisable dict (see from_dict)."""
        return {
            "median_diameter": float(self.median_diameter),
            "spread": float(self.spread),
            "count": int(self.count),
            "reliable": bool(self.reliable),
            "diameters": [float(v) for v in np.asarray(self.diameters).ravel()],
        }

    @classmethod
    def from_dict(cls, d):
        """The estimate that to_dict made ``d`` of (without labels)."""
        return cls(
            d["median_diameter"],
            d["spread"],
            d["count"],
            d["reliable"],
            np.asarray(d["diameters"], float),
        )


def nuclei_at_scale(network, image, scale, device, confidence):
    """preseg's nuclei with the image at ``scale``: (labels in the original geometry,
    their equivalent diameters in px of the original image)."""
    dets = detect(network, image, scale, device, min_score=confidence)
    labels, _, _ = dets.to_labels(confidence)
    return labels, equivalent_diameters(labels)


def single_nucleus_diameters(labels):
    """Equivalent diameters (px) of the objects of ``labels`` with solidity >=
    SINGLE_SOLIDITY; of every object when fewer than MIN_NUCLEI qualify."""
    if labels.max() == 0:
        return np.zeros(0)
    diameters = equivalent_diameters(labels)  # by id, like regionprops_table
    single = regionprops_table(labels, properties=("solidity",))["solidity"] >= SINGLE_SOLIDITY
    return diameters[single] if single.sum() >= MIN_NUCLEI else diameters


def comfortable(diameters, scale):
    """True when ``diameters`` (px, original image) found at ``scale`` are enough nuclei
    (MIN_NUCLEI) whose median lies in preseg's COMFORT_RANGE at that scale."""
    return len(diameters) >= MIN_NUCLEI and \
        COMFORT_RANGE[0] <= np.median(diameters) * scale <= COMFORT_RANGE[1]


def find_nuclei(network, image, device, confidence=SIZE_CONFIDENCE,
                refine_diameter=REFINE_DIAMETER):
    """preseg's nuclei of a normalised (H, W, 3) image, found in up to two passes (see the
    module doc): (labels (H, W) of every nucleus found, diameters (px, original image) of
    those measured: single_nucleus_diameters). refine_diameter: px to which the second pass
    brings nuclei found outside the comfort range."""
    scale = 1.0
    labels, d = nuclei_at_scale(network, image, scale, device, confidence)
    if len(d) < MIN_NUCLEI:
        for s in SEARCH_SCALES:
            found = nuclei_at_scale(network, image, s, device, confidence)
            if len(found[1]) > len(d):
                scale, (labels, d) = s, found
    if len(d) >= MIN_NUCLEI and not comfortable(d, scale):
        s = float(np.clip(refine_diameter / np.median(d), 0.1, 6.0))
        found = nuclei_at_scale(network, image, s, device, confidence)
        if len(found[1]) >= MIN_NUCLEI:
            labels, d = found
    return labels, single_nucleus_diameters(labels)


def estimate_diameters(network, image, device, confidence=SIZE_CONFIDENCE):
    """Diameters (px, original) of preseg's nuclei of a normalised (H, W, 3) image."""
    return find_nuclei(network, image, device, confidence)[1]
