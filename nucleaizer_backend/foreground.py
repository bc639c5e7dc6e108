"""The U-Net's nucleus foreground probability of an image, run at the working scale
(docs/METHOD.md section 2.6: what the contour correction of refine.py follows)."""
import torch

from .geometry import DEFAULT_OVERLAP, map_to_original, owned_ranges, rescale_image, tiling

UNET_TILE = 1024  # px at the working scale


@torch.inference_mode()
def foreground_probability(unet, image, scale, device, tile=UNET_TILE, overlap=DEFAULT_OVERLAP):
    """Nucleus foreground probability (H, W) float32 in the original geometry of a normalised
    (H, W, 3) image, from a U-Net run at ``scale`` (in overlapping tiles when large)."""
    x = rescale_image(image, scale, device)
    _, hs, ws = x.shape
    prob = torch.zeros((hs, ws), device=device)
    (ys, th), (xs, tw) = tiling(hs, tile, overlap), tiling(ws, tile, overlap)
    for y0, (ly, hy) in zip(ys, owned_ranges(ys, th, hs)):
        for x0, (lx, hx) in zip(xs, owned_ranges(xs, tw, ws)):
            crop = x[:, y0:y0 + th, x0:x0 + tw][None].contiguous(
                memory_format=torch.channels_last)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                p = unet(crop)[0].float()
            ly, hy, lx, hx = int(round(ly)), int(round(hy)), int(round(lx)), int(round(hx))
            prob[ly:hy, lx:hx] = p[ly - y0:hy - y0, lx - x0:hx - x0]
    return map_to_original(prob, image.shape)
