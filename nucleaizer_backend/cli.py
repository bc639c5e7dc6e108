"""The ``nucleaizer`` command: segment, estimate-size, train, adapt, tune, evaluate.

User mistakes print one line (``nucleaizer: error: ...``, naming the file or option) and set
the exit status: 2 when nothing could be done (a bad option, model, model.json or output
folder; checked before any image), 1 when some images of a batch failed (one bad image, or a
label file that cannot be written, does not stop the others). Degenerate images (1x1,
constant, all NaN) are no error: empty labels and a ``nucleaizer: warning: ...`` line.
"""
import csv
import json
import sys
from contextlib import contextmanager
from pathlib import Path

from .errors import ModelFileError, NucleaizerError, OptionError
from .progress import Progress, ProgressCallback

EXIT_USAGE, EXIT_SOME_FAILED = 2, 1
#: errors that stop a batch (exit status 2): the model or an option is wrong for every image
FATAL_ERRORS = (ModelFileError, OptionError)


def _fail(msg):
    print(f"nucleaizer: error: {msg}", file=sys.stderr)


def _warn(msg):
    print(f"nucleaizer: warning: {msg}", file=sys.stderr)


def _about(path, err):
    """The error message of one input file, naming the file (once)."""
    msg = str(err)
    return msg if str(path) in msg else f"{path}: {msg}"


def _log_progress_to_stderr():
    """Progress lines (progress.Progress) of progress.LOGGER on stderr, with the
    time: what a cluster job's log shows when there is no terminal for a bar."""
    import logging

    class CurrentStderr(logging.StreamHandler):  # sys.stderr as it is now, not at set-up
        def emit(self, record):
            self.stream = sys.stderr
            super().emit(record)

    logger = logging.getLogger("nucleaizer_backend.progress")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


SUMMARY_FIELDS = ("image", "nuclei", "diameter_px", "scale", "size_reliable", "seconds",
                  "error", "labels", "note", "discarded_size", "discarded_border",
                  "seconds_size", "seconds_detect", "seconds_unet", "seconds_postprocess",
                  "speed", "style_distance", "unfamiliar_style")


def cmd_segment(args):
    from .imageio_utils import list_images, make_output_folder, output_stems

    check_segment_options(args)
    paths = list_images(args.inputs)
    out = make_output_folder(args.output)
    stems = output_stems(paths)
    failed = unfamiliar = 0
    bar = Progress(len(paths), "segment")
    with summary_writer(out / "summary.csv", SUMMARY_FIELDS) as write_row:
        for done, (p, stem) in enumerate(zip(paths, stems), 1):
            row = segment_one(p, out, stem, args)
            failed += bool(row["error"])
            unfamiliar += row["unfamiliar_style"] is True
            write_row(row)
            bar.update(done, "failed" if row["error"] else f"{row['nuclei']} nuclei")
    bar.close()
    print(f"{len(paths) - failed} of {len(paths)} images segmented; labels"
          f"{', overlays/' if args.overlays else ''} and summary.csv in {out}")
    if unfamiliar:
        _warn(f"{unfamiliar} of {len(paths)} images are of a style unlike those the model was "
              "trained or adapted on (summary.csv: unfamiliar_style); adapting the model to "
              "them may pay: nucleaizer adapt")
    return EXIT_SOME_FAILED if failed else 0


def check_segment_options(args):
    """The options of ``segment`` that can be wrong, checked before any image is read:
    the model (and its model.json), the diameter, the diameter range, the confidence and
    the p-value overrides (each in its range). ModelFileError / OptionError: one line, exit
    status 2."""
    from .labels import check_diameter_range
    from .models.io import check_model_path
    from .refine import check_param

    check_model_path(args.model)
    if args.confidence is not None:
        check_param("confidence", args.confidence, "--confidence")
    for name, value in _postprocess_overrides(args).items():
        check_param(name, value, f"--{name}")
    if args.diameter_range is not None:
        check_diameter_range(args.diameter_range, "--diameter-range")
    if args.diameter is not None and not 0 < args.diameter < float("inf"):
        raise OptionError(f"--diameter must be a nucleus diameter in px > 0 (got "
                          f"{args.diameter:g})")


