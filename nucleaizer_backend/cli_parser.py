"""The ``nucleaizer`` command's arguments: one sub-command each for segment, estimate-size,
train, adapt, tune and evaluate (cli.py runs them)."""
import argparse

from . import __version__

DESCRIPTION = "The nucleaizer command: segment, estimate-size, train, adapt, tune, evaluate."


def build_parser():
    p = argparse.ArgumentParser(prog="nucleaizer", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"nucleaizer {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", help="model folder or .safetensors file (default: shipped)")
        sp.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
        sp.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores; "
                        "with several jobs on one machine, cores / jobs)")

    s = sub.add_parser("segment", help="segment nuclei; writes OUTDIR/<image>.tif and summary.csv")
    s.add_argument("inputs", nargs="+", help="image files or folders")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--overlays", action="store_true",
                   help="also write OUTDIR/overlays/<image>.png: the image with the nuclei's "
                   "outlines in green")
    s.add_argument("--diameter", type=float, help="nucleus diameter in px (default: estimated)")
    s.add_argument("--confidence", type=float,
                   help="minimum detection score, 0-1 (default: the model's; the shipped "
                   "model's is 0.8)")
    s.add_argument("--no-refine", action="store_true",
                   help="skip post-processing and U-Net contour refinement")
    s.add_argument("--no-unet", action="store_true",
                   help="post-processing rules only, without U-Net contour refinement")
    s.add_argument("--discard-border", action="store_true",
                   help="discard nuclei touching the border of the image (as "
                   "IdentifyPrimaryObjects)")
    s.add_argument("--diameter-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="discard nuclei whose equivalent diameter is outside MIN-MAX px (as "
                   "IdentifyPrimaryObjects)")
    s.add_argument("--speed", choices=["accurate", "fast"],
                   help="accurate: nuclei enlarged to the model's working size (40 px for the "
                   "shipped model); fast: small nuclei enlarged less, several times faster on "
                   "them (BENCHMARKS.md). Default: the model's")
    s.add_argument("--tta", action="store_true",
                   help="test-time augmentation (6 versions: flips and rotations; about 2.7x slower, "
                   "BENCHMARKS.md)")
    for name, what in (("p1", "merge into a neighbour touching more than this perimeter fraction"),
                       ("p2", "minimum nucleus area, px^2 at the 40 px working scale"),
                       ("p3", "U-Net probability threshold for contour correction"),
                       ("p4", "contour margin inwards, px at the working scale"),
                       ("p5", "contour margin outwards, px at the working scale"),
                       ("p6", "minimum mean U-Net probability of a nucleus")):
        s.add_argument(f"--{name}", type=float, help=f"{what} (default: the model's)")
    model_args(s)

    e = sub.add_parser("estimate-size", help="typical nucleus diameter of each image")
    e.add_argument("inputs", nargs="+")
    e.add_argument("--csv", help="also write the estimates to this CSV file")
    model_args(e)

    t = sub.add_parser("train", help="train a main, preseg, unet or style-prior network "
                       "(resumable)")
    t.add_argument("--data", required=True, help="folder of image + label pairs")
    t.add_argument("--val", help="folder of image + label pairs for validation")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, curve)")
    t.add_argument("--kind", choices=["main", "preseg", "unet", "style"], default="main",
                   help="main: Mask R-CNN at 40 px; preseg: any size; unet: refinement U-Net; "
                   "style: the general mask-to-image generator style models start from")
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--batch-size", type=int, default=2)
    t.add_argument("--crop", type=int, default=256, help="crop size in px (working scale)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=300)
    t.add_argument("--checkpoint-every", type=int, default=250)
    t.add_argument("--val-every", type=int, default=1000)
    t.add_argument("--val-limit", type=int, help="validate on the first N images only")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="CPU threads for torch")
    t.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    t.add_argument("--workers", type=int, default=0,
                   help="processes making the training crops (0: in the training process, "
                   "exactly reproducible across --resume; on a GPU use several, e.g. cores - 2)")
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="arithmetic: auto = bf16 autocast on a GPU and on CPUs with native "
                   "bf16 (about 1.3x faster there), fp32 elsewhere")
    t.add_argument("--max-minutes", type=float,
                   help="stop after this much wall time, checkpointed (continue with --resume)")
    t.add_argument("--init", help="network file to start from")
    t.add_argument("--working-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="main: train on nuclei of MIN-MAX px (log-uniform) instead of 40 px "
                   "(+-30%%), for a network that also works at the fast speed's sizes")
    t.add_argument("--min-colour-share", type=float, default=0.3,
                   help="least share of samples for colour (stained) and for gray images")
    t.add_argument("--stain-jitter", type=float, default=0.0,
                   help="H&E stain jitter strength for colour images (0 = off, 0.05 mild, "
                   "0.2 strong)")
    t.add_argument("--styles", help="train only on these styles (comma-separated, from the "
                   "data folder's index.csv), e.g. fluo")
    t.add_argument("--synthetic", help="folder of synthetic image + label pairs mixed in")
    t.add_argument("--synthetic-share", type=float, default=0.3,
                   help="fraction of training crops taken from --synthetic (0.1-0.5)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")

    a = sub.add_parser("adapt", help="adapt a model to the style of new, unannotated images "
                       "(style adaptation; resumable: re-run the same command to continue)")
    a.add_argument("inputs", nargs="+", help="target image files or folders")
    a.add_argument("--out", required=True, help="folder of the adapted model (its work/ "
                   "subfolder holds intermediate results)")
    a.add_argument("--annotations", help="folder of label images named like some of the target "
                   "images: used as their masks instead of preseg's (GTstyle); label images "
                   "of other images in it are left out (and named)")
    a.add_argument("--preset", choices=["quick", "full"], default="quick",
                   help="quick: about 25 min for 20 images on a 2-core CPU; full: paper-like "
                   "(hours; GPU recommended)")
    a.add_argument("--synthetic-per-cluster", type=int, default=20,
                   help="synthetic image/mask pairs per style")
    a.add_argument("--synthetic-share", type=float, default=0.3,
                   help="fraction of fine-tune crops from synthetic images (0.1-0.5)")
    a.add_argument("--steps", type=int, help="fine-tune steps (default: the preset's, "
                   "quick 400, full 3000)")
    a.add_argument("--unet-steps", type=int, help="steps of the contour U-Net's fine-tune "
                   "(default: 3/4 of --steps; 0 keeps the base model's U-Net)")
    a.add_argument("--min-cluster-size", type=int, default=3,
                   help="fewest images a style model learns from")
    a.add_argument("--max-clusters", type=int,
                   help="most styles (default: the preset's, quick 4, full 100)")
    a.add_argument("--replay-data", help="folder of annotated image + label pairs mixed into "
                   "the fine-tune (default: the replay set shipped with the package)")
    a.add_argument("--replay-styles", help="use only these styles of --replay-data (comma-"
                   "separated, from its index.csv), e.g. fluo")
    a.add_argument("--iterations", type=int, default=1,
                   help="rounds of adaptation; rounds 2+ take their masks from the previous "
                        "round's model (default 1)")
    a.add_argument("--masks-from", choices=["preseg", "model"], default="preseg",
                   help="masks of unannotated images: the base model's preseg network (default) "
                        "or its full segmentation")
    a.add_argument("--min-reliable-share", type=float, default=0.5,
                   help="a style is learned only when at least this share of its images has "
                        "masks with >= 5 nuclei (default 0.5; 0: no check)")
    a.add_argument("--style-init", help="generator the style models start from: a "
                   "pix2pix generator file, or 'none' to train them from scratch (default: "
                   "the shipped style prior)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, help="CPU threads for torch")
    a.add_argument("--model", help="base model folder or main .safetensors file "
                   "(default: shipped)")
    a.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")

    u = sub.add_parser("tune", help="tune post-processing (p1..p6, confidence) on annotated "
                       "images; writes them into a model folder's model.json")
    u.add_argument("--images", required=True, help="folder of images")
    u.add_argument("--truth", required=True, help="folder of label images with the same names")
    u.add_argument("--out", help="new model folder (a copy of --model with the tuned values); "
                   "needed when tuning the shipped model")
    u.add_argument("--rounds", type=int, default=2, help="coordinate-descent rounds")
    u.add_argument("--dry-run", action="store_true", help="only print the tuned values")
    model_args(u)

    v = sub.add_parser("evaluate", help="score label images against ground truth "
                       "(docs/METHOD.md section 5)")
    v.add_argument("--pred", required=True, help="folder of predicted label images")
    v.add_argument("--truth", required=True, help="folder of true label images (or DIR/labels)")
    v.add_argument("--json", help="write all metrics and per-image rows to this JSON file")
    v.add_argument("--csv", help="write one row per image (counts, DSB, mAP, mAR, mF1, errors "
                   "at IoU 0.7) to this CSV file")
    v.add_argument("--plot", help="write a PNG of F1 against the IoU threshold to this file")
    return p
