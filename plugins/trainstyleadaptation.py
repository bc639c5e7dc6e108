"""TrainStyleAdaptation: nucleAIzer style adaptation as a CellProfiler module: from the images
of an image group (unannotated, or with annotation objects) to a model adapted to their
style, written to a folder for SegmentNucleiStyleAdapted.

All image and model logic lives in the ``nucleaizer_backend`` package; this file only
collects CellProfiler images (and objects), calls the backend's ``adapt`` and reports what it
did (log, experiment measurements, display).
"""

import json
import logging
import os
import time

import numpy
from cellprofiler_core.constants.measurement import (
    COLTYPE_FLOAT,
    COLTYPE_INTEGER,
    COLTYPE_VARCHAR,
    EXPERIMENT,
    GROUP_INDEX,
    GROUP_LENGTH,
    IMAGE,
    MCA_AVAILABLE_POST_RUN,
)
from cellprofiler_core.module import Module
from cellprofiler_core.preferences import DEFAULT_OUTPUT_FOLDER_NAME
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber, LabelSubscriber
from cellprofiler_core.setting.text import Directory, Float, Integer, Text

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    backend as _backend,
    model_settings,
    same_path,
    use_gpu_setting,
)

LOGGER = logging.getLogger(__name__)

WHEN_END = "At the end of the group"
WHEN_FIRST = "Before segmenting: on the group's images first"

PRESET_QUICK = "Quick"
PRESET_FULL = "Full"
PRESETS = {PRESET_QUICK: "quick", PRESET_FULL: "full"}

# Defaults of the advanced settings (nucleaizer_backend.AdaptConfig's); used whenever the
# advanced settings are off.
DEFAULT_SYNTHETIC_PER_STYLE = 20
DEFAULT_SYNTHETIC_SHARE = 0.3
DEFAULT_MIN_IMAGES_PER_STYLE = 3
DEFAULT_ROUNDS = 1

# Where an adaptation writes its picture of real vs synthetic images, and its description.
SHEET_FILE = "style_sheet.png"
INFO_FILE = "model.json"

C_STYLE_ADAPTATION = "StyleAdaptation"
FTR_MODEL_FOLDER = "ModelFolder"
FTR_IMAGES = "Images"
FTR_ANNOTATED_IMAGES = "AnnotatedImages"
FTR_STYLES = "Styles"
FTR_STYLE_MODELS = "StyleModels"
FTR_SKIPPED_IMAGES = "SkippedImages"
FTR_SYNTHETIC_PAIRS = "SyntheticPairs"
FTR_FINETUNE_STEPS = "FineTuneSteps"
FTR_SECONDS = "Seconds"
FEATURES = (
    (FTR_MODEL_FOLDER, COLTYPE_VARCHAR),
    (FTR_IMAGES, COLTYPE_INTEGER),
    (FTR_ANNOTATED_IMAGES, COLTYPE_INTEGER),
    (FTR_STYLES, COLTYPE_INTEGER),
    (FTR_STYLE_MODELS, COLTYPE_INTEGER),
    (FTR_SKIPPED_IMAGES, COLTYPE_INTEGER),
    (FTR_SYNTHETIC_PAIRS, COLTYPE_INTEGER),
    (FTR_FINETUNE_STEPS, COLTYPE_INTEGER),
    (FTR_SECONDS, COLTYPE_FLOAT),
)

# Keys of the module dictionary (one group at a time).
D_IMAGES = "images"  # [(image number, name, float32 pixels, int32 labels or None)]
D_RESULT = "result"  # summary of the group's adaptation (JSON-serialisable)
D_DONE = "done"  # the group's adaptation ran (or was skipped in test mode)

STAGE_NAMES = {
    "masks": "nucleus masks",
    "cluster": "style clustering",
    "styles": "style models (pix2pix)",
    "synthesize": "synthetic images",
    "finetune": "fine-tuning the main network",
    "finetune_unet": "fine-tuning the contour U-Net",
    "package": "writing the model folder",
}
LOG_EVERY_S = 15.0

