"""Input normalisation (docs/METHOD.md section 2.1): any 2D image -> float32 (H, W, 3) in
[0, 1], nuclei bright."""
import numpy as np
import pytest

from nucleaizer_backend.errors import InputImageError
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.preprocess import normalize_image, to_hwc

H, W = 48, 64


def disc_mask(h=H, w=W, centres=((12, 14), (30, 40), (20, 52)), radius=6):
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), bool)
    for cy, cx in centres:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    return m


DISCS = disc_mask()


def fluo_base(seed=0):
    """Float image in [0, 1]: dim noisy background, bright discs (bright-on-dark nuclei)."""
    rng = np.random.default_rng(seed)
    img = 0.1 + 0.05 * rng.random((H, W))
    img[DISCS] = 0.8 + 0.1 * rng.random(DISCS.sum())
    return img


def check_output(out, shape=(H, W)):
    assert out.dtype == np.float32
    assert out.shape == shape + (3,)
    assert np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


DTYPES = {
    "uint8": lambda b: np.round(b * 255).astype(np.uint8),
    "uint16": lambda b: np.round(b * 65535).astype(np.uint16),
    "int32": lambda b: np.round(b * 2_000_000 - 1_000_000).astype(np.int32),  # negatives too
    "float32_unit": lambda b: b.astype(np.float32),
    "float64_large": lambda b: b * 1e9 - 5e8,
    "bool": lambda b: b > 0.5,
}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_gives_unit_float_rgb_with_bright_nuclei(dtype):
    img = DTYPES[dtype](fluo_base())
    out = normalize_image(img)
    check_output(out)
    gray = out.mean(axis=-1)
    assert gray[DISCS].mean() > 0.8
    assert gray[~DISCS].mean() < 0.2
    assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 0], out[..., 2])


def test_normalisation_ignores_dtype_range_and_offset():
    """The robust stretch makes the result independent of the intensity unit."""
    base = fluo_base()
    a = normalize_image(np.round(base * 255).astype(np.uint8))
    b = normalize_image(np.round(base * 255).astype(np.uint16) * 257)
    c = normalize_image(np.round(base * 255).astype(np.float64) * 3.5 + 1000.0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)


def rgb_base():
    """Colour image whose channels differ, nuclei bright, background dark."""
    g = fluo_base()
    return np.stack([g, 0.5 * g, 0.25 + 0.5 * g], axis=-1)


@pytest.mark.parametrize("layout", ["HW", "HW1", "1HW", "HW3", "HW4", "3HW", "4HW", "2HW",
                                    "HW2", "1HW3"])
def test_layouts(layout):
    g = fluo_base()
    rgb = rgb_base()
    two = np.stack([g, 0.5 * g], axis=-1)
    alpha = np.random.default_rng(1).random((H, W))  # garbage that must be dropped
    cases = {
        "HW": (g, np.repeat(g[..., None], 3, -1)),
        "HW1": (g[..., None], np.repeat(g[..., None], 3, -1)),
        "1HW": (g[None], np.repeat(g[..., None], 3, -1)),
        "HW3": (rgb, rgb),
        "HW4": (np.concatenate([rgb, alpha[..., None]], -1), rgb),
        "3HW": (np.moveaxis(rgb, -1, 0), rgb),
        "4HW": (np.moveaxis(np.concatenate([rgb, alpha[..., None]], -1), -1, 0), rgb),
        "2HW": (np.moveaxis(two, -1, 0), np.repeat(two.mean(-1, keepdims=True), 3, -1)),
        "HW2": (two, np.repeat(two.mean(-1, keepdims=True), 3, -1)),
        "1HW3": (rgb[None], rgb),  # singleton leading axis (e.g. a one-plane stack) squeezed
    }
    img, expected_hwc = cases[layout]
    hwc = to_hwc(img)
    assert hwc.dtype == np.float32 and hwc.shape == (H, W, 3)
    np.testing.assert_allclose(hwc, expected_hwc, rtol=1e-6, atol=1e-6)
    out = normalize_image(img)
    check_output(out)
    np.testing.assert_allclose(out, normalize_image(expected_hwc), atol=1e-6)


def test_colour_ratios_kept():
    """All channels are stretched together (not per channel), so colour is kept."""
    out = normalize_image(rgb_base())
    d = out[DISCS].mean(axis=0)
    assert d[0] > d[2] > d[1]


