"""Tests of store.provenance: what a run records of its environment."""

import subprocess

import jax

from helpers import ROOT
from store import atomic, provenance


def test_environment_info_is_json_ready(tmp_path):
    info = provenance.environment_info()
    for key in (
        "python",
        "jax",
        "jaxlib",
        "haiku",
        "optax",
        "numpy",
        "torch",
        "torchvision",
        "jax_backend",
        "device_kind",
        "hostname",
        "git_commit",
    ):
        assert key in info
    assert info["jax"] == jax.__version__
    assert info["jax_backend"] == "cpu"
    atomic.atomic_write_json(tmp_path / "config.json", info)


def test_git_commit_is_this_checkouts():
    info = provenance.environment_info()
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None  # not a git checkout (an unpacked archive)
    assert info["git_commit"] == head
    assert info["git_dirty"] in ((True, False) if head else (None,))
    assert info["device_count"] == len(jax.devices())
