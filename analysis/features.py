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

A feature image starts from a start image (`Start`: grey, every pixel 0.5,
as the original; the mean of the kernel's images; or a constant) and takes
signed-gradient steps, clipped to [0, 1], on the cosine between
∇θ f_c(image) and v: up for the "positive" and "w" images, down for the
"negative" ones. Besides the final image, the image of the best cosine along
the way is kept (highest for positive and w, lowest for negative).

A pixel moves only where the cosine's gradient is non-zero. A ReLU network
whose first-layer channels are all in their flat region for the start image
(a narrow ResNet at the grey start, whose first convolution has no bias)
has an exactly zero gradient inside the image: `zero_gradient_fractions`
measures this before the loop, and `feature_images` warns.

Parameters are handled as one flat float32 vector
(`jax.flatten_util.ravel_pytree`), so features and parameter gradients are
plain (P,) arrays. Images are (H, W, C) as everywhere in this code base and
in the original's output files.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree

import models
import utils
from ntk.kernel_files import KernelFile
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
# More than this fraction of the start image's pixels with an exactly zero
# cosine gradient (for one kind of image) gets a warning.
DEAD_WARNING_FRACTION = 0.5
_TINY = 1e-30

# (flat θ (P,), images (B, H, W, C)) -> logit c of each image, (B,).
LogitFn = Callable[[jax.Array, jax.Array], jax.Array]


# --------------------------------------------------------------------------
# The start image
# --------------------------------------------------------------------------

START_CHOICES = "grey, mean or constant:V with V in [0, 1]"


@dataclasses.dataclass(frozen=True)
class Start:
    """Where every feature image starts.

    kind: 'grey' (every pixel GREY, the original's), 'mean' (the pixel-wise
      mean of the kernel's N images) or 'constant' (every pixel `value`).
    value: the constant's pixel value in [0, 1]; None for the other kinds.
    """

    kind: str = "grey"
    value: float | None = None

    def __str__(self) -> str:
        """The text `parse_start` reads back: 'grey', 'mean', 'constant:V'."""
        return self.kind if self.value is None else f"constant:{self.value:g}"

    def image(self, images: np.ndarray) -> np.ndarray:
        """The start image, float32 (H, W, C) in [0, 1].

        Args:
          images: (N, H, W, C) in [0, 1], the kernel's images.
        """
        images = np.asarray(images)
        if self.kind == "mean":
            return np.mean(images, axis=0, dtype=np.float64).astype(np.float32)
        value = GREY if self.kind == "grey" else self.value
        return np.full(images.shape[1:], value, np.float32)


def parse_start(text: str) -> Start:
    """A --start value: 'grey', 'mean' or 'constant:V' with V in [0, 1].

    Raises:
      UserError: anything else (one line naming the choices).
    """
    if text in ("grey", "mean"):
        return Start(text)
    kind, colon, number = text.partition(":")
    if kind == "constant" and colon:
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is not None and 0.0 <= value <= 1.0:
            return Start("constant", value)
    raise UserError(f"{text!r} is not one of {START_CHOICES}")


# --------------------------------------------------------------------------
# Linear algebra on the kernel
# --------------------------------------------------------------------------


def sorted_eigh(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric kernel, largest eigenvalue first.

    For a positive semi-definite K this is the original's SVD K = U S Vᵀ:
    the same eigenvalues and, for distinct eigenvalues, the same U up to
    the sign of each column. The SVD leaves that sign to LAPACK (it can
    change with the LAPACK build), so it is no convention to reproduce;
    here it is fixed, and it decides which image is "positive" (cosine
    with +v_i raised) and which "negative".

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
    apply_fn: Callable,
    params: models.Params,
    net_state: models.State,
    class_index: int,
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

    def logit_fn(flat: jax.Array, images: jax.Array) -> jax.Array:
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
    total = jnp.zeros((coefficients.shape[1], flat_params.size), jnp.float32)
    for start in range(0, len(images), batch):
        stop = start + batch
        total = _accumulate_features(
            logit_fn,
            total,
            flat_params,
            _pad_rows(images[start:stop], batch),
            _pad_rows(coefficients[start:stop], batch),
        )
    return total


# The compiled functions below take `logit_fn` as a static argument: JAX
# keeps one compilation per function object and shapes, so repeated calls
# with the logit function of one `class_logit_fn` call compile once.


@functools.partial(jax.jit, static_argnames="logit_fn")
def _accumulate_features(
    logit_fn: LogitFn,
    total: jax.Array,
    flat_params: jax.Array,
    images: jax.Array,
    coefficients: jax.Array,
) -> jax.Array:
    """(total (M, P), flat θ, images (B, ...), coefficients (B, M))
    -> total + coefficientsᵀ J_batch."""
    _, pullback = jax.vjp(lambda p: logit_fn(p, images), flat_params)
    (batch_features,) = jax.vmap(pullback)(coefficients.T)
    return total + batch_features


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


def unit_rows(features: jax.Array) -> jax.Array:
    """`features` (M, P) with each row scaled to unit length, float32."""
    features = jnp.asarray(features, jnp.float32)
    norms = jnp.linalg.norm(features, axis=1, keepdims=True)
    return features / jnp.maximum(norms, _TINY)


def zero_gradient_fractions(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    features: jax.Array,
    start_image: np.ndarray,
) -> np.ndarray:
    """For each feature, the fraction of the start image's pixels at which
    ∇x cos(∇θ f_c(x), v) is exactly zero.

    Such pixels do not move in a signed-gradient step. A pixel (h, w)
    counts when its gradient is zero in every channel.

    Args:
      logit_fn, flat_params: from `class_logit_fn`.
      features: (M, P), the v_m (any length).
      start_image: (H, W, C) in [0, 1].
    Returns:
      float64 (M,), each in [0, 1].
    """
    fractions = _zero_gradient_fractions(
        logit_fn,
        flat_params,
        unit_rows(features),
        jnp.asarray(start_image, jnp.float32),
    )
    return np.asarray(fractions, np.float64)


@functools.partial(jax.jit, static_argnames="logit_fn")
def _zero_gradient_fractions(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    units: jax.Array,
    image: jax.Array,
) -> jax.Array:
    """(flat θ, units (M, P), image (H, W, C)) -> (M,) fractions."""
    gradient = jax.grad(
        functools.partial(gradient_cosine, logit_fn, flat_params)
    )
    grads = jax.lax.map(lambda unit: gradient(image, unit), units)
    zero = jnp.all(grads == 0, axis=-1)  # (M, H, W)
    return jnp.mean(zero.astype(jnp.float32), axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class Alignment:
    """What `align_images` returns; M images, T steps.

    images: float32 (M, H, W, C) in [0, 1], after the T-th step.
    cosines: float32 (T + 1, M): row t the cosines after t steps.
    best_images: float32 (M, H, W, C): image m after best_steps[m] steps.
    best_steps: int64 (M,): the first step t at which signs[m] · cosine
      is highest (the highest cosine to raise, the lowest to lower).
    """

    images: np.ndarray
    cosines: np.ndarray
    best_images: np.ndarray
    best_steps: np.ndarray

    @property
    def best_cosines(self) -> np.ndarray:
        """float32 (M,): the cosine of each best image."""
        return self.cosines[self.best_steps, np.arange(len(self.best_steps))]


def align_images(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    features: jax.Array,
    signs: np.ndarray,
    start_image: np.ndarray,
    steps: int,
    step_size: float,
) -> Alignment:
    """Signed-gradient ascent (or descent) of each image's feature cosine.

    Image m starts at `start_image` and takes `steps` steps
    x ← clip(x + step_size · signs[m] · sign(∇x cos(∇θ f_c(x), v_m)), 0, 1),
    keeping the image of its best cosine on the way. The loop is one
    `lax.fori_loop` in one compiled function; within a step the M images
    are taken one after another (`lax.map`), so one per-image parameter
    gradient (P,) is alive at a time. (Vmapping over images makes every
    convolution's per-image weight gradient a grouped convolution: 50 times
    slower on CPU, and it crashes XLA:CPU of jaxlib 0.5.3 for some
    networks.)

    Args:
      logit_fn, flat_params: from `class_logit_fn`.
      features: (M, P), the v_m (any length; only directions matter).
      signs: (M,), +1 to raise a cosine, -1 to lower it.
      start_image: (H, W, C) in [0, 1].
      steps: number of steps (>= 0).
      step_size: per-pixel change of one step, in pixel units.
    """
    images, cosines, best_images, best_steps = _alignment_loop(
        logit_fn,
        steps,
        flat_params,
        unit_rows(features),
        jnp.asarray(signs, jnp.float32),
        jnp.asarray(start_image, jnp.float32),
        jnp.float32(step_size),
    )
    return Alignment(
        images=np.asarray(images),
        cosines=np.asarray(cosines),
        best_images=np.asarray(best_images),
        best_steps=np.asarray(best_steps, np.int64),
    )


@functools.partial(jax.jit, static_argnames=("logit_fn", "steps"))
def _alignment_loop(
    logit_fn: LogitFn,
    steps: int,
    flat_params: jax.Array,
    units: jax.Array,
    signs: jax.Array,
    start: jax.Array,
    step_size: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(flat θ, units (M, P), signs (M,), start (H, W, C), step size)
    -> (images (M, H, W, C), cosines (steps + 1, M), best images
    (M, H, W, C), best steps (M,))."""
    cosine = functools.partial(gradient_cosine, logit_fn, flat_params)
    value_and_grad = jax.value_and_grad(cosine)
    count = units.shape[0]
    per_image = (count,) + (1,) * start.ndim  # broadcasts over pixels
    direction = step_size * signs.reshape(per_image)

    def keep_best(
        t: int | jax.Array,
        images: jax.Array,
        values: jax.Array,
        best: tuple[jax.Array, jax.Array, jax.Array],
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        best_images, best_scores, best_steps = best
        scores = signs * values
        better = scores > best_scores  # ties keep the earlier step
        return (
            jnp.where(better.reshape(per_image), images, best_images),
            jnp.where(better, scores, best_scores),
            jnp.where(better, t, best_steps),
        )

    def step(
        t: jax.Array,
        carry: tuple[
            jax.Array, jax.Array, tuple[jax.Array, jax.Array, jax.Array]
        ],
    ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
        images, history, best = carry
        values, grads = jax.lax.map(
            lambda pair: value_and_grad(*pair), (images, units)
        )
        best = keep_best(t, images, values, best)
        images = jnp.clip(images + direction * jnp.sign(grads), 0.0, 1.0)
        return images, history.at[t].set(values), best

    images = jnp.broadcast_to(start, (count,) + start.shape)
    history = jnp.zeros((steps + 1, count), jnp.float32)
    best = (
        images,
        jnp.full((count,), -jnp.inf, jnp.float32),
        jnp.zeros((count,), jnp.int32),
    )
    images, history, best = jax.lax.fori_loop(
        0, steps, step, (images, history, best)
    )
    final = jax.lax.map(lambda pair: cosine(*pair), (images, units))
    best_images, _, best_steps = keep_best(steps, images, final, best)
    return images, history.at[steps].set(final), best_images, best_steps


# --------------------------------------------------------------------------
# The whole computation
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureImages:
    """Images aligned with the top eigenfeatures and the w feature.

    n = number of eigenvectors, N = kernel size, T = steps; images are
    float32 (H, W, C) in [0, 1].
    pos_images, neg_images: (n, H, W, C), after T steps raising / lowering
      the cosine with v_i = Jᵀ U[:, i].
    w_image: (H, W, C), after T steps raising the cosine with v_w = Jᵀ w.
    best_pos_images, best_neg_images, best_w_image: the same shapes, each
      image at the step of its best cosine (highest for pos and w, lowest
      for neg).
    pos_cosines, neg_cosines: float32 (n, T + 1), the cosine after each step
      (column 0 at the start image, column T the final one).
    w_cosines: float32 (T + 1,).
    best_pos_cosines, best_neg_cosines: float32 (n,); best_w_cosine: float.
    best_pos_steps, best_neg_steps: int64 (n,); best_w_step: int; the first
      step with the best cosine (0 = the start image).
    start: the start, as `parse_start` reads it ('grey', 'mean',
      'constant:V').
    start_image: float32 (H, W, C), the image every run starts from.
    zero_gradient_fractions: {'pos': float64 (n,), 'neg': float64 (n,),
      'w': float}, the fraction of the start image's pixels whose cosine
      gradient is exactly zero (pixels that cannot move at first).
    eigenvalues: float64 (N,), all of K's, descending.
    eigenvectors: float64 (N, n), the U[:, i] used (`sorted_eigh`'s signs).
    w: float64 (N,), (K + εI)⁻¹ y_c.
    jitter: ε, in kernel units.
    feature_sq_norms: float64 (n + 1,), |v_i|² then |v_w|²; |v_i|² ≈ λ_i.
    """

    pos_images: np.ndarray
    neg_images: np.ndarray
    w_image: np.ndarray
    best_pos_images: np.ndarray
    best_neg_images: np.ndarray
    best_w_image: np.ndarray
    pos_cosines: np.ndarray
    neg_cosines: np.ndarray
    w_cosines: np.ndarray
    best_pos_cosines: np.ndarray
    best_neg_cosines: np.ndarray
    best_w_cosine: float
    best_pos_steps: np.ndarray
    best_neg_steps: np.ndarray
    best_w_step: int
    start: str
    start_image: np.ndarray
    zero_gradient_fractions: dict
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    w: np.ndarray
    jitter: float
    feature_sq_norms: np.ndarray

    def as_record(self, **extra) -> dict:
        """The output pickle, in the original's layout: 'pos_images' and
        'neg_images' float64 (n, H, W, C), 'w_image' float64 (H, W, C); the
        best and start images likewise float64; every other field under its
        own name; 'image_layout': 'NHWC', 'targets', and `extra`."""
        record = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
        }
        for name in _IMAGE_FIELDS:
            record[name] = np.asarray(record[name], np.float64)
        record.update(image_layout="NHWC", targets=TARGETS, **extra)
        return record


_IMAGE_FIELDS = (
    "pos_images",
    "neg_images",
    "w_image",
    "best_pos_images",
    "best_neg_images",
    "best_w_image",
    "start_image",
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to make of a kernel (visualize_ntk_features.py's flags).

    n_images: eigenvectors to visualise, 1 <= n_images <= N.
    steps, step_size: of `align_images`.
    batch_size: of `feature_vectors`.
    start: the start image.
    """

    n_images: int
    steps: int
    step_size: float
    batch_size: int
    start: Start = Start()


def feature_images(
    logit_fn: LogitFn,
    flat_params: jax.Array,
    images: np.ndarray,
    kernel: KernelFile,
    settings: Settings,
    warn: Callable[[str], None] = utils.warn,
) -> FeatureImages:
    """The positive, negative and w images of a per-class kernel.

    Before the loop, calls `warn` with one line when more than
    DEAD_WARNING_FRACTION of the start image's pixels have a zero cosine
    gradient for the positive/negative images (on average) or the w image.

    Args:
      logit_fn, flat_params: from `class_logit_fn` for the kernel's class.
      images: (N, H, W, C), the kernel's images in its order.
      kernel: the checked kernel file of logit c (kernel_files.read).
      settings: how many images, how many steps of which size, from which
        start.
      warn: takes the warning's text.
    Raises:
      UserError: the kernel cannot be solved, or |v_i|² differs from λ_i
        (the kernel belongs to other parameters).
    """
    n_images = settings.n_images
    eigenvalues, eigenvectors = sorted_eigh(kernel.kernel)
    targets = one_vs_rest_targets(kernel.labels, kernel.class_index)
    w, jitter = solve_with_jitter(kernel.kernel, targets)
    coefficients = np.column_stack([eigenvectors[:, :n_images], w])
    features = feature_vectors(
        logit_fn, flat_params, images, coefficients, settings.batch_size
    )
    sq_norms = np.asarray(jnp.sum(features * features, axis=1), np.float64)
    check_feature_norms(sq_norms[:n_images], eigenvalues, kernel.path)

    start_image = settings.start.image(images)
    # Positive and negative images share their features, so their pixels.
    fractions = zero_gradient_fractions(
        logit_fn, flat_params, features, start_image
    )
    zero = {
        "pos": fractions[:n_images],
        "neg": fractions[:n_images].copy(),
        "w": float(fractions[-1]),
    }
    message = dead_start_message(zero, settings.start)
    if message:
        warn(message)

    directions = jnp.concatenate([features[:n_images], features])
    signs = np.array([1.0] * n_images + [-1.0] * n_images + [1.0])
    aligned = align_images(
        logit_fn,
        flat_params,
        directions,
        signs,
        start_image,
        settings.steps,
        settings.step_size,
    )
    return _split(
        aligned,
        n_images,
        start=str(settings.start),
        start_image=start_image,
        zero_gradient_fractions=zero,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors[:, :n_images].copy(),
        w=w,
        jitter=jitter,
        feature_sq_norms=sq_norms,
    )


def _split(aligned: Alignment, n_images: int, **fields: Any) -> FeatureImages:
    """FeatureImages of the images aligned with n positive, n negative
    directions and w's, in this order; `fields` its other fields."""
    pos, neg = slice(0, n_images), slice(n_images, -1)
    best_cosines = aligned.best_cosines
    return FeatureImages(
        pos_images=aligned.images[pos],
        neg_images=aligned.images[neg],
        w_image=aligned.images[-1],
        best_pos_images=aligned.best_images[pos],
        best_neg_images=aligned.best_images[neg],
        best_w_image=aligned.best_images[-1],
        pos_cosines=aligned.cosines[:, pos].T.copy(),
        neg_cosines=aligned.cosines[:, neg].T.copy(),
        w_cosines=aligned.cosines[:, -1].copy(),
        best_pos_cosines=best_cosines[pos],
        best_neg_cosines=best_cosines[neg],
        best_w_cosine=float(best_cosines[-1]),
        best_pos_steps=aligned.best_steps[pos],
        best_neg_steps=aligned.best_steps[neg],
        best_w_step=int(aligned.best_steps[-1]),
        **fields,
    )


def dead_start_message(zero_fractions: dict, start: Start) -> str | None:
    """The warning for a start image whose pixels mostly cannot move, or
    None when no kind of image has more than DEAD_WARNING_FRACTION of its
    pixels with a zero gradient.

    Args:
      zero_fractions: {'pos': (n,), 'neg': (n,), 'w': float}, as in
        `FeatureImages.zero_gradient_fractions`.
    """
    per_kind = {
        kind: float(np.mean(zero_fractions[kind]))
        for kind in ("pos", "neg", "w")
    }
    if max(per_kind.values()) <= DEAD_WARNING_FRACTION:
        return None
    fix = (
        "--start constant:V or a wider network"
        if start.kind == "mean"
        else "--start mean (or a wider network)"
    )
    fractions = ", ".join(f"{k} {v:.0%}" for k, v in per_kind.items())
    return (
        f"at the {start} start image, {fractions} of the pixels have an "
        "exactly zero cosine gradient (the first-layer ReLUs they feed are "
        f"off), so they cannot move and the images stay flat: try {fix}"
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
