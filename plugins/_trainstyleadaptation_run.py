"""How TrainStyleAdaptation (trainstyleadaptation.py) runs: it collects the images of a
group (one entry per image set: its pixels, name and annotation labels), as the cycles run
or by loading the whole group before its first cycle, adapts to them with one call to the
backend's ``adapt``, and reports the result (the log, the display's tables and sheet, the
experiment measurements read back from the model folders). It also checks the module's
settings and its place in the pipeline (the validation messages).

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
trainstyleadaptation.py imports this file. Copy it along with the plugins.
"""
import os

import numpy
from cellprofiler_core.constants.measurement import COLTYPE_FLOAT, COLTYPE_INTEGER, COLTYPE_VARCHAR
from cellprofiler_core.setting import ValidationError

from _nucleaizer_common import (
    backend,
    collect_group,
    image_set_name,
    images_grouped,
    module_after_providers,
    modules_rerun,
    same_path,
    segmenters_using,
)

# The choices of "When to adapt" (the module's setting; the messages below name them).
WHEN_END = "At the end of the group"
WHEN_FIRST = "Before segmenting: on the group's images first"


def progress_log(logger, prefix, every):
    """The backend's progress callback -> ``logger``: each stage's start and end, and at
    most one line every ``every`` seconds in between."""
    from nucleaizer_backend.style import ProgressLog

    return ProgressLog(lambda line: logger.info("%s: %s", prefix, line), every)


# ---------------------------------------------------------------- validation


def check_settings(module, pipeline):
    """ValidationError unless the module's settings can work (the backend importable, as
    validate_backend checks first): 2D images, a usable base model, a new model folder
    (which depends on no metadata when the model is written before the group)."""
    if pipeline.volumetric():
        raise ValidationError(
            "%s adapts to 2D images: load the images as 2D planes (NamesAndTypes: "
            "Process as 3D = No)" % module.module_name,
            module.image_name,
        )
    base = module.model_path()
    if base is not None:
        from nucleaizer_backend.errors import ModelFileError
        from nucleaizer_backend.style import find_base_model

        try:
            find_base_model(base)
        except ModelFileError as e:
            raise ValidationError("Cannot use the base model: %s" % e, module.model_name)
    if not module.output_name.value.strip():
        raise ValidationError("Enter a name for the adapted model folder", module.output_name)
    folder = module.model_folder()
    if base is not None and not module.has_metadata_tag() and same_path(folder, base):
        raise ValidationError(
            "The adapted model must go to a new folder, not the base model's", module.output_name
        )
    if module.adapts_first() and module.has_metadata_tag():
        raise ValidationError(
            "With '%s' the model folder cannot depend on metadata: the segmentation "
            "module downstream reads one folder. To adapt per group, run one group per "
            "job (-g) with its own output folder (-o)" % WHEN_FIRST,
            module.output_name,
        )


def check_pipeline(module, pipeline):
    """ValidationError (shown as a warning) where the pipeline around the module works
    against it: 'Before segmenting' rerunning costly modules or with no segmentation module
    using its model, 'At the end of the group' with one that would read the model too
    early, grouped images sharing one folder, a folder holding other files."""
    users = segmenters_using(pipeline, module, module.model_folder())
    if module.adapts_first():
        rerun = modules_rerun(pipeline, module, stop_module(module, pipeline))
        if rerun:
            raise ValidationError(
                "Adapting before segmenting runs the modules that provide the input image "
                "(and annotations) once more for every image of the group before the group "
                "starts. That is cheap for the input modules, but here it reruns %s."
                % ", ".join("#%d %s" % (m.module_num, m.module_name) for m in rerun),
                module.when,
            )
        if not users:
            raise ValidationError(
                "No SegmentNucleiStyleAdapted module below this one uses the adapted model "
                "(Model = Custom, location and name = %s): '%s' is meant for segmenting in "
                "the same pipeline" % (module.model_folder(), WHEN_FIRST),
                module.when,
            )
    elif users:
        raise ValidationError(
            "SegmentNucleiStyleAdapted #%d uses this module's model folder, but with "
            "'%s' the model is written after the group's last cycle: that module "
            "would use the folder as it was before the run. Choose '%s', or segment "
            "in a second pipeline." % (users[0].module_num, WHEN_END, WHEN_FIRST),
            module.when,
        )
    if module.has_metadata_tag():
        return
    if images_grouped(pipeline):
        raise ValidationError(
            "Images are grouped: each group adapts its own model, so each needs its own "
            "folder (a second group's adaptation is refused in a folder holding another "
            "group's). %s"
            % (
                "Run one group per job (-g) with its own output folder (-o)."
                if module.adapts_first()
                else "Put a metadata tag in the folder name (e.g. adapted_\\g<Plate>), or "
                "run one group per job (-g) with its own output folder (-o)."
            ),
            module.output_name,
        )
    try:
        from nucleaizer_backend.style import holds_other_files
    except ImportError:  # validate_module reports it
        return
    folder = module.model_folder()
    if holds_other_files(folder, module.adaptation_rounds()):
        raise ValidationError(
            "%s holds other files (not a style adaptation): the adaptation will refuse "
            "to write there. Choose a new or empty folder." % folder,
            module.output_name,
        )


