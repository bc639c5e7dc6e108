"""scripts/device_train_main.py, the prepared run for a borrowed GPU machine, rehearsed on the
CPU at a tiny size: it times segment() and batched detection, probes the step time, trains
in resumed pieces under the time limit, and leaves in $OUT what the device tool brings back
(at most 8 files: networks per piece, log, curve, device_run.json)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nucleaizer_backend.models.io import read_network_meta

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "device_train_main.py"


def test_rehearsal_on_cpu(tmp_path, example_images_dir):
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        shutil.copytree(example_images_dir / sub, data / sub)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--device", "cpu",
                        "--minutes", "0.02", "--chunks", "2", "--batch-size", "1",
                        "--workers", "1", "--probe-steps", "2", "--warmup", "1",
                        "--repeats", "1", "--batches", "1,2", "--work", str(tmp_path / "work")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads((out / "device_run.json").read_text())
    timing = record["timing"]
    assert len(timing["segment_per_image"]) == 5 and timing["segment_median_s"] > 0
    assert set(timing["main_images_per_s_by_batch"]) == {"1", "2"}
    training = record["training"]
    pieces = training["pieces"]
    assert len(pieces) == 2 and 0 < pieces[0]["step"] < pieces[1]["step"]
    assert training["steps_planned"] >= 11  # warm-up + 10 at least
    # the data are loaded once for the probe and every piece
    assert training["data_load_s"] > 0 and r.stdout.count("training images loaded") == 1
    assert "data: 5 training images loaded" in r.stdout
    for p in pieces:
        assert read_network_meta(out / p["file"])["steps"] == p["step"]
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and {"log.jsonl", "curve.png", "device_run.json"} <= set(files)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, pieces[0]["step"]]


def test_missing_packed_data_is_one_clear_line(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nothing"),
                        "--device", "cpu"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "no packed data" in r.stderr and "Traceback" not in r.stderr
