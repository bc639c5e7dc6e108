"""Pictures of a segmentation: the image as given with the outlines of its nuclei drawn on it
(``nucleaizer segment --overlays``, the README's example figure)."""
import numpy as np

from .preprocess import stretch_intensities

OUTLINE_COLOUR = (0, 255, 0)


def outline_mask(labels, width=1):
    """(H, W) bool: the outlines of the objects of ``labels`` (H, W) (scikit-image's
    ``find_boundaries``). width 1: the pixels of each object that touch another label or the
    background (the inner boundary); width 2: those and the pixels just outside them (the
    inner and the outer boundary, visible on a reduced picture)."""
    from skimage.segmentation import find_boundaries

    if width not in (1, 2):
        raise ValueError(f"outline width must be 1 or 2 px (got {width!r})")
    return find_boundaries(np.asarray(labels), mode="inner" if width == 1 else "thick")


def overlay_outlines(image, labels, colour=OUTLINE_COLOUR):
    """(H, W, 3) uint8: ``image`` (any 2D image, any dtype; contrast-stretched, not inverted)
    with the outlines of ``labels`` (H, W) painted in ``colour`` (RGB 0-255)."""
    shown = np.round(stretch_intensities(image) * 255).astype(np.uint8)
    if shown.shape[:2] != np.shape(labels):
        raise ValueError(f"labels of shape {np.shape(labels)} do not match the image "
                         f"{shown.shape[:2]}")
    shown[outline_mask(labels)] = colour
    return shown
