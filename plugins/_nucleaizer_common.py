"""Parts shared by the nucleAIzer CellProfiler modules: the model and GPU settings, the
backend import, and the behaviour that goes with them (including how a worker process shares
the machine with the others); collecting the images of a group before its first cycle; the
display's image and table; and how the modules of a pipeline find each other: by their roles
(a module that writes a model before the group, a module that segments with a model), not by
their names.

Not a module itself: CellProfiler loads the plugin files whose names do not start with "_",
with the plugins folder on the import path, so the modules import this file. Copy it along
with them when installing the plugins into another plugins folder.
"""
import logging
import os
import sys

from cellprofiler_core.setting import Binary, ValidationError
from cellprofiler_core.setting.choice import Choice
from cellprofiler_core.setting.do_something import DoSomething
from cellprofiler_core.setting.text import Directory, Filename, Float

LOGGER = logging.getLogger(__name__)

NUCLEAIZER_DOI = "https://doi.org/10.1016/j.cels.2020.04.003"

MODEL_DEFAULT = "Default (shipped)"
MODEL_CUSTOM = "Custom"

INSTALL_HINT = (
    "the nucleaizer_backend Python package is not installed in CellProfiler's Python "
    "environment (install it with pip from the project folder: pip install -e .)"
)

NETWORK_FILE_TYPES = [
    ("nucleAIzer network (*.safetensors)", "*.safetensors"),
    ("All files (*.*)", "*.*"),
]


def backend():
    """The backend package, or an ImportError that says how to install it."""
    try:
        import nucleaizer_backend
    except ImportError as e:
        raise ImportError("%s; import failed with: %s" % (INSTALL_HINT, e)) from e
    return nucleaizer_backend


def same_path(a, b):
    """True when paths ``a`` and ``b`` name the same place (relative paths from the working
    directory, case-insensitively where the file system is)."""
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def model_settings(choice_text, choice_doc, location_text, location_doc, name_text, name_doc,
                   browse_msg="Choose a model network file (.safetensors)"):
    """The (choice, location, name) settings that pick the shipped model or a custom model
    folder / network file. ``choice_doc`` may use %(MODEL_DEFAULT)s and %(MODEL_CUSTOM)s."""
    choice = Choice(
        choice_text,
        [MODEL_DEFAULT, MODEL_CUSTOM],
        MODEL_DEFAULT,
        doc=choice_doc % {"MODEL_DEFAULT": MODEL_DEFAULT, "MODEL_CUSTOM": MODEL_CUSTOM},
    )
    location = Directory(location_text, doc=location_doc)

    def get_directory_fn():
        return location.get_absolute_path()

    def set_directory_fn(path):
        dir_choice, custom_path = location.get_parts_from_path(path)
        location.join_parts(dir_choice, custom_path)

    name = Filename(
        name_text,
        "",
        get_directory_fn=get_directory_fn,
        set_directory_fn=set_directory_fn,
        browse_msg=browse_msg,
        exts=NETWORK_FILE_TYPES,
        doc=name_doc,
    )
    return choice, location, name


def use_gpu_setting(doc):
    return Binary("Use GPU when available?", True, doc=doc)


GPU_TEST_DOC = """\
Press this button to check whether the modules can use a GPU on this computer: it reports
PyTorch's version and CUDA build, the GPU found, and the time to segment a small test image
on it, or why no GPU can be used (the modules then run on the CPU)."""


def gpu_test_setting(callback):
    """The *Test GPU* button (as RunCellpose's); ``callback`` is the module's check_gpu."""
    return DoSomething("", "Test GPU", callback, doc=GPU_TEST_DOC)


def gpu_memory_share_setting(doc):
    return Float("GPU memory share for each worker", 0.25, minval=0.01, maxval=1.0, doc=doc)


_gpu_share_set = None  # the share applied in this process (one limit per worker process)
_cpu_threads_set = False  # torch's CPU threads chosen for this worker process


