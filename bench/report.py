"""Render BENCHMARKS.md from the stored results (bench/results/*.json)."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _median(values):
    import numpy as np

    return float(np.median(values)) if values else float("nan")


def _stale_parts(m, current_weights):
    """Parts of the shipped model that changed since this section was measured with it."""
    if m.get("model") != "shipped default" or not current_weights:
        return []
    return [k for k, v in m.get("weights", {}).items() if current_weights.get(k) != v]


def _flag_stale(res, current_weights):
    """A copy of one section's results whose ``_meta["stale"]`` lists the out-of-date parts."""
    if not isinstance(res, dict) or "_meta" not in res:
        return res
    return {**res, "_meta": {**res["_meta"],
                             "stale": _stale_parts(res["_meta"], current_weights)}}


def _meta_line(res, loads_cpu_itself=False):
    """The italic line under a section title: when, where, how to reproduce, and warnings.
    ``loads_cpu_itself``: the section runs parallel processes, so only the load average
    before it started tells whether other jobs shared the CPU."""
    m = res.get("_meta", {})
    mc = m.get("machine", {})
    where = f"{mc.get('cores')}-core CPU ({mc.get('cpu')}), torch {mc.get('torch')}"
    if mc.get("gpu"):
        where += f", GPU {mc['gpu']}"
    load = m.get("load_avg_1min")
    busy = ""
    seen = (load or [])[:1] if loads_cpu_itself else \
        (load or []) + [m.get("load_avg_15min_end", 0)]
    if load and max(seen) > (mc.get("cores") or 1) + 0.5:
        busy = (f" The CPU was shared with other jobs (load average {load[0]:g} -> {load[1]:g} "
                f"on {mc.get('cores')} cores"
                + (f", {m['load_avg_15min_end']:g} over the last 15 min"
                   if "load_avg_15min_end" in m else "") + "): times are inflated.")
    if m.get("note"):
        busy += f" {m['note']}"
    wall = f" ({m['wall_s']} s)" if m.get("wall_s") is not None else ""
    stale = m.get("stale", [])
    if stale:
        busy += (f" **Measured with earlier weights ({', '.join(stale)}) than the shipped "
                 f"ones: these figures are out of date until this section is re-run.**")
    return (f"_Measured {m.get('measured')} on {where}; model: {m.get('model')}; "
            f"reproduce: `{m.get('command')}`{wall}.{busy}_")


def _model_facts():
    info_file = ROOT / "nucleaizer_backend" / "weights" / "default" / "model.json"
    if not info_file.is_file():
        return []
    info = json.loads(info_file.read_text())
    lines = []
    for kind in ("main", "preseg", "unet"):
        if kind not in info:
            continue
        meta = info.get(kind, {}).get("meta", {})
        hist = info.get(kind, {}).get("history", {})
        cfg = hist.get("config", {})
        lines.append(f"- **{kind}**: {meta.get('steps')} steps of batch {meta.get('batch_size')} "
                     f"x {meta.get('crop')} px crops, lr {cfg.get('lr')}, "
                     f"{hist.get('mean_sec_per_step')} s/step on "
                     f"{info[kind].get('compute', info.get('compute'))}"
                     + (f"; init from `{cfg.get('init')}`" if cfg.get("init") else "")
                     + _previous_stage(hist.get("previous")))
    post = info.get("postprocess")
    if post:
        lines.append("- **post-processing**: " + ", ".join(f"{k} = {v:g}" for k, v in post.items()))
    return lines


def _previous_stage(prev):
    """ ', which was: ...' for a network trained on from an earlier shipped one."""
    if not prev:
        return ""
    meta, hist = prev.get("meta", {}), prev.get("history", {})
    cfg = hist.get("config", {})
    return (f", which was {meta.get('steps')} steps of run {hist.get('run')} (lr {cfg.get('lr')}"
            + (f", init from `{cfg['init']}`" if cfg.get("init") else ", from scratch") + ")"
            + _previous_stage(hist.get("previous")))


