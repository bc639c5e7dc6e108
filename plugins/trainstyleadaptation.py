"""TrainStyleAdaptation: nucleAIzer style adaptation as a CellProfiler module: from the images
of an image group (unannotated, or with annotation objects) to a model adapted to their
style, written to a folder for SegmentNucleiStyleAdapted.

All image and model logic lives in the ``nucleaizer_backend`` package; this file holds the
module's settings, validation, measurements and display. How it runs (collecting the
CellProfiler images and objects, the one call of the backend's ``adapt``, the log, the
validation messages, the experiment measurements) is in _trainstyleadaptation_run.py, its
help text in _trainstyleadaptation_help.py.
"""

import logging
import os

from cellprofiler_core.constants.measurement import EXPERIMENT, MCA_AVAILABLE_POST_RUN
from cellprofiler_core.module import Module
from cellprofiler_core.preferences import DEFAULT_OUTPUT_FOLDER_NAME
from cellprofiler_core.setting import Binary
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber, LabelSubscriber
from cellprofiler_core.setting.text import Directory, Float, Integer, Text

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    backend as _backend,
    last_cycle_of_group,
    model_settings,
    show_image,
    gpu_test_setting,
    show_statistics,
    use_gpu_setting,
)
import _trainstyleadaptation_help as help_text
from _trainstyleadaptation_run import (
    C_STYLE_ADAPTATION,
    D_IMAGES,
    D_RESULT,
    FEATURES,
    WHEN_END,
    WHEN_FIRST,
    check_2d,
    check_pipeline,
    check_settings,
    cycle_statistics,
    experiment_measurements,
    feature,
    finish_group,
    image_entry,
    model_folders,
    progress_log,
    report_display,
    start_group,
)

LOGGER = logging.getLogger(__name__)

PRESET_QUICK = "Quick"
PRESET_FULL = "Full"
PRESETS = {PRESET_QUICK: "quick", PRESET_FULL: "full"}

# Defaults of the advanced settings (nucleaizer_backend.AdaptConfig's); used whenever the
# advanced settings are off.
DEFAULT_SYNTHETIC_PER_STYLE = 20
DEFAULT_SYNTHETIC_SHARE = 0.3
DEFAULT_MIN_IMAGES_PER_STYLE = 3
DEFAULT_ROUNDS = 1

# The fields of the help text's templates.
TEXT = dict(
    WHEN_END=WHEN_END,
    WHEN_FIRST=WHEN_FIRST,
    PRESET_QUICK=PRESET_QUICK,
    PRESET_FULL=PRESET_FULL,
    DOI=NUCLEAIZER_DOI,
    SYNTHETIC_PER_STYLE=DEFAULT_SYNTHETIC_PER_STYLE,
    SYNTHETIC_SHARE=DEFAULT_SYNTHETIC_SHARE,
    MIN_IMAGES_PER_STYLE=DEFAULT_MIN_IMAGES_PER_STYLE,
    ROUNDS=DEFAULT_ROUNDS,
)

__doc__ = help_text.MANUAL.format(**TEXT)

LOG_EVERY_S = 15.0


def _doc(template):
    return template.format(**TEXT)


def _ProgressLog(prefix, every=LOG_EVERY_S):
    """The backend's progress callback -> CellProfiler's log (see progress_log)."""
    return progress_log(LOGGER, prefix, every)


