"""The inference path in its two halves (inference.infer, inference.postprocess), the Model
value and its bounded cache, and the refine levels (with the deprecated booleans)."""
import gc
import os
import pickle
import weakref

import numpy as np
import pytest
import torch

import nucleaizer_backend
from nucleaizer_backend import Model, estimate_size, segment_image
from nucleaizer_backend.errors import NucleaizerError
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.inference import (REFINE_LEVELS, NetworkOutputs, infer, postprocess,
                                          postprocess_params)
from nucleaizer_backend.models import io
from nucleaizer_backend.models.maskrcnn import MaskRCNNConfig, build_maskrcnn

FLUO = "fluo_0e5edb072788"
DIAMETER = 18.0  # px, about the image's true nucleus size
TINY_ARCH = dict(backbone_channels=(8, 8, 8, 8), fpn_channels=8, box_head_width=16,
                 mask_head_layers=(8,))


@pytest.fixture(scope="module")
def image(example_images_dir):
    return read_image(example_images_dir / "images" / f"{FLUO}.png")


@pytest.fixture(scope="module")
def model():
    return Model.load(None, "cpu")


@pytest.fixture(scope="module")
def outputs(model, image):
    """The networks' outputs at a lower confidence than the model's, as tune keeps them."""
    return infer(model, image, DIAMETER, confidence=0.3)


def test_outputs_hold_labels_scores_probability_and_scale(outputs, image):
    assert isinstance(outputs, NetworkOutputs)
    assert outputs.shape == image.shape[:2] and outputs.labels.max() == len(outputs.scores)
    assert (outputs.scores >= 0.3).all() and outputs.confidence == 0.3
    assert outputs.scale == pytest.approx(40.0 / DIAMETER) and outputs.diameter == DIAMETER
    assert outputs.size_estimate is None and not outputs.tta
    assert outputs.unet_probability.shape == outputs.shape
    assert outputs.mask_probability is None
    assert outputs.probability is outputs.unet_probability
    kept = pickle.loads(pickle.dumps(outputs))  # plain arrays: can be cached on disk
    np.testing.assert_array_equal(kept.labels, outputs.labels)
    assert kept.scale == outputs.scale


@pytest.mark.parametrize("level", REFINE_LEVELS)
def test_postprocess_of_outputs_is_segment_image(model, image, outputs, level):
    """Networks once at a low confidence, then post-processing at the model's: exactly the
    labels segment_image gives at each refine level."""
    params = postprocess_params(model)
    assert params.confidence > outputs.confidence
    labels, scores = postprocess(outputs, params, level)
    result = segment_image(image, model=model, diameter=DIAMETER, refine=level)
    np.testing.assert_array_equal(labels, result.labels)
    np.testing.assert_array_equal(scores, result.scores)
    assert result.refined == (level != "none")


def test_postprocess_refuses_what_was_not_detected(model, outputs):
    low = postprocess_params(model, confidence=0.1)
    with pytest.raises(NucleaizerError, match="lower confidence"):
        postprocess(outputs, low)
    with pytest.raises(NucleaizerError, match="refine"):
        postprocess(outputs, postprocess_params(model), "unet")
    with pytest.raises(NucleaizerError, match="mask"):
        postprocess(outputs, postprocess_params(model), mask=np.ones((3, 3), bool))


def test_merged_scores_under_the_confidence_are_kept(model):
    """TTA's merged scores are means over the versions (0 where one missed): a nucleus found
    by most versions may score under the confidence it was detected at, and stays."""
    labels = np.zeros((20, 20), np.uint16)
    labels[2:8, 2:8], labels[12:18, 12:18] = 1, 2
    out = NetworkOutputs(labels, np.array([0.9, 0.4], np.float32), 0.5, 10.0, 4.0, False,
                         tta=True)
    _, scores = postprocess(out, postprocess_params(model, confidence=0.5), "none")
    assert scores.tolist() == pytest.approx([0.9, 0.4])
    _, scores = postprocess(out, postprocess_params(model, confidence=0.6), "none")
    assert scores.tolist() == pytest.approx([0.9])


def test_without_unet_no_probability(model, image):
    out = infer(model, image, DIAMETER, unet=False, mask_probability=True)
    assert out.unet_probability is None
    assert out.probability is out.mask_probability and out.mask_probability.shape == out.shape


def test_deprecated_booleans_map_to_levels(model, image):
    def labels(**kwargs):
        return segment_image(image, model=model, diameter=DIAMETER, **kwargs).labels

    for old, level in (({"refine": False}, "none"), ({"use_unet": False}, "rules"),
                       ({"refine": True}, "full")):
        with pytest.warns(DeprecationWarning, match="refine="):
            got = labels(**old)
        np.testing.assert_array_equal(got, labels(refine=level))
    with pytest.raises(NucleaizerError, match="refine"):
        labels(refine="everything")


def test_model_value_segments_and_estimates(model, image):
    assert isinstance(model, Model) and model.device == torch.device("cpu")
    assert isinstance(nucleaizer_backend.load_model(None, "cpu"), Model)
    assert Model.load(None, "cpu").main is model.main  # one copy of the networks
    result = model.segment(image, diameter=DIAMETER)
    np.testing.assert_array_equal(
        result.labels, segment_image(image, diameter=DIAMETER, device="cpu").labels)
    assert model.estimate_size(image).median_diameter == \
        estimate_size(image, device="cpu").median_diameter


def tiny_model_folder(folder):
    torch.manual_seed(0)
    net = build_maskrcnn(MaskRCNNConfig.from_dict(TINY_ARCH))
    io.save_network(net, folder / io.MAIN_FILE, {"kind": "main", "diameter": 40.0})
    return folder


def gone(ref):
    gc.collect()
    return ref() is None


def test_cache_reloads_changed_files_and_lets_old_networks_go(tmp_path):
    folder = tiny_model_folder(tmp_path / "adapted")
    first = Model.load(folder, "cpu")
    assert Model.load(folder, "cpu").main is first.main
    old = weakref.ref(first.main)
    stat = (folder / io.MAIN_FILE).stat()  # re-adapted into the same folder
    os.utime(folder / io.MAIN_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = Model.load(folder, "cpu")
    assert second.main is not first.main
    del first
    assert gone(old)
    assert Model.load(folder, "cpu").main is second.main


def test_cache_keeps_a_few_models(tmp_path):
    folders = [tiny_model_folder(tmp_path / f"m{i}") for i in range(io.MAX_CACHED_MODELS + 1)]
    refs = [weakref.ref(Model.load(f, "cpu").main) for f in folders]
    assert gone(refs[0])  # the least recently used
    assert not any(gone(r) for r in refs[1:])
