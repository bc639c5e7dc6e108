"""Stage d, synthesize: per learned style, the nuclei of its masks are measured
(style.masks), N new masks composed (half real shapes from the shipped shape database, half
perturbed ellipses) at the style's typical image size (at most ``max_synthetic_side`` px a
side) and rendered by the style's generator: ``work/synthetic/images/*.png`` (uint8 RGB) +
``labels/*.tif``, pair by pair (a resumed run keeps the pairs already made). Each style's
synthetic nuclei are then compared with its masks' (style.masks.compare_nuclei: diameter
quantiles, Kolmogorov-Smirnov tests, density, spacing), in the record, the log and the
style sheet."""
import numpy as np

from ...errors import NucleaizerError
from .masks import read_mask
from .styles import mask_images, style_dir


def synthetic_shape(stats, settings):
    """(H, W) of a style's synthetic images: its typical image size, at most
    ``max_synthetic_side`` a side."""
    side = int(settings.max_synthetic_side)
    return tuple(max(1, min(int(v), side)) for v in stats.image_shape)


def run(ctx):
    import imageio.v3 as iio

    from ...device import resolve_device
    from ...imageio_utils import write_labels
    from ...imageio_utils import read_image
    from ..masks import compare_nuclei, comparison_line, measure_nuclei, synthesize_mask
    from ..pix2pix_train import generate, load_style_model
    from ..shapes import default_shape_db

    work, s, report = ctx.work, ctx.settings, ctx.report
    img_dir, lab_dir = work.dir / "synthetic" / "images", work.dir / "synthetic" / "labels"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    learned = [st for st in work.done("cluster")["styles"] if st["learned"]]
    n_per = int(s.synthetic_per_cluster)
    total, done, per_style = n_per * len(learned), 0, []
    shape_db = default_shape_db() if s.real_fraction > 0 else None
    for st in learned:
        k = st["style"]
        stats = measure_nuclei([read_mask(work, ctx.target(n)) for n in mask_images(st)])
        shape = synthetic_shape(stats, s)
        generator, _ = load_style_model(style_dir(work, k), resolve_device(s.device))
        made = 0
        for i in range(n_per):
            stem = f"style{k:02d}_{i:03d}"
            if (img_dir / f"{stem}.png").is_file() and (lab_dir / f"{stem}.tif").is_file():
                made += 1
            else:
                for attempt in range(5):  # a sparse style may give an empty mask
                    rng = np.random.default_rng([s.seed, k, i, attempt])
                    mask = synthesize_mask(stats, shape, rng, shape_db, s.real_fraction)
                    if mask.max() > 0:
                        break
                if mask.max() > 0:
                    image = generate(generator, mask, rng)
                    write_labels(lab_dir / f"{stem}.tif", mask.astype(np.uint16))
                    tmp = img_dir / f"{stem}.tmp.png"
                    iio.imwrite(tmp, np.round(image * 255).astype(np.uint8))
                    tmp.replace(img_dir / f"{stem}.png")
                    made += 1
            done += 1
            report("synthesize", done, total, {"style": k, "image": stem})
        made_masks = [np.asarray(read_image(p)) for p in
                      sorted(lab_dir.glob(f"style{k:02d}_*.tif"))]
        comparison = compare_nuclei(stats, measure_nuclei(made_masks))
        report("synthesize", done, total, {"style": k, "target_vs_synthetic":
                                           comparison_line(comparison)})
        per_style.append({"style": k, "pairs": made, "shape": list(shape),
                          "target_vs_synthetic": comparison,
                          "nuclei_per_1e4px": stats.density * 1e4,
                          "median_diameter_px": float(np.median(stats.diameters))
                          if len(stats.diameters) else None,
                          "clustering_index": stats.clustering_index,
                          "touching_fraction": stats.touching_fraction})
    count = sum(p["pairs"] for p in per_style)
    if count == 0:
        raise NucleaizerError("no synthetic image could be made (the styles' masks hold too few "
                              "nuclei)")
    return {"per_style": per_style, "count": count, "folder": str(work.dir / "synthetic")}


def summary(record):
    from ..masks import comparison_line

    return {"pairs": record["count"],
            "target_vs_synthetic": {p["style"]: comparison_line(p["target_vs_synthetic"])
                                    for p in record["per_style"] if "target_vs_synthetic" in p}}
