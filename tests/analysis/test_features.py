"""Tests of features.py: features against an explicit Jacobian, the jittered
solve and the alignment loop (kernel files: test_kernel_files.py; the PNG
grid: test_visualize.py)."""

import dataclasses
import functools

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data
import models
from analysis import features
from ntk.kernel_files import KernelFile
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


def kernel_file(jacobian, labels, indices, class_index) -> KernelFile:
    """The checked kernel file of K = J Jᵀ, J (N, P) float64."""
    return KernelFile(
        kernel=jacobian @ jacobian.T,
        labels=labels,
        indices=indices,
        class_index=class_index,
        use_linear_params=None,
        epoch=None,
        random_seed=0,
        indices_recomputed=False,
        path="kernel.pkl",
    )


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
    kernel = kernel_file(jacobian, labels, np.arange(N_IMAGES), CLASS_INDEX)
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


def test_sorted_eigh_is_the_svd_up_to_sign():
    """The original takes U from np.linalg.svd of K: for a PSD kernel with
    distinct eigenvalues the same columns, each up to its sign."""
    rng = np.random.default_rng(2)
    factor = rng.normal(size=(6, 9))
    kernel = factor @ factor.T
    values, vectors = features.sorted_eigh(kernel)
    u, singular, _ = np.linalg.svd(kernel)
    np.testing.assert_allclose(values, singular, rtol=1e-10)
    overlaps = np.abs(np.sum(u * vectors, axis=0))
    np.testing.assert_allclose(overlaps, np.ones(6), rtol=1e-8)


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("grey", "grey", None),
        ("mean", "mean", None),
        ("constant:0.25", "constant", 0.25),
        ("constant:0", "constant", 0.0),
        ("constant:1", "constant", 1.0),
    ],
)
def test_start_parses_and_prints_back(text, kind, value):
    start = features.parse_start(text)
    assert (start.kind, start.value) == (kind, value)
    assert features.parse_start(str(start)) == start


@pytest.mark.parametrize(
    "text",
    [
        "gray",
        "Grey",
        "",
        "constant",
        "constant:",
        "constant:x",
        "constant:1.5",
        "constant:-0.1",
        "constant:nan",
        "mean:0.3",
    ],
)
def test_bad_start_is_refused(text):
    with pytest.raises(UserError, match="grey, mean or constant:V"):
        features.parse_start(text)


def test_start_images():
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(5, *IMAGE_SHAPE)).astype(np.float32)
    grey = features.Start().image(images)
    assert grey.shape == IMAGE_SHAPE and grey.dtype == np.float32
    np.testing.assert_array_equal(grey, np.full(IMAGE_SHAPE, 0.5))
    mean = features.parse_start("mean").image(images)
    np.testing.assert_allclose(mean, images.sum(0) / 5, rtol=1e-6)
    constant = features.parse_start("constant:0.2").image(images)
    np.testing.assert_array_equal(
        constant, np.full(IMAGE_SHAPE, 0.2, np.float32)
    )


THRESHOLD = 0.6


def _thresholded_linear(images, is_training):
    """Logits linear in relu(x - THRESHOLD): a pixel below the threshold
    cannot change the parameter gradient, so its cosine gradient is 0."""
    del is_training
    shifted = jax.nn.relu(images - THRESHOLD)
    return hk.Linear(N_CLASSES)(hk.Flatten()(shifted))


@pytest.fixture(scope="module")
def thresholded():
    model = hk.transform_with_state(_thresholded_linear)
    params, state = model.init(
        jax.random.PRNGKey(5), jnp.zeros((1, *IMAGE_SHAPE)), False
    )
    flat, logit_fn = features.class_logit_fn(
        model.apply, params, state, CLASS_INDEX
    )
    units = jax.random.normal(jax.random.PRNGKey(6), (3, flat.size))
    return logit_fn, flat, units


