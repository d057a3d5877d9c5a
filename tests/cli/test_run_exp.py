"""cli.run_exp: run_exp.py's parser with the original's flags and defaults
(SPEC), --order_seed following --random_seed, and the RunSettings it
makes for training.experiment."""

import pytest

import attacks
from cli import run_exp
from helpers import assert_original_defaults
from training import experiment
from utils import UserError

# The original's defaults, as ../shared/SPEC.md lists them.
ORIGINAL_DEFAULTS = {
    "standard_epochs": 100,
    "linear_epochs": 100,
    "random_seed": 0,
    "base_model_path": "",
    "loaders": "CC",
    "second_lr": 0.01,
    "eps": 4.0,
    "save_path": "./saved_models/",
    "centering": False,
    "save_models": False,
    "constant_save": False,
    "constant_save_linear": False,
    "loose_bn_second": False,
}


def test_the_original_flags_and_defaults():
    args = run_exp.parse_args([])
    assert_original_defaults(args, ORIGINAL_DEFAULTS)
    assert run_exp.parser().get_default("train_pgd_iters") == (
        attacks.TRAIN_ITERS
    )


def test_order_seed_follows_the_random_seed_unless_given():
    assert run_exp.parse_args(["--random_seed", "3"]).order_seed == 3
    args = run_exp.parse_args(["--random_seed", "3", "--order_seed", "5"])
    assert (args.random_seed, args.order_seed) == (3, 5)


@pytest.mark.parametrize(
    "flag, value, problem",
    [
        ("--standard_epochs", "-1", "at least 0"),
        ("--eps", "nan", "finite"),
        ("--second_lr", "0", "greater than 0"),
        ("--state_every", "0", "at least 1"),
    ],
)
def test_bad_numbers_are_refused_at_parse_time(flag, value, problem):
    with pytest.raises(UserError) as stop:
        run_exp.parse_args([flag, value])
    assert flag in str(stop.value) and problem in str(stop.value)


def test_settings_are_typed_and_record_every_flag():
    args = run_exp.parse_args(["--random_seed", "3", "--loaders", "AC"])
    settings = run_exp.settings(args)
    assert isinstance(settings, experiment.RunSettings)
    assert (settings.order_seed, settings.flags) == (3, vars(args))
    assert settings.flags["loaders"] == "AC"


def test_help_names_its_reference_page():
    assert "docs/run_exp.md" in run_exp.parser().format_help()
