"""Benchmark sections on time and memory: seconds per 520x696 image (speed), peak memory of a
2048x2048 image (memory), several processes at once as CellProfiler's workers (workers), and
a quick-preset adaptation of 20 images (adapt_speed). bench/run_benchmarks.py runs them."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (DATA, ROOT, SPEED_IDS, identify_primary_objects, index_rows,
                          load_pair)


def section_speed(model):
    from nucleaizer_backend import segment_image

    rows = {r["id"][:12]: r for r in index_rows()}
    images = [load_pair(rows[i])[0] for i in SPEED_IDS]
    segment_image(images[0], model=model, device="cpu")  # load the model, warm up
    identify_primary_objects(images[0])
    per = []
    for i, img in zip(SPEED_IDS, images):
        t0 = time.perf_counter()
        r = segment_image(img, model=model, device="cpu")
        t1 = time.perf_counter()
        identify_primary_objects(img)
        t2 = time.perf_counter()
        per.append({"id": i, "diameter": r.diameter, "scale": r.scale, "nuclei": r.count,
                    "segment_s": t1 - t0, "identifyprimaryobjects_s": t2 - t1})
    med = float(np.median([p["segment_s"] for p in per]))
    print(f"speed: median {med:.2f} s per 520x696 image")
    return {"segment_median_s": med,
            "identifyprimaryobjects_median_s": float(np.median([p["identifyprimaryobjects_s"] for p in per])),
            "per_image": per}

def peak_rss_mb():
    """Peak resident memory (MB) of this process since it started.

    VmHWM of /proc/self/status, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    exec, so a child started by a big parent would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

MEMORY_CHILD = r"""
import sys, time, numpy as np
from bench.speed import peak_rss_mb
from nucleaizer_backend import Model, segment_image
from nucleaizer_backend.imageio_utils import read_image
tile = read_image(sys.argv[1])
img = np.tile(tile, (8, 8, 1))[:2048, :2048]
Model.load(None, "cpu")
base = peak_rss_mb()
t0 = time.perf_counter()
r = segment_image(img, device="cpu")
print(base, peak_rss_mb(), r.count, r.diameter, time.perf_counter() - t0)
"""

def section_memory(model):
    row = [r for r in index_rows("val") if r["id"].startswith("0e5edb072788")][0]
    path = DATA / "val" / "images" / f"{row['id']}.png"
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    before, peak, count, diameter, seconds = out.stdout.split()
    res = {"image": "2048x2048 (a 256x256 val image tiled 8x8)", "peak_rss_mb": float(peak),
           "rss_before_segment_mb": float(before), "nuclei": int(count),
           "diameter": float(diameter), "seconds": float(seconds)}
    print(f"memory: peak {res['peak_rss_mb']:.0f} MB")
    return res

WORKER_CHILD = """
import sys, time
import torch
if sys.argv[2] != "default":
    torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, ".")
from bench.common import SPEED_IDS, index_rows, load_pair
from nucleaizer_backend import segment_image
model = sys.argv[1] or None
rows = {r["id"][:12]: r for r in index_rows()}
images = [load_pair(rows[i])[0] for i in SPEED_IDS]
segment_image(images[0], model=model, device="cpu")  # load the model, warm up
print("ready", torch.get_num_threads(), flush=True)
sys.stdin.readline()  # every worker starts at once
t0 = time.perf_counter()
for img in images:
    segment_image(img, model=model, device="cpu")
print(time.perf_counter() - t0, flush=True)
"""

def run_workers(model, workers, threads):
    """``workers`` processes segmenting the speed images at once, each with ``threads``
    torch threads ("default": torch's own choice); images per second over all of them."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER_CHILD, model or "", str(threads)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(workers)]
    used = [int(p.stdout.readline().split()[1]) for p in procs]
    t0 = time.perf_counter()
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
    seconds = [float(p.stdout.readline()) for p in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.wait()
    n = workers * len(SPEED_IDS)
    return {"workers": workers, "threads": used[0], "images": n, "wall_s": wall,
            "images_per_s": n / wall, "worker_s": seconds}

def section_workers(model):
    """Throughput of parallel worker processes (as CellProfiler's analysis workers) with
    torch's default threads in each, against cores / workers threads each."""
    from nucleaizer_backend.device import threads_per_process

    cores = os.cpu_count()
    runs = [run_workers(model, 1, "default"), run_workers(model, cores, "default"),
            run_workers(model, cores, threads_per_process(cores))]
    for r in runs:
        print(f"workers: {r['workers']} x {r['threads']} threads: "
              f"{r['images_per_s']:.2f} images/s")
    return {"cores": cores, "runs": runs}

ADAPT_SPEED_IMAGES = {"he": 12, "fluo": 8}  # val images, the first of each style

def section_adapt_speed(model):
    import tempfile

    import torch

    from nucleaizer_backend.style.adapt import AdaptConfig, adapt

    val = index_rows("val")
    rows = [r for style, n in ADAPT_SPEED_IMAGES.items()
            for r in [r for r in val if r["style"] == style][:n]]
    images = [DATA / "val" / "images" / f"{r['id']}.png" for r in rows]
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        res = adapt(images, Path(tmp) / "adapted",
                    config=AdaptConfig(base_model=model, preset="quick", threads=threads))
        wall = time.time() - t0
    out = {"images": len(images), "per_style": ADAPT_SPEED_IMAGES, "preset": "quick",
           "threads": threads, "wall_s": wall, "seconds_per_stage": res.seconds,
           "styles": res.n_clusters, "styles_learned": res.n_styles_learned,
           "synthetic_pairs": res.synthetic_count, "finetune_steps": res.finetune_steps,
           "peak_rss_mb": peak_rss_mb()}
    print(f"adapt_speed: {wall / 60:.1f} min for {len(images)} images")
    return out
