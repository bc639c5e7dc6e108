"""Build the shipped replay set: a compact sample of the original annotated training data.

    python scripts/build_replay_set.py --data DATA [--out nucleaizer_backend/weights/replay]
        [--fluo 34] [--he 14] [--max-side 512]

DATA is an annotated data set folder: ``index.csv`` (columns id, split, style, height, width,
nuclei, median_diameter_px; style ``fluo`` or ``he``) and ``train/images/<id>.png`` with
``train/labels/<id>.tif`` (uint16 instance labels). The shipped set was built, from the
repository root, with ``--data ../shared/data/dsb2018`` (the DSB 2018 data the benchmarks
use, kept beside the repository; not shipped).

Style adaptation fine-tunes the main network on the original annotated data plus synthetic
pairs in the new style (docs/METHOD.md section 4.6), so that the network learns the new style
without forgetting the old ones. A CellProfiler user adapting a model does not have the DSB
training data; the package therefore ships this sample of it (about 3 MB).

Selection (deterministic): images of the train split only (the data set's index.csv), about
70% fluorescence and 30% H&E-like brightfield (the default model's ``min_colour_share`` gives
H&E at least 30% of the training samples anyway). Within each style the images are sorted by
median nucleus diameter and split into as many equal-count bins as images wanted; from each
bin the image with the fewest pixels is taken (ties: the most nuclei, then the first id), so that nucleus sizes are
spread like the data set's and small images are preferred. Images larger than ``--max-side``
are cropped to at most max-side x max-side at the window (on a 32 px grid) that keeps the most
nuclei whole; nuclei cut by the window keep their visible part (as at any image border), and
labels are renumbered 1..N.

Written: ``images/<style>_<first 12 hex digits of the id>.png`` (8-bit; gray images as one
channel), ``labels/<same>.tif`` (uint16, zlib), ``index.csv`` (id, style, source_id, height,
width, nuclei, median_diameter_px, crop) and ``README.md`` (provenance).
"""
import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nucleaizer_backend.imageio_utils import read_image, write_labels  # noqa: E402
from nucleaizer_backend.labels import equivalent_diameters, relabel_sequential  # noqa: E402
from nucleaizer_backend.train.data import read_labels  # noqa: E402

DEFAULT_OUT = ROOT / "nucleaizer_backend" / "weights" / "replay"

README = """# Replay set

{n} annotated images ({n_fluo} fluorescence, {n_he} H&E-like brightfield) from the DSB 2018
stage-1 training set with corrected annotations (Broad Bioimage Benchmark Collection BBBC038;
CC0 1.0, public domain), train split of the project's data (`{source}`),
selected by `scripts/build_replay_set.py` (spread over nucleus sizes, small images preferred,
images larger than {side} px cropped to at most {side}x{side}).

Style adaptation (`nucleaizer adapt`, `nucleaizer_backend.adapt`) fine-tunes the main network
on these images plus the synthetic images in the new style, so that the adapted model keeps
segmenting the styles it was trained on. `images/*.png` (8-bit, gray or RGB), `labels/*.tif`
(uint16 instance labels, 0 = background), `index.csv` (id, style, source_id = the DSB image
id, size, nuclei, median nucleus diameter in px, crop window y0:y1,x0:x1 or empty).
"""


def pick(rows, n):
    """``n`` rows spread over the median nucleus diameter: of each bin the smallest image
    (ties: the most nuclei)."""
    rows = sorted(rows, key=lambda r: (float(r["median_diameter_px"]), r["id"]))
    bins = np.array_split(np.arange(len(rows)), n)
    chosen = []
    for b in bins:
        candidates = [rows[i] for i in b]
        chosen.append(min(candidates, key=lambda r: (int(r["height"]) * int(r["width"]),
                                                      -int(r["nuclei"]), r["id"])))
    return chosen


def best_window(labels, side, grid=32):
    """(y0, x0) of the side x side window (on a ``grid`` px grid) holding the most whole
    nuclei (ties: the most nuclei pixels, then top-left)."""
    h, w = labels.shape
    wh, ww = min(side, h), min(side, w)
    ys = sorted(set(list(range(0, h - wh + 1, grid)) + [h - wh]))
    xs = sorted(set(list(range(0, w - ww + 1, grid)) + [w - ww]))
    ids = np.arange(labels.max() + 1)
    best = None
    for y0 in ys:
        for x0 in xs:
            win = labels[y0:y0 + wh, x0:x0 + ww]
            inside = np.bincount(win.ravel(), minlength=len(ids))
            total = np.bincount(labels.ravel(), minlength=len(ids))
            whole = int(np.sum((inside[1:] == total[1:]) & (total[1:] > 0)))
            key = (whole, int(inside[1:].sum()))
            if best is None or key > best[0]:
                best = (key, y0, x0)
    return best[1], best[2], wh, ww


def to_stored_image(image):
    """8-bit image to store: one channel when all colour channels are equal."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim == 3 and np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
        a = a[..., 0]
    if a.dtype != np.uint8:
        raise SystemExit(f"expected 8-bit images, got {a.dtype}")
    return a


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="data set folder: index.csv and train/images, train/labels")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="output folder (default: the package's weights/replay)")
    ap.add_argument("--fluo", type=int, default=34, help="fluorescence images")
    ap.add_argument("--he", type=int, default=14, help="H&E-like brightfield images")
    ap.add_argument("--max-side", type=int, default=512)
    args = ap.parse_args(argv)
    import imageio.v3 as iio

    index, train = args.data / "index.csv", args.data / "train"
    if not index.is_file() or not (train / "images").is_dir():
        sys.exit(f"{args.data}: not a data set folder (needs index.csv and train/images, "
                 "train/labels)")
    t0 = time.time()
    with open(index, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    chosen = pick([r for r in rows if r["style"] == "fluo"], args.fluo) + \
        pick([r for r in rows if r["style"] == "he"], args.he)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "labels").mkdir(parents=True, exist_ok=True)
    for old in list((args.out / "images").glob("*")) + list((args.out / "labels").glob("*")):
        old.unlink()
    out_rows = []
    for r in chosen:
        image = read_image(train / "images" / f"{r['id']}.png")
        labels = read_labels(train / "labels" / f"{r['id']}.tif")
        crop = ""
        if max(labels.shape) > args.max_side:
            y0, x0, wh, ww = best_window(labels, args.max_side)
            image = image[y0:y0 + wh, x0:x0 + ww]
            labels = relabel_sequential(labels[y0:y0 + wh, x0:x0 + ww])
            crop = f"{y0}:{y0 + wh},{x0}:{x0 + ww}"
        name = f"{r['style']}_{r['id'][:12]}"
        iio.imwrite(args.out / "images" / f"{name}.png", to_stored_image(image))
        write_labels(args.out / "labels" / f"{name}.tif", labels.astype(np.uint16))
        d = equivalent_diameters(labels)
        out_rows.append({"id": name, "style": r["style"], "source_id": r["id"],
                         "height": labels.shape[0], "width": labels.shape[1],
                         "nuclei": int(labels.max()),
                         "median_diameter_px": round(float(np.median(d)), 1) if len(d) else "",
                         "crop": crop})
    with open(args.out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    (args.out / "README.md").write_text(README.format(
        n=len(out_rows), n_fluo=args.fluo, n_he=args.he, side=args.max_side,
        source=train.as_posix()))
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {len(out_rows)} images, {size / 1e6:.2f} MB, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
