"""The *fast* speed: small nuclei enlarged only to the model's fast_diameter, the
post-processing parameters still read at the model's working diameter, the speed chosen by
the caller or by the model's model.json."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from nucleaizer_backend import Model, segment_image
from nucleaizer_backend.errors import ModelFileError, OptionError
from nucleaizer_backend.evaluate import score_image
from nucleaizer_backend.geometry import choose_scale
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.inference import infer, working_range
from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, stored_speed
from nucleaizer_backend.train.data import read_labels

FLUO = "fluo_0e5edb072788"
DIAMETER = 18.0  # px, about the image's true nucleus size
FAST = 28.0  # px, fast_diameter of the test models


def with_speed(model, **speed):
    info = dict(model.info or {})
    info["speed"] = dict(info.get("speed") or {}, **speed)
    return dataclasses.replace(model, info=info)


@pytest.fixture(scope="module")
def model():
    return with_speed(Model.load(None, "cpu"), fast_diameter=FAST, default="accurate")


@pytest.fixture(scope="module")
def pair(example_images_dir):
    return (read_image(example_images_dir / "images" / f"{FLUO}.png"),
            read_labels(example_images_dir / "labels" / f"{FLUO}.tif"))


@pytest.mark.parametrize("diameter, scale", [(10.0, 2.4), (20.0, 1.2), (30.0, 1.0),
                                             (40.0, 1.0), (50.0, 0.8)])
def test_a_working_range_rescales_only_nuclei_outside_it(diameter, scale):
    assert choose_scale(diameter, (24.0, 40.0), (512, 512)) == (pytest.approx(scale), False)
    # a single working diameter is the range of one size, as before
    assert choose_scale(diameter, 40.0, (512, 512))[0] == pytest.approx(40.0 / diameter)


def test_working_range_of_each_speed(model):
    assert working_range(model, "accurate") == (40.0, 40.0)
    assert working_range(model, "fast") == (FAST, 40.0)
    assert working_range(model, None) == (40.0, 40.0)  # the model's default
    plain = dataclasses.replace(model, info={})
    assert working_range(plain, "fast") == (40.0, 40.0)  # no fast_diameter: fast = accurate
    with pytest.raises(OptionError, match="speed must be one of accurate, fast"):
        working_range(model, "turbo")


def test_fast_works_on_a_smaller_image_with_the_same_rules(model, pair):
    """Fast enlarges 18 px nuclei to 28 px instead of 40 px; the post-processing areas and
    margins stay those of the 40 px scale; the score stays close to accurate's."""
    image, truth = pair
    fast = infer(model, image, DIAMETER, speed="fast")
    accurate = infer(model, image, DIAMETER, speed="accurate")
    assert fast.scale == pytest.approx(FAST / DIAMETER) and fast.speed == "fast"
    assert fast.reference_scale == pytest.approx(40.0 / DIAMETER)
    assert accurate.scale == accurate.reference_scale == pytest.approx(40.0 / DIAMETER)
    r_fast = segment_image(image, model=model, diameter=DIAMETER, speed="fast")
    r_acc = segment_image(image, model=model, diameter=DIAMETER, speed="accurate")
    assert r_fast.speed == "fast" and r_acc.speed == "accurate"
    dsb_fast, dsb_acc = score_image(truth, r_fast.labels).dsb, score_image(truth, r_acc.labels).dsb
    assert dsb_acc > 0.6 and dsb_fast > dsb_acc - 0.1, (dsb_fast, dsb_acc)
    assert abs(r_fast.count - r_acc.count) <= max(3, 0.15 * r_acc.count)


def test_the_model_default_speed_is_used_when_none_is_asked_for(model, pair):
    image, _ = pair
    fast_default = with_speed(model, default="fast")
    assert segment_image(image, model=fast_default, diameter=DIAMETER).speed == "fast"
    assert segment_image(image, model=fast_default, diameter=DIAMETER,
                         speed="accurate").scale == pytest.approx(40.0 / DIAMETER)


def test_speed_is_read_from_model_json_and_checked(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    info = json.loads((folder / "model.json").read_text())
    info["speed"] = {"fast_diameter": 24, "default": "fast"}
    (folder / "model.json").write_text(json.dumps(info))
    assert stored_speed(folder) == {"default": "fast", "fast_diameter": 24}
    loaded = Model.load(folder, "cpu")
    assert loaded.fast_diameter == 24.0 and loaded.default_speed == "fast"
    for bad, what in (({"fast_diameter": -3}, "fast_diameter"), ({"default": "turbo"}, "default"),
                      ("fast", "must be an object")):
        info["speed"] = bad
        (folder / "model.json").write_text(json.dumps(info))
        with pytest.raises(ModelFileError, match=what) as e:
            Model.load(folder, "cpu")
        assert "model.json" in str(e.value) and "\n" not in str(e.value)


def test_bad_speed_is_one_line(model, pair):
    with pytest.raises(OptionError, match=r"^speed must be one of accurate, fast \(got 'quick'\)$"):
        segment_image(pair[0], model=model, diameter=DIAMETER, speed="quick")


def test_shipped_model_states_its_speeds():
    """The shipped model.json holds the measured fast_diameter (bench/working_size.py) and a
    default speed."""
    speed = stored_speed(None)
    assert speed["default"] in ("accurate", "fast")
    assert speed["fast_diameter"] is not None and 20 <= speed["fast_diameter"] <= 40
    assert np.isfinite(speed["fast_diameter"])
