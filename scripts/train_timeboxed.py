"""Train a network for a fixed wall time, with a learning-rate schedule that ends at that
time (on a GPU machine booked for an hour, say).

    python scripts/train_timeboxed.py --data DATA/train --val DATA/val --out RUN \\
        --minutes M [--device cuda] [--workers N] [--batch-size B] [--kind main|preseg|unet]
        [--init NETWORK_FILE] [--lr 1e-3] [--warmup 200] [--probe-steps 60] ...

``nucleaizer train --max-minutes M`` stops a run after M minutes, wherever its schedule is.
This script instead chooses the number of steps so that the warm-up and the cosine decay of
the learning rate end within M minutes: a short probe run (--probe-steps steps in a
temporary folder) measures the seconds per step on this machine, one validation pass on the
--val images is timed, and the run gets as many steps as fit in 95% of M minutes with its
validations (every --val-every steps); --max-minutes M stays on as a safety stop. Loading the
data, the probe and the timed validation come on top of M.

RUN is an ordinary run folder of ``nucleaizer train`` (config.json, checkpoint.pt, log.jsonl,
curve.png, best.safetensors, last.safetensors) plus ``timebox.json``: the probe's seconds per
step, the validation time, the steps planned and done, the data loading time, torch and the
GPU. A run that was stopped before its last step (or by --max-minutes) continues with

    nucleaizer train --data DATA/train --out RUN --steps STEPS --resume --device cuda --workers N

(STEPS: the planned steps, printed and in timebox.json). The other training options
(--crop, --min-colour-share, --stain-jitter, --styles, ...) are those of ``nucleaizer
train``. Example, continuing the shipped main network for 50 minutes on a GPU with 8 CPU
cores, on data packed with scripts/pack_training_data.py:

    python scripts/train_timeboxed.py --data packed/train --val packed/val --out runs/gpu-main \\
        --minutes 50 --device cuda --workers 6 --batch-size 16 --lr 1e-3 --warmup 200 \\
        --init nucleaizer_backend/weights/default/main.safetensors

The result is a network file like any other (scripts/package_default_model.py puts it in a
model folder; ``nucleaizer segment --model`` and ``nucleaizer evaluate`` score it).
"""
import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nucleaizer_backend.device import resolve_device  # noqa: E402
from nucleaizer_backend.errors import NucleaizerError  # noqa: E402
from nucleaizer_backend.models.io import load_network, read_network_meta  # noqa: E402
from nucleaizer_backend.train.batches import training_items  # noqa: E402
from nucleaizer_backend.train.data import load_dataset, read_styles  # noqa: E402
from nucleaizer_backend.train.loop import TrainConfig, train  # noqa: E402
from nucleaizer_backend.train.runs import read_run_log  # noqa: E402
from nucleaizer_backend.train.validate import validate  # noqa: E402

SCHEDULE_SHARE = 0.95  # of --minutes planned for the steps and validations (checkpoints: rest)


