"""One prepared run for a lent GPU machine (the device tool of /work/.library): continue the
shipped main network on the packed train split for a fixed wall time, and time segmentation
on the GPU. Everything it makes is written to $OUT and comes back.

The device machine's own python3 holds torch, torchvision, scikit-image and the rest; the
package runs from the working tree. Prepare here, once: `python scripts/pack_device_data.py`
(writes the ignored .device/train, about 20 MiB: the tracked tree is about 38 MiB of the
64 MiB that travel). Then, with the device tool:

    run(command="python3 scripts/device_train_main.py --minutes 6", carry=[".device"],
        timeout_s=600)

Steps: (1) a short probe measures seconds per step; (2) the schedule length is set so that
the cosine decay ends at --minutes; training runs in --chunks pieces (resumed each time: the
resume path is exercised) and each piece's network comes back as main_stepN.safetensors
(fp16, about 10 MiB); (3) segment() on the bundled example images on the GPU (seconds per
image, size estimate included) and the main network's batched throughput (images/s at the
working scale of a 520x696 image); (4) device_run.json with all figures, log.jsonl and
curve.png of the run. Score what came back here, on the CPU:
`python docs/training/experiments/score_candidate.py FOLDER` (a copy of the default model
folder with main.safetensors replaced).

Rehearsal on this CPU (minutes, tiny): OUT=/tmp/dev python scripts/device_train_main.py
--minutes 1 --device cpu --workers 1 --batch-size 1 --probe-steps 20
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, read_network_meta  # noqa: E402
from nucleaizer_backend.train.loop import (  # noqa: E402
    TrainConfig, read_run_log, train, training_items)


def say(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def seconds_per_step(run_dir):
    """Median seconds per step of a run's loss records after the first (warm-up)."""
    recs = [r for r in read_run_log(Path(run_dir) / "log.jsonl") if "sec_per_step" in r]
    return statistics.median(r["sec_per_step"] for r in recs[1:] or recs)


def config(args, out, steps, **kw):
    return TrainConfig(data=args.data, out=str(out), kind="main", steps=steps,
                       batch_size=args.batch_size, crop=256, lr=args.lr, warmup=args.warmup,
                       checkpoint_every=10 ** 9, seed=args.seed, device=args.device,
                       init=str(DEFAULT_MODEL_DIR / "main.safetensors"),
                       workers=args.workers, **kw)


def train_for(args, out):
    """Probe, then the timed run in chunks; returns the run's record."""
    probe = Path(args.work) / "probe"
    shutil.rmtree(probe, ignore_errors=True)
    t0 = time.time()
    items = training_items(config(args, probe, 1))  # loaded once for the probe and pieces
    load_s = time.time() - t0
    say(f"data: {len(items)} training images loaded in {load_s:.1f} s")
    t0 = time.time()
    train(config(args, probe, args.probe_steps), items=items)
    sps = seconds_per_step(probe)
    steps = max(args.warmup + 10, int(0.95 * 60 * args.minutes / sps))
    say(f"probe: {sps:.3f} s/step ({time.time() - t0:.0f} s with start-up): {steps} steps "
        f"of batch {args.batch_size} in {args.minutes} min")
    run = Path(args.work) / "main-gpu"
    shutil.rmtree(run, ignore_errors=True)
    pieces = []
    for k in range(args.chunks):
        cfg = config(args, run, steps, max_minutes=args.minutes / args.chunks)
        train(cfg, resume=k > 0, items=items)
        step = read_network_meta(run / "last.safetensors")["steps"]
        name = f"main_step{step}.safetensors"
        shutil.copy(run / "last.safetensors", out / name)
        pieces.append({"step": step, "file": name})
        say(f"piece {k + 1}/{args.chunks}: step {step} of {steps}")
        if step >= steps:
            break
    for f in ("log.jsonl", "curve.png"):
        if (run / f).is_file():
            shutil.copy(run / f, out / f)
    return {"data_load_s": load_s, "probe_sec_per_step": sps, "steps_planned": steps, "pieces": pieces,
            "sec_per_step": seconds_per_step(run), "batch_size": args.batch_size,
            "workers": args.workers, "lr": args.lr, "warmup": args.warmup}


def time_segmentation(args):
    """segment() per bundled example image on the device, and the main network's batched
    throughput at the working scale of a 520x696 image."""
    from nucleaizer_backend import segment_image
    from nucleaizer_backend.geometry import rescale_image
    from nucleaizer_backend.imageio_utils import list_images, read_image
    from nucleaizer_backend.models.io import load_model
    from nucleaizer_backend.models.maskrcnn import predict_raw
    from nucleaizer_backend.preprocess import normalize_image

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = [read_image(p) for p in list_images([ROOT / "example_images" / "images"])]
    segment_image(images[0], device=args.device)  # load and warm up
    per_image = []
    for img in images * args.repeats:
        sync()
        t0 = time.perf_counter()
        r = segment_image(img, device=args.device)
        sync()
        per_image.append({"shape": list(img.shape[:2]), "nuclei": r.count,
                          "seconds": time.perf_counter() - t0})
    bundle = load_model(None, device)
    sized = [img for img in images if img.shape[:2] == (520, 696)] or images
    x = rescale_image(normalize_image(sized[0]), 1.0, device)
    batched = {}
    for b in (int(v) for v in args.batches.split(",")):
        crops = [x] * b
        for _ in range(2):
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                predict_raw(bundle.main, crops)
        sync()
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                predict_raw(bundle.main, crops)
        sync()
        batched[str(b)] = b * reps / (time.perf_counter() - t0)
    return {"segment_median_s": statistics.median(p["seconds"] for p in per_image),
            "segment_per_image": per_image, "main_images_per_s_by_batch": batched,
            "main_batch_note": "main network alone, a bundled 520x696 image at scale 1 "
                               "repeated, eval mode, autocast on CUDA: images per second"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / ".device" / "train"))
    ap.add_argument("--minutes", type=float, default=6.0,
                    help="training wall time; the timing, one data load and the probe "
                    "come on top (keep the whole under the device tool's 10 min)")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--work", default="/tmp/nucleaizer-device")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="segment() timings per bundled image")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes of the throughput timing")
    args = ap.parse_args(argv)
    out = Path(os.environ.get("OUT", "device_out"))
    out.mkdir(parents=True, exist_ok=True)
    record = {"torch": torch.__version__, "device": args.device,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    say(json.dumps(record))
    if not Path(args.data).is_dir():
        sys.exit(f"{args.data}: no packed data; run scripts/pack_device_data.py and carry .device")

    def save():
        (out / "device_run.json").write_text(json.dumps(record, indent=1))

    if not args.skip_timing:  # first: it is short and its figures matter even if training fails
        record["timing"] = time_segmentation(args)
        say("timing:", json.dumps({k: v for k, v in record["timing"].items()
                                   if k != "segment_per_image"}))
        save()
    record["training"] = train_for(args, out)
    save()
    say("done")


if __name__ == "__main__":
    main()
