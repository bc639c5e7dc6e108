"""Training and using one style model (docs/METHOD.md section 4.3): a pix2pix that learns
*mask -> image* in the appearance of one style cluster, from the cluster's (mask, image) pairs.

Images here are the *raw colour appearance* to be learned, not the detection input: no
inversion, no percentile stretch. The caller converts each raw image to float (H, W, 3) in
[0, 1] with :func:`raw_image_to_unit` (uint8/bool by their dtype range; other dtypes kept when
already within [0, 1], else divided by the image's maximum); ``train_style_model`` applies it
to every pair as well, which leaves float images in [0, 1] unchanged.

A run folder follows the Mask R-CNN loop's conventions (``train/loop.py``): ``config.json``,
``checkpoint.pt`` (state dicts of both networks and optimisers, step, numpy and torch CPU
random states, so that a resumed CPU run matches an uninterrupted one; loaded with
``weights_only=True``), ``log.jsonl`` (a start line, then every ``log_every`` steps the
window's means of ``loss_g_gan``, ``loss_g_l1`` (unweighted L1 in the [-1, 1] image space),
``loss_d`` and ``sec_per_step``) and ``generator.safetensors`` (fp16 generator with metadata:
kind "pix2pix", architecture, pix2pix config, steps, number of pairs), written at every
checkpoint and at the end. ``resume=True`` continues from ``checkpoint.pt``.

Losses are pix2pix's: the vanilla GAN loss (``BCEWithLogits`` on the PatchGAN's logit map;
the discriminator's loss halved) plus ``lambda_l1`` x L1 for the generator. Adam with betas
(0.5, 0.999); learning rate constant for the first half of the steps, then decaying linearly
towards 0 (pix2pix's ``niter`` + ``niter_decay``).
"""
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.io import load_network_of_kind, save_network
from ..models.pix2pix import (Pix2PixConfig, build_discriminator, build_generator,
                              gan_to_image, image_to_gan, mask_to_input)
from ..preprocess import to_hwc
from ..train.runs import RunFolder, seeded_start

GENERATOR_FILE = "generator.safetensors"

# steps_for: steps = clip(round(per_sqrt_image * sqrt(n_images)), min_steps, max_steps)
STEP_PRESETS = {
    "quick": dict(per_sqrt_image=100, min_steps=200, max_steps=400),
    "full": dict(per_sqrt_image=1000, min_steps=2000, max_steps=20000),
}


def steps_for(n_images, preset="quick"):
    """Training steps (of ``StyleTrainConfig.batch_size`` = 1 crop) for a cluster of
    ``n_images`` pairs: ``clip(round(k * sqrt(n_images)), lo, hi)`` with (k, lo, hi) =
    (100, 200, 400) for "quick" and (1000, 2000, 20000) for "full".

    The total grows with the square root of the number of images, so the number of passes
    over each image (``steps / n_images``, "epochs") falls as ``k / sqrt(n)``: fewer epochs
    when there are more images (docs/METHOD.md section 4.3). "quick" is a few minutes on a
    CPU (about 0.85-1.1 s per 256 px step on one thread with the default architecture).
    """
    if preset not in STEP_PRESETS:
        raise ValueError(f"unknown preset {preset!r} ({', '.join(STEP_PRESETS)})")
    p = STEP_PRESETS[preset]
    steps = round(p["per_sqrt_image"] * math.sqrt(max(int(n_images), 1)))
    return int(min(max(steps, p["min_steps"]), p["max_steps"]))


@dataclass
class StyleTrainConfig:
    """One style model's training. ``lr`` and ``lambda_l1`` None: the architecture's
    (Pix2PixConfig: 2e-4 and 100); ``architecture``: a Pix2PixConfig dict (None: default);
    ``init``: a generator file (style.prior) whose weights the generator starts from, its
    architecture the same (the discriminator always starts afresh)."""

    steps: int = 400
    crop: int = 256
    batch_size: int = 1
    lr: float = None
    lambda_l1: float = None
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    threads: int = None  # torch CPU threads (None: torch's default)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    architecture: dict = None
    init: str = None  # generator file to start from (the style prior), None: random

    def pix2pix(self):
        return Pix2PixConfig.from_dict(self.architecture)


