"""Stage g, package: the adapted model folder ``<out>/``: ``main.safetensors`` and
``unet.safetensors`` (the fine-tuned networks at their last step: target images have no
labels to select a step on), ``preseg.safetensors`` copied from the base model (the shipped
default's where the base lacks one), ``model.json`` (base model, target images, masks source
per image, clusters, synthetic counts, settings, fine-tune summary, the base model's
post-processing parameters), ``style_sheet.png`` (style.sheet) and ``training_curve.png``.
It runs again whenever an earlier stage ran in the same call."""
import json
import shutil
from pathlib import Path

from ..inputs import safe_stem
from ..jobs import write_json
from ..sheet import style_sheet

SHEET_FILE, CURVE_FILE = "style_sheet.png", "training_curve.png"


def complete(out):
    """Whether the model folder ``out`` holds what the package stage writes."""
    from ...models.io import INFO_FILE, MAIN_FILE

    return all((out / f).is_file() for f in (MAIN_FILE, INFO_FILE, SHEET_FILE))


def _copy_network(base, name, dst):
    """Copy ``name`` from the base folder, else the shipped default's; the file name or None."""
    src = base.network(name)
    if src:
        shutil.copyfile(src, dst / name)
        return str(src)
    if (dst / name).exists():
        (dst / name).unlink()
    return None


def _save_finetuned(record, dst, adapted):
    """A fine-tune stage's last network -> ``dst``, its meta saying what it was adapted to
    (``adapted`` + the stage's steps); returns that meta (without the architecture)."""
    from ...models.io import load_network, save_network

    model, meta = load_network(Path(record["run"]) / "last.safetensors")
    meta = {k: v for k, v in meta.items() if k != "architecture"}
    meta["adapted"] = {**adapted, "finetune_steps": record["steps"]}
    save_network(model, dst, meta)
    return meta


def run(ctx, seconds):
    from ... import __version__
    from ...models.io import INFO_FILE, MAIN_FILE, PRESEG_FILE, UNET_FILE, read_network_meta

    work, s, base, report = ctx.work, ctx.settings, ctx.base, ctx.report
    out = work.out
    masks, clusters = work.done("masks"), work.done("cluster")
    styles, synth, fine = work.done("styles"), work.done("synthesize"), work.done("finetune")
    fine_unet = work.done("finetune_unet") or {"run": None, "steps": 0}
    names = [t.name for t in ctx.targets]
    adaptation = {
        "base_model": {"path": str(base.path), "name": base.name},
        "target_images": names, "n_images": len(names),
        "masks_source": {n: masks["images"][n]["source"] for n in names},
        "masks": masks["images"],
        "clusters": {k: clusters[k] for k in ("styles", "assignment", "sizes", "merged",
                                              "skipped", "kmeans_k", "report")},
        "style_models": styles["styles"],
        "synthetic": {"per_cluster": s.synthetic_per_cluster, "count": synth["count"],
                      "per_style": synth["per_style"]},
        "finetune": fine, "finetune_unet": fine_unet,
        "settings": {k: v for k, v in s.as_dict().items() if k != "threads"},
        "seconds": seconds, "nucleaizer_version": __version__,
    }
    report("package", 0, 3, {})
    adapted = {"base_model": adaptation["base_model"], "n_images": len(names),
               "synthetic_pairs": synth["count"]}
    meta = _save_finetuned(fine, out / MAIN_FILE, adapted)
    copied = {PRESEG_FILE: _copy_network(base, PRESEG_FILE, out)}
    if fine_unet["run"]:
        _save_finetuned(fine_unet, out / UNET_FILE, adapted)
    else:
        copied[UNET_FILE] = _copy_network(base, UNET_FILE, out)
    adaptation["networks_copied_from"] = copied
    report("package", 1, 3, {})
    curve = Path(fine["run"]) / "curve.png"
    if curve.is_file():
        shutil.copyfile(curve, out / CURVE_FILE)
    style_sheet(work, ctx.targets, out / SHEET_FILE)
    report("package", 2, 3, {})
    description = (f"nucleAIzer model adapted by style adaptation ({s.preset} preset) to "
                   f"{len(names)} images in {sum(st['learned'] for st in clusters['styles'])} "
                   f"styles, from the base model {base.name}")
    info = base.info
    new_info = {
        "name": f"{base.name}-adapted-{safe_stem(out.name)}",
        "description": description,
        "training_data": f"fine-tuned on {fine['replay_data']} ({fine['replay_images']} "
                         f"annotated images) + {synth['count']} synthetic pairs "
                         f"({fine['synthetic_share']:.0%} of the crops)",
        "trained_nucleus_diameter_px": float(meta.get("diameter") or 40.0),
        "main": {"file": MAIN_FILE, "meta": meta},
        "adaptation": adaptation,
        "base_model_info": {k: info[k] for k in ("name", "description", "training_data")
                            if k in info},
    }
    for name, key in ((PRESEG_FILE, "preseg"), (UNET_FILE, "unet")):
        if (out / name).is_file():
            m = read_network_meta(out / name)
            new_info[key] = {"file": name, "meta": {k: v for k, v in m.items()
                                                   if k != "architecture"}}
    if info.get("postprocess"):
        new_info["postprocess"] = info["postprocess"]
    if info.get("style_reference"):
        new_info["style_reference"] = adapted_reference(info["style_reference"], ctx.targets)
    write_json(out / INFO_FILE, new_info)
    report("package", 3, 3, {})
    return {"model_dir": str(out)}


def adapted_reference(base_reference, targets):
    """The base model's style reference (model.json entry) with the target images' styles
    added (style.distance.extend_reference): after adaptation they count as trained."""
    from ..distance import StyleReference, extend_reference, image_style_features

    features = [image_style_features(t.read()) for t in targets]
    return extend_reference(StyleReference.from_dict(base_reference), features).to_dict()


def record_seconds(ctx, seconds):
    """Once the package stage has run: every stage's seconds (its own included) into
    model.json."""
    info_file = ctx.work.out / "model.json"
    info = json.loads(info_file.read_text())
    info["adaptation"]["seconds"] = dict(seconds)
    write_json(info_file, info)


def summary(record):
    return {}
