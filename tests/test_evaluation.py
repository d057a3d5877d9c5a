"""Tests of evaluation.py on a small MLP trained on Fashion-MNIST (and a
tiny ResNet for batch norm): logit components against neural-tangents, the
attack's eps-ball, padding of the last batch, keys, and example files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attacks
import data
import evaluation
import models
import utils
from nt_compat import nt
from utils import UserError

IMAGE_SHAPE = (28, 28, 1)
TRAIN_SIZE = 2048
TEST_SIZE = 200


def sgd_steps(
    model,
    dynamics,
    params0,
    params,
    state,
    images,
    labels,
    steps,
    batch_size=128,
):
    """`steps` SGD steps (lr 0.1, momentum 0.9) of `params` on the
    cross-entropy of `dynamics`' logits, batches taken in order."""
    optimizer = optax.sgd(0.1, momentum=0.9)

    def loss(trained, x, y):
        logits, _ = dynamics.logits(model.apply, params0, trained, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y
        ).mean()

    @jax.jit
    def step(trained, opt_state, x, y):
        grads = jax.grad(loss)(trained, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state

    opt_state = optimizer.init(params)
    for i in range(steps):
        start = (i * batch_size) % len(labels)
        params, opt_state = step(
            params,
            opt_state,
            images[start : start + batch_size],
            labels[start : start + batch_size],
        )
    return params


def train_tiny_mlp(data_path):
    """mlp_skinny after 40 standard SGD steps (params) and 20 more of the
    centered linearization around them (lin_params), on 2048 Fashion-MNIST
    training images; also a balanced 200-image test subset.

    Returns:
        dict with 'model', 'params', 'lin_params', 'state', 'meta' (as
        run_exp.py writes it), 'images' (200, 28, 28, 1), 'labels' (200,).
    """
    images, labels = data.load_split("fashion_mnist", data_path, train=True)
    images, labels = images[:TRAIN_SIZE], labels[:TRAIN_SIZE]
    model = models.get_model("mlp_skinny", 10)
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    params = sgd_steps(
        model, models.STANDARD, params, params, state, images, labels, 40
    )
    lin_params = sgd_steps(
        model,
        models.Dynamics(linear=True, centering=True),
        params,
        params,
        state,
        images,
        labels,
        20,
    )
    test_images, test_labels = data.subset(
        *data.load_split("fashion_mnist", data_path, train=False), TEST_SIZE, 0
    )
    spec = models.ModelSpec("mlp_skinny", 64, "fashion_mnist", 10)
    meta = dict(spec.as_meta(), centering=True, linear=True, phase=2, epoch=1)
    return dict(
        model=model,
        params=params,
        lin_params=lin_params,
        state=state,
        meta=meta,
        images=test_images,
        labels=test_labels,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not os.path.isdir(data.DEBIAN_FASHION_MNIST):
        pytest.skip("Debian fashion-mnist package not installed")
    return train_tiny_mlp(str(tmp_path_factory.mktemp("data")))


def linearized_logits(model, params0, params, state, images):
    """f(x; θ0) + J(θ − θ0) by neural-tangents, independently of models.py."""

    def f(p, x):
        return model.apply(p, state, None, x, False)[0]

    return np.asarray(jax.jit(nt.linearize(f, params0))(params, images))


def run(trained, dynamics, attack=None, **kwargs):
    """evaluate() of the trained MLP, at lin_params around params."""
    kwargs.setdefault("progress", False)
    return evaluation.evaluate(
        trained["model"].apply,
        dynamics,
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
        trained["labels"],
        attack=attack,
        **kwargs,
    )


def test_linear_components_match_neural_tangents(trained):
    result = run(trained, models.Dynamics(linear=True, centering=False))
    f, df = result.components_clean["f"], result.components_clean["df"]
    want = linearized_logits(
        trained["model"],
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
    )
    at_params = trained["model"].apply(
        trained["params"], trained["state"], None, trained["images"], False
    )[0]
    np.testing.assert_allclose(f, at_params, atol=1e-5)
    np.testing.assert_allclose(f + df, want, atol=1e-4)
    assert f.dtype == df.dtype == np.float32
    np.testing.assert_array_equal(
        result.predictions_clean, np.argmax(f + df, axis=-1)
    )
    assert result.acc_clean == pytest.approx(
        np.mean(np.argmax(want, -1) == trained["labels"]), abs=0.01
    )
    assert result.acc_clean > 0.5  # the model learned something
    assert result.acc_dirty is None and result.components_dirty is None


def test_centered_model_classifies_with_df(trained):
    dynamics = models.Dynamics(linear=True, centering=True)
    result = run(trained, dynamics)
    f, df = result.components_clean["f"], result.components_clean["df"]
    want = linearized_logits(
        trained["model"],
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
    )
    np.testing.assert_allclose(f + df, want, atol=1e-4)
    centered, _ = dynamics.logits(
        trained["model"].apply,
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
    )
    np.testing.assert_allclose(df, centered, atol=1e-5)
    np.testing.assert_array_equal(
        result.predictions_clean, np.argmax(df, axis=-1)
    )
    assert result.acc_clean > 0.5


def test_standard_model_has_zero_df(trained):
    result = run(trained, models.STANDARD)
    logits = trained["model"].apply(
        trained["lin_params"], trained["state"], None, trained["images"], False
    )[0]
    np.testing.assert_allclose(result.components_clean["f"], logits, atol=1e-5)
    assert not np.any(result.components_clean["df"])


def random_tree_like(tree, rng):
    """Random values of each leaf's shape (variances kept positive), made
    in NumPy so that no initialiser has to be compiled."""

    def leaf(path, shape):
        values = 0.1 * rng.normal(size=shape.shape)
        if "var_ema" in jax.tree_util.keystr(path):
            values = 1 + np.abs(values)
        return values.astype(shape.dtype)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def test_resnet_components_use_eval_mode_batch_norm():
    model = models.get_model("resnet18", 10, width=2)
    shapes = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE)), True
        )
    )
    rng = np.random.default_rng(1)
    params, state = random_tree_like(shapes, rng)
    lin_params = random_tree_like(params, rng)
    images = rng.uniform(size=(6, *IMAGE_SHAPE)).astype(np.float32)
    result = evaluation.evaluate(
        model.apply,
        models.Dynamics(linear=True),
        params,
        lin_params,
        state,
        images,
        np.zeros(6, np.int32),
        attack=None,
        batch_size=4,
        progress=False,
    )
    want = linearized_logits(model, params, lin_params, state, images)
    components = result.components_clean
    np.testing.assert_allclose(
        components["f"] + components["df"], want, rtol=1e-4, atol=1e-4
    )


