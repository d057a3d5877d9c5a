#!/usr/bin/env bash
# Example sweep: phase 1 (benign and adversarial) for several seeds, then the
# per-class kernels of each saved epoch. Re-running it skips finished runs
# (--resume) and continues interrupted ones.
#   SEEDS="0 1 2" EPOCHS="0 1 2 5 10 20" bash scripts/sweep_kernels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0}
EPOCHS=${EPOCHS:-"0 1 2 5 10 20"}
for seed in $SEEDS; do
  for loaders in CC AC; do
    out=./sweep/phase_1_${loaders}_seed_${seed}
    $PY run_exp.py --standard_epochs 101 --linear_epochs 0 --loaders $loaders \
        --save_models --constant_save --save_path "$out" --random_seed "$seed" \
        --resume "$@"
    for epoch in $EPOCHS; do
      $PY calculate_kernel.py --model_path "$out/parameters_checkpoint_${epoch}.pkl" \
          --dataset_size 500 --random_seed "$seed" --class_index all \
          --bonus_dir kernels_epoch_${epoch}
    done
  done
done
