"""Reading and writing image and label files (PNG, TIFF, JPEG, BMP)."""
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import InputImageError, OutputFileError

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
    """Write a label image as a (compressed) TIFF, keeping its integer dtype; OutputFileError
    (one line naming the file) when it cannot be written (a folder of that name, no
    permission, disk full)."""
    import tifffile

    with output_file(path, "labels"):
        tifffile.imwrite(str(path), np.asarray(labels), compression="zlib")


@contextmanager
def output_file(path, what):
    """Turn an OSError while writing ``path`` (the ``what``, e.g. "labels") into an
    OutputFileError naming the file and the problem."""
    try:
        yield Path(path)
    except OSError as e:
        problem = "a folder of that name exists" if Path(path).is_dir() else (
            e.strerror or str(e))
        raise OutputFileError(f"{path}: cannot write the {what} ({problem})") from None


def make_output_folder(path):
    """Create the folder ``path`` (and its parents) for results; OutputFileError naming it
    when it cannot be (a file in the way, no permission)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = "a file of that name exists" if out.exists() else (e.strerror or str(e))
        raise OutputFileError(f"{out}: cannot create the output folder ({problem})") from None
    return out


def output_stems(paths):
    """The output file stem of each input path, in order: its own stem where that is unique
    among ``paths`` (compared case-insensitively, as some file systems do), else the stem
    and extension ("a.png", "a.tif" -> "a_png", "a_tif"), numbered from _2 while still taken
    (the same name in two folders). Depends only on ``paths`` and their order."""
    paths = [Path(p) for p in paths]
    counts = {}
    for p in paths:
        counts[p.stem.lower()] = counts.get(p.stem.lower(), 0) + 1
    taken = {p.stem.lower() for p in paths if counts[p.stem.lower()] == 1}
    stems = []
    for p in paths:
        if counts[p.stem.lower()] == 1:
            stems.append(p.stem)
            continue
        base = f"{p.stem}_{p.suffix.lstrip('.') or 'file'}"
        stem, n = base, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems
