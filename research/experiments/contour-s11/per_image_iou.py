"""Per val image: the shipped pipeline's labels (automatic size) against the truth: matched
nuclei (IoU > 0.5), their mean IoU, median area ratio predicted / true, and the mean
boundary offset (px, original image: predicted radius minus true radius, from the areas).
Usage, from the repository root: python research/experiments/contour-s11/per_image_iou.py
Writes runs/contour-s11/per_image.json and caches the predicted labels there."""
import json, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, ".")
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend import segment_image
from nucleaizer_backend.evaluate import iou_matrix, score_image
from nucleaizer_backend.labels import equivalent_diameters

out = Path("runs/contour-s11"); out.mkdir(parents=True, exist_ok=True)
recs = []
for i, r in enumerate(index_rows("val")):
    img, truth = load_pair(r)
    f = out / f"{r['id'][:16]}.npy"
    if f.exists():
        pred = np.load(f)
    else:
        pred = segment_image(img, device="cpu").labels
        np.save(f, pred)
    iou = iou_matrix(truth, pred)  # (n_true, n_pred)
    ti, pj = np.nonzero(iou > 0.5)
    ta = np.bincount(truth.ravel())[1:]
    pa = np.bincount(pred.ravel())[1:]
    a_t, a_p = ta[ti].astype(float), pa[pj].astype(float)
    recs.append({"id": r["id"][:12], "style": r["style"],
                 "true_d": float(np.median(equivalent_diameters(truth))),
                 "n_true": int(truth.max()), "n_pred": int(pred.max()), "matched": len(ti),
                 "mean_iou": float(iou[ti, pj].mean()) if len(ti) else None,
                 "area_ratio": float(np.median(a_p / a_t)) if len(ti) else None,
                 "offset_px": float(np.median(np.sqrt(a_p / np.pi) - np.sqrt(a_t / np.pi))) if len(ti) else None,
                 "dsb": float(score_image(truth, pred).dsb)})
    print(i, recs[-1], flush=True)
json.dump(recs, open(out / "per_image.json", "w"), indent=0)
