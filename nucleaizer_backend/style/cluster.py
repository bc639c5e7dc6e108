"""Cluster target images into styles (docs/METHOD.md section 4.2).

Each image is described by a vector of style features (:func:`style_features`): the colour of
the raw image, intensity statistics and texture of the normalised image, and the size, density
and contrast of its (preseg or annotated) nuclei. The features are standardised and clustered
with k-means (:func:`cluster_styles`; numpy k-means++ with restarts, scikit-learn is not a
dependency).

How k is chosen. The method over-clusters on purpose (the paper: 134 clusters for 3,019 DSB
stage-2 images): a style model trained on a mixed cluster makes images that look like neither
style, while splitting one style over two clusters only costs images per model. So

    k = max(round(N / (2 * min_cluster_size)), k_silhouette), at most max_k and the number of
        distinct feature vectors.

The first term aims at clusters of twice the smallest learnable size on average, so that with
many images k is large (with min_cluster_size 10 it is 151 for 3,019 images, near the paper's
134; the default max_k of 100 caps it) and most clusters survive the merging below. The second
term is a floor for few images: the k in 2..min(N // min_cluster_size, 20) with the best mean
silhouette, when that silhouette shows real structure (>= 0.25, Kaufman & Rousseeuw), else 1;
it keeps clearly different styles apart when N / (2 * min_cluster_size) rounds to one or two.

Clusters smaller than ``min_cluster_size`` are then merged, the smallest first, into the
cluster with the nearest centre (any size, so two halves of a rare style merge with each other
before either joins a different style), or kept apart and listed as skipped when that centre
is farther than ``max_merge_distance``; with fewer images in all than ``min_cluster_size``
they form one style, listed as skipped too. Everything is reported
(:meth:`StyleClusters.report`).
"""
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv

from ..errors import NucleaizerError
from ..labels import equivalent_diameters
from ..preprocess import to_hwc

FEATURE_NAMES = [
    # colour of the raw image scaled to [0, 1] (gray images: equal channels, saturation 0)
    "red_mean", "green_mean", "blue_mean", "red_std", "green_std", "blue_std",
    "saturation_mean", "saturation_std",
    "hue_cos", "hue_sin",  # mean saturation-weighted unit vector of the (circular) hue
    "value_mean",
    # intensity of the normalised gray image (nuclei bright, [0, 1])
    "gray_p05", "gray_p25", "gray_p50", "gray_p75", "gray_p95", "gray_std",
    # texture of the normalised gray image
    "gradient_mean_s1", "gradient_mean_s3",  # mean gradient magnitude, Gaussian sigma 1 / 3 px
    "log_laplacian_var_s1", "log_laplacian_var_s4",  # log10 variance of the LoG, sigma 1 / 4 px
    # nuclei (from the label image)
    "log_median_diameter",  # natural log of the median equivalent diameter in px
    "diameter_spread",  # interquartile range / median of the equivalent diameters
    "log1p_nuclei_per_1e4px",  # log(1 + nuclei per 10^4 px of image)
    "foreground_fraction",  # fraction of the image covered by nuclei
    "nucleus_contrast",  # median over nuclei of (mean nucleus gray - median background gray)
]

# At most this many pixels per side enter the colour statistics (a strided subsample).
COLOUR_SAMPLE_SIDE = 512
SILHOUETTE_MIN = 0.25  # below: "no substantial structure" (Kaufman & Rousseeuw)
SILHOUETTE_MAX_K = 20
SILHOUETTE_MAX_POINTS = 2000
KMEANS_RESTARTS = 10
KMEANS_MAX_ITER = 100


# ----------------------------------------------------------------------------- features

def unit_range(raw):
    """``raw`` (H, W) or (H, W, C), any dtype -> float32 (H, W, 3) in [0, 1] for colour statistics.

    Integers are divided by the largest value of the smallest bit depth that holds the data
    (8-bit types always by 255, 12-bit data in a 16-bit file by 4095), so that images of one
    instrument keep comparable brightness; floats already in [0, 1] are kept, others divided
    by their maximum. NaN counts as 0.
    """
    a = np.asarray(raw)
    if np.issubdtype(a.dtype, np.integer):
        top = max(int(a.max()), 1)
        bits = 8 if a.dtype.itemsize == 1 else max(8, int(np.ceil(np.log2(top + 1))))
        scale = float(min(2 ** bits - 1, np.iinfo(a.dtype).max))
    else:
        scale = 1.0
    rgb = np.nan_to_num(to_hwc(a), nan=0.0, posinf=0.0, neginf=0.0)
    if scale == 1.0 and rgb.size and (rgb.min() < 0 or rgb.max() > 1):
        scale = max(float(rgb.max()), 1e-12)
    return np.clip(rgb / scale, 0.0, 1.0)