def in_analysis_worker():
    """True in one of the worker processes CellProfiler starts to analyse images in
    parallel (they run with --work-announce; a headless ``cellprofiler -c -r`` run and the
    GUI's own process do not)."""
    return "--work-announce" in sys.argv


def analysis_worker_count():
    """The worker processes of this analysis: this process and its siblings started with
    --work-announce. (A worker cannot read "Maximum number of workers": workers run
    headless and read no preferences file.)"""
    import psutil

    try:
        siblings = psutil.Process().parent().children()
    except (psutil.Error, AttributeError):
        return 1
    count = 0
    for process in siblings:
        try:
            count += "--work-announce" in process.cmdline()
        except psutil.Error:  # ended or not ours meanwhile
            pass
    return max(1, count)


def share_cpu_with_other_workers():
    """In an analysis worker, give torch cores / workers CPU threads (once per process).

    CellProfiler analyses with several worker processes (Preferences, "Maximum number of
    workers"; default: one per core), and torch would use every core in each of them. An
    OMP_NUM_THREADS set by the user is left alone. Returns the threads set, or None when
    nothing was changed."""
    global _cpu_threads_set
    if _cpu_threads_set or not in_analysis_worker() or "OMP_NUM_THREADS" in os.environ:
        return None
    from nucleaizer_backend.device import set_cpu_threads, threads_per_process

    workers = analysis_worker_count()
    threads = threads_per_process(workers)
    set_cpu_threads(threads)
    _cpu_threads_set = True
    LOGGER.info("nucleAIzer: %d CPU thread(s) for PyTorch in this worker (%d cores, %d "
                "workers; set OMP_NUM_THREADS to choose)", threads, os.cpu_count(), workers)
    return threads


def module_after_providers(pipeline, module, subscribers):
    """The module just after the last one that provides the images or objects named by
    ``subscribers`` (subscriber settings of ``module``): where collecting a group stops.
    ``module`` itself when none of them is provided upstream."""
    modules = list(pipeline.modules())
    last = -1
    for setting in subscribers:
        providers = pipeline.get_provider_dictionary(setting.group, module)
        if setting.value in providers:
            last = max(last, modules.index(providers[setting.value][-1][0]))
    return module if last < 0 else modules[last + 1]


def collect_group(module, workspace, grouping, image_numbers, stop, message, collect):
    """Run the pipeline's modules before ``stop`` for every image set of the group (as
    CorrectIlluminationCalculate does in *All: First cycle* mode) and return
    ``[collect(w, image_number)]``, ``w`` being the workspace of that image set (its
    image_set, object_set and measurements). Each image set's images are let go after
    ``collect``; ``message`` is shown while the group is loaded."""
    pipeline = workspace.pipeline
    results = []
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
            "#%d: %s" % (module.module_num, module.module_name),
            message,
        ):
            results.append(collect(w, int(w.measurements.image_set_number)))
            w.image_set.clear_cache()
            del w.image_set.providers[:]
    finally:
        m.clear_cache()
        del m.providers[:]
        m.providers.extend(saved_providers)
    return results


def image_set_name(measurements, image_name, number):
    """A readable name for image set ``number``: the file name (without extension) of its
    image ``image_name`` (else of its first image from a file), else image_NNNN."""
    from cellprofiler_core.constants.measurement import IMAGE

    m = measurements
    feature = "FileName_%s" % image_name
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


def last_cycle_of_group(measurements):
    """True in the group's last cycle (by CellProfiler's group index and length)."""
    from cellprofiler_core.constants.measurement import GROUP_INDEX, GROUP_LENGTH, IMAGE

    m = measurements
    if not (m.has_feature(IMAGE, GROUP_INDEX) and m.has_feature(IMAGE, GROUP_LENGTH)):
        return False
    try:
        index = int(m.get_current_image_measurement(GROUP_INDEX))
        length = int(m.get_current_image_measurement(GROUP_LENGTH))
    except (KeyError, TypeError, ValueError):
        return False
    return index >= length


