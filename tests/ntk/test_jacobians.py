"""jacobians: the layer survey, convolution windows, factored and explicit
block Jacobians against jax.jacrev, their Gram in full precision (the cost
model is tested with planner)."""

import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from kernel_reference import network, reference_kernels, relative_error
from ntk import jacobians

N_CLASSES = 3
IMAGE_SHAPE = (16, 16, 3)


@functools.cache
def resnet():
    """(apply, params, state, images (7, 16, 16, 3)) of a width-2 ResNet-18
    with a non-zero last layer and running statistics set."""
    apply_fn, params, _, state, images = network(
        "resnet18", N_CLASSES, IMAGE_SHAPE, 7
    )
    return apply_fn, params, state, images


@functools.cache
def resnet_reference():
    """(K, 7, 7) float64 per-class kernels from jax.jacrev."""
    apply_fn, params, state, images = resnet()
    return reference_kernels(apply_fn, [params], state, images)[0]


@functools.cache
def jacobian_fn(factored_kind):
    """One compiled block Jacobian per choice of factored layers."""
    apply_fn, params, state, _ = resnet()
    survey = jacobians.survey(apply_fn, params, state, IMAGE_SHAPE)
    factored = {
        "all": tuple(layer.name for layer in survey.layers),
        "none": (),
    }[factored_kind]
    return survey, jacobians.block_jacobian_fn(
        apply_fn, survey.layers, factored
    )


def block_jacobian(factored_kind, rows, classes):
    _, params, state, images = resnet()
    _, fn = jacobian_fn(factored_kind)
    return fn(params, state, images[rows], jnp.asarray(classes, jnp.int32))


@pytest.mark.medium
def test_survey_finds_every_weight_layer():
    apply_fn, params, state, _ = resnet()
    survey = jacobians.survey(apply_fn, params, state, IMAGE_SHAPE)
    names = [layer.name.split("/")[-1] for layer in survey.layers]
    # Stem, 16 block convolutions, 3 projection shortcuts, logits.
    assert len(names) == 21 and names.count("shortcut_conv") == 3
    assert names[0] == "initial_conv" and names[-1] == "logits"
    assert survey.n_logits == N_CLASSES
    assert survey.n_params == ravel_pytree(params)[0].size
    by_name = {layer.name: layer for layer in survey.layers}
    strided = by_name["res_net18/~/block_group_1/~/block_0/~/conv_0"]
    # 16×16 -> 8×8 positions; 3×3 windows of the 2 input channels.
    assert (strided.positions, strided.in_features, strided.out_features) == (
        64,
        18,
        4,
    )
    logits = by_name["res_net18/~/logits"]
    assert (logits.positions, logits.conv) == (1, None)
    # The forward multiply-adds of the stem: 256 pixels × 27 × 2 channels.
    assert survey.layers[0].macs == 256 * 27 * 2


def test_survey_skips_a_reused_layer():
    """A layer applied twice has no single input and cotangent: it is left
    to jax.jacrev."""

    def forward(images, is_training):
        del is_training
        shared = hk.Linear(4, name="shared")
        hidden = jax.nn.relu(shared(hk.Flatten()(images)[:, :4]))
        return hk.Linear(2, name="head")(shared(hidden))

    model = hk.transform_with_state(forward)
    params, state = model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)), is_training=False
    )
    survey = jacobians.survey(model.apply, params, state, (2, 2, 1))
    assert [layer.name for layer in survey.layers] == ["head"]


@pytest.mark.parametrize(
    "kernel_shape, stride, padding, dilation",
    [
        ((3, 3), (1, 1), "SAME", (1, 1)),
        ((3, 3), (2, 2), "SAME", (1, 1)),
        ((1, 1), (2, 2), "VALID", (1, 1)),
        ((3, 2), (2, 1), ((1, 0), (2, 1)), (1, 1)),
        ((3, 3), (1, 1), "SAME", (2, 2)),
    ],
)
def test_windows_reproduce_the_convolution(
    kernel_shape, stride, padding, dilation
):
    """Windows times the flattened weight equal lax's convolution."""
    inputs = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 8, 3))
    weight = jax.random.normal(jax.random.PRNGKey(1), (*kernel_shape, 3, 5))
    want = jax.lax.conv_general_dilated(
        inputs,
        weight,
        stride,
        padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    layer = jacobians.WeightLayer(
        "conv",
        want.shape,
        int(np.prod(want.shape[:-1])),
        int(np.prod(weight.shape[:-1])),
        5,
        (kernel_shape, stride, padding, dilation),
    )
    got = jnp.dot(
        layer.windows(inputs),
        weight.reshape(-1, 5),
        precision=jax.lax.Precision.HIGHEST,
    )
    np.testing.assert_allclose(got, want.reshape(-1, 5), rtol=1e-5, atol=1e-5)


@pytest.mark.medium
@pytest.mark.parametrize("factored_kind", ["all", "none"])
def test_block_gram_matches_reference(factored_kind):
    """Gram of two overlapping blocks, every layer factored or none, equals
    the J_c J_cᵀ entries of jax.jacrev (logits 2 and 0)."""
    classes = (2, 0)
    first = block_jacobian(factored_kind, slice(0, 4), classes)
    second = block_jacobian(factored_kind, slice(3, 7), classes)
    got = np.asarray(
        jacobians.gram(first, second, jacobians.overlaps(first, second))
    )
    want = resnet_reference()[list(classes)][:, 0:4, 3:7]
    assert got.shape == (2, 4, 4)
    assert relative_error(got, want) < 1e-5


@pytest.mark.slow
def test_explicit_gradients_are_per_image_gradients():
    """With nothing factored, the block Jacobian holds ∇θ f_c(x_b) for every
    parameter, as jax.jacrev of one image at a time."""
    apply_fn, params, state, images = resnet()
    block = block_jacobian("none", slice(0, 2), (1,))
    assert block.inputs == {} and block.cotangents == {}
    for b in range(2):
        image = images[b : b + 1]
        want = jax.jacrev(
            lambda p, x=image: apply_fn(p, state, None, x, False)[0][0, 1]
        )(params)
        got = jax.tree_util.tree_map(
            lambda leaf, b=b: leaf[0, b], block.explicit
        )
        for g, w in zip(
            jax.tree_util.tree_leaves(got),
            jax.tree_util.tree_leaves(want),
            strict=True,
        ):
            np.testing.assert_allclose(
                g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max()
            )


def test_split_and_merge_params_round_trip():
    _, params, _, _ = resnet()
    names = ["res_net18/~/logits", "res_net18/~/initial_conv"]
    rest, weights = jacobians.split_params(params, names)
    assert "w" not in rest["res_net18/~/logits"]
    assert "res_net18/~/initial_conv" not in rest  # it has no bias
    assert set(weights) == set(names)
    merged = jacobians.merge_params(rest, weights)
    assert jax.tree_util.tree_structure(
        merged
    ) == jax.tree_util.tree_structure(dict(params))


def test_gram_is_full_precision():
    rng = np.random.default_rng(0)
    j1 = rng.normal(size=(2, 3, 50)).astype(np.float32)
    j2 = rng.normal(size=(2, 4, 50)).astype(np.float32)
    want = np.einsum("gip,gjp->gij", j1.astype(np.float64), j2)
    blocks = [
        jacobians.BlockJacobian({"layer": {"w": jnp.asarray(j)}}, {}, {})
        for j in (j1, j2)
    ]
    got = np.asarray(jacobians.gram(*blocks, {}))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
