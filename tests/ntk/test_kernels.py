"""kernels: every implementation against J Jᵀ from jax.jacrev, the combined
kernel against the original's (neural-tangents' traced kernel)."""

import functools

import numpy as np
import pytest

from helpers import kernel_implementations, needs_neural_tangents
from kernel_reference import (
    N_IMAGES,
    mlp,
    reference_kernels,
    relative_error,
    resnet,
)
from ntk import kernels, nt_compat
from ntk.kernel_files import ALL_CLASSES, COMBINED
from utils import UserError

BLOCK = 3  # blocks of 3 of N_IMAGES: two full, one padded with two zeros
PER_PASS = 2  # three classes in passes (0, 1), (2, 2): the last padded


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


@pytest.mark.medium
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


def test_class_index_choices():
    assert kernels.kernel_classes(2, 3) == (2,)
    assert kernels.kernel_classes(COMBINED, 3) == (0, 1, 2)
    assert kernels.kernel_classes(ALL_CLASSES, 3) == (0, 1, 2)
    for bad in (3, -2, "3"):
        with pytest.raises(UserError, match="class_index"):
            kernels.kernel_classes(bad, 3)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="implementation"):
        kernels.block_schedule(lambda *a: None, "auto")
