"""Models: shapes, parameter counts, and the linearization against
references."""

import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
import utils
from helpers import assert_close, enable_x64, needs_neural_tangents
from ntk import nt_compat
from store import checkpoints

IMAGE_SHAPE = (32, 32, 3)


def resnet18_param_count(width, n_classes, in_channels=3):
    """Parameters of the CIFAR ResNet-18, counted by hand from its layers."""
    bn = lambda c: 2 * c  # scale and offset
    conv = lambda k, cin, cout: k * k * cin * cout
    total = conv(3, in_channels, width) + bn(width)
    c_in = width
    for stage in range(4):
        c = width * 2**stage
        # Block 0: two 3x3 convs; a 1x1 projection where the shape changes.
        total += conv(3, c_in, c) + bn(c) + conv(3, c, c) + bn(c)
        if stage > 0:
            total += conv(1, c_in, c) + bn(c)
        total += 2 * (conv(3, c, c) + bn(c))  # block 1
        c_in = c
    return total + c_in * n_classes + n_classes


def shape_params(name, n_classes, width=64):
    model = models.get_model(name, n_classes, width)
    x = jnp.zeros((1, *IMAGE_SHAPE))
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, True))


@pytest.mark.parametrize("width,n_classes", [(64, 10), (8, 100), (4, 10)])
def test_resnet18_parameter_count(width, n_classes):
    params, state = shape_params("resnet18", n_classes, width)
    assert models.count_params(params) == resnet18_param_count(
        width, n_classes
    )
    # A running mean and variance for each of the 20 batch norms.
    assert len(state) == 2 * 20


def test_full_resnet18_matches_known_size():
    params, _ = shape_params("resnet18", 10)
    assert models.count_params(params) == 11_173_962


@pytest.mark.parametrize(
    "name,hidden", [("mlp_skinny", 256), ("mlp_wide", 2048)]
)
def test_mlp_parameter_count(name, hidden):
    params, state = shape_params(name, 10)
    d = int(np.prod(IMAGE_SHAPE))
    expected = (
        d * hidden + hidden + hidden * hidden + hidden + hidden * 10 + 10
    )
    assert models.count_params(params) == expected
    assert state == {}


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("vgg", 10)
    with pytest.raises(ValueError, match="unknown model"):
        models.forward_function("vgg", 10)


@pytest.mark.medium
def test_forward_function_is_what_get_model_transforms():
    """Transformed again, forward_function gives get_model's parameters
    and, in training mode (batch_norm_train on the CPU), its outputs."""
    model = models.get_model("resnet18", 10, width=2)
    again = hk.transform_with_state(
        models.forward_function("resnet18", 10, width=2)
    )
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    params_again, _ = models.init_model(again, 0, IMAGE_SHAPE)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, params_again
    )
    x = jax.random.uniform(jax.random.PRNGKey(1), (3, *IMAGE_SHAPE))
    for training in (True, False):
        out, new_state = model.apply(params, state, None, x, training)
        out_again, state_again = again.apply(params, state, None, x, training)
        np.testing.assert_array_equal(out, out_again)
        for a, b in zip(
            jax.tree.leaves(new_state),
            jax.tree.leaves(state_again),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def tiny_resnet():
    """A width-4 ResNet-18 with non-trivial weights and batch-norm state."""
    model = models.get_model("resnet18", 10, width=4)
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    images = jax.random.uniform(jax.random.PRNGKey(1), (6, *IMAGE_SHAPE))
    # Non-zero last layer and running statistics from one training pass.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
        params,
    )
    _, state = model.apply(params, state, None, images, True)
    return model, params, state, images


def test_resnet_logits_zero_at_init_and_shape():
    model = models.get_model("resnet18", 10, width=4)
    params, state = models.init_model(model, 3, IMAGE_SHAPE)
    x = jax.random.uniform(jax.random.PRNGKey(0), (5, *IMAGE_SHAPE))
    logits, _ = model.apply(params, state, None, x, False)
    assert logits.shape == (5, 10)
    np.testing.assert_array_equal(np.asarray(logits), 0.0)


