"""Synthetic nucleus masks that mimic a style cluster's nuclei (docs/METHOD.md section 4.4).

:func:`measure_nuclei` measures a cluster's (preseg or annotated) label images: nucleus size
and elongation, density, how many nuclei touch another, and the spatial pattern at two scales:

- the Clark-Evans index R (mean nearest-neighbour distance of the nucleus centroids over its
  expectation for random (Poisson) placement at the same density, Donnelly's edge correction):
  R < 1 clustered, 1 random, R > 1 regular;
- the dispersion index D (variance / mean of the nucleus counts in square quadrats of 4 median
  diameters): D > 1 patchy (dense tissue and empty areas), 1 random, D < 1 even.

:func:`synthesize_mask` composes a new label image with that many nuclei per px^2, each with a
diameter and eccentricity drawn together from the measured nuclei; about ``real_fraction`` are
real shapes from the shape database (style.shapes) matched to them, the rest perturbed
ellipses (as the simcep simulator makes them). Positions follow the pattern:

- patchy (D above what non-overlapping placement gives by itself): centres are drawn from a
  log-Gaussian random intensity field (a Cox process) whose variation between quadrats is set
  from D (:func:`patchiness_field`); otherwise uniform;
- regular (R > REGULAR_ABOVE): a centre keeps at least 0.9 * R * 0.5 / sqrt(local density)
  from every other centre (the inhibition distance that gives about that mean nearest-
  neighbour distance), relaxed when the image fills up;
- touching: a share of the nuclei, from the measured fraction of touching nuclei, is pushed
  against a random placed nucleus along a random direction (this also makes the clumps of
  clustered patterns, R < 1); all others keep a 1 px gap.

Nuclei never overlap (a placement that would is retried; the image is full when
MAX_FAILED_NUCLEI nuclei in a row find no place) and may be cut by the image border.
Measured on DSB training images, synthetic masks reproduce density and median diameter,
R (correlation 0.9) and the touching fraction (0.95); D is reproduced less well (0.55): in
dense patchy tissue (nuclei covering > 30% of the image) random placement jams before the
real packing density is reached. Everything is deterministic given the numpy Generator.
"""
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import regionprops

from ..labels import equivalent_diameters
from .shapes import default_shape_db, interior_nuclei, largest_component

REGULAR_ABOVE = 1.1  # Clark-Evans R above which nuclei keep a minimum spacing
# Dispersion index of non-overlapping nuclei placed uniformly (what the hard core alone gives,
# measured on synthetic masks at typical densities); patchiness adds what is above it.
PLACEMENT_DISPERSION = 0.75
QUADRAT_DIAMETERS = 4.0  # quadrat side for the dispersion index, in median nucleus diameters
MIN_QUADRATS = 4
MIN_PATTERN_NUCLEI = 5  # images with fewer nuclei do not enter the pattern statistics
TRIES_PER_NUCLEUS = 30
UNIFORM_TRIES = 5  # the last tries of a patterned placement are anywhere
MAX_FAILED_NUCLEI = 10  # nuclei in a row that find no place: the image is full
MIN_VISIBLE = 0.2  # a nucleus cut by the border keeps at least this fraction of its area
SIZE_JITTER = 0.05  # log-normal sigma on sampled diameters
ECCENTRICITY_JITTER = 0.03
MAX_ECCENTRICITY = 0.98
HARMONICS = (2, 3, 4, 5)  # radial noise of the parametric nuclei: cos(k * angle) terms
HARMONIC_AMPLITUDE = 0.04  # standard deviation of each term's relative amplitude
CROSS = ndimage.generate_binary_structure(2, 1)
# guard_mask: on the annotated DSB train nuclei these leave out 0.4% (size) and 0.4% (solidity)
CLUMP_DIAMETER_RATIO = 2.0  # objects over this many times the image's median diameter
MIN_SOLIDITY = 0.75  # objects of at least SOLIDITY_MIN_AREA px^2 below this solidity
SOLIDITY_MIN_AREA = 50
GUARD_MIN_NUCLEI = 5  # the size criterion needs this many objects for a median


@dataclass
class ClusterNucleusStats:
    """What a cluster's nuclei look like.

    diameters, eccentricities: (M,) equivalent diameter (px) and eccentricity of every nucleus
    wholly inside its image (sizes of cut nuclei would be biased); density: nuclei per px^2 of
    image (all nuclei); image_shape: (H, W) median image size, px; clustering_index: median
    Clark-Evans R over the images with >= MIN_PATTERN_NUCLEI nuclei (1.0 when none);
    dispersion_index: median quadrat-count variance / mean over those images (1.0 when none);
    touching_fraction: share of nuclei that touch another (4-neighbour contact).
    """

    diameters: np.ndarray
    eccentricities: np.ndarray
    density: float
    image_shape: tuple
    clustering_index: float = 1.0
    dispersion_index: float = 1.0
    touching_fraction: float = 0.0
    n_images: int = 0
    n_nuclei: int = 0

    @property
    def median_diameter(self):
        """Median equivalent diameter, px (NaN without nuclei)."""
        return float(np.median(self.diameters)) if len(self.diameters) else float("nan")


