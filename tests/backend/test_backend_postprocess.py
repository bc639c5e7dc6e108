"""The refinement steps with the shipped networks on real example images: what the API's
refine / tta / postprocess switches do, parameter precedence, and tuning."""
import json
import shutil

import numpy as np
import pytest

from nucleaizer_backend import segment_image
from nucleaizer_backend.errors import NucleaizerError
from nucleaizer_backend.evaluate import score_image
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, UNET_FILE, load_model
from nucleaizer_backend.refine import PostprocessParams
from nucleaizer_backend.train.data import read_labels
from nucleaizer_backend.tune import tune, write_tuned_model

FLUO = "fluo_0e5edb072788"


@pytest.fixture(scope="module")
def fluo(example_images_dir, example_index):
    row = [r for r in example_index if r["id"] == FLUO][0]
    return (read_image(example_images_dir / "images" / f"{FLUO}.png"),
            read_labels(example_images_dir / "labels" / f"{FLUO}.tif"),
            float(row["median_diameter_px"]))


@pytest.fixture(scope="module")
def steps(fluo):
    """The same image through each step, at its true nucleus size."""
    img, _, d = fluo
    return {
        "maskrcnn": segment_image(img, diameter=d, device="cpu", refine="none"),
        "rules": segment_image(img, diameter=d, device="cpu", refine="rules"),
        "full": segment_image(img, diameter=d, device="cpu", return_probability=True),
    }


def test_shipped_model_has_a_unet():
    assert (DEFAULT_MODEL_DIR / UNET_FILE).is_file()
    bundle = load_model(None, "cpu")
    assert bundle.unet is not None and bundle.unet_meta["kind"] == "unet"
    assert bundle.unet_meta["diameter"] == 40.0


def test_each_step_reports_what_ran(steps):
    assert not steps["maskrcnn"].refined and steps["full"].refined
    assert steps["full"].params == load_params()
    assert not steps["full"].tta


def load_params():
    return PostprocessParams.from_dict(load_model(None, "cpu").postprocess)


def test_refinement_keeps_nuclei_and_scores_well(steps, fluo):
    _, truth, _ = fluo
    base = score_image(truth, steps["maskrcnn"].labels)
    full = score_image(truth, steps["full"].labels)
    n = truth.max()
    # the refined result is still a good segmentation of the same nuclei
    assert abs(steps["full"].count - n) <= 0.15 * n
    assert full.dsb >= base.dsb - 0.03, (base.dsb, full.dsb)
    assert full.dsb > 0.5


def test_unet_probability_agrees_with_annotation(steps, fluo):
    _, truth, _ = fluo
    prob = steps["full"].probability
    assert prob.shape == truth.shape and prob.dtype == np.float32
    fg = prob > 0.5
    iou = (fg & (truth > 0)).sum() / (fg | (truth > 0)).sum()
    assert iou > 0.7, iou


def test_huge_minimum_area_removes_everything(fluo):
    img, _, d = fluo
    res = segment_image(img, diameter=d, device="cpu", postprocess={"p2": 1e6})
    assert res.count == 0 and res.labels.max() == 0
    assert res.params.p2 == 1e6 and res.params.p1 == load_params().p1


def test_confidence_argument_overrides_model_value(fluo):
    img, _, d = fluo
    strict = segment_image(img, diameter=d, device="cpu", confidence=0.95, refine="none")
    assert strict.params.confidence == 0.95
    assert (strict.scores >= 0.95).all()
    with pytest.raises(NucleaizerError, match="confidence"):
        segment_image(img, diameter=d, device="cpu", confidence=1.5)


def test_tta_agrees_with_plain_segmentation(fluo, steps):
    img, truth, d = fluo
    res = segment_image(img, diameter=d, device="cpu", tta=True)
    assert res.tta and res.labels.shape == truth.shape
    assert abs(res.count - steps["full"].count) <= 0.1 * steps["full"].count + 1
    assert score_image(truth, res.labels).dsb > score_image(truth, steps["full"].labels).dsb - 0.05


def test_model_folder_parameters_are_used(tmp_path, fluo):
    img, _, d = fluo
    folder = tmp_path / "tuned"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    info = json.loads((folder / "model.json").read_text())
    info["postprocess"] = dict(info.get("postprocess") or {}, p2=1e6)
    (folder / "model.json").write_text(json.dumps(info))
    res = segment_image(img, model=folder, diameter=d, device="cpu")
    assert res.params.p2 == 1e6 and res.count == 0
    # an explicit value still wins over the model's
    res = segment_image(img, model=folder, diameter=d, device="cpu", postprocess={"p2": 0})
    assert res.count > 0


def test_tune_improves_or_keeps_dsb_and_writes_model(tmp_path, fluo):
    img, truth, d = fluo
    grid = {"confidence": [0.5, 0.7], "p2": [0.0, 44.0, 400.0], "p6": [0.0, 0.8]}
    result = tune([(FLUO, img, truth)], device="cpu", diameters={FLUO: d}, rounds=1, grid=grid)
    assert result.dsb >= result.start_dsb
    assert len(result.history) > 1
    assert {name for name, _, _ in result.history[1:]} <= set(grid)  # only the grid given
    # the reported score is what segment_image gives with those values
    out = write_tuned_model(result, None, tmp_path / "mine", tuned_on="one image")
    res = segment_image(img, model=out, diameter=d, device="cpu")
    assert score_image(truth, res.labels).dsb == pytest.approx(result.dsb, abs=1e-6)
    info = json.loads((out / "model.json").read_text())
    assert info["postprocess"]["p2"] == result.params.p2 and info["tuning"]["tuned_on"]
    with pytest.raises(NucleaizerError, match="shipped default"):
        write_tuned_model(result, None, None)
    with pytest.raises(NucleaizerError, match="not empty"):
        write_tuned_model(result, None, out)
