"""Help text of the SegmentNucleiStyleAdapted module (plugins/segmentnucleistyleadapted.py): its
manual and the documentation of each of its settings, as ``str.format`` templates that the
module fills in with its choice names (the fields in braces); the model choice's
documentation is a %-template that _nucleaizer_common.model_settings fills in.

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
segmentnucleistyleadapted.py imports this file. Copy it along with the plugins.
"""

MANUAL = """\
SegmentNucleiStyleAdapted
=========================

**SegmentNucleiStyleAdapted** finds cell nuclei with the nucleAIzer deep-learning method
(a Mask R-CNN that works at a fixed nucleus size, after rescaling each image so that its
nuclei have that size). It is meant as a drop-in replacement for **IdentifyPrimaryObjects**
for nuclei: no threshold or declumping parameters to tune. It takes gray or colour images,
nuclei bright on dark or dark on bright (the image is normalised and, when needed, inverted
internally). The shipped model is best on fluorescence images and weaker on H&E-stained
tissue (DSB score 0.64 against 0.31 on the DSB 2018 val images, see BENCHMARKS.md); for a
style of image it has not seen, adapt it with **TrainStyleAdaptation**.

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

The display window shows the input image, the nuclei as a label image, the input with the
nuclei's outlines, and a table: the number of nuclei, their median diameter, the nucleus
diameter used (marked *automatic* when it was estimated, and *unreliable* when the estimate
found too few nuclei), the rescaling factor (marked *clamped* when it was) and the speed, the nuclei's
median confidence, the style distance with the model's threshold and the time taken; and, when they apply, that the image was degenerate
and how many nuclei the diameter-range and border filters discarded.

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements** (each name ends with the objects' name, e.g. *Count_Nuclei*,
*Nucleaizer_Diameter_Nuclei*):

-  *Count:* The number of nuclei found.
-  *Nucleaizer_Diameter:* The nucleus diameter (pixels) the image was rescaled for: the
   manual value, the measurement's value, or the automatic estimate.
-  *Nucleaizer_Scale:* The rescaling factor actually applied (working size / original size:
   40 / diameter at the *{SPEED_ACCURATE}* speed unless clamped; less for small nuclei at
   the *{SPEED_FAST}* speed).
-  *Nucleaizer_ScaleClamped:* 1 when the wanted rescaling was outside the allowed range
   (0.05 to 10) or the working image would have been too large (over 64 million pixels),
   so a smaller or larger factor was used (check the diameter in that case), else 0.
-  *Nucleaizer_SizeReliable:* 0 when the automatic size estimate measured fewer than 5
   nuclei (the median of those few, or the default 20 px when none, was used), else 1.
-  *Nucleaizer_DegenerateImage:* 1 when the image cannot hold a nucleus (smaller than 4x4
   pixels, one value everywhere, or no finite pixel value, e.g. all NaN): the image gets no
   nuclei and a warning is logged, and the run goes on; else 0.
-  *Nucleaizer_StyleDistance:* How far the image's look (colour, intensity, texture) lies
   from the images the model was trained or adapted on, in standardised feature units
   (NaN when the model stores no style reference). Images of trained styles mostly lie
   below the model's threshold (about 2.8 for the shipped model); on DSB validation images,
   those above it scored about half as well as those below (BENCHMARKS.md, "Style distance").
-  *Nucleaizer_UnfamiliarStyle:* 1 when the style distance is above the model's threshold,
   else 0. The first such image logs a warning suggesting **TrainStyleAdaptation**: adapting
   the model to these images is likely to improve their segmentation. Average it over a
   plate (e.g. with **CalculateStatistics** or in the exported spreadsheet) to decide.

**Object measurements:**

-  *Location_Center_X, Location_Center_Y, Location_Center_Z:* Object centroid (pixels).
-  *Number_Object_Number:* Object number.
-  *Nucleaizer_Confidence:* (optional) The network's detection confidence (0-1).

All of them are declared to CellProfiler, so **ExportToSpreadsheet** and
**ExportToDatabase** export them and other modules (**FilterObjects**, **CalculateMath**,
**ClassifyObjects**...) can select them.

Technical notes
^^^^^^^^^^^^^^^

The image is normalised between robust percentiles, rescaled so that nuclei are about
40 pixels across (at the *{SPEED_FAST}* speed small nuclei are enlarged less), segmented by Mask R-CNN (in overlapping tiles for large images), and the
detections are painted most-confident first into a label image of the input's size.
Post-processing then follows the nucleAIzer paper: objects inside another are absorbed,
fragments surrounded by a neighbour merged (p1), tiny objects removed (p2), outlines moved
to follow a U-Net's nucleus probability (p3 threshold, p4/p5 margins) and objects the U-Net
does not confirm removed (p6). Optional test-time augmentation segments flipped and rotated
copies and keeps the majority. Trained networks are loaded once per worker process and
reused (per model file and device). The method step by step, with its numbers, is in the
project's docs/METHOD.md.

Time: the display's *Time* is the wall time of the segmentation (and of each stage: size
estimate, Mask R-CNN, U-Net, post-processing). CellProfiler's own *ExecutionTime* measurement
of the module is CPU time, summed over all the threads PyTorch uses, so with several threads
it is larger than the wall time; CellProfiler logs both for every module and image
(``Wall_time`` and ``CPU_time`` at log level INFO, e.g. ``cellprofiler -c -r -L INFO``). The
project's BENCHMARKS.md compares wall times: in a headless pipeline the module takes the
backend's time plus a few per cent ("SegmentNucleiStyleAdapted in CellProfiler against the
backend").

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, Tasnadi E, Molnar C, Mathe B, Grexa I, Molnar J,
   Balind A, Gorbe M, Kovacs M, Migh E, Goodman A, Balassa T, Koos K, Wang W, Caicedo JC,
   Bara N, Kovacs F, Paavolainen L, Danka T, Kriston A, Carpenter AE, Smith K, Horvath P
   (2020) "nucleAIzer: A parameter-free deep learning framework for nucleus segmentation
   using image style transfer." *Cell Systems* 10(5), 453-458.
   (`link <{DOI}>`__)
-  He K, Gkioxari G, Dollar P, Girshick R (2017) "Mask R-CNN." *ICCV*, 2961-2969.
   (`link <https://doi.org/10.1109/ICCV.2017.322>`__)
-  Ronneberger O, Fischer P, Brox T (2015) "U-Net: Convolutional networks for biomedical
   image segmentation." *MICCAI*, 234-241.
   (`link <https://doi.org/10.1007/978-3-319-24574-4_28>`__)
"""

