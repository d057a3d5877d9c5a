"""kernel_analysis: each measurement against its formula evaluated directly
in NumPy and against cases worked out by hand; invariances; kernel
regression against a direct solve; series, pairs and comparisons of kernel
files, with their refusals."""

import math

import numpy as np
import pytest

from analysis import kernel_analysis as ka
from kernel_objects import direct_distance, kernel, psd
from ntk.kernel_files import COMBINED
from utils import UserError

# --------------------------------------------------------------------------
# Distance, velocity, polar trajectory
# --------------------------------------------------------------------------


def test_distance_hand_cases():
    # ⟨I, 11ᵀ⟩ = 2, ‖I‖ = √2, ‖11ᵀ‖ = 2.
    assert ka.kernel_distance(np.eye(2), np.ones((2, 2))) == pytest.approx(
        1 - 1 / math.sqrt(2)
    )
    # diag(1, 2, 3) and diag(3, 2, 1): ⟨,⟩ = 10, norms √14.
    assert ka.kernel_distance(
        np.diag([1.0, 2, 3]), np.diag([3.0, 2, 1])
    ) == pytest.approx(2 / 7)
    # Orthogonal positive semi-definite kernels are as far as can be.
    assert ka.kernel_distance(np.diag([1.0, 0]), np.diag([0.0, 1])) == 1.0


def test_distance_matches_formula_and_invariances():
    kernels = [psd(6, seed) for seed in range(5)]
    matrix = ka.distance_matrix(kernels)
    for i, a in enumerate(kernels):
        for j, b in enumerate(kernels):
            want = 0.0 if i == j else direct_distance(a, b)
            assert ka.kernel_distance(a, b) == pytest.approx(want, abs=1e-12)
            assert matrix[i, j] == pytest.approx(want, abs=1e-12)
            assert 0 <= matrix[i, j] <= 1
        for c in (1e-3, 0.5, 7.0, 1e4):
            assert ka.kernel_distance(a, c * a) == pytest.approx(0, abs=1e-12)
    np.testing.assert_array_equal(matrix, matrix.T)
    assert np.all(np.diag(matrix) == 0)


def test_distance_of_a_zero_kernel_is_refused():
    with pytest.raises(ValueError, match="zero"):
        ka.kernel_distance(np.zeros((2, 2)), np.eye(2))


def test_velocities_are_distance_per_epoch():
    epochs = [0, 0.125, 0.5, 2]
    kernels = [psd(5, seed) for seed in range(4)]
    want = [
        direct_distance(kernels[i], kernels[i + 1])
        / (epochs[i + 1] - epochs[i])
        for i in range(3)
    ]
    np.testing.assert_allclose(ka.velocities(epochs, kernels), want)
    with pytest.raises(ValueError, match="increasing"):
        ka.velocities([0, 1, 1], kernels[:3])


def test_settle_time_hand_cases():
    """The first t after which S(K_t, K_T) stays ≤ f · S(K_0, K_T)."""
    epochs = [0, 1, 2, 4]
    # 0.5 > 0.25 · 1.0, then 0.2 and 0 stay below: settled at t = 2.
    assert ka.settle_time(epochs, [1.0, 0.5, 0.2, 0.0], 0.25) == 2
    # A larger fraction takes t = 1 as well.
    assert ka.settle_time(epochs, [1.0, 0.5, 0.2, 0.0], 0.5) == 1
    # Close at t = 1 but away again at t = 2: not settled before t = 4.
    assert ka.settle_time(epochs, [1.0, 0.1, 0.4, 0.0], 0.25) == 4
    # The scale is the first kernel's distance, not the largest.
    assert ka.settle_time(epochs, [0.4, 0.8, 0.05, 0.0], 0.25) == 2
    # NaN entries are skipped; a series that never moved settles at once.
    assert ka.settle_time(epochs, [1.0, math.nan, 0.2, 0.0], 0.25) == 2
    assert ka.settle_time(epochs, [0.0, 0.0, 0.0, 0.0], 0.25) == 0
    assert math.isnan(ka.settle_time([], [], 0.25))


