"""Auto-PGD (APGD) of Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks" (ICML 2020).

A PGD whose step size adapts by itself. It starts at 2·eps and is halved
at checkpoints w_j = ⌈p_j · N⌉ (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
max(p_j − p_{j−1} − 0.03, 0.06)) where, since the last checkpoint, fewer
than a fraction rho = 0.75 of the steps raised the loss, or where the step
size was not halved at the last checkpoint and the best loss has not grown
since; each halving restarts from the best point found. The steps carry
momentum: x ← P(x + α(z − x) + (1 − α)(x − x_prev)) with z = P(x + η ∇)
and α = 0.75 (P projects onto the eps-ball and [0, 1]).

`apgd_ce` maximises the cross-entropy (untargeted); `apgd_t` the targeted
DLR loss, once per target among the top `n_targets` wrong classes of the
clean logits. An example counts as broken as soon as any iterate is
misclassified; that iterate is returned. Both are traceable (wrap them in
`jax.jit`, config closed over; eps may be traced). Registered as `APGD_CE`
and `APGD_T` (`attacks.registry`), with their budget fields.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attacks import common, registry
from attacks.common import AttackResult, LogitsFn
from attacks.pgd import LOSSES, NORMS, differentiable


@dataclasses.dataclass(frozen=True)
class APGDConfig:
    """The settings of APGD; the defaults are the standard AutoAttack's.

    Attributes:
        norm: 'linf' or 'l2'.
        iters: gradient steps per run (N).
        restarts: runs from independent random starts (apgd_ce), or per
            target class (apgd_t).
        n_targets: target classes of apgd_t.
        rho: the fraction of loss-raising steps below which the step size
            is halved at a checkpoint.
        momentum: α, the weight of the new step against the last one.
    """

    norm: str = "linf"
    iters: int = 100
    restarts: int = 1
    n_targets: int = 9
    rho: float = 0.75
    momentum: float = 0.75

    def __post_init__(self) -> None:
        common.check_norm(self.norm)
        for name in ("iters", "restarts", "n_targets"):
            registry.check_positive(name, getattr(self, name))


def checkpoints(iters: int) -> list[int]:
    """The iterations w_1 < w_2 < ... ≤ iters at which the step size may be
    halved: ⌈p_j · iters⌉ for p_j ≤ 1, the paper's p_j."""
    previous, current, points = 0.0, 0.22, []
    while current <= 1.0:
        # Rounded first: 0.57 · 100 is 57.000000000000007 in floats.
        points.append(math.ceil(round(current * iters, 9)))
        previous, current = (
            current,
            current + max(current - previous - 0.03, 0.06),
        )
    return sorted(set(points) - {0})


def _schedule(iters: int) -> tuple[jax.Array, jax.Array]:
    """(iters + 1,) per step count k: whether k is a checkpoint, and the
    number of steps since the checkpoint before it."""
    is_checkpoint = np.zeros(iters + 1, bool)
    length = np.zeros(iters + 1, np.float32)
    last = 0
    for point in checkpoints(iters):
        is_checkpoint[point], length[point], last = True, point - last, point
    return jnp.asarray(is_checkpoint), jnp.asarray(length)


class _State(NamedTuple):
    """The loop state of one APGD run; (B,) or (B, H, W, C) arrays."""

    x: jax.Array
    x_prev: jax.Array
    grad: jax.Array
    loss: jax.Array
    step: jax.Array
    best_x: jax.Array
    best_loss: jax.Array
    best_grad: jax.Array
    adv: jax.Array
    found: jax.Array
    raised: jax.Array
    checkpoint_loss: jax.Array
    halved: jax.Array


