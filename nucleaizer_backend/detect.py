"""Detection at the working scale: Mask R-CNN over the tiles of the rescaled image, merged,
painted as labels in the original geometry (coordinates: geometry.py).
"""
from dataclasses import dataclass

import numpy as np
import torch

from .geometry import DEFAULT_OVERLAP, owned_ranges, rescale_image, tiling
from .labels import instances_to_labels
from .models.maskrcnn import predict_raw

DEFAULT_TILE = 2048  # px at the working scale (a 520x696 image at 2.5x fits in one tile)


@dataclass
class Detections:
    """Detections at the working scale: boxes (N, 4) x0 y0 x1 y1, scores (N,), masks (N, M, M)."""

    boxes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    scale: float
    shape: tuple  # original (H, W)

    def __len__(self):
        return len(self.scores)

    def to_labels(self, confidence=0.5, min_area=1, with_probability=False):
        keep = self.scores >= confidence
        return instances_to_labels(self.boxes[keep], self.masks[keep], self.scores[keep],
                                   self.shape, self.scale, min_area, with_probability)


def detect(model, image, scale, device, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP,
           batch_size=1, min_score=0.05):
    """Run ``model`` on a normalised (H, W, 3) image rescaled by ``scale``.

    Images larger than ``tile`` px (working scale) are cut into overlapping tiles; a detection
    belongs to the tile that owns its box centre, so nuclei cut by one tile's border are taken
    whole from the neighbour and none is found twice. Detections scoring below ``min_score``
    are not kept.
    """
    x = rescale_image(image, scale, device)
    _, hs, ws = x.shape
    (ys, th), (xs, tw) = tiling(hs, tile, overlap), tiling(ws, tile, overlap)
    own_y, own_x = owned_ranges(ys, th, hs), owned_ranges(xs, tw, ws)
    jobs = [(y0, x0, oy, ox) for y0, oy in zip(ys, own_y) for x0, ox in zip(xs, own_x)]
    boxes, scores, masks = [], [], []
    use_amp = device.type == "cuda"
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        crops = [x[:, y0:y0 + th, x0:x0 + tw] for y0, x0, _, _ in chunk]
        with torch.autocast(device.type, enabled=use_amp):
            outs = predict_raw(model, crops, min_score)
        for (y0, x0, (ly, hy), (lx, hx)), out in zip(chunk, outs):
            b = out["boxes"].float().cpu().numpy() + [x0, y0, x0, y0]
            cy, cx = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
            keep = (cy >= ly) & (cy < hy) & (cx >= lx) & (cx < hx)
            boxes.append(b[keep])
            scores.append(out["scores"].float().cpu().numpy()[keep])
            masks.append(out["masks"].float().cpu().numpy()[keep])
    m = masks[0].shape[-1] if masks and masks[0].ndim == 3 else 28
    return Detections(
        boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        masks=np.concatenate(masks) if masks else np.zeros((0, m, m), np.float32),
        scale=float(scale),
        shape=tuple(image.shape[:2]),
    )
