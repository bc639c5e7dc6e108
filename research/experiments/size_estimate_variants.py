"""Variants of the automatic size estimate, scored by the size criterion (estimate within
+-20% of the labels' median equivalent diameter) on DSB val and on 150 train images
(research/experiments/size-estimate-variants.md). Run from the repository root:

    python research/experiments/size_estimate_variants.py val
    python research/experiments/size_estimate_variants.py train 150
"""
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend import load_model, segment_image  # noqa: E402
from nucleaizer_backend.labels import equivalent_diameters  # noqa: E402
from nucleaizer_backend.preprocess import normalize_image  # noqa: E402
from nucleaizer_backend.size import find_nuclei  # noqa: E402

CPU = torch.device("cpu")


def variants(img, bundle, second_pass):
    """Estimated diameters (px) of one image by each variant."""
    norm = normalize_image(img)
    out = {}
    for conf in (0.3, 0.5, 0.7):
        d = find_nuclei(bundle.preseg, norm, CPU, conf)[1]
        for q in (35, 40, 45, 50):
            out[f"preseg conf {conf}, percentile {q}"] = np.percentile(d, q) if len(d) else np.nan
    if second_pass:  # main network at the scale the shipped estimate chose, Mask R-CNN alone
        r = segment_image(img, device=CPU, refine=False)
        d = equivalent_diameters(r.labels)
        out["second pass: main network's median"] = np.median(d) if len(d) else np.nan
    return out


def main(split, limit=None):
    rows = index_rows(split)
    if limit:
        pick = np.random.default_rng(0).choice(len(rows), limit, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    bundle = load_model(None, CPU)
    hits, styles = {}, []
    for i, r in enumerate(rows):
        img, labels = load_pair(r)
        true = np.median(equivalent_diameters(labels))
        styles.append(r["style"])
        for name, d in variants(img, bundle, second_pass=split == "val").items():
            hits.setdefault(name, []).append(abs(d / true - 1) <= 0.2)
        print(f"{i + 1}/{len(rows)}", end="\r", flush=True)
    styles = np.array(styles)
    print(f"\n{split}, {len(rows)} images: share within +-20% (all / fluo / he)")
    for name, h in hits.items():
        h = np.array(h)
        print(f"  {name}: {h.mean():.3f} / {h[styles == 'fluo'].mean():.3f} / "
              f"{h[styles == 'he'].mean():.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
