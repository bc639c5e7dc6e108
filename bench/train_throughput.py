"""Training throughput of the main network: crops per second before and after the training
speed-ups, measured side by side in one process, and a check that the speed-ups learn alike.

    .venv/bin/python bench/run_benchmarks.py --sections train_speed
    .venv/bin/python bench/run_benchmarks.py --sections train_learning

*train_speed*: every variant gets the same random initialisation and the same training
crops (nuclei at the 40 px working size, 256 px crops, batch 2) from a fixed subset of the
DSB train split. Variants are cumulative, from the training code as it was ("before") to
the last; they run in turns of a few steps each, round after round, so
a machine's changing load touches them alike. Each variant first runs warm-up steps (oneDNN
builds its kernels for each new tensor shape; the mask head sees a new number of RoIs at
almost every step). The time of a step includes making its crops (in the training process,
or waiting for the crop worker process).

*train_learning*: the real training loop (``nucleaizer train``) from random initialisation
for a few hundred steps with two seeds, for each arm of LEARNING_ARMS: the numerics and
proposal counts of "before" (fp32, 2000/1000 RPN proposals), the defaults, and the defaults
with fewer sampled RoIs; a change learns alike when its loss curve differs from before's no
more than two seeds differ from each other.
"""
import time

import numpy as np
import torch


def log_line(message):
    print(message, flush=True)

#: cumulative changes, in the order applied: (name, description)
VARIANTS = [
    ("before", "fp32, NCHW, per-parameter AdamW, 2000/1000 RPN proposals, crops made in the "
               "training process"),
    ("bf16", "+ bf16 autocast (CPU with native bf16)"),
    ("channels_last", "+ channels-last (NHWC) weights and activations"),
    ("fused_adamw", "+ fused AdamW"),
    ("proposals", "+ 600/300 RPN proposals (nuclei-sized)"),
    ("workers", "+ crops made ahead in one worker process"),
    ("rois", "+ 64 sampled RoIs per image instead of 128 (box and mask heads)"),
]
BEFORE_PROPOSALS = (2000, 1000)  # torchvision's COCO values, used until this change


def variant_settings(name):
    """(precision, channels_last, fused, architecture, workers) of a cumulative variant."""
    k = [v[0] for v in VARIANTS].index(name)
    arch = {} if k >= 4 else {"rpn_proposals_train": list(BEFORE_PROPOSALS)}
    if k >= 6:
        arch["box_rois_train"] = 64
    return "bf16" if k >= 1 else "fp32", k >= 2, k >= 3, arch, 1 if k >= 5 else 0


