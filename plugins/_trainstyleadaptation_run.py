"""How TrainStyleAdaptation (trainstyleadaptation.py) runs: it collects the images of a
group (one entry per image set: its pixels, name and annotation labels), as the cycles run
or by loading the whole group before its first cycle, adapts to them with one call to the
backend's ``adapt``, and reports the result (the display's tables and sheet, the
experiment measurements read back from the model folders).

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
trainstyleadaptation.py imports this file. Copy it along with the plugins.
"""
import os

import numpy
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT, COLTYPE_INTEGER, COLTYPE_VARCHAR

from _nucleaizer_common import backend, collect_group, image_set_name, module_after_providers


def check_2d(module, image, number):
    """InputImageError unless the input image of image set ``number`` is 2D."""
    if image.volumetric:
        raise backend().InputImageError(
            "%s adapts to 2D images, but image %r (#%d) is a 3D volume (shape %s). Load "
            "the stack as 2D planes in NamesAndTypes."
            % (module.module_name, module.image_name.value, number, image.pixel_data.shape)
        )


def image_entry(module, image, object_set, measurements, number):
    """(number, name, float32 pixels, int32 labels or None) of one image set: its input
    image and, with annotations, its annotation objects (None where they are empty)."""
    check_2d(module, image, number)
    pixels = numpy.asarray(image.pixel_data, dtype=numpy.float32)
    labels = None
    if module.use_annotations:
        objects = object_set.get_objects(module.annotation_objects.value)
        labels = numpy.asarray(objects.segmented, dtype=numpy.int32)
        if labels.shape != pixels.shape[:2]:
            raise backend().InputImageError(
                "%s: annotation objects %r have shape %s but image %r (#%d) has shape %s"
                % (
                    module.module_name,
                    module.annotation_objects.value,
                    labels.shape,
                    module.image_name.value,
                    number,
                    pixels.shape[:2],
                )
            )
        if not labels.any():
            labels = None  # not annotated: automatic masks
    name = image_set_name(measurements, module.image_name.value, number)
    return (int(number), name, pixels, labels)


def stop_module(module, pipeline):
    """The module just after the last one that provides the input image (and the
    annotation objects)."""
    wanted = [module.image_name]
    if module.use_annotations:
        wanted.append(module.annotation_objects)
    return module_after_providers(pipeline, module, wanted)


def load_group(module, workspace, grouping, image_numbers):
    """The entries of every image set of the group, through the pipeline's providers."""

    def entry(w, number):
        image = w.image_set.get_image(module.image_name.value, cache=False)
        return image_entry(module, image, w.object_set, w.measurements, number)

    message = "%s is loading the %d images of the group" % (module.module_name, len(image_numbers))
    stop = stop_module(module, workspace.pipeline)
    return collect_group(module, workspace, grouping, image_numbers, stop, message, entry)


def adapt_group(module, entries, folder, logger, progress):
    """Adapt ``module``'s base model to the collected ``entries`` into ``folder``, logging
    to ``logger`` (``progress``: the backend's progress callback); returns the summary kept
    for the display (JSON-serialisable)."""
    nb = backend()
    if not entries:
        raise nb.NucleaizerError(
            "%s: no image of the group reached this module, nothing to adapt to"
            % module.module_name
        )
    names = [name for _, name, _, _ in entries]
    counts = {n: names.count(n) for n in names}
    images, annotations = [], {}
    for number, name, pixels, labels in entries:
        if counts[name] > 1:
            name = "%s_%d" % (name, number)
        images.append((name, pixels))
        if labels is not None:
            annotations[name] = labels
    prefix = "%s (#%d)" % (module.module_name, module.module_num)
    logger.info(
        "%s: adapting %s to %d images (%d annotated), %s preset, into %s",
        prefix,
        module.model_path() or "the shipped model",
        len(images),
        len(annotations),
        module.preset.value.lower(),
        folder,
    )
    try:
        result = nb.adapt(
            images,
            folder,
            annotations=annotations or None,
            config=module.adapt_config(),
            progress=progress,
        )
    except nb.NucleaizerError as e:
        raise type(e)("%s: %s" % (module.module_name, e)) from e
    lines = list(result.report())
    for line in lines:
        logger.info("%s: %s", prefix, line)
    return {
        "model_dir": str(result.model_dir),
        "images": int(result.n_images),
        "styles": int(result.n_clusters),
        "style_models": int(result.n_styles_learned),
        "skipped": int(len(result.skipped)),
        "synthetic": int(result.synthetic_count),
        "seconds": float(sum(result.seconds.values())),
        "report": lines,
        "sheet": str(result.style_sheet) if result.style_sheet else None,
    }


def summary_statistics(result):
    """The display's table of the group's adaptation (``result``: adapt_group's summary;
    None when it did not run, in test mode)."""
    statistics = [["Adapted model", result["model_dir"] if result else "not adapted (test mode)"]]
    if result:
        statistics += [
            ["Images adapted to", "%d" % result["images"]],
            ["Styles (with a style model)", "%d (%d)" % (result["styles"], result["style_models"])],
        ]
    return statistics


def read_sheet(path):
    """The style sheet at ``path`` as an RGB array (None when there is none)."""
    if not path or not os.path.isfile(path):
        return None
    import imageio.v3 as iio

    return numpy.asarray(iio.imread(path))[..., :3]


# ---------------------------------------------------------------- experiment measurements

C_STYLE_ADAPTATION = "StyleAdaptation"
FTR_MODEL_FOLDER = "ModelFolder"
# (feature, column type, the AdaptationInfo field summed over the run's model folders)
FEATURES = (
    (FTR_MODEL_FOLDER, COLTYPE_VARCHAR, None),
    ("Images", COLTYPE_INTEGER, "images"),
    ("AnnotatedImages", COLTYPE_INTEGER, "annotated_images"),
    ("Styles", COLTYPE_INTEGER, "styles"),
    ("StyleModels", COLTYPE_INTEGER, "style_models"),
    ("SkippedImages", COLTYPE_INTEGER, "skipped_images"),
    ("SyntheticPairs", COLTYPE_INTEGER, "synthetic_pairs"),
    ("FineTuneSteps", COLTYPE_INTEGER, "finetune_steps"),
    ("Seconds", COLTYPE_FLOAT, "seconds"),
)


def feature(name):
    return "%s_%s" % (C_STYLE_ADAPTATION, name)


def experiment_measurements(folders):
    """[(measurement, value)] of the adapted models in ``folders`` (those that hold one):
    their folders, separated by "; ", and the sums of their numbers; [] when none does."""
    from nucleaizer_backend.style import read_adaptation_info

    infos = [info for info in map(read_adaptation_info, folders) if info is not None]
    if not infos:
        return []
    values = [(feature(FTR_MODEL_FOLDER), "; ".join(str(info.model_dir) for info in infos))]
    for name, coltype, field in FEATURES[1:]:
        total = sum(getattr(info, field) for info in infos)
        value = round(float(total), 2) if coltype == COLTYPE_FLOAT else int(total)
        values.append((feature(name), value))
    return values
