"""Pack a training folder losslessly and compactly, to copy it to another machine (a GPU
machine, a cluster) and train there.

    python scripts/pack_training_data.py DATA OUT [--max-mib N] [--crop 512]

DATA is a folder of annotated images in any layout ``nucleaizer train`` reads (``images/``
with ``labels/`` or ``masks/``, or label files beside the images). OUT gets
``images/<name>.webp`` (8-bit images as lossless WebP: the DSB 2018 train split's 35.7 MiB of
PNGs take 21.6 MiB; gray images are stored as three equal channels, an alpha channel is
dropped, as the package ignores it anyway), ``images/<name>.tif`` for other images (16-bit,
float: zlib TIFF, as read), ``labels/<name>.tif`` (the instance labels as ``nucleaizer train``
reads them, zlib TIFF) and ``index.csv`` (id, style when DATA's index.csv gives styles, and
window). Nothing is resampled or re-quantised: OUT trains exactly as DATA does
(``nucleaizer train --data OUT ...``, ``--styles`` included).

With ``--max-mib N``, when the images would take more than N MiB in all, the largest images
are cut, one after the other, to their ``--crop`` x ``--crop`` window holding the most
annotated pixels until they fit; ``index.csv`` records each cut image's window
(``y0:y1,x0:x1``) and the script reports how many were cut. Without it nothing is cut.

Example (the DSB 2018 train and val splits, from the repository root):

    python scripts/pack_training_data.py ../shared/data/dsb2018/train packed/train
    python scripts/pack_training_data.py ../shared/data/dsb2018/val packed/val

then copy ``packed/`` to the other machine and train there with ``--data packed/train
--val packed/val`` (``nucleaizer train`` or ``scripts/train_timeboxed.py``).
"""
import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nucleaizer_backend.errors import NucleaizerError  # noqa: E402
from nucleaizer_backend.imageio_utils import read_image, write_labels  # noqa: E402
from nucleaizer_backend.train.data import find_pairs, read_labels  # noqa: E402
from nucleaizer_backend.train.data import read_styles  # noqa: E402


def as_webp_array(image):
    """The array to store as lossless WebP (uint8 (H, W) or (H, W, 3): an alpha channel
    dropped), or None when the image is not 8-bit gray, RGB or RGBA."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        return None
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return a[..., :3]
    if a.ndim == 3 and a.shape[-1] == 1:
        return a[..., 0]
    return a if a.ndim == 2 else None


def encode(image):
    """(bytes, file suffix) of ``image`` stored losslessly."""
    buf = io.BytesIO()
    a = as_webp_array(image)
    if a is not None:
        Image.fromarray(a).save(buf, "WEBP", lossless=True, quality=100, method=4)
        return buf.getvalue(), ".webp"
    tifffile.imwrite(buf, np.asarray(image), compression="zlib")
    return buf.getvalue(), ".tif"


def compact(labels):
    """The labels in the smallest unsigned type that holds them (the same objects)."""
    return labels.astype(np.uint16 if labels.max() < 2 ** 16 else np.uint32)


def label_bytes(labels):
    buf = io.BytesIO()
    tifffile.imwrite(buf, labels, compression="zlib")
    return buf.getvalue()


def densest_window(labels, crop):
    """(y0, x0) of the crop x crop window holding the most labelled pixels (on a coarse grid)."""
    h, w = labels.shape
    ys = range(0, max(h - crop, 0) + 1, 32)
    xs = range(0, max(w - crop, 0) + 1, 32)
    fg = labels > 0
    return max(((y, x) for y in ys for x in xs), key=lambda p: fg[p[0]:p[0] + crop,
                                                                  p[1]:p[1] + crop].sum())


def mib(packed):
    return sum(len(p["bytes"]) + p["label_size"] for p in packed) / 2 ** 20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="training folder (images with their labels)")
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--max-mib", type=float, help="most MiB of images and labels in all; the "
                    "largest images are cut to their densest --crop window until they fit "
                    "(default: no limit, nothing is cut)")
    ap.add_argument("--crop", type=int, default=512, help="side of the window an image is cut "
                    "to when over --max-mib (px, default 512)")
    args = ap.parse_args(argv)
    if args.out.is_dir() and any(args.out.iterdir()):
        sys.exit(f"{args.out}: not empty; give a new output folder")
    try:
        pairs = find_pairs(args.data)
    except NucleaizerError as e:
        sys.exit(str(e))
    styles = read_styles(args.data)
    packed = []
    for image_path, label_path in pairs:
        image, labels = read_image(image_path), compact(read_labels(label_path))
        data, suffix = encode(image)
        packed.append({"id": image_path.stem, "image": image, "labels": labels, "bytes": data,
                       "suffix": suffix, "label_size": len(label_bytes(labels)),
                       "window": None})
    print(f"{len(packed)} images, {mib(packed):.1f} MiB packed", flush=True)
    if args.max_mib is not None:
        c = args.crop
        for p in sorted(packed, key=lambda p: -len(p["bytes"])):
            if mib(packed) <= args.max_mib:
                break
            h, w = p["labels"].shape
            if (h <= c and w <= c) or np.asarray(p["image"]).shape[:2] != (h, w):
                continue
            y0, x0 = densest_window(p["labels"], c)
            window = (slice(y0, y0 + c), slice(x0, x0 + c))
            p["image"], p["labels"] = p["image"][window], p["labels"][window]
            p["bytes"], p["suffix"] = encode(p["image"])
            p["label_size"] = len(label_bytes(p["labels"]))
            p["window"] = f"{y0}:{y0 + c},{x0}:{x0 + c}"
    cropped = [p for p in packed if p["window"]]
    if args.max_mib is not None and mib(packed) > args.max_mib:
        sys.exit(f"still {mib(packed):.1f} MiB after cutting {len(cropped)} images to {args.crop} "
                 "px: raise --max-mib or lower --crop")
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    for p in packed:
        (args.out / "images" / f"{p['id']}{p['suffix']}").write_bytes(p["bytes"])
        write_labels(args.out / "labels" / f"{p['id']}.tif", p["labels"])
    columns = ["id", "style", "window"] if styles else ["id", "window"]
    with open(args.out / "index.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(columns)
        for p in packed:
            wr.writerow([p["id"], styles.get(p["id"], ""), p["window"] or ""] if styles
                        else [p["id"], p["window"] or ""])
    print(f"wrote {args.out}: {mib(packed):.1f} MiB; {len(cropped)} cut to their densest "
          f"{args.crop} px window", flush=True)


if __name__ == "__main__":
    main()
