"""scripts/pack_training_data.py: the packed copy of a training folder is lossless, cut to
the densest window only when over --max-mib, and reads back as training data with the same
pixels, labels and styles."""
import contextlib
import csv
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from nucleaizer_backend.imageio_utils import read_image, write_labels
from nucleaizer_backend.train.data import load_dataset, read_labels
from nucleaizer_backend.train.data import read_styles

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pack_training_data.py"


def make_split(root, rng):
    """root/index.csv (id, split, style) and root/train/{images,labels}, as the DSB data."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    rows = []
    for name, style, shape in (("gray_big", "fluo", (600, 700)), ("colour", "he", (64, 80))):
        img = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
        if style == "fluo":
            img[..., 1] = img[..., 2] = img[..., 0]
        labels = np.zeros(shape, np.uint16)
        labels[500:540, 600:640] = 1  # the densest 512 px window must hold these
        labels[520:560, 650:690] = 2
        labels[5:20, 5:20] = 3
        iio.imwrite(root / "train" / "images" / f"{name}.png", img)
        write_labels(root / "train" / "labels" / f"{name}.tif", labels)
        rows.append({"id": name, "split": "train", "style": style})
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "split", "style"])
        w.writeheader()
        w.writerows(rows)


def run_script(data, out, *args):
    """The script as a user runs it, in its own process."""
    return subprocess.run([sys.executable, str(SCRIPT), str(data), str(out), *args],
                          capture_output=True, text=True)


def _module():
    spec = importlib.util.spec_from_file_location("pack_training_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(data, out, *args):
    """The script's main() in this process (faster): (exit message or None, stdout)."""
    out_buf = io.StringIO()
    with contextlib.redirect_stdout(out_buf):
        try:
            _module().main([str(data), str(out), *args])
            message = None
        except SystemExit as e:
            message = str(e.code)
    return message, out_buf.getvalue()


def test_lossless_and_cropped_only_over_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "dsb"
    make_split(data, rng)
    train = data / "train"
    out = tmp_path / "packed"
    r = run_script(train, out)  # no limit
    assert r.returncode == 0, r.stderr
    assert "0 cut" in r.stdout
    for name in ("gray_big", "colour"):
        packed = read_image(out / "images" / f"{name}.webp")
        np.testing.assert_array_equal(packed, read_image(train / "images" / f"{name}.png"))
        np.testing.assert_array_equal(read_labels(out / "labels" / f"{name}.tif"),
                                      read_labels(train / "labels" / f"{name}.tif"))
    assert read_styles(out) == {"gray_big": "fluo", "colour": "he"}  # from data's index.csv
    assert len(load_dataset(out)) == 2

    small = tmp_path / "small"
    error, stdout = pack(train, small, "--max-mib", "0.3")  # 600x700 noise alone: ~0.4 MiB
    assert error is None and "1 cut" in stdout
    labels = read_labels(small / "labels" / "gray_big.tif")
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {0, 1, 2}
    with open(small / "index.csv") as f:
        windows = {row["id"]: row["window"] for row in csv.DictReader(f)}
    y0, x0 = (int(part.split(":")[0]) for part in windows["gray_big"].split(","))
    np.testing.assert_array_equal(read_image(small / "images" / "gray_big.webp"),
                                  read_image(train / "images" / "gray_big.png")
                                  [y0:y0 + 512, x0:x0 + 512])
    assert windows["colour"] == ""
    size = sum(p.stat().st_size for p in small.rglob("*") if p.suffix in (".webp", ".tif"))
    assert size <= 0.3 * 2 ** 20

    error, _ = pack(train, tmp_path / "none", "--max-mib", "0.001")
    assert "raise --max-mib" in error
    error, _ = pack(train, out)  # a folder packed before is not overwritten
    assert "not empty" in error


def test_other_layouts_and_16_bit_images(tmp_path):
    """Label files beside the images, no index.csv (no styles), a 16-bit image (zlib TIFF,
    as read) and a binary mask (split into objects as `nucleaizer train` reads it)."""
    data = tmp_path / "mine"
    data.mkdir()
    img16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 31)
    tifffile.imwrite(data / "a.tif", img16)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:15] = 255
    mask[20:30, 30:40] = 255
    iio.imwrite(data / "a_mask.png", mask)
    out = tmp_path / "packed"
    error, _ = pack(data, out)
    assert error is None
    np.testing.assert_array_equal(read_image(out / "images" / "a.tif"), img16)
    assert read_image(out / "images" / "a.tif").dtype == np.uint16
    np.testing.assert_array_equal(read_labels(out / "labels" / "a.tif"),
                                  read_labels(data / "a_mask.png"))
    assert read_labels(out / "labels" / "a.tif").max() == 2
    assert read_styles(out) == {}
    assert len(load_dataset(out)) == 1

    r = run_script(tmp_path / "nothing", tmp_path / "x")
    assert r.returncode != 0 and "not found" in r.stderr and "Traceback" not in r.stderr
