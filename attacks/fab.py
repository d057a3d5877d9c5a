"""Targeted FAB (FAB-T) of Croce & Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack" (ICML 2020).

FAB looks for the smallest perturbation that changes the class. At the
current point x it linearises the decision boundary between the true class
y and a target t, g(x + δ) ≈ g(x) + ⟨∇g(x), δ⟩ with g = z_t − z_y, and
projects onto that hyperplane within the box [0, 1]: δ = the smallest
(L-inf or L2) perturbation with g(x) + ⟨∇g, δ⟩ = 0 and x + δ in [0, 1],
and δ_orig the same from the clean image. The next point mixes both,
extrapolated by η:

    x ← clip((1 − α)(x + η δ) + α (x_orig + η δ_orig)),
    α = min(‖δ‖ / (‖δ‖ + ‖δ_orig‖), α_max),

and, whenever it is misclassified, it is remembered if it is the closest
yet and pulled back towards the clean image: x ← (1 − β) x_orig + β x.
An example counts as broken only where the closest point found lies
within eps. `fab_t` runs FAB once per target among the top `n_targets`
wrong classes of the clean logits (from the clean image first, from random
points near it on further restarts). Traceable, like the other attacks.
Registered as `FAB_T` (`attacks.registry`), with its budget fields.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from attacks import common, registry
from attacks.apgd import N_TARGETS, best_of_runs
from attacks.common import AttackResult, LogitsFn
from attacks.pgd import differentiable


@dataclasses.dataclass(frozen=True)
class FABConfig:
    """The settings of FAB-T; the defaults are the standard AutoAttack's.

    Attributes:
        norm: 'linf' or 'l2'.
        iters: steps per run.
        restarts: runs per target; run 0 starts at the clean image.
        n_targets: target classes.
        alpha_max: the most weight the clean image's projection gets.
        eta: extrapolation of the projections (> 1 overshoots the plane).
        beta: the backward step towards the clean image after a success.
    """

    norm: str = "linf"
    iters: int = 100
    restarts: int = 1
    n_targets: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def __post_init__(self) -> None:
        common.check_norm(self.norm)
        for name in ("iters", "restarts", "n_targets"):
            registry.check_positive(name, getattr(self, name))


def project_onto_plane(
    x: jax.Array,
    w: jax.Array,
    r: jax.Array,
    norm: str,
    newton_steps: int = 6,
) -> jax.Array:
    """The smallest δ with ⟨w, δ⟩ = r and x + δ in [0, 1], per example.

    With s = sign(r), every minimiser moves each pixel in direction
    s·sign(w_i), at most c_i (to the box's edge), by min(t·a_i, c_i) with
    a_i = 1 for 'linf' and |w_i| for 'l2' (the KKT conditions). The
    progress G(t) = Σ |w_i| min(t a_i, c_i) is concave, increasing and
    piecewise linear in t, so Newton's method from t = 0 (with G's slope
    to the right) climbs to the t with G(t) = |r| from below without
    overshooting, exactly once it reaches the root's linear piece; each
    step passes at least one kink. (Sorting the kinks would be exact at
    once but is slow on the CPU.) Where even the box's corner falls short
    of |r|, the corner is returned (the most progress the box allows).

    Args:
        x: (B, ...) points in [0, 1].
        w: (B, ...) normals of the planes.
        r: (B,) the wanted ⟨w, δ⟩.
        norm: 'linf' or 'l2'.
        newton_steps: Newton steps; fewer stop short of the plane.

    Returns:
        (B, ...) δ.
    """
    batch = x.shape[0]
    flat_x, flat_w = x.reshape(batch, -1), w.reshape(batch, -1)
    direction = jnp.sign(flat_w) * jnp.sign(r)[:, None]
    weight = jnp.abs(flat_w)
    cap = jnp.where(direction > 0, 1.0 - flat_x, flat_x)
    rate = jnp.ones_like(weight) if norm == "linf" else weight
    moving = weight > 0
    kink = jnp.where(moving, cap / jnp.where(moving, rate, 1.0), 0.0)
    need = jnp.abs(r)

    def newton(_: int, t: jax.Array) -> jax.Array:
        free = kink > t[:, None]
        progress = jnp.sum(
            weight * jnp.where(free, t[:, None] * rate, cap), axis=1
        )
        slope = jnp.sum(jnp.where(free, weight * rate, 0.0), axis=1)
        step = (need - progress) / jnp.where(slope > 0, slope, 1.0)
        return jnp.where((slope > 0) & (progress < need), t + step, t)

    t = jax.lax.fori_loop(0, newton_steps, newton, jnp.zeros_like(need))
    corner = jnp.sum(weight * cap, axis=1)
    t = jnp.where(corner <= need, jnp.inf, t)
    step = jnp.where(moving, jnp.minimum(t[:, None] * rate, cap), 0.0)
    return (direction * step).reshape(x.shape)


class _Found(NamedTuple):
    """The current point of a FAB run and the closest success so far."""

    x: jax.Array
    best: jax.Array
    best_norm: jax.Array


def _record(
    logits_fn: LogitsFn,
    x: jax.Array,
    found: _Found,
    images: jax.Array,
    labels: jax.Array,
    config: FABConfig,
) -> _Found:
    """Keeps `x` where it is misclassified and closer than the best so far,
    and there steps back towards the clean images by beta."""
    wrong = common.misclassified(logits_fn(x), labels)
    distance = common.norms(x - images, config.norm)
    closer = wrong & (distance < found.best_norm)
    back = (1.0 - config.beta) * images + config.beta * x
    where = lambda m, a, b: jnp.where(common.per_example(m, a), a, b)
    return _Found(
        x=where(wrong, back, x),
        best=where(closer, x, found.best),
        best_norm=jnp.where(closer, distance, found.best_norm),
    )


def _fab_step(
    logits_fn: LogitsFn,
    found: _Found,
    images: jax.Array,
    labels: jax.Array,
    target: jax.Array,
    config: FABConfig,
) -> _Found:
    """One FAB step: project onto the linearised boundary between the true
    class and `target`, from the current point and from the clean image."""

    def gap(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = logits_fn(x)
        g = common.true_logit(logits, target) - common.true_logit(
            logits, labels
        )
        return jnp.sum(g), g

    (_, g), w = jax.value_and_grad(gap, has_aux=True)(found.x)
    flat = lambda a: a.reshape(a.shape[0], -1)
    shift = jnp.sum(flat(w) * flat(images - found.x), axis=1)
    delta = project_onto_plane(found.x, w, -g, config.norm)
    delta_orig = project_onto_plane(images, w, -(g + shift), config.norm)
    size = common.norms(delta, config.norm)
    size_orig = common.norms(delta_orig, config.norm)
    total = size + size_orig
    alpha = jnp.minimum(
        jnp.where(total > 0, size / jnp.where(total > 0, total, 1), 0),
        config.alpha_max,
    )
    alpha = common.per_example(alpha, images)
    x = (1.0 - alpha) * (found.x + config.eta * delta) + alpha * (
        images + config.eta * delta_orig
    )
    x = jnp.clip(x, 0.0, 1.0)
    return _record(logits_fn, x, found, images, labels, config)


def _fab_run(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    target: jax.Array,
    start: jax.Array,
    config: FABConfig,
) -> _Found:
    """One FAB run towards `target` from `start`."""
    batch = images.shape[0]
    found = _Found(start, images, jnp.full((batch,), jnp.inf, images.dtype))
    found = _record(logits_fn, start, found, images, labels, config)
    return jax.lax.fori_loop(
        0,
        config.iters,
        lambda _, f: _fab_step(logits_fn, f, images, labels, target, config),
        found,
    )


def fab_t(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    config: FABConfig = FABConfig(),
) -> AttackResult:
    """Targeted FAB: for each of the `config.n_targets` wrong classes of
    highest clean logit, highest first, `config.restarts` runs (the first
    from the clean image, the others from a random point of the
    eps/2-ball); stops once every example is broken.

    Args:
        logits_fn, images, labels, key: as `attacks.apgd.apgd_ce`'s.
        eps: an example is broken only by a point within eps.
        config: norm, iterations, restarts and FAB's alpha_max, eta, beta.

    Returns:
        AttackResult: per example the closest misclassified point found
        where it lies within eps (success), else the clean image.
    """
    keys = common.example_keys(key, images.shape[0])
    logits_fn = differentiable(logits_fn)
    chosen = common.targets(logits_fn(images), labels, config.n_targets)

    def run(j: jax.Array) -> AttackResult:
        restart = j % config.restarts
        start = jnp.where(
            restart == 0,
            images,
            common.random_in_ball(
                common.fold_keys(keys, j), images, eps / 2, config.norm
            ),
        )
        target = chosen[:, j // config.restarts]
        found = _fab_run(logits_fn, images, labels, target, start, config)
        success = found.best_norm <= eps
        adv = jnp.where(
            common.per_example(success, images), found.best, images
        )
        return AttackResult(adv, success)

    return best_of_runs(run, config.n_targets * config.restarts)


# The budget fields of FAB-T (and apgd.N_TARGETS): at most a thousand
# times the standard version's steps and restarts.
FAB_ITERS = registry.BudgetField("fab_iters", 100, 100_000)
FAB_RESTARTS = registry.BudgetField("fab_restarts", 1, 1_000)


def _make(
    budget: registry.Budget, norm: str, eps: float | jax.Array
) -> Callable[..., AttackResult]:
    """FAB-T of `budget`: (logits_fn, images, labels, key) -> result."""
    config = FABConfig(
        norm=norm,
        iters=budget.fab_iters,
        restarts=budget.fab_restarts,
        n_targets=budget.n_targets,
    )
    return lambda logits_fn, images, labels, key: fab_t(
        logits_fn, images, labels, eps, key, config
    )


FAB_T = registry.register(
    registry.Attack(
        name="fab-t",
        title="FAB-T",
        norms=common.NORMS,
        cost=lambda b: b.fab_iters * b.fab_restarts * b.n_targets,
        make=_make,
        code=3,
        budget=(FAB_ITERS, FAB_RESTARTS, N_TARGETS),
    )
)