def raw_image_to_unit(image):
    """A raw image (gray (H, W) or colour (H, W, C)/(C, H, W), any dtype) -> float32
    (H, W, 3) in [0, 1] keeping its appearance: uint8 / 255, bool as 0/1; other dtypes are
    kept when their values lie within [0, 1] and otherwise divided by the image's maximum
    (negative values clipped to 0). Gray is repeated to 3 channels, alpha dropped."""
    raw = np.asarray(image)
    a = to_hwc(raw)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if raw.dtype == np.uint8:
        a /= 255.0
    elif raw.dtype != bool and (a.min() < 0 or a.max() > 1):
        top = float(a.max())
        a = a / top if top > 0 else np.zeros_like(a)
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def _check_pairs(pairs):
    if not pairs:
        raise ValueError("a style model needs at least one (image, labels) pair")
    out = []
    for i, (image, labels) in enumerate(pairs):
        img = raw_image_to_unit(image)
        lab = np.asarray(labels)
        if lab.ndim != 2 or lab.shape != img.shape[:2]:
            raise ValueError(f"pair {i}: labels of shape {lab.shape} do not match the image "
                             f"of shape {img.shape[:2]}")
        out.append((img, lab.astype(np.int32)))
    return out


def _pad_to(image, labels, crop, rng):
    """Mirror-pad a pair to at least crop x crop (random split of the padding); the mirrored
    objects get new label ids so they stay separate objects."""
    h, w = labels.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if not (ph or pw):
        return image, labels
    top, left = int(rng.integers(ph + 1)), int(rng.integers(pw + 1))
    pads = ((top, ph - top), (left, pw - left))
    image = np.pad(image, pads + ((0, 0),), mode="symmetric")
    lab = np.pad(labels, pads, mode="symmetric")
    inside = np.zeros(lab.shape, bool)
    inside[top:top + h, left:left + w] = True
    lab = np.where(~inside & (lab > 0), lab + int(labels.max()), lab)
    return image, lab


def sample_crop(image, labels, crop, rng):
    """A random crop x crop window of a pair (mirror-padded when smaller), randomly rotated
    by a multiple of 90 degrees and flipped (augmentations that keep the style)."""
    image, labels = _pad_to(image, labels, crop, rng)
    h, w = labels.shape
    y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    img, lab = image[y:y + crop, x:x + crop], labels[y:y + crop, x:x + crop]
    k = int(rng.integers(4))
    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return img, lab


def sampling_probabilities(pairs, crop):
    """Images are drawn in proportion to their area in crops (at least one crop each)."""
    n = np.array([max(1.0, lab.size / crop ** 2) for _, lab in pairs])
    return n / n.sum()


def make_batch(pairs, p, cfg, rng):
    """(masks (B, 2, c, c), images (B, 3, c, c) in [-1, 1]) as tensors."""
    masks, images = [], []
    for _ in range(cfg.batch_size):
        img, lab = sample_crop(*pairs[rng.choice(len(pairs), p=p)], cfg.crop, rng)
        masks.append(mask_to_input(lab))
        images.append(image_to_gan(img))
    return torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(images))


def learning_rate(lr, steps, step):
    """pix2pix's schedule: ``lr`` for the first half, then linear decay towards 0."""
    half = steps / 2
    return lr * min(1.0, max(0.0, (steps - step) / max(half, 1.0)))


def _gan_loss(logits, real):
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def _generator_meta(cfg, p2p, step, n_pairs):
    return {
        "kind": "pix2pix",
        "pix2pix": p2p.to_dict(),
        "steps": step,
        "pairs": n_pairs,
        "init": Path(cfg.init).name if cfg.init else None,
        "crop": cfg.crop,
        "batch_size": cfg.batch_size,
        "input": "mask_to_input: foreground, instance boundaries",
        "output": "RGB in [-1, 1] (image = (y + 1) / 2)",
    }