def test_distance_ratio_hand_cases():
    """A distance in units of a baseline; undefined (NaN) where the
    baseline is zero but for rounding, as for two kernels of one θ(0)."""
    assert ka.distance_ratio(0.3, 0.1) == pytest.approx(3.0)
    assert ka.distance_ratio(0.0, 0.2) == 0.0
    # Two files of one checkpoint: S = 1e-15 on either side, no ratio.
    assert math.isnan(ka.distance_ratio(1.1e-15, 0.0))
    assert math.isnan(ka.distance_ratio(0.0, 1e-13))
    assert math.isnan(ka.distance_ratio(math.nan, 0.1))
    assert math.isnan(ka.distance_ratio(0.1, math.nan))
    # The ratio of two kernels' distances, computed from the kernels.
    a, b, c = np.diag([1.0, 0.0]), np.diag([1.0, 1.0]), np.diag([2.0, 1.0])
    ratio = ka.distance_ratio(
        ka.kernel_distance(a, b), ka.kernel_distance(c, b)
    )
    want = (1 - 1 / math.sqrt(2)) / (1 - 3 / math.sqrt(10))
    assert ratio == pytest.approx(want)


def test_polar_hand_case():
    """K_0 = diag(1, 0), K_1 = I, K_2 = diag(0, 1): ‖K_1 − K_0‖ = 1,
    ‖K_2 − K_0‖ = √2; cos(K_1, K_0) = 1/√2, cos(K_2, K_0) = 0."""
    radius, angle = ka.polar_trajectory(
        [np.diag([1.0, 0]), np.eye(2), np.diag([0.0, 1])]
    )
    np.testing.assert_allclose(radius, [0, 1 / math.sqrt(2), 1])
    np.testing.assert_allclose(angle, [0, math.pi / 4, math.pi / 2], atol=1e-7)


def test_polar_projections_match_explicit_projectors():
    n, k = 8, 3
    kernels = [psd(n, seed) for seed in range(4)]
    values, vectors = np.linalg.eigh(kernels[-1])
    vectors = vectors[:, np.argsort(values)[::-1]]
    got = ka.polar_projections(kernels, vectors, k)
    top = vectors[:, :k] @ vectors[:, :k].T  # N×N projectors
    rest = np.eye(n) - top
    for name, projector in (
        ("whole", np.eye(n)),
        ("top", top),
        ("rest", rest),
    ):
        projected = [projector @ K @ projector for K in kernels]
        gaps = [np.linalg.norm(K - projected[0]) for K in projected]
        angles = [
            np.arccos(1 - direct_distance(K, projected[0])) for K in projected
        ]
        np.testing.assert_allclose(got[name][0], np.array(gaps) / gaps[-1])
        np.testing.assert_allclose(got[name][1], angles, atol=1e-6)
    everything = ka.polar_projections(kernels, vectors, n)
    np.testing.assert_allclose(everything["top"][0], everything["whole"][0])
    assert np.all(np.isnan(everything["rest"][0]))


# --------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------


def test_spectrum_hand_cases():
    assert ka.top_k_mass(np.array([3.0, 2, 1]), 1) == pytest.approx(9 / 14)
    assert ka.top_k_mass(np.array([3.0, 2, 1]), 2) == pytest.approx(13 / 14)
    assert ka.top_k_mass(np.array([3.0, 2, 1]), 10) == 1.0
    assert ka.effective_rank(np.ones(4)) == pytest.approx(4)
    assert ka.effective_rank(np.array([1.0, 0, 0])) == pytest.approx(1)
    # p = (1/2, 1/4, 1/4): exp(½ ln 2 + ½ ln 4) = 2^1.5.
    assert ka.effective_rank(np.array([2.0, 1, 1])) == pytest.approx(2**1.5)
    assert ka.condition_number(np.array([4.0, 2, 0.5])) == 8.0
    assert ka.condition_number(np.array([4.0, 0])) == math.inf


def test_spectrum_matches_formulas():
    kernel = psd(7, 3)
    values, vectors = ka.eigen(kernel)
    np.testing.assert_allclose(
        values, np.sort(np.linalg.eigvalsh(kernel))[::-1]
    )
    assert np.all(np.diff(values) <= 0)
    np.testing.assert_allclose(vectors @ np.diag(values) @ vectors.T, kernel)
    assert ka.top_k_mass(values, 3) == pytest.approx(
        np.sum(values[:3] ** 2) / np.sum(kernel**2)
    )
    p = values / np.trace(kernel)
    assert ka.effective_rank(values) == pytest.approx(
        np.exp(-np.sum(p * np.log(p)))
    )
    assert ka.condition_number(values) == pytest.approx(np.linalg.cond(kernel))


