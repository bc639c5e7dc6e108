"""Benchmark section style_distance: does the style distance (nucleaizer_backend.style.distance)
tell users when to adapt?

- **val, shipped model**: every val image segmented as users run it (automatic size); its
  DSB score against its style distance and the model's threshold: Spearman correlation, mean
  DSB of the images above and below the threshold, share above per style.
- **held-out styles**: for H&E and for each fluorescence cluster (k-means, k =
  FLUO_CLUSTERS, seed 0, of the standardised style features of every fluorescence image of
  train and val), a reference fitted as the packaging script fits it but on the train images
  *without* that style; the share of the held-out style's images (train and val) above its
  threshold (wanted high: the style was not trained), and the share of the val images of the
  other styles above it (wanted low, though val images come from experiments that train does
  not hold, so some are new styles in fact).
"""
import numpy as np

from bench.common import index_rows, load_pair

FLUO_CLUSTERS = 6


def _features(rows):
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.style.distance import image_style_features

    from bench.common import DATA

    return np.array([image_style_features(read_image(DATA / r["split"] / "images" /
                                                     f"{r['id']}.png")) for r in rows])


def held_out_styles(rows, features):
    """{name: (N,) bool} of the held-out styles: "H&E" and "fluo cluster k"."""
    from nucleaizer_backend.style.cluster import kmeans, standardise

    style = np.array([r["style"] for r in rows])
    groups = {"H&E": style == "he"}
    fluo = np.flatnonzero(style == "fluo")
    z, _, _ = standardise(features[fluo])
    assign, _ = kmeans(z, FLUO_CLUSTERS, seed=0)
    for k in range(FLUO_CLUSTERS):
        g = np.zeros(len(rows), bool)
        g[fluo[assign == k]] = True
        groups[f"fluo cluster {k}"] = g
    return groups


def section_held_out(rows, features):
    from nucleaizer_backend.style.distance import fit_reference

    split = np.array([r["split"] for r in rows])
    out = []
    for name, held in held_out_styles(rows, features).items():
        ref = fit_reference(features[(split == "train") & ~held])
        d_held = ref.distance(features[held])
        d_other = ref.distance(features[(split == "val") & ~held])
        out.append({"style": name, "images": int(held.sum()),
                    "train_images": int((held & (split == "train")).sum()),
                    "threshold": ref.threshold,
                    "held_out_above": float(np.mean(d_held > ref.threshold)),
                    "other_val_images": int(len(d_other)),
                    "other_val_above": float(np.mean(d_other > ref.threshold))})
    return out


def section_val(model):
    from scipy.stats import spearmanr

    from nucleaizer_backend import Model
    from nucleaizer_backend.evaluate import score_image

    m = Model.load(model, device="cpu")
    per_image = []
    for r in index_rows("val"):
        img, truth = load_pair(r)
        res = m.segment(img)
        per_image.append({"id": r["id"][:12], "style": r["style"],
                          "distance": res.style_distance, "above": res.unfamiliar_style,
                          "dsb": score_image(truth, res.labels).dsb,
                          "seconds_style": res.stage_seconds["style"]})
    d = np.array([p["distance"] for p in per_image])
    s = np.array([p["dsb"] for p in per_image])
    above = np.array([p["above"] for p in per_image])
    rho = spearmanr(d, s)
    out = {"threshold": res.style_threshold, "images": len(per_image),
           "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue),
           "above": int(above.sum()),
           "dsb_above": float(s[above].mean()) if above.any() else None,
           "dsb_below": float(s[~above].mean()) if (~above).any() else None,
           "median_seconds_style": float(np.median([p["seconds_style"] for p in per_image])),
           "per_style": {}, "per_image": per_image}
    for style in ("fluo", "he"):
        g = np.array([p["style"] == style for p in per_image])
        out["per_style"][style] = {"images": int(g.sum()), "above": int((above & g).sum()),
                                   "dsb_above": float(s[above & g].mean())
                                   if (above & g).any() else None,
                                   "dsb_below": float(s[~above & g].mean())
                                   if (~above & g).any() else None}
    return out


def section_style_distance(model):
    rows = index_rows()
    features = _features(rows)
    return {"val": section_val(model), "held_out": section_held_out(rows, features),
            "fluo_clusters": FLUO_CLUSTERS}
