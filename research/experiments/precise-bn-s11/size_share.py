"""Share of val images whose estimated median nucleus diameter is within +-20% of the true
one, for model folders (the shipped estimate_size). Usage: size_share.py MODEL_DIR..."""
import sys
import numpy as np, torch
sys.path.insert(0, ".")
torch.set_num_threads(2)
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend import estimate_size
from nucleaizer_backend.labels import equivalent_diameters

rows = index_rows("val")
pairs = [load_pair(r) for r in rows]
for model in sys.argv[1:]:
    ok = []
    for r, (img, lab) in zip(rows, pairs):
        est = estimate_size(img, model=model, device="cpu").median_diameter
        ok.append(abs(est / np.median(equivalent_diameters(lab)) - 1) <= 0.2)
    ok = np.array(ok); st = np.array([r["style"] for r in rows])
    print(f"{model}: {ok.sum()}/{len(ok)} = {ok.mean():.3f} (fluo {ok[st == 'fluo'].mean():.3f}, "
          f"he {ok[st == 'he'].mean():.3f})")
