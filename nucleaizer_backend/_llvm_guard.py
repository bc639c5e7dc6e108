"""Import Triton safely in a process that already holds another LLVM (GUI processes).

PyTorch's CUDA builds for Linux come with Triton, and importing torchvision imports it
(``torch._dynamo`` looks for it). Triton's extension carries its own LLVM. When the process
has already loaded the system's LLVM, as Mesa's OpenGL does once a GTK or Qt window toolkit
has started (CellProfiler's GUI, for one), loading Triton's extension crashes the process
(segmentation fault). Loaded with ``RTLD_DEEPBIND`` it binds to its own copy and works.

:func:`preload_triton` does that, and nothing when it is not needed: not on Linux, Triton
not installed or already imported, or no LLVM in the process (headless runs, the command line,
CellProfiler's worker processes). It must run before the first ``import torch``.
"""
import importlib.util
import os
import sys


def llvm_loaded():
    """True when a shared LLVM library is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return "libLLVM" in f.read()
    except OSError:
        return False


def preload_triton():
    """Import Triton with RTLD_DEEPBIND when another LLVM is loaded; True when it did."""
    if not sys.platform.startswith("linux") or "triton" in sys.modules:
        return False
    if not hasattr(os, "RTLD_DEEPBIND") or not llvm_loaded():
        return False
    try:
        if importlib.util.find_spec("triton") is None:
            return False
    except (ImportError, ValueError):
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except Exception:  # a broken Triton: torch copes without it
        return False
    finally:
        sys.setdlopenflags(flags)
    return True
