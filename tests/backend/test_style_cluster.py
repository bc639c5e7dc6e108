"""Style features and clustering of images into styles (style/cluster.py)."""
import numpy as np
import pytest
from skimage.draw import disk

from nucleaizer_backend.preprocess import normalize_image
from nucleaizer_backend.style.cluster import FEATURE_NAMES, cluster_styles, style_features

SIDE = 128


def nuclei_labels(rng, n, diameter):
    """(SIDE, SIDE) int32 label image of ``n`` discs of about ``diameter`` px (may touch)."""
    labels = np.zeros((SIDE, SIDE), np.int32)
    for i in range(1, n + 1):
        d = diameter * rng.uniform(0.85, 1.15)
        centre = rng.uniform(d / 2, SIDE - d / 2, 2)
        rr, cc = disk(centre, d / 2, shape=labels.shape)
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = i
    return labels


def fluorescence(rng):
    """Small bright nuclei on a dark background, 8-bit gray (H, W)."""
    labels = nuclei_labels(rng, int(rng.integers(25, 35)), 9.0)
    image = rng.normal(12, 3, labels.shape) + (labels > 0) * rng.uniform(140, 200)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def stained(rng):
    """H&E-like: purple nuclei, dark on a pink background, 8-bit RGB (H, W, 3)."""
    labels = nuclei_labels(rng, int(rng.integers(12, 18)), 18.0)
    pink = np.array([235, 190, 215]) + rng.normal(0, 5, 3)
    purple = np.array([110, 50, 140]) + rng.normal(0, 5, 3)
    image = np.where((labels > 0)[..., None], purple, pink) + rng.normal(0, 8, labels.shape + (3,))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def textured(rng):
    """Large textured nuclei, medium gray background, 12-bit data in uint16 (H, W)."""
    labels = nuclei_labels(rng, int(rng.integers(3, 6)), 40.0)
    speckle = rng.normal(0, 1, labels.shape)
    image = 900 + rng.normal(0, 30, labels.shape) + (labels > 0) * (1800 + 700 * speckle)
    return np.clip(image, 0, 4095).astype(np.uint16), labels


STYLES = {"fluorescence": fluorescence, "stained": stained, "textured": textured}


def features_of(raw, labels):
    return style_features(normalize_image(raw), labels, raw=raw)


@pytest.fixture(scope="module")
def three_styles():
    """(features (24, F), style index (24,)) of 8 synthetic images of each style, interleaved."""
    rng = np.random.default_rng(7)
    feats, truth = [], []
    for _ in range(8):
        for s, make in enumerate(STYLES.values()):
            feats.append(features_of(*make(rng)))
            truth.append(s)
    return np.asarray(feats), np.asarray(truth)


def test_feature_vector_matches_names_and_measures_nuclei():
    rng = np.random.default_rng(0)
    labels = np.zeros((SIDE, SIDE), np.int32)
    for i, centre in enumerate([(30, 30), (30, 90), (90, 30), (90, 90)], start=1):
        labels[disk(centre, 10, shape=labels.shape)] = i
    raw = (np.where(labels > 0, 200, 20) + rng.integers(0, 5, labels.shape)).astype(np.uint8)
    f = dict(zip(FEATURE_NAMES, features_of(raw, labels)))
    assert len(f) == len(FEATURE_NAMES) == len(features_of(raw, labels))
    d = np.sqrt(4 * (labels == 1).sum() / np.pi)
    assert f["log_median_diameter"] == pytest.approx(np.log(d))
    assert f["log1p_nuclei_per_1e4px"] == pytest.approx(np.log1p(4 / SIDE ** 2 * 1e4))
    assert f["foreground_fraction"] == pytest.approx((labels > 0).mean())
    assert f["nucleus_contrast"] > 0.5  # nuclei bright after normalisation
    assert f["saturation_mean"] == pytest.approx(0.0, abs=1e-6)  # gray


def test_colour_separates_stained_from_gray():
    rng = np.random.default_rng(1)
    gray = dict(zip(FEATURE_NAMES, features_of(*fluorescence(rng))))
    he = dict(zip(FEATURE_NAMES, features_of(*stained(rng))))
    assert gray["saturation_mean"] < 0.01 and he["saturation_mean"] > 0.15
    assert abs(gray["hue_cos"]) + abs(gray["hue_sin"]) < 0.01
    assert np.hypot(he["hue_cos"], he["hue_sin"]) > 0.1


