"""SegmentNucleiStyleAdapted: nucleAIzer nucleus segmentation as a CellProfiler module.

All image and model logic lives in the ``nucleaizer_backend`` package (installed into the
same Python environment as CellProfiler); this file only translates between CellProfiler's
settings, images, objects and measurements and the backend's ``segment_image`` (through
_segmentnucleistyleadapted_run.py). Its help text is in _segmentnucleistyleadapted_help.py.
"""

import logging
import math

from cellprofiler_core.constants.measurement import COLTYPE_FLOAT, IMAGE
from cellprofiler_core.module.image_segmentation import ImageSegmentation
from cellprofiler_core.setting import Binary, Measurement, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.range import IntegerRange
from cellprofiler_core.setting.subscriber import ImageSubscriber
from cellprofiler_core.setting.text import Float, ImageName, LabelName

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    gpu_memory_share_setting,
    gpu_test_setting,
    model_settings,
    model_written_upstream,
    show_image,
    show_statistics,
    use_gpu_setting,
)
import _segmentnucleistyleadapted_help as help_text
from _segmentnucleistyleadapted_run import (
    C_NUCLEAIZER,
    FTR_CONFIDENCE,
    IMAGE_FEATURES,
    M_CONFIDENCE,
    add_results,
    check_input,
    image_feature,
    measured_diameter,
    segment,
    summary_statistics,
)

LOGGER = logging.getLogger(__name__)

SIZE_AUTOMATIC = "Automatic (per image)"
SIZE_MEASUREMENT = "From an image measurement"
SIZE_MANUAL = "Manual"

REFINE_FULL = "Rules and U-Net contour refinement"
REFINE_RULES = "Rules only"
REFINE_NONE = "None"
# the backend's refine argument of each choice
REFINE_LEVELS = {REFINE_FULL: "full", REFINE_RULES: "rules", REFINE_NONE: "none"}

SPEED_ACCURATE = "Accurate"
SPEED_FAST = "Fast"
# the backend's speed argument of each choice
SPEEDS = {SPEED_ACCURATE: "accurate", SPEED_FAST: "fast"}

PARAMS_MODEL = "From the model"
PARAMS_CUSTOM = "Custom"

# the paper's post-processing parameters (nucleaizer_backend.refine.PostprocessParams)
PAPER_PARAMS = {"p1": 0.17, "p2": 44.0, "p3": 0.9375, "p4": 1.0, "p5": 1.0, "p6": 0.8}
PARAM_NAMES = ("confidence",) + tuple(PAPER_PARAMS)


def model_values(path=None):
    """{confidence, p1..p6} the model at ``path`` (None = shipped) uses unless told otherwise
    (its model.json, read without loading networks); the paper's values (confidence 0.5) when
    the backend or the model cannot be read."""
    try:
        from nucleaizer_backend.models.io import stored_postprocess

        values = stored_postprocess(path).to_dict()
    except Exception:  # no backend, or a model not (yet) readable: validation says why
        values = dict(PAPER_PARAMS, confidence=0.5)
    return {k: float(values[k]) for k in PARAM_NAMES}


def model_speed(path=None):
    """(speed choice matching the default speed, fast diameter in px or None) of the model
    at ``path`` (None = shipped; its model.json, read without loading networks);
    (*Accurate*, None) when it cannot be read."""
    try:
        from nucleaizer_backend.models.io import stored_speed

        speed = stored_speed(path)
        return {v: k for k, v in SPEEDS.items()}[speed["default"]], speed["fast_diameter"]
    except Exception:  # no backend, or a model not (yet) readable: validation says why
        return SPEED_ACCURATE, None


_SHIPPED_SPEED, _SHIPPED_FAST_DIAMETER = model_speed()

