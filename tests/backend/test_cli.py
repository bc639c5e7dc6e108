"""The ``nucleaizer`` command (in-process through ``cli.main`` and as real subprocesses)."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from nucleaizer_backend import cli
from nucleaizer_backend.imageio_utils import read_image


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d \S+ \d+/\d+ ")  # '19:40:01 segment 3/7 img ...'


def error_lines(err):
    """The lines of ``err`` other than progress lines and warnings, all one-line errors."""
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.match(line)
             and not line.startswith("nucleaizer: warning: ")]
    assert "Traceback" not in err
    assert all(line.startswith("nucleaizer: error: ") for line in lines), err
    return lines


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, example_images_dir):
    """The 5 bundled images, a text file named .png and a 3D stack .tif."""
    d = tmp_path_factory.mktemp("inputs")
    for p in sorted((example_images_dir / "images").glob("*.png")):
        shutil.copy(p, d)
    (d / "broken.png").write_text("not an image\n")
    tifffile.imwrite(d / "stack.tif", np.zeros((10, 32, 32), np.uint8))
    return d


def test_segment_folder_with_bad_files(mixed_folder, example_index, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["segment", str(mixed_folder), "-o", str(out), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1  # some images failed
    # one line per bad file, naming it
    lines = error_lines(cap.err)
    assert len(lines) == 2, cap.err
    assert any("broken.png" in line and "not a readable image" in line for line in lines)
    assert any("stack.tif" in line and "3D stack" in line for line in lines)
    assert "5 of 7 images segmented" in cap.out
    # the bundled H&E image of a style unlike the training images' (test_style_distance)
    assert "nucleaizer: warning: 1 of 7 images are of a style unlike" in cap.err

    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    assert set(rows) == {f"{r['id']}.png" for r in example_index} | {"broken.png", "stack.tif"}
    assert set(read_csv(out / "summary.csv")[0]) >= {"image", "nuclei", "diameter_px", "scale",
                                                     "size_reliable", "seconds", "error"}
    for bad in ("broken.png", "stack.tif"):
        assert rows[bad]["error"] and rows[bad]["nuclei"] == ""
        assert not (out / (Path(bad).stem + ".tif")).exists()
    for r in example_index:
        row = rows[f"{r['id']}.png"]
        assert row["error"] == ""
        assert float(row["diameter_px"]) > 0 and float(row["scale"]) > 0
        assert row["size_reliable"] in ("True", "False")
        assert row["unfamiliar_style"] == str(r["id"] == "he_4d14a3629b6a")
        labels = tifffile.imread(out / f"{r['id']}.tif")
        assert labels.shape == (int(r["height"]), int(r["width"]))
        assert labels.dtype in (np.uint16, np.uint32)
        assert len(np.unique(labels)) - 1 == int(row["nuclei"]) > 0


def test_segment_overlays(example_images_dir, tmp_path, capsys):
    """--overlays: the image as given (H&E stays bright, not inverted as the networks see it)
    with exactly the outline pixels of the written labels in green."""
    from nucleaizer_backend.overlay import outline_mask
    from nucleaizer_backend.preprocess import stretch_intensities

    images = [example_images_dir / "images" / f"{n}.png"
              for n in ("fluo_0e5edb072788", "he_420f43d21dba")]
    out = tmp_path / "out"
    assert cli.main(["segment", *map(str, images), "-o", str(out), "--overlays",
                     "--diameter", "20", "--device", "cpu"]) == 0
    assert "overlays/" in capsys.readouterr().out
    for p in images:
        labels = tifffile.imread(out / f"{p.stem}.tif")
        shown = read_image(out / "overlays" / f"{p.stem}.png")
        assert shown.shape == labels.shape + (3,) and shown.dtype == np.uint8
        edge = outline_mask(labels)
        assert edge.sum() > 20 * 20  # at least 20 nuclei of 20+ outline px
        green = (shown == [0, 255, 0]).all(axis=-1)
        np.testing.assert_array_equal(green, edge)
        plain = np.round(stretch_intensities(read_image(p)) * 255).astype(np.uint8)
        np.testing.assert_array_equal(shown[~edge], plain[~edge])
    he = read_image(out / "overlays" / "he_420f43d21dba.png")
    assert np.median(he) > 150  # bright background, as the H&E image looks


def test_segment_missing_model_is_one_line_usage_error(example_images_dir, tmp_path, capsys):
    img = example_images_dir / "images" / "fluo_0e5edb072788.png"
    missing = tmp_path / "no_such_model"
    rc = cli.main(["segment", str(img), "-o", str(tmp_path / "o"), "--model", str(missing),
                   "--diameter", "18", "--device", "cpu"])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and str(missing) in lines[0]


def test_segment_corrupt_model_file(example_images_dir, tmp_path, capsys):
    img = example_images_dir / "images" / "fluo_0e5edb072788.png"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    rc = cli.main(["segment", str(img), "-o", str(tmp_path / "o"), "--model", str(bad),
                   "--device", "cpu"])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and str(bad) in lines[0]


def test_segment_negative_diameter(example_images_dir, tmp_path, capsys):
    img = example_images_dir / "images" / "fluo_0e5edb072788.png"
    rc = cli.main(["segment", str(img), "-o", str(tmp_path / "o"), "--diameter", "-3",
                   "--device", "cpu"])
    lines = error_lines(capsys.readouterr().err)
    # an option error, before any image is read (exit status 2, no output folder)
    assert rc == 2 and len(lines) == 1 and "--diameter" in lines[0] and "-3" in lines[0]
    assert not (tmp_path / "o").exists()


def test_threads_option(example_images_dir, tmp_path, capsys):
    import torch

    img = str(example_images_dir / "images" / "fluo_0e5edb072788.png")
    before = torch.get_num_threads()
    try:
        rc = cli.main(["estimate-size", img, "--device", "cpu", "--threads", "1"])
        assert rc == 0 and torch.get_num_threads() == 1
        rc = cli.main(["segment", img, "-o", str(tmp_path / "o"), "--threads", "0"])
        lines = error_lines(capsys.readouterr().err)
        assert rc == 2 and len(lines) == 1 and "CPU threads" in lines[0]
        assert not (tmp_path / "o").exists()
    finally:
        torch.set_num_threads(before)


def test_segment_discard_filters(example_images_dir, tmp_path, capsys):
    """--discard-border and --diameter-range drop nuclei as IdentifyPrimaryObjects does;
    the summary counts what each dropped; a bad range is an option error before any image."""
    img = str(example_images_dir / "images" / "fluo_0e5edb072788.png")
    assert cli.main(["segment", img, "-o", str(tmp_path / "all"), "--device", "cpu"]) == 0
    assert cli.main(["segment", img, "-o", str(tmp_path / "kept"), "--device", "cpu",
                     "--discard-border", "--diameter-range", "12", "60"]) == 0
    everything = read_image(tmp_path / "all" / "fluo_0e5edb072788.tif")
    kept = read_image(tmp_path / "kept" / "fluo_0e5edb072788.tif")
    row = read_csv(tmp_path / "kept" / "summary.csv")[0]
    dropped = int(row["discarded_border"]) + int(row["discarded_size"])
    assert int(row["discarded_border"]) > 0 and int(row["nuclei"]) == kept.max()
    assert kept.max() == everything.max() - dropped
    # the time of each stage (no size estimate: the diameter was not given, so there is one)
    stages = {k: float(row[f"seconds_{k}"]) for k in ("size", "detect", "unet", "postprocess")}
    assert all(v > 0 for v in stages.values()) and sum(stages.values()) <= float(row["seconds"])
    capsys.readouterr()
    rc = cli.main(["segment", img, "-o", str(tmp_path / "bad"), "--diameter-range", "60", "12"])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "--diameter-range" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_segment_speed(example_images_dir, tmp_path, capsys):
    """--speed fast enlarges 18 px nuclei less than accurate (to the model's fast diameter);
    the summary names the speed used; an unknown speed is a usage error."""
    from nucleaizer_backend.models.io import stored_speed

    img = str(example_images_dir / "images" / "fluo_0e5edb072788.png")
    rows = {}
    for speed in ("accurate", "fast"):
        assert cli.main(["segment", img, "-o", str(tmp_path / speed), "--device", "cpu",
                         "--diameter", "18", "--speed", speed]) == 0
        rows[speed] = read_csv(tmp_path / speed / "summary.csv")[0]
        assert rows[speed]["speed"] == speed
        assert float(rows[speed]["style_distance"]) > 0
        assert rows[speed]["unfamiliar_style"] == "False"
    assert float(rows["accurate"]["scale"]) == pytest.approx(40 / 18, abs=1e-3)
    fast = min(stored_speed()["fast_diameter"], 40.0)
    assert float(rows["fast"]["scale"]) == pytest.approx(max(fast, 18) / 18, abs=1e-3)
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", img, "-o", str(tmp_path / "x"), "--speed", "turbo"])
    assert e.value.code == 2 and "invalid choice: 'turbo'" in capsys.readouterr().err


def test_segment_missing_input(tmp_path, capsys):
    rc = cli.main(["segment", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and "nothing" in lines[0]


def test_estimate_size_csv(example_images_dir, example_index, tmp_path, capsys):
    names = ["fluo_0e5edb072788", "he_420f43d21dba"]
    paths = [str(example_images_dir / "images" / f"{n}.png") for n in names]
    table = tmp_path / "sizes.csv"
    rc = cli.main(["estimate-size", *paths, "--csv", str(table), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0 and error_lines(cap.err) == []
    assert "estimate-size 2/2 img (100%)" in cap.err  # progress lines when no terminal
    rows = read_csv(table)
    assert [r["image"] for r in rows] == [f"{n}.png" for n in names]
    truth = {r["id"]: float(r["median_diameter_px"]) for r in example_index}
    for r, n in zip(rows, names):
        assert float(r["median_diameter_px"]) > 0 and int(r["count"]) >= 0
        assert r["reliable"] in ("True", "False")
        assert f"{n}.png" in cap.out
        # a loose sanity bound only (accuracy floors live in test_backend_model.py)
        assert truth[n] / 4 < float(r["median_diameter_px"]) < truth[n] * 4


def test_estimate_size_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_text("no")
    rc = cli.main(["estimate-size", str(bad), "--csv", str(tmp_path / "s.csv")])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 1 and len(lines) == 1 and str(bad) in lines[0]


@pytest.fixture
def label_copy(example_images_dir, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(example_images_dir / "labels", pred)
    return pred


def test_evaluate_identical_labels(example_images_dir, label_copy, tmp_path, capsys):
    report = tmp_path / "scores.json"
    rc = cli.main(["evaluate", "--pred", str(label_copy), "--truth", str(example_images_dir),
                   "--json", str(report)])
    assert rc == 0
    s = json.loads(report.read_text())
    assert s["images"] == 5 and s["dsb"] == 1.0 and s["f1"] == 1.0
    assert s["missed"] == s["extra"] == s["merges"] == s["splits"] == 0
    assert s["n_true"] == s["n_pred"] == 28 + 58 + 32 + 98 + 49
    assert "DSB 1.0000" in capsys.readouterr().out


def test_evaluate_missing_prediction_counts_as_empty(example_images_dir, label_copy, tmp_path,
                                                     capsys):
    (label_copy / "he_4d14a3629b6a.tif").unlink()
    report, table, plot = tmp_path / "scores.json", tmp_path / "per_image.csv", tmp_path / "f1.png"
    rc = cli.main(["evaluate", "--pred", str(label_copy),
                   "--truth", str(example_images_dir / "labels"), "--json", str(report),
                   "--csv", str(table), "--plot", str(plot)])
    assert rc == 0
    s = json.loads(report.read_text())
    assert s["dsb"] == pytest.approx(4 / 5)  # four perfect images, one with nothing found
    assert s["missed"] == 98
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "he_4d14a3629b6a" in lines[0]
    with open(table) as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert len(rows) == 5 and float(rows["he_4d14a3629b6a"]["dsb"]) == 0.0
    assert rows["he_4d14a3629b6a"]["n_true"] == "98" and rows["he_4d14a3629b6a"]["n_pred"] == "0"
    assert float(rows["fluo_0e5edb072788"]["dsb"]) == 1.0
    from PIL import Image

    with Image.open(plot) as im:  # 5 x 3.5 in at 90 dpi
        assert im.size == (450, 315)
        gray = np.asarray(im.convert("L"))
    assert gray.min() < 100 and (gray < 250).mean() > 0.02  # axes, line and text drawn


def test_evaluate_without_common_images(example_images_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli.main(["evaluate", "--pred", str(tmp_path / "empty"), "--truth",
                   str(example_images_dir)])
    lines = error_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["segment", "x.png"])  # -o missing
    assert e.value.code == 2


# ---------------------------------------------------------------- real subprocesses

def test_python_m_help(subprocess_env):
    r = subprocess.run([sys.executable, "-m", "nucleaizer_backend", "--help"], env=subprocess_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for command in ("segment", "estimate-size", "train", "evaluate"):
        assert command in r.stdout


def test_console_script_segment(example_images_dir, tmp_path, subprocess_env):
    exe = shutil.which("nucleaizer", path=subprocess_env["PATH"])
    assert exe, "the nucleaizer console script is not installed (pip install -e .)"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(example_images_dir / "images" / "fluo_0e5edb072788.png", inputs)
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 50)
    out = tmp_path / "out"
    r = subprocess.run([exe, "segment", str(inputs), "-o", str(out), "--diameter", "18",
                        "--device", "cpu"], env=subprocess_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1 and "corrupt.png" in lines[0], r.stderr
    labels = read_image(out / "fluo_0e5edb072788.tif")
    assert labels.shape == (256, 256) and labels.max() > 0
    rows = read_csv(out / "summary.csv")
    assert [row["image"] for row in rows] == ["corrupt.png", "fluo_0e5edb072788.png"]
    assert rows[0]["error"] and not rows[1]["error"]
    # no terminal: progress as timed log lines, the first and the last always
    progress = [line for line in r.stderr.splitlines() if PROGRESS_LINE.match(line)]
    assert [line.split(",")[0][9:] for line in progress] == [
        "segment 1/2 img (50%)", "segment 2/2 img (100%)"], r.stderr
    assert "ETA" in progress[0] and re.search(r"[0-9.]+ (s/img|img/s)", progress[0])


def test_version(capsys):
    import nucleaizer_backend

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"nucleaizer {nucleaizer_backend.__version__}"