@pytest.mark.parametrize("dead_pixels", [0, 9, 27, 36])
def test_zero_gradient_fractions_count_the_pixels_below_the_threshold(
    thresholded, dead_pixels
):
    logit_fn, flat, units = thresholded
    height, width, channels = IMAGE_SHAPE
    # The first `dead_pixels` pixels below the threshold in every channel;
    # one more pixel below it in channel 0 only, which still moves.
    values = np.full(height * width, 0.9, np.float32)
    values[:dead_pixels] = 0.1
    image = np.repeat(values.reshape(height, width, 1), channels, axis=2)
    if dead_pixels < height * width:
        image[-1, -1, 0] = 0.1
    fractions = features.zero_gradient_fractions(logit_fn, flat, units, image)
    np.testing.assert_allclose(
        fractions, np.full(3, dead_pixels / (height * width))
    )


def test_dead_start_message():
    mostly_dead = {
        "pos": np.array([0.9, 0.7]),
        "neg": np.array([0.9, 0.7]),
        "w": 0.2,
    }
    message = features.dead_start_message(mostly_dead, features.Start())
    assert "pos 80%" in message and "w 20%" in message
    assert "--start mean" in message and "grey" in message
    mean_message = features.dead_start_message(
        mostly_dead, features.parse_start("mean")
    )
    assert "--start constant:V" in mean_message
    half = {"pos": np.array([0.5]), "neg": np.array([0.5]), "w": 0.5}
    assert features.dead_start_message(half, features.Start()) is None
    w_dead = {"pos": np.array([0.0]), "neg": np.array([0.0]), "w": 0.51}
    assert "w 51%" in features.dead_start_message(w_dead, features.Start())


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
    aligned = features.align_images(
        problem["logit_fn"],
        problem["flat"],
        jnp.concatenate([feature] * 2),
        np.array([1.0, -1.0]),
        grey,
        steps=40,
        step_size=0.005,
    )
    images, cosines = aligned.images, aligned.cosines
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


def test_best_images_are_those_of_the_best_step(problem):
    """best_steps is the first step of the highest signed cosine; a run of
    that many steps ends at the best image, whose cosine is the one kept."""
    _, vectors = features.sorted_eigh(problem["kernel"].kernel)
    feature = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        vectors[:, :2],
        10,
    )
    directions = jnp.concatenate([feature, feature])
    signs = np.array([1.0, 1.0, -1.0, -1.0])
    start = np.asarray(problem["images"].mean(0))
    # Big steps overshoot, so the best cosine comes before the last step.
    run = functools.partial(
        features.align_images,
        problem["logit_fn"],
        problem["flat"],
        directions,
        signs,
        start,
        step_size=0.08,
    )
    aligned = run(steps=12)
    signed = signs * aligned.cosines.astype(np.float64)
    np.testing.assert_array_equal(aligned.best_steps, np.argmax(signed, 0))
    assert np.any(aligned.best_steps < 12)
    for m, step in enumerate(aligned.best_steps):
        replay = run(steps=int(step))
        np.testing.assert_allclose(
            aligned.best_images[m], replay.images[m], atol=1e-6
        )
        cosine = features.gradient_cosine(
            problem["logit_fn"],
            problem["flat"],
            jnp.asarray(aligned.best_images[m]),
            directions[m] / jnp.linalg.norm(directions[m]),
        )
        assert aligned.best_cosines[m] == pytest.approx(
            float(cosine), abs=1e-5
        )
    assert np.all(signs * aligned.best_cosines >= signs * aligned.cosines[-1])


def test_no_steps_keeps_the_start(problem):
    start = np.full(IMAGE_SHAPE, 0.3, np.float32)
    aligned = features.align_images(
        problem["logit_fn"],
        problem["flat"],
        jnp.ones((1, problem["flat"].size)),
        np.array([1.0]),
        start,
        steps=0,
        step_size=0.1,
    )
    np.testing.assert_array_equal(aligned.best_images[0], start)
    np.testing.assert_array_equal(aligned.images[0], start)
    assert aligned.best_steps.tolist() == [0] and aligned.cosines.shape == (
        1,
        1,
    )


def test_images_are_clipped_to_the_pixel_box(problem):
    feature = features.feature_vectors(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        np.ones((N_IMAGES, 1)),
        10,
    )
    grey = np.full(IMAGE_SHAPE, features.GREY, np.float32)
    images = features.align_images(
        problem["logit_fn"],
        problem["flat"],
        feature,
        np.array([1.0]),
        grey,
        steps=8,
        step_size=0.2,
    ).images
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert np.any(images == 0.0) or np.any(images == 1.0)