def _tuning(tun):
    if not tun:
        return []
    fmt = lambda s: f"{s['dsb']:.3f} | {s['dsb_fluo']:.3f} | {s['dsb_he']:.3f}"  # noqa: E731
    gap = abs(tun["all_val"]["dsb"] - tun["cv"]["dsb"])
    out = ["## Post-processing parameters (val, automatic size)", "", _meta_line(tun), "",
           "p1..p6 and the detection confidence searched by `nucleaizer tune` (coordinate "
           "descent over a grid, 2 rounds) on cached network outputs of the val images.", "",
           "| post-processing values | DSB | DSB fluo | DSB he |", "|---|---|---|---|",
           f"| none (Mask R-CNN objects as they are) | {fmt(tun['none'])} |",
           f"| the paper's (p1 0.17, p2 44, p3 0.9375, p4 1, p5 1, p6 0.8) | {fmt(tun['paper'])} |",
           f"| **tuned, 2-fold cross-validated** (each half scored with values tuned on the "
           f"other half) | {fmt(tun['cv'])} |",
           f"| tuned on all val images (in-sample) | {fmt(tun['all_val'])} |", "",
           "Values found: " + "; ".join(
               f"on fold {cv['tuned_on_fold']}: " + ", ".join(
                   f"{k} {v:g}" for k, v in cv["params"].items())
               for cv in tun["cross_validation"]) + "; on all val: " + ", ".join(
               f"{k} {v:g}" for k, v in tun["all_val"]["params"].items()) + ".", "",
           "Why the paper's values lose here: they were found by a genetic search for the "
           "paper's own networks. Our U-Net rarely reaches p3 = 0.9375 at the rim of a nucleus, "
           "so the contour step peels correct pixels off most nuclei and p6 = 0.8 drops "
           "correct ones (measured with the first shipped networks, on 22 val images at their "
           "true size: 0.487 without post-processing, 0.350 with the paper's U-Net values "
           "alone). " + _cv_gap_text(gap) + " The shipped values are those of 'Model measured' "
           "above, scored in the Accuracy section. Values tuned on train images instead do "
           "not transfer (research/experiments/postprocess-tuned-on-train.md).", ""]
    return out


def _cv_gap_text(gap):
    if gap <= 0.005:
        return (f"The cross-validated score is within {gap:.3f} of the in-sample one, so the "
                "values are not fitted to particular val images.")
    return (f"The cross-validated score is {gap:.3f} below the in-sample one: the searches on "
            "the two halves end at different values (coordinate descent stops at local "
            "optima), and on new images of these kinds the cross-validated score is the one "
            "to expect.")