# --------------------------------------------------------------------------
# Alignment with the labels
# --------------------------------------------------------------------------

LABELS = np.array([0, 1, 2, 0, 1, 2])  # class-balanced, C = 3


def test_alignment_hand_cases():
    # A(11ᵀ, I): ⟨11ᵀ, I⟩ = 2, ‖11ᵀ‖ = 2, ‖I‖ = √2.
    assert ka.target_alignment(np.ones((2, 2)), np.eye(2)) == pytest.approx(
        1 / math.sqrt(2)
    )
    # A 2×2 kernel centred is a multiple of (1, −1)(1, −1)ᵀ, as is the
    # centred target of two classes: HKH = 0.75·[[1, −1], [−1, 1]] for
    # K = diag(2, 1), Y_c Y_cᵀ = 0.5·[[1, −1], [−1, 1]].
    np.testing.assert_allclose(
        ka.center(np.diag([2.0, 1])), 0.75 * np.array([[1, -1], [-1, 1]])
    )
    assert ka.centered_target_alignment(
        np.diag([2.0, 1]), np.eye(2), 2
    ) == pytest.approx(1)
    # Eigenvectors e_1, e_2 of diag(2, 1); the target lies along e_1.
    np.testing.assert_allclose(
        ka.label_energy(np.eye(2), np.array([[1.0], [0.0]])), [1, 0]
    )


def test_alignment_matches_formulas():
    kernel = psd(6, 4)
    y = ka.one_hot(LABELS, 3)
    target = y @ y.T
    assert ka.target_alignment(kernel, y) == pytest.approx(
        np.sum(kernel * target)
        / (np.linalg.norm(kernel) * np.linalg.norm(target))
    )
    h = np.eye(6) - np.ones((6, 6)) / 6
    centred = h @ kernel @ h
    y_c = y - 1 / 3
    assert ka.centered_target_alignment(kernel, y, 3) == pytest.approx(
        np.sum(centred * (y_c @ y_c.T))
        / (np.linalg.norm(centred) * np.linalg.norm(y_c @ y_c.T))
    )
    # Balanced labels: Y − 1/C is HY, so this is Cortes et al.'s A(HKH, HYYᵀH).
    np.testing.assert_allclose(y_c, h @ y)
    _, vectors = ka.eigen(kernel)
    energy = ka.label_energy(vectors, y)
    want = [np.sum((vectors[:, i] @ y) ** 2) / np.sum(y**2) for i in range(6)]
    np.testing.assert_allclose(energy, want)
    assert energy.sum() == pytest.approx(1)


def test_alignment_invariances():
    y = ka.one_hot(LABELS, 3)
    assert ka.target_alignment(y @ y.T, y) == pytest.approx(1)
    y_c = y - 1 / 3
    assert ka.centered_target_alignment(y_c @ y_c.T, y, 3) == pytest.approx(1)
    kernel = psd(6, 5)
    # Scale-free; centring removes a constant added to every entry.
    assert ka.target_alignment(9 * kernel, y) == pytest.approx(
        ka.target_alignment(kernel, y)
    )
    assert ka.centered_target_alignment(kernel + 4.0, y, 3) == pytest.approx(
        ka.centered_target_alignment(kernel, y, 3)
    )


def test_targets_of_a_class_kernel_are_its_column():
    np.testing.assert_array_equal(
        ka.kernel_targets(LABELS, 1, 3), (LABELS == 1)[:, None]
    )
    assert ka.kernel_targets(LABELS, COMBINED, 3).shape == (6, 3)
    np.testing.assert_array_equal(
        ka.regression_targets(LABELS, 2, 3)[:, 0], [-1, -1, 1, -1, -1, 1]
    )


# --------------------------------------------------------------------------
# Kernel regression
# --------------------------------------------------------------------------


def test_regression_matches_a_direct_solve():
    kernel = psd(8, 6)
    cross = np.random.default_rng(7).normal(size=(3, 8))
    targets = ka.one_hot(np.arange(8) % 4, 4)
    want = cross @ np.linalg.solve(kernel + 0.3 * np.eye(8), targets)
    np.testing.assert_allclose(
        ka.kernel_regression(kernel, cross, targets, 0.3), want, rtol=1e-9
    )


