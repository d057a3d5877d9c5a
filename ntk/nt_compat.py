"""The one place that imports neural-tangents (0.6.5, on the pinned JAX 0.5.3).

neural-tangents is optional: only `calculate_kernel.py --implementation
jacobian|ntvp|structured`, `bench/bench_kernel.py`'s "original" method and
some tests' independent references use it. It is imported on first use of
`nt` (`from nt_compat import nt`, or `load()`), so importing this module is
cheap and never fails. Where neural-tangents cannot be used, that first use
raises `utils.UserError` with one line naming the cause and the fix, which
the entry scripts print as `error: ...` (exit status 2):

* the package is not installed (e.g. the JAX 0.11 stack of
  requirements-jax011.txt, which leaves it out);
* JAX is 0.6 or newer, where neural-tangents 0.6.5 no longer works;
* its import fails for another reason.

`unavailable_reason()` says which, without raising (tests skip on it).

What the import itself needs on JAX 0.5.3: neural-tangents 0.6.5 still
reaches for two names that JAX moved (`jax.interpreters.ad.source_info_util`,
`ad.config`), and its package `__init__` imports
`neural_tangents.experimental`, which needs TensorFlow. We never use the
experimental part, so an empty module stands in for it.

Do not use `nt.NtkImplementation.AUTO`: it is broken on this JAX.
"""

import importlib.metadata
import sys
import types

import jax

from utils import UserError

# The neural-tangents this project is tested with, and the first JAX
# (major, minor) it does not run on.
SUPPORTED_VERSION = "0.6.5"
FIRST_UNSUPPORTED_JAX = (0, 6)
_FIX = (
    "use the pinned stack of requirements.txt and requirements-nodeps.txt "
    "(JAX 0.5.3, neural-tangents 0.6.5), or --implementation rows"
)

_module = None  # neural_tangents, once imported


def _jax_version() -> tuple[int, int]:
    """(major, minor) of the running JAX."""
    major, minor = jax.__version__.split(".")[:2]
    return int(major), int(minor)


def unavailable_reason() -> str | None:
    """Why neural-tangents cannot be used here, or None when it can.

    Does not import neural-tangents (a cheap check of the installed
    versions), so an import that fails for another reason is only found by
    `load()`.
    """
    try:
        version = importlib.metadata.version("neural-tangents")
    except importlib.metadata.PackageNotFoundError:
        return "neural-tangents is not installed"
    if _jax_version() >= FIRST_UNSUPPORTED_JAX:
        return (
            f"neural-tangents {version} does not run on JAX {jax.__version__}"
            f" (it needs JAX < {'.'.join(map(str, FIRST_UNSUPPORTED_JAX))})"
        )
    return None


def load() -> types.ModuleType:
    """The `neural_tangents` module, imported once with the aliases it needs.

    Raises:
      UserError: neural-tangents is missing, JAX is too new for it, or its
        import fails; the message names the cause and the fix.
    """
    global _module
    reason = unavailable_reason()
    if reason is not None:
        raise UserError(f"{reason}: {_FIX}")
    if _module is not None:
        return _module
    from jax.interpreters import ad

    if not hasattr(ad, "source_info_util"):
        import jax.extend

        ad.source_info_util = jax.extend.source_info_util
    if not hasattr(ad, "config"):
        ad.config = jax.config
    sys.modules.setdefault(
        "neural_tangents.experimental",
        types.ModuleType("neural_tangents.experimental"),
    )
    try:
        import neural_tangents
    except Exception as error:  # any failure of a third-party import
        raise UserError(
            f"neural-tangents cannot be imported on JAX {jax.__version__} "
            f"({type(error).__name__}: {error}): {_FIX}"
        ) from error
    _module = neural_tangents
    return _module


def __getattr__(name: str) -> types.ModuleType:
    """`nt_compat.nt` (and `from nt_compat import nt`) imports on first use."""
    if name == "nt":
        return load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
