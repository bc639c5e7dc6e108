"""The resumable training loop for the networks: Mask R-CNN main and preseg, and the
refinement U-Net (kind ``unet``, trained at the main network's 40 px working scale).

A run folder holds everything needed to continue and to judge a run:
``config.json``, ``checkpoint.pt`` (weights, optimiser, step, random states; written every
``checkpoint_every`` steps and loaded with ``weights_only=True``), ``resume.safetensors`` (the
same weights in fp16 with the step: a compact form to keep or move, from which ``--resume``
continues when checkpoint.pt is gone), ``log.jsonl`` (loss lines
and validation lines), ``curve.png``, ``last.safetensors`` and ``best.safetensors`` (fp16
network files; best = highest validation DSB score for main; for preseg, the most val images
whose size estimate is within 20%, DSB breaking ties; for unet, the foreground IoU).
"""
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..models.io import build_network, save_network
from .augment import PRESEG_RANGE, WORKING_DIAMETER, CropSpec
from .batches import crop_batches, sampling_weights, training_items
from .data import load_dataset, read_styles
from .runs import RunFolder, plot_curve, seeded_start
from .validate import validate
from ..progress import ProgressCallback


#: what a call may change when it resumes a run: its length and the machine settings
CALL_FIELDS = ("steps", "threads", "device", "workers", "max_minutes", "precision")


@dataclass
class TrainConfig:
    data: str
    out: str
    val: str = None
    kind: str = "main"  # "main"/"unet" (nuclei rescaled to 40 px), "preseg" (scale augmentation)
    steps: int = 6000
    batch_size: int = 2
    crop: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 300
    checkpoint_every: int = 250
    val_every: int = 1000
    val_limit: int = None
    seed: int = 0
    threads: int = None  # torch CPU threads (None: torch's default)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    init: str = None  # network file to start from (fine-tuning / next stage)
    architecture: dict = None
    min_colour_share: float = 0.3  # colour (e.g. H&E) and gray images: each at least this share
    stain_jitter: float = 0.0  # HED stain jitter of colour crops (augment.jitter_stains; 0 = off)
    styles: list = None  # train only on images of these styles (data folder's index.csv)
    synthetic: str = None  # folder of synthetic image + label pairs (style adaptation)
    synthetic_share: float = 0.3  # fraction of crops drawn from ``synthetic``
    workers: int = 0  # processes making the crops (0: in the training process; see CropStream)
    max_minutes: float = None  # stop (checkpointed, resumable) after this much wall time
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where the hardware has it
    # main: (min px, max px) nucleus diameters of the crops, log-uniform, for a network that
    # also works at the fast speed's smaller sizes (None: 40 px with the usual jitter)
    working_range: list = None

    def crop_spec(self):
        if self.kind == "preseg":
            return CropSpec(size=self.crop, scale_range=PRESEG_RANGE,
                            stain_jitter=self.stain_jitter)
        if self.kind == "main" and self.working_range:
            return CropSpec(size=self.crop, scale_range=tuple(self.working_range),
                            stain_jitter=self.stain_jitter)
        if self.kind in ("main", "unet"):
            return CropSpec(size=self.crop, target_diameter=WORKING_DIAMETER,
                            stain_jitter=self.stain_jitter)
        raise ValueError(f"unknown model kind {self.kind!r} (main, preseg or unet)")


