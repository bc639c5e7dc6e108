"""Help text of the EstimateNucleusSize module (plugins/estimatenucleussize.py): its manual and
the documentation of each of its settings, as ``str.format`` templates that the module fills
in with its choice names (the fields in braces); the model choice's documentation is a
%-template that _nucleaizer_common.model_settings fills in.

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_";
estimatenucleussize.py imports this file. Copy it along with the plugins.
"""

MANUAL = """\
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

Only one EstimateNucleusSize module per pipeline: its measurement names do not carry the
image's name, so a second module would overwrite them (CellProfiler marks the second one as
invalid).

What do I get as output?
^^^^^^^^^^^^^^^^^^^^^^^^

Image measurements and, optionally, the nuclei that the size was measured on as objects
(a quick, size-robust but less accurate segmentation than **SegmentNucleiStyleAdapted**;
useful to check what the estimate is based on).

The display window shows the input image (with the outlines of the measured nuclei when
they are saved as objects), a histogram of this image's nucleus diameters, and a table:
this image's median diameter, number of nuclei measured and spread; in group mode the same
for the group, with its number of images; and whether the estimate is reliable.

Measurements made by this module
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^

**Image measurements** (in group mode the first four are the same for every image of the
group):

-  *NucleusSize_MedianDiameter:* Median equivalent diameter (pixels), sqrt(4 x area / pi),
   of the nuclei found that look like single nuclei (solidity at least 0.9: two touching
   nuclei found as one object have a concave outline and would count as one big nucleus;
   all nuclei found are used when fewer than 5 qualify). When fewer than 5 nuclei are
   found, the median of the few found (or the default diameter of 20 pixels when none is
   found) is reported and *Reliable* is 0: never NaN, so it can always drive
   **SegmentNucleiStyleAdapted**.
-  *NucleusSize_Spread:* Interquartile range of the diameters divided by their median
   (0 = all nuclei the same size; NaN when unreliable).
-  *NucleusSize_Count:* Number of nuclei measured (the single-looking ones, see above).
-  *NucleusSize_Reliable:* 1 when at least 5 nuclei were measured, else 0.
-  *NucleusSize_ImageMedianDiameter, NucleusSize_ImageCount:* The same for this image alone
   (equal to the above when estimating each image individually); in group mode they show
   which images of a group differ from the rest.
-  *Count:* (when saving the nuclei as objects; *Count_* followed by the objects' name) the
   number of those objects: every nucleus found, including the concave ones left out of the
   size, so it can exceed *NucleusSize_ImageCount*.

**Object measurements** (when saving the nuclei as objects): *Location_Center_X/Y/Z*,
*Number_Object_Number*.

Technical notes
^^^^^^^^^^^^^^^

The preseg network was trained with strong scale augmentation (nuclei from 12 to 100
pixels) and segments the image at its native scale; if that finds too few nuclei, or a
size outside its most accurate range, it looks again at a more suitable scale.

*Pooling a group:* in *"{SCOPE_GROUP}"* mode, the module estimates the sizes of all the
images of the group before the group's first cycle runs (like **CorrectIlluminationCalculate**
in *All: First cycle* mode), so that the pooled size is available to downstream modules of
the same pipeline from the first image on. To do so it runs the modules that come before it
(up to the module that provides the input image) once more for each image, which is cheap
for the input modules; when the input image is made by a processing module rather than
**NamesAndTypes**, the module shows a warning. Each image is measured once (twice when its
nuclei are also saved as objects). The module marks itself as an aggregation module, so the
whole group is processed by one worker. Without **Groups**, the
group is all images of the run. The pool is made of the images that the run processes: on a
cluster, run each group as one job (``cellprofiler -c -r -p Batch_data.h5 -g
Metadata_Plate=P1``); a job given only part of a group with ``-f``/``-l`` pools only the
images of that part.

References
^^^^^^^^^^

-  Hollandi R, Szkalisity A, Toth T, et al. (2020) "nucleAIzer: A parameter-free deep
   learning framework for nucleus segmentation using image style transfer." *Cell Systems*
   10(5), 453-458. (`link <{DOI}>`__)
"""

IMAGE_DOC = """\
Select the image whose nuclei to measure: a 2D grayscale or colour image (fluorescence,
brightfield, H&E...). No preprocessing is needed."""

SCOPE_DOC = """\
-  *{SCOPE_EACH}:* One estimate per image, from that image's nuclei.
-  *{SCOPE_GROUP}:* One estimate from the nuclei of all images of the group (as defined
   in **Groups**; without grouping, all images of the run), so that every image of, say, a
   plate is segmented at the same scale; more robust for images with few nuclei. The sizes
   are computed before the group's first cycle, so they are available downstream from the
   first image on. The per-image values are still reported as
   *NucleusSize_ImageMedianDiameter* and *NucleusSize_ImageCount*.
"""

MODEL_DOC = """\
-  *%(MODEL_DEFAULT)s:* The preseg network installed with the backend.
-  *%(MODEL_CUSTOM)s:* The preseg network of a model folder (its ``preseg.safetensors``; a
   folder without one, or a single network file, uses the default preseg network).
"""

MODEL_LOCATION_DOC = """\
*(Used only with a custom model)*

The folder that holds the model: the model folder itself (leave the name below blank) or
the folder that contains it (enter its name below)."""

MODEL_NAME_DOC = """\
*(Used only with a custom model)*

Name of the model folder or network file inside the model location; blank when the model
location is the model folder itself."""

CONFIDENCE_DOC = """\
Minimum confidence (0 to 1) of the preseg network's detections that are measured. 0.5
suits most images."""

WANT_OBJECTS_DOC = """\
Select *Yes* to also output the nuclei that the size was measured on, as objects (for
example to overlay their outlines for quality control). These come from the size-robust
preseg network at the scale it measured at: a quick segmentation, less accurate than
**SegmentNucleiStyleAdapted**. In group mode this runs the preseg network a second time on
each image."""

OBJECTS_NAME_DOC = """\
*(Used only when saving the measured nuclei as objects)*

Name of the objects, for use by downstream modules."""

USE_GPU_DOC = """\
Select *Yes* to run the network on an NVIDIA GPU (CUDA) when PyTorch can see one, else the
CPU; *No* always uses the CPU.

With *Yes*, the *Test GPU* button below checks whether a GPU can be used here: it segments a
small test image on the GPU and reports the time, or says why not (a CPU-only PyTorch, no
CUDA device, or an error)."""

GPU_MEMORY_SHARE_DOC = """\
*(Used only when a GPU is used)*

Largest fraction (0.01 to 1) of the GPU's memory that one CellProfiler worker process may
use; 0.25 by default, for four workers. This share times the number of workers should be at
most 1 (for a single headless process, 1.0 is fine). The limit applies to the whole
worker process (all nucleAIzer modules in it)."""
