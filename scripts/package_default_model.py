"""Assemble the shipped default model folder from training runs.

    python scripts/package_default_model.py --main runs/main-s1/best.safetensors \
        --preseg runs/preseg-s1/best.safetensors [--out nucleaizer_backend/weights/default]

Copies the two network files (already fp16 safetensors with their metadata), writes
model.json (what the model is, what it was trained on, how, and its validation scores from
each network's own metadata and its run's log) and keeps each run's config.json, log.jsonl
and curve.png under docs/training/<run>/ so the training can be read later.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nucleaizer_backend.models.io import (DEFAULT_MODEL_DIR, INFO_FILE, MAIN_FILE,  # noqa: E402
                                          PRESEG_FILE, read_network_meta)


def run_history(network_file):
    """Training stages behind a network file: the run folders' config and log summaries."""
    run = Path(network_file).parent
    cfg = run / "config.json"
    log = run / "log.jsonl"
    out = {"run": run.name}
    if cfg.is_file():
        out["config"] = json.loads(cfg.read_text())
    if log.is_file():
        recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        steps = [r for r in recs if "sec_per_step" in r]
        if steps:
            out["mean_sec_per_step"] = round(sum(r["sec_per_step"] for r in steps) / len(steps), 3)
        out["validation"] = [r for r in recs if "val_dsb" in r]
    return out


def keep_run_record(network_file, docs):
    run = Path(network_file).parent
    dest = docs / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "log.jsonl", "curve.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--main", required=True)
    ap.add_argument("--preseg", required=True)
    ap.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--note", default="", help="free text kept in model.json")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "training"),
                    help="where the runs' logs and curves are kept")
    ap.add_argument("--compute", default="2-core CPU (no GPU), torch CPU threads 2",
                    help="what the training ran on")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.main, out / MAIN_FILE)
    shutil.copyfile(args.preseg, out / PRESEG_FILE)
    main_meta, preseg_meta = read_network_meta(out / MAIN_FILE), read_network_meta(out / PRESEG_FILE)
    info = {
        "name": "nucleaizer-default",
        "description": "nucleAIzer default model: Mask R-CNN (small ResNet-FPN, trained from "
                       "scratch) at a 40 px working nucleus diameter, plus a scale-robust preseg "
                       "network for nucleus size estimation.",
        "training_data": "DSB 2018 stage-1 training set with corrected annotations (CC0), "
                         "train split (482 images: 411 fluorescence, 71 H&E-like brightfield); "
                         "model selection on the val split (67 images)",
        "trained_nucleus_diameter_px": main_meta.get("diameter"),
        "compute": args.compute,
        "main": {"file": MAIN_FILE, "meta": main_meta, "history": run_history(args.main)},
        "preseg": {"file": PRESEG_FILE, "meta": preseg_meta, "history": run_history(args.preseg)},
        "note": args.note,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    for network_file in (args.main, args.preseg):
        keep_run_record(network_file, Path(args.docs))
    print(f"default model written to {out}")


if __name__ == "__main__":
    main()