def use_bf16(precision, device):
    """True when training should run in bf16 autocast: ``precision`` "bf16", or "auto" on
    CUDA and on CPUs whose oneDNN has native bf16 (AVX512-BF16/AMX; there convolutions run
    about 1.3x faster, elsewhere bf16 is emulated and slower)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32 (got {precision!r})")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.mkldnn.is_available() \
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_optimizer(params, cfg, device):
    """AdamW over ``params``; the fused kernel (one pass over all tensors instead of a
    dozen per parameter) on CPU and CUDA, where it exists."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def learning_rate(cfg, step):
    """Linear warm-up, then cosine decay to 5% of ``cfg.lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


REWARM_STEPS = 100  # after a resume from resume.safetensors (fresh optimiser moments)


def rewarm_factor(step, rewarm_from):
    """Learning-rate factor after a resume without optimiser state: 0 -> 1 linearly over
    REWARM_STEPS steps from ``rewarm_from`` (1 when None: a normal run), so that Adam's fresh
    moments do not take full-size steps at once."""
    if rewarm_from is None:
        return 1.0
    return min(1.0, (step - rewarm_from + 1) / REWARM_STEPS)


def optimisation_step(model, optimizer, params, images, targets, bf16):
    """One step on a batch: losses (bf16 autocast when ``bf16``), backward, gradient norm
    clipped to 10, AdamW; a batch whose loss is not finite changes nothing. Returns the
    losses as floats, with their sum as "loss"."""
    with torch.autocast(images[0].device.type, dtype=torch.bfloat16, enabled=bf16):
        losses = model(images, targets)
    losses = {k: v.float() for k, v in losses.items()}
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if torch.isfinite(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
    return {k: v.item() for k, v in losses.items()} | {"loss": loss.item()}


def resume_state(run, model, optimizer, device, rng):
    """Load what a run folder holds to continue from into ``model``, ``optimizer`` and
    ``rng``: checkpoint.pt (everything), else resume.safetensors (fp16 weights and the step:
    the compact form that can be kept or moved where checkpoint.pt, 4x larger, cannot; the
    optimiser starts afresh, with a short learning-rate re-warm-up). Returns (step, best
    validation score, step the re-warm-up starts at or None); (0, -1, None) for a new run."""
    if run.checkpoint.is_file():
        state = run.load_checkpoint(device, rng)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError):
            raise run.unusable("its weights do not fit the run's network (config.json)") \
                from None
        return int(state["step"]), float(state["best"]), None
    if run.compact.is_file():
        from ..errors import ModelFileError
        from ..models.io import load_network

        network, meta = load_network(run.compact)
        try:
            model.load_state_dict(network.state_dict())
        except RuntimeError:
            raise ModelFileError(f"{run.compact}: its weights do not fit the run's network "
                                 f"(config.json); {run.start_afresh()}") from None
        step = int(meta["steps"])
        run.append_log({"event": "resumed from resume.safetensors (optimiser reset)",
                        "step": step})
        return step, float(meta.get("best", -1.0)), step
    return 0, -1.0, None


def network_meta(cfg, step, extra=None):
    meta = {
        "kind": cfg.kind,
        "diameter": WORKING_DIAMETER if cfg.kind in ("main", "unet") else None,
        "scale_range": list(PRESEG_RANGE) if cfg.kind == "preseg" else None,
        "working_range": list(cfg.working_range) if cfg.working_range else None,
        "trained_on": str(cfg.data),
        "steps": step,
        "batch_size": cfg.batch_size,
        "crop": cfg.crop,
    }
    meta.update(extra or {})
    return meta


def train(cfg, resume=False, progress=None, items=None):
    """Train (or with ``resume``, continue) a network as described by ``cfg``.

    ``progress(step, total, info)`` is called after every step (default: a line through
    progress.LOGGER at intervals, progress.ProgressCallback). ``items``: the training
    images of ``cfg`` already loaded by ``training_items(cfg)``, for a process that trains
    in several calls (loaded here when None). Returns the run folder path.
    """
    progress = progress or ProgressCallback("train", bar=False)
    run = RunFolder(cfg.out)
    cfg = run.begin(cfg, resume, CALL_FIELDS,
                    f"{run.dir} holds a run already: use --resume, or another --out")
    rng, device = seeded_start(cfg)

    spec = cfg.crop_spec()  # also refuses an unknown kind before anything is loaded
    model = build_network(cfg.kind, cfg.architecture)
    if cfg.architecture is None:  # pinned, so that later defaults cannot change a resumed run
        cfg = replace(cfg, architecture=model.config.to_dict())
        run.write_config(cfg)
    if cfg.init:
        from ..models.io import load_network

        init_model, _ = load_network(cfg.init)
        model.load_state_dict(init_model.state_dict())
    model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, device)
    step, best, rewarm_from = resume_state(run, model, optimizer, device, rng) if resume \
        else (0, -1.0, None)

    train_items = training_items(cfg) if items is None else items
    synthetic_items = [it for it in load_dataset(cfg.synthetic) if np.isfinite(it.diameter)] \
        if cfg.synthetic else []
    val_items = load_dataset(cfg.val, cfg.val_limit) if cfg.val else []
    styles = read_styles(cfg.val) if cfg.val else {}
    weights, colour = sampling_weights(train_items, cfg.min_colour_share)
    run.append_log({"event": "start", "step": step, "train_images": len(train_items),
                    "synthetic_images": len(synthetic_items),
                    "colour_share": float(weights[colour].sum()),
                    "val_images": len(val_items), "time": time.time()})

    batches = crop_batches(cfg, train_items, weights, synthetic_items, spec, rng, step)
    t_start = t_last = time.time()
    window = []
    use_amp = use_bf16(cfg.precision, device)  # bf16 autocast: no loss scaling needed
    while step < cfg.steps:
        model.train()
        lr = learning_rate(cfg, step) * rewarm_factor(step, rewarm_from)
        for g in optimizer.param_groups:
            g["lr"] = lr
        images, targets = next(batches)
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        losses = optimisation_step(model, optimizer, params, images, targets, use_amp)
        step += 1
        window.append(losses)
        progress(step, cfg.steps, {"loss": window[-1]["loss"], "lr": lr})
        out_of_time = cfg.max_minutes is not None and time.time() - t_start > 60 * cfg.max_minutes
        last = step == cfg.steps or out_of_time
        if step % 20 == 0 or last:
            rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            now = time.time()
            rec.update(step=step, lr=lr, sec_per_step=(now - t_last) / len(window))
            run.append_log(rec)
            t_last, window = now, []
        if val_items and (step % cfg.val_every == 0 or last):
            result = validate(model, val_items, cfg.kind, device, styles)
            run.append_log({"step": step, **result})
            save_network(model, run.dir / "last.safetensors", network_meta(cfg, step, result))
            if result["val_select"] > best:
                best = result["val_select"]
                save_network(model, run.dir / "best.safetensors", network_meta(cfg, step, result))
            t_last = time.time()
        if step % cfg.checkpoint_every == 0 or last:
            run.save_checkpoint({"model": model.state_dict(),
                                 "optimizer": optimizer.state_dict(), "step": step,
                                 "best": best}, rng)
            save_network(model, run.compact, network_meta(cfg, step, {"best": best}))
            if not val_items:
                save_network(model, run.dir / "last.safetensors", network_meta(cfg, step))
            plot_curve(run)
        if out_of_time and step < cfg.steps:
            run.append_log({"event": "time limit", "step": step, "minutes": cfg.max_minutes,
                            "time": time.time()})
            break
    return run.dir
