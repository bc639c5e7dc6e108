"""Soft fusion of Mask R-CNN mask probabilities and the U-Net foreground probability (series
10 experiment). Each detection's pasted mask probability p_m (in its box grown by a margin)
is mixed with the U-Net's p_u: q = w * p_m + (1 - w) * p_u, and the object is the pixels with
q > t (painted most confident first on free pixels, as instances_to_labels does). Then the
shipped rules; optionally the shipped U-Net contour correction; the p6 rule.
Usage: python fusion.py CACHE.pkl"""
import itertools
import pickle
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from nucleaizer_backend.evaluate import score_image  # noqa: E402
from nucleaizer_backend.labels import MIN_VISIBLE_FRACTION, label_dtype, paste_mask  # noqa: E402
from nucleaizer_backend.refine import (PostprocessParams, apply_rules, apply_unet,  # noqa: E402
                                       remove_unconfident)

SHIPPED = PostprocessParams(p1=1, p2=150, p3=0.7, p4=2, p5=1, p6=0.8, confidence=0.8)


def paint(dets, prob, w, t, margin_working, confidence):
    """Labels (original geometry) of the detections scoring >= confidence, each the pixels of
    its grown box where w * mask + (1 - w) * unet > t."""
    keep = dets.scores >= confidence
    boxes = dets.boxes[keep] / dets.scale
    masks, scores = dets.masks[keep], dets.scores[keep]
    shape = dets.shape
    labels = np.zeros(shape, np.uint32)
    kept = []
    pad = margin_working / dets.scale
    for i in np.argsort(-scores, kind="stable"):
        x0, y0, x1, y1 = boxes[i]
        y0p, x0p, pm = paste_mask(masks[i], boxes[i], shape)
        if pm.size == 0:
            continue
        # the grown region (integer px) and the mask probability placed inside it
        gy0, gx0 = max(int(np.floor(y0 - pad)), 0), max(int(np.floor(x0 - pad)), 0)
        gy1, gx1 = min(int(np.ceil(y1 + pad)), shape[0]), min(int(np.ceil(x1 + pad)), shape[1])
        full = np.zeros((gy1 - gy0, gx1 - gx0), np.float32)
        h, w_ = pm.shape
        full[y0p - gy0:y0p - gy0 + h, x0p - gx0:x0p - gx0 + w_] = pm
        q = w * full + (1 - w) * prob[gy0:gy1, gx0:gx1]
        fg = q > t
        if w < 1:  # stay with the part connected to the mask's own core
            core = full > 0.5
            parts, n = ndimage.label(fg)
            if n > 1:
                ids = np.unique(parts[core & fg])
                fg = np.isin(parts, ids[ids > 0]) if len(ids) else fg & core
        area = int(fg.sum())
        if area == 0:
            continue
        region = labels[gy0:gy1, gx0:gx1]
        free = fg & (region == 0)
        n_free = int(free.sum())
        if n_free < max(1, MIN_VISIBLE_FRACTION * area):
            continue
        parts, n_parts = ndimage.label(free)
        if n_parts > 1:
            sizes = np.bincount(parts.ravel())[1:]
            free = parts == (1 + int(np.argmax(sizes)))
        kept.append(float(scores[i]))
        region[free] = len(kept)
    return labels.astype(label_dtype(len(kept))), np.asarray(kept, np.float32)


def run(cache, w, t, margin, params=SHIPPED, contour=True):
    dsb = {"all": [], "fluo": [], "he": []}
    for c in cache:
        labels, scores = paint(c["dets"], c["prob"], w, t, margin, params.confidence)
        labels, scores = apply_rules(labels, scores, c["scale"], params)
        if contour:
            labels, scores = apply_unet(labels, scores, c["prob"], c["scale"], params)
        else:
            labels, scores = remove_unconfident(labels, scores, c["prob"], params.p6)
        s = score_image(c["truth"], labels).dsb
        dsb["all"].append(s)
        dsb[c["style"]].append(s)
    return {k: float(np.mean(v)) for k, v in dsb.items()}


if __name__ == "__main__":
    cache = pickle.load(open(sys.argv[1], "rb"))
    fmt = lambda r: f"{r['all']:.4f} fluo {r['fluo']:.4f} he {r['he']:.4f}"  # noqa: E731
    print("shipped (w 1, t 0.5, contour correction):", fmt(run(cache, 1.0, 0.5, 0)), flush=True)
    for t in (0.4, 0.45, 0.55, 0.6):
        print(f"mask only t {t}, contour correction:", fmt(run(cache, 1.0, t, 0)), flush=True)
    for w, t in list(itertools.product((0.3, 0.5, 0.7), (0.4, 0.5, 0.6))) + [
            (0.5, 0.65), (0.5, 0.7), (0.4, 0.65), (0.6, 0.65), (0.6, 0.7), (0.5, 0.75)]:
        for contour in (False, True):
            r = run(cache, w, t, 4, contour=contour)
            print(f"w {w} t {t} margin 4 contour {contour}:", fmt(r), flush=True)
