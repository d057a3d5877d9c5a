"""attacks/parameter_free.py: --attack_budget read for the attack of
--attack (the refusals' words as the scripts have always printed them),
and the attack made at a radius, its norm checked by the registry."""

import pytest

import attacks
from utils import UserError


def test_pgd_takes_no_budget():
    assert attacks.check_budget("pgd", []) is None
    with pytest.raises(UserError) as err:
        attacks.check_budget("pgd", [["apgd_iters", 5]])
    assert str(err.value) == (
        "--attack_budget sets the parameter-free attacks: drop it, or pass "
        "--attack autoattack (or one of its attacks); PGD takes --pgd_iters "
        "and --restarts"
    )


def test_a_budget_fills_the_defaults():
    budget = attacks.check_budget("apgd-t", [["n_targets", 3]], 10)
    assert budget == attacks.Budget(n_targets=3)
    assert attacks.check_budget("autoattack", []) == attacks.Budget()


@pytest.mark.parametrize(
    "attack,items,classes,message",
    [
        (
            "autoattack",
            [["fab_iters", 5], ["fab_iters", 6]],
            None,
            "--attack_budget gives fab_iters more than once",
        ),
        (
            "apgd-ce",
            [["square_queries", 5]],
            None,
            "--attack apgd-ce does not use --attack_budget square_queries: "
            "drop it (it reads apgd_iters, apgd_restarts)",
        ),
        (
            "fab-t",
            [["n_targets", 10]],
            10,
            "--attack_budget n_targets=10 asks for more target classes than "
            "the 9 wrong ones of 10 classes: pass n_targets=9 or fewer",
        ),
    ],
)
def test_budget_refusals(attack, items, classes, message):
    with pytest.raises(UserError) as err:
        attacks.check_budget(attack, items, classes)
    assert str(err.value) == message


def test_too_many_targets_pass_until_the_classes_are_known():
    budget = attacks.check_budget("apgd-t", [["n_targets", 10]])
    assert budget.n_targets == 10


def test_parameter_free_runs_the_registry_sequence():
    attack = attacks.parameter_free(
        "autoattack", 4 / 255, "linf", attacks.Budget()
    )
    assert attack.config.attacks == attacks.STANDARD
    record = attack.record()
    assert record["attacks"] == list(attacks.STANDARD)
    assert record["budget"] == dict(attacks.Budget())
    single = attacks.parameter_free("fab-t", 0.25, "l2", attacks.Budget())
    assert single.config.attacks == ("fab-t",)
    assert single.config.norm == "l2"


@pytest.mark.parametrize(
    "name,message",
    [
        (
            "square",
            "--attack square supports L-inf only here: pass --attack "
            "apgd-ce, apgd-t or fab-t for L2, or --attack_norm linf",
        ),
        (
            "autoattack",
            "--attack autoattack includes Square, which supports L-inf only "
            "here: pass --attack apgd-ce, apgd-t or fab-t for L2, or "
            "--attack_norm linf",
        ),
    ],
)
def test_a_norm_an_attack_does_not_support_is_refused(name, message):
    with pytest.raises(UserError) as err:
        attacks.parameter_free(name, 0.25, "l2", attacks.Budget())
    assert str(err.value) == message