def segment_one(path, out, stem, args):
    """Segment the image file ``path``, write ``out``/``stem``.tif (and the overlay); its
    summary row. A problem of this image alone (unreadable, 3D, labels not writable) is
    printed and recorded in the row's error; one of the model or options is raised."""
    from .imageio_utils import read_image, write_labels
    from .segment import segment_image

    row = dict.fromkeys(SUMMARY_FIELDS, "")
    row.update(image=path.name, note=_renamed_note(path, stem))
    try:
        image = read_image(path)
        r = segment_image(image, model=args.model, diameter=args.diameter,
                          device=args.device, confidence=args.confidence,
                          refine=_refine_level(args), tta=args.tta,
                          postprocess=_postprocess_overrides(args),
                          discard_border=args.discard_border, diameter_range=args.diameter_range,
                          speed=args.speed)
        write_labels(out / f"{stem}.tif", r.labels)
        if args.overlays:
            _write_overlay(out / "overlays" / f"{stem}.png", image, r.labels)
    except FATAL_ERRORS:
        raise
    except NucleaizerError as e:
        _fail(_about(path, e))
        return dict(row, error=_about(path, e))
    if r.degenerate:
        _warn(f"{path}: degenerate image ({r.degenerate}): no nuclei")
    return _result_row(row, r, stem)


def _result_row(row, r, stem):
    """Summary ``row`` completed with the SegmentationResult ``r`` (labels in stem.tif):
    diameter in px, scale (working / original), seconds of wall time."""
    notes = [row["note"]] + ([f"degenerate image ({r.degenerate})"] if r.degenerate else [])
    return dict(row, nuclei=r.count, diameter_px=round(r.diameter, 2), scale=round(r.scale, 4),
                speed=r.speed,
                style_distance="" if r.style_distance is None else round(r.style_distance, 3),
                unfamiliar_style="" if r.style_distance is None else r.unfamiliar_style,
                size_reliable="" if r.size_estimate is None else r.size_estimate.reliable,
                seconds=round(r.seconds, 3), labels=f"{stem}.tif",
                note="; ".join(n for n in notes if n), discarded_size=r.discarded["size"],
                discarded_border=r.discarded["border"],
                **{f"seconds_{k}": round(r.stage_seconds[k], 3) if k in r.stage_seconds else ""
                   for k in ("size", "detect", "unet", "postprocess")})


def _renamed_note(path, stem):
    """The summary's note for an input whose labels are not named after its own stem."""
    if stem == path.stem:
        return ""
    return f"labels named {stem}.tif: another input has the stem {path.stem}"


@contextmanager
def summary_writer(path, fields):
    """A function that writes one row (dict of ``fields``) of the CSV file ``path`` and
    flushes it, so that a stopped batch keeps the rows of the images done."""
    from .imageio_utils import output_file

    with output_file(path, "summary"):
        f = open(path, "w", newline="")
    with f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        f.flush()

        def write_row(row):
            writer.writerow(row)
            f.flush()

        yield write_row


def _write_overlay(path, image, labels):
    """PNG of ``image`` with the outlines of ``labels`` (overlay.overlay_outlines)."""
    import imageio.v3 as iio

    from .imageio_utils import output_file
    from .overlay import overlay_outlines

    with output_file(path, "overlay"):
        path.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(path, overlay_outlines(image, labels))


def _refine_level(args):
    """segment_image's refine level of --no-refine / --no-unet."""
    return "none" if args.no_refine else "rules" if args.no_unet else "full"


def _postprocess_overrides(args):
    return {k: getattr(args, k) for k in ("p1", "p2", "p3", "p4", "p5", "p6")
            if getattr(args, k) is not None}


def cmd_estimate_size(args):
    from .imageio_utils import list_images, read_image
    from .models.io import check_model_path
    from .segment import estimate_size

    check_model_path(args.model)
    rows, failed = [], 0
    paths = list_images(args.inputs)
    bar = Progress(len(paths), "estimate-size", bar=False)  # on a terminal: the table
    for done, p in enumerate(paths, 1):
        try:
            e = estimate_size(read_image(p), model=args.model, device=args.device)
            rows.append({"image": p.name, "median_diameter_px": round(e.median_diameter, 2),
                         "spread": round(e.spread, 3), "count": e.count, "reliable": e.reliable})
            print(f"{p.name}\t{e.median_diameter:.1f} px\t(spread {e.spread:.2f}, "
                  f"{e.count} nuclei{'' if e.reliable else ', UNRELIABLE'})")
        except FATAL_ERRORS:
            raise
        except NucleaizerError as err:
            failed += 1
            _fail(_about(p, err))
        bar.update(done)
    if args.csv:
        _write_csv(args.csv, rows)
    return EXIT_SOME_FAILED if failed else 0


