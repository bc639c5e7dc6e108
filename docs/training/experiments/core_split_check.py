"""Does a two-channel contour U-Net separate the nuclei that the shipped pipeline merges?
For every object of the shipped pipeline on the val images (automatic size), counts the
connected parts of the U-Net's core probability above a threshold inside it, separately for
merged objects (holding >= 2 true nuclei with half their area each) and single-nucleus ones.
Run from the repository root:

    python docs/training/experiments/core_split_check.py runs/unet-s4-core/last.safetensors
"""
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from bench.run_benchmarks import index_rows, load_pair  # noqa: E402
from nucleaizer_backend import segment_image  # noqa: E402
from nucleaizer_backend.models.io import load_network  # noqa: E402
from nucleaizer_backend.preprocess import normalize_image  # noqa: E402
from nucleaizer_backend.refine import unet_probabilities  # noqa: E402

CPU = torch.device("cpu")
THRESHOLDS = (0.5, 0.7, 0.9)


def nuclei_inside(obj, truth, true_area):
    t = truth[obj]
    ids, counts = np.unique(t[t > 0], return_counts=True)
    return ids[counts >= 0.5 * true_area[ids]]


def main(unet_file):
    torch.set_num_threads(2)
    net, _ = load_network(unet_file)
    net.eval()
    merged = {t: [] for t in THRESHOLDS}
    single = {t: [] for t in THRESHOLDS}
    for r in index_rows("val"):
        img, truth = load_pair(r)
        res = segment_image(img, device=CPU)
        cores = unet_probabilities(net, normalize_image(img), res.scale, CPU)[1]
        true_area = np.bincount(truth.ravel())
        for i, sl in enumerate(ndimage.find_objects(res.labels), 1):
            if sl is None:
                continue
            obj = res.labels[sl] == i
            n_true = len(nuclei_inside(obj, truth[sl], true_area))
            for t in THRESHOLDS:
                k = ndimage.label(obj & (cores[sl] > t), np.ones((3, 3)))[1]
                (merged if n_true >= 2 else single)[t].append(k)
    for t in THRESHOLDS:
        m, s = np.array(merged[t]), np.array(single[t])
        print(f"core > {t}: merged objects ({len(m)}) with >= 2 cores {np.mean(m >= 2):.2f}; "
              f"single-nucleus objects ({len(s)}) with >= 2 cores {np.mean(s >= 2):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