IMAGE_DOC = """\
Select the image to segment: a 2D grayscale or colour image of nuclei (fluorescent DNA stain,
brightfield, H&E...). Intensities need no preparation: the image is normalised internally,
and images whose nuclei are darker than the background are handled without inverting them."""

OBJECTS_NAME_DOC = """\
Enter the name to give the nucleus objects produced by this module. Downstream modules
(IdentifySecondaryObjects, MeasureObjectSizeShape...) select them by this name."""

MODEL_DOC = """\
-  *%(MODEL_DEFAULT)s:* The general nucleAIzer model installed with the backend, trained on
   fluorescence and brightfield/H&E nuclei.
-  *%(MODEL_CUSTOM)s:* A model folder (holding ``main.safetensors`` and optionally
   ``preseg.safetensors`` and ``model.json``) or a single ``.safetensors`` network file, for
   example a model adapted to your experiment's image style by **TrainStyleAdaptation**.
   When a TrainStyleAdaptation module earlier in this pipeline adapts *before segmenting*
   into this folder, the folder need not exist before the run.
"""

MODEL_LOCATION_DOC = """\
*(Used only with a custom model)*

The folder that holds the model: either the model folder itself (leave the name below
blank) or the folder that contains it or the network file (enter its name below). Using the
Default Input/Output Folder or a subfolder of them keeps the pipeline portable between
computers and cluster nodes; a folder chosen with *Elsewhere...* is rewritten by the path
mappings of **CreateBatchFiles** for a cluster."""

MODEL_NAME_DOC = """\
*(Used only with a custom model)*

Name of the model folder or of the ``.safetensors`` network file inside the model location.
Leave blank when the model location is the model folder itself."""

SIZE_DOC = """\
How to choose the typical nucleus diameter, which sets how much each image is rescaled
before segmentation (nuclei are brought to about 40 pixels across). The network tolerates
roughly a factor of two error in the diameter.

-  *{SIZE_AUTOMATIC}:* A size-robust network measures the nuclei of each image first
   (this roughly doubles the time per image). If it finds fewer than 5 nuclei, the
   *Nucleaizer_SizeReliable* measurement is 0 (and with none at all the default diameter of
   20 px is used).
-  *{SIZE_MEASUREMENT}:* Use an image measurement made by an earlier module, typically
   *NucleusSize_MedianDiameter* from **EstimateNucleusSize** (which can also pool all the
   images of a group, e.g. a plate, into one size). If the measurement is missing, not a
   number or not positive for an image, the size is estimated automatically for that image
   and a warning is logged.
-  *{SIZE_MANUAL}:* Type the typical nucleus diameter in pixels. Fastest; best when all
   images share the same magnification.
"""

