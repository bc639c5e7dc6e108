"""Cache, per image, preseg's detections of every size-estimate pass: the first pass (native
scale, or the search scale that finds most nuclei, as in the shipped find_nuclei) and second
passes at working nucleus sizes D = 32 / 40 / 48 px (scale D / median of the first pass).
For each pass: equivalent diameter (px, original) and solidity of every detection.

Usage, from the repository root: python research/experiments/size-s11/cache_passes.py
SPLIT [PART NPARTS] (one torch thread; PART/NPARTS split the images between processes).
Writes runs/size-s11/passes_SPLIT_PART.json."""
import json, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, ".")
torch.set_num_threads(1)
from skimage.measure import regionprops_table
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend import load_model
from nucleaizer_backend.labels import equivalent_diameters
from nucleaizer_backend.preprocess import normalize_image
from nucleaizer_backend.size import MIN_NUCLEI, SEARCH_SCALES, nuclei_at_scale

CPU = torch.device("cpu")
split = sys.argv[1]
part, nparts = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (0, 1)
bundle = load_model(None, CPU)
rows = index_rows(split)[part::nparts]
out = Path("runs/size-s11"); out.mkdir(parents=True, exist_ok=True)
dest = out / f"passes_{split}_{part}.json"
done = json.load(open(dest)) if dest.exists() else []
seen = {r["id"] for r in done}


def measure(labels):
    if labels.max() == 0:
        return {"d": [], "sol": []}
    d = equivalent_diameters(labels)
    sol = regionprops_table(labels, properties=("solidity",))["solidity"]
    return {"d": [float(x) for x in d], "sol": [float(x) for x in sol]}


for i, r in enumerate(rows):
    if r["id"] in seen:
        continue
    img, lab = load_pair(r)
    norm = normalize_image(img)
    rec = {"id": r["id"], "style": r["style"], "true": float(np.median(equivalent_diameters(lab)))}
    scale = 1.0
    labels, d = nuclei_at_scale(bundle.preseg, norm, scale, CPU, 0.5)
    if len(d) < MIN_NUCLEI:
        for s in SEARCH_SCALES:
            found = nuclei_at_scale(bundle.preseg, norm, s, CPU, 0.5)
            if len(found[1]) > len(d):
                scale, (labels, d) = s, found
    rec["first"] = dict(measure(labels), scale=scale)
    if len(d) >= MIN_NUCLEI:
        for D in (32, 40, 48):
            s = float(np.clip(D / np.median(d), 0.1, 6.0))
            rec[str(D)] = dict(measure(nuclei_at_scale(bundle.preseg, norm, s, CPU, 0.5)[0]),
                               scale=s)
    done.append(rec)
    if len(done) % 10 == 0 or i == len(rows) - 1:
        json.dump(done, open(dest, "w"))
    print(split, part, i, len(rows), flush=True)
json.dump(done, open(dest, "w"))
