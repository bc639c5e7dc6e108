"""Style adaptation, the whole chain (docs/METHOD.md section 4): from unannotated images of a new
experiment to an adapted model folder.

:func:`adapt` runs seven stages in a work folder ``<out>/work/`` (style.jobs); each stage
writes its outputs and a record ``work/<stage>.json`` when it is finished, so that an
interrupted run continues where it stopped when it is started again with the same images
(finished stages are skipped, half-finished ones continue: masks and synthetic pairs image by
image, the style models and the fine-tunes from their checkpoints). One module each in
``style/stages/`` (its doc says more):

a. **masks** - a nucleus mask per target image: the user's annotation where given (GTstyle),
   else the base model's preseg nuclei (AUTOstyle) or, with ``masks_from="model"``, its full
   segmentation; ``work/masks/<image>.tif``;
b. **cluster** - style features of every image and its mask, k-means with over-clustering
   and small-cluster merging; styles too small, without nuclei or without enough reliable
   masks get no style model and are reported; ``work/cluster.json``;
c. **styles** - one pix2pix per style on its (mask, raw image) pairs; ``work/styles/``;
d. **synthesize** - per style, N new masks in the style's nucleus statistics rendered by its
   generator; ``work/synthetic/images/*.png`` + ``labels/*.tif``;
e. **finetune** - the base main network fine-tuned on the replay data (by default the set
   shipped in ``weights/replay``, :func:`default_replay_dir`) with ``synthetic_share`` of
   the crops from the synthetic pairs; ``work/finetune/``;
f. **finetune_unet** - the base model's contour U-Net fine-tuned the same way;
   ``work/finetune_unet/``;
g. **package** - the adapted model folder ``<out>/``: ``main.safetensors``,
   ``unet.safetensors``, ``preseg.safetensors``, ``model.json`` (its ``adaptation`` block:
   :func:`style.read_adaptation_info`), ``style_sheet.png`` (style.sheet),
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
Settings and presets (with measured times): style.config.
"""
import json
import shutil
from dataclasses import replace
from pathlib import Path

from .config import PRESETS, STAGES, AdaptConfig, Settings  # noqa: F401 (re-exported)
from .inputs import (default_replay_dir, find_base_model, read_annotations,  # noqa: F401
                     read_replay_index, read_targets, replay_folder)
from .progress import ProgressLog
from .jobs import (JOB_FILE, ROUNDS_FILE, WORK_DIR, WorkFolder, check_out, check_rounds_out,
                   job_record, run_stages, write_json)

PROGRESS_FILE = "progress.log"  # in work/: each stage's progress lines, time-stamped
from .result import AdaptResult, round_result
from .sheet import style_sheet  # noqa: F401 (re-exported)
from .stages import Context, job_stages
from .stages.package import CURVE_FILE, SHEET_FILE

__all__ = ["adapt", "AdaptConfig", "AdaptResult", "Settings", "STAGES", "PRESETS",
           "default_replay_dir", "read_replay_index", "style_sheet"]


def adapt(images, out, annotations=None, config=None, progress=None):
    """Adapt a model to the style(s) of ``images`` (see the module doc); returns AdaptResult.

    images: image files, folders of images, (name, array) pairs or a {name: array} dict (2D
    gray or colour, any dtype); out: the folder of the adapted model (its ``work/`` subfolder
    holds the intermediate results; the same call continues an interrupted run);
    annotations: optional {image name: label array or label file} (GTstyle: used as those
    images' masks instead of preseg's); config: AdaptConfig; progress: ``progress(stage,
    done, total, info)`` called as each stage goes on (stage in STAGES; a finished stage is
    reported once with ``info["resumed"] = True``); default: lines through the
    ``nucleaizer_backend.progress`` logger at intervals (ProgressLog).

    Raises NucleaizerError (InputImageError, ModelFileError) for what a user can fix.
    """
    cfg = config or AdaptConfig()
    progress = progress or ProgressLog()
    if cfg.resolved().iterations > 1:
        return _adapt_rounds(images, out, annotations, cfg, progress)
    return _adapt_round(images, out, annotations, cfg, progress)


def _adapt_rounds(images, out, annotations, cfg, progress):
    """``cfg.iterations`` rounds: round r is a one-round adaptation in out/work/round_<r>
    of the previous round's model (round 1: of the base model), with masks from that model
    from round 2 on; the last round's model is then copied into ``out``."""
    n = int(cfg.iterations)
    out = Path(out).expanduser().resolve()
    work = out / WORK_DIR
    check_rounds_out(out, n)
    write_json(work / ROUNDS_FILE, {"iterations": n, "base_model": cfg.base_model})
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
    return _finish_rounds(out, rounds)


def _finish_rounds(out, rounds):
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
    write_json(out / INFO_FILE, info)
    seconds = {}
    for r in rounds:
        for k, v in r.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
    return replace(last, model_dir=out, seconds=seconds,
                   style_sheet=out / SHEET_FILE, training_curve=out / CURVE_FILE)


def _adapt_round(images, out, annotations, cfg, progress):
    """One round of adaptation (the seven stages) into ``out``; returns AdaptResult."""
    settings = cfg.resolved()
    if settings.threads:
        import torch

        torch.set_num_threads(int(settings.threads))
    base = find_base_model(settings.base_model)
    settings = settings.with_base_model(base.path)
    targets = read_targets(images)
    annotated = read_annotations(annotations, targets)
    if settings.replay_data or settings.replay_styles:
        replay_folder(settings)
    work = WorkFolder(Path(out).expanduser().resolve())
    job = job_record(targets, annotated, settings)
    if check_out(work, job, base.folder):
        write_json(work.dir / JOB_FILE, job)

    file_log = ProgressLog(emit=progress_file(work.dir / PROGRESS_FILE), bar=False)

    def report(stage, done, total, info):
        if progress:
            progress(stage, done, total, info)
        file_log(stage, done, total, info)

    ctx = Context(work, targets, annotated, settings, base, report)
    seconds = {}
    try:
        _, resumed = run_stages(work, job_stages(ctx, seconds), report, seconds)
    finally:
        file_log.close()
    return round_result(work, targets, seconds, resumed)


def progress_file(path):
    """``emit(line)`` appending time-stamped lines to the text file ``path``, so that an
    adaptation run without a terminal (a cluster job, the CellProfiler GUI) can be followed
    with any viewer (``tail -f``)."""
    import time

    def emit(line):
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    return emit
