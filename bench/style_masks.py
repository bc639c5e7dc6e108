"""Benchmark section style_masks: do the masks a style adaptation learns from, and the
synthetic masks it makes from them, follow the style's true nuclei?

For each style of the val split (H&E; fluorescence), on its images: the annotated nuclei
(truth), the base model's automatic masks as the masks stage makes them without the guard
(before) and with it (after: style.masks.guard_mask), and synthetic masks drawn from the
guarded masks' statistics (style.masks.synthesize_mask, SYNTHETIC per style at the style's
median image size). Each against the truth: diameter quantiles and the two-sample
Kolmogorov-Smirnov statistic of the equivalent diameters (0: same distribution), density.
"""
import numpy as np

from bench.common import index_rows, load_pair

SYNTHETIC = 20


def _row(name, stats, truth):
    from nucleaizer_backend.style.masks import compare_nuclei

    c = compare_nuclei(truth, stats)
    return {"masks": name, "nuclei": int(stats.n_nuclei),
            "diameter_q10_50_90": c["diameter_q10_50_90"]["synthetic"],
            "ks_diameter": c.get("ks_diameters", {}).get("statistic"),
            "nuclei_per_1e4px": c["nuclei_per_1e4px"]["synthetic"]}


def section_style_masks(model):
    from nucleaizer_backend import Model
    from nucleaizer_backend.style.masks import guard_mask, measure_nuclei, synthesize_mask

    m = Model.load(model, device="cpu")
    out = {"styles": {}, "synthetic_per_style": SYNTHETIC}
    for style in ("he", "fluo"):
        rows = [r for r in index_rows("val") if r["style"] == style]
        truth, before, after, left_out = [], [], [], 0
        for r in rows:
            img, lab = load_pair(r)
            auto = m.estimate_size(img, return_labels=True).labels
            guarded, removed = guard_mask(auto)
            truth.append(lab)
            before.append(auto)
            after.append(guarded)
            left_out += removed["size"] + removed["solidity"]
        t, b, a = (measure_nuclei(x) for x in (truth, before, after))
        rng = np.random.default_rng(0)
        synthetic = [synthesize_mask(a, rng=rng) for _ in range(SYNTHETIC)]
        s = measure_nuclei(synthetic)
        out["styles"][style] = {
            "images": len(rows), "left_out_by_guard": left_out,
            "rows": [_row("annotated (truth)", t, t), _row("automatic, no guard (before)", b, t),
                     _row("automatic, guarded (after)", a, t),
                     _row("synthetic, from the guarded masks", s, t)]}
    return out
