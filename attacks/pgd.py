"""Projected gradient descent (PGD), the original's attack, in the
L-infinity and L2 norms: for training and for evaluation.

An attack is built from small parts: a norm (its random start inside the
eps-ball, its ascent step and its projection back onto the ball), a loss to
maximise, and the loop. The iterations run in one `jax.lax.fori_loop` and
the restarts in another, so a whole attack on one batch is one traceable
function; callers wrap it in their own `jax.jit`.

Every random draw comes from the `key` passed in. Restart r starts from
`jax.random.fold_in(key, r)`, so restart 0 is the same start whatever the
number of restarts, and more restarts can only make the attack stronger.

Registries, one place each to extend: `NORMS` (name -> Norm), `LOSSES`
(name -> per-example loss) and `EVAL_ATTACKS` (the attacks a run is
evaluated with: name -> AttackConfig factory). The paper's settings are the
`AttackConfig`s made by `train_linf`, `eval_linf` and `eval_l2`; pass one
to `pgd(logits_fn, images, labels, key, config)`. Registered as `PGD`
(`attacks.registry`): `--attack pgd`, whose numbers are the scripts' PGD
flags (an AttackConfig), not a budget.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

import models
from attacks import registry

# Steps of the paper's training and test attacks (run_exp.py's
# --train_pgd_iters and --eval_pgd_iters, eval_and_make_adv.py's
# --pgd_iters, and a grid's, default to them).
TRAIN_ITERS = 20
EVAL_ITERS = 100


def _per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes (B,) `values` to (B, 1, ..., 1) to broadcast against `like`."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def _l2_norms(x: jax.Array) -> jax.Array:
    """L2 norm of each example of (B, ...) `x`, shaped (B, 1, ..., 1)."""
    return jnp.sqrt(
        jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True)
    )


def _nonzero(norms: jax.Array) -> jax.Array:
    """`norms` with zeros replaced by ones, so that dividing by it is safe."""
    return jnp.where(norms > 0, norms, jnp.ones_like(norms))


@dataclasses.dataclass(frozen=True)
class Norm:
    """The three parts of PGD that depend on the norm of the ball.

    random_delta(key, images, eps) -> (B, ...) a uniform random point of
      the eps-ball around the origin, one per example.
    ascent(grad, step_size) -> (B, ...) the step up the loss.
    project(delta, eps) -> (B, ...) delta moved back into the eps-ball.
    title: the norm in prose ('L-inf').
    """

    name: str
    random_delta: Callable[[jax.Array, jax.Array, float], jax.Array]
    ascent: Callable[[jax.Array, float], jax.Array]
    project: Callable[[jax.Array, float], jax.Array]
    title: str


def _linf_random_delta(
    key: jax.Array, images: jax.Array, eps: float
) -> jax.Array:
    """Uniform in the cube [-eps, eps]^d."""
    return jax.random.uniform(
        key, images.shape, images.dtype, minval=-eps, maxval=eps
    )


def _l2_random_delta(
    key: jax.Array, images: jax.Array, eps: float
) -> jax.Array:
    """Uniform in the d-ball: a normalised Gaussian direction times a
    radius eps · U^(1/d)."""
    direction_key, radius_key = jax.random.split(key)
    direction = jax.random.normal(direction_key, images.shape, images.dtype)
    direction = direction / _nonzero(_l2_norms(direction))
    u = jax.random.uniform(radius_key, (images.shape[0],), images.dtype)
    return direction * _per_example(eps * u ** (1.0 / images[0].size), images)


LINF = Norm(
    "linf",
    _linf_random_delta,
    ascent=lambda grad, step_size: step_size * jnp.sign(grad),
    project=lambda delta, eps: jnp.clip(delta, -eps, eps),
    title="L-inf",
)
# A zero gradient gives no step rather than a division by zero.
L2 = Norm(
    "l2",
    _l2_random_delta,
    ascent=lambda grad, step_size: (
        step_size * grad / _nonzero(_l2_norms(grad))
    ),
    project=lambda delta, eps: (
        delta * jnp.minimum(1.0, eps / _nonzero(_l2_norms(delta)))
    ),
    title="L2",
)
NORMS: dict[str, Norm] = {norm.name: norm for norm in (LINF, L2)}


def differentiable(
    logits_fn: Callable[[jax.Array], jax.Array],
) -> Callable[[jax.Array], jax.Array]:
    """`logits_fn` for an attack that differentiates it with respect to
    the images inside its loop: on the CPU its convolutions get input
    gradients in the layout XLA runs fast there (models.canonical_conv;
    five times faster for a ResNet-18's PGD step, the same numbers). The
    attack must not vmap it."""
    return models.with_canonical_input_gradients(logits_fn)


def pick(logits: jax.Array, classes: jax.Array) -> jax.Array:
    """z_c of each example, (B,), for (B, K) logits and (B,) classes c.

    The same numbers as `take_along_axis`, gradient included, but its
    gradient is an elementwise select where take_along_axis's is a
    scatter-add, which XLA runs on the CPU as a loop over the examples
    (with sort's in the DLR loss, a third of an APGD-T step's time there).
    """
    chosen = jax.nn.one_hot(classes, logits.shape[-1], dtype=bool)
    return jnp.sum(jnp.where(chosen, logits, 0.0), axis=-1)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy −log p_y of each example, (B,)."""
    return jax.nn.logsumexp(logits, axis=-1) - pick(logits, labels)


def _margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """CW margin max_{j≠y} z_j − z_y of each example, (B,): positive
    exactly when the example is misclassified."""
    true_logit = pick(logits, labels)
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    best_other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=-1)
    return best_other - true_logit


