"""Test-time augmentation (docs/METHOD.md section 2.8): the image is segmented as it is,
flipped and rotated by 90/180/270 degrees; each result is mapped back, instances are matched
across the versions at IoU >= 0.5, kept when found in the majority of versions, and each kept
nucleus's mask is the pixel majority of its matched instances.
"""
import numpy as np
from scipy import ndimage

from .evaluate import iou_matrix
from .labels import label_dtype

# (name, forward, inverse) on arrays whose first two axes are (H, W)
TRANSFORMS = (
    ("identity", lambda a: a, lambda a: a),
    ("flip_lr", lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    ("flip_ud", lambda a: a[::-1], lambda a: a[::-1]),
    ("rot90", lambda a: np.rot90(a, 1), lambda a: np.rot90(a, -1)),
    ("rot180", lambda a: np.rot90(a, 2), lambda a: np.rot90(a, -2)),
    ("rot270", lambda a: np.rot90(a, 3), lambda a: np.rot90(a, -3)),
)
MATCH_IOU = 0.5


def segment_with_tta(segment_fn, image):
    """Run ``segment_fn(image) -> (labels, scores)`` on every version of ``image`` (H, W, C)
    and merge the mapped-back results with ``merge_versions``."""
    versions = []
    for _, forward, inverse in TRANSFORMS:
        labels, scores = segment_fn(np.ascontiguousarray(forward(image)))
        versions.append((np.ascontiguousarray(inverse(labels)), scores))
    return merge_versions(versions)


class _UnionFind:
    def __init__(self, n):
        self.parent = np.arange(n)

    def root(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a, b):
        self.parent[self.root(a)] = self.root(b)


def merge_versions(versions):
    """Merge label images of the same image [(labels (H, W) numbered 1..n_v, scores (n_v,))].

    Instances of two versions with IoU >= MATCH_IOU are the same nucleus (matches are one-to-one
    above 0.5); a nucleus is kept when found in more than half of the versions; its mask is
    the set of pixels covered by more than half of its instances; its score is the mean over
    all versions (0 where missed). Painted most confident first, on free pixels only.
    Returns (labels, scores) numbered 1..N.
    """
    n_versions = len(versions)
    shape = versions[0][0].shape
    offsets = np.cumsum([0] + [len(s) for _, s in versions])
    uf = _UnionFind(int(offsets[-1]))
    for i in range(n_versions):
        for j in range(i + 1, n_versions):
            if len(versions[i][1]) == 0 or len(versions[j][1]) == 0:
                continue
            iou = _iou_by_id(versions[i][0], versions[j][0], len(versions[i][1]),
                             len(versions[j][1]))
            for a, b in zip(*np.nonzero(iou >= MATCH_IOU)):
                uf.join(offsets[i] + a, offsets[j] + b)
    members = {}
    for v in range(n_versions):
        for k in range(len(versions[v][1])):
            members.setdefault(uf.root(offsets[v] + k), []).append((v, k))
    boxes = [ndimage.find_objects(lab, max_label=len(s)) for lab, s in versions]
    clusters = []
    for group in members.values():
        if len({v for v, _ in group}) * 2 <= n_versions:
            continue
        score = sum(float(versions[v][1][k]) for v, k in group) / n_versions
        clusters.append((score, group))
    clusters.sort(key=lambda c: -c[0])
    out = np.zeros(shape, np.int64)
    kept = []
    for score, group in clusters:
        sl = _union_box([boxes[v][k] for v, k in group])
        votes = sum((versions[v][0][sl] == k + 1).astype(np.int32) for v, k in group)
        mask = (votes * 2 > len(group)) & (out[sl] == 0)
        if not mask.any():
            continue
        kept.append(score)
        out[sl][mask] = len(kept)
    return out.astype(label_dtype(len(kept))), np.asarray(kept, np.float32)


def _iou_by_id(a, b, na, nb):
    """(na, nb) IoU of objects 1..na of ``a`` with 1..nb of ``b`` (ids may be missing)."""
    full = np.zeros((na, nb))
    ids_a = np.unique(a[a > 0])
    ids_b = np.unique(b[b > 0])
    if len(ids_a) and len(ids_b):
        full[np.ix_(ids_a - 1, ids_b - 1)] = iou_matrix(a, b)
    return full


def _union_box(slices):
    slices = [s for s in slices if s is not None]
    return tuple(slice(min(s[d].start for s in slices), max(s[d].stop for s in slices))
                 for d in range(2))