SIZE_MEASUREMENT_DOC = """\
*(Used only when the nucleus size comes from an image measurement)*

Select the image measurement that holds the typical nucleus diameter in pixels, e.g.
*NucleusSize* > *MedianDiameter* made by **EstimateNucleusSize**. CellProfiler checks that
a module above this one makes it."""

MANUAL_DIAMETER_DOC = """\
*(Used only with a manual nucleus size)*

The typical diameter of a nucleus in pixels (at least 1), e.g. measured on a few nuclei
with the measuring tool of the image viewer."""

REFINEMENT_DOC = """\
How the network's nuclei are cleaned up (nucleAIzer's post-processing):

-  *{REFINE_FULL}:* small objects lying inside another are absorbed by it, fragments
   surrounded by a neighbour are merged into it, tiny objects are removed, then a U-Net's
   per-pixel nucleus probability moves each outline (by up to p4 px inwards and p5 px
   outwards at the working scale: 2 and 1 with the shipped model) and removes objects the
   U-Net does not confirm. The most accurate outlines; about 0.3-1 s more per image on
   a CPU.
-  *{REFINE_RULES}:* the clean-up rules without the U-Net.
-  *{REFINE_NONE}:* the network's nuclei as they are (enough when only counting).

See the project's BENCHMARKS.md for what each step is worth."""

SPEED_DOC = """\
How far images of small nuclei are enlarged before segmentation, which sets most of the
time they take (the time grows with the number of pixels segmented):

-  *{SPEED_ACCURATE}:* nuclei are brought to the model's working size (40 px across for
   the shipped model), as the nucleAIzer method does. An image of 10 px nuclei is enlarged
   4 times (16 times the pixels).
-  *{SPEED_FAST}:* nuclei smaller than the model's *fast* size (stored with the model:
   {FAST_DIAMETER} px for the shipped model) are enlarged only to that size, and nuclei between it
   and the working size are not rescaled at all. Images of large nuclei are segmented as
   with *{SPEED_ACCURATE}*.

The fast size was chosen by measurement: the smallest working size whose mean DSB score
on DSB 2018 images of nuclei under 20 px is at most 0.02 below that at 40 px. With the
shipped model on the DSB 2018 val images, *{SPEED_FAST}* takes 23% less time on images of
nuclei under 14 px and 15% less over all images, for a DSB score 0.019 lower (0.549 against
0.568; see the project's BENCHMARKS.md, "Working nucleus size" and "Screening speed"). A new module starts at the model's default speed
(*{DEFAULT_SPEED}* for the shipped model); pipelines saved before this setting existed keep
*{SPEED_ACCURATE}*, and so their results."""

TTA_DOC = """\
Select *Yes* to segment each image six times (as it is, flipped, rotated by 90, 180 and
270 degrees) and keep the nuclei found in most versions, with outlines by pixel majority.
About 2.7 times slower (measured: 3.95 instead of 1.46 s per image on the DSB 2018 val
images on a 2-core CPU, size estimate included; see BENCHMARKS.md). With the shipped model
it does not pay on those images (DSB 0.566 with it, 0.569 without; the same on H&E, a
little worse on fluorescence); it may with other models or images."""

PARAMS_DOC = """\
*{PARAMS_MODEL}* uses the values stored with the model (its ``model.json``): for the shipped
model those tuned on the DSB 2018 val images (confidence 0.8, p1 1, p2 150 px², p3 0.7,
p4 2 px, p5 1 px, p6 0.8), for an adapted model its base model's, for your own those found
by ``nucleaizer tune``. A model without stored values uses the published nucleAIzer ones
(confidence 0.5, p1 0.17, p2 44 px², p3 0.9375, p4 1 px, p5 1 px, p6 0.8), which were
tuned for the paper's networks and score lower with these (see the project's BENCHMARKS.md).
*{PARAMS_CUSTOM}* shows the detection confidence and the post-processing parameters p1 to
p6 to set by hand (advanced); they start from the chosen model's values.

To find good values for your images, annotate a few of them and run
``nucleaizer tune --images DIR --truth DIR --out MY_MODEL``; then choose *Model* = *Custom*
with the folder MY_MODEL and keep *{PARAMS_MODEL}*."""

