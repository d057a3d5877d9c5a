#!/usr/bin/env bash
# Makes .venv with the pinned stack (once; again when a requirements file
# changes) and, as root where apt-get exists, installs Debian's Fashion-MNIST.
#
#   bash scripts/setup.sh            # .venv: JAX 0.5.3 + neural-tangents
#   bash scripts/setup.sh --jax011   # .venv-jax011: JAX 0.11.2, Python >= 3.12,
#                                    # no neural-tangents, no torch
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --jax011 ]; then
  # The second supported stack (requirements-jax011.txt) needs Python 3.12+:
  # the first of these that runs and is new enough (pyenv's shims exist for
  # versions that are installed but not selected, hence the check).
  if [ -z "${PYTHON:-}" ]; then
    for candidate in python3.12 python3.13 python3 \
        "$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python3; do
      if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' \
          2>/dev/null; then
        PYTHON=$candidate
        break
      fi
    done
  fi
  if [ -z "${PYTHON:-}" ]; then
    echo "setup: --jax011 needs Python 3.12 or newer; set PYTHON to one" >&2
    exit 1
  fi
  venv=.venv-jax011
  requirements=(requirements-jax011.txt)
  nodeps=()
else
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
  venv=.venv
  requirements=(requirements.txt)
  nodeps=(requirements-nodeps.txt)
fi
stamp=$venv/.installed
want=$(cat "${requirements[@]}" "${nodeps[@]}" | sha256sum | cut -c1-16)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the pinned packages into $venv (a few minutes)"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -r "${requirements[0]}"
  # neural-tangents declares TensorFlow dependencies that serve only
  # nt.experimental, which this project never imports.
  if [ "${#nodeps[@]}" -gt 0 ]; then
    "$venv/bin/python" -m pip install -q --no-deps -r "${nodeps[0]}"
  fi
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
