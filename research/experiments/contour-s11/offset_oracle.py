"""Oracle: each val image's objects grown or shrunk by that image's own median boundary
offset (per_image_iou.py; needs its cached labels): how much of the H&E loss is a per-image
outline bias. Shrinking keeps pixels deeper than the offset (Euclidean distance to the
object's outside); growing adds background pixels within the offset of the object.
Usage: python research/experiments/contour-s11/offset_oracle.py"""
import json, sys
import numpy as np
from scipy import ndimage
sys.path.insert(0, ".")
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend.evaluate import score_image


def move_outlines(labels, offset):
    if offset < 0:
        out = labels.copy()
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
            obj = labels[sl] == i
            deep = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1] > -offset
            out[sl][obj & ~deep] = 0
        return out
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    grown = labels[iy, ix]
    return np.where((labels == 0) & (dist <= offset), grown, labels)


R = {r["id"]: r for r in json.load(open("runs/contour-s11/per_image.json"))}
res = {"fluo": [[], []], "he": [[], []]}
for row in index_rows("val"):
    r = R[row["id"][:12]]
    _, truth = load_pair(row)
    pred = np.load(f"runs/contour-s11/{row['id'][:16]}.npy")
    moved = move_outlines(pred, -r["offset_px"]) if r["offset_px"] else pred
    res[r["style"]][0].append(score_image(truth, pred).dsb)
    res[r["style"]][1].append(score_image(truth, moved).dsb)
allb = res["fluo"][0] + res["he"][0]
alla = res["fluo"][1] + res["he"][1]
print(f"as predicted: {np.mean(allb):.4f} (fluo {np.mean(res['fluo'][0]):.4f}, he {np.mean(res['he'][0]):.4f})")
print(f"each image's offset removed: {np.mean(alla):.4f} (fluo {np.mean(res['fluo'][1]):.4f}, he {np.mean(res['he'][1]):.4f})")
