"""Tests of store.checkpoints: a checkpoint's round trip, the files of the
original code, and damaged, missing or diverged files refused in one line."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import utils
from helpers import assert_plain_tree
from store import atomic, checkpoints

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@pytest.fixture()
def checkpoint_path(tmp_path, bn_model):
    """A real checkpoint file of the small model."""
    params, state, _ = bn_model
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


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def test_checkpoint_round_trip_is_exact(bn_model, checkpoint_path):
    params, state, _ = bn_model
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
        assert_plain_tree(raw[key])


def test_loaded_params_drive_the_model(bn_model, checkpoint_path):
    params, state, apply = bn_model
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
# Bounds and non-finite parameters
# --------------------------------------------------------------------------


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