def say(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def seconds_per_step(run_dir):
    """Median seconds per step of a run's loss records after the first (warm-up)."""
    recs = [r for r in read_run_log(Path(run_dir) / "log.jsonl") if "sec_per_step" in r]
    return statistics.median(r["sec_per_step"] for r in recs[1:] or recs)


def config(args, out, steps, **changes):
    """The run's TrainConfig from the arguments (``changes`` override them)."""
    settings = dict(
        data=str(args.data), val=str(args.val) if args.val else None, out=str(out),
        kind=args.kind, steps=steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        warmup=args.warmup, checkpoint_every=args.checkpoint_every, val_every=args.val_every,
        val_limit=args.val_limit, seed=args.seed, threads=args.threads, device=args.device,
        init=str(args.init) if args.init else None, min_colour_share=args.min_colour_share,
        stain_jitter=args.stain_jitter, styles=args.styles.split(",") if args.styles else None,
        workers=args.workers)
    return TrainConfig(**{**settings, **changes})


def planned_steps(seconds, sec_per_step, val_seconds, val_every, warmup):
    """Most steps whose training and validations (every ``val_every`` steps and at the last)
    fit in ``seconds``; at least the warm-up + 10."""
    per_step = sec_per_step + (val_seconds / val_every if val_seconds else 0.0)
    steps = int((seconds - val_seconds) / per_step)
    return max(warmup + 10, steps)


def probe(args, items):
    """(seconds per step, seconds of one validation pass, data loading seconds) on this
    machine, from a short run in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="timebox-probe-") as tmp:
        cfg = config(args, Path(tmp) / "probe", args.probe_steps, val=None,
                     checkpoint_every=10 ** 9)
        t0 = time.time()
        train(cfg, items=items)
        sps = seconds_per_step(cfg.out)
        say(f"probe: {sps:.3f} s/step ({time.time() - t0:.0f} s with start-up)")
        if not args.val:
            return sps, 0.0, 0.0
        t0 = time.time()
        val_items = load_dataset(args.val, args.val_limit)
        load_s = time.time() - t0
        device = resolve_device(args.device)
        model, _ = load_network(Path(cfg.out) / "last.safetensors", device)
        t0 = time.time()
        validate(model, val_items, args.kind, device, read_styles(args.val))
        val_s = time.time() - t0
        say(f"validation: {val_s:.1f} s for {len(val_items)} images")
        return sps, val_s, load_s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="folder of image + label pairs")
    ap.add_argument("--val", type=Path, help="folder of image + label pairs for validation")
    ap.add_argument("--out", type=Path, required=True, help="run folder (must not hold a run)")
    ap.add_argument("--minutes", type=float, required=True,
                    help="training wall time; loading the data and the probe come on top")
    ap.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    ap.add_argument("--workers", type=int, default=max(0, (os.cpu_count() or 2) - 2),
                    help="processes making the training crops (default: CPU cores - 2)")
    ap.add_argument("--kind", choices=["main", "preseg", "unet"], default="main")
    ap.add_argument("--init", type=Path, help="network file to start from (default: random)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256, help="crop size in px (working scale)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=1000)
    ap.add_argument("--val-limit", type=int, help="validate on the first N images only")
    ap.add_argument("--checkpoint-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="CPU threads for torch")
    ap.add_argument("--min-colour-share", type=float, default=0.3)
    ap.add_argument("--stain-jitter", type=float, default=0.0)
    ap.add_argument("--styles", help="train only on these styles (comma-separated)")
    ap.add_argument("--probe-steps", type=int, default=60,
                    help="steps of the probe that measures the step time (default 60)")
    args = ap.parse_args(argv)
    if (args.out / "checkpoint.pt").is_file():
        sys.exit(f"{args.out} holds a run already: continue it with nucleaizer train --resume "
                 "(see this script's help), or give another --out")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (give --device cpu to train on the CPU)")
    record = {"torch": torch.__version__, "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "minutes": args.minutes}
    t0 = time.time()
    try:
        items = training_items(config(args, args.out, 1))  # loaded once: probe and run
    except (NucleaizerError, ValueError) as e:
        sys.exit(str(e))
    record["data_load_s"] = time.time() - t0
    say(f"data: {len(items)} training images loaded in {record['data_load_s']:.1f} s")

    sps, val_s, val_load_s = probe(args, items)
    steps = planned_steps(SCHEDULE_SHARE * 60 * args.minutes, sps, val_s, args.val_every,
                          args.warmup)
    record.update(probe_sec_per_step=sps, val_seconds=val_s, val_load_s=val_load_s,
                  steps_planned=steps, batch_size=args.batch_size, workers=args.workers)
    say(f"planned: {steps} steps of batch {args.batch_size} in {args.minutes} min "
        f"({math.ceil(steps / args.val_every)} validations)")
    args.out.mkdir(parents=True, exist_ok=True)
    timebox = args.out / "timebox.json"
    timebox.write_text(json.dumps(record, indent=1))
    train(config(args, args.out, steps, max_minutes=args.minutes), items=items)
    done = int(read_network_meta(args.out / "last.safetensors")["steps"])
    record.update(steps_done=done, sec_per_step=seconds_per_step(args.out),
                  finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    timebox.write_text(json.dumps(record, indent=1))
    if done < steps:
        say(f"stopped at step {done} of {steps} (time limit); continue with: nucleaizer train "
            f"--data {args.data} --out {args.out} --steps {steps} --resume --device "
            f"{args.device} --workers {args.workers}")
    else:
        say(f"done: {done} steps in {args.out}")


if __name__ == "__main__":
    main()
