"""Fewer or cheaper preseg passes for the automatic size estimate: a coarse first pass at
half scale (accepted when its nuclei are in preseg's comfort range) and a smaller refine
diameter for nuclei outside it. Scored by the size criterion (estimate within +-20% of the
labels' median diameter) and by the seconds of the passes each variant runs, on all DSB
val images and 100 train images (seed 0). Each pass (image, scale) runs once and is timed
once; a variant's time is the sum of the passes it uses. From the repository root:

    python research/experiments/size_passes.py [N_TRAIN]

Writes research/experiments/size-passes/result.json (see size-passes/README.md).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.common import index_rows, load_pair  # noqa: E402
from nucleaizer_backend import size as size_module  # noqa: E402
from nucleaizer_backend.models.io import load_model  # noqa: E402
from nucleaizer_backend.preprocess import normalize_image  # noqa: E402

CPU = torch.device("cpu")
VARIANTS = {  # name: (coarse_scale, refine_diameter)
    "shipped (native first, refine at 32 px)": (None, 32.0),
    "coarse 0.5 first": (0.5, 32.0),
    "refine at 24 px": (None, 24.0),
    "refine at 20 px": (None, 20.0),
    "coarse 0.5 first, refine at 24 px": (0.5, 24.0),
}
OUT = ROOT / "research" / "experiments" / "size-passes"


class PassCache:
    """nuclei_at_scale run once per (scale) of the current image, with its seconds."""

    def __init__(self, original):
        self.original, self.passes, self.used = original, {}, set()

    def __call__(self, network, image, scale, device, confidence):
        key = round(float(scale), 6)
        if key not in self.passes:
            t0 = time.perf_counter()
            self.passes[key] = (self.original(network, image, scale, device, confidence),
                                time.perf_counter() - t0)
        self.used.add(key)
        return self.passes[key][0]


def coarse_first(network, image, coarse, refine):
    """The coarse variant: a pass at scale ``coarse`` whose nuclei are the answer when they
    are in preseg's comfort range; otherwise find_nuclei as shipped."""
    labels, d = size_module.nuclei_at_scale(network, image, coarse, CPU,
                                            size_module.SIZE_CONFIDENCE)
    if size_module.comfortable(d, coarse):
        return labels, size_module.single_nucleus_diameters(labels)
    return size_module.find_nuclei(network, image, CPU, refine_diameter=refine)


def rows_measured(n_train):
    train = index_rows("train")
    pick = np.random.default_rng(0).choice(len(train), n_train, replace=False)
    return index_rows("val") + [train[i] for i in sorted(pick)]


def main(n_train=100):
    bundle = load_model(None, CPU)
    cache = PassCache(size_module.nuclei_at_scale)
    size_module.nuclei_at_scale = cache
    per = []
    rows = rows_measured(n_train)
    for i, r in enumerate(rows):
        img, _ = load_pair(r)
        norm = normalize_image(img)
        cache.passes = {}
        entry = {"id": r["id"][:12], "split": r["split"], "style": r["style"],
                 "true": float(r["median_diameter_px"]), "height": int(r["height"]),
                 "width": int(r["width"])}
        for name, (coarse, refine) in VARIANTS.items():
            cache.used = set()
            if coarse:
                d = coarse_first(bundle.preseg, norm, coarse, refine)[1]
            else:
                d = size_module.find_nuclei(bundle.preseg, norm, CPU, refine_diameter=refine)[1]
            est = size_module.SizeEstimate.from_diameters(d).median_diameter
            entry[name] = {"estimate": est, "passes": sorted(cache.used),
                           "seconds": sum(cache.passes[k][1] for k in cache.used)}
        per.append(entry)
        print(f"{i + 1}/{len(rows)} {entry['id']} true {entry['true']:.1f}: " + "; ".join(
            f"{v['estimate']:.1f} {v['seconds']:.2f}s" for v in (entry[n] for n in VARIANTS)),
            flush=True)
    summary = {}
    for name in VARIANTS:
        for group in ("val", "train"):
            members = [p for p in per if p["split"] == group]
            ratio = np.array([p[name]["estimate"] / p["true"] for p in members])
            secs = np.array([p[name]["seconds"] for p in members])
            summary.setdefault(name, {})[group] = {
                "within_20pct": float(np.mean(np.abs(ratio - 1) <= 0.2)),
                "mean_s": float(secs.mean()), "median_s": float(np.median(secs)),
                "images": len(members)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps({"summary": summary, "per_image": per},
                                                indent=1))
    for name, s in summary.items():
        print(f"{name}: val {s['val']['within_20pct']:.3f} ({s['val']['mean_s']:.2f} s), "
              f"train {s['train']['within_20pct']:.3f} ({s['train']['mean_s']:.2f} s)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
