"""Segmentation metrics (docs/METHOD.md section 5) on hand-made label images with known answers.

Every expected value is computed by hand here from the definitions, not by the code under test.
"""
import numpy as np
import pytest

from nucleaizer_backend.evaluate import (
    CAICEDO_THRESHOLDS,
    THRESHOLDS,
    iou_matrix,
    score_image,
    summarize,
)

S = (40, 40)


def square(labels, value, y, x, h, w):
    labels[y:y + h, x:x + w] = value
    return labels


def test_thresholds_are_the_dsb_ones():
    np.testing.assert_allclose(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    np.testing.assert_allclose(CAICEDO_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9])


def test_perfect_match():
    truth = np.zeros(S, np.uint16)
    square(truth, 1, 2, 2, 8, 8)
    square(truth, 2, 20, 20, 10, 5)
    s = score_image(truth, truth.copy())
    assert s.dsb == 1.0 and s.precision == 1.0 and s.recall == 1.0 and s.f1 == 1.0
    assert s.caicedo_f1 == 1.0
    assert (s.n_true, s.n_pred, s.missed, s.extra, s.merges, s.splits) == (2, 2, 0, 0, 0, 0)


def test_perfect_match_with_other_ids():
    """Matching does not depend on the id values (a permutation still matches perfectly)."""
    truth = np.zeros(S, np.int32)
    square(truth, 1, 2, 2, 8, 8)
    square(truth, 2, 20, 20, 10, 5)
    pred = np.zeros(S, np.uint32)
    pred[truth == 1] = 70000
    pred[truth == 2] = 3
    assert score_image(truth, pred).dsb == 1.0


def test_empty_vs_empty_scores_one():
    s = score_image(np.zeros(S, np.uint16), np.zeros(S, np.uint16))
    assert s.dsb == 1.0 and s.f1 == 1.0 and s.precision == 1.0 and s.recall == 1.0
    assert (s.n_true, s.n_pred) == (0, 0)


def test_one_object_vs_nothing_scores_zero():
    truth = square(np.zeros(S, np.uint16), 1, 5, 5, 10, 10)
    s = score_image(truth, np.zeros(S, np.uint16))
    assert s.dsb == 0.0 and s.recall == 0.0 and s.f1 == 0.0
    assert (s.n_true, s.n_pred, s.missed, s.extra) == (1, 0, 1, 0)
    s = score_image(np.zeros(S, np.uint16), truth)  # nothing to find, one found
    assert s.dsb == 0.0 and s.precision == 0.0 and s.f1 == 0.0
    assert (s.n_true, s.n_pred, s.missed, s.extra) == (0, 1, 0, 1)


def test_iou_exactly_half_is_not_a_match():
    """IoU = 50/100 = 0.5 exactly: no match at t = 0.5 (strictly greater), so none at all."""
    truth = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 10)  # 100 px
    pred = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 5)  # 50 px inside
    assert iou_matrix(truth, pred)[0, 0] == 0.5
    s = score_image(truth, pred)
    assert s.dsb == 0.0 and s.f1 == 0.0
    assert s.missed == 1 and s.extra == 1


def test_iou_072_matches_at_five_of_ten_thresholds():
    """IoU = 72/100 matches at t = 0.50, 0.55, 0.60, 0.65, 0.70 only: DSB = 5/10."""
    truth = square(np.zeros(S, np.uint16), 1, 10, 10, 10, 10)  # 100 px
    pred = square(np.zeros(S, np.uint16), 4, 10, 10, 8, 9)  # 72 px inside
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(0.72)
    s = score_image(truth, pred)
    assert s.dsb == pytest.approx(0.5)
    assert s.f1_curve == [1.0] * 5 + [0.0] * 5
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(0.5)
    assert s.caicedo_f1 == pytest.approx(5 / 9)
    # at IoU 0.7 it is a match: nothing missed or extra
    assert (s.missed, s.extra) == (0, 0)


def test_iou_exactly_07_is_an_error_at_07():
    truth = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 10)
    pred = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 7)  # IoU 70/100
    s = score_image(truth, pred)
    assert (s.missed, s.extra) == (1, 1)
    assert s.dsb == pytest.approx(4 / 10)  # matches at 0.50 .. 0.65


def test_hand_computed_precision_recall_f1():
    """3 true nuclei, 4 predictions: 2 exact matches, 1 prediction with IoU 0.8 to the third
    nucleus, 1 prediction on background.

    thresholds 0.50-0.75 (6): TP 3, FP 1, FN 0 -> DSB 3/4, P 3/4, R 1, F1 6/7
    thresholds 0.80-0.95 (4): TP 2, FP 2, FN 1 -> DSB 2/5, P 2/4, R 2/3, F1 4/7
    (IoU 0.8 is not > 0.8)
    """
    truth = np.zeros((60, 60), np.uint16)
    square(truth, 1, 0, 0, 10, 10)
    square(truth, 2, 20, 0, 10, 10)
    square(truth, 3, 40, 0, 10, 10)
    pred = np.zeros((60, 60), np.uint16)
    square(pred, 11, 0, 0, 10, 10)
    square(pred, 12, 20, 0, 10, 10)
    square(pred, 13, 40, 0, 10, 8)  # 80 px inside the 100 px nucleus: IoU 0.8
    square(pred, 14, 40, 40, 5, 5)
    s = score_image(truth, pred)
    assert s.n_true == 3 and s.n_pred == 4
    assert s.dsb == pytest.approx((6 * 3 / 4 + 4 * 2 / 5) / 10)
    assert s.precision == pytest.approx((6 * 3 / 4 + 4 * 2 / 4) / 10)
    assert s.recall == pytest.approx((6 * 1 + 4 * 2 / 3) / 10)
    assert s.f1 == pytest.approx((6 * 6 / 7 + 4 * 4 / 7) / 10)
    assert s.f1_curve == pytest.approx([6 / 7] * 6 + [4 / 7] * 4)
    assert s.caicedo_f1 == pytest.approx((6 * 6 / 7 + 3 * 4 / 7) / 9)
    # at IoU 0.7: TP 3 -> nothing missed, one extra
    assert (s.missed, s.extra, s.merges, s.splits) == (0, 1, 0, 0)