def test_adversarial_examples_stay_in_the_ball_and_hurt(trained):
    attack = attacks.eval_linf(8.0, iters=10)
    result = run(
        trained,
        models.Dynamics(linear=True, centering=True),
        attack,
        keep_examples=True,
        batch_size=64,
    )
    adv = result.adv_images
    assert adv.shape == trained["images"].shape and adv.dtype == np.float32
    assert np.max(np.abs(adv - trained["images"])) <= attack.eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert result.acc_dirty < result.acc_clean - 0.05
    assert result.components_dirty["f"].shape == (TEST_SIZE, 10)
    np.testing.assert_array_equal(
        result.predictions_dirty,
        np.argmax(result.components_dirty["df"], axis=-1),
    )


def test_short_last_batch_is_padded_not_recompiled(trained):
    dynamics = models.Dynamics(linear=True, centering=False)
    attack = attacks.eval_linf(4.0, iters=3)
    step = evaluation.make_eval_step(trained["model"].apply, dynamics, attack)
    padded = run(trained, dynamics, attack, batch_size=64, eval_step=step)
    assert step._cache_size() == 1  # 200 = 3 * 64 + 8 used one compilation
    whole = run(trained, dynamics, None, batch_size=TEST_SIZE)
    assert padded.n == TEST_SIZE == len(padded.predictions_dirty)
    for name in ("f", "df"):
        np.testing.assert_allclose(
            padded.components_clean[name],
            whole.components_clean[name],
            atol=1e-5,
        )


