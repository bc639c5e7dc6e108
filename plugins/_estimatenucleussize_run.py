"""How EstimateNucleusSize (estimatenucleussize.py) runs: it estimates the nucleus size of a
CellProfiler image with one call to the backend's ``estimate_size``, or of every image of a
group before its first cycle (pooled with ``SizeEstimate.pooled``), and turns the estimates
into image measurements, objects and the display's table.

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
estimatenucleussize.py imports this file. Copy it along with the plugins.
"""
import math

import numpy
from cellprofiler_core.constants.measurement import (
    COLTYPE_FLOAT,
    COLTYPE_INTEGER,
    FF_COUNT,
    IMAGE,
    M_LOCATION_CENTER_X,
    M_LOCATION_CENTER_Y,
    M_LOCATION_CENTER_Z,
    M_NUMBER_OBJECT_NUMBER,
)

from _nucleaizer_common import (
    backend,
    collect_group,
    module_after_providers,
    objects_from_labels,
)

C_NUCLEUS_SIZE = "NucleusSize"
FTR_MEDIAN_DIAMETER = "MedianDiameter"
FTR_SPREAD = "Spread"
FTR_COUNT = "Count"
FTR_RELIABLE = "Reliable"
FTR_IMAGE_MEDIAN_DIAMETER = "ImageMedianDiameter"
FTR_IMAGE_COUNT = "ImageCount"
FEATURES = (
    (FTR_MEDIAN_DIAMETER, COLTYPE_FLOAT),
    (FTR_SPREAD, COLTYPE_FLOAT),
    (FTR_COUNT, COLTYPE_INTEGER),
    (FTR_RELIABLE, COLTYPE_INTEGER),
    (FTR_IMAGE_MEDIAN_DIAMETER, COLTYPE_FLOAT),
    (FTR_IMAGE_COUNT, COLTYPE_INTEGER),
)


def feature(name):
    return "%s_%s" % (C_NUCLEUS_SIZE, name)


def estimate(module, image, image_number, return_labels=False):
    """SizeEstimate of one CellProfiler image (clear error for 3D); with ``return_labels``
    its ``labels`` are the measured nuclei."""
    nb = backend()
    if image.volumetric:
        raise nb.InputImageError(
            "%s measures 2D images, but image %r is a 3D volume (shape %s). Load the "
            "stack as 2D planes in NamesAndTypes."
            % (module.module_name, module.image_name.value, image.pixel_data.shape)
        )
    module.share_machine_with_other_workers()
    try:
        return nb.estimate_size(
            image.pixel_data,
            model=module.model_path(),
            device=module.device(),
            confidence=float(module.confidence.value),
            return_labels=return_labels,
        )
    except nb.NucleaizerError as e:
        raise type(e)(
            "%s on image %r (#%d): %s"
            % (module.module_name, module.image_name.value, image_number, e)
        ) from e


def estimate_group(module, workspace, grouping, image_numbers, logger):
    """Estimate every image set of the group (through the pipeline's providers, up to the
    module that provides the input image) and pool them. Returns ({image number as str:
    its estimate's dict, or {"error": message} (logged to ``logger``)}, the pooled
    estimate's dict)."""
    nb = backend()
    stop = module_after_providers(workspace.pipeline, module, [module.image_name])
    images, estimates = {}, []

    def measure(w, number):
        image = w.image_set.get_image(module.image_name.value, cache=False)
        try:
            result = estimate(module, image, number)
        except nb.NucleaizerError as e:
            logger.warning("%s", e)
            images[str(number)] = {"error": str(e)}
        else:
            images[str(number)] = result.to_dict()
            estimates.append(result)

    message = "%s is measuring the nuclei of %d images" % (module.module_name, len(image_numbers))
    collect_group(module, workspace, grouping, image_numbers, stop, message, measure)
    return images, nb.SizeEstimate.pooled(estimates).to_dict()


def add_size_measurements(measurements, used, own):
    """The image measurements of estimate ``used`` (this image's, or its group's) and of
    ``own`` (this image's)."""
    values = {
        FTR_MEDIAN_DIAMETER: float(used.median_diameter),
        FTR_SPREAD: float(used.spread),
        FTR_COUNT: int(used.count),
        FTR_RELIABLE: int(bool(used.reliable)),
        FTR_IMAGE_MEDIAN_DIAMETER: float(own.median_diameter),
        FTR_IMAGE_COUNT: int(own.count),
    }
    for name, value in values.items():
        measurements.add_image_measurement(feature(name), value)


def object_columns(name):
    """The measurement columns of the objects ``name``."""
    return [
        (name, M_LOCATION_CENTER_X, COLTYPE_FLOAT),
        (name, M_LOCATION_CENTER_Y, COLTYPE_FLOAT),
        (name, M_LOCATION_CENTER_Z, COLTYPE_FLOAT),
        (name, M_NUMBER_OBJECT_NUMBER, COLTYPE_INTEGER),
        (IMAGE, FF_COUNT % name, COLTYPE_INTEGER),
    ]


def add_objects(module, workspace, own, image):
    """The nuclei of estimate ``own`` as the module's objects, with the standard
    Count/Location/Number; returns their label image."""
    labels = numpy.asarray(own.labels).astype(numpy.int32)
    name = module.objects_name.value
    objects = objects_from_labels(labels)
    objects.parent_image = image
    workspace.object_set.add_objects(objects, name)
    centers = objects.center_of_mass()
    if len(centers) == 0:
        center_y, center_x = numpy.zeros(0), numpy.zeros(0)
    else:
        center_y, center_x = numpy.asarray(centers).transpose()
    m = workspace.measurements
    m.add_measurement(name, M_LOCATION_CENTER_X, center_x)
    m.add_measurement(name, M_LOCATION_CENTER_Y, center_y)
    m.add_measurement(name, M_LOCATION_CENTER_Z, numpy.zeros(len(center_x)))
    m.add_measurement(name, M_NUMBER_OBJECT_NUMBER, numpy.arange(1, objects.count + 1))
    m.add_measurement(IMAGE, FF_COUNT % name, numpy.array([objects.count], dtype=float))
    return labels


def summary_statistics(own, used, group_size=None):
    """The display's table: this image's estimate ``own`` and, for a group of
    ``group_size`` images, the pooled ``used``."""
    statistics = [
        ["This image: median diameter", "%.1f px" % own.median_diameter],
        ["This image: nuclei measured", "%d" % own.count],
        ["This image: spread (IQR/median)", _fmt(own.spread)],
    ]
    if group_size is not None:
        statistics += [
            ["Group: median diameter", "%.1f px" % used.median_diameter],
            ["Group: nuclei measured", "%d" % used.count],
            ["Group: spread (IQR/median)", _fmt(used.spread)],
            ["Group: images", "%d" % group_size],
        ]
    statistics += [["Reliable", "yes" if used.reliable else "no (too few nuclei)"]]
    return statistics


def _fmt(value):
    return "-" if not math.isfinite(value) else "%.2f" % value
