"""Style adaptation, the whole chain (METHOD.md section 4): from unannotated images of a new
experiment to an adapted model folder.

:func:`adapt` runs seven stages in a work folder ``<out>/work/``; each stage writes its outputs
and a marker ``work/<stage>.json`` when it is finished, so that an interrupted run continues
where it stopped when it is started again with the same images (finished stages are skipped,
half-finished ones continue: masks and synthetic pairs image by image, the style models and
the fine-tune from their checkpoints):

a. **masks** - a nucleus mask per target image: the user's annotation where given (GTstyle),
   else the base model's preseg nuclei (AUTOstyle; preseg is the size-robust network; or
   its full segmentation with ``masks_from="model"``), as ``work/masks/<image>.tif``. An
   automatic mask is *reliable* when it holds at least size.MIN_NUCLEI nuclei;
b. **cluster** - style features of every image and its mask (style.cluster), k-means with
   over-clustering and small-cluster merging; ``work/cluster.json``. Images of clusters that
   stay too small ("skipped"), hold no nuclei, or have reliable masks in fewer than
   ``min_reliable_share`` of their images get no style model and are reported (a pix2pix
   model trained on masks that miss most nuclei learns to paint nuclei no mask labels, and
   its synthetic images would teach the detector to ignore nuclei);
c. **styles** - one pix2pix per cluster (style.pix2pix_train) on the (mask, raw image) pairs
   of its images with reliable masks, ``steps_for(n_images, preset)`` steps;
   ``work/styles/style_NN/``;
d. **synthesize** - per cluster, the nuclei of its masks are measured (style.masks), N new
   masks composed (half real shapes from the shipped shape database, half perturbed
   ellipses) at the cluster's typical image size (at most ``max_synthetic_side`` px a side)
   and rendered by the cluster's generator: ``work/synthetic/images/*.png`` (uint8 RGB) +
   ``labels/*.tif``;
e. **finetune** - the base main network fine-tuned (train.loop, kind "main") on the replay
   data (original annotated images: by default the compact set shipped in
   ``weights/replay``, :func:`default_replay_dir`) with ``synthetic_share`` of the crops taken
   from the synthetic pairs; ``work/finetune/`` (checkpoint.pt, log.jsonl, curve.png,
   last.safetensors);
f. **finetune_unet** - the base model's contour U-Net fine-tuned the same way (kind "unet",
   ``unet_steps``, batch 4): the U-Net's foreground decides which detections survive (p6)
   and where their contours lie, so a U-Net that has never seen the new style erases what
   the adapted detector finds (measured: H&E val DSB 0.026 with a fluorescence-only U-Net,
   0.204 with the same adapted detector and no U-Net; docs/training/style-bench);
   ``work/finetune_unet/``;
g. **package** - the adapted model folder ``<out>/``: ``main.safetensors`` and
   ``unet.safetensors`` (the fine-tuned networks at their last step: target images have no
   labels to select a step on), ``preseg.safetensors`` copied from the base model (the shipped
   default's where the base lacks one), ``model.json`` (base model, target images, masks
   source per image, clusters, synthetic counts, settings, fine-tune summary, the base
   model's post-processing parameters), ``style_sheet.png`` (per style: real target images,
   synthetic images, synthetic images with their masks' outlines, all at native scale),
   ``training_curve.png`` and ``adapt_log.jsonl`` (one line per stage and run, with timings).

With ``iterations`` = n > 1 the whole chain runs n times, round r in
``<out>/work/round_<r>/`` (a complete model folder, resumable like a one-round ``out``):
round 1 adapts the base model; round r >= 2 adapts round r-1's model, with its masks from
that model's segmentation (``masks_from="model"``), so that styles whose nuclei the base
model missed can be learned once a first round has taught it their look. The last round's
model folder is copied into ``<out>``; its model.json lists every round.

An ``out`` folder that holds anything but an adaptation of the same images is refused rather
than mixed. Changing a setting between runs is accepted while the stages it affects have not
started yet (e.g. ``min_cluster_size`` after an error at the cluster stage), refused otherwise.

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
import csv
import hashlib
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputImageError, ModelFileError, NucleaizerError

REPLAY_DIR = Path(__file__).resolve().parent.parent / "weights" / "replay"
STAGES = ("masks", "cluster", "styles", "synthesize", "finetune", "finetune_unet", "package")
UNET_BATCH = 4  # the U-Net recipe's batch (train.loop; 4 x 256 px crops)
WORK_DIR, JOB_FILE = "work", "job.json"
SHEET_FILE, CURVE_FILE, LOG_FILE = "style_sheet.png", "training_curve.png", "adapt_log.jsonl"

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
ROUNDS_FILE = "rounds.json"  # out/work/rounds.json: the job of a multi-round adaptation
SHEET_COLUMNS = 3  # real images, synthetic images, synthetic with outlines: 3 of each
SHEET_TILE = 256  # px (native scale) shown of each image
SHEET_DPI = 110  # a 1.6 inch tile: 176 px


def default_replay_dir():
    """The shipped replay set: 48 annotated DSB 2018 train images (34 fluorescence, 14 H&E),
    ``images/`` + ``labels/`` + ``index.csv`` (id, style, source_id, ...)."""
    return REPLAY_DIR


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
    every stage runs ("auto": CUDA when present, "cpu", "cuda").
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
    masks_from: str = "preseg"
    min_reliable_share: float = 0.5
    iterations: int = 1
    seed: int = 0
    threads: int = None
    device: str = "auto"

    def resolved(self):
        """The settings with the preset's values filled in (a dict); checks them."""
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
        for k in ("min_cluster_size", "max_clusters", "synthetic_per_cluster", "finetune_steps",
                  "finetune_batch_size", "finetune_crop", "checkpoint_every",
                  "max_synthetic_side", "style_crop", "style_checkpoint_every"):
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
        if s["replay_styles"] is not None:
            s["replay_styles"] = list(s["replay_styles"])
        return s