def _style_adaptation(res):
    if not res:
        return ["## Style adaptation (NOstyle / AUTOstyle / GTstyle)", "",
                "Not measured yet: `.venv/bin/python bench/style_adaptation.py` (resumable; "
                "about 4 hours on a 2-core CPU, minutes on a GPU) writes "
                "bench/results/style_adaptation.json.", ""]
    names = {"base": "**NOstyle**: base (fluorescence train images only)",
             "nostyle": "control: base + the same fine-tune steps (main + U-Net), fluorescence "
                        "only",
             "autostyle": "**AUTOstyle** (adapted to unannotated H&E train images)",
             "autostyle_transductive": "AUTOstyle, transductive (adapted to the H&E val images)",
             "autostyle_2rounds_round1": "AUTOstyle, round 1 of 2 (H&E train images)",
             "autostyle_2rounds": "AUTOstyle, 2 rounds (H&E train images)",
             "gtstyle": "GTstyle (H&E train annotations as style masks)",
             "upper_bound": "upper bound (main + U-Net fine-tuned with annotated H&E train "
                            "images)"}
    sc, st = res["scores"], res.get("settings", {})
    n = next(iter(sc.values()))
    out = ["## Style adaptation (NOstyle / AUTOstyle / GTstyle)", "", _meta_line(res), "",
           f"H&E as the new experiment: {n.get('n_he', '?')} H&E and {n.get('n_fluo', '?')} "
           "fluorescence val images, automatic size, shipped post-processing values. Every "
           "adaptation fine-tunes the base's main network and contour U-Net with replay of the "
           "fluorescence train images (no real H&E image is trained on, except by the upper "
           "bound). The last column leaves the U-Net out (detection + rules only): it shows "
           "what a U-Net that has never seen H&E does to H&E detections (the first run of this "
           "benchmark, before adaptation fine-tuned the U-Net: "
           "research/experiments/style-bench-unet-confound.md). Schedules: "
           f"{st.get('finetune_steps', '?')} fine-tune steps and {st.get('unet_steps', '?')} "
           "U-Net steps for every fine-tuned model, quick preset otherwise.", "",
           "| model | DSB H&E val | DSB fluo val | DSB H&E val, no U-Net |", "|---|---|---|---|"]
    for key, name in names.items():
        if key in sc:
            no_unet = sc[key].get("dsb_he_no_unet")
            out.append(f"| {name} | {sc[key]['dsb_he']:.3f} | {sc[key]['dsb_fluo']:.3f} | "
                       f"{'-' if no_unet is None else f'{no_unet:.3f}'} |")
    out += ["", "Adaptation runs: " + "; ".join(
        f"{k}: {v['images']} images, {v['styles']} styles, {v['synthetic']} synthetic pairs, "
        f"{sum(v['seconds'].values()) / 60:.0f} min (one thread, CPU shared)"
        for k, v in res["adaptations"].items()),
        ""]
    out += ["Style sheets (real vs synthetic images per style) and logs of these adaptations: "
            "docs/training/style-bench/.", ""]
    if res.get("not_run"):
        out += ["Not run yet: " + ", ".join(res["not_run"]) + ".", ""]
    if "autostyle_2rounds" not in sc:
        out += ["Two adaptation rounds (`--iterations 2`) are not in the table: the one run so "
                "far made its round-2 masks with a round-1 model whose U-Net had not been "
                "adapted yet, so it does not measure the method (research/experiments/"
                "style-bench-unet-confound.md).", ""]
    out += _style_goal(sc)
    return out


def _style_distance(res):
    if not res:
        return []
    v, ps = res["val"], res["val"]["per_style"]

    def dsb(x):
        return "-" if x is None else f"{x:.3f}"

    out = ["## Style distance: when to adapt", "", _meta_line(res), "",
           "Each segmented image gets a *style distance*: how far its colour, intensity and "
           "texture (21 features of a centre crop) lie from the images the model was trained "
           "or adapted on, in standardised units (nucleaizer_backend/style/distance.py). "
           "Above the model's threshold (set on its training images alone: the 95% quantile "
           "of cross-fitted distances x 1.25) the module flags the image (UnfamiliarStyle) "
           "and suggests TrainStyleAdaptation.", "",
           f"**Val images, shipped model** (threshold {v['threshold']:.2f}, automatic size): "
           f"Spearman correlation of style distance with the image's DSB score "
           f"**{v['spearman']:.2f}** (p = {v['spearman_p']:.1g}); {v['above']} of "
           f"{v['images']} images above the threshold, mean DSB **{dsb(v['dsb_above'])}** "
           f"against **{dsb(v['dsb_below'])}** below. Time: {1000 * v['median_seconds_style']:.0f} "
           "ms per image (median).", "",
           "| val style | images | above threshold | DSB above | DSB below |",
           "|---|---|---|---|---|"]
    for name, g in ps.items():
        out.append(f"| {name} | {g['images']} | {g['above']} | {dsb(g['dsb_above'])} | "
                   f"{dsb(g['dsb_below'])} |")
    out += ["", "**Held-out styles**: the reference fitted on the train images without the "
            f"style (H&E; fluorescence clusters: k-means, k = {res['fluo_clusters']}, of the "
            "fluorescence images' style features). Share of the held-out style's images "
            "(train and val) above that reference's threshold (wanted: high), and share of the "
            "other styles' val images above it (wanted: low; val images come from experiments "
            "absent from train, so some of them are new styles in fact):", "",
            "| held-out style | images (train) | threshold | held-out above | other val above |",
            "|---|---|---|---|---|"]
    for h in res["held_out"]:
        out.append(f"| {h['style']} | {h['images']} ({h['train_images']}) | "
                   f"{h['threshold']:.2f} | {h['held_out_above']:.0%} | "
                   f"{h['other_val_above']:.0%} |")
    out.append("")
    return out


