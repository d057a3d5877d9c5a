"""Safe pickles: :func:`safe_load_pickle` refuses any pickle that asks for
more than NumPy arrays, NumPy scalars, dtypes and containers (JAX arrays
pickled by JAX itself load as NumPy arrays, without JAX code)."""

import importlib
import importlib.metadata
import os
import pickle
from collections.abc import Callable, Mapping
from typing import NoReturn

import numpy as np

from utils import PyTree, StrPath, UserError, one_line

# The globals a pickle of NumPy arrays, scalars and dtypes refers to, as
# (module, name) -> (module the object really lives in, name). NumPy 2 writes
# ``numpy._core``; files written by NumPy 1.x say ``numpy.core``.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"): (
        "numpy._core.multiarray",
        "_reconstruct",
    ),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): (
        "numpy._core.numeric",
        "_frombuffer",
    ),
    ("numpy.core.multiarray", "_reconstruct"): (
        "numpy._core.multiarray",
        "_reconstruct",
    ),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): (
        "numpy._core.numeric",
        "_frombuffer",
    ),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    # Python values that some protocols build by calling their type
    # (protocol 2 names the module `__builtin__`, as Python 2 did).
    **{
        (module, name): ("builtins", name)
        for module in ("builtins", "__builtin__")
        for name in ("complex", "set", "frozenset", "bytearray")
    },
    ("__builtin__", "bytes"): ("builtins", "bytes"),
}

# --------------------------------------------------------------------------
# Safe pickles and checkpoints
# --------------------------------------------------------------------------


# Bounds on what a pickle may build: containers nested deeper, or more
# objects in all, are refused. Checkpoints nest about 4 deep and hold a few
# hundred arrays; the bounds leave ample room and stop deliberate bombs.
MAX_PICKLE_DEPTH = 64
MAX_PICKLE_OBJECTS = 1_000_000

# The array reconstructors JAX pickles its arrays with: jax.Array
# (`_reconstruct_array(fun, args, arr_state, aval_state)`) and the
# DeviceArray of JAX before 0.4 (`reconstruct_device_array(fun, args,
# arr_state)`). Both call fun(*args) (NumPy's `_reconstruct`), give the
# result its state, and put it on a device; here the NumPy array is kept.
_JAX_RECONSTRUCTORS = {
    ("jax._src.array", "_reconstruct_array"),
    ("jax._src.device_array", "reconstruct_device_array"),
}


class _RefusedPickle(Exception):
    """Raised inside the unpickler; safe_load_pickle adds the path."""


def _numpy_from_jax_pickle(
    fun: Callable[..., np.ndarray],
    args: tuple,
    arr_state: object,
    aval_state: object = None,
) -> np.ndarray:
    """What a JAX array reconstructor builds, as a NumPy array.

    Only NumPy's own `_reconstruct` of an ndarray is accepted as `fun`; no
    JAX code is imported or run. `aval_state` (the weak type) is dropped.
    """
    del aval_state
    reconstruct = importlib.import_module("numpy._core.multiarray")
    if fun is not reconstruct._reconstruct or not (
        isinstance(args, tuple) and args and args[0] is np.ndarray
    ):
        raise _RefusedPickle(
            "it asks a JAX array reconstructor to call something other "
            "than NumPy's array constructor"
        )
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol 2 uses it: bytes from a latin-1 str."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _RefusedPickle("it asks _codecs.encode for something else")
    return text.encode("latin1")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``,
    JAX's array reconstructors (as NumPy arrays) and protocol 2's bytes.

    Every global a pickle names (its classes and the functions it calls) goes
    through ``find_class``, so refusing there stops any other code from
    running. Most builtin values need no global; the few that some protocols
    build by calling their type are on the list.
    """

    def find_class(self, module: str, name: str) -> object:
        """The allowed object for ``module.name``; refused otherwise."""
        if (module, name) in _JAX_RECONSTRUCTORS:
            return _numpy_from_jax_pickle
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise _RefusedPickle(
                f"it asks for {module}.{name}, which is not an array or "
                "container"
            )
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: object) -> NoReturn:
        """Refuse persistent ids: plain pickles of arrays have none."""
        raise _RefusedPickle(
            "it uses a persistent id, which is not an array or container"
        )


def _check_bounds(obj: object) -> None:
    """Refuses containers nested deeper than MAX_PICKLE_DEPTH or more than
    MAX_PICKLE_OBJECTS objects in all; walks without recursion."""
    stack, count = [(obj, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_PICKLE_OBJECTS:
            raise _RefusedPickle(
                f"it holds more than {MAX_PICKLE_OBJECTS:,} objects"
            )
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if children and depth + 1 > MAX_PICKLE_DEPTH:
            raise _RefusedPickle(
                f"its containers nest deeper than {MAX_PICKLE_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in children)


def safe_load_pickle(path: StrPath, encoding: str = "ASCII") -> PyTree:
    """Load a pickle that may hold only arrays, NumPy scalars and containers.

    Allowed: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
    ``collections.OrderedDict``, Python numbers, strings and bytes,
    ``np.ndarray`` (any dtype NumPy can name), NumPy scalars and dtypes, as
    written by NumPy 1.x or 2.x with pickle protocols 2 to 5; JAX arrays
    pickled by JAX (``jax.Array``, and the ``DeviceArray`` of JAX before 0.4)
    become NumPy arrays. At most MAX_PICKLE_DEPTH levels of containers and
    MAX_PICKLE_OBJECTS objects.
    ``encoding`` decodes Python 2 strings (``"latin1"`` for Python 2
    pickles of arrays, such as CIFAR's files).

    Raises:
        UserError: the file is missing or unreadable, truncated or corrupt,
            or asks for anything else (nothing it asks for is run).
    """
    path = os.fspath(path)
    try:
        file = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    with file:
        try:
            obj = _ArrayOnlyUnpickler(file, encoding=encoding).load()
            _check_bounds(obj)
            return obj
        except _RefusedPickle as err:
            raise UserError(f"refusing to load {path}: {err}") from None
        except RecursionError:
            raise UserError(
                f"refusing to load {path}: its containers nest too deeply"
            ) from None
        except Exception as err:  # pickle raises many types on bad input
            raise UserError(
                f"cannot load {path}: the file is empty, truncated or not a "
                f"pickle ({type(err).__name__}: {one_line(err, 120)})"
            ) from None
