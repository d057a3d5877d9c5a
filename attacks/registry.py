"""The attacks by name: one `Attack` entry each, defined in the attack's
own module (which calls `register`), and read by everything that names an
attack: `--attack`'s choices and `--attack_budget`'s keys (`cli`), a
grid's robustness keys (`sweeper.schema`), the cost estimate
(`sweeper.estimate`), the report's columns (`sweeper.collect`) and the
counts of who broke each example (`count_codes`).

An entry holds the attack's name, its title in prose, the budget fields it
reads (`BudgetField`: name, default and largest value), the norms it
supports, its result code, its cost, and how to make it: `make(budget,
norm, eps)` returns

    attack(logits_fn, images, labels, key) -> attacks.common.AttackResult

for a logits function (B, H, W, C) images in [0, 1] -> (B, K) logits, a
traceable function (eps may be a traced value). A sequence of attacks
(AutoAttack) lists its `members` instead of a `make`; PGD, the original's
attack, reads no budget: it is made from its own settings
(`attacks.pgd.AttackConfig`: the scripts' PGD flags).

Result codes (`broken_by`: per example, the attack that broke it first)
are numbers fixed with each attack, stored in results files: CLEAN (0) for
an example wrong when clean, ROBUST (-1) for one that no attack broke, and
an attack's own `code` (1 or more), never renumbered or reused, so that a
stored code keeps its meaning whatever attacks are added.
"""

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

CLEAN = 0  # broken_by of an example misclassified when clean
ROBUST = -1  # broken_by of an example no attack broke
CLEAN_NAME = "clean"
ROBUST_NAME = "robust"


