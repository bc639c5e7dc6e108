"""The paper's NOstyle / AUTOstyle / GTstyle comparison on our data (issue 4), with H&E as
the "new experiment" the base model has never seen.

    .venv/bin/python bench/style_adaptation.py [--data ../shared/data/dsb2018] [--threads 2]
        [--base-network FILE] [--only STAGES] [--tiny]

--data: the DSB 2018 data set folder (index.csv with id, split, style; train/ and val/, each
with images/<id>.png and labels/<id>.tif); the default, as for bench/run_benchmarks.py, is
../shared/data/dsb2018 beside the repository. Run from anywhere; the runs are written under
the repository's runs/style-bench/ (git-ignored) with paths relative to the repository root.

On a 2-core CPU the stages add up to about 6 hours of one-thread work. It ran there as two
one-thread lanes after the base (each --only stage is its own command; a stage refuses to
start before what it needs is there), then one scoring run:

    B=".venv/bin/python bench/style_adaptation.py --threads 1 --only"
    ($B preseg_fluo && $B autostyle && $B autostyle_transductive) &
    ($B unet_fluo && $B nostyle && $B upper_bound && $B gtstyle) &
    wait; .venv/bin/python bench/style_adaptation.py --only score

Resumable: every stage writes into runs/style-bench/ and is skipped when done, so re-running
the command continues (training stages resume from their checkpoints). Results go to
bench/results/style_adaptation.json; bench/report.py renders them into BENCHMARKS.md.

The base Mask R-CNN (the longest stage, 4000 steps from scratch on the fluorescence train
images) is kept in a cache: when its run finishes, its network is written to
bench/cache/style_base_fluo.safetensors (git-ignored), and a later run after runs/style-bench/
was removed takes the base from there instead of training it again. ``--base-network FILE``
takes it from another file (a copy of the cache from another machine, say): a finished base,
or one stopped part-way (its metadata's ``partial_of`` gives the planned steps), which is
trained on for the remaining steps (fresh optimiser, short warm-up, the learning rate the
cosine schedule had reached). With neither, the base is trained from scratch. (The results
in BENCHMARKS.md were measured with a base trained so in two parts, 2250 + 1750 steps; the
log of the first part is docs/training/style-bench-base/.)

Models, all scored on the H&E and the fluorescence images of the val split (automatic size,
shipped post-processing values):
- base: all three networks trained with the shipped recipes on the fluorescence train images
  only: Mask R-CNN (base, 4000 steps), preseg (preseg_fluo: the base fine-tuned 1200 steps
  with scale augmentation; it makes AUTOstyle's masks and every model's size estimate) and
  U-Net (unet_fluo, 1000 steps). No network of any model here has seen an H&E annotation,
  except the upper bound's and GTstyle's style masks;
- NOstyle control: the base fine-tuned for the same number of steps as the adapted models
  (main network and U-Net), on the fluorescence train images only (so extra training alone
  is not mistaken for adaptation);
- AUTOstyle: ``adapt`` on the unannotated H&E train images (preseg masks);
- AUTOstyle, transductive: ``adapt`` on the unannotated H&E val images themselves (as the
  paper did for its test set);
- AUTOstyle, 2 rounds (optional; results are written without it): ``adapt`` with
  iterations=2 on the unannotated H&E train images; its round 1 is the same job as
  AUTOstyle, so it starts from that folder when AUTOstyle has finished (otherwise its round-1
  model is scored too, as ``autostyle_2rounds_round1``);
- GTstyle: ``adapt`` on the H&E train images with their annotations as style masks;
- upper bound: the base fine-tuned the same number of steps (main network and U-Net) on
  fluorescence + annotated H&E train images (H&E at the base recipe's 30% share).
Every adaptation fine-tunes on the fluorescence train images as replay data (no real H&E);
every fine-tuned model's U-Net gets UNET_STEPS steps (batch 4, lr 5e-4). Each model is also
scored on H&E without its U-Net (detection + rules): a U-Net that has not seen a style
erases the detections of that style (p6), which the first run of this benchmark showed.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Paths relative to the repository root (main() works there), so that the training runs'
# records (config.json, network metadata) hold no absolute paths.
DATA = Path("..") / "shared" / "data" / "dsb2018"  # the default of --data
WORK = Path("runs") / "style-bench"
RESULTS = ROOT / "bench" / "results" / "style_adaptation.json"
CACHE = Path("bench") / "cache"  # git-ignored
BASE_CACHE_NAME = "style_base_fluo{}.safetensors"  # {}: "" or "_tiny"
BASE_LR, BASE_WARMUP = 1.5e-3, 300

STAGES = ("base", "preseg_fluo", "unet_fluo", "nostyle", "nostyle_unet", "upper_bound",
          "upper_bound_unet", "autostyle", "gtstyle", "autostyle_transductive",
          "autostyle_2rounds", "score")
REQUIRED = ("base", "nostyle", "upper_bound", "autostyle", "gtstyle", "autostyle_transductive")
BASE_NETWORKS = ("base", "preseg_fluo", "unet_fluo")
COMPLETE = ".complete"  # marks a model folder as fully written
BASE_STEPS, FINETUNE_STEPS = 4000, 1000
UNET_STEPS = 400  # every fine-tuned model's U-Net fine-tune (the adapt default would be 750)
TINY = {"base_steps": 2, "finetune_steps": 2, "style_steps": 2, "images": 3, "val": 4,
        "synthetic": 1, "unet_steps": 2}


def rows(split, style=None):
    with open(DATA / "index.csv") as f:
        return [r for r in csv.DictReader(f)
                if r["split"] == split and (style is None or r["style"] == style)]


def image_path(r):
    return DATA / r["split"] / "images" / f"{r['id']}.png"


def label_path(r):
    return DATA / r["split"] / "labels" / f"{r['id']}.tif"


def train_stage(name, steps, threads, kind="main", **kwargs):
    """Train (or resume) runs/style-bench/<name>; returns its last.safetensors."""
    from nucleaizer_backend.train.loop import TrainConfig, train

    out = WORK / name
    last = out / "last.safetensors"
    done = out / "done.json"
    if done.is_file():
        return last
    resume = (out / "checkpoint.pt").is_file()
    if resume:  # as many steps as the run was started with (a continued base: fewer)
        steps = json.loads((out / "config.json").read_text())["steps"]
    cfg = TrainConfig(data=str(DATA / "train"), out=str(out), kind=kind, steps=steps,
                      threads=threads, device="cpu", checkpoint_every=250, **kwargs)
    t0 = time.time()
    train(cfg, resume=resume)
    done.write_text(json.dumps({"seconds_this_run": time.time() - t0}))
    return last


def base_cache(tiny):
    return CACHE / BASE_CACHE_NAME.format("_tiny" if tiny else "")


def cache_base(base_steps, tiny):
    """The finished base network -> the cache, its metadata saying all ``base_steps``."""
    from nucleaizer_backend.models.io import load_network, read_network_meta, save_network

    last = WORK / "base" / "last.safetensors"
    net, _ = load_network(last)
    meta = {k: v for k, v in read_network_meta(last).items()
            if k not in ("architecture", "partial_of")}
    save_network(net, base_cache(tiny), dict(meta, steps=base_steps))
    print(f"{base_cache(tiny)}: the base network, for later runs")


def base_stage(base_steps, threads, tiny, base_network=None):
    """The fluorescence-only base network: from ``base_network`` (or the cache) when given,
    continued when it stopped part-way; else trained from scratch and then cached."""
    import math

    from nucleaizer_backend.models.io import read_network_meta

    if finished("base"):
        if not base_cache(tiny).is_file():
            cache_base(base_steps, tiny)
        return WORK / "base" / "last.safetensors"
    val = dict(val=str(DATA / "val"), val_every=1000, val_limit=TINY["val"] if tiny else None)
    source = base_network or (base_cache(tiny) if base_cache(tiny).is_file() else None)
    if source and not (WORK / "base" / "checkpoint.pt").is_file():
        meta = read_network_meta(source)
        done, planned = int(meta["steps"]), int(meta.get("partial_of") or meta["steps"])
        if planned != base_steps:
            sys.exit(f"{source}: a base of {planned} steps; this benchmark's has {base_steps}")
        if done >= base_steps:  # a finished base: taken as it is
            (WORK / "base").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, WORK / "base" / "last.safetensors")
            (WORK / "base" / "done.json").write_text(json.dumps({"from": str(source)}))
            print(f"base: {source} (step {done} of {base_steps})")
            return WORK / "base" / "last.safetensors"
        t = min(1.0, (done - BASE_WARMUP) / (base_steps - BASE_WARMUP))
        lr = BASE_LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))
        last = train_stage("base", base_steps - done, threads, styles=["fluo"], lr=lr,
                           warmup=50, init=str(source), **val)
    else:
        last = train_stage("base", base_steps, threads, styles=["fluo"], lr=BASE_LR,
                           warmup=min(BASE_WARMUP, base_steps), **val)
    cache_base(base_steps, tiny)
    return last


def finished(name):
    return (WORK / name / "done.json").is_file()


def base_folder():
    """runs/style-bench/models/base: the fluorescence-only main, preseg and U-Net networks,
    with the shipped model's post-processing values."""
    from nucleaizer_backend.models.io import (DEFAULT_MODEL_DIR, INFO_FILE, MAIN_FILE,
                                              PRESEG_FILE, UNET_FILE)

    folder = WORK / "models" / "base"
    if (folder / COMPLETE).is_file():  # built once: an adaptation may be reading it
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for run, file in zip(BASE_NETWORKS, (MAIN_FILE, PRESEG_FILE, UNET_FILE)):
        shutil.copyfile(WORK / run / "last.safetensors", folder / file)
    shipped = json.loads((DEFAULT_MODEL_DIR / INFO_FILE).read_text())
    (folder / INFO_FILE).write_text(json.dumps({
        "name": "style-bench-base",
        "description": "style-adaptation benchmark base: main, preseg and U-Net trained on "
                       "the DSB 2018 fluorescence train images only",
        "postprocess": shipped["postprocess"]}, indent=1))
    (folder / COMPLETE).touch()
    return folder


