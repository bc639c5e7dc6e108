"""The Model value and its bounded cache."""
import gc
import os
import weakref

import numpy as np
import pytest
import torch

import nucleaizer_backend
from nucleaizer_backend import Model, estimate_size, segment_image
from nucleaizer_backend.imageio_utils import read_image
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