@pytest.mark.medium
def test_resnet_has_no_max_pool_and_keeps_resolution(tiny_resnet):
    model, params, state, images = tiny_resnet
    jaxpr = jax.make_jaxpr(
        lambda x: model.apply(params, state, None, x, False)
    )(images)
    primitives = {str(e.primitive) for e in jaxpr.jaxpr.eqns}
    assert "reduce_window_max" not in primitives
    # The stem keeps 32x32: the first convolution's output has the input's
    # spatial size.
    conv_shapes = [
        e.outvars[0].aval.shape
        for e in jaxpr.jaxpr.eqns
        if str(e.primitive) == "conv_general_dilated"
    ]
    assert conv_shapes[0] == (6, 32, 32, 4)
    assert conv_shapes[-1][1:3] == (4, 4)


def test_eval_mode_leaves_state_unchanged(tiny_resnet):
    model, params, state, images = tiny_resnet
    _, new_state = model.apply(params, state, None, images, False)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(jnp.all(a == b)), state, new_state
        )
    )


def perturbation(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, p.shape, p.dtype)
            for k, p in zip(keys, leaves, strict=True)
        ],
    )


def axpy(a, x, y):
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)


@pytest.mark.medium
def test_linearization_error_falls_quadratically(tiny_resnet):
    model, params, state, images = tiny_resnet
    with enable_x64():
        to64 = lambda t: jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), t
        )
        params64, state64 = to64(params), to64(state)
        x64 = jnp.asarray(images, jnp.float64)
        delta = perturbation(params64, 7)
        errors = []
        for t in (1e-4, 5e-5, 2.5e-5):
            moved = axpy(t, delta, params64)
            exact, _ = model.apply(moved, state64, None, x64, False)
            f, df, _ = models.linearized_parts(
                model.apply, params64, moved, state64, x64
            )
            errors.append(float(jnp.max(jnp.abs(exact - (f + df)))))
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert errors[0] > 0
    for r in ratios:
        assert 3.0 < r < 5.0, (errors, ratios)


@needs_neural_tangents
def test_linearization_matches_neural_tangents(tiny_resnet):
    model, params, state, images = tiny_resnet
    f_apply = lambda p, x: model.apply(p, state, None, x, False)[0]
    moved = axpy(0.01, perturbation(params, 3), params)
    reference = nt_compat.nt.linearize(f_apply, params)(moved, images)
    f, df, _ = models.linearized_parts(
        model.apply, params, moved, state, images
    )
    np.testing.assert_allclose(
        np.asarray(f + df), np.asarray(reference), rtol=1e-5, atol=1e-6
    )
    f0 = f_apply(params, images)
    np.testing.assert_array_equal(np.asarray(f), np.asarray(f0))


def test_centered_linearization_is_exactly_zero_at_start(tiny_resnet):
    model, params, state, images = tiny_resnet
    centered = models.Dynamics(linear=True, centering=True)
    logits, _ = centered.logits(model.apply, params, params, state, images)
    np.testing.assert_array_equal(np.asarray(logits), 0.0)
    uncentered = models.Dynamics(linear=True, centering=False)
    logits, _ = uncentered.logits(model.apply, params, params, state, images)
    f0, _ = model.apply(params, state, None, images, False)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(f0))


def test_standard_dynamics_parts(tiny_resnet):
    model, params, state, images = tiny_resnet
    moved = axpy(0.01, perturbation(params, 4), params)
    f_moved, _ = model.apply(moved, state, None, images, False)
    f0, _ = model.apply(params, state, None, images, False)
    f, df, _ = models.STANDARD.parts(model.apply, params, moved, state, images)
    np.testing.assert_array_equal(np.asarray(f), np.asarray(f_moved))
    np.testing.assert_array_equal(np.asarray(df), 0.0)
    centered = models.Dynamics(linear=False, centering=True)
    logits, _ = centered.logits(model.apply, params, moved, state, images)
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(f_moved - f0), atol=1e-6
    )


