"""Parts shared by the parameter-free attacks: results, per-example keys,
losses, norms and the target classes of the targeted attacks.

Every attack of the package returns an `AttackResult` and draws its random
numbers from one key per example (`example_keys`), so that an example's
draws do not depend on which other examples share its batch: AutoAttack can
then run a later attack on the still-robust examples alone and get what the
whole batch would have given them.
"""

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from attacks.pgd import LOSSES, pick
from attacks.pgd import NORMS as PARTS

LogitsFn = Callable[[jax.Array], jax.Array]
Carry = TypeVar("Carry")
NORMS = tuple(PARTS)  # the norms, by name


class AttackResult(NamedTuple):
    """What an attack returns (a pytree, so it leaves `jax.jit` whole).

    adv: (B, H, W, C) images in [0, 1] within eps of the clean ones.
    success: (B,) bool, True where `adv` is misclassified.
    """

    adv: jax.Array
    success: jax.Array


def check_norm(norm: str) -> None:
    """Raises ValueError unless `norm` is 'linf' or 'l2'."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, not {norm!r}")


def example_keys(key: jax.Array, batch: int) -> jax.Array:
    """One key per example: `key` itself when it already is a (batch,)
    array of keys, else `fold_in(key, i)` for example i."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):  # already one key per example
        if key.shape[0] != batch:
            raise ValueError(f"{key.shape[0]} keys for {batch} examples")
        return key
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch))


def fold_keys(keys: jax.Array, data: int | jax.Array) -> jax.Array:
    """`fold_in(k, data)` for each per-example key k."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


def per_example(values: jax.Array, like: jax.Array) -> jax.Array:
    """(B,) `values` reshaped to (B, 1, ..., 1) to broadcast on `like`."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def norms(delta: jax.Array, norm: str) -> jax.Array:
    """The L-inf or L2 norm of each example of (B, ...) `delta`, (B,)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return jnp.max(jnp.abs(flat), axis=1)
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))


def random_in_ball(
    keys: jax.Array, images: jax.Array, radius: jax.Array, norm: str
) -> jax.Array:
    """A uniform random point of the radius-ball around each image (one key
    each; `radius` a scalar or (B,)), clipped to [0, 1]."""
    radius = jnp.broadcast_to(radius, images.shape[:1])

    def one(key: jax.Array, image: jax.Array, r: jax.Array) -> jax.Array:
        return PARTS[norm].random_delta(key, image[None], r)[0]

    delta = jax.vmap(one)(keys, images, radius)
    return jnp.clip(images + delta, 0.0, 1.0)


def project(
    adv: jax.Array, images: jax.Array, eps: jax.Array, norm: str
) -> jax.Array:
    """`adv` moved into the eps-ball around `images`, then into [0, 1]."""
    delta = PARTS[norm].project(adv - images, eps)
    return jnp.clip(images + delta, 0.0, 1.0)


def true_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """z_y of each example, (B,) (`pick`: no scatter in its
    gradient)."""
    return pick(logits, labels)


def misclassified(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """(B,) bool: the top logit is not the label's."""
    return jnp.argmax(logits, axis=-1) != labels


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """z_y − max_{j≠y} z_j, (B,): negative exactly when misclassified."""
    return -LOSSES["margin"](logits, labels)


def targets(logits: jax.Array, labels: jax.Array, n: int) -> jax.Array:
    """(B, n) the n classes other than the label with the highest logits,
    highest first: the targets of the targeted attacks."""
    if n > logits.shape[-1] - 1:
        raise ValueError(
            f"{n} target classes but only {logits.shape[-1] - 1} wrong ones"
        )
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    ranked = jnp.argsort(-jnp.where(is_true, jnp.inf, logits), axis=-1)
    return ranked[:, 1 : n + 1]


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


def top_classes(logits: jax.Array, n: int) -> list[jax.Array]:
    """The classes of the n highest logits of each example, highest first,
    as n (B,) arrays; ties go to the lower class, as in a stable sort.
    Found by n rounds of argmax, each masking the last one found: on the
    CPU that is far cheaper than a sort of every row."""
    found, remaining = [], logits
    for _ in range(n):
        best = jnp.argmax(remaining, axis=-1)
        found.append(best)
        hit = jax.nn.one_hot(best, logits.shape[-1], dtype=bool)
        remaining = jnp.where(hit, -jnp.inf, remaining)
    return found


def dlr_targeted(
    logits: jax.Array, labels: jax.Array, target: jax.Array
) -> jax.Array:
    """Targeted difference-of-logits-ratio loss of Croce & Hein (2020),
    −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2), with π the classes sorted
    by decreasing logit; (B,), maximised. Needs at least 4 classes.

    z_π1, z_π3 and z_π4 are picked by their classes (`top_classes`,
    `pick`) rather than read off `jnp.sort`: the same numbers and
    gradient, but a sort costs more than the rest of the loss on the CPU
    and its gradient is a scatter-add, a loop over every logit there."""
    first, _, third, fourth = (pick(logits, c) for c in top_classes(logits, 4))
    scale = first - 0.5 * (third + fourth) + 1e-12
    return -(true_logit(logits, labels) - true_logit(logits, target)) / scale


def bounded_while(
    more: Callable[[Carry], jax.Array],
    body: Callable[[Carry], Carry],
    carry: Carry,
    most: int,
) -> Carry:
    """`jax.lax.while_loop(more, body, carry)` for a loop known to run at
    most `most` times: a `fori_loop` of `most` steps, each `body` under a
    `lax.cond` on `more` (a skipped step costs only the test).

    Why not while_loop: with JAX 0.5.3 on the CPU, an executable loaded
    from the persistent compilation cache runs a while_loop whose trip count
    depends on data zero times when its body draws random numbers (a fresh
    compilation is right; loops of static trip count are unaffected).
    tests/attacks/test_common.py reproduces it in a subprocess.
    """
    return jax.lax.fori_loop(
        0,
        most,
        lambda _, c: jax.lax.cond(more(c), body, lambda c: c, c),
        carry,
    )
