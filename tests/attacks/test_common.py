"""attacks.common.bounded_while: the loop the attacks use instead of
jax.lax.while_loop, right also when its executable comes from the
persistent compilation cache (JAX 0.5.3 on the CPU runs a data-dependent
while_loop whose body draws random numbers zero times when loaded from
the cache)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from attacks import common
from helpers import ROOT

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from attacks import common
    from attacks.square import square, SquareConfig

    def loop(n, key):
        def body(c):
            i, s = c
            draw = jax.random.randint(jax.random.fold_in(key, i), (), 0, 10)
            return i + 1, s + draw
        more = lambda c: c[0] < n
        start = (jnp.asarray(0), jnp.asarray(0))
        return common.bounded_while(more, body, start, 64)

    i, s = jax.jit(loop)(jnp.asarray(50), jax.random.key(0))
    w = jax.random.normal(jax.random.key(1), (16, 10))
    x = jax.random.uniform(jax.random.key(2), (8, 4, 4, 1))
    logits = lambda im: im.reshape(8, -1) @ w
    y = jnp.argmax(logits(x), -1)
    found = jax.jit(
        lambda x, y, k: square(logits, x, y, 0.1, k, SquareConfig(200))
    )(x, y, jax.random.key(3))
    print(int(i), int(s), int(found.success.sum()), float(found.adv.sum()))
    """
)


def run_with_cache(cache):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=ROOT,
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


@pytest.mark.medium
def test_bounded_while_is_right_from_the_compilation_cache(tmp_path):
    fresh = run_with_cache(tmp_path / "cache")
    assert os.listdir(tmp_path / "cache"), "nothing was cached"
    cached = run_with_cache(tmp_path / "cache")
    assert fresh[0] == "50"  # the loop ran its 50 steps, then stopped
    assert cached == fresh


def test_example_keys_take_raw_and_typed_keys():
    """One key per example from a raw PRNGKey (uint32 (2,)), as the scripts
    make them, or a typed key; (B,) keys are kept as they are."""
    raw = jax.random.PRNGKey(7)
    keys = common.example_keys(raw, 3)
    assert keys.shape == (3, 2)
    for i in range(3):
        want = jax.random.fold_in(raw, i)
        np.testing.assert_array_equal(keys[i], want)
    assert common.example_keys(keys, 3) is keys
    typed = common.example_keys(jax.random.key(7), 3)
    assert typed.shape == (3,)
    assert common.example_keys(typed, 3) is typed


def test_dlr_targeted_is_the_sorted_formula_value_and_gradient():
    """Against the formula read off a sorted copy of the logits; and its
    gradient holds no scatter (sort's would: a loop on the CPU)."""
    jnp = jax.numpy
    logits = jax.random.normal(jax.random.key(0), (32, 10))
    labels = jax.random.randint(jax.random.key(1), (32,), 0, 10)
    shift = jax.random.randint(jax.random.key(2), (32,), 1, 10)
    target = (labels + shift) % 10
    rows = jnp.arange(32)

    def by_sort(z):
        ranked = jnp.sort(z, axis=-1)[:, ::-1]
        scale = ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12
        return -(z[rows, labels] - z[rows, target]) / scale

    ours = lambda z: common.dlr_targeted(z, labels, target)
    np.testing.assert_allclose(ours(logits), by_sort(logits), rtol=1e-6)
    grads = [
        jax.grad(lambda z, f=f: jnp.sum(f(z)))(logits) for f in (ours, by_sort)
    ]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    gradient = jax.jit(jax.grad(lambda z: jnp.sum(ours(z))))
    assert "scatter" not in gradient.lower(logits).as_text()


def test_top_classes_is_a_stable_sort_ties_included():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (200, 10)).astype(np.float32)  # many ties
    expected = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
    found = np.stack(common.top_classes(jax.numpy.asarray(logits), 5), -1)
    np.testing.assert_array_equal(found, expected)