def colour_features(raw):
    """Colour statistics of ``raw`` (see :func:`unit_range`): 11 values in FEATURE_NAMES order."""
    rgb = unit_range(raw)
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / COLOUR_SAMPLE_SIDE)))
    rgb = rgb[::step, ::step].reshape(-1, 3)
    hsv = rgb2hsv(rgb[None])[0]
    hue = 2 * np.pi * hsv[:, 0]
    sat = hsv[:, 1]
    return [*rgb.mean(0), *rgb.std(0), sat.mean(), sat.std(),
            float(np.mean(sat * np.cos(hue))), float(np.mean(sat * np.sin(hue))),
            hsv[:, 2].mean()]


def intensity_features(gray):
    """Percentiles 5, 25, 50, 75, 95 and standard deviation of a [0, 1] (H, W) gray image."""
    return [*np.percentile(gray, [5, 25, 50, 75, 95]), gray.std()]


def texture_features(gray):
    """Mean gradient magnitude (sigma 1, 3 px) and log10 LoG variance (sigma 1, 4 px) of (H, W)."""
    grad = [ndimage.gaussian_gradient_magnitude(gray, s).mean() for s in (1.0, 3.0)]
    log_var = [np.log10(ndimage.gaussian_laplace(gray, s).var() + 1e-12) for s in (1.0, 4.0)]
    return grad + log_var


def nucleus_features(gray, labels):
    """log median diameter (px), diameter spread, log(1 + nuclei per 10^4 px), foreground
    fraction and nucleus contrast of the nuclei in ``labels`` (H, W) on ``gray`` (H, W).

    Diameter, spread and contrast are NaN when there are no nuclei (:func:`cluster_styles`
    fills them with the median of the other images).
    """
    labels = np.asarray(labels)
    d = equivalent_diameters(labels)
    fg = labels > 0
    per_1e4 = len(d) / labels.size * 1e4
    if len(d) == 0:
        return [np.nan, np.nan, np.log1p(per_1e4), 0.0, np.nan]
    q1, med, q3 = np.percentile(d, [25, 50, 75])
    ids = np.unique(labels[fg])
    nucleus_means = np.asarray(ndimage.mean(gray, labels, ids))
    background = float(np.median(gray[~fg])) if (~fg).any() else 0.0
    return [np.log(med), (q3 - q1) / med, np.log1p(per_1e4), float(fg.mean()),
            float(np.median(nucleus_means) - background)]


def style_features(image, labels, raw=None):
    """Style feature vector of one image, float64 (F,) in FEATURE_NAMES order.

    image: normalised (H, W, 3) float in [0, 1] from :func:`preprocess.normalize_image`;
    labels: (H, W) int nuclei (preseg or annotated), 0 = background;
    raw: the image as read, (H, W) or (H, W, C) any dtype, for the colour statistics (stained
    H&E and gray fluorescence differ there far more than after normalisation); ``image`` is
    used when it is not given.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise NucleaizerError(
            f"style_features expects a normalised (H, W, 3) image, got {image.shape}")
    if np.shape(labels) != image.shape[:2]:
        raise NucleaizerError(
            f"labels {np.shape(labels)} and image {image.shape[:2]} differ in size")
    gray = image.mean(axis=-1)
    values = (colour_features(image if raw is None else raw) + intensity_features(gray)
              + texture_features(gray) + nucleus_features(gray, labels))
    return np.asarray(values, np.float64)


# ----------------------------------------------------------------------------- clustering

@dataclass
class StyleClusters:
    """Images grouped into styles.

    assignment: (N,) int style id 0..K-1 of each image (styles numbered by first image);
    sizes: (K,) images per style; centres: (K, F) mean standardised features of each style;
    merged: one dict per merge {"cluster": k-means id, "size": its images, "into": k-means id
    it joined, "style": the style it ended in, "distance": between centres, standardised units};
    skipped: styles still smaller than min_cluster_size (too few images to learn from; a
    caller trains no style model for them): far from every other style (max_merge_distance),
    or all images together are fewer than min_cluster_size; kmeans_k, size_k, silhouette_k:
    the k used and its two candidates (see the module doc), k_given: k was set by the
    caller; mean, scale: (F,) the
    standardisation (features - mean) / scale.
    """

    assignment: np.ndarray
    sizes: np.ndarray
    centres: np.ndarray
    merged: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    min_cluster_size: int = 3
    kmeans_k: int = 1
    size_k: int = 1
    silhouette_k: int = 1
    silhouette: float = float("nan")
    k_given: bool = False
    mean: np.ndarray = None
    scale: np.ndarray = None

    @property
    def n_styles(self):
        return len(self.sizes)

    def report(self):
        """Human-readable lines: how k was chosen, each style's size, each merge and skip."""
        n = len(self.assignment)
        sil = "" if np.isnan(self.silhouette) else f", silhouette {self.silhouette:.2f}"
        how = ("given" if self.k_given else
               f"max of {self.size_k} from N/(2*{self.min_cluster_size}) and "
               f"{self.silhouette_k} from silhouette{sil}")
        lines = [f"{_images(n)} -> {self.n_styles} styles (k-means k={self.kmeans_k}: {how})"]
        for s, size in enumerate(self.sizes):
            note = (f" (fewer than {self.min_cluster_size}, too few to learn from: skipped)"
                    if s in self.skipped else "")
            lines.append(f"style {s}: {_images(size)}{note}")
        for m in self.merged:
            lines.append(f"k-means cluster {m['cluster']} ({_images(m['size'])}, fewer than "
                         f"{self.min_cluster_size}) merged into k-means cluster {m['into']} -> "
                         f"style {m['style']} (centre distance {m['distance']:.2f})")
        return lines


