"""preseg's median diameter with its second pass always run at a working nucleus size D
(40 or 48 px) instead of only outside 18-70 px (shipped: 32 px). Usage, from the repository
root: python research/experiments/size-s9/refine_d.py val | train 150"""
from pathlib import Path
import sys, numpy as np, torch, json
sys.path.insert(0, ".")
torch.set_num_threads(1)
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend import load_model
from nucleaizer_backend.labels import equivalent_diameters
from nucleaizer_backend.preprocess import normalize_image
from nucleaizer_backend.size import find_nuclei, nuclei_at_scale
CPU = torch.device("cpu")
bundle = load_model(None, CPU)
split = sys.argv[1]
rows = index_rows(split)
if len(sys.argv) > 2:
    pick = np.random.default_rng(0).choice(len(rows), int(sys.argv[2]), replace=False)
    rows = [rows[i] for i in sorted(pick)]
out = []
for i, r in enumerate(rows):
    img, lab = load_pair(r)
    norm = normalize_image(img)
    true = float(np.median(equivalent_diameters(lab)))
    _, d0 = find_nuclei(bundle.preseg, norm, CPU, 0.5)
    rec = {"id": r["id"][:12], "style": r["style"], "true": true, "shipped": [float(np.median(d0)) if len(d0) else None, len(d0)]}
    if len(d0) >= 5:
        m = np.median(d0)
        for D in (40, 48):
            s = float(np.clip(D / m, 0.1, 6.0))
            _, d = nuclei_at_scale(bundle.preseg, norm, s, CPU, 0.5)
            rec[str(D)] = [float(np.median(d)) if len(d) else None, len(d)]
    out.append(rec)
    print(i, len(rows), flush=True)
Path("runs/size-s9").mkdir(parents=True, exist_ok=True)
json.dump(out, open(f"runs/size-s9/refine_d_{split}.json", "w"))
