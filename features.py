"""Images that align a network's parameter gradient with NTK eigenfeatures.

Take the per-class kernel K = J Jᵀ of logit c on N training images, where
row j of J (N, P) is ∇θ f_c(x_j) over all P trainable parameters (batch norm
in eval mode). A coefficient vector a (N,) names the parameter-space feature

    v = Jᵀ a = Σ_j a_j ∇θ f_c(x_j),

computed as one vector-Jacobian product per batch of images, never forming
J. Two kinds of coefficients are used:

* a = U[:, i], the i-th eigenvector of K (eigenvalues in descending order),
  for which |v|² = λ_i;
* a = w = K⁻¹ y_c, the kernel-regression weights of the one-vs-rest targets
  y_c (1 for the images of class c, 0 for the others): v_w is the direction
  in which kernel regression on these targets moves θ.

A feature image starts grey (every pixel 0.5) and takes signed-gradient
steps, clipped to [0, 1], on the cosine between ∇θ f_c(image) and v: up for
the "positive" and "w" images, down for the "negative" ones.

Parameters are handled as one flat float32 vector
(`jax.flatten_util.ravel_pytree`), so features and parameter gradients are
plain (P,) arrays. Images are (H, W, C) as everywhere in this code base;
`FeatureImages.as_record` turns them into the (C, H, W) of the output files.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree

from kernel_files import KernelFile
from utils import UserError

GREY = 0.5
TARGETS = "one_vs_rest_0_1"  # y_c[j] = 1 if labels[j] == c else 0
# Jitter of the Cholesky solve of K w = y, relative to the mean of K's
# diagonal: where it starts, how much it grows per failed try, and where it
# stops (a kernel that needs more is not a kernel of gradients).
INITIAL_JITTER = 1e-6
JITTER_GROWTH = 10.0
MAX_JITTER = 0.1
# |v_i|² must match λ_i to this fraction of λ_0, or the kernel file does not
# belong to the network (another checkpoint, or params vs lin_params).
NORM_TOLERANCE = 0.05
_TINY = 1e-30

# (flat θ (P,), images (B, H, W, C)) -> logit c of each image, (B,).
LogitFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------
# Linear algebra on the kernel
# --------------------------------------------------------------------------


def sorted_eigh(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric kernel, largest eigenvalue first.

    Args:
      kernel: (N, N) symmetric.
    Returns:
      eigenvalues: float64 (N,), descending.
      eigenvectors: float64 (N, N), column i of unit length for eigenvalue
        i, its sign chosen so that its largest-magnitude entry is positive.
    """
    values, vectors = np.linalg.eigh(np.asarray(kernel, np.float64))
    values, vectors = values[::-1], vectors[:, ::-1]
    peaks = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(len(values))]
    vectors = vectors * np.where(peaks < 0, -1.0, 1.0)
    return values.copy(), np.ascontiguousarray(vectors)


def one_vs_rest_targets(labels: np.ndarray, class_index: int) -> np.ndarray:
    """y_c: float64 (N,), 1 where labels == class_index and 0 elsewhere."""
    return (np.asarray(labels) == class_index).astype(np.float64)


def solve_with_jitter(
    kernel: np.ndarray,
    targets: np.ndarray,
    initial_jitter: float = INITIAL_JITTER,
    growth: float = JITTER_GROWTH,
    max_jitter: float = MAX_JITTER,
) -> tuple[np.ndarray, float]:
    """w = (K + εI)⁻¹ y by Cholesky, with the smallest jitter ε that works.

    ε starts at `initial_jitter` times the mean of K's diagonal and is
    multiplied by `growth` until the Cholesky factorisation succeeds, up to
    `max_jitter` times that mean.

    Args:
      kernel: (N, N) symmetric positive semi-definite.
      targets: (N,) or (N, M).
    Returns:
      w: float64, the shape of `targets`.
      jitter: ε, in the kernel's units.
    Raises:
      UserError: the diagonal's mean is not positive, or every jitter up to
        the largest fails (the kernel is far from positive semi-definite).
    """
    kernel = np.asarray(kernel, np.float64)
    scale = float(np.mean(np.diag(kernel)))
    if not scale > 0:
        raise UserError(
            f"the kernel's diagonal has mean {scale:.3g}, so it "
            "is not a kernel of gradients: recompute it"
        )
    jitter, largest = initial_jitter * scale, max_jitter * scale
    identity = np.eye(len(kernel))
    while jitter <= largest * (1 + 1e-9):  # allow for rounding in the growth
        try:
            factor = scipy.linalg.cho_factor(
                kernel + jitter * identity, lower=True, check_finite=False
            )
        except np.linalg.LinAlgError:
            jitter *= growth
            continue
        return scipy.linalg.cho_solve(factor, targets), jitter
    raise UserError(
        f"the kernel is not positive semi-definite: Cholesky "
        f"failed with jitter up to {largest:.3g}; recompute it"
    )