def test_max_batches_and_seed(trained):
    dynamics = models.Dynamics(linear=True, centering=True)
    attack = attacks.eval_linf(4.0, iters=3)
    step = evaluation.make_eval_step(trained["model"].apply, dynamics, attack)
    first = run(
        trained,
        dynamics,
        attack,
        batch_size=50,
        max_batches=2,
        seed=3,
        keep_examples=True,
        eval_step=step,
    )
    again = run(
        trained,
        dynamics,
        attack,
        batch_size=50,
        max_batches=2,
        seed=3,
        keep_examples=True,
        eval_step=step,
    )
    other = run(
        trained,
        dynamics,
        attack,
        batch_size=50,
        max_batches=2,
        seed=4,
        keep_examples=True,
        eval_step=step,
    )
    assert first.n == 100 and first.adv_images.shape[0] == 100
    np.testing.assert_array_equal(first.adv_images, again.adv_images)
    assert not np.array_equal(first.adv_images, other.adv_images)
    assert first.acc_clean == pytest.approx(
        np.mean(first.predictions_clean == trained["labels"][:100])
    )


def test_margin_restarts_not_weaker_than_one_ce_start(trained):
    dynamics = models.Dynamics(linear=True, centering=True)
    base = attacks.eval_linf(8.0, iters=5)
    single_ce = run(trained, dynamics, base, seed=7)
    strong = run(
        trained,
        dynamics,
        attacks.AttackConfig(**dict(base.kwargs(), loss="margin", restarts=3)),
        seed=7,
    )
    assert strong.acc_dirty <= single_ce.acc_dirty
    assert strong.acc_clean == single_ce.acc_clean


def test_restarts_only_add_misclassified_examples(trained):
    dynamics = models.Dynamics(linear=True, centering=True)
    base = attacks.eval_linf(8.0, iters=5)
    single = run(trained, dynamics, base, seed=7)
    several = run(
        trained,
        dynamics,
        attacks.AttackConfig(**dict(base.kwargs(), restarts=3)),
        seed=7,
    )
    robust_single = single.predictions_dirty == trained["labels"]
    robust_several = several.predictions_dirty == trained["labels"]
    assert not np.any(robust_several & ~robust_single)


def test_empty_input_is_refused(trained):
    with pytest.raises(ValueError, match="at least one"):
        evaluation.evaluate(
            trained["model"].apply,
            models.STANDARD,
            trained["params"],
            trained["params"],
            trained["state"],
            trained["images"][:0],
            trained["labels"][:0],
            attack=None,
        )


def write_examples(path, images, labels):
    """Writes an examples pickle as eval_and_make_adv.py does."""
    utils.atomic_pickle(path, evaluation.examples_record(images, labels))
    return str(path)


def test_examples_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(5, 28, 28, 1)).astype(np.float32)
    labels = np.arange(5)
    path = write_examples(tmp_path / "adv.pkl", images, labels)
    record = utils.load_pickle_arrays(path, evaluation.EXAMPLE_KEYS)
    assert record["images"].shape == (5, 1, 28, 28)
    assert record["images"].dtype == np.float32
    loaded_images, loaded_labels = evaluation.load_examples(
        path, IMAGE_SHAPE, 10
    )
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)


@pytest.mark.parametrize(
    "images,labels,message",
    [
        (np.zeros((3, 3, 32, 32)), np.zeros(3, int), "shape"),
        (np.zeros((3, 28, 28, 1)), np.zeros(3, int), "shape"),
        (np.zeros((0, 1, 28, 28)), np.zeros(0, int), "N >= 1"),
        (np.full((3, 1, 28, 28), 255, np.uint8), np.zeros(3, int), "divide"),
        (np.full((3, 1, 28, 28), np.nan), np.zeros(3, int), r"\[0, 1\]"),
        (np.zeros((3, 1, 28, 28)), np.zeros(4, int), "labels"),
        (np.zeros((3, 1, 28, 28)), np.full(3, 10), r"\[0, 10\)"),
        (np.zeros((3, 1, 28, 28)), np.zeros(3), "int"),
    ],
)
def test_bad_examples_files_are_refused(tmp_path, images, labels, message):
    path = tmp_path / "bad.pkl"
    utils.atomic_pickle(path, {"images": images, "labels": labels})
    with pytest.raises(UserError, match=message):
        evaluation.load_examples(str(path), IMAGE_SHAPE, 10)
