"""Build the shipped nucleus-shape database from annotated training labels.

    python scripts/build_shape_db.py --data FOLDER [--dataset TEXT]
        [--out nucleaizer_backend/weights/nucleus_shapes.npz] [--max-shapes 3000] [--size 32]

FOLDER holds annotated images in any layout ``nucleaizer train`` reads (train.data.find_pairs:
``images/`` with ``labels/`` or ``masks/``, or label files beside the images). Every label
image is read; up to --max-shapes nuclei that do not touch their image border are kept, in a
canonical frame (style.shapes). The source (--dataset, default the folder as given; images,
shapes) is recorded in the file. The shipped file was built, from the repository root, with

    python scripts/build_shape_db.py --data ../shared/data/dsb2018/train \
        --dataset "DSB 2018 stage-1 training labels (BBBC038, corrected, CC0 1.0)"

(the DSB 2018 data the benchmarks use, kept beside the repository; not shipped).
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nucleaizer_backend.errors import NucleaizerError  # noqa: E402
from nucleaizer_backend.style.shapes import (DEFAULT_SHAPE_DB, MAX_SHAPES,  # noqa: E402
                                             SHAPE_SIZE, build_shape_db)
from nucleaizer_backend.train.data import find_pairs, read_labels  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of image/label pairs")
    ap.add_argument("--dataset", help="what the labels are, recorded in the file (default: "
                    "the --data folder as given)")
    ap.add_argument("--out", type=Path, default=DEFAULT_SHAPE_DB,
                    help="output file (default: the package's weights/nucleus_shapes.npz)")
    ap.add_argument("--max-shapes", type=int, default=MAX_SHAPES)
    ap.add_argument("--size", type=int, default=SHAPE_SIZE, help="canonical mask side, px")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        pairs = find_pairs(args.data)
    except NucleaizerError as e:
        sys.exit(str(e))
    source = {"dataset": args.dataset or str(args.data), "folder": args.data.name}
    db = build_shape_db((read_labels(label) for _, label in pairs), size=args.size,
                        max_shapes=args.max_shapes, seed=args.seed, source=source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    db.save(args.out)
    print(f"{args.out}: {len(db)} shapes of {db.size}x{db.size} px from {db.source['images']} "
          f"images, {args.out.stat().st_size / 1024:.0f} KiB, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
