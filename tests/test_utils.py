"""Tests of utils: trees of arrays (host copies, equality, optimiser
state flattened and restored), one-line messages, and Ctrl-C held back
between steps."""

import signal

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import utils
from helpers import assert_plain_tree
from store import atomic, checkpoints


def test_to_numpy_tree_makes_plain_host_copies(bn_model):
    params, _, _ = bn_model
    mapped = hk.data_structures.to_haiku_dict(params)
    tree = utils.to_numpy_tree({"p": mapped, "n": 3, "s": "x", "l": [1.0]})
    assert_plain_tree(tree["p"])
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


def test_opt_state_round_trip(bn_model, tmp_path):
    params, _, _ = bn_model
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


def test_opt_state_mismatch_is_a_user_error(bn_model):
    params, _, _ = bn_model
    state = optax.sgd(0.1, momentum=0.9).init(params)
    leaves = utils.flatten_opt_state(state)
    with pytest.raises(utils.UserError, match="arrays"):
        utils.unflatten_like(state, leaves[:-1])
    leaves[0] = np.zeros(leaves[0].shape + (1,), leaves[0].dtype)
    with pytest.raises(utils.UserError, match="another model"):
        utils.unflatten_like(state, leaves)


def test_one_line_collapses_whitespace_and_cuts():
    assert utils.one_line("a\n  b\tc ") == "a b c"
    cut = utils.one_line("x" * 20, limit=10)
    assert cut == "x" * 7 + "..." and len(cut) == 10


def test_ctrl_c_is_held_until_the_body_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with utils.deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the signal")
            with pytest.raises(KeyboardInterrupt):
                utils.raise_if_interrupted()  # between steps
            reached.append("after the check")
    assert reached == ["after the signal", "after the check"]
    utils.raise_if_interrupted()  # nothing pending once it is over


def test_a_second_ctrl_c_raises_at_once():
    with pytest.raises(KeyboardInterrupt):
        with utils.deferred_interrupts():
            signal.raise_signal(signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