class TrainStyleAdaptation(NucleaizerModule, Module):
    category = "Object Processing"

    module_name = "TrainStyleAdaptation"

    variable_revision_number = 2

    doi = {
        "Please cite nucleAIzer when using TrainStyleAdaptation:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        self.image_name = ImageSubscriber("Select the input image", doc=_doc(help_text.IMAGE_DOC))
        self.use_annotations = Binary(
            "Use annotations?", False, doc=_doc(help_text.USE_ANNOTATIONS_DOC)
        )
        self.annotation_objects = LabelSubscriber(
            "Select the annotation objects", "None", doc=_doc(help_text.ANNOTATION_OBJECTS_DOC)
        )
        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Base model",
            help_text.BASE_MODEL_DOC,
            "Base model location",
            help_text.BASE_MODEL_LOCATION_DOC,
            "Base model folder or file name",
            help_text.BASE_MODEL_NAME_DOC,
            browse_msg="Choose a main network file (.safetensors)",
        )
        self.output_directory = Directory(
            "Output folder",
            value=Directory.static_join_string(DEFAULT_OUTPUT_FOLDER_NAME, ""),
            doc=_doc(help_text.OUTPUT_DIRECTORY_DOC),
        )
        self.output_name = Text(
            "Name of the adapted model folder",
            "adapted_model",
            metadata=True,
            doc=_doc(help_text.OUTPUT_NAME_DOC),
        )
        self.when = Choice(
            "When to adapt", [WHEN_END, WHEN_FIRST], WHEN_END, doc=_doc(help_text.WHEN_DOC)
        )
        self.preset = Choice(
            "Preset", [PRESET_QUICK, PRESET_FULL], PRESET_QUICK, doc=_doc(help_text.PRESET_DOC)
        )
        self.use_gpu = use_gpu_setting(_doc(help_text.USE_GPU_DOC))
        self.test_gpu = gpu_test_setting(self.check_gpu)
        self.advanced = Binary(
            "Use advanced settings?", False, doc=_doc(help_text.ADVANCED_DOC)
        )
        self.synthetic_per_style = Integer(
            "Synthetic pairs per style",
            DEFAULT_SYNTHETIC_PER_STYLE,
            minval=1,
            doc=_doc(help_text.SYNTHETIC_PER_STYLE_DOC),
        )
        self.synthetic_share = Float(
            "Share of synthetic images in fine-tuning",
            DEFAULT_SYNTHETIC_SHARE,
            minval=0.1,
            maxval=0.5,
            doc=_doc(help_text.SYNTHETIC_SHARE_DOC),
        )
        self.finetune_steps = Integer(
            "Fine-tuning steps (0 = the preset's)",
            0,
            minval=0,
            doc=_doc(help_text.FINETUNE_STEPS_DOC),
        )
        self.style_steps = Integer(
            "Style model steps per style (0 = the preset's)",
            0,
            minval=0,
            doc=_doc(help_text.STYLE_STEPS_DOC),
        )
        self.min_images_per_style = Integer(
            "Fewest images per style",
            DEFAULT_MIN_IMAGES_PER_STYLE,
            minval=1,
            doc=_doc(help_text.MIN_IMAGES_PER_STYLE_DOC),
        )
        self.rounds = Integer(
            "Adaptation rounds", DEFAULT_ROUNDS, minval=1, doc=_doc(help_text.ROUNDS_DOC)
        )

    def settings(self):
        return [
            self.image_name, self.use_annotations, self.annotation_objects,
            self.model_choice, self.model_directory, self.model_name,
            self.output_directory, self.output_name, self.when, self.preset, self.use_gpu,
            self.advanced,
        ] + self._advanced_settings()  # fmt: skip

    def _advanced_settings(self):
        return [
            self.synthetic_per_style, self.synthetic_share, self.finetune_steps,
            self.style_steps, self.min_images_per_style, self.rounds,
        ]  # fmt: skip

    def visible_settings(self):
        result = [self.image_name, self.use_annotations]
        if self.use_annotations:
            result += [self.annotation_objects]
        result += [self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.output_directory, self.output_name, self.when, self.preset, self.use_gpu]
        if self.use_gpu:
            result += [self.test_gpu]
        result += [self.advanced]
        if self.advanced:
            result += self._advanced_settings()
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

    def model_written_before_group(self):
        """With 'Before segmenting', the adapted model folder (for the segmentation modules
        below this one); else None."""
        return self.model_folder() if self.adapts_first() else None

    # ------------------------------------------------------------------ paths and config

    def model_folder(self, measurements=None, image_set_number=None):
        """The adapted model folder (absolute). Without measurements, metadata tags are
        left as they are (as for display and validation)."""
        directory = self.output_directory.get_absolute_path(measurements, image_set_number)
        name = self.output_name.value.strip()
        if measurements is not None:
            name = measurements.apply_metadata(name, image_set_number)
        return os.path.join(directory, name)

    def has_metadata_tag(self):
        """True when the model folder's location or name holds a metadata tag."""
        return "\\g<" in self.output_name.value or "\\g<" in self.output_directory.custom_path

    def adaptation_rounds(self):
        """The rounds of adaptation these settings ask for."""
        return int(self.rounds.value) if self.advanced else DEFAULT_ROUNDS

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
        self.validate_backend()
        check_settings(self, pipeline)
        self.validate_only_one(pipeline, C_STYLE_ADAPTATION, self.image_name)

    def validate_module_warnings(self, pipeline):
        check_pipeline(self, pipeline)

    # ------------------------------------------------------------------ adapting

    def prepare_group(self, workspace, grouping, image_numbers):
        """Start a group; with 'Before segmenting', load its images and adapt now."""
        start_group(self, workspace, grouping, image_numbers, LOGGER, _ProgressLog)
        return True

    def run(self, workspace):
        m = workspace.measurements
        number = int(m.image_set_number)
        d = self.get_dictionary()
        image = workspace.image_set.get_image(self.image_name.value)
        check_2d(self, image, number)
        collected = 0
        if not self.adapts_first():
            entry = image_entry(self, image, workspace.object_set, m, number)
            d.setdefault(D_IMAGES, []).append(entry)
            collected = len(d[D_IMAGES])
            if last_cycle_of_group(m):
                # Adapting in the group's last cycle (rather than in post_group, which stays
                # the fallback for a group whose last image set did not reach this module)
                # makes an error a module error: CellProfiler reports it and a headless run
                # exits with status 1 (a post_group error leaves the exit status at 0).
                finish_group(self, workspace, LOGGER, _ProgressLog)
        if self.show_window:
            statistics = cycle_statistics(self, d.get(D_RESULT), collected, m, number)
            workspace.display_data.image = image.pixel_data
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.statistics = statistics

    def post_group(self, workspace, grouping):
        """'At the end of the group' when the group's last cycle did not adapt; the
        post-group display (style sheet and report)."""
        d = self.get_dictionary()
        if not self.adapts_first():
            finish_group(self, workspace, LOGGER, _ProgressLog)
        d[D_IMAGES] = []
        result = d.get(D_RESULT)
        if self.show_window and result:
            report_display(workspace.display_data, result)

    # ------------------------------------------------------------------ measurements

    def post_run(self, workspace):
        """Record what the run's adaptations did as experiment measurements, read from the
        model folders (so it also works when the groups ran in CellProfiler's workers,
        whose experiment measurements are not kept)."""
        m = workspace.measurements
        for name, value in experiment_measurements(model_folders(self, m)):
            m.add_experiment_measurement(name, value)

    def get_measurement_columns(self, pipeline):
        return [
            (EXPERIMENT, feature(name), coltype, {MCA_AVAILABLE_POST_RUN: True})
            for name, coltype, _ in FEATURES
        ]

    def get_categories(self, pipeline, object_name):
        if object_name == EXPERIMENT:
            return [C_STYLE_ADAPTATION]
        return []

    def get_measurements(self, pipeline, object_name, category):
        if object_name == EXPERIMENT and category == C_STYLE_ADAPTATION:
            return [name for name, _, _ in FEATURES]
        return []

    # ------------------------------------------------------------------ display

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((2, 1))
        title = "%s, cycle #%d" % (self.image_name.value, workspace.measurements.image_number)
        show_image(figure, 0, 0, d.image, d.multichannel, title)
        show_statistics(figure, 1, 0, d.statistics)

    def display_post_group(self, workspace, figure):
        d = workspace.display_data
        report = getattr(d, "report", None)
        if not report:
            return
        sheet = getattr(d, "sheet", None)
        table = [[line] for line in report]
        if sheet is not None:
            figure.set_subplots((1, 2))
            title = "Real vs synthetic images per style (%s)" % d.sheet_file
            figure.subplot_imshow_color(0, 0, sheet, title, normalize=False)
            figure.subplot_table(0, 1, table, col_labels=["Style adaptation"])
        else:
            figure.set_subplots((1, 1))
            figure.subplot_table(0, 0, table, col_labels=["Style adaptation"])
