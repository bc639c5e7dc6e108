"""A training run's folder: config.json, log.jsonl (read as the run now stands after
resumptions), checkpoint.pt (saved atomically, loaded with ``weights_only=True``) and
curve.png."""
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..errors import CheckpointError


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
        self.compact = self.dir / "resume.safetensors"  # fp16 weights + step (train.loop)
        self.log = self.dir / "log.jsonl"

    def begin(self, cfg, resume, call_fields, in_use):
        """The config the run goes on with, written to config.json: with ``resume`` and a
        checkpoint, the stored recipe updated with this call's ``call_fields`` of ``cfg``
        (run length, machine settings); otherwise ``cfg`` itself, and FileExistsError with
        the message ``in_use`` when the folder holds a run already."""
        config_file = self.dir / "config.json"
        started = self.checkpoint.is_file() or self.compact.is_file()
        if resume and started:
            stored = self.stored_config(config_file)
            cfg = type(cfg)(**{**stored, **{k: getattr(cfg, k) for k in call_fields}})
        elif started:
            raise FileExistsError(in_use)
        self.write_config(cfg)
        return cfg

    def stored_config(self, config_file):
        """The dict of a run's config.json; CheckpointError (one line) when it is missing
        or not a JSON object."""
        try:
            stored = json.loads(config_file.read_text())
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict):
            raise CheckpointError(f"{config_file}: missing or corrupt, so the run cannot be "
                                  f"resumed; {self.start_afresh()}")
        return stored

    def start_afresh(self):
        """What to do when a run cannot be resumed, in words."""
        return (f"start a fresh run with another --out, or put a good checkpoint.pt (or "
                f"resume.safetensors) of this run into {self.dir}")

    def write_config(self, cfg):
        (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))

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

    def load_checkpoint(self, device, rng, entries=("model", "optimizer", "step", "best")):
        """The saved state (loaded with ``weights_only=True``: no code runs); restores the
        numpy ``rng``'s and torch's random states. CheckpointError (one line naming the
        file) when it is truncated, corrupt, holds Python objects or lacks one of the
        ``entries`` the training loop saved (default: the networks' loop's)."""
        try:
            state = torch.load(self.checkpoint, map_location=device, weights_only=True)
        except Exception as e:  # torch's own text suggests unsafe loading: not shown
            raise self.unusable(checkpoint_problem(e)) from None
        try:
            missing = [k for k in entries if k not in state]
            if missing:
                raise KeyError(missing)
            int(state["step"])
            numpy_rng = json.loads(state["numpy_rng"])
            torch_rng = state["torch_rng"]
        except Exception:
            raise self.unusable("not a checkpoint of this training loop (entries missing)") \
                from None
        rng.bit_generator.state = numpy_rng
        torch.set_rng_state(torch_rng)
        return state

    def unusable(self, problem):
        """The CheckpointError of checkpoint.pt with ``problem``."""
        return CheckpointError(f"{self.checkpoint}: cannot resume from it: {problem}; "
                               f"{self.start_afresh()}")


def checkpoint_problem(error):
    """What is wrong with a checkpoint that torch.load refused with ``error``, in words."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return "it holds Python objects other than tensors and numbers, which are not loaded"
    if isinstance(error, (EOFError, RuntimeError)):
        return "truncated or corrupt"
    return f"unreadable ({type(error).__name__})"


def seeded_start(cfg):
    """torch's threads (``cfg.threads``) and seed, and a numpy generator, from ``cfg.seed``;
    returns (numpy generator, torch device of ``cfg.device``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return np.random.default_rng(cfg.seed), resolve_device(cfg.device)


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
