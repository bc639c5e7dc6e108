"""A probe of bad inputs, bad model files and bad options: every case gives one line on
stderr naming the file (or option) and the problem, never a traceback, and the exit status
says what happened (2: nothing was done because an option, the model or the output folder is
wrong, checked before any image; 1: some images of the batch failed, the others are done;
0: all done). Degenerate images (1x1, constant, all NaN) are not errors: empty labels, a
note in summary.csv and a warning line.

The CLI runs in-process through ``cli.main`` (an exception escaping it would be the
traceback), and a few cases once more as real subprocesses of this checkout.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

from nucleaizer_backend import cli, segment_image
from nucleaizer_backend.errors import ModelFileError, OptionError
from nucleaizer_backend.imageio_utils import output_stems
from nucleaizer_backend.inference import postprocess_params
from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, check_model_path, load_model
from nucleaizer_backend.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[2]
FLUO = "fluo_0e5edb072788"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def own_lines(err, kind="error"):
    """The ``nucleaizer: <kind>:`` lines of stderr (progress lines aside); no traceback."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith(f"nucleaizer: {kind}: ")]


def probe(capsys, argv):
    """(exit status, error lines, warning lines, stdout) of ``nucleaizer argv``."""
    rc = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, own_lines(cap.err), own_lines(cap.err, "warning"), cap.out


def one_error(capsys, argv, *names):
    """Run ``argv``, expect exactly one error line containing each of ``names``; returns
    (exit status, the line)."""
    rc, errors, _, _ = probe(capsys, argv)
    assert len(errors) == 1, errors
    for name in names:
        assert str(name) in errors[0], (name, errors[0])
    return rc, errors[0]


@pytest.fixture(scope="module")
def fluo(example_images_dir):
    """A 96x96 gray crop of a bundled fluorescence image (uint8)."""
    return np.asarray(iio.imread(example_images_dir / "images" / f"{FLUO}.png"))[:96, :96, 0]


@pytest.fixture
def image_dir(tmp_path, fluo):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "good.tif", fluo)
    return d


