"""Val DSB (automatic size, full pipeline) of a model folder when the U-Net's foreground
probability is averaged over flips of the image (1 + 3 flips, or the 8 dihedral versions).
Usage: python unet_flip_tta.py [MODEL_DIR] [4|8]"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import nucleaizer_backend.segment as segment_module  # noqa: E402
from bench.run_benchmarks import dsb_by_style, index_rows, score_rows, segmenter  # noqa: E402
from nucleaizer_backend.refine import foreground_probability  # noqa: E402

torch.set_num_threads(2)
model = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "nucleaizer_backend/weights/default")
n_versions = int(sys.argv[2]) if len(sys.argv) > 2 else 4
FLIPS = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]


def versions():
    """(forward, back) pairs; flips are their own inverse, a transpose after a flip is undone
    by the transpose and then the flip."""
    out = [(f, f) for f in FLIPS]
    if n_versions == 8:
        t = lambda a: np.swapaxes(a, 0, 1)  # noqa: E731
        out += [(lambda a, f=f: t(f(a)), lambda p, f=f: f(t(p))) for f in FLIPS]
    return out


def averaged_probability(unet, image, scale, device, **kw):
    probs = [back(foreground_probability(unet, np.ascontiguousarray(fwd(image)), scale, device,
                                         **kw)) for fwd, back in versions()]
    return np.mean(probs, axis=0).astype(np.float32)


segment_module.foreground_probability = averaged_probability
rows = index_rows("val")
t0 = time.time()
scores, _ = score_rows(rows, segmenter(model, False))
s = dsb_by_style(rows, scores)
print(f"U-Net averaged over {n_versions} versions: DSB {np.mean([x.dsb for x in scores]):.3f} "
      f"fluo {s['dsb_fluo']:.3f} he {s['dsb_he']:.3f} ({time.time() - t0:.0f} s)")
