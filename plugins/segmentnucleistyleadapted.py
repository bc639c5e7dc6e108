"""SegmentNucleiStyleAdapted: nucleAIzer nucleus segmentation as a CellProfiler module.

All image and model logic lives in the ``nucleaizer_backend`` package (installed into the
same Python environment as CellProfiler); this file only translates between CellProfiler's
settings, images, objects and measurements and the backend's ``segment_image``.
"""

import logging
import math

import numpy
from cellprofiler_core.constants.measurement import (
    COLTYPE_FLOAT,
    COLTYPE_INTEGER,
    IMAGE,
)
from cellprofiler_core.image import Image
from cellprofiler_core.module.image_segmentation import ImageSegmentation
from cellprofiler_core.object import Objects
from cellprofiler_core.setting import Binary, Measurement, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.subscriber import ImageSubscriber
from cellprofiler_core.setting.text import Float, ImageName, LabelName

from _nucleaizer_common import (
    MODEL_CUSTOM,
    NUCLEAIZER_DOI,
    NucleaizerModule,
    backend as _backend,
    gpu_memory_share_setting,
    model_settings,
    model_written_upstream,
    use_gpu_setting,
)

LOGGER = logging.getLogger(__name__)

__doc__ = """\
SegmentNucleiStyleAdapted
=========================

**SegmentNucleiStyleAdapted** finds cell nuclei with the nucleAIzer deep-learning method
(a Mask R-CNN that works at a fixed nucleus size, after rescaling each image so that its
nuclei have that size). It is meant as a drop-in replacement for **IdentifyPrimaryObjects**
for nuclei: no threshold or declumping parameters to tune, and it works on fluorescence,
brightfield and H&E-like tissue images alike (gray or colour; nuclei may be bright on dark
or dark on bright: the image is normalised and, when needed, inverted internally).

The nuclei come out as ordinary CellProfiler objects, ready for **IdentifySecondaryObjects**
(as seeds), **MeasureObjectSizeShape**, **MeasureObjectIntensity**, **ClassifyObjects**,
**ExportToSpreadsheet**, etc.

|

============ ============ ===============
Supports 2D? Supports 3D? Respects masks?
============ ============ ===============
YES          NO           YES
============ ============ ===============

See also
^^^^^^^^

See also **EstimateNucleusSize** (typical nucleus diameter of each image or image group,
usable as this module's nucleus size), **IdentifyPrimaryObjects** (classical segmentation)
and **IdentifySecondaryObjects** (cells grown from these nuclei).

What do I need as input?
^^^^^^^^^^^^^^^^^^^^^^^^

A 2D image, grayscale or colour, as loaded by **NamesAndTypes** (any bit depth). 3D images
are not supported: split a stack into planes (load it as 2D planes in **NamesAndTypes**).
The module needs the ``nucleaizer_backend`` Python package installed in CellProfiler's
Python environment (see the project's README).

The most important setting is the **nucleus size**: the network segments best when the
image is rescaled so that nuclei are about 40 pixels across. Leave it on *Automatic* (a
size-robust "preseg" network measures each image first), take it from a measurement made by
**EstimateNucleusSize** (for example one size per plate), or type the typical diameter.

What do I get as output?
^^^^^^^^^^^^^^^^^^^^^^^^

Nucleus objects (non-overlapping, same size as the input image) and, optionally, an image of
the network's per-pixel nucleus probability.

The display window shows the input image, the objects as a label image, the input with the
objects' outlines and a table with the number of nuclei, their median diameter, the nucleus
diameter and rescaling factor used, and the time taken.

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements:**

-  *Count:* The number of nuclei found.
-  *Nucleaizer_Diameter:* The nucleus diameter (pixels) the image was rescaled for: the
   manual value, the measurement's value, or the automatic estimate.
-  *Nucleaizer_Scale:* The rescaling factor actually applied (working size / original size).
-  *Nucleaizer_ScaleClamped:* 1 when the wanted rescaling was outside the allowed range or
   the working image would have been too large, so a smaller or larger factor was used
   (check the diameter in that case), else 0.
-  *Nucleaizer_SizeReliable:* 0 when the automatic size estimate measured fewer than 5
   nuclei (the median of those few, or the default 20 px when none, was used), else 1.

**Object measurements:**

-  *Location_Center_X, Location_Center_Y, Location_Center_Z:* Object centroid (pixels).
-  *Number_Object_Number:* Object number.
-  *Nucleaizer_Confidence:* (optional) The network's detection confidence (0-1).

Technical notes
^^^^^^^^^^^^^^^

The image is normalised between robust percentiles, rescaled so that nuclei are about
40 pixels across, segmented by Mask R-CNN (in overlapping tiles for large images), and the
detections are painted most-confident first into a label image of the input's size.
Post-processing then follows the nucleAIzer paper: objects inside another are absorbed,
fragments surrounded by a neighbour merged (p1), tiny objects removed (p2), outlines moved
to follow a U-Net's nucleus probability (p3 threshold, p4/p5 margins) and objects the U-Net
does not confirm removed (p6). Optional test-time augmentation segments flipped and rotated
copies and keeps the majority. Trained networks are loaded once per worker process and
reused (per model file and device).

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, Tasnadi E, Molnar C, Mathe B, Grexa I, Molnar J,
   Balind A, Gorbe M, Kovacs M, Migh E, Goodman A, Balassa T, Koos K, Wang W, Caicedo JC,
   Bara N, Kovacs F, Paavolainen L, Danka T, Kriston A, Carpenter AE, Smith K, Horvath P
   (2020) "nucleAIzer: A parameter-free deep learning framework for nucleus segmentation
   using image style transfer." *Cell Systems* 10(5), 453-458.
   (`link <{doi}>`__)
-  He K, Gkioxari G, Dollar P, Girshick R (2017) "Mask R-CNN." *ICCV*, 2961-2969.
   (`link <https://doi.org/10.1109/ICCV.2017.322>`__)
-  Ronneberger O, Fischer P, Brox T (2015) "U-Net: Convolutional networks for biomedical
   image segmentation." *MICCAI*, 234-241.
   (`link <https://doi.org/10.1007/978-3-319-24574-4_28>`__)
""".format(
    doi=NUCLEAIZER_DOI
)