def model_folder(tmp_path, name, main=DEFAULT_MODEL_DIR / "main.safetensors", info=None):
    """A model folder ``name`` with ``main`` as its main network and ``info`` (any JSON
    value, or None for none) as its model.json."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(main, d / "main.safetensors")
    if info is not None:
        (d / "model.json").write_text(json.dumps(info))
    return d


SEGMENT = ["--diameter", "18", "--device", "cpu"]


# ---------------------------------------------------------------- degenerate images


def degenerate_images():
    return {"one_pixel.png": np.full((1, 1), 100, np.uint8),
            "constant.tif": np.full((40, 50), 7, np.uint16),
            "all_nan.tif": np.full((40, 50), np.nan, np.float32)}


@pytest.mark.parametrize("name", sorted(degenerate_images()))
def test_backend_degenerate_image_is_empty_flagged_and_logged(name, caplog):
    image = degenerate_images()[name]
    with caplog.at_level("WARNING", logger="nucleaizer_backend"):
        r = segment_image(image, diameter=18, device="cpu", return_probability=True)
    assert r.count == 0 and r.labels.shape == image.shape and not r.labels.any()
    assert r.probability.shape == image.shape
    expected = {"one_pixel.png": "1x1 px", "constant.tif": "constant: every pixel is 7",
                "all_nan.tif": "no finite pixel value"}[name]
    assert expected in r.degenerate
    assert [rec.levelname for rec in caplog.records] == ["WARNING"]
    assert r.degenerate in caplog.records[0].getMessage()
    caplog.clear()
    assert segment_image(np.arange(64 * 64).reshape(64, 64) % 7, diameter=18,
                         device="cpu").degenerate == ""
    assert not caplog.records


def test_cli_degenerate_images_are_empty_labels_and_a_note(image_dir, tmp_path, capsys):
    from nucleaizer_backend.imageio_utils import read_image

    for name, pixels in degenerate_images().items():
        (tifffile.imwrite if name.endswith(".tif") else iio.imwrite)(image_dir / name, pixels)
    out = tmp_path / "out"
    rc, errors, warnings, stdout = probe(capsys, ["segment", image_dir, "-o", out, *SEGMENT])
    assert rc == 0 and errors == [] and "4 of 4 images segmented" in stdout
    assert len(warnings) == 3
    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    for name, pixels in degenerate_images().items():
        assert sum(name in w and "degenerate image" in w for w in warnings) == 1
        row = rows[name]
        assert row["nuclei"] == "0" and row["error"] == "" and "degenerate image" in row["note"]
        labels = read_image(out / row["labels"])
        assert labels.shape == pixels.shape and not labels.any()
    assert rows["good.tif"]["note"] == "" and int(rows["good.tif"]["nuclei"]) > 0


# ---------------------------------------------------------------- bad model files


BAD_MODELS = {
    "model_json_list": ({"info": [1, 2]}, "a JSON object is expected"),
    "model_json_not_json": ({"info": None, "raw": "{not json"}, "not JSON"),
    "p_value_not_a_number": ({"info": {"postprocess": {"p2": "abc"}}},
                             "p2 must be a number >= 0 (got 'abc')"),
    "p_value_negative": ({"info": {"postprocess": {"p4": -1}}}, "p4 must be a number >= 0"),
    "p_value_out_of_range": ({"info": {"postprocess": {"p3": 1.5}}},
                             "p3 must be a number from 0 to 1"),
    "postprocess_not_an_object": ({"info": {"postprocess": [0.5]}}, "must be an object"),
    "unet_in_main_slot": ({"main": DEFAULT_MODEL_DIR / "unet.safetensors"},
                          "'unet' network, but the main network"),
    "preseg_in_main_slot": ({"main": DEFAULT_MODEL_DIR / "preseg.safetensors"},
                            "'preseg' network, but the main network"),
}


def bad_model(tmp_path, case):
    spec, _ = BAD_MODELS[case]
    d = model_folder(tmp_path, case, main=spec.get("main", DEFAULT_MODEL_DIR / "main.safetensors"),
                     info=spec.get("info"))
    if "raw" in spec:
        (d / "model.json").write_text(spec["raw"])
    bad_file = d / ("main.safetensors" if "main" in spec else "model.json")
    return d, bad_file


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_is_one_line_before_any_image(case, image_dir, tmp_path, capsys):
    model, bad_file = bad_model(tmp_path, case)
    problem = BAD_MODELS[case][1]
    for call in (lambda: check_model_path(model), lambda: load_model(model, "cpu"),
                 lambda: segment_image(np.zeros((8, 8)), model=model, device="cpu")):
        with pytest.raises(ModelFileError) as e:
            call()
        assert str(bad_file) in str(e.value) and problem in str(e.value)
        assert "\n" not in str(e.value)
    out = tmp_path / "out"
    rc, line = one_error(capsys, ["segment", image_dir, "-o", out, "--model", model, *SEGMENT],
                         bad_file, problem)
    assert rc == 2 and not out.exists()  # checked before the output folder and any image
    rc, line = one_error(capsys, ["estimate-size", image_dir, "--model", model,
                                  "--device", "cpu"], bad_file, problem)
    assert rc == 2


def test_unet_file_given_as_the_model(image_dir, tmp_path, capsys):
    unet = DEFAULT_MODEL_DIR / "unet.safetensors"
    rc, _ = one_error(capsys, ["segment", image_dir, "-o", tmp_path / "o", "--model", unet,
                               *SEGMENT], unet, "'unet' network")
    assert rc == 2


# ---------------------------------------------------------------- p-values


@pytest.mark.parametrize("option,value,allowed", [
    ("--p1", "1.5", "from 0 to 1"), ("--p2", "-5", ">= 0"), ("--p3", "nan", "from 0 to 1"),
    ("--p4", "-1", ">= 0"), ("--p5", "inf", ">= 0"), ("--p6", "-0.1", "from 0 to 1"),
    ("--confidence", "2", "from 0 to 1")])
def test_p_value_out_of_range_is_an_option_error(option, value, allowed, image_dir,
                                                tmp_path, capsys):
    out = tmp_path / "out"
    rc, line = one_error(capsys, ["segment", image_dir, "-o", out, option, value, *SEGMENT],
                         f"{option} must be a number {allowed}")
    assert rc == 2 and not out.exists()


def test_p_values_in_the_backend():
    model = load_model(None, "cpu")
    for overrides in ({"p2": -5}, {"p4": -1.0}, {"p1": "x"}, {"p6": 2}):
        with pytest.raises(OptionError, match=f"{next(iter(overrides))} must be"):
            postprocess_params(model, overrides)
    with pytest.raises(OptionError, match="confidence must be a number from 0 to 1"):
        postprocess_params(model, confidence=-0.1)
    params = postprocess_params(model, {"p1": 1.0, "p2": 0, "p4": 0, "p5": 12.5})
    assert (params.p1, params.p2, params.p4, params.p5) == (1.0, 0.0, 0.0, 12.5)


# ---------------------------------------------------------------- options, output


def test_unknown_device_is_reported_once_before_any_work(image_dir, tmp_path, capsys, fluo):
    tifffile.imwrite(image_dir / "second.tif", fluo)
    out = tmp_path / "out"
    rc, line = one_error(capsys, ["segment", image_dir, "-o", out, "--device", "gpu0"], "gpu0",
                         "unknown device")
    assert rc == 2 and not out.exists()
    rc, _ = one_error(capsys, ["estimate-size", image_dir, "--device", "gpu0"], "gpu0")
    assert rc == 2
    run = tmp_path / "run"
    rc, _ = one_error(capsys, ["train", "--data", image_dir, "--out", run, "--device", "gpu0"],
                      "gpu0")
    assert rc == 2 and not run.exists()


def test_output_folder_that_cannot_be_created(image_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out in (blocker / "sub", blocker):
        rc, line = one_error(capsys, ["segment", image_dir, "-o", out, *SEGMENT], out,
                             "cannot create the output folder")
        assert rc == 2


def test_label_path_that_is_a_folder_does_not_stop_the_batch(image_dir, tmp_path, capsys,
                                                             fluo):
    tifffile.imwrite(image_dir / "later.tif", fluo[::-1])
    out = tmp_path / "out"
    (out / "good.tif").mkdir(parents=True)
    rc, errors, _, stdout = probe(capsys, ["segment", image_dir, "-o", out, *SEGMENT])
    assert rc == 1 and "1 of 2 images segmented" in stdout
    assert len(errors) == 1
    assert str(out / "good.tif") in errors[0] and "a folder of that name exists" in errors[0]
    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    assert "cannot write the labels" in rows["good.tif"]["error"]
    assert rows["later.tif"]["error"] == "" and (out / "later.tif").is_file()


def test_same_stem_inputs_get_distinct_label_files(image_dir, tmp_path, capsys, fluo):
    iio.imwrite(image_dir / "good.png", fluo[:64, :64])
    out = tmp_path / "out"
    rc, errors, _, _ = probe(capsys, ["segment", image_dir, "-o", out, *SEGMENT])
    assert rc == 0 and errors == []
    assert sorted(p.name for p in out.glob("*.tif")) == ["good_png.tif", "good_tif.tif"]
    assert tifffile.imread(out / "good_png.tif").shape == (64, 64)
    assert tifffile.imread(out / "good_tif.tif").shape == (96, 96)
    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    for name, labels in (("good.png", "good_png.tif"), ("good.tif", "good_tif.tif")):
        assert rows[name]["labels"] == labels
        assert "another input has the stem good" in rows[name]["note"]


def test_output_stems():
    assert output_stems(["x/a.png", "y/b.png"]) == ["a", "b"]
    # a unique stem keeps its name even when a renamed one would have taken it
    assert output_stems(["a.png", "a.tif", "a_png.png"]) == ["a_png_2", "a_tif", "a_png"]
    assert output_stems(["x/c.png", "y/c.png", "C.TIF"]) == ["c_png", "c_png_2", "C_TIF"]


def test_summary_is_written_as_the_batch_goes(image_dir, tmp_path, capsys, fluo, monkeypatch):
    """A batch stopped at its second image keeps the first image's row."""
    import importlib

    segment_module = importlib.import_module("nucleaizer_backend.segment")
    tifffile.imwrite(image_dir / "z_second.tif", fluo)
    real = segment_module.segment_image
    calls = []

    def stop_at_second(image, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(image, **kwargs)

    monkeypatch.setattr(segment_module, "segment_image", stop_at_second)
    out = tmp_path / "out"
    rc, errors, _, _ = probe(capsys, ["segment", image_dir, "-o", out, *SEGMENT])
    assert rc == 130 and errors == ["nucleaizer: error: interrupted"]
    rows = read_csv(out / "summary.csv")
    assert [r["image"] for r in rows] == ["good.tif"] and int(rows[0]["nuclei"]) > 0


# ---------------------------------------------------------------- train --resume


class CodeOnLoad:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def resumable_run(tmp_path, data, checkpoint_bytes):
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(data=str(data), out=str(run), kind="unet", steps=2, crop=64)
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    (run / "checkpoint.pt").write_bytes(checkpoint_bytes)
    return run


def saved_bytes(obj, tmp_path):
    path = tmp_path / "saved.pt"
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.parametrize("case", ["truncated", "pickled", "not_a_checkpoint", "empty"])
def test_resume_from_a_bad_checkpoint(case, image_dir, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    content = {
        "truncated": lambda: saved_bytes({"model": {"w": torch.zeros(4000)}}, tmp_path)[:3000],
        "pickled": lambda: saved_bytes({"model": CodeOnLoad(marker), "step": 1}, tmp_path),
        "not_a_checkpoint": lambda: saved_bytes({"weights": torch.zeros(3)}, tmp_path),
        "empty": lambda: b"",
    }[case]()
    run = resumable_run(tmp_path, image_dir, content)
    rc, line = one_error(capsys, ["train", "--data", image_dir, "--out", run, "--resume",
                                  "--device", "cpu"], run / "checkpoint.pt", "cannot resume",
                         "start a fresh run")
    assert rc == 2 and "weights_only" not in line
    assert not marker.exists()


def test_resume_with_a_corrupt_config(image_dir, tmp_path, capsys):
    run = resumable_run(tmp_path, image_dir, b"x")
    (run / "config.json").write_text("[1, 2")
    rc, _ = one_error(capsys, ["train", "--data", image_dir, "--out", run, "--resume",
                               "--device", "cpu"], run / "config.json", "missing or corrupt")
    assert rc == 2


# ---------------------------------------------------------------- real subprocesses


def test_as_real_subprocesses(image_dir, tmp_path, subprocess_env):
    """The same lines from ``python -m nucleaizer_backend`` of this checkout: no traceback."""
    env = dict(subprocess_env, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    model, bad_file = bad_model(tmp_path, "model_json_list")
    run = resumable_run(tmp_path, image_dir,
                        saved_bytes({"model": CodeOnLoad(tmp_path / "ran")}, tmp_path))
    cases = [
        (["segment", image_dir, "-o", tmp_path / "o1", "--device", "gpu0"], "gpu0"),
        (["segment", image_dir, "-o", tmp_path / "o2", "--model", model, *SEGMENT], bad_file),
        (["segment", image_dir, "-o", tmp_path / "o3", "--p2", "-5", *SEGMENT], "--p2"),
        (["train", "--data", image_dir, "--out", run, "--resume", "--device", "cpu"],
         run / "checkpoint.pt"),
    ]
    for argv, name in cases:
        r = subprocess.run([sys.executable, "-m", "nucleaizer_backend", *map(str, argv)],
                           env=env, capture_output=True, text=True, timeout=300)
        errors = own_lines(r.stderr)
        assert r.returncode == 2, r.stderr
        assert len(errors) == 1 and str(name) in errors[0], r.stderr
        assert "weights_only" not in r.stderr
