r"""Measurements of empirical NTKs and of their evolution during training.

The measurements of Fort et al. (2020), whose protocol the paper follows,
and of the kernel-alignment literature, for N×N kernels K, K' on the same
images and one-hot labels Y (N×C). Everything is float64 NumPy; each
kernel's eigendecomposition is computed once (`Kernel.eigh`) and serves
its spectrum, its label energies, the polar projections and its kernel
regression.

* Kernel distance S(K, K') = 1 − ⟨K, K'⟩_F / (‖K‖_F ‖K'‖_F), in [0, 1]
  for positive semi-definite kernels (kernel_distance, distance_matrix),
  each kernel divided by its largest entry before any product, so that
  S(K, cK) = 0 whatever the scale c (1e300 included). Kernels that are
  not positive semi-definite within PSD_TOLERANCE (psd_violation) are
  refused by analyze_kernels.py.
* Kernel velocity v(t) = S(K_t, K_{t+Δ}) / Δ, Δ in epochs (velocities).
* A distance in units of a baseline distance (distance_ratio): claim 1's
  comparisons of trainings against seeds or data orders.
* Time to settle: the first t after which S(K_t', K_T) ≤ f · S(K_0, K_T)
  for every t' ≥ t (settle_time).
* Distance between seeds: the mean S between a kernel and the kernels of
  the same class and epoch of replicate runs that differ only in their
  seed, on the same images (replicate_pairs, distance_between_seeds).
* Polar trajectory r(t) = ‖K_t − K_0‖_F / ‖K_T − K_0‖_F and
  φ(t) = arccos(1 − S(K_t, K_0)) (polar_trajectory), for the whole kernel
  and its projections U_kᵀ K U_k on the top-k and the remaining
  eigenvectors U of the last kernel K_T (polar_projections).
* Spectrum: eigenvalues λ descending, top-k mass Σ_{i≤k} λ_i² / Σ λ_i²,
  λ_max, condition number λ_max / λ_min, effective rank
  exp(−Σ p_i log p_i), p_i = λ_i / Σ λ.
* Kernel–target alignment A(K, YYᵀ) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F), the
  centered alignment A(HKH, Y_c Y_cᵀ), H = I − 11ᵀ/N, Y_c = Y − 1/C
  (Cortes et al. 2012), and the label energy of eigenvector u_i,
  Σ_c (u_iᵀ y_c)² / ‖Y‖_F².
* Kernel regression K(x, X)(K(X, X) + λI)⁻¹Y, λ chosen on a split of the
  training images (kernel_regression_accuracy).

For the kernel of logit c the targets are that logit's own: the column
y_c of Y (alignments, label energy) or ±1 one-vs-rest labels (regression);
for the combined kernel (the mean over logits) all of Y. The pairs,
series and comparisons of a set of kernel files are formed by
`comparable_sets`, `series` and `compare_runs`, which never pair kernels
of different images (`series` and `compare_runs` refuse them with a
UserError naming both files).
"""

import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from ntk.kernel_files import COMBINED, KernelFile
from utils import UserError

DEFAULT_TOP_K = (10, 20)
DEFAULT_POLAR_K = 10
# The ridge grid: λ = 10^e · mean(diag K), e in RIDGE_EXPONENTS.
RIDGE_EXPONENTS = tuple(range(-6, 2))
# Share of the training images held out to choose λ.
VALIDATION_FRACTION = 0.2
PROJECTIONS = ("whole", "top", "rest")
# settle_time's fraction: a kernel has settled once it stays within this
# fraction of its first kernel's distance to its last.
DEFAULT_SETTLE_FRACTION = 0.25
# A kernel is positive semi-definite within rounding when its smallest
# eigenvalue is at least −PSD_TOLERANCE × its largest in magnitude
# (float32 rounding of an N×N Gram matrix stays far above).
PSD_TOLERANCE = 1e-3
# What each measure of kernels.csv can be, by column name (a regular
# expression matched whole): (minimum, maximum, whether it must exceed
# the minimum). Every measure is finite, but the condition number of a
# singular kernel (infinite); a column matched by none is any finite
# number.
MEASURE_RANGES = (
    (
        r"(cross_)?distance(_.*)?",
        0.0,
        1.0,
        False,
    ),  # S of positive semi-definite K
    (r"top\d+_(mass|label_energy)|.*accuracy", 0.0, 1.0, False),
    (r"(centered_)?target_alignment", -1.0, 1.0, False),
    (r"effective_rank|lambda_max|kernel_regression_ridge", 0.0, np.inf, True),
    (r"condition_number", 1.0, np.inf, False),
    (r"settle_t|velocity|n", 0.0, np.inf, False),
)