# Which stage each setting first affects (a change is accepted while that stage is untouched).
_SETTING_STAGE = {
    "base_model": "masks", "masks_from": "masks", "min_reliable_share": "cluster",
    "min_cluster_size": "cluster", "max_clusters": "cluster", "max_merge_distance": "cluster",
    "preset": "styles", "style_steps": "styles", "style_lr": "styles", "style_crop": "styles",
    "style_architecture": "styles", "style_checkpoint_every": "styles",
    "synthetic_per_cluster": "synthesize", "real_fraction": "synthesize",
    "max_synthetic_side": "synthesize",
    "synthetic_share": "finetune", "finetune_steps": "finetune", "finetune_lr": "finetune",
    "finetune_warmup": "finetune", "finetune_batch_size": "finetune",
    "finetune_crop": "finetune", "checkpoint_every": "finetune", "replay_data": "finetune",
    "replay_styles": "finetune", "min_colour_share": "finetune",
    "unet_steps": "finetune_unet", "seed": "cluster",
}
_NOT_IDENTITY = ("threads", "device")  # may differ between runs


@dataclass
class AdaptResult:
    """What an adaptation produced.

    model_dir: the adapted model folder; n_images: target images; n_clusters: styles found;
    n_styles_learned: styles with a style model; skipped: names of the images whose style got
    no style model (too few images, or no nuclei); synthetic_count: synthetic pairs made;
    seconds: {stage: seconds it took in the run that finished it}; resumed: stages found
    finished and skipped by this run; clusters_report: lines of the clustering report;
    masks_source: {image: "AUTO" (preseg) or "GT" (annotation)}; style_sheet, training_curve:
    paths of the PNGs.
    """

    model_dir: Path
    n_images: int
    n_clusters: int
    n_styles_learned: int
    skipped: list
    synthetic_count: int
    seconds: dict
    resumed: list = field(default_factory=list)
    clusters_report: list = field(default_factory=list)
    masks_source: dict = field(default_factory=dict)
    finetune_steps: int = 0
    style_sheet: Path = None
    training_curve: Path = None

    def report(self):
        """Human-readable lines: images, styles, synthetic pairs, fine-tune, time per stage."""
        n_gt = sum(1 for v in self.masks_source.values() if v == "GT")
        lines = [f"adapted model: {self.model_dir}",
                 f"{self.n_images} target images (masks: {self.n_images - n_gt} preseg, "
                 f"{n_gt} annotated)"]
        lines += self.clusters_report
        if self.skipped:
            lines.append(f"not used for style models ({len(self.skipped)}): "
                         + ", ".join(self.skipped[:10]) + (" ..." if len(self.skipped) > 10 else ""))
        lines.append(f"{self.n_styles_learned} style models, {self.synthetic_count} synthetic "
                     f"pairs; main network fine-tuned {self.finetune_steps} steps")
        total = sum(self.seconds.values())
        lines.append("time: " + ", ".join(f"{k} {_duration(v)}" for k, v in self.seconds.items())
                     + f" (total {_duration(total)})"
                     + (f"; finished before this run: {', '.join(self.resumed)}"
                        if self.resumed else ""))
        lines.append(f"style sheet: {self.style_sheet}")
        return lines


def _duration(seconds):
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ----------------------------------------------------------------------------- inputs

@dataclass
class _Target:
    """One target image: read from ``path`` (lazily) or given as ``array``."""

    name: str
    file: str  # safe file stem in the work folder
    path: Path = None
    array: np.ndarray = None
    digest: str = ""
    shape: tuple = ()

    def read(self):
        if self.array is not None:
            return self.array
        from ..imageio_utils import read_image

        return read_image(self.path)


def _digest(a):
    a = np.ascontiguousarray(a)
    h = hashlib.sha1(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.view(np.uint8).ravel() if a.size else b"")
    return h.hexdigest()


def _check_2d(a, name):
    """Plane shape (H, W) of a 2D gray/colour image; InputImageError naming ``name`` else."""
    from ..preprocess import to_hwc

    try:
        shape = to_hwc(a).shape[:2]
    except InputImageError as e:
        raise InputImageError(f"{name}: {e}") from None
    return tuple(int(v) for v in shape)


