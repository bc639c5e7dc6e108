"""bench/gpu_speed.py on the CPU: per-image segmentation times and the main network's
batched throughput, printed and written as JSON."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_speed.py"


def test_timing_on_cpu(tmp_path, example_images_dir):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((example_images_dir / "images").iterdir())[:2]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--images", str(images),
                        "--repeats", "1", "--batches", "1,2", "--json", str(out)],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result == json.loads(r.stdout)
    assert len(result["segment_per_image"]) == 2 and result["segment_median_s"] > 0
    assert all(p["nuclei"] > 0 for p in result["segment_per_image"])
    assert set(result["main_images_per_s_by_batch"]) == {"1", "2"}
    assert result["device"] == "cpu" and result["gpu"] is None
