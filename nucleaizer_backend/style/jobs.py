"""The resumable job of an adaptation round: its work folder ``<out>/work/`` (one record
``work/<stage>.json`` per finished stage, ``work/job.json`` naming the images, annotations
and settings), the checks that let a later call continue it (:func:`check_out`), and the
runner that skips finished stages and logs each one (:func:`run_stages`)."""
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import NucleaizerError
from .config import NOT_IDENTITY, SETTING_STAGE, STAGES

WORK_DIR, JOB_FILE = "work", "job.json"
LOG_FILE = "adapt_log.jsonl"
ROUNDS_FILE = "rounds.json"  # out/work/rounds.json: the job of a multi-round adaptation

# The folder of work/ that each stage fills as it goes (its outputs before its record).
_STAGE_FOLDER = {"masks": "masks", "styles": "styles", "synthesize": "synthetic",
                 "finetune": "finetune"}


class WorkFolder:
    """An adaptation round's output folder ``out`` and its work folder ``out/work``."""

    def __init__(self, out):
        self.out = Path(out)
        self.dir = self.out / WORK_DIR

    def marker(self, stage):
        """The record file of ``stage`` (there once the stage has finished)."""
        return self.dir / f"{stage}.json"

    def done(self, stage):
        """The record of ``stage`` (a dict), or None while it has not finished."""
        f = self.marker(stage)
        return json.loads(f.read_text()) if f.is_file() else None

    def touched(self, stage):
        """Whether ``stage`` has finished or left any output."""
        sub = _STAGE_FOLDER.get(stage)
        return self.marker(stage).is_file() or bool(sub and (self.dir / sub).exists())

    def finish(self, stage, record):
        write_json(self.marker(stage), record)

    def log(self, record):
        """Append ``record`` to the adaptation log (``out/adapt_log.jsonl``)."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def write_json(path, data):
    """Write ``data`` as indented JSON (numpy values and paths as JSON values), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=json_default))
    tmp.replace(path)


def json_default(o):
    """JSON form of numpy scalars and arrays and of paths (json.dumps's ``default``)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def job_record(targets, annotations, settings):
    """The job file's content (as it reads back from disk): the images (name, work-folder
    file stem, digest, shape), the digests of the annotations and the settings."""
    from .inputs import digest

    job = {"images": [{"name": t.name, "file": t.file, "digest": t.digest, "shape": t.shape}
                      for t in targets],
           "annotations": {n: digest(a) for n, a in sorted(annotations.items())},
           "settings": settings.as_dict()}
    return json.loads(json.dumps(job, default=json_default))


def check_out(work, job, base_dir):
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
                     if k not in NOT_IDENTITY and old["settings"].get(k) != job["settings"][k])
    late = [k for k in changed if work.touched(SETTING_STAGE.get(k, "masks"))]
    if late:
        raise NucleaizerError(
            f"{out} holds an adaptation of these images made with other settings ("
            + ", ".join(f"{k} {old['settings'].get(k)!r} -> {job['settings'][k]!r}" for k in late)
            + "): re-run with the same settings to continue it, or choose another folder")
    return bool(changed)


def check_rounds_out(out, iterations):
    """Refuse an ``out`` that is not (the start of) an adaptation in ``iterations`` rounds;
    writes its rounds file."""
    work = out / WORK_DIR
    if (work / JOB_FILE).is_file():
        raise NucleaizerError(f"{out} holds a one-round adaptation: choose another folder for "
                              f"{iterations} iterations, or continue it with iterations=1")
    if out.exists() and any(out.iterdir()) and not (work / ROUNDS_FILE).is_file():
        raise NucleaizerError(f"{out} holds something else (not an adaptation): choose a new or "
                              "empty folder for the adapted model")
    old = json.loads((work / ROUNDS_FILE).read_text()) if (work / ROUNDS_FILE).is_file() else {}
    if old and old.get("iterations") != iterations:
        raise NucleaizerError(f"{out} holds a {old.get('iterations')}-round adaptation: re-run "
                              f"with iterations={old.get('iterations')}, or choose another folder")


def holds_other_files(folder, iterations=1):
    """True when ``folder`` holds files but not an adaptation in ``iterations`` rounds (an
    adaptation into it would be refused)."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return False
    return not (folder / WORK_DIR / (JOB_FILE if iterations == 1 else ROUNDS_FILE)).is_file()


def _no_summary(record):
    return {}


def _not_again(ran):
    return False


def _nothing_after(seconds):
    return None


@dataclass(frozen=True)
class Stage:
    """One stage of a job. run(): does its work, returns its record (a JSON-able dict);
    summary(record): what the log line says of it; redo(ran): whether a finished stage must
    run again (``ran``: an earlier stage ran in this call); after(seconds): called once it
    has run, with every stage's seconds so far, before its record is written (so that a
    failure in between leaves the stage to run again)."""

    name: str
    run: Callable[[], dict]
    summary: Callable[[dict], dict] = _no_summary
    redo: Callable[[bool], bool] = _not_again
    after: Callable[[dict], None] = _nothing_after


def run_stages(work, stages, report, seconds=None):
    """Run the stages in order, skipping finished ones (reported once with ``{"resumed":
    True}``); each record gets its ``seconds``, each stage a log line, an interruption or
    error too. ``seconds``: the dict to fill with {stage: seconds} as they go (a stage may
    read it). Returns (that dict, [stages found finished])."""
    seconds = {} if seconds is None else seconds
    resumed, ran = [], False
    for stage in stages:
        record = work.done(stage.name)
        if record and stage.redo(ran):
            record = None
        if record:
            seconds[stage.name] = record["seconds"]
            resumed.append(stage.name)
            report(stage.name, 1, 1, {"resumed": True})
            work.log({"stage": stage.name, "status": "finished before", "time": time.time()})
            continue
        t0 = time.time()
        try:
            record = stage.run()
        except BaseException as e:
            work.log({"stage": stage.name, "status": "interrupted" if isinstance(
                e, KeyboardInterrupt) else "failed", "error": f"{type(e).__name__}: {e}",
                "seconds": round(time.time() - t0, 2), "time": time.time()})
            raise
        record["seconds"] = round(time.time() - t0, 2)
        seconds[stage.name] = record["seconds"]
        ran = True
        stage.after(seconds)
        work.finish(stage.name, record)
        work.log({"stage": stage.name, "status": "done", "seconds": record["seconds"],
                  "time": time.time(), **stage.summary(record)})
    return seconds, resumed