def _style_masks(res):
    if not res:
        return []
    out = ["## Masks and synthetic nuclei of a style against its true nuclei", "",
           _meta_line(res), "",
           "What style adaptation learns a style's nuclei from, on the val images of each "
           "style: the shipped base model's automatic (preseg) masks without and with the "
           "guard that leaves out likely whole cells and clumps (over 2x the image's median "
           "diameter, or solidity under 0.75), and "
           f"{res['synthetic_per_style']} synthetic masks drawn from the guarded masks' "
           "statistics, each against the annotated nuclei: equivalent-diameter quantiles, "
           "two-sample Kolmogorov-Smirnov statistic of the diameters (0: same distribution; "
           "lower is better) and density.", "",
           "| style | masks | nuclei | diameter p10 / p50 / p90 (px) | KS vs truth | "
           "nuclei per 10^4 px |", "|---|---|---|---|---|---|"]
    for style, g in res["styles"].items():
        for r in g["rows"]:
            q = "/".join(f"{v:.1f}" for v in r["diameter_q10_50_90"]) \
                if r["diameter_q10_50_90"] else "-"
            ks = "-" if r["ks_diameter"] is None else f"{r['ks_diameter']:.3f}"
            out.append(f"| {style} ({g['images']} images) | {r['masks']} | {r['nuclei']} | "
                       f"{q} | {ks} | {r['nuclei_per_1e4px']:.1f} |")
    out += ["", "The guard left out " + ", ".join(
        f"{g['left_out_by_guard']} objects in {style}" for style, g in res["styles"].items())
        + ".", ""]
    return out


def _adapt_speed(res):
    if not res:
        return []
    stages = ", ".join(f"{k} {v / 60:.1f} min" if v >= 60 else f"{k} {v:.0f} s"
                       for k, v in res["seconds_per_stage"].items())
    per_style = ", ".join(f"{n} {k}" for k, n in res["per_style"].items())
    return ["## Adaptation time (quick preset, 20 images)", "", _meta_line(res), "",
            f"`adapt` of {res['images']} unannotated val images ({per_style}) with the shipped "
            f"base model and replay set, {res['threads']} torch thread(s): "
            f"**{res['wall_s'] / 60:.1f} min** (goal: within 60 min on a 2-core CPU); "
            f"{res['styles']} styles ({res['styles_learned']} with a style model), "
            f"{res['synthetic_pairs']} synthetic pairs, {res['finetune_steps']} fine-tune steps; "
            f"peak memory {res['peak_rss_mb']:.0f} MB. Per stage: {stages}.",
            "", "The GPU time is not measured yet.", ""]


def _style_goal(sc):
    """The issue's goal, checked against NOstyle (the base) and against the fine-tuned
    control: AUTOstyle >= +0.10 H&E DSB, at least half of the gap to the upper bound closed,
    fluorescence down by at most 0.02."""
    if not all(k in sc for k in ("base", "nostyle", "autostyle", "upper_bound")):
        return []
    auto = sc["autostyle"]
    out = ["| goal | against NOstyle (base) | against the fine-tuned control |",
           "|---|---|---|"]
    rows = {"AUTOstyle H&E gain >= +0.10": [], "share of the gap to the upper bound closed "
            ">= 50%": [], "fluorescence change >= -0.02": []}
    for ref in ("base", "nostyle"):
        gain = auto["dsb_he"] - sc[ref]["dsb_he"]
        gap = sc["upper_bound"]["dsb_he"] - sc[ref]["dsb_he"]
        share = gain / gap if gap > 0 else float("nan")
        fluo = auto["dsb_fluo"] - sc[ref]["dsb_fluo"]
        rows["AUTOstyle H&E gain >= +0.10"].append(
            f"{gain:+.3f} ({'met' if gain >= 0.10 else 'not met'})")
        rows["share of the gap to the upper bound closed >= 50%"].append(
            f"{share:.0%} ({'met' if share >= 0.5 else 'not met'})")
        rows["fluorescence change >= -0.02"].append(
            f"{fluo:+.3f} ({'met' if fluo >= -0.02 else 'not met'})")
    out += [f"| {k} | {v[0]} | {v[1]} |" for k, v in rows.items()]
    return out + [""]