def _where(mask: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """Per example: `new` where the (B,) `mask` holds, else `old`."""
    return jnp.where(common.per_example(mask, new), new, old)


def _evaluator(
    logits_fn: LogitsFn, loss_fn: LogitsFn, labels: jax.Array
) -> LogitsFn:
    """x -> (loss (B,), misclassified (B,), gradient of the loss (B, ...))
    for the per-example loss `loss_fn(logits)`."""

    def total(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        logits = logits_fn(x)
        loss = loss_fn(logits)
        # Examples are independent: the gradient of the sum is each
        # example's own gradient.
        return jnp.sum(loss), (loss, logits)

    def evaluate(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        (_, (loss, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
        return loss, common.misclassified(logits, labels), grad

    return evaluate


def _step(
    k: jax.Array,
    state: _State,
    images: jax.Array,
    eps: jax.Array,
    evaluate: LogitsFn,
    config: APGDConfig,
) -> _State:
    """Step k (from 0) of APGD, and the checkpoint test after it."""
    s = state
    ascent = NORMS[config.norm].ascent
    z = common.project(
        s.x + ascent(s.grad, common.per_example(s.step, s.x)),
        images,
        eps,
        config.norm,
    )
    alpha = jnp.where(k == 0, 1.0, config.momentum)
    x = s.x + alpha * (z - s.x) + (1.0 - alpha) * (s.x - s.x_prev)
    x = common.project(x, images, eps, config.norm)
    loss, wrong, grad = evaluate(x)
    raised = s.raised + (loss > s.loss)
    better = loss > s.best_loss
    best_x = _where(better, x, s.best_x)
    best_loss = jnp.where(better, loss, s.best_loss)
    best_grad = _where(better, grad, s.best_grad)
    is_checkpoint, length = _schedule(config.iters)
    at = is_checkpoint[k + 1]
    stalled = ~s.halved & (best_loss <= s.checkpoint_loss)
    halve = at & ((raised < config.rho * length[k + 1]) | stalled)
    return _State(
        x=_where(halve, best_x, x),
        x_prev=_where(halve, best_x, s.x),
        grad=_where(halve, best_grad, grad),
        loss=jnp.where(halve, best_loss, loss),
        step=jnp.where(halve, 0.5 * s.step, s.step),
        best_x=best_x,
        best_loss=best_loss,
        best_grad=best_grad,
        adv=_where(wrong & ~s.found, x, s.adv),
        found=s.found | wrong,
        raised=jnp.where(at, 0, raised),
        checkpoint_loss=jnp.where(at, best_loss, s.checkpoint_loss),
        halved=jnp.where(at, halve, s.halved),
    )


def _run(
    evaluate: LogitsFn,
    images: jax.Array,
    eps: jax.Array,
    start: jax.Array,
    config: APGDConfig,
) -> AttackResult:
    """One APGD run from `start`: per example the first misclassified
    iterate if any, else the point of highest loss."""
    loss, wrong, grad = evaluate(start)
    batch = images.shape[0]
    state = _State(
        x=start,
        x_prev=start,
        grad=grad,
        loss=loss,
        step=jnp.full((batch,), 2.0, images.dtype) * eps,
        best_x=start,
        best_loss=loss,
        best_grad=grad,
        adv=start,
        found=wrong,
        raised=jnp.zeros((batch,), jnp.int32),
        checkpoint_loss=loss,
        halved=jnp.zeros((batch,), bool),
    )
    state = jax.lax.fori_loop(
        0,
        config.iters,
        lambda k, s: _step(k, s, images, eps, evaluate, config),
        state,
    )
    return AttackResult(
        _where(state.found, state.adv, state.best_x), state.found
    )


def best_of_runs(run: LogitsFn, n_runs: int) -> AttackResult:
    """Runs `run(j) -> AttackResult` for j = 0, 1, ... < n_runs until every
    example is broken; per example the first success is kept, and run 0's
    images where none succeeded."""

    def more(carry: tuple[jax.Array, AttackResult]) -> jax.Array:
        j, best = carry
        return (j < n_runs) & ~jnp.all(best.success)

    def next_run(
        carry: tuple[jax.Array, AttackResult],
    ) -> tuple[jax.Array, AttackResult]:
        j, best = carry
        new = run(j)
        take = new.success & ~best.success
        return j + 1, AttackResult(
            _where(take, new.adv, best.adv), best.success | new.success
        )

    first = run(jnp.asarray(0))
    _, best = common.bounded_while(
        more, next_run, (jnp.asarray(1), first), n_runs - 1
    )
    return best


def apgd_ce(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    config: APGDConfig = APGDConfig(),
) -> AttackResult:
    """Untargeted APGD on the cross-entropy, `config.restarts` random starts.

    Args:
        logits_fn: pure function, (B, H, W, C) float32 images -> (B, K)
            logits; examples must not interact.
        images: (B, H, W, C) float32 clean images in [0, 1].
        labels: (B,) int true classes.
        eps: radius of the ball in pixel units (e.g. 8/255 for 'linf').
        key: PRNG key, or (B,) keys, one per example; every random draw
            comes from it.
        config: norm, iterations and restarts.

    Returns:
        AttackResult: per example the first misclassified iterate found,
        else the point of highest loss of the first start; and success.
    """
    keys = common.example_keys(key, images.shape[0])
    logits_fn = differentiable(logits_fn)
    evaluate = _evaluator(logits_fn, lambda z: LOSSES["ce"](z, labels), labels)

    def run(j: jax.Array) -> AttackResult:
        start = common.random_in_ball(
            common.fold_keys(keys, j), images, eps, config.norm
        )
        return _run(evaluate, images, eps, start, config)

    return best_of_runs(run, config.restarts)


def apgd_t(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    config: APGDConfig = APGDConfig(),
) -> AttackResult:
    """Targeted APGD on the DLR loss: for each of the `config.n_targets`
    wrong classes of highest clean logit, highest first, `config.restarts`
    runs from random starts; stops once every example is broken. Needs at
    least 4 classes. Arguments and result as `apgd_ce`'s."""
    keys = common.example_keys(key, images.shape[0])
    logits_fn = differentiable(logits_fn)
    clean = logits_fn(images)
    if clean.shape[-1] < 4:
        raise ValueError("the DLR loss needs at least 4 classes")
    chosen = common.targets(clean, labels, config.n_targets)

    def run(j: jax.Array) -> AttackResult:
        target = chosen[:, j // config.restarts]
        evaluate = _evaluator(
            logits_fn,
            lambda z: common.dlr_targeted(z, labels, target),
            labels,
        )
        start = common.random_in_ball(
            common.fold_keys(keys, j), images, eps, config.norm
        )
        return _run(evaluate, images, eps, start, config)

    return best_of_runs(run, config.n_targets * config.restarts)


# The budget fields of APGD: a thousand times the standard version's
# steps and restarts at most, and up to 999 targets (fewer than the
# model's classes: common.targets_problem). FAB-T reads N_TARGETS too.
APGD_ITERS = registry.BudgetField("apgd_iters", 100, 100_000)
APGD_RESTARTS = registry.BudgetField("apgd_restarts", 1, 1_000)
N_TARGETS = registry.BudgetField(
    "n_targets", 9, 999, classes_problem=common.targets_problem
)


def _config(budget: registry.Budget, norm: str) -> APGDConfig:
    """The APGDConfig of `budget` in `norm`."""
    return APGDConfig(
        norm=norm,
        iters=budget.apgd_iters,
        restarts=budget.apgd_restarts,
        n_targets=budget.n_targets,
    )


def _make_ce(
    budget: registry.Budget, norm: str, eps: float | jax.Array
) -> Callable[..., AttackResult]:
    """APGD-CE of `budget`: (logits_fn, images, labels, key) -> result."""
    config = _config(budget, norm)
    return lambda logits_fn, images, labels, key: apgd_ce(
        logits_fn, images, labels, eps, key, config
    )


def _make_t(
    budget: registry.Budget, norm: str, eps: float | jax.Array
) -> Callable[..., AttackResult]:
    """APGD-T of `budget`, one run per target (no restarts)."""
    config = dataclasses.replace(_config(budget, norm), restarts=1)
    return lambda logits_fn, images, labels, key: apgd_t(
        logits_fn, images, labels, eps, key, config
    )


APGD_CE = registry.register(
    registry.Attack(
        name="apgd-ce",
        title="APGD-CE",
        norms=common.NORMS,
        cost=lambda b: b.apgd_iters * b.apgd_restarts,
        make=_make_ce,
        code=1,
        budget=(APGD_ITERS, APGD_RESTARTS),
    )
)
# APGD-T's cost counts apgd_restarts too, as the estimate always has,
# though it runs one start per target: an upper bound.
APGD_T = registry.register(
    registry.Attack(
        name="apgd-t",
        title="APGD-T",
        norms=common.NORMS,
        cost=lambda b: b.apgd_iters * b.apgd_restarts * b.n_targets,
        make=_make_t,
        code=2,
        budget=(APGD_ITERS, N_TARGETS),
    )
)
