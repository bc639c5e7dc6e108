"""EstimateNucleusSize: the typical nucleus diameter of each image, or of each image group,
as CellProfiler image measurements (nucleAIzer's size-robust "preseg" network).

All image and model logic lives in the ``nucleaizer_backend`` package; this file only
translates between CellProfiler and the backend's ``estimate_size`` / ``SizeEstimate``
(through _estimatenucleussize_run.py). Its help text is in _estimatenucleussize_help.py.
"""

import logging

import numpy
from cellprofiler_core.constants.measurement import (
    C_COUNT,
    C_LOCATION,
    C_NUMBER,
    FTR_CENTER_X,
    FTR_CENTER_Y,
    FTR_CENTER_Z,
    FTR_OBJECT_NUMBER,
    IMAGE,
)
from cellprofiler_core.module import Module
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber
from cellprofiler_core.setting.text import Float, LabelName

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    backend as _backend,
    gpu_memory_share_setting,
    gpu_test_setting,
    model_settings,
    show_image,
    show_statistics,
    use_gpu_setting,
)
import _estimatenucleussize_help as help_text
from _estimatenucleussize_run import (
    C_NUCLEUS_SIZE,
    FEATURES,
    add_objects,
    add_size_measurements,
    estimate,
    estimate_group,
    feature,
    object_columns,
    summary_statistics,
)

LOGGER = logging.getLogger(__name__)

SCOPE_EACH = "Each image individually"
SCOPE_GROUP = "All images of the group (pooled)"

# Keys of the module dictionary that carries a group's estimates from prepare_group to run
# (JSON-serialisable only, so that CellProfiler can hand it to analysis workers).
D_GROUP = "group"
D_IMAGES = "images"
D_POOLED = "pooled"

# The fields of the help text's templates.
TEXT = dict(SCOPE_EACH=SCOPE_EACH, SCOPE_GROUP=SCOPE_GROUP, DOI=NUCLEAIZER_DOI)

__doc__ = help_text.MANUAL.format(**TEXT)


def _doc(template):
    return template.format(**TEXT)