def test_regression_with_vanishing_ridge_interpolates():
    kernel = psd(8, 8)
    targets = ka.one_hot(np.arange(8) % 4, 4)
    fitted = ka.kernel_regression(kernel, kernel, targets, 1e-10)
    np.testing.assert_allclose(fitted, targets, atol=1e-5)
    assert ka.regression_accuracy(fitted, np.arange(8) % 4, COMBINED) == 1.0


def test_regression_accuracy_hand_cases():
    predictions = np.array([[0.2, 0.9], [0.7, 0.1], [0.4, 0.5]])
    assert ka.regression_accuracy(
        predictions, np.array([1, 0, 0]), COMBINED
    ) == pytest.approx(2 / 3)
    # Class 1 one-vs-rest: the sign of the single column.
    signs = np.array([[0.5], [-0.2], [-1.0], [0.1]])
    assert ka.regression_accuracy(signs, np.array([1, 0, 1, 0]), 1) == 0.5


def test_ridge_ties_go_to_the_largest():
    """With K = I nothing generalises: every λ predicts 0 for the held-out
    images, so all scores tie and the largest λ is chosen."""
    labels = np.arange(20) % 2
    exponent, scores = ka.choose_ridge(np.eye(20), labels, COMBINED, 2, 0)
    assert exponent == max(ka.RIDGE_EXPONENTS)
    assert list(scores) == list(ka.RIDGE_EXPONENTS)
    assert len(set(scores.values())) == 1


def test_regression_accuracy_on_separable_data():
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    test_labels = np.arange(12) % 4
    features = np.concatenate([labels, test_labels])
    x = 5 * np.eye(4)[features] + 0.3 * rng.normal(size=(52, 4))
    kernel = x @ x.T
    for class_index in (COMBINED, 2):
        result = ka.kernel_regression_accuracy(
            kernel[:40, :40],
            kernel[40:, :40],
            labels,
            test_labels,
            class_index,
            4,
            seed=1,
        )
        assert result["accuracy"] == 1.0
        assert result["validation_accuracy"] == 1.0
        assert result["ridge"] == pytest.approx(
            10.0 ** result["ridge_exponent"]
            * np.mean(np.diag(kernel[:40, :40]))
        )
    again = ka.kernel_regression_accuracy(
        kernel[:40, :40], kernel[40:, :40], labels, test_labels, 2, 4, seed=1
    )
    assert again == result  # the seed fixes the split


# --------------------------------------------------------------------------
# Sets of kernel files
# --------------------------------------------------------------------------


def test_series_are_sorted_and_checked():
    kernels = [
        kernel("b", 2, seed=1),
        kernel("a", 0.125, seed=2),
        kernel("c", None, seed=3),
        kernel("d", 0, class_index=1, seed=4),
    ]
    groups = ka.series(kernels)
    assert [[k.path for k in g] for g in groups.values()] == [
        ["a", "b"],
        ["d"],
    ]
    result = ka.series_measures(groups[ka.series_key(kernels[0])], 2)
    assert result["velocity"] == pytest.approx(
        [
            direct_distance(kernels[1].file.kernel, kernels[0].file.kernel)
            / 1.875
        ]
    )
    with pytest.raises(UserError, match="different images") as error:
        ka.series([kernels[0], kernel("x", 3, indices=(0, 1, 5))])
    assert "b and x" in str(error.value)
    with pytest.raises(UserError, match="both kernels of epoch 2"):
        ka.series([kernels[0], kernel("y", 2)])


def test_pairs_only_within_class_and_images():
    kernels = [
        kernel("a", 0),
        kernel("b", 1, class_index=1),
        kernel("c", 1),
        kernel("d", 0, run="other", indices=(0, 1, 3)),
    ]
    assert ka.comparable_sets(kernels) == [[0, 2], [1], [3]]


def test_compare_runs_matches_class_and_epoch():
    run_a = [kernel("a0", 0), kernel("a1", 1), kernel("a2", 2)]
    run_b = [kernel("b1", 1, run="B"), kernel("b0", 0, run="B")]
    matched, unmatched = ka.compare_runs(run_a, run_b)
    assert [(a.path, b.path) for a, b in matched] == [
        ("a0", "b0"),
        ("a1", "b1"),
    ]
    assert [k.path for k in unmatched] == ["a2"]
    with pytest.raises(UserError, match="different images"):
        ka.compare_runs(run_a, [kernel("b", 1, indices=(3, 4, 5))])
    with pytest.raises(UserError, match="no kernels of the same class"):
        ka.compare_runs(run_a, [kernel("b", 1, class_index=1)])
