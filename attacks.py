"""Projected gradient descent (PGD) attacks in the L-infinity and L2 norms.

An attack is built from four small parts: a random start inside the eps-ball,
a loss to maximise, an ascent step, and a projection back onto the eps-ball
and the [0, 1] pixel box. The iterations run in one `jax.lax.fori_loop` and
the restarts in another, so a whole attack on one batch is one traceable
function; callers wrap it in their own `jax.jit` (or use `make_pgd_fn`).

Every random draw comes from the `key` passed in. Restart r starts from
`jax.random.fold_in(key, r)`, so restart 0 is the same start whatever the
number of restarts, and more restarts can only make the attack stronger.

The settings of the paper are `AttackConfig` values made by `train_linf`,
`eval_linf` and `eval_l2`; pass them on as `pgd(..., **config.kwargs())` or
`make_pgd_fn(logits_fn_of_params, **config.kwargs())`.
"""

import dataclasses

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


def check_choices(norm, loss):
    """Raises ValueError unless `norm` is in NORMS and `loss` in LOSSES."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")


def _check_counts(iters, restarts):
    """Raises ValueError unless ints iters >= 0 and restarts >= 1."""
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, not {iters!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, not {restarts!r}")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The numbers of one PGD attack.

    Attributes:
        norm: 'linf' or 'l2'.
        eps: radius of the ball, in pixel units (pixels lie in [0, 1]).
        step_size: length of one ascent step, in pixel units (per pixel for
            'linf', the whole image's L2 length for 'l2').
        iters: number of ascent steps.
        loss: 'ce' (softmax cross-entropy) or 'margin' (CW margin).
        restarts: number of independent random starts; the worst case wins.
    """

    norm: str
    eps: float
    step_size: float
    iters: int
    loss: str = "ce"
    restarts: int = 1

    def __post_init__(self):
        check_choices(self.norm, self.loss)
        _check_counts(self.iters, self.restarts)

    def kwargs(self):
        """The keyword arguments of `pgd` (and `make_pgd_fn`), as a dict."""
        return dataclasses.asdict(self)


def _linf(eps_255, iters):
    """L-inf attack with eps = eps_255 / 255 and step 2 * eps / iters."""
    eps = eps_255 / 255.0
    return AttackConfig(
        norm="linf", eps=eps, step_size=2.0 * eps / iters, iters=iters
    )


def train_linf(eps_255, iters=20):
    """The attack of adversarial training: L-inf, eps_255 / 255, 20 steps."""
    return _linf(eps_255, iters)


def eval_linf(eps_255, iters=100):
    """The L-inf test attack: eps_255 / 255, 100 steps of 2 * eps / 100."""
    return _linf(eps_255, iters)


def eval_l2(iters=100):
    """The L2 test attack: eps = 0.25, step 0.01."""
    return AttackConfig(norm="l2", eps=0.25, step_size=0.01, iters=iters)


def accuracy_counts(logits, labels):
    """Number of correct predictions.

    Args:
        logits: (B, K) float.
        labels: (B,) int class indices.

    Returns:
        int32 scalar: how many rows have their argmax equal to the label.
    """
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32)


def _per_example_loss(logits, labels, loss):
    """The attack's loss of each example, (B,) float; the attack maximises it.

    'ce': softmax cross-entropy -log p_y. 'margin': max_{j != y} z_j - z_y,
    positive exactly when the example is misclassified.
    """
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    if loss == "ce":
        return jax.nn.logsumexp(logits, axis=-1) - true_logit
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    best_other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
    return best_other - true_logit


