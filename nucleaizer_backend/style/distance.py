"""How far an image's style lies from the styles a model was trained or adapted on: the
measurement that tells a user when to adapt (TrainStyleAdaptation).

An image is described by the image part of the clustering features (style.cluster: colour of
the raw image, intensity and texture of the normalised image; 21 values, :data:`FEATURES`;
nucleus sizes are left out, since the method brings every image to its working size anyway).
A model stores a :class:`StyleReference` in its model.json (``style_reference``): the
standardisation of its training images' features and ``REFERENCE_CENTRES`` k-means centres
of them. The *style distance* of an image is its distance to the nearest centre in
standardised units; above the reference's ``threshold`` the image's style is unlike every
trained style.

The threshold is set on the training images alone, by cross-fitting: the images are split
into ``FOLDS`` folds, each fold's distances measured to centres fitted on the other folds, and
the threshold is the ``THRESHOLD_QUANTILE`` quantile of those distances times
``THRESHOLD_MARGIN``, so about 1 - quantile of images of trained styles lie above it (bench
style_distance measures the rates on held-out styles and on val images of trained styles).
"""
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ModelFileError
from .cluster import _sq_distances, colour_features, intensity_features, kmeans, \
    standardise, texture_features

FEATURES = [
    "red_mean", "green_mean", "blue_mean", "red_std", "green_std", "blue_std",
    "saturation_mean", "saturation_std", "hue_cos", "hue_sin", "value_mean",
    "gray_p05", "gray_p25", "gray_p50", "gray_p75", "gray_p95", "gray_std",
    "gradient_mean_s1", "gradient_mean_s3", "log_laplacian_var_s1", "log_laplacian_var_s4",
]
SAMPLE_SIDE = 320  # px: the features are measured on a centre crop of at most this side
REFERENCE_CENTRES = 24
FOLDS = 5
THRESHOLD_QUANTILE = 0.95
THRESHOLD_MARGIN = 1.25


def centre_crop(image, side=SAMPLE_SIDE):
    """The centre crop of at most side x side px of an (H, W) or (H, W, C) image."""
    h, w = np.shape(image)[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return np.asarray(image)[y:y + side, x:x + side]


def image_style_features(raw):
    """(len(FEATURES),) float64 style features of one image as read ((H, W) or (H, W, C),
    any dtype), measured on its centre SAMPLE_SIDE px crop (colour on every other pixel);
    about 0.05 s per image on one CPU thread."""
    from ..preprocess import channels_last, normalize_image

    raw = centre_crop(channels_last(np.asarray(raw)))
    gray = np.asarray(normalize_image(raw), np.float32).mean(axis=-1)
    return np.asarray(colour_features(raw[::2, ::2]) + intensity_features(gray)
                      + texture_features(gray), np.float64)


@dataclass
class StyleReference:
    """The trained styles of a model in the style-feature space.

    mean, scale: (F,) standardisation; centres: (K, F) standardised k-means centres of the
    training images' features; threshold: distance (standardised units) above which an image
    is of an untrained style; images: how many images it was made from; made_from: their
    description.
    """

    mean: np.ndarray
    scale: np.ndarray
    centres: np.ndarray
    threshold: float
    images: int = 0
    made_from: str = ""

    def distance(self, features):
        """Style distance of (F,) or (N, F) features: float or (N,) standardised units."""
        x = np.asarray(features, np.float64)
        z = (np.where(np.isfinite(x), x, self.mean) - self.mean) / self.scale
        d = nearest_centre_distance(np.atleast_2d(z), self.centres)
        return float(d[0]) if x.ndim == 1 else d

    def to_dict(self):
        d = asdict(self)
        d.update(features=FEATURES, mean=self.mean.tolist(), scale=self.scale.tolist(),
                 centres=np.round(self.centres, 5).tolist())
        return d

    @classmethod
    def from_dict(cls, d, where="model.json"):
        """The reference stored in model.json; ModelFileError (one line) when malformed."""
        try:
            if list(d["features"]) != FEATURES:
                raise ValueError("its features are not this version's")
            ref = cls(np.asarray(d["mean"], float), np.asarray(d["scale"], float),
                      np.asarray(d["centres"], float).reshape(-1, len(FEATURES)),
                      float(d["threshold"]), int(d.get("images", 0)), str(d.get("made_from", "")))
            if ref.mean.shape != (len(FEATURES),) or ref.scale.shape != (len(FEATURES),):
                raise ValueError("mean and scale need one value per feature")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{where}: style_reference is malformed ({e})") from None
        return ref


def nearest_centre_distance(z, centres):
    """(N,) Euclidean distance of each row of (N, F) ``z`` to the nearest of (K, F) centres."""
    return np.sqrt(_sq_distances(z, centres).min(1))


def _centres(z, k, seed):
    k = int(min(k, len(z)))
    return kmeans(z, k, seed=seed)[1] if k > 1 else z.mean(0, keepdims=True)


def fit_reference(features, made_from="", k=REFERENCE_CENTRES, seed=0):
    """A :class:`StyleReference` from (N, F) training-image features (see the module doc)."""
    x = np.asarray(features, np.float64)
    z, mean, scale = standardise(x)
    folds = np.random.default_rng(seed).permutation(len(z)) % FOLDS
    held = np.zeros(len(z))
    for f in range(FOLDS):
        centres = _centres(z[folds != f], k, seed)
        held[folds == f] = nearest_centre_distance(z[folds == f], centres)
    threshold = float(np.quantile(held, THRESHOLD_QUANTILE) * THRESHOLD_MARGIN)
    return StyleReference(mean, scale, _centres(z, k, seed), threshold, len(z), made_from)


def extend_reference(reference, features, k=None, seed=0):
    """``reference`` with the (N, F) features of newly adapted-to images added as centres
    (their own k-means centres, at most one per 3 images), in the same standardisation and
    with the same threshold."""
    z = (np.asarray(features, np.float64) - reference.mean) / reference.scale
    k = k or max(1, len(z) // 3)
    centres = np.vstack([reference.centres, _centres(z, k, seed)])
    return StyleReference(reference.mean, reference.scale, centres, reference.threshold,
                          reference.images + len(z), reference.made_from + f" + {len(z)} adapted")


def model_reference(model):
    """The StyleReference stored in a loaded model's model.json (``model.info``), or None
    for a model without one."""
    entry = (getattr(model, "info", None) or {}).get("style_reference")
    if not entry:
        return None
    return StyleReference.from_dict(entry, f"{model.path}: model.json")


def style_distance(model, image):
    """(style distance of ``image``, the model's threshold) for a loaded model, or
    (None, None) when the model stores no style reference."""
    reference = model_reference(model)
    if reference is None:
        return None, None
    return reference.distance(image_style_features(image)), reference.threshold


def reference_from_folder(data, made_from=None, progress=None):
    """The StyleReference of the images of a training data folder (every image paired with
    labels, pairing.find_pairs); ``progress(done, total)`` after each image."""
    from ..imageio_utils import read_image
    from ..pairing import find_pairs

    pairs = find_pairs(data)
    features = []
    for i, (image, _) in enumerate(pairs, 1):
        features.append(image_style_features(read_image(image)))
        if progress:
            progress(i, len(pairs))
    return fit_reference(features, made_from or f"{len(pairs)} training images")
