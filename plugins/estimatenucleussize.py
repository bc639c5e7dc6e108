"""EstimateNucleusSize: the typical nucleus diameter of each image, or of each image group,
as CellProfiler image measurements (nucleAIzer's size-robust "preseg" network).

All image and model logic lives in the ``nucleaizer_backend`` package; this file only
translates between CellProfiler and the backend's ``estimate_size`` / ``SizeEstimate``.
"""

import logging
import math

import numpy
from cellprofiler_core.constants.measurement import (
    COLTYPE_FLOAT,
    COLTYPE_INTEGER,
    C_COUNT,
    C_LOCATION,
    C_NUMBER,
    FF_COUNT,
    FTR_CENTER_X,
    FTR_CENTER_Y,
    FTR_CENTER_Z,
    FTR_OBJECT_NUMBER,
    IMAGE,
    M_LOCATION_CENTER_X,
    M_LOCATION_CENTER_Y,
    M_LOCATION_CENTER_Z,
    M_NUMBER_OBJECT_NUMBER,
)
from cellprofiler_core.module import Module
from cellprofiler_core.object import Objects
from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber
from cellprofiler_core.setting.text import Float, LabelName

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    backend as _backend,
    collect_group,
    gpu_memory_share_setting,
    model_settings,
    module_after_providers,
    use_gpu_setting,
)

LOGGER = logging.getLogger(__name__)

SCOPE_EACH = "Each image individually"
SCOPE_GROUP = "All images of the group (pooled)"


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

# Keys of the module dictionary that carries a group's estimates from prepare_group to run
# (JSON-serialisable only, so that CellProfiler can hand it to analysis workers).
D_GROUP = "group"
D_IMAGES = "images"
D_POOLED = "pooled"

__doc__ = """\
EstimateNucleusSize
===================

**EstimateNucleusSize** measures the typical nucleus diameter of each image, or of all the
images of a group (for example a plate), with the size-robust "preseg" network of
nucleAIzer. Use it for quality control (magnification or sample changes show up as jumps in
nucleus size) and to drive **SegmentNucleiStyleAdapted**, whose *Nucleus size* setting can
read the *NucleusSize_MedianDiameter* measurement.

|

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          NO           NO
============ ============ ===============

See also
^^^^^^^^

See also **SegmentNucleiStyleAdapted**, and **Groups** to define image groups.

What do I need as input?
^^^^^^^^^^^^^^^^^^^^^^^^

A 2D grayscale or colour image of nuclei (any modality; no preprocessing needed). To pool
the images of a group, the input image should come straight from the input modules
(**NamesAndTypes**): see *Technical notes*.

What do I get as output?
^^^^^^^^^^^^^^^^^^^^^^^^

Image measurements and, optionally, the nuclei that the size was measured on as objects
(a quick, size-robust but less accurate segmentation than **SegmentNucleiStyleAdapted**;
useful to check what the estimate is based on).

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements** (in group mode the first four are the same for every image of the
group):

-  *NucleusSize_MedianDiameter:* Median equivalent diameter (pixels), sqrt(4 x area / pi),
   of the nuclei found that look like single nuclei (solidity at least 0.9: two touching
   nuclei found as one object have a concave outline and would count as one big nucleus;
   all nuclei found are used when fewer than 5 qualify). When fewer than 5 nuclei are
   found, the default diameter of 20 pixels (or the median of the few found) is reported
   and *Reliable* is 0.
-  *NucleusSize_Spread:* Interquartile range of the diameters divided by their median
   (0 = all nuclei the same size; NaN when unreliable).
-  *NucleusSize_Count:* Number of nuclei measured (the single-looking ones, see above).
-  *NucleusSize_Reliable:* 1 when at least 5 nuclei were measured, else 0.
-  *NucleusSize_ImageMedianDiameter, NucleusSize_ImageCount:* The same for this image alone
   (equal to the above when estimating each image individually); in group mode they show
   which images of a group differ from the rest.
-  *Count:* (when saving the nuclei as objects) the number of those objects: every nucleus
   found, so it can exceed *NucleusSize_ImageCount*.

**Object measurements** (when saving the nuclei as objects): *Location_Center_X/Y/Z*,
*Number_Object_Number*.

Technical notes
^^^^^^^^^^^^^^^

The preseg network was trained with strong scale augmentation (nuclei from about 8 to
120 pixels) and segments the image at its native scale; if that finds too few nuclei, or a
size outside its most accurate range, it looks again at a more suitable scale.

*Pooling a group:* in *"{SCOPE_GROUP}"* mode, the module estimates the sizes of all the
images of the group before the group's first cycle runs (like **CorrectIlluminationCalculate**
in *All: First cycle* mode), so that the pooled size is available to downstream modules of
the same pipeline from the first image on. To do so it runs the modules that come before it
(up to the module that provides the input image) once more for each image, which is cheap
for the input modules. The whole group is processed by one worker. Without **Groups**, the
group is all images of the run. The pool is made of the images that the run processes: on a
cluster, run each group as one job (``cellprofiler -c -r -p Batch_data.h5 -g
Metadata_Plate=P1``); a job given only part of a group with ``-f``/``-l`` pools only the
images of that part.

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, et al. (2020) "nucleAIzer: A parameter-free deep
   learning framework for nucleus segmentation using image style transfer." *Cell Systems*
   10(5), 453-458. (`link <{doi}>`__)
""".format(
    SCOPE_GROUP=SCOPE_GROUP, doi=NUCLEAIZER_DOI
)


