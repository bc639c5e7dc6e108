"""Cache preseg's size-estimate labels (shipped find_nuclei) and truth labels per image."""
import sys, numpy as np, torch
sys.path.insert(0, ".")
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
from bench.run_benchmarks import index_rows, load_pair
from nucleaizer_backend import load_model
from nucleaizer_backend.preprocess import normalize_image
from nucleaizer_backend.size import find_nuclei
from pathlib import Path
CPU = torch.device("cpu")
bundle = load_model(None, CPU)
split = sys.argv[1]
out = Path(f"runs/size-s9/cache_{split}"); out.mkdir(parents=True, exist_ok=True)
rows = index_rows(split)
for i, r in enumerate(rows):
    f = out / f"{r['id'][:16]}.npz"
    if f.exists(): continue
    img, lab = load_pair(r)
    pl, d = find_nuclei(bundle.preseg, normalize_image(img), CPU, 0.5)
    np.savez_compressed(f, pred=pl, truth=lab, style=r["style"])
    print(i, len(rows), flush=True)
