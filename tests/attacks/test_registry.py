"""attacks/registry.py: every attack found by name, its budget fields,
norms, cost and result code defined once; codes that keep their meaning
(the broken_by files written before the registry decode as they counted);
Budget; registration refusals."""

import json
import os
import pickle

import numpy as np
import pytest

import attacks
from attacks import registry
from helpers import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "broken_by")
# The result codes as results files have always stored them (README,
# eval_and_make_adv.py --attack): a new attack takes a new number.
STORED_CODES = {
    "clean": 0,
    "apgd-ce": 1,
    "apgd-t": 2,
    "fab-t": 3,
    "square": 4,
    "robust": -1,
}


def test_the_attacks_and_their_order():
    assert attacks.names() == (
        "pgd",
        "apgd-ce",
        "apgd-t",
        "fab-t",
        "square",
        "autoattack",
    )
    assert attacks.STANDARD == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert attacks.get("apgd-t") is attacks.APGD_T
    with pytest.raises(KeyError, match="the attacks are pgd, apgd-ce"):
        attacks.get("cw")


def test_codes_are_the_stored_ones():
    codes = {attack.name: attack.code for attack in attacks.coded()}
    codes |= {"clean": attacks.CLEAN, "robust": attacks.ROBUST}
    assert codes == STORED_CODES
    assert attacks.outcomes() == tuple(STORED_CODES)
    assert attacks.PGD.code is None and attacks.AUTOATTACK.code is None


@pytest.mark.parametrize("attack", ["autoattack", "apgd-t", "fab-t", "square"])
def test_files_written_before_the_registry_decode_as_they_counted(attack):
    """The broken_by codes of a test_results pickle written at 7def486
    count, decoded by today's registry, what its results JSON counted by
    name then (tests/fixtures/broken_by/README.md)."""
    with open(os.path.join(FIXTURES, f"test_results_{attack}.pkl"), "rb") as f:
        codes = pickle.load(f)["broken_by"]
    with open(os.path.join(FIXTURES, f"results_{attack}.json")) as f:
        record = json.load(f)
    assert attacks.count_codes(codes) == record["sources"][0]["broken_by"]
    assert record["attack"]["attacks"] == [
        a.name for a in attacks.get(attack).runs
    ]
    budget = attacks.Budget(**record["attack"]["budget"])
    assert dict(budget) == record["attack"]["budget"]


def test_count_codes_counts_every_outcome_and_refuses_unknown_codes():
    counts = attacks.count_codes(np.array([0, 1, 1, -1, 4], np.int32))
    assert list(counts) == list(attacks.outcomes())
    assert counts == {
        "clean": 1,
        "apgd-ce": 2,
        "apgd-t": 0,
        "fab-t": 0,
        "square": 1,
        "robust": 1,
    }
    with pytest.raises(KeyError):
        attacks.count_codes(np.array([7]))


def test_budget_fields_defaults_bounds_and_readers():
    fields = attacks.budget_fields()
    assert {name: (f.default, f.maximum) for name, f in fields.items()} == {
        "apgd_iters": (100, 100_000),
        "apgd_restarts": (1, 1_000),
        "n_targets": (9, 999),
        "fab_iters": (100, 100_000),
        "fab_restarts": (1, 1_000),
        "square_queries": (5000, 5_000_000),
    }
    assert attacks.APGD_CE.budget_keys() == ("apgd_iters", "apgd_restarts")
    assert attacks.APGD_T.budget_keys() == ("apgd_iters", "n_targets")
    assert attacks.FAB_T.budget_keys() == (
        "n_targets",
        "fab_iters",
        "fab_restarts",
    )
    assert attacks.AUTOATTACK.budget_keys() == tuple(fields)
    assert attacks.PGD.budget_keys() == ()
    assert fields["n_targets"].classes_problem(10, 10)
    assert fields["n_targets"].classes_problem(9, 10) is None


def test_norms_and_costs():
    assert attacks.SQUARE.norms == ("linf",)
    assert attacks.AUTOATTACK.norms == ("linf",)
    assert attacks.APGD_CE.norms == attacks.PGD.norms == ("linf", "l2")
    standard = attacks.Budget()
    costs = {a.name: a.cost(standard) for a in attacks.AUTOATTACK.members}
    assert costs == pytest.approx(
        {"apgd-ce": 100, "apgd-t": 900, "fab-t": 900, "square": 5000 / 3}
    )
    assert attacks.AUTOATTACK.cost(standard) == pytest.approx(
        sum(costs.values())
    )
    assert attacks.PGD.cost(standard) == attacks.EVAL_ITERS
    assert [a.gradient_free for a in attacks.AUTOATTACK.members] == [
        False,
        False,
        False,
        True,
    ]


def test_budget_reads_checks_hashes_and_pickles():
    budget = attacks.Budget(apgd_iters=3)
    assert budget.apgd_iters == budget["apgd_iters"] == 3
    assert budget.n_targets == 9
    assert budget == attacks.Budget(apgd_iters=3)
    assert hash(budget) == hash(attacks.Budget(apgd_iters=3))
    assert budget != attacks.Budget()
    assert pickle.loads(pickle.dumps(budget)) == budget
    assert budget.replace(n_targets=2) == attacks.Budget(
        apgd_iters=3, n_targets=2
    )
    with pytest.raises(AttributeError):
        budget.apgd_iters = 4
    with pytest.raises(TypeError, match="unknown field 'steps'"):
        attacks.Budget(steps=3)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        attacks.Budget(fab_restarts=0)
    with pytest.raises(ValueError, match="at most 999"):
        attacks.Budget(n_targets=1000)


def _toy(**changes):
    fields = dict(
        name="toy-refused",
        title="Toy",
        norms=("linf",),
        cost=lambda budget: 1.0,
        make=lambda budget, norm, eps: None,
        code=99,
    )
    return registry.Attack(**(fields | changes))


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"name": "apgd-ce"}, "registered already"),
        ({"code": 3}, "code 3 is fab-t's"),
        ({"code": 0}, "a code is an int >= 1"),
        (
            {"budget": (registry.BudgetField("n_targets", 5, 10),)},
            "budget field 'n_targets' is defined already",
        ),
        (
            {"members": (_toy(name="unregistered"),), "make": None},
            "register unregistered first",
        ),
    ],
)
def test_registration_refuses_what_would_change_a_name_or_code(
    changes, problem
):
    before = attacks.names()
    with pytest.raises(ValueError, match=problem):
        registry.register(_toy(**changes))
    assert attacks.names() == before


def test_a_sequence_reads_its_members_budgets_and_norms():
    both = registry.sequence("both", "Both", (attacks.APGD_CE, attacks.SQUARE))
    assert both.norms == ("linf",)
    assert both.budget_keys() == (
        "apgd_iters",
        "apgd_restarts",
        "square_queries",
    )
    assert both.runs == (attacks.APGD_CE, attacks.SQUARE)
    assert both.code is None and both.parameter_free
    assert attacks.PGD.runs == () and not attacks.PGD.parameter_free
    assert attacks.SQUARE.runs == (attacks.SQUARE,)
