"""Measure the default model and write BENCHMARKS.md.

    .venv/bin/python bench/run_benchmarks.py [--sections accuracy,size,speed,memory] [--model DIR]

Each section stores its raw results in bench/results/<section>.json; BENCHMARKS.md is
rebuilt from all stored results, so sections can be re-measured one at a time. Needs
../shared/data/dsb2018 beside the repository (the data are not shipped).

- accuracy: DSB score and the other docs/METHOD.md section 5 metrics on the 67 val images,
  overall and per style, with automatic size estimation (the product as users run it) and
  with each image's true nucleus size (the network alone); CellProfiler's
  IdentifyPrimaryObjects measured on the same images with the same metric.
- size: estimated / true median nucleus diameter on every val image.
- speed: seconds per 520x696 image for segment() including size estimation, median over
  several images, and CellProfiler IdentifyPrimaryObjects on the same images in the same run.
- memory: peak resident memory of a fresh process segmenting a 2048x2048 image.
- ablation: what each step of the final model is worth on the val split, per style: Mask
  R-CNN alone; + rules (contained, p1, p2); + U-Net contour correction (p3..p6); + TTA; with
  seconds per image (size estimated once per image and its time added to every row).
- tuning: post-processing parameters (p1..p6, confidence) searched with nucleaizer tune's
  search on the val split: 2-fold cross-validation (tuned on one half, scored on the other:
  the honest estimate of what tuning on images of the same kind gives), the paper's values,
  no post-processing, and the values tuned on all val images, which are written to
  bench/results/tuned_postprocess.json for scripts/package_default_model.py.
- adapt_speed: wall time per stage of a quick-preset ``adapt`` of 20 unannotated val images
  (the first 12 H&E and 8 fluorescence ones in index order), as a user runs it (shipped base
  model and replay set); peak resident memory of the process.
- errors: where the val DSB score is lost: the shipped model's labels (automatic size) with
  each kind of error fixed alone by an oracle that knows the true labels (merges, splits,
  extra, missed nuclei, contours: bench/error_budget.py).
- train_speed, train_learning: crops per second of training the main network before and
  after the training speed-ups, and their loss curves (bench/train_throughput.py).
- working_size: DSB and seconds per image at working nucleus sizes 20-40 px on the images
  with small nuclei; chooses the fast speed's fast_diameter (bench/working_size.py).
- speed_bins, module_speed, plate: screening speed: seconds and DSB per nucleus-size bin at
  each speed, SegmentNucleiStyleAdapted in CellProfiler against the backend, a 200-image
  batch through 2 processes (bench/screen_speed.py).
- style_distance: whether the style distance tells when to adapt: val images' DSB against
  their distance and the shipped threshold, and held-out styles (H&E, fluorescence clusters)
  against references fitted without them (bench/style_distance.py).
- style_masks: the nuclei statistics of automatic masks before and after the guard, and of
  synthetic masks, against the annotated nuclei of each val style (bench/style_masks.py).
- figures: docs/example_overlay.png, docs/f1_curve.png and docs/refinement_f1.png
  (bench/figures.py).
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (DATA, RESULTS, dsb_by_style, identify_primary_objects,  # noqa: E402
                          index_rows, load_pair, machine, score_rows, segmenter)
from bench.speed import (section_adapt_speed, section_memory, section_speed,  # noqa: E402
                         section_workers)
from bench.screen_speed import (section_module_speed, section_plate,  # noqa: E402
                                section_speed_bins)
from bench.working_size import section_working_size  # noqa: E402
from bench.style_distance import section_style_distance  # noqa: E402
from bench.style_masks import section_style_masks  # noqa: E402

REFERENCES = {  # given in the issue, measured by the team on the same 67 val images
    "CellProfiler IdentifyPrimaryObjects (reference run)": 0.211,
    "Cellpose 3 from scratch, same train split, fixed diameter": 0.503,
    "Cellpose 3 from scratch, same train split, true diameter per image": 0.574,
}


def section_accuracy(model):
    from nucleaizer_backend.evaluate import summarize

    rows = index_rows("val")
    out = {"images": len(rows)}
    predictors = {"auto": segmenter(model), "true_size": segmenter(model, true_size=True),
                  "identifyprimaryobjects": lambda img, row: identify_primary_objects(img)}
    for mode, predict in predictors.items():
        scores, seconds = score_rows(rows, predict)
        s = summarize(scores, [r["id"] for r in rows])
        s.update(dsb_by_style(rows, scores))
        for style in ("fluo", "he"):
            s[f"images_{style}"] = sum(r["style"] == style for r in rows)
        s["seconds_mean"] = float(np.mean(seconds))
        out[mode] = s
        print(f"accuracy {mode}: DSB {s['dsb']:.3f} (fluo {s['dsb_fluo']:.3f}, he {s['dsb_he']:.3f})")
    return out


def section_size(model):
    from nucleaizer_backend import estimate_size

    rows = index_rows("val")
    per = []
    for r in rows:
        img, _ = load_pair(r)
        e = estimate_size(img, model=model, device="cpu")
        true = float(r["median_diameter_px"])
        per.append({"id": r["id"], "style": r["style"], "true": true,
                    "estimated": e.median_diameter, "ratio": e.median_diameter / true,
                    "count": e.count, "reliable": e.reliable})
    ratios = np.array([p["ratio"] for p in per])
    within = float(np.mean(np.abs(ratios - 1) <= 0.2))
    print(f"size: {within:.1%} of val images within +-20%")
    return {"within_20pct": within, "ratio_percentiles": {
        str(q): float(np.percentile(ratios, q)) for q in (0, 5, 25, 50, 75, 95, 100)},
        "per_image": per}


ABLATION = (  # (key, label, segment_image keyword arguments)
    ("maskrcnn", "Mask R-CNN alone", {"refine": "none"}),
    ("rules", "+ rules (contained objects, p1 merge, p2 area)", {"refine": "rules"}),
    ("unet", "+ U-Net contour correction (p3-p5) and p6", {}),
    ("tta", "+ test-time augmentation (6 versions)", {"tta": True}),
)


def section_ablation(model, configs=ABLATION):
    from nucleaizer_backend import estimate_size, segment_image
    from nucleaizer_backend.evaluate import score_image, summarize

    rows = index_rows("val")
    scores = {key: [] for key, _, _ in configs}
    seconds = {key: [] for key, _, _ in configs}
    for r in rows:
        img, truth = load_pair(r)
        t0 = time.perf_counter()
        diameter = estimate_size(img, model=model, device="cpu").median_diameter
        t_size = time.perf_counter() - t0
        for key, _, kwargs in configs:
            res = segment_image(img, model=model, diameter=diameter, device="cpu", **kwargs)
            seconds[key].append(t_size + res.seconds)
            scores[key].append(score_image(truth, res.labels))
    out = {"images": len(rows), "configs": {}}
    for key, label, kwargs in configs:
        s = summarize(scores[key], [r["id"] for r in rows])
        s["label"], s["kwargs"] = label, kwargs
        s.update(dsb_by_style(rows, scores[key]))
        for style in ("fluo", "he"):
            s[f"seconds_{style}"] = float(np.mean(
                [t for r, t in zip(rows, seconds[key]) if r["style"] == style]))
        s["seconds_mean"] = float(np.mean(seconds[key]))
        out["configs"][key] = s
        print(f"ablation {key}: DSB {s['dsb']:.3f} (fluo {s['dsb_fluo']:.3f}, "
              f"he {s['dsb_he']:.3f}), {s['seconds_mean']:.2f} s/image")
    return out


def section_tuning(model):
    from nucleaizer_backend import Model
    from nucleaizer_backend.refine import PostprocessParams
    from nucleaizer_backend.tune import cache_image, evaluate_params, search

    rows = sorted(index_rows("val"), key=lambda r: (r["style"], r["id"]))
    loaded = Model.load(model, "cpu")
    cached = [cache_image(loaded, r["id"], *load_pair(r), 0.3) for r in rows]
    style = {r["id"]: r["style"] for r in rows}
    folds = [[c for i, c in enumerate(cached) if i % 2 == k] for k in (0, 1)]

    def scores(images, params):
        out = {"dsb": evaluate_params(images, params)}
        for st in ("fluo", "he"):
            out[f"dsb_{st}"] = evaluate_params([c for c in images if style[c.name] == st], params)
        return out

    paper = PostprocessParams()
    none = PostprocessParams(p1=1.0, p2=0.0, p4=0.0, p5=0.0, p6=0.0)
    out = {"images": len(rows), "paper": scores(cached, paper), "none": scores(cached, none),
           "cross_validation": []}
    held_out = {}
    for k in (0, 1):
        res = search(folds[1 - k], paper)
        for c in folds[k]:
            held_out[c.name] = res.params
        out["cross_validation"].append({"tuned_on_fold": 1 - k, "params": res.params.to_dict(),
                                        "tuning_dsb": res.dsb,
                                        "held_out": scores(folds[k], res.params)})
    # the cross-validated score of every image, each scored with the values tuned on the
    # other half
    per = {c.name: evaluate_params([c], held_out[c.name]) for c in cached}
    out["cv"] = {"dsb": float(np.mean(list(per.values())))}
    for st in ("fluo", "he"):
        out["cv"][f"dsb_{st}"] = float(np.mean([v for n, v in per.items() if style[n] == st]))
    full = search(cached, paper)
    out["all_val"] = {"params": full.params.to_dict(), **scores(cached, full.params)}
    (RESULTS / "tuned_postprocess.json").write_text(json.dumps({
        "postprocess": full.params.to_dict(),
        "tuning": {"tuned_on": "the 67 DSB 2018 val images (bench/run_benchmarks.py "
                               "--sections tuning)", "dsb_before": full.start_dsb,
                   "dsb_after": full.dsb, "evaluations": len(full.history),
                   "cross_validated_dsb": out["cv"]["dsb"]}}, indent=1))
    print(f"tuning: none {out['none']['dsb']:.3f}, paper {out['paper']['dsb']:.3f}, "
          f"2-fold CV {out['cv']['dsb']:.3f}, tuned on all val {out['all_val']['dsb']:.3f}")
    return out


ERROR_SIZE_EDGES = (0, 12, 18, 25, 40, 1000)  # px, true nucleus diameter bins


def section_errors(model):
    from bench.error_budget import KINDS, error_budget, matched_ious_by_size
    from nucleaizer_backend import segment_image

    rows = index_rows("val")
    per, ious = [], [[] for _ in ERROR_SIZE_EDGES[1:]]
    for r in rows:
        img, truth = load_pair(r)
        labels = segment_image(img, model=model, device="cpu").labels
        per.append(error_budget(truth, labels))
        for i, v in enumerate(matched_ious_by_size(truth, labels, ERROR_SIZE_EDGES)):
            ious[i] += v.tolist()
    out = {"images": len(rows), "fixes": {}, "matched_iou_by_size": [
        {"diameter_px": [lo, hi], "matches": len(v), "mean_iou": float(np.mean(v)),
         "share_over_0.8": float(np.mean(np.array(v) > 0.8))}
        for lo, hi, v in zip(ERROR_SIZE_EDGES, ERROR_SIZE_EDGES[1:], ious) if v]}
    for key in ("as predicted",) + KINDS:
        v = np.array([p[key] for p in per])
        out["fixes"][key] = {"dsb": float(v.mean()), **{
            f"dsb_{st}": float(v[[r["style"] == st for r in rows]].mean()) for st in ("fluo", "he")}}
    print("errors: " + ", ".join(f"{k} {v['dsb']:.3f}" for k, v in out["fixes"].items()))
    return out


def section_figures(model):
    from bench.figures import example_overlay, f1_curve, refinement_f1

    example_overlay(model)
    f1_curve()
    refinement_f1()
    return {"files": ["docs/example_overlay.png", "docs/f1_curve.png",
                      "docs/refinement_f1.png"]}


def section_train_speed(model):
    from bench.train_throughput import section_train_speed as measure

    return measure(DATA / "train")


def section_train_learning(model):
    from bench.train_throughput import curve_differences, learning_runs, plot_learning

    out_dir = ROOT / "bench" / "runs" / "train_learning"  # git-ignored
    curves = learning_runs(DATA / "train", out_dir)
    plot_learning(curves, ROOT / "docs" / "train_learning.png")
    return {"steps": max(s for c in curves["before"].values() for s, _ in c),
            "seeds": sorted(curves["before"]), "curves": curves,
            "differences": curve_differences(curves)}


SECTIONS = {"accuracy": section_accuracy, "size": section_size, "speed": section_speed,
            "memory": section_memory, "tuning": section_tuning, "ablation": section_ablation,
            "workers": section_workers, "adapt_speed": section_adapt_speed,
            "errors": section_errors, "figures": section_figures,
            "train_speed": section_train_speed, "train_learning": section_train_learning,
            "working_size": section_working_size, "speed_bins": section_speed_bins,
            "module_speed": section_module_speed, "plate": section_plate,
            "style_distance": section_style_distance, "style_masks": section_style_masks}


def load_results():
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}


# what each section's numbers depend on (default: every network and the post-processing values)
SECTION_PARTS = {"size": ("preseg",), "style_masks": ("preseg",), "tuning": ("main", "preseg", "unet"),
                 "train_speed": (), "train_learning": ()}
MODEL_PARTS = ("main", "preseg", "unet", "postprocess")


def model_fingerprint(model=None, parts=MODEL_PARTS):
    """Short sha256 of each part of a model folder (network files, post-processing values),
    stored with each section's results so the report can tell which figures were measured
    with weights that are no longer the ones given."""
    import hashlib

    from nucleaizer_backend.models.io import INFO_FILE, NETWORK_FILES, resolve_model_path

    folder = resolve_model_path(model)
    if not folder.is_dir():
        folder = folder.parent
    out = {}
    for part in parts:
        if part == "postprocess":
            info = folder / INFO_FILE
            data = json.dumps(json.loads(info.read_text()).get("postprocess", {}) if
                              info.is_file() else {}, sort_keys=True).encode()
        elif (folder / NETWORK_FILES[part]).is_file():
            data = (folder / NETWORK_FILES[part]).read_bytes()
        else:
            continue
        out[part] = hashlib.sha256(data).hexdigest()[:12]
    return out


def write_markdown(results):
    from bench.report import render

    (ROOT / "BENCHMARKS.md").write_text(render(results, REFERENCES, model_fingerprint()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--model", help="model folder (default: the shipped one)")
    ap.add_argument("--report-only", action="store_true", help="rebuild BENCHMARKS.md only")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, all cores)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if not DATA.is_dir():
            sys.exit(f"benchmark data not found: {DATA}")
        for name in args.sections.split(","):
            t0 = time.time()
            load_before = os.getloadavg()[0]
            res = SECTIONS[name](args.model)
            res["_meta"] = {"machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "wall_s": round(time.time() - t0, 1),
                            # > cores: other jobs shared the CPU, timings are inflated
                            "load_avg_1min": [round(load_before, 2),
                                              round(os.getloadavg()[0], 2)],
                            # over the last 15 min: catches jobs that came and went meanwhile
                            "load_avg_15min_end": round(os.getloadavg()[2], 2),
                            "command": f"python bench/run_benchmarks.py --sections {name}"
                                       + (f" --threads {args.threads}" if args.threads else ""),
                            "model": args.model or "shipped default",
                            "weights": model_fingerprint(
                                args.model, SECTION_PARTS.get(name, MODEL_PARTS))}
            (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=1))
    write_markdown(load_results())
    print("BENCHMARKS.md written")


if __name__ == "__main__":
    main()
