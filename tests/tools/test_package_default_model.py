"""scripts/package_default_model.py, run as a maintainer runs it, on a copy of the shipped
model folder: a network trained on from a copy of the shipped file keeps its lineage, and the
run's s/step summary counts each step once when the run was resumed."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "package_default_model.py"


def test_lineage_and_resumed_log(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    old = json.loads((model / "model.json").read_text())
    run = tmp_path / "runs" / "unet-next"
    run.mkdir(parents=True)
    # trained on from a byte-identical copy of the shipped U-Net, not from its path
    shutil.copyfile(model / "unet.safetensors", tmp_path / "previous_best.safetensors")
    shutil.copyfile(model / "unet.safetensors", run / "best.safetensors")
    (run / "config.json").write_text(json.dumps({"init": str(tmp_path / "previous_best.safetensors")}))
    lines = [{"event": "start", "step": 0}, {"step": 20, "sec_per_step": 1.0},
             {"step": 40, "sec_per_step": 1.0}, {"step": 60, "sec_per_step": 9.0},  # lost
             {"event": "start", "step": 40}, {"step": 60, "sec_per_step": 1.0},
             {"step": 60, "val_select": 0.5, "val_fg_iou": 0.5}]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    subprocess.run([sys.executable, str(SCRIPT), "--out", str(model), "--docs",
                    str(tmp_path / "docs"), "--unet", str(run / "best.safetensors"),
                    "--note", "test"], check=True, capture_output=True, text=True)

    info = json.loads((model / "model.json").read_text())
    history = info["unet"]["history"]
    assert history["run"] == "unet-next"
    assert history["previous"]["history"] == old["unet"]["history"]
    assert history["previous"]["meta"] == old["unet"]["meta"]
    assert history["mean_sec_per_step"] == 1.0
    assert history["validation"] == [lines[-1]]
    assert info["main"] == old["main"] and info["postprocess"] == old["postprocess"]
    assert info["note"] == "test"
    assert (tmp_path / "docs" / "unet-next" / "log.jsonl").is_file()