# ---------------------------------------------------------------- the group's images

# Keys of the module dictionary (one group at a time).
D_IMAGES = "images"  # [(image number, name, float32 pixels, int32 labels or None)]
D_RESULT = "result"  # summary of the group's adaptation (JSON-serialisable)
D_DONE = "done"  # the group's adaptation ran (or was skipped in test mode)

TEST_MODE = (
    "not adapting in test mode (it takes minutes to hours); run the analysis to adapt the model"
)


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


def start_group(module, workspace, grouping, image_numbers, logger, make_progress):
    """Start a group (the module dictionary afresh); with 'Before segmenting', load its
    images and adapt now."""
    d = module.get_dictionary()
    d.clear()
    d[D_IMAGES] = []
    if not module.adapts_first() or len(image_numbers) == 0:
        return
    d[D_DONE] = True
    if module.skip_in_test_mode(workspace, TEST_MODE):
        return
    folder = module.model_folder(workspace.measurements, image_numbers[0])
    entries = load_group(module, workspace, grouping, image_numbers)
    d[D_RESULT] = adapt_group(module, entries, folder, logger, make_progress)


def finish_group(module, workspace, logger, make_progress):
    """'At the end of the group': adapt to the collected images (once per group)."""
    d = module.get_dictionary()
    if d.get(D_DONE):
        return
    d[D_DONE] = True
    entries, d[D_IMAGES] = d.get(D_IMAGES, []), []  # the images are let go
    if module.skip_in_test_mode(workspace, TEST_MODE):
        return
    folder = module.model_folder(workspace.measurements, entries[0][0] if entries else None)
    d[D_RESULT] = adapt_group(module, entries, folder, logger, make_progress)


def adapt_group(module, entries, folder, logger, make_progress):
    """Adapt ``module``'s base model to the collected ``entries`` into ``folder``, logging
    to ``logger`` (``make_progress(prefix)``: the backend's progress callback); returns the
    summary kept for the display (JSON-serialisable)."""
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
            progress=make_progress(prefix),
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


def cycle_statistics(module, result, collected, measurements, number):
    """The display's table of a cycle: the group's adaptation once it ran (or was skipped,
    with 'Before segmenting'), else the images collected so far (``collected``)."""
    if module.adapts_first() or result:
        return summary_statistics(result)
    return [
        ["Images collected", "%d" % collected],
        ["Adapted at the end of the group into", module.model_folder(measurements, number)],
    ]


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


def report_display(display_data, result):
    """The post-group display's data: the style sheet (with its file name) and the report."""
    display_data.sheet = read_sheet(result.get("sheet"))
    display_data.sheet_file = os.path.basename(str(result.get("sheet")))
    display_data.report = list(result["report"])


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


def model_folders(module, measurements):
    """The run's model folders, one per image set (those whose metadata tags resolve), each
    once, in the order of the image sets."""
    folders = []
    for number in measurements.get_image_numbers():
        try:
            folder = module.model_folder(measurements, int(number))
        except Exception:  # a metadata tag missing for this image set
            continue
        if folder not in folders:
            folders.append(folder)
    return folders


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
