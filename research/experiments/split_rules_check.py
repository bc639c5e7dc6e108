"""Training-free splits of the shipped pipeline's objects, val DSB (automatic size):
(1) watershed of each object's distance transform from its h-maxima (h px at the working
scale); (2) components of the foreground U-Net's probability above t inside an object.
Run from the repository root (about 10 minutes on the 2-core CPU):

    python research/experiments/split_rules_check.py
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend import segment_image  # noqa: E402
from nucleaizer_backend.evaluate import score_image  # noqa: E402

EIGHT = np.ones((3, 3))


def split_objects(labels, scale, h_work, min_piece_work=150):
    """Split objects whose distance transform has >= 2 h-maxima (h in working px; the
    distance map is rounded to 0.1 px, as skimage's h_maxima is unreliable on floats)."""
    out = labels.astype(np.int32)
    nxt = out.max() + 1
    h = h_work / scale
    min_piece = min_piece_work / scale ** 2
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        m = labels[sl] == i
        if m.sum() < 2 * min_piece or ndimage.label(m)[1] > 1:
            continue
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        peaks = h_maxima(np.round(d * 10).astype(np.int32), int(round(h * 10))).astype(bool)
        mk, n = ndimage.label(peaks & m, EIGHT)
        if n < 2:
            continue
        ws = watershed(-d, mk, mask=m)
        areas = np.bincount(ws.ravel())[1:]
        if (areas < min_piece).any():
            continue
        sub = out[sl]
        for k in range(2, n + 1):
            sub[ws == k] = nxt
            nxt += 1
    return out


def split_by_prob(labels, prob, scale, t, min_seed_work):
    out = labels.astype(np.int32)
    nxt, n_split = out.max() + 1, 0
    min_seed = min_seed_work / scale ** 2
    for i, sl in enumerate(ndimage.find_objects(labels), 1):
        if sl is None:
            continue
        m = labels[sl] == i
        p = prob[sl].astype(np.float32)
        seeds, n = ndimage.label((p > t) & m, EIGHT)
        if n < 2:
            continue
        areas = np.bincount(seeds.ravel())[1:]
        big = np.flatnonzero(areas >= min_seed) + 1
        if len(big) < 2:
            continue
        mk = np.zeros_like(seeds)
        for k, b in enumerate(big, 1):
            mk[seeds == b] = k
        ws = watershed(-p, mk, mask=m)
        sub = out[sl]
        for k in range(2, len(big) + 1):
            sub[ws == k] = nxt
            nxt += 1
        n_split += 1
    return out, n_split


def line(name, s, styles):
    s = np.array(s)
    print(f"{name}: DSB {s.mean():.4f} fluo {s[styles == 'fluo'].mean():.4f} "
          f"he {s[styles == 'he'].mean():.4f}", flush=True)


def main():
    torch.set_num_threads(2)
    data = []
    for r in index_rows("val"):
        img, truth = load_pair(r)
        res = segment_image(img, device="cpu", return_probability=True)
        data.append((truth, res.labels, res.probability, res.scale, r["style"]))
    styles = np.array([d[4] for d in data])
    line("shipped", [score_image(t, p).dsb for t, p, *_ in data], styles)
    for h in (1, 2, 4, 8, 16, 24):
        for mp in (100, 300):
            s = [score_image(t, split_objects(p, sc, h, mp)).dsb for t, p, _, sc, _ in data]
            line(f"distance-transform watershed, h {h}, min piece {mp}", s, styles)
    for t in (0.7, 0.8, 0.9, 0.95, 0.98):
        for ms in (50, 150, 400):
            s = [score_image(tr, split_by_prob(p, pr, sc, t, ms)[0]).dsb
                 for tr, p, pr, sc, _ in data]
            line(f"foreground U-Net components, t {t}, min seed {ms}", s, styles)


if __name__ == "__main__":
    main()
