"""H&E val DSB of the style benchmark's models with and without the U-Net contour correction
(research/experiments/style-bench-unet-confound.md). Run from the repository root."""
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nucleaizer_backend import segment_image
from nucleaizer_backend.evaluate import score_image
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.train.data import read_labels
from bench.style_adaptation import rows, image_path, label_path
W = ROOT / "runs" / "style-bench"
models = {k: W/"models"/k for k in ("base", "upper_bound")} | {"autostyle": W/"autostyle"}
res = {k: {"unet": [], "rules": [], "none": []} for k in models}
for r in rows("val", "he"):
    lab = read_labels(label_path(r)); img = read_image(image_path(r))
    for name, m in models.items():
        for mode, kw in {"unet": {}, "rules": {"use_unet": False}, "none": {"refine": False}}.items():
            s = segment_image(img, model=m, device="cpu", **kw)
            res[name][mode].append((score_image(lab, s.labels).dsb, int(s.labels.max())))
    print(r["id"][:8], {n: {k: v[-1] for k, v in d.items()} for n, d in res.items()}, flush=True)
for n, d in res.items():
    print(n, {k: round(float(np.mean([x[0] for x in v])), 3) for k, v in d.items()})
