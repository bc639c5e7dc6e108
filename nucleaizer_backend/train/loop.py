"""The resumable training loop for the networks: Mask R-CNN main and preseg, and the
refinement U-Net (kind ``unet``, trained at the main network's 40 px working scale).

A run folder holds everything needed to continue and to judge a run:
``config.json``, ``checkpoint.pt`` (weights, optimiser, step, random states; written every
``checkpoint_every`` steps and loaded with ``weights_only=True``), ``log.jsonl`` (loss lines
and validation lines), ``curve.png``, ``last.safetensors`` and ``best.safetensors`` (fp16
network files; best = highest validation DSB score for main; for preseg, the most val images
whose size estimate is within 20%, DSB breaking ties; for unet, the foreground IoU).
"""
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..evaluate import score_image, summarize
from ..models.io import build_network, save_network
from .augment import CropSpec, make_training_crop, targets_from_labels
from .data import load_dataset

WORKING_DIAMETER = 40.0  # px: the main network's nucleus size (METHOD.md section 2)
PRESEG_RANGE = (12.0, 100.0)  # px: nucleus sizes preseg is trained on


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

    def crop_spec(self):
        if self.kind == "preseg":
            return CropSpec(size=self.crop, scale_range=PRESEG_RANGE,
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


def sampling_weights(items, min_share):
    """Per-image sampling probabilities: uniform, except that colour and gray images each
    get at least ``min_share`` of the samples (the rarer style is not drowned out).
    Returns (probabilities, colour flags), both (N,)."""
    colour = np.array([it.is_colour for it in items])
    p = np.full(len(items), 1.0 / len(items))
    n_colour = int(colour.sum())
    if 0 < n_colour < len(items) and min_share > 0:
        share = float(np.clip(n_colour / len(items), min_share, 1 - min_share))
        p[colour] = share / n_colour
        p[~colour] = (1 - share) / (len(items) - n_colour)
    return p, colour


def training_items(cfg):
    """The annotated training images of ``cfg.data`` (only ``cfg.styles`` when given)."""
    items = [it for it in load_dataset(cfg.data) if np.isfinite(it.diameter)]
    if cfg.styles:
        styles = read_styles(cfg.data)
        if not styles:
            raise ValueError(f"--styles needs an index.csv with a style column in or above "
                             f"{cfg.data}")
        items = [it for it in items if styles.get(it.name) in cfg.styles]
        if not items:
            raise ValueError(f"no training image of style {', '.join(cfg.styles)} in {cfg.data}")
    return items


def pick_item(items, weights, synthetic, synthetic_share, rng):
    """One training image: synthetic with probability ``synthetic_share`` (when there are
    synthetic images), else an annotated one drawn with ``weights``."""
    if synthetic and rng.random() < synthetic_share:
        return synthetic[rng.integers(len(synthetic))]
    return items[rng.choice(len(items), p=weights)]


def learning_rate(cfg, step):
    """Linear warm-up, then cosine decay to 5% of ``cfg.lr`` at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


class CropStream(torch.utils.data.IterableDataset):
    """Endless training batches (image tensors, targets) made in DataLoader worker processes,
    so that a GPU is not kept waiting by the CPU-side augmentation (about 18 ms per 256 px
    crop on one core). Worker ``w`` draws from numpy's generator seeded with (seed, the step
    the stream starts at, w): a run is reproducible for a given seed and worker count, and a
    resumed run draws new crops rather than replaying the first ones. (With ``workers`` = 0
    the crops come from the run's own generator instead, saved in every checkpoint, so a
    resumed run continues exactly where an uninterrupted one would.)"""

    def __init__(self, cfg, items, weights, synthetic, spec, start_step):
        self.cfg, self.items, self.weights = cfg, items, weights
        self.synthetic, self.spec, self.start_step = synthetic, spec, start_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.cfg.seed, self.start_step, info.id if info else 0])
        return batch_stream(self.cfg, self.items, self.weights, self.synthetic, self.spec, rng)


def batch_stream(cfg, items, weights, synthetic, spec, rng):
    """Endless training batches (image tensors, targets) of ``cfg.batch_size`` random crops."""
    while True:
        crops = [make_training_crop(pick_item(items, weights, synthetic, cfg.synthetic_share,
                                              rng), spec, rng) for _ in range(cfg.batch_size)]
        yield to_targets(crops, cfg.kind, spec.min_area)


def crop_batches(cfg, items, weights, synthetic, spec, rng, start_step):
    """Iterator of training batches: from ``cfg.workers`` processes, or made here with ``rng``."""
    if cfg.workers > 0:
        stream = CropStream(cfg, items, weights, synthetic, spec, start_step)
        return iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                                prefetch_factor=4))
    return batch_stream(cfg, items, weights, synthetic, spec, rng)


def to_targets(crops, kind, min_area):
    """Training crops [(image (3, S, S), labels (S, S))] -> (image tensors, targets): boxes,
    labels and instance masks for Mask R-CNN; a foreground mask for the U-Net."""
    images, targets = [], []
    for img, lab in crops:
        images.append(torch.from_numpy(img))
        if kind == "unet":
            targets.append({"foreground": torch.from_numpy((lab > 0).astype(np.float32))})
            continue
        boxes, masks = targets_from_labels(lab, min_area)
        targets.append({
            "boxes": torch.from_numpy(boxes),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        })
    return images, targets


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


def read_styles(folder):
    """{image id: style} from an ``index.csv`` (columns id, style) in or above ``folder``."""
    for candidate in (Path(folder) / "index.csv", Path(folder).parent / "index.csv"):
        if candidate.is_file():
            import csv

            with open(candidate) as f:
                return {r["id"]: r["style"] for r in csv.DictReader(f) if "style" in r}
    return {}


def read_run_log(path):
    """The records of a run's ``log.jsonl`` as the run now stands: a run resumed from a
    checkpoint at step S appends a start line with step S, and the lines written before it
    for steps after S (work lost when the run stopped) are dropped, so curves and summaries
    show each step once. Lines without a step are kept. [] when there is no log."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("event") == "start":
            records = [r for r in records if r.get("step", -1) <= rec.get("step", 0)]
        records.append(rec)
    return records


