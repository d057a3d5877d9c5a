"""The L-inf Square attack of Andriushchenko et al., "Square Attack: a
query-efficient black-box adversarial attack via random search" (ECCV
2020).

Score-based: it reads the logits only, never a gradient, so masked or
shattered gradients do not stop it. It starts from vertical stripes
(each column of each channel at +eps or −eps) and then, once per query,
proposes to set one random square window of side s to +eps or −eps per
channel; the proposal is kept where it lowers the margin z_y − max_{j≠y}
z_j. The window holds a fraction p of the pixels, s = round(√(p·H·W)),
with p = p_init halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 of a 10,000-query budget (rescaled to the budget given). A
proposal that would change nothing has its signs flipped. Examples stop as
soon as they are misclassified; the loop stops once all are (tested every
CHUNK queries). Registered as `SQUARE` (`attacks.registry`), L-inf only.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from attacks import common, registry
from attacks.common import AttackResult, LogitsFn
from attacks.pgd import LINF

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
CHUNK = 50  # queries between two tests whether any example is left


@dataclasses.dataclass(frozen=True)
class SquareConfig:
    """The settings of Square; the defaults are the standard AutoAttack's.

    Attributes:
        queries: proposals per example, after the stripes (each one query
            of the model).
        p_init: the fraction of pixels the first windows hold.
    """

    queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        registry.check_positive("queries", self.queries)
        if not 0.0 < self.p_init <= 1.0:
            raise ValueError(f"p_init must be in (0, 1], not {self.p_init}")


def window_side(i: jax.Array, config: SquareConfig, area: int) -> jax.Array:
    """The side of the window at iteration i (from 0): round(√(p·area)),
    at least 1; p follows the schedule rescaled to `config.queries`."""
    scaled = (i * 10000) // config.queries
    halvings = jnp.sum(scaled > jnp.asarray(HALVINGS))
    p = config.p_init / 2.0**halvings
    return jnp.maximum(jnp.round(jnp.sqrt(p * area)), 1).astype(jnp.int32)


def _propose(
    keys: jax.Array,
    adv: jax.Array,
    images: jax.Array,
    side: jax.Array,
    eps: jax.Array,
) -> jax.Array:
    """Each example's proposal: one window of `side` at a random place set
    to ±eps per channel (signs flipped where that changes nothing)."""
    batch, height, width, channels = images.shape
    side = jnp.minimum(side, min(height, width))

    def draw(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        row_key, col_key, sign_key = jax.random.split(key, 3)
        row = jax.random.randint(row_key, (), 0, height - side + 1)
        col = jax.random.randint(col_key, (), 0, width - side + 1)
        sign = jax.random.rademacher(sign_key, (channels,), images.dtype)
        return row, col, sign

    row, col, sign = jax.vmap(draw)(keys)
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]
    at = lambda a: a[:, None, None, None]
    inside = (
        (rows >= at(row))
        & (rows < at(row) + side)
        & (cols >= at(col))
        & (cols < at(col) + side)
    )
    sign = sign[:, None, None, :]

    def place(sign: jax.Array) -> jax.Array:
        square = jnp.clip(images + eps * sign, 0.0, 1.0)
        return jnp.where(inside, square, adv)

    same = jnp.all((place(sign) == adv) | ~inside, axis=(1, 2))
    return place(jnp.where(same[:, None, None, :], -sign, sign))


def square(
    logits_fn: LogitsFn,
    images: jax.Array,
    labels: jax.Array,
    eps: float | jax.Array,
    key: jax.Array,
    config: SquareConfig = SquareConfig(),
) -> AttackResult:
    """The L-inf Square attack, `config.queries` queries per example.

    Args:
        logits_fn, images, labels, key: as `attacks.apgd.apgd_ce`'s.
        eps: L-inf radius in pixel units.
        config: queries and p_init.

    Returns:
        AttackResult: per example the point of lowest margin found (the
        first misclassified one where it succeeded), and success.
    """
    batch, height, width, channels = images.shape
    keys = common.example_keys(key, batch)
    stripe = jax.vmap(
        lambda k: jax.random.rademacher(k, (1, width, channels))
    )(common.fold_keys(keys, 0)).astype(images.dtype)
    adv = jnp.clip(images + eps * stripe, 0.0, 1.0)
    score = common.margin(logits_fn(adv), labels)

    def more(carry: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        i, _, score = carry
        return (i < config.queries) & jnp.any(score >= 0)

    def query(
        _: int, carry: tuple[jax.Array, jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        i, adv, score = carry
        side = window_side(i, config, height * width)
        new = _propose(common.fold_keys(keys, i + 1), adv, images, side, eps)
        new_score = common.margin(logits_fn(new), labels)
        keep = (new_score < score) & (score >= 0) & (i < config.queries)
        adv = jnp.where(common.per_example(keep, adv), new, adv)
        return i + 1, adv, jnp.where(keep, new_score, score)

    # The test whether any example is left runs once per CHUNK queries: a
    # query after the last example broke (or past the budget) keeps
    # nothing, so the result is that of a test before every query, and a
    # lax.cond (which copies the images it carries) per query cost a fifth
    # of the time on the CPU.
    chunk = min(CHUNK, config.queries)
    _, adv, score = common.bounded_while(
        more,
        lambda carry: jax.lax.fori_loop(0, chunk, query, carry),
        (jnp.asarray(0), adv, score),
        -(-config.queries // chunk),
    )
    return AttackResult(adv, score < 0)


# Square's budget field: at most a thousand times the standard queries.
SQUARE_QUERIES = registry.BudgetField("square_queries", 5000, 5_000_000)
# A query (a forward pass) in PGD steps (a forward and a backward pass,
# about three forward passes' work), for the cost estimate.
QUERY_STEPS = 1 / 3


def _make(
    budget: registry.Budget, norm: str, eps: float | jax.Array
) -> Callable[..., AttackResult]:
    """Square of `budget` (L-inf: `norm` is checked by the driver)."""
    del norm
    config = SquareConfig(queries=budget.square_queries)
    return lambda logits_fn, images, labels, key: square(
        logits_fn, images, labels, eps, key, config
    )


SQUARE = registry.register(
    registry.Attack(
        name="square",
        title="Square",
        norms=(LINF.name,),
        cost=lambda b: b.square_queries * QUERY_STEPS,
        make=_make,
        code=4,
        budget=(SQUARE_QUERIES,),
        gradient_free=True,
    )
)