def _images(n):
    return f"{int(n)} image" + ("" if n == 1 else "s")


def standardise(features):
    """(N, F) -> (standardised (N, F), mean (F,), scale (F,)); NaN -> column median, constant
    columns -> 0 (scale 1)."""
    x = np.array(features, np.float64, ndmin=2)
    missing = ~np.isfinite(x)
    if missing.any():
        with np.errstate(all="ignore"):
            fill = np.nanmedian(np.where(missing, np.nan, x), axis=0)
        fill = np.where(np.isfinite(fill), fill, 0.0)
        x = np.where(missing, fill, x)
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-9 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    return (x - mean) / scale, mean, scale


def _sq_distances(z, centres):
    """(N, K) squared Euclidean distances."""
    d = (z * z).sum(1)[:, None] - 2 * z @ centres.T + (centres * centres).sum(1)[None]
    return np.maximum(d, 0.0)


def _kmeans_pp(z, k, rng):
    """k-means++ seeding: (k, F) initial centres."""
    centres = [z[rng.integers(len(z))]]
    d = _sq_distances(z, centres[0][None])[:, 0]  # to the nearest chosen centre
    for _ in range(1, k):
        p = d / d.sum() if d.sum() > 0 else np.full(len(z), 1.0 / len(z))
        centres.append(z[rng.choice(len(z), p=p)])
        d = np.minimum(d, _sq_distances(z, centres[-1][None])[:, 0])
    return np.asarray(centres)


def _lloyd(z, centres):
    """Lloyd iterations from ``centres``: (assignment (N,), centres (k, F), inertia)."""
    for _ in range(KMEANS_MAX_ITER):
        d = _sq_distances(z, centres)
        assign = d.argmin(1)
        new = centres.copy()
        far = np.argsort(-d[np.arange(len(z)), assign], kind="stable")
        reseeded = 0
        for j in range(len(centres)):
            members = assign == j
            if members.any():
                new[j] = z[members].mean(0)
            else:  # an empty cluster restarts at the worst-fitting point
                new[j] = z[far[reseeded]]
                reseeded += 1
        if np.allclose(new, centres):
            break
        centres = new
    d = _sq_distances(z, centres)
    assign = d.argmin(1)
    return assign, centres, float(d[np.arange(len(z)), assign].sum())


def kmeans(z, k, seed=0, restarts=KMEANS_RESTARTS):
    """k-means of (N, F) ``z``, the best of ``restarts`` k-means++ starts (deterministic for
    a ``seed``): (assignment (N,), centres (k, F))."""
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        result = _lloyd(z, _kmeans_pp(z, k, rng))
        if best is None or result[2] < best[2] - 1e-12:
            best = result
    return best[0], best[1]


def silhouette(z, assign):
    """Mean silhouette of a clustering of (N, F) ``z`` (singleton clusters count 0)."""
    dist = np.sqrt(_sq_distances(z, z))
    ids, assign = np.unique(assign, return_inverse=True)
    onehot = np.eye(len(ids))[assign]
    counts = onehot.sum(0)
    sums = dist @ onehot  # (N, K) summed distance to each cluster
    own = counts[assign]
    a = sums[np.arange(len(z)), assign] / np.maximum(own - 1, 1)
    other = np.where(onehot > 0, np.inf, sums / counts)
    b = other.min(1)
    s = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def silhouette_k(z, k_max, seed=0):
    """(best k in 2..k_max by mean silhouette, its silhouette); (1, nan) when k_max < 2 or
    the best silhouette is below SILHOUETTE_MIN (no clear structure)."""
    if k_max < 2:
        return 1, float("nan")
    if len(z) > SILHOUETTE_MAX_POINTS:
        z = z[np.random.default_rng(seed).choice(len(z), SILHOUETTE_MAX_POINTS, replace=False)]
    scores = {k: silhouette(z, kmeans(z, k, seed)[0]) for k in range(2, k_max + 1)}
    best = max(scores, key=lambda k: (scores[k], -k))
    return (best if scores[best] >= SILHOUETTE_MIN else 1), scores[best]


