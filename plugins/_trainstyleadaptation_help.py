"""Help text of the TrainStyleAdaptation module (plugins/trainstyleadaptation.py): its manual
and the documentation of each of its settings, as ``str.format`` templates that the module
fills in with its choice names and defaults (the fields in braces).

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
trainstyleadaptation.py imports this file. Copy it along with the plugins.
"""

MANUAL = """\
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

The display window shows, at each cycle, the input image and a table: with *{WHEN_END}*
the number of images collected so far and the folder the model will be written to, with
*{WHEN_FIRST}* the adapted model the group is segmented with (its images and styles). After
the group it shows the style sheet and the adaptation report (images and where their masks
came from, styles, merged and skipped styles, style models, synthetic pairs, fine-tuning
steps, time per stage).

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Experiment measurements** (recorded at the end of the run, read from the model folders'
``model.json``, so they are there also when the groups ran in CellProfiler's worker
processes; export them with **ExportToSpreadsheet**'s *Experiment* data,
``Experiment.csv``; with several groups, the numbers are summed over the groups'
adaptations and the folders listed, separated by "; "):

-  *StyleAdaptation_ModelFolder:* The adapted model folder.
-  *StyleAdaptation_Images:* Images adapted to.
-  *StyleAdaptation_AnnotatedImages:* Of those, images whose masks were annotations.
-  *StyleAdaptation_Styles:* Styles found among the images.
-  *StyleAdaptation_StyleModels:* Styles that got a style model (the others had too few
   images or no nuclei).
-  *StyleAdaptation_SkippedImages:* Images of styles that got no style model (too few
   images or no nuclei).
-  *StyleAdaptation_SyntheticPairs:* Synthetic image/mask pairs made.
-  *StyleAdaptation_FineTuneSteps:* Fine-tuning steps of the main network.
-  *StyleAdaptation_Seconds:* Time the adaptation took (all stages; for a reused
   adaptation, the time it took when it ran).

Technical notes
^^^^^^^^^^^^^^^

The adaptation runs seven stages (see the backend's ``nucleaizer_backend.style.adapt``):
nucleus masks of every image (the base model's size-robust preseg network, or the
annotations); clustering of the images into styles by image features (k-means, over-
clustered, small clusters merged or skipped and reported); one pix2pix image-to-image
network per style, trained on the style's (mask, image) pairs; synthetic masks per style
(half real nucleus shapes from a shipped shape database, half perturbed ellipses, with the
style's nucleus size, density and spatial arrangement) painted by the style's network;
fine-tuning of the base model's main network, then (a stage of its own) of its contour U-Net,
on the original training images (a compact replay set shipped with the backend) plus the
synthetic pairs; and packaging of the adapted model into its folder. Progress is written to
CellProfiler's log, at most one line every 15 seconds per stage. In test mode the module
does not adapt (it says so in the log). The method step by step is in the project's
docs/METHOD.md section 4.

*Presets:* *{PRESET_QUICK}* (short schedules: about 25 minutes for 20 images on a 2-core
CPU) and *{PRESET_FULL}* (the paper's schedules: hours on a CPU; a GPU is recommended).
Training uses a CUDA GPU whenever PyTorch sees one.

The whole group is processed by one CellProfiler worker (this is an aggregation module).
With *{WHEN_FIRST}*, the modules up to the one that provides the input image (and the
annotation objects) run once more for each image before the group's first cycle, which is
cheap for the input modules. With several groups, each group needs its own model folder:
put a metadata tag in the folder name (e.g. ``adapted_\\g<Plate>``) with *{WHEN_END}*, or run
one group per job (``-g``) with its own output folder (``-o``) with *{WHEN_FIRST}*.

*Checks:* the module is marked invalid (red) when the backend is missing; the custom base
model is missing or not a main network; the output folder has no name or is the base
model's; the folder name holds a metadata tag with *{WHEN_FIRST}*; the pipeline is 3D; or a
second TrainStyleAdaptation is in the pipeline. It warns (yellow) when *{WHEN_FIRST}* reruns
processing modules to get its input image, or no **SegmentNucleiStyleAdapted** below uses
the folder; when with *{WHEN_END}* a **SegmentNucleiStyleAdapted** below reads the same
folder (it would read it before the model is written); when grouped images share one
folder; and when the output folder holds other files. At run time a 3D image, annotation
objects of another size than the image, or a group in which no image reached the module
stop the run with a clear error.

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, Tasnadi E, Molnar C, Mathe B, Grexa I, Molnar J,
   Balind A, Gorbe M, Kovacs M, Migh E, Goodman A, Balassa T, Koos K, Wang W, Caicedo JC,
   Bara N, Kovacs F, Paavolainen L, Danka T, Kriston A, Carpenter AE, Smith K, Horvath P
   (2020) "nucleAIzer: A parameter-free deep learning framework for nucleus segmentation
   using image style transfer." *Cell Systems* 10(5), 453-458. (`link <{DOI}>`__)
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
"""

IMAGE_DOC = """\
Select the images to adapt the model to: 2D grayscale or colour images of nuclei
(fluorescence, brightfield, H&E...), as they will be segmented (no preprocessing needed).
Every image of the group that reaches this module is used."""

USE_ANNOTATIONS_DOC = """\
Select *Yes* if some images come with annotated nuclei, as objects made by an upstream
module (typically a label image loaded by **NamesAndTypes** and converted by
**ConvertImageToObjects**). For those images the annotations are used as the nucleus masks
that the style models learn from, instead of the automatic masks (more faithful synthetic
images). Images whose annotation objects are empty use automatic masks. With *{WHEN_FIRST}*, the
modules up to the one that provides the objects run once more for each image before the
group starts. Style adaptation needs no annotations: leave *No* for unannotated images."""