def _per_example(values, like):
    """Reshapes (B,) `values` to (B, 1, ..., 1) to broadcast against `like`."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def _l2_norms(x):
    """L2 norm of each example of (B, ...) `x`, shaped (B, 1, ..., 1)."""
    return jnp.sqrt(
        jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True)
    )


def _nonzero(norms):
    """`norms` with zeros replaced by ones, so that dividing by it is safe."""
    return jnp.where(norms > 0, norms, jnp.ones_like(norms))


def _random_start(key, images, eps, norm):
    """A uniform random point of the eps-ball around each image, in [0, 1].

    Args:
        key: PRNG key.
        images: (B, ...) float clean images in [0, 1].
        eps: radius in pixel units.
        norm: 'linf' (uniform in the cube) or 'l2' (uniform in the ball).

    Returns:
        (B, ...) images, same dtype, clipped to [0, 1].
    """
    if norm == "linf":
        delta = jax.random.uniform(
            key, images.shape, images.dtype, minval=-eps, maxval=eps
        )
    else:
        direction_key, radius_key = jax.random.split(key)
        direction = jax.random.normal(
            direction_key, images.shape, images.dtype
        )
        direction = direction / _nonzero(_l2_norms(direction))
        dim = images[0].size
        # A radius of eps * U^(1/d) makes the point uniform in the d-ball.
        u = jax.random.uniform(radius_key, (images.shape[0],), images.dtype)
        delta = direction * _per_example(eps * u ** (1.0 / dim), images)
    return jnp.clip(images + delta, 0.0, 1.0)


def _ascent_step(adv, grad, step_size, norm):
    """One step up the loss: gradient sign (L-inf) or direction (L2).

    A zero gradient (L2) gives no step rather than a division by zero.
    """
    if norm == "linf":
        return adv + step_size * jnp.sign(grad)
    return adv + step_size * grad / _nonzero(_l2_norms(grad))


def _project(adv, images, eps, norm):
    """Moves `adv` back into the eps-ball around `images`, then into [0, 1].

    Clipping to [0, 1] after the ball only moves pixels towards the clean
    image (which lies in [0, 1]), so the result stays inside the ball.
    """
    delta = adv - images
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    else:
        delta = delta * jnp.minimum(1.0, eps / _nonzero(_l2_norms(delta)))
    return jnp.clip(images + delta, 0.0, 1.0)


def _single_start(
    logits_fn, images, labels, key, eps, step_size, iters, norm, loss
):
    """PGD from one random start: (B, ...) adversarial images."""

    def total_loss(adv):
        # Examples are independent, so the gradient of the sum gives each
        # example the gradient of its own loss.
        return jnp.sum(_per_example_loss(logits_fn(adv), labels, loss))

    def body(_, adv):
        grad = jax.grad(total_loss)(adv)
        adv = _ascent_step(adv, grad, step_size, norm)
        return _project(adv, images, eps, norm)

    start = _random_start(key, images, eps, norm)
    return jax.lax.fori_loop(0, iters, body, start)


def _is_better(wrong, loss, best_wrong, best_loss):
    """Per example: misclassified beats classified, then higher loss wins."""
    return (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))


def pgd(
    logits_fn,
    images,
    labels,
    key,
    *,
    eps,
    step_size,
    iters,
    norm="linf",
    loss="ce",
    restarts=1,
):
    """Projected gradient ascent on the loss, inside an eps-ball.

    Traceable: wrap it in `jax.jit` with `norm`, `loss`, `iters` and
    `restarts` fixed (closed over); `eps` and `step_size` may be traced.

    Args:
        logits_fn: pure function, (B, H, W, C) float32 images -> (B, K)
            logits (for example a closure over the parameters, with batch
            norm in eval mode). Examples must not interact.
        images: (B, H, W, C) float32 clean images in [0, 1].
        labels: (B,) int true classes.
        key: PRNG key; every random draw comes from it.
        eps: radius of the ball per example, in pixel units (e.g. 4/255 for
            'linf', 0.25 for 'l2').
        step_size: step length in pixel units: `x + step_size * sign(g)`
            for 'linf', `x + step_size * g / ||g||_2` per example for 'l2'.
        iters: number of steps (a Python int).
        norm: 'linf' or 'l2'.
        loss: 'ce' (softmax cross-entropy) or 'margin'
            (max_{j != y} z_j - z_y).
        restarts: number of random starts (a Python int >= 1). Per example
            the result is a misclassified image if any start found one,
            otherwise the one with the highest loss.

    Returns:
        (B, H, W, C) adversarial images in [0, 1] and within eps of
        `images`; no gradient flows back through them.

    Raises:
        ValueError: for an unknown norm or loss, or bad iters / restarts.
    """
    check_choices(norm, loss)
    _check_counts(iters, restarts)

    def restart(r, best):
        best_adv, best_wrong, best_loss = best
        adv = _single_start(
            logits_fn,
            images,
            labels,
            jax.random.fold_in(key, r),
            eps,
            step_size,
            iters,
            norm,
            loss,
        )
        logits = logits_fn(adv)
        wrong = jnp.argmax(logits, axis=-1) != labels
        adv_loss = _per_example_loss(logits, labels, loss).astype(jnp.float32)
        take = (r == 0) | _is_better(wrong, adv_loss, best_wrong, best_loss)
        return (
            jnp.where(_per_example(take, adv), adv, best_adv),
            jnp.where(take, wrong, best_wrong),
            jnp.where(take, adv_loss, best_loss),
        )

    batch = images.shape[0]
    first = (
        images,
        jnp.zeros((batch,), bool),
        jnp.full((batch,), -jnp.inf, jnp.float32),
    )
    best_adv, _, _ = jax.lax.fori_loop(0, restarts, restart, first)
    return jax.lax.stop_gradient(best_adv)


def make_pgd_fn(logits_fn_of_params, **attack_kwargs):
    """A compiled attack: `fn(params, images, labels, key) -> adv_images`.

    Args:
        logits_fn_of_params: `(params, images) -> logits`, pure; `params`
            may be any pytree (e.g. `(params, net_state)` for a Haiku model
            with state).
        **attack_kwargs: the keyword arguments of `pgd` (eps, step_size,
            iters, norm, loss, restarts), e.g. `**config.kwargs()`. They are
            checked now and fixed into the compiled function.

    Returns:
        A `jax.jit` function; it compiles once per input shape and dtype.
    """
    check_choices(
        attack_kwargs.get("norm", "linf"), attack_kwargs.get("loss", "ce")
    )
    _check_counts(attack_kwargs.get("iters"), attack_kwargs.get("restarts", 1))

    def attack(params, images, labels, key):
        def logits_fn(x):
            return logits_fn_of_params(params, x)

        return pgd(logits_fn, images, labels, key, **attack_kwargs)

    return jax.jit(attack)
