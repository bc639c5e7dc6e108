"""Stages e and f, finetune and finetune_unet: the base main network fine-tuned (train.loop,
kind "main") on the replay data (original annotated images: by default the compact set
shipped in ``weights/replay``) with ``synthetic_share`` of the crops taken from the synthetic
pairs, ``work/finetune/``; then the base model's contour U-Net the same way (kind "unet",
``unet_steps``, batch :data:`UNET_BATCH`), ``work/finetune_unet/``. The U-Net's foreground
decides which detections survive (p6) and where their contours lie, so a U-Net that has
never seen the new style erases what the adapted detector finds (measured: H&E val DSB 0.026
with a fluorescence-only U-Net, 0.204 with the same adapted detector and no U-Net;
docs/training/style-bench). Both resume from their checkpoints."""
from pathlib import Path

import numpy as np

from ...errors import NucleaizerError
from ..inputs import replay_folder

UNET_BATCH = 4  # the U-Net recipe's batch (train.loop; 4 x 256 px crops)


def run(ctx):
    """Fine-tune the base model's main network."""
    from ...train.loop import TrainConfig

    s, base = ctx.settings, ctx.base
    replay = replay_folder(s)
    recipe = ((base.info.get("main") or {}).get("history") or {}).get("config") or {}
    colour = s.min_colour_share
    if colour is None:
        colour = recipe.get("min_colour_share", 0.3)
    cfg = TrainConfig(data=str(replay), out=str(ctx.work.dir / "finetune"), kind="main",
                      steps=int(s.finetune_steps), batch_size=int(s.finetune_batch_size),
                      crop=int(s.finetune_crop), lr=float(s.finetune_lr),
                      warmup=int(s.finetune_warmup),
                      checkpoint_every=int(s.checkpoint_every), seed=s.seed,
                      threads=s.threads, device=s.device, precision=s.precision,
                      init=str(base.main),
                      architecture=base.meta.get("architecture"),
                      min_colour_share=float(colour), styles=s.replay_styles,
                      synthetic=str(ctx.work.dir / "synthetic"),
                      synthetic_share=float(s.synthetic_share))
    run_dir, log = _train_run(cfg, "finetune", ctx.report)
    start = [r for r in log if r.get("event") == "start"]
    return {"run": str(run_dir), "steps": cfg.steps, "lr": cfg.lr, "warmup": cfg.warmup,
            "batch_size": cfg.batch_size, "crop": cfg.crop, "replay_data": str(replay),
            "replay_styles": cfg.styles, "min_colour_share": cfg.min_colour_share,
            "synthetic_share": cfg.synthetic_share, "init": str(base.main),
            "replay_images": start[-1]["train_images"] if start else None,
            "synthetic_images": start[-1]["synthetic_images"] if start else None,
            **_loss_summary(log)}


def run_unet(ctx):
    """Fine-tune the base model's U-Net on the fine-tune's data (replay + synthetic pairs)."""
    from ...models.io import UNET_FILE, read_network_meta
    from ...train.loop import TrainConfig

    s = ctx.settings
    unet_file = ctx.base.network(UNET_FILE)
    steps = int(s.unet_steps)
    if unet_file is None or steps == 0:
        return {"run": None, "steps": 0, "init": str(unet_file) if unet_file else None}
    fine = ctx.work.done("finetune")
    cfg = TrainConfig(data=fine["replay_data"], out=str(ctx.work.dir / "finetune_unet"),
                      kind="unet", steps=steps, batch_size=UNET_BATCH, crop=int(s.finetune_crop),
                      lr=float(s.finetune_lr), warmup=min(int(s.finetune_warmup), steps),
                      checkpoint_every=int(s.checkpoint_every), seed=s.seed,
                      threads=s.threads, device=s.device, precision=s.precision,
                      init=str(unet_file),
                      architecture=read_network_meta(unet_file).get("architecture"),
                      min_colour_share=float(fine["min_colour_share"]),
                      styles=fine["replay_styles"], synthetic=str(ctx.work.dir / "synthetic"),
                      synthetic_share=float(s.synthetic_share))
    run_dir, log = _train_run(cfg, "finetune_unet", ctx.report)
    return {"run": str(run_dir), "steps": steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "init": str(unet_file), **_loss_summary(log)}


def _train_run(cfg, stage, report):
    """Run (or resume) a training of a fine-tune stage; returns (run folder, its log lines)."""
    from ...train.loop import train
    from ...train.runs import read_run_log

    try:
        run_dir = train(cfg, resume=True,
                        progress=lambda step, total, inf: report(stage, step, total, inf))
    except ValueError as e:  # e.g. no replay image of the asked styles
        raise NucleaizerError(str(e)) from None
    return run_dir, read_run_log(Path(run_dir) / "log.jsonl")


def _loss_summary(log):
    """First and last loss and median seconds per step of a training log."""
    losses = [r for r in log if "loss" in r]
    if not losses:
        return {"first_loss": None, "final_loss": None, "sec_per_step": None}
    return {"first_loss": losses[0]["loss"], "final_loss": losses[-1]["loss"],
            "sec_per_step": float(np.median([r["sec_per_step"] for r in losses]))}


def summary(record):
    return {k: record.get(k) for k in ("steps", "first_loss", "final_loss", "sec_per_step")}
