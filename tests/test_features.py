"""Tests of features.py: features against an explicit Jacobian, the jittered
solve, the alignment loop, kernel-file checks and the PNG grid."""

import io

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import features
from utils import UserError, atomic_pickle

IMAGE_SHAPE = (6, 6, 2)
N_IMAGES = 10
N_CLASSES = 3
CLASS_INDEX = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    kernel = features.ClassKernel(
        kernel=jacobian @ jacobian.T,
        labels=labels,
        indices=np.arange(N_IMAGES),
        class_index=CLASS_INDEX,
        use_linear_params=None,
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
    kernel = problem["kernel"]
    scaled = features.ClassKernel(
        4 * kernel.kernel,
        kernel.labels,
        kernel.indices,
        CLASS_INDEX,
        None,
        kernel.path,
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


# --------------------------------------------------------------------------
# Kernel files
# --------------------------------------------------------------------------


def kernel_record(size=4, class_index=2, **changes):
    """A valid kernel file's content, with `changes` applied."""
    factor = np.random.default_rng(2).normal(size=(size, size))
    record = {
        "kernel": (factor @ factor.T).astype(np.float32),
        "labels": np.array([0, 1, 2, 2][:size] * (size // 4 or 1)),
        "indices": np.arange(10, 10 + size, dtype=np.int64),
        "class_index": class_index,
        "use_linear_params": True,
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


def write(tmp_path, record, name="kernel.pkl"):
    path = str(tmp_path / name)
    atomic_pickle(path, record)
    return path


def test_kernel_file_loads(tmp_path):
    loaded = features.load_class_kernel(write(tmp_path, kernel_record()), 2, 4)
    assert loaded.size == 4 and loaded.class_index == 2
    assert loaded.use_linear_params is True
    assert loaded.kernel.dtype == np.float64
    np.testing.assert_array_equal(loaded.indices, [10, 11, 12, 13])


def test_kernel_file_without_params_record(tmp_path):
    path = write(tmp_path, kernel_record(use_linear_params=None))
    assert features.load_class_kernel(path, 2, 4).use_linear_params is None


@pytest.mark.parametrize(
    "changes,size,message",
    [
        (dict(class_index=-1), 4, "summed over all logits"),
        (dict(class_index=0), 4, "kernel of class 0"),
        ({}, 5, "kernel of 4 images"),
        (dict(kernel=np.ones((4, 3))), 4, "not a square"),
        (dict(kernel=np.full((4, 4), np.nan)), 4, "NaN"),
        (dict(indices=np.arange(3)), 4, "'indices'"),
        (dict(indices=np.linspace(0, 1, 4)), 4, "'indices'"),
        (dict(labels=np.zeros(5, int)), 4, "'labels'"),
        (dict(class_index=1.5), 4, "'class_index' is not an integer"),
        (dict(indices=None), 4, "lacks key"),
        (dict(use_linear_params=np.ones(2)), 4, "not a yes/no"),
    ],
)
def test_bad_kernel_files_are_refused(tmp_path, changes, size, message):
    path = write(tmp_path, kernel_record(**changes))
    with pytest.raises(UserError, match=message):
        features.load_class_kernel(path, 2, size)


def test_missing_and_corrupt_kernel_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        features.load_class_kernel(str(tmp_path / "absent.pkl"), 2, 4)
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(UserError, match="cannot load"):
        features.load_class_kernel(str(corrupt), 2, 4)


def test_kernel_images_must_fit_the_dataset(tmp_path):
    kernel = features.load_class_kernel(write(tmp_path, kernel_record()), 2, 4)
    train_labels = np.zeros(20, np.int32)
    train_labels[10:14] = [0, 1, 2, 2]
    features.check_kernel_images(kernel, train_labels, "toy")
    with pytest.raises(UserError, match="has 12, numbered"):
        features.check_kernel_images(kernel, train_labels[:12], "toy")
    train_labels[12] = 1
    with pytest.raises(UserError, match="labels"):
        features.check_kernel_images(kernel, train_labels, "toy")


@pytest.mark.parametrize(
    "flag,recorded,expected",
    [
        (None, None, False),
        (True, None, True),
        (None, True, True),
        (False, False, False),
        (True, True, True),
    ],
)
def test_use_linear_params_resolution(flag, recorded, expected):
    kernel = features.ClassKernel(
        np.eye(1), np.zeros(1), np.zeros(1), 0, recorded, "k.pkl"
    )
    assert features.resolve_use_linear_params(flag, kernel) is expected


def test_use_linear_params_contradicting_the_kernel_is_refused():
    kernel = features.ClassKernel(
        np.eye(1), np.zeros(1), np.zeros(1), 0, False, "k.pkl"
    )
    with pytest.raises(UserError, match="computed at params"):
        features.resolve_use_linear_params(True, kernel)


def test_kernel_file_names():
    assert features.kernel_file_name("k", 3, 500) == "k_class_3_500.pkl"
    assert features.kernel_file_name("k", -1, 500) == "k_500.pkl"


# --------------------------------------------------------------------------
# Picture
# --------------------------------------------------------------------------


def fake_result(n, shape, steps=3):
    rng = np.random.default_rng(3)
    images = lambda *lead: rng.uniform(size=(*lead, *shape)).astype(np.float32)
    cosines = lambda *lead: rng.uniform(-1, 1, (*lead, steps + 1))
    return features.FeatureImages(
        pos_images=images(n),
        neg_images=images(n),
        w_image=images(),
        pos_cosines=cosines(n),
        neg_cosines=cosines(n),
        w_cosines=cosines(),
        eigenvalues=np.linspace(5, 1, 8),
        eigenvectors=np.zeros((8, n)),
        w=np.zeros(8),
        jitter=1e-6,
        feature_sq_norms=np.zeros(n + 1),
    )


@pytest.mark.parametrize("n,shape", [(1, (5, 5, 1)), (3, (4, 4, 3))])
def test_grid_is_a_readable_png(n, shape):
    import matplotlib.image

    png = features.grid_png(fake_result(n, shape), title="class 0")
    assert png.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
