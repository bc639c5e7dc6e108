"""The nucleAIzer inference path in two halves (docs/METHOD.md section 2).

``infer`` runs the networks: normalise -> estimate the size (preseg, unless a diameter is
given) -> rescale to the working size -> Mask R-CNN (optionally with test-time
augmentation) -> labels in the original geometry, and the U-Net's foreground probability.
Its NetworkOutputs hold plain arrays: keep them (or pickle them) to post-process one image
many times, as ``tune`` does.

``postprocess`` turns them into the final labels without any network: minimum confidence ->
post-processing rules -> U-Net contour correction -> optional mask (refine.py).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from .detect import DEFAULT_TILE, detect
from .errors import InputImageError, ModelFileError, NucleaizerError, OptionError
from .foreground import foreground_probability
from .geometry import choose_scale
from .models.io import SPEEDS, model_info_file
from .preprocess import normalize_image, to_hwc
from .refine import PostprocessParams, keep_confident, refine as refine_labels, restrict_to_mask
from .size import SIZE_CONFIDENCE, SizeEstimate, find_nuclei
from .tta import segment_with_tta

MIN_SIDE = 4  # px; smaller images cannot hold a nucleus: empty result
#: post-processing levels: rules and U-Net contour correction / rules only / none
REFINE_LEVELS = ("full", "rules", "none")


@dataclass
class NetworkOutputs:
    """What the networks found in one image, at the working scale chosen for it.

    labels: (H, W) uint16/uint32 Mask R-CNN objects in the input geometry, 0 = background;
    scores: (N,) detection score of label i + 1 at index i, all >= ``confidence`` (0-1).
    diameter: nucleus diameter (px, original image) the image was rescaled for; scale:
    working / original size factor used; scale_clamped: True when the diameter asked for a
    scale outside the allowed range; reference_scale: the scale that brings the nuclei to
    the model's working diameter, in which the post-processing parameters' px are given
    (= scale, except where the *fast* speed enlarged nuclei less); size_estimate: the automatic estimate (None when a
    diameter was given). unet_probability: (H, W) float32 U-Net foreground probability, or
    None (not asked for, or a model without U-Net); mask_probability: (H, W) float32 max
    Mask R-CNN mask probability over the detections, or None (not asked for).
    tta: the labels are the merge of the test-time augmented versions.
    degenerate: why the image holds nothing to find (too small, all NaN, constant; see
    degenerate_reason), "" for an ordinary image.
    seconds: wall time (s) of each stage run: "normalise", "size" (preseg estimate, only
    when no diameter was given), "detect" (Mask R-CNN, TTA included), "unet".
    speed: the speed the working scale was chosen for ("accurate" or "fast").
    """

    labels: np.ndarray
    scores: np.ndarray
    confidence: float
    diameter: float
    scale: float
    scale_clamped: bool
    reference_scale: float = None
    size_estimate: SizeEstimate = None
    unet_probability: np.ndarray = None
    mask_probability: np.ndarray = None
    tta: bool = False
    degenerate: str = ""
    seconds: dict = field(default_factory=dict)
    speed: str = "accurate"

    @property
    def shape(self):
        return self.labels.shape

    @property
    def probability(self):
        """The nucleus probability per pixel: the U-Net's where there is one, else the masks'
        (or None)."""
        return self.unet_probability if self.unet_probability is not None \
            else self.mask_probability


def nothing_to_find(norm):
    """True for a normalised image too small or too flat to hold a nucleus."""
    return min(norm.shape[:2]) < MIN_SIDE or not norm.any()


def degenerate_reason(image, norm):
    """Why ``image`` (its normalize_image ``norm``) holds nothing to find, in words: fewer
    than MIN_SIDE px on a side, no finite pixel value, or one value everywhere; "" when it
    may hold nuclei."""
    h, w = norm.shape[:2]
    if min(h, w) < MIN_SIDE:
        return f"{h}x{w} px, smaller than {MIN_SIDE}x{MIN_SIDE} px"
    if norm.any():
        return ""
    pixels = to_hwc(image)
    finite = pixels[np.isfinite(pixels)]
    if not finite.size:
        return "no finite pixel value: all NaN or infinite"
    if finite.min() == finite.max():
        return f"constant: every {'finite ' if finite.size < pixels.size else ''}pixel is " \
               f"{float(finite.min()):g}"
    return "no contrast after normalisation"


def preseg_size(model, norm, confidence=SIZE_CONFIDENCE, keep_labels=False):
    """SizeEstimate of a normalised (H, W, 3) image from ``model``'s preseg network
    (``labels`` set with ``keep_labels``)."""
    if nothing_to_find(norm):
        labels, diameters = np.zeros(norm.shape[:2], np.uint16), []
    else:
        labels, diameters = find_nuclei(model.preseg, norm, model.device, confidence)
    estimate = SizeEstimate.from_diameters(diameters)
    if keep_labels:
        estimate.labels = labels
    return estimate


def working_range(model, speed="accurate"):
    """(min px, max px) nucleus diameter at the working scale for ``speed`` (SPEEDS;
    None = the model's default): nuclei within it are not rescaled. accurate: both are the
    working diameter (40 px for the shipped model); fast: small nuclei are enlarged only to
    the model's fast_diameter."""
    low = model.fast_diameter if resolve_speed(model, speed) == "fast" else model.working_diameter
    return min(low, model.working_diameter), model.working_diameter


def resolve_speed(model, speed):
    """``speed`` checked (check_speed), or ``model``'s default speed when it is None."""
    return check_speed(model.default_speed if speed is None else speed)


def check_speed(speed):
    """``speed`` when it is one of SPEEDS, else OptionError (one line)."""
    if speed not in SPEEDS:
        raise OptionError(f"speed must be one of {', '.join(SPEEDS)} (got {speed!r})")
    return speed


def infer(model, image, diameter=None, confidence=0.5, unet=True, mask_probability=False,
          tta=False, tile_size=DEFAULT_TILE, speed=None):
    """Run ``model``'s networks on a 2D image; returns NetworkOutputs.

    model: a loaded model (Model or models.io.ModelBundle; it runs on its ``device``).
    image: (H, W), (H, W, C) or (C, H, W) array, any dtype. diameter: typical nucleus
    diameter in px (None = estimate it with preseg). confidence: minimum detection score
    (0-1) of the labels kept. unet: also run the U-Net (when the model has one).
    mask_probability: also return the masks' probability. tta: test-time augmentation (6
    Mask R-CNN passes: the whole segmentation about 2.7x slower, BENCHMARKS.md). tile_size: Mask R-CNN tile, px at the working scale.
    speed: "accurate", "fast" or None (the model's default): see working_range.
    """
    speed = resolve_speed(model, speed)
    working = working_range(model, speed)
    clock = StageClock()
    norm = normalize_image(image)
    clock.done("normalise")
    shape = norm.shape[:2]
    estimate = None
    if diameter is None:
        estimate = preseg_size(model, norm)
        diameter = estimate.median_diameter
        clock.done("size")
    if not diameter > 0:
        raise InputImageError(f"nucleus diameter must be positive (got {diameter})")
    scale, clamped = choose_scale(float(diameter), working, shape)
    reference = choose_scale(float(diameter), model.working_diameter, shape)[0]
    unet = unet and model.unet is not None
    out = NetworkOutputs(np.zeros(shape, np.uint16), np.zeros(0, np.float32), confidence,
                         float(diameter), scale, clamped, reference, estimate, tta=bool(tta),
                         seconds=clock.seconds, speed=speed)
    if nothing_to_find(norm):
        out.degenerate = degenerate_reason(image, norm)
        out.unet_probability = np.zeros(shape, np.float32) if unet else None
        out.mask_probability = np.zeros(shape, np.float32) if mask_probability else None
        return out

    def detect_labels(img, with_probability=False):
        dets = detect(model.main, img, scale, model.device, tile=tile_size, min_score=confidence)
        return dets.to_labels(confidence, with_probability=with_probability)

    if tta:
        out.labels, out.scores = segment_with_tta(lambda img: detect_labels(img)[:2], norm)
        if mask_probability:  # the identity version once more, for its mask probabilities
            out.mask_probability = detect_labels(norm, with_probability=True)[2]
    else:
        out.labels, out.scores, out.mask_probability = detect_labels(norm, mask_probability)
    clock.done("detect")
    if unet:
        out.unet_probability = foreground_probability(model.unet, norm, scale, model.device)
        clock.done("unet")
    return out


class StageClock:
    """Wall time of consecutive stages: ``done(name)`` records the seconds since the last
    call (or since the clock was made) under ``name`` in ``seconds``."""

    def __init__(self):
        self.seconds, self.last = {}, time.perf_counter()

    def done(self, name):
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.last
        self.last = now


def postprocess_params(model, overrides=None, confidence=None):
    """Post-processing parameters: the paper's defaults, updated by those stored with the
    model (model.json "postprocess", e.g. from ``nucleaizer tune``), then by ``overrides``
    (dict or PostprocessParams) and an explicit ``confidence``.

    Every value is checked against refine.PARAM_RANGES: ModelFileError naming model.json
    for a stored one, OptionError for an override (one line, with the allowed range)."""
    values = PostprocessParams().to_dict()
    values.update(model_postprocess(model).to_dict())
    if isinstance(overrides, PostprocessParams):
        overrides = overrides.to_dict()
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if confidence is not None:
        values["confidence"] = confidence
    return PostprocessParams.from_dict(values)


def model_postprocess(model):
    """The PostprocessParams stored with ``model`` (only the values it has are used);
    ModelFileError naming its model.json when one is out of range."""
    try:
        return PostprocessParams.from_dict(model.postprocess)
    except OptionError as e:
        raise ModelFileError(f"{model_info_file(model.path)}: \"postprocess\": {e}") from None


def check_refine_level(refine):
    """Raise NucleaizerError unless ``refine`` is one of REFINE_LEVELS."""
    if refine not in REFINE_LEVELS:
        raise NucleaizerError(f"refine must be one of {', '.join(REFINE_LEVELS)} (got {refine!r})")


def postprocess(outputs, params, refine="full", mask=None):
    """Final (labels, scores) of NetworkOutputs: objects scoring under a ``params.confidence``
    higher than ``outputs.confidence`` removed, then with ``refine`` "rules" the
    post-processing rules (contained objects, p1, p2), with "full" also the U-Net contour
    correction (p3..p5) and p6 when the outputs have a U-Net probability, with "none"
    nothing more. mask: optional (H, W) bool array; only objects mostly inside it are kept,
    clipped to it. Labels are numbered 1..N.

    ``params.confidence`` must be at least ``outputs.confidence`` (what was not detected
    cannot be brought back); with test-time augmentation a higher one removes merged nuclei
    by their mean score, which is not the same as detecting at that confidence.
    """
    check_refine_level(refine)
    if params.confidence < outputs.confidence - 1e-9:
        raise NucleaizerError(f"outputs found at confidence {outputs.confidence} cannot be "
                              f"post-processed at the lower confidence {params.confidence}")
    if mask is not None and np.shape(mask) != outputs.shape:
        raise InputImageError(f"mask of shape {np.shape(mask)} does not match image "
                              f"{outputs.shape}")
    labels, scores = outputs.labels, outputs.scores
    if params.confidence > outputs.confidence:  # TTA's merged scores may lie below the latter
        labels, scores = keep_confident(labels, scores, params.confidence)
    if refine != "none":
        prob = outputs.unet_probability if refine == "full" else None
        scale = outputs.scale if outputs.reference_scale is None else outputs.reference_scale
        labels, scores = refine_labels(labels, scores, scale, params, prob)
    if mask is not None:
        labels, scores = restrict_to_mask(labels, scores, np.asarray(mask, bool))
    return labels, scores
