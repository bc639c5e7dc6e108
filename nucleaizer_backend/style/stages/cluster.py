"""Stage b, cluster: style features of every image and its mask (style.cluster), k-means with
over-clustering and small-cluster merging; ``work/cluster.json``. Images of clusters that
stay too small ("skipped"), hold no nuclei, or have reliable masks in fewer than
``min_reliable_share`` of their images get no style model and are reported (a pix2pix model
trained on masks that miss most nuclei learns to paint nuclei no mask labels, and its
synthetic images would teach the detector to ignore nuclei)."""
import numpy as np

from ...errors import NucleaizerError
from .masks import mask_reliable, read_mask


def run(ctx):
    from ...preprocess import normalize_image
    from ..cluster import FEATURE_NAMES, cluster_styles, style_features

    work, targets, s, report = ctx.work, ctx.targets, ctx.settings, ctx.report
    features = []
    for i, t in enumerate(targets):
        raw = t.read()
        features.append(style_features(normalize_image(raw), read_mask(work, t), raw=raw))
        report("cluster", i, len(targets) + 1, {"image": t.name})
    features = np.asarray(features)
    clusters = cluster_styles(features, min_cluster_size=s.min_cluster_size,
                              max_k=s.max_clusters, seed=s.seed,
                              max_merge_distance=s.max_merge_distance)
    masks = work.done("masks")["images"]
    styles, report_lines = [], clusters.report()
    for k in range(clusters.n_styles):
        names = [t.name for t, a in zip(targets, clusters.assignment) if a == k]
        nuclei = sum(masks[n]["nuclei"] for n in names)
        min_share = float(s.min_reliable_share)
        reliable = [n for n in names if masks[n].get("reliable", mask_reliable(masks[n]))]
        if min_share == 0:  # no check: every image teaches its style
            reliable = names
        share = len(reliable) / len(names) if names else 0.0
        reason = None
        if k in clusters.skipped:
            reason = f"fewer than {s.min_cluster_size} images"
        elif nuclei == 0:
            reason = "no nuclei in its masks"
            report_lines.append(f"style {k}: no nuclei found in its masks: skipped")
        elif not reliable or share < min_share:
            reason = (f"reliable masks in only {len(reliable)} of its {len(names)} images "
                      f"(below min_reliable_share {min_share:g})")
            report_lines.append(f"style {k}: {reason}: skipped (a further iteration may "
                                "find its nuclei)")
        styles.append({"style": k, "images": names, "size": len(names), "nuclei": nuclei,
                       "mask_images": reliable, "learned": reason is None, "skip_reason": reason})
    if not any(st["learned"] for st in styles):
        advice = (f"Give more images (at least min_cluster_size = {s.min_cluster_size} of a "
                  "style) or a smaller min_cluster_size")
        if any("reliable" in (st["skip_reason"] or "") for st in styles):
            advice += ("; where the base model finds too few nuclei, give annotations for some "
                       "images or a smaller min_reliable_share")
        raise NucleaizerError(f"no style can be learned: {'; '.join(report_lines)}. {advice}")
    report("cluster", len(targets) + 1, len(targets) + 1, {"styles": clusters.n_styles})
    return {"styles": styles, "assignment": {t.name: int(a) for t, a in
                                             zip(targets, clusters.assignment)},
            "sizes": clusters.sizes, "merged": clusters.merged, "skipped": clusters.skipped,
            "kmeans_k": clusters.kmeans_k, "report": report_lines,
            "feature_names": FEATURE_NAMES,
            "features": {t.name: f for t, f in zip(targets, features)}}


def summary(record):
    return {"styles": len(record["styles"]),
            "learned": sum(st["learned"] for st in record["styles"])}
