"""Tests for utils: atomic files, locks, checkpoints, safe loading."""

import builtins
import collections
import io
import json
import os
import pickle
import subprocess
import sys
import types

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import utils
from helpers import ROOT, SUBPROCESS_TIMEOUT_S
from store import atomic, checkpoints, pickles, provenance

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _mlp_with_batch_norm(images, is_training):
    """Flatten, 8 units, batch norm, ReLU, 3 logits."""
    x = hk.Flatten()(images)
    x = hk.Linear(8)(x)
    x = hk.BatchNorm(True, True, decay_rate=0.9, eps=1e-5)(x, is_training)
    return hk.Linear(3)(jax.nn.relu(x))


@pytest.fixture(scope="module")
def model():
    """(params, net_state, apply) of a small Haiku model, BN updated once."""
    net = hk.transform_with_state(_mlp_with_batch_norm)
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 2, 3))
    params, state = net.init(jax.random.PRNGKey(0), images, True)
    _, state = net.apply(params, state, None, images, True)
    return params, state, net.apply


@pytest.fixture()
def checkpoint_path(tmp_path, model):
    """A real checkpoint file of the small model."""
    params, state, _ = model
    lin_params = jax.tree_util.tree_map(lambda p: p + 1, params)
    path = tmp_path / "parameters_final.pkl"
    checkpoints.save_checkpoint(
        path,
        params,
        lin_params,
        state,
        {"model": "mlp", "epoch": 3, "dataset": "cifar10"},
    )
    return path


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


class _FailsToPickle:
    """Raises ``error`` when pickled."""

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        raise self.error


def _assert_plain(tree):
    """Assert ``tree`` is made of plain dicts of np.ndarray only."""
    assert type(tree) is dict
    for value in tree.values():
        if isinstance(value, dict):
            _assert_plain(value)
        else:
            assert type(value) is np.ndarray


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
# Checkpoints
# --------------------------------------------------------------------------


def test_checkpoint_round_trip_is_exact(model, checkpoint_path):
    params, state, _ = model
    loaded = checkpoints.load_checkpoint(checkpoint_path)
    assert set(loaded) == {"params", "lin_params", "net_state", "meta"}
    assert utils.tree_equal(loaded["params"], params)
    assert utils.tree_equal(loaded["net_state"], state)
    assert utils.tree_equal(
        loaded["lin_params"], jax.tree_util.tree_map(lambda p: p + 1, params)
    )
    assert not utils.tree_equal(loaded["lin_params"], params)
    assert loaded["meta"] == {"model": "mlp", "epoch": 3, "dataset": "cifar10"}
    for leaf in jax.tree_util.tree_leaves(loaded["params"]):
        assert leaf.dtype == np.float32


def test_checkpoint_loads_with_plain_pickle(checkpoint_path):
    with open(checkpoint_path, "rb") as file:
        raw = pickle.load(file)
    assert set(raw) == {"params", "lin_params", "net_state", "meta"}
    for key in ("params", "lin_params", "net_state"):
        _assert_plain(raw[key])


def test_loaded_params_drive_the_model(model, checkpoint_path):
    params, state, apply = model
    loaded = checkpoints.load_checkpoint(checkpoint_path)
    images = jnp.ones((2, 2, 2, 3))
    expected, _ = apply(params, state, None, images, False)
    got, _ = apply(loaded["params"], loaded["net_state"], None, images, False)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_original_files_without_meta_load(tmp_path):
    path = tmp_path / "old.pkl"
    params = {"linear": {"w": np.ones((2, 2), np.float32)}}
    with open(path, "wb") as file:
        pickle.dump(
            {"params": params, "lin_params": params, "net_state": {}}, file
        )
    loaded = checkpoints.load_checkpoint(path)
    assert loaded["meta"] == {}
    assert utils.tree_equal(loaded["params"], params)


def test_numpy_1_pickles_load(tmp_path):
    arrays = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "s": np.float32(2.5),
    }
    data = pickle.dumps(
        {"params": arrays, "lin_params": {}, "net_state": {}}, protocol=3
    )
    # NumPy 1.x named the same functions under numpy.core.
    old_data = data.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old_data
    path = tmp_path / "numpy1.pkl"
    path.write_bytes(old_data)
    assert utils.tree_equal(
        checkpoints.load_checkpoint(path)["params"], arrays
    )


