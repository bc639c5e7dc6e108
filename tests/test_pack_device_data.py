"""scripts/pack_device_data.py: the packed copy of a split is lossless, cut to the densest
window only when over the byte budget, and reads back as training data with the same pixels, labels and styles."""
import csv
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from nucleaizer_backend.imageio_utils import read_image, write_labels
from nucleaizer_backend.train.data import load_dataset, read_labels
from nucleaizer_backend.train.loop import read_styles

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pack_device_data.py"


def make_split(root, rng):
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


def pack(data, out, budget):
    return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out),
                           "--budget-mib", str(budget)], capture_output=True, text=True)


def test_lossless_and_cropped_only_over_budget(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "dsb"
    make_split(data, rng)
    out = tmp_path / "packed"
    r = pack(data, out, 10.0)
    assert r.returncode == 0, r.stderr
    assert "0 cut" in r.stdout
    for name in ("gray_big", "colour"):
        packed = read_image(out / "images" / f"{name}.webp")
        original = read_image(data / "train" / "images" / f"{name}.png")
        np.testing.assert_array_equal(packed, original)
        np.testing.assert_array_equal(read_labels(out / "labels" / f"{name}.tif"),
                                      read_labels(data / "train" / "labels" / f"{name}.tif"))
    assert read_styles(out) == {"gray_big": "fluo", "colour": "he"}
    assert len(load_dataset(out)) == 2

    small = tmp_path / "small"
    r = pack(data, small, 0.3)  # the 600x700 noise image alone is about 0.4 MiB
    assert r.returncode == 0, r.stderr
    assert "1 cut" in r.stdout
    labels = read_labels(small / "labels" / "gray_big.tif")
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {0, 1, 2}
    with open(small / "index.csv") as f:
        windows = {row["id"]: row["window"] for row in csv.DictReader(f)}
    y0, x0 = (int(part.split(":")[0]) for part in windows["gray_big"].split(","))
    np.testing.assert_array_equal(read_image(small / "images" / "gray_big.webp"),
                                  read_image(data / "train" / "images" / "gray_big.png")
                                  [y0:y0 + 512, x0:x0 + 512])
    assert windows["colour"] == ""

    r = pack(data, tmp_path / "none", 0.001)
    assert r.returncode != 0 and "raise --budget-mib" in r.stderr
