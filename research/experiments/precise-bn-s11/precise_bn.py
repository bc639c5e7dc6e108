"""PreciseBN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): replace a network's
BatchNorm running statistics, an exponential average over the last ~10 training batches
(momentum 0.1; here batches of 2 crops, so ~20 crops), by the plain average of the batch
statistics over many training batches made exactly as in training (same crops, augmentation,
batch size and colour/gray share). Weights are untouched.

Usage, from the repository root:
  python research/experiments/precise-bn-s11/precise_bn.py KIND NETWORK_FILE OUT_FILE \
      [--batches N] [--seed S]
KIND: main, preseg or unet (as trained: crops at 40 px, or 12-100 px for preseg)."""
import argparse, sys, time
import numpy as np, torch
from torch import nn
sys.path.insert(0, ".")
from nucleaizer_backend.models.io import load_network, save_network
from nucleaizer_backend.train.loop import (TrainConfig, batch_stream, sampling_weights,
                                           training_items)

p = argparse.ArgumentParser()
p.add_argument("kind"); p.add_argument("src"); p.add_argument("out")
p.add_argument("--batches", type=int, default=400)
p.add_argument("--batch-size", type=int, default=None)
p.add_argument("--seed", type=int, default=11)
p.add_argument("--data", default="../shared/data/dsb2018/train")
p.add_argument("--min-colour-share", type=float, default=0.3)  # as the network was trained
a = p.parse_args()
torch.set_num_threads(2)
model, meta = load_network(a.src, "cpu")
bs = a.batch_size or meta.get("batch_size", 2)
cfg = TrainConfig(data=a.data, out="runs/precise-bn-unused", kind=a.kind, batch_size=bs,
                  crop=meta.get("crop", 256), seed=a.seed, min_colour_share=a.min_colour_share)
items = training_items(cfg)
weights, _ = sampling_weights(items, cfg.min_colour_share)
stream = batch_stream(cfg, items, weights, [], cfg.crop_spec(), np.random.default_rng(a.seed))
bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
model.eval()
for m in bns:
    m.reset_running_stats(); m.momentum = None; m.train()
t0 = time.time()
with torch.no_grad():
    for i in range(a.batches):
        images, _ = next(stream)
        if a.kind == "unet":
            model(torch.stack(images).contiguous(memory_format=torch.channels_last))
        else:
            batch, _ = model.transform(images)
            model.backbone(batch.tensors.contiguous(memory_format=torch.channels_last))
        if (i + 1) % 50 == 0:
            print(f"{i + 1}/{a.batches} batches, {time.time() - t0:.0f} s", flush=True)
for m in bns:
    m.momentum = 0.1; m.eval()
shift = [float(((m.running_mean - b[0]).abs() / b[1].sqrt().clamp_min(1e-3)).mean())
         for m, b in zip(bns, before)]
ratio = [float((m.running_var / b[1].clamp_min(1e-6)).mean()) for m, b in zip(bns, before)]
print(f"{len(bns)} BatchNorm layers; mean |shift of running mean| / old std: "
      f"median {np.median(shift):.3f}, max {max(shift):.3f}; new / old variance: median "
      f"{np.median(ratio):.3f}, range {min(ratio):.3f}-{max(ratio):.3f}")
meta = dict(meta, precise_bn={"batches": a.batches, "batch_size": bs, "seed": a.seed,
                              "crops": a.batches * bs,
                              "min_colour_share": a.min_colour_share})
meta.pop("architecture", None)
save_network(model, a.out, meta)
print("wrote", a.out)