def test_standard_centered_logits_have_the_right_input_gradient(tiny_resnet):
    """PGD differentiates the centered logits with respect to the images."""
    model, params, state, images = tiny_resnet
    moved = axpy(0.01, perturbation(params, 5), params)
    centered = models.Dynamics(linear=False, centering=True)

    def total(x, p):
        return jnp.sum(model.apply(p, state, None, x, False)[0][:, 0])

    got = jax.grad(
        lambda x: jnp.sum(
            centered.logits(model.apply, params, moved, state, x)[0][:, 0]
        )
    )(images)
    expected = jax.grad(total)(images, moved) - jax.grad(total)(images, params)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6
    )


# --------------------------------------------------------------------------
# Checkpoints: layer names, meta, the spec
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp_skinny", "mlp_wide"])
def test_mlp_layers_have_the_original_names(name):
    params, _ = shape_params(name, 10)
    assert sorted(params) == ["linear", "linear_1", "linear_2"]
    hidden = 256 if name == "mlp_skinny" else 2048
    assert params["linear"]["w"].shape == (int(np.prod(IMAGE_SHAPE)), hidden)
    assert params["linear_2"]["w"].shape == (hidden, 10)


def _mlp_checkpoint(tmp_path, names, meta):
    """A mlp_skinny checkpoint on Fashion-MNIST shapes whose layers are
    named `names` (3 of them), with `meta`; returns (path, params)."""
    model = models.get_model("mlp_skinny", 10)
    params, state = models.init_model(model, 0, (28, 28, 1))
    renamed = {
        new: params[old]
        for new, old in zip(
            names, ["linear", "linear_1", "linear_2"], strict=True
        )
    }
    path = str(tmp_path / "checkpoint.pkl")
    checkpoints.save_checkpoint(path, renamed, renamed, state, meta)
    return path, params


def test_original_and_earlier_mlp_checkpoints_load(tmp_path):
    for names in (
        ["linear", "linear_1", "linear_2"],  # the original's
        ["mlp/~/linear_0", "mlp/~/linear_1", "mlp/~/linear_2"],  # earlier
    ):
        path, params = _mlp_checkpoint(tmp_path, names, {})
        checkpoint, spec = models.load_with_spec(
            path, model="mlp_skinny", dataset="fashion_mnist"
        )
        assert spec == models.ModelSpec("mlp_skinny", None, "fashion_mnist")
        assert utils.tree_equal(checkpoint["params"], params)
        assert utils.tree_equal(checkpoint["lin_params"], params)


def test_other_layer_names_are_refused_with_what_they_are(tmp_path):
    path, _ = _mlp_checkpoint(tmp_path, ["a", "b", "c"], {})
    with pytest.raises(utils.UserError) as info:
        models.load_with_spec(
            path, model="mlp_skinny", dataset="fashion_mnist"
        )
    message = str(info.value)
    assert "does not hold a mlp_skinny with 10 classes" in message
    assert "its layers: a, b, c" in message
    assert "width" not in message.split(":")[0]


@pytest.mark.parametrize(
    "meta, named",
    [
        ({"model": "foo"}, "model 'foo'"),
        ({"width": "abc"}, "width 'abc'"),
        ({"width": -3}, "width -3"),
        ({"dataset": "svhn"}, "dataset 'svhn'"),
        ({"n_classes": 0}, "n_classes 0"),
        ({"n_classes": 2.5}, "n_classes 2.5"),
    ],
)
def test_bad_meta_is_a_user_error(meta, named):
    with pytest.raises(utils.UserError) as info:
        models.resolve_spec(meta, source="ckpt.pkl")
    assert "ckpt.pkl" in str(info.value) and named in str(info.value)


