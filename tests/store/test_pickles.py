"""Tests of store.pickles' safe loader: it reads arrays, NumPy scalars,
dtypes and Python containers (from NumPy 1 and 2, and from JAX's pickles of
any age) and refuses everything else, running none of a pickle's code, and
bounds what it builds."""

import builtins
import collections
import io
import os
import pickle
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import utils
from store import checkpoints, pickles

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


class _RunsShell:
    """Pickles as a call to os.system that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    """Pickles as a call to builtins.eval that creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


def _globals_named(data):
    """(module, name) pairs the pickle ``data`` asks find_class for."""
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return seen


# --------------------------------------------------------------------------
# What the loader refuses and what it reads
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, asked_for",
    [
        (_RunsShell, os.system.__module__ + ".system"),
        (_RunsEval, "builtins.eval"),
    ],
)
def test_code_in_pickles_is_refused_and_not_run(tmp_path, payload, asked_for):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    params = {"linear": {"w": payload(marker)}}
    path.write_bytes(
        pickle.dumps({"params": params, "lin_params": {}, "net_state": {}})
    )
    with pytest.raises(utils.UserError) as info:
        checkpoints.load_checkpoint(path)
    assert str(info.value) == (
        f"refusing to load {path}: it asks for {asked_for}, which is not an "
        "array or container"
    )
    assert not marker.exists()


def test_other_classes_are_refused(tmp_path):
    path = tmp_path / "counter.pkl"
    path.write_bytes(pickle.dumps({"c": collections.Counter("ab")}))
    with pytest.raises(utils.UserError, match="collections.Counter"):
        pickles.safe_load_pickle(path)


ALLOWED_VALUES = [
    np.zeros((2, 3), np.bool_),
    np.ones(4, np.float32),
    np.arange(5, dtype=np.int64),
    np.arange(3, dtype=np.uint32),
    np.ones(2, np.float16),
    np.ones(2, np.complex64),
    np.zeros((0, 2)),
    np.asfortranarray(np.ones((2, 3))),
    np.arange(6.0)[::2],
    np.asarray(1.5),
    np.float32(1),
    np.int64(3),
    np.bool_(True),
    np.dtype("float32"),
]