def model_folder(network, name, unet=None):
    """A model folder: main network ``network``, U-Net ``unet`` (None: the base's), the
    base's preseg and model.json; rebuilt when its networks are not those any more."""
    from nucleaizer_backend.models.io import MAIN_FILE, UNET_FILE

    folder = WORK / "models" / name
    sources = json.dumps({"main": str(network), "unet": str(unet)})
    if not (folder / COMPLETE).is_file() or (folder / COMPLETE).read_text() != sources:
        shutil.copytree(WORK / "models" / "base", folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(COMPLETE))
        shutil.copyfile(network, folder / MAIN_FILE)
        if unet:
            shutil.copyfile(unet, folder / UNET_FILE)
        (folder / COMPLETE).write_text(sources)
    return folder


def adapt_stage(name, base_folder, images, annotations, threads, tiny, iterations=1):
    from nucleaizer_backend.style.adapt import AdaptConfig, adapt

    cfg = AdaptConfig(base_model=str(base_folder), preset="quick",
                      finetune_steps=TINY["finetune_steps"] if tiny else FINETUNE_STEPS,
                      style_steps=TINY["style_steps"] if tiny else None,
                      synthetic_per_cluster=TINY["synthetic"] if tiny else 20,
                      unet_steps=TINY["unet_steps"] if tiny else UNET_STEPS,
                      replay_data=str(DATA / "train"), replay_styles=["fluo"],
                      iterations=iterations, threads=threads, device="cpu")
    res = adapt(images, WORK / name, annotations=annotations, config=cfg)
    return res