@pytest.mark.parametrize("start", ["grey", "mean", "constant:0.8"])
def test_feature_images_and_record(problem, start):
    warnings = []
    result = features.feature_images(
        problem["logit_fn"],
        problem["flat"],
        problem["images"],
        problem["kernel"],
        features.Settings(
            n_images=2,
            steps=5,
            step_size=0.01,
            batch_size=4,
            start=features.parse_start(start),
        ),
        warn=warnings.append,
    )
    assert result.pos_images.shape == (2, *IMAGE_SHAPE)
    assert result.best_neg_images.shape == (2, *IMAGE_SHAPE)
    assert result.w_image.shape == IMAGE_SHAPE
    assert result.best_w_image.shape == IMAGE_SHAPE
    assert result.pos_cosines.shape == (2, 6)
    assert result.w_cosines.shape == (6,)
    assert result.eigenvalues.shape == (N_IMAGES,)
    assert result.start == start
    np.testing.assert_array_equal(
        result.start_image,
        features.parse_start(start).image(problem["images"]),
    )
    # Every pixel of this CNN moves: its first layer has a bias.
    assert warnings == []
    np.testing.assert_array_equal(result.zero_gradient_fractions["pos"], 0)
    # Same start, same feature: the first cosines agree.
    np.testing.assert_allclose(
        result.pos_cosines[:, 0], result.neg_cosines[:, 0]
    )
    for kind, sign in (("pos", 1), ("neg", -1)):
        cosines = getattr(result, f"{kind}_cosines")
        steps = getattr(result, f"best_{kind}_steps")
        np.testing.assert_array_equal(steps, np.argmax(sign * cosines, 1))
        np.testing.assert_array_equal(
            getattr(result, f"best_{kind}_cosines"),
            cosines[np.arange(2), steps],
        )
    assert result.best_w_cosine == np.max(result.w_cosines)
    np.testing.assert_allclose(
        result.feature_sq_norms[:2], result.eigenvalues[:2], rtol=1e-4
    )

    record = result.as_record(class_index=CLASS_INDEX)
    for key in (
        "pos_images",
        "neg_images",
        "best_pos_images",
        "best_neg_images",
    ):
        assert record[key].shape == (2, *IMAGE_SHAPE)
        assert record[key].dtype == np.float64
    for key in ("w_image", "best_w_image", "start_image"):
        assert record[key].shape == IMAGE_SHAPE
        assert record[key].dtype == np.float64
    np.testing.assert_array_equal(record["w_image"], result.w_image)
    np.testing.assert_array_equal(
        record["best_pos_images"], result.best_pos_images
    )
    assert record["image_layout"] == "NHWC"
    assert record["start"] == start
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
            features.Settings(1, 1, 0.01, 10),
        )


# --------------------------------------------------------------------------
# A ResNet whose grey start is dead
# --------------------------------------------------------------------------

RESNET_WIDTH = 4
RESNET_IMAGES = 10  # one of each Fashion-MNIST class
RESNET_CLASS = 1
BN_EPS = 1e-5  # models.CifarResNet18's batch norm


@pytest.fixture(scope="module")
def resnet(fashion_data):
    """resnet18 of width 4 at its seed-0 initialisation, batch-norm
    statistics of 256 Fashion-MNIST training images, random last-layer
    weights (Haiku starts them at zero), and its kernel of logit 1 on one
    image of each class."""
    images, labels = data.load_split("fashion_mnist", str(fashion_data))
    model = models.get_model("resnet18", 10, RESNET_WIDTH)
    params, state = models.init_model(model, 0, images.shape[1:])
    # One training-mode pass: the zero-debiased averages become the batch's
    # mean and variance.
    apply = jax.jit(model.apply, static_argnums=4)
    _, state = apply(params, state, None, images[:256], True)
    logits = params["res_net18/~/logits"]
    weights = jax.random.normal(jax.random.PRNGKey(1), logits["w"].shape)
    params["res_net18/~/logits"] = dict(
        logits, w=weights / np.sqrt(logits["w"].shape[0])
    )
    flat, logit_fn = features.class_logit_fn(
        model.apply, params, state, RESNET_CLASS
    )
    indices = data.balanced_subset_indices(labels, RESNET_IMAGES, seed=0)
    jacobian = np.asarray(
        jax.jit(jax.jacrev(lambda p: logit_fn(p, images[indices])))(flat),
        np.float64,
    )
    kernel = kernel_file(jacobian, labels[indices], indices, RESNET_CLASS)
    return dict(
        params=params,
        state=state,
        logit_fn=logit_fn,
        flat=flat,
        images=images[indices],
        kernel=kernel,
    )