def guard_mask(labels):
    """An automatic nucleus mask without what is unlikely to be one nucleus: whole cells and
    clumps (equivalent diameter over CLUMP_DIAMETER_RATIO x the image's median, with at least
    GUARD_MIN_NUCLEI objects) and irregular objects (solidity under MIN_SOLIDITY, objects of
    at least SOLIDITY_MIN_AREA px^2). Returns (labels (H, W) int32 with those set to 0,
    {"size": n left out, "solidity": n left out})."""
    labels = np.asarray(labels).astype(np.int32)
    regions = regionprops(labels)
    d = equivalent_diameters(labels)  # by id, as regionprops orders the regions
    too_big = set()
    if len(d) >= GUARD_MIN_NUCLEI:
        limit = CLUMP_DIAMETER_RATIO * np.median(d)
        too_big = {r.label for r, di in zip(regions, d) if di > limit}
    irregular = {r.label for r in regions if r.label not in too_big
                 and r.area >= SOLIDITY_MIN_AREA and r.solidity < MIN_SOLIDITY}
    drop = too_big | irregular
    if drop:
        labels = np.where(np.isin(labels, list(drop)), 0, labels).astype(np.int32)
    return labels, {"size": len(too_big), "solidity": len(irregular)}


def clark_evans(centroids, shape):
    """Clark-Evans index R of (n, 2) points in an (H, W) image, Donnelly's edge correction;
    NaN for fewer than 2 points."""
    n = len(centroids)
    if n < 2:
        return float("nan")
    nn = cKDTree(centroids).query(centroids, k=2)[0][:, 1]
    area, perimeter = shape[0] * shape[1], 2.0 * (shape[0] + shape[1])
    expected = 0.5 * np.sqrt(area / n) + (0.0514 + 0.041 / np.sqrt(n)) * perimeter / n
    return float(nn.mean() / expected)


