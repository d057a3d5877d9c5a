#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite on the CPU.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kernel.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export JAX_PLATFORMS=cpu
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
status=$?
if [ "$status" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$status"
