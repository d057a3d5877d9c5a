"""Parameter-free attacks for robust accuracy that reviewers trust: APGD-CE
and APGD-T (targeted DLR), FAB-T, Square and the standard AutoAttack that
runs them in turn. Each attack is a traceable function

    attack(logits_fn, images, labels, eps, key, config) -> AttackResult

of a logits function (B, H, W, C) images in [0, 1] -> (B, K) logits; wrap
it in `jax.jit` with the config closed over. `autoattack` runs the
standard version from the host (each attack on the examples still robust).

May import: `attacks` and third-party packages only (a core layer, beside
`data`, `models` and `attacks`).
"""

from robust.apgd import APGDConfig, apgd_ce, apgd_t
from robust.autoattack import (
    ATTACKS,
    BUDGET_LIMITS,
    BUDGET_USE,
    CODES,
    ROBUST,
    AutoAttackConfig,
    AutoAttackResult,
    Budget,
    autoattack,
    autoattack_traced,
    budget_keys,
    targets_problem,
)
from robust.common import AttackResult
from robust.fab import FABConfig, fab_t
from robust.square import SquareConfig, square

__all__ = [
    "ATTACKS",
    "BUDGET_LIMITS",
    "BUDGET_USE",
    "CODES",
    "ROBUST",
    "APGDConfig",
    "AttackResult",
    "AutoAttackConfig",
    "AutoAttackResult",
    "Budget",
    "FABConfig",
    "SquareConfig",
    "apgd_ce",
    "apgd_t",
    "autoattack",
    "autoattack_traced",
    "budget_keys",
    "fab_t",
    "square",
    "targets_problem",
]
