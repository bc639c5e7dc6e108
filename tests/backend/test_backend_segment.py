"""Output geometry of the inference path (docs/METHOD.md section 2.7): labels have exactly
the input's (H, W), an integer dtype and 0 as background, for any size, aspect ratio and
layout."""
import numpy as np
import pytest

from nucleaizer_backend import SegmentationResult, segment, segment_image
from nucleaizer_backend.errors import InputImageError
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.geometry import SCALE_RANGE
from nucleaizer_backend.size import MIN_NUCLEI
from shapes import disk


@pytest.fixture(scope="module")
def source(example_images_dir):
    """A real fluorescence image (256 x 256 RGB uint8), nuclei about 18 px."""
    return read_image(example_images_dir / "images" / "fluo_0e5edb072788.png")


def patch(source, h, w, y=60, x=40):
    """An (h, w) crop of the source, tiled periodically when larger than the source."""
    reps = (int(np.ceil((y + h) / source.shape[0])), int(np.ceil((x + w) / source.shape[1])), 1)
    return np.tile(source, reps)[y:y + h, x:x + w]


def check_labels(result, shape):
    labels = result.labels
    assert labels.shape == shape
    assert np.issubdtype(labels.dtype, np.integer)
    assert labels.min() >= 0
    ids = np.unique(labels)
    ids = ids[ids > 0]
    # ids 1..N, one per detection score
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert result.count == len(result.scores) == len(ids)
    assert np.all(np.diff(result.scores) <= 0)  # id 1 = most confident
    if labels.size > 1 and len(ids):
        assert (labels == 0).any()


@pytest.mark.parametrize("shape,diameter", [
    ((37, 53), 13.0),  # odd size, upscaled about 3x
    ((1, 1), 20.0),
    ((3, 500), 20.0),
    ((500, 3), 20.0),
    ((5, 5), 20.0),
    ((129, 257), 25.0),
    ((4, 2000), 40.0),  # very wide: several tiles along x at working scale 1
])
def test_labels_have_input_geometry(source, shape, diameter):
    img = patch(source, *shape)
    result = segment_image(img, diameter=diameter, device="cpu")
    assert isinstance(result, SegmentationResult)
    check_labels(result, shape)
    assert result.diameter == diameter
    assert result.scale == pytest.approx(40.0 / diameter)
    assert not result.scale_clamped


def test_real_crop_finds_nuclei_in_place(source):
    """Not just the shape: on an odd-sized real crop the nuclei land where they are."""
    img = patch(source, 129, 257, y=0, x=0)
    result = segment_image(img, diameter=18.0, device="cpu")
    check_labels(result, (129, 257))
    assert result.count > 0
    gray = img.mean(-1)
    assert gray[result.labels > 0].mean() > gray[result.labels == 0].mean()


@pytest.mark.parametrize("layout", ["gray", "rgb", "chw", "gray_u16", "float_unit"])
def test_layouts_give_hw_labels(source, layout):
    rgb = patch(source, 45, 67)
    img = {
        "gray": rgb.mean(-1),
        "rgb": rgb,
        "chw": np.moveaxis(rgb, -1, 0),
        "gray_u16": (rgb[..., 0].astype(np.uint16) * 257),
        "float_unit": rgb.astype(np.float32) / 255.0,
    }[layout]
    before = img.copy()
    labels = segment(img, diameter=18.0, device="cpu")
    assert labels.shape == (45, 67)
    assert np.issubdtype(labels.dtype, np.integer)
    np.testing.assert_array_equal(img, before)  # the caller's image is not changed


def test_segment_equals_segment_image_labels(source):
    img = patch(source, 40, 60)
    a = segment(img, diameter=18.0, device="cpu")
    b = segment_image(img, diameter=18.0, device="cpu").labels
    np.testing.assert_array_equal(a, b)


def test_blank_image_gives_empty_labels():
    for img in (np.zeros((30, 40), np.uint8), np.full((30, 40, 3), 0.7, np.float32)):
        result = segment_image(img, diameter=20.0, device="cpu")
        check_labels(result, (30, 40))
        assert result.count == 0 and result.labels.max() == 0


@pytest.mark.parametrize("diameter,expected_scale", [(4000.0, SCALE_RANGE[0]),
                                                      (0.5, SCALE_RANGE[1])])
def test_extreme_diameter_is_clamped(source, diameter, expected_scale):
    img = patch(source, 16, 24)
    result = segment_image(img, diameter=diameter, device="cpu")
    check_labels(result, (16, 24))
    assert result.scale == pytest.approx(expected_scale)
    assert result.scale_clamped