# The fields of the help text's templates.
TEXT = dict(
    SIZE_AUTOMATIC=SIZE_AUTOMATIC,
    SIZE_MEASUREMENT=SIZE_MEASUREMENT,
    SIZE_MANUAL=SIZE_MANUAL,
    REFINE_FULL=REFINE_FULL,
    REFINE_RULES=REFINE_RULES,
    REFINE_NONE=REFINE_NONE,
    PARAMS_MODEL=PARAMS_MODEL,
    PARAMS_CUSTOM=PARAMS_CUSTOM,
    SPEED_ACCURATE=SPEED_ACCURATE,
    SPEED_FAST=SPEED_FAST,
    DEFAULT_SPEED=_SHIPPED_SPEED,
    FAST_DIAMETER="%g" % (_SHIPPED_FAST_DIAMETER or 40),
    DOI=NUCLEAIZER_DOI,
)

__doc__ = help_text.MANUAL.format(**TEXT)


def _doc(template):
    return template.format(**TEXT)


class SegmentNucleiStyleAdapted(NucleaizerModule, ImageSegmentation):
    category = "Object Processing"

    module_name = "SegmentNucleiStyleAdapted"

    variable_revision_number = 4

    segments_with_model = True  # a model adapted upstream (TrainStyleAdaptation) is for it

    doi = {
        "Please cite nucleAIzer when using SegmentNucleiStyleAdapted:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        start = model_values()  # the Custom values start from the shipped model's
        self.x_name = ImageSubscriber("Select the input image", doc=_doc(help_text.IMAGE_DOC))
        self.y_name = LabelName(
            "Name the nuclei objects", "Nuclei", doc=_doc(help_text.OBJECTS_NAME_DOC)
        )
        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Model",
            help_text.MODEL_DOC,
            "Model location",
            help_text.MODEL_LOCATION_DOC,
            "Model folder or file name",
            help_text.MODEL_NAME_DOC,
        )
        self.size_choice = Choice(
            "Nucleus size",
            [SIZE_AUTOMATIC, SIZE_MEASUREMENT, SIZE_MANUAL],
            SIZE_AUTOMATIC,
            doc=_doc(help_text.SIZE_DOC),
        )
        self.size_measurement = Measurement(
            "Measurement giving the nucleus diameter (px)",
            lambda: IMAGE,
            "NucleusSize_MedianDiameter",
            doc=_doc(help_text.SIZE_MEASUREMENT_DOC),
        )
        self.manual_diameter = Float(
            "Typical nucleus diameter (px)",
            20.0,
            minval=1.0,
            doc=_doc(help_text.MANUAL_DIAMETER_DOC),
        )
        self.refinement = Choice(
            "Post-processing",
            [REFINE_FULL, REFINE_RULES, REFINE_NONE],
            REFINE_FULL,
            doc=_doc(help_text.REFINEMENT_DOC),
        )
        self.speed = Choice(
            "Speed",
            [SPEED_ACCURATE, SPEED_FAST],
            model_speed()[0],
            doc=_doc(help_text.SPEED_DOC),
        )
        self.tta = Binary("Use test-time augmentation?", False, doc=_doc(help_text.TTA_DOC))
        self.params_choice = Choice(
            "Detection and post-processing parameters",
            [PARAMS_MODEL, PARAMS_CUSTOM],
            PARAMS_MODEL,
            doc=_doc(help_text.PARAMS_DOC),
        )
        self.confidence = Float(
            "Detection confidence threshold",
            start["confidence"],
            minval=0.0,
            maxval=1.0,
            doc=_doc(help_text.CONFIDENCE_DOC),
        )
        self.p1 = Float(
            "Merge into a neighbour touching more than this fraction of the outline (p1)",
            start["p1"],
            minval=0.0,
            maxval=1.0,
            doc=_doc(help_text.P1_DOC),
        )
        self.p2 = Float(
            "Minimum nucleus area at the working scale (p2, px²)",
            start["p2"],
            minval=0.0,
            doc=_doc(help_text.P2_DOC),
        )
        self.p3 = Float(
            "U-Net probability threshold (p3)",
            start["p3"],
            minval=0.0,
            maxval=1.0,
            doc=_doc(help_text.P3_DOC),
        )
        self.p4 = Float(
            "Outline margin inwards (p4, px at the working scale)",
            start["p4"],
            minval=0.0,
            doc=_doc(help_text.P4_DOC),
        )
        self.p5 = Float(
            "Outline margin outwards (p5, px at the working scale)",
            start["p5"],
            minval=0.0,
            doc=_doc(help_text.P5_DOC),
        )
        self.p6 = Float(
            "Minimum mean U-Net probability of a nucleus (p6)",
            start["p6"],
            minval=0.0,
            maxval=1.0,
            doc=_doc(help_text.P6_DOC),
        )
        self.exclude_size = Binary(
            "Discard objects outside the diameter range?",
            False,
            doc=_doc(help_text.EXCLUDE_SIZE_DOC),
        )
        self.size_range = IntegerRange(
            "Typical diameter of objects, in pixel units (Min,Max)",
            (8, 100),
            minval=0,
            doc=_doc(help_text.SIZE_RANGE_DOC),
        )
        self.exclude_border_objects = Binary(
            "Discard objects touching the border of the image?",
            False,
            doc=_doc(help_text.EXCLUDE_BORDER_DOC),
        )
        self.use_gpu = use_gpu_setting(_doc(help_text.USE_GPU_DOC))
        self.test_gpu = gpu_test_setting(self.check_gpu)
        self.gpu_memory_share = gpu_memory_share_setting(_doc(help_text.GPU_MEMORY_SHARE_DOC))
        self.use_mask = Binary(
            "Restrict detection to a mask?", False, doc=_doc(help_text.USE_MASK_DOC)
        )
        self.mask_name = ImageSubscriber("Select the mask image", doc=_doc(help_text.MASK_NAME_DOC))
        self.want_confidence = Binary(
            "Measure each nucleus's detection confidence?",
            True,
            doc=_doc(help_text.WANT_CONFIDENCE_DOC),
        )
        self.want_probability = Binary(
            "Save the nucleus probability image?", False, doc=_doc(help_text.WANT_PROBABILITY_DOC)
        )
        self.probability_name = ImageName(
            "Name the probability image",
            "NucleusProbability",
            doc=_doc(help_text.PROBABILITY_NAME_DOC),
        )

    def settings(self):
        return [
            self.x_name, self.y_name, self.model_choice, self.model_directory, self.model_name,
            self.size_choice, self.size_measurement, self.manual_diameter, self.confidence,
            self.use_gpu, self.gpu_memory_share, self.use_mask, self.mask_name,
            self.want_confidence, self.want_probability, self.probability_name,
            # revision 2
            self.refinement, self.tta, self.params_choice,
            self.p1, self.p2, self.p3, self.p4, self.p5, self.p6,
            # revision 3
            self.exclude_size, self.size_range, self.exclude_border_objects,
            # revision 4
            self.speed,
        ]  # fmt: skip

    def visible_settings(self):
        result = [self.x_name, self.y_name, self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.size_choice]
        if self.size_choice == SIZE_MEASUREMENT:
            result += [self.size_measurement]
        elif self.size_choice == SIZE_MANUAL:
            result += [self.manual_diameter]
        result += [self.speed, self.refinement, self.tta, self.params_choice]
        if self.params_choice == PARAMS_CUSTOM:
            result += [self.confidence]
            if self.refinement != REFINE_NONE:
                result += [self.p1, self.p2]
            if self.refinement == REFINE_FULL:
                result += [self.p3, self.p4, self.p5, self.p6]
        result += [self.exclude_size]
        if self.exclude_size:
            result += [self.size_range]
        result += [self.exclude_border_objects, self.use_gpu]
        if self.use_gpu:
            result += [self.test_gpu, self.gpu_memory_share]
        result += [self.use_mask]
        if self.use_mask:
            result += [self.mask_name]
        result += [self.want_confidence, self.want_probability]
        if self.want_probability:
            result += [self.probability_name]
        return result

    def help_settings(self):
        """Every setting, in the order the module shows them (settings() keeps the saved
        order, which grew by revision)."""
        return [
            self.x_name, self.y_name, self.model_choice, self.model_directory, self.model_name,
            self.size_choice, self.size_measurement, self.manual_diameter, self.speed,
            self.refinement, self.tta, self.params_choice, self.confidence,
            self.p1, self.p2, self.p3, self.p4, self.p5, self.p6,
            self.exclude_size, self.size_range, self.exclude_border_objects,
            self.use_gpu, self.gpu_memory_share, self.use_mask, self.mask_name,
            self.want_confidence, self.want_probability, self.probability_name,
        ]  # fmt: skip

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        """Bring settings saved by an older version of this module to the current layout.

        Revision 1 is the first released layout. Revision 2 added post-processing, test-time
        augmentation and the parameter choice: a revision-1 confidence other than 0.5 (the
        user's own value) is kept, as custom parameters whose p1..p6 are the shipped model's.
        Revision 3 added the diameter-range and border filters (off, as before). Revision 4
        added the speed: *Accurate* for older pipelines, the only speed there was, so
        that they keep their results. When
        settings are added or changed, bump ``variable_revision_number`` and add a step here
        that converts the old values."""
        self.refuse_newer_revision(variable_revision_number)
        if variable_revision_number == 1:
            confidence = float(setting_values[8])
            custom = PARAMS_CUSTOM if abs(confidence - 0.5) > 1e-9 else PARAMS_MODEL
            start = model_values()
            setting_values = list(setting_values) + [REFINE_FULL, "No", custom] + [
                str(start[k]) for k in PAPER_PARAMS
            ]
            variable_revision_number = 2
        if variable_revision_number == 2:
            setting_values = list(setting_values) + ["No", "8,100", "No"]
            variable_revision_number = 3
        if variable_revision_number == 3:
            setting_values = list(setting_values) + [SPEED_ACCURATE]
            variable_revision_number = 4
        return setting_values, variable_revision_number

    def on_setting_changed(self, setting, pipeline):
        """When *Custom* parameters are chosen, or another model while they are chosen, they
        take the chosen model's values, unless the user has typed values of their own (the
        values shown are still the shipped model's or those last filled in)."""
        watched = (self.params_choice, self.model_choice, self.model_directory, self.model_name)
        if self.params_choice != PARAMS_CUSTOM or not any(setting is s for s in watched):
            return
        current = {k: float(getattr(self, k).value) for k in PARAM_NAMES}
        if current in (model_values(None), getattr(self, "_values_filled", None)):
            self._values_filled = model_values(self.model_path())
            for k, v in self._values_filled.items():
                getattr(self, k).value = v

    def is_object_identification_module(self):
        return True


    # ------------------------------------------------------------------ validation

    def validate_module(self, pipeline):
        self.validate_backend()
        if not self._model_adapted_upstream(pipeline):
            self.validate_model()
        if self.size_choice == SIZE_MANUAL and not self.manual_diameter.value > 0:
            raise ValidationError("The nucleus diameter must be positive", self.manual_diameter)
        if self.use_mask and self.mask_name.value == self.x_name.value:
            raise ValidationError(
                "The mask image must not be the image being segmented", self.mask_name
            )
        if self.params_choice == PARAMS_CUSTOM:
            self._validate_custom_params()

    def _validate_custom_params(self):
        """ValidationError on the first custom detection/post-processing value outside the
        backend's allowed range (refine.PARAM_RANGES), naming the range."""
        from nucleaizer_backend.errors import OptionError
        from nucleaizer_backend.refine import check_param

        for name in ("confidence",) + tuple(PAPER_PARAMS):
            setting = getattr(self, name)
            try:
                check_param(name, setting.value, setting.text)
            except OptionError as e:
                raise ValidationError(str(e), setting)

    def _model_adapted_upstream(self, pipeline):
        """True when an upstream module (TrainStyleAdaptation) writes this module's custom
        model folder before the group's first cycle (so it need not exist before the run)."""
        path = self.model_path()
        return path is not None and model_written_upstream(pipeline, self, path)

    # ------------------------------------------------------------------ run

    def _diameter(self, workspace):
        """Diameter in px for this image, or None to estimate it."""
        if self.size_choice == SIZE_MANUAL:
            return float(self.manual_diameter.value)
        if self.size_choice == SIZE_MEASUREMENT:
            name = self.size_measurement.value
            m = workspace.measurements
            value = measured_diameter(m, name)
            if not (math.isfinite(value) and value > 0):
                LOGGER.warning(
                    "%s: measurement %s is %r for image #%d; estimating the nucleus size "
                    "from the image instead",
                    self.module_name,
                    name,
                    value,
                    m.image_set_number,
                )
                return None
            return value
        return None

    def segment_options(self, diameter):
        """The backend's segment_image keyword arguments for these settings (but the mask);
        the detection/post-processing values only when custom ones are chosen."""
        options = dict(
            model=self.model_path(),
            diameter=diameter,
            device=self.device(),
            return_probability=bool(self.want_probability.value),
            refine=REFINE_LEVELS[self.refinement.value],
            tta=bool(self.tta.value),
            speed=SPEEDS[self.speed.value],
            discard_border=bool(self.exclude_border_objects.value),
            diameter_range=(
                (self.size_range.min, self.size_range.max) if self.exclude_size.value else None
            ),
        )
        if self.params_choice == PARAMS_CUSTOM:
            options["confidence"] = float(self.confidence.value)
            options["postprocess"] = {k: float(getattr(self, k).value) for k in PAPER_PARAMS}
        return options

    def run(self, workspace):
        image = workspace.image_set.get_image(self.x_name.value)
        check_input(self, image)
        self.share_machine_with_other_workers()
        diameter = self._diameter(workspace)
        result = segment(self, workspace, image, diameter)
        labels, count = add_results(self, workspace, image, result)
        if self.show_window:
            workspace.display_data.image = image.pixel_data
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.labels = labels
            workspace.display_data.statistics = summary_statistics(result, labels, count, diameter)

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((2, 2))
        title = "Input image, cycle #%d" % (workspace.measurements.image_number,)
        ax = show_image(figure, 0, 0, d.image, d.multichannel, title)
        figure.subplot_imshow_labels(1, 0, d.labels, self.y_name.value, sharexy=ax)
        cplabels = [dict(name=self.y_name.value, labels=[d.labels])]
        outline_title = "%s outlines" % self.y_name.value
        show_image(
            figure, 0, 1, d.image, d.multichannel, outline_title, cplabels=cplabels, sharexy=ax
        )
        show_statistics(figure, 1, 1, d.statistics)

    # ------------------------------------------------------------------ measurements

    def get_measurement_columns(self, pipeline):
        columns = super(SegmentNucleiStyleAdapted, self).get_measurement_columns(pipeline)
        y_name = self.y_name.value
        columns += [
            (IMAGE, image_feature(feature, y_name), coltype) for feature, coltype in IMAGE_FEATURES
        ]
        if self.want_confidence:
            columns += [(y_name, M_CONFIDENCE, COLTYPE_FLOAT)]
        return columns

    def get_categories(self, pipeline, object_name):
        categories = super(SegmentNucleiStyleAdapted, self).get_categories(pipeline, object_name)
        if object_name == IMAGE:
            categories = categories + [C_NUCLEAIZER]
        elif object_name == self.y_name.value and self.want_confidence:
            categories = categories + [C_NUCLEAIZER]
        return categories

    def get_measurements(self, pipeline, object_name, category):
        if category == C_NUCLEAIZER:
            if object_name == IMAGE:
                return [feature for feature, _ in IMAGE_FEATURES]
            if object_name == self.y_name.value and self.want_confidence:
                return [FTR_CONFIDENCE]
            return []
        return super(SegmentNucleiStyleAdapted, self).get_measurements(
            pipeline, object_name, category
        )

    def get_measurement_objects(self, pipeline, object_name, category, measurement):
        if (
            object_name == IMAGE
            and category == C_NUCLEAIZER
            and measurement in [feature for feature, _ in IMAGE_FEATURES]
        ):
            return [self.y_name.value]
        return []
