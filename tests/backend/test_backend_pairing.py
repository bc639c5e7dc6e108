"""Pairing images with label images by name (pairing.py): one suffix rule for training data,
evaluate, tune and adapt --annotations."""
import shutil

import numpy as np
import pytest
import tifffile

from nucleaizer_backend import cli
from nucleaizer_backend.errors import InputImageError, NucleaizerError
from nucleaizer_backend.pairing import (LABEL_SUFFIXES, find_pairs, image_name, label_files,
                                        pair_images)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), np.zeros((4, 4), np.uint8))
    return path


@pytest.mark.parametrize("suffix", LABEL_SUFFIXES + ("_MASK", "_Labels"))
def test_every_label_suffix_is_stripped(suffix):
    assert image_name(f"img_01{suffix}") == "img_01"
    assert image_name("img_01") == "img_01"
    assert image_name("masked") == "masked"


def test_label_subfolder_is_used(tmp_path):
    touch(tmp_path / "images" / "a.tif")
    label = touch(tmp_path / "labels" / "a_mask.tif")
    touch(tmp_path / "labels" / "b.tif")
    assert label_files(tmp_path) == {"a": label, "b": tmp_path / "labels" / "b.tif"}
    assert label_files(tmp_path / "labels") == label_files(tmp_path)
    assert find_pairs(tmp_path) == [(tmp_path / "images" / "a.tif", label)]


def test_side_by_side_the_suffixed_file_is_the_label(tmp_path):
    a, a_mask = touch(tmp_path / "a.tif"), touch(tmp_path / "a_mask.tif")
    b, c_cp = touch(tmp_path / "b.tif"), touch(tmp_path / "c_cp_masks.tif")
    touch(tmp_path / "c.tif")
    files = label_files(tmp_path)
    assert files["a"] == a_mask and files["c"] == c_cp
    pairs, unmatched = pair_images(sorted(tmp_path.iterdir()), files)
    assert pairs == [(a, a_mask), (tmp_path / "c.tif", c_cp)]
    assert unmatched == []  # b may be a label image of its own: not reported
    assert find_pairs(tmp_path) == pairs
    assert b in files.values()


def test_missing_folders_are_user_errors(tmp_path):
    with pytest.raises(InputImageError, match="no such folder"):
        label_files(tmp_path / "nope")
    with pytest.raises(NucleaizerError, match="not found"):
        find_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NucleaizerError, match="no image/label pairs"):
        find_pairs(tmp_path / "empty")


def test_evaluate_takes_suffixed_predictions(example_images_dir, tmp_path):
    """Predictions named like Cellpose's (a_cp_masks.png) or a_mask.tif pair with a.tif."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, p in enumerate(sorted((example_images_dir / "labels").iterdir())):
        shutil.copy(p, pred / f"{p.stem}{'_mask' if i % 2 else '_cp_masks'}.tif")
    report = tmp_path / "scores.json"
    rc = cli.main(["evaluate", "--pred", str(pred), "--truth", str(example_images_dir),
                   "--json", str(report)])
    assert rc == 0 and '"dsb": 1.0' in report.read_text()


def test_tune_pairs_images_with_suffixed_labels(example_images_dir, tmp_path, capsys):
    truth = tmp_path / "truth"
    truth.mkdir()
    names = sorted(p.stem for p in (example_images_dir / "images").iterdir())
    for n in names[:2]:
        shutil.copy(example_images_dir / "labels" / f"{n}.tif", truth / f"{n}_labels.tif")
    pairs = cli._annotated_pairs(example_images_dir / "images", truth)
    assert [name for name, _, _ in pairs] == names[:2]
    assert pairs[0][1].shape[:2] == pairs[0][2].shape
    assert "3 images have no label image" in capsys.readouterr().err