def test_spec_from_meta_and_flags():
    meta = {
        "model": "resnet18",
        "width": np.int64(8),
        "dataset": "mnist",
        "n_classes": 10,
    }
    assert models.resolve_spec(meta) == models.ModelSpec(
        "resnet18", 8, "mnist", 10
    )
    assert models.resolve_spec({}) == models.ModelSpec(
        "resnet18", 64, "cifar10", 10
    )
    assert models.resolve_spec({}, dataset="cifar100").n_classes == 100
    # Earlier versions recorded width 64 for MLPs; it means nothing there.
    spec = models.resolve_spec({"model": "mlp_wide", "width": 64})
    assert spec.width is None and spec.as_meta()["width"] is None
    with pytest.raises(utils.UserError, match="contradicts"):
        models.resolve_spec(meta, width=16)
    with pytest.raises(utils.UserError, match="contradicts"):
        models.resolve_spec(meta, model="mlp_skinny")
    with pytest.raises(utils.UserError, match="--width means nothing"):
        models.resolve_spec({}, model="mlp_skinny", width=8)


def test_network_is_a_pytree_of_its_parameters(tiny_resnet):
    model, params, state, images = tiny_resnet
    moved = axpy(0.01, perturbation(params, 4), params)
    network = models.Network(
        model.apply,
        models.Dynamics(linear=True, centering=True),
        params,
        moved,
        state,
    )
    leaves = jax.tree_util.tree_leaves(network)
    assert len(leaves) == len(
        jax.tree_util.tree_leaves((params, moved, state))
    )

    @jax.jit
    def logits(net, x):
        return net.logits(x)[0]

    want, _ = network.dynamics.logits(
        model.apply, params, moved, state, images
    )
    assert_close(logits(network, images), want)  # jit vs eager order
    # Another parameter value, same structure: no new compilation.
    logits(
        models.Network(model.apply, network.dynamics, moved, params, state),
        images,
    )
    assert logits._cache_size() == 1


# models.canonical_conv and canonical_input_gradients: the same numbers as
# jax.lax's convolution and Haiku's Conv2D, with input gradients that XLA's
# CPU compiler keeps in the canonical layout inside loops.

