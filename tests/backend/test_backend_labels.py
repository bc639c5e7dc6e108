"""Instances -> label image, and label geometry (labels.py)."""
import numpy as np
import pytest

from nucleaizer_backend.labels import (
    MIN_VISIBLE_FRACTION,
    equivalent_diameters,
    instances_to_labels,
    label_dtype,
    paste_mask,
    relabel_sequential,
)

M = 28  # mask resolution of the Mask R-CNN head
FULL = np.ones((M, M), np.float32)


def as_arrays(boxes, masks, scores):
    return (np.asarray(boxes, np.float64), np.asarray(masks, np.float32),
            np.asarray(scores, np.float32))


def test_full_mask_fills_exactly_its_box():
    labels, kept, _ = instances_to_labels(*as_arrays([[10, 5, 30, 15]], [FULL], [0.9]), (40, 50))
    assert labels.shape == (40, 50)
    expected = np.zeros((40, 50), bool)
    expected[5:15, 10:30] = True  # box x0, y0, x1, y1
    np.testing.assert_array_equal(labels > 0, expected)
    assert labels.max() == 1
    np.testing.assert_allclose(kept, [0.9])


def test_most_confident_is_painted_first_and_gets_id_1():
    """Two overlapping detections: the more confident one keeps the overlap, ids follow score."""
    boxes = [[0, 0, 20, 20], [10, 0, 30, 20]]  # overlap x 10..20 (half of each)
    labels, kept, _ = instances_to_labels(*as_arrays(boxes, [FULL, FULL], [0.6, 0.9]), (20, 40))
    np.testing.assert_allclose(kept, [0.9, 0.6])
    assert (labels[:, 10:30] == 1).all()  # the 0.9 detection, whole
    assert (labels[:, 0:10] == 2).all()  # the 0.6 detection keeps only unclaimed pixels
    assert (labels[:, 30:] == 0).all()


def test_duplicate_is_dropped():
    labels, kept, _ = instances_to_labels(
        *as_arrays([[5, 5, 25, 25], [5, 5, 25, 25]], [FULL, FULL], [0.8, 0.7]), (30, 30))
    assert labels.max() == 1 and len(kept) == 1
    np.testing.assert_allclose(kept, [0.8])


def test_mostly_claimed_detection_is_dropped():
    """A detection with less than MIN_VISIBLE_FRACTION of its mask unclaimed is a fragment."""
    assert MIN_VISIBLE_FRACTION == pytest.approx(0.5)
    # second box: 20x20, 14 of its 20 columns claimed -> 30% free
    boxes = [[0, 0, 20, 20], [6, 0, 26, 20]]
    labels, kept, _ = instances_to_labels(*as_arrays(boxes, [FULL, FULL], [0.9, 0.8]), (20, 30))
    assert labels.max() == 1 and len(kept) == 1


def test_only_largest_connected_part_is_kept():
    """A detection cut in two by a more confident one keeps only its largest remaining part."""
    boxes = [[8, 0, 12, 20], [0, 0, 30, 20]]  # a vertical bar splits the wide box in 8 + 18 cols
    labels, kept, _ = instances_to_labels(*as_arrays(boxes, [FULL, FULL], [0.9, 0.8]), (20, 30))
    assert len(kept) == 2
    assert (labels[:, 8:12] == 1).all()
    assert (labels[:, 12:30] == 2).all()
    assert (labels[:, :8] == 0).all()


def test_min_area_drops_small_detections():
    boxes = [[0, 0, 20, 20], [30, 30, 33, 33]]  # 400 px and 9 px
    labels, kept, _ = instances_to_labels(*as_arrays(boxes, [FULL, FULL], [0.5, 0.9]), (40, 40),
                                          min_area=10)
    assert labels.max() == 1 and (labels[:20, :20] == 1).all()
    np.testing.assert_allclose(kept, [0.5])


def test_low_mask_probability_paints_nothing():
    labels, kept, prob = instances_to_labels(
        *as_arrays([[0, 0, 10, 10]], [FULL * 0.3], [0.9]), (12, 12), with_probability=True)
    assert labels.max() == 0 and len(kept) == 0
    assert prob.shape == (12, 12) and prob.max() == pytest.approx(0.3)


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.3])
def test_working_scale_boxes_map_to_requested_shape(scale):
    """Boxes are in working px (original * scale); labels come out in the original shape."""
    shape = (37, 53)
    box_orig = np.array([10.0, 6.0, 30.0, 22.0])  # x0, y0, x1, y1 in original px
    labels, kept, _ = instances_to_labels(
        *as_arrays([box_orig * scale], [FULL], [0.9]), shape, scale=scale)
    assert labels.shape == shape
    expected = np.zeros(shape, bool)
    expected[6:22, 10:30] = True
    np.testing.assert_array_equal(labels > 0, expected)


