"""Tiled detection (docs/METHOD.md section 2.4): overlapping tiles merged without seams or
duplicates.

Three levels:
- ``tile_starts`` / ``owned_ranges`` properties on many lengths;
- the merge with a deterministic stand-in network (thresholded blobs): tiled must equal
  untiled *exactly*, and deliberately broken merges must be caught by the same checks;
- the shipped network on a bundled image at the working scale: tiled and untiled agree.
"""
import numpy as np
import pytest
import torch
from scipy import ndimage

from nucleaizer_backend import detect as detect_module
from nucleaizer_backend import segment_image
from nucleaizer_backend.detect import detect
from nucleaizer_backend.errors import NucleaizerError
from nucleaizer_backend.geometry import owned_ranges, tile_starts, tiling
from nucleaizer_backend.evaluate import score_image
from nucleaizer_backend.imageio_utils import read_image
from nucleaizer_backend.preprocess import normalize_image

CPU = torch.device("cpu")
# Agreement (DSB of tiled labels scored against untiled labels) of the shipped network.
# Network-dependent: mask outlines shift a little with the context a tile gives. The
# provisional model reaches about 0.9 here; raise towards 0.9 when the trained model lands.
TILED_VS_UNTILED_DSB_FLOOR = 0.8


# ---------------------------------------------------------------- tile geometry

CASES = [(length, tile, overlap)
         for tile, overlap in [(256, 128), (1024, 128), (100, 30), (64, 63), (50, 0)]
         for length in [1, tile - 1, tile, tile + 1, 2 * tile - overlap, 2 * tile - overlap + 1,
                        3 * tile, 402, 1000, 4097]]


@pytest.mark.parametrize("length,tile,overlap", CASES)
def test_tile_starts_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert all(isinstance(s, int) for s in starts)
    if length <= tile:
        assert starts == [0]
        return
    assert starts == sorted(set(starts))
    assert starts[-1] + tile == length  # last tile flush with the end, none hangs over
    for a, b in zip(starts[:-1], starts[1:]):
        assert a + tile - b >= overlap  # neighbours overlap at least as asked
    # and no more tiles than needed: one fewer could not keep the overlap
    n = len(starts)
    assert n == 1 or (n - 2) * (tile - overlap) + tile < length


@pytest.mark.parametrize("length,tile,overlap", CASES)
def test_fitted_tiles_cover_with_overlap_and_no_more(length, tile, overlap):
    """tiling: as many tiles as tile_starts, each no longer than needed to keep the overlap."""
    starts, size = tiling(length, tile, overlap)
    assert len(starts) == len(tile_starts(length, tile, overlap)) and size <= tile
    assert starts[0] == 0 and starts[-1] + size == max(length, size)
    for a, b in zip(starts[:-1], starts[1:]):
        assert a + size - b >= overlap
    if len(starts) > 1:  # one px shorter could not keep the overlap with as many tiles
        assert len(starts) * (size - 1) < length + (len(starts) - 1) * overlap


def test_an_image_just_over_one_tile_is_not_segmented_as_four_whole_tiles():
    starts, size = tiling(2150, 2048, 128)
    assert starts == [0, 1011] and size == 1139


