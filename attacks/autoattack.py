"""AutoAttack (Croce & Hein, ICML 2020), standard version: APGD-CE, then
targeted APGD on the DLR loss, targeted FAB and Square, each run only on
the examples that every earlier attack left robust. An example counts as
robust only if it survives all four. Registered as `AUTOATTACK`
(`attacks.registry.sequence`); the driver runs any registered attack with
a result code, alone or in a sequence (`AutoAttackConfig.attacks`).

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
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attacks import common, registry
from attacks.apgd import APGD_CE, APGD_T
from attacks.common import AttackResult, LogitsFn
from attacks.fab import FAB_T
from attacks.registry import CLEAN, ROBUST, Budget
from attacks.square import SQUARE

# The standard version's attacks, in turn (`--attack autoattack`). Each
# draws from its examples' keys folded with its result code.
AUTOATTACK = registry.register(
    registry.sequence(
        "autoattack", "AutoAttack", (APGD_CE, APGD_T, FAB_T, SQUARE)
    )
)
STANDARD = tuple(attack.name for attack in AUTOATTACK.members)


def runnable() -> tuple[str, ...]:
    """The attacks the driver can run in turn: every registered attack
    with a `make` and a result code."""
    return tuple(a.name for a in registry.coded() if a.make is not None)


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
    """What `autoattack` runs.

    Attributes:
        norm: 'linf' or 'l2', supported by every attack of `attacks` (not
            'l2' with 'square', which is L-inf only here).
        budget: iterations, restarts and queries.
        attacks: the attacks, in order, names of `runnable()` (default
            STANDARD).
    """

    norm: str = "linf"
    budget: Budget = dataclasses.field(default_factory=Budget)
    attacks: tuple[str, ...] = STANDARD

    def __post_init__(self) -> None:
        common.check_norm(self.norm)
        known = runnable()
        unknown = [name for name in self.attacks if name not in known]
        if unknown or not self.attacks:
            raise ValueError(
                f"attacks must be a non-empty sequence of {known}, "
                f"not {self.attacks}"
            )
        for name in self.attacks:
            norms = registry.get(name).norms
            if self.norm not in norms:
                raise ValueError(
                    f"{name} supports norm {' or '.join(map(repr, norms))} "
                    f"only; drop it from attacks for norm {self.norm!r}"
                )


class AutoAttackResult(NamedTuple):
    """adv: (B, H, W, C) images, each the first attack's success, else the
    first attack's (APGD-CE's highest-loss) point. broken_by: (B,) int32
    codes: the attacks' (attacks.registry), CLEAN or ROBUST."""

    adv: jax.Array
    broken_by: jax.Array


def stage(name: str, config: AutoAttackConfig) -> Callable[..., AttackResult]:
    """The attack `name` with the norm and budget of `config`, as a
    function (logits_fn, images, labels, eps, key) -> AttackResult (its
    registry entry's `make`, eps an argument: it may be traced)."""
    make = registry.get(name).make

    def attack(
        logits_fn: LogitsFn,
        images: jax.Array,
        labels: jax.Array,
        eps: float | jax.Array,
        key: jax.Array,
    ) -> AttackResult:
        run = make(config.budget, config.norm, eps)
        return run(logits_fn, images, labels, key)

    attack.__name__ = name.replace("-", "_")  # jit's name for it
    return attack


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
        code of the attack that broke it first (attacks.registry) or
        ROBUST.
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
            common.fold_keys(keys, registry.get(name).code)[take],
        )
        success = np.asarray(result.success)[: todo.size]
        new = np.asarray(result.adv)[: todo.size]
        keep = np.ones_like(success) if first else success
        adv[todo[keep]] = new[keep]
        broken_by[todo[success]] = registry.get(name).code
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
            logits_fn,
            images,
            labels,
            eps,
            common.fold_keys(keys, registry.get(name).code),
        )
        robust = broken_by == ROBUST
        new = robust & result.success
        keep = robust if index == 0 else new
        adv = jnp.where(common.per_example(keep, adv), result.adv, adv)
        broken_by = jnp.where(new, registry.get(name).code, broken_by)
    return AutoAttackResult(adv, broken_by)
