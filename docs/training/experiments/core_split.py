"""Split merged detections at the nucleus cores of a two-channel contour U-Net (p7, p8):
val DSB (automatic size) of the shipped model with a candidate U-Net, without the split,
over a grid of p7 x p8 at the shipped p1..p6, and 2-fold cross-validated after a search of
all parameters (as the benchmark's tuning section). Run from the repository root:

    python docs/training/experiments/core_split.py runs/unet-s4-core/best.safetensors
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend.models.io import load_model  # noqa: E402
from nucleaizer_backend.segment import postprocess_params  # noqa: E402
from nucleaizer_backend.tune import cache_image, evaluate_params, search  # noqa: E402

CPU = torch.device("cpu")
NEVER = 1e9  # p8 that splits nothing


def model_with_unet(unet_file):
    folder = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(ROOT / "nucleaizer_backend/weights/default", folder)
    shutil.copy(unet_file, folder / "unet.safetensors")
    return folder


def by_style(cached, style, params):
    out = {"dsb": evaluate_params(cached, params)}
    for st in ("fluo", "he"):
        out[st] = evaluate_params([c for c in cached if style[c.name] == st], params)
    return out


def line(name, s):
    print(f"{name:48s} DSB {s['dsb']:.4f}  fluo {s['fluo']:.4f}  he {s['he']:.4f}", flush=True)


def main(unet_file):
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    bundle = load_model(model_with_unet(unet_file), CPU)
    shipped = postprocess_params(bundle)
    rows = sorted(index_rows("val"), key=lambda r: (r["style"], r["id"]))
    style = {r["id"]: r["style"] for r in rows}
    cached = [cache_image(bundle, r["id"], *load_pair(r), CPU, 0.3) for r in rows]
    results = {}
    base = shipped.__class__.from_dict(dict(shipped.to_dict(), p8=NEVER))
    results["no split"] = by_style(cached, style, base)
    line("shipped p1..p6, no split", results["no split"])
    for p7 in (0.3, 0.5, 0.7, 0.9):
        for p8 in (25.0, 50.0, 100.0, 200.0, 400.0):
            params = shipped.__class__.from_dict(dict(shipped.to_dict(), p7=p7, p8=p8))
            results[f"p7 {p7} p8 {p8}"] = s = by_style(cached, style, params)
            line(f"shipped p1..p6, p7 {p7}, p8 {p8}", s)
    if "--grid-only" in sys.argv:
        return
    folds = [[c for i, c in enumerate(cached) if i % 2 == k] for k in (0, 1)]
    held_out, tuned = {}, []
    for k in (0, 1):
        res = search(folds[1 - k], base)
        tuned.append(res.params.to_dict())
        for c in folds[k]:
            held_out[c.name] = res.params
    per = {c.name: evaluate_params([c], held_out[c.name]) for c in cached}
    cv = {"dsb": float(np.mean(list(per.values())))}
    for st in ("fluo", "he"):
        cv[st] = float(np.mean([v for n, v in per.items() if style[n] == st]))
    results["2-fold CV"] = cv
    line("all parameters searched, 2-fold CV", cv)
    full = search(cached, base)
    results["tuned on all val"] = dict(by_style(cached, style, full.params), params=full.params.to_dict())
    line("all parameters searched on all val (in-sample)", results["tuned on all val"])
    print("values:", json.dumps(full.params.to_dict()), "folds:", json.dumps(tuned))
    out = Path(unet_file).with_name("core_split.json")
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
