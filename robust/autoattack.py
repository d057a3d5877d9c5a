"""AutoAttack (Croce & Hein, ICML 2020), standard version: APGD-CE, then
targeted APGD on the DLR loss, targeted FAB and Square, each run only on
the examples that every earlier attack left robust. An example counts as
robust only if it survives all four.

`autoattack` drives the attacks from the host: before each attack it
gathers the still-robust examples, pads their number up to one of four
sizes per doubling (`padded_size`: few batch shapes to compile, little
padding) and runs the attack, compiled, on them alone. Every attack
draws from one key per example (fold_in of the stage's key with the
example's index), so what an example gets does not depend on which others
are still in the batch. `autoattack_traced` is the same sequence in one
traceable function, every attack run on the whole batch (for use inside
`jax.jit`, at the cost of attacking broken examples again).
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from robust import common
from robust.apgd import APGDConfig, apgd_ce, apgd_t
from robust.common import AttackResult, LogitsFn
from robust.fab import FABConfig, fab_t
from robust.square import SquareConfig, square

# broken_by codes: the index of the attack that broke an example first;
# ROBUST (-1) where none did, CLEAN (0) where the clean image is wrong.
ROBUST = -1
CLEAN = 0
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
CODES: dict[str, int] = {"clean": CLEAN} | {
    name: code for code, name in enumerate(ATTACKS, start=1)
}


def _budget_field(default: int, maximum: int) -> int:
    """A Budget field: its default and its largest value (metadata)."""
    return dataclasses.field(default=default, metadata={"maximum": maximum})


@dataclasses.dataclass(frozen=True)
class Budget:
    """Iterations, restarts and queries; the defaults are the standard
    version's (APGD-CE 100 steps, 1 start; APGD-T 100 steps for each of 9
    targets; FAB-T 100 steps for each of 9 targets; Square 5,000
    queries). Each field is at most its `maximum` (BUDGET_LIMITS): a
    thousand times the standard version's iterations, restarts and
    queries, and 999 targets (n_targets must also stay below the number
    of classes: `targets_problem`)."""

    apgd_iters: int = _budget_field(100, 100_000)
    apgd_restarts: int = _budget_field(1, 1_000)
    n_targets: int = _budget_field(9, 999)
    fab_iters: int = _budget_field(100, 100_000)
    fab_restarts: int = _budget_field(1, 1_000)
    square_queries: int = _budget_field(5000, 5_000_000)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            common.check_positive(field.name, value)
            if value > field.metadata["maximum"]:
                raise ValueError(
                    f"{field.name} must be at most "
                    f"{field.metadata['maximum']}, not {value}"
                )


# The largest value of each Budget field.
BUDGET_LIMITS: dict[str, int] = {
    field.name: field.metadata["maximum"]
    for field in dataclasses.fields(Budget)
}
# The Budget fields each attack reads (see `stage`; APGD-T runs once per
# target, without restarts).
BUDGET_USE: dict[str, tuple[str, ...]] = {
    "apgd-ce": ("apgd_iters", "apgd_restarts"),
    "apgd-t": ("apgd_iters", "n_targets"),
    "fab-t": ("fab_iters", "fab_restarts", "n_targets"),
    "square": ("square_queries",),
}


def budget_keys(attacks: Sequence[str]) -> tuple[str, ...]:
    """The Budget fields that the attacks `attacks` (names of ATTACKS) read,
    in Budget's order."""
    used = {key for name in attacks for key in BUDGET_USE[name]}
    return tuple(f.name for f in dataclasses.fields(Budget) if f.name in used)


def targets_problem(n_targets: int, n_classes: int) -> str | None:
    """Why `n_targets` target classes cannot be drawn for a model of
    `n_classes` classes (the targets are the wrong classes), or None."""
    if n_targets > n_classes - 1:
        return (
            f"n_targets={n_targets} asks for more target classes than the "
            f"{n_classes - 1} wrong ones of {n_classes} classes: pass "
            f"n_targets={n_classes - 1} or fewer"
        )
    return None


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """What `autoattack` runs.

    Attributes:
        norm: 'linf' or 'l2' ('l2' only without 'square', which is L-inf
            only here).
        budget: iterations, restarts and queries.
        attacks: the attacks, in order, a sub-sequence of ATTACKS.
    """

    norm: str = "linf"
    budget: Budget = Budget()
    attacks: tuple[str, ...] = ATTACKS

    def __post_init__(self) -> None:
        common.check_norm(self.norm)
        unknown = [name for name in self.attacks if name not in ATTACKS]
        if unknown or not self.attacks:
            raise ValueError(
                f"attacks must be a non-empty sub-sequence of {ATTACKS}, "
                f"not {self.attacks}"
            )
        if self.norm != "linf" and "square" in self.attacks:
            raise ValueError(
                "square supports norm 'linf' only; drop it from attacks "
                "for norm 'l2'"
            )


class AutoAttackResult(NamedTuple):
    """adv: (B, H, W, C) images, each the first attack's success, else the
    first attack's (APGD-CE's highest-loss) point. broken_by: (B,) int32
    codes, CODES' values or ROBUST."""

    adv: jax.Array
    broken_by: jax.Array