def test_mask_restricts_objects(source):
    img = patch(source, 100, 120, y=0, x=0)
    mask = np.zeros((100, 120), bool)
    mask[:, :60] = True
    full = segment_image(img, diameter=18.0, device="cpu")
    result = segment_image(img, diameter=18.0, device="cpu", mask=mask)
    check_labels(result, (100, 120))
    assert result.labels[~mask].max() == 0
    assert 0 < result.count <= full.count
    with pytest.raises(InputImageError, match="mask"):
        segment_image(img, diameter=18.0, device="cpu", mask=np.ones((10, 10), bool))


def test_probability_map_has_input_geometry(source):
    img = patch(source, 37, 53)
    result = segment_image(img, diameter=18.0, device="cpu", return_probability=True)
    assert result.probability.shape == (37, 53)
    assert result.probability.dtype == np.float32
    assert 0.0 <= result.probability.min() and result.probability.max() <= 1.0
    # every labelled pixel had mask probability above 0.5
    assert (result.probability[result.labels > 0] > 0.5).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 500), (37, 53), (129, 70)])
def test_automatic_size_keeps_geometry(source, shape):
    img = patch(source, *shape)
    result = segment_image(img, device="cpu")  # diameter estimated by preseg
    check_labels(result, shape)
    est = result.size_estimate
    assert est is not None and result.diameter == est.median_diameter > 0
    if not est.reliable:
        assert est.count < MIN_NUCLEI


def test_size_is_measured_on_single_looking_nuclei():
    """Two touching nuclei found as one object (concave, solidity < 0.9) are left out of the
    size; every object counts when fewer than MIN_NUCLEI convex ones are left."""
    from nucleaizer_backend.size import SINGLE_SOLIDITY, single_nucleus_diameters

    shape = (60, 200)
    labels = np.zeros(shape, np.int32)
    for i in range(MIN_NUCLEI):
        labels[disk(shape, 15, 15 + 30 * i, 6)] = i + 1  # r 6 disks
    pair = disk(shape, 45, 40, 8) | disk(shape, 45, 56, 8)  # two r 8 disks, touching
    labels[pair] = MIN_NUCLEI + 1
    d = single_nucleus_diameters(labels)
    disk_d = np.sqrt(4 * disk(shape, 15, 15, 6).sum() / np.pi)
    assert len(d) == MIN_NUCLEI and d == pytest.approx(np.full(MIN_NUCLEI, disk_d))
    from skimage.measure import regionprops

    assert regionprops((labels == MIN_NUCLEI + 1).astype(int))[0].solidity < SINGLE_SOLIDITY
    labels[labels == 1] = 0  # 4 convex ones left: all objects are measured
    assert len(single_nucleus_diameters(labels)) == MIN_NUCLEI
    assert len(single_nucleus_diameters(np.zeros((5, 5), np.int32))) == 0


def test_size_estimate_dict_round_trip():
    """to_dict is JSON-serialisable (CellProfiler hands it to analysis workers) and
    from_dict gives the same estimate back, labels left out; unreliable (NaN spread) too."""
    import json

    from nucleaizer_backend import SizeEstimate

    for diameters in ([12.5, 14.0, 15.25, 16.0, 18.0, 30.0], [11.0], []):
        est = SizeEstimate.from_diameters(np.asarray(diameters, np.float32))
        est.labels = np.ones((4, 4), np.int32)
        d = json.loads(json.dumps(est.to_dict()))
        back = SizeEstimate.from_dict(d)
        assert back.labels is None and back.diameters.dtype == float
        np.testing.assert_array_equal(back.diameters, est.diameters)
        assert (back.median_diameter, back.count, back.reliable) == (
            est.median_diameter, est.count, est.reliable)
        assert back.spread == pytest.approx(est.spread, nan_ok=True)
        assert SizeEstimate.pooled([back, est]).count == 2 * est.count


def test_stage_times_and_no_size_estimate_when_the_diameter_is_given(cpu_model, example_images_dir):
    from nucleaizer_backend.imageio_utils import read_image

    image = read_image(example_images_dir / "images" / "fluo_0e5edb072788.png")
    given = segment_image(image, model=cpu_model, diameter=18)
    estimated = segment_image(image, model=cpu_model)
    assert set(given.stage_seconds) == {"normalise", "detect", "unet", "postprocess", "style"}
    assert set(estimated.stage_seconds) == set(given.stage_seconds) | {"size"}
    for r in (given, estimated):
        assert all(v >= 0 for v in r.stage_seconds.values())
        assert sum(r.stage_seconds.values()) <= r.seconds