__doc__ = """\
TrainStyleAdaptation
====================

**TrainStyleAdaptation** adapts the nucleAIzer segmentation model to the look ("style") of
your images, without annotations: nucleAIzer's style transfer. It takes the images of an
image group (for example all images of a new experiment or plate), finds their styles,
learns for each style an image-to-image network that paints realistic images of that style
from nucleus masks, paints synthetic images whose nuclei are known, and fine-tunes the
segmentation network on them (together with the original annotated training images). The
result is a model folder that **SegmentNucleiStyleAdapted** uses with *Model* = *Custom*.

Use it when **SegmentNucleiStyleAdapted** with the shipped model does poorly on your images
(an unusual stain, modality, magnification or tissue).

|

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          NO           NO
============ ============ ===============

See also
^^^^^^^^

See also **SegmentNucleiStyleAdapted** (segments with the adapted model),
**EstimateNucleusSize**, **Groups** (to adapt one model per group, e.g. per plate) and
**ConvertImageToObjects** (to turn annotation label images into objects).

What do I need as input?
^^^^^^^^^^^^^^^^^^^^^^^^

2D images of nuclei, grayscale or colour, as loaded by **NamesAndTypes**: all the images of
the group are used (without **Groups**, all the images of the run). At least a few images of
each style are needed (*Fewest images per style*, 3 by default); 10-50 images are typical.
No annotations are needed. If some images are annotated, their label images can be given as
objects (e.g. loaded as a label image by NamesAndTypes and turned into objects by
**ConvertImageToObjects**): those images' masks are the annotations instead of the
automatic ones (the paper's "GTstyle").

The module needs the ``nucleaizer_backend`` Python package installed in CellProfiler's
Python environment.

There are two ways to use it:

-  *{WHEN_END}* (two pipelines): this pipeline collects the images and writes the adapted
   model in the group's last cycle; a second pipeline (or a later run) segments with it.
-  *{WHEN_FIRST}* (one pipeline): before the group's first cycle, the module loads all the
   images of the group (as **CorrectIlluminationCalculate** does in *All: First cycle*
   mode), adapts, and writes the model; a **SegmentNucleiStyleAdapted** module further down
   the same pipeline, with its custom model set to the same folder, then segments every
   image of the group with the adapted model.

What do I get as output?
^^^^^^^^^^^^^^^^^^^^^^^^

A model folder (by default *adapted_model* in the Default Output Folder) with:
``main.safetensors`` and ``unet.safetensors`` (the fine-tuned detection network and contour
U-Net), ``preseg.safetensors`` (copied from the base model), ``model.json`` (the base model, images,
styles, synthetic images, settings and timings), ``style_sheet.png`` (for each style, real
images next to synthetic ones: check at a glance that the synthetic images look like yours
and that their nuclei are where the masks say), ``training_curve.png``, ``adapt_log.jsonl``
and a ``work`` sub-folder with the intermediate results. An interrupted adaptation continues
where it stopped when the pipeline is run again on the same images, and a finished one is
not redone (delete the folder, or choose another one, to adapt again).

The display window shows the style sheet and a summary of the adaptation.

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Experiment measurements** (recorded at the end of the run; with several groups, the
numbers are summed over the groups' adaptations and the folders listed, separated by
"; "):

-  *StyleAdaptation_ModelFolder:* The adapted model folder.
-  *StyleAdaptation_Images:* Images adapted to.
-  *StyleAdaptation_AnnotatedImages:* Of those, images whose masks were annotations.
-  *StyleAdaptation_Styles:* Styles found among the images.
-  *StyleAdaptation_StyleModels:* Styles that got a style model (the others had too few
   images or no nuclei).
-  *StyleAdaptation_SkippedImages:* Images of styles that got no style model.
-  *StyleAdaptation_SyntheticPairs:* Synthetic image/mask pairs made.
-  *StyleAdaptation_FineTuneSteps:* Fine-tuning steps of the main network.
-  *StyleAdaptation_Seconds:* Time the adaptation took (all stages).

Technical notes
^^^^^^^^^^^^^^^

The adaptation runs six stages (see the backend's ``nucleaizer_backend.style.adapt``):
nucleus masks of every image (the base model's size-robust preseg network, or the
annotations); clustering of the images into styles by image features (k-means, over-
clustered, small clusters merged or skipped and reported); one pix2pix image-to-image
network per style, trained on the style's (mask, image) pairs; synthetic masks per style
(half real nucleus shapes from a shipped shape database, half perturbed ellipses, with the
style's nucleus size, density and spatial arrangement) painted by the style's network; and
fine-tuning of the base model's main network, then of its contour U-Net, on the original
training images (a compact replay set shipped with the backend) plus the synthetic pairs. Progress is written to
CellProfiler's log.

*Presets:* *{PRESET_QUICK}* (short schedules: about 30 minutes for 20 images on a 2-core
CPU) and *{PRESET_FULL}* (the paper's schedules: hours on a CPU; a GPU is recommended).
Training uses a CUDA GPU whenever PyTorch sees one.

The whole group is processed by one CellProfiler worker (this is an aggregation module).
With *{WHEN_FIRST}*, the modules up to the one that provides the input image (and the
annotation objects) run once more for each image before the group's first cycle, which is
cheap for the input modules. With several groups, each group needs its own model folder:
put a metadata tag in the folder name (e.g. ``adapted_\\g<Plate>``) with *{WHEN_END}*, or run
one group per job (``-g``) with its own output folder (``-o``) with *{WHEN_FIRST}*.

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, Tasnadi E, Molnar C, Mathe B, Grexa I, Molnar J,
   Balind A, Gorbe M, Kovacs M, Migh E, Goodman A, Balassa T, Koos K, Wang W, Caicedo JC,
   Bara N, Kovacs F, Paavolainen L, Danka T, Kriston A, Carpenter AE, Smith K, Horvath P
   (2020) "nucleAIzer: A parameter-free deep learning framework for nucleus segmentation
   using image style transfer." *Cell Systems* 10(5), 453-458. (`link <{doi}>`__)
-  Isola P, Zhu J-Y, Zhou T, Efros AA (2017) "Image-to-image translation with conditional
   adversarial networks." *CVPR*, 1125-1134.
   (`link <https://doi.org/10.1109/CVPR.2017.632>`__)
-  Lehmussola A, Ruusuvuori P, Selinummi J, Huttunen H, Yli-Harja O (2007) "Computational
   framework for simulating fluorescence microscope images with cell populations." *IEEE
   Transactions on Medical Imaging* 26(7), 1010-1016.
   (`link <https://doi.org/10.1109/TMI.2007.896925>`__)
-  Caicedo JC, Goodman A, Karhohs KW, et al. (2019) "Nucleus segmentation across imaging
   experiments: the 2018 Data Science Bowl." *Nature Methods* 16, 1247-1253.
   (`link <https://doi.org/10.1038/s41592-019-0612-7>`__)
""".format(
    WHEN_END=WHEN_END,
    WHEN_FIRST=WHEN_FIRST,
    PRESET_QUICK=PRESET_QUICK,
    PRESET_FULL=PRESET_FULL,
    doi=NUCLEAIZER_DOI,
)


