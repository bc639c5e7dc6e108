"""The oracle fixes of bench/error_budget.py on hand-made label images with known answers."""
import numpy as np
import pytest

from bench.error_budget import (
    error_budget,
    fix_contours,
    fix_extra,
    fix_merges,
    fix_missed,
    fix_splits,
    matched_ious_by_size,
)
from bench.report import render

import shapes

SHAPE = (40, 80)


def disk(cy, cx, r):
    return shapes.disk(SHAPE, cy, cx, r)


def labels_of(*masks):
    return shapes.labels_of(*masks, shape=SHAPE)


A, B, C = disk(20, 15, 8), disk(20, 31, 8), disk(20, 62, 8)  # A and B touch
TRUTH = labels_of(A, B, C)


def test_fix_merges_divides_an_object_between_its_nuclei():
    pred = labels_of(A | B, C)
    fixed = fix_merges(TRUTH, pred)
    assert len(np.unique(fixed)) == 4 and ((fixed > 0) == (pred > 0)).all()
    assert error_budget(TRUTH, pred)["merges"] == pytest.approx(1.0)
    assert (fix_merges(TRUTH, TRUTH) == TRUTH).all()


def test_fix_splits_joins_parts_of_one_nucleus():
    left = A & (np.arange(80)[None, :] < 15)
    pred = labels_of(left, A & ~left, B, C)
    fixed = fix_splits(TRUTH, pred)
    assert len(np.unique(fixed)) == 4 and (fixed[A] == fixed[A][0]).all()
    assert error_budget(TRUTH, pred)["splits"] == pytest.approx(1.0)


def test_fix_extra_removes_only_unmatched_predictions():
    ghost = disk(5, 70, 3)
    pred = labels_of(A, B, C, ghost)
    assert (fix_extra(TRUTH, pred)[ghost] == 0).all() and fix_extra(TRUTH, pred).max() == 3
    budget = error_budget(TRUTH, pred)
    assert budget["as predicted"] == pytest.approx(0.75) and budget["extra"] == pytest.approx(1)


def test_fix_missed_adds_unmatched_nuclei_where_free():
    pred = labels_of(A, B)
    fixed = fix_missed(TRUTH, pred)
    assert (fixed[C] > 0).all() and len(np.unique(fixed)) == 4
    budget = error_budget(TRUTH, pred)
    assert budget["as predicted"] == pytest.approx(2 / 3) and budget["missed"] == pytest.approx(1)


def test_fix_contours_redraws_matched_predictions_only():
    pred = labels_of(disk(20, 15, 7), B, disk(20, 63, 8))  # two inexact outlines
    fixed = fix_contours(TRUTH, pred)
    assert ((fixed > 0) == (TRUTH > 0)).all()
    budget = error_budget(TRUTH, pred)
    assert budget["as predicted"] < 0.8 and budget["contours"] == pytest.approx(1.0)
    # an unmatched prediction (IoU < 0.5) keeps its outline
    small = labels_of(disk(20, 15, 3))
    assert (fix_contours(TRUTH, small) == small).all()


def test_each_fix_leaves_an_exact_prediction_exact():
    budget = error_budget(TRUTH, TRUTH)
    assert all(v == pytest.approx(1.0) for v in budget.values())


def test_matched_ious_grouped_by_true_diameter():
    small = disk(20, 62, 4)
    truth = labels_of(A, small)
    pred = labels_of(disk(20, 15, 7), small)
    big_bin, small_bin = matched_ious_by_size(truth, pred, (10, 100)), \
        matched_ious_by_size(truth, pred, (0, 10))
    assert len(big_bin[0]) == 1 and big_bin[0][0] == pytest.approx(A[disk(20, 15, 7)].sum() / A.sum())
    assert small_bin[0].tolist() == [1.0]


def test_report_ranks_the_oracle_fixes():
    fixes = {k: {"dsb": v, "dsb_fluo": v, "dsb_he": v} for k, v in
             {"as predicted": 0.5, "merges": 0.6, "splits": 0.52, "extra": 0.55,
              "missed": 0.54, "contours": 0.7}.items()}
    text = render({"errors": {"fixes": fixes, "images": 3, "matched_iou_by_size": [
        {"diameter_px": [0, 12], "matches": 9, "mean_iou": 0.8, "share_over_0.8": 0.5}]}}, {})
    section = text[text.index("## Where the DSB score is lost"):]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| as predicted") and "contours" in rows[1] and "+0.200" in rows[1]
    assert "merged" in rows[2] and "split nuclei" in rows[5]
    assert "| 0-12 | 9 | 0.800 | 0.50 |" in section