def _ablation(abl):
    if not abl:
        return []
    out = ["## What each step is worth (val, automatic size)", "", _meta_line(abl), "",
           "Each row adds one step to the row above, with the shipped post-processing values. "
           "Seconds include the size estimate and are comparable between the rows of this "
           "table (same run), not with the Speed section when that was measured on an idle "
           "CPU.", "",
           "| configuration | DSB | DSB fluo | DSB he | mF1 | s/image (fluo) | s/image (he) | "
           "s/image |", "|---|---|---|---|---|---|---|---|"]
    for s in abl["configs"].values():
        out.append(f"| {s['label']} | {s['dsb']:.3f} | {s['dsb_fluo']:.3f} | {s['dsb_he']:.3f} | "
                   f"{s['f1']:.3f} | {s['seconds_fluo']:.2f} | {s['seconds_he']:.2f} | "
                   f"{s['seconds_mean']:.2f} |")
    out += ["", "Errors at IoU 0.7 (all val images):", "",
            "| configuration | missed | extra | merges | splits | predicted / true |",
            "|---|---|---|---|---|---|"]
    for s in abl["configs"].values():
        out.append(f"| {s['label']} | {s['missed']} | {s['extra']} | {s['merges']} | "
                   f"{s['splits']} | {s['n_pred']} / {s['n_true']} |")
    out += ["", "![F1 against IoU threshold for each step](docs/refinement_f1.png)", ""]
    return out


ERROR_FIXES = {
    "merges": "merged nuclei split (each predicted object holding two or more true nuclei "
              "divided between them)",
    "splits": "split nuclei joined (predicted objects inside one true nucleus)",
    "extra": "extra objects removed (predictions matching no nucleus at IoU > 0.5)",
    "missed": "missed nuclei added (true nuclei no prediction matches at IoU > 0.5)",
    "contours": "contours made exact (matched predictions take the true outline)",
}


def _errors(res):
    if not res:
        return []
    fixes = res["fixes"]
    base = fixes["as predicted"]
    out = ["## Where the DSB score is lost (val, automatic size)", "", _meta_line(res), "",
           "The shipped model's labels with one kind of error fixed by an oracle that knows the "
           "true labels (bench/error_budget.py); each row fixes that kind alone, so the gains "
           "overlap and do not add up. It shows what a better model would have to get right.",
           "", "| labels | DSB | gain | DSB fluo | DSB he |", "|---|---|---|---|---|",
           f"| as predicted (shipped) | {base['dsb']:.3f} | | {base['dsb_fluo']:.3f} | "
           f"{base['dsb_he']:.3f} |"]
    ranked = sorted(ERROR_FIXES, key=lambda k: -fixes[k]["dsb"])
    for key in ranked:
        f = fixes[key]
        out.append(f"| {ERROR_FIXES[key]} | {f['dsb']:.3f} | {f['dsb'] - base['dsb']:+.3f} | "
                   f"{f['dsb_fluo']:.3f} | {f['dsb_he']:.3f} |")
    by_size = res.get("matched_iou_by_size")
    if by_size:
        out += ["", "IoU of the matched nuclei (IoU > 0.5) by true nucleus diameter: the DSB "
                "averages thresholds up to 0.95, so outlines must be right to the pixel, which "
                "is hardest on small nuclei.", "",
                "| true diameter (px) | matched nuclei | mean IoU | share with IoU > 0.8 |",
                "|---|---|---|---|"]
        for b in by_size:
            lo, hi = b["diameter_px"]
            span = f"{lo}-{hi}" if hi < 1000 else f">= {lo}"
            out.append(f"| {span} | {b['matches']} | {b['mean_iou']:.3f} | "
                       f"{b['share_over_0.8']:.2f} |")
    return out + [""]


