"""Smoke test of the shipped default model on the bundled example images.

The accuracy floors below sit a little under what the shipped model scores, so that a
regression fails; raise them when a better model is shipped. The structural assertions
(geometry, nuclei found in every image, sizes, metadata) hold for any model.
"""
import numpy as np
import pytest
import torch

from nucleaizer_backend import estimate_size, segment_image
from nucleaizer_backend.evaluate import score_image
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.models.io import DEFAULT_MODEL_DIR, load_model
from nucleaizer_backend.size import single_nucleus_diameters

# Mean DSB score over the 5 bundled images, segmented at their true nucleus diameter.
SMOKE_DSB_FLOOR = 0.56  # the shipped model: 0.582 (main-s1 weights: 0.572)
# The same with the diameter estimated automatically by preseg.
SMOKE_AUTO_DSB_FLOOR = 0.56  # the shipped model: 0.582 (main-s1 weights: 0.550)
# An estimated nucleus diameter counts as right when within this factor of the true one ...
SIZE_TOLERANCE = 1.25  # the shipped model: ratios 0.90, 1.01, 1.01 (fluo), 0.92, 1.25 (he_4d14)
# ... on at least this fraction of the images.
SIZE_MIN_FRACTION = 0.8


def load_examples(example_images_dir, example_index):
    out = []
    for row in example_index:
        img = read_image(example_images_dir / "images" / f"{row['id']}.png")
        truth = read_image(example_images_dir / "labels" / f"{row['id']}.tif")
        out.append((row["id"], img, truth, float(row["median_diameter_px"])))
    return out


@pytest.fixture(scope="module")
def examples(example_images_dir, example_index):
    return load_examples(example_images_dir, example_index)


@pytest.fixture(scope="module")
def known_size_results(examples):
    return {name: segment_image(img, diameter=d, device="cpu")
            for name, img, _, d in examples}


@pytest.fixture(scope="module")
def auto_size_results(examples):
    return {name: segment_image(img, device="cpu") for name, img, _, _ in examples}


def test_bundled_examples_are_complete(examples, example_index):
    assert len(examples) == 5
    for (name, img, truth, d), row in zip(examples, example_index):
        assert img.shape[:2] == truth.shape == (int(row["height"]), int(row["width"])), name
        assert truth.dtype == np.uint16
        assert len(np.unique(truth)) - 1 == int(row["nuclei"]), name
        assert d > 0
    assert {r["style"] for r in example_index} == {"fluo", "he"}


def test_default_model_loads_with_sane_settings():
    bundle = load_model(None, torch.device("cpu"))
    assert bundle.path == DEFAULT_MODEL_DIR.resolve()
    assert bundle.working_diameter == pytest.approx(40.0)  # docs/METHOD.md section 2.3
    for net in (bundle.main, bundle.preseg):
        assert not net.training
        # dense images hold up to about 400 nuclei (torchvision's default of 100 is too low)
        assert net.roi_heads.detections_per_img >= 400
    assert load_model(None, torch.device("cpu")) is bundle  # cached
    assert bundle.info.get("main", {}).get("file") == "main.safetensors"


def test_thumbnail_first_does_not_break_later_images(examples):
    """A fresh network whose first input is a few px (a thumbnail at the working scale)
    detects on later images exactly what a network seeing them first detects: torchvision's
    RoI pooler would otherwise keep level scales inferred from that first input."""
    from nucleaizer_backend.models.io import MAIN_FILE, load_network
    from nucleaizer_backend.models.maskrcnn import predict_raw

    _, img, _, _ = examples[0]
    x = torch.from_numpy(img[:128, :128].transpose(2, 0, 1) / 255.0).float()
    first = load_network(DEFAULT_MODEL_DIR / MAIN_FILE)[0]
    reference = predict_raw(first, [x])[0]
    assert len(reference["scores"]) > 5
    second = load_network(DEFAULT_MODEL_DIR / MAIN_FILE)[0]
    predict_raw(second, [x[:, :2, :3]])
    after = predict_raw(second, [x])[0]
    torch.testing.assert_close(after["boxes"], reference["boxes"])
    torch.testing.assert_close(after["scores"], reference["scores"])


def check_structure(results, examples):
    for name, img, truth, _ in examples:
        r = results[name]
        assert r.labels.shape == truth.shape, name
        assert np.issubdtype(r.labels.dtype, np.integer), name
        assert r.count > 0, f"{name}: no nuclei found"
        assert r.labels.max() == r.count, name
        assert r.seconds > 0


def test_known_diameter(known_size_results, examples):
    check_structure(known_size_results, examples)
    scores = {}
    for name, _, truth, d in examples:
        r = known_size_results[name]
        assert r.diameter == d and r.size_estimate is None
        assert r.scale == pytest.approx(40.0 / d)
        scores[name] = score_image(truth, r.labels).dsb
    mean = float(np.mean(list(scores.values())))
    assert mean >= SMOKE_DSB_FLOOR, f"mean DSB {mean:.3f}: {scores}"


def test_automatic_size(auto_size_results, examples):
    check_structure(auto_size_results, examples)
    ratios, scores = {}, {}
    for name, _, truth, d in examples:
        r = auto_size_results[name]
        est = r.size_estimate
        assert est is not None and est.median_diameter > 0
        assert r.diameter == est.median_diameter
        assert est.count == len(est.diameters)
        ratios[name] = est.median_diameter / d
        scores[name] = score_image(truth, r.labels).dsb
    good = [n for n, q in ratios.items() if 1 / SIZE_TOLERANCE <= q <= SIZE_TOLERANCE]
    assert len(good) >= SIZE_MIN_FRACTION * len(examples), f"estimated/true diameter: {ratios}"
    mean = float(np.mean(list(scores.values())))
    assert mean >= SMOKE_AUTO_DSB_FLOOR, f"mean DSB {mean:.3f}: {scores}"


def test_estimate_size_matches_segment_image(auto_size_results, examples):
    """The public estimate_size gives the estimate segment_image used, with labels on request."""
    name, img, truth, _ = examples[0]
    est = estimate_size(img, device="cpu", return_labels=True)
    auto = auto_size_results[name].size_estimate
    assert est.median_diameter == pytest.approx(auto.median_diameter)
    assert est.count == auto.count
    assert est.labels.shape == truth.shape
    # labels hold every nucleus found; the estimate measured the single-looking ones
    assert est.count == len(single_nucleus_diameters(est.labels)) <= est.labels.max()
    assert est.median_diameter == pytest.approx(np.median(single_nucleus_diameters(est.labels)))


def test_gpu_check_is_an_answer_not_a_crash():
    import torch

    from nucleaizer_backend.device import _test_image, check_gpu
    from nucleaizer_backend.segment import segment_image

    report = check_gpu()
    assert report.ok == torch.cuda.is_available()
    if report.ok:
        assert report.device and report.seconds > 0 and "(16 nuclei)" in report.message
    else:
        assert report.message.startswith("No GPU") and "CPU" in report.message
    # the test image is one the shipped model segments exactly (16 disks of 20 px)
    assert segment_image(_test_image(), diameter=20, device="cpu").count == 16