PYTHON_VALUES = [
    (1, 2.0, 1 + 2j, 10**30, "x", None, True, b"y"),
    {1, 2},
    frozenset({3}),
    bytearray(b"z"),
    collections.OrderedDict(a=1),
    [[]],
    {"k": {}},
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_arrays_scalars_and_dtypes_load(tmp_path, protocol):
    tree = {"values": ALLOWED_VALUES, "python": PYTHON_VALUES}
    path = tmp_path / "arrays.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    loaded = pickles.safe_load_pickle(path)
    assert loaded["python"] == PYTHON_VALUES
    for want, got in zip(ALLOWED_VALUES, loaded["values"], strict=True):
        if isinstance(want, np.dtype):
            assert got == want
        else:
            assert utils.tree_equal(got, want)


def test_allow_list_is_exactly_what_numpy_asks_for():
    """Each allowed global is one that pickles of arrays and Python values
    written with NumPy 2 ask for, or its NumPy 1.x name."""
    seen = set()
    for protocol in (2, 3, 4, 5):
        for value in ALLOWED_VALUES + PYTHON_VALUES:
            seen |= _globals_named(pickle.dumps(value, protocol=protocol))
    # Protocol 2 writes bytes through _codecs.encode, which the loader
    # takes separately (latin-1 only).
    assert ("_codecs", "encode") in seen
    seen.discard(("_codecs", "encode"))
    numpy_1_names = {
        (module.replace("numpy._core", "numpy.core"), name)
        for module, name in seen
    }
    assert ("numpy", "dtype") in seen
    assert set(pickles._ALLOWED_GLOBALS) == seen | numpy_1_names


# --------------------------------------------------------------------------
# Files of the original code: JAX arrays pickled by JAX
# --------------------------------------------------------------------------


def test_jax_arrays_pickled_by_jax_load_as_numpy(tmp_path):
    """A checkpoint as the original writes it today: pickle.dump of a
    Haiku dict of jnp arrays (jax._src.array._reconstruct_array)."""
    params = {
        "linear": {
            "w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
            "b": jnp.zeros(3, jnp.float32),
        }
    }
    state = {"bn": {"count": jnp.asarray(7, jnp.int32)}}
    path = tmp_path / "original.pkl"
    with open(path, "wb") as file:
        pickle.dump(
            {"params": params, "lin_params": params, "net_state": state},
            file,
        )
    assert b"_reconstruct_array" in path.read_bytes()
    loaded = checkpoints.load_checkpoint(path)
    w = loaded["params"]["linear"]["w"]
    assert type(w) is np.ndarray and w.dtype == np.float32
    np.testing.assert_array_equal(w, np.arange(6).reshape(2, 3))
    assert loaded["net_state"]["bn"]["count"] == 7
    assert loaded["meta"] == {}


class _OldDeviceArray:
    """Pickles as JAX before 0.4 pickled a DeviceArray: through
    jax._src.device_array.reconstruct_device_array(fun, args, state)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __reduce__(self):
        fun, args, state = self.value.__reduce__()
        return (
            sys.modules["jax._src.device_array"].reconstruct_device_array,
            (fun, args, state),
        )


def _old_device_array_pickle(tree) -> bytes:
    """pickle.dumps(tree) with a stand-in jax._src.device_array module (the
    real one no longer exists), as the JAX of 2022 wrote it."""
    module = types.ModuleType("jax._src.device_array")

    def reconstruct_device_array(fun, args, state):  # never called here
        raise AssertionError("the loader must not call JAX code")

    reconstruct_device_array.__module__ = module.__name__
    reconstruct_device_array.__qualname__ = "reconstruct_device_array"
    module.reconstruct_device_array = reconstruct_device_array
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(tree, protocol=4)
    finally:
        del sys.modules[module.__name__]


def test_device_arrays_of_old_jax_load_as_numpy(tmp_path):
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    tree = {
        "params": {"linear": {"w": _OldDeviceArray(w)}},
        "lin_params": {"linear": {"w": _OldDeviceArray(2 * w)}},
        "net_state": {},
    }
    path = tmp_path / "old_jax.pkl"
    path.write_bytes(_old_device_array_pickle(tree))
    assert b"reconstruct_device_array" in path.read_bytes()
    loaded = checkpoints.load_checkpoint(path)
    np.testing.assert_array_equal(loaded["params"]["linear"]["w"], w)
    np.testing.assert_array_equal(loaded["lin_params"]["linear"]["w"], 2 * w)


class _EvilReconstruction:
    """Asks JAX's reconstructor to call os.system instead of NumPy."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (
            sys.modules["jax._src.array"]._reconstruct_array,
            (os.system, (f"touch {self.marker}",), None, {}),
        )


def test_jax_reconstructor_calls_nothing_but_numpy(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil_jax.pkl"
    path.write_bytes(pickle.dumps({"x": _EvilReconstruction(marker)}))
    with pytest.raises(utils.UserError, match="refusing to load"):
        pickles.safe_load_pickle(path)
    assert not marker.exists()


# --------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------


def _deep_list_pickle(depth: int) -> bytes:
    """A pickle of {'params': a list nested `depth` deep}, made of allowed
    opcodes alone: `depth` empty lists pushed, each appended to the one
    below (the pickle module cannot write one this deep itself)."""
    return b"".join(
        [
            pickle.PROTO + b"\x04",
            pickle.EMPTY_DICT,
            pickle.SHORT_BINUNICODE + bytes([6]) + b"params",
            pickle.EMPTY_LIST * depth,
            pickle.APPEND * (depth - 1),
            pickle.SETITEM,
            pickle.STOP,
        ]
    )


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(_deep_list_pickle(300_000))
    with pytest.raises(utils.UserError, match="nest deeper than"):
        checkpoints.load_checkpoint(path)
    shallow = tmp_path / "shallow.pkl"
    shallow.write_bytes(_deep_list_pickle(pickles.MAX_PICKLE_DEPTH))
    assert "params" in pickles.safe_load_pickle(shallow)


def test_too_many_objects_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pickles, "MAX_PICKLE_OBJECTS", 100)
    path = tmp_path / "many.pkl"
    path.write_bytes(pickle.dumps({"params": list(range(200))}))
    with pytest.raises(utils.UserError, match="more than 100 objects"):
        pickles.safe_load_pickle(path)
