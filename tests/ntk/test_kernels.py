"""kernels: every implementation against J Jᵀ from jax.jacrev, the combined
kernel against the original's (neural-tangents' traced kernel); planner:
block plans and their cost model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from helpers import kernel_implementations, needs_neural_tangents
from kernel_reference import network, reference_kernels, relative_error
from ntk import jacobians, kernels, nt_compat, planner
from ntk.kernel_files import ALL_CLASSES, COMBINED
from utils import UserError

N_IMAGES = 7  # blocks of 3: two full, one padded with two zero images
BLOCK = 3
N_CLASSES = 3
PER_PASS = 2  # three classes in passes (0, 1), (2, 2): the last padded


@functools.cache
def resnet():
    return network("resnet18", N_CLASSES, (16, 16, 3), N_IMAGES)


@functools.cache
def mlp():
    return network("mlp_skinny", N_CLASSES, (6, 6, 1), N_IMAGES)


def expected(reference, class_index):
    """The kernel asked for, from the (K, N, N) reference J_c J_cᵀ: the
    combined kernel is their mean, Σ_c K_c / K, as the original's."""
    if class_index == ALL_CLASSES:
        return reference
    if class_index == COMBINED:
        return reference.sum(axis=0) / len(reference)
    return reference[class_index]


@functools.cache
def schedule(net, implementation):
    """One block schedule (and its compiled functions) per network and
    implementation, shared by the tests."""
    apply_fn = {"resnet": resnet, "mlp": mlp}[net]()[0]
    return kernels.block_schedule(apply_fn, implementation)


def compute(net, implementation, class_index, use_lin_params=False):
    apply_fn, params, lin_params, state, images = {
        "resnet": resnet,
        "mlp": mlp,
    }[net]()
    return kernel_fn(
        apply_fn,
        lin_params if use_lin_params else params,
        state,
        net,
        implementation,
        class_index,
    )(images)


def kernel_fn(apply_fn, params, state, net, implementation, class_index):
    """kernels.ntk_fn in blocks of BLOCK images, PER_PASS logits per pass,
    with the shared schedule."""
    return kernels.ntk_fn(
        kernels.Network(apply_fn, params, state),
        implementation,
        kernels.KernelOptions(
            class_index, block_size=BLOCK, classes_per_pass=PER_PASS
        ),
        schedule=schedule(net, implementation),
    )


@pytest.fixture(scope="module")
def references():
    out = {}
    for name, net in (("resnet", resnet), ("mlp", mlp)):
        apply_fn, params, lin_params, state, images = net()
        out[name], out[name, "lin"] = reference_kernels(
            apply_fn, [params, lin_params], state, images
        )
    return out


def last_layer_kernels(apply_fn, params, state, images, layer):
    """(K, N, N) reference kernels of the parameters of `layer` alone."""
    return reference_kernels(
        lambda p, *args: apply_fn({**params, layer: p}, *args),
        [params[layer]],
        state,
        images,
    )[0]


def test_networks_are_not_trivial(references):
    """Not the last layer's kernel alone; lin_params and the running
    statistics matter."""
    apply_fn, params, _, state, images = resnet()
    last = last_layer_kernels(
        apply_fn, params, state, images, "res_net18/~/logits"
    )
    assert relative_error(last, references["resnet"]) > 0.05
    assert (
        relative_error(references["resnet", "lin"], references["resnet"])
        > 1e-3
    )
    means = [
        np.asarray(ema["average"])
        for name, ema in state.items()
        if name.endswith("mean_ema")
    ]
    assert means and all(np.abs(m).max() > 0 for m in means)


@pytest.mark.slow
@pytest.mark.parametrize(
    "implementation", kernel_implementations(kernels.IMPLEMENTATIONS)
)
@pytest.mark.parametrize("class_index", [1, COMBINED, ALL_CLASSES])
def test_resnet_matches_reference(references, implementation, class_index):
    got = compute("resnet", implementation, class_index)
    want = expected(references["resnet"], class_index)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize(
    "implementation", kernel_implementations(kernels.IMPLEMENTATIONS)
)
def test_mlp_matches_reference(references, implementation):
    got = compute("mlp", implementation, ALL_CLASSES)
    assert relative_error(got, references["mlp"]) < 1e-5


@needs_neural_tangents
def test_combined_kernel_is_the_originals_traced_kernel():
    """The original's --class_index -1: neural-tangents' empirical kernel
    with its default trace_axes=(-1,), no factor between the two."""
    apply_fn, params, _, state, images = mlp()

    def f(p, x):
        return apply_fn(p, state, None, x, False)[0]

    original = nt_compat.load().empirical_kernel_fn(f, vmap_axes=0)(
        images, images, "ntk", params
    )
    got = compute("mlp", "rows", COMBINED)
    assert relative_error(got, np.asarray(original, np.float64)) < 1e-5