CONV_CASES = [
    # (image (H, W, C), kernel (kh, kw, C, O), strides, padding)
    ((28, 28, 1), (3, 3, 1, 4), (1, 1), ((1, 1), (1, 1))),
    ((28, 28, 3), (3, 3, 3, 5), (2, 2), ((0, 1), (0, 1))),  # SAME, even
    ((7, 7, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),  # SAME, odd
    ((28, 28, 2), (1, 1, 2, 3), (2, 2), ((0, 0), (0, 0))),  # projection
    ((9, 6, 2), (3, 2, 2, 3), (2, 1), ((0, 0), (1, 0))),  # VALID-ish
]


def _conv_operands(image, kernel, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(keys[0], (3, *image))
    w = jax.random.normal(keys[1], kernel)
    x_dot = jax.random.normal(keys[2], x.shape)
    w_dot = jax.random.normal(keys[3], w.shape)
    return x, w, x_dot, w_dot


def _lax_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("image,kernel,strides,padding", CONV_CASES)
def test_canonical_conv_has_lax_convs_values_and_derivatives(
    image, kernel, strides, padding
):
    x, w, x_dot, w_dot = _conv_operands(image, kernel)

    def derivatives(conv):
        f = lambda x, w: conv(x, w, strides, padding)
        out = f(x, w)
        cot = jnp.cos(out)  # a cotangent that is not all ones
        _, pullback = jax.vjp(f, x, w)
        _, tangent = jax.jvp(f, (x, w), (x_dot, w_dot))
        # The images' gradient of a linearization in the weights (PGD
        # through phase 2's network) and the weights' (its training).
        tangent_in_w = lambda x, v: jax.jvp(lambda u: f(x, u), (w,), (v,))[1]
        mixed_x = jax.grad(lambda x: jnp.sum(jnp.sin(tangent_in_w(x, w_dot))))(
            x
        )
        mixed_w = jax.grad(lambda v: jnp.sum(jnp.sin(tangent_in_w(x, v))))(
            w_dot
        )
        return (out, *pullback(cot), tangent, mixed_x, mixed_w)

    got = derivatives(models.canonical_conv)
    want = derivatives(_lax_conv)
    for g, w_ in zip(got, want, strict=True):
        assert g.shape == w_.shape
        assert_close(g, w_)


@pytest.mark.parametrize(
    "size,kernel,stride,pad,want",
    [
        (28, 3, 2, (0, 1), (2, 1)),  # rows 0..27 all seen
        (28, 1, 2, (0, 0), (0, 1)),  # row 27 seen by no window
        (7, 3, 2, (1, 1), (1, 1)),
        (5, 3, 1, (1, 1), (1, 1)),
        (6, 3, 2, (0, 0), (2, 3)),  # windows at rows 0 and 2: row 5 unseen
    ],
)
def test_input_gradient_padding_by_hand(size, kernel, stride, pad, want):
    # Dilated cotangent of (out - 1) * stride + 1 rows, padded by (low,
    # high) and convolved with `kernel` taps, must give `size` rows, the
    # first output row seeing input row -pad[0]'s window start.
    assert models.input_gradient_padding(size, kernel, stride, pad) == want
    out = (size + sum(pad) - kernel) // stride + 1
    low, high = want
    assert (out - 1) * stride + 1 + low + high - kernel + 1 == size


def _with_canonical(fn, on):
    return models.with_canonical_input_gradients(fn) if on else fn


@pytest.mark.medium
def test_canonical_input_gradients_change_no_number_of_the_network(
    tiny_resnet,
):
    model, params, state, images = tiny_resnet
    params2 = axpy(0.01, perturbation(params, 7), params)
    linear = models.Dynamics(linear=True, centering=True)

    def logits(p, x):
        return model.apply(p, state, None, x, False)[0]

    def linearized(p, x):
        return linear.logits(model.apply, params, p, state, x)[0]

    def outputs(on):
        loss = lambda f: lambda x: jnp.sum(jnp.sin(f(x)))
        std = _with_canonical(lambda x: logits(params, x), on)
        lin = _with_canonical(lambda x: linearized(params2, x), on)
        weights = jax.grad(lambda p: jnp.sum(jnp.sin(linearized(p, images))))
        return (
            std(images),
            jax.grad(loss(std))(images),
            lin(images),
            jax.grad(loss(lin))(images),
            weights(params2),
        )

    got_all = jax.jit(lambda: outputs(True))()
    want_all = jax.jit(lambda: outputs(False))()
    for got, want in zip(got_all, want_all, strict=True):
        for g, w_ in zip(
            jax.tree_util.tree_leaves(got),
            jax.tree_util.tree_leaves(want),
            strict=True,
        ):
            assert_close(g, w_)
    # Initialisation is Haiku's own under the context too.
    with models.canonical_input_gradients():
        again, _ = models.init_model(model, 0, IMAGE_SHAPE)
    first, _ = models.init_model(model, 0, IMAGE_SHAPE)
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(
            lambda a, b: bool(jnp.all(a == b)), again, first
        )
    )


def _loop_convolutions(model, params, state, images, on):
    """The dim_labels of every convolution XLA's CPU compiler keeps in a
    two-step loop of input gradients, and whether any is left as a naive
    loop ('parallel_convolution'), with canonical gradients on or off."""
    logits = _with_canonical(
        lambda x: model.apply(params, state, None, x, False)[0], on
    )

    def loop(x):
        step = lambda _, a: a + jax.grad(lambda v: jnp.sum(logits(v)))(a)
        return jax.lax.fori_loop(0, 2, step, x)

    text = jax.jit(loop).lower(images).compile().as_text()
    labels = set(re.findall(r"convolution\(.*?dim_labels=(\S+?)[,\s]", text))
    return labels, "parallel_convolution" in text


@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="a CPU compiler's layouts"
)
def test_attack_loops_keep_convolutions_canonical_on_the_cpu(tiny_resnet):
    model, params, state, images = tiny_resnet
    labels, naive = _loop_convolutions(model, params, state, images, True)
    assert labels == {"b01f_01io->b01f"}, labels
    assert not naive
    # Without them, XLA leaves the input gradients' convolutions as they
    # are in the loop body (the slowness this fixes).
    labels, naive = _loop_convolutions(model, params, state, images, False)
    assert labels != {"b01f_01io->b01f"}