def _feature(name):
    return "%s_%s" % (C_STYLE_ADAPTATION, name)


class _ProgressLog:
    """The backend's progress callback -> CellProfiler's log: each stage's start and end,
    and at most one line every LOG_EVERY_S seconds in between."""

    def __init__(self, prefix, every=LOG_EVERY_S):
        self.prefix, self.every = prefix, every
        self.stage, self.last, self.shown = None, 0.0, None

    def __call__(self, stage, done, total, info):
        now = time.monotonic()
        stage = (info.get("round"), stage)
        new = stage != self.stage
        if (stage, done) == self.shown or not (
            new or done >= total or now - self.last >= self.every
        ):
            return
        self.stage, self.last, self.shown = stage, now, (stage, done)
        name = STAGE_NAMES.get(stage[1], stage[1])
        if "round" in info:  # more than one adaptation round
            name = "round %d of %d: %s" % (info["round"], info["rounds"], name)
        if info.get("resumed"):
            LOGGER.info("%s: %s: finished in an earlier run", self.prefix, name)
            return
        extra = ""
        if "loss" in info:
            extra = ", loss %.3f" % float(info["loss"])
        elif "style" in info:
            extra = ", style %s" % info["style"]
        LOGGER.info("%s: %s %d/%d%s", self.prefix, name, done, total, extra)


