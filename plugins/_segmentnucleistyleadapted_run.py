"""How SegmentNucleiStyleAdapted (segmentnucleistyleadapted.py) runs: it checks the input
image, reads the nucleus diameter from an image measurement where asked, combines the masks,
segments with one call to the backend's ``segment_image``, and turns the result into
CellProfiler objects, measurements, the probability image and the display's table.

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
segmentnucleistyleadapted.py imports this file. Copy it along with the plugins.
"""
import logging

import numpy
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT, COLTYPE_INTEGER, IMAGE
from cellprofiler_core.image import Image

from _nucleaizer_common import backend, objects_from_labels

LOGGER = logging.getLogger(__name__)

C_NUCLEAIZER = "Nucleaizer"
FTR_DIAMETER = "Diameter"
FTR_SCALE = "Scale"
FTR_SCALE_CLAMPED = "ScaleClamped"
FTR_SIZE_RELIABLE = "SizeReliable"
FTR_CONFIDENCE = "Confidence"
FTR_DEGENERATE = "DegenerateImage"  # 1: too small, constant or all NaN (no nuclei), else 0
FTR_STYLE_DISTANCE = "StyleDistance"  # distance to the trained styles (NaN: not measured)
FTR_UNFAMILIAR_STYLE = "UnfamiliarStyle"  # 1: style distance above the model's threshold
IMAGE_FEATURES = (
    (FTR_DIAMETER, COLTYPE_FLOAT),
    (FTR_SCALE, COLTYPE_FLOAT),
    (FTR_SCALE_CLAMPED, COLTYPE_INTEGER),
    (FTR_SIZE_RELIABLE, COLTYPE_INTEGER),
    (FTR_DEGENERATE, COLTYPE_INTEGER),
    (FTR_STYLE_DISTANCE, COLTYPE_FLOAT),
    (FTR_UNFAMILIAR_STYLE, COLTYPE_INTEGER),
)
M_CONFIDENCE = "%s_%s" % (C_NUCLEAIZER, FTR_CONFIDENCE)


def image_feature(feature, object_name):
    """Image measurement name, e.g. Nucleaizer_Diameter_Nuclei."""
    return "%s_%s_%s" % (C_NUCLEAIZER, feature, object_name)


def check_input(module, image):
    """InputImageError unless ``image`` is 2D. (Degenerate 2D images, even 1x1, are
    segmented: zero nuclei and the DegenerateImage flag, see add_results.)"""
    nb = backend()
    x_name = module.x_name.value
    if image.volumetric:
        raise nb.InputImageError(
            "%s segments 2D images, but image %r is a 3D volume (shape %s). Load the "
            "stack as separate 2D planes in NamesAndTypes (uncheck 'Process as 3D')."
            % (module.module_name, x_name, image.pixel_data.shape)
        )


