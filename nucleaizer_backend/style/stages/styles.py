"""Stage c, styles: one pix2pix per learned style (style.pix2pix_train) on the (mask, raw
image) pairs of its images with reliable masks, ``steps_for(n_images, preset)`` steps (or
``style_steps``), its generator starting from the style prior (style.prior; ``style_init``);
``work/styles/style_NN/``, each resumable from its checkpoint."""
import numpy as np

from .masks import read_mask


def mask_images(style):
    """The images of a style whose masks teach its style model and statistics."""
    return style.get("mask_images", style["images"])


def style_dir(work, k):
    """The run folder of style ``k``'s pix2pix model."""
    return work.dir / "styles" / f"style_{k:02d}"


def style_steps(settings, n):
    """pix2pix steps of a style learned from ``n`` images."""
    from ..pix2pix_train import steps_for

    return int(settings.style_steps) if settings.style_steps else steps_for(n, settings.preset)


def run(ctx):
    from ...models.io import read_network_meta
    from ...train.runs import read_run_log
    from ..pix2pix_train import GENERATOR_FILE, StyleTrainConfig, raw_image_to_unit, \
        train_style_model
    from ..prior import resolve_prior

    work, s, report = ctx.work, ctx.settings, ctx.report
    learned = [st for st in work.done("cluster")["styles"] if st["learned"]]
    plan = [(st, style_steps(s, len(mask_images(st)))) for st in learned]
    total, before, runs = sum(n for _, n in plan), 0, []
    prior = resolve_prior(s.style_init, s.style_architecture)
    for st, steps in plan:
        k, run_dir = st["style"], style_dir(work, st["style"])
        gen = run_dir / GENERATOR_FILE
        finished = gen.is_file() and read_network_meta(gen).get("steps") == steps
        if not finished:
            pairs = [(raw_image_to_unit(ctx.target(n).read()), read_mask(work, ctx.target(n)))
                     for n in mask_images(st)]
            cfg = StyleTrainConfig(steps=steps, crop=s.style_crop, lr=float(s.style_lr),
                                   seed=s.seed + k,
                                   threads=s.threads, device=s.device,
                                   architecture=s.style_architecture,
                                   checkpoint_every=s.style_checkpoint_every,
                                   init=str(prior) if prior else None)

            def progress(step, n, info, k=k, offset=before):
                report("styles", offset + step, total, {"style": k, **info})

            train_style_model(pairs, run_dir, cfg, resume=True, progress=progress)
        before += steps
        report("styles", before, total, {"style": k})
        log = [r for r in read_run_log(run_dir / "log.jsonl") if "loss_g_l1" in r]
        runs.append({"style": k, "images": len(mask_images(st)), "steps": steps,
                     "final_loss_g_l1": log[-1]["loss_g_l1"] if log else None,
                     "sec_per_step": float(np.mean([r["sec_per_step"] for r in log]))
                     if log else None})
    return {"styles": runs, "total_steps": total, "prior": str(prior) if prior else None}


def summary(record):
    return {"style_models": len(record["styles"]), "steps": record["total_steps"]}