ANNOTATION_OBJECTS_DOC = """\
*(Used only with annotations)*

The objects holding the annotated nuclei of each image (the same size as the image; one
object per nucleus)."""

BASE_MODEL_DOC = """\
The model to adapt:

-  *%(MODEL_DEFAULT)s:* the general nucleAIzer model installed with the backend.
-  *%(MODEL_CUSTOM)s:* a model folder (with ``main.safetensors``), for example one trained
   on your own annotated images, or a main network ``.safetensors`` file.
"""

BASE_MODEL_LOCATION_DOC = """\
*(Used only with a custom base model)*

The folder that holds the base model: either the model folder itself (leave the name below
blank) or the folder that contains it or its network file (enter its name below)."""

BASE_MODEL_NAME_DOC = """\
*(Used only with a custom base model)*

Name of the model folder or of the main ``.safetensors`` network file inside the base model
location. Leave blank when the location is the model folder itself."""

OUTPUT_DIRECTORY_DOC = """\
The folder in which the adapted model folder is created (Default Output Folder by default).
Using the Default Input/Output Folder or a sub-folder of them keeps the pipeline portable
between computers and cluster nodes."""

OUTPUT_NAME_DOC = """\
Name of the folder, inside the output folder, that receives the adapted model. Give
**SegmentNucleiStyleAdapted** *Model* = *Custom* with the same location and this name.

The folder must be new or empty, or hold an earlier adaptation of the same images (which is
then continued if it was interrupted, or reused as it is if it finished). With
*{WHEN_END}* and several groups, include a metadata tag so that each group gets its own
model, e.g. ``adapted_\\g<Plate>``."""

WHEN_DOC = """\
-  *{WHEN_END}:* the images are collected as the group's cycles run, and the model is
   adapted and written in the group's last cycle (after the group if its last image set
   does not reach this module). Segment with it in a second pipeline (or a later run). The
   modules after this one see the images as usual. Because the model is adapted in a
   cycle rather than after the group, an adaptation error is an ordinary module error: a
   headless run then exits with status 1.
-  *{WHEN_FIRST}:* before the group's first cycle, every image of the group is loaded (the
   modules up to the one that provides the input image run once per image, as
   **CorrectIlluminationCalculate** does in *All: First cycle* mode) and the model is
   adapted and written at once. A **SegmentNucleiStyleAdapted** module further down this
   pipeline, with its custom model set to this folder, then segments every image of the
   group with the adapted model in the same run.
"""

PRESET_DOC = """\
-  *{PRESET_QUICK}:* short training schedules (at most 4 styles, 200-400 style-model steps
   per style, 400 fine-tuning steps): 25-30 minutes for 20 images on a 2-core CPU
   (measured per stage; see the backend's ``style/config.py``), less on a GPU.
-  *{PRESET_FULL}:* the paper's schedules (up to 100 styles, 2000-20000 style-model steps
   per style, 3000 fine-tuning steps): hours on a CPU; a GPU is recommended.
"""

USE_GPU_DOC = """\
Select *Yes* to run the adaptation (automatic nucleus masks, style models, fine-tuning) on
an NVIDIA GPU (CUDA) when PyTorch can see one, else the CPU; *No* always uses the CPU.

With *Yes*, the *Test GPU* button below checks whether a GPU can be used here: it segments a
small test image on the GPU and reports the time, or says why not (a CPU-only PyTorch, no
CUDA device, or an error)."""

ADVANCED_DOC = """\
Select *Yes* to change the number of synthetic images, the share of synthetic images in
fine-tuning, the training lengths, the fewest images per style and the number of
adaptation rounds. *No* uses the defaults ({SYNTHETIC_PER_STYLE} synthetic pairs per style,
a share of {SYNTHETIC_SHARE:.1f}, the preset's training lengths, {MIN_IMAGES_PER_STYLE} images per \
style, {ROUNDS} round)."""

SYNTHETIC_PER_STYLE_DOC = """\
*(Used only with advanced settings)*

How many synthetic image/mask pairs to make for each style (the paper's 20 by default).
More pairs teach the style better at the cost of time (about half a second each on a
CPU)."""

SYNTHETIC_SHARE_DOC = """\
*(Used only with advanced settings)*

The fraction (0.1 to 0.5) of the image crops that fine-tuning takes from the synthetic
images; the rest come from the original annotated training images, so that the model keeps
what it knew."""

FINETUNE_STEPS_DOC = """\
*(Used only with advanced settings)*

Training steps of the main network on the original and synthetic images. 0 uses the
preset's (400 quick, 3000 full); about 2 s per step on a CPU. The contour U-Net is then
fine-tuned for 3/4 as many steps (about 0.8 s each)."""

STYLE_STEPS_DOC = """\
*(Used only with advanced settings)*

Training steps of each style's image-to-image (pix2pix) network. 0 uses the preset's, which
grow with the number of images of the style (quick: 200-400, full: 2000-20000); about 1 s
per step on a CPU."""

MIN_IMAGES_PER_STYLE_DOC = """\
*(Used only with advanced settings)*

A style found in fewer images than this is merged into the nearest style (or left without
a style model and reported as skipped). Lower it when the group has very few images."""

ROUNDS_DOC = """\
*(Used only with advanced settings)*

How many times to adapt. Round 1 learns the styles from the base model's automatic masks;
each further round takes its masks from the previous round's adapted model (which finds
the nuclei of the new style better) and adapts that model again. A style whose images'
masks hold too few nuclei in a round (fewer than 5 in most of its images) gets no style
model in that round and is reported; a further round may learn it. Each round costs about
as much time as the first. Whether a second round helps is not measured yet: check its
result on a few annotated images before using it."""
