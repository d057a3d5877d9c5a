"""Test set-up: importing helpers first sets the environment (JAX on the
CPU, a shared compilation cache, the repository root on sys.path) before any
test module imports JAX. The sweep tests' tiny grid is a session fixture
here, so its one run serves every module."""

import helpers  # noqa: F401
from sweep_fixtures import sweep_data, tiny_local_run  # noqa: F401
