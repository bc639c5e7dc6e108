"""Benchmark section working_size: DSB score and time of the whole segmentation at smaller
working nucleus sizes, on the images whose nuclei are small (annotated median diameter under
SMALL_PX), which the 40 px working size enlarges most. It chooses the *fast* speed's
fast_diameter: the smallest size whose mean DSB loss against 40 px is at most MAX_FAST_LOSS,
and fast becomes the default speed when that loss is at most MAX_DEFAULT_LOSS
(``scripts/package_default_model.py --speed-from bench/results/working_size.json`` writes the
choice into the shipped model.json).

Each image's size is estimated once (automatic size, as users run it) and the same estimate
is used at every working size, so that only the working size differs between the columns.
"""
import dataclasses
import random
import time

import numpy as np

from bench.common import index_rows, load_pair

WORKING_SIZES = (20, 24, 28, 32, 40)  # px
SMALL_PX = 20.0  # annotated median nucleus diameter (px) of the images measured
TRAIN_SAMPLE = 60  # train images drawn (seed 0) besides every small-nuclei val image
MAX_FAST_LOSS = 0.02
MAX_DEFAULT_LOSS = 0.01


def small_nuclei_rows(train_sample=TRAIN_SAMPLE):
    """Every val image with nuclei under SMALL_PX and ``train_sample`` such train images."""
    small = [r for r in index_rows() if float(r["median_diameter_px"]) < SMALL_PX]
    val = [r for r in small if r["split"] == "val"]
    train = [r for r in small if r["split"] == "train"]
    random.Random(0).shuffle(train)
    return val + sorted(train[:train_sample], key=lambda r: r["id"])


def with_fast_diameter(model, px):
    """A copy of ``model`` whose fast speed enlarges nuclei to ``px`` (same networks)."""
    info = dict(model.info or {})
    info["speed"] = dict(info.get("speed") or {}, fast_diameter=float(px))
    return dataclasses.replace(model, info=info)


def choose_fast_diameter(mean_dsb, sizes=WORKING_SIZES):
    """(fast_diameter px, its DSB loss, default speed) from {size: mean DSB}: the smallest
    size losing at most MAX_FAST_LOSS against the largest; "fast" is the default when that
    loss is at most MAX_DEFAULT_LOSS."""
    full = mean_dsb[max(sizes)]
    size = min(s for s in sizes if full - mean_dsb[s] <= MAX_FAST_LOSS)
    loss = full - mean_dsb[size]
    return size, loss, "fast" if loss <= MAX_DEFAULT_LOSS else "accurate"


def section_working_size(model, sizes=WORKING_SIZES, rows=None):
    from nucleaizer_backend import Model, estimate_size, segment_image
    from nucleaizer_backend.evaluate import score_image

    base = Model.load(model, "cpu")
    rows = small_nuclei_rows() if rows is None else rows
    variants = {s: with_fast_diameter(base, s) for s in sizes}
    per = []
    for i, row in enumerate(rows):
        image, truth = load_pair(row)
        diameter = estimate_size(image, model=base).median_diameter
        entry = {"id": row["id"][:12], "split": row["split"], "style": row["style"],
                 "true_diameter": float(row["median_diameter_px"]), "diameter": diameter}
        for s in sizes:
            t0 = time.perf_counter()
            labels = segment_image(image, model=variants[s], diameter=diameter,
                                   speed="fast").labels
            entry[f"s_{s}"] = time.perf_counter() - t0
            entry[f"dsb_{s}"] = score_image(truth, labels).dsb
        per.append(entry)
        print(f"working_size: {i + 1}/{len(rows)} {entry['id']} d={diameter:.1f} " +
              " ".join(f"{s}:{entry[f'dsb_{s}']:.3f}/{entry[f's_{s}']:.2f}s" for s in sizes),
              flush=True)
    summary = {}
    for group, members in (("all", per), ("val", [p for p in per if p["split"] == "val"]),
                           ("train", [p for p in per if p["split"] == "train"])):
        summary[group] = {str(s): {"dsb": float(np.mean([p[f"dsb_{s}"] for p in members])),
                                   "median_s": float(np.median([p[f"s_{s}"] for p in members]))}
                          for s in sizes} | {"images": len(members)}
    mean_dsb = {s: summary["all"][str(s)]["dsb"] for s in sizes}
    fast, loss, default = choose_fast_diameter(mean_dsb, sizes)
    print(f"working_size: fast_diameter {fast} px (DSB loss {loss:.4f}), default {default}")
    return {"sizes": list(sizes), "small_px": SMALL_PX, "summary": summary,
            "fast_diameter": fast, "fast_loss": loss, "default_speed": default,
            "max_fast_loss": MAX_FAST_LOSS, "max_default_loss": MAX_DEFAULT_LOSS,
            "per_image": per}