class TrainStyleAdaptation(NucleaizerModule, Module):
    category = "Object Processing"

    module_name = "TrainStyleAdaptation"

    variable_revision_number = 2

    doi = {
        "Please cite nucleAIzer when using TrainStyleAdaptation:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        self.image_name = ImageSubscriber(
            "Select the input image",
            doc="""\
Select the images to adapt the model to: 2D grayscale or colour images of nuclei
(fluorescence, brightfield, H&E...), as they will be segmented (no preprocessing needed).
Every image of the group that reaches this module is used.""",
        )

        self.use_annotations = Binary(
            "Use annotations?",
            False,
            doc="""\
Select *Yes* if some images come with annotated nuclei, as objects made by an upstream
module (typically a label image loaded by **NamesAndTypes** and converted by
**ConvertImageToObjects**). For those images the annotations are used as the nucleus masks
that the style models learn from, instead of the automatic masks (more faithful synthetic
images). Images whose annotation objects are empty use automatic masks. With *%s*, the
modules up to the one that provides the objects run once more for each image before the
group starts. Style adaptation needs no annotations: leave *No* for unannotated images."""
            % WHEN_FIRST,
        )

        self.annotation_objects = LabelSubscriber(
            "Select the annotation objects",
            "None",
            doc="""\
*(Used only with annotations)*

The objects holding the annotated nuclei of each image (the same size as the image; one
object per nucleus).""",
        )

        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Base model",
            """\
The model to adapt:

-  *%(MODEL_DEFAULT)s:* the general nucleAIzer model installed with the backend.
-  *%(MODEL_CUSTOM)s:* a model folder (with ``main.safetensors``), for example one trained
   on your own annotated images, or a main network ``.safetensors`` file.
""",
            "Base model location",
            """\
*(Used only with a custom base model)*

The folder that holds the base model: either the model folder itself (leave the name below
blank) or the folder that contains it or its network file (enter its name below).""",
            "Base model folder or file name",
            """\
*(Used only with a custom base model)*

Name of the model folder or of the main ``.safetensors`` network file inside the base model
location. Leave blank when the location is the model folder itself.""",
            browse_msg="Choose a main network file (.safetensors)",
        )

        self.output_directory = Directory(
            "Output folder",
            value=Directory.static_join_string(DEFAULT_OUTPUT_FOLDER_NAME, ""),
            doc="""\
The folder in which the adapted model folder is created (Default Output Folder by default).
Using the Default Input/Output Folder or a sub-folder of them keeps the pipeline portable
between computers and cluster nodes.""",
        )

        self.output_name = Text(
            "Name of the adapted model folder",
            "adapted_model",
            metadata=True,
            doc="""\
Name of the folder, inside the output folder, that receives the adapted model. Give
**SegmentNucleiStyleAdapted** *Model* = *Custom* with the same location and this name.

The folder must be new or empty, or hold an earlier adaptation of the same images (which is
then continued if it was interrupted, or reused as it is if it finished). With
*{WHEN_END}* and several groups, include a metadata tag so that each group gets its own
model, e.g. ``adapted_\\g<Plate>``.""".format(
                WHEN_END=WHEN_END
            ),
        )

        self.when = Choice(
            "When to adapt",
            [WHEN_END, WHEN_FIRST],
            WHEN_END,
            doc="""\
-  *%(WHEN_END)s:* the images are collected as the group's cycles run, and the model is
   adapted and written in the group's last cycle (after the group if its last image set
   does not reach this module). Segment with it in a second pipeline (or a later run). The
   modules after this one see the images as usual.
-  *%(WHEN_FIRST)s:* before the group's first cycle, every image of the group is loaded (the
   modules up to the one that provides the input image run once per image, as
   **CorrectIlluminationCalculate** does in *All: First cycle* mode) and the model is
   adapted and written at once. A **SegmentNucleiStyleAdapted** module further down this
   pipeline, with its custom model set to this folder, then segments every image of the
   group with the adapted model in the same run.
"""
            % globals(),
        )

        self.preset = Choice(
            "Preset",
            [PRESET_QUICK, PRESET_FULL],
            PRESET_QUICK,
            doc="""\
-  *%(PRESET_QUICK)s:* short training schedules (at most 4 styles, 200-400 style-model steps
   per style, 400 fine-tuning steps): 25-30 minutes for 20 images on a 2-core CPU
   (measured per stage; see the backend's ``style/adapt.py``), less on a GPU.
-  *%(PRESET_FULL)s:* the paper's schedules (up to 100 styles, 2000-20000 style-model steps
   per style, 3000 fine-tuning steps): hours on a CPU; a GPU is recommended.
"""
            % globals(),
        )

        self.use_gpu = use_gpu_setting(
            """\
Select *Yes* to run the adaptation (automatic nucleus masks, style models, fine-tuning) on
an NVIDIA GPU (CUDA) when PyTorch can see one, else the CPU; *No* always uses the CPU."""
        )

        self.advanced = Binary(
            "Use advanced settings?",
            False,
            doc="""\
Select *Yes* to change the number of synthetic images, the share of synthetic images in
fine-tuning, the training lengths and the fewest images per style. *No* uses the
defaults (%d synthetic pairs per style, a share of %.1f, the preset's training lengths, %d
images per style)."""
            % (DEFAULT_SYNTHETIC_PER_STYLE, DEFAULT_SYNTHETIC_SHARE, DEFAULT_MIN_IMAGES_PER_STYLE),
        )

        self.synthetic_per_style = Integer(
            "Synthetic pairs per style",
            DEFAULT_SYNTHETIC_PER_STYLE,
            minval=1,
            doc="""\
*(Used only with advanced settings)*

How many synthetic image/mask pairs to make for each style (the paper's 20 by default).
More pairs teach the style better at the cost of time (about half a second each on a
CPU).""",
        )

        self.synthetic_share = Float(
            "Share of synthetic images in fine-tuning",
            DEFAULT_SYNTHETIC_SHARE,
            minval=0.1,
            maxval=0.5,
            doc="""\
*(Used only with advanced settings)*

The fraction (0.1 to 0.5) of the image crops that fine-tuning takes from the synthetic
images; the rest come from the original annotated training images, so that the model keeps
what it knew.""",
        )

        self.finetune_steps = Integer(
            "Fine-tuning steps (0 = the preset's)",
            0,
            minval=0,
            doc="""\
*(Used only with advanced settings)*

Training steps of the main network on the original and synthetic images. 0 uses the
preset's (400 quick, 3000 full); about 2 s per step on a CPU. The contour U-Net is then
fine-tuned for 3/4 as many steps (about 0.8 s each).""",
        )

        self.style_steps = Integer(
            "Style model steps per style (0 = the preset's)",
            0,
            minval=0,
            doc="""\
*(Used only with advanced settings)*

Training steps of each style's image-to-image (pix2pix) network. 0 uses the preset's, which
grow with the number of images of the style (quick: 200-400, full: 2000-20000); about 1 s
per step on a CPU.""",
        )

        self.min_images_per_style = Integer(
            "Fewest images per style",
            DEFAULT_MIN_IMAGES_PER_STYLE,
            minval=1,
            doc="""\
*(Used only with advanced settings)*

A style found in fewer images than this is merged into the nearest style (or left without
a style model and reported as skipped). Lower it when the group has very few images.""",
        )

        self.rounds = Integer(
            "Adaptation rounds",
            DEFAULT_ROUNDS,
            minval=1,
            doc="""\
*(Used only with advanced settings)*

How many times to adapt. Round 1 learns the styles from the base model's automatic masks;
each further round takes its masks from the previous round's adapted model (which finds
the nuclei of the new style better) and adapts that model again. A style whose images'
masks hold too few nuclei in a round (fewer than 5 in most of its images) gets no style
model in that round and is reported; a further round may learn it. Each round costs about
as much time as the first. Whether a second round helps is not measured yet: check its
result on a few annotated images before using it.""",
        )

    def settings(self):
        return [
            self.image_name,
            self.use_annotations,
            self.annotation_objects,
            self.model_choice,
            self.model_directory,
            self.model_name,
            self.output_directory,
            self.output_name,
            self.when,
            self.preset,
            self.use_gpu,
            self.advanced,
            self.synthetic_per_style,
            self.synthetic_share,
            self.finetune_steps,
            self.style_steps,
            self.min_images_per_style,
            self.rounds,
        ]

    def visible_settings(self):
        result = [self.image_name, self.use_annotations]
        if self.use_annotations:
            result += [self.annotation_objects]
        result += [self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.output_directory, self.output_name, self.when, self.preset, self.use_gpu]
        result += [self.advanced]
        if self.advanced:
            result += [
                self.synthetic_per_style,
                self.synthetic_share,
                self.finetune_steps,
                self.style_steps,
                self.min_images_per_style,
                self.rounds,
            ]
        return result

    def help_settings(self):
        return self.settings()

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        """Bring settings saved by an older version of this module to the current layout.

        Revision 1 is the first released layout; revision 2 added *Adaptation rounds*
        (revision-1 pipelines adapt in one round, as before)."""
        self.refuse_newer_revision(variable_revision_number)
        if variable_revision_number == 1:
            setting_values = list(setting_values) + [str(DEFAULT_ROUNDS)]
            variable_revision_number = 2
        return setting_values, variable_revision_number

    def is_aggregation_module(self):
        """All images of a group are needed together (one worker per group)."""
        return True

    def adapts_first(self):
        """True when the model is written before the group's first cycle (so that modules
        downstream in the same pipeline can use it)."""
        return self.when == WHEN_FIRST

    # ------------------------------------------------------------------ paths and config

    def model_folder(self, measurements=None, image_set_number=None):
        """The adapted model folder (absolute). Without measurements, metadata tags are
        left as they are (as for display and validation)."""
        directory = self.output_directory.get_absolute_path(measurements, image_set_number)
        name = self.output_name.value.strip()
        if measurements is not None:
            name = measurements.apply_metadata(name, image_set_number)
        return os.path.join(directory, name)

    def _has_metadata_tag(self):
        return "\\g<" in self.output_name.value or "\\g<" in self.output_directory.custom_path

    def adapt_config(self):
        """The backend's AdaptConfig for these settings."""
        backend = _backend()
        kwargs = dict(
            base_model=self.model_path(),
            preset=PRESETS[self.preset.value],
            device=self.device(),
        )
        if self.advanced:
            kwargs.update(
                synthetic_per_cluster=int(self.synthetic_per_style.value),
                synthetic_share=float(self.synthetic_share.value),
                finetune_steps=int(self.finetune_steps.value) or None,
                style_steps=int(self.style_steps.value) or None,
                min_cluster_size=int(self.min_images_per_style.value),
                iterations=int(self.rounds.value),
            )
        else:
            kwargs.update(
                synthetic_per_cluster=DEFAULT_SYNTHETIC_PER_STYLE,
                synthetic_share=DEFAULT_SYNTHETIC_SHARE,
                min_cluster_size=DEFAULT_MIN_IMAGES_PER_STYLE,
            )
        return backend.AdaptConfig(**kwargs)

    def prepare_to_create_batch(self, workspace, fn_alter_path):
        """Map the base model and output folders to the cluster's file system."""
        self.output_directory.alter_for_create_batch_files(fn_alter_path)
        return super().prepare_to_create_batch(workspace, fn_alter_path)

    # ------------------------------------------------------------------ validation

    def validate_module(self, pipeline):
        try:
            _backend()
        except ImportError as e:
            raise ValidationError(str(e), self.model_choice)
        from nucleaizer_backend.errors import ModelFileError
        from nucleaizer_backend.models.io import MAIN_FILE, check_model_path, read_network_meta

        if pipeline.volumetric():
            raise ValidationError(
                "%s adapts to 2D images: load the images as 2D planes (NamesAndTypes: "
                "Process as 3D = No)" % self.module_name,
                self.image_name,
            )
        base = self.model_path()
        if base is not None:
            try:
                path = check_model_path(base)
                main = os.path.join(str(path), MAIN_FILE) if os.path.isdir(str(path)) else str(path)
                kind = read_network_meta(main).get("kind")
            except ModelFileError as e:
                raise ValidationError("Cannot use the base model: %s" % e, self.model_name)
            if kind != "main":
                raise ValidationError(
                    "Cannot use the base model: %s is a %r network; style adaptation "
                    "fine-tunes a main network (a model folder's main.safetensors)" % (main, kind),
                    self.model_name,
                )
        if not self.output_name.value.strip():
            raise ValidationError("Enter a name for the adapted model folder", self.output_name)
        folder = self.model_folder()
        if base is not None and not self._has_metadata_tag() and same_path(folder, base):
            raise ValidationError(
                "The adapted model must go to a new folder, not the base model's", self.output_name
            )
        if self.adapts_first() and self._has_metadata_tag():
            raise ValidationError(
                "With '%s' the model folder cannot depend on metadata: the segmentation "
                "module downstream reads one folder. To adapt per group, run one group per "
                "job (-g) with its own output folder (-o)" % WHEN_FIRST,
                self.output_name,
            )
        for module in pipeline.modules():
            if module is self or module.module_num >= self.module_num:
                break
            if module.module_name == self.module_name:
                raise ValidationError(
                    "Only one %s module per pipeline: its StyleAdaptation measurements would "
                    "overwrite those of module #%d" % (self.module_name, module.module_num),
                    self.image_name,
                )

    def validate_module_warnings(self, pipeline):
        if self.adapts_first():
            modules = list(pipeline.modules())
            rerun = [
                m
                for m in modules[: modules.index(self._stop_module(pipeline))]
                if m is not self and not m.is_input_module() and m.enabled
            ]
            if rerun:
                raise ValidationError(
                    "Adapting before segmenting runs the modules that provide the input image "
                    "(and annotations) once more for every image of the group before the group "
                    "starts. That is cheap for the input modules, but here it reruns %s."
                    % ", ".join("#%d %s" % (m.module_num, m.module_name) for m in rerun),
                    self.when,
                )
            if not self._downstream_segmenters(pipeline):
                raise ValidationError(
                    "No SegmentNucleiStyleAdapted module below this one uses the adapted model "
                    "(Model = Custom, location and name = %s): '%s' is meant for segmenting in "
                    "the same pipeline" % (self.model_folder(), WHEN_FIRST),
                    self.when,
                )
        else:
            users = self._downstream_segmenters(pipeline)
            if users:
                raise ValidationError(
                    "SegmentNucleiStyleAdapted #%d uses this module's model folder, but with "
                    "'%s' the model is written after the group's last cycle: that module "
                    "would use the folder as it was before the run. Choose '%s', or segment "
                    "in a second pipeline." % (users[0].module_num, WHEN_END, WHEN_FIRST),
                    self.when,
                )
        if not self._has_metadata_tag():
            for module in pipeline.modules():
                if module.module_name == "Groups" and getattr(module, "wants_groups", False):
                    if module.wants_groups.value:
                        raise ValidationError(
                            "Images are grouped: each group adapts its own model, so each "
                            "needs its own folder (a second group's adaptation is refused in "
                            "a folder holding another group's). %s"
                            % (
                                "Run one group per job (-g) with its own output folder (-o)."
                                if self.adapts_first()
                                else "Put a metadata tag in the folder name (e.g. "
                                "adapted_\\g<Plate>), or run one group per job (-g) with its "
                                "own output folder (-o)."
                            ),
                            self.output_name,
                        )
        folder = self.model_folder()
        if not self._has_metadata_tag() and os.path.isdir(folder):
            if os.listdir(folder) and not os.path.isfile(os.path.join(folder, "work", "job.json")):
                raise ValidationError(
                    "%s holds other files (not a style adaptation): the adaptation will refuse "
                    "to write there. Choose a new or empty folder." % folder,
                    self.output_name,
                )

    def _downstream_segmenters(self, pipeline):
        """SegmentNucleiStyleAdapted modules after this one whose custom model is this
        module's model folder."""
        folder = self.model_folder()
        found = []
        for module in pipeline.modules():
            if module.module_num <= self.module_num:
                continue
            if module.module_name != "SegmentNucleiStyleAdapted":
                continue
            path = module.model_path() if hasattr(module, "model_path") else None
            if path and same_path(path, folder):
                found.append(module)
        return found

    # ------------------------------------------------------------------ collecting images

    def _check_2d(self, image, number):
        if image.volumetric:
            raise _backend().InputImageError(
                "%s adapts to 2D images, but image %r (#%d) is a 3D volume (shape %s). Load "
                "the stack as 2D planes in NamesAndTypes."
                % (self.module_name, self.image_name.value, number, image.pixel_data.shape)
            )

    def _name(self, m, number):
        """A readable name for image set ``number``: its file name (without extension)."""
        feature = "FileName_%s" % self.image_name.value
        if not m.has_feature(IMAGE, feature):
            candidates = sorted(f for f in m.get_feature_names(IMAGE) if f.startswith("FileName_"))
            feature = candidates[0] if candidates else None
        if feature is not None:
            try:
                value = m[IMAGE, feature, number]
            except (KeyError, IndexError, ValueError):
                value = None
            if value:
                return os.path.splitext(os.path.basename(str(value)))[0]
        return "image_%04d" % number

    def _entry(self, image, object_set, m, number):
        """(number, name, pixels, labels or None) of one image set."""
        backend = _backend()
        self._check_2d(image, number)
        pixels = numpy.asarray(image.pixel_data, dtype=numpy.float32)
        labels = None
        if self.use_annotations:
            objects = object_set.get_objects(self.annotation_objects.value)
            labels = numpy.asarray(objects.segmented, dtype=numpy.int32)
            if labels.shape != pixels.shape[:2]:
                raise backend.InputImageError(
                    "%s: annotation objects %r have shape %s but image %r (#%d) has shape %s"
                    % (
                        self.module_name,
                        self.annotation_objects.value,
                        labels.shape,
                        self.image_name.value,
                        number,
                        pixels.shape[:2],
                    )
                )
            if not labels.any():
                labels = None  # not annotated: automatic masks
        return (int(number), self._name(m, number), pixels, labels)

    def _stop_module(self, pipeline):
        """The module just after the last one that provides the input image (and the
        annotation objects)."""
        modules = list(pipeline.modules())
        last = -1
        wanted = [(self.image_name.group, self.image_name.value)]
        if self.use_annotations:
            wanted.append((self.annotation_objects.group, self.annotation_objects.value))
        for group, name in wanted:
            providers = pipeline.get_provider_dictionary(group, self)
            if name in providers:
                last = max(last, modules.index(providers[name][-1][0]))
        if last < 0:
            return self
        return modules[last + 1]

    def _load_group(self, workspace, grouping, image_numbers):
        """Every image (and annotation) of the group, through the pipeline's providers."""
        pipeline = workspace.pipeline
        stop = self._stop_module(pipeline)
        entries = []
        # The measurements object is also the image set. Between groups it still holds the
        # image providers and cached images of the previous group's last cycle, which would
        # be returned instead of this group's images: set them aside while we work.
        m = workspace.measurements
        saved_providers = list(m.providers)
        del m.providers[:]
        m.clear_cache()
        try:
            for w in pipeline.run_group_with_yield(
                workspace,
                grouping,
                image_numbers,
                stop,
                "#%d: %s" % (self.module_num, self.module_name),
                "%s is loading the %d images of the group" % (self.module_name, len(image_numbers)),
            ):
                number = int(w.measurements.image_set_number)
                image = w.image_set.get_image(self.image_name.value, cache=False)
                entries.append(self._entry(image, w.object_set, w.measurements, number))
                w.image_set.clear_cache()
                del w.image_set.providers[:]
        finally:
            m.clear_cache()
            del m.providers[:]
            m.providers.extend(saved_providers)
        return entries

    # ------------------------------------------------------------------ adapting

    def _adapt(self, entries, folder):
        """Run the backend's adaptation on the collected images; returns the summary."""
        backend = _backend()
        if not entries:
            raise backend.NucleaizerError(
                "%s: no image of the group reached this module, nothing to adapt to"
                % self.module_name
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
        prefix = "%s (#%d)" % (self.module_name, self.module_num)
        LOGGER.info(
            "%s: adapting %s to %d images (%d annotated), %s preset, into %s",
            prefix,
            self.model_path() or "the shipped model",
            len(images),
            len(annotations),
            self.preset.value.lower(),
            folder,
        )
        try:
            result = backend.adapt(
                images,
                folder,
                annotations=annotations or None,
                config=self.adapt_config(),
                progress=_ProgressLog(prefix),
            )
        except backend.NucleaizerError as e:
            raise type(e)("%s: %s" % (self.module_name, e)) from e
        lines = list(result.report())
        for line in lines:
            LOGGER.info("%s: %s", prefix, line)
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

    def _skip_in_test_mode(self, workspace):
        if workspace.pipeline.test_mode:
            LOGGER.warning(
                "%s: not adapting in test mode (it takes minutes to hours); run the analysis "
                "to adapt the model",
                self.module_name,
            )
            return True
        return False

    def prepare_group(self, workspace, grouping, image_numbers):
        """Start a group; with 'Before segmenting', load its images and adapt now."""
        d = self.get_dictionary()
        d.clear()
        d[D_IMAGES] = []
        if not self.adapts_first() or len(image_numbers) == 0:
            return True
        d[D_DONE] = True
        if self._skip_in_test_mode(workspace):
            return True
        m = workspace.measurements
        folder = self.model_folder(m, image_numbers[0])
        entries = self._load_group(workspace, grouping, image_numbers)
        d[D_RESULT] = self._adapt(entries, folder)
        return True

    def _finish_group(self, workspace):
        """'At the end of the group': adapt to the collected images (once per group)."""
        d = self.get_dictionary()
        if d.get(D_DONE):
            return
        d[D_DONE] = True
        entries, d[D_IMAGES] = d.get(D_IMAGES, []), []  # the images are let go
        if self._skip_in_test_mode(workspace):
            return
        folder = self.model_folder(workspace.measurements, entries[0][0] if entries else None)
        d[D_RESULT] = self._adapt(entries, folder)

    @staticmethod
    def _last_of_group(m):
        """True in the group's last cycle (by CellProfiler's group index and length)."""
        if not (m.has_feature(IMAGE, GROUP_INDEX) and m.has_feature(IMAGE, GROUP_LENGTH)):
            return False
        try:
            index = int(m.get_current_image_measurement(GROUP_INDEX))
            length = int(m.get_current_image_measurement(GROUP_LENGTH))
        except (KeyError, TypeError, ValueError):
            return False
        return index >= length

    def run(self, workspace):
        m = workspace.measurements
        number = int(m.image_set_number)
        d = self.get_dictionary()
        image = workspace.image_set.get_image(self.image_name.value)
        self._check_2d(image, number)
        if not self.adapts_first():
            d.setdefault(D_IMAGES, []).append(self._entry(image, workspace.object_set, m, number))
            collected = len(d[D_IMAGES])
            if self._last_of_group(m):
                # Adapting in the group's last cycle (rather than in post_group, which stays
                # the fallback for a group whose last image set did not reach this module)
                # makes an error a module error: CellProfiler reports it and a headless run
                # exits with status 1 (a post_group error leaves the exit status at 0).
                self._finish_group(workspace)
        if self.show_window:
            result = d.get(D_RESULT)
            if self.adapts_first() or result:
                statistics = [
                    ["Adapted model", result["model_dir"] if result else "not adapted (test mode)"],
                ]
                if result:
                    statistics += [
                        ["Images adapted to", "%d" % result["images"]],
                        [
                            "Styles (with a style model)",
                            "%d (%d)" % (result["styles"], result["style_models"]),
                        ],
                    ]
            else:
                statistics = [
                    ["Images collected", "%d" % collected],
                    ["Adapted at the end of the group into", self.model_folder(m, number)],
                ]
            workspace.display_data.image = image.pixel_data
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.statistics = statistics

    def post_group(self, workspace, grouping):
        """'At the end of the group' when the group's last cycle did not adapt; the
        post-group display (style sheet and report)."""
        d = self.get_dictionary()
        if not self.adapts_first():
            self._finish_group(workspace)
        d[D_IMAGES] = []
        result = d.get(D_RESULT)
        if self.show_window and result:
            sheet = None
            if result.get("sheet") and os.path.isfile(result["sheet"]):
                import imageio.v3 as iio

                sheet = numpy.asarray(iio.imread(result["sheet"]))[..., :3]
            workspace.display_data.sheet = sheet
            workspace.display_data.report = list(result["report"])

    # ------------------------------------------------------------------ measurements

    def post_run(self, workspace):
        """Record what the run's adaptations did as experiment measurements, read from the
        model folders (so it also works when the groups ran in CellProfiler's workers,
        whose experiment measurements are not kept)."""
        m = workspace.measurements
        folders = []
        numbers = m.get_image_numbers()
        for number in numbers:
            try:
                folder = self.model_folder(m, int(number))
            except Exception:  # a metadata tag missing for this image set
                continue
            if folder not in folders:
                folders.append(folder)
        summaries = []
        for folder in folders:
            info_file = os.path.join(folder, INFO_FILE)
            if not os.path.isfile(info_file):
                continue
            try:
                with open(info_file) as f:
                    adaptation = json.load(f).get("adaptation")
            except (OSError, ValueError):
                continue
            if adaptation:
                summaries.append((folder, adaptation))
        if not summaries:
            return
        values = {
            FTR_MODEL_FOLDER: "; ".join(folder for folder, _ in summaries),
            FTR_IMAGES: 0,
            FTR_ANNOTATED_IMAGES: 0,
            FTR_STYLES: 0,
            FTR_STYLE_MODELS: 0,
            FTR_SKIPPED_IMAGES: 0,
            FTR_SYNTHETIC_PAIRS: 0,
            FTR_FINETUNE_STEPS: 0,
            FTR_SECONDS: 0.0,
        }
        for _, a in summaries:
            styles = (a.get("clusters") or {}).get("styles") or []
            values[FTR_IMAGES] += int(a.get("n_images") or 0)
            values[FTR_ANNOTATED_IMAGES] += sum(
                1 for v in (a.get("masks_source") or {}).values() if v == "GT"
            )
            values[FTR_STYLES] += len(styles)
            values[FTR_STYLE_MODELS] += sum(1 for st in styles if st.get("learned"))
            values[FTR_SKIPPED_IMAGES] += sum(
                len(st.get("images") or []) for st in styles if not st.get("learned")
            )
            values[FTR_SYNTHETIC_PAIRS] += int((a.get("synthetic") or {}).get("count") or 0)
            values[FTR_FINETUNE_STEPS] += int((a.get("finetune") or {}).get("steps") or 0)
            values[FTR_SECONDS] += float(sum((a.get("seconds") or {}).values()))
        values[FTR_SECONDS] = round(values[FTR_SECONDS], 2)
        for feature, value in values.items():
            m.add_experiment_measurement(_feature(feature), value)

    def get_measurement_columns(self, pipeline):
        return [
            (EXPERIMENT, _feature(name), coltype, {MCA_AVAILABLE_POST_RUN: True})
            for name, coltype in FEATURES
        ]

    def get_categories(self, pipeline, object_name):
        if object_name == EXPERIMENT:
            return [C_STYLE_ADAPTATION]
        return []

    def get_measurements(self, pipeline, object_name, category):
        if object_name == EXPERIMENT and category == C_STYLE_ADAPTATION:
            return [name for name, _ in FEATURES]
        return []

    # ------------------------------------------------------------------ display

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((2, 1))
        title = "%s, cycle #%d" % (self.image_name.value, workspace.measurements.image_number)
        if d.multichannel:
            figure.subplot_imshow_color(0, 0, d.image, title, normalize=False)
        else:
            figure.subplot_imshow_grayscale(0, 0, d.image, title)
        figure.subplot_table(
            1,
            0,
            [[value] for _, value in d.statistics],
            row_labels=[name for name, _ in d.statistics],
        )

    def display_post_group(self, workspace, figure):
        d = workspace.display_data
        report = getattr(d, "report", None)
        if not report:
            return
        sheet = getattr(d, "sheet", None)
        if sheet is not None:
            figure.set_subplots((1, 2))
            figure.subplot_imshow_color(
                0, 0, sheet, "Real vs synthetic images per style (%s)" % SHEET_FILE, normalize=False
            )
            figure.subplot_table(0, 1, [[line] for line in report], col_labels=["Style adaptation"])
        else:
            figure.set_subplots((1, 1))
            figure.subplot_table(0, 0, [[line] for line in report], col_labels=["Style adaptation"])