def train_style_model(pairs, out_dir, cfg=None, resume=False, progress=None):
    """Train (or with ``resume``, continue) the pix2pix style model of one cluster.

    pairs: list of (image, labels): image float (H, W, 3) in [0, 1] (the raw appearance, see
    :func:`raw_image_to_unit`), labels (H, W) int instance labels (preseg or annotated).
    ``progress(step, total, info)`` is called after every step. Returns the run folder.
    Raises FileExistsError when ``out_dir`` holds a run and ``resume`` is False.
    """
    cfg = cfg or StyleTrainConfig()
    pairs = _check_pairs(pairs)
    run = RunFolder(out_dir)
    resuming = resume and run.checkpoint.is_file()
    cfg = run.begin(cfg, resume, ("steps", "threads", "device"),
                    f"{run.dir} holds a style-model run already: resume it, or use another "
                    "folder")
    rng, device = seeded_start(cfg)

    p2p = cfg.pix2pix()
    lr0 = p2p.lr if cfg.lr is None else cfg.lr
    lambda_l1 = p2p.lambda_l1 if cfg.lambda_l1 is None else cfg.lambda_l1
    gen, disc = build_generator(p2p).to(device), build_discriminator(p2p).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr0, betas=tuple(p2p.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr0, betas=tuple(p2p.betas))
    step = 0
    if resuming:
        state = run.load_checkpoint(device, rng, ("generator", "discriminator", "opt_g",
                                                  "opt_d", "step"))
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step = int(state["step"])
    elif cfg.init:
        start_from(gen, cfg.init)
    p = sampling_probabilities(pairs, cfg.crop)
    run.append_log({"event": "start", "step": step, "pairs": len(pairs),
                    "device": str(device), "time": time.time()})

    gen.train()
    disc.train()
    t_last, window = time.time(), []
    while step < cfg.steps:
        lr = learning_rate(lr0, cfg.steps, step)
        for opt in (opt_g, opt_d):
            for g in opt.param_groups:
                g["lr"] = lr
        masks, real = (t.to(device) for t in make_batch(pairs, p, cfg, rng))
        fake = gen(masks)
        # discriminator: real pairs -> 1, generated pairs -> 0
        disc.requires_grad_(True)
        loss_d = 0.5 * (_gan_loss(disc(torch.cat([masks, real], 1)), True)
                        + _gan_loss(disc(torch.cat([masks, fake.detach()], 1)), False))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # generator: fool the discriminator (kept fixed), stay close to the real image
        disc.requires_grad_(False)
        loss_gan = _gan_loss(disc(torch.cat([masks, fake], 1)), True)
        loss_l1 = F.l1_loss(fake, real)
        opt_g.zero_grad(set_to_none=True)
        (loss_gan + lambda_l1 * loss_l1).backward()
        opt_g.step()
        step += 1
        window.append({"loss_g_gan": loss_gan.item(), "loss_g_l1": loss_l1.item(),
                       "loss_d": loss_d.item()})
        if progress:
            progress(step, cfg.steps, dict(window[-1], lr=lr))
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            rec = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            now = time.time()
            rec.update(step=step, lr=lr, sec_per_step=(now - t_last) / len(window))
            run.append_log(rec)
            t_last, window = now, []
        if step % cfg.checkpoint_every == 0 or last:
            run.save_checkpoint({"generator": gen.state_dict(), "discriminator": disc.state_dict(),
                                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                                 "step": step}, rng)
            meta = _generator_meta(cfg, p2p, step, len(pairs))
            save_network(gen, run.dir / GENERATOR_FILE, meta)
            if not window:  # checkpoint time is not training time
                t_last = time.time()
    if not (run.dir / GENERATOR_FILE).is_file():  # a resumed run that had no steps left
        save_network(gen, run.dir / GENERATOR_FILE, _generator_meta(cfg, p2p, step, len(pairs)))
    return run.dir


def start_from(generator, path):
    """Load the weights of the generator file ``path`` into ``generator``; ModelFileError
    (one line) when its architecture differs."""
    from ..errors import ModelFileError

    prior, meta = load_network_of_kind(path, "pix2pix", next(generator.parameters()).device)
    try:
        generator.load_state_dict(prior.state_dict())
    except RuntimeError:
        raise ModelFileError(f"{path}: its generator architecture "
                             f"{meta.get('pix2pix', {}).get('generator')} differs from the "
                             "style models' (style_architecture)") from None
    return generator


def load_style_model(path, device="cpu"):
    """A style model's generator (a run folder or its ``generator.safetensors``) in eval
    mode on ``device``; returns (generator, meta)."""
    path = Path(path)
    if path.is_dir():
        path = path / GENERATOR_FILE
    return load_network_of_kind(path, "pix2pix", device)


def generate(generator, labels, rng_or_seed=None):
    """Render a label image (H, W) (any size) in the generator's style: float32 (H, W, 3)
    in [0, 1].

    As in pix2pix, dropout stays active at generation time: it is the generator's noise
    source, so one mask gives varied images. ``rng_or_seed`` (int or numpy Generator) makes
    the result reproducible (the global torch random state is left untouched); None draws from
    torch's global random state. Instance norm behaves the same in train and eval mode.
    """
    device = next(generator.parameters()).device
    x = torch.from_numpy(mask_to_input(labels))[None].to(device)
    modes = {m: m.training for m in generator.modules()}
    generator.eval()
    for m in generator.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.train()
    try:
        if rng_or_seed is None:
            with torch.inference_mode():
                y = generator(x)[0]
        else:
            if isinstance(rng_or_seed, np.random.Generator):
                seed = int(rng_or_seed.integers(2 ** 63 - 1))
            else:
                seed = int(rng_or_seed)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(seed)
                y = generator(x)[0]
    finally:
        for m, training in modes.items():
            m.train(training)
    return gan_to_image(y)
