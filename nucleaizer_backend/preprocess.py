"""Input normalisation: any 2D image -> float32 (H, W, 3) in [0, 1] with nuclei bright.

This is the one normalisation of the project: training, inference, size estimation and style
adaptation all call :func:`normalize_image`.

Accepted inputs: 2D gray (H, W); colour (H, W, C) or channels-first (C, H, W) with C in 1..4
(alpha dropped, 2 channels averaged); any integer or float dtype, NaN/inf allowed. Intensities
are stretched between robust percentiles of the whole image (all channels together, so colour
ratios are kept). Images whose background is bright (brightfield, H&E: nuclei dark on bright)
are inverted so that the networks always see nuclei brighter than their surroundings.
"""
import numpy as np

from .errors import InputImageError

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8
# A background brighter than this (after stretching, 0..1) means dark-on-bright nuclei.
BRIGHT_BACKGROUND = 0.5


def channels_last(a):
    """``a`` with a leading channel axis (C, H, W), C <= 4, moved last; other arrays as
    they are (dtype kept)."""
    if a.ndim == 3 and a.shape[-1] > 4 and a.shape[0] <= 4:
        return np.moveaxis(a, 0, -1)
    return a


def to_hwc(image):
    """Return ``image`` as a float32 (H, W, 3) array; raise InputImageError for non-2D input."""
    a = np.asarray(image)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.number)):
        raise InputImageError(f"image has unsupported data type {a.dtype}")
    a = channels_last(np.squeeze(a) if a.ndim > 3 else a)
    if a.ndim == 3 and a.shape[-1] > 4:
        raise InputImageError(
            f"image of shape {a.shape} looks like a 3D stack; nucleAIzer segments 2D images "
            "(split the stack into planes first)"
        )
    if a.ndim not in (2, 3):
        raise InputImageError(f"image of shape {a.shape} is not a 2D gray or colour image")
    if min(a.shape[:2]) < 1:
        raise InputImageError(f"image of shape {a.shape} is empty")
    # always a copy: normalize_image works in place and must not change the caller's array
    a = a.astype(np.float32)
    if a.ndim == 2:
        a = a[..., None]
    channels = a.shape[-1]
    if channels == 4:
        a = a[..., :3]
    elif channels == 2:
        a = a.mean(axis=-1, keepdims=True)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def normalize_image(image):
    """Any 2D image -> float32 (H, W, 3) in [0, 1], nuclei bright on a dark background.

    A constant or all-NaN image gives an all-zero array (nothing to find, no error).
    """
    a = stretch_intensities(image)
    if has_bright_background(a):
        a = np.subtract(1.0, a, out=a)
    return a


def stretch_intensities(image):
    """Any 2D image -> float32 (H, W, 3) in [0, 1], stretched between robust percentiles but
    not inverted: the image as a viewer shows it (normalize_image's first step).

    A constant or all-NaN image gives an all-zero array.
    """
    a = to_hwc(image)
    finite = np.isfinite(a)
    if not finite.all():  # NaN and -inf -> darkest value, +inf (saturated) -> brightest
        lo_f, hi_f = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        a = np.where(finite, a, np.where(np.isposinf(a), hi_f, lo_f)).astype(np.float32)
    sample = a[:: max(1, a.shape[0] // 512), :: max(1, a.shape[1] // 512)]
    lo, hi = np.percentile(sample, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
    if not hi > lo:
        return np.zeros(a.shape, np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0, out=a)


def has_bright_background(normalized):
    """True when the typical pixel of a [0, 1] image is bright (nuclei dark on bright)."""
    gray = normalized.mean(axis=-1)
    return float(np.median(gray[:: max(1, gray.shape[0] // 256), :: max(1, gray.shape[1] // 256)])) > BRIGHT_BACKGROUND
