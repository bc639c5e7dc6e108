"""Val DSB of one style's images segmented at (true median diameter x factor), shipped model:
is 40 px the best working size for that style? Usage: python diameter_factor_sweep.py he 1 1.25"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, score_rows  # noqa: E402
from nucleaizer_backend import segment_image  # noqa: E402

torch.set_num_threads(2)
style, factors = sys.argv[1], [float(x) for x in sys.argv[2:]]
rows = [r for r in index_rows("val") if r["style"] == style]
for f in factors:
    def predict(img, row, f=f):
        d = float(row["median_diameter_px"]) * f
        return segment_image(img, diameter=d, device="cpu").labels

    scores, _ = score_rows(rows, predict)
    print(f"{style} x{f}: DSB {np.mean([x.dsb for x in scores]):.4f}", flush=True)