# --------------------------------------------------------------------------
# Parameter-space features
# --------------------------------------------------------------------------


def class_logit_fn(
    apply_fn: Callable, params, net_state, class_index: int
) -> tuple[jax.Array, LogitFn]:
    """Logit `class_index` as a function of the flat parameters.

    Args:
      apply_fn: a model's `apply(params, state, rng, images, is_training)`.
      params: the parameter tree θ.
      net_state: batch-norm state, used in eval mode and never changed.
    Returns:
      flat_params: float32 (P,), θ flattened by `ravel_pytree`.
      logit_fn: (flat θ (P,), images (B, H, W, C)) -> (B,) logits of class
        `class_index`.
    """
    flat_params, unravel = ravel_pytree(params)

    def logit_fn(flat, images):
        logits, _ = apply_fn(unravel(flat), net_state, None, images, False)
        return logits[:, class_index]

    return flat_params, logit_fn


def feature_vectors(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    images: np.ndarray,
    coefficients: np.ndarray,
    batch_size: int,
) -> jax.Array:
    """The features Jᵀ A, one per column of A, without forming J.

    Per batch of images, one `jax.vjp` of the batch's logits, whose pullback
    is vmapped over the M cotangent columns; the batches' sums add up. All
    batches have `batch_size` images (the last is padded with zero images
    of zero coefficient), so one compiled function serves every batch.

    Args:
      logit_fn, flat_params: from `class_logit_fn`; P parameters.
      images: (N, H, W, C), the kernel's images.
      coefficients: (N, M), column m the coefficients a of feature m.
      batch_size: images per VJP; memory grows with batch_size × M.
    Returns:
      float32 (M, P): row m is Σ_j A[j, m] ∇θ f_c(x_j).
    """
    images = np.asarray(images, np.float32)
    coefficients = np.asarray(coefficients, np.float32)
    batch = min(batch_size, len(images))
    accumulate = _accumulate_features_fn(logit_fn)
    total = jnp.zeros((coefficients.shape[1], flat_params.size), jnp.float32)
    for start in range(0, len(images), batch):
        stop = start + batch
        total = accumulate(
            total,
            flat_params,
            _pad_rows(images[start:stop], batch),
            _pad_rows(coefficients[start:stop], batch),
        )
    return total