@pytest.mark.parametrize(
    "implementation", kernel_implementations(["rows", "structured"])
)
def test_kernel_at_lin_params(references, implementation):
    got = compute("resnet", implementation, ALL_CLASSES, use_lin_params=True)
    assert relative_error(got, references["resnet", "lin"]) < 1e-5


# Cross kernels: training images 0..3 (two blocks of 3, the last padded),
# test images 2..6 (two blocks, the last padded); the reference is the
# (test, train) part of the kernel of all seven.
CROSS_TRAIN = slice(0, 4)
CROSS_TEST = slice(2, 7)


@pytest.mark.parametrize(
    "net, implementation, class_index",
    [
        ("mlp", "rows", ALL_CLASSES),
        pytest.param(
            "mlp", "structured", COMBINED, marks=needs_neural_tangents
        ),
        ("resnet", "rows", COMBINED),
        ("resnet", "rows", 1),
        pytest.param(
            "resnet", "jacobian", ALL_CLASSES, marks=needs_neural_tangents
        ),
    ],
)
def test_cross_kernel_matches_reference(
    references, net, implementation, class_index
):
    apply_fn, params, _, state, images = {"resnet": resnet, "mlp": mlp}[net]()
    got = kernel_fn(apply_fn, params, state, net, implementation, class_index)(
        images[CROSS_TEST], images[CROSS_TRAIN]
    )
    want = expected(references[net], class_index)[..., CROSS_TEST, CROSS_TRAIN]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert relative_error(got, want) < 1e-5


def test_cross_kernel_of_the_training_images_is_the_kernel():
    """K(X, X) from the rectangle schedule equals the square kernel."""
    apply_fn, params, _, state, images = resnet()
    square = compute("resnet", "rows", ALL_CLASSES)
    cross = kernel_fn(apply_fn, params, state, "resnet", "rows", ALL_CLASSES)(
        images, images
    )
    assert relative_error(cross, square) < 1e-6


def test_plan_is_logged_by_square_kernels_only():
    """ntk_fn's `log` gets planner.describe_plan's line for each square
    kernel; the cross kernel (two arguments) logs nothing."""
    apply_fn, params, _, state, images = mlp()
    lines = []
    kernel = kernels.ntk_fn(
        kernels.Network(apply_fn, params, state),
        "rows",
        kernels.KernelOptions(0, block_size=BLOCK),
        schedule=schedule("mlp", "rows"),
        log=lines.append,
    )
    assert kernel(images[:4], images).shape == (4, N_IMAGES)
    assert lines == []
    assert kernel(images).shape == (N_IMAGES, N_IMAGES)
    assert len(lines) == 1
    assert lines[0].startswith("kernel (rows): 7 images in 3 block(s) of 3")


@pytest.mark.parametrize("class_index", [2, COMBINED])
def test_symmetric_and_positive_semidefinite(class_index):
    kernel = compute("resnet", "rows", class_index)
    np.testing.assert_array_equal(kernel, kernel.T)
    eigenvalues = np.linalg.eigvalsh(kernel.astype(np.float64))
    assert eigenvalues.min() >= -1e-5 * eigenvalues.max()


def test_one_trace_serves_every_block():
    """Tracing (hence compiling) does not grow with the number of blocks."""
    apply_fn, params, _, state, images = resnet()
    traces = []

    def counting_apply(*args):
        traces.append(1)
        return apply_fn(*args)

    schedule_ = kernels.block_schedule(counting_apply, "rows")
    run = kernels.ntk_fn(
        kernels.Network(counting_apply, params, state),
        "rows",
        kernels.KernelOptions(class_index=0, block_size=2),
        schedule=schedule_,
    )
    run(images[:2])  # one block
    after_one_block = len(traces)
    run(images)  # four blocks, ten of them computed
    # The second run only evaluates the logit count's shape once more.
    assert len(traces) == after_one_block + 1


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


def test_class_index_choices():
    assert kernels.kernel_classes(2, 3) == (2,)
    assert kernels.kernel_classes(COMBINED, 3) == (0, 1, 2)
    assert kernels.kernel_classes(ALL_CLASSES, 3) == (0, 1, 2)
    for bad in (3, -2, "3"):
        with pytest.raises(UserError, match="class_index"):
            kernels.kernel_classes(bad, 3)


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


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation"):
        kernels.block_schedule(lambda *a: None, "auto")


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
