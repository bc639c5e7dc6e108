"""Post-processing rules (p1..p6), U-Net contour correction and test-time augmentation, each
on small hand-made label images with known answers."""
import numpy as np
import pytest

from nucleaizer_backend.refine import (
    PostprocessParams,
    apply_lut,
    contacts,
    correct_contours,
    inner_band,
    merge_into_neighbours,
    refine,
    remove_contained,
    remove_small,
    remove_unconfident,
)
from nucleaizer_backend.tta import TRANSFORMS, merge_versions, segment_with_tta
from shapes import disk, labels_of


def test_paper_defaults():
    p = PostprocessParams()
    assert (p.p1, p.p2, p.p3, p.p4, p.p5, p.p6) == (0.17, 44.0, 0.9375, 1.0, 1.0, 0.8)
    assert PostprocessParams.from_dict({"p1": "0.3", "unknown": 1}).p1 == 0.3


def test_apply_lut_merges_keep_best_score_and_renumber():
    lab = np.array([[1, 1, 2, 2, 3, 4]])
    out, scores = apply_lut(lab, np.array([0.9, 0.6, 0.7, 0.95]), np.array([0, 2, 2, 0, 4]))
    assert out.tolist() == [[1, 1, 1, 1, 0, 2]]
    assert scores.tolist() == pytest.approx([0.9, 0.95])


def test_contacts_counts_shared_edges_and_perimeter():
    lab = np.zeros((4, 6), np.int32)
    lab[1:3, 1:3] = 1  # 2x2 square
    lab[1:3, 3:5] = 2  # 2x2 square to its right: 2 shared edges
    perimeter, pairs, shared = contacts(lab)
    assert perimeter[1] == 8 and perimeter[2] == 8
    d = {tuple(p): s for p, s in zip(pairs.tolist(), shared)}
    assert d == {(1, 2): 2, (2, 1): 2}


def test_image_border_is_not_perimeter():
    lab = np.zeros((4, 4), np.int32)
    lab[:2, :2] = 1  # corner square: only 4 edges face the background
    assert contacts(lab)[0][1] == 4


def test_contained_object_becomes_part_of_its_container():
    outer = disk((40, 40), 20, 20, 12)
    inner = disk((40, 40), 20, 20, 4)
    other = disk((40, 40), 5, 35, 3)
    lab = labels_of(inner, outer, other)  # inner painted first: outer has a hole
    out, scores = remove_contained(lab, np.array([0.99, 0.8, 0.7], np.float32))
    assert out.max() == 2
    assert (out[outer] == out[20, 20]).all()  # hole filled by the container
    assert scores.tolist() == pytest.approx([0.99, 0.7])  # merged object keeps the best score
    assert (out[other] > 0).all() and out[5, 35] != out[20, 20]


def test_merge_follows_p1():
    # a small object pressed into a big one shares ~1/3 of its perimeter
    big = np.zeros((40, 40), bool)
    big[10:30, 10:30] = True
    small = np.zeros((40, 40), bool)
    small[15:21, 30:36] = True  # 6x6 square; touches big along 6 of its 24 edges (0.25)
    lab = labels_of(big, small)
    merged, _ = merge_into_neighbours(lab, np.array([0.9, 0.9]), 0.17)
    assert merged.max() == 1 and (merged[small] == 1).all()
    kept, _ = merge_into_neighbours(lab, np.array([0.9, 0.9]), 0.30)
    assert kept.max() == 2
    # the big one touches the small one along 6 of its 80 edges: never merged into it
    assert (merged[big] == 1).all()


def test_remove_small_uses_working_scale_area():
    a = disk((40, 40), 10, 10, 2)  # 13 px
    b = disk((40, 40), 25, 25, 6)  # 113 px
    lab = labels_of(a, b)
    params = PostprocessParams(p1=1.0)  # no merges: only the size rule matters here
    # at scale 2 (nuclei upscaled 2x), p2 = 44 working px^2 = 11 original px^2
    out, _ = refine(lab, np.array([0.9, 0.9]), 2.0, params)
    assert out.max() == 2
    # at scale 0.5, 44 working px^2 = 176 original px^2: both go
    out, _ = refine(lab, np.array([0.9, 0.9]), 0.5, params)
    assert out.max() == 0
    out, _ = remove_small(lab, np.array([0.9, 0.9]), 14)
    assert out.max() == 1 and (out[b] == 1).all()


def test_inner_band_is_one_pixel_and_ignores_image_border():
    lab = np.zeros((6, 6), np.int32)
    lab[:4, :4] = 1
    band = inner_band(lab, 1)
    expected = np.zeros((6, 6), bool)
    expected[:4, 3] = True
    expected[3, :4] = True
    assert (band == expected).all()
    assert inner_band(lab, 2).sum() == 7 + 5  # two layers along the free sides
    # between two touching objects both sides are contour
    lab[:4, 2:4] = 2
    assert inner_band(lab, 1)[:3, 1:3].all() and not inner_band(lab, 1)[:3, 0].any()