def seed_first_round(name, iterations):
    """Round 1 of a multi-round AUTOstyle is exactly the one-round ``autostyle`` job (same
    images, settings and seed; the adapt module checks that on resume): copy its finished
    folder in rather than spend ~45 CPU-minutes computing it again."""
    src, work = WORK / "autostyle", WORK / name / "work"
    if not (src / "model.json").is_file() or (work / "round_1").exists():
        return
    shutil.copytree(src, work / "round_1", ignore=shutil.ignore_patterns("bench_info.json"))
    (work / "rounds.json").write_text(json.dumps({"iterations": iterations}))


def score(name, model, val_rows, tiny):
    """Mean DSB score of ``model`` on the H&E and the fluorescence rows of ``val_rows``,
    cached in runs/style-bench/scores/<name>.json (so lanes and re-runs share it)."""
    cache = WORK / "scores" / f"{name}.json"
    out = json.loads(cache.read_text()) if cache.is_file() else {}
    from nucleaizer_backend import segment_image
    from nucleaizer_backend.evaluate import score_image
    from nucleaizer_backend.imageio_utils import read_image
    from nucleaizer_backend.train.data import read_labels

    def mean_dsb(sel, **kw):
        return float(np.mean([score_image(read_labels(label_path(r)), segment_image(
            read_image(image_path(r)), model=model, device="cpu", **kw).labels).dsb
            for r in sel]))

    for style in ("he", "fluo"):
        sel = [r for r in val_rows if r["style"] == style]
        if f"dsb_{style}" not in out:
            out[f"dsb_{style}"], out[f"n_{style}"] = mean_dsb(sel), len(sel)
    if "dsb_he_no_unet" not in out:  # detection + rules alone: what the U-Net adds or takes
        out["dsb_he_no_unet"] = mean_dsb([r for r in val_rows if r["style"] == "he"],
                                         refine="rules")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def from_root(path):
    """``path`` (relative to the working directory) relative to the repository root."""
    return Path(os.path.relpath(Path(path).resolve(), ROOT))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="DSB 2018 data set folder (index.csv, train/, "
                    "val/; default: ../shared/data/dsb2018 beside the repository)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="plumbing check with tiny settings "
                    "(writes to runs/style-bench-tiny, no results file)")
    ap.add_argument("--base-network", type=Path, help="fluorescence-only base network file to "
                    "start from (default: bench/cache/style_base_fluo.safetensors when there "
                    "is one, else the base is trained)")
    ap.add_argument("--only", default=",".join(STAGES), help="comma-separated stages to run "
                    f"(default all: {','.join(STAGES)}); 'score' scores every finished model")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(STAGES):
        ap.error(f"unknown stage(s) {sorted(only - set(STAGES))}; stages: {','.join(STAGES)}")
    global DATA, WORK
    if args.data and not (args.data / "index.csv").is_file():
        sys.exit(f"{args.data}: no index.csv (--data: the DSB 2018 data set folder)")
    if args.base_network and not args.base_network.is_file():
        sys.exit(f"{args.base_network}: no such network file")
    if args.data:
        DATA = from_root(args.data)
    base_network = from_root(args.base_network) if args.base_network else None
    os.chdir(ROOT)
    if not (DATA / "index.csv").is_file():
        sys.exit(f"{DATA} (the default, from the repository root): no index.csv; give the "
                 "DSB 2018 data set folder with --data")
    if args.tiny:
        WORK = WORK.with_name("style-bench-tiny")
    WORK.mkdir(parents=True, exist_ok=True)
    base_steps = TINY["base_steps"] if args.tiny else BASE_STEPS
    ft_steps = TINY["finetune_steps"] if args.tiny else FINETUNE_STEPS
    he_train, he_val = rows("train", "he"), rows("val", "he")
    val = rows("val")
    if args.tiny:
        he_train, he_val = he_train[:TINY["images"]], he_val[:TINY["images"]]
        val = he_val[:2] + rows("val", "fluo")[:2]
    timings = {}

    t0 = time.time()
    base = WORK / "base" / "last.safetensors"
    if "base" in only:
        base = base_stage(base_steps, args.threads, args.tiny, base_network)
        timings["base"] = time.time() - t0
    if not finished("base"):
        sys.exit("the base network is not trained yet: run with --only base first")
    finetune = dict(init=str(base), lr=5e-4, warmup=min(20, ft_steps))
    fluo = {"styles": ["fluo"]}
    trainings = {  # name: (kind, steps, settings); the recipes of the shipped networks
        "preseg_fluo": ("preseg", TINY["base_steps"] if args.tiny else 1200,
                        dict(init=str(base), lr=5e-4, warmup=min(100, base_steps), **fluo)),
        "unet_fluo": ("unet", TINY["base_steps"] if args.tiny else 1000,
                      dict(batch_size=4, lr=1e-3, warmup=min(300, base_steps), **fluo)),
        "nostyle": ("main", ft_steps, dict(finetune, **fluo)),
        "upper_bound": ("main", ft_steps, finetune)}
    unet_ft = dict(init=str(WORK / "unet_fluo" / "last.safetensors"), batch_size=4, lr=5e-4,
                   warmup=20)  # as the adaptations fine-tune their U-Net
    unet_steps = TINY["unet_steps"] if args.tiny else UNET_STEPS
    trainings.update({"nostyle_unet": ("unet", unet_steps, dict(unet_ft, **fluo)),
                      "upper_bound_unet": ("unet", unet_steps, unet_ft)})
    adaptations = {"autostyle": ([image_path(r) for r in he_train], None),
                   "autostyle_transductive": ([image_path(r) for r in he_val], None),
                   "gtstyle": ([image_path(r) for r in he_train],
                               {r["id"]: str(label_path(r)) for r in he_train}),
                   "autostyle_2rounds": ([image_path(r) for r in he_train], None, 2)}
    models = {}
    for name in STAGES[1:-1]:
        base_ready = all(finished(n) for n in BASE_NETWORKS)
        if name in only:
            t0 = time.time()
            if name in adaptations:
                if not base_ready:
                    sys.exit(f"{name} needs {', '.join(BASE_NETWORKS)} trained first")
                images, annotations, *rounds = adaptations[name]
                if rounds:
                    seed_first_round(name, rounds[0])
                res = adapt_stage(name, WORK / "models" / "base", images, annotations,
                                  args.threads, args.tiny, iterations=rounds[0] if rounds else 1)
                (WORK / name / "bench_info.json").write_text(json.dumps({
                    "seconds": res.seconds, "styles": res.n_clusters,
                    "synthetic": res.synthetic_count, "images": res.n_images}))
            else:
                kind, steps, settings = trainings[name]
                train_stage(name, steps, args.threads, kind=kind, **settings)
            timings[name] = time.time() - t0
        if name == "unet_fluo" and all(finished(n) for n in BASE_NETWORKS):
            models["base"] = base_folder()
        if name in adaptations and (WORK / name / "model.json").is_file():
            models[name] = WORK / name
            first_round = WORK / name / "work" / "round_1"
            if (first_round / "model.json").is_file() and "autostyle" not in models:
                models[f"{name}_round1"] = first_round  # (else: the same job as autostyle)
        elif (name in ("nostyle_unet", "upper_bound_unet") and finished(name)
              and finished(name[:-5]) and "base" in models):
            models[name[:-5]] = model_folder(WORK / name[:-5] / "last.safetensors", name[:-5],
                                             unet=WORK / name / "last.safetensors")
    if "score" not in only:
        return
    scores = {name: score(name, folder, val, args.tiny) for name, folder in models.items()}
    for name, s in scores.items():
        print(f"{name}: H&E val DSB {s['dsb_he']:.3f}, fluo val DSB {s['dsb_fluo']:.3f}")
    missing = [n for n in REQUIRED if n not in scores]
    if missing:
        print(f"not finished yet: {', '.join(missing)}")
    if not all(n in scores for n in ("base", "autostyle")):
        print("no results file written (needs at least base and autostyle)")
        return
    if args.tiny:
        return
    from bench.run_benchmarks import machine

    RESULTS.write_text(json.dumps({
        "scores": scores, "not_run": missing,
        "adaptations": {k: json.loads((WORK / k / "bench_info.json").read_text())
                        for k in adaptations if (WORK / k / "bench_info.json").is_file()},
        "training_seconds": {k: json.loads((WORK / k / "done.json").read_text())
                             for k in (*BASE_NETWORKS, "nostyle", "nostyle_unet", "upper_bound",
                                       "upper_bound_unet") if finished(k)},
        "settings": {"base_steps": base_steps, "finetune_steps": ft_steps,
                     "unet_steps": TINY["unet_steps"] if args.tiny else UNET_STEPS,
                     "preset": "quick", "replay": "DSB train, fluorescence only"},
        "_meta": {"machine": machine(), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                  time.gmtime()),
                  "command": "python bench/style_adaptation.py", "wall_s_last_run": timings,
                  "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip(),
                  "model": "see settings"}}, indent=1, default=str))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