def _accumulate_features_fn(logit_fn: LogitFn) -> Callable:
    """Compiled (total (M, P), flat θ, images (B, ...), coefficients (B, M))
    -> total + coefficientsᵀ J_batch."""

    @jax.jit
    def accumulate(total, flat_params, images, coefficients):
        _, pullback = jax.vjp(lambda p: logit_fn(p, images), flat_params)
        (batch_features,) = jax.vmap(pullback)(coefficients.T)
        return total + batch_features

    return accumulate


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` (n, ...) with zero rows appended up to `rows`."""
    padding = [(0, rows - len(array))] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


# --------------------------------------------------------------------------
# Images aligned with a feature
# --------------------------------------------------------------------------


def gradient_cosine(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    image: jax.Array,
    unit_feature: jax.Array,
) -> jax.Array:
    """cos(∇θ f_c(image), v) for a unit-length v.

    Args:
      image: (H, W, C), one image.
      unit_feature: (P,), |v| = 1.
    Returns:
      scalar in [-1, 1].
    """
    gradient = jax.grad(lambda p: logit_fn(p, image[None])[0])(flat_params)
    norm = jnp.sqrt(jnp.maximum(jnp.vdot(gradient, gradient), _TINY))
    return jnp.vdot(gradient, unit_feature) / norm


def align_images(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    features: jax.Array,
    signs: np.ndarray,
    start_image: np.ndarray,
    steps: int,
    step_size: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Signed-gradient ascent (or descent) of each image's feature cosine.

    Image m starts at `start_image` and takes `steps` steps
    x ← clip(x + step_size · signs[m] · sign(∇x cos(∇θ f_c(x), v_m)), 0, 1).
    The loop is one `lax.fori_loop` in one compiled function; within a
    step the M images are taken one after another (`lax.map`), so one
    per-image parameter gradient (P,) is alive at a time. (Vmapping over
    images makes every convolution's per-image weight gradient a grouped
    convolution: 50 times slower on CPU, and it crashes XLA:CPU of jaxlib
    0.5.3 for some networks.)

    Args:
      logit_fn, flat_params: from `class_logit_fn`.
      features: (M, P), the v_m (any length; only directions matter).
      signs: (M,), +1 to raise a cosine, -1 to lower it.
      start_image: (H, W, C) in [0, 1].
      steps: number of steps (>= 0).
      step_size: per-pixel change of one step, in pixel units.
    Returns:
      images: float32 (M, H, W, C) in [0, 1].
      cosines: float32 (steps + 1, M): row t the cosines after t steps.
    """
    features = jnp.asarray(features, jnp.float32)
    norms = jnp.linalg.norm(features, axis=1, keepdims=True)
    units = features / jnp.maximum(norms, _TINY)
    run = _alignment_loop(logit_fn, steps)
    images, cosines = run(
        flat_params,
        units,
        jnp.asarray(signs, jnp.float32),
        jnp.asarray(start_image, jnp.float32),
        jnp.float32(step_size),
    )
    return np.asarray(images), np.asarray(cosines)


def _alignment_loop(logit_fn: LogitFn, steps: int) -> Callable:
    """Compiled (flat θ, units (M, P), signs (M,), start (H, W, C), step)
    -> (images (M, H, W, C), cosines (steps + 1, M))."""

    @jax.jit
    def run(flat_params, units, signs, start, step_size):
        cosine = functools.partial(gradient_cosine, logit_fn, flat_params)
        value_and_grad = jax.value_and_grad(cosine)
        count = units.shape[0]
        direction = step_size * signs.reshape((count,) + (1,) * start.ndim)

        def step(t, carry):
            images, history = carry
            values, grads = jax.lax.map(
                lambda pair: value_and_grad(*pair), (images, units)
            )
            images = jnp.clip(images + direction * jnp.sign(grads), 0.0, 1.0)
            return images, history.at[t].set(values)

        images = jnp.broadcast_to(start, (count,) + start.shape)
        history = jnp.zeros((steps + 1, count), jnp.float32)
        images, history = jax.lax.fori_loop(0, steps, step, (images, history))
        final = jax.lax.map(lambda pair: cosine(*pair), (images, units))
        return images, history.at[steps].set(final)

    return run


# --------------------------------------------------------------------------
# The whole computation
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureImages:
    """Images aligned with the top eigenfeatures and the w feature.

    n = number of eigenvectors, N = kernel size, T = steps; images (H, W, C).
    pos_images, neg_images: float32 (n, H, W, C), raising / lowering the
      cosine with v_i = Jᵀ U[:, i].
    w_image: float32 (H, W, C), raising the cosine with v_w = Jᵀ w.
    pos_cosines, neg_cosines: float32 (n, T + 1), the cosine after each step
      (column 0 at the grey start, column T the final one).
    w_cosines: float32 (T + 1,).
    eigenvalues: float64 (N,), all of K's, descending.
    eigenvectors: float64 (N, n), the U[:, i] used.
    w: float64 (N,), (K + εI)⁻¹ y_c.
    jitter: ε, in kernel units.
    feature_sq_norms: float64 (n + 1,), |v_i|² then |v_w|²; |v_i|² ≈ λ_i.
    """

    pos_images: np.ndarray
    neg_images: np.ndarray
    w_image: np.ndarray
    pos_cosines: np.ndarray
    neg_cosines: np.ndarray
    w_cosines: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    w: np.ndarray
    jitter: float
    feature_sq_norms: np.ndarray

    def as_record(self, **extra) -> dict:
        """The output pickle: the original's keys 'pos_images' (n, C, H, W),
        'neg_images' (n, C, H, W) and 'w_image' (C, H, W), every other field
        under its own name, 'image_layout': 'NCHW', 'targets', and `extra`."""
        record = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
        }
        record["pos_images"] = _channels_first(self.pos_images)
        record["neg_images"] = _channels_first(self.neg_images)
        record["w_image"] = _channels_first(self.w_image[None])[0]
        record.update(image_layout="NCHW", targets=TARGETS, **extra)
        return record


def _channels_first(images: np.ndarray) -> np.ndarray:
    """(n, H, W, C) -> C-contiguous float32 (n, C, H, W)."""
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)), np.float32)


def feature_images(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    images: np.ndarray,
    kernel: KernelFile,
    n_images: int,
    steps: int,
    step_size: float,
    batch_size: int,
) -> FeatureImages:
    """The positive, negative and w images of a per-class kernel.

    Args:
      logit_fn, flat_params: from `class_logit_fn` for the kernel's class.
      images: (N, H, W, C), the kernel's images in its order.
      kernel: the checked kernel file of logit c (kernel_files.read).
      n_images: eigenvectors to visualise, 1 <= n_images <= N.
      steps, step_size: of `align_images`.
      batch_size: of `feature_vectors`.
    Raises:
      UserError: the kernel cannot be solved, or |v_i|² differs from λ_i
        (the kernel belongs to other parameters).
    """
    eigenvalues, eigenvectors = sorted_eigh(kernel.kernel)
    targets = one_vs_rest_targets(kernel.labels, kernel.class_index)
    w, jitter = solve_with_jitter(kernel.kernel, targets)
    coefficients = np.column_stack([eigenvectors[:, :n_images], w])
    features = feature_vectors(
        logit_fn, flat_params, images, coefficients, batch_size
    )
    sq_norms = np.asarray(jnp.sum(features * features, axis=1), np.float64)
    check_feature_norms(sq_norms[:n_images], eigenvalues, kernel.path)
    directions = jnp.concatenate([features[:n_images], features])
    signs = np.array([1.0] * n_images + [-1.0] * n_images + [1.0])
    start = np.full(images.shape[1:], GREY, np.float32)
    aligned, cosines = align_images(
        logit_fn, flat_params, directions, signs, start, steps, step_size
    )
    return FeatureImages(
        pos_images=aligned[:n_images],
        neg_images=aligned[n_images:-1],
        w_image=aligned[-1],
        pos_cosines=cosines[:, :n_images].T.copy(),
        neg_cosines=cosines[:, n_images:-1].T.copy(),
        w_cosines=cosines[:, -1].copy(),
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors[:, :n_images].copy(),
        w=w,
        jitter=jitter,
        feature_sq_norms=sq_norms,
    )


def check_feature_norms(
    sq_norms: np.ndarray,
    eigenvalues: np.ndarray,
    path: str,
    tolerance: float = NORM_TOLERANCE,
) -> None:
    """Raises UserError unless |v_i|² = λ_i within tolerance × λ_0.

    Args:
      sq_norms: (n,), |Jᵀ U[:, i]|² for the first n eigenvectors.
      eigenvalues: (N,) descending, N >= n.
    """
    top = eigenvalues[0]
    error = np.max(np.abs(sq_norms - eigenvalues[: len(sq_norms)]))
    if not top > 0 or not error <= tolerance * top:
        raise UserError(
            f"{path} is not the kernel of this network: the squared norms "
            f"of J^T u differ from its eigenvalues by {error:.3g} (top "
            f"eigenvalue {top:.3g}); "
            "check --model_path and --use_linear_params"
        )
