"""Tests of attacks/autoattack.py: robust accuracy at most each single
attack's, broken_by codes consistent with the attacks and the images, the
host driver equal to the traced version, and bad settings refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
from attacks import common
from attacks.autoattack import padded_size, stage

SHAPE = (6, 6, 2)
DIM = int(np.prod(SHAPE))
EPS = 6 / 255
CONFIG = attacks.AutoAttackConfig(
    budget=attacks.Budget(
        apgd_iters=20, n_targets=3, fab_iters=20, square_queries=300
    )
)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.normal(size=(DIM, 32)) / 4, jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(32, 10)), jnp.float32)
    images = jnp.asarray(rng.uniform(0, 1, (48,) + SHAPE), jnp.float32)

    def logits_fn(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2

    labels = jnp.argmax(logits_fn(images), -1).at[:4].add(1) % 10
    result = attacks.autoattack(
        logits_fn, images, labels, EPS, jax.random.key(1), CONFIG
    )
    return logits_fn, images, labels, result


@pytest.mark.medium
def test_robust_accuracy_at_most_each_attacks(problem):
    logits_fn, images, labels, result = problem
    broken_by = np.asarray(result.broken_by)
    robust_count = np.sum(broken_by == attacks.ROBUST)
    keys = common.example_keys(jax.random.key(1), len(images))
    for name in attacks.STANDARD:
        single = stage(name, CONFIG)(
            logits_fn,
            images,
            labels,
            EPS,
            common.fold_keys(keys, attacks.get(name).code),
        )
        assert robust_count <= np.sum(~np.asarray(single.success)), name
    # Examples are broken at every stage of this problem, so it tests them.
    assert set(np.unique(broken_by)) >= {-1, 0, 1}


def test_codes_agree_with_the_images(problem):
    logits_fn, images, labels, result = problem
    broken_by = np.asarray(result.broken_by)
    wrong = np.asarray(jnp.argmax(logits_fn(result.adv), -1) != labels)
    np.testing.assert_array_equal(wrong, broken_by != attacks.ROBUST)
    np.testing.assert_array_equal(broken_by[:4], attacks.CLEAN)
    delta = np.abs(np.asarray(result.adv) - np.asarray(images))
    assert delta.max() <= EPS + 1e-6


@pytest.mark.medium
def test_driver_equals_traced(problem):
    logits_fn, images, labels, result = problem
    traced = jax.jit(
        lambda x, y, k: attacks.autoattack_traced(
            logits_fn, x, y, EPS, k, CONFIG
        )
    )(images, labels, jax.random.key(1))
    np.testing.assert_array_equal(traced.broken_by, result.broken_by)
    np.testing.assert_allclose(traced.adv, result.adv, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: attacks.AutoAttackConfig(attacks=("apgd-ce", "pgd")),
        lambda: attacks.AutoAttackConfig(attacks=()),
        lambda: attacks.AutoAttackConfig(norm="l2"),
        lambda: attacks.AutoAttackConfig(norm="l1"),
        lambda: attacks.Budget(apgd_iters=0),
        lambda: attacks.Budget(square_queries=-5),
        lambda: attacks.SquareConfig(queries=0),
        lambda: attacks.FABConfig(iters=0),
    ],
)
def test_bad_settings_raise(make):
    with pytest.raises(ValueError):
        make()


def test_l2_without_square_is_accepted():
    config = attacks.AutoAttackConfig(
        norm="l2", attacks=("apgd-ce", "apgd-t", "fab-t")
    )
    assert config.norm == "l2"


def test_padded_size_is_the_smallest_allowed_size():
    """Against the allowed sizes listed outright: 1 to 4, then 2^k times
    5/4, 6/4, 7/4 and 8/4 for 2^k >= 4; never above the batch, never more
    than a quarter of padding."""
    allowed = sorted(
        {1, 2, 3, 4}
        | {(1 << k) * m // 4 for k in range(2, 12) for m in (5, 6, 7, 8)}
    )
    for batch in (1, 7, 100, 200, 1000):
        for count in range(1, batch + 1):
            size = padded_size(count, batch)
            expected = min(batch, min(a for a in allowed if a >= count))
            assert size == expected, (count, batch)
            assert count <= size <= batch
            assert size - count < max(count / 4, 1)
    assert len({padded_size(c, 1024) for c in range(1, 1025)}) == 4 + 4 * 8
