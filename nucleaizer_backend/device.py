"""Choosing the compute device."""
import torch

from .errors import NucleaizerError


def resolve_device(device="auto"):
    """'auto' -> CUDA when available, else CPU; 'cpu'/'cuda'/'cuda:N' as given."""
    device = str(device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NucleaizerError("device 'cuda' was asked for, but no CUDA GPU is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise NucleaizerError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
