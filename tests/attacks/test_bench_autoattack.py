"""bench/bench_autoattack.py times ours against the reference at the same
budget: its reference AutoAttack at torchattacks' budget has exactly the
settings of torchattacks' own `AutoAttack(version="standard")`, its
standard-budget one differs from that only in the steps, and both match
the `Budget` our side of the same row runs. Also the script end to end on
a few images."""

import pytest

import attacks
from helpers import needs_fashion_mnist, reference_side, run_script

torch, torchattacks, bench = reference_side("bench_autoattack")

EPS = 4 / 255


def settings(attack):
    """An attack's class and plain settings (numbers, strings, flags)."""
    plain = {
        name: value
        for name, value in vars(attack).items()
        if isinstance(value, (bool, int, float, str)) and name != "device"
    }
    return type(attack).__name__, plain


def own_standard(model):
    """The attacks inside torchattacks' own standard AutoAttack."""
    auto = torchattacks.AutoAttack(
        model, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0
    )
    return auto._autoattack.attacks


@pytest.fixture(scope="module")
def model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))


def test_torchattacks_standard_runs_ten_steps(model):
    steps = [getattr(a, "steps", None) for a in own_standard(model)]
    assert steps == [10, 10, 10, None]
    assert own_standard(model)[3].n_queries == 5000


def test_reference_at_ten_steps_is_torchattacks_own(model):
    ours = bench.reference_stages(model, EPS, bench.BUDGETS["autoattack-10"])
    assert [settings(a) for a in ours] == [
        settings(a) for a in own_standard(model)
    ]


def test_reference_at_the_standard_budget_differs_only_in_steps(model):
    budget = bench.BUDGETS["autoattack"]
    assert budget == attacks.Budget()
    ours = bench.reference_stages(model, EPS, budget)
    for mine, theirs in zip(ours, own_standard(model), strict=True):
        name, got = settings(mine)
        expected = settings(theirs)[1]
        if name != "Square":
            expected["steps"] = 100
        assert (name, got) == (type(theirs).__name__, expected)


@pytest.mark.parametrize("row", sorted(bench.BUDGETS))
def test_each_row_runs_the_same_budget_on_both_sides(model, row):
    budget = bench.BUDGETS[row]
    apgd, apgdt, fab, square = bench.reference_stages(model, EPS, budget)
    assert apgd.steps == apgdt.steps == budget.apgd_iters
    assert fab.steps == budget.fab_iters
    assert apgdt.n_target_classes == fab.n_target_classes == budget.n_targets
    assert apgd.n_restarts == budget.apgd_restarts
    assert fab.n_restarts == budget.fab_restarts
    assert square.n_queries == budget.square_queries


@pytest.mark.medium
@needs_fashion_mnist
def test_script_end_to_end():
    result = run_script(
        "bench/bench_autoattack.py",
        "--images",
        8,
        "--repeats",
        1,
        "--attacks",
        "apgd-ce",
        check=True,
    )
    line = result.stdout.strip().splitlines()[-1]
    assert line.lstrip().startswith("apgd-ce: ours"), result.stdout
    assert "speed-up" in line


def test_script_refuses_an_unknown_attack():
    result = run_script("bench/bench_autoattack.py", "--attacks", "pgd")
    assert result.returncode == 2
    assert "unknown attacks ['pgd']" in result.stderr
