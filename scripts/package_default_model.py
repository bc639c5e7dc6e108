"""Assemble the shipped default model folder from training runs.

    python scripts/package_default_model.py [--main runs/main-s1/best.safetensors] \
        [--preseg runs/preseg-s1/best.safetensors] [--unet runs/unet-s1/best.safetensors] \
        [--postprocess-from runs/tuned-default/model.json] \
        [--speed-from bench/results/working_size.json] \
        [--style-reference-from ../shared/data/dsb2018/train] [--out nucleaizer_backend/weights/default]

Copies the network files given (already fp16 safetensors with their metadata; a network not
given keeps its current file and record), writes model.json (what the model is, what it was
trained on, how, its validation scores from each network's own metadata and its run's log,
the post-processing parameters and the speeds: the fast speed's working diameter and the
default speed chosen by bench/working_size.py, and the style reference of the training
images that the style distance is measured against, style.distance) and keeps each run's config.json, log.jsonl and
curve.png under docs/training/<run>/ so the training can be read later.
"""
import argparse
import filecmp
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nucleaizer_backend.models.io import (DEFAULT_MODEL_DIR, INFO_FILE,  # noqa: E402
                                          NETWORK_FILES, read_network_meta)
from nucleaizer_backend.refine import PostprocessParams  # noqa: E402
from nucleaizer_backend.train.runs import read_run_log  # noqa: E402


def run_history(network_file):
    """Training stages behind a network file: the run folders' config and log summaries."""
    run = Path(network_file).parent
    cfg = run / "config.json"
    log = run / "log.jsonl"
    out = {"run": run.name}
    if cfg.is_file():
        out["config"] = json.loads(cfg.read_text())
    if log.is_file():
        recs = read_run_log(log)
        steps = [r for r in recs if "sec_per_step" in r]
        if steps:
            out["mean_sec_per_step"] = round(sum(r["sec_per_step"] for r in steps) / len(steps), 3)
        out["validation"] = [r for r in recs if "val_select" in r]
    return out


def continues_shipped(history, shipped_file):
    """True when the run started from ``shipped_file``: its config's --init is that file, or
    a file with the same bytes (e.g. the run folder's network that was packaged as it)."""
    init = history.get("config", {}).get("init")
    if not init or not Path(shipped_file).is_file():
        return False
    init = ROOT / init
    shipped = Path(shipped_file)
    return init.resolve() == shipped.resolve() or (
        init.is_file() and filecmp.cmp(init, shipped, shallow=False))


def keep_run_record(network_file, docs):
    run = Path(network_file).parent
    dest = docs / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "log.jsonl", "curve.png"):
        if (run / name).is_file():
            shutil.copyfile(run / name, dest / name)


def speed_entry(working_size):
    """model.json's "speed" from the results of bench/working_size.py."""
    meta = working_size.get("_meta", {})
    return {"fast_diameter": float(working_size["fast_diameter"]),
            "default": working_size["default_speed"],
            "chosen_by": f"bench/working_size.py ({meta.get('command', '')}, "
                         f"{meta.get('measured', '')}): the smallest working diameter whose "
                         f"mean DSB loss against 40 px on images with nuclei under "
                         f"{working_size['small_px']:g} px is at most "
                         f"{working_size['max_fast_loss']}; fast is the default when that "
                         f"loss is at most {working_size['max_default_loss']}",
            "dsb_loss": round(float(working_size["fast_loss"]), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind in NETWORK_FILES:
        ap.add_argument(f"--{kind}", help=f"{kind} network file (default: keep the current one)")
    ap.add_argument("--postprocess-from", help="model.json written by `nucleaizer tune` whose "
                    "post-processing values (and tuning record) to store (default: keep the "
                    "current ones, else the paper's)")
    ap.add_argument("--speed-from", help="bench/results/working_size.json whose choice of the "
                    "fast speed's working diameter and of the default speed to store "
                    "(default: keep the current ones)")
    ap.add_argument("--style-reference-from", help="training data folder whose images' styles "
                    "the style distance is measured against (default: keep the current "
                    "reference)")
    ap.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--note", help="free text kept in model.json")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "training"),
                    help="where the runs' logs and curves are kept")
    ap.add_argument("--compute", default="2-core CPU (no GPU), torch CPU threads 2",
                    help="what the training of the networks given ran on")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / INFO_FILE).read_text()) if (out / INFO_FILE).is_file() else {}
    info = {
        "name": "nucleaizer-default",
        "description": "nucleAIzer default model: Mask R-CNN (small ResNet-FPN, trained from "
                       "scratch) at a 40 px working nucleus diameter, a scale-robust preseg "
                       "network for nucleus size estimation, and a U-Net for contour "
                       "refinement at the working scale.",
        "training_data": "DSB 2018 stage-1 training set with corrected annotations (CC0), "
                         "train split (482 images: 411 fluorescence, 71 H&E-like brightfield); "
                         "model selection on the val split (67 images)",
        "trained_nucleus_diameter_px": None,
        "compute": old.get("compute", args.compute),
    }
    for kind, name in NETWORK_FILES.items():
        src = getattr(args, kind)
        if src:
            history = run_history(src)
            if continues_shipped(history, out / name) and kind in old:
                # trained on from the network it replaces: keep how that one was made
                history["previous"] = {"meta": old[kind]["meta"],
                                       "history": old[kind].get("history", {}),
                                       "compute": old[kind].get("compute")}
            shutil.copyfile(src, out / name)
            info[kind] = {"file": name, "meta": read_network_meta(out / name),
                          "history": history, "compute": args.compute}
            keep_run_record(src, Path(args.docs))
        elif kind in old:
            info[kind] = old[kind]
        elif not (out / name).is_file():
            sys.exit(f"no {kind} network: give --{kind}")
    info["trained_nucleus_diameter_px"] = info["main"]["meta"].get("diameter")
    source = json.loads(Path(args.postprocess_from).read_text()) if args.postprocess_from else old
    info["postprocess"] = PostprocessParams.from_dict(source.get("postprocess", {})).to_dict()
    if source.get("tuning"):
        info["tuning"] = source["tuning"]
    speed = speed_entry(json.loads(Path(args.speed_from).read_text())) if args.speed_from \
        else old.get("speed")
    if speed:
        info["speed"] = speed
    if args.style_reference_from:
        from nucleaizer_backend.style.distance import reference_from_folder

        made_from = (f"the {Path(args.style_reference_from).name} images the networks were "
                     "trained on")
        info["style_reference"] = reference_from_folder(args.style_reference_from,
                                                        made_from).to_dict()
    elif old.get("style_reference"):
        info["style_reference"] = old["style_reference"]
    info["note"] = args.note if args.note is not None else old.get("note", "")
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    print(f"default model written to {out}")


if __name__ == "__main__":
    main()
