"""What the benchmark sections share: the DSB 2018 data beside the repository (its index,
image/label pairs), the machine's description, scoring a predictor on rows of images, the
shipped pipeline as a predictor, and CellProfiler's IdentifyPrimaryObjects as the classical
baseline."""
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "dsb2018"
RESULTS = ROOT / "bench" / "results"

SPEED_IDS = ["2dec81a678dd", "3477024fd843", "43cf6b2ec0b0", "5bb8508ff8ec", "6f8197baf738",
             "8055957570d7", "f01a9742c43a",  # val, nuclei ~49 px
             "0ea221716cf1", "e23e11414ee6", "212b858a66f0", "1b518cd2ea84"]  # train, 21-31 px

def index_rows(split=None):
    with open(DATA / "index.csv") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]

def machine():
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

def load_pair(row):
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.train.data import read_labels

    base = DATA / row["split"]
    return (read_image(base / "images" / f"{row['id']}.png"),
            read_labels(base / "labels" / f"{row['id']}.tif"))

def identify_primary_objects(image):
    """CellProfiler 4.2.8 IdentifyPrimaryObjects with default settings (typical diameter
    10-40 px) on the image converted to gray, inverted when nuclei are dark (as the reference
    run did). Returns the label image."""
    from cellprofiler_core.preferences import set_headless

    set_headless()
    import cellprofiler_core.image as cpi
    import cellprofiler_core.measurement as cpmeas
    import cellprofiler_core.object as cpo
    import cellprofiler_core.pipeline as cpp
    import cellprofiler_core.workspace as cpw
    from cellprofiler.modules.identifyprimaryobjects import IdentifyPrimaryObjects

    from nucleaizer_backend.preprocess import has_bright_background

    gray = image[..., :3].mean(axis=-1) if image.ndim == 3 else image.astype(float)
    gray = (gray - gray.min()) / max(np.ptp(gray), 1e-9)
    if has_bright_background(np.repeat(gray[..., None], 3, axis=-1)):
        gray = 1.0 - gray
    module = IdentifyPrimaryObjects()
    module.set_module_num(1)
    module.x_name.value = "DNA"
    module.y_name.value = "Nuclei"
    pipeline = cpp.Pipeline()
    pipeline.add_module(module)
    image_set_list = cpi.ImageSetList()
    image_set = image_set_list.get_image_set(0)
    image_set.add("DNA", cpi.Image(gray))
    objects = cpo.ObjectSet()
    ws = cpw.Workspace(pipeline, module, image_set, objects, cpmeas.Measurements(), image_set_list)
    module.run(ws)
    return objects.get_objects("Nuclei").segmented

def score_rows(rows, predict):
    """Scores (evaluate.score_image) of ``predict(image, row) -> labels`` on the rows' images,
    and the seconds each prediction took."""
    from nucleaizer_backend.evaluate import score_image

    scores, seconds = [], []
    for r in rows:
        img, truth = load_pair(r)
        t0 = time.perf_counter()
        pred = predict(img, r)
        seconds.append(time.perf_counter() - t0)
        scores.append(score_image(truth, pred))
    return scores, seconds

def dsb_by_style(rows, scores):
    """Mean DSB score of each style's images: {"dsb_fluo": ..., "dsb_he": ...}."""
    return {f"dsb_{style}": float(np.mean([sc.dsb for r, sc in zip(rows, scores)
                                           if r["style"] == style])) for style in ("fluo", "he")}

def segmenter(model, true_size=False):
    """``predict(image, row)`` for score_rows: segment_image's labels with automatic size, or
    with the row's true median nucleus diameter."""
    from nucleaizer_backend import segment_image

    def predict(img, row):
        d = float(row["median_diameter_px"]) if true_size else None
        return segment_image(img, model=model, diameter=d, device="cpu").labels

    return predict
