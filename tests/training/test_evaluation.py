"""Tests of evaluation.py on a small MLP trained on Fashion-MNIST (and a
tiny ResNet for batch norm): logit components against neural-tangents, the
attack's eps-ball, padding of the last batch, keys, and example files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attacks
import models
from helpers import TINY_IMAGE_SHAPE as IMAGE_SHAPE
from helpers import TINY_TEST_SIZE as TEST_SIZE
from helpers import (
    assert_close,
    linearized_logits,
    needs_neural_tangents,
)
from store import atomic, checkpoints
from training import evaluation
from utils import UserError


@pytest.fixture(scope="module")
def trained(tiny_mlp):
    return tiny_mlp


def run(trained, dynamics, attack=None, **kwargs):
    """evaluate() of the trained MLP, at lin_params around params."""
    kwargs.setdefault("progress", False)
    eval_step = kwargs.pop("eval_step", None)
    network = models.Network(
        trained["model"].apply,
        dynamics,
        trained["params"],
        trained["lin_params"],
        trained["state"],
    )
    return evaluation.evaluate(
        network,
        trained["images"],
        trained["labels"],
        attack=attack,
        options=evaluation.EvalOptions(**kwargs),
        eval_step=eval_step,
    )


@needs_neural_tangents
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
    assert_close(f, at_params)
    assert_close(f + df, want, rtol=1e-4)
    assert f.dtype == df.dtype == np.float32
    np.testing.assert_array_equal(
        result.predictions_clean, np.argmax(f + df, axis=-1)
    )
    assert result.acc_clean == pytest.approx(
        np.mean(np.argmax(want, -1) == trained["labels"]), abs=0.01
    )
    assert result.acc_clean > 0.5  # the model learned something
    assert result.acc_dirty is None and result.components_dirty is None


@needs_neural_tangents
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
    assert_close(f + df, want, rtol=1e-4)
    centered, _ = dynamics.logits(
        trained["model"].apply,
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
    )
    assert_close(df, centered)
    np.testing.assert_array_equal(
        result.predictions_clean, np.argmax(df, axis=-1)
    )
    assert result.acc_clean > 0.5


def test_standard_model_has_zero_df(trained):
    result = run(trained, models.STANDARD)
    logits = trained["model"].apply(
        trained["lin_params"], trained["state"], None, trained["images"], False
    )[0]
    # Batch shapes differ, so float32 sums differ in order (logits ~90).
    assert_close(result.components_clean["f"], logits)
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


@needs_neural_tangents
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
    network = models.Network(
        model.apply, models.Dynamics(linear=True), params, lin_params, state
    )
    result = evaluation.evaluate(
        network,
        images,
        np.zeros(6, np.int32),
        attack=None,
        options=evaluation.EvalOptions(batch_size=4, progress=False),
    )
    want = linearized_logits(model, params, lin_params, state, images)
    components = result.components_clean
    assert_close(components["f"] + components["df"], want, rtol=1e-4)


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
    step = evaluation.make_eval_step(attack)
    padded = run(trained, dynamics, attack, batch_size=64, eval_step=step)
    assert step._cache_size() == 1  # 200 = 3 * 64 + 8 used one compilation
    whole = run(trained, dynamics, None, batch_size=TEST_SIZE)
    assert padded.n == TEST_SIZE == len(padded.predictions_dirty)
    for name in ("f", "df"):
        assert_close(
            padded.components_clean[name], whole.components_clean[name]
        )


def test_max_batches_and_seed(trained):
    dynamics = models.Dynamics(linear=True, centering=True)
    attack = attacks.eval_linf(4.0, iters=3)
    step = evaluation.make_eval_step(attack)
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
            models.Network(
                trained["model"].apply,
                models.STANDARD,
                trained["params"],
                trained["params"],
                trained["state"],
            ),
            trained["images"][:0],
            trained["labels"][:0],
            attack=None,
        )


def write_examples(path, images, labels):
    """Writes an examples pickle as eval_and_make_adv.py does."""
    atomic.atomic_pickle(path, evaluation.examples_record(images, labels))
    return str(path)


def test_examples_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(5, 28, 28, 1)).astype(np.float32)
    labels = np.arange(5)
    path = write_examples(tmp_path / "adv.pkl", images, labels)
    record = checkpoints.load_pickle_arrays(path, evaluation.EXAMPLE_KEYS)
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
    atomic.atomic_pickle(path, {"images": images, "labels": labels})
    with pytest.raises(UserError, match=message):
        evaluation.load_examples(str(path), IMAGE_SHAPE, 10)
