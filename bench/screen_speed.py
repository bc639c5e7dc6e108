"""Benchmark sections on screening speed (bench/run_benchmarks.py runs them; measure them on
an otherwise idle CPU, as their timings are compared with each other):

- speed_bins: every val image segmented with automatic size at the accurate and the fast
  speed: seconds and DSB per nucleus-size bin; a 512x512 crop of an image with ~10 px
  nuclei against a 520x696 image with ~50 px nuclei, timed alternately in the same run;
  CellProfiler's IdentifyPrimaryObjects on the same images in the same run.
- module_speed: wall time per image of SegmentNucleiStyleAdapted in a headless CellProfiler
  pipeline (CellProfiler's own log of each module's wall time) against `nucleaizer segment`
  on the same images with the same threads.
- plate: a plate-like batch of 200 DSB images through 2 `nucleaizer segment` processes of
  1 thread each, images per second.
"""
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DATA, ROOT, identify_primary_objects, index_rows, load_pair

SIZE_BINS = (("< 14 px", 0.0, 14.0), ("14-25 px", 14.0, 25.0), ("> 25 px", 25.0, 1e9))
SMALL_NUCLEI_IMAGE = "a102535b0e88"  # train, 603x1272, 375 nuclei of median 10.0 px
LARGE_NUCLEI_IMAGE = "2dec81a678dd"  # val, 520x696, 22 nuclei of median 49 px
PAIR_ROUNDS = 3
MODULE_IMAGES = 12  # val images of module_speed (the first is left out of the comparison)
PLATE_IMAGES = 200
SPEEDS = ("accurate", "fast")


def size_bin(diameter):
    return next(name for name, lo, hi in SIZE_BINS if lo <= diameter < hi)


def small_nuclei_crop():
    """(512x512 crop of SMALL_NUCLEI_IMAGE, its labels): the top-left corner."""
    row = next(r for r in index_rows() if r["id"].startswith(SMALL_NUCLEI_IMAGE))
    image, labels = load_pair(row)
    return image[:512, :512], labels[:512, :512]


def time_call(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def section_speed_bins(model):
    from nucleaizer_backend import Model, segment_image
    from nucleaizer_backend.evaluate import score_image

    model = Model.load(model, "cpu")
    rows = index_rows("val")
    segment_image(load_pair(rows[0])[0], model=model)  # warm up
    identify_primary_objects(load_pair(rows[0])[0])
    per = []
    for r in rows:
        image, truth = load_pair(r)
        entry = {"id": r["id"][:12], "style": r["style"],
                 "true_diameter": float(r["median_diameter_px"]),
                 "bin": size_bin(float(r["median_diameter_px"]))}
        for speed in SPEEDS:
            result, seconds = time_call(segment_image, image, model=model, speed=speed)
            entry[speed] = {"seconds": seconds, "dsb": score_image(truth, result.labels).dsb,
                            "scale": result.scale, "diameter": result.diameter,
                            "stage_seconds": result.stage_seconds}
        entry["identifyprimaryobjects_s"] = time_call(identify_primary_objects, image)[1]
        per.append(entry)
        print(f"speed_bins: {entry['id']} {entry['bin']}: " + ", ".join(
            f"{s} {entry[s]['seconds']:.2f} s DSB {entry[s]['dsb']:.3f}" for s in SPEEDS),
            flush=True)
    bins = {}
    for name, _, _ in SIZE_BINS + (("all", 0, 0),):
        members = [p for p in per if name == "all" or p["bin"] == name]
        bins[name] = {"images": len(members)} | {
            s: {"median_s": float(np.median([p[s]["seconds"] for p in members])),
                "dsb": float(np.mean([p[s]["dsb"] for p in members]))} for s in SPEEDS} | {
            "identifyprimaryobjects_median_s":
                float(np.median([p["identifyprimaryobjects_s"] for p in members]))}
    return {"bins": bins, "pair": time_pair(model), "per_image": per,
            "default_speed": model.default_speed, "fast_diameter": model.fast_diameter}


def time_pair(model):
    """The 512x512 small-nuclei crop and the 520x696 large-nuclei image, each speed and
    IdentifyPrimaryObjects timed alternately PAIR_ROUNDS times: median seconds, the small
    image's DSB, and the ratio small / large."""
    from nucleaizer_backend import segment_image
    from nucleaizer_backend.evaluate import score_image

    small, small_truth = small_nuclei_crop()
    large_row = next(r for r in index_rows() if r["id"].startswith(LARGE_NUCLEI_IMAGE))
    large = load_pair(large_row)[0]
    times = {}
    dsb = {}
    for _ in range(PAIR_ROUNDS):
        for speed in SPEEDS:
            for name, image in (("small", small), ("large", large)):
                result, seconds = time_call(segment_image, image, model=model, speed=speed)
                times.setdefault(f"{name}_{speed}", []).append(seconds)
                if name == "small":
                    dsb[speed] = score_image(small_truth, result.labels).dsb
        for name, image in (("small", small), ("large", large)):
            times.setdefault(f"{name}_ipo", []).append(
                time_call(identify_primary_objects, image)[1])
    med = {k: float(np.median(v)) for k, v in times.items()}
    out = {"small_image": f"{SMALL_NUCLEI_IMAGE} (train), top-left 512x512, ~10 px nuclei",
           "large_image": f"{LARGE_NUCLEI_IMAGE} (val), 520x696, ~49 px nuclei",
           "median_s": med, "small_dsb": dsb,
           "ratio": {s: med[f"small_{s}"] / med[f"large_{s}"] for s in SPEEDS}}
    print("speed_bins: 512x512 10 px: " + ", ".join(
        f"{s} {med[f'small_{s}']:.2f} s ({out['ratio'][s]:.1f}x the 520x696 image)"
        for s in SPEEDS), flush=True)
    return out


# ----------------------------------------------------------------- module against backend

WALL_LINE = re.compile(r"Image # (\d+), module SegmentNucleiStyleAdapted # \d+: "
                       r"CPU_time = ([\d.]+) secs, Wall_time = ([\d.]+) secs")


def module_images(folder, n=MODULE_IMAGES):
    """Copy the first ``n`` val images (index order) into ``folder``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = index_rows("val")[:n]
    paths = []
    for r in rows:
        dst = folder / f"{r['id'][:12]}.png"
        shutil.copy(DATA / "val" / "images" / f"{r['id']}.png", dst)
        paths.append(dst)
    return paths


def run_module(images, out, threads):
    """Headless CellProfiler on example_pipelines/segment_and_measure.cppipe: per image
    (sorted by image number) the module's (CPU s, wall s) from CellProfiler's log."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "cellprofiler"), "-c", "-r", "-L", "INFO",
         "-p", str(ROOT / "example_pipelines" / "segment_and_measure.cppipe"),
         "-i", str(images), "-o", str(out), "--plugins-directory", str(ROOT / "plugins")],
        capture_output=True, text=True, env=env, cwd=ROOT)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"CellProfiler failed: {log[-2000:]}")
    found = sorted((int(n), float(c), float(w)) for n, c, w in WALL_LINE.findall(log))
    names = [Path(r["FileName_Original"]).stem for r in csv.DictReader(open(out / "Image.csv"))]
    return {name: {"cpu_s": c, "wall_s": w} for name, (_, c, w) in zip(names, found)}


