"""Val DSB (full pipeline, shipped post-processing of the folder) of candidate model folders,
overall and per style. A candidate folder is a copy of nucleaizer_backend/weights/default with
one network file replaced. Usage: python score_candidate.py MODEL_DIR... [--true-size]"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend import segment_image  # noqa: E402
from nucleaizer_backend.evaluate import score_image  # noqa: E402

torch.set_num_threads(2)
true_size = "--true-size" in sys.argv
for model in [a for a in sys.argv[1:] if not a.startswith("--")]:
    styles, dsb = [], []
    for r in index_rows("val"):
        img, truth = load_pair(r)
        d = float(r["median_diameter_px"]) if true_size else None
        styles.append(r["style"])
        dsb.append(score_image(truth, segment_image(img, model=model, diameter=d,
                                                    device="cpu").labels).dsb)
    dsb, styles = np.array(dsb), np.array(styles)
    print(f"{model}: DSB {dsb.mean():.3f} fluo {dsb[styles == 'fluo'].mean():.3f} "
          f"he {dsb[styles == 'he'].mean():.3f}")