SIZE_AUTOMATIC = "Automatic (per image)"
SIZE_MEASUREMENT = "From an image measurement"
SIZE_MANUAL = "Manual"

REFINE_FULL = "Rules and U-Net contour refinement"
REFINE_RULES = "Rules only"
REFINE_NONE = "None"
# the backend's refine argument of each choice
REFINE_LEVELS = {REFINE_FULL: "full", REFINE_RULES: "rules", REFINE_NONE: "none"}

PARAMS_MODEL = "From the model"
PARAMS_CUSTOM = "Custom"

# the paper's post-processing parameters (nucleaizer_backend.refine.PostprocessParams)
PAPER_PARAMS = {"p1": 0.17, "p2": 44.0, "p3": 0.9375, "p4": 1.0, "p5": 1.0, "p6": 0.8}

C_NUCLEAIZER = "Nucleaizer"
FTR_DIAMETER = "Diameter"
FTR_SCALE = "Scale"
FTR_SCALE_CLAMPED = "ScaleClamped"
FTR_SIZE_RELIABLE = "SizeReliable"
FTR_CONFIDENCE = "Confidence"
IMAGE_FEATURES = (
    (FTR_DIAMETER, COLTYPE_FLOAT),
    (FTR_SCALE, COLTYPE_FLOAT),
    (FTR_SCALE_CLAMPED, COLTYPE_INTEGER),
    (FTR_SIZE_RELIABLE, COLTYPE_INTEGER),
)
M_CONFIDENCE = "%s_%s" % (C_NUCLEAIZER, FTR_CONFIDENCE)

