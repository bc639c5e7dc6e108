"""The public segmentation API: a Model you can hold, and segment_image / segment /
estimate_size taking a Model or a model path.

segment_image = inference.infer (the networks) + inference.postprocess (the rules), with
the post-processing parameters of the model and the caller (docs/METHOD.md section 2).
"""
import logging
import time
import warnings
from dataclasses import dataclass, field, fields

import numpy as np

from .detect import DEFAULT_TILE
from .inference import check_refine_level, infer, postprocess_params, preseg_size
from .inference import postprocess as postprocess_outputs  # segment_image has an argument so named
from .labels import discard_objects
from .models.io import ModelBundle, load_model
from .preprocess import normalize_image
from .refine import PostprocessParams
from .size import SIZE_CONFIDENCE, SizeEstimate
from .style.distance import style_distance

LOGGER = logging.getLogger(__name__)

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
    the model has one, else the Mask R-CNN masks' (max over detections).
    params: the post-processing parameters used; refined, tta: which steps ran.
    seconds: wall time of the whole call.
    degenerate: why the image could hold no nucleus (e.g. "1x1 px, smaller than 4x4 px",
    "constant: every pixel is 0.3", "no finite pixel value (all NaN or infinite)"); its
    labels are then empty. "" for an ordinary image.
    discarded: {"size": n, "border": n} nuclei dropped by ``diameter_range`` and
    ``discard_border`` (labels.discard_objects).
    stage_seconds: wall time (s) of each stage: "normalise", "size" (only when the diameter
    was estimated), "detect", "unet", "postprocess" (rules, U-Net contours, filters), "style"
    (the style distance); the rest of ``seconds`` is model loading and bookkeeping.
    speed: the speed used ("accurate" or "fast"; see segment_image).
    style_distance: how far the image's style lies from the styles the model was trained or
    adapted on (style.distance; standardised feature units), style_threshold: the model's
    limit above which that style is unlike every trained one (both None when the model
    stores no style reference or the image is degenerate); see :attr:`unfamiliar_style`.
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
    degenerate: str = ""
    discarded: dict = field(default_factory=lambda: {"size": 0, "border": 0})
    stage_seconds: dict = field(default_factory=dict)
    speed: str = "accurate"
    style_distance: float = None
    style_threshold: float = None

    @property
    def count(self):
        return len(self.scores)

    @property
    def unfamiliar_style(self):
        """True when the image's style lies beyond the model's threshold: adapting the model
        to such images (TrainStyleAdaptation, ``nucleaizer adapt``) is likely to pay."""
        return (self.style_distance is not None
                and self.style_distance > self.style_threshold)


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


def refine_level(refine="full", use_unet=None):
    """The post-processing level ("full", "rules" or "none") of segment_image's ``refine``.

    The booleans of earlier releases still work, with a DeprecationWarning: refine=True is
    "full" ("rules" with use_unet=False), refine=False is "none"."""
    if isinstance(refine, (bool, np.bool_)) or use_unet is not None:
        warnings.warn("segment_image(refine=True/False, use_unet=...) is deprecated: use "
                      "refine='full', 'rules' or 'none'", DeprecationWarning, stacklevel=3)
        if isinstance(refine, (bool, np.bool_)):
            refine = "full" if refine else "none"
        if refine == "full" and use_unet is not None and not use_unet:
            refine = "rules"
    check_refine_level(refine)
    return refine


def estimate_size(image, model=None, device="auto", confidence=SIZE_CONFIDENCE,
                  return_labels=False):
    """Typical nucleus size of a 2D image (any dtype, gray or colour) as a SizeEstimate;
    with ``return_labels`` its ``labels`` hold preseg's nuclei (input geometry).
    model: a Model, or a model folder / network file (None = shipped default) loaded on
    ``device``."""
    return preseg_size(load_model(model, device), normalize_image(image), confidence,
                       return_labels)


def segment_image(image, model=None, diameter=None, device="auto", confidence=None,
                  mask=None, tile_size=DEFAULT_TILE, return_probability=False, refine="full",
                  use_unet=None, tta=False, postprocess=None, discard_border=False,
                  diameter_range=None, speed=None):
    """Segment the nuclei of a 2D image; returns a SegmentationResult.

    image: (H, W), (H, W, C) or (C, H, W) array, any dtype. model: a Model, or a model folder
    or network file (None = shipped default) loaded on ``device`` ("auto": CUDA when
    available). diameter: typical nucleus diameter in px (None = estimate it). confidence:
    minimum detection score (0-1; None = the model's: 0.8 for the shipped one). mask: optional (H, W)
    bool array; only objects mostly inside it are kept, clipped to it.
    refine: "full" (default): the post-processing rules (contained objects, p1, p2) and,
    with a model that has a U-Net, the contour correction (p3..p5) and the p6 rule; "rules":
    the rules only; "none": the Mask R-CNN objects as they are. (use_unet and a boolean
    refine are deprecated: see refine_level.) tta: test-time augmentation (6 Mask R-CNN
    passes: about 2.7x slower in all, BENCHMARKS.md). postprocess: p1..p6 overrides (dict or PostprocessParams; see
    refine.PostprocessParams). tile_size: Mask R-CNN tile, px at the working scale.
    discard_border: drop the nuclei touching the image edge; diameter_range: (min px, max
    px) of the equivalent diameter of the nuclei kept (IdentifyPrimaryObjects' filters,
    labels.discard_objects; the counts dropped are in ``result.discarded``).
    speed: "accurate" (every image's nuclei brought to the model's working diameter, 40 px
    for the shipped model), "fast" (small nuclei enlarged only to the model's fast_diameter:
    less time on images of small nuclei, BENCHMARKS.md) or None: the model's default.
    """
    t0 = time.perf_counter()
    level = refine_level(refine, use_unet)
    model = load_model(model, device)
    params = postprocess_params(model, postprocess, confidence)
    outputs = infer(model, image, diameter, params.confidence,
                    unet=level == "full" or return_probability,
                    mask_probability=return_probability and model.unet is None,
                    tta=tta, tile_size=tile_size, speed=speed)
    t_post = time.perf_counter()
    labels, scores = postprocess_outputs(outputs, params, level, mask)
    labels, scores, discarded = discard_objects(labels, scores, discard_border, diameter_range)
    stage_seconds = dict(outputs.seconds, postprocess=time.perf_counter() - t_post)
    t_style = time.perf_counter()
    distance, threshold = (None, None) if outputs.degenerate else style_distance(model, image)
    stage_seconds["style"] = time.perf_counter() - t_style
    if outputs.degenerate:
        LOGGER.warning("degenerate image (%s): no nuclei", outputs.degenerate)
    return SegmentationResult(labels, scores, outputs.diameter, outputs.scale,
                              outputs.scale_clamped, outputs.size_estimate,
                              outputs.probability if return_probability else None,
                              time.perf_counter() - t0, params, level != "none", bool(tta),
                              outputs.degenerate, discarded, stage_seconds, outputs.speed,
                              distance, threshold)


def segment(image, model=None, diameter=None, device="auto", confidence=None, **kwargs):
    """Label image (same height/width as ``image``, 0 = background) of its nuclei."""
    return segment_image(image, model, diameter, device, confidence, **kwargs).labels
