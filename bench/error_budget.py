"""Where the DSB score is lost: each kind of error of a prediction fixed alone with the help of
the true labels (an oracle), and the score the prediction would then reach.

Kinds (for label images of one geometry; "inside" = at least half of an object's own area
lies in the other object):
- merges: a predicted object with two or more true nuclei inside it is divided between them
  (each of its pixels goes to the nearest of those nuclei);
- splits: predicted objects lying inside one true nucleus, two or more, are joined;
- extra: predicted objects that match no true nucleus at IoU > 0.5 (so count at no DSB
  threshold) are removed;
- missed: true nuclei that no prediction matches at IoU > 0.5 are added where the image is
  free of predictions;
- contours: predictions matched one-to-one at IoU > 0.5 take their true nucleus's outline.
The fixes overlap (a merged object is often also unmatched), so their gains do not add up.
"""
import numpy as np
from scipy import ndimage

from nucleaizer_backend.evaluate import iou_matrix, score_image
from nucleaizer_backend.labels import relabel_sequential

MATCH_IOU = 0.5
KINDS = ("merges", "splits", "extra", "missed", "contours")


def _intersections(truth, pred):
    """(n_true + 1, n_pred + 1) pixel counts of every pair of ids (0 = background); ids must
    be 1..n."""
    nt, npr = int(truth.max()) + 1, int(pred.max()) + 1
    return np.bincount(truth.ravel().astype(np.int64) * npr + pred.ravel(),
                       minlength=nt * npr).reshape(nt, npr)


def _inside(inter):
    """inside_pred[t, p]: true nucleus t lies inside prediction p; inside_true[t, p]: p lies
    inside t (both without the background row and column)."""
    area_t, area_p = inter.sum(axis=1), inter.sum(axis=0)
    core = inter[1:, 1:]
    return core >= 0.5 * area_t[1:, None], core >= 0.5 * area_p[None, 1:]


def fix_merges(truth, pred):
    inside_pred, _ = _inside(_intersections(truth, pred))
    out = pred.copy()
    next_id = int(pred.max()) + 1
    boxes = ndimage.find_objects(pred)
    for p in np.flatnonzero(inside_pred.sum(axis=0) >= 2) + 1:
        nuclei = np.flatnonzero(inside_pred[:, p - 1]) + 1
        box = boxes[p - 1]  # the seeds lie in the object, so their nearest one does too
        obj = pred[box] == p
        seeds = np.where(np.isin(truth[box], nuclei) & obj, truth[box], 0)
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[iy, ix]
        for k in nuclei[1:]:
            out[box][obj & (nearest == k)] = next_id
            next_id += 1
    return out


def fix_splits(truth, pred):
    _, inside_true = _inside(_intersections(truth, pred))
    lut = np.arange(int(pred.max()) + 1)
    for t in np.flatnonzero(inside_true.sum(axis=1) >= 2):
        parts = np.flatnonzero(inside_true[t]) + 1
        lut[parts] = parts[0]
    return lut[pred]


def _matched(truth, pred):
    """(true ids, predicted ids) of the pairs with IoU > MATCH_IOU (one-to-one)."""
    t, p = np.nonzero(iou_matrix(truth, pred) > MATCH_IOU)
    return t + 1, p + 1


def fix_extra(truth, pred):
    _, p = _matched(truth, pred)
    return np.where(np.isin(pred, p), pred, 0)


def fix_missed(truth, pred):
    t, _ = _matched(truth, pred)
    missed = (truth > 0) & ~np.isin(truth, t) & (pred == 0)
    return np.where(missed, truth + int(pred.max()), pred)


def fix_contours(truth, pred):
    t, p = _matched(truth, pred)
    lut_p = np.zeros(int(pred.max()) + 1, bool)
    lut_p[p] = True
    out = np.where(lut_p[pred], 0, pred)  # matched predictions are redrawn from the truth
    to_pred = np.zeros(int(truth.max()) + 1, np.int64)
    to_pred[t] = p
    redraw = (to_pred[truth] > 0) & (out == 0)
    out[redraw] = to_pred[truth][redraw]
    return out


FIXES = {"merges": fix_merges, "splits": fix_splits, "extra": fix_extra,
         "missed": fix_missed, "contours": fix_contours}


def matched_ious_by_size(truth, pred, edges):
    """IoU of each one-to-one match (IoU > 0.5), grouped by the true nucleus's equivalent
    diameter (px) into the bins [edges[i], edges[i + 1]): a list of arrays, one per bin."""
    truth = relabel_sequential(np.asarray(truth))
    iou = iou_matrix(truth, pred)
    t, p = np.nonzero(iou > MATCH_IOU)
    diameter = np.sqrt(4 * np.bincount(truth.ravel().astype(np.int64))[1:] / np.pi)
    which = np.digitize(diameter[t], edges) - 1
    return [iou[t, p][which == i] for i in range(len(edges) - 1)]


def error_budget(truth, pred):
    """DSB score of ``pred`` as it is ("as predicted") and with each kind of error fixed
    alone; label images of one shape, any ids."""
    truth = relabel_sequential(np.asarray(truth)).astype(np.int64)
    pred = relabel_sequential(np.asarray(pred)).astype(np.int64)
    out = {"as predicted": score_image(truth, pred).dsb}
    for kind in KINDS:
        out[kind] = score_image(truth, FIXES[kind](truth, pred)).dsb
    return out