def test_nan_and_inf_are_handled():
    img = fluo_base()
    img[0, 0], img[1, 1], img[2, 2] = np.nan, np.inf, -np.inf
    img[DISCS.nonzero()[0][0], DISCS.nonzero()[1][0]] = np.nan
    out = normalize_image(img)
    check_output(out)
    gray = out.mean(-1)
    ok = np.isfinite(img)
    assert gray[DISCS & ok].mean() > 0.8 and gray[~DISCS & ok].mean() < 0.2
    assert gray[1, 1] == 1.0  # +inf is saturation: the brightest value, not background
    assert gray[2, 2] == 0.0  # -inf is the darkest


@pytest.mark.parametrize("img", [
    np.full((H, W), np.nan),
    np.full((H, W, 3), np.inf, np.float32),
    np.zeros((H, W), np.uint8),
    np.full((H, W), 7, np.uint16),
    np.full((H, W, 3), 0.5, np.float32),
    np.full((3, H, W), -3.0),
    np.ones((H, W), bool),
], ids=["all_nan", "all_inf", "zeros_u8", "const_u16", "const_rgb", "const_chw", "all_true"])
def test_constant_image_gives_zeros(img):
    out = normalize_image(img)
    check_output(out)
    assert not out.any()


def test_dark_nuclei_on_bright_background_are_inverted():
    """Brightfield-like: bright background, dark discs -> discs end brighter than background."""
    rng = np.random.default_rng(2)
    img = 200 + 10 * rng.random((H, W))
    img[DISCS] = 50 + 10 * rng.random(DISCS.sum())
    out = normalize_image(img.astype(np.uint8))
    check_output(out)
    gray = out.mean(-1)
    assert gray[DISCS].mean() > gray[~DISCS].mean() + 0.5


def test_he_like_colour_image_is_inverted():
    """H&E-like: pink bright background, purple dark nuclei."""
    img = np.empty((H, W, 3), np.uint8)
    img[...] = (235, 200, 220)
    img[DISCS] = (90, 40, 130)
    gray = normalize_image(img).mean(-1)
    assert gray[DISCS].min() > gray[~DISCS].max()


def test_bright_nuclei_on_dark_background_not_inverted():
    gray = normalize_image(fluo_base()).mean(-1)
    assert gray[DISCS].mean() > gray[~DISCS].mean() + 0.5


@pytest.mark.parametrize("style", ["fluo", "he"])
def test_bundled_images_nuclei_end_bright(style, example_images_dir, example_index):
    """On the real bundled images of both styles, annotated nuclei are brighter than the
    background after normalisation (H&E is inverted, fluorescence is not)."""
    for row in example_index:
        if row["style"] != style:
            continue
        img = read_image(example_images_dir / "images" / f"{row['id']}.png")
        labels = read_image(example_images_dir / "labels" / f"{row['id']}.tif")
        gray = normalize_image(img).mean(-1)
        assert gray.shape == labels.shape
        assert gray[labels > 0].mean() > gray[labels == 0].mean() + 0.1, row["id"]


@pytest.mark.parametrize("shape", [(10, 64, 64), (64, 64, 10), (5, 32, 32)])
def test_3d_stack_is_refused_clearly(shape):
    with pytest.raises(InputImageError, match=r"3D stack") as e:
        normalize_image(np.zeros(shape, np.uint8))
    assert str(shape) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (4, 10, 32, 32, 3), (64,)])
def test_not_2d_is_refused_clearly(shape):
    with pytest.raises(InputImageError, match=r"not a 2D|3D stack"):
        normalize_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(0, 10), (10, 0), (0, 10, 3)])
def test_empty_image_is_refused_clearly(shape):
    with pytest.raises(InputImageError, match="empty"):
        normalize_image(np.zeros(shape, np.uint8))


def test_non_numeric_image_is_refused():
    with pytest.raises(InputImageError, match="data type"):
        normalize_image(np.full((4, 4), "a"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("bright_background", [False, True])
def test_input_array_is_not_modified(dtype, bright_background):
    img = (rgb_base() * 200).astype(dtype)
    if bright_background:
        img = (img.max() - img).astype(dtype)
    before = img.copy()
    normalize_image(img)
    np.testing.assert_array_equal(img, before)
