"""The style distance (style.distance): the shipped reference, fitting, storage, adaptation."""
import dataclasses

import numpy as np
import pytest

from nucleaizer_backend import segment_image
from nucleaizer_backend.errors import ModelFileError
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.style.distance import (FEATURES, StyleReference, extend_reference,
                                               fit_reference, image_style_features,
                                               model_reference, reference_from_folder,
                                               style_distance)


def _image(example_images_dir, name):
    return read_image(example_images_dir / "images" / f"{name}.png")


def test_shipped_reference_flags_the_unfamiliar_bundled_image(cpu_model, example_index,
                                                              example_images_dir):
    """Of the bundled val images, only the H&E one whose look is farthest from the H&E train
    images lies beyond the shipped threshold (on all val: BENCHMARKS.md "Style distance")."""
    ref = model_reference(cpu_model)
    assert ref is not None and ref.images == 482 and 2.0 < ref.threshold < 4.0
    for name in (row["id"] for row in example_index):
        d, threshold = style_distance(cpu_model, _image(example_images_dir, name))
        assert threshold == ref.threshold
        assert (d > threshold) == (name == "he_4d14a3629b6a"), (name, d)


def test_segmentation_result_carries_the_distance(cpu_model, example_images_dir):
    image = _image(example_images_dir, "fluo_0e5edb072788")
    r = segment_image(image, model=cpu_model, diameter=18)
    assert r.style_distance == pytest.approx(
        model_reference(cpu_model).distance(image_style_features(image)))
    assert r.style_threshold == model_reference(cpu_model).threshold
    assert not r.unfamiliar_style


def test_a_model_without_reference_measures_nothing(cpu_model, example_images_dir):
    info = {k: v for k, v in cpu_model.info.items() if k != "style_reference"}
    model = dataclasses.replace(cpu_model, info=info)
    assert style_distance(model, _image(example_images_dir, "he_4d14a3629b6a")) == (None, None)
    r = segment_image(_image(example_images_dir, "he_4d14a3629b6a"), model=model, diameter=18)
    assert r.style_distance is None and not r.unfamiliar_style


def test_features_do_not_depend_on_layout_or_dtype_scale(example_images_dir):
    rgb = _image(example_images_dir, "he_420f43d21dba")
    f = image_style_features(rgb)
    assert f.shape == (len(FEATURES),) and np.isfinite(f).all()
    np.testing.assert_allclose(image_style_features(np.moveaxis(rgb, -1, 0)), f)
    assert np.isfinite(image_style_features(np.full((3, 5), np.nan))).all()


def _blobs(rng, centre, n):
    return rng.normal(centre, 1.0, (n, len(FEATURES)))


def test_threshold_separates_an_untrained_style():
    rng = np.random.default_rng(0)
    ref = fit_reference(_blobs(rng, 0.0, 300))
    same, other = _blobs(rng, 0.0, 200), _blobs(rng, 3.0, 200)
    assert np.mean(ref.distance(same) > ref.threshold) < 0.1
    assert np.mean(ref.distance(other) > ref.threshold) > 0.95
    adapted = extend_reference(ref, _blobs(rng, 3.0, 30))
    assert np.mean(adapted.distance(other) > adapted.threshold) < 0.1
    assert adapted.threshold == ref.threshold and adapted.images == 330


def test_reference_round_trip_and_malformed_entries():
    rng = np.random.default_rng(1)
    ref = fit_reference(_blobs(rng, 0.0, 60), "60 images")
    back = StyleReference.from_dict(ref.to_dict())
    x = _blobs(rng, 0.5, 5)
    np.testing.assert_allclose(back.distance(x), ref.distance(x), rtol=1e-4)
    assert back.made_from == "60 images"
    for broken in ({**ref.to_dict(), "features": FEATURES[:-1]},
                   {k: v for k, v in ref.to_dict().items() if k != "threshold"},
                   {**ref.to_dict(), "mean": [0.0]}):
        with pytest.raises(ModelFileError, match="style_reference"):
            StyleReference.from_dict(broken)


def test_reference_from_a_training_folder(example_images_dir):
    ref = reference_from_folder(example_images_dir)
    assert ref.images == 5 and ref.centres.shape[1] == len(FEATURES)
    assert np.isfinite(ref.threshold)
