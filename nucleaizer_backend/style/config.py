"""Settings of a style adaptation: :class:`AdaptConfig` (what a caller gives; None = from the
preset or the base model), the presets, and :class:`Settings` (the checked settings with the
preset's values filled in, as every stage reads them and as ``work/job.json`` and model.json
record them).

Presets (:data:`PRESETS`; all other settings as in :class:`AdaptConfig`):

``quick`` (a 20-image adaptation within the 60 minutes asked of a 2-core CPU): pix2pix
``steps_for(n, "quick")`` = clip(100 sqrt(n), 200, 400) steps per style at lr 2e-3 (at
pix2pix's 2e-4 a few hundred steps leave a fluorescence style's background gray: L1 0.39
after 283 steps, against 0.04 after 150 steps at 2e-3, measured on 8 DSB fluorescence
images), at most 4 styles; 20 synthetic pairs per style, at most 384 px a side; fine-tune
400 steps (batch 2, 256 px crops, lr 5e-4, 20 warm-up, cosine decay), then the U-Net 300
steps (batch 4, about 0.8 s per step on one thread: 4 minutes).
Measured before the U-Net stage existed, with ``nucleaizer adapt --threads 1`` on 20 DSB val images (12 H&E, 8 fluorescence
of 256x256 to 520x696 px; 3 styles of 8, 7 and 5 images), 2-core CPU shared with another
training job: masks 19 s (0.9 s per image), cluster 2 s, styles 12.5 min (772 pix2pix steps,
0.85-0.97 s per step), synthesize 26 s (60 pairs of 256-320 px, 0.43 s each; a 512 px pair
takes 1.5-3 s), fine-tune 9.2 min (1.37 s per step), package 2 s: **22.6 minutes** in all,
2.3 GB peak memory. The most pix2pix steps 20 images can cost is 932 (4 styles of 3, 3, 3,
11 images: 200 + 200 + 200 + 332), about 15 minutes, so about 27 minutes at worst on one
thread of this CPU (two threads not measured: the other core was busy). With the U-Net stage
(``bench/run_benchmarks.py --sections adapt_speed --threads 1``, otherwise idle CPU):
25.3 minutes, of which styles 11.3, fine-tune 9.5, U-Net 3.7.

``full`` (paper-like; GPU recommended): ``steps_for(n, "full")`` = clip(1000 sqrt(n), 2000,
20000) pix2pix steps per style at pix2pix's lr 2e-4 (30 minutes to 5 hours per style on this
CPU at about 0.9 s per step, minutes on a GPU), up to 100 styles, 20 synthetic pairs per
style (the paper's number) of at most 512 px, 3000 fine-tune steps (lr 3e-4, 100 warm-up;
about 70 minutes on this CPU) and 2250 U-Net steps (about 30 minutes).
"""
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from ..errors import NucleaizerError

# The stages of one round, in order (style.adapt's module doc; one module each in stages/).
STAGES = ("masks", "cluster", "styles", "synthesize", "finetune", "finetune_unet", "package")

# Settings that a preset fills in when left as None.
PRESETS = {
    "quick": dict(max_clusters=4, style_lr=2e-3, max_synthetic_side=384, finetune_steps=400,
                  finetune_lr=5e-4, finetune_warmup=20, checkpoint_every=50,
                  style_checkpoint_every=100),
    "full": dict(max_clusters=100, style_lr=2e-4, max_synthetic_side=512, finetune_steps=3000,
                 finetune_lr=3e-4, finetune_warmup=100, checkpoint_every=250,
                 style_checkpoint_every=500),
}
SYNTHETIC_SHARE_RANGE = (0.1, 0.5)
MASK_SOURCES = ("preseg", "model")

# Which stage each setting first affects (a change is accepted while that stage is untouched).
SETTING_STAGE = {
    "base_model": "masks", "masks_from": "masks", "min_reliable_share": "cluster",
    "min_cluster_size": "cluster", "max_clusters": "cluster", "max_merge_distance": "cluster",
    "preset": "styles", "style_steps": "styles", "style_lr": "styles", "style_crop": "styles",
    "style_architecture": "styles", "style_checkpoint_every": "styles", "style_init": "styles",
    "synthetic_per_cluster": "synthesize", "real_fraction": "synthesize",
    "max_synthetic_side": "synthesize",
    "synthetic_share": "finetune", "finetune_steps": "finetune", "finetune_lr": "finetune",
    "finetune_warmup": "finetune", "finetune_batch_size": "finetune",
    "finetune_crop": "finetune", "checkpoint_every": "finetune", "replay_data": "finetune",
    "replay_styles": "finetune", "min_colour_share": "finetune",
    "unet_steps": "finetune_unet", "seed": "cluster",
}
NOT_IDENTITY = ("threads", "device", "precision")  # may differ between runs of one job

