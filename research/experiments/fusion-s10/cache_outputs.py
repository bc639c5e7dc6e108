"""Cache the shipped networks' raw outputs on the val images (automatic size, as shipped):
Mask R-CNN detections (boxes, 28x28 masks, scores >= 0.5), scale, U-Net probability, truth.
Usage (repository root): python research/experiments/fusion-s10/cache_outputs.py OUT.pkl"""
import pickle
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend.detect import detect  # noqa: E402
from nucleaizer_backend.device import resolve_device  # noqa: E402
from nucleaizer_backend.foreground import foreground_probability  # noqa: E402
from nucleaizer_backend.geometry import choose_scale  # noqa: E402
from nucleaizer_backend.inference import preseg_size  # noqa: E402
from nucleaizer_backend.models.io import load_model  # noqa: E402
from nucleaizer_backend.preprocess import normalize_image  # noqa: E402

torch.set_num_threads(2)
device = resolve_device("cpu")
bundle = load_model(None, device)
out = []
rows = index_rows("val")
for i, row in enumerate(rows):
    image, truth = load_pair(row)
    norm = normalize_image(image)
    d = preseg_size(bundle, norm).median_diameter
    scale, _ = choose_scale(float(d), bundle.working_diameter, norm.shape[:2])
    dets = detect(bundle.main, norm, scale, device, min_score=0.5)
    prob = foreground_probability(bundle.unet, norm, scale, device)
    out.append(dict(id=row["id"], style=row.get("style", ""), dets=dets, prob=prob,
                    scale=scale, truth=truth))
    print(i + 1, len(rows), row["id"], len(dets), flush=True)
with open(sys.argv[1], "wb") as f:
    pickle.dump(out, f)