def _workers(res):
    if not res:
        return []
    one = res["runs"][0]
    out = ["## Parallel workers (CPU)", "", _meta_line(res, loads_cpu_itself=True), "",
           f"Several processes segmenting at once, as CellProfiler's analysis workers do: each "
           f"segments the {one['images']} images of the Speed section after loading the model; "
           f"images per second over all processes. {res['cores']} cores. With torch's default "
           f"every process uses every core; the modules give each analysis worker cores / "
           f"workers threads (docs/MODULES.md, \"On a cluster\").", "",
           "| processes | torch threads each | images/s | wall (s) |", "|---|---|---|---|"]
    for r in res["runs"]:
        out.append(f"| {r['workers']} | {r['threads']} | {r['images_per_s']:.2f} | "
                   f"{r['wall_s']:.1f} |")
    out.append("")
    parallel = [r for r in res["runs"] if r["workers"] > 1]
    if len(parallel) == 2:
        default, shared = parallel
        out += [f"{shared['workers']} workers with {shared['threads']} thread(s) each process "
                f"{shared['images_per_s'] / default['images_per_s']:.1f}x the images per second "
                f"of {default['workers']} workers with torch's default "
                f"({default['threads']} threads each).", ""]
    return out


def _working_size(res):
    if not res:
        return []
    sizes = res["sizes"]
    out = ["## Working nucleus size (images with small nuclei)", "", _meta_line(res), "",
           f"Images whose annotated median nucleus diameter is under {res['small_px']:g} px "
           f"({res['summary']['val']['images']} val, {res['summary']['train']['images']} train "
           f"drawn with seed 0), each segmented at every working size with the same automatic "
           f"size estimate: nuclei are enlarged to the working size instead of 40 px. Mean DSB "
           f"and median seconds per image (size estimate not included):", "",
           "| images | " + " | ".join(f"{s} px" for s in sizes) + " |",
           "|---|" + "---|" * len(sizes)]
    for group in ("all", "val", "train"):
        g = res["summary"][group]
        out.append(f"| {group} ({g['images']}), DSB | " + " | ".join(
            f"{g[str(s)]['dsb']:.3f}" for s in sizes) + " |")
        out.append(f"| {group}, s/image | " + " | ".join(
            f"{g[str(s)]['median_s']:.2f}" for s in sizes) + " |")
    out += ["", f"The *fast* speed enlarges small nuclei to **{res['fast_diameter']} px**: the "
            f"smallest size whose DSB loss against 40 px is at most {res['max_fast_loss']} (loss "
            f"{res['fast_loss']:.3f}). Default speed: **{res['default_speed']}** (fast becomes "
            f"the default when its loss is at most {res['max_default_loss']}). "
            f"`scripts/package_default_model.py --speed-from bench/results/working_size.json` "
            f"writes this choice into the shipped model.json.", ""]
    return out