def modules_rerun(pipeline, module, stop):
    """The processing modules (enabled, not input modules) that collecting a group up to
    ``stop`` runs once more for every image of the group."""
    modules = list(pipeline.modules())
    return [
        m
        for m in modules[: modules.index(stop)]
        if m is not module and not m.is_input_module() and m.enabled
    ]


def images_grouped(pipeline):
    """True when the pipeline's Groups module groups the images."""
    for module in pipeline.modules():
        if module.module_name == "Groups" and getattr(module, "wants_groups", False):
            if module.wants_groups.value:
                return True
    return False


def model_written_upstream(pipeline, module, path):
    """True when a module above ``module`` writes the model folder ``path`` before the
    group's first cycle (so that the folder need not exist when the pipeline is checked)."""
    for other in pipeline.modules():
        if other.module_num >= module.module_num:
            break
        written = getattr(other, "model_written_before_group", None)
        folder = written() if written else None
        if folder and same_path(folder, path):
            return True
    return False


def segmenters_using(pipeline, module, folder):
    """The modules below ``module`` that segment with the custom model ``folder``."""
    found = []
    for other in pipeline.modules():
        if other.module_num <= module.module_num:
            continue
        if not getattr(other, "segments_with_model", False):
            continue
        path = other.model_path()
        if path and same_path(path, folder):
            found.append(other)
    return found


def objects_from_labels(labels):
    """CellProfiler Objects of a 2D label image (int, 0 = background). CellProfiler's dense
    store fails on an image one pixel high or wide, so such labels are stored as their
    (i, j, label) pixels with the image's shape."""
    import numpy
    from cellprofiler_core.object import Objects

    objects = Objects()
    if min(labels.shape) >= 2:
        objects.segmented = labels
        return objects
    i, j = numpy.nonzero(labels)
    objects.set_ijv(numpy.column_stack([i, j, labels[i, j]]).astype(numpy.int32), labels.shape)
    return objects


def show_image(figure, x, y, image, multichannel, title, **kwargs):
    """Show ``image`` in the figure's cell (x, y): a colour image as it is, a grayscale one
    normalised; ``kwargs`` (cplabels, sharexy...) go on to the figure. Returns the axes."""
    if multichannel:
        return figure.subplot_imshow_color(x, y, image, title, normalize=False, **kwargs)
    return figure.subplot_imshow_grayscale(x, y, image, title, **kwargs)


def show_statistics(figure, x, y, statistics):
    """The display's table of ``statistics`` ([name, value] rows) in the cell (x, y)."""
    rows = [[value] for _, value in statistics]
    figure.subplot_table(x, y, rows, row_labels=[name for name, _ in statistics])


