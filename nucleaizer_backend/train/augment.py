"""Training crops and augmentations (docs/METHOD.md section 3).

A crop is sampled with one affine map from the source image: scale (so nuclei reach the
model's training size), rotation by any angle, flip and translation together, so an image is
resampled once. Intensity augmentations follow: optional H&E stain jitter (colour images),
colour-channel swap, gray conversion, inversion, histogram stretching/gamma, equalisation, blur
and additive noise.
"""
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


WORKING_DIAMETER = 40.0  # px: the main network's nucleus size (docs/METHOD.md section 2)
PRESEG_RANGE = (12.0, 100.0)  # px: nucleus sizes preseg is trained on


@dataclass
class CropSpec:
    """How crops are sampled. Diameters in px at the working scale."""

    size: int = 256
    target_diameter: float = 40.0
    # main model: target x log-uniform jitter; preseg: log-uniform over [min, max]
    jitter: float = 1.3
    scale_range: tuple = None  # (min_d, max_d) px for preseg scale augmentation
    min_area: int = 12  # px at the working scale: smaller (edge) pieces are not targets
    stain_jitter: float = 0.0  # HED stain jitter strength for colour images (0 = off)


def sample_scale(diameter, spec, rng):
    """Scale factor that brings nuclei of ``diameter`` px to this crop's training size."""
    if spec.scale_range:
        lo, hi = spec.scale_range
        target = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        target = spec.target_diameter * math.exp(rng.uniform(-1, 1) * math.log(spec.jitter))
    return target / max(diameter, 1.0)


def affine_crop(image, labels, scale, spec, rng, any_angle=True):
    """Resample a (size, size) crop of image (H, W, C) and labels (H, W) at ``scale``."""
    n = spec.size
    theta = rng.uniform(0, 2 * math.pi) if any_angle else rng.integers(4) * math.pi / 2
    c, s = math.cos(theta), math.sin(theta)
    m = np.array([[c, -s], [s, c]]) / scale
    if rng.random() < 0.5:
        m = m @ np.diag([1.0, -1.0])
    h, w = labels.shape
    # centre: anywhere inside the image (crops may hang over the border; padded with 0)
    centre_in = np.array([rng.uniform(0, h), rng.uniform(0, w)])
    centre_out = np.array([n / 2.0, n / 2.0])
    offset = centre_in - m @ centre_out
    # read only the window the crop can touch
    corners = np.array([[0, 0], [0, n], [n, 0], [n, n]], float) @ m.T + offset
    y0, x0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    y1, x1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, [h, w])
    if y1 <= y0 or x1 <= x0:
        return np.zeros((n, n, image.shape[2]), np.float32), np.zeros((n, n), np.int32)
    win = image[y0:y1, x0:x1].astype(np.float32)
    lab = labels[y0:y1, x0:x1]
    off = offset - [y0, x0]
    out = np.empty((n, n, win.shape[2]), np.float32)
    for ch in range(win.shape[2]):
        ndimage.affine_transform(win[..., ch], m, off, output_shape=(n, n), output=out[..., ch],
                                 order=1, mode="constant", cval=0.0)
    lab_out = ndimage.affine_transform(lab, m, off, output_shape=(n, n), order=0,
                                       mode="constant", cval=0)
    return out, lab_out


def jitter_stains(img, strength, rng):
    """HED stain jitter (Tellez et al. 2018) of a (H, W, 3) normalised image (nuclei bright,
    so a brightfield stain image is inverted): its optical density is unmixed into
    haematoxylin, eosin and DAB amounts (Ruifrok-Johnston vectors), each scaled by
    U(1 - s, 1 + s) and shifted by U(-s, s) x its mean amount, and mixed back; s = 0 gives the
    image back. ``strength`` s: 0.05 mild, 0.2 strong."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    od = -np.log(np.clip(1.0 - img.astype(np.float64), 1e-3, 1.0))
    hed = od @ hed_from_rgb
    scale = rng.uniform(1 - strength, 1 + strength, 3)
    shift = rng.uniform(-strength, strength, 3) * np.abs(hed).mean(axis=(0, 1))
    rgb = np.exp(-np.maximum((hed * scale + shift) @ rgb_from_hed, 0.0))
    return np.clip(1.0 - rgb, 0.0, 1.0).astype(np.float32)


def augment_intensity(img, rng):
    """Random photometric changes of a (H, W, 3) float image in [0, 1] (nuclei bright)."""
    if rng.random() < 0.5:
        img = img[..., rng.permutation(3)]
    if rng.random() < 0.1:
        img = np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)
    if rng.random() < 0.1:
        img = 1.0 - img
    if rng.random() < 0.5:
        img = np.power(np.clip(img, 0, 1), math.exp(rng.uniform(-0.7, 0.7)))
    if rng.random() < 0.3:  # histogram stretch to random percentiles
        lo, hi = np.percentile(img, [rng.uniform(0, 5), rng.uniform(95, 100)])
        if hi > lo:
            img = (img - lo) / (hi - lo)
    if rng.random() < 0.05:  # histogram equalisation
        flat = img.mean(axis=-1)
        ranks = np.argsort(np.argsort(flat.ravel())).reshape(flat.shape) / flat.size
        img = img * (ranks / np.maximum(flat, 1e-3))[..., None]
    if rng.random() < 0.3:
        img = img * rng.uniform(0.4, 1.2) + rng.uniform(-0.1, 0.1)
    if rng.random() < 0.2:
        sigma = rng.uniform(0.5, 1.5)
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(0.005, 0.05), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def targets_from_labels(labels, min_area):
    """torchvision detection targets from a label crop: boxes (N, 4) x0 y0 x1 y1, masks (N, H, W)."""
    objects = ndimage.find_objects(labels)
    boxes, masks = [], []
    for i, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        if m.sum() < min_area:
            continue
        full = np.zeros(labels.shape, np.uint8)
        full[sl][m] = 1
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        masks.append(full)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,) + labels.shape, np.uint8)
    return np.asarray(boxes, np.float32), np.stack(masks)


def make_training_crop(item, spec, rng):
    """One augmented crop of a LabeledImage -> (image (3, S, S) float32, labels (S, S) int32
    numbered 1..N)."""
    from ..labels import relabel_sequential

    scale = sample_scale(item.diameter, spec, rng)
    img, lab = affine_crop(item.image, item.labels, scale, spec, rng,
                           any_angle=rng.random() < 0.5)
    if spec.stain_jitter > 0 and item.is_colour:
        img = jitter_stains(img, spec.stain_jitter, rng)
    img = augment_intensity(img, rng)
    return img.transpose(2, 0, 1).copy(), relabel_sequential(lab).astype(np.int32)
