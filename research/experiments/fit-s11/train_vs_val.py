"""Does the shipped model underfit or overfit H&E? DSB of the full pipeline (automatic size,
shipped post-processing) on the train images it was trained on (all 71 H&E, 71 random
fluorescence, seed 0) next to val. Usage, from the repository root:
python research/experiments/fit-s11/train_vs_val.py"""
import sys
import numpy as np, torch
sys.path.insert(0, ".")
torch.set_num_threads(2)
from bench.run_benchmarks import index_rows, score_rows, segmenter

train = index_rows("train")
he = [r for r in train if r["style"] == "he"]
fluo = [r for r in train if r["style"] == "fluo"]
pick = np.random.default_rng(0).choice(len(fluo), len(he), replace=False)
for name, rows in (("train he", he), ("train fluo (sample)", [fluo[i] for i in sorted(pick)])):
    scores, secs = score_rows(rows, segmenter(None))
    d = np.array([s.dsb for s in scores])
    print(f"{name}: {len(rows)} images, DSB {d.mean():.3f} (median {np.median(d):.3f}, "
          f"quartiles {np.percentile(d, 25):.3f}-{np.percentile(d, 75):.3f})", flush=True)