def _working_range(args):
    """train's --working-range as [min px, max px] (None when not given); OptionError unless
    0 < MIN < MAX and the network is a main one."""
    if args.working_range is None:
        return None
    low, high = args.working_range
    if args.kind != "main":
        raise OptionError(f"--working-range is for --kind main (got --kind {args.kind})")
    if not 0 < low < high < float("inf"):
        raise OptionError(f"--working-range must be MIN MAX px with 0 < MIN < MAX (got "
                          f"{low:g} {high:g})")
    return [low, high]


def cmd_train(args):
    from .train.loop import TrainConfig, train

    if args.kind == "style":
        return train_prior(args)
    cfg = TrainConfig(data=args.data, val=args.val, out=args.out, kind=args.kind,
                      steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                      warmup=args.warmup, checkpoint_every=args.checkpoint_every,
                      val_every=args.val_every, val_limit=args.val_limit, seed=args.seed,
                      threads=args.threads, device=args.device, init=args.init,
                      min_colour_share=args.min_colour_share, stain_jitter=args.stain_jitter,
                      styles=args.styles.split(",") if args.styles else None,
                      synthetic=args.synthetic, synthetic_share=args.synthetic_share,
                      workers=args.workers, max_minutes=args.max_minutes,
                      precision=args.precision, working_range=_working_range(args))
    bar = ProgressCallback("train", bar=None)

    try:
        run = train(cfg, resume=args.resume, progress=bar)
    except FileExistsError as e:
        raise NucleaizerError(str(e)) from None
    bar.close()
    print(f"training finished: {run} (best.safetensors, log.jsonl, curve.png)")
    return 0


STYLE_PRIOR_IGNORES = ("val", "working_range", "synthetic", "stain_jitter", "max_minutes")


def train_prior(args):
    """``train --kind style``: the style prior (style.prior) on every pair of --data."""
    from .style.pix2pix_train import StyleTrainConfig
    from .style.prior import train_style_prior

    given = [k for k in STYLE_PRIOR_IGNORES if getattr(args, k) not in (None, 0.0)]
    if given:
        raise OptionError(f"--{given[0].replace('_', '-')} does not apply to --kind style")
    cfg = StyleTrainConfig(steps=args.steps, crop=args.crop, lr=args.lr,
                           checkpoint_every=args.checkpoint_every, seed=args.seed,
                           threads=args.threads, device=args.device, init=args.init)
    bar = ProgressCallback("train", bar=None)
    try:
        run = train_style_prior(args.data, args.out, cfg,
                                styles=args.styles.split(",") if args.styles else None,
                                resume=args.resume, progress=bar)
    except FileExistsError as e:
        raise NucleaizerError(str(e)) from None
    bar.close()
    print(f"training finished: {run} (generator.safetensors, log.jsonl)")
    return 0


def annotations_for(inputs, folder):
    """{image name: label file} of the label images of ``folder`` (pairing.label_files)
    named like one of the images given as ``inputs``: a folder of labels may hold more
    images than are adapted to. Those left out are named on stderr; none matching is an
    error."""
    from .imageio_utils import list_images
    from .pairing import label_files, pair_images

    if not Path(folder).is_dir():
        raise NucleaizerError(f"{folder}: annotations folder not found")
    files = label_files(folder)
    pairs, _ = pair_images(list_images(inputs), files)
    used = {image.stem: label for image, label in pairs}
    unused = sorted(n for n in files if n not in used)
    if not used:
        raise NucleaizerError(f"{folder}: none of its {len(files)} label images is named like "
                              "one of the target images (e.g. image a.png, labels a.tif or "
                              "a_mask.tif)")
    if unused:
        print(f"annotations: {len(used)} of the {len(files)} label images of {folder} are "
              f"used; {len(unused)} have no target image ({', '.join(unused[:3])}"
              f"{' ...' if len(unused) > 3 else ''})", file=sys.stderr)
    return used


def cmd_adapt(args):
    from .style.adapt import AdaptConfig, adapt
    from .style.progress import ProgressLog

    cfg = AdaptConfig(base_model=args.model, preset=args.preset,
                      min_cluster_size=args.min_cluster_size, max_clusters=args.max_clusters,
                      synthetic_per_cluster=args.synthetic_per_cluster,
                      synthetic_share=args.synthetic_share, finetune_steps=args.steps,
                      unet_steps=args.unet_steps, replay_data=args.replay_data,
                      replay_styles=args.replay_styles.split(",") if args.replay_styles else None,
                      iterations=args.iterations, masks_from=args.masks_from,
                      min_reliable_share=args.min_reliable_share, style_init=args.style_init,
                      seed=args.seed, threads=args.threads, device=args.device)
    annotations = annotations_for(args.inputs, args.annotations) if args.annotations else None
    bar = ProgressLog(bar=None)
    result = adapt(args.inputs, args.out, annotations=annotations, config=cfg, progress=bar)
    bar.close()
    print("\n".join(result.report()))
    print(f"adapted model in {result.model_dir} (model.json, style_sheet.png, "
          f"training_curve.png, adapt_log.jsonl); use it with --model {result.model_dir}")
    return 0


