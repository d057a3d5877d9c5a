"""Every attack, under one interface, found by name in one registry.

- `pgd`: the original's PGD, for training and evaluation (`AttackConfig`
  and the paper's `train_linf`, `eval_linf`, `eval_l2`; `NORMS`, `LOSSES`,
  `EVAL_ATTACKS`; `differentiable`, the logits function an attack
  differentiates inside its loop).
- `apgd`, `fab`, `square`: the parameter-free attacks of Croce & Hein's
  AutoAttack (APGD-CE, APGD-T, FAB-T, Square), each a traceable function
  `attack(logits_fn, images, labels, eps, key, config) -> AttackResult`
  (`common`: what they share).
- `autoattack`: the driver that runs registered attacks in turn, each on
  the examples the earlier ones left robust, recording who broke each
  (`broken_by`), and the standard AutoAttack.
- `parameter_free`: the attack of `--attack` at a radius and its
  `--attack_budget`.
- `registry`: each attack's name, budget fields, norms, result code, cost
  and maker (`Attack`), registered by the attack's own module; `Budget`,
  the values of every budget field.

To add an attack: one module here whose `register(Attack(...))` names it,
its budget fields, norms, a result code never used before and its cost,
and one line below importing that module. `--attack`, `--attack_budget`,
a grid's robustness keys, the estimate and the report's columns all read
the registry.

The package names `pgd`, `square` and `autoattack` are the functions;
their modules are `attacks.pgd` etc. for `from ... import`.

May import: `models` and `utils` (a core layer, after `data` and
`models`), and third-party packages.
"""

# The attacks, in the order --attack lists them: one line per module,
# which registers its attacks when imported (attacks.registry.register).
# A new attack's module gets its line here.
# isort: off
from attacks.pgd import PGD
from attacks.apgd import APGD_CE, APGD_T
from attacks.fab import FAB_T
from attacks.square import SQUARE
from attacks.autoattack import AUTOATTACK
# isort: on

from attacks.apgd import APGDConfig, apgd_ce, apgd_t
from attacks.autoattack import (
    STANDARD,
    AutoAttackConfig,
    AutoAttackResult,
    autoattack,
    autoattack_traced,
)
from attacks.common import AttackResult
from attacks.fab import FABConfig, fab_t
from attacks.parameter_free import (
    ParameterFree,
    check_budget,
    parameter_free,
)
from attacks.pgd import (
    EVAL_ATTACKS,
    EVAL_ITERS,
    L2,
    LINF,
    LOSSES,
    NORMS,
    TRAIN_ITERS,
    AttackConfig,
    Norm,
    differentiable,
    eval_l2,
    eval_linf,
    pgd,
    pick,
    train_linf,
)
from attacks.registry import (
    CLEAN,
    ROBUST,
    Attack,
    Budget,
    BudgetField,
    budget_fields,
    coded,
    count_codes,
    get,
    names,
    outcomes,
    register,
    sequence,
)
from attacks.square import SquareConfig, square

__all__ = [
    "APGD_CE",
    "APGD_T",
    "AUTOATTACK",
    "CLEAN",
    "EVAL_ATTACKS",
    "EVAL_ITERS",
    "FAB_T",
    "L2",
    "LINF",
    "LOSSES",
    "NORMS",
    "PGD",
    "ROBUST",
    "SQUARE",
    "STANDARD",
    "TRAIN_ITERS",
    "APGDConfig",
    "Attack",
    "AttackConfig",
    "AttackResult",
    "AutoAttackConfig",
    "AutoAttackResult",
    "Budget",
    "BudgetField",
    "FABConfig",
    "Norm",
    "ParameterFree",
    "SquareConfig",
    "apgd_ce",
    "apgd_t",
    "autoattack",
    "autoattack_traced",
    "budget_fields",
    "check_budget",
    "coded",
    "count_codes",
    "differentiable",
    "eval_l2",
    "eval_linf",
    "fab_t",
    "get",
    "names",
    "outcomes",
    "parameter_free",
    "pgd",
    "pick",
    "register",
    "sequence",
    "square",
    "train_linf",
]
