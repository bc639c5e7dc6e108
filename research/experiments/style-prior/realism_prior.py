"""Does the style prior make better style models at the same CPU budget? (issue: style
adaptation on styles nobody annotated, item 2)

For each target set (real images with their annotated masks, so that only the generator
differs), a style model is trained for STEPS steps (the quick preset's least) from scratch and
from the style prior, then renders every target mask; the rendered images are scored against
the real ones with the realism KID (nucleaizer_backend.style.realism, x 1000, lower is better,
noise floor alongside), and the prior alone (no fine-tune) is scored too.

    .venv/bin/python research/experiments/style-prior/realism_prior.py \
        --data ../shared/data/dsb2018 --prior research/style-prior/run/generator.safetensors \
        [--only he-val:scratch,fluo-val8:prior] [--threads 1]

Runs go to runs/style-prior-realism/<target>-<condition>/ (resumable); results are appended
to research/experiments/style-prior/results.jsonl.
"""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

STEPS = 200
CONDITIONS = {"scratch": dict(init=False, lr=2e-3), "prior": dict(init=True, lr=2e-3),
              "prior-lr5e-4": dict(init=True, lr=5e-4), "prior-only": None}


def targets(data):
    rows = list(csv.DictReader(open(Path(data) / "index.csv")))
    he = [r for r in rows if r["split"] == "val" and r["style"] == "he"]
    fluo = [r for r in rows if r["split"] == "val" and r["style"] == "fluo"][:8]
    return {"he-val": he, "fluo-val8": fluo}


def load(data, rows):
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.train.data import read_labels

    return [(read_image(Path(data) / "val" / "images" / f"{r['id']}.png"),
             read_labels(Path(data) / "val" / "labels" / f"{r['id']}.tif")) for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dsb2018"))
    ap.add_argument("--prior", required=True)
    ap.add_argument("--only", help="target:condition,... (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from nucleaizer_backend import Model
    from nucleaizer_backend.style.pix2pix_train import (StyleTrainConfig, generate,
                                                        load_style_model, raw_image_to_unit,
                                                        train_style_model)
    from nucleaizer_backend.style.realism import kid_floor, realism

    network = Model.load(device="cpu").main
    wanted = [tuple(x.split(":")) for x in args.only.split(",")] if args.only else [
        (t, c) for t in targets(args.data) for c in CONDITIONS]
    results = Path(__file__).parent / "results.jsonl"
    for target, condition in wanted:
        pairs = load(args.data, targets(args.data)[target])
        real = [im for im, _ in pairs]
        t0 = time.time()
        spec = CONDITIONS[condition]
        if spec is None:
            generator_file = Path(args.prior)
        else:
            run = ROOT / "runs" / "style-prior-realism" / f"{target}-{condition}"
            cfg = StyleTrainConfig(steps=STEPS, lr=spec["lr"], threads=args.threads,
                                   device="cpu", init=args.prior if spec["init"] else None,
                                   checkpoint_every=100)
            train_style_model([(raw_image_to_unit(im), lab) for im, lab in pairs], run, cfg,
                              resume=True)
            generator_file = run
        generator, _ = load_style_model(generator_file)
        rng = np.random.default_rng(0)
        fake = [np.round(generate(generator, lab, rng) * 255).astype(np.uint8)
                for _, lab in pairs]
        kid, sd = realism(network, real, fake)
        floor, floor_sd = kid_floor(network, real)
        rec = {"target": target, "condition": condition, "images": len(pairs), "steps":
               0 if spec is None else STEPS, "lr": None if spec is None else spec["lr"],
               "kid_x1000": kid, "kid_sd": sd, "floor_x1000": floor, "floor_sd": floor_sd,
               "seconds": time.time() - t0, "prior": str(args.prior)}
        print(json.dumps(rec), flush=True)
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        import imageio.v3 as iio

        sheet = np.concatenate([np.concatenate([raw_image_to_unit(real[i])[:192, :192],
                                                fake[i][:192, :192] / 255.0], 1)
                                for i in range(min(3, len(real)))
                                if min(real[i].shape[:2]) >= 192], 0)
        iio.imwrite(Path(__file__).parent / f"{target}-{condition}.png",
                    np.round(sheet * 255).astype(np.uint8))


if __name__ == "__main__":
    main()
