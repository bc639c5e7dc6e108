"""Post-processing tuned separately for fluorescence and H&E val images (confidence searched
down to 0.1), against the shipped single set: in-sample and 2-fold cross-validated within
each style. Usage: python per_style_postprocess.py (about 15 minutes on 2 CPU cores)"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend.models.io import load_model  # noqa: E402
from nucleaizer_backend.segment import postprocess_params  # noqa: E402
from nucleaizer_backend.tune import GRID, cache_image, evaluate_params, search  # noqa: E402

torch.set_num_threads(2)
cpu = torch.device("cpu")
rows = sorted(index_rows("val"), key=lambda r: (r["style"], r["id"]))
bundle = load_model(None, cpu)
cached = [cache_image(bundle, r["id"], *load_pair(r), cpu, 0.1) for r in rows]
style = {r["id"]: r["style"] for r in rows}
shipped = postprocess_params(bundle)
grid = dict(GRID, confidence=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
for st in ("fluo", "he"):
    images = [c for c in cached if style[c.name] == st]
    full = search(images, shipped, grid=grid)
    folds = [[c for i, c in enumerate(images) if i % 2 == k] for k in (0, 1)]
    held_out = []
    for k in (0, 1):
        params = search(folds[1 - k], shipped, grid=grid).params
        held_out += [evaluate_params([c], params) for c in folds[k]]
    print(f"{st}: shipped values {evaluate_params(images, shipped):.4f}, tuned on this style "
          f"{full.dsb:.4f} in-sample, {np.mean(held_out):.4f} 2-fold CV "
          f"({full.params.to_dict()})", flush=True)