@pytest.mark.parametrize(
    "name, content",
    [
        ("truncated.pkl", None),
        ("garbage.pkl", b"\x93NUMPY not a pickle \x00\xff" * 10),
        ("empty.pkl", b""),
        ("keys.pkl", pickle.dumps({"params": {}, "net_state": {}})),
        ("list.pkl", pickle.dumps([1, 2, 3])),
    ],
)
def test_bad_checkpoints_are_user_errors(
    tmp_path, checkpoint_path, name, content
):
    if content is None:
        data = checkpoint_path.read_bytes()
        content = data[: len(data) // 2]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(utils.UserError) as info:
        checkpoints.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message


def test_missing_checkpoint_is_a_user_error(tmp_path):
    path = tmp_path / "nowhere.pkl"
    with pytest.raises(utils.UserError, match="nowhere.pkl"):
        checkpoints.load_checkpoint(path)


def test_missing_keys_are_named(tmp_path):
    path = tmp_path / "adv.pkl"
    atomic.atomic_pickle(path, {"images": np.zeros((1, 3, 2, 2))})
    with pytest.raises(utils.UserError, match="labels"):
        checkpoints.load_pickle_arrays(path, ("images", "labels"))
    assert set(checkpoints.load_pickle_arrays(path, ("images",))) == {"images"}


# --------------------------------------------------------------------------
# The safe loader
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
# Atomic writes and directories
# --------------------------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file(tmp_path, error):
    path = tmp_path / "parameters_final.pkl"
    atomic.atomic_pickle(path, {"old": np.arange(3)})
    before = path.read_bytes()
    broken = {"a": np.zeros(100_000), "b": _FailsToPickle(error)}
    with pytest.raises(type(error)):
        atomic.atomic_pickle(path, broken)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_atomic_writers_create_parents(tmp_path):
    base = tmp_path / "a" / "b"
    atomic.atomic_write_bytes(base / "x.bin", b"\x00\x01")
    atomic.atomic_write_text(base / "x.txt", "héllo\n")
    assert (base / "x.bin").read_bytes() == b"\x00\x01"
    assert (base / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(os.listdir(base)) == ["x.bin", "x.txt"]


def test_atomic_files_get_the_usual_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    atomic.atomic_write_bytes(tmp_path / "atomic", b"")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_json_converts_numpy_and_jax(tmp_path):
    path = tmp_path / "config.json"
    atomic.atomic_write_json(
        path,
        {
            "b": np.float32(0.5),
            "a": np.arange(3),
            "c": jnp.ones(2),
            "d": np.bool_(True),
            "e": (1, "x"),
        },
    )
    text = path.read_text()
    assert json.loads(text) == {
        "a": [0, 1, 2],
        "b": 0.5,
        "c": [1.0, 1.0],
        "d": True,
        "e": [1, "x"],
    }
    assert text.index('"a"') < text.index('"b"')
    assert '\n  "a": [' in text


def test_write_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    target = blocker / "sub" / "x.pkl"
    with pytest.raises(utils.UserError, match=str(target)):
        atomic.atomic_pickle(target, {})


def test_ensure_writable_dir(tmp_path):
    made = atomic.ensure_writable_dir(tmp_path / "runs" / "one")
    assert made == str(tmp_path / "runs" / "one")
    assert os.path.isdir(made) and os.listdir(made) == []
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    with pytest.raises(utils.UserError) as info:
        atomic.ensure_writable_dir(blocker / "sub")
    assert str(blocker / "sub") in str(info.value)
    assert "\n" not in str(info.value)


def test_check_writable_dir_creates_nothing(tmp_path):
    target = tmp_path / "runs" / "one"
    assert atomic.check_writable_dir(target) == str(target)
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    for path in (blocker, blocker / "sub" / "deeper"):
        with pytest.raises(utils.UserError) as info:
            atomic.check_writable_dir(path)
        assert str(path) in str(info.value) and "is a file" in str(info.value)
    assert os.listdir(tmp_path) == ["plain_file"]


# --------------------------------------------------------------------------
# Trees, optimiser state, random keys
# --------------------------------------------------------------------------


def test_to_numpy_tree_makes_plain_host_copies(model):
    params, _, _ = model
    mapped = hk.data_structures.to_haiku_dict(params)
    tree = utils.to_numpy_tree({"p": mapped, "n": 3, "s": "x", "l": [1.0]})
    _assert_plain(tree["p"])
    assert (tree["n"], tree["s"], tree["l"]) == (3, "x", [1.0])
    source = np.ones(3)
    copy = utils.to_numpy_tree({"a": source})["a"]
    source[0] = 5
    assert copy[0] == 1


def test_tree_equal_checks_structure_dtype_and_values():
    a = {"x": {"w": np.ones(2, np.float32)}}
    assert utils.tree_equal(a, {"x": {"w": np.ones(2, np.float32)}})
    assert not utils.tree_equal(a, {"x": {"w": np.ones(2, np.float64)}})
    assert not utils.tree_equal(a, {"x": {"w": np.ones(3, np.float32)}})
    assert not utils.tree_equal(a, {"x": {"w": np.zeros(2, np.float32)}})
    assert not utils.tree_equal(a, {"x": {"v": np.ones(2, np.float32)}})
    assert not utils.tree_equal(a, {"x": np.ones(2, np.float32)})
    assert not utils.tree_equal([np.ones(1)], (np.ones(1),))
    nan = {"w": np.array([np.nan], np.float32)}
    assert utils.tree_equal(nan, {"w": np.array([np.nan], np.float32)})


def test_opt_state_round_trip(model, tmp_path):
    params, _, _ = model
    optimizer = optax.sgd(0.1, momentum=0.9)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    _, opt_state = optimizer.update(grads, optimizer.init(params), params)
    path = tmp_path / "opt.pkl"
    atomic.atomic_pickle(
        path, {"opt_state": utils.flatten_opt_state(opt_state)}
    )
    leaves = checkpoints.load_pickle_arrays(path, ("opt_state",))["opt_state"]
    restored = utils.unflatten_like(optimizer.init(params), leaves)
    assert jax.tree_util.tree_structure(
        restored
    ) == jax.tree_util.tree_structure(opt_state)
    want, _ = optimizer.update(grads, opt_state, params)
    got, _ = optimizer.update(grads, restored, params)
    assert utils.tree_equal(
        utils.to_numpy_tree(got), utils.to_numpy_tree(want)
    )


def test_opt_state_mismatch_is_a_user_error(model):
    params, _, _ = model
    state = optax.sgd(0.1, momentum=0.9).init(params)
    leaves = utils.flatten_opt_state(state)
    with pytest.raises(utils.UserError, match="arrays"):
        utils.unflatten_like(state, leaves[:-1])
    leaves[0] = np.zeros(leaves[0].shape + (1,), leaves[0].dtype)
    with pytest.raises(utils.UserError, match="another model"):
        utils.unflatten_like(state, leaves)


# --------------------------------------------------------------------------
# The run's record of its environment
# --------------------------------------------------------------------------


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
# Bounds and non-finite parameters
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


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameters_are_refused(tmp_path, bad):
    params = {"linear": {"w": np.ones((2, 2), np.float32)}}
    broken = {"linear": {"w": np.array([[1, bad], [0, 1]], np.float32)}}
    path = tmp_path / "diverged.pkl"
    checkpoints.save_checkpoint(path, broken, params, {}, {})
    with pytest.raises(utils.UserError) as info:
        checkpoints.load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "params hold NaN or infinite values (at linear/w)" in str(
        info.value
    )


# --------------------------------------------------------------------------
# Temporary files of killed writers, and folder locks
# --------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    host = atomic.socket.gethostname()
    stale = f".parameters_checkpoint_0.pkl.tmp-{host}-{_dead_pid()}-{'a' * 12}"
    live = f".results.pkl.tmp-{host}-{os.getpid()}-{'b' * 12}"
    other_host = f".results.pkl.tmp-elsewhere-{_dead_pid()}-{'c' * 12}"
    legacy = f".parameters_final.pkl.{'d' * 12}.tmp"
    unrelated = [".hidden", "notes.tmp", "parameters_final.pkl"]
    for name in [stale, live, other_host, legacy, *unrelated]:
        (tmp_path / name).write_bytes(b"x")
    removed = atomic.remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted([stale, legacy])
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live, other_host, *unrelated]
    )


def test_temp_files_are_named_for_the_cleanup(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace

    def spy(source, target):
        names.append(os.path.basename(source))
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", spy)
    atomic.atomic_pickle(tmp_path / "x.pkl", {"a": 1})
    match = atomic._TEMP_NAME.match(names[0])
    assert match and match["target"] == "x.pkl"
    assert int(match["pid"]) == os.getpid()


def test_folder_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom store import atomic\n"
            f"with atomic.FolderLock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(utils.UserError) as info:
            with atomic.FolderLock(str(tmp_path)):
                pass
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "--save_path" in message
    finally:
        holder.kill()  # as a crash would: no clean release
        holder.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert (tmp_path / ".lock").exists()  # left by the killed holder
    with atomic.FolderLock(str(tmp_path)):
        pass  # its lock died with it
    assert not (tmp_path / ".lock").exists()