def test_merge_is_counted():
    """One prediction covering two touching true nuclei: a merge, IoU 0.5 with each (no match)."""
    truth = np.zeros(S, np.uint16)
    square(truth, 1, 10, 0, 10, 10)
    square(truth, 2, 10, 10, 10, 10)
    pred = square(np.zeros(S, np.uint16), 1, 10, 0, 10, 20)
    s = score_image(truth, pred)
    assert s.merges == 1 and s.splits == 0
    assert (s.missed, s.extra) == (2, 1)
    assert s.dsb == 0.0


def test_split_is_counted():
    """One true nucleus covered by two predictions (halves, IoU 0.5 each): a split."""
    truth = square(np.zeros(S, np.uint16), 1, 10, 0, 10, 20)
    pred = np.zeros(S, np.uint16)
    square(pred, 1, 10, 0, 10, 10)
    square(pred, 2, 10, 10, 10, 10)
    s = score_image(truth, pred)
    assert s.splits == 1 and s.merges == 0
    assert (s.missed, s.extra) == (1, 2)


def test_small_overlap_is_not_a_merge():
    """A prediction that reaches into a second nucleus with IoU <= 0.1 is not a merge."""
    truth = np.zeros(S, np.uint16)
    square(truth, 1, 0, 0, 10, 10)
    square(truth, 2, 0, 10, 10, 10)
    pred = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 11)  # 10 px of nucleus 2: IoU 10/200
    s = score_image(truth, pred)
    assert s.merges == 0
    assert iou_matrix(truth, pred)[:, 0] == pytest.approx([100 / 110, 10 / 200])


def test_missed_and_extra_at_07():
    truth = np.zeros((50, 50), np.uint16)
    square(truth, 1, 0, 0, 10, 10)  # found exactly
    square(truth, 2, 20, 0, 10, 10)  # found with IoU 0.6 -> missed at 0.7
    square(truth, 3, 40, 0, 10, 10)  # not found
    pred = np.zeros((50, 50), np.uint16)
    square(pred, 1, 0, 0, 10, 10)
    square(pred, 2, 20, 0, 10, 6)
    square(pred, 3, 0, 30, 8, 8)  # nothing there
    s = score_image(truth, pred)
    assert (s.n_true, s.n_pred, s.missed, s.extra) == (3, 3, 2, 2)


def test_non_consecutive_ids_and_no_background():
    truth = np.zeros((20, 20), np.int64)
    square(truth, 7, 0, 0, 5, 5)
    square(truth, 1000, 10, 10, 5, 5)
    pred = np.zeros((20, 20), np.uint16)
    square(pred, 3, 0, 0, 5, 5)
    iou = iou_matrix(truth, pred)
    assert iou.shape == (2, 1)
    np.testing.assert_allclose(iou[:, 0], [1.0, 0.0])
    s = score_image(truth, pred)
    assert s.dsb == pytest.approx(0.5)  # TP 1, FN 1 at every threshold
    # an image entirely covered by one object (no background pixel)
    full = np.full((6, 6), 5, np.uint16)
    s = score_image(full, np.full((6, 6), 9, np.uint16))
    assert (s.n_true, s.n_pred, s.dsb) == (1, 1, 1.0)
    half = full.copy()
    half[:, 3:] = 0
    s = score_image(full, half)
    assert (s.n_true, s.n_pred, s.dsb) == (1, 1, 0.0)  # IoU 0.5 exactly


def test_iou_matrix_values():
    truth = np.zeros((10, 10), np.uint16)
    square(truth, 1, 0, 0, 4, 4)  # 16 px
    square(truth, 2, 5, 5, 4, 4)
    pred = np.zeros((10, 10), np.uint16)
    square(pred, 1, 0, 2, 4, 4)  # overlaps nucleus 1 by 8 px: IoU 8/24
    iou = iou_matrix(truth, pred)
    assert iou.shape == (2, 1)
    assert iou[0, 0] == pytest.approx(8 / 24) and iou[1, 0] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        score_image(np.zeros((10, 10), np.uint16), np.zeros((10, 11), np.uint16))


def test_summarize_means_and_sums():
    truth = square(np.zeros(S, np.uint16), 1, 0, 0, 10, 10)
    perfect = score_image(truth, truth)
    missed = score_image(truth, np.zeros(S, np.uint16))
    s = summarize([perfect, missed], ["a", "b"])
    assert s["dsb"] == pytest.approx(0.5) and s["images"] == 2
    assert s["n_true"] == 2 and s["missed"] == 1 and s["n_pred"] == 1
    assert [r["image"] for r in s["per_image"]] == ["a", "b"]
    assert s["f1_curve"]["0.50"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        summarize([])