def _annotated_pairs(images_dir, truth_dir):
    """[(name, image, labels)] for the images of ``images_dir`` with a label image of the
    same name in ``truth_dir`` (pairing.label_files)."""
    from .imageio_utils import list_images, read_image
    from .pairing import label_files, pair_images
    from .train.data import read_labels

    paths, unmatched = pair_images(list_images([images_dir]), label_files(truth_dir))
    if unmatched:
        names = [p.name for p in unmatched]
        _fail(f"{len(names)} images have no label image and are not used: "
              + ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    if not paths:
        raise NucleaizerError(f"no image in {images_dir} has a label image of the same name "
                              f"in {truth_dir}")
    return [(image.stem, read_image(image), read_labels(label)) for image, label in paths]


def cmd_tune(args):
    from .tune import tune, write_tuned_model

    pairs = _annotated_pairs(args.images, args.truth)
    bar = ProgressCallback("tune", unit="it", bar=None)
    result = tune(pairs, model=args.model, device=args.device, rounds=args.rounds,
                  progress=bar)
    bar.close()
    print(result.report())
    if args.dry_run:
        return 0
    dst = write_tuned_model(result, args.model, args.out,
                            tuned_on=f"{len(pairs)} images of {Path(args.images).resolve()}")
    print(f"tuned parameters written to {dst / 'model.json'}; use it with --model {dst}")
    return 0


def cmd_evaluate(args):
    from .evaluate import score_image, summarize
    from .pairing import label_files
    from .train.data import read_labels

    truths = label_files(args.truth)
    preds = {n: p for n, p in label_files(args.pred).items()
             if p.suffix.lower() in (".tif", ".tiff", ".png")}
    common = sorted(set(truths) & set(preds))
    if not common:
        raise NucleaizerError(f"no label images with the same name in {args.pred} and {args.truth}")
    missing = sorted(set(truths) - set(preds))
    if missing:
        _fail(f"{len(missing)} truth images have no prediction and count as empty: "
              + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    import numpy as np

    scores = []
    for name in sorted(truths):
        truth = read_labels(truths[name])
        pred = read_labels(preds[name]) if name in preds else np.zeros_like(truth)
        scores.append(score_image(truth, pred))
    s = summarize(scores, sorted(truths))
    print(f"images {s['images']}  DSB {s['dsb']:.4f}  mAP {s['precision']:.4f}  "
          f"mAR {s['recall']:.4f}  mF1 {s['f1']:.4f}  F1(0.5-0.9) {s['caicedo_f1']:.4f}")
    print(f"at IoU 0.7: missed {s['missed']} of {s['n_true']}, extra {s['extra']} of "
          f"{s['n_pred']}; merges {s['merges']}, splits {s['splits']}")
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    if args.csv:
        _write_csv(args.csv, [{k: v for k, v in row.items() if k != "f1_curve"}
                              for row in s["per_image"]])
    if args.plot:
        from .evaluate import plot_f1_curves

        plot_f1_curves({f"{Path(args.pred).name} (DSB {s['dsb']:.3f})": s}, args.plot,
                       title=f"{s['images']} images of {args.truth}")
    return 0


def _write_csv(path, rows):
    if not rows:
        Path(path).write_text("")
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def check_machine_options(args):
    """--threads (applied) and --device of any command, before it does any work:
    OptionError (exit status 2) for a thread count under 1 or an unknown device."""
    from .device import resolve_device, set_cpu_threads

    if getattr(args, "threads", None) is not None:
        set_cpu_threads(args.threads)
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)


COMMANDS = {"segment": cmd_segment, "estimate-size": cmd_estimate_size, "train": cmd_train, "adapt": cmd_adapt, "tune": cmd_tune, "evaluate": cmd_evaluate}


def main(argv=None):
    from .cli_parser import build_parser

    args = build_parser().parse_args(argv)
    try:
        check_machine_options(args)
        _log_progress_to_stderr()
        return COMMANDS[args.command](args)
    except NucleaizerError as e:
        _fail(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
