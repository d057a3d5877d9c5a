#!/usr/bin/env bash
# Makes .venv with the pinned stack (once; again when a requirements file
# changes) and, as root where apt-get exists, installs Debian's Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=.venv/.installed
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the pinned packages into .venv (a few minutes)"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  # neural-tangents declares TensorFlow dependencies that serve only
  # nt.experimental, which this project never imports.
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  echo "setup: installing Debian's dataset-fashion-mnist"
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 \
        && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "setup: could not install dataset-fashion-mnist; tests that need it are skipped"
fi