def stage(name: str, config: AutoAttackConfig) -> Callable[..., AttackResult]:
    """The attack `name` of AutoAttack with the budget of `config`, as a
    function (logits_fn, images, labels, eps, key) -> AttackResult."""
    b, norm = config.budget, config.norm
    apgd = APGDConfig(
        norm=norm,
        iters=b.apgd_iters,
        restarts=b.apgd_restarts,
        n_targets=b.n_targets,
    )
    attack, settings = {
        "apgd-ce": (apgd_ce, apgd),
        "apgd-t": (apgd_t, dataclasses.replace(apgd, restarts=1)),
        "fab-t": (
            fab_t,
            FABConfig(
                norm=norm,
                iters=b.fab_iters,
                restarts=b.fab_restarts,
                n_targets=b.n_targets,
            ),
        ),
        "square": (square, SquareConfig(queries=b.square_queries)),
    }[name]
    return functools.partial(attack, config=settings)


@functools.lru_cache(maxsize=64)
def _compiled(
    name: str, norm: str, budget: Budget
) -> Callable[..., AttackResult]:
    """Attack `name`, jitted, as (logits_fn, images, labels, eps, keys) with
    logits_fn a `jax.tree_util.Partial`: its arrays (a network's parameters)
    are arguments, not constants, and jit compiles again only for another
    function or other shapes. Keyed by what the attack depends on, so that
    sequences sharing an attack share its compilation."""
    config = AutoAttackConfig(norm=norm, budget=budget, attacks=(name,))
    return jax.jit(stage(name, config))


@jax.jit
def _wrong(
    logits_fn: jax.tree_util.Partial, images: jax.Array, labels: jax.Array
) -> jax.Array:
    """(B,) misclassified, for a logits_fn given as a Partial."""
    return common.misclassified(logits_fn(images), labels)


def _as_partial(logits_fn: LogitsFn) -> jax.tree_util.Partial:
    """`logits_fn` as a pytree that jit takes as an argument (a Partial
    already is one; a plain function becomes one without arguments)."""
    if isinstance(logits_fn, jax.tree_util.Partial):
        return logits_fn
    return jax.tree_util.Partial(logits_fn)


def padded_size(count: int, batch: int) -> int:
    """The batch size an attack of `autoattack` runs `count` examples at:
    the smallest of 1, 2, 3, 4 and 2^k·(1.25, 1.5, 1.75, 2) for 2^k ≥ 4
    that is at least `count`, at most `batch`. Four sizes per doubling:
    few shapes to compile, and at most a quarter of the work padding
    (a power of two would waste up to half)."""
    if count <= 4:
        return min(batch, max(count, 1))
    below = 1 << (count - 1).bit_length() - 1  # the power of two < count
    quarter = below // 4
    return min(batch, below + -(-(count - below) // quarter) * quarter)


def autoattack(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float,
    key: jax.Array,
    config: AutoAttackConfig = AutoAttackConfig(),
) -> AutoAttackResult:
    """AutoAttack: each attack of `config.attacks`, in order, on the
    examples still robust. Not traceable (see `autoattack_traced`); a
    later call with the same function (or a `jax.tree_util.Partial` of it,
    whose arrays may differ) reuses the compiled attacks.

    Args:
        logits_fn: pure function, (B, H, W, C) float32 images -> (B, K)
            logits (at least 4 classes for apgd-t); examples must not
            interact.
        images: (B, H, W, C) float32 clean images in [0, 1].
        labels: (B,) int true classes.
        eps: radius of the ball in pixel units.
        key: PRNG key; every random draw comes from it.
        config: norm, budget and attacks.

    Returns:
        AutoAttackResult: the adversarial images and, per example, the
        code of the attack that broke it first (CODES) or ROBUST.
    """
    batch = images.shape[0]
    labels = jnp.asarray(labels)
    keys = common.example_keys(key, batch)
    logits_fn = _as_partial(logits_fn)
    wrong = np.asarray(_wrong(logits_fn, images, labels))
    broken_by = np.where(wrong, CLEAN, ROBUST).astype(np.int32)
    adv = np.array(images)
    first = True
    for name in config.attacks:
        todo = np.flatnonzero(broken_by == ROBUST)
        if todo.size == 0:
            break
        size = padded_size(todo.size, batch)
        take = np.concatenate([todo, np.full(size - todo.size, todo[0])])
        result = _compiled(name, config.norm, config.budget)(
            logits_fn,
            images[take],
            labels[take],
            jnp.asarray(eps, jnp.float32),
            common.fold_keys(keys, CODES[name])[take],
        )
        success = np.asarray(result.success)[: todo.size]
        new = np.asarray(result.adv)[: todo.size]
        keep = np.ones_like(success) if first else success
        adv[todo[keep]] = new[keep]
        broken_by[todo[success]] = CODES[name]
        first = False
    return AutoAttackResult(jnp.asarray(adv), jnp.asarray(broken_by))


def autoattack_traced(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    config: AutoAttackConfig = AutoAttackConfig(),
) -> AutoAttackResult:
    """AutoAttack as one traceable function: every attack runs on the whole
    batch and counts only where the earlier ones failed. The same draws as
    `autoattack`'s, so the same result up to rounding; slower where many
    examples break early. Arguments and result as `autoattack`'s."""
    keys = common.example_keys(key, images.shape[0])
    wrong = common.misclassified(logits_fn(images), labels)
    broken_by = jnp.where(wrong, CLEAN, ROBUST).astype(jnp.int32)
    adv = images
    for index, name in enumerate(config.attacks):
        result = stage(name, config)(
            logits_fn, images, labels, eps, common.fold_keys(keys, CODES[name])
        )
        robust = broken_by == ROBUST
        new = robust & result.success
        keep = robust if index == 0 else new
        adv = jnp.where(common.per_example(keep, adv), result.adv, adv)
        broken_by = jnp.where(new, CODES[name], broken_by)
    return AutoAttackResult(adv, broken_by)
