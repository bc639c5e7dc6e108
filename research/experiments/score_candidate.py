"""Val DSB (full pipeline, shipped post-processing of the folder) of candidate model folders,
overall and per style. A candidate folder is a copy of nucleaizer_backend/weights/default with
one network file replaced. Usage: python score_candidate.py MODEL_DIR... [--true-size]"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import dsb_by_style, index_rows, score_rows, segmenter  # noqa: E402

torch.set_num_threads(2)
true_size = "--true-size" in sys.argv
rows = index_rows("val")
for model in [a for a in sys.argv[1:] if not a.startswith("--")]:
    scores, _ = score_rows(rows, segmenter(model, true_size))
    s = dsb_by_style(rows, scores)
    print(f"{model}: DSB {np.mean([x.dsb for x in scores]):.3f} fluo {s['dsb_fluo']:.3f} "
          f"he {s['dsb_he']:.3f}")
