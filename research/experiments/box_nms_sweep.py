"""Val DSB (automatic size, full pipeline) of a model folder with the main network's box NMS
IoU threshold set to each value given (shipped: 0.4).
Usage: python box_nms_sweep.py MODEL_DIR 0.4 0.5 0.6"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import dsb_by_style, index_rows, score_rows, segmenter  # noqa: E402
from nucleaizer_backend.models.io import load_model  # noqa: E402

torch.set_num_threads(2)
model, values = sys.argv[1], [float(x) for x in sys.argv[2:]]
rows = index_rows("val")
bundle = load_model(model, "cpu")  # the cached bundle segment_image will use
for t in values:
    bundle.main.roi_heads.nms_thresh = t
    scores, _ = score_rows(rows, segmenter(model))
    s = dsb_by_style(rows, scores)
    print(f"box NMS {t}: DSB {np.mean([x.dsb for x in scores]):.4f} fluo {s['dsb_fluo']:.4f} "
          f"he {s['dsb_he']:.4f}", flush=True)
