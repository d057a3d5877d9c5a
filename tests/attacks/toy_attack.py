"""A toy attack, registered here and nowhere else: what adding an attack
takes (README, "Where to change what"). `tests/attacks/test_toy_attack.py`
imports it first, in a process of its own, and finds the attack in
--attack's choices, the grid's schema, the estimate and the report's
columns, with no other module edited.

The attack: `toy_steps` signed-gradient steps of eps / toy_steps up the
cross-entropy from a random start in the L-inf ball (an FGSM in small
steps), through `attacks.differentiable` like every attack that takes
gradients in its loop. Its result code, 99, is its own for good.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

import attacks
from attacks import common, registry

TOY_STEPS = registry.BudgetField("toy_steps", 3, 30)


def toy(logits_fn, images, labels, eps, key, steps):
    """(B, H, W, C) images in [0, 1] -> AttackResult after `steps`
    signed-gradient steps inside the eps-ball (L-inf)."""
    logits_fn = attacks.differentiable(logits_fn)
    keys = common.example_keys(key, images.shape[0])
    start = common.random_in_ball(keys, images, eps, "linf")

    def loss(x):
        return jnp.sum(attacks.LOSSES["ce"](logits_fn(x), labels))

    def step(_, x):
        x = x + eps / steps * jnp.sign(jax.grad(loss)(x))
        return common.project(x, images, eps, "linf")

    adv = jax.lax.fori_loop(0, steps, step, start)
    return common.AttackResult(
        adv, common.misclassified(logits_fn(adv), labels)
    )


def _make(budget, norm, eps) -> Callable:
    return lambda logits_fn, images, labels, key: toy(
        logits_fn, images, labels, eps, key, budget.toy_steps
    )


TOY = registry.register(
    registry.Attack(
        name="toy",
        title="Toy",
        norms=("linf",),
        cost=lambda budget: budget.toy_steps,
        make=_make,
        code=99,
        budget=(TOY_STEPS,),
    )
)