def image_feature(feature, object_name):
    """Image measurement name, e.g. Nucleaizer_Diameter_Nuclei."""
    return "%s_%s_%s" % (C_NUCLEAIZER, feature, object_name)


class SegmentNucleiStyleAdapted(NucleaizerModule, ImageSegmentation):
    category = "Object Processing"

    module_name = "SegmentNucleiStyleAdapted"

    variable_revision_number = 2

    segments_with_model = True  # a model adapted upstream (TrainStyleAdaptation) is for it

    doi = {
        "Please cite nucleAIzer when using SegmentNucleiStyleAdapted:": NUCLEAIZER_DOI,
    }

    def create_settings(self):
        self.x_name = ImageSubscriber(
            "Select the input image",
            doc="""\
Select the image to segment: a 2D grayscale or colour image of nuclei (fluorescent DNA stain,
brightfield, H&E...). Intensities need no preparation: the image is normalised internally,
and images whose nuclei are darker than the background are handled without inverting them.""",
        )

        self.y_name = LabelName(
            "Name the nuclei objects",
            "Nuclei",
            doc="""\
Enter the name to give the nucleus objects produced by this module. Downstream modules
(IdentifySecondaryObjects, MeasureObjectSizeShape...) select them by this name.""",
        )

        self.model_choice, self.model_directory, self.model_name = model_settings(
            "Model",
            """\
-  *%(MODEL_DEFAULT)s:* The general nucleAIzer model installed with the backend, trained on
   fluorescence and brightfield/H&E nuclei.
-  *%(MODEL_CUSTOM)s:* A model folder (holding ``main.safetensors`` and optionally
   ``preseg.safetensors`` and ``model.json``) or a single ``.safetensors`` network file, for
   example a model adapted to your experiment's image style by **TrainStyleAdaptation**.
   When a TrainStyleAdaptation module earlier in this pipeline adapts *before segmenting*
   into this folder, the folder need not exist before the run.
""",
            "Model location",
            """\
*(Used only with a custom model)*

The folder that holds the model: either the model folder itself (leave the name below
blank) or the folder that contains it or the network file (enter its name below). Using the
Default Input/Output Folder or a subfolder of them keeps the pipeline portable between
computers and cluster nodes.""",
            "Model folder or file name",
            """\
*(Used only with a custom model)*

Name of the model folder or of the ``.safetensors`` network file inside the model location.
Leave blank when the model location is the model folder itself.""",
        )

        self.size_choice = Choice(
            "Nucleus size",
            [SIZE_AUTOMATIC, SIZE_MEASUREMENT, SIZE_MANUAL],
            SIZE_AUTOMATIC,
            doc="""\
How to choose the typical nucleus diameter, which sets how much each image is rescaled
before segmentation (nuclei are brought to about 40 pixels across). The network tolerates
roughly a factor of two error in the diameter.

-  *%(SIZE_AUTOMATIC)s:* A size-robust network measures the nuclei of each image first
   (this roughly doubles the time per image). If it finds fewer than 5 nuclei, the
   *Nucleaizer_SizeReliable* measurement is 0 (and with none at all the default diameter of
   20 px is used).
-  *%(SIZE_MEASUREMENT)s:* Use an image measurement made by an earlier module, typically
   *NucleusSize_MedianDiameter* from **EstimateNucleusSize** (which can also pool all the
   images of a group, e.g. a plate, into one size). If the measurement is missing, not a
   number or not positive for an image, the size is estimated automatically for that image
   and a warning is logged.
-  *%(SIZE_MANUAL)s:* Type the typical nucleus diameter in pixels. Fastest; best when all
   images share the same magnification.
"""
            % globals(),
        )

        self.size_measurement = Measurement(
            "Measurement giving the nucleus diameter (px)",
            lambda: IMAGE,
            "NucleusSize_MedianDiameter",
            doc="""\
*(Used only when the nucleus size comes from an image measurement)*

Select the image measurement that holds the typical nucleus diameter in pixels, e.g.
*NucleusSize* > *MedianDiameter* made by **EstimateNucleusSize**.""",
        )

        self.manual_diameter = Float(
            "Typical nucleus diameter (px)",
            20.0,
            minval=1.0,
            doc="""\
*(Used only with a manual nucleus size)*

The typical diameter of a nucleus in pixels, e.g. measured on a few nuclei with the
measuring tool of the image viewer.""",
        )

        self.refinement = Choice(
            "Post-processing",
            [REFINE_FULL, REFINE_RULES, REFINE_NONE],
            REFINE_FULL,
            doc="""\
How the network's nuclei are cleaned up (nucleAIzer's post-processing):

-  *%(REFINE_FULL)s:* small objects lying inside another are absorbed by it, fragments
   surrounded by a neighbour are merged into it, tiny objects are removed, then a U-Net's
   per-pixel nucleus probability moves each outline by up to a pixel and removes objects
   the U-Net does not confirm. The most accurate outlines; about 0.3-1 s more per image on
   a CPU.
-  *%(REFINE_RULES)s:* the clean-up rules without the U-Net.
-  *%(REFINE_NONE)s:* the network's nuclei as they are (enough when only counting).

See the project's BENCHMARKS.md for what each step is worth."""
            % globals(),
        )

        self.tta = Binary(
            "Use test-time augmentation?",
            False,
            doc="""\
Select *Yes* to segment each image six times (as it is, flipped, rotated by 90, 180 and
270 degrees) and keep the nuclei found in most versions, with outlines by pixel majority.
About three times the run time. With the shipped model it does not pay on the DSB 2018 val
images (DSB 0.566 with it, 0.569 without; the same on H&E, a little worse on
fluorescence; see BENCHMARKS.md); it may with other models or images.""",
        )

        self.params_choice = Choice(
            "Detection and post-processing parameters",
            [PARAMS_MODEL, PARAMS_CUSTOM],
            PARAMS_MODEL,
            doc="""\
*%(PARAMS_MODEL)s* uses the values stored with the model: the published nucleAIzer values,
or those found for your images by ``nucleaizer tune`` (see the README). *%(PARAMS_CUSTOM)s*
shows the detection confidence and the post-processing parameters p1 to p6 to set by hand
(advanced)."""
            % globals(),
        )

        self.confidence = Float(
            "Detection confidence threshold",
            0.5,
            minval=0.0,
            maxval=1.0,
            doc="""\
*(Used only with custom parameters)*

Minimum network confidence (0 to 1) for a detection to become an object. Lower it to find
faint or unusual nuclei (at the risk of false detections), raise it to keep only clear
ones. 0.5 suits most images.""",
        )

        self.p1 = Float(
            "Merge into a neighbour touching more than this fraction of the outline (p1)",
            PAPER_PARAMS["p1"],
            minval=0.0,
            maxval=1.0,
            doc="""\
*(Used only with custom parameters and post-processing)*

An object whose outline touches one larger neighbour along more than this fraction is
merged into it (repairs nuclei split into pieces). 1 never merges.""",
        )

        self.p2 = Float(
            "Minimum nucleus area at the working scale (p2, px²)",
            PAPER_PARAMS["p2"],
            minval=0.0,
            doc="""\
*(Used only with custom parameters and post-processing)*

Objects smaller than this area are removed. The area is measured at the working scale,
where nuclei are about 40 px across (a 40 px nucleus covers about 1250 px²), so the
setting means the same at any image resolution.""",
        )

        self.p3 = Float(
            "U-Net probability threshold (p3)",
            PAPER_PARAMS["p3"],
            minval=0.0,
            maxval=1.0,
            doc="""\
*(Used only with custom parameters and U-Net refinement)*

Near an outline, pixels with a U-Net nucleus probability at or above this value belong to
the nucleus and pixels below it do not.""",
        )

        self.p4 = Float(
            "Outline margin inwards (p4, px at the working scale)",
            PAPER_PARAMS["p4"],
            minval=0.0,
            doc="""\
*(Used only with custom parameters and U-Net refinement)*

How far (px at the ~40 px working scale) an outline may move inwards to follow the U-Net.
0 never shrinks objects.""",
        )

        self.p5 = Float(
            "Outline margin outwards (p5, px at the working scale)",
            PAPER_PARAMS["p5"],
            minval=0.0,
            doc="""\
*(Used only with custom parameters and U-Net refinement)*

How far (px at the ~40 px working scale) an outline may move outwards to follow the U-Net.
0 never grows objects.""",
        )

        self.p6 = Float(
            "Minimum mean U-Net probability of a nucleus (p6)",
            PAPER_PARAMS["p6"],
            minval=0.0,
            maxval=1.0,
            doc="""\
*(Used only with custom parameters and U-Net refinement)*

Objects whose mean U-Net nucleus probability is below this value are removed as false
detections. 0 keeps all.""",
        )

        self.use_gpu = use_gpu_setting(
            """\
Select *Yes* to run the network on an NVIDIA GPU (CUDA) when PyTorch can see one; the
module falls back to the CPU when there is none, so pipelines stay portable. Select *No*
to always use the CPU."""
        )

        self.gpu_memory_share = gpu_memory_share_setting(
            """\
*(Used only when a GPU is used)*

Largest fraction (0 to 1) of the GPU's memory that one CellProfiler worker process may use.
CellProfiler runs several workers at once (see *Preferences > Maximum number of worker
processes*), each with its own copy of the model: choose the share so that it times the
number of workers (times the number of CellProfiler instances sharing the GPU) is at most 1.
For a single headless process, 1.0 is fine. The limit applies to the whole worker process
(all nucleAIzer modules in it)."""
        )

        self.use_mask = Binary(
            "Restrict detection to a mask?",
            False,
            doc="""\
Select *Yes* to keep only nuclei that lie (mostly) inside a mask image, for example a region
of interest or the tissue area; nuclei are clipped to the mask. A mask already attached to
the input image (e.g. by **MaskImage** or **Crop**) is always respected.""",
        )

        self.mask_name = ImageSubscriber(
            "Select the mask image",
            doc="""\
*(Used only when restricting detection to a mask)*

A binary image (or any image: non-zero pixels count as inside) of the same size as the input
image. Objects with at least half their area inside the mask are kept.""",
        )

        self.want_confidence = Binary(
            "Measure each nucleus's detection confidence?",
            True,
            doc="""\
Select *Yes* to record the network's confidence for each nucleus as the object measurement
*Nucleaizer_Confidence* (useful for filtering with **FilterObjects** or for quality
control).""",
        )

        self.want_probability = Binary(
            "Save the nucleus probability image?",
            False,
            doc="""\
Select *Yes* to also produce an image of the network's nucleus probability (0-1) at each
pixel, for example to inspect uncertain regions or to save with **SaveImages**.""",
        )

        self.probability_name = ImageName(
            "Name the probability image",
            "NucleusProbability",
            doc="""\
*(Used only when saving the probability image)*

Name of the nucleus probability image, for use by downstream modules.""",
        )

    def settings(self):
        return [
            self.x_name,
            self.y_name,
            self.model_choice,
            self.model_directory,
            self.model_name,
            self.size_choice,
            self.size_measurement,
            self.manual_diameter,
            self.confidence,
            self.use_gpu,
            self.gpu_memory_share,
            self.use_mask,
            self.mask_name,
            self.want_confidence,
            self.want_probability,
            self.probability_name,
            self.refinement,
            self.tta,
            self.params_choice,
            self.p1,
            self.p2,
            self.p3,
            self.p4,
            self.p5,
            self.p6,
        ]

    def visible_settings(self):
        result = [self.x_name, self.y_name, self.model_choice]
        if self.model_choice == MODEL_CUSTOM:
            result += [self.model_directory, self.model_name]
        result += [self.size_choice]
        if self.size_choice == SIZE_MEASUREMENT:
            result += [self.size_measurement]
        elif self.size_choice == SIZE_MANUAL:
            result += [self.manual_diameter]
        result += [self.refinement, self.tta, self.params_choice]
        if self.params_choice == PARAMS_CUSTOM:
            result += [self.confidence]
            if self.refinement != REFINE_NONE:
                result += [self.p1, self.p2]
            if self.refinement == REFINE_FULL:
                result += [self.p3, self.p4, self.p5, self.p6]
        result += [self.use_gpu]
        if self.use_gpu:
            result += [self.gpu_memory_share]
        result += [self.use_mask]
        if self.use_mask:
            result += [self.mask_name]
        result += [self.want_confidence, self.want_probability]
        if self.want_probability:
            result += [self.probability_name]
        return result

    def help_settings(self):
        return self.settings()

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        """Bring settings saved by an older version of this module to the current layout.

        Revision 1 is the first released layout. Revision 2 added post-processing, test-time
        augmentation and the parameter choice (a revision-1 confidence other than 0.5 becomes
        custom parameters with the paper's p1..p6). When settings are added or changed, bump
        ``variable_revision_number`` and add a step here that converts the old values."""
        self.refuse_newer_revision(variable_revision_number)
        if variable_revision_number == 1:
            confidence = float(setting_values[8])
            custom = PARAMS_CUSTOM if abs(confidence - 0.5) > 1e-9 else PARAMS_MODEL
            setting_values = list(setting_values) + [REFINE_FULL, "No", custom] + [
                str(PAPER_PARAMS[k]) for k in ("p1", "p2", "p3", "p4", "p5", "p6")
            ]
            variable_revision_number = 2
        return setting_values, variable_revision_number

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
            value = None
            if m.has_current_measurements(IMAGE, name):
                value = m.get_current_image_measurement(name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = float("nan")
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

    def _parameters(self):
        """Keyword arguments of segment_image for the detection/post-processing values:
        none (the model's) unless custom values are chosen."""
        if self.params_choice != PARAMS_CUSTOM:
            return {}
        values = {k: float(getattr(self, k).value) for k in PAPER_PARAMS}
        return {"confidence": float(self.confidence.value), "postprocess": values}

    def _mask(self, workspace, image):
        mask = image.mask if image.has_mask else None
        if self.use_mask:
            mask_image = workspace.image_set.get_image(self.mask_name.value)
            data = mask_image.pixel_data
            if data.ndim == 3 and mask_image.multichannel:
                data = data.any(axis=-1)
            if data.shape != image.pixel_data.shape[:2]:
                from nucleaizer_backend import InputImageError

                raise InputImageError(
                    "mask image %r has shape %s but image %r has shape %s"
                    % (
                        self.mask_name.value,
                        data.shape,
                        self.x_name.value,
                        image.pixel_data.shape[:2],
                    )
                )
            data = data > 0
            if mask_image.has_mask:
                data = data & mask_image.mask
            mask = data if mask is None else (mask & data)
        return mask

    def run(self, workspace):
        backend = _backend()
        x_name = self.x_name.value
        y_name = self.y_name.value
        image = workspace.image_set.get_image(x_name)
        if image.volumetric:
            raise backend.InputImageError(
                "%s segments 2D images, but image %r is a 3D volume (shape %s). Load the "
                "stack as separate 2D planes in NamesAndTypes (uncheck 'Process as 3D')."
                % (self.module_name, x_name, image.pixel_data.shape)
            )
        pixels = image.pixel_data
        if pixels.shape[0] * pixels.shape[1] < 2:
            # CellProfiler's object store cannot hold a one-pixel label image.
            raise backend.InputImageError(
                "%s: image %r has shape %s; CellProfiler objects need an image of at least "
                "2 pixels" % (self.module_name, x_name, pixels.shape)
            )
        self.share_machine_with_other_workers()
        diameter = self._diameter(workspace)
        try:
            result = backend.segment_image(
                pixels,
                model=self.model_path(),
                diameter=diameter,
                device=self.device(),
                mask=self._mask(workspace, image),
                return_probability=bool(self.want_probability.value),
                refine=REFINE_LEVELS[self.refinement.value],
                tta=bool(self.tta.value),
                **self._parameters()
            )
        except backend.NucleaizerError as e:
            raise type(e)("%s on image %r: %s" % (self.module_name, x_name, e)) from e

        labels = numpy.asarray(result.labels).astype(numpy.int32)
        objects = Objects()
        objects.segmented = labels
        objects.parent_image = image
        workspace.object_set.add_objects(objects, y_name)
        self.add_measurements(workspace)

        m = workspace.measurements
        reliable = result.size_estimate is None or bool(result.size_estimate.reliable)
        values = {
            FTR_DIAMETER: float(result.diameter),
            FTR_SCALE: float(result.scale),
            FTR_SCALE_CLAMPED: int(bool(result.scale_clamped)),
            FTR_SIZE_RELIABLE: int(reliable),
        }
        for feature, value in values.items():
            m.add_image_measurement(image_feature(feature, y_name), value)
        scores = numpy.asarray(result.scores, dtype=float)
        if self.want_confidence:
            m.add_measurement(y_name, M_CONFIDENCE, scores)

        if self.want_probability:
            probability = Image(
                numpy.asarray(result.probability, dtype=numpy.float32),
                parent_image=image,
                dimensions=2,
            )
            workspace.image_set.add(self.probability_name.value, probability)

        if self.show_window:
            areas = numpy.bincount(labels.ravel())[1:]
            areas = areas[areas > 0]
            median_diameter = (
                float(numpy.median(numpy.sqrt(4.0 * areas / numpy.pi))) if len(areas) else float("nan")
            )
            statistics = [
                ["Nuclei", "%d" % objects.count],
                ["Median nucleus diameter", "%.1f px" % median_diameter],
                [
                    "Diameter used" + ("" if diameter is not None else " (automatic)"),
                    "%.1f px%s" % (result.diameter, "" if reliable else " (unreliable: too few nuclei)"),
                ],
                [
                    "Scale (working / original)",
                    "%.3g%s" % (result.scale, " (clamped)" if result.scale_clamped else ""),
                ],
                ["Median confidence", "%.2f" % float(numpy.median(scores)) if len(scores) else "-"],
                ["Time", "%.1f s" % result.seconds],
            ]
            workspace.display_data.image = pixels
            workspace.display_data.multichannel = bool(image.multichannel)
            workspace.display_data.labels = labels
            workspace.display_data.statistics = statistics

    def display(self, workspace, figure):
        d = workspace.display_data
        figure.set_subplots((2, 2))
        title = "Input image, cycle #%d" % (workspace.measurements.image_number,)
        if d.multichannel:
            ax = figure.subplot_imshow_color(0, 0, d.image, title, normalize=False)
        else:
            ax = figure.subplot_imshow_grayscale(0, 0, d.image, title)
        figure.subplot_imshow_labels(1, 0, d.labels, self.y_name.value, sharexy=ax)
        cplabels = [dict(name=self.y_name.value, labels=[d.labels])]
        outline_title = "%s outlines" % self.y_name.value
        if d.multichannel:
            figure.subplot_imshow_color(
                0, 1, d.image, outline_title, normalize=False, cplabels=cplabels, sharexy=ax
            )
        else:
            figure.subplot_imshow_grayscale(
                0, 1, d.image, outline_title, cplabels=cplabels, sharexy=ax
            )
        figure.subplot_table(
            1,
            1,
            [[value] for _, value in d.statistics],
            row_labels=[name for name, _ in d.statistics],
        )

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