def dispersion_index(centroids, shape, diameter_px):
    """Variance / mean of the point counts of (n, 2) ``centroids`` in square quadrats of side
    QUADRAT_DIAMETERS * ``diameter_px`` tiling an (H, W) image (the remainder strips are left
    out): > 1 clustered at that scale (dense patches and empty areas), 1 random, < 1 even.
    NaN when fewer than MIN_QUADRATS quadrats fit."""
    side = max(QUADRAT_DIAMETERS * float(diameter_px), 2.0)
    ny, nx = int(shape[0] // side), int(shape[1] // side)
    if ny * nx < MIN_QUADRATS:
        return float("nan")
    counts, _, _ = np.histogram2d(centroids[:, 0], centroids[:, 1], bins=[ny, nx],
                                  range=[[0, ny * side], [0, nx * side]])
    return float(counts.var() / counts.mean()) if counts.mean() > 0 else float("nan")


def touching_ids(labels):
    """Ids of the nuclei of (H, W) ``labels`` that share an edge with another nucleus."""
    ids = []
    for a, b in ((labels[1:], labels[:-1]), (labels[:, 1:], labels[:, :-1])):
        contact = (a > 0) & (b > 0) & (a != b)
        ids += [a[contact], b[contact]]
    return np.unique(np.concatenate(ids))


def measure_nuclei(label_images):
    """:class:`ClusterNucleusStats` of a cluster's (H, W) int label images (0 = background)."""
    diameters, eccentricities, shapes = [], [], []
    clark_evans_r, dispersion = [], []
    n_nuclei = n_touching = area = 0
    for labels in label_images:
        labels = np.asarray(labels)
        shapes.append(labels.shape)
        area += labels.size
        regions, d = interior_nuclei(labels, min_area=1)
        if not regions:  # every nucleus touches the border: biased sizes beat none
            regions, d = regionprops(labels), equivalent_diameters(labels)
        diameters.append(d)
        eccentricities.append([r.eccentricity for r in regions])
        ids = np.unique(labels[labels > 0])
        n_nuclei += len(ids)
        n_touching += len(touching_ids(labels))
        if len(ids) >= MIN_PATTERN_NUCLEI:
            centroids = np.asarray(ndimage.center_of_mass(labels > 0, labels, ids))
            clark_evans_r.append(clark_evans(centroids, labels.shape))
            dispersion.append(dispersion_index(centroids, labels.shape,
                                               np.median(equivalent_diameters(labels))))
    h, w = np.median(np.asarray(shapes, float).reshape(-1, 2), axis=0) if shapes else (0, 0)
    return ClusterNucleusStats(
        np.concatenate(diameters) if diameters else np.zeros(0),
        np.concatenate(eccentricities) if eccentricities else np.zeros(0),
        n_nuclei / area if area else 0.0, (int(h), int(w)),
        _median_or_one(clark_evans_r), _median_or_one(dispersion),
        n_touching / n_nuclei if n_nuclei else 0.0, len(shapes), n_nuclei)


def compare_nuclei(target, synthetic):
    """How well synthetic masks follow a style's nuclei: ClusterNucleusStats ``target`` (the
    style's masks) against ``synthetic`` (its synthetic masks'). Returns a dict: diameter
    quantiles 10/50/90 px of each, the two-sample Kolmogorov-Smirnov statistic and p-value of
    their diameters (and of their eccentricities), and density (nuclei per 10^4 px^2),
    Clark-Evans R and touching fraction of each."""
    from scipy.stats import ks_2samp

    def quantiles(x):
        return [round(float(v), 2) for v in np.percentile(x, [10, 50, 90])] if len(x) else None

    out = {"diameter_q10_50_90": {"target": quantiles(target.diameters),
                                  "synthetic": quantiles(synthetic.diameters)}}
    for name in ("diameters", "eccentricities"):
        a, b = getattr(target, name), getattr(synthetic, name)
        if len(a) and len(b):
            ks = ks_2samp(a, b)
            out[f"ks_{name}"] = {"statistic": round(float(ks.statistic), 4),
                                 "p": float(ks.pvalue)}
    for name, key in (("density", "nuclei_per_1e4px"), ("clustering_index", "clark_evans_r"),
                      ("touching_fraction", "touching_fraction")):
        scale = 1e4 if name == "density" else 1.0
        out[key] = {"target": round(float(getattr(target, name)) * scale, 4),
                    "synthetic": round(float(getattr(synthetic, name)) * scale, 4)}
    return out


def comparison_line(c):
    """One line of :func:`compare_nuclei`'s result for logs and the style sheet."""
    q = c["diameter_q10_50_90"]
    if not (q["target"] and q["synthetic"]):
        return "no nuclei to compare"
    ks = c.get("ks_diameters", {})
    return ("diameter p10/50/90 {} vs {} px (KS {:.2f}), nuclei/1e4 px {:.1f} vs {:.1f}"
            .format("/".join(f"{v:.0f}" for v in q["target"]),
                    "/".join(f"{v:.0f}" for v in q["synthetic"]), ks.get("statistic", 0.0),
                    c["nuclei_per_1e4px"]["target"], c["nuclei_per_1e4px"]["synthetic"]))


def _median_or_one(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else 1.0


def perturbed_ellipse(diameter_px, eccentricity, angle_rad, rng):
    """A parametric nucleus: an ellipse of equivalent diameter ``diameter_px`` (px) and
    ``eccentricity``, its major axis at ``angle_rad`` counter-clockwise from the x axis (as
    displayed), its radius perturbed by low-frequency noise (HARMONICS), area kept.

    Returns an (h, h) bool mask, h odd, with the ellipse centre at the centre pixel.
    """
    e = min(float(eccentricity), MAX_ECCENTRICITY)
    squash = (1.0 - e * e) ** 0.25
    a, b = diameter_px / 2.0 / squash, diameter_px / 2.0 * squash  # semi-axes, a * b = r^2
    amplitude = rng.normal(0.0, HARMONIC_AMPLITUDE, len(HARMONICS))
    phase = rng.uniform(0.0, 2 * np.pi, len(HARMONICS))

    def radius(phi):
        ellipse = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
        noise = sum(c * np.cos(k * phi + p) for k, c, p in zip(HARMONICS, amplitude, phase))
        return ellipse * np.clip(1.0 + noise, 0.5, 1.5)

    outline = radius(np.linspace(0.0, 2 * np.pi, 720, endpoint=False))
    gain = np.sqrt(a * b / np.mean(outline ** 2))  # area pi * mean(r^2) kept at pi * a * b
    half = int(np.ceil(gain * outline.max())) + 1
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    u, v = c * dx - s * dy, s * dx + c * dy  # along the major / minor axis
    mask = np.hypot(u, v) <= gain * radius(np.arctan2(v, u))
    mask[half, half] = True
    return mask


def _crop(mask):
    """(mask cropped to its pixels, (row, col) of the original centre pixel in the crop)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    centre = mask.shape[0] // 2
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], (centre - rows[0], centre - cols[0])


def _fit(out, nucleus, centre, gap):
    """Where ``nucleus`` = (mask, its centre in the mask) lands with its centre at ``centre``
    (row, col) in the label image ``out`` (H, W): (row0, col0, visible (h, w) bool) or None
    when it would overlap a nucleus (or touch one when ``gap``) or show too little of itself."""
    mask, (oy, ox) = nucleus
    (H, W), g = out.shape, int(gap)
    y0, x0 = int(round(centre[0])) - oy, int(round(centre[1])) - ox
    ry0, rx0 = max(y0 - g, 0), max(x0 - g, 0)
    ry1, rx1 = min(y0 + mask.shape[0] + g, H), min(x0 + mask.shape[1] + g, W)
    if ry1 <= ry0 or rx1 <= rx0:
        return None
    local = np.zeros((ry1 - ry0, rx1 - rx0), bool)
    my0, mx0 = max(ry0 - y0, 0), max(rx0 - x0, 0)
    my1, mx1 = min(ry1 - y0, mask.shape[0]), min(rx1 - x0, mask.shape[1])
    if my1 <= my0 or mx1 <= mx0:
        return None
    local[my0 + y0 - ry0:my1 + y0 - ry0, mx0 + x0 - rx0:mx1 + x0 - rx0] = mask[my0:my1, mx0:mx1]
    visible = largest_component(local)
    if visible.sum() < MIN_VISIBLE * mask.sum():
        return None
    claimed = ndimage.binary_dilation(visible, CROSS) if gap else visible
    if (out[ry0:ry1, rx0:rx1][claimed] > 0).any():
        return None
    return ry0, rx0, visible


class _Layout:
    """Candidate nucleus centres following the spatial pattern of ``stats`` in an (H, W) image."""

    def __init__(self, stats, shape, rng):
        self.rng, self.shape = rng, np.asarray(shape, float)
        self.field = patchiness_field(stats, shape, rng)
        self.field_mean = float(self.field[0].mean()) if self.field is not None else 1.0
        r = stats.clustering_index if np.isfinite(stats.clustering_index) else 1.0
        # the spacing that gives a mean nearest-neighbour distance of about R times that of
        # random placement at the image's density (scaled by the local density in patches)
        self.inhibition = (0.9 * r * 0.5 / np.sqrt(max(stats.density, 1e-12))
                           if r > REGULAR_ABOVE else 0.0)
        f = min(max(stats.touching_fraction, 0.0), 1.0)
        self.attach_probability = f / (2.0 - f)  # an attached pair makes two touching nuclei

    def relative_density(self, p):
        """Local nucleus density at ``p`` (row, col) over the image's mean (1 without patches)."""
        if self.field is None:
            return 1.0
        field, cell = self.field
        return field[int(p[0] // cell), int(p[1] // cell)] / self.field_mean

    def free_centre(self, attempt):
        """A centre (row, col) for a nucleus not pushed against another: drawn from the
        patchiness field (rejection sampling) but for the last UNIFORM_TRIES attempts."""
        if self.field is not None and attempt < TRIES_PER_NUCLEUS - UNIFORM_TRIES:
            field, cell = self.field
            for _ in range(50):
                p = self.rng.uniform(0, 1, 2) * self.shape
                if self.rng.random() < field[int(p[0] // cell), int(p[1] // cell)]:
                    return p
        return self.rng.uniform(0, 1, 2) * self.shape

    def far_enough(self, p, centres):
        """True when ``p`` keeps the regular spacing (for the local density) to all ``centres``."""
        if not self.inhibition or not centres:
            return True
        spacing = self.inhibition / np.sqrt(self.relative_density(p))
        return np.hypot(*(np.asarray(centres) - p).T).min() >= spacing


def patchiness_field(stats, shape, rng):
    """Relative nucleus intensity over an (H, W) image, for a dispersion index D above what
    non-overlapping placement gives by itself (PLACEMENT_DISPERSION), else None.

    A log-Gaussian random field on quadrat-sized cells, correlated over about two cells: for
    such a Cox process D = 1 + m * CV^2 (m: mean nuclei per quadrat, CV: coefficient of
    variation of the intensity between quadrats), so the field is scaled until its CV^2 over
    the image is (D - PLACEMENT_DISPERSION) / m. Returns (acceptance probabilities (rows, cols),
    max 1; cell side px).
    """
    d = stats.dispersion_index
    if not (np.isfinite(d) and d > PLACEMENT_DISPERSION and len(stats.diameters)):
        return None
    cell = max(QUADRAT_DIAMETERS * stats.median_diameter, 2.0)
    target_cv2 = (d - PLACEMENT_DISPERSION) / max(stats.density * cell * cell, 1e-6)
    cells = (int(np.ceil(shape[0] / cell)), int(np.ceil(shape[1] / cell)))
    g = ndimage.gaussian_filter(rng.normal(size=cells), 1.0, mode="wrap")
    g = (g - g.mean()) / max(g.std(), 1e-9)
    lo, hi = 0.0, 8.0  # log-sigma, found by bisection (CV^2 grows with it)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        f = np.exp(mid * (g - g.max()))
        lo, hi = (mid, hi) if f.var() / f.mean() ** 2 < target_cv2 else (lo, mid)
    return np.exp(lo * (g - g.max())), cell


def _place_free(out, nucleus, layout, centres):
    """Place the nucleus at a centre from the layout, 1 px from any other nucleus:
    (centre, fit) or None when TRIES_PER_NUCLEUS candidates all fail."""
    for attempt in range(TRIES_PER_NUCLEUS):
        p = layout.free_centre(attempt)
        if layout.far_enough(p, centres):
            fit = _fit(out, nucleus, p, gap=True)
            if fit is not None:
                return p, fit
    return None


def _place_touching(out, nucleus, diameter, centres, diameters, rng):
    """Push the nucleus against a random placed one: march outward along a random direction
    from the neighbour's centre until it no longer overlaps."""
    for _ in range(TRIES_PER_NUCLEUS // 3):
        j = rng.integers(len(centres))
        theta = rng.uniform(0, 2 * np.pi)
        step = np.array([np.sin(theta), np.cos(theta)])
        reach = 0.5 * (diameters[j] + diameter)
        for dist in np.arange(0.5 * reach, 1.5 * reach, 1.0):
            fit = _fit(out, nucleus, centres[j] + dist * step, gap=False)
            if fit is not None:
                return centres[j] + dist * step, fit
    return None


def _draw_nucleus(stats, rng, shape_db, real_fraction):
    """(diameter px, (h, h) bool mask centred on the nucleus) drawn from the cluster's nuclei."""
    i = rng.integers(len(stats.diameters))
    d = max(float(stats.diameters[i]) * np.exp(rng.normal(0, SIZE_JITTER)), 1.0)
    e = stats.eccentricities[i] + rng.normal(0, ECCENTRICITY_JITTER)
    e = float(np.clip(e, 0.0, MAX_ECCENTRICITY))
    angle = rng.uniform(0, np.pi)
    if rng.random() < real_fraction:
        return d, shape_db.render(int(shape_db.sample(rng, d, e)[0]), d, angle)
    return d, perturbed_ellipse(d, e, angle, rng)


def synthesize_mask(stats, shape=None, rng=None, shape_db=None, real_fraction=0.5):
    """A synthetic (H, W) int32 label image (ids 1..N, no overlaps) of nuclei like ``stats``'s.

    shape: (H, W) px, default stats.image_shape; rng: np.random.Generator (default seed 0);
    shape_db: :class:`~.shapes.ShapeDB` for the real shapes (default: the shipped one);
    real_fraction: expected share of real shapes, the rest perturbed ellipses.
    Aims at round(stats.density * H * W) nuclei; fewer when the image is full.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    shape = tuple(int(v) for v in (stats.image_shape if shape is None else shape))
    out = np.zeros(shape, np.int32)
    n_target = int(round(stats.density * shape[0] * shape[1]))
    if n_target == 0 or len(stats.diameters) == 0:
        return out
    if real_fraction > 0 and shape_db is None:
        shape_db = default_shape_db()
    layout = _Layout(stats, shape, rng)
    centres, diameters, failed = [], [], 0
    for _ in range(n_target):
        d, mask = _draw_nucleus(stats, rng, shape_db, real_fraction)
        nucleus = _crop(mask)
        placed = None
        if centres and rng.random() < layout.attach_probability:
            placed = _place_touching(out, nucleus, d, centres, diameters, rng)
        if placed is None:
            placed = _place_free(out, nucleus, layout, centres)
        if placed is None:
            failed += 1
            layout.inhibition *= 0.8  # crowded: relax the regular spacing
            if failed >= MAX_FAILED_NUCLEI:
                break
            continue
        failed = 0
        centre, (y0, x0, visible) = placed
        out[y0:y0 + visible.shape[0], x0:x0 + visible.shape[1]][visible] = len(centres) + 1
        centres.append(centre)
        diameters.append(d)
    return out