def test_boxes_partly_outside_are_clipped():
    labels, kept, _ = instances_to_labels(*as_arrays([[-5, -5, 5, 5]], [FULL], [0.9]), (8, 8))
    assert labels.shape == (8, 8)
    assert (labels[:5, :5] == 1).all() and labels[5:, :].max() == 0 and labels[:, 5:].max() == 0
    # entirely outside: nothing, no error
    labels, kept, _ = instances_to_labels(*as_arrays([[20, 20, 30, 30]], [FULL], [0.9]), (8, 8))
    assert labels.max() == 0 and len(kept) == 0


def test_no_detections():
    labels, kept, prob = instances_to_labels(np.zeros((0, 4)), np.zeros((0, M, M)), np.zeros(0),
                                             (5, 7), with_probability=True)
    assert labels.shape == (5, 7) and labels.max() == 0 and len(kept) == 0
    assert np.issubdtype(labels.dtype, np.integer)
    assert prob.shape == (5, 7)


def test_paste_mask_resamples_shape():
    mask = np.zeros((M, M), np.float32)
    mask[:, : M // 2] = 1.0  # left half
    y0, x0, p = paste_mask(mask, (4, 2, 24, 12), (20, 30))
    assert (y0, x0) == (2, 4) and p.shape == (10, 20)
    assert (p[:, :9] > 0.5).all() and (p[:, 11:] < 0.5).all()


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def test_equivalent_diameters_of_known_discs():
    labels = np.zeros((100, 100), np.uint16)
    labels[disc(labels.shape, 25, 25, 10)] = 3
    labels[disc(labels.shape, 70, 70, 20)] = 9  # ids need not be consecutive
    d = equivalent_diameters(labels)
    areas = [np.sum(labels == 3), np.sum(labels == 9)]
    np.testing.assert_allclose(d, [np.sqrt(4 * a / np.pi) for a in areas])
    np.testing.assert_allclose(d, [20.0, 40.0], atol=0.5)


def test_equivalent_diameter_of_square_and_empty():
    labels = np.zeros((10, 10), np.int32)
    labels[:4, :4] = 1
    np.testing.assert_allclose(equivalent_diameters(labels), [np.sqrt(64 / np.pi)])
    assert len(equivalent_diameters(np.zeros((5, 5), np.uint16))) == 0


def test_relabel_sequential():
    labels = np.array([[0, 5, 5], [900, 0, 7], [7, 7, 0]], np.int64)
    out = relabel_sequential(labels)
    np.testing.assert_array_equal(out, [[0, 1, 1], [3, 0, 2], [2, 2, 0]])
    assert out.dtype == np.uint16
    assert relabel_sequential(np.zeros((3, 3), np.int32)).max() == 0
    already = np.array([[1, 2], [0, 3]], np.uint16)
    np.testing.assert_array_equal(relabel_sequential(already), already)


def test_label_dtype():
    assert label_dtype(0) == np.uint16
    assert label_dtype(65534) == np.uint16
    assert label_dtype(70000) == np.uint32


def test_many_objects_use_wide_dtype():
    """More objects than uint16 can hold: ids stay distinct (uint32)."""
    labels = (np.arange(70000, dtype=np.int64).reshape(280, 250) * 3)  # ids 0, 3, 6, ...
    out = relabel_sequential(labels)
    assert out.dtype == np.uint32
    assert out.max() == 69999
    np.testing.assert_array_equal(out.ravel(), np.arange(70000))


def test_discard_objects_as_identify_primary_objects():
    from nucleaizer_backend.errors import OptionError
    from nucleaizer_backend.labels import check_diameter_range, discard_objects

    labels = np.zeros((40, 40), np.uint16)
    labels[0:6, 10:16] = 1     # 6x6 on the top edge
    labels[10:20, 10:20] = 2   # 10x10: equivalent diameter 11.3 px
    labels[25:27, 25:27] = 3   # 2x2: 2.26 px
    labels[30:40, 30:40] = 4   # on the bottom/right edge, 11.3 px
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    out, kept, counts = discard_objects(labels, scores, border=True, diameter_range=(5, 30))
    assert counts == {"size": 1, "border": 2}  # size first: 3 is small, 1 and 4 on the edge
    assert out.max() == 1 and np.array_equal(out == 1, labels == 2)
    assert kept.tolist() == [pytest.approx(0.8)]
    out, kept, counts = discard_objects(labels, scores, diameter_range=(0, 10))
    assert counts == {"size": 2, "border": 0} and out.max() == 2
    assert kept.tolist() == pytest.approx([0.9, 0.7])  # objects 1 (6.8 px) and 3 (2.3 px)
    same, _, counts = discard_objects(labels, scores)
    assert same is labels and counts == {"size": 0, "border": 0}
    for bad in ((10, 5), (-1, 5), ("a", 3), (1,)):
        with pytest.raises(OptionError, match="diameter range"):
            check_diameter_range(bad)
