"""Choosing the compute device and sharing it between processes."""
import os
from dataclasses import dataclass

import torch

from .errors import OptionError


def resolve_device(device="auto"):
    """'auto' -> CUDA when available, else CPU; 'cpu'/'cuda'/'cuda:N' as given.

    OptionError (one line) for a device that is not one of these or not present."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} was asked for, but no CUDA GPU is available")
    if dev.index is not None and dev.type == "cuda" and dev.index >= torch.cuda.device_count():
        raise OptionError(f"device {device!r} was asked for, but there are only "
                          f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    return dev


def set_memory_fraction(fraction, device="auto"):
    """Cap this process's share of a CUDA GPU's memory (CellProfiler runs several worker
    processes on one GPU). ``fraction`` in (0, 1]; no effect (returns False) on CPU.

    Returns True when a limit was set. Call before the first large allocation."""
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise OptionError(f"GPU memory fraction must be in (0, 1] (got {fraction})")
    dev = resolve_device(device)
    if dev.type != "cuda":
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, dev)
    return True


def threads_per_process(processes, cores=None):
    """CPU threads for each of ``processes`` processes sharing ``cores`` cores (default: this
    machine's), at least 1: torch's default, all cores in every process, makes parallel
    workers wait on each other."""
    cores = cores or os.cpu_count() or 1
    return max(1, int(cores) // max(1, int(processes)))


def set_cpu_threads(threads):
    """Use ``threads`` CPU threads for torch in this process (int >= 1)."""
    try:
        threads = int(threads)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1:
        raise OptionError("the number of CPU threads must be a whole number >= 1")
    torch.set_num_threads(threads)


@dataclass
class GpuCheck:
    """What :func:`check_gpu` found. ok: a CUDA GPU segmented the test image; device: its
    name ("" without one); seconds: wall time of that segmentation; message: one paragraph
    for the user (what works, or why not and what to do)."""

    ok: bool
    device: str
    seconds: float
    message: str


def check_gpu(model=None):
    """Whether nucleAIzer can use a GPU here: PyTorch's CUDA build and devices, then a real
    segmentation of a small synthetic image (256x256 px, nuclei 20 px) with ``model`` (None
    = shipped) on the GPU. Never raises for a missing or broken GPU: the answer is in the
    returned GpuCheck."""
    version = f"PyTorch {torch.__version__}"
    if torch.version.cuda is None:
        return GpuCheck(False, "", 0.0, f"No GPU: {version} is a CPU-only build. The modules "
                        "run on the CPU. For a GPU, install a CUDA build of PyTorch (see "
                        "https://pytorch.org/get-started/locally/) into this environment.")
    if not torch.cuda.is_available():
        return GpuCheck(False, "", 0.0, f"No GPU: {version} (CUDA {torch.version.cuda}) sees "
                        "no CUDA device (driver missing or too old, or CUDA_VISIBLE_DEVICES "
                        "empty). The modules run on the CPU.")
    name = torch.cuda.get_device_name(0)
    try:
        import time

        from .segment import segment_image

        image = _test_image()
        segment_image(image, model=model, diameter=20, device="cuda")  # warm-up, loading
        t0 = time.perf_counter()
        result = segment_image(image, model=model, diameter=20, device="cuda")
        seconds = time.perf_counter() - t0
    except Exception as e:  # any CUDA failure is the answer, not a crash
        return GpuCheck(False, name, 0.0, f"The GPU {name} is visible to {version} but "
                        f"segmenting on it failed: {type(e).__name__}: {e}")
    return GpuCheck(True, name, seconds, f"GPU works: {name} ({version}, CUDA "
                    f"{torch.version.cuda}) segmented a 256x256 test image in {seconds:.2f} s "
                    f"({result.count} nuclei).")


def _test_image():
    """(256, 256) float32: 16 bright disks of 20 px diameter on a dark background."""
    import numpy as np

    yy, xx = np.mgrid[:256, :256]
    image = np.zeros((256, 256), np.float32)
    for cy in range(32, 256, 64):
        for cx in range(32, 256, 64):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = 1.0
    return image
