"""How realistic synthetic images are: a kernel inception distance (KID, Binkowski et al.
2018) computed on the features of our own detection network instead of Inception's.

Crops of CROP px (native scale, each image normalised as the detector sees it,
preprocess.normalize_image) are passed through the main network's backbone body; each stage's
output is averaged over the crop, giving one vector per crop (96 + 160 + 256 values for the
shipped network's stages 2-4). KID is the unbiased squared MMD between the real and the
synthetic crops' vectors with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged
over random subsets of SUBSET crops; 0 for samples of one distribution, larger the more they
differ. Reported x 1000 in logs and benchmarks, as is usual. Two sets of crops of the same
real images give the noise floor to read it against (:func:`kid_floor`).
"""
import numpy as np
import torch

CROP = 128  # px
STAGES = ("1", "2", "3")  # backbone body outputs used (strides 8, 16, 32)
SUBSET = 50
SUBSETS = 20


def random_crops(images, n, rng, crop=CROP):
    """``n`` normalised (crop, crop, 3) float32 crops drawn from ``images`` (raw arrays, any
    dtype; images in proportion to their area; smaller ones mirror-padded)."""
    from ..preprocess import normalize_image

    normed = [normalize_image(im) for im in images]
    area = np.array([max(a.shape[0] * a.shape[1], 1) for a in normed], float)
    out = []
    for i in rng.choice(len(normed), size=n, p=area / area.sum()):
        a = normed[i]
        ph, pw = max(0, crop - a.shape[0]), max(0, crop - a.shape[1])
        if ph or pw:
            a = np.pad(a, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
        y = int(rng.integers(a.shape[0] - crop + 1))
        x = int(rng.integers(a.shape[1] - crop + 1))
        out.append(a[y:y + crop, x:x + crop])
    return np.stack(out).astype(np.float32)


def crop_features(network, crops, batch=16):
    """(N, F) float64 features of (N, crop, crop, 3) crops: the mean of each of the main
    network's backbone stages STAGES."""
    body = network.backbone.body
    device = next(network.parameters()).device
    feats = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = torch.from_numpy(np.moveaxis(crops[i:i + batch], -1, 1)).to(device)
            x = (x - network.transform.image_mean[0]) / network.transform.image_std[0]
            out = body(x.contiguous(memory_format=torch.channels_last))
            feats.append(torch.cat([out[k].float().mean((2, 3)) for k in STAGES], 1).cpu())
    return torch.cat(feats).double().numpy()


def kid(real, fake, rng, subset=SUBSET, subsets=SUBSETS):
    """KID between (N, F) and (M, F) feature arrays: (mean, standard deviation) over
    ``subsets`` random subsets of ``subset`` rows each."""
    d = real.shape[1]
    m = min(subset, len(real), len(fake))
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = ~np.eye(m, dtype=bool)
        values.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def realism(network, real_images, synthetic_images, n_crops=200, seed=0):
    """KID x 1000 (mean, sd) of ``synthetic_images`` against ``real_images`` (lists of raw
    arrays) on ``n_crops`` crops of each, features of ``network`` (a main Mask R-CNN)."""
    rng = np.random.default_rng(seed)
    real = crop_features(network, random_crops(real_images, n_crops, rng))
    fake = crop_features(network, random_crops(synthetic_images, n_crops, rng))
    mean, sd = kid(real, fake, rng)
    return 1000 * mean, 1000 * sd


def kid_floor(network, real_images, n_crops=200, seed=0):
    """KID x 1000 (mean, sd) between two sets of ``n_crops`` crops drawn from the same real
    images: what a generator indistinguishable from them would score (sampling noise)."""
    rng = np.random.default_rng(seed)
    feats = crop_features(network, random_crops(real_images, 2 * n_crops, rng))
    mean, sd = kid(feats[:n_crops], feats[n_crops:], rng)
    return 1000 * mean, 1000 * sd