# Settings at least 1 (checked in this order).
_AT_LEAST_ONE = ("min_cluster_size", "max_clusters", "synthetic_per_cluster", "finetune_steps",
                 "finetune_batch_size", "finetune_crop", "checkpoint_every",
                 "max_synthetic_side", "style_crop", "style_checkpoint_every")


@dataclass
class AdaptConfig:
    """Settings of one adaptation; None = from the preset (:data:`PRESETS`) or the base model.

    base_model: model folder or main network file to adapt (None: the shipped default);
    preset: "quick" or "full"; min_cluster_size: fewest images a style model learns from;
    max_clusters: upper bound on the number of styles (each costs one style model);
    max_merge_distance: a cluster smaller than min_cluster_size whose nearest other cluster is
    farther (standardised feature units) is skipped instead of merged (None: always merged);
    synthetic_per_cluster: synthetic pairs per style (paper: 20); synthetic_share: fraction of
    fine-tune crops from synthetic pairs (0.1-0.5); finetune_steps / finetune_lr /
    finetune_warmup / finetune_batch_size / finetune_crop / checkpoint_every: the fine-tune;
    unet_steps: steps of the contour U-Net's fine-tune (same data, learning rate and
    warm-up, batch 4; None: 3/4 of finetune_steps; 0: keep the base model's U-Net);
    replay_data: folder of annotated image + label pairs mixed into the fine-tune (None: the
    shipped replay set); replay_styles: use only these styles of replay_data (its index.csv,
    e.g. ["fluo"]); min_colour_share: least share of colour and of gray replay images (None:
    the base model's recipe, else 0.3); real_fraction: share of real nucleus shapes in the
    synthetic masks; max_synthetic_side: synthetic images are at most this many px a side
    (quick 384, full 512: a 256 px fine-tune crop at the 40 px working size covers
    256 * d / 40 px of an image with d px nuclei, 384 px for d = 60);
    style_steps: pix2pix steps per style instead of steps_for(n, preset); style_lr: their
    learning rate (quick 2e-3: a few hundred steps at pix2pix's 2e-4 leave fluorescence
    backgrounds gray, see the module doc; full 2e-4, pix2pix's); style_crop,
    style_architecture (a Pix2PixConfig dict), style_checkpoint_every: the style models;
    masks_from: where unannotated images' masks come from: "preseg" (the base model's
    size-robust preseg network, the paper's choice) or "model" (the base model's full
    segmentation: main network at the preseg-estimated size, refined);
    min_reliable_share: a style gets a style model only when at least this share of its
    images has reliable masks (annotations, or at least size.MIN_NUCLEI nuclei found); its
    other images are left out of its style model and statistics (a pix2pix model trained on
    masks that miss most nuclei learns to paint nuclei that no mask labels). 0: no check;
    iterations: rounds of adaptation; round r >= 2 takes its masks from round r-1's adapted
    model (masks_from "model") and fine-tunes that model further, so styles that the base
    model could not segment well enough in round 1 can be learned in a later round;
    seed: all random choices; threads: torch CPU threads (None: torch's default); device: where
    every stage runs ("auto": CUDA when present, "cpu", "cuda"); precision: the fine-tunes'
    arithmetic (train.loop: "auto" = bf16 where the hardware has it, "bf16", "fp32").
    """

    base_model: str = None
    preset: str = "quick"
    min_cluster_size: int = 3
    max_clusters: int = None
    max_merge_distance: float = None
    synthetic_per_cluster: int = 20
    synthetic_share: float = 0.3
    finetune_steps: int = None
    finetune_lr: float = None
    finetune_warmup: int = None
    finetune_batch_size: int = 2
    finetune_crop: int = 256
    unet_steps: int = None
    checkpoint_every: int = None
    replay_data: str = None
    replay_styles: list = None
    min_colour_share: float = None
    real_fraction: float = 0.5
    max_synthetic_side: int = None
    style_steps: int = None
    style_lr: float = None
    style_crop: int = 256
    style_architecture: dict = None
    style_checkpoint_every: int = None
    style_init: str = None
    masks_from: str = "preseg"
    min_reliable_share: float = 0.5
    iterations: int = 1
    seed: int = 0
    threads: int = None
    device: str = "auto"
    precision: str = "auto"

    def resolved(self):
        """The checked :class:`Settings`, the preset's values filled in; NucleaizerError
        naming the first setting out of its range."""
        if self.preset not in PRESETS:
            raise NucleaizerError(f"unknown preset {self.preset!r} (quick or full)")
        s = asdict(self)
        for k, v in PRESETS[self.preset].items():
            if s[k] is None:
                s[k] = v
        lo, hi = SYNTHETIC_SHARE_RANGE
        if not lo <= float(s["synthetic_share"]) <= hi:
            raise NucleaizerError(f"synthetic share {s['synthetic_share']} is outside {lo}-{hi} "
                                  "(the fraction of fine-tune crops taken from synthetic images)")
        for k in _AT_LEAST_ONE:
            if int(s[k]) < 1:
                raise NucleaizerError(f"{k} must be at least 1 (got {s[k]})")
        if s["unet_steps"] is None:
            s["unet_steps"] = max(1, round(0.75 * int(s["finetune_steps"])))
        if int(s["unet_steps"]) < 0:
            raise NucleaizerError(f"unet_steps must be at least 0 (got {s['unet_steps']})")
        if s["style_steps"] is not None and int(s["style_steps"]) < 1:
            raise NucleaizerError(f"style_steps must be at least 1 (got {s['style_steps']})")
        if s["masks_from"] not in MASK_SOURCES:
            raise NucleaizerError(f"masks_from must be one of {', '.join(MASK_SOURCES)} "
                                  f"(got {s['masks_from']!r})")
        if not 0.0 <= float(s["min_reliable_share"]) <= 1.0:
            raise NucleaizerError("min_reliable_share must be within 0-1 (got "
                                  f"{s['min_reliable_share']})")
        if int(s["iterations"]) < 1:
            raise NucleaizerError(f"iterations must be at least 1 (got {s['iterations']})")
        if not 0.0 <= float(s["real_fraction"]) <= 1.0:
            raise NucleaizerError(f"real_fraction must be within 0-1 (got {s['real_fraction']})")
        if s["replay_data"] is not None:
            s["replay_data"] = str(Path(s["replay_data"]).expanduser().resolve())
        if s["style_init"] is not None and str(s["style_init"]).lower() != "none":
            s["style_init"] = str(Path(s["style_init"]).expanduser().resolve())
        if s["replay_styles"] is not None:
            s["replay_styles"] = list(s["replay_styles"])
        return Settings(**_typed(s))


