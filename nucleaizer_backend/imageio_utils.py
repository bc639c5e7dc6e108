"""Reading and writing image and label files (PNG, TIFF, JPEG, BMP)."""
from pathlib import Path

import numpy as np

from .errors import InputImageError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp")


def is_image_file(path):
    p = Path(path)
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(inputs):
    """Expand files and folders (not recursive) into a sorted list of image file paths.

    Files given explicitly are kept even if their suffix is unknown (reading them then
    fails with a clear error); folders contribute their image files.
    """
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.iterdir() if is_image_file(q)))
        elif p.exists():
            paths.append(p)
        else:
            raise InputImageError(f"{p}: no such file or folder")
    return paths


def read_image(path):
    """Read an image file into a numpy array (as stored: any dtype, gray or colour)."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            a = np.asarray(tifffile.imread(str(p)))
        else:
            import imageio.v3 as iio

            a = np.asarray(iio.imread(str(p)))
    except FileNotFoundError:
        raise InputImageError(f"{p}: no such file") from None
    except Exception as e:  # any decoder error means: not a readable image
        first_line = (str(e).strip().splitlines() or [""])[0]  # errors are shown as one line
        raise InputImageError(f"{p}: not a readable image ({type(e).__name__}: {first_line})") from None
    if a.size == 0:  # tifffile reads some corrupt files as an empty array (with a warning)
        raise InputImageError(f"{p}: not a readable image (no pixel data)")
    return a


def write_labels(path, labels):
    """Write a label image as a (compressed) TIFF, keeping its integer dtype."""
    import tifffile

    tifffile.imwrite(str(path), np.asarray(labels), compression="zlib")