def merge_small_clusters(z, assign, min_size, max_distance=None):
    """Merge clusters with fewer than ``min_size`` members, smallest first, into the cluster
    with the nearest centre. Returns (assignment (N,) with k-means ids, merges: list of dicts,
    skipped: k-means ids kept although small because the nearest centre is farther than
    ``max_distance``)."""
    assign = assign.copy()
    merges, skipped = [], []
    while True:
        ids, counts = np.unique(assign, return_counts=True)
        small = [(count, cid) for cid, count in zip(ids, counts)
                 if count < min_size and cid not in skipped]
        if not small or len(ids) == 1:
            return assign, merges, skipped
        size, c = min(small)
        others = ids[ids != c]
        centres = np.asarray([z[assign == o].mean(0) for o in others])
        d = np.sqrt(_sq_distances(z[assign == c].mean(0)[None], centres))[0]
        target = int(others[int(np.argmin(d))])
        if max_distance is not None and d.min() > max_distance:
            skipped.append(int(c))
            continue
        assign[assign == c] = target
        merges.append({"cluster": int(c), "size": int(size), "into": target,
                       "distance": float(d.min())})


def _n_distinct(z):
    return len(np.unique(np.round(z, 9), axis=0))


def choose_k(z, min_cluster_size, max_k, seed=0):
    """k for (N, F) standardised ``z`` (module doc): (k, size_k, silhouette_k, silhouette)."""
    n, n_distinct = len(z), _n_distinct(z)
    size_k = int(np.clip(round(n / (2 * min_cluster_size)), 1, max_k))
    k_max = min(max_k, n // min_cluster_size, n_distinct, n - 1, SILHOUETTE_MAX_K)
    sil_k, sil = silhouette_k(z, k_max, seed)
    return min(max(size_k, sil_k), n_distinct, max_k), size_k, sil_k, sil


def number_styles(assign, merges):
    """k-means ids (N,) -> style ids 0..K-1 (N,) in order of each style's first image; adds
    "style" to each merge, following chains of merges."""
    order = list(dict.fromkeys(assign.tolist()))
    style_of = {c: s for s, c in enumerate(order)}
    chain = {m["cluster"]: m["into"] for m in merges}
    for m in merges:
        into = m["into"]
        while into in chain:  # merged into a cluster that was merged later itself
            into = chain[into]
        m["style"] = style_of[into]
    return np.asarray([style_of[c] for c in assign], np.int64)


def cluster_styles(features, min_cluster_size=3, k=None, max_k=100, seed=0,
                   max_merge_distance=None):
    """Cluster images into styles from their (N, F) style features (see the module doc).

    k: force the k-means k (default: chosen as in the module doc); max_k: upper bound on the
    chosen k (each style costs one style model); seed: k-means seed (the result is
    deterministic); max_merge_distance: small clusters whose nearest centre is farther
    (standardised units) are kept apart and listed as skipped (default: always merged).
    Returns :class:`StyleClusters`.
    """
    z, mean, scale = standardise(features)
    n = len(z)
    if n == 0:
        raise NucleaizerError("no images to cluster into styles")
    min_cluster_size = max(1, int(min_cluster_size))
    if k is None:
        k_used, size_k, sil_k, sil = choose_k(z, min_cluster_size, max_k, seed)
    else:
        k_used, size_k, sil_k, sil = int(np.clip(k, 1, _n_distinct(z))), 0, 0, float("nan")
    assign = kmeans(z, k_used, seed)[0] if k_used > 1 else np.zeros(n, np.int64)
    assign, merges, _ = merge_small_clusters(z, assign, min_cluster_size, max_merge_distance)
    styles = number_styles(assign, merges)
    sizes = np.bincount(styles)
    centres = np.asarray([z[styles == s].mean(0) for s in range(len(sizes))])
    too_small = [s for s in range(len(sizes)) if sizes[s] < min_cluster_size]
    return StyleClusters(styles, sizes, centres, merges, too_small, min_cluster_size, k_used,
                         size_k, sil_k, sil, k is not None, mean, scale)
