"""Tests of features.py: features against an explicit Jacobian, the jittered
solve and the alignment loop (kernel files: test_kernel_files.py; the PNG
grid: test_visualize.py)."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import features
from kernel_files import KernelFile
from utils import UserError

IMAGE_SHAPE = (6, 6, 2)
N_IMAGES = 10
N_CLASSES = 3
CLASS_INDEX = 1


def _small_cnn(images, is_training):
    """Conv, batch norm, ReLU, linear: small, but with batch-norm state."""
    x = hk.Conv2D(4, kernel_shape=3)(images)
    x = hk.BatchNorm(True, True, decay_rate=0.9)(x, is_training)
    return hk.Linear(N_CLASSES)(hk.Flatten()(jax.nn.relu(x)))


@pytest.fixture(scope="module")
def problem():
    """A small network, its images, and the kernel K = J Jᵀ of one logit.

    The batch-norm statistics are those of one training pass, so that eval
    mode differs from training mode.
    """
    model = hk.transform_with_state(_small_cnn)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(N_IMAGES, *IMAGE_SHAPE)).astype(np.float32)
    labels = np.arange(N_IMAGES) % N_CLASSES
    params, state = model.init(jax.random.PRNGKey(0), images, True)
    _, state = model.apply(params, state, None, images, True)
    flat, logit_fn = features.class_logit_fn(
        model.apply, params, state, CLASS_INDEX
    )
    jacobian = np.asarray(
        jax.jacrev(lambda p: logit_fn(p, images))(flat), np.float64
    )
    kernel = KernelFile(
        kernel=jacobian @ jacobian.T,
        labels=labels,
        indices=np.arange(N_IMAGES),
        class_index=CLASS_INDEX,
        use_linear_params=None,
        epoch=None,
        random_seed=0,
        indices_recomputed=False,
        path="kernel.pkl",
    )
    return dict(
        logit_fn=logit_fn,
        flat=flat,
        images=images,
        jacobian=jacobian,
        kernel=kernel,
    )


def assert_close_vectors(actual, expected, rtol=1e-5):
    """Entry-wise agreement to rtol of the largest entry (float32 sums)."""
    actual = np.asarray(actual, np.float64)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(actual, expected, atol=rtol * scale, rtol=0)


def test_eigenvector_features_equal_jacobian_transpose(problem):
    _, vectors = features.sorted_eigh(problem["kernel"].kernel)
    coefficients = vectors[:, :3]
    # Batches of 4 over 10 images: the last batch is padded.
    got = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        coefficients,
        batch_size=4,
    )
    assert got.shape == (3, problem["flat"].size)
    assert_close_vectors(got, coefficients.T @ problem["jacobian"])


def test_w_feature_equals_jacobian_transpose_of_kernel_solve(problem):
    kernel = problem["kernel"]
    targets = features.one_vs_rest_targets(kernel.labels, CLASS_INDEX)
    w, jitter = features.solve_with_jitter(kernel.kernel, targets)
    residual = kernel.kernel @ w + jitter * w - targets
    assert np.max(np.abs(residual)) < 1e-8
    got = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        w[:, None],
        batch_size=N_IMAGES,
    )
    assert_close_vectors(got[0], problem["jacobian"].T @ w)


def test_one_vs_rest_targets():
    np.testing.assert_array_equal(
        features.one_vs_rest_targets(np.array([0, 2, 2, 1]), 2),
        [0.0, 1.0, 1.0, 0.0],
    )


def test_sorted_eigh_orders_and_signs():
    rng = np.random.default_rng(1)
    factor = rng.normal(size=(7, 5))
    kernel = factor @ factor.T
    values, vectors = features.sorted_eigh(kernel)
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(
        vectors @ np.diag(values) @ vectors.T, kernel, atol=1e-10
    )
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(7), atol=1e-10)
    peaks = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(7)]
    assert np.all(peaks > 0)


def test_jitter_grows_until_cholesky_succeeds():
    # Rank one with a slightly negative rest: needs jitter above 1e-4.
    vector = np.ones(5) / np.sqrt(5)
    kernel = 5 * np.outer(vector, vector) - 1e-4 * np.eye(5)
    w, jitter = features.solve_with_jitter(kernel, np.ones(5))
    assert jitter > 1e-4
    scale = np.mean(np.diag(kernel))
    tries = np.log10(jitter / (features.INITIAL_JITTER * scale))
    assert tries == pytest.approx(round(tries)) and round(tries) >= 1
    np.testing.assert_allclose((kernel + jitter * np.eye(5)) @ w, np.ones(5))


def test_well_conditioned_kernel_gets_the_initial_jitter():
    _, jitter = features.solve_with_jitter(2 * np.eye(4), np.ones(4))
    assert jitter == pytest.approx(2 * features.INITIAL_JITTER)


@pytest.mark.parametrize(
    "kernel", [-np.eye(3), np.zeros((3, 3)), np.diag([1.0, 1.0, -1.0])]
)
def test_non_kernels_are_refused(kernel):
    with pytest.raises(UserError, match="recompute"):
        features.solve_with_jitter(kernel, np.ones(3))


def test_alignment_raises_and_lowers_the_cosine(problem):
    _, vectors = features.sorted_eigh(problem["kernel"].kernel)
    feature = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        vectors[:, 1:2],
        10,
    )
    grey = np.full(IMAGE_SHAPE, features.GREY, np.float32)
    images, cosines = features.align_images(
        problem["logit_fn"],
        problem["flat"],
        jnp.concatenate([feature] * 2),
        np.array([1.0, -1.0]),
        grey,
        steps=40,
        step_size=0.005,
    )
    assert images.shape == (2, *IMAGE_SHAPE) and cosines.shape == (41, 2)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert not np.allclose(images, grey)
    start = features.gradient_cosine(
        problem["logit_fn"],
        problem["flat"],
        jnp.asarray(grey),
        feature[0] / jnp.linalg.norm(feature[0]),
    )
    np.testing.assert_allclose(cosines[0], [start, start], atol=1e-5)
    up, down = cosines[:, 0], cosines[:, 1]
    assert up[-1] > up[0] + 0.05
    assert np.mean(up[-10:]) > np.mean(up[:10])
    assert down[-1] < down[0] - 0.05
    assert np.mean(down[-10:]) < np.mean(down[:10])


def test_images_are_clipped_to_the_pixel_box(problem):
    feature = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        np.ones((N_IMAGES, 1)),
        10,
    )
    grey = np.full(IMAGE_SHAPE, features.GREY, np.float32)
    images, _ = features.align_images(
        problem["logit_fn"],
        problem["flat"],
        feature,
        np.array([1.0]),
        grey,
        steps=8,
        step_size=0.2,
    )
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.any(images == 0.0) or np.any(images == 1.0)


def test_feature_images_and_record(problem):
    result = features.feature_images(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        problem["kernel"],
        n_images=2,
        steps=5,
        step_size=0.01,
        batch_size=4,
    )
    assert result.pos_images.shape == (2, *IMAGE_SHAPE)
    assert result.w_image.shape == IMAGE_SHAPE
    assert result.pos_cosines.shape == (2, 6)
    assert result.w_cosines.shape == (6,)
    assert result.eigenvalues.shape == (N_IMAGES,)
    # Same start, same feature: the first cosines agree.
    np.testing.assert_allclose(
        result.pos_cosines[:, 0], result.neg_cosines[:, 0]
    )
    np.testing.assert_allclose(
        result.feature_sq_norms[:2], result.eigenvalues[:2], rtol=1e-4
    )
    record = result.as_record(class_index=CLASS_INDEX)
    channels, height, width = IMAGE_SHAPE[2], *IMAGE_SHAPE[:2]
    assert record["pos_images"].shape == (2, channels, height, width)
    assert record["neg_images"].shape == (2, channels, height, width)
    assert record["w_image"].shape == (channels, height, width)
    assert record["pos_images"].dtype == np.float32
    np.testing.assert_array_equal(
        record["w_image"], np.transpose(result.w_image, (2, 0, 1))
    )
    assert record["image_layout"] == "NCHW"
    assert record["class_index"] == CLASS_INDEX


def test_kernel_of_other_parameters_is_refused(problem):
    scaled = dataclasses.replace(
        problem["kernel"], kernel=4 * problem["kernel"].kernel
    )
    with pytest.raises(UserError, match="not the kernel of this network"):
        features.feature_images(
            problem["logit_fn"],
            problem["flat"],
            problem["images"],
            scaled,
            1,
            1,
            0.01,
            10,
        )
