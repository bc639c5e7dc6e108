"""Choosing the compute device and sharing it between processes."""
import os

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
