"""Images and their label images, paired by name: the one rule of the project (training
data, ``nucleaizer evaluate``, ``tune`` and ``adapt --annotations``).

A label image belongs to the image of the same name once a label suffix (LABEL_SUFFIXES,
any case) is taken off its name: ``a.png`` <- ``a.tif``, ``a_mask.tif``, ``a_labels.png``,
``a_cp_masks.png`` (Cellpose's). Label images lie in a label subfolder (LABEL_DIRS:
``labels/``, ``masks/`` ...) or in the folder itself; where one name has several, one with
a suffix wins over one without (an image and its mask side by side: ``a.png``,
``a_mask.png``), else the first in sorted order (and the first label subfolder).
"""
from pathlib import Path

from .errors import InputImageError, NucleaizerError
from .imageio_utils import is_image_file

LABEL_DIRS = ("labels", "masks", "label", "mask", "annotations", "ground_truth", "gt")
# tried in this order: _cp_masks before _masks (a_cp_masks -> a, not a_cp)
LABEL_SUFFIXES = ("_labels", "_label", "_cp_masks", "_masks", "_mask", "_seg", "_gt")


def image_name(label_stem):
    """The image name a label file's stem refers to: ``a_mask`` -> ``a``."""
    for suffix in LABEL_SUFFIXES:
        if label_stem.lower().endswith(suffix):
            return label_stem[: -len(suffix)]
    return label_stem


def label_folders(folder):
    """The label subfolders of ``folder`` (LABEL_DIRS order), or [folder] when it has none."""
    folder = Path(folder)
    return [folder / d for d in LABEL_DIRS if (folder / d).is_dir()] or [folder]


def label_files(folder):
    """{image name: label file} of the label images of ``folder`` (see the module doc)."""
    if not Path(folder).is_dir():
        raise InputImageError(f"{folder}: no such folder")
    found = {}
    for d in label_folders(folder):
        in_folder = {}
        for p in sorted(q for q in d.iterdir() if is_image_file(q)):
            name = image_name(p.stem)
            if name not in in_folder or (in_folder[name].stem == name and p.stem != name):
                in_folder[name] = p
        for name, p in in_folder.items():
            found.setdefault(name, p)
    return found


def pair_images(images, labels):
    """Pair image files with label files {image name: path} (label_files).

    Returns ([(image path, label path)] in the order of ``images``, [image paths without a
    label image]); a file that is itself one of the label files is neither."""
    used = set(labels.values())
    pairs, unmatched = [], []
    for p in map(Path, images):
        if p in used:
            continue
        if p.stem in labels:
            pairs.append((p, labels[p.stem]))
        else:
            unmatched.append(p)
    return pairs, unmatched


def find_pairs(folder):
    """(image path, label path) pairs of a training data folder, sorted by image name:
    ``DIR/images/*`` with label subfolders (``DIR/labels/*`` ...), or images with their
    suffixed label images beside them (``DIR/a.png``, ``DIR/a_mask.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NucleaizerError(f"{folder}: training data folder not found")
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    images = sorted(p for p in image_dir.iterdir() if is_image_file(p))
    pairs, _ = pair_images(images, label_files(folder))
    if not pairs:
        raise NucleaizerError(
            f"{folder}: no image/label pairs found (expected images/ with labels/ or masks/, "
            "or image files with *_mask / *_labels files beside them)"
        )
    return pairs
