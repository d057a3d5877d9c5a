"""Test set-up: importing helpers first sets the environment (JAX on the
CPU, a shared compilation cache, the repository root on sys.path) before any
test module imports JAX."""

import helpers  # noqa: F401