def first_layer_dead_fraction(params, state, image):
    """NumPy: the fraction of pixels of `image` (H, W, 1) that feed only
    first-layer units (3×3 convolution without bias, 'SAME' zero padding,
    batch norm in eval mode, ReLU) that are off in every channel."""
    weights = np.asarray(params["res_net18/~/initial_conv"]["w"], np.float64)
    norm = params["res_net18/~/initial_batchnorm"]
    mean = state["res_net18/~/initial_batchnorm/~/mean_ema"]["average"]
    var = state["res_net18/~/initial_batchnorm/~/var_ema"]["average"]
    height, width = image.shape[:2]
    padded = np.pad(np.asarray(image[..., 0], np.float64), 1)
    conv = sum(
        padded[i : i + height, j : j + width, None] * weights[i, j, 0]
        for i in range(3)
        for j in range(3)
    )
    normed = (conv - np.ravel(mean)) / np.sqrt(np.ravel(var) + BN_EPS)
    active = np.any(
        normed * np.ravel(norm["scale"]) + np.ravel(norm["offset"]) > 0,
        axis=-1,
    )
    # Pixel (h, w) feeds the units at (h + a, w + b), a, b in {-1, 0, 1}.
    feeds_active = np.pad(active, 1)
    feeds_active = sum(
        feeds_active[1 + a : 1 + a + height, 1 + b : 1 + b + width]
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
    )
    return float(np.mean(feeds_active == 0))


@pytest.mark.slow
def test_resnet_grey_start_is_dead_and_mean_start_moves(resnet):
    """Seed 0 at width 4 draws four first-layer filters with negative sums:
    on the grey image every channel sits below its data mean, so batch norm
    makes it negative and the ReLU is off everywhere but near the border
    (the network of the README's demo has the same first layer). The
    warning fires there; the mean image starts alive and its positive
    image's cosine rises."""
    filters = resnet["params"]["res_net18/~/initial_conv"]["w"]
    assert np.all(np.sum(filters, axis=(0, 1, 2)) < 0)
    run = functools.partial(
        features.feature_images,
        resnet["logit_fn"],
        resnet["flat"],
        resnet["images"],
        resnet["kernel"],
    )
    results = {}
    for start in ("grey", "mean"):
        warnings = []
        settings = features.Settings(
            n_images=1,
            steps=10,
            step_size=0.01,
            batch_size=RESNET_IMAGES,
            start=features.parse_start(start),
        )
        results[start] = run(settings, warn=warnings.append)
        results[start + "_warnings"] = warnings
        expected = first_layer_dead_fraction(
            resnet["params"],
            resnet["state"],
            results[start].start_image,
        )
        for kind in ("pos", "neg"):
            np.testing.assert_allclose(
                results[start].zero_gradient_fractions[kind], [expected]
            )
        assert results[start].zero_gradient_fractions["w"] == pytest.approx(
            expected
        )

    grey, mean = results["grey"], results["mean"]
    assert grey.zero_gradient_fractions["pos"][0] > 0.5
    assert len(results["grey_warnings"]) == 1
    assert "--start mean" in results["grey_warnings"][0]
    assert mean.zero_gradient_fractions["pos"][0] < 0.1
    assert results["mean_warnings"] == []
    # Steps of 0.01 overshoot now and then (the cosine goes 0.11, 0.21,
    # 0.10, 0.22, 0.37, ...), but the ascent gains and the descent loses.
    start_cosine = mean.pos_cosines[0, 0]
    assert mean.best_pos_cosines[0] > start_cosine + 0.2
    assert mean.pos_cosines[0, -1] > start_cosine + 0.1
    assert mean.best_neg_cosines[0] < start_cosine - 0.05
