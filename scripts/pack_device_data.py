"""Pack the DSB 2018 train split compactly for a GPU machine reached through the device tool,
whose copy of the working tree (tracked files + carried paths) is limited to 64 MiB.

Every image is stored as lossless WebP (21.6 MiB for the 35.7 MiB of PNGs; WebP keeps
three channels, and gray ones cost little), labels as zlib TIFF; nothing is resampled or
re-quantised. When the result would exceed --budget-mib (by default what the tracked files
leave), the largest images are cut to their --crop x --crop window with the most nuclei
until it fits (reported). Writes OUT/images, OUT/labels, OUT/index.csv.

Usage (repository root): python scripts/pack_device_data.py [--out .device/train]
Then carry ".device" in the device run (scripts/device_train_main.py says how).
"""
import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nucleaizer_backend.imageio_utils import read_image  # noqa: E402
from nucleaizer_backend.imageio_utils import write_labels  # noqa: E402
from nucleaizer_backend.train.data import read_labels  # noqa: E402

TRAVEL_LIMIT_MIB = 64.0  # the device tool's limit on the working tree that travels


def as_stored(image):
    """uint8 (H, W) or (H, W, 3) (an alpha channel dropped)."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3]
    if a.dtype != np.uint8:
        raise ValueError(f"expected 8-bit images, got {a.dtype}")
    return a


def webp_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "WEBP", lossless=True, quality=100, method=4)
    return buf.getvalue()


def label_bytes(labels):
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.asarray(labels), compression="zlib")
    return buf.getvalue()


def tracked_mib():
    """MiB of the files git tracks (they always travel to the device machine)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file()) / 2 ** 20


def densest_window(labels, crop):
    """(y0, x0) of the crop x crop window holding the most labelled pixels (on a coarse grid)."""
    h, w = labels.shape
    ys = range(0, max(h - crop, 0) + 1, 32)
    xs = range(0, max(w - crop, 0) + 1, 32)
    fg = labels > 0
    return max(((y, x) for y in ys for x in xs), key=lambda p: fg[p[0]:p[0] + crop,
                                                                  p[1]:p[1] + crop].sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dsb2018"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", default=str(ROOT / ".device" / "train"))
    ap.add_argument("--budget-mib", type=float,
                    help="most MiB of images (default: what the 64 MiB that travel leave after "
                    "the tracked files, the labels and 2 MiB of margin)")
    ap.add_argument("--crop", type=int, default=512)
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    with open(data / "index.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split]
    packed = []
    for r in rows:
        image = as_stored(read_image(data / args.split / "images" / f"{r['id']}.png"))
        labels = read_labels(data / args.split / "labels" / f"{r['id']}.tif")
        packed.append({"row": r, "image": image, "labels": labels, "bytes": webp_bytes(image),
                       "window": None})
    if args.budget_mib is None:
        labels_mib = sum(len(label_bytes(p["labels"])) for p in packed) / 2 ** 20
        args.budget_mib = TRAVEL_LIMIT_MIB - tracked_mib() - labels_mib - 2.0
        print(f"budget {args.budget_mib:.1f} MiB of images (tracked files {tracked_mib():.1f} "
              f"MiB, labels {labels_mib:.1f} MiB)", flush=True)
    total = lambda: sum(len(p["bytes"]) for p in packed) / 2 ** 20  # noqa: E731
    print(f"{len(packed)} images, {total():.1f} MiB as lossless WebP", flush=True)
    for p in sorted(packed, key=lambda p: -len(p["bytes"])):
        if total() <= args.budget_mib:
            break
        h, w = p["labels"].shape
        if h <= args.crop and w <= args.crop:
            continue
        c = args.crop
        y0, x0 = densest_window(p["labels"], c)
        window = (slice(y0, y0 + c), slice(x0, x0 + c))
        p["image"], p["labels"] = p["image"][window], p["labels"][window]
        p["bytes"], p["window"] = webp_bytes(p["image"]), f"{y0}:{y0 + c},{x0}:{x0 + c}"
    cropped = [p for p in packed if p["window"]]
    if total() > args.budget_mib:
        sys.exit(f"still {total():.1f} MiB after cropping {len(cropped)} images to {args.crop} px: "
                 f"raise --budget-mib or lower --crop")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for p in packed:
        (out / "images" / f"{p['row']['id']}.webp").write_bytes(p["bytes"])
        write_labels(out / "labels" / f"{p['row']['id']}.tif", p["labels"])
    with open(out / "index.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["id", "style", "window"])
        for p in packed:
            wr.writerow([p["row"]["id"], p["row"]["style"], p["window"] or ""])
    print(f"wrote {out}: {total():.1f} MiB of images; {len(cropped)} cut to their densest "
          f"{args.crop} px window", flush=True)


if __name__ == "__main__":
    main()