def measure_problem(column: str, value: float) -> str | None:
    """Why `value` cannot be the measure `column` of a kernel
    (MEASURE_RANGES; NaN, an empty cell, is no value and fine), or None."""
    if np.isnan(value):
        return None
    if not np.isfinite(value) and column != "condition_number":
        return "not a finite number"
    for pattern, low, high, above in MEASURE_RANGES:
        if re.fullmatch(pattern, column):
            if (low < value if above else low <= value) and value <= high:
                return None
            if high < np.inf:
                return f"not in [{low:g}, {high:g}]"
            return f"not {'above' if above else 'at least'} {low:g}"
    return None


# Distances this small are zero but for rounding: the kernel files of one
# checkpoint, computed twice, lie about 1e-15 apart.
ROUNDING_DISTANCE = 1e-12


# --------------------------------------------------------------------------
# Distances and their series
# --------------------------------------------------------------------------


def _scaled(kernel: np.ndarray) -> tuple[np.ndarray, float]:
    """(K / max |K|, max |K|) in float64; ValueError for a zero matrix.

    Every product below is formed from the scaled matrix, whose entries lie
    in [−1, 1], so that no square or inner product overflows (K × 1e300) or
    underflows (K × 1e-300) whatever the kernel's units.
    """
    kernel = np.asarray(kernel, np.float64)
    largest = float(np.max(np.abs(kernel), initial=0.0))
    if largest == 0:
        raise ValueError("a zero kernel has no direction")
    return kernel / largest, largest


def _norm(kernel: np.ndarray) -> float:
    """‖K‖_F, computed scale-safely; ValueError for a zero matrix (every
    ratio below needs it)."""
    scaled, largest = _scaled(kernel)
    return largest * float(np.linalg.norm(scaled))


def _direction(kernel: np.ndarray) -> np.ndarray:
    """K / ‖K‖_F, flattened (scale-safe; ValueError for a zero matrix)."""
    scaled, _ = _scaled(kernel)
    flat = np.ravel(scaled)
    return flat / np.linalg.norm(flat)


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """S(K, K') = 1 − ⟨K, K'⟩_F / (‖K‖_F ‖K'‖_F), each kernel divided by
    its largest entry first (scale-safe: S(K, cK) = 0 for any c > 0 that
    keeps cK finite).

    Args:
      a, b: (N, N) kernels (any same-shape arrays).
    Returns:
      a float in [0, 2] (clipped against rounding), in [0, 1] for
      positive semi-definite kernels; 0 when b = c·a, c > 0.
    Raises:
      ValueError: either kernel is zero.
    """
    cosine = float(np.dot(_direction(a), _direction(b)))
    return float(np.clip(1.0 - cosine, 0.0, 2.0))


def distance_matrix(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """S of every pair of `kernels`: float64 (T, T), symmetric, zero
    diagonal. One product of the normalised flattened kernels (T, N²),
    each divided by its largest entry first (scale-safe, as
    kernel_distance)."""
    flat = np.stack([_direction(k) for k in kernels])
    distances = np.clip(1.0 - flat @ flat.T, 0.0, 2.0)
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, 0.0)
    return distances


def velocities(
    epochs: Sequence[float], kernels: Sequence[np.ndarray]
) -> np.ndarray:
    """v_i = S(K_i, K_{i+1}) / (t_{i+1} − t_i), distance per epoch.

    Args:
      epochs: (T,) strictly increasing epochs t_i (fractions allowed).
      kernels: T kernels, K_i at epoch t_i.
    Returns:
      float64 (T − 1,).
    Raises:
      ValueError: the epochs are not strictly increasing.
    """
    epochs = np.asarray(epochs, np.float64)
    steps = np.diff(epochs)
    if np.any(steps <= 0):
        raise ValueError(f"epochs {epochs.tolist()} are not increasing")
    return np.array(
        [
            kernel_distance(kernels[i], kernels[i + 1]) / steps[i]
            for i in range(len(steps))
        ]
    )