class NucleaizerModule:
    """Behaviour shared by the nucleAIzer modules (listed first among the bases, so that it
    overrides Module's defaults). Expects the settings ``model_choice``, ``model_directory``,
    ``model_name`` (from :func:`model_settings`) and ``use_gpu``; ``gpu_memory_share``
    where the module offers it."""

    # True for a module that segments with its model (a model adapted upstream is for it).
    segments_with_model = False

    def model_written_before_group(self):
        """The folder of the model this module writes before the group's first cycle, for
        the modules below it in the same run; None (the default) when it writes none."""
        return None

    def model_path(self):
        """The custom model's absolute path (folder or network file), or None for the
        shipped model."""
        if self.model_choice != MODEL_CUSTOM:
            return None
        directory = self.model_directory.get_absolute_path()
        name = self.model_name.value.strip()
        return os.path.join(directory, name) if name else directory

    def model_setting(self):
        """The setting to point at when the model cannot be used."""
        return self.model_name if self.model_choice == MODEL_CUSTOM else self.model_choice

    def prepare_run(self, workspace):
        """Before the first image set: the module's own checks (validate_module: backend,
        model, values). CellProfiler does not validate a pipeline before a headless run; a
        model that cannot be used would otherwise fail every image set with a traceback.
        A problem is one line in the log naming the file and the problem, and the run stops
        before any image (``cellprofiler -c -r`` exits with status 1)."""
        try:
            self.validate_module(workspace.pipeline)
        except ValidationError as e:
            LOGGER.error("%s: %s", self.module_name, e.message)
            return False
        return True

    def check_gpu(self):
        """The *Test GPU* button's action: the backend's device.check_gpu (a real
        segmentation on the GPU), shown in a message box in the GUI and logged; returns
        its GpuCheck (so it can be called without a GUI)."""
        from nucleaizer_backend.device import check_gpu

        report = check_gpu()
        LOGGER.info("%s: GPU test: %s", self.module_name, report.message)
        try:
            import wx

            if wx.GetApp() is not None:
                wx.MessageBox(report.message, caption="GPU test")
        except ImportError:  # headless CellProfiler: the log has it
            pass
        return report

    def device(self):
        """The backend's device argument: "auto" (CUDA when PyTorch sees it) or "cpu"."""
        return "auto" if self.use_gpu.value else "cpu"

    def validate_backend(self):
        """ValidationError (on the model setting) when the backend cannot be imported."""
        try:
            backend()
        except ImportError as e:
            raise ValidationError(str(e), self.model_choice)

    def validate_model(self):
        """ValidationError (on the model setting) unless the chosen model can be used."""
        from nucleaizer_backend.errors import ModelFileError
        from nucleaizer_backend.models.io import check_model_path

        try:
            check_model_path(self.model_path())
        except ModelFileError as e:
            raise ValidationError("Cannot use the model: %s" % e, self.model_setting())

    def share_machine_with_other_workers(self):
        """Before the networks run: this worker's share of the CPU cores and of the GPU's
        memory (see :func:`share_cpu_with_other_workers`, :meth:`limit_gpu_memory`)."""
        share_cpu_with_other_workers()
        self.limit_gpu_memory()

    def limit_gpu_memory(self):
        """Apply the GPU memory share to this worker process, once (no-op on the CPU)."""
        global _gpu_share_set
        if not self.use_gpu.value or not hasattr(self, "gpu_memory_share"):
            return
        import torch

        if not torch.cuda.is_available():
            return
        share = float(self.gpu_memory_share.value)
        if _gpu_share_set == share:
            return
        from nucleaizer_backend.device import set_memory_fraction

        set_memory_fraction(share, "cuda")
        _gpu_share_set = share

    def skip_in_test_mode(self, workspace, message):
        """True (after logging ``message`` as a warning) in CellProfiler's test mode."""
        if workspace.pipeline.test_mode:
            LOGGER.warning("%s: %s", self.module_name, message)
            return True
        return False

    def validate_only_one(self, pipeline, category, setting):
        """ValidationError (on ``setting``) when a module of this kind is above this one: the
        two would write the same ``category`` measurements."""
        for module in pipeline.modules():
            if module is self or module.module_num >= self.module_num:
                break
            if module.module_name == self.module_name:
                raise ValidationError(
                    "Only one %s module per pipeline: its %s measurements would overwrite "
                    "those of module #%d" % (self.module_name, category, module.module_num),
                    setting,
                )

    def refuse_newer_revision(self, variable_revision_number):
        """ValueError for settings saved by a newer version of the module than this one."""
        if variable_revision_number > self.variable_revision_number:
            raise ValueError(
                "%s: the pipeline was saved by a newer version of this module (settings "
                "revision %d; this version reads up to %d). Update the nucleAIzer plugins."
                % (self.module_name, variable_revision_number, self.variable_revision_number)
            )

    def upgrade_settings(self, setting_values, variable_revision_number, module_name):
        """Revision 1 is the first released layout; a module whose settings changed
        overrides this with its conversion steps (and bumps ``variable_revision_number``)."""
        self.refuse_newer_revision(variable_revision_number)
        return setting_values, variable_revision_number

    def volumetric(self):
        return False

    def prepare_to_create_batch(self, workspace, fn_alter_path):
        """Map the model location to the cluster's file system for CreateBatchFiles."""
        self.model_directory.alter_for_create_batch_files(fn_alter_path)
        return True
