"""Annotated training data: folders of image + instance-label pairs.

Layouts found automatically (label files may carry a suffix such as ``_mask`` or ``_labels``):
- ``DIR/images/*`` with ``DIR/labels/*`` or ``DIR/masks/*`` (the dsb2018 layout);
- ``DIR/*`` images with ``DIR/*_mask*`` / ``*_label*`` files beside them.
A binary mask (one value besides 0) is split into objects by connected components.
"""
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import NucleaizerError
from ..imageio_utils import is_image_file, read_image
from ..labels import equivalent_diameters, relabel_sequential
from ..preprocess import normalize_image

LABEL_DIRS = ("labels", "masks", "label", "mask", "annotations", "ground_truth", "gt")
LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask", "_cp_masks", "_seg", "_gt")


@dataclass
class LabeledImage:
    """One training/validation image: normalised (H, W, 3) float16, labels (H, W) int32."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    diameter: float  # median equivalent diameter of the annotated nuclei, px

    @property
    def n_objects(self):
        return int(self.labels.max())

    @cached_property
    def is_colour(self):
        """True for an image whose channels differ (stained brightfield), False for gray;
        decided once on the whole image (a crop of a stained image may look gray)."""
        img = self.image[::4, ::4].astype(np.float32)
        return float(np.abs(img - img.mean(axis=-1, keepdims=True)).mean()) > 0.02


def _strip_label_suffix(stem):
    for s in LABEL_SUFFIXES:
        if stem.lower().endswith(s):
            return stem[: -len(s)]
    return stem


def find_pairs(folder):
    """(image path, label path) pairs in ``folder``, sorted by image name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NucleaizerError(f"{folder}: training data folder not found")
    image_dir = folder / "images" if (folder / "images").is_dir() else folder
    label_dirs = [folder / d for d in LABEL_DIRS if (folder / d).is_dir()]
    label_files = {}
    for d in label_dirs or [folder]:
        for p in sorted(d.iterdir()):
            if is_image_file(p) and (label_dirs or _strip_label_suffix(p.stem) != p.stem):
                label_files.setdefault(_strip_label_suffix(p.stem), p)
    pairs = []
    for p in sorted(image_dir.iterdir()):
        if not is_image_file(p) or p in label_files.values():
            continue
        if p.stem in label_files:
            pairs.append((p, label_files[p.stem]))
    if not pairs:
        raise NucleaizerError(
            f"{folder}: no image/label pairs found (expected images/ with labels/ or masks/, "
            "or image files with *_mask / *_labels files beside them)"
        )
    return pairs


def read_labels(path):
    """Instance labels from a file; a binary mask is split by connected components."""
    lab = np.asarray(read_image(path))
    if lab.ndim == 3:
        lab = lab[..., 0]
    values = np.unique(lab)
    if len(values) <= 2:
        lab, _ = ndimage.label(lab > 0)
    return relabel_sequential(lab).astype(np.int32)


def load_labeled_image(image_path, label_path):
    labels = read_labels(label_path)
    image = normalize_image(read_image(image_path))
    if image.shape[:2] != labels.shape:
        raise NucleaizerError(f"{image_path}: image {image.shape[:2]} and labels {labels.shape} differ")
    d = equivalent_diameters(labels)
    return LabeledImage(Path(image_path).stem, image.astype(np.float16), labels,
                        float(np.median(d)) if len(d) else float("nan"))


def load_dataset(folder, limit=None):
    """All labelled images of ``folder`` (see module doc), normalised once."""
    pairs = find_pairs(folder)[:limit]
    return [load_labeled_image(i, l) for i, l in pairs]