def measured_diameter(measurements, name):
    """The current image set's image measurement ``name`` as a float (NaN when it is
    missing or not a number)."""
    value = None
    if measurements.has_current_measurements(IMAGE, name):
        value = measurements.get_current_image_measurement(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def combined_mask(module, workspace, image):
    """The mask to segment within: the input image's own mask and, when the module
    restricts detection to a mask image, that image's non-zero pixels (and its mask);
    None for no mask."""
    mask = image.mask if image.has_mask else None
    if module.use_mask:
        mask_image = workspace.image_set.get_image(module.mask_name.value)
        data = mask_image.pixel_data
        if data.ndim == 3 and mask_image.multichannel:
            data = data.any(axis=-1)
        if data.shape != image.pixel_data.shape[:2]:
            raise backend().InputImageError(
                "mask image %r has shape %s but image %r has shape %s"
                % (
                    module.mask_name.value,
                    data.shape,
                    module.x_name.value,
                    image.pixel_data.shape[:2],
                )
            )
        data = data > 0
        if mask_image.has_mask:
            data = data & mask_image.mask
        mask = data if mask is None else (mask & data)
    return mask


def segment(module, workspace, image, diameter):
    """The backend's SegmentationResult of ``image`` with the module's settings (the
    nucleus ``diameter`` in px, None to estimate it)."""
    nb = backend()
    try:
        options = module.segment_options(diameter)
        return nb.segment_image(
            image.pixel_data, mask=combined_mask(module, workspace, image), **options
        )
    except nb.NucleaizerError as e:
        raise type(e)(
            "%s on image %r: %s" % (module.module_name, module.x_name.value, e)
        ) from e


def add_results(module, workspace, image, result):
    """The segmentation ``result`` as the module's objects (with the standard measurements),
    its image measurements, the nuclei's confidence and the probability image, as the
    settings ask; a degenerate image is flagged and logged. Returns (label image, number
    of objects)."""
    y_name = module.y_name.value
    labels = numpy.asarray(result.labels).astype(numpy.int32)
    objects = objects_from_labels(labels)
    objects.parent_image = image
    workspace.object_set.add_objects(objects, y_name)
    module.add_measurements(workspace)

    m = workspace.measurements
    values = {
        FTR_DIAMETER: float(result.diameter),
        FTR_SCALE: float(result.scale),
        FTR_SCALE_CLAMPED: int(bool(result.scale_clamped)),
        FTR_SIZE_RELIABLE: int(size_reliable(result)),
        FTR_DEGENERATE: int(bool(result.degenerate)),
        FTR_STYLE_DISTANCE: (float("nan") if result.style_distance is None
                             else float(result.style_distance)),
        FTR_UNFAMILIAR_STYLE: int(result.unfamiliar_style),
    }
    for feature, value in values.items():
        m.add_image_measurement(image_feature(feature, y_name), value)
    if result.degenerate:
        warn_degenerate(module, m, result.degenerate)
    if result.unfamiliar_style:
        warn_unfamiliar_style(module, m, result)
    if module.want_confidence:
        m.add_measurement(y_name, M_CONFIDENCE, numpy.asarray(result.scores, dtype=float))

    if module.want_probability:
        probability = Image(
            numpy.asarray(result.probability, dtype=numpy.float32),
            parent_image=image,
            dimensions=2,
        )
        workspace.image_set.add(module.probability_name.value, probability)
    return labels, objects.count


def warn_degenerate(module, measurements, reason):
    """Log that this image set's input image is degenerate (``reason``) and has no nuclei."""
    LOGGER.warning(
        "%s: image %r of image set #%d is degenerate (%s): no nuclei, %s set to 1",
        module.module_name,
        module.x_name.value,
        measurements.image_set_number,
        reason,
        image_feature(FTR_DEGENERATE, module.y_name.value),
    )


def warn_unfamiliar_style(module, measurements, result):
    """Log that this image's style lies beyond the model's trained styles (once per module
    in a process, so that a screen of such images does not flood the log; every image's
    value is in the UnfamiliarStyle measurement)."""
    if getattr(module, "_warned_unfamiliar_style", False):
        return
    module._warned_unfamiliar_style = True
    LOGGER.warning(
        "%s: image %r of image set #%d looks unlike the images the model was trained or "
        "adapted on (style distance %.2f, threshold %.2f); segmentation may be poor. "
        "Adapting the model to these images with TrainStyleAdaptation is likely to help "
        "(%s flags each such image; this warning is given once)",
        module.module_name,
        module.x_name.value,
        measurements.image_set_number,
        result.style_distance,
        result.style_threshold,
        image_feature(FTR_UNFAMILIAR_STYLE, module.y_name.value),
    )


def size_reliable(result):
    """False when the automatic size estimate measured too few nuclei."""
    return result.size_estimate is None or bool(result.size_estimate.reliable)


STAGE_NAMES = {"size": "size estimate", "detect": "Mask R-CNN", "unet": "U-Net",
               "postprocess": "post-processing"}


def stage_times(seconds):
    """'size estimate 0.31 s, Mask R-CNN 0.84 s, ...' of a result's stage_seconds."""
    return ", ".join("%s %.2f s" % (STAGE_NAMES[k], seconds[k]) for k in STAGE_NAMES
                     if k in seconds)


def style_text(result):
    """The display's style-distance cell: the value and the model's threshold."""
    if result.style_distance is None:
        return "- (the model stores no style reference)"
    text = "%.2f (threshold %.2f)" % (result.style_distance, result.style_threshold)
    if result.unfamiliar_style:
        text += ": unlike the trained styles, consider TrainStyleAdaptation"
    return text


def summary_statistics(result, labels, count, diameter):
    """The display's table of one image's segmentation (``diameter``: the one asked for,
    None when automatic)."""
    from nucleaizer_backend.labels import equivalent_diameters

    diameters = equivalent_diameters(labels)
    median_diameter = float(numpy.median(diameters)) if len(diameters) else float("nan")
    scores = numpy.asarray(result.scores, dtype=float)
    reliable = size_reliable(result)
    return [
        ["Nuclei", "%d" % count],
        ["Median nucleus diameter", "%.1f px" % median_diameter],
        [
            "Diameter used" + ("" if diameter is not None else " (automatic)"),
            "%.1f px%s" % (result.diameter, "" if reliable else " (unreliable: too few nuclei)"),
        ],
        [
            "Scale (working / original)",
            "%.3g%s, %s speed" % (result.scale, " (clamped)" if result.scale_clamped else "",
                                  result.speed),
        ],
        ["Median confidence", "%.2f" % float(numpy.median(scores)) if len(scores) else "-"],
        ["Style distance", style_text(result)],
        ["Time", "%.2f s (%s)" % (result.seconds, stage_times(result.stage_seconds))],
    ] + ([["Degenerate image", result.degenerate]] if result.degenerate else []) + [
        ["Discarded: %s" % what, "%d" % n]
        for what, n in (("outside the diameter range", result.discarded["size"]),
                        ("touching the border", result.discarded["border"]))
        if n
    ]
