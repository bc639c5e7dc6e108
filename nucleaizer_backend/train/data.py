"""Annotated training data: folders of image + instance-label pairs.

Layouts found automatically (pairing.find_pairs; label files may carry a suffix such as
``_mask`` or ``_labels``):
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
from ..imageio_utils import read_image
from ..labels import equivalent_diameters, relabel_sequential
from ..pairing import find_pairs
from ..preprocess import normalize_image


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


def read_styles(folder):
    """{image id: style} from an ``index.csv`` (columns id, style) in or above ``folder``."""
    for candidate in (Path(folder) / "index.csv", Path(folder).parent / "index.csv"):
        if candidate.is_file():
            import csv

            with open(candidate) as f:
                return {r["id"]: r["style"] for r in csv.DictReader(f) if "style" in r}
    return {}