class RunFolder:
    def __init__(self, out):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.dir / "checkpoint.pt"
        self.log = self.dir / "log.jsonl"

    def append_log(self, record):
        with open(self.log, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self):
        return read_run_log(self.log)

    def save_checkpoint(self, state, rng):
        """Write ``state`` (tensors, state dicts, numbers) plus the numpy ``rng``'s and
        torch's random states to checkpoint.pt, atomically."""
        state = dict(state, numpy_rng=json.dumps(rng.bit_generator.state),
                     torch_rng=torch.get_rng_state())
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)

    def load_checkpoint(self, device, rng):
        """The saved state (loaded with ``weights_only=True``: no code runs); restores the
        numpy ``rng``'s and torch's random states."""
        state = torch.load(self.checkpoint, map_location=device, weights_only=True)
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        return state


def network_meta(cfg, step, extra=None):
    meta = {
        "kind": cfg.kind,
        "diameter": WORKING_DIAMETER if cfg.kind in ("main", "unet") else None,
        "scale_range": list(PRESEG_RANGE) if cfg.kind == "preseg" else None,
        "trained_on": str(cfg.data),
        "steps": step,
        "batch_size": cfg.batch_size,
        "crop": cfg.crop,
    }
    meta.update(extra or {})
    return meta


def train(cfg, resume=False, progress=None, items=None):
    """Train (or with ``resume``, continue) a network as described by ``cfg``.

    ``progress(step, total, info)`` is called after every step. ``items``: the training
    images of ``cfg`` already loaded by ``training_items(cfg)``, for a process that trains
    in several calls (loaded here when None). Returns the run folder path.
    """
    run = RunFolder(cfg.out)
    config_file = run.dir / "config.json"
    if resume and run.checkpoint.is_file():
        # the run's recipe, with this call's length and machine settings
        cfg = TrainConfig(**{**json.loads(config_file.read_text()), "steps": cfg.steps,
                             "threads": cfg.threads, "device": cfg.device,
                             "workers": cfg.workers, "max_minutes": cfg.max_minutes,
                             "precision": cfg.precision})
    elif run.checkpoint.is_file():
        raise FileExistsError(f"{run.dir} holds a run already: use --resume, or another --out")
    config_file.write_text(json.dumps(asdict(cfg), indent=1))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)

    spec = cfg.crop_spec()  # also refuses an unknown kind before anything is loaded
    model = build_network(cfg.kind, cfg.architecture)
    if cfg.init:
        from ..models.io import load_network

        init_model, _ = load_network(cfg.init)
        model.load_state_dict(init_model.state_dict())
    model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg, device)
    step, best = 0, -1.0
    if resume and run.checkpoint.is_file():
        state = run.load_checkpoint(device, rng)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best = int(state["step"]), float(state["best"])

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
        lr = learning_rate(cfg, step)
        for g in optimizer.param_groups:
            g["lr"] = lr
        images, targets = next(batches)
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            losses = model(images, targets)
        losses = {k: v.float() for k, v in losses.items()}
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
        step += 1
        window.append({k: v.item() for k, v in losses.items()} | {"loss": loss.item()})
        if progress:
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
            if not val_items:
                save_network(model, run.dir / "last.safetensors", network_meta(cfg, step))
            plot_curve(run)
        if out_of_time and step < cfg.steps:
            run.append_log({"event": "time limit", "step": step, "minutes": cfg.max_minutes,
                            "time": time.time()})
            break
    return run.dir


def plot_curve(run):
    """Training loss and validation DSB against step, as ``curve.png`` in the run folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = run.read_log()
    loss = [(r["step"], r["loss"]) for r in log if "loss" in r]
    metric = "val_fg_iou" if any("val_fg_iou" in r for r in log) else "val_dsb"
    val = [(r["step"], r[metric]) for r in log if metric in r]
    if not loss:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    s, l = zip(*loss)
    ax.plot(s, l, color="tab:blue", lw=1, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax.set_yscale("log")
    if val:
        ax2 = ax.twinx()
        vs, vd = zip(*val)
        name = "foreground IoU" if metric == "val_fg_iou" else "DSB score"
        ax2.plot(vs, vd, "o-", color="tab:red", label=f"val {name}")
        ax2.set_ylabel(f"validation {name}", color="tab:red")
        ax2.set_ylim(0, 1)
    ax.set_title(run.dir.name)
    fig.tight_layout()
    fig.savefig(run.dir / "curve.png", dpi=90)
    plt.close(fig)
