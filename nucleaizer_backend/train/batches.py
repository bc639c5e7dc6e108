"""Training batches: which annotated (or synthetic) image each crop comes from, and endless
batches of augmented crops with their targets, made in the training process or in worker
processes (train.augment makes each crop)."""
import numpy as np
import torch

from .augment import make_training_crop, targets_from_labels
from .data import load_dataset, read_styles


def sampling_weights(items, min_share):
    """Per-image sampling probabilities: uniform, except that colour and gray images each
    get at least ``min_share`` of the samples (the rarer style is not drowned out).
    Returns (probabilities, colour flags), both (N,)."""
    colour = np.array([it.is_colour for it in items])
    p = np.full(len(items), 1.0 / len(items))
    n_colour = int(colour.sum())
    if 0 < n_colour < len(items) and min_share > 0:
        share = float(np.clip(n_colour / len(items), min_share, 1 - min_share))
        p[colour] = share / n_colour
        p[~colour] = (1 - share) / (len(items) - n_colour)
    return p, colour


def training_items(cfg):
    """The annotated training images of ``cfg.data`` (only ``cfg.styles`` when given)."""
    items = [it for it in load_dataset(cfg.data) if np.isfinite(it.diameter)]
    if cfg.styles:
        styles = read_styles(cfg.data)
        if not styles:
            raise ValueError(f"--styles needs an index.csv with a style column in or above "
                             f"{cfg.data}")
        items = [it for it in items if styles.get(it.name) in cfg.styles]
        if not items:
            raise ValueError(f"no training image of style {', '.join(cfg.styles)} in {cfg.data}")
    return items


def pick_item(items, weights, synthetic, synthetic_share, rng):
    """One training image: synthetic with probability ``synthetic_share`` (when there are
    synthetic images), else an annotated one drawn with ``weights``."""
    if synthetic and rng.random() < synthetic_share:
        return synthetic[rng.integers(len(synthetic))]
    return items[rng.choice(len(items), p=weights)]


class CropStream(torch.utils.data.IterableDataset):
    """Endless training batches (image tensors, targets) made in DataLoader worker processes,
    so that a GPU is not kept waiting by the CPU-side augmentation (about 18 ms per 256 px
    crop on one core). Worker ``w`` draws from numpy's generator seeded with (seed, the step
    the stream starts at, w): a run is reproducible for a given seed and worker count, and a
    resumed run draws new crops rather than replaying the first ones. (With ``workers`` = 0
    the crops come from the run's own generator instead, saved in every checkpoint, so a
    resumed run continues exactly where an uninterrupted one would.)"""

    def __init__(self, cfg, items, weights, synthetic, spec, start_step):
        self.cfg, self.items, self.weights = cfg, items, weights
        self.synthetic, self.spec, self.start_step = synthetic, spec, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.cfg.seed, self.start_step, info.id if info else 0])
        return batch_stream(self.cfg, self.items, self.weights, self.synthetic, self.spec, rng)


def batch_stream(cfg, items, weights, synthetic, spec, rng):
    """Endless training batches (image tensors, targets) of ``cfg.batch_size`` random crops."""
    while True:
        crops = [make_training_crop(pick_item(items, weights, synthetic, cfg.synthetic_share,
                                              rng), spec, rng) for _ in range(cfg.batch_size)]
        yield to_targets(crops, cfg.kind, spec.min_area)


def crop_batches(cfg, items, weights, synthetic, spec, rng, start_step):
    """Iterator of training batches: from ``cfg.workers`` processes, or made here with ``rng``."""
    if cfg.workers > 0:
        stream = CropStream(cfg, items, weights, synthetic, spec, start_step)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                                prefetch_factor=4))
    return batch_stream(cfg, items, weights, synthetic, spec, rng)


def to_targets(crops, kind, min_area):
    """Training crops [(image (3, S, S), labels (S, S))] -> (image tensors, targets): boxes,
    labels and instance masks for Mask R-CNN; a foreground mask for the U-Net."""
    images, targets = [], []
    for img, lab in crops:
        images.append(torch.from_numpy(img))
        if kind == "unet":
            targets.append({"foreground": torch.from_numpy((lab > 0).astype(np.float32))})
            continue
        boxes, masks = targets_from_labels(lab, min_area)
        targets.append({
            "boxes": torch.from_numpy(boxes),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        })
    return images, targets
