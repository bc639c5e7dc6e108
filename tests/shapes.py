"""Hand-made label images for the tests: disks and label images built from masks."""
import numpy as np


def disk(shape, cy, cx, r):
    """(H, W) bool mask of the disk of radius ``r`` px centred at (cy, cx)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def labels_of(*masks, shape=(40, 40)):
    """Label image with mask i as object i + 1 (earlier masks win where they overlap)."""
    out = np.zeros(shape, np.int32)
    for i, m in enumerate(masks, start=1):
        out[m & (out == 0)] = i
    return out
