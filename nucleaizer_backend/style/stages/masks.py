"""Stage a, masks: a nucleus mask per target image, ``work/masks/<image>.tif`` (+ a .json
record each): the user's annotation where given (GTstyle), else the base model's preseg
nuclei (AUTOstyle; or its full segmentation with ``masks_from="model"``). Automatic masks are
guarded (style.masks.guard_mask): objects far larger than the image's typical nucleus or of low
solidity (whole cells, clumps) are left out, counted in the image's record. An automatic mask
is *reliable* when it then holds at least size.MIN_NUCLEI nuclei."""
import json

import numpy as np

from ...errors import NucleaizerError
from ..jobs import write_json


def auto_mask(image, settings, base_path):
    """Labels of an unannotated image (from the base model's preseg network or its full
    segmentation, ``settings.masks_from``) and what to record about them."""
    from ...segment import estimate_size, segment_image

    if settings.masks_from == "model":
        r = segment_image(image, model=base_path, device=settings.device)
        est, labels = r.size_estimate, r.labels
    else:
        est = estimate_size(image, model=base_path, device=settings.device, return_labels=True)
        labels = est.labels
    return labels, {"source": "AUTO", "masks_from": settings.masks_from,
                    "preseg_diameter_px": float(est.median_diameter),
                    "preseg_reliable": bool(est.reliable)}


def mask_reliable(rec):
    """Whether an image's mask can teach a style: annotations always; automatic masks when
    they hold at least size.MIN_NUCLEI nuclei."""
    from ...size import MIN_NUCLEI

    return rec["source"] == "GT" or rec["nuclei"] >= MIN_NUCLEI


def read_mask(work, target):
    """The stored mask of ``target`` (int32 labels)."""
    from ...imageio_utils import read_image

    return np.asarray(read_image(work.dir / "masks" / f"{target.file}.tif")).astype(np.int32)


def run(ctx):
    from ...imageio_utils import write_labels
    from ...labels import equivalent_diameters
    from ..masks import guard_mask

    targets, report = ctx.targets, ctx.report
    mask_dir = ctx.work.dir / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    per_image = {}
    for i, t in enumerate(targets):
        side = mask_dir / f"{t.file}.json"
        if side.is_file() and (mask_dir / f"{t.file}.tif").is_file():
            per_image[t.name] = json.loads(side.read_text())
        else:
            if t.name in ctx.annotations:
                labels, rec = ctx.annotations[t.name], {"source": "GT"}
            else:
                labels, rec = auto_mask(t.read(), ctx.settings, ctx.settings.base_model)
                labels, removed = guard_mask(labels)
                rec.update(removed_clumps=removed["size"],
                           removed_irregular=removed["solidity"])
            d = equivalent_diameters(labels)
            rec.update(nuclei=int(len(d)),
                       median_diameter_px=float(np.median(d)) if len(d) else None)
            rec["reliable"] = mask_reliable(rec)
            tmp = mask_dir / f"{t.file}.tmp.tif"
            write_labels(tmp, np.asarray(labels).astype(np.uint32 if labels.max() >= 65535
                                                         else np.uint16))
            tmp.replace(mask_dir / f"{t.file}.tif")
            write_json(side, rec)
            per_image[t.name] = rec
        report("masks", i + 1, len(targets), {"image": t.name, **per_image[t.name]})
    if not any(r["nuclei"] for r in per_image.values()):
        raise NucleaizerError(f"no nuclei were found in any of the {len(targets)} target images "
                              "(preseg): nothing to learn styles from; give annotations or "
                              "other images")
    return {"images": per_image}


def summary(record):
    images = record["images"].values()
    return {"images": len(images), "annotated": sum(r["source"] == "GT" for r in images),
            "nuclei": sum(r["nuclei"] for r in images),
            "left_out": sum(r.get("removed_clumps", 0) + r.get("removed_irregular", 0)
                            for r in images)}