def distance_ratio(distance: float, baseline: float) -> float:
    """A distance between kernels in units of a baseline distance:
    distance / baseline.

    Returns:
      the ratio; NaN where either is NaN, or where the baseline is zero
      but for rounding (≤ ROUNDING_DISTANCE: two kernels of one θ, as at
      t = 0, where the runs of one seed all start from θ(0)), so that no
      ratio of rounding errors counts.
    """
    if np.isnan(distance) or np.isnan(baseline):
        return float("nan")
    if baseline <= ROUNDING_DISTANCE:
        return float("nan")
    return float(distance) / float(baseline)


def settle_time(
    epochs: Sequence[float],
    distance_to_last: Sequence[float],
    fraction: float,
) -> float:
    """The first epoch after which a kernel stays settled: the first t_i
    with S(K_j, K_T) ≤ fraction · S(K_0, K_T) for every j ≥ i, where K_0
    and K_T are the series' first and last kernels (so the kernel has come
    at least 1 − fraction of the way from its first to its last kernel,
    and stays there).

    Args:
      epochs: (T,) increasing epochs t_i.
      distance_to_last: (T,) S(K_i, K_T); NaN entries are not kernels and
        are skipped.
      fraction: in [0, 1).
    Returns:
      that epoch; the first epoch when the first and last kernels are the
      same kernel (S(K_0, K_T) = 0); NaN for an empty series.
    """
    points = [
        (float(t), float(d))
        for t, d in zip(epochs, distance_to_last, strict=True)
        if not np.isnan(d)
    ]
    if not points:
        return float("nan")
    limit = fraction * points[0][1]
    settled = points[-1][0]
    for t, d in reversed(points):
        if d > limit:
            break
        settled = t
    return settled


def _norm_or_zero(matrix: np.ndarray) -> float:
    """‖M‖_F (scale-safe), 0 for a zero matrix."""
    try:
        return _norm(matrix)
    except ValueError:
        return 0.0


