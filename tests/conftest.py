"""Shared test set-up: the repository root on sys.path, JAX on the CPU, and
one persistent compilation cache for the whole session, so that the many
entry-script runs in subprocesses compile each network only once."""

import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "ntk-jax-cache"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, ROOT)

needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST),
    reason="Debian package dataset-fashion-mnist is not installed",
)
