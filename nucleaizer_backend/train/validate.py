"""Validation during training: the network alone on labelled images (main and preseg: DSB
score, preseg also its size estimate; unet: foreground IoU), at each image's true nucleus
size for the networks that work at the 40 px working size."""
import numpy as np

from ..evaluate import score_image, summarize
from .augment import WORKING_DIAMETER


def validation_scale(kind, item):
    """The scale a validation image is segmented at: its true nucleus size -> 40 px for main
    (so the score measures the network, not the size estimate); native scale for preseg."""
    if kind in ("main", "unet"):
        return WORKING_DIAMETER / item.diameter
    return 1.0


def validate(model, items, kind, device, styles=None, confidence=0.5):
    """DSB score (overall and per style) of a Mask R-CNN on labelled images; foreground IoU
    for a U-Net."""
    from ..detect import detect

    from ..size import SizeEstimate, estimate_diameters

    model.eval()
    if kind == "unet":
        return validate_unet(model, items, device, styles)
    scores, size_ok = [], []
    for item in items:
        image = item.image.astype(np.float32)
        dets = detect(model, image, validation_scale(kind, item), device, min_score=confidence)
        labels, _, _ = dets.to_labels(confidence)
        scores.append(score_image(item.labels, labels))
        if kind == "preseg":
            est = SizeEstimate.from_diameters(estimate_diameters(model, image, device, confidence))
            size_ok.append(abs(est.median_diameter / item.diameter - 1) <= 0.2)
    summary = summarize(scores, [i.name for i in items])
    result = {"val_dsb": summary["dsb"], "val_f1": summary["f1"]}
    # what "best" means: segmentation quality for main, size estimation for preseg
    result["val_select"] = summary["dsb"]
    if size_ok:
        result["val_size_within20"] = float(np.mean(size_ok))
        result["val_select"] = result["val_size_within20"] + 0.1 * summary["dsb"]
    if styles:
        for style in sorted(set(styles.values())):
            s = [sc for it, sc in zip(items, scores) if styles.get(it.name) == style]
            if s:
                result[f"val_dsb_{style}"] = float(np.mean([x.dsb for x in s]))
    return result


def validate_unet(model, items, device, styles=None):
    """Foreground IoU (probability > 0.5 vs annotated nuclei), mean over images and styles."""
    from ..foreground import foreground_probability

    ious = []
    for item in items:
        prob = foreground_probability(model, item.image.astype(np.float32),
                                      validation_scale("unet", item), device)
        fg, truth = prob > 0.5, item.labels > 0
        union = np.logical_or(fg, truth).sum()
        ious.append(float(np.logical_and(fg, truth).sum() / union) if union else 1.0)
    result = {"val_fg_iou": float(np.mean(ious)), "val_select": float(np.mean(ious))}
    for style in sorted(set((styles or {}).values())):
        s = [v for it, v in zip(items, ious) if styles.get(it.name) == style]
        if s:
            result[f"val_fg_iou_{style}"] = float(np.mean(s))
    return result