def polar_trajectory(
    kernels: Sequence[np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The path of K_t seen from K_0, in polar coordinates (Fort et al.).

    r_t = ‖K_t − K_0‖_F / ‖K_T − K_0‖_F (K_T the last kernel) and
    φ_t = arccos(1 − S(K_t, K_0)), the angle between K_t and K_0.

    Args:
      kernels: T kernels in order of time, K_0 first.
    Returns:
      (r, φ), float64 (T,) each, φ in radians; r is NaN when K_T = K_0
      and φ NaN where a kernel is zero.
    """
    first = np.asarray(kernels[0], np.float64)
    gaps = np.array([_norm_or_zero(k - first) for k in kernels])
    radius = gaps / gaps[-1] if gaps[-1] > 0 else np.full(len(gaps), np.nan)
    angles = []
    for kernel in kernels:
        try:
            angles.append(np.arccos(1.0 - kernel_distance(kernel, first)))
        except ValueError:
            angles.append(np.nan)
    return radius, np.array(angles)


def polar_projections(
    kernels: Sequence[np.ndarray], last_eigenvectors: np.ndarray, k: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """polar_trajectory of the whole kernels and of their projections on
    the top-k eigenvectors of the last kernel and on the others.

    The projection of K on orthonormal columns U (N, m) is U Uᵀ K U Uᵀ;
    its Frobenius inner products and norms are those of Uᵀ K U (m, m),
    which is what is computed.

    Args:
      kernels: T kernels (N, N), K_0 first, K_T last.
      last_eigenvectors: (N, N) eigenvectors of K_T, columns in order of
        descending eigenvalue.
      k: the number of top eigenvectors (capped at N).
    Returns:
      {'whole', 'top', 'rest': (r, φ)}; 'rest' is NaN when k ≥ N.
    """
    top = last_eigenvectors[:, :k]
    rest = last_eigenvectors[:, k:]
    out = {"whole": polar_trajectory(kernels)}
    for name, basis in (("top", top), ("rest", rest)):
        if basis.shape[1] == 0:
            nan = np.full(len(kernels), np.nan)
            out[name] = (nan, nan.copy())
            continue
        out[name] = polar_trajectory([basis.T @ K @ basis for K in kernels])
    return out


# --------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------


def eigen(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues float64 (N,) descending, eigenvectors (N, N) in the
    same order as columns) of a symmetric kernel, in float64."""
    values, vectors = np.linalg.eigh(np.asarray(kernel, np.float64))
    return values[::-1].copy(), vectors[:, ::-1].copy()


def psd_violation(eigenvalues: np.ndarray) -> float:
    """−λ_min / max |λ|: how far below zero the smallest eigenvalue goes,
    relative to the largest in magnitude (≤ 0 for a positive semi-definite
    kernel; above PSD_TOLERANCE, the kernel is not one within rounding)."""
    values = np.asarray(eigenvalues, np.float64)
    return float(-values.min() / np.max(np.abs(values)))


def top_k_mass(eigenvalues: np.ndarray, k: int) -> float:
    """Σ_{i≤k} λ_i² / Σ_i λ_i², eigenvalues in descending order (the
    share of ‖K‖_F² in the top k eigendirections)."""
    values = np.asarray(eigenvalues, np.float64)
    squares = (values / np.max(np.abs(values))) ** 2  # scale-safe
    return float(squares[:k].sum() / squares.sum())


def effective_rank(eigenvalues: np.ndarray) -> float:
    """exp(−Σ p_i log p_i), p_i = λ_i / Σ λ (0 log 0 = 0); eigenvalues
    below zero, from rounding in a positive semi-definite kernel, count
    as 0. Between 1 and N."""
    values = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
    p = values / values.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def condition_number(eigenvalues: np.ndarray) -> float:
    """λ_max / λ_min; infinity when λ_min ≤ 0 (a singular kernel)."""
    values = np.asarray(eigenvalues, np.float64)
    smallest = values.min()
    return float(values.max() / smallest) if smallest > 0 else float("inf")


# --------------------------------------------------------------------------
# Alignment with the labels
# --------------------------------------------------------------------------


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """float64 (N, C), row i the indicator of labels[i]."""
    return np.eye(n_classes)[np.asarray(labels)]


def kernel_targets(
    labels: np.ndarray, class_index: int, n_classes: int
) -> np.ndarray:
    """The targets a kernel is aligned with: one_hot (N, C) for the
    combined kernel (COMBINED), its column c (N, 1) for the kernel of
    logit c."""
    targets = one_hot(labels, n_classes)
    return targets if class_index == COMBINED else targets[:, [class_index]]


def target_alignment(kernel: np.ndarray, targets: np.ndarray) -> float:
    """A(K, YYᵀ) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F).

    Computed as tr(Yᵀ K Y) / (‖K‖_F ‖YᵀY‖_F) (‖YYᵀ‖_F = ‖YᵀY‖_F).

    Args:
      kernel: (N, N).
      targets: (N, T), e.g. one-hot labels.
    """
    targets = np.asarray(targets, np.float64)
    inner = float(np.sum(targets * (kernel @ targets)))
    return inner / (_norm(kernel) * _norm(targets.T @ targets))


def center(kernel: np.ndarray) -> np.ndarray:
    """HKH, H = I − 11ᵀ/N: K minus its row and column means plus its mean."""
    kernel = np.asarray(kernel, np.float64)
    return (
        kernel
        - kernel.mean(axis=0, keepdims=True)
        - kernel.mean(axis=1, keepdims=True)
        + kernel.mean()
    )


def centered_target_alignment(
    kernel: np.ndarray, targets: np.ndarray, n_classes: int
) -> float:
    """A(HKH, Y_c Y_cᵀ) with Y_c = Y − 1/C (Cortes et al. 2012).

    For class-balanced images (the subsets of calculate_kernel.py) Y − 1/C
    is HY, so this is Cortes et al.'s A(HKH, HYYᵀH).
    """
    return target_alignment(
        center(kernel), np.asarray(targets, np.float64) - 1.0 / n_classes
    )


def label_energy(eigenvectors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) the share of the targets along each eigenvector:
    e_i = Σ_c (u_iᵀ y_c)² / ‖Y‖_F², summing to 1 over all N."""
    targets = np.asarray(targets, np.float64)
    projections = eigenvectors.T @ targets
    return np.sum(projections**2, axis=1) / np.sum(targets**2)


# --------------------------------------------------------------------------
# Kernel regression
# --------------------------------------------------------------------------


def kernel_regression(
    kernel: np.ndarray,
    cross_kernel: np.ndarray,
    targets: np.ndarray,
    ridge: float,
    eigh: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """K(x, X)(K(X, X) + λI)⁻¹Y, through the eigendecomposition of K.

    Eigenvalues below zero (rounding in a positive semi-definite kernel)
    are taken as 0, so λ > 0 keeps the system well posed.

    Args:
      kernel: (N, N) K(X, X).
      cross_kernel: (M, N) K(x, X) of the points to predict.
      targets: (N, T) Y.
      ridge: λ > 0.
      eigh: eigen(kernel), if already computed.
    Returns:
      float64 (M, T) predictions.
    """
    values, vectors = eigh if eigh is not None else eigen(kernel)
    values = np.clip(values, 0.0, None)
    coefficients = vectors @ (
        (vectors.T @ np.asarray(targets, np.float64))
        / (values + ridge)[:, None]
    )
    return np.asarray(cross_kernel, np.float64) @ coefficients


def regression_targets(
    labels: np.ndarray, class_index: int, n_classes: int
) -> np.ndarray:
    """Targets of kernel regression: one-hot (N, C) for the combined
    kernel; for the kernel of logit c, +1 for class c and −1 for the
    others (N, 1)."""
    if class_index == COMBINED:
        return one_hot(labels, n_classes)
    return np.where(np.asarray(labels) == class_index, 1.0, -1.0)[:, None]


def regression_accuracy(
    predictions: np.ndarray, labels: np.ndarray, class_index: int
) -> float:
    """The share of right predictions: the argmax over classes for the
    combined kernel; for the kernel of logit c, whether the prediction's
    sign (> 0: class c) is that of the ±1 target."""
    labels = np.asarray(labels)
    if class_index == COMBINED:
        return float(np.mean(np.argmax(predictions, axis=1) == labels))
    return float(np.mean((predictions[:, 0] > 0) == (labels == class_index)))


def choose_ridge(
    kernel: np.ndarray,
    labels: np.ndarray,
    class_index: int,
    n_classes: int,
    seed: int,
    exponents: Sequence[int] = RIDGE_EXPONENTS,
) -> tuple[int, dict[int, float]]:
    """The ridge exponent e (λ = 10^e · mean(diag K)) that predicts best a
    held-out share of the training images.

    A permutation drawn by np.random.default_rng(seed) holds out its first
    round(VALIDATION_FRACTION · N) images (at least one); each λ of the
    grid is fitted on the others and scored with regression_accuracy. Ties
    go to the largest λ.

    Returns:
      (e, {exponent: validation accuracy} of the whole grid).
    """
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, round(VALIDATION_FRACTION * n))
    validation, fit = order[:held], order[held:]
    targets = regression_targets(labels, class_index, n_classes)
    fit_kernel = kernel[np.ix_(fit, fit)]
    decomposition = eigen(fit_kernel)
    scale = float(np.mean(np.diag(kernel)))
    scores = {
        e: regression_accuracy(
            kernel_regression(
                fit_kernel,
                kernel[np.ix_(validation, fit)],
                targets[fit],
                10.0**e * scale,
                decomposition,
            ),
            labels[validation],
            class_index,
        )
        for e in exponents
    }
    return max(scores, key=lambda e: (scores[e], e)), scores


def kernel_regression_accuracy(
    kernel: np.ndarray,
    cross_kernel: np.ndarray,
    labels: np.ndarray,
    test_labels: np.ndarray,
    class_index: int,
    n_classes: int,
    seed: int,
    eigh: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """Test accuracy of kernel regression with λ chosen by choose_ridge,
    refitted on all N training images.

    Args:
      kernel: (N, N) K(X, X); cross_kernel: (M, N) K(test, X).
      labels: (N,) and test_labels: (M,) class labels.
      class_index: c (one-vs-rest ±1 targets, sign accuracy) or COMBINED
        (one-hot targets, argmax accuracy).
      seed: of the validation split.
      eigh: eigen(kernel), if already computed.
    Returns:
      {'accuracy', 'ridge' (λ), 'ridge_exponent' (e), 'validation_accuracy'
      (of e)}.
    """
    exponent, scores = choose_ridge(
        kernel, labels, class_index, n_classes, seed
    )
    ridge = 10.0**exponent * float(np.mean(np.diag(kernel)))
    predictions = kernel_regression(
        kernel,
        cross_kernel,
        regression_targets(labels, class_index, n_classes),
        ridge,
        eigh,
    )
    return {
        "accuracy": regression_accuracy(predictions, test_labels, class_index),
        "ridge": ridge,
        "ridge_exponent": exponent,
        "validation_accuracy": scores[exponent],
    }


# --------------------------------------------------------------------------
# Kernel files to analyse
# --------------------------------------------------------------------------


def class_title(class_index: int) -> str:
    """'combined (mean over logits)' for COMBINED, else 'class c'."""
    if class_index == COMBINED:
        return "combined (mean over logits)"
    return f"class {class_index}"


@dataclasses.dataclass(eq=False)
class Kernel:
    """A kernel file to analyse, with its eigendecomposition kept.

    file: the checked kernel file (kernel_files.read).
    run: the run it belongs to (its checkpoint's folder).
    n_classes: C, the number of labels.
    """

    file: KernelFile
    run: str
    n_classes: int

    @functools.cached_property
    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """eigen(K), computed on first use."""
        return eigen(self.file.kernel)

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def epoch(self) -> float | None:
        return self.file.epoch

    @property
    def class_index(self) -> int:
        return self.file.class_index

    @property
    def targets(self) -> np.ndarray:
        """kernel_targets of the kernel's labels."""
        return kernel_targets(
            self.file.labels, self.class_index, self.n_classes
        )

    def same_images(self, other: "Kernel") -> bool:
        return np.array_equal(self.file.indices, other.file.indices)


def measure(kernel: Kernel, top_k: Sequence[int], seed: int) -> dict:
    """Every measurement of one kernel.

    Returns:
      {'n', 'lambda_max', 'condition_number', 'effective_rank',
      'top{k}_mass' and 'top{k}_label_energy' for each k,
      'target_alignment', 'centered_target_alignment', 'eigenvalues' (N,),
      'label_energy' (N,)}, plus 'kernel_regression_accuracy',
      '_ridge', '_ridge_exponent' and '_validation_accuracy' (as
      kernel_regression_accuracy's, prefixed) for a file with a cross
      kernel.
    """
    values, vectors = kernel.eigh
    matrix = kernel.file.kernel
    targets = kernel.targets
    energy = label_energy(vectors, targets)
    row = {
        "n": kernel.file.size,
        "lambda_max": float(values[0]),
        "condition_number": condition_number(values),
        "effective_rank": effective_rank(values),
    }
    for k in top_k:
        row[f"top{k}_mass"] = top_k_mass(values, k)
    row["target_alignment"] = target_alignment(matrix, targets)
    row["centered_target_alignment"] = centered_target_alignment(
        matrix, targets, kernel.n_classes
    )
    for k in top_k:
        row[f"top{k}_label_energy"] = float(energy[:k].sum())
    if kernel.file.test_kernel is not None:
        result = kernel_regression_accuracy(
            matrix,
            kernel.file.test_kernel,
            kernel.file.labels,
            kernel.file.test_labels,
            kernel.class_index,
            kernel.n_classes,
            seed,
            kernel.eigh,
        )
        row["kernel_regression_accuracy"] = result.pop("accuracy")
        row.update({f"kernel_regression_{k}": v for k, v in result.items()})
    row["eigenvalues"] = values
    row["label_energy"] = energy
    return row


def _differ(a: Kernel, b: Kernel, what: str) -> UserError:
    """The refusal of two kernels of different images."""
    return UserError(
        f"{a.path} and {b.path} are {what} on different images (their "
        "'indices' differ), so no distance between them means anything: "
        "analyse kernels of one --dataset_size and --random_seed together"
    )


def comparable_sets(kernels: Sequence[Kernel]) -> list[list[int]]:
    """Positions of `kernels` grouped by class_index and images (equal
    'indices'), in order of first appearance: pairs are formed only within
    a set."""
    sets: list[list[int]] = []
    for i, kernel in enumerate(kernels):
        for members in sets:
            first = kernels[members[0]]
            if first.class_index == kernel.class_index and first.same_images(
                kernel
            ):
                members.append(i)
                break
        else:
            sets.append([i])
    return sets


@dataclasses.dataclass(frozen=True)
class SeriesKey:
    """What makes one series of kernels over epochs: the run (checkpoint
    folder), its phase ('standard', 'linear' or None), the class and
    whether the kernels were taken at lin_params."""

    run: str
    phase: str | None
    class_index: int
    use_linear_params: bool | None


def series_key(kernel: Kernel) -> SeriesKey:
    phase = kernel.file.extras.get("phase")
    return SeriesKey(
        kernel.run,
        phase if isinstance(phase, str) else None,
        kernel.class_index,
        kernel.file.use_linear_params,
    )


def series(kernels: Sequence[Kernel]) -> dict[SeriesKey, list[Kernel]]:
    """The kernels with an epoch grouped by SeriesKey, each group sorted
    by epoch (groups in order of first appearance).

    Raises:
      UserError: two kernels of a group are on different images, or of
        the same epoch.
    """
    groups: dict[SeriesKey, list[Kernel]] = {}
    for kernel in kernels:
        if kernel.epoch is not None:
            groups.setdefault(series_key(kernel), []).append(kernel)
    for key, members in groups.items():
        members.sort(key=lambda k: k.epoch)
        for a, b in zip(members, members[1:], strict=False):
            if not a.same_images(b):
                raise _differ(a, b, f"kernels of class {key.class_index}")
            if a.epoch == b.epoch:
                raise UserError(
                    f"{a.path} and {b.path} are both kernels of epoch "
                    f"{a.epoch} of class {key.class_index} of the run in "
                    f"{key.run}: give one of them"
                )
    return groups


def series_measures(
    members: Sequence[Kernel],
    polar_k: int,
    settle_fraction: float = DEFAULT_SETTLE_FRACTION,
) -> dict:
    """The measurements of one series (kernels sorted by epoch).

    Returns:
      {'epochs' (T,), 'paths', 'distance_to_first' (T,),
      'distance_to_last' (T,), 'velocity' (T − 1,), 'velocity_epoch' and
      'velocity_next_epoch' (T − 1,) the pairs' epochs, 'polar':
      {'whole', 'top', 'rest': {'r', 'phi'} (T,) each}, 'polar_k',
      'settle_t' (settle_time at `settle_fraction`), 'settle_fraction'}.
    """
    matrices = [m.file.kernel for m in members]
    epochs = np.array([m.epoch for m in members], np.float64)
    distances = distance_matrix(matrices)
    polar = polar_projections(matrices, members[-1].eigh[1], polar_k)
    return {
        "epochs": epochs,
        "paths": [m.path for m in members],
        "distance_to_first": distances[0],
        "distance_to_last": distances[-1],
        "velocity": velocities(epochs, matrices),
        "velocity_epoch": epochs[:-1],
        "velocity_next_epoch": epochs[1:],
        "polar": {
            name: {"r": r, "phi": phi} for name, (r, phi) in polar.items()
        },
        "polar_k": min(polar_k, len(matrices[0])),
        "settle_t": settle_time(epochs, distances[-1], settle_fraction),
        "settle_fraction": settle_fraction,
    }


RunKey = tuple[tuple[str | None, int, bool | None], float]


def _by_key(kernels: Sequence[Kernel], what: str) -> dict[RunKey, Kernel]:
    """A run's kernels with an epoch by ((phase, class, lin_params),
    epoch); UserError when two share a key (`what` names the folder)."""
    out: dict[RunKey, Kernel] = {}
    for kernel in kernels:
        if kernel.epoch is None:
            continue
        key = series_key(kernel)
        run_key = (
            (key.phase, key.class_index, key.use_linear_params),
            kernel.epoch,
        )
        other = out.setdefault(run_key, kernel)
        if other is not kernel:
            raise UserError(
                f"{other.path} and {kernel.path} are both kernels of "
                f"epoch {kernel.epoch} of class {kernel.class_index} in "
                f"one {what}: a folder must hold one run"
            )
    return out


def _matched(a: dict, b: dict) -> list[tuple[Kernel, Kernel]]:
    """The pairs of kernels of two runs (`_by_key`) under the same key, in
    order of key; UserError when a pair is on different images."""
    matched = []
    for key in sorted(
        set(a) & set(b),
        key=lambda k: (str(k[0][0]), k[0][1], str(k[0][2]), k[1]),
    ):
        if not a[key].same_images(b[key]):
            raise _differ(
                a[key], b[key], f"kernels of class {a[key].class_index}"
            )
        matched.append((a[key], b[key]))
    return matched


def compare_runs(
    run_a: Sequence[Kernel], run_b: Sequence[Kernel]
) -> tuple[list[tuple[Kernel, Kernel]], list[Kernel]]:
    """The kernels of two runs matched by phase, class, lin_params and
    epoch (kernels without an epoch are left out).

    Returns:
      (the matched pairs (a, b) in order of a's series key and epoch, the
      kernels of either run without a match).
    Raises:
      UserError: a run holds two kernels of one key and epoch, a matched
        pair is on different images, or nothing matches.
    """
    a = _by_key(run_a, "--compare folder")
    b = _by_key(run_b, "--compare folder")
    matched = _matched(a, b)
    if not matched:
        raise UserError(
            "the two --compare folders hold no kernels of the same class "
            "and epoch: give the kernel folders of two runs over the same "
            "checkpoints"
        )
    unmatched = [a[k] for k in set(a) - set(b)] + [
        b[k] for k in set(b) - set(a)
    ]
    return matched, unmatched


def replicate_pairs(
    runs: Sequence[Sequence[Kernel]],
) -> list[tuple[int, int, Kernel, Kernel]]:
    """The kernels of replicate runs (the same training but for the seed)
    matched pairwise, as compare_runs matches two runs.

    Args:
      runs: R ≥ 2 runs, each its kernels.
    Returns:
      (i, j, a, b) for every pair of runs i < j and every kernel a of run
      i with a kernel b of run j of the same phase, class, lin_params and
      epoch.
    Raises:
      UserError: a run holds two kernels of one key and epoch, a matched
        pair is on different images (kernels of replicates must be taken
        on the same images: one --dataset_size and --random_seed), or no
        pair of runs has a matched kernel.
    """
    keyed = [_by_key(run, "--replicates folder") for run in runs]
    pairs = []
    for i in range(len(keyed)):
        for j in range(i + 1, len(keyed)):
            pairs += [(i, j, a, b) for a, b in _matched(keyed[i], keyed[j])]
    if not pairs:
        raise UserError(
            "the --replicates folders hold no kernels of the same class and "
            "epoch: give the kernel folders of runs over the same "
            "checkpoints"
        )
    return pairs


def distance_between_seeds(
    distances: Sequence[tuple[Kernel, Kernel, float]],
) -> dict[int, float]:
    """{id(kernel): the mean of S(kernel, K') over the matched kernels K'
    of the other replicate runs} of every kernel of `distances`, the
    (a, b, S(a, b)) of replicate_pairs' pairs."""
    found: dict[int, list[float]] = {}
    for a, b, distance in distances:
        found.setdefault(id(a), []).append(distance)
        found.setdefault(id(b), []).append(distance)
    return {key: float(np.mean(values)) for key, values in found.items()}
