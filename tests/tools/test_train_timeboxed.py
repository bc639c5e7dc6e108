"""scripts/train_timeboxed.py on the CPU at a tiny size: it loads the data once, probes the
step time and the validation time, plans the steps that fit the wall time, trains a normal run
folder (with timebox.json) that stops at the time limit at the latest, and the command it
prints continues that run."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nucleaizer_backend.models.io import read_network_meta
from nucleaizer_backend.train.runs import read_run_log

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_timeboxed.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _load_planner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_timeboxed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.planned_steps


def test_planned_steps_fit_training_and_validations():
    planned = _load_planner()
    # 600 s at 1 s/step, no validation: 600 steps
    assert planned(600, 1.0, 0.0, 1000, 10) == 600
    # a 30 s validation every 100 steps, and one at the end: 100 * (1 + 0.3) + 30 = 160 s per
    # 100 steps + 30 s, so 600 s hold 438 steps
    assert planned(600, 1.0, 30.0, 100, 10) == 438
    assert planned(5, 1.0, 0.0, 1000, 200) == 210  # never shorter than the warm-up + 10


def test_tiny_timeboxed_run_and_its_continuation(tmp_path, example_images_dir):
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        shutil.copytree(example_images_dir / sub, data / sub)
    shutil.copy(example_images_dir / "index.csv", data / "index.csv")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--val", str(data),
                        "--val-limit", "1", "--out", str(out), "--device", "cpu",
                        "--minutes", "0.05", "--batch-size", "1", "--workers", "0",
                        "--probe-steps", "2", "--warmup", "1", "--crop", "128",
                        "--init", str(ROOT / "nucleaizer_backend" / "weights" / "default" /
                                      "main.safetensors")],
                       env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("training images loaded") == 1  # once for the probe and the run
    assert "data: 5 training images loaded" in r.stdout
    record = json.loads((out / "timebox.json").read_text())
    assert record["probe_sec_per_step"] > 0 and record["val_seconds"] > 0
    planned, done = record["steps_planned"], record["steps_done"]
    assert planned >= 11 and 0 < done <= planned  # warm-up + 10 at least
    assert read_network_meta(out / "last.safetensors")["steps"] == done
    for f in ("config.json", "checkpoint.pt", "log.jsonl", "curve.png", "best.safetensors"):
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["steps"] == planned

    # the continuation command the script documents (and prints when stopped early)
    more = done + 2 if done == planned else planned
    r = subprocess.run([sys.executable, "-m", "nucleaizer_backend.cli", "train", "--data",
                        str(data), "--out", str(out), "--steps", str(more), "--resume",
                        "--device", "cpu", "--workers", "0"],
                       env=ENV, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_network_meta(out / "last.safetensors")["steps"] == more
    starts = [rec["step"] for rec in read_run_log(out / "log.jsonl") if rec.get("event") == "start"]
    assert starts == [0, done]

    # a folder that holds a run is refused, in one line
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out),
                        "--minutes", "1", "--device", "cpu"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "holds a run already" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nothing"),
                        "--out", str(tmp_path / "run"), "--minutes", "1", "--device", "cpu"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "not found" in r.stderr and "Traceback" not in r.stderr
