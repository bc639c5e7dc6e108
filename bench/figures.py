"""Pictures for the README and BENCHMARKS.md.

- docs/example_overlay.png: the bundled example images with the outlines of the nuclei the
  shipped model finds (automatic size estimation), count found / annotated in each title;
- docs/f1_curve.png: F1 against the IoU threshold on the val split, from
  bench/results/accuracy.json;
- docs/refinement_f1.png: the same curve for each step of the ablation (Mask R-CNN alone ...
  + TTA), per style, from bench/results/ablation.json.
"""
import csv
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def example_overlay(model=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleaizer_backend import segment_image
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.overlay import overlay_outlines

    ex = ROOT / "example_images"
    with open(ex / "index.csv") as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.9))
    for ax, r in zip(axes, rows):
        img = read_image(ex / "images" / f"{r['id']}.png")
        res = segment_image(img, model=model, device="cpu")
        ax.imshow(overlay_outlines(img, res.labels))
        ax.set_title(f"{r['style']}: {res.count} found / {r['nuclei']} annotated\n"
                     f"diameter {res.diameter:.0f} px (true {float(r['median_diameter_px']):.0f})",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "example_overlay.png", dpi=80)
    plt.close(fig)


def f1_curve():
    from nucleaizer_backend.evaluate import plot_f1_curves

    res_file = ROOT / "bench" / "results" / "accuracy.json"
    if not res_file.is_file():
        return
    acc = json.loads(res_file.read_text())
    names = {"auto": "nucleAIzer (automatic size)", "true_size": "nucleAIzer (true size)",
             "identifyprimaryobjects": "IdentifyPrimaryObjects"}
    plot_f1_curves({name: acc[key]["f1_curve"] for key, name in names.items() if key in acc},
                   DOCS / "f1_curve.png")


def refinement_f1():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res_file = ROOT / "bench" / "results" / "ablation.json"
    if not res_file.is_file():
        return
    configs = json.loads(res_file.read_text())["configs"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, style in zip(axes, ("all", "fluo", "he")):
        for key, s in configs.items():
            rows = [r for r in s["per_image"] if style == "all" or r["image"] in _ids(style)]
            curve = np.mean([r["f1_curve"] for r in rows], axis=0)
            ax.plot(np.arange(0.5, 0.951, 0.05), curve, "o-", ms=3, label=s["label"])
        ax.set_title(f"val images: {style}")
        ax.set_xlabel("IoU threshold")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("F1 (mean over images)")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "refinement_f1.png", dpi=90)
    plt.close(fig)


def _ids(style):
    with open(ROOT.parent / "shared" / "data" / "dsb2018" / "index.csv") as f:
        return {r["id"] for r in csv.DictReader(f) if r["style"] == style}