class EstimateNucleusSize(NucleaizerModule, Module):
    category = "Measurement"

    module_name = "EstimateNucleusSize"

    variable_revision_number = 1

    doi = {
        "Please cite nucleAIzer when using EstimateNucleusSize:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        self.image_name = ImageSubscriber("Select the input image", doc=_doc(help_text.IMAGE_DOC))
        self.scope = Choice(
            "Estimate the size for each image or for the whole group?",
            [SCOPE_EACH, SCOPE_GROUP],
            SCOPE_EACH,
            doc=_doc(help_text.SCOPE_DOC),
        )
        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Model",
            help_text.MODEL_DOC,
            "Model location",
            help_text.MODEL_LOCATION_DOC,
            "Model folder or file name",
            help_text.MODEL_NAME_DOC,
        )
        self.confidence = Float(
            "Detection confidence threshold",
            0.5,
            minval=0.0,
            maxval=1.0,
            doc=_doc(help_text.CONFIDENCE_DOC),
        )
        self.want_objects = Binary(
            "Save the measured nuclei as objects?", False, doc=_doc(help_text.WANT_OBJECTS_DOC)
        )
        self.objects_name = LabelName(
            "Name the objects", "PresegNuclei", doc=_doc(help_text.OBJECTS_NAME_DOC)
        )
        self.use_gpu = use_gpu_setting(_doc(help_text.USE_GPU_DOC))
        self.test_gpu = gpu_test_setting(self.check_gpu)
        self.gpu_memory_share = gpu_memory_share_setting(_doc(help_text.GPU_MEMORY_SHARE_DOC))

    def settings(self):
        return [
            self.image_name, self.scope, self.model_choice, self.model_directory,
            self.model_name, self.confidence, self.use_gpu, self.gpu_memory_share,
            self.want_objects, self.objects_name,
        ]  # fmt: skip

    def visible_settings(self):
        result = [self.image_name, self.scope, self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.confidence, self.use_gpu]
        if self.use_gpu:
            result += [self.test_gpu, self.gpu_memory_share]
        result += [self.want_objects]
        if self.want_objects:
            result += [self.objects_name]
        return result

    def help_settings(self):
        return self.settings()

    def is_aggregation_module(self):
        """In group mode every image of a group must be processed by the same worker."""
        return self.scope == SCOPE_GROUP

    # ------------------------------------------------------------------ validation

    def validate_module(self, pipeline):
        self.validate_backend()
        self.validate_model()
        self.validate_only_one(pipeline, C_NUCLEUS_SIZE, self.image_name)

    def validate_module_warnings(self, pipeline):
        if self.scope == SCOPE_GROUP and not pipeline.is_image_from_file(self.image_name.value):
            raise ValidationError(
                "Pooling a group runs the modules before this one once more for every image "
                "of the group before the group starts. That is cheap when the input image "
                "comes from NamesAndTypes, but %r is made by a processing module." % self.image_name.value,
                self.scope,
            )

    # ------------------------------------------------------------------ computing

    def prepare_group(self, workspace, grouping, image_numbers):
        """In group mode, estimate every image of the group now and pool them."""
        d = self.get_dictionary()
        d.clear()
        if self.scope != SCOPE_GROUP or len(image_numbers) == 0:
            return True
        images, pooled = estimate_group(self, workspace, grouping, image_numbers, LOGGER)
        d[D_GROUP] = [int(n) for n in image_numbers]
        d[D_IMAGES] = images
        d[D_POOLED] = pooled
        return True

    def run(self, workspace):
        m = workspace.measurements
        number = int(m.image_set_number)
        d = self.get_dictionary()
        want_objects = bool(self.want_objects.value)
        image = None
        if self.scope == SCOPE_GROUP and str(number) in d.get(D_IMAGES, {}):
            entry = d[D_IMAGES][str(number)]
            if "error" in entry:
                raise _backend().InputImageError(entry["error"])
            from_dict = _backend().SizeEstimate.from_dict
            used = from_dict(d[D_POOLED])
            if want_objects:
                image = workspace.image_set.get_image(self.image_name.value)
                own = estimate(self, image, number, return_labels=True)
            else:
                own = from_dict(entry)
        else:
            if self.scope == SCOPE_GROUP:
                LOGGER.warning(
                    "%s: image #%d was not measured with its group; using its own estimate",
                    self.module_name,
                    number,
                )
            image = workspace.image_set.get_image(self.image_name.value)
            own = used = estimate(self, image, number, return_labels=want_objects)
        add_size_measurements(m, used, own)
        labels = add_objects(self, workspace, own, image) if want_objects else None
        if self.show_window:
            if image is None:
                image = workspace.image_set.get_image(self.image_name.value)
            group_size = len(d.get(D_GROUP, [])) if self.scope == SCOPE_GROUP else None
            workspace.display_data.image = image.pixel_data
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.diameters = numpy.asarray(own.diameters, float)
            workspace.display_data.statistics = summary_statistics(own, used, group_size)
            workspace.display_data.labels = labels

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((3, 1))
        title = "%s, cycle #%d" % (self.image_name.value, workspace.measurements.image_number)
        kwargs = {}
        if d.labels is not None:
            kwargs["cplabels"] = [dict(name=self.objects_name.value, labels=[d.labels])]
        show_image(figure, 0, 0, d.image, d.multichannel, title, **kwargs)
        figure.subplot_histogram(
            1, 0, d.diameters, bins=20, xlabel="Nucleus diameter (px)", title="Nuclei of this image"
        )
        show_statistics(figure, 2, 0, d.statistics)

    # ------------------------------------------------------------------ measurements

    def get_measurement_columns(self, pipeline):
        columns = [(IMAGE, feature(name), coltype) for name, coltype in FEATURES]
        if self.want_objects:
            columns += object_columns(self.objects_name.value)
        return columns

    def get_categories(self, pipeline, object_name):
        if object_name == IMAGE:
            return [C_NUCLEUS_SIZE] + ([C_COUNT] if self.want_objects else [])
        if self.want_objects and object_name == self.objects_name.value:
            return [C_LOCATION, C_NUMBER]
        return []

    def get_measurements(self, pipeline, object_name, category):
        if object_name == IMAGE and category == C_NUCLEUS_SIZE:
            return [name for name, _ in FEATURES]
        if self.want_objects:
            if object_name == IMAGE and category == C_COUNT:
                return [self.objects_name.value]
            if object_name == self.objects_name.value:
                if category == C_LOCATION:
                    return [FTR_CENTER_X, FTR_CENTER_Y, FTR_CENTER_Z]
                if category == C_NUMBER:
                    return [FTR_OBJECT_NUMBER]
        return []