def check_positive(name: str, value: int) -> None:
    """Raises ValueError unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")


@dataclasses.dataclass(frozen=True)
class BudgetField:
    """One key of `--attack_budget KEY=N` (and of a grid's
    robustness.budget): an integer from 1 to `maximum`, `default` the
    standard AutoAttack's.

    classes_problem: (value, number of classes) -> why the value cannot
        run on a model of that many classes, or None (n_targets: only the
        wrong classes can be targets); None when any value can.
    """

    name: str
    default: int
    maximum: int
    classes_problem: Callable[[int, int], str | None] | None = None

    def check(self, value: int) -> None:
        """Raises ValueError unless `value` is an int from 1 to maximum."""
        check_positive(self.name, value)
        if value > self.maximum:
            raise ValueError(
                f"{self.name} must be at most {self.maximum}, not {value}"
            )


# A function of (budget, norm, eps) that makes an attack's
# (logits_fn, images, labels, key) -> AttackResult.
Make = Callable[["Budget", str, Any], Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class Attack:
    """A registered attack (see the module's docstring).

    Attributes:
        name: its --attack value, and its name in results files, grid
            configs and report columns ('apgd-ce').
        title: its name in prose ('APGD-CE').
        norms: the norms it supports ('linf', 'l2': keys of
            attacks.NORMS).
        cost: budget -> its PGD-step equivalents per image, an upper
            bound (a PGD step: one forward and one backward pass).
        make: (budget, norm, eps) -> the attack; None for PGD and for a
            sequence.
        code: its broken_by code, fixed for good (>= 1); None for an
            attack that records none (PGD, a sequence).
        budget: the budget fields it reads.
        members: for a sequence (`sequence`), its attacks in turn.
        gradient_free: it reads only logits (Square): where it breaks
            what the gradient attacks missed, gradients may be masked.
    """

    name: str
    title: str
    norms: tuple[str, ...]
    cost: Callable[["Budget"], float]
    make: Make | None = None
    code: int | None = None
    budget: tuple[BudgetField, ...] = ()
    members: tuple["Attack", ...] = ()
    gradient_free: bool = False

    @property
    def runs(self) -> tuple["Attack", ...]:
        """The attacks the AutoAttack driver runs for it, in turn: its
        members, itself, or () for PGD (which has a path of its own)."""
        if self.members:
            return self.members
        return (self,) if self.make is not None else ()

    @property
    def parameter_free(self) -> bool:
        """Whether it is run by the AutoAttack driver with a Budget."""
        return bool(self.runs)

    def budget_keys(self) -> tuple[str, ...]:
        """The names of the budget fields it reads, in Budget's order."""
        used = {f.name for f in self.budget}
        return tuple(name for name in budget_fields() if name in used)


def _unique_fields(attacks: Iterable[Attack]) -> tuple[BudgetField, ...]:
    """The budget fields of `attacks`, each once, in their order."""
    found: dict[str, BudgetField] = {}
    for attack in attacks:
        for field in attack.budget:
            found.setdefault(field.name, field)
    return tuple(found.values())


def sequence(name: str, title: str, members: tuple[Attack, ...]) -> Attack:
    """An attack that runs `members` in turn, each on the examples the
    earlier ones left robust: it reads their budget fields, supports the
    norms all of them do, and costs at most the sum of their costs."""
    norms = tuple(
        n for n in members[0].norms if all(n in m.norms for m in members)
    )
    return Attack(
        name=name,
        title=title,
        norms=norms,
        cost=lambda budget: sum(m.cost(budget) for m in members),
        budget=_unique_fields(members),
        members=members,
    )


_REGISTRY: dict[str, Attack] = {}


def _registration_problem(attack: Attack) -> str | None:
    """Why `attack` cannot join the registry, or None."""
    if attack.name in _REGISTRY:
        return f"an attack named {attack.name!r} is registered already"
    if attack.code is not None:
        if not isinstance(attack.code, int) or attack.code < 1:
            return f"{attack.name}: a code is an int >= 1, not {attack.code}"
        taken = [a.name for a in _REGISTRY.values() if a.code == attack.code]
        if taken:
            return f"{attack.name}: code {attack.code} is {taken[0]}'s"
    fields = budget_fields()
    for field in attack.budget:
        if fields.get(field.name, field) != field:
            return (
                f"{attack.name}: budget field {field.name!r} is defined "
                "already, otherwise: read that one"
            )
    missing = [m.name for m in attack.members if m.name not in _REGISTRY]
    if missing:
        return f"{attack.name}: register {missing[0]} first"
    return None


def register(attack: Attack) -> Attack:
    """Adds `attack` to the registry and returns it (`X = register(...)`).

    Raises:
        ValueError: its name or code is taken, a budget field of its name
            is defined otherwise, or a member is not registered.
    """
    problem = _registration_problem(attack)
    if problem:
        raise ValueError(problem)
    _REGISTRY[attack.name] = attack
    return attack


def get(name: str) -> Attack:
    """The attack registered as `name`; KeyError naming the others."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"no attack {name!r}; the attacks are {', '.join(_REGISTRY)}"
        ) from None


def names() -> tuple[str, ...]:
    """Every registered attack's name, in the order of registration."""
    return tuple(_REGISTRY)


def coded() -> tuple[Attack, ...]:
    """The attacks with a result code, by code."""
    found = [a for a in _REGISTRY.values() if a.code is not None]
    return tuple(sorted(found, key=lambda a: a.code))


def budget_fields() -> dict[str, BudgetField]:
    """{name: BudgetField} of every registered attack, in the order of
    registration (a field read by several attacks counts once)."""
    return {f.name: f for f in _unique_fields(_REGISTRY.values())}


def outcomes() -> tuple[str, ...]:
    """The names of broken_by's outcomes, in the order results files
    count them: clean, each coded attack by code, robust."""
    return (CLEAN_NAME, *(a.name for a in coded()), ROBUST_NAME)


def count_codes(codes: np.ndarray) -> dict[str, int]:
    """{outcome: how many examples of the int (n,) broken_by `codes` it
    covers} for every outcome (`outcomes`); KeyError for an unknown
    code."""
    named = {CLEAN: CLEAN_NAME, ROBUST: ROBUST_NAME}
    named |= {a.code: a.name for a in coded()}
    counts = dict.fromkeys(outcomes(), 0)
    values, numbers = np.unique(codes, return_counts=True)
    for code, count in zip(values, numbers, strict=True):
        counts[named[int(code)]] += int(count)
    return counts


class Budget(Mapping[str, int]):
    """Iterations, restarts and queries: a value for each budget field of
    the registered attacks (`budget_fields`), its default (the standard
    AutoAttack's) where none is given, each checked against its bounds
    (ValueError). Read as `budget.apgd_iters` or `budget['apgd_iters']`;
    immutable and hashable (compiled attacks are cached by it);
    `dict(budget)` is what results files record.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: int) -> None:
        fields = budget_fields()
        for name in values:
            if name not in fields:
                raise TypeError(
                    f"Budget got an unknown field {name!r}; the fields are "
                    f"{', '.join(fields)}"
                )
        full = {
            name: values.get(name, f.default) for name, f in fields.items()
        }
        for name, value in full.items():
            fields[name].check(value)
        object.__setattr__(self, "_values", full)

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> int:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Budget is immutable: use replace")

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self._values.items())
        return f"Budget({items})"

    def __reduce__(self) -> tuple:
        return (_budget, (dict(self._values),))

    def replace(self, **changes: int) -> "Budget":
        """This budget with `changes`."""
        return Budget(**{**self._values, **changes})


def _budget(values: dict[str, int]) -> Budget:
    """Budget(**values), for pickle (keyword arguments)."""
    return Budget(**values)
