#!/usr/bin/env bash
# Sets up (scripts/setup.sh), then runs the whole test suite on the CPU.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kernel, or
# scripts/test.sh -m quick (about 2 minutes, docs/testing.md).
# Two workers (pytest-xdist; TEST_WORKERS=1 for one process), each test
# file on one worker so that its module fixtures are made once.
# With --jax011 first: the same in .venv-jax011 (requirements-jax011.txt),
# where tests that need neural-tangents or torchvision skip, saying why.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ "${1:-}" = --jax011 ]; then
  venv=.venv-jax011
  shift
  bash scripts/setup.sh --jax011 || exit 1
else
  bash scripts/setup.sh || exit 1
fi
export JAX_PLATFORMS=cpu
workers=${TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${parallel[@]}" tests "$@"
status=$?
if [ "$status" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$status"