# (logits (B, K), labels (B,)) -> the loss of each example, maximised.
LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "ce": _cross_entropy,
    "margin": _margin,
}


def _check(norm: str, loss: str, iters: int, restarts: int) -> None:
    """Raises ValueError for an unknown norm or loss, or bad counts."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, not {norm!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, not {loss!r}")
    if not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, not {iters!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1, not {restarts!r}")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The numbers of one PGD attack.

    Attributes:
        norm: a key of NORMS ('linf' or 'l2').
        eps: radius of the ball, in pixel units (pixels lie in [0, 1]).
        step_size: length of one ascent step, in pixel units (per pixel for
            'linf', the whole image's L2 length for 'l2').
        iters: number of ascent steps.
        loss: a key of LOSSES ('ce', softmax cross-entropy, or 'margin').
        restarts: number of independent random starts; the worst case wins.
    """

    norm: str
    eps: float
    step_size: float
    iters: int
    loss: str = "ce"
    restarts: int = 1

    def __post_init__(self) -> None:
        _check(self.norm, self.loss, self.iters, self.restarts)

    def kwargs(self) -> dict:
        """The attack's numbers as a plain dict (for the results files)."""
        return dataclasses.asdict(self)


def _linf(eps_255: float, iters: int) -> AttackConfig:
    """L-inf attack with eps = eps_255 / 255 and step 2 * eps / iters."""
    eps = eps_255 / 255.0
    return AttackConfig(
        norm="linf", eps=eps, step_size=2.0 * eps / iters, iters=iters
    )


def train_linf(eps_255: float, iters: int = TRAIN_ITERS) -> AttackConfig:
    """The attack of adversarial training: L-inf, eps_255 / 255, 20 steps."""
    return _linf(eps_255, iters)


def eval_linf(eps_255: float, iters: int = EVAL_ITERS) -> AttackConfig:
    """The L-inf test attack: eps_255 / 255, 100 steps of 2 * eps / 100."""
    return _linf(eps_255, iters)


def eval_l2(eps_255: float, iters: int = EVAL_ITERS) -> AttackConfig:
    """The L2 test attack: eps = 0.25, step 0.01 (eps_255 is not used: the
    paper's L2 radius does not follow --eps)."""
    del eps_255
    return AttackConfig(norm="l2", eps=0.25, step_size=0.01, iters=iters)


