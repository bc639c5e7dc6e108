"""The labels of the five bundled example images, pinned: the shipped default model on the
CPU, automatic size, default settings (and the refinement levels, and test-time augmentation
on three images). A refactoring of the inference path must leave every label image identical.

A fingerprint is (objects, diameter in px rounded to 0.01, sum of the detection scores
rounded to 0.001, sha256 prefix of the label image renumbered in raster order). Regenerate
the table after an *intended* change of results with
``python tests/backend/test_backend_pipeline_pinned.py`` (and say why in the commit).
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from nucleaizer_backend import segment_image
from nucleaizer_backend.imageio_utils import read_image

IMAGES = Path(__file__).resolve().parents[2] / "example_images" / "images"
TTA_IMAGE = "fluo_0e5edb072788"
# TTA's merged scores (means over the versions) fall below the confidence on these
TTA_IMAGES = (TTA_IMAGE, "he_420f43d21dba", "he_4d14a3629b6a")

# (image, variant) -> fingerprint; the variants' keyword arguments are in VARIANTS
PINNED = {
    ("fluo_0e5edb072788", "full"): (28, 16.31, 27.924, "292066e9b3164ff7"),
    ("fluo_0e5edb072788", "rules"): (28, 16.31, 27.924, "5b447ba9ffb46ba9"),
    ("fluo_0e5edb072788", "none"): (28, 16.31, 27.924, "5b447ba9ffb46ba9"),
    ("fluo_0e5edb072788", "tta"): (28, 16.31, 27.932, "b016226f8c0ec278"),
    ("fluo_5bb8508ff8ec", "full"): (29, 49.77, 28.874, "e5ac253d4fcb4135"),
    ("fluo_5bb8508ff8ec", "rules"): (29, 49.77, 28.874, "68a7eb4ed0b5c404"),
    ("fluo_5bb8508ff8ec", "none"): (31, 49.77, 30.774, "0f93fe9add84be8d"),
    ("fluo_ce88df7356d9", "full"): (56, 9.64, 55.749, "c8c3e5ea18375f23"),
    ("fluo_ce88df7356d9", "rules"): (56, 9.64, 55.749, "4bae6e06616dc6e6"),
    ("fluo_ce88df7356d9", "none"): (58, 9.64, 57.516, "55639de37940e223"),
    ("he_420f43d21dba", "full"): (40, 18.75, 39.546, "020560a46edd9ec1"),
    ("he_420f43d21dba", "rules"): (58, 18.75, 56.069, "656a69a1b868dbf3"),
    ("he_420f43d21dba", "none"): (59, 18.75, 56.903, "42bd733346b661e9"),
    ("he_420f43d21dba", "tta"): (41, 18.75, 40.099, "6239d98529b250f8"),
    ("he_4d14a3629b6a", "full"): (67, 22.65, 63.606, "be1954165515c9de"),
    ("he_4d14a3629b6a", "rules"): (71, 22.65, 67.104, "8027bdc7641a5cc7"),
    ("he_4d14a3629b6a", "none"): (74, 22.65, 69.836, "85fa0c3efff194bf"),
    ("he_4d14a3629b6a", "tta"): (61, 22.65, 55.866, "334365e0d0956070"),
}
VARIANTS = {
    "full": {},
    "rules": {"refine": "rules"},
    "none": {"refine": "none"},
    "tta": {"tta": True},
}


def raster_order(labels):
    """``labels`` renumbered 1..N in the order objects first appear in raster order (int32)."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[labels].astype(np.int32)


def fingerprint(result):
    """(objects, diameter px rounded to 0.01, score sum rounded to 0.001, 16 hex digits of
    the labels' sha256)."""
    labels = raster_order(np.asarray(result.labels))
    digest = hashlib.sha256(str(labels.shape).encode() + labels.tobytes()).hexdigest()[:16]
    return (int(labels.max()), round(float(result.diameter), 2),
            round(float(np.sum(result.scores)), 3), digest)


def run(image, variant):
    img = read_image(IMAGES / f"{image}.png")
    return segment_image(img, device="cpu", **VARIANTS[variant])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("image,variant", sorted(PINNED))
def test_labels_are_pinned(image, variant):
    count, diameter, score_sum, digest = fingerprint(run(image, variant))
    want_count, want_diameter, want_score_sum, want_digest = PINNED[(image, variant)]
    assert count == want_count
    assert diameter == pytest.approx(want_diameter, abs=0.011)
    assert score_sum == pytest.approx(want_score_sum, abs=0.0011)
    assert digest == want_digest


def test_probability_is_pinned():
    """The U-Net probability returned with the labels (sum over the image's 256 x 256 px)."""
    img = read_image(IMAGES / f"{TTA_IMAGE}.png")
    result = segment_image(img, device="cpu", return_probability=True)
    assert result.probability.shape == (256, 256)
    assert float(result.probability.sum()) == pytest.approx(7315.19, abs=0.02)
    assert fingerprint(result) == PINNED[(TTA_IMAGE, "full")]


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    names = sorted(p.stem for p in IMAGES.glob("*.png"))
    keys = [(n, v) for n in names for v in VARIANTS if v != "tta" or n in TTA_IMAGES]
    for key in keys:
        print(f"    {key!r}: {fingerprint(run(*key))!r},")