def test_contour_moves_to_follow_unet():
    lab = labels_of(disk((40, 40), 20, 20, 8))
    truth = disk((40, 40), 20, 20, 9)  # the U-Net sees the nucleus one pixel larger
    prob = np.where(truth, 0.99, 0.01).astype(np.float32)
    out, _ = correct_contours(lab, np.array([0.9]), prob, 0.9375, 1, 1)
    assert (out > 0).sum() == truth.sum() and ((out > 0) == truth).all()
    # ... or one pixel smaller: the inner band is peeled where the U-Net disagrees
    band = inner_band(lab, 1)
    prob = np.where(band, 0.5, 0.99).astype(np.float32)
    out, _ = correct_contours(lab, np.array([0.9]), prob, 0.9375, 1, 1)
    assert ((out > 0) == ((lab > 0) & ~band)).all()
    # ... but never by more than the margins
    prob = np.where(disk((40, 40), 20, 20, 12), 0.99, 0.01).astype(np.float32)
    out, _ = correct_contours(lab, np.array([0.9]), prob, 0.9375, 1, 1)
    from scipy import ndimage

    assert ((out > 0) == ndimage.binary_dilation(lab > 0, np.ones((3, 3)))).all()


def test_contour_growth_never_takes_another_object():
    left = np.zeros((10, 12), bool)
    left[2:8, 1:6] = True
    right = np.zeros((10, 12), bool)
    right[2:8, 6:11] = True
    lab = labels_of(left, right, shape=(10, 12))
    prob = np.full((10, 12), 0.99, np.float32)
    out, _ = correct_contours(lab, np.array([0.9, 0.8]), prob, 0.9375, 1, 1)
    assert (out[left] == 1).all() and (out[right] == 2).all()
    assert (out == 1).sum() > left.sum()  # grown outwards into free pixels only


def test_unconfident_objects_removed_by_p6():
    a, b = disk((40, 40), 10, 10, 5), disk((40, 40), 28, 28, 5)
    lab = labels_of(a, b)
    prob = np.where(a, 0.95, 0.0) + np.where(b, 0.6, 0.0)
    out, scores = remove_unconfident(lab, np.array([0.7, 0.99]), prob.astype(np.float32), 0.8)
    assert out.max() == 1 and (out[a] == 1).all() and scores.tolist() == pytest.approx([0.7])


def test_refine_with_unet_runs_all_rules_in_order():
    big = disk((40, 40), 20, 14, 9)
    piece = disk((40, 40), 20, 25, 4) & ~big  # an over-segmented bit of the same nucleus
    ghost = disk((40, 40), 6, 34, 4)  # a false detection the U-Net does not see
    lab = labels_of(big, piece, ghost)
    prob = np.where(big | piece, 0.99, 0.05).astype(np.float32)
    out, scores = refine(lab, np.array([0.9, 0.8, 0.85], np.float32), 1.0, PostprocessParams(),
                         prob)
    assert out.max() == 1 and len(scores) == 1
    assert ((out > 0) == (big | piece)).mean() > 0.99


# -- test-time augmentation -------------------------------------------------------------------

def test_transforms_invert_exactly():
    a = np.arange(12).reshape(3, 4)
    for _, forward, inverse in TRANSFORMS:
        assert (inverse(forward(a)) == a).all()


def test_merge_versions_keeps_majority_and_votes_pixels():
    a, b, c = disk((40, 40), 10, 10, 5), disk((40, 40), 28, 28, 6), disk((40, 40), 8, 32, 3)
    wide = disk((40, 40), 28, 28, 7)
    versions = []
    for v in range(6):
        masks = [a, wide if v == 0 else b]  # one version sees b a pixel larger
        if v < 3:
            masks.append(c)  # c in only half of the versions: not a majority
        versions.append((labels_of(*masks), np.full(len(masks), 0.9, np.float32)))
    out, scores = merge_versions(versions)
    assert out.max() == 2 and len(scores) == 2
    assert ((out > 0) == (a | b)).all()  # pixel majority drops the one wide outline
    assert scores.tolist() == pytest.approx([0.9, 0.9])


def test_merge_versions_with_empty_versions():
    a = disk((20, 20), 10, 10, 4)
    versions = [(labels_of(a, shape=(20, 20)), np.array([0.8]))] * 4
    versions += [(np.zeros((20, 20), np.int32), np.zeros(0))] * 2
    out, scores = merge_versions(versions)
    assert out.max() == 1 and scores[0] == pytest.approx(0.8 * 4 / 6)


def test_segment_with_tta_maps_every_version_back():
    img = np.zeros((30, 40, 3), np.float32)
    img[5:12, 8:20] = 1.0  # an asymmetric bright block
    calls = []

    def threshold(x):
        calls.append(x.shape)
        lab = (x[..., 0] > 0.5).astype(np.int32)
        return lab, np.array([0.9], np.float32)

    out, scores = segment_with_tta(threshold, img)
    assert len(calls) == 6 and (30, 40, 3) in calls and (40, 30, 3) in calls
    assert ((out > 0) == (img[..., 0] > 0.5)).all() and len(scores) == 1