# The attacks a run is evaluated with (run_exp.py --eval_attacks): name ->
# (eps in 1/255 units, iterations) -> AttackConfig.
EVAL_ATTACKS: dict[str, Callable[[float, int], AttackConfig]] = {
    "linf": eval_linf,
    "l2": eval_l2,
}


def _single_start(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    attack: AttackConfig,
) -> jax.Array:
    """PGD from one random start: (B, ...) adversarial images."""
    loss_fn = LOSSES[attack.loss]
    norm = NORMS[attack.norm]
    eps = attack.eps

    def total_loss(adv: jax.Array) -> jax.Array:
        # Examples are independent, so the gradient of the sum gives each
        # example the gradient of its own loss.
        return jnp.sum(loss_fn(logits_fn(adv), labels))

    def body(_: jax.Array, adv: jax.Array) -> jax.Array:
        adv = adv + norm.ascent(jax.grad(total_loss)(adv), attack.step_size)
        # Clipping to [0, 1] after the ball only moves pixels towards the
        # clean image (which lies in [0, 1]), so the result stays inside.
        return jnp.clip(images + norm.project(adv - images, eps), 0.0, 1.0)

    start = jnp.clip(images + norm.random_delta(key, images, eps), 0.0, 1.0)
    return jax.lax.fori_loop(0, attack.iters, body, start)


def _is_better(
    wrong: jax.Array,
    loss: jax.Array,
    best_wrong: jax.Array,
    best_loss: jax.Array,
) -> jax.Array:
    """Per example: misclassified beats classified, then higher loss wins."""
    return (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))


def pgd(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    attack: AttackConfig,
) -> jax.Array:
    """Projected gradient ascent on the loss, inside an eps-ball.

    Traceable: wrap it in `jax.jit` with `attack` closed over (its `norm`,
    `loss`, `iters` and `restarts` fix the traced program; `eps` and
    `step_size` may be traced values).

    Args:
        logits_fn: pure function, (B, H, W, C) float32 images -> (B, K)
            logits (for example a closure over the parameters, with batch
            norm in eval mode). Examples must not interact.
        images: (B, H, W, C) float32 clean images in [0, 1].
        labels: (B,) int true classes.
        key: PRNG key; every random draw comes from it.
        attack: the AttackConfig: the ball (`norm`, `eps` in pixel units,
            e.g. 4/255 for 'linf', 0.25 for 'l2'), the step (`step_size`:
            `x + step_size * sign(g)` for 'linf', `x + step_size * g /
            ||g||_2` per example for 'l2'), `iters` steps, the `loss`
            maximised and `restarts` random starts. Per example the result
            is a misclassified image if any start found one, otherwise the
            one with the highest loss.

    Returns:
        (B, H, W, C) adversarial images in [0, 1] and within eps of
        `images`; no gradient flows back through them.
    """
    loss_fn = LOSSES[attack.loss]
    logits_fn = differentiable(logits_fn)

    def restart(
        r: jax.Array, best: tuple[jax.Array, jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        best_adv, best_wrong, best_loss = best
        adv = _single_start(
            logits_fn, images, labels, jax.random.fold_in(key, r), attack
        )
        logits = logits_fn(adv)
        wrong = jnp.argmax(logits, axis=-1) != labels
        adv_loss = loss_fn(logits, labels).astype(jnp.float32)
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
    best_adv, _, _ = jax.lax.fori_loop(0, attack.restarts, restart, first)
    return jax.lax.stop_gradient(best_adv)


# --attack pgd. Its cost is that of eval_and_make_adv.py's default
# --pgd_iters, which a grid's robustness cells of PGD run.
PGD = registry.register(
    registry.Attack(
        name="pgd",
        title="PGD",
        norms=tuple(NORMS),
        cost=lambda budget: EVAL_ITERS,
    )
)