# models.batch_norm_train: hk.BatchNorm's training-mode numbers, with a
# shorter derivative; the ResNet runs through it on the CPU.


def _haiku_batch_norm(x, scale, offset, eps):
    """hk.BatchNorm's training-mode formula, differentiated by JAX."""
    mean = jnp.mean(x, (0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x), (0, 1, 2), keepdims=True) - jnp.square(mean)
    out = (x - mean) * (scale * jax.lax.rsqrt(var + eps)) + offset
    return out, mean, var


def test_batch_norm_train_has_haikus_values_and_derivatives():
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    # Channels with an offset mean and unequal spreads, as after a conv.
    x = 2.0 + jax.random.normal(keys[0], (4, 5, 5, 3)) * jnp.array([1, 3, 0.5])
    scale = 1.0 + 0.1 * jax.random.normal(keys[1], (1, 1, 1, 3))
    offset = 0.1 * jax.random.normal(keys[2], (1, 1, 1, 3))
    tangents = (
        jax.random.normal(keys[3], x.shape),
        jax.random.normal(keys[4], scale.shape),
        jax.random.normal(keys[5], offset.shape),
    )

    def derivatives(bn):
        f = lambda *a: bn(*a, 1e-5)
        primals = (x, scale, offset)
        outs = f(*primals)
        _, pullback = jax.vjp(lambda *a: f(*a)[0], *primals)
        _, tangent = jax.jvp(f, primals, tangents)
        # Reverse over forward mode (phase 2's training in training mode).
        mixed = jax.grad(
            lambda *a: jnp.sum(jnp.sin(jax.jvp(f, a, tangents)[1][0])),
            argnums=(0, 1, 2),
        )(*primals)
        return (*outs, *pullback(jnp.cos(outs[0])), *tangent, *mixed)

    got = derivatives(models.batch_norm_train)
    want = derivatives(_haiku_batch_norm)
    for g, w_ in zip(got, want, strict=True):
        assert g.shape == w_.shape
        assert_close(g, w_)


@pytest.mark.medium
def test_shorter_batch_norm_derivatives_change_no_number_of_the_network(
    tiny_resnet, monkeypatch
):
    """Training-mode logits, new state, parameter gradient and a forward-
    mode tangent of the ResNet with and without batch_norm_train: equal to
    float32 tolerance; names and shapes of parameters and state unchanged;
    eval mode untouched (the same program)."""
    model, params, state, images = tiny_resnet
    direction = perturbation(params, 5)

    def outputs():
        def loss(p):
            logits, new_state = model.apply(p, state, None, images, True)
            return jnp.sum(jnp.sin(logits)), (logits, new_state)

        (_, (logits, new_state)), grads = jax.value_and_grad(
            loss, has_aux=True
        )(params)
        _, tangent = jax.jvp(
            lambda p: model.apply(p, state, None, images, True)[0],
            (params,),
            (direction,),
        )
        return logits, new_state, grads, tangent

    def eval_text():
        return (
            jax.jit(lambda p: model.apply(p, state, None, images, False)[0])
            .lower(params)
            .as_text()
        )

    monkeypatch.setattr(models, "shorter_batch_norm_derivatives", lambda: True)
    got_all, got_eval = jax.jit(outputs)(), eval_text()
    monkeypatch.setattr(
        models, "shorter_batch_norm_derivatives", lambda: False
    )
    want_all, want_eval = jax.jit(outputs)(), eval_text()
    assert got_eval == want_eval
    for got, want in zip(got_all, want_all, strict=True):
        assert jax.tree_util.tree_structure(got) == (
            jax.tree_util.tree_structure(want)
        )
        for g, w_ in zip(
            jax.tree_util.tree_leaves(got),
            jax.tree_util.tree_leaves(want),
            strict=True,
        ):
            assert g.shape == w_.shape
            assert_close(g, w_)