def build_variant(name, seed):
    """(model, optimizer, bf16, workers) for variant ``name``, on the CPU."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    from nucleaizer_backend.models.io import build_network
    from nucleaizer_backend.train.loop import TrainConfig, make_optimizer, use_bf16

    precision, channels_last, fused, arch, workers = variant_settings(name)
    torch.manual_seed(seed)
    model = build_network("main", arch)
    model.train()
    cpu = torch.device("cpu")
    if channels_last:
        model.to(cpu, memory_format=torch.channels_last)
    else:
        model.backbone.__class__ = BackboneWithFPN  # the plain NCHW backbone of before
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = TrainConfig(data="", out="")
    optimizer = make_optimizer(params, cfg, cpu) if fused else \
        torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, optimizer, use_bf16(precision, cpu), workers


def measure_speed(items, threads, warmup=20, rounds=5, steps_per_turn=8, seed=0,
                  progress=log_line):
    """Seconds per step of each variant at ``threads`` torch threads: runs every variant for
    ``warmup`` steps, then ``rounds`` turns of ``steps_per_turn`` timed steps each.
    Returns {variant: ([wall s per step, ...], [CPU s per step, ...])}, one value per turn.
    CPU time is the training process's (all its threads; not the crop worker's): on a
    machine shared with other jobs it changes far less than wall time."""
    from nucleaizer_backend.train.batches import crop_batches, sampling_weights
    from nucleaizer_backend.train.loop import TrainConfig, optimisation_step

    torch.set_num_threads(threads)
    cfg = TrainConfig(data="", out="", kind="main", seed=seed)
    weights, _ = sampling_weights(items, cfg.min_colour_share)
    spec = cfg.crop_spec()
    runs = {}
    for name, _ in VARIANTS:
        model, opt, bf16, workers = build_variant(name, seed)
        runs[name] = {"model": model, "opt": opt, "bf16": bf16, "workers": workers,
                      "params": [p for p in model.parameters() if p.requires_grad],
                      "rng": np.random.default_rng(seed), "step": 0, "times": [], "cpu": []}

    def turn(run, n, timed):
        c = TrainConfig(data="", out="", kind="main", seed=seed, workers=run["workers"])
        batches = crop_batches(c, items, weights, [], spec, run["rng"], run["step"])
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            images, targets = next(batches)
            optimisation_step(run["model"], run["opt"], run["params"], images, targets,
                              run["bf16"])
            run["step"] += 1
        if timed:
            run["times"].append((time.perf_counter() - t0) / n)
            run["cpu"].append((time.process_time() - c0) / n)
        del batches  # stops a worker process

    for name, run in runs.items():
        turn(run, warmup, timed=False)
    for r in range(rounds):
        for name, run in runs.items():
            turn(run, steps_per_turn, timed=True)
        progress(f"train_speed {threads} thread(s), round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {np.median(v['times']):.3f}/{np.median(v['cpu']):.3f}"
            for n, v in runs.items()) + " wall/CPU s per step")
    return {name: (run["times"], run["cpu"]) for name, run in runs.items()}


def section_train_speed(data_dir, batch_size=2, thread_counts=(1,), every=8,
                        progress=log_line):
    """Crops per second of each variant (see module doc), at each torch thread count."""
    from nucleaizer_backend.train.data import find_pairs, load_labeled_image

    pairs = find_pairs(data_dir)[::every]
    items = [load_labeled_image(i, l) for i, l in pairs]
    out = {"images": len(items), "batch_size": batch_size, "crop": 256,
           "variants": dict(VARIANTS), "by_threads": {}}
    for threads in thread_counts:
        times = measure_speed(items, threads, progress=progress)
        out["by_threads"][str(threads)] = {
            name: {"sec_per_step": wall, "cpu_sec_per_step": cpu,
                   "crops_per_s": batch_size / float(np.median(wall)),
                   "crops_per_cpu_s": batch_size / float(np.median(cpu))}
            for name, (wall, cpu) in times.items()}
    return out


#: the arms of the learning check: TrainConfig fields on top of the defaults
LEARNING_ARMS = {
    "before": {"precision": "fp32",
               "architecture": {"rpn_proposals_train": list(BEFORE_PROPOSALS)}},
    "after": {},
    "rois": {"architecture": {"box_rois_train": 64}},
}


def learning_runs(data_dir, out_dir, steps=400, seeds=(0, 1), threads=1, progress=log_line):
    """Loss curves of the real training loop for each of LEARNING_ARMS and seeds.
    Returns {arm: {seed: [(step, loss), ...]}} (loss: mean over 20 steps)."""
    from nucleaizer_backend.train.loop import TrainConfig, train
    from nucleaizer_backend.train.runs import read_run_log

    curves = {}
    for arm, extra in LEARNING_ARMS.items():
        for seed in seeds:
            run = f"{out_dir}/{arm}-seed{seed}"
            cfg = TrainConfig(data=str(data_dir), out=run, kind="main", steps=steps, seed=seed,
                              threads=threads, val=None, **extra)
            t0 = time.perf_counter()
            train(cfg, resume=True)
            progress(f"train_learning {arm} seed {seed}: {time.perf_counter() - t0:.0f} s")
            curves.setdefault(arm, {})[str(seed)] = [
                (r["step"], r["loss"]) for r in read_run_log(f"{run}/log.jsonl") if "loss" in r]
    return curves


def curve_differences(curves, skip=100):
    """Mean absolute difference of the 20-step loss after ``skip`` steps: between the two
    seeds of each arm (the noise), and between "before" and each other arm for the same seed
    (the effect). {"seeds <arm>": d, "before vs <arm>": d}."""
    def gap(a, b):
        a, b = dict(a), dict(b)
        return float(np.mean([abs(a[s] - b[s]) for s in a if s in b and s > skip]))

    out = {}
    for arm, by_seed in curves.items():
        s0, s1 = sorted(by_seed)[:2]
        out[f"seeds {arm}"] = gap(by_seed[s0], by_seed[s1])
    for arm in curves:
        if arm != "before":
            out[f"before vs {arm}"] = float(np.mean([gap(curves["before"][s], curves[arm][s])
                                                     for s in curves[arm]]))
    return out


def render(speed, learning):
    """The BENCHMARKS.md section (list of lines)."""
    out = []
    if speed:
        out += ["## Training throughput (main network, CPU)", "",
                f"Crops per second of training (256 px crops at the 40 px working size, batch "
                f"{speed['batch_size']}, {speed['images']} train images), each variant adding "
                f"one change to the one above, all measured side by side in one process "
                f"(bench/train_throughput.py). Machine: {speed.get('machine_line', '')}", "",
                "Two figures per thread count, each a median over the rounds with its ratio to "
                "*before*: crops per second of wall time, and crops per CPU second of the "
                "training process (its threads together; the crop worker's CPU time is not in "
                "it). CPU time is the steadier of the two where other jobs share the machine.",
                "", "| variant | change | " + " | ".join(
                    f"{t} thread{'s' if t != '1' else ''}: crops/s | crops per CPU s"
                    for t in speed["by_threads"]) + " |",
                "|---|---|" + "---|---|" * len(speed["by_threads"])]
        for name, desc in speed["variants"].items():
            cells = []
            for res in speed["by_threads"].values():
                for key in ("crops_per_s", "crops_per_cpu_s"):
                    ratio = res[name][key] / res["before"][key]
                    cells.append(f"{res[name][key]:.2f} ({ratio:.2f}x)")
            out.append(f"| {name} | {desc} | " + " | ".join(cells) + " |")
        out.append("")
    if learning:
        d = learning["differences"]
        out += [f"Same learning? The training loop (`nucleaizer train`) from random "
                f"initialisation for {learning['steps']} steps with seeds "
                f"{', '.join(learning['seeds'])}: *before* (fp32, 2000/1000 proposals), *after* "
                f"(the defaults: every change above but the last) and *rois* (the defaults with "
                f"64 sampled RoIs). Mean absolute difference of the 20-step training loss after "
                f"step 100:", "", "| compared | loss difference |", "|---|---|"]
        out += [f"| {k} | {v:.3f} |" for k, v in d.items()]
        noise = max(v for k, v in d.items() if k.startswith("seeds "))
        verdicts = [f"*{k[len('before vs '):]}* "
                    + ("learns alike (its difference from *before* is within the seed-to-seed "
                       "difference)" if v <= noise else "does not (its difference from *before* "
                       "exceeds the seed-to-seed difference)")
                    for k, v in d.items() if k.startswith("before vs ")]
        out += ["", "; ".join(verdicts) + "."]
        out += ["", "![loss curves of the learning check](docs/train_learning.png)", ""]
    return out


def plot_learning(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    colours = dict(zip(curves, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for label, colour in colours.items():
        for k, (seed, pts) in enumerate(sorted(curves[label].items())):
            s, l = zip(*pts)
            ax.plot(s, l, color=colour, lw=1.2, ls="-" if k == 0 else "--",
                    label=f"{label}, seed {seed}")
    ax.set_xlabel("step (batch of 2 crops)")
    ax.set_ylabel("training loss (mean of 20 steps)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