def _feature(name):
    return "%s_%s" % (C_NUCLEUS_SIZE, name)


def _estimate_to_dict(estimate):
    return {
        "median_diameter": float(estimate.median_diameter),
        "spread": float(estimate.spread),
        "count": int(estimate.count),
        "reliable": bool(estimate.reliable),
        "diameters": [float(v) for v in numpy.asarray(estimate.diameters).ravel()],
    }


def _dict_to_estimate(d):
    from nucleaizer_backend import SizeEstimate

    return SizeEstimate(
        d["median_diameter"],
        d["spread"],
        d["count"],
        d["reliable"],
        numpy.asarray(d["diameters"], float),
    )


class EstimateNucleusSize(NucleaizerModule, Module):
    category = "Measurement"

    module_name = "EstimateNucleusSize"

    variable_revision_number = 1

    doi = {
        "Please cite nucleAIzer when using EstimateNucleusSize:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        self.image_name = ImageSubscriber(
            "Select the input image",
            doc="""\
Select the image whose nuclei to measure: a 2D grayscale or colour image (fluorescence,
brightfield, H&E...). No preprocessing is needed.""",
        )

        self.scope = Choice(
            "Estimate the size for each image or for the whole group?",
            [SCOPE_EACH, SCOPE_GROUP],
            SCOPE_EACH,
            doc="""\
-  *%(SCOPE_EACH)s:* One estimate per image, from that image's nuclei.
-  *%(SCOPE_GROUP)s:* One estimate from the nuclei of all images of the group (as defined
   in **Groups**; without grouping, all images of the run), so that every image of, say, a
   plate is segmented at the same scale; more robust for images with few nuclei. The sizes
   are computed before the group's first cycle, so they are available downstream from the
   first image on. The per-image values are still reported as
   *NucleusSize_ImageMedianDiameter* and *NucleusSize_ImageCount*.
"""
            % globals(),
        )

        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Model",
            """\
-  *%(MODEL_DEFAULT)s:* The preseg network installed with the backend.
-  *%(MODEL_CUSTOM)s:* The preseg network of a model folder (its ``preseg.safetensors``; a
   folder without one, or a single network file, uses the default preseg network).
""",
            "Model location",
            """\
*(Used only with a custom model)*

The folder that holds the model: the model folder itself (leave the name below blank) or
the folder that contains it (enter its name below).""",
            "Model folder or file name",
            """\
*(Used only with a custom model)*

Name of the model folder or network file inside the model location; blank when the model
location is the model folder itself.""",
        )

        self.confidence = Float(
            "Detection confidence threshold",
            0.5,
            minval=0.0,
            maxval=1.0,
            doc="""\
Minimum confidence (0 to 1) of the preseg network's detections that are measured. 0.5
suits most images.""",
        )

        self.want_objects = Binary(
            "Save the measured nuclei as objects?",
            False,
            doc="""\
Select *Yes* to also output the nuclei that the size was measured on, as objects (for
example to overlay their outlines for quality control). These come from the size-robust
preseg network at the scale it measured at: a quick segmentation, less accurate than
**SegmentNucleiStyleAdapted**. In group mode this runs the preseg network a second time on
each image.""",
        )

        self.objects_name = LabelName(
            "Name the objects",
            "PresegNuclei",
            doc="""\
*(Used only when saving the measured nuclei as objects)*

Name of the objects, for use by downstream modules.""",
        )

        self.use_gpu = use_gpu_setting(
            """\
Select *Yes* to run the network on an NVIDIA GPU (CUDA) when PyTorch can see one, else the
CPU; *No* always uses the CPU."""
        )

        self.gpu_memory_share = gpu_memory_share_setting(
            """\
*(Used only when a GPU is used)*

Largest fraction (0 to 1) of the GPU's memory that one CellProfiler worker process may use;
this share times the number of workers should be at most 1. The limit applies to the whole
worker process (all nucleAIzer modules in it)."""
        )

    def settings(self):
        return [
            self.image_name,
            self.scope,
            self.model_choice,
            self.model_directory,
            self.model_name,
            self.confidence,
            self.use_gpu,
            self.gpu_memory_share,
            self.want_objects,
            self.objects_name,
        ]

    def visible_settings(self):
        result = [self.image_name, self.scope, self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.confidence, self.use_gpu]
        if self.use_gpu:
            result += [self.gpu_memory_share]
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

    def _estimate(self, image, image_number, return_labels=False):
        """SizeEstimate of one CellProfiler image (clear error for 3D); with
        ``return_labels`` its ``labels`` are the measured nuclei."""
        backend = _backend()
        if image.volumetric:
            raise backend.InputImageError(
                "%s measures 2D images, but image %r is a 3D volume (shape %s). Load the "
                "stack as 2D planes in NamesAndTypes."
                % (self.module_name, self.image_name.value, image.pixel_data.shape)
            )
        self.share_machine_with_other_workers()
        try:
            return backend.estimate_size(
                image.pixel_data,
                model=self.model_path(),
                device=self.device(),
                confidence=float(self.confidence.value),
                return_labels=return_labels,
            )
        except backend.NucleaizerError as e:
            raise type(e)(
                "%s on image %r (#%d): %s" % (self.module_name, self.image_name.value, image_number, e)
            ) from e

    def _stop_module(self, pipeline):
        """The module just after the one that provides the input image."""
        return module_after_providers(pipeline, self, [self.image_name])

    def prepare_group(self, workspace, grouping, image_numbers):
        """In group mode, estimate every image of the group now and pool them."""
        d = self.get_dictionary()
        d.clear()
        if self.scope != SCOPE_GROUP or len(image_numbers) == 0:
            return True
        backend = _backend()
        stop = self._stop_module(workspace.pipeline)
        images, estimates = {}, []

        def measure(w, number):
            image = w.image_set.get_image(self.image_name.value, cache=False)
            try:
                estimate = self._estimate(image, number)
            except backend.NucleaizerError as e:
                LOGGER.warning("%s", e)
                images[str(number)] = {"error": str(e)}
            else:
                images[str(number)] = _estimate_to_dict(estimate)
                estimates.append(estimate)

        message = "%s is measuring the nuclei of %d images" % (self.module_name, len(image_numbers))
        collect_group(self, workspace, grouping, image_numbers, stop, message, measure)
        pooled = backend.SizeEstimate.pooled(estimates)
        d[D_GROUP] = [int(n) for n in image_numbers]
        d[D_IMAGES] = images
        d[D_POOLED] = _estimate_to_dict(pooled)
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
            used = _dict_to_estimate(d[D_POOLED])
            if want_objects:
                image = workspace.image_set.get_image(self.image_name.value)
                own = self._estimate(image, number, return_labels=True)
            else:
                own = _dict_to_estimate(entry)
        else:
            if self.scope == SCOPE_GROUP:
                LOGGER.warning(
                    "%s: image #%d was not measured with its group; using its own estimate",
                    self.module_name,
                    number,
                )
            image = workspace.image_set.get_image(self.image_name.value)
            own = used = self._estimate(image, number, return_labels=want_objects)

        values = {
            FTR_MEDIAN_DIAMETER: float(used.median_diameter),
            FTR_SPREAD: float(used.spread),
            FTR_COUNT: int(used.count),
            FTR_RELIABLE: int(bool(used.reliable)),
            FTR_IMAGE_MEDIAN_DIAMETER: float(own.median_diameter),
            FTR_IMAGE_COUNT: int(own.count),
        }
        for feature, value in values.items():
            m.add_image_measurement(_feature(feature), value)

        labels = None
        if want_objects:
            labels = numpy.asarray(own.labels).astype(numpy.int32)
            if labels.size < 2:
                # CellProfiler's object store cannot hold a one-pixel label image.
                raise _backend().InputImageError(
                    "%s: image %r has shape %s; CellProfiler objects need an image of at "
                    "least 2 pixels (the size measurements were recorded)"
                    % (self.module_name, self.image_name.value, labels.shape)
                )
            self._add_objects(workspace, labels, image)

        if self.show_window:
            if image is None:
                image = workspace.image_set.get_image(self.image_name.value)
            statistics = [
                ["This image: median diameter", "%.1f px" % own.median_diameter],
                ["This image: nuclei measured", "%d" % own.count],
                ["This image: spread (IQR/median)", _fmt(own.spread)],
            ]
            if self.scope == SCOPE_GROUP:
                statistics += [
                    ["Group: median diameter", "%.1f px" % used.median_diameter],
                    ["Group: nuclei measured", "%d" % used.count],
                    ["Group: spread (IQR/median)", _fmt(used.spread)],
                    ["Group: images", "%d" % len(d.get(D_GROUP, []))],
                ]
            statistics += [["Reliable", "yes" if used.reliable else "no (too few nuclei)"]]
            workspace.display_data.image = image.pixel_data
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.diameters = numpy.asarray(own.diameters, float)
            workspace.display_data.statistics = statistics
            workspace.display_data.labels = labels

    def _add_objects(self, workspace, labels, image):
        """The measured nuclei as objects, with the standard Count/Location/Number."""
        name = self.objects_name.value
        objects = Objects()
        objects.segmented = labels
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

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((3, 1))
        title = "%s, cycle #%d" % (self.image_name.value, workspace.measurements.image_number)
        kwargs = {}
        if d.labels is not None:
            kwargs["cplabels"] = [dict(name=self.objects_name.value, labels=[d.labels])]
        if d.multichannel:
            figure.subplot_imshow_color(0, 0, d.image, title, normalize=False, **kwargs)
        else:
            figure.subplot_imshow_grayscale(0, 0, d.image, title, **kwargs)
        figure.subplot_histogram(
            1, 0, d.diameters, bins=20, xlabel="Nucleus diameter (px)", title="Nuclei of this image"
        )
        figure.subplot_table(
            2,
            0,
            [[value] for _, value in d.statistics],
            row_labels=[name for name, _ in d.statistics],
        )

    # ------------------------------------------------------------------ measurements

    def get_measurement_columns(self, pipeline):
        columns = [(IMAGE, _feature(name), coltype) for name, coltype in FEATURES]
        if self.want_objects:
            name = self.objects_name.value
            columns += [
                (name, M_LOCATION_CENTER_X, COLTYPE_FLOAT),
                (name, M_LOCATION_CENTER_Y, COLTYPE_FLOAT),
                (name, M_LOCATION_CENTER_Z, COLTYPE_FLOAT),
                (name, M_NUMBER_OBJECT_NUMBER, COLTYPE_INTEGER),
                (IMAGE, FF_COUNT % name, COLTYPE_INTEGER),
            ]
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


def _fmt(value):
    return "-" if not math.isfinite(value) else "%.2f" % value
