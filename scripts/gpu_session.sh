#!/usr/bin/env bash
# The one script to run on a lent GPU machine: one H100/H200 whose image has
# JAX 0.11.2 with CUDA 13, optax and NumPy, but no Haiku and no network.
#
#   bash scripts/gpu_session.sh --prepare    # here, once: wheels of dm-haiku
#                                            # and jmp into .whl/, Debian's
#                                            # Fashion-MNIST into .gpu/fm/
#   bash scripts/gpu_session.sh              # there, carrying .whl and .gpu
#
# On the GPU machine it installs the carried wheels into /tmp/site, unpacks
# Fashion-MNIST into /tmp/data, then runs, each step under its own time
# limit and each result written under $OUT (default /tmp/gpu_out):
#   1. (with BENCH_BEFORE=DIR, a copy of the code to compare with)
#      bench/bench_epochs.py on that code -> bench_before.{txt,json}
#   2. bench/bench_epochs.py, the four rates      -> bench.{txt,json}
#   3. bench/profile_epochs.py with traces        -> profile.{txt,json}, trace/
#   4. run_exp.py, one adversarial epoch of each phase on $E2E_TRAIN (5120)
#      Fashion-MNIST images, evaluated on $E2E_TEST (500) (skipped with
#      E2E=0)                                     -> run_exp.txt
# ResNet-18 of width $WIDTH (64); the bench on $IMAGES (10240) random 32×32×3
# images, the profile on $PROFILE_IMAGES (2560). About 8 minutes with step 1
# skipped; with BENCH_BEFORE set, pass E2E=0 to stay within 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --prepare ]; then
  python=${PYTHON:-.venv/bin/python}
  mkdir -p .whl .gpu/fm
  "$python" -m pip download -q --no-deps -d .whl dm-haiku==0.0.17 jmp==0.0.4
  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz .gpu/fm/
  du -sh .whl .gpu
  exit 0
fi

OUT=${OUT:-/tmp/gpu_out}
WIDTH=${WIDTH:-64}
IMAGES=${IMAGES:-10240}
PROFILE_IMAGES=${PROFILE_IMAGES:-2560}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/session.log"; }

# A step under a time limit: its output to $OUT/NAME.txt, its status logged;
# a failed step does not stop the others.
step() {
  local name=$1 limit=$2
  shift 2
  log "start $name (limit ${limit} s): $*"
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  log "end $name: exit status $?"
  grep -v '^[WIE][0-9]\{4\} \|^20[0-9-]* [0-9:.]*: [WIE] ' "$OUT/$name.txt" \
    | tail -40
}

log "install carried wheels into /tmp/site"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
  >> "$OUT/session.log" 2>&1
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# Every process compiles a step once: the profile reuses the bench's.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache
python3 -c 'import jax, haiku, optax; print("jax", jax.__version__, "haiku",
haiku.__version__, "optax", optax.__version__, jax.devices())' \
  2>&1 | tee "$OUT/environment.txt"
nvidia-smi >> "$OUT/environment.txt" 2>&1 || true

log "unpack Fashion-MNIST into /tmp/data/FashionMNIST/raw"
mkdir -p /tmp/data/FashionMNIST/raw
for gz in .gpu/fm/*.gz; do
  gunzip -c "$gz" > "/tmp/data/FashionMNIST/raw/$(basename "$gz" .gz)"
done

if [ -n "${BENCH_BEFORE:-}" ]; then
  step bench_before 180 env BENCH_CODE_DIR="$(realpath "$BENCH_BEFORE")" \
    python3 bench/bench_epochs.py --width "$WIDTH" --images "$IMAGES" \
    --json "$OUT/bench_before.json"
fi
step bench 180 python3 bench/bench_epochs.py --width "$WIDTH" \
  --images "$IMAGES" --json "$OUT/bench.json"
step profile 220 python3 bench/profile_epochs.py --width "$WIDTH" \
  --images "$PROFILE_IMAGES" --trace "$OUT/trace" --trace_steps 1 \
  --json "$OUT/profile.json"
if [ "${E2E:-1}" != 0 ]; then
  step run_exp 150 python3 run_exp.py --dataset fashion_mnist \
    --data_path /tmp/data --width "$WIDTH" \
    --train_size "${E2E_TRAIN:-5120}" --test_size "${E2E_TEST:-500}" \
    --standard_epochs 1 --linear_epochs 1 --loaders AA --centering \
    --eval_pgd_iters 10 --save_path /tmp/run --no_progress
fi
log "done"
