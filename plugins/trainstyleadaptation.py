"""TrainStyleAdaptation: nucleAIzer style adaptation as a CellProfiler module: from the images
of an image group (unannotated, or with annotation objects) to a model adapted to their
style, written to a folder for SegmentNucleiStyleAdapted.

All image and model logic lives in the ``nucleaizer_backend`` package; this file only
collects CellProfiler images (and objects), calls the backend's ``adapt`` and reports what it
did (log, experiment measurements, display). Its help text is in
_trainstyleadaptation_help.py.
"""

import logging
import os

from cellprofiler_core.constants.measurement import EXPERIMENT, MCA_AVAILABLE_POST_RUN
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
    images_grouped,
    last_cycle_of_group,
    model_settings,
    modules_rerun,
    same_path,
    segmenters_using,
    show_image,
    show_statistics,
    use_gpu_setting,
)
import _trainstyleadaptation_help as help_text
from _trainstyleadaptation_run import (
    C_STYLE_ADAPTATION,
    FEATURES,
    adapt_group,
    check_2d,
    experiment_measurements,
    feature,
    image_entry,
    load_group,
    read_sheet,
    stop_module,
    summary_statistics,
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
)

__doc__ = help_text.MANUAL.format(**TEXT)

# Keys of the module dictionary (one group at a time).
D_IMAGES = "images"  # [(image number, name, float32 pixels, int32 labels or None)]
D_RESULT = "result"  # summary of the group's adaptation (JSON-serialisable)
D_DONE = "done"  # the group's adaptation ran (or was skipped in test mode)

LOG_EVERY_S = 15.0


def _doc(template):
    return template.format(**TEXT)


def _ProgressLog(prefix, every=LOG_EVERY_S):
    """The backend's progress callback -> CellProfiler's log: each stage's start and end,
    and at most one line every ``every`` seconds in between."""
    from nucleaizer_backend.style import ProgressLog

    return ProgressLog(lambda line: LOGGER.info("%s: %s", prefix, line), every)


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
        if pipeline.volumetric():
            raise ValidationError(
                "%s adapts to 2D images: load the images as 2D planes (NamesAndTypes: "
                "Process as 3D = No)" % self.module_name,
                self.image_name,
            )
        base = self.model_path()
        if base is not None:
            from nucleaizer_backend.errors import ModelFileError
            from nucleaizer_backend.style import find_base_model

            try:
                find_base_model(base)
            except ModelFileError as e:
                raise ValidationError("Cannot use the base model: %s" % e, self.model_name)
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
        self.validate_only_one(pipeline, C_STYLE_ADAPTATION, self.image_name)

    def validate_module_warnings(self, pipeline):
        users = segmenters_using(pipeline, self, self.model_folder())
        if self.adapts_first():
            rerun = modules_rerun(pipeline, self, stop_module(self, pipeline))
            if rerun:
                raise ValidationError(
                    "Adapting before segmenting runs the modules that provide the input image "
                    "(and annotations) once more for every image of the group before the group "
                    "starts. That is cheap for the input modules, but here it reruns %s."
                    % ", ".join("#%d %s" % (m.module_num, m.module_name) for m in rerun),
                    self.when,
                )
            if not users:
                raise ValidationError(
                    "No SegmentNucleiStyleAdapted module below this one uses the adapted model "
                    "(Model = Custom, location and name = %s): '%s' is meant for segmenting in "
                    "the same pipeline" % (self.model_folder(), WHEN_FIRST),
                    self.when,
                )
        elif users:
            raise ValidationError(
                "SegmentNucleiStyleAdapted #%d uses this module's model folder, but with "
                "'%s' the model is written after the group's last cycle: that module "
                "would use the folder as it was before the run. Choose '%s', or segment "
                "in a second pipeline." % (users[0].module_num, WHEN_END, WHEN_FIRST),
                self.when,
            )
        if self._has_metadata_tag():
            return
        if images_grouped(pipeline):
            raise ValidationError(
                "Images are grouped: each group adapts its own model, so each needs its own "
                "folder (a second group's adaptation is refused in a folder holding another "
                "group's). %s"
                % (
                    "Run one group per job (-g) with its own output folder (-o)."
                    if self.adapts_first()
                    else "Put a metadata tag in the folder name (e.g. adapted_\\g<Plate>), or "
                    "run one group per job (-g) with its own output folder (-o)."
                ),
                self.output_name,
            )
        try:
            from nucleaizer_backend.style import holds_other_files
        except ImportError:  # validate_module reports it
            return
        folder = self.model_folder()
        rounds = int(self.rounds.value) if self.advanced else DEFAULT_ROUNDS
        if holds_other_files(folder, rounds):
            raise ValidationError(
                "%s holds other files (not a style adaptation): the adaptation will refuse "
                "to write there. Choose a new or empty folder." % folder,
                self.output_name,
            )

    # ------------------------------------------------------------------ adapting

    def _adapt(self, entries, folder):
        prefix = "%s (#%d)" % (self.module_name, self.module_num)
        return adapt_group(self, entries, folder, LOGGER, _ProgressLog(prefix))

    def _skip_in_test_mode(self, workspace):
        return self.skip_in_test_mode(
            workspace, "not adapting in test mode (it takes minutes to hours); run the analysis "
            "to adapt the model"
        )

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
        folder = self.model_folder(workspace.measurements, image_numbers[0])
        entries = load_group(self, workspace, grouping, image_numbers)
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

    def run(self, workspace):
        m = workspace.measurements
        number = int(m.image_set_number)
        d = self.get_dictionary()
        image = workspace.image_set.get_image(self.image_name.value)
        check_2d(self, image, number)
        if not self.adapts_first():
            entry = image_entry(self, image, workspace.object_set, m, number)
            d.setdefault(D_IMAGES, []).append(entry)
            collected = len(d[D_IMAGES])
            if last_cycle_of_group(m):
                # Adapting in the group's last cycle (rather than in post_group, which stays
                # the fallback for a group whose last image set did not reach this module)
                # makes an error a module error: CellProfiler reports it and a headless run
                # exits with status 1 (a post_group error leaves the exit status at 0).
                self._finish_group(workspace)
        if self.show_window:
            result = d.get(D_RESULT)
            if self.adapts_first() or result:
                statistics = summary_statistics(result)
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
            workspace.display_data.sheet = read_sheet(result.get("sheet"))
            workspace.display_data.sheet_file = os.path.basename(str(result.get("sheet")))
            workspace.display_data.report = list(result["report"])

    # ------------------------------------------------------------------ measurements

    def post_run(self, workspace):
        """Record what the run's adaptations did as experiment measurements, read from the
        model folders (so it also works when the groups ran in CellProfiler's workers,
        whose experiment measurements are not kept)."""
        m = workspace.measurements
        folders = []
        for number in m.get_image_numbers():
            try:
                folder = self.model_folder(m, int(number))
            except Exception:  # a metadata tag missing for this image set
                continue
            if folder not in folders:
                folders.append(folder)
        for feature, value in experiment_measurements(folders):
            m.add_experiment_measurement(feature, value)

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
