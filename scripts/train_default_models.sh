#!/usr/bin/env bash
# Trains the shipped default models from ../shared/data/dsb2018, stage by stage. Re-running
# continues: a finished stage is skipped, an interrupted one resumes from its checkpoint.
# THREADS=N sets torch's CPU threads (default 2). On a GPU machine the same commands use it.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/dsb2018}
T=${THREADS:-2}
NZ=".venv/bin/nucleaizer"

stage() {  # stage RUN_DIR STEPS ARGS...: train (or resume) unless the run reached STEPS
  local out=$1 steps=$2; shift 2
  if [ -f "$out/checkpoint.pt" ]; then
    local done_steps
    done_steps=$(.venv/bin/python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['step'])" "$out/checkpoint.pt")
    if [ "$done_steps" -ge "$steps" ]; then echo "[train] $out complete ($done_steps steps)"; return; fi
    "$NZ" train --out "$out" --steps "$steps" --data "$DATA/train" --val "$DATA/val" --resume "$@"
  else
    "$NZ" train --out "$out" --steps "$steps" --data "$DATA/train" --val "$DATA/val" "$@"
  fi
}

# Stage 1, main network: nuclei rescaled to 40 px, from random initialisation.
stage runs/main-s1 4000 --kind main --lr 1.5e-3 --warmup 300 --val-every 1500 --threads "$T"
# Stage 2, main network trained on from stage 1 (the shipped main is this run's last
# checkpoint, step 5000; the shipped run was started for 6000 steps and shortened to 5000 at
# step 1500, so its first 1500 steps had a slightly higher learning rate than this command's).
stage runs/main-s3 5000 --kind main --init runs/main-s1/best.safetensors --lr 1e-3 \
  --warmup 200 --val-every 2000 --seed 2 --threads "$T"
# preseg: the stage-2 main network fine-tuned with scale augmentation (nuclei 12-100 px).
stage runs/preseg-s2 1200 --kind preseg --init runs/main-s3/last.safetensors --lr 5e-4 \
  --warmup 100 --val-every 600 --threads "$T"

# Refinement U-Net: foreground probability at the 40 px working scale, from random init.
stage runs/unet-s1 2500 --kind unet --batch-size 4 --lr 1e-3 --val-every 500 --threads "$T"
# ... trained on from its val-selected weights (step 1000) at half the learning rate.
stage runs/unet-s2 3000 --kind unet --batch-size 4 --init runs/unet-s1/best.safetensors \
  --lr 5e-4 --warmup 100 --val-every 500 --seed 1 --threads "$T"
# ... and once more with colour (H&E) and gray images at 50% each.
stage runs/unet-s3-colour50 1500 --kind unet --batch-size 4 --init runs/unet-s2/best.safetensors \
  --lr 3e-4 --warmup 50 --val-every 500 --min-colour-share 0.5 --seed 2 --threads "$T"

.venv/bin/python scripts/package_default_model.py \
  --main runs/main-s3/last.safetensors --preseg runs/preseg-s2/best.safetensors \
  --unet runs/unet-s3-colour50/best.safetensors
# Post-processing values (p1..p6, confidence): nucleaizer tune's search on the val split,
# with 2-fold cross-validation for an honest estimate (BENCHMARKS.md, "Post-processing").
.venv/bin/python bench/run_benchmarks.py --sections tuning
.venv/bin/python scripts/package_default_model.py --postprocess-from bench/results/tuned_postprocess.json