CONFIDENCE_DOC = """\
*(Used only with custom parameters)*

Minimum network confidence (0 to 1) for a detection to become an object. Lower it to find
faint or unusual nuclei (at the risk of false detections), raise it to keep only clear
ones. The shipped model uses 0.8."""

P1_DOC = """\
*(Used only with custom parameters and post-processing)*

An object whose outline touches one larger neighbour along more than this fraction is
merged into it (repairs nuclei split into pieces). 1 never merges."""

P2_DOC = """\
*(Used only with custom parameters and post-processing)*

Objects smaller than this area are removed. The area is measured at the working scale,
where nuclei are about 40 px across (a 40 px nucleus covers about 1250 px²), so the
setting means the same at any image resolution."""

P3_DOC = """\
*(Used only with custom parameters and U-Net refinement)*

Near an outline, pixels with a U-Net nucleus probability at or above this value belong to
the nucleus and pixels below it do not."""

P4_DOC = """\
*(Used only with custom parameters and U-Net refinement)*

How far (px at the ~40 px working scale) an outline may move inwards to follow the U-Net.
0 never shrinks objects."""

P5_DOC = """\
*(Used only with custom parameters and U-Net refinement)*

How far (px at the ~40 px working scale) an outline may move outwards to follow the U-Net.
0 never grows objects."""

P6_DOC = """\
*(Used only with custom parameters and U-Net refinement)*

Objects whose mean U-Net nucleus probability is below this value are removed as false
detections. 0 keeps all."""

EXCLUDE_SIZE_DOC = """\
Select *Yes* to discard nuclei whose size lies outside the range set below, as
**IdentifyPrimaryObjects** does: the equivalent diameter (the diameter of a circle of the
same area) of each nucleus is compared with the range. Useful against debris and clumps.
The nucleus size used for rescaling (above) is not changed by this setting."""

SIZE_RANGE_DOC = """\
*(Used only when discarding nuclei outside the diameter range)*

The smallest and largest equivalent diameter, in pixels of the original image, of the
nuclei kept."""

EXCLUDE_BORDER_DOC = """\
Select *Yes* to discard nuclei that touch the border of the image, as
**IdentifyPrimaryObjects** does: measurements of a nucleus cut by the edge of the field of
view (area, shape, intensity) are not those of the whole nucleus."""

USE_GPU_DOC = """\
Select *Yes* to run the network on an NVIDIA GPU (CUDA) when PyTorch can see one; the
module falls back to the CPU when there is none, so pipelines stay portable. Select *No*
to always use the CPU.

With *Yes*, the *Test GPU* button below checks whether a GPU can be used here: it segments a
small test image on the GPU and reports the time, or says why not (a CPU-only PyTorch, no
CUDA device, or an error)."""

GPU_MEMORY_SHARE_DOC = """\
*(Used only when a GPU is used)*

Largest fraction (0.01 to 1) of the GPU's memory that one CellProfiler worker process may
use (PyTorch's per-process memory fraction); 0.25 by default, for four workers.
CellProfiler runs several workers at once (see *Preferences > Maximum number of
workers*), each with its own copy of the model: choose the share so that it times the
number of workers (times the number of CellProfiler instances sharing the GPU) is at most 1.
For a single headless process, 1.0 is fine. The limit applies to the whole worker process
(all nucleAIzer modules in it)."""

USE_MASK_DOC = """\
Select *Yes* to keep only nuclei that lie (mostly) inside a mask image, for example a region
of interest or the tissue area; nuclei are clipped to the mask. A mask already attached to
the input image (e.g. by **MaskImage** or **Crop**) is always respected."""

MASK_NAME_DOC = """\
*(Used only when restricting detection to a mask)*

A binary image (or any image: non-zero pixels count as inside) of the same size as the input
image, other than the input image itself. Objects with at least half their area inside the
mask are kept."""

WANT_CONFIDENCE_DOC = """\
Select *Yes* to record the network's confidence for each nucleus as the object measurement
*Nucleaizer_Confidence* (useful for filtering with **FilterObjects** or for quality
control)."""

WANT_PROBABILITY_DOC = """\
Select *Yes* to also produce an image of the network's nucleus probability (0-1) at each
pixel, for example to inspect uncertain regions or to save with **SaveImages**."""

PROBABILITY_NAME_DOC = """\
*(Used only when saving the probability image)*

Name of the nucleus probability image, for use by downstream modules."""