def run_cli(images, out, threads):
    """`nucleaizer segment --threads` on the same images: per image the seconds of
    segment_image (summary.csv)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "nucleaizer"), "segment", str(images), "-o", str(out),
         "--threads", str(threads), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"nucleaizer segment failed: {proc.stderr[-2000:]}")
    return {Path(r["image"]).stem: float(r["seconds"])
            for r in csv.DictReader(open(out / "summary.csv"))}


def section_module_speed(model, threads=2):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = module_images(tmp / "images")
        module = run_module(tmp / "images", tmp / "cp", threads)
        cli = run_cli(tmp / "images", tmp / "cli", threads)
    names = [p.stem for p in paths]
    compared = names[1:]  # the first image pays for loading the model in both
    per = [{"image": n, "module_wall_s": module[n]["wall_s"], "module_cpu_s": module[n]["cpu_s"],
            "backend_s": cli[n]} for n in names]
    med_module = statistics.median(module[n]["wall_s"] for n in compared)
    med_cli = statistics.median(cli[n] for n in compared)
    ratio = sum(module[n]["wall_s"] for n in compared) / sum(cli[n] for n in compared)
    print(f"module_speed: module {med_module:.2f} s, backend {med_cli:.2f} s per image "
          f"(ratio of totals {ratio:.3f})")
    return {"threads": threads, "images": len(compared), "module_median_wall_s": med_module,
            "module_median_cpu_s": statistics.median(module[n]["cpu_s"] for n in compared),
            "backend_median_s": med_cli, "ratio_total": ratio, "per_image": per}


# ----------------------------------------------------------------- plate-like batch

def plate_rows(n=PLATE_IMAGES):
    """The first ``n`` DSB images in index order (train and val, all sizes and styles)."""
    return index_rows()[:n]


def section_plate(model, workers=2, threads=1):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = plate_rows()
        parts = [tmp / f"part{i}" for i in range(workers)]
        for p in parts:
            p.mkdir()
        for i, r in enumerate(rows):
            shutil.copy(DATA / r["split"] / "images" / f"{r['id']}.png",
                        parts[i % workers] / f"{r['id'][:12]}.png")
        cmd = [str(Path(sys.executable).parent / "nucleaizer"), "segment", "--threads",
               str(threads), "--device", "cpu"] + (["--model", model] if model else [])
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd + [str(p), "-o", str(tmp / f"out{i}")], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for i, p in enumerate(parts)]
        errors = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - t0
        if any(p.returncode for p in procs):
            raise RuntimeError(f"nucleaizer segment failed: {errors}")
        done = sum(1 for i in range(workers)
                   for _ in csv.DictReader(open(tmp / f"out{i}" / "summary.csv")))
    res = {"images": len(rows), "segmented": done, "workers": workers, "threads": threads,
           "wall_s": wall, "images_per_s": len(rows) / wall,
           "sizes": sorted({f"{r['height']}x{r['width']}" for r in rows})}
    print(f"plate: {res['images_per_s']:.2f} images/s ({len(rows)} images, {workers} x "
          f"{threads} thread)")
    return res
