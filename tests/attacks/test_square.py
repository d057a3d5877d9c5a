"""Tests of attacks/square.py: the p schedule, the eps-ball and the box, and
the masking check: on a model whose gradients are zero (pixels quantised
by a step function), Square finds adversarial examples that APGD cannot."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from attacks.square import window_side

SHAPE = (8, 8, 3)
DIM = int(np.prod(SHAPE))


def test_window_shrinks_on_the_schedule():
    config = attacks.SquareConfig(queries=10000, p_init=0.8)
    side = lambda i: int(window_side(jnp.asarray(i), config, 1024))
    assert side(0) == side(10) == round(np.sqrt(0.8 * 1024))
    assert side(11) == round(np.sqrt(0.4 * 1024))
    assert side(9999) == round(np.sqrt(0.8 / 512 * 1024))
    # A budget of 5,000 follows the same schedule at twice the pace.
    half = attacks.SquareConfig(queries=5000)
    assert int(window_side(jnp.asarray(6), half, 1024)) == side(12)


def masked_problem(seed, batch=16):
    """A linear model on pixels rounded to 1/255: its gradient is zero
    everywhere. The true class leads by a margin that uniform noise in the
    eps-ball rarely overcomes but the worst case (eps · ‖w_j − w_y‖₁) does
    four times over."""
    rng = np.random.default_rng(seed)
    weights = jnp.asarray(rng.normal(size=(DIM, 10)), jnp.float32)
    images = jnp.asarray(rng.uniform(0.2, 0.8, (batch,) + SHAPE), jnp.float32)
    eps = 8 / 255

    def raw(x):
        return x.reshape(x.shape[0], -1) @ weights

    logits = raw(images)
    labels = jnp.argmax(logits, -1)
    gaps = jnp.take_along_axis(logits, labels[:, None], 1) - logits
    worst = eps * jnp.abs(weights[:, labels].T[:, :, None] - weights[None])
    worst = jnp.sum(worst, axis=1)
    # Raise the true class so the closest class needs a quarter of the
    # worst case (uniform noise moves it by a fifth of that, typically).
    lift = jnp.max(0.25 * worst - gaps, axis=1)
    bias = jax.nn.one_hot(labels, 10) * lift[:, None]

    def logits_fn(x):
        quantised = jnp.round(x * 255.0) / 255.0
        return raw(quantised) + bias[: x.shape[0]]

    return logits_fn, images, labels, eps


def test_square_beats_masked_gradients():
    logits_fn, images, labels, eps = masked_problem(0)
    found = jax.jit(lambda x, y, k: attacks.apgd_ce(logits_fn, x, y, eps, k))(
        images, labels, jax.random.key(0)
    ).success
    assert not np.any(found)
    result = jax.jit(
        lambda x, y, k: attacks.square(
            logits_fn, x, y, eps, k, attacks.SquareConfig(queries=2000)
        )
    )(images, labels, jax.random.key(0))
    assert np.mean(result.success) >= 0.5, result.success
    adv = np.asarray(result.adv)
    assert np.abs(adv - np.asarray(images)).max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    wrong = np.asarray(jnp.argmax(logits_fn(result.adv), -1) != labels)
    np.testing.assert_array_equal(wrong, result.success)


@pytest.mark.medium
def test_testing_every_chunk_gives_what_testing_every_query_gives(
    monkeypatch,
):
    """Whether any example is left is tested once per CHUNK queries; a
    query after the last success, or past the budget (130 is not a
    multiple of the chunk), must change nothing: the same images as with
    a test before every query (CHUNK = 1). Two problems: one where every
    example breaks early (the loop ends before the budget) and one where
    some never do."""
    square_module = importlib.import_module("attacks.square")
    chunks = (square_module.CHUNK, 1)
    logits_fn, images, labels, eps = masked_problem(1)
    for scale, queries in ((4.0, 130), (1.0, 130)):
        config = attacks.SquareConfig(queries=queries)
        results = []
        for chunk in chunks:
            monkeypatch.setattr(square_module, "CHUNK", chunk)

            # A new function each time: jit would reuse the first trace.
            def run(x, y, k, scale=scale, config=config):
                return attacks.square(logits_fn, x, y, scale * eps, k, config)

            results.append(jax.jit(run)(images, labels, jax.random.key(2)))
        np.testing.assert_array_equal(results[0].adv, results[1].adv)
        np.testing.assert_array_equal(results[0].success, results[1].success)
        if scale > 1:
            assert np.all(results[0].success)
        else:
            assert 0 < np.sum(results[0].success) < len(labels)
