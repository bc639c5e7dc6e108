"""Detection scores re-weighted by mask quality (series 10 experiment): each detection's
score times the mean of its own mask probability over its mask (> 0.5) raised to a power a,
then the confidence threshold applied to the new score; shipped rules and U-Net afterwards.
Usage: python rescore.py CACHE.pkl"""
import copy
import pickle
import sys

import numpy as np

from fusion import SHIPPED, run


def mask_quality(masks):
    fg = masks > 0.5
    return np.where(fg.any(axis=(1, 2)),
                    (masks * fg).sum(axis=(1, 2)) / np.maximum(fg.sum(axis=(1, 2)), 1), 0)


if __name__ == "__main__":
    cache = pickle.load(open(sys.argv[1], "rb"))
    quality = [mask_quality(c["dets"].masks) for c in cache]
    for a in (1.0, 2.0):
        for conf in (0.6, 0.65, 0.7, 0.75, 0.8):
            rescored = []
            for c, q in zip(cache, quality):
                c2 = dict(c)
                c2["dets"] = copy.copy(c["dets"])
                c2["dets"].scores = c["dets"].scores * q ** a
                rescored.append(c2)
            params = copy.copy(SHIPPED)
            params.confidence = conf
            r = run(rescored, 1.0, 0.5, 0, params=params)
            print(f"a {a} confidence {conf}:", {k: round(v, 4) for k, v in r.items()}, flush=True)
