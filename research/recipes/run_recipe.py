"""Train one main-network recipe from random initialisation at a fixed CPU budget and score
it with the full pipeline: the equal-compute comparison of recipes.

    python research/recipes/run_recipe.py NAME --data DSB/train --val DSB/val \
        --out research/recipes/runs [--cpu-minutes 30] [--threads 1]

NAME is one of CANDIDATES. The run first measures its CPU seconds per training step (process
time, so other jobs on the machine do not change it much) and sets its number of steps so
that the whole schedule (warm-up, cosine decay) fits ``--cpu-minutes`` of one thread; then it
trains with the project's training loop (resumable: run the same command again), and finally
scores the network as users get it: with the shipped preseg (automatic size), U-Net and
post-processing values, on the val images and on a fixed subset of train images (every 12th:
under- or over-fitting), with the CPU seconds per 520x696 image.
``OUT/NAME/result.json`` holds the row of the recipe table; ``summarize.py`` draws the table.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: recipe name -> TrainConfig fields (architecture: MaskRCNNConfig fields)
CANDIDATES = {
    "bn": {},
    "gn": {"architecture": {"norm": "group"}},
    "bn-wide": {"architecture": {"stem_channels": 48, "stage_channels": [64, 128, 224, 320],
                                 "fpn_channels": 128}},
    "gn-wide": {"architecture": {"norm": "group", "stem_channels": 48,
                                 "stage_channels": [64, 128, 224, 320], "fpn_channels": 128}},
    "bn-batch4": {"batch_size": 4, "lr": 1.4e-3},
    "bn-crop384": {"crop": 384, "batch_size": 1},
    "bn-rois64": {"architecture": {"box_rois_train": 64}},
    "bn-lr2e-3": {"lr": 2e-3},
}
TRAIN_SUBSET_EVERY = 12  # every 12th train image (sorted by name) scores fitting


def probe_cpu_seconds_per_step(cfg, items, steps=20, warmup=10):
    """CPU seconds (process time, all threads) per training step of ``cfg`` on ``items``."""
    import torch

    from nucleaizer_backend.models.io import build_network
    from nucleaizer_backend.train.batches import crop_batches, sampling_weights
    from nucleaizer_backend.train.loop import make_optimizer, optimisation_step, use_bf16

    cpu = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.kind, cfg.architecture)
    model.train().to(cpu, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, cpu)
    weights, _ = sampling_weights(items, cfg.min_colour_share)
    batches = crop_batches(cfg, items, weights, [], cfg.crop_spec(),
                           np.random.default_rng(cfg.seed + 99), 0)
    bf16 = use_bf16(cfg.precision, cpu)
    for _ in range(warmup):
        optimisation_step(model, opt, params, *next(batches), bf16)
    t0 = time.process_time()
    for _ in range(steps):
        optimisation_step(model, opt, params, *next(batches), bf16)
    return (time.process_time() - t0) / steps


def model_folder_with(main_file, folder):
    """A model folder: the shipped model with ``main_file`` as its main network."""
    from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in DEFAULT_MODEL_DIR.iterdir():
        if f.name != "main.safetensors":
            shutil.copy(f, folder / f.name)
    shutil.copy(main_file, folder / "main.safetensors")
    return folder


def score_folder(model, folder, every=1):
    """(scores, per-image rows) of the shipped pipeline with ``model`` on a data folder."""
    from nucleaizer_backend import segment_image
    from nucleaizer_backend.evaluate import score_image
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.train.data import find_pairs, read_labels
    from nucleaizer_backend.train.data import read_styles

    styles = read_styles(folder)
    rows = []
    for img_path, lab_path in find_pairs(folder)[::every]:
        img = read_image(img_path)
        t0 = time.process_time()
        res = segment_image(img, model=model, device="cpu")
        cpu_s = time.process_time() - t0
        sc = score_image(read_labels(lab_path), res.labels)
        rows.append({"id": img_path.stem, "style": styles.get(img_path.stem), "dsb": sc.dsb,
                     "shape": list(img.shape[:2]), "cpu_s": cpu_s})
    return rows


def dsb_summary(rows):
    out = {"dsb": float(np.mean([r["dsb"] for r in rows])), "images": len(rows)}
    for style in sorted({r["style"] for r in rows if r["style"]}):
        out[f"dsb_{style}"] = float(np.mean([r["dsb"] for r in rows if r["style"] == style]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(CANDIDATES))
    ap.add_argument("--data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--out", required=True, help="folder of the runs (one sub-folder each)")
    ap.add_argument("--cpu-minutes", type=float, default=30.0,
                    help="CPU minutes of one thread for the whole schedule (the table's budget)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from nucleaizer_backend.train.batches import training_items
    from nucleaizer_backend.train.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    run = Path(args.out) / args.name
    run.mkdir(parents=True, exist_ok=True)
    probe_file = run / "probe.json"
    base = TrainConfig(data=str(args.data), out=str(run / "train"), kind="main",
                       seed=args.seed, threads=args.threads, workers=1,
                       checkpoint_every=100, **CANDIDATES[args.name])
    items = training_items(base)
    if probe_file.is_file():
        probe = json.loads(probe_file.read_text())
    else:
        sps = probe_cpu_seconds_per_step(base, items)
        probe = {"cpu_s_per_step": sps, "threads": args.threads,
                 "cpu_minutes": args.cpu_minutes,
                 "steps": int(args.cpu_minutes * 60 / sps), "measured": time.time()}
        probe_file.write_text(json.dumps(probe, indent=1))
    print(f"{args.name}: {probe['cpu_s_per_step']:.3f} CPU s/step -> {probe['steps']} steps",
          flush=True)
    cfg = TrainConfig(**{**base.__dict__, "steps": probe["steps"],
                         "warmup": min(300, probe["steps"] // 10)})
    t0 = time.process_time()
    train(cfg, resume=True, items=items)
    cpu_train = time.process_time() - t0
    model = model_folder_with(run / "train" / "last.safetensors", run / "model")
    val_rows = score_folder(str(model), args.val)
    train_rows = score_folder(str(model), args.data, every=TRAIN_SUBSET_EVERY)
    small = [r["cpu_s"] for r in val_rows if r["shape"] == [520, 696]]
    result = {"name": args.name, "recipe": CANDIDATES[args.name], "steps": cfg.steps,
              "batch_size": cfg.batch_size, "crops_seen": cfg.steps * cfg.batch_size,
              "cpu_s_per_step": probe["cpu_s_per_step"], "cpu_minutes_budget": args.cpu_minutes,
              "cpu_s_training_this_call": cpu_train,
              "val": dsb_summary(val_rows), "train_subset": dsb_summary(train_rows),
              "cpu_s_per_520x696": float(np.median(small)) if small else None,
              "per_image_val": val_rows}
    (run / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_image_val"}), flush=True)


if __name__ == "__main__":
    main()
