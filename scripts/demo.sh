#!/usr/bin/env bash
# Sets up .venv, then runs a small version of the paper end to end on the
# CPU: Fashion-MNIST (Debian's package, or --data_path contents), a ResNet-18
# of width 4, 1000 training and 200 test images. Outputs go to demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=demo_out
DATA=${DATA_PATH:-./data}
SMALL=(--dataset fashion_mnist --data_path "$DATA" --model resnet18 --width 4
       --train_size 1000 --test_size 200 --eval_pgd_iters 10 --train_pgd_iters 5)
set -x
# Phase 1, benign, 3 epochs with checkpoints.
$PY run_exp.py --standard_epochs 3 --linear_epochs 0 --loaders CC --save_models \
    --save_path $OUT/phase_1 --constant_save --random_seed 0 "${SMALL[@]}"
# Phase 2: adversarial training of the centered linearization around θ(2).
$PY run_exp.py --base_model_path $OUT/phase_1/parameters_checkpoint_2.pkl \
    --loaders CA --linear_epochs 1 --second_lr 0.01 --save_models --centering \
    --save_path $OUT/phase_2 --random_seed 0 "${SMALL[@]}"
# PGD evaluation of the phase-2 model, keeping its adversarial examples
# (--overwrite: a second demo replaces the first one's evaluation).
$PY eval_and_make_adv.py --model_path $OUT/phase_2/parameters_final.pkl \
    --linear --centering --save_examples --bonus_dir test_results \
    --random_seed 0 --data_path "$DATA" --test_size 200 --pgd_iters 10 \
    --overwrite
# Per-class kernels of θ(2) on 100 training images, and feature images of
# class 1 (the figure of docs/visualize_ntk_features.md). They start from the mean of the kernel's images:
# on the grey start every first-layer channel of this width-4 network is off,
# so no pixel inside the image could move (the script warns of this).
$PY calculate_kernel.py --model_path $OUT/phase_1/parameters_checkpoint_2.pkl \
    --dataset_size 100 --random_seed 0 --class_index all --data_path "$DATA"
$PY visualize_ntk_features.py --model_path $OUT/phase_1/parameters_checkpoint_2.pkl \
    --dataset_size 100 --class_index 1 --start mean --data_path "$DATA"
set +x
echo "demo: results in $OUT/ (results.json, log.jsonl, test_results/, kernels, PNG)"
cat $OUT/phase_1/results.json $OUT/phase_2/results.json