@dataclass(frozen=True)
class Settings:
    """The settings of one adaptation round as the stages read them (AdaptConfig.resolved():
    every preset value filled in, every range checked; see :class:`AdaptConfig` for their
    meaning). ``base_model`` is the base model's resolved path once the round has found it
    (:meth:`with_base_model`). :meth:`as_dict` is the form ``work/job.json`` and model.json
    record (the resume check compares it)."""

    base_model: Optional[str]
    preset: str
    min_cluster_size: int
    max_clusters: int
    max_merge_distance: Optional[float]
    synthetic_per_cluster: int
    synthetic_share: float
    finetune_steps: int
    finetune_lr: float
    finetune_warmup: int
    finetune_batch_size: int
    finetune_crop: int
    unet_steps: int
    checkpoint_every: int
    replay_data: Optional[str]
    replay_styles: Optional[list]
    min_colour_share: Optional[float]
    real_fraction: float
    max_synthetic_side: int
    style_steps: Optional[int]
    style_lr: float
    style_crop: int
    style_architecture: Optional[dict]
    style_checkpoint_every: int
    style_init: Optional[str]
    masks_from: str
    min_reliable_share: float
    iterations: int
    seed: int
    threads: Optional[int]
    device: str
    precision: str

    def as_dict(self):
        """{setting: value} in the field order (as written to job.json and model.json)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_base_model(self, path):
        """These settings with the base model's resolved path."""
        return Settings(**{**self.as_dict(), "base_model": str(path)})


_CASTS = {int: int, float: float, Optional[int]: int, Optional[float]: float}


def _typed(values):
    """``values`` with each number as the type Settings declares for it."""
    for f in fields(Settings):
        cast = _CASTS.get(f.type)
        if cast is not None and values[f.name] is not None:
            values[f.name] = cast(values[f.name])
    return values
