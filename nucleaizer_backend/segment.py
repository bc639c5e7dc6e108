"""The nucleAIzer inference path: normalise -> estimate size -> rescale to the working size
-> Mask R-CNN (optionally with test-time augmentation) -> labels in the original geometry
-> post-processing rules and U-Net contour refinement (METHOD.md section 2). A Model holds
a loaded model to segment many images with."""
import time
from dataclasses import dataclass, fields

import numpy as np

from .detect import DEFAULT_TILE, detect
from .errors import InputImageError
from .foreground import foreground_probability
from .geometry import choose_scale
from .models.io import ModelBundle, load_model
from .preprocess import normalize_image
from .refine import PostprocessParams, refine as refine_labels
from .size import SIZE_CONFIDENCE, SizeEstimate, find_nuclei
from .tta import segment_with_tta

MIN_SIDE = 4  # px; smaller images cannot hold a nucleus: empty result


@dataclass
class SegmentationResult:
    """Everything one segmentation produced.

    labels: (H, W) uint16/uint32 label image in the input geometry, 0 = background.
    scores: (N,) detection confidence of label i + 1 at index i.
    diameter: nucleus diameter (px, original image) the image was rescaled for.
    scale: working / original size factor actually used; scale_clamped: True when the
    diameter asked for a scale outside geometry.SCALE_RANGE or the pixel limit.
    size_estimate: the automatic estimate (None when a diameter was given).
    probability: (H, W) float32 nucleus probability per pixel, or None: the U-Net's when
    refinement ran with one, else the Mask R-CNN masks' (max over detections).
    params: the post-processing parameters used; refined, tta: which steps ran.
    seconds: wall time of the whole call.
    """

    labels: np.ndarray
    scores: np.ndarray
    diameter: float
    scale: float
    scale_clamped: bool
    size_estimate: SizeEstimate = None
    probability: np.ndarray = None
    seconds: float = 0.0
    params: PostprocessParams = None
    refined: bool = False
    tta: bool = False

    @property
    def count(self):
        return len(self.scores)


class Model(ModelBundle):
    """A loaded model (its networks on one device) to segment many images with::

        model = Model.load("adapted_model")      # or Model.load() for the shipped one
        labels = model.segment(image).labels
        diameter = model.estimate_size(image).median_diameter

    Loading goes through the bounded cache of models.io.load_model: loading the same
    unchanged folder again is free, and a folder whose files changed is loaded anew.
    """

    @classmethod
    def load(cls, path=None, device="auto"):
        """The model folder or main network file ``path`` (None = shipped default) on
        ``device`` ("auto": CUDA when available, "cpu", "cuda", "cuda:N")."""
        bundle = load_model(path, device)
        return cls(**{f.name: getattr(bundle, f.name) for f in fields(bundle)})

    def segment(self, image, **kwargs):
        """segment_image(image, model=self, **kwargs): a SegmentationResult."""
        return segment_image(image, model=self, **kwargs)

    def estimate_size(self, image, **kwargs):
        """estimate_size(image, model=self, **kwargs): a SizeEstimate."""
        return estimate_size(image, model=self, **kwargs)


def _nothing_to_find(norm):
    """True for a normalised image too small or too flat to hold a nucleus."""
    return min(norm.shape[:2]) < MIN_SIDE or not norm.any()


def _preseg_estimate(network, norm, device, confidence, keep_labels=False):
    """SizeEstimate of a normalised image from preseg (``labels`` set with ``keep_labels``)."""
    if _nothing_to_find(norm):
        labels, diameters = np.zeros(norm.shape[:2], np.uint16), []
    else:
        labels, diameters = find_nuclei(network, norm, device, confidence)
    estimate = SizeEstimate.from_diameters(diameters)
    if keep_labels:
        estimate.labels = labels
    return estimate


def estimate_size(image, model=None, device="auto", confidence=SIZE_CONFIDENCE,
                  return_labels=False):
    """Typical nucleus size of a 2D image (any dtype, gray or colour) as a SizeEstimate;
    with ``return_labels`` its ``labels`` hold preseg's nuclei (input geometry).
    model: a Model, or a model folder / network file (None = shipped default) loaded on
    ``device``."""
    bundle = load_model(model, device)
    return _preseg_estimate(bundle.preseg, normalize_image(image), bundle.device, confidence,
                            return_labels)


