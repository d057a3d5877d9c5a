"""Tests of attacks/pgd.py: known answers on linear models, the eps-ball
and the [0, 1] box, a trained MLP, keys, restarts and compilation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attacks
from attacks.pgd import _is_better
from training import train

SHAPE = (4, 4, 3)
DIM = int(np.prod(SHAPE))
N_CLASSES = 3


def linear_logits_fn(weights):
    """logits = flatten(x) @ weights, for weights (DIM, K)."""

    def logits_fn(images):
        return images.reshape(images.shape[0], -1) @ weights

    return logits_fn


def jitted_pgd(logits_fn, **attack_kwargs):
    """The calling pattern of the callers: one jit around the whole attack."""
    return jax.jit(
        lambda x, y, key: attacks.pgd(
            logits_fn, x, y, key, attacks.AttackConfig(**attack_kwargs)
        )
    )


def linear_problem(seed, batch=8):
    """Two-class linear model and images well inside [0, 1].

    Returns (weights (DIM, 2), images (batch, *SHAPE), labels (batch,)).
    """
    rng = np.random.default_rng(seed)
    weights = jnp.asarray(0.1 * rng.normal(size=(DIM, 2)), jnp.float32)
    images = jnp.asarray(
        rng.uniform(0.3, 0.7, size=(batch,) + SHAPE), jnp.float32
    )
    labels = jnp.asarray(rng.integers(0, 2, size=batch), jnp.int32)
    return weights, images, labels


def wrong_minus_true(weights, labels):
    """w_wrong - w_true per example, (batch, *SHAPE), in numpy."""
    w = np.asarray(weights)
    y = np.asarray(labels)
    return (w[:, 1 - y] - w[:, y]).T.reshape((len(y),) + SHAPE)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_linf_reaches_the_linear_worst_case(loss):
    weights, images, labels = linear_problem(0)
    eps = 4 / 255
    attack = jitted_pgd(
        linear_logits_fn(weights),
        eps=eps,
        step_size=eps / 4,
        iters=10,
        norm="linf",
        loss=loss,
    )
    adv = attack(images, labels, jax.random.key(0))
    expected = np.asarray(images) + eps * np.sign(
        wrong_minus_true(weights, labels)
    )
    np.testing.assert_allclose(adv, expected, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_l2_reaches_the_linear_worst_case(loss):
    weights, images, labels = linear_problem(1)
    eps = 0.25
    attack = jitted_pgd(
        linear_logits_fn(weights),
        eps=eps,
        step_size=eps / 2,
        iters=100,
        norm="l2",
        loss=loss,
    )
    adv = attack(images, labels, jax.random.key(1))
    diff = wrong_minus_true(weights, labels)
    norms = np.sqrt(np.sum(diff**2, axis=(1, 2, 3), keepdims=True))
    expected = np.asarray(images) + eps * diff / norms
    np.testing.assert_allclose(adv, expected, atol=1e-5)


def boundary_images(seed, batch=16):
    """Images whose pixels are partly exactly 0 or 1, partly in between."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, size=(batch,) + SHAPE)
    images[: batch // 2] = np.round(images[: batch // 2])
    images[batch // 2 :, 0] = 0.0
    images[batch // 2 :, 1] = 1.0
    return jnp.asarray(images, jnp.float32)


def assert_in_ball_and_box(adv, images, eps, norm):
    adv = np.asarray(adv, np.float64)
    delta = adv - np.asarray(images, np.float64)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 1e-6
    else:
        norms = np.sqrt(np.sum(delta.reshape(len(delta), -1) ** 2, axis=1))
        assert norms.max() <= eps + 1e-6


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_never_leaves_ball_or_box(norm, eps):
    weights = jnp.asarray(
        np.random.default_rng(2).normal(size=(DIM, 2)), jnp.float32
    )
    images = boundary_images(3)
    labels = jnp.asarray(np.arange(len(images)) % 2, jnp.int32)
    for step_size, iters in [(0.0, 0), (2 * eps, 5), (eps / 10, 7)]:
        attack = jitted_pgd(
            linear_logits_fn(weights),
            eps=eps,
            step_size=step_size,
            iters=iters,
            norm=norm,
            restarts=2,
        )
        adv = attack(images, labels, jax.random.key(4))
        assert_in_ball_and_box(adv, images, eps, norm)


def constant_logits_fn(images):
    """A model whose logits, and so gradients, do not depend on the input."""
    return jnp.zeros((images.shape[0], 2)) + jnp.sum(images) * 0.0


def test_random_start_fills_the_ball():
    images = jnp.full((64,) + SHAPE, 0.5, jnp.float32)
    labels = jnp.zeros((64,), jnp.int32)
    eps = 0.1
    start = (
        np.asarray(
            attacks.pgd(
                constant_logits_fn,
                images,
                labels,
                jax.random.key(5),
                attacks.AttackConfig(
                    eps=eps, step_size=0.0, iters=0, norm="linf"
                ),
            )
        )
        - 0.5
    )
    # Uniform on [-eps, eps]: mean 0, mean |delta| eps / 2, reaches the edge.
    assert abs(start.mean()) < 0.01 * eps
    assert abs(np.abs(start).mean() - eps / 2) < 0.02 * eps
    assert np.abs(start).max() > 0.99 * eps

    l2_eps = 0.25
    l2_start = (
        np.asarray(
            attacks.pgd(
                constant_logits_fn,
                images,
                labels,
                jax.random.key(5),
                attacks.AttackConfig(
                    eps=l2_eps, step_size=0.0, iters=0, norm="l2"
                ),
            )
        )
        - 0.5
    )
    norms = np.sqrt(np.sum(l2_start.reshape(64, -1) ** 2, axis=1))
    # Uniform in a 48-dimensional ball: almost all mass near the surface.
    assert norms.max() <= l2_eps + 1e-6
    assert np.median(norms) > 0.95 * l2_eps


def test_l2_zero_gradient_takes_no_step():
    images = boundary_images(6)
    labels = jnp.zeros((len(images),), jnp.int32)
    kwargs = dict(eps=0.25, step_size=0.1, norm="l2")
    start = attacks.pgd(
        constant_logits_fn,
        images,
        labels,
        jax.random.key(7),
        attacks.AttackConfig(iters=0, **kwargs),
    )
    adv = attacks.pgd(
        constant_logits_fn,
        images,
        labels,
        jax.random.key(7),
        attacks.AttackConfig(iters=5, **kwargs),
    )
    assert np.all(np.isfinite(adv))
    np.testing.assert_allclose(adv, start, atol=1e-7)


def mlp_apply(params, images):
    hidden = jax.nn.relu(
        images.reshape(images.shape[0], -1) @ params["w1"] + params["b1"]
    )
    return hidden @ params["w2"] + params["b2"]


def close_classes(rng, class_signs, n):
    """n images of N_CLASSES classes whose means differ by 0.06 per pixel."""
    labels = rng.integers(0, N_CLASSES, size=n)
    images = (
        0.5 + 0.03 * class_signs[labels] + 0.03 * rng.normal(size=(n,) + SHAPE)
    )
    return (
        jnp.asarray(np.clip(images, 0.0, 1.0), jnp.float32),
        jnp.asarray(labels, jnp.int32),
    )


def train_mlp(rng, images, labels, hidden=64, steps=300):
    params = {
        "w1": jnp.asarray(
            rng.normal(size=(DIM, hidden)) / np.sqrt(DIM), jnp.float32
        ),
        "b1": jnp.zeros((hidden,)),
        "w2": jnp.asarray(
            rng.normal(size=(hidden, N_CLASSES)) / np.sqrt(hidden), jnp.float32
        ),
        "b2": jnp.zeros((N_CLASSES,)),
    }
    optimizer = optax.sgd(0.1, momentum=0.9)

    def mean_loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(
            mlp_apply(p, images), labels
        ).mean()

    @jax.jit
    def step(p, state):
        updates, state = optimizer.update(jax.grad(mean_loss)(p), state)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


@pytest.fixture(scope="module")
def trained():
    """(params, test images, test labels) of an MLP on close classes."""
    rng = np.random.default_rng(8)
    class_signs = rng.choice([-1.0, 1.0], size=(N_CLASSES,) + SHAPE)
    train_images, train_labels = close_classes(rng, class_signs, 512)
    params = train_mlp(rng, train_images, train_labels)
    test_images, test_labels = close_classes(rng, class_signs, 256)
    return params, test_images, test_labels


def compiled_attack(apply_fn, **attack_kwargs):
    """jit of pgd against apply_fn(params, images): (params, images,
    labels, key) -> adversarial images."""
    return jax.jit(
        lambda params, images, labels, key: attacks.pgd(
            lambda x: apply_fn(params, x),
            images,
            labels,
            key,
            attacks.AttackConfig(**attack_kwargs),
        )
    )


def robust_correct(trained, key, **attack_kwargs):
    params, images, labels = trained
    attack = compiled_attack(mlp_apply, **attack_kwargs)
    adv = attack(params, images, labels, key)
    return np.asarray(jnp.argmax(mlp_apply(params, adv), -1) == labels)


@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize(
    "norm,eps,step_size", [("linf", 0.04, 0.01), ("l2", 0.25, 0.05)]
)
def test_reduces_accuracy_of_a_trained_model(
    trained, norm, eps, step_size, loss
):
    params, images, labels = trained
    clean = int(train.correct_count(mlp_apply(params, images), labels))
    robust = robust_correct(
        trained,
        jax.random.key(9),
        norm=norm,
        eps=eps,
        step_size=step_size,
        iters=10,
        loss=loss,
    ).sum()
    assert clean >= 0.95 * len(labels)
    assert robust <= 0.2 * len(labels)


def test_same_key_same_output_other_key_other_output(trained):
    params, images, labels = trained
    attack = compiled_attack(
        mlp_apply, norm="linf", eps=0.03, step_size=0.01, iters=3
    )
    first = attack(params, images, labels, jax.random.key(10))
    again = attack(params, images, labels, jax.random.key(10))
    other = attack(params, images, labels, jax.random.key(11))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_restarts_only_add_misclassified_examples(trained, loss):
    kwargs = dict(norm="linf", eps=0.025, step_size=0.0125, iters=3, loss=loss)
    for seed in range(3):
        key = jax.random.key(seed)
        single = robust_correct(trained, key, restarts=1, **kwargs)
        several = robust_correct(trained, key, restarts=4, **kwargs)
        # Whatever one start got wrong stays wrong with more starts.
        assert not np.any(several & ~single)
        assert several.sum() <= single.sum()


def test_restart_zero_is_the_single_start():
    images = boundary_images(12)
    labels = jnp.zeros((len(images),), jnp.int32)
    kwargs = dict(eps=0.1, step_size=0.0, iters=0, norm="linf")
    single = attacks.pgd(
        constant_logits_fn,
        images,
        labels,
        jax.random.key(13),
        attacks.AttackConfig(restarts=1, **kwargs),
    )
    # Equal losses everywhere: the worst case stays the first start's.
    several = attacks.pgd(
        constant_logits_fn,
        images,
        labels,
        jax.random.key(13),
        attacks.AttackConfig(restarts=3, **kwargs),
    )
    np.testing.assert_array_equal(single, several)


def test_misclassified_beats_a_higher_loss():
    # Cross-entropy can be lower on a misclassified example than on a
    # correct one (p = (.45, .55, 0) against (.4, .3, .3) for class 0).
    wrong = jnp.asarray([True, False, True, False])
    loss = jnp.asarray([0.8, 2.0, 0.5, 0.5])
    best_wrong = jnp.asarray([False, True, True, False])
    best_loss = jnp.asarray([0.9, 0.1, 0.4, 0.6])
    better = _is_better(wrong, loss, best_wrong, best_loss)
    np.testing.assert_array_equal(better, [True, False, True, False])


def test_margin_and_cross_entropy_by_hand():
    logits = jnp.asarray([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    labels = jnp.asarray([1, 0])
    margin = attacks.LOSSES["margin"](logits, labels)
    np.testing.assert_allclose(margin, [2.0 - 3.0, 3.0 - 1.0])
    log_norm = np.log(np.exp(1.0) + np.exp(3.0) + np.exp(2.0))
    ce = attacks.LOSSES["ce"](logits, labels)
    np.testing.assert_allclose(ce, [log_norm - 3.0, log_norm - 1.0], rtol=1e-6)


def test_correct_count():
    logits = jnp.asarray([[0.0, 1.0], [2.0, 1.0], [0.0, 5.0]])
    count = train.correct_count(logits, jnp.asarray([1, 1, 1]))
    assert count.dtype == jnp.int32
    assert int(count) == 2


def test_jitted_attack_compiles_once(trained):
    params, images, labels = trained
    traces = []

    def counted_apply(p, x):
        traces.append(x.shape)
        return mlp_apply(p, x)

    attack = compiled_attack(
        counted_apply, norm="l2", eps=0.25, step_size=0.05, iters=2, restarts=2
    )
    attack(params, images, labels, jax.random.key(14))
    traced = len(traces)
    attack(params, images[::-1], labels[::-1], jax.random.key(15))
    assert traced > 0
    assert len(traces) == traced
    assert attack._cache_size() == 1


@pytest.mark.parametrize(
    "bad",
    [dict(norm="l1"), dict(loss="hinge"), dict(iters=-1), dict(restarts=0)],
)
def test_bad_settings_raise(bad):
    kwargs = {"norm": "linf", "eps": 0.1, "step_size": 0.01, "iters": 1, **bad}
    # pgd takes an AttackConfig, which refuses them when made.
    with pytest.raises(ValueError):
        attacks.AttackConfig(**kwargs)
    valid = attacks.AttackConfig(norm="linf", eps=0.1, step_size=0.01, iters=1)
    with pytest.raises(ValueError):
        dataclasses.replace(valid, **bad)


def test_paper_configs():
    train = attacks.train_linf(4.0)
    assert (train.norm, train.iters, train.loss, train.restarts) == (
        "linf",
        20,
        "ce",
        1,
    )
    assert train.eps == pytest.approx(4 / 255)
    assert train.step_size == pytest.approx(2 * (4 / 255) / 20)
    test = attacks.eval_linf(8.0)
    assert (test.norm, test.iters) == ("linf", 100)
    assert test.eps == pytest.approx(8 / 255)
    assert test.step_size == pytest.approx(2 * (8 / 255) / 100)
    l2 = attacks.eval_l2(4.0)
    assert (l2.norm, l2.eps, l2.step_size, l2.iters) == ("l2", 0.25, 0.01, 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        l2.eps = 0.5


def test_config_kwargs_drive_pgd():
    weights, images, labels = linear_problem(16)
    config = attacks.AttackConfig(
        norm="linf", eps=4 / 255, step_size=1 / 255, iters=10
    )
    adv = attacks.pgd(
        linear_logits_fn(weights),
        images,
        labels,
        jax.random.key(17),
        config,
    )
    expected = np.asarray(images) + (4 / 255) * np.sign(
        wrong_minus_true(weights, labels)
    )
    np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_pick_is_take_along_axis_value_and_gradient():
    logits = jax.random.normal(jax.random.key(3), (64, 10))
    classes = jax.random.randint(jax.random.key(4), (64,), 0, 10)
    weights = jax.random.normal(jax.random.key(5), (64,))

    def gather(z):
        return jnp.take_along_axis(z, classes[:, None], axis=-1)[:, 0]

    np.testing.assert_array_equal(
        attacks.pick(logits, classes), gather(logits)
    )
    grads = [
        jax.grad(lambda z, f=f: jnp.sum(weights * f(z)))(logits)
        for f in (lambda z: attacks.pick(z, classes), gather)
    ]
    np.testing.assert_array_equal(grads[0], grads[1])


def test_losses_have_no_scatter_in_their_gradient():
    """A scatter in the gradient runs on the CPU as a loop over examples;
    `pick` exists to avoid it."""
    logits = jnp.ones((8, 10))
    labels = jnp.arange(8) % 10
    for name, loss in attacks.LOSSES.items():
        hlo = (
            jax.jit(jax.grad(lambda z, f=loss: jnp.sum(f(z, labels))))
            .lower(logits)
            .as_text()
        )
        assert "scatter" not in hlo, name