@pytest.mark.parametrize("length,tile,overlap", CASES)
def test_owned_ranges_partition_the_length(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    owned = owned_ranges(starts, tile, length)
    assert len(owned) == len(starts)
    assert owned[0][0] == 0 and owned[-1][1] == length
    for (lo, hi), (lo2, _) in zip(owned[:-1], owned[1:]):
        assert hi == lo2  # contiguous: every position owned by exactly one tile
    for i, ((lo, hi), s) in enumerate(zip(owned, starts)):
        assert lo < hi
        end = min(s + tile, length)
        assert s <= lo and hi <= end  # a tile owns only what it sees
        # ... and keeps half the overlap as margin to its inner edges, so a nucleus smaller
        # than overlap / 2 whose centre it owns lies whole inside it
        if i > 0:
            assert lo - s >= overlap / 2
        if i < len(starts) - 1:
            assert end - hi >= overlap / 2


@pytest.mark.parametrize("tile,overlap", [(100, 128), (128, 128), (0, 0)])
def test_tile_not_larger_than_overlap_is_refused(tile, overlap):
    for length in (50, 500):
        with pytest.raises(NucleaizerError, match="tile"):
            tile_starts(length, tile, overlap)


def test_small_tile_size_is_refused_not_silently_empty(example_images_dir):
    """segment_image(tile_size <= overlap) used to return no nuclei at all, silently."""
    img = read_image(example_images_dir / "images" / "fluo_0e5edb072788.png")[:64, :64]
    with pytest.raises(NucleaizerError, match="tile"):
        segment_image(img, diameter=18.0, device="cpu", tile_size=100)


# ---------------------------------------------------------------- merge, stand-in network

def blob_network(model, crops, min_score=0.05):
    """Stand-in for ``predict_raw``: every connected bright blob of the crop is a detection
    (box, 28x28 mask, score = its intensity). Deterministic and context-free, so tiled and
    untiled detection must give exactly the same nuclei."""
    outs = []
    for crop in crops:
        a = crop[0].cpu().numpy()
        lab, _ = ndimage.label(a > 0.3)
        boxes, scores, masks = [], [], []
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            m = (lab[sl] == i).astype(np.float32)
            ys = ((np.arange(28) + 0.5) * m.shape[0] / 28).astype(int)
            xs = ((np.arange(28) + 0.5) * m.shape[1] / 28).astype(int)
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            masks.append(m[np.ix_(ys, xs)])
            scores.append(float(np.round(a[sl][lab[sl] == i].max(), 3)))
        outs.append({
            "boxes": torch.tensor(np.reshape(boxes, (-1, 4)), dtype=torch.float32),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "masks": torch.tensor(np.reshape(masks, (-1, 28, 28)), dtype=torch.float32),
        })
    return outs


def disc_image(size, centres, radius):
    """(size, size, 3) float image with discs of distinct brightness (0.5 .. 1)."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    for k, (cy, cx) in enumerate(centres):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 0.5 + 0.5 * (k + 1) / len(centres)
    return np.repeat(img[..., None], 3, -1)


def seam_centres(size, tile, overlap, radius):
    """Disc centres on a grid plus on every seam: tile edges and ownership boundaries."""
    starts = tile_starts(size, tile, overlap)
    lines = sorted({int(v) for s in starts for v in (s, s + tile)} |
                   {int(round(lo)) for lo, _ in owned_ranges(starts, tile, size)})
    lines = [v for v in lines if radius + 1 < v < size - radius - 1]
    grid = list(range(radius + 2, size - radius - 1, 3 * radius))
    centres = {(y, x) for y in grid for x in lines} | {(y, x) for y in lines for x in grid}
    # keep discs apart (no touching blobs)
    kept = []
    for c in sorted(centres):
        if all((c[0] - d[0]) ** 2 + (c[1] - d[1]) ** 2 > (2 * radius + 3) ** 2 for d in kept):
            kept.append(c)
    return kept


def sorted_detections(d):
    order = np.lexsort((d.boxes[:, 1], d.boxes[:, 0]))
    return d.boxes[order], d.scores[order], d.masks[order]


def merge_problems(untiled, tiled):
    """What is wrong with tiled detections compared with untiled ones (empty = exact)."""
    problems = []
    if len(tiled) != len(untiled):
        problems.append(f"{len(tiled)} detections tiled vs {len(untiled)} untiled")
    else:
        for a, b, what in zip(sorted_detections(untiled), sorted_detections(tiled),
                              ("boxes", "scores", "masks")):
            if not np.allclose(a, b):
                problems.append(f"{what} differ")
    lu, _, _ = untiled.to_labels()
    lt, _, _ = tiled.to_labels()
    s = score_image(lu, lt)
    if s.dsb < 1.0 or s.splits or s.merges:
        problems.append(f"labels differ: DSB {s.dsb:.3f}, splits {s.splits}, merges {s.merges}")
    return problems


@pytest.fixture
def blob_detect(monkeypatch):
    monkeypatch.setattr(detect_module, "predict_raw", blob_network)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.75])
def test_tiled_equals_untiled_exactly_with_blob_network(blob_detect, scale):
    tile, overlap, radius = 256, 128, 20
    working = 520
    centres = seam_centres(working, tile, overlap, radius)
    img = disc_image(working, centres, radius)
    if scale != 1.0:  # make the original image so that the working image is `working` px
        size = int(round(working / scale))
        img = np.asarray(torch.nn.functional.interpolate(
            torch.from_numpy(img).permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
            align_corners=False)[0].permute(1, 2, 0))
    untiled = detect(None, img, scale, CPU, tile=4096)
    tiled = detect(None, img, scale, CPU, tile=tile, overlap=overlap)
    assert len(untiled) == len(centres) > 20
    assert merge_problems(untiled, tiled) == []
    labels, _, _ = tiled.to_labels()
    assert labels.shape == img.shape[:2] and labels.max() == len(centres)


def own_everything(starts, tile, length):
    return [(0.0, float(length))] * len(starts)


def own_with_gaps(starts, tile, length):
    return [(lo + (25 if lo > 0 else 0), hi - (25 if hi < length else 0))
            for lo, hi in owned_ranges(starts, tile, length)]


def own_by_start(starts, tile, length):
    """Tile i owns [start_i, start_{i+1}): nuclei cut by a tile's right edge are kept cut."""
    return list(zip(starts, list(starts[1:]) + [length]))


@pytest.mark.parametrize("broken", [own_everything, own_with_gaps, own_by_start])
def test_broken_merges_are_caught(blob_detect, monkeypatch, broken):
    """The checks above fail for merges that duplicate, lose or cut nuclei at seams."""
    tile, overlap, radius, working = 256, 128, 20, 520
    img = disc_image(working, seam_centres(working, tile, overlap, radius), radius)
    untiled = detect(None, img, 1.0, CPU, tile=4096)
    monkeypatch.setattr(detect_module, "owned_ranges", broken)
    tiled = detect(None, img, 1.0, CPU, tile=tile, overlap=overlap)
    assert merge_problems(untiled, tiled) != []


# ---------------------------------------------------------------- shipped network

def test_tiled_agrees_with_untiled_on_real_image(cpu_model, example_images_dir):
    """A 180 x 180 crop of a real fluorescence image at the 40 px working size (about 402 x 402
    working px): 256 px tiles with 128 px overlap (3 x 3 tiles) vs one tile."""
    img = read_image(example_images_dir / "images" / "fluo_0e5edb072788.png")[60:240, 60:240]
    norm = normalize_image(img)
    scale = 40.0 / 17.9  # the image's true median diameter (index.csv)
    untiled = detect(cpu_model.main, norm, scale, CPU, tile=1024)
    tiled = detect(cpu_model.main, norm, scale, CPU, tile=256, overlap=128)
    lu, _, _ = untiled.to_labels()
    lt, _, _ = tiled.to_labels()
    assert lu.shape == lt.shape == (180, 180)
    n_u, n_t = int(lu.max()), int(lt.max())
    assert n_u >= 8, "the crop should hold enough nuclei for the test to mean something"
    s = score_image(lu, lt)  # untiled as the reference
    # same nuclei: one-to-one matches at IoU > 0.5, counts within a small margin
    assert abs(n_t - n_u) <= max(1, round(0.1 * n_u)), (n_u, n_t)
    assert s.f1_curve[0] >= 0.9, s
    # no nucleus duplicated at a seam (one untiled nucleus covered by two tiled ones) or merged
    assert s.splits == 0 and s.merges == 0, s
    assert s.dsb >= TILED_VS_UNTILED_DSB_FLOOR, s
