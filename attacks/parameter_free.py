"""The parameter-free attacks as the scripts run them: `check_budget`
reads `--attack_budget` for the attack of `--attack`, and
`parameter_free` makes that attack at one radius, a `ParameterFree` that
the AutoAttack driver runs on every batch (a single attack is a sequence
of one). Every name, budget field and norm comes from the registry."""

import dataclasses

from attacks import registry
from attacks.autoattack import AUTOATTACK, AutoAttackConfig
from attacks.pgd import NORMS, PGD
from attacks.registry import Budget
from utils import UserError, word_list


@dataclasses.dataclass(frozen=True)
class ParameterFree:
    """A parameter-free attack at one radius.

    Attributes:
        name: its --attack name: a registered attack with a `make`, or a
            sequence of them ('autoattack': the standard version's four
            attacks in turn).
        eps: radius in pixel units (L-inf: eps/255; L2: as given).
        config: the AutoAttackConfig run (norm, budget, attacks).
    """

    name: str
    eps: float
    config: AutoAttackConfig

    def record(self) -> dict:
        """The attack's settings, for the results files."""
        return {
            "name": self.name,
            "norm": self.config.norm,
            "eps": self.eps,
            "attacks": list(self.config.attacks),
            "budget": dict(self.config.budget),
        }


def check_budget(
    attack: str, items: list[list], n_classes: int | None = None
) -> Budget | None:
    """The Budget of --attack_budget `items` ([KEY, N] pairs) for --attack
    `attack` (None for PGD), checked before any work: each key once, read
    by the attack, and no more targets than `n_classes` allows (None: not
    known yet, checked again once it is: each field's classes_problem).
    The bounds of each number are the parser's (cli.budget_item).

    Raises:
      UserError: a budget given to PGD, a key given twice or not read by
        the attack, or a value the model's classes cannot run.
    """
    keys = [key for key, _ in items]
    if attack == PGD.name:
        if items:
            raise UserError(
                "--attack_budget sets the parameter-free attacks: drop it, "
                f"or pass --attack {AUTOATTACK.name} (or one of its "
                "attacks); PGD takes --pgd_iters and --restarts"
            )
        return None
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise UserError(
            f"--attack_budget gives {', '.join(twice)} more than once"
        )
    used = registry.get(attack).budget_keys()
    unused = [key for key in keys if key not in used]
    if unused:
        raise UserError(
            f"--attack {attack} does not use --attack_budget "
            f"{unused[0]}: drop it (it reads {', '.join(used)})"
        )
    budget = Budget(**dict(items))
    if n_classes is not None:
        fields = registry.budget_fields()
        for key in used:
            check = fields[key].classes_problem
            problem = check and check(budget[key], n_classes)
            if problem:
                raise UserError(f"--attack_budget {problem}")
    return budget


def _norm_problem(name: str, norm: str) -> str | None:
    """Why --attack `name` cannot run in `norm`, naming what can, or
    None."""
    entry = registry.get(name)
    unsupported = [a for a in entry.runs if norm not in a.norms]
    if not unsupported:
        return None
    first = unsupported[0]
    what = f"includes {first.title}, which " if entry.members else ""
    norms = " and ".join(NORMS[n].title for n in first.norms)
    others = [
        a.name
        for a in registry.coded()
        if a.make is not None and norm in a.norms
    ]
    instead = (
        f"--attack {word_list(others, 'or')} for {NORMS[norm].title}, or "
        if others
        else ""
    )
    return (
        f"--attack {name} {what}supports {norms} only here: pass "
        f"{instead}--attack_norm {first.norms[0]}"
    )


def parameter_free(
    name: str, eps: float, norm: str, budget: Budget
) -> ParameterFree:
    """The ParameterFree attack `name` (a registered parameter-free attack
    or sequence) at radius `eps` (pixel units) in `norm`.

    Raises:
      UserError: an attack (alone or in the sequence) that does not
        support `norm` (Square: L-inf only here).
    """
    problem = _norm_problem(name, norm)
    if problem:
        raise UserError(problem)
    chosen = tuple(attack.name for attack in registry.get(name).runs)
    config = AutoAttackConfig(norm=norm, budget=budget, attacks=chosen)
    return ParameterFree(name, eps, config)