def postprocess_params(bundle, overrides=None, confidence=None):
    """Post-processing parameters: the paper's defaults, updated by those stored with the
    model (model.json "postprocess", e.g. from ``nucleaizer tune``), then by ``overrides``
    (dict or PostprocessParams) and an explicit ``confidence``."""
    values = PostprocessParams().to_dict()
    values.update(PostprocessParams.from_dict(bundle.postprocess).to_dict()
                  if bundle.postprocess else {})
    if isinstance(overrides, PostprocessParams):
        overrides = overrides.to_dict()
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if confidence is not None:
        values["confidence"] = confidence
    params = PostprocessParams.from_dict(values)
    if not 0.0 <= params.confidence <= 1.0:
        raise InputImageError(f"confidence must be between 0 and 1 (got {params.confidence})")
    return params


def segment_image(image, model=None, diameter=None, device="auto", confidence=None,
                  mask=None, tile_size=DEFAULT_TILE, return_probability=False, refine=True,
                  use_unet=True, tta=False, postprocess=None):
    """Segment the nuclei of a 2D image; returns a SegmentationResult.

    image: (H, W), (H, W, C) or (C, H, W) array, any dtype. model: a Model, or a model folder
    or network file (None = shipped default) loaded on ``device`` ("auto": CUDA when
    available). diameter: typical nucleus diameter in px (None = estimate
    it). confidence: minimum detection score (0-1; None = the model's, default 0.5).
    mask: optional (H, W) bool array; only objects mostly inside it are kept, clipped to it.
    refine: apply the post-processing rules (contained objects, p1, p2) and, with
    ``use_unet`` and a model that has a U-Net, the contour correction (p3..p5) and the p6
    rule. tta: test-time augmentation (6 versions: about 6x slower).
    postprocess: p1..p6 overrides (dict or PostprocessParams; see refine.PostprocessParams).
    """
    t0 = time.perf_counter()
    bundle = load_model(model, device)
    device = bundle.device
    params = postprocess_params(bundle, postprocess, confidence)
    norm = normalize_image(image)
    shape = norm.shape[:2]
    if mask is not None and np.shape(mask) != shape:
        raise InputImageError(f"mask of shape {np.shape(mask)} does not match image {shape}")
    estimate = None
    if diameter is None:
        estimate = _preseg_estimate(bundle.preseg, norm, device, SIZE_CONFIDENCE)
        diameter = estimate.median_diameter
    if not diameter > 0:
        raise InputImageError(f"nucleus diameter must be positive (got {diameter})")
    scale, clamped = choose_scale(float(diameter), bundle.working_diameter, shape)
    use_unet = refine and use_unet and bundle.unet is not None
    prob = None
    if _nothing_to_find(norm):
        labels, scores = np.zeros(shape, np.uint16), np.zeros(0, np.float32)
        prob = np.zeros(shape, np.float32) if return_probability else None
    else:
        # the probability returned: the U-Net's where there is one, else the masks'
        unet_prob = bundle.unet is not None and (use_unet or return_probability)
        mask_prob = return_probability and not unet_prob

        def detect_labels(img, with_probability=False):
            dets = detect(bundle.main, img, scale, device, tile=tile_size,
                          min_score=params.confidence)
            return dets.to_labels(params.confidence, with_probability=with_probability)

        if tta:
            labels, scores = segment_with_tta(lambda img: detect_labels(img)[:2], norm)
            if mask_prob:  # the identity version once more, for its mask probabilities
                prob = detect_labels(norm, with_probability=True)[2]
        else:
            labels, scores, prob = detect_labels(norm, with_probability=mask_prob)
        if unet_prob:
            prob = foreground_probability(bundle.unet, norm, scale, device)
        if refine:
            labels, scores = refine_labels(labels, scores, scale, params,
                                           prob if use_unet else None)
    if mask is not None:
        labels, scores = restrict_to_mask(labels, scores, np.asarray(mask, bool))
    return SegmentationResult(labels, scores, float(diameter), scale, clamped, estimate,
                              prob if return_probability else None,
                              time.perf_counter() - t0, params, bool(refine), bool(tta))


def restrict_to_mask(labels, scores, mask):
    """Keep objects with at least half their area inside ``mask``, clipped to it; renumbered."""
    from .labels import label_dtype

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


def segment(image, model=None, diameter=None, device="auto", confidence=None, **kwargs):
    """Label image (same height/width as ``image``, 0 = background) of its nuclei."""
    return segment_image(image, model, diameter, device, confidence, **kwargs).labels
