"""The style sheet of an adaptation round (``style_sheet.png``, one row per style): up to 3
real target images, 3 synthetic images and the same synthetic images with their masks'
outlines, centre crops at native scale so that nucleus sizes compare directly; under the
synthetic images, their nuclei's statistics against the style's (style.masks.compare_nuclei)."""
from pathlib import Path

import numpy as np

from ..overlay import outline_mask

SHEET_COLUMNS = 3  # real images, synthetic images, synthetic with outlines: 3 of each
SHEET_TILE = 256  # px (native scale) shown of each image
SHEET_DPI = 110  # a 1.6 inch tile: 176 px
OUTLINE_COLOUR = (1.0, 1.0, 0.0)  # yellow, on images in [0, 1]


def _tile(image, size=SHEET_TILE):
    """Centre crop of at most size x size px (native scale) of an (H, W, 3) image."""
    h, w = image.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[y:y + size, x:x + size]


def _outlined(image, labels):
    """``image`` (H, W, 3) in [0, 1] with the 2 px outlines of ``labels`` (visible on the
    reduced sheet)."""
    out = image.copy()
    out[outline_mask(labels, width=2)] = OUTLINE_COLOUR
    return out


def style_sheet(work, targets, path):
    """Draw the sheet of the round in ``work`` (jobs.WorkFolder; its cluster record and
    synthetic pairs) for ``targets`` ([inputs.Target]) into the PNG ``path``; returns it."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..imageio_utils import read_image
    from .pix2pix_train import raw_image_to_unit

    from .masks import comparison_line

    by_name = {t.name: t for t in targets}
    styles = work.done("cluster")["styles"]
    compared = {p["style"]: p["target_vs_synthetic"]
                for p in (work.done("synthesize") or {}).get("per_style", [])
                if "target_vs_synthetic" in p}
    synth_dir = work.dir / "synthetic"
    n = SHEET_COLUMNS
    fig, axes = plt.subplots(len(styles), 3 * n, figsize=(3 * n * 1.6, len(styles) * 1.75 + 0.4),
                             squeeze=False)
    for row, st in enumerate(styles):
        k = st["style"]
        tiles = [_tile(raw_image_to_unit(by_name[name].read())) for name in st["images"][:n]]
        tiles += [None] * (n - len(tiles))
        synth = sorted((synth_dir / "images").glob(f"style{k:02d}_*.png"))[:n]
        fakes = [raw_image_to_unit(read_image(p)) for p in synth]
        labs = [np.asarray(read_image(synth_dir / "labels" / f"{p.stem}.tif")) for p in synth]
        tiles += [_tile(f) for f in fakes] + [None] * (n - len(fakes))
        tiles += [_tile(_outlined(f, lab)) for f, lab in zip(fakes, labs)] + [None] * (n - len(fakes))
        for col, (ax, tile) in enumerate(zip(axes[row], tiles)):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if tile is not None:
                ax.imshow(tile, interpolation="nearest")
            if row == 0 and col % n == n // 2:
                ax.set_title(("real target images", "synthetic images",
                              "synthetic images + their masks")[col // n], fontsize=9)
        status = (f"{len(list((synth_dir / 'images').glob(f'style{k:02d}_*.png')))} synthetic"
                  if st["learned"] else "skipped: " + st["skip_reason"])
        # the label runs along the row's height: wrap it to that (about 26 characters)
        label = f"style {k}, {st['size']} image{'s' if st['size'] != 1 else ''}\n{status}"
        if k in compared:  # under the synthetic images: their nuclei against the style's
            axes[row][n + n // 2].set_xlabel("target vs synthetic: "
                                             + comparison_line(compared[k]), fontsize=6)
        axes[row][0].set_ylabel("\n".join(line for part in label.split("\n")
                                           for line in textwrap.wrap(part, 26)), fontsize=7)
    fig.suptitle(f"{work.out.name}: real target images vs synthetic images per style "
                 f"(centre {SHEET_TILE} px crops, native scale)", fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=SHEET_DPI)
    plt.close(fig)
    Path(tmp).replace(path)
    return Path(path)
