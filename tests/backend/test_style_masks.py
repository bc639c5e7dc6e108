"""Nucleus-shape database (style/shapes.py) and synthetic masks (style/masks.py)."""
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from nucleaizer_backend.labels import equivalent_diameters
from nucleaizer_backend.style.masks import (ClusterNucleusStats, clark_evans, dispersion_index,
                                            measure_nuclei, synthesize_mask, touching_ids)
from nucleaizer_backend.style.shapes import ShapeDB, build_shape_db, default_shape_db
from nucleaizer_backend.train.data import read_labels


def stats_like(diameter, density, shape=(256, 256), eccentricity=0.6, **kw):
    """Stats of a cluster whose nuclei are all ``diameter`` px (with a 10% spread)."""
    d = diameter * np.linspace(0.9, 1.1, 41)
    return ClusterNucleusStats(d, np.full(41, eccentricity), density, shape, **kw)


def check_label_image(labels, min_area=1):
    """A proper label image: ids 1..N, each one 4-connected component of >= min_area px."""
    assert labels.dtype == np.int32
    n = int(labels.max())
    ids = np.unique(labels[labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[sl] == i
        assert ndimage.label(mask)[1] == 1, f"nucleus {i} is in pieces"
        assert mask.sum() >= min_area, f"nucleus {i} has {mask.sum()} px"
    return n


# ----------------------------------------------------------------------------- shape database

def ellipse_labels():
    """(80, 120) labels: 1 elongated ellipse (rotated), 2 disc, 3 cut by the border, 4 tiny."""
    labels = np.zeros((80, 120), np.int32)
    labels[ellipse(40, 40, 8, 22, rotation=0.6)] = 1
    labels[disk((40, 95), 9)] = 2
    labels[disk((2, 60), 8, shape=labels.shape)] = 3
    labels[70:73, 100:104] = 4  # 12 px
    return labels


def test_build_shape_db_skips_border_and_tiny_nuclei_and_aligns_major_axis():
    db = build_shape_db([ellipse_labels()], size=32)
    assert len(db) == 2 and db.masks.shape == (2, 32, 32)
    ell, disc = 0, 1
    assert db.diameter_px[ell] == pytest.approx(2 * np.sqrt(8 * 22), rel=0.03)
    assert db.eccentricity[ell] == pytest.approx(np.sqrt(1 - (8 / 22) ** 2), abs=0.02)
    assert db.eccentricity[disc] < 0.2
    assert db.solidity.min() > 0.9
    m = db.masks[ell]
    width, height = m.any(0).sum(), m.any(1).sum()
    assert width >= 29 and height < 0.5 * width  # major axis horizontal, fills the frame
    assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())  # 1 px margin
    assert db.source["images"] == 1 and db.source["shapes"] == 2


def test_shape_db_round_trip(tmp_path):
    db = build_shape_db([ellipse_labels(), ellipse_labels()[::-1]], size=24,
                        source={"dataset": "two test images"})
    path = tmp_path / "shapes.npz"
    db.save(path)
    back = ShapeDB.load(path)
    np.testing.assert_array_equal(back.masks, db.masks)
    np.testing.assert_allclose(back.diameter_px, db.diameter_px)
    np.testing.assert_allclose(back.eccentricity, db.eccentricity)
    np.testing.assert_allclose(back.solidity, db.solidity)
    assert back.source == db.source and back.source["dataset"] == "two test images"
    assert back.size == 24
    with np.load(path, allow_pickle=False) as f:  # packed bits, no object arrays
        assert f["bits"].dtype == np.uint8 and f["bits"].shape == (4, 24 * 24 // 8)


def test_render_scales_and_rotates():
    db = build_shape_db([ellipse_labels()], size=32)
    for d in (8.0, 20.0, 45.0):
        m = db.render(0, d, 0.0)
        assert m.shape[0] == m.shape[1] and m.shape[0] % 2 == 1
        assert equivalent_diameters(m.astype(int))[0] == pytest.approx(d, rel=0.1)
    flat, upright = db.render(0, 30.0, 0.0), db.render(0, 30.0, np.pi / 2)
    assert flat.any(0).sum() > 2 * flat.any(1).sum()
    assert upright.any(1).sum() > 2 * upright.any(0).sum()
    diagonal = db.render(0, 30.0, np.pi / 4)  # counter-clockwise as displayed: up-right
    rows, cols = np.nonzero(diagonal)
    assert np.corrcoef(rows, cols)[0, 1] < -0.6  # (a^2 - b^2) / (a^2 + b^2) = 0.77


def test_shipped_shape_db():
    db = default_shape_db()
    assert db is default_shape_db()  # cached
    assert len(db) > 500 and db.size == 32
    assert db.source["images"] > 100 and db.source["shapes"] == len(db)
    assert "DSB" in db.source["dataset"]
    assert db.masks.sum((1, 2)).min() > 30
    rng = np.random.default_rng(0)
    for d in (10.0, 25.0, 60.0):
        for i in rng.choice(len(db), 5, replace=False):
            m = db.render(int(i), d, rng.uniform(0, np.pi))
            assert equivalent_diameters(m.astype(int))[0] == pytest.approx(d, rel=0.1)


def test_sample_matches_eccentricity_and_size():
    db = default_shape_db()
    rng = np.random.default_rng(1)
    for e in (0.3, 0.9):
        idx = db.sample(rng, 20.0, eccentricity=e, n=50)
        assert idx.shape == (50,)
        assert np.abs(db.eccentricity[idx] - e).max() < 0.1
    small, large = db.sample(rng, 8.0, n=50), db.sample(rng, 60.0, n=50)
    assert np.median(db.diameter_px[small]) < 12 < 40 < np.median(db.diameter_px[large])


# ----------------------------------------------------------------------------- measurement

def test_spatial_statistics_tell_clustered_random_and_regular():
    rng = np.random.default_rng(2)
    shape = (400, 400)
    grid = np.stack(np.meshgrid(np.arange(20, 400, 40), np.arange(20, 400, 40)), -1).reshape(-1, 2)
    poisson = rng.uniform(0, 400, (100, 2))
    clumps = rng.uniform(50, 350, (10, 2))
    clustered = clumps[rng.integers(10, size=100)] + rng.normal(0, 6, (100, 2))
    assert clark_evans(grid.astype(float), shape) > 1.8
    assert 0.8 < clark_evans(poisson, shape) < 1.2
    assert clark_evans(clustered, shape) < 0.5
    assert dispersion_index(grid.astype(float), shape, 10.0) < 0.2
    assert dispersion_index(clustered, shape, 10.0) > 3


def test_measure_nuclei():
    labels = np.zeros((100, 200), np.int32)
    labels[disk((30, 30), 8)] = 1
    labels[disk((30, 45), 8)] = 2  # touches 1
    labels[disk((70, 120), 10)] = 3
    labels[disk((0, 150), 6, shape=labels.shape)] = 4  # cut by the border: not in sizes
    assert set(touching_ids(labels)) == {1, 2}
    stats = measure_nuclei([labels, np.zeros((100, 100), np.int32)])
    assert stats.n_images == 2 and stats.n_nuclei == 4
    assert stats.density == pytest.approx(4 / 30000)
    assert stats.image_shape == (100, 150)
    assert stats.touching_fraction == pytest.approx(0.5)
    np.testing.assert_allclose(sorted(stats.diameters), sorted(equivalent_diameters(labels)[:3]))
    assert len(stats.eccentricities) == 3 and stats.eccentricities.max() < 0.3
    assert stats.clustering_index == 1.0  # fewer than 5 nuclei: no pattern measured


# ----------------------------------------------------------------------------- synthesis

@pytest.mark.parametrize("real_fraction", [0.0, 0.5, 1.0])
def test_synthetic_masks_follow_size_and_density(real_fraction):
    stats = stats_like(18.0, 6e-4, clustering_index=1.2, touching_fraction=0.2)
    rng = np.random.default_rng(3)
    masks = [synthesize_mask(stats, (256, 256), rng, real_fraction=real_fraction)
             for _ in range(3)]
    counts = [check_label_image(m, min_area=5) for m in masks]
    diameters = np.concatenate([equivalent_diameters(m) for m in masks])
    # cut nuclei at the border pull the median down a little, as in real images
    assert np.median(diameters) == pytest.approx(18.0, rel=0.15)
    assert np.mean(counts) / 256 ** 2 == pytest.approx(6e-4, rel=0.25)


def crescent_db():
    """A shape database holding one C-shaped nucleus (solidity about 0.6)."""
    labels = np.zeros((80, 80), np.int32)
    labels[disk((40, 40), 20)] = 1
    labels[disk((40, 52), 17)] = 0
    return build_shape_db([labels])


def solidities(labels):
    return np.array([r.solidity for r in regionprops(labels) if r.area >= 30])


def test_real_fraction_sets_the_share_of_database_shapes():
    stats = stats_like(24.0, 3e-4, eccentricity=0.5)
    db = crescent_db()
    assert db.solidity[0] < 0.7
    share = {}
    for fraction in (0.0, 0.5, 1.0):
        masks = [synthesize_mask(stats, (256, 256), np.random.default_rng(s), db, fraction)
                 for s in range(2)]
        solid = np.concatenate([solidities(m) for m in masks])
        share[fraction] = np.mean(solid < 0.8)  # crescents
        assert measure_nuclei(masks).median_diameter == pytest.approx(24.0, rel=0.15)
    assert share[0.0] == 0.0 and share[1.0] > 0.85 and 0.3 < share[0.5] < 0.7


def test_real_shapes_match_requested_eccentricity():
    for e in (0.3, 0.85):
        stats = stats_like(24.0, 3e-4, eccentricity=e)
        mask = synthesize_mask(stats, (256, 256), np.random.default_rng(4), real_fraction=1.0)
        assert np.median(measure_nuclei([mask]).eccentricities) == pytest.approx(e, abs=0.1)


def test_deterministic_given_rng():
    stats = stats_like(15.0, 1e-3, dispersion_index=2.0, touching_fraction=0.3)
    a = synthesize_mask(stats, (128, 160), np.random.default_rng(5))
    b = synthesize_mask(stats, (128, 160), np.random.default_rng(5))
    c = synthesize_mask(stats, (128, 160), np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (128, 160) and not np.array_equal(a, c)


def test_touching_fraction_is_reproduced():
    apart = stats_like(14.0, 1e-3, touching_fraction=0.0)
    close = replace(apart, touching_fraction=0.6)
    m_apart = [synthesize_mask(apart, (256, 256), np.random.default_rng(s)) for s in range(2)]
    m_close = [synthesize_mask(close, (256, 256), np.random.default_rng(s)) for s in range(2)]
    assert measure_nuclei(m_apart).touching_fraction == 0.0  # 1 px gap unless pushed together
    assert 0.4 < measure_nuclei(m_close).touching_fraction < 0.8


def test_patchy_and_regular_patterns():
    base = stats_like(10.0, 1.2e-3, shape=(320, 320))
    def pattern(**kw):
        masks = [synthesize_mask(replace(base, **kw), None, np.random.default_rng(s))
                 for s in range(2)]
        return measure_nuclei(masks)
    uniform, patchy = pattern(), pattern(dispersion_index=4.0)
    regular = pattern(clustering_index=1.7)
    assert patchy.dispersion_index > uniform.dispersion_index + 0.5
    assert regular.clustering_index > uniform.clustering_index + 0.2


def test_full_image_stops_gracefully():
    stats = stats_like(20.0, 0.01)  # asks for 655 nuclei of 314 px in 256 x 256: 3x too many
    mask = synthesize_mask(stats, (256, 256), np.random.default_rng(7), real_fraction=0.5)
    n = check_label_image(mask)
    assert 50 < n < 655
    assert (mask > 0).mean() > 0.3


def test_no_nuclei_gives_empty_mask():
    empty = measure_nuclei([np.zeros((64, 64), np.int32)])
    assert empty.density == 0 and len(empty.diameters) == 0
    mask = synthesize_mask(empty, None, np.random.default_rng(0))
    assert mask.shape == (64, 64) and mask.max() == 0


def test_masks_mimic_a_real_cluster(example_images_dir):
    labels = [read_labels(p) for p in sorted((example_images_dir / "labels").glob("he_*.tif"))]
    stats = measure_nuclei(labels)
    masks = [synthesize_mask(stats, None, np.random.default_rng(s)) for s in range(2)]
    for m in masks:
        check_label_image(m)
    synthetic = measure_nuclei(masks)
    assert synthetic.median_diameter == pytest.approx(stats.median_diameter, rel=0.15)
    assert synthetic.density == pytest.approx(stats.density, rel=0.25)
    assert synthetic.touching_fraction == pytest.approx(stats.touching_fraction, abs=0.2)


def test_guard_mask_leaves_out_whole_cells_and_clumps():
    """Ten 12 px nuclei stay; a 50 px blob (a whole cell) and a U-shaped object (solidity
    about 0.5: two nuclei joined) are left out and counted."""
    from nucleaizer_backend.style.masks import guard_mask

    lab = np.zeros((200, 200), np.int32)
    for i in range(10):
        lab[disk((20 + 40 * (i % 4), 20 + 40 * (i // 4)), 6, shape=lab.shape)] = i + 1
    lab[disk((150, 150), 25, shape=lab.shape)] = 11
    lab[100:116, 160:163] = 12  # a U of 3 px strokes in a 16 px box
    lab[100:116, 173:176] = 12
    lab[113:116, 160:176] = 12
    guarded, removed = guard_mask(lab)
    assert removed == {"size": 1, "solidity": 1}
    assert set(np.unique(guarded)) == set(range(11))
    np.testing.assert_array_equal(guarded[lab <= 10], lab[lab <= 10])
    # too few objects for a median: nothing is called too big
    assert guard_mask(np.where(lab == 11, 11, np.where(lab == 1, 1, 0)))[1]["size"] == 0


def test_compare_nuclei_tells_matching_from_mismatched_sizes():
    """Synthetic masks of a style's own statistics match its nuclei (small KS statistic,
    same median); masks of nuclei twice as large do not."""
    from nucleaizer_backend.style.masks import compare_nuclei, comparison_line

    rng = np.random.default_rng(0)
    target = stats_like(14, 20 / 1e4, (192, 192))
    same = measure_nuclei([synthesize_mask(target, rng=rng, real_fraction=0) for _ in range(3)])
    big = measure_nuclei([synthesize_mask(stats_like(28, 5 / 1e4, (192, 192)), rng=rng,
                                          real_fraction=0) for _ in range(3)])
    good, bad = compare_nuclei(target, same), compare_nuclei(target, big)
    assert good["ks_diameters"]["statistic"] < 0.3 < bad["ks_diameters"]["statistic"]
    q = good["diameter_q10_50_90"]
    assert q["synthetic"][1] == pytest.approx(q["target"][1], rel=0.15)
    assert bad["diameter_q10_50_90"]["synthetic"][1] > 1.6 * q["target"][1]
    assert "KS" in comparison_line(good)