def _screen_speed(bins, module, plate):
    out = []
    if bins:
        b = bins["bins"]
        out += ["## Screening speed: accurate and fast", "", _meta_line(bins), "",
                f"Every val image with automatic size at each speed (fast: small nuclei enlarged "
                f"to {bins['fast_diameter']:g} px instead of 40 px; default speed of the model: "
                f"{bins['default_speed']}), and CellProfiler's IdentifyPrimaryObjects on the same "
                f"images in the same run. Median seconds per image (size estimate included) and "
                f"mean DSB, by the annotated median nucleus diameter:", "",
                "| nuclei | images | accurate s | fast s | accurate DSB | fast DSB | "
                "IdentifyPrimaryObjects s |", "|---|---|---|---|---|---|---|"]
        for name, g in b.items():
            out.append(f"| {name} | {g['images']} | {g['accurate']['median_s']:.2f} | "
                       f"{g['fast']['median_s']:.2f} | {g['accurate']['dsb']:.3f} | "
                       f"{g['fast']['dsb']:.3f} | {g['identifyprimaryobjects_median_s']:.2f} |")
        p = bins["pair"]
        m = p["median_s"]
        out += ["", f"Small against large nuclei, timed alternately ({PAIR_ROUNDS_TEXT}): "
                f"{p['small_image']} and {p['large_image']}.", "",
                "| | 512x512, ~10 px nuclei (s) | 520x696, ~49 px nuclei (s) | ratio | DSB of "
                "the 512x512 crop |", "|---|---|---|---|---|"]
        for s in ("accurate", "fast"):
            out.append(f"| {s} | {m[f'small_{s}']:.2f} | {m[f'large_{s}']:.2f} | "
                       f"{p['ratio'][s]:.1f}x | {p['small_dsb'][s]:.3f} |")
        out.append(f"| IdentifyPrimaryObjects | {m['small_ipo']:.2f} | {m['large_ipo']:.2f} | "
                   f"{m['small_ipo'] / m['large_ipo']:.1f}x | |")
        out.append("")
    if module:
        out += ["## SegmentNucleiStyleAdapted in CellProfiler against the backend", "",
                _meta_line(module), "",
                f"The first {module['images'] + 1} val images (index order) through "
                f"`example_pipelines/segment_and_measure.cppipe` headless "
                f"(OMP_NUM_THREADS={module['threads']}) and through `nucleaizer segment "
                f"--threads {module['threads']}`; the first image, which loads the model, is "
                f"left out. The module's time is the wall time CellProfiler logs for it (`-L "
                f"INFO`: \"Wall_time\"); its `ExecutionTime_` measurement is CPU seconds summed "
                f"over threads (median here {module['module_median_cpu_s']:.2f} s). The backend's "
                f"is the `seconds` column of summary.csv (segment_image).", "",
                f"Median per image: module **{module['module_median_wall_s']:.2f} s** wall, "
                f"backend **{module['backend_median_s']:.2f} s**; total module / backend over the "
                f"{module['images']} images: **{module['ratio_total']:.3f}**.", ""]
    if plate:
        out += ["## Plate-like batch", "", _meta_line(plate, loads_cpu_itself=True), "",
                f"The first {plate['images']} DSB images in index order (sizes "
                f"{', '.join(plate['sizes'])}), split between {plate['workers']} `nucleaizer "
                f"segment` processes of {plate['threads']} thread each, default settings "
                f"(automatic size, the model's default speed), model loading included: "
                f"**{plate['images_per_s']:.2f} images/s** ({plate['wall_s']:.0f} s).", ""]
    return out


PAIR_ROUNDS_TEXT = "median of 3 rounds"


def _train_speed(speed, learning):
    from bench.train_throughput import render

    if speed:
        speed = dict(speed, machine_line=_meta_line(speed))
    return render(speed, learning)


