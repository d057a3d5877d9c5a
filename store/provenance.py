"""What a run records of its environment: versions, device, code revision."""

import importlib
import importlib.metadata
import os
import platform
import socket
import subprocess

import jax

_DISTRIBUTIONS = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "haiku": "dm-haiku",
    "optax": "optax",
    "numpy": "numpy",
    "torch": "torch",
    "torchvision": "torchvision",
}

# --------------------------------------------------------------------------
# What a run records of its environment
# --------------------------------------------------------------------------


def _package_version(distribution: str) -> str | None:
    """Installed version of ``distribution``, or None when it is absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_output(*args: str) -> str | None:
    """Stripped stdout of ``git args`` in this repository, or None."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def environment_info() -> dict[str, str | int | bool | None]:
    """Versions, device and code revision, for a run's ``config.json``.

    Returns:
        ``{'python', 'jax', 'jaxlib', 'haiku', 'optax', 'numpy', 'torch',
        'torchvision'`` (version strings, None when not installed),
        ``'jax_backend', 'device_kind', 'device_count', 'hostname',
        'git_commit'`` (None outside a git checkout) and ``'git_dirty'``
        (whether tracked files differ from that commit; None when unknown)}.
    """
    info = {"python": platform.python_version()}
    for key, distribution in _DISTRIBUTIONS.items():
        info[key] = _package_version(distribution)
    devices = jax.devices()
    info["jax_backend"] = jax.default_backend()
    info["device_kind"] = devices[0].device_kind
    info["device_count"] = len(devices)
    info["hostname"] = socket.gethostname()
    info["git_commit"] = _git_output("rev-parse", "HEAD")
    status = _git_output("status", "--porcelain", "--untracked-files=no")
    info["git_dirty"] = None if status is None else bool(status)
    return info
