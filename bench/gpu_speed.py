"""Segmentation speed on a GPU (or any device): seconds per image of segment_image() with
the shipped model (size estimation included), and the main network's batched throughput.

    python bench/gpu_speed.py [--device cuda] [--images example_images/images] [--repeats 3]
        [--batches 1,8,32] [--json FILE]

Each image is segmented --repeats times after one warm-up call (model loading not counted);
the throughput is the main network alone, in eval mode with autocast on CUDA, on one image of
the folder (a 520x696 one when there is one) at its working scale, repeated to each batch
size of --batches: images per second. Prints the figures as JSON (and writes them to --json).
bench/run_benchmarks.py measures the CPU speed of the shipped model for BENCHMARKS.md.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(device_name, image_folder, repeats, batches):
    import torch

    from nucleaizer_backend import segment_image
    from nucleaizer_backend.detect import rescale_image
    from nucleaizer_backend.device import resolve_device
    from nucleaizer_backend.imageio_utils import list_images, read_image
    from nucleaizer_backend.models.io import load_model
    from nucleaizer_backend.models.maskrcnn import predict_raw
    from nucleaizer_backend.preprocess import normalize_image

    device = resolve_device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = [read_image(p) for p in list_images([image_folder])]
    if not images:
        raise SystemExit(f"{image_folder}: no images")
    segment_image(images[0], device=device)  # load and warm up
    per_image = []
    for img in images * repeats:
        sync()
        t0 = time.perf_counter()
        r = segment_image(img, device=device)
        sync()
        per_image.append({"shape": list(img.shape[:2]), "nuclei": r.count,
                          "seconds": time.perf_counter() - t0})
    bundle = load_model(None, device)
    sized = [img for img in images if img.shape[:2] == (520, 696)] or images
    x = rescale_image(normalize_image(sized[0]), 1.0, device)
    batched = {}
    for b in batches:
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
    return {"device": str(device), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "segment_median_s": statistics.median(p["seconds"] for p in per_image),
            "segment_per_image": per_image, "main_images_per_s_by_batch": batched,
            "main_batch_note": "main network alone, one image at scale 1 repeated, eval mode, "
                               "autocast on CUDA: images per second"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cpu or auto")
    ap.add_argument("--images", type=Path, default=ROOT / "example_images" / "images",
                    help="folder of images to segment (default: the bundled examples)")
    ap.add_argument("--repeats", type=int, default=3, help="segment_image() calls per image")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes of the throughput timing")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (--device cpu times the CPU)")
    result = measure(args.device, args.images, args.repeats,
                     [int(v) for v in args.batches.split(",")])
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
