"""The one implementation of the segmentation metrics (docs/METHOD.md section 5).

Used by the tests, the benchmarks, validation during training and ``nucleaizer evaluate``.

- IoU(x, y) = |x & y| / |x | y|; a prediction matches a true nucleus at threshold t when
  IoU > t (strictly); for t >= 0.5 matches are one-to-one.
- DSB score per image: mean over t = 0.50, 0.55, ..., 0.95 of TP / (TP + FP + FN); an image
  without true and predicted nuclei scores 1. Dataset score: mean over images.
- mAP, mAR, mF1: precision, recall, F1 averaged the same way (a ratio whose denominator is 0
  counts as 1 when there was nothing to find and nothing found, else 0).
- Caicedo's F1: F1 averaged over t = 0.50 ... 0.90.
- Errors at IoU 0.7: missed (true nuclei without match), extra (predictions without match);
  merges: predictions overlapping more than one true nucleus with IoU > 0.1; splits: true
  nuclei overlapped by more than one prediction with IoU > 0.1.
"""
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

THRESHOLDS = np.round(np.arange(0.50, 0.951, 0.05), 2)
CAICEDO_THRESHOLDS = np.round(np.arange(0.50, 0.901, 0.05), 2)
ERROR_IOU = 0.7
OVERLAP_IOU = 0.1


def iou_matrix(truth, pred):
    """IoU of every true object (rows) with every predicted object (columns).

    Label ids need not be consecutive; returns (n_true, n_pred) float64.
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {truth.shape} vs {pred.shape}")
    _, t = np.unique(truth.ravel(), return_inverse=True)
    _, p = np.unique(pred.ravel(), return_inverse=True)
    # index 0 is background only when the image has background; shift so it always is
    t = t + (0 if truth.min() == 0 else 1)
    p = p + (0 if pred.min() == 0 else 1)
    nt, np_ = int(t.max()) + 1, int(p.max()) + 1
    inter = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_)
    area_t = inter.sum(axis=1)
    area_p = inter.sum(axis=0)
    inter = inter[1:, 1:]
    union = area_t[1:, None] + area_p[None, 1:] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _ratio(num, den, nothing_to_do):
    return num / den if den > 0 else (1.0 if nothing_to_do else 0.0)


@dataclass
class ImageScores:
    """Metrics of one image; the per-threshold arrays follow ``THRESHOLDS``."""

    dsb: float
    precision: float
    recall: float
    f1: float
    caicedo_f1: float
    f1_curve: list
    n_true: int
    n_pred: int
    missed: int
    extra: int
    merges: int
    splits: int

    def to_dict(self):
        return asdict(self)


def score_image(truth, pred):
    """All metrics of one predicted label image against its ground truth."""
    iou = iou_matrix(truth, pred)
    n_true, n_pred = iou.shape
    empty = n_true == 0 and n_pred == 0
    dsb, prec, rec, f1 = [], [], [], []
    for t in THRESHOLDS:
        tp = int((iou > t).sum())
        fp, fn = n_pred - tp, n_true - tp
        dsb.append(_ratio(tp, tp + fp + fn, empty))
        prec.append(_ratio(tp, tp + fp, fn == 0))
        rec.append(_ratio(tp, tp + fn, fp == 0))
        f1.append(_ratio(2 * tp, 2 * tp + fp + fn, empty))
    tp7 = int((iou > ERROR_IOU).sum())
    overlaps = iou > OVERLAP_IOU
    caicedo = [f for t, f in zip(THRESHOLDS, f1) if t <= CAICEDO_THRESHOLDS[-1] + 1e-9]
    return ImageScores(
        dsb=float(np.mean(dsb)),
        precision=float(np.mean(prec)),
        recall=float(np.mean(rec)),
        f1=float(np.mean(f1)),
        caicedo_f1=float(np.mean(caicedo)),
        f1_curve=[float(v) for v in f1],
        n_true=n_true,
        n_pred=n_pred,
        missed=n_true - tp7,
        extra=n_pred - tp7,
        merges=int((overlaps.sum(axis=0) > 1).sum()),
        splits=int((overlaps.sum(axis=1) > 1).sum()),
    )


def summarize(scores, names=None):
    """Dataset summary of a list of ImageScores: means of the per-image metrics, summed
    error counts, the mean F1 curve, and the per-image rows (with ``names``)."""
    if not scores:
        raise ValueError("no images to summarize")
    keys = ["dsb", "precision", "recall", "f1", "caicedo_f1"]
    out = {k: float(np.mean([getattr(s, k) for s in scores])) for k in keys}
    for k in ["n_true", "n_pred", "missed", "extra", "merges", "splits"]:
        out[k] = int(sum(getattr(s, k) for s in scores))
    out["f1_curve"] = {f"{t:.2f}": float(v) for t, v in
                       zip(THRESHOLDS, np.mean([s.f1_curve for s in scores], axis=0))}
    out["images"] = len(scores)
    names = names or [str(i) for i in range(len(scores))]
    out["per_image"] = [dict(image=n, **s.to_dict()) for n, s in zip(names, scores)]
    return out


def plot_f1_curves(curves, path, title=None):
    """Write a PNG of F1 against the IoU threshold (0.50-0.95).

    curves: {label: summarize() dict, or its ``f1_curve`` mapping {"0.50": F1, ...}}; one
    line each. path: the PNG file (folders made). Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        curve = curve.get("f1_curve", curve)
        ax.plot([float(t) for t in curve], list(curve.values()), "o-", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("F1 (mean over images)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
