#!/usr/bin/env bash
# The cpu-small reproduction: sets up .venv, runs every cell of
# configs/cpu-small.toml on this machine (WORKERS at once, default 2), then
# aggregates them into docs/results/cpu-small*.csv, docs/results/cpu-small/
# and docs/REPORT.md. Re-running skips finished cells and resumes
# interrupted ones. Extra arguments go to sweep.py (e.g. --no_progress).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
PY=.venv/bin/python
CONFIG=configs/cpu-small.toml
started=$(date +%s)
$PY sweep.py "$CONFIG" --local "${WORKERS:-2}" "$@"
status=$?
$PY sweep.py "$CONFIG" --aggregate || exit 1
echo "reproduce_small: $(( $(date +%s) - started )) s in all (sweep exit status $status)"
exit "$status"