def _safe_stem(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"


def _targets(images):
    """``images`` (paths, folders, (name, array) pairs or a {name: array/path} dict) ->
    [_Target] sorted by name, every image read once (digest, 2D check)."""
    from ..imageio_utils import list_images, read_image

    items = list(images.items()) if isinstance(images, dict) else list(images or [])
    targets = []
    for item in items:
        if isinstance(item, (str, Path)):
            for p in list_images([item]):
                targets.append(_Target(p.stem, "", path=p))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            name, value = item
            if isinstance(value, (str, Path)):
                targets.append(_Target(str(name), "", path=Path(value)))
            else:
                targets.append(_Target(str(name), "", array=np.asarray(value)))
        else:
            raise NucleaizerError("images must be image files, folders or (name, array) pairs "
                                  f"(got {type(item).__name__})")
    if not targets:
        raise NucleaizerError("no images to adapt to (give image files or folders)")
    names = [t.name for t in targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise NucleaizerError(f"several images are named {', '.join(dup[:5])}: image names must "
                              "be unique (rename the files or pass (name, array) pairs)")
    files = {}
    for t in sorted(targets, key=lambda t: t.name):
        stem = _safe_stem(t.name)
        if stem in files:
            stem = f"{stem}_{hashlib.sha1(t.name.encode()).hexdigest()[:6]}"
        files[stem] = t
        t.file = stem
        a = read_image(t.path) if t.array is None else t.array
        t.shape = _check_2d(a, t.path or t.name)
        t.digest = _digest(a)
    return sorted(targets, key=lambda t: t.name)


def _as_labels(a, name, shape):
    """An annotation (array or file) -> int32 label image of ``shape``; a binary mask is split
    into objects by connected components (as train.data.read_labels does)."""
    from scipy import ndimage

    from ..labels import relabel_sequential

    if isinstance(a, (str, Path)):
        from ..train.data import read_labels

        try:
            lab = read_labels(a)
        except NucleaizerError as e:
            raise InputImageError(f"annotation of {name}: {e}") from None
    else:
        lab = np.asarray(a)
        if lab.ndim == 3 and lab.shape[-1] in (3, 4):
            lab = lab[..., 0]
        if lab.ndim != 2 or not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool
                                 or np.issubdtype(lab.dtype, np.floating)):
            raise InputImageError(f"annotation of {name}: a label image must be 2D integers "
                                  f"(got shape {lab.shape}, {lab.dtype})")
        lab = np.nan_to_num(lab).astype(np.int64)
        if len(np.unique(lab)) <= 2:
            lab, _ = ndimage.label(lab > 0)
        lab = relabel_sequential(np.maximum(lab, 0)).astype(np.int32)
    if lab.shape != tuple(shape):
        raise InputImageError(f"annotation of {name}: labels of shape {lab.shape} do not match "
                              f"the image's {tuple(shape)}")
    return lab


def _annotations(annotations, targets):
    """{image name: int32 labels} for the annotated images; refuses unknown names."""
    if not annotations:
        return {}
    by_name = {t.name: t for t in targets}
    unknown = sorted(str(n) for n in annotations if str(n) not in by_name)
    if unknown:
        raise NucleaizerError("annotations for images that are not among the target images: "
                              + ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    return {str(n): _as_labels(a, n, by_name[str(n)].shape) for n, a in annotations.items()}


def _base_model(base):
    """(model folder or None, main network file, its meta, model.json dict, display name)."""
    from ..models.io import (DEFAULT_MODEL_DIR, INFO_FILE, MAIN_FILE, read_model_info,
                             read_network_meta)

    p = Path(base).expanduser().resolve() if base else DEFAULT_MODEL_DIR
    if not p.exists():
        raise ModelFileError(f"base model not found: {p}")
    folder = p if p.is_dir() else None
    main = p / MAIN_FILE if folder else p
    if not main.is_file():
        raise ModelFileError(f"{p}: the base model has no main network ({MAIN_FILE}); style "
                             "adaptation fine-tunes a main network")
    meta = read_network_meta(main)
    if meta.get("kind") != "main":
        raise ModelFileError(f"{main}: not a main network (kind {meta.get('kind')!r}); style "
                             "adaptation fine-tunes a main network")
    info = read_model_info((folder or p.parent) / INFO_FILE)
    return folder, main, meta, info, info.get("name") or (folder or p).name


# ----------------------------------------------------------------------------- work folder

class _Work:
    def __init__(self, out):
        self.out = Path(out)
        self.dir = self.out / WORK_DIR

    def marker(self, stage):
        return self.dir / f"{stage}.json"

    def done(self, stage):
        f = self.marker(stage)
        return json.loads(f.read_text()) if f.is_file() else None

    def touched(self, stage):
        sub = {"masks": "masks", "styles": "styles", "synthesize": "synthetic",
               "finetune": "finetune"}.get(stage)
        return self.marker(stage).is_file() or bool(sub and (self.dir / sub).exists())

    def finish(self, stage, record):
        _write_json(self.marker(stage), record)

    def log(self, record):
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def _write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _check_out(work, job, base_dir):
    """Refuse an ``out`` that is not (the start of) an adaptation of the same images; returns
    True when the job file must be (re)written."""
    from ..models.io import DEFAULT_MODEL_DIR

    out = work.out
    if out.exists() and not out.is_dir():
        raise NucleaizerError(f"{out} is a file, not a folder for the adapted model")
    forbidden = {DEFAULT_MODEL_DIR.resolve()} | ({base_dir.resolve()} if base_dir else set())
    if out.resolve() in forbidden:
        raise NucleaizerError(f"{out} is the base model's folder: write the adapted model to a "
                              "new folder")
    if not out.exists() or not any(out.iterdir()):
        return True
    job_file = work.dir / JOB_FILE
    if not job_file.is_file():
        raise NucleaizerError(f"{out} holds something else (not an adaptation): choose a new or "
                              "empty folder for the adapted model")
    old = json.loads(job_file.read_text())
    started = [s for s in STAGES if work.touched(s)]
    if old.get("images") != job["images"] or old.get("annotations") != job["annotations"]:
        if started:
            raise NucleaizerError(
                f"{out} holds an adaptation of other images (or other annotations): choose "
                "another folder, or delete it to start again")
        return True
    changed = sorted(k for k in job["settings"]
                     if k not in _NOT_IDENTITY and old["settings"].get(k) != job["settings"][k])
    late = [k for k in changed if work.touched(_SETTING_STAGE.get(k, "masks"))]
    if late:
        raise NucleaizerError(
            f"{out} holds an adaptation of these images made with other settings ("
            + ", ".join(f"{k} {old['settings'].get(k)!r} -> {job['settings'][k]!r}" for k in late)
            + "): re-run with the same settings to continue it, or choose another folder")
    return bool(changed)


# ----------------------------------------------------------------------------- stages

def _auto_mask(image, s, base_path):
    """Labels of an unannotated image (from the base model's preseg network or its full
    segmentation, ``s["masks_from"]``) and what to record about them."""
    from ..segment import estimate_size, segment_image

    if s["masks_from"] == "model":
        r = segment_image(image, model=base_path, device=s["device"])
        est, labels = r.size_estimate, r.labels
    else:
        est = estimate_size(image, model=base_path, device=s["device"], return_labels=True)
        labels = est.labels
    return labels, {"source": "AUTO", "masks_from": s["masks_from"],
                    "preseg_diameter_px": float(est.median_diameter),
                    "preseg_reliable": bool(est.reliable)}


def _mask_reliable(rec):
    """Whether an image's mask can teach a style: annotations always; automatic masks when
    they hold at least size.MIN_NUCLEI nuclei."""
    from ..size import MIN_NUCLEI

    return rec["source"] == "GT" or rec["nuclei"] >= MIN_NUCLEI


def _stage_masks(work, targets, annotations, s, base_path, report):
    from ..imageio_utils import write_labels
    from ..labels import equivalent_diameters

    mask_dir = work.dir / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    per_image = {}
    for i, t in enumerate(targets):
        side = mask_dir / f"{t.file}.json"
        if side.is_file() and (mask_dir / f"{t.file}.tif").is_file():
            per_image[t.name] = json.loads(side.read_text())
        else:
            if t.name in annotations:
                labels, rec = annotations[t.name], {"source": "GT"}
            else:
                labels, rec = _auto_mask(t.read(), s, base_path)
            d = equivalent_diameters(labels)
            rec.update(nuclei=int(len(d)),
                       median_diameter_px=float(np.median(d)) if len(d) else None)
            rec["reliable"] = _mask_reliable(rec)
            tmp = mask_dir / f"{t.file}.tmp.tif"
            write_labels(tmp, np.asarray(labels).astype(np.uint32 if labels.max() >= 65535
                                                         else np.uint16))
            tmp.replace(mask_dir / f"{t.file}.tif")
            _write_json(side, rec)
            per_image[t.name] = rec
        report("masks", i + 1, len(targets), {"image": t.name, **per_image[t.name]})
    if not any(r["nuclei"] for r in per_image.values()):
        raise NucleaizerError(f"no nuclei were found in any of the {len(targets)} target images "
                              "(preseg): nothing to learn styles from; give annotations or "
                              "other images")
    return {"images": per_image}


def _read_mask(work, t):
    from ..imageio_utils import read_image

    return np.asarray(read_image(work.dir / "masks" / f"{t.file}.tif")).astype(np.int32)


def _stage_cluster(work, targets, s, report):
    from ..preprocess import normalize_image
    from .cluster import FEATURE_NAMES, cluster_styles, style_features

    features = []
    for i, t in enumerate(targets):
        raw = t.read()
        features.append(style_features(normalize_image(raw), _read_mask(work, t), raw=raw))
        report("cluster", i, len(targets) + 1, {"image": t.name})
    features = np.asarray(features)
    clusters = cluster_styles(features, min_cluster_size=s["min_cluster_size"],
                              max_k=s["max_clusters"], seed=s["seed"],
                              max_merge_distance=s["max_merge_distance"])
    masks = work.done("masks")["images"]
    styles, report_lines = [], clusters.report()
    for k in range(clusters.n_styles):
        names = [t.name for t, a in zip(targets, clusters.assignment) if a == k]
        nuclei = sum(masks[n]["nuclei"] for n in names)
        min_share = float(s["min_reliable_share"])
        reliable = [n for n in names if masks[n].get("reliable", _mask_reliable(masks[n]))]
        if min_share == 0:  # no check: every image teaches its style
            reliable = names
        share = len(reliable) / len(names) if names else 0.0
        reason = None
        if k in clusters.skipped:
            reason = f"fewer than {s['min_cluster_size']} images"
        elif nuclei == 0:
            reason = "no nuclei in its masks"
            report_lines.append(f"style {k}: no nuclei found in its masks: skipped")
        elif not reliable or share < min_share:
            reason = (f"reliable masks in only {len(reliable)} of its {len(names)} images "
                      f"(below min_reliable_share {min_share:g})")
            report_lines.append(f"style {k}: {reason}: skipped (a further iteration may "
                                "find its nuclei)")
        styles.append({"style": k, "images": names, "size": len(names), "nuclei": nuclei,
                       "mask_images": reliable, "learned": reason is None, "skip_reason": reason})
    if not any(st["learned"] for st in styles):
        advice = (f"Give more images (at least min_cluster_size = {s['min_cluster_size']} of a "
                  "style) or a smaller min_cluster_size")
        if any("reliable" in (st["skip_reason"] or "") for st in styles):
            advice += ("; where the base model finds too few nuclei, give annotations for some "
                       "images or a smaller min_reliable_share")
        raise NucleaizerError(f"no style can be learned: {'; '.join(report_lines)}. {advice}")
    report("cluster", len(targets) + 1, len(targets) + 1, {"styles": clusters.n_styles})
    return {"styles": styles, "assignment": {t.name: int(a) for t, a in
                                             zip(targets, clusters.assignment)},
            "sizes": clusters.sizes, "merged": clusters.merged, "skipped": clusters.skipped,
            "kmeans_k": clusters.kmeans_k, "report": report_lines,
            "feature_names": FEATURE_NAMES,
            "features": {t.name: f for t, f in zip(targets, features)}}


def _mask_images(style):
    """The images of a style whose masks teach its style model and statistics."""
    return style.get("mask_images", style["images"])


def _style_dir(work, k):
    return work.dir / "styles" / f"style_{k:02d}"


def _style_steps(s, n):
    from .pix2pix_train import steps_for

    return int(s["style_steps"]) if s["style_steps"] else steps_for(n, s["preset"])


def _stage_styles(work, targets, s, report):
    from ..models.io import read_network_meta
    from ..train.loop import read_run_log
    from .pix2pix_train import GENERATOR_FILE, StyleTrainConfig, raw_image_to_unit, \
        train_style_model

    by_name = {t.name: t for t in targets}
    learned = [st for st in work.done("cluster")["styles"] if st["learned"]]
    plan = [(st, _style_steps(s, len(_mask_images(st)))) for st in learned]
    total, before, runs = sum(n for _, n in plan), 0, []
    for st, steps in plan:
        k, run_dir = st["style"], _style_dir(work, st["style"])
        gen = run_dir / GENERATOR_FILE
        finished = gen.is_file() and read_network_meta(gen).get("steps") == steps
        if not finished:
            pairs = [(raw_image_to_unit(by_name[n].read()), _read_mask(work, by_name[n]))
                     for n in _mask_images(st)]
            cfg = StyleTrainConfig(steps=steps, crop=s["style_crop"], lr=float(s["style_lr"]),
                                   seed=s["seed"] + k,
                                   threads=s["threads"], device=s["device"],
                                   architecture=s["style_architecture"],
                                   checkpoint_every=s["style_checkpoint_every"])

            def progress(step, n, info, k=k, offset=before):
                report("styles", offset + step, total, {"style": k, **info})

            train_style_model(pairs, run_dir, cfg, resume=True, progress=progress)
        before += steps
        report("styles", before, total, {"style": k})
        log = [r for r in read_run_log(run_dir / "log.jsonl") if "loss_g_l1" in r]
        runs.append({"style": k, "images": len(_mask_images(st)), "steps": steps,
                     "final_loss_g_l1": log[-1]["loss_g_l1"] if log else None,
                     "sec_per_step": float(np.mean([r["sec_per_step"] for r in log]))
                     if log else None})
    return {"styles": runs, "total_steps": total}


def _synthetic_shape(stats, s):
    side = int(s["max_synthetic_side"])
    return tuple(max(1, min(int(v), side)) for v in stats.image_shape)


def _stage_synthesize(work, targets, s, report):
    import imageio.v3 as iio

    from ..device import resolve_device
    from ..imageio_utils import write_labels
    from .masks import measure_nuclei, synthesize_mask
    from .pix2pix_train import generate, load_style_model
    from .shapes import default_shape_db

    by_name = {t.name: t for t in targets}
    img_dir, lab_dir = work.dir / "synthetic" / "images", work.dir / "synthetic" / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    learned = [st for st in work.done("cluster")["styles"] if st["learned"]]
    n_per = int(s["synthetic_per_cluster"])
    total, done, per_style = n_per * len(learned), 0, []
    shape_db = default_shape_db() if s["real_fraction"] > 0 else None
    for st in learned:
        k = st["style"]
        stats = measure_nuclei([_read_mask(work, by_name[n]) for n in _mask_images(st)])
        shape = _synthetic_shape(stats, s)
        generator, _ = load_style_model(_style_dir(work, k), resolve_device(s["device"]))
        made = 0
        for i in range(n_per):
            stem = f"style{k:02d}_{i:03d}"
            if (img_dir / f"{stem}.png").is_file() and (lab_dir / f"{stem}.tif").is_file():
                made += 1
            else:
                for attempt in range(5):  # a sparse style may give an empty mask
                    rng = np.random.default_rng([s["seed"], k, i, attempt])
                    mask = synthesize_mask(stats, shape, rng, shape_db, s["real_fraction"])
                    if mask.max() > 0:
                        break
                if mask.max() > 0:
                    image = generate(generator, mask, rng)
                    write_labels(lab_dir / f"{stem}.tif", mask.astype(np.uint16))
                    tmp = img_dir / f"{stem}.tmp.png"
                    iio.imwrite(tmp, np.round(image * 255).astype(np.uint8))
                    tmp.replace(img_dir / f"{stem}.png")
                    made += 1
            done += 1
            report("synthesize", done, total, {"style": k, "image": stem})
        per_style.append({"style": k, "pairs": made, "shape": list(shape),
                          "nuclei_per_1e4px": stats.density * 1e4,
                          "median_diameter_px": float(np.median(stats.diameters))
                          if len(stats.diameters) else None,
                          "clustering_index": stats.clustering_index,
                          "touching_fraction": stats.touching_fraction})
    count = sum(p["pairs"] for p in per_style)
    if count == 0:
        raise NucleaizerError("no synthetic image could be made (the styles' masks hold too few "
                              "nuclei)")
    return {"per_style": per_style, "count": count, "folder": str(work.dir / "synthetic")}


def _replay(s):
    from ..train.data import find_pairs

    folder = Path(s["replay_data"]) if s["replay_data"] else default_replay_dir()
    if not folder.is_dir():
        raise NucleaizerError(f"replay data folder not found: {folder}")
    find_pairs(folder)  # a clear error now, not after the other stages' work
    return folder


def _stage_finetune(work, s, base, report):
    from ..train.loop import TrainConfig

    _, main_file, main_meta, info, _ = base
    replay = _replay(s)
    recipe = ((info.get("main") or {}).get("history") or {}).get("config") or {}
    colour = s["min_colour_share"]
    if colour is None:
        colour = recipe.get("min_colour_share", 0.3)
    cfg = TrainConfig(data=str(replay), out=str(work.dir / "finetune"), kind="main",
                      steps=int(s["finetune_steps"]), batch_size=int(s["finetune_batch_size"]),
                      crop=int(s["finetune_crop"]), lr=float(s["finetune_lr"]),
                      warmup=int(s["finetune_warmup"]),
                      checkpoint_every=int(s["checkpoint_every"]), seed=s["seed"],
                      threads=s["threads"], device=s["device"], init=str(main_file),
                      architecture=main_meta.get("architecture"),
                      min_colour_share=float(colour), styles=s["replay_styles"],
                      synthetic=str(work.dir / "synthetic"),
                      synthetic_share=float(s["synthetic_share"]))
    run, log = _train_run(cfg, "finetune", report)
    start = [r for r in log if r.get("event") == "start"]
    return {"run": str(run), "steps": cfg.steps, "lr": cfg.lr, "warmup": cfg.warmup,
            "batch_size": cfg.batch_size, "crop": cfg.crop, "replay_data": str(replay),
            "replay_styles": cfg.styles, "min_colour_share": cfg.min_colour_share,
            "synthetic_share": cfg.synthetic_share, "init": str(main_file),
            "replay_images": start[-1]["train_images"] if start else None,
            "synthetic_images": start[-1]["synthetic_images"] if start else None,
            **_loss_summary(log)}


def _train_run(cfg, stage, report):
    """Run (or resume) a training of a fine-tune stage; returns (run folder, its log lines)."""
    from ..train.loop import read_run_log, train

    try:
        run = train(cfg, resume=True,
                    progress=lambda step, total, inf: report(stage, step, total, inf))
    except ValueError as e:  # e.g. no replay image of the asked styles
        raise NucleaizerError(str(e)) from None
    return run, read_run_log(Path(run) / "log.jsonl")


def _loss_summary(log):
    """First and last loss and median seconds per step of a training log."""
    losses = [r for r in log if "loss" in r]
    if not losses:
        return {"first_loss": None, "final_loss": None, "sec_per_step": None}
    return {"first_loss": losses[0]["loss"], "final_loss": losses[-1]["loss"],
            "sec_per_step": float(np.median([r["sec_per_step"] for r in losses]))}


def _base_network(base_folder, name):
    """The base folder's network file ``name``, else the shipped default's (None: neither)."""
    from ..models.io import DEFAULT_MODEL_DIR

    for folder in ([base_folder] if base_folder else []) + [DEFAULT_MODEL_DIR]:
        if (folder / name).is_file():
            return folder / name
    return None


def _stage_finetune_unet(work, s, base, report):
    """Fine-tune the base model's U-Net on the fine-tune's data (replay + synthetic pairs)."""
    from ..models.io import UNET_FILE, read_network_meta
    from ..train.loop import TrainConfig

    unet_file = _base_network(base[0], UNET_FILE)
    steps = int(s["unet_steps"])
    if unet_file is None or steps == 0:
        return {"run": None, "steps": 0, "init": str(unet_file) if unet_file else None}
    fine = work.done("finetune")
    cfg = TrainConfig(data=fine["replay_data"], out=str(work.dir / "finetune_unet"), kind="unet",
                      steps=steps, batch_size=UNET_BATCH, crop=int(s["finetune_crop"]),
                      lr=float(s["finetune_lr"]), warmup=min(int(s["finetune_warmup"]), steps),
                      checkpoint_every=int(s["checkpoint_every"]), seed=s["seed"],
                      threads=s["threads"], device=s["device"], init=str(unet_file),
                      architecture=read_network_meta(unet_file).get("architecture"),
                      min_colour_share=float(fine["min_colour_share"]),
                      styles=fine["replay_styles"], synthetic=str(work.dir / "synthetic"),
                      synthetic_share=float(s["synthetic_share"]))
    run, log = _train_run(cfg, "finetune_unet", report)
    return {"run": str(run), "steps": steps, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "init": str(unet_file), **_loss_summary(log)}


def _copy_network(base_folder, name, dst):
    """Copy ``name`` from the base folder, else the shipped default's; the file name or None."""
    src = _base_network(base_folder, name)
    if src:
        shutil.copyfile(src, dst / name)
        return str(src)
    if (dst / name).exists():
        (dst / name).unlink()
    return None


def _save_finetuned(record, dst, adapted):
    """A fine-tune stage's last network -> ``dst``, its meta saying what it was adapted to
    (``adapted`` + the stage's steps); returns that meta (without the architecture)."""
    from ..models.io import load_network, save_network

    model, meta = load_network(Path(record["run"]) / "last.safetensors")
    meta = {k: v for k, v in meta.items() if k != "architecture"}
    meta["adapted"] = {**adapted, "finetune_steps": record["steps"]}
    save_network(model, dst, meta)
    return meta


def _stage_package(work, targets, s, base, report, seconds):
    from .. import __version__
    from ..models.io import INFO_FILE, MAIN_FILE, PRESEG_FILE, UNET_FILE, read_network_meta

    base_folder, main_file, _, info, base_name = base
    out = work.out
    masks, clusters = work.done("masks"), work.done("cluster")
    styles, synth, fine = work.done("styles"), work.done("synthesize"), work.done("finetune")
    fine_unet = work.done("finetune_unet") or {"run": None, "steps": 0}
    names = [t.name for t in targets]
    adaptation = {
        "base_model": {"path": str(base_folder or main_file), "name": base_name},
        "target_images": names, "n_images": len(names),
        "masks_source": {n: masks["images"][n]["source"] for n in names},
        "masks": masks["images"],
        "clusters": {k: clusters[k] for k in ("styles", "assignment", "sizes", "merged",
                                              "skipped", "kmeans_k", "report")},
        "style_models": styles["styles"],
        "synthetic": {"per_cluster": s["synthetic_per_cluster"], "count": synth["count"],
                      "per_style": synth["per_style"]},
        "finetune": fine, "finetune_unet": fine_unet,
        "settings": {k: v for k, v in s.items() if k != "threads"},
        "seconds": seconds, "nucleaizer_version": __version__,
    }
    report("package", 0, 3, {})
    adapted = {"base_model": adaptation["base_model"], "n_images": len(names),
               "synthetic_pairs": synth["count"]}
    meta = _save_finetuned(fine, out / MAIN_FILE, adapted)
    copied = {PRESEG_FILE: _copy_network(base_folder, PRESEG_FILE, out)}
    if fine_unet["run"]:
        _save_finetuned(fine_unet, out / UNET_FILE, adapted)
    else:
        copied[UNET_FILE] = _copy_network(base_folder, UNET_FILE, out)
    adaptation["networks_copied_from"] = copied
    report("package", 1, 3, {})
    curve = Path(fine["run"]) / "curve.png"
    if curve.is_file():
        shutil.copyfile(curve, out / CURVE_FILE)
    style_sheet(work, targets, out / SHEET_FILE)
    report("package", 2, 3, {})
    description = (f"nucleAIzer model adapted by style adaptation ({s['preset']} preset) to "
                   f"{len(names)} images in {sum(st['learned'] for st in clusters['styles'])} "
                   f"styles, from the base model {base_name}")
    new_info = {
        "name": f"{base_name}-adapted-{_safe_stem(out.name)}",
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
    _write_json(out / INFO_FILE, new_info)
    report("package", 3, 3, {})
    return {"model_dir": str(out)}


# ----------------------------------------------------------------------------- style sheet

def _tile(image, size=SHEET_TILE):
    """Centre crop of at most size x size px (native scale) of an (H, W, 3) image."""
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y:y + size, x:x + size]


def _outlined(image, labels, colour=(1.0, 1.0, 0.0)):
    from skimage.segmentation import find_boundaries

    out = image.copy()
    out[find_boundaries(labels, mode="thick")] = colour  # 2 px: visible on the reduced sheet
    return out


def style_sheet(work, targets, path):
    """The PNG sheet (one row per style): up to 3 real target images, 3 synthetic images and
    the same synthetic images with their masks' outlines (yellow), centre crops of at most
    256 px at native scale so that nucleus sizes compare directly."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..imageio_utils import read_image
    from .pix2pix_train import raw_image_to_unit

    by_name = {t.name: t for t in targets}
    styles = work.done("cluster")["styles"]
    synth_dir = work.dir / "synthetic"
    n = SHEET_COLUMNS
    fig, axes = plt.subplots(len(styles), 3 * n, figsize=(3 * n * 1.6, len(styles) * 1.75 + 0.4),
                             squeeze=False)
    for row, st in enumerate(styles):
        k = st["style"]
        tiles = [_tile(raw_image_to_unit(by_name[name].read())) for name in st["images"][:n]]
        tiles += [None] * (n - len(tiles))
        synth = sorted((synth_dir / "images").glob(f"style{k:02d}_*.png"))[:n]
        fakes = [raw_image_to_unit(read_image(p)) for p in synth]
        labs = [np.asarray(read_image(synth_dir / "labels" / f"{p.stem}.tif")) for p in synth]
        tiles += [_tile(f) for f in fakes] + [None] * (n - len(fakes))
        tiles += [_tile(_outlined(f, lab)) for f, lab in zip(fakes, labs)] + [None] * (n - len(fakes))
        for col, (ax, tile) in enumerate(zip(axes[row], tiles)):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if tile is not None:
                ax.imshow(tile, interpolation="nearest")
            if row == 0 and col % n == n // 2:
                ax.set_title(("real target images", "synthetic images",
                              "synthetic images + their masks")[col // n], fontsize=9)
        status = (f"{len(list((synth_dir / 'images').glob(f'style{k:02d}_*.png')))} synthetic"
                  if st["learned"] else "skipped: " + st["skip_reason"])
        # the label runs along the row's height: wrap it to that (about 26 characters)
        label = f"style {k}, {st['size']} image{'s' if st['size'] != 1 else ''}\n{status}"
        axes[row][0].set_ylabel("\n".join(line for part in label.split("\n")
                                           for line in textwrap.wrap(part, 26)), fontsize=7)
    fig.suptitle(f"{work.out.name}: real target images vs synthetic images per style "
                 f"(centre {SHEET_TILE} px crops, native scale)", fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=SHEET_DPI)
    plt.close(fig)
    Path(tmp).replace(path)
    return Path(path)


# ----------------------------------------------------------------------------- adapt

def adapt(images, out, annotations=None, config=None, progress=None):
    """Adapt a model to the style(s) of ``images`` (see the module doc); returns AdaptResult.

    images: image files, folders of images, (name, array) pairs or a {name: array} dict (2D
    gray or colour, any dtype); out: the folder of the adapted model (its ``work/`` subfolder
    holds the intermediate results; the same call continues an interrupted run);
    annotations: optional {image name: label array or label file} (GTstyle: used as those
    images' masks instead of preseg's); config: AdaptConfig; progress: ``progress(stage,
    done, total, info)`` called as each stage goes on (stage in STAGES; a finished stage is
    reported once with ``info["resumed"] = True``).

    Raises NucleaizerError (InputImageError, ModelFileError) for what a user can fix.
    """
    cfg = config or AdaptConfig()
    if int(cfg.resolved()["iterations"]) > 1:
        return _adapt_rounds(images, out, annotations, cfg, progress)
    return _adapt_round(images, out, annotations, cfg, progress)


def _adapt_rounds(images, out, annotations, cfg, progress):
    """``cfg.iterations`` rounds: round r is a one-round adaptation in out/work/round_<r>
    of the previous round's model (round 1: of the base model), with masks from that model
    from round 2 on; the last round's model is then copied into ``out``."""
    n = int(cfg.iterations)
    out = Path(out).expanduser().resolve()
    work = out / WORK_DIR
    if (work / JOB_FILE).is_file():
        raise NucleaizerError(f"{out} holds a one-round adaptation: choose another folder for "
                              f"{n} iterations, or continue it with iterations=1")
    if out.exists() and any(out.iterdir()) and not (work / ROUNDS_FILE).is_file():
        raise NucleaizerError(f"{out} holds something else (not an adaptation): choose a new or "
                              "empty folder for the adapted model")
    job = {"iterations": n, "base_model": cfg.base_model}
    old = json.loads((work / ROUNDS_FILE).read_text()) if (work / ROUNDS_FILE).is_file() else {}
    if old and old.get("iterations") != n:
        raise NucleaizerError(f"{out} holds a {old.get('iterations')}-round adaptation: re-run "
                              f"with iterations={old.get('iterations')}, or choose another folder")
    _write_json(work / ROUNDS_FILE, job)
    base, rounds = cfg.base_model, []
    for r in range(1, n + 1):
        round_cfg = replace(cfg, base_model=base, iterations=1,
                            masks_from=cfg.masks_from if r == 1 else "model",
                            seed=cfg.seed + r - 1)

        def round_progress(stage, done, total, info, r=r):
            if progress:
                progress(stage, done, total, {**info, "round": r, "rounds": n})

        res = _adapt_round(images, work / f"round_{r}", annotations, round_cfg, round_progress)
        rounds.append(res)
        base = str(res.model_dir)
    return _finish_rounds(out, rounds, cfg)


def _finish_rounds(out, rounds, cfg):
    """Copy the last round's model folder into ``out``; model.json lists every round."""
    from ..models.io import INFO_FILE

    last = rounds[-1]
    for f in Path(last.model_dir).iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    info = json.loads((out / INFO_FILE).read_text())
    first = json.loads((Path(rounds[0].model_dir) / INFO_FILE).read_text())
    info["adaptation"]["iterations"] = [
        {"round": i, "folder": str(r.model_dir), "styles": r.n_clusters,
         "styles_learned": r.n_styles_learned, "synthetic_pairs": r.synthetic_count,
         "skipped_images": len(r.skipped), "seconds": r.seconds}
        for i, r in enumerate(rounds, start=1)]
    info["adaptation"]["original_base_model"] = first["adaptation"]["base_model"]
    info["base_model_info"] = first.get("base_model_info", {})
    _write_json(out / INFO_FILE, info)
    seconds = {}
    for r in rounds:
        for k, v in r.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    return replace(last, model_dir=out, seconds=seconds,
                          style_sheet=out / SHEET_FILE, training_curve=out / CURVE_FILE)


def _adapt_round(images, out, annotations, cfg, progress):
    """One round of adaptation (the six stages) into ``out``; returns AdaptResult."""
    s = cfg.resolved()
    if s["threads"]:
        import torch

        torch.set_num_threads(int(s["threads"]))
    base = _base_model(s["base_model"])
    s["base_model"] = str(base[0] or base[1])
    targets = _targets(images)
    annotated = _annotations(annotations, targets)
    if s["replay_data"] or s["replay_styles"]:
        _replay(s)
    work = _Work(Path(out).expanduser().resolve())
    job = {"images": [{"name": t.name, "file": t.file, "digest": t.digest, "shape": t.shape}
                      for t in targets],
           "annotations": {n: _digest(a) for n, a in sorted(annotated.items())},
           "settings": s}
    job = json.loads(json.dumps(job, default=_json_default))  # as it reads back from disk
    if _check_out(work, job, base[0]):
        _write_json(work.dir / JOB_FILE, job)

    def report(stage, done, total, info):
        if progress:
            progress(stage, done, total, info)

    runners = {
        "masks": lambda: _stage_masks(work, targets, annotated, s, s["base_model"], report),
        "cluster": lambda: _stage_cluster(work, targets, s, report),
        "styles": lambda: _stage_styles(work, targets, s, report),
        "synthesize": lambda: _stage_synthesize(work, targets, s, report),
        "finetune": lambda: _stage_finetune(work, s, base, report),
        "finetune_unet": lambda: _stage_finetune_unet(work, s, base, report),
        "package": lambda: _stage_package(work, targets, s, base, report, seconds),
    }
    seconds, resumed, ran = {}, [], False
    for stage in STAGES:
        record = work.done(stage)
        if stage == "package" and record and (ran or not _package_complete(work.out)):
            record = None  # (a stage before it ran in this call: package again)
        if record:
            seconds[stage] = record["seconds"]
            resumed.append(stage)
            report(stage, 1, 1, {"resumed": True})
            work.log({"stage": stage, "status": "finished before", "time": time.time()})
            continue
        t0 = time.time()
        try:
            record = runners[stage]()
        except BaseException as e:
            work.log({"stage": stage, "status": "interrupted" if isinstance(
                e, KeyboardInterrupt) else "failed", "error": f"{type(e).__name__}: {e}",
                "seconds": round(time.time() - t0, 2), "time": time.time()})
            raise
        record["seconds"] = round(time.time() - t0, 2)
        seconds[stage] = record["seconds"]
        ran = True
        if stage == "package":  # its own time goes into model.json as well
            info_file = work.out / "model.json"
            info = json.loads(info_file.read_text())
            info["adaptation"]["seconds"] = dict(seconds)
            _write_json(info_file, info)
        work.finish(stage, record)
        work.log({"stage": stage, "status": "done", "seconds": record["seconds"],
                  "time": time.time(), **_log_summary(stage, record)})
    return _result(work, targets, seconds, resumed)


def _package_complete(out):
    from ..models.io import INFO_FILE, MAIN_FILE

    return all((out / f).is_file() for f in (MAIN_FILE, INFO_FILE, SHEET_FILE))


def _log_summary(stage, record):
    if stage == "masks":
        images = record["images"].values()
        return {"images": len(images), "annotated": sum(r["source"] == "GT" for r in images),
                "nuclei": sum(r["nuclei"] for r in images)}
    if stage == "cluster":
        return {"styles": len(record["styles"]),
                "learned": sum(st["learned"] for st in record["styles"])}
    if stage == "styles":
        return {"style_models": len(record["styles"]), "steps": record["total_steps"]}
    if stage == "synthesize":
        return {"pairs": record["count"]}
    if stage in ("finetune", "finetune_unet"):
        return {k: record.get(k) for k in ("steps", "first_loss", "final_loss", "sec_per_step")}
    return {}


def _result(work, targets, seconds, resumed):
    clusters, synth = work.done("cluster"), work.done("synthesize")
    masks, fine = work.done("masks"), work.done("finetune")
    skipped = [n for st in clusters["styles"] if not st["learned"] for n in st["images"]]
    out = work.out
    return AdaptResult(
        model_dir=out, n_images=len(targets), n_clusters=len(clusters["styles"]),
        n_styles_learned=sum(st["learned"] for st in clusters["styles"]), skipped=skipped,
        synthetic_count=synth["count"], seconds=seconds, resumed=resumed,
        clusters_report=clusters["report"],
        masks_source={n: r["source"] for n, r in masks["images"].items()},
        finetune_steps=fine["steps"], style_sheet=out / SHEET_FILE,
        training_curve=out / CURVE_FILE if (out / CURVE_FILE).is_file() else None)


def read_replay_index(folder=None):
    """Rows of a replay folder's index.csv (default: the shipped set) as dicts."""
    folder = Path(folder) if folder else default_replay_dir()
    with open(folder / "index.csv", newline="") as f:
        return list(csv.DictReader(f))
