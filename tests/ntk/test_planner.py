"""planner: block plans (block size, passes over the logits, factored
layers) and their model of memory and work, checked by hand and against
the arrays the blocks really hold."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from kernel_reference import N_CLASSES, resnet
from ntk import jacobians, planner


def abstract_survey(name, width, image_shape, n_classes=10):
    """jacobians.survey of a model from parameter shapes alone."""
    model = models.get_model(name, n_classes, width)
    params, state = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            jnp.zeros((1, *image_shape)),
            is_training=True,
        )
    )
    return jacobians.survey(model.apply, params, state, image_shape)


@functools.cache
def resnet18_survey():
    """The full-width ResNet-18 of the paper on CIFAR-10."""
    return abstract_survey("resnet18", 64, (32, 32, 3))


def test_plan_pads_blocks_and_passes():
    survey = abstract_survey("mlp_skinny", 1, (2, 2, 1), N_CLASSES)
    plan = planner.make_plan(
        7, survey, (0, 1, 2), block_size=3, classes_per_pass=2
    )
    assert plan.size == 3 and plan.n_blocks == 3 and plan.n_upper_blocks == 6
    assert plan.passes == ((0, 1), (2, 2))
    blocks = plan.blocks(np.ones((7, 2, 2, 1), np.float32))
    assert blocks.shape == (3, 3, 2, 2, 1)
    assert blocks[2, :1].min() == 1 and blocks[2, 1:].max() == 0


def test_plan_fits_memory_with_even_blocks():
    survey = resnet18_survey()
    assert survey.n_params == 11_173_962
    for memory_gb in (4.0, 8.0, 24.0):
        plan = planner.make_plan(
            500, survey, tuple(range(10)), memory_gb=memory_gb
        )
        assert planner.plan_peak_gib(plan, survey) <= memory_gb
        assert plan.n_blocks * plan.size - 500 < plan.n_blocks  # least pad
        assert sorted(c for p in plan.passes for c in set(p)) == list(
            range(10)
        )
    # The last stage's 3×3 convolutions (S = 16 positions) and the linear
    # layer are factored; the earlier stages and 1×1 shortcuts are not.
    assert sorted(name.split("/")[-1] for name in plan.factored) == [
        "conv_0",
        "conv_0",
        "conv_1",
        "conv_1",
        "logits",
    ]
    assert all(
        "block_group_3" in name
        for name in plan.factored
        if not name.endswith("logits")
    )


def test_plan_falls_back_to_the_smallest_blocks():
    plan = planner.make_plan(500, resnet18_survey(), (0, 1), memory_gb=1e-3)
    assert plan.size == 1 and plan.passes == ((0,), (1,))
    assert (
        planner.make_plan(5, resnet18_survey(), (4,), block_size=64).size == 5
    )
    ntvp = planner.make_plan(
        500, resnet18_survey(), (4,), implementation="ntvp"
    )
    assert ntvp.size == planner.NTVP_BLOCK_SIZE and ntvp.factored == ()


def test_passes_balance_classes():
    survey = abstract_survey("mlp_skinny", 1, (2, 2, 1))
    plan = planner.make_plan(
        10, survey, tuple(range(10)), block_size=10, classes_per_pass=7
    )
    assert plan.passes == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def test_factoring_rule():
    late = jacobians.WeightLayer("late", (1, 4, 4, 512), 16, 4608, 512)
    early = jacobians.WeightLayer("early", (1, 32, 32, 64), 1024, 576, 64)
    linear = jacobians.WeightLayer("linear", (1, 10), 1, 512, 10)
    # S²(D + G·O) against G·D·O multiply-adds per pair of images.
    assert 16**2 * (4608 + 512) < 4608 * 512  # late, one logit
    assert planner.factoring_pays(late, 1)
    assert planner.factoring_pays(linear, 1)
    assert 1024**2 * (576 + 10 * 64) > 10 * 576 * 64  # early, ten logits
    assert not planner.factoring_pays(early, 10)
    survey = jacobians.Survey(10, 0, (late, early, linear))
    assert planner.factored_layers(survey, 1) == ("late", "linear")


@pytest.mark.parametrize("factored", ["all", "none"])
def test_memory_model_counts_the_block(factored):
    """BlockCosts.jacobian_floats is the size of an actual BlockJacobian of
    3 images and 2 logits."""
    apply_fn, params, _, state, images = resnet()
    survey = jacobians.survey(apply_fn, params, state, images.shape[1:])
    names = tuple(layer.name for layer in survey.layers)
    names = names if factored == "all" else ()
    block = jacobians.block_jacobian_fn(apply_fn, survey.layers, names)(
        params, state, images[:3], jnp.asarray([0, 1], jnp.int32)
    )
    held = sum(leaf.size for leaf in jax.tree_util.tree_leaves(block))
    assert planner.BlockCosts(survey, names).jacobian_floats(3, 2) == held


def test_describe_plan_says_what_the_plan_is():
    survey = abstract_survey("mlp_skinny", 1, (2, 2, 1), N_CLASSES)
    plan = planner.make_plan(7, survey, (0, 1, 2), 3, 2)
    line = planner.describe_plan(plan, survey, "rows")
    peak = planner.plan_peak_gib(plan, survey)
    assert line == (
        "kernel (rows): 7 images in 3 block(s) of 3, 2 logit(s) per pass, "
        f"2 pass(es), {len(plan.factored)} of {len(survey.layers)} weight "
        f"layers factored, modelled peak {peak:.2f} GiB"
    )