def test_image_without_nuclei_gives_nan_size_and_still_clusters():
    rng = np.random.default_rng(2)
    raw, _ = fluorescence(rng)
    empty = features_of(raw, np.zeros((SIDE, SIDE), np.int32))
    names = [n for n, v in zip(FEATURE_NAMES, empty) if np.isnan(v)]
    assert names == ["log_median_diameter", "diameter_spread", "nucleus_contrast"]
    feats = np.stack([empty] + [features_of(*fluorescence(rng)) for _ in range(4)])
    result = cluster_styles(feats, min_cluster_size=2)
    assert np.isfinite(result.centres).all()
    assert result.sizes.sum() == 5


def test_clusters_are_pure_styles(three_styles):
    feats, truth = three_styles
    result = cluster_styles(feats, min_cluster_size=3, seed=0)
    assert result.kmeans_k >= 3  # over-clusters rather than under
    for style in range(result.n_styles):
        members = truth[result.assignment == style]
        assert len(set(members)) == 1, f"style {style} mixes {sorted(set(members))}"
    assert set(truth[result.assignment == result.assignment[0]]) == {0}
    assert (result.sizes >= 3).all()
    assert result.sizes.sum() == len(truth)
    assert result.assignment.max() == result.n_styles - 1


def test_forced_over_clustering_merges_small_clusters_within_their_style(three_styles):
    feats, truth = three_styles
    result = cluster_styles(feats, min_cluster_size=4, k=12, seed=0)
    assert result.merged, "k=12 on 24 images must leave clusters below 4 images"
    assert (result.sizes >= 4).all()
    for style in range(result.n_styles):
        assert len(set(truth[result.assignment == style])) == 1
    lines = result.report()
    assert sum("merged into" in line for line in lines) == len(result.merged)
    for m in result.merged:
        assert m["size"] < 4 and 0 <= m["style"] < result.n_styles


def test_far_small_cluster_is_skipped_not_merged():
    rng = np.random.default_rng(3)
    feats = np.concatenate([rng.normal(0, 0.1, (6, 4)), rng.normal(5, 0.1, (6, 4)),
                            rng.normal([0, 50, 0, 0], 0.1, (2, 4))])
    result = cluster_styles(feats, min_cluster_size=3, k=3, max_merge_distance=2.0)
    assert len(result.skipped) == 1
    skipped = result.skipped[0]
    assert result.sizes[skipped] == 2
    assert set(np.flatnonzero(result.assignment == skipped)) == {12, 13}
    assert any("skipped" in line for line in result.report())
    merged = cluster_styles(feats, min_cluster_size=3, k=3)  # default: always merge
    assert not merged.skipped and (merged.sizes >= 3).all()


def test_deterministic_with_seed(three_styles):
    feats, _ = three_styles
    a = cluster_styles(feats, k=7, seed=5)
    b = cluster_styles(feats, k=7, seed=5)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.report() == b.report()


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_images_than_min_cluster_size_make_one_style(n):
    rng = np.random.default_rng(4)
    feats = np.stack([features_of(*fluorescence(rng)) for _ in range(n)])
    result = cluster_styles(feats, min_cluster_size=3)
    np.testing.assert_array_equal(result.assignment, np.zeros(n))
    assert list(result.sizes) == [n] and result.centres.shape == (1, len(FEATURE_NAMES))
    assert result.skipped == [0]  # too few to learn a style from, and reported
    assert result.report()[1].startswith(f"style 0: {n} image{'s' if n > 1 else ''} (fewer than 3")


def test_constant_and_duplicate_features():
    feats = np.ones((6, 5))
    feats[3:, 0] = 2.0  # two distinct rows, repeated; other columns constant
    result = cluster_styles(feats, min_cluster_size=3)
    assert np.isfinite(result.centres).all()
    assert sorted(result.sizes) == [3, 3]
    assert len(set(result.assignment[:3])) == 1 and len(set(result.assignment[3:])) == 1
