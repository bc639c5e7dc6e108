"""Pictures for the README and BENCHMARKS.md.

- docs/example_overlay.png: the bundled example images with the outlines of the nuclei the
  shipped model finds (automatic size estimation), count found / annotated in each title;
- docs/f1_curve.png: F1 against the IoU threshold on the val split, from
  bench/results/accuracy.json.
"""
import csv
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def outline(labels):
    """Boolean (H, W) image of object boundaries (pixels next to another label)."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def example_overlay(model=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleaizer_backend import segment_image
    from nucleaizer_backend.imageio_utils import read_image

    ex = ROOT / "example_images"
    with open(ex / "index.csv") as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.9))
    for ax, r in zip(axes, rows):
        img = read_image(ex / "images" / f"{r['id']}.png")[..., :3]
        res = segment_image(img, model=model, device="cpu")
        shown = img.astype(float) / max(img.max(), 1)
        shown[outline(res.labels)] = [0.1, 1.0, 0.1]
        ax.imshow(shown)
        ax.set_title(f"{r['style']}: {res.count} found / {r['nuclei']} annotated\n"
                     f"diameter {res.diameter:.0f} px (true {float(r['median_diameter_px']):.0f})",
                     fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "example_overlay.png", dpi=80)
    plt.close(fig)


def f1_curve():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res_file = ROOT / "bench" / "results" / "accuracy.json"
    if not res_file.is_file():
        return
    acc = json.loads(res_file.read_text())
    names = {"auto": "nucleAIzer (automatic size)", "true_size": "nucleAIzer (true size)",
             "identifyprimaryobjects": "IdentifyPrimaryObjects"}
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, name in names.items():
        if key in acc:
            curve = acc[key]["f1_curve"]
            ax.plot([float(t) for t in curve], list(curve.values()), "o-", label=name)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("F1 (mean over val images)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "f1_curve.png", dpi=90)
    plt.close(fig)