def render(results, references, current_weights=None):
    """BENCHMARKS.md text from the sections' results; ``current_weights``: the shipped
    model's fingerprint (bench.run_benchmarks.model_fingerprint), to flag out-of-date
    sections."""
    results = {name: _flag_stale(res, current_weights) for name, res in results.items()}
    out = ["# Benchmarks", "",
           "Regenerate with `.venv/bin/python bench/run_benchmarks.py` (needs `../shared/data/"
           "dsb2018`); each section can be re-measured alone with `--sections NAME`. Metrics: "
           "`nucleaizer_backend/evaluate.py` ([docs/METHOD.md](docs/METHOD.md) section 5), "
           "the same code the tests and `nucleaizer evaluate` use.", ""]
    facts = _model_facts()
    if facts:
        out += ["## Model measured", ""] + facts + [""]
    acc = results.get("accuracy")
    if acc:
        out += ["## Accuracy on the DSB 2018 val split (67 images: 52 fluo, 15 he)", "",
                _meta_line(acc), "",
                "| method | DSB | DSB fluo | DSB he | mAP | mAR | mF1 | F1 (0.5-0.9) | s/image |",
                "|---|---|---|---|---|---|---|---|---|"]
        names = {"auto": "**nucleAIzer, automatic size estimation** (as shipped)",
                 "true_size": "nucleAIzer, true nucleus size per image (network alone)",
                 "identifyprimaryobjects": "CellProfiler IdentifyPrimaryObjects (measured here, same run)"}
        for key, name in names.items():
            s = acc.get(key)
            if s:
                out.append(f"| {name} | {s['dsb']:.3f} | {s['dsb_fluo']:.3f} | {s['dsb_he']:.3f} | "
                           f"{s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                           f"{s['caicedo_f1']:.3f} | {s['seconds_mean']:.2f} |")
        for name, v in references.items():
            out.append(f"| {name} | {v:.3f} | | | | | | | |")
        s = acc.get("auto")
        if s:
            out += ["", f"Errors at IoU 0.7 (automatic size): missed {s['missed']} of "
                    f"{s['n_true']} true nuclei, extra {s['extra']} of {s['n_pred']} predictions; "
                    f"merges {s['merges']}, splits {s['splits']}.", "",
                    "F1 by IoU threshold (automatic size): " + ", ".join(
                        f"{t}: {v:.3f}" for t, v in s["f1_curve"].items()),
                    "", "![F1 against IoU threshold](docs/f1_curve.png)"]
        out.append("")
    out += _tuning(results.get("tuning"))
    out += _ablation(results.get("ablation"))
    out += _errors(results.get("errors"))
    out += _style_adaptation(results.get("style_adaptation"))
    out += _adapt_speed(results.get("adapt_speed"))
    out += _style_distance(results.get("style_distance"))
    out += _style_masks(results.get("style_masks"))
    size = results.get("size")
    if size:
        p = size["ratio_percentiles"]
        out += ["## Size estimation (val, 67 images)", "", _meta_line(size), "",
                f"Estimated / true median nucleus diameter within +-20%: "
                f"**{size['within_20pct']:.1%}** of images (goal: 90%).", "",
                "| percentile of ratio | 0 | 5 | 25 | 50 | 75 | 95 | 100 |", "|---|---|---|---|---|---|---|---|",
                "| estimated / true | " + " | ".join(f"{p[q]:.2f}" for q in ("0", "5", "25", "50", "75", "95", "100")) + " |",
                ""]
        bad = [r for r in size["per_image"] if abs(r["ratio"] - 1) > 0.2]
        if bad:
            out.append("Images outside +-20%: " + "; ".join(
                f"{r['id'][:12]} ({r['style']}, true {r['true']:.1f} px, est. {r['estimated']:.1f} px, "
                f"{r['count']} nuclei)" for r in bad))
            out.append("")
    speed = results.get("speed")
    if speed:
        out += ["## Speed (520x696 images)", "", _meta_line(speed), "",
                f"`segment()` including size estimation: median **{speed['segment_median_s']:.2f} s** "
                f"per image (target <= 2 s); CellProfiler IdentifyPrimaryObjects on the same images "
                f"in the same run: median {speed['identifyprimaryobjects_median_s']:.2f} s. "
                f"Time grows with the working image: images with small nuclei are upscaled more "
                f"(median over those with nuclei under 35 px: "
                f"{_median([r['segment_s'] for r in speed['per_image'] if r['diameter'] < 35]):.2f} s; "
                f"over those with larger nuclei: "
                f"{_median([r['segment_s'] for r in speed['per_image'] if r['diameter'] >= 35]):.2f} s).",
                "", "GPU throughput is not measured here yet: `python bench/gpu_speed.py --device "
                "cuda` measures it on a machine with a GPU.", "",
                "| image | diameter used (px) | scale | nuclei | segment (s) | IdentifyPrimaryObjects (s) |",
                "|---|---|---|---|---|---|"]
        for r in speed["per_image"]:
            out.append(f"| {r['id']} | {r['diameter']:.1f} | {r['scale']:.2f} | {r['nuclei']} | "
                       f"{r['segment_s']:.2f} | {r['identifyprimaryobjects_s']:.2f} |")
        out.append("")
    out += _workers(results.get("workers"))
    out += _working_size(results.get("working_size"))
    out += _screen_speed(results.get("speed_bins"), results.get("module_speed"),
                         results.get("plate"))
    out += _train_speed(results.get("train_speed"), results.get("train_learning"))
    mem = results.get("memory")
    if mem:
        out += ["## Peak memory", "", _meta_line(mem), "",
                f"{mem['image']}: peak resident memory **{mem['peak_rss_mb']:.0f} MB** for the whole "
                f"process ({mem['rss_before_segment_mb']:.0f} MB before segmenting: Python, torch, "
                f"model), {mem['nuclei']} nuclei at diameter {mem['diameter']:.1f} px, "
                f"{mem['seconds']:.1f} s.", ""]
    return "\n".join(out) + "\n"
