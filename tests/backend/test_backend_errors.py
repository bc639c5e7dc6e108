"""Bad inputs give clear one-line errors; model files load safely (no pickle, no code run)."""
import json
import math

import numpy as np
import pytest
import tifffile
import torch

from nucleaizer_backend import segment_image
from nucleaizer_backend.errors import InputImageError, ModelFileError, NucleaizerError
from nucleaizer_backend.imageio_utils import list_images, read_image
from nucleaizer_backend.models.io import (
    DEFAULT_MODEL_DIR,
    load_model,
    load_network,
    read_network_meta,
    save_network,
)
from nucleaizer_backend.models.maskrcnn import MaskRCNNConfig, build_maskrcnn

SMALL = np.random.default_rng(0).integers(0, 255, (24, 24), dtype=np.uint8)
# a small architecture: saving and loading it is fast
TINY_ARCH = dict(stem_channels=8, stage_channels=(8, 8, 8, 8), stage_blocks=(1, 1, 1, 1),
                 fpn_channels=8, box_head_width=16, mask_head_layers=(8,))


def one_line(msg):
    return "\n" not in str(msg) and len(str(msg)) < 400


# ---------------------------------------------------------------- images

@pytest.mark.parametrize("content", [b"this is not an image\nsecond line\n", b"",
                                     b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
                         ids=["text", "empty", "truncated_png"])
def test_not_an_image_file(tmp_path, content):
    p = tmp_path / "notes.png"
    p.write_bytes(content)
    with pytest.raises(InputImageError) as e:
        read_image(p)
    assert str(p) in str(e.value) and "not a readable image" in str(e.value)
    assert one_line(e.value)


def test_truncated_real_image(tmp_path, example_images_dir):
    data = (example_images_dir / "images" / "fluo_0e5edb072788.png").read_bytes()
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputImageError) as e:
        read_image(p)
    assert str(p) in str(e.value) and one_line(e.value)


def test_corrupt_tiff(tmp_path):
    p = tmp_path / "bad.tif"
    p.write_bytes(b"II*\x00" + b"\xff" * 64)
    with pytest.raises(InputImageError, match="bad.tif"):
        read_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="no such file"):
        read_image(tmp_path / "nothing.png")
    with pytest.raises(InputImageError, match="no such file or folder"):
        list_images([tmp_path / "nothing"])


def test_3d_stack_tif(tmp_path):
    p = tmp_path / "stack.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (10, 64, 64), dtype=np.uint8))
    stack = read_image(p)
    assert stack.shape == (10, 64, 64)
    with pytest.raises(InputImageError, match="3D stack") as e:
        segment_image(stack, diameter=20, device="cpu")
    assert one_line(e.value)


@pytest.mark.parametrize("diameter", [-5.0, 0.0, math.nan])
def test_bad_diameter(diameter):
    with pytest.raises(InputImageError, match="diameter") as e:
        segment_image(SMALL, diameter=diameter, device="cpu")
    assert one_line(e.value)


def test_unknown_device():
    with pytest.raises(NucleaizerError, match="device"):
        segment_image(SMALL, diameter=20, device="tpu")


# ---------------------------------------------------------------- model files

def test_missing_model_path(tmp_path):
    p = tmp_path / "no_model_here"
    for call in (lambda: load_model(p), lambda: segment_image(SMALL, model=p, diameter=20,
                                                              device="cpu")):
        with pytest.raises(ModelFileError) as e:
            call()
        assert str(p) in str(e.value) and one_line(e.value)


def test_folder_without_main_network(tmp_path):
    with pytest.raises(ModelFileError, match="main.safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"garbage" * 100, b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"],
                         ids=["garbage", "empty", "bad_header"])
def test_corrupt_model_file(tmp_path, content):
    p = tmp_path / "model.safetensors"
    p.write_bytes(content)
    with pytest.raises(ModelFileError) as e:
        load_model(p)
    assert str(p) in str(e.value) and one_line(e.value)


def test_safetensors_without_our_metadata(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(p))
    with pytest.raises(ModelFileError, match="not a nucleAIzer network"):
        load_model(p)


def test_weights_that_do_not_fit_their_architecture(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "wrong.safetensors"
    meta = {"kind": "main", "diameter": 40.0, "architecture": MaskRCNNConfig().to_dict()}
    save_file({"w": torch.zeros(3)}, str(p), metadata={"nucleaizer": json.dumps(meta)})
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(p)


def test_corrupt_model_description(tmp_path):
    net = build_maskrcnn(MaskRCNNConfig.from_dict(TINY_ARCH))
    save_network(net, tmp_path / "main.safetensors", {"kind": "main", "diameter": 40.0})
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json"):
        load_model(tmp_path)


def test_saved_network_round_trip(tmp_path):
    """A network file written by save_network loads back (fp16 weights) with its metadata,
    as a single file (shipped preseg used) and as a folder; and it segments."""
    torch.manual_seed(0)
    net = build_maskrcnn(MaskRCNNConfig.from_dict(TINY_ARCH))
    path = tmp_path / "main.safetensors"
    save_network(net, path, {"kind": "main", "diameter": 32.0, "note": "test"})
    meta = read_network_meta(path)
    assert meta["note"] == "test" and meta["architecture"]["fpn_channels"] == 8
    loaded, meta2 = load_network(path)
    assert meta2 == meta and not loaded.training
    ref = net.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == ref[k].dtype
        torch.testing.assert_close(v, ref[k].half().to(v.dtype), rtol=0, atol=0)
    bundle = load_model(path)
    assert bundle.working_diameter == 32.0
    assert bundle.preseg_meta == read_network_meta(DEFAULT_MODEL_DIR / "preseg.safetensors")
    result = segment_image(SMALL, model=tmp_path, diameter=32.0, device="cpu")
    assert result.labels.shape == SMALL.shape


class CodeOnLoad:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bomb(path, marker):
    torch.save({"model": CodeOnLoad(marker)}, path)
    return path


def test_pickle_bomb_is_live(tmp_path):
    """Check of the test's own payload: unpickling the file's data record runs its code
    (what an unrestricted torch loader would do; pickle is called directly so that the
    project holds no unsafe model loading at all)."""
    import pickle
    import zipfile

    marker = tmp_path / "ran"
    f = pickle_bomb(tmp_path / "bomb.pt", marker)
    with zipfile.ZipFile(f) as z:
        record = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        pickle.loads(z.read(record))
    assert marker.exists()


@pytest.mark.parametrize("as_folder", [False, True])
def test_pickle_model_file_is_refused_without_running_code(tmp_path, as_folder):
    marker = tmp_path / "code_ran"
    target = tmp_path / "model"
    target.mkdir()
    name = "main.safetensors" if as_folder else "evil.safetensors"
    f = pickle_bomb(target / name, marker)
    with pytest.raises(ModelFileError) as e:
        load_model(target if as_folder else f)
    assert str(f) in str(e.value)
    with pytest.raises(ModelFileError):
        segment_image(SMALL, model=target if as_folder else f, diameter=20, device="cpu")
    assert not marker.exists()


def test_pickle_preseg_file_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    net = build_maskrcnn(MaskRCNNConfig.from_dict(TINY_ARCH))
    save_network(net, tmp_path / "main.safetensors", {"kind": "main", "diameter": 40.0})
    pickle_bomb(tmp_path / "preseg.safetensors", marker)
    with pytest.raises(ModelFileError, match="preseg.safetensors"):
        load_model(tmp_path)
    assert not marker.exists()
