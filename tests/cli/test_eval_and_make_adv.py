"""cli.eval_and_make_adv: eval_and_make_adv.py's parser with the
original's flags and defaults (SPEC), --test_path '' meaning the test set,
file-name parts checked at parse time, and the AdvEvalSettings it makes."""

import pytest

from cli import eval_and_make_adv
from helpers import assert_original_defaults
from training import adv_eval
from utils import UserError

ORIGINAL_DEFAULTS = {
    "save_name": "test_results",
    "bonus_dir": ".",
    "random_seed": 0,
    "eps": 4.0,
    "pgd_iters": 100,
    "linear": False,
    "centering": False,
    "no_adv": False,
    "save_examples": False,
    "short": False,
}


def test_the_original_flags_and_defaults():
    args = eval_and_make_adv.parse_args(["--model_path", "m"])
    assert_original_defaults(args, ORIGINAL_DEFAULTS)


def test_model_path_is_required():
    with pytest.raises(UserError) as stop:
        eval_and_make_adv.parse_args([])
    assert "--model_path" in str(stop.value)


@pytest.mark.parametrize(
    "paths, expected", [([""], None), (["", ""], None), (["a"], ["a"])]
)
def test_an_empty_test_path_is_the_test_set(paths, expected):
    args = eval_and_make_adv.parse_args(
        ["--model_path", "m", "--test_path", *paths]
    )
    assert args.test_path == expected


@pytest.mark.parametrize("name", ["", "sub/x", "../escaped"])
def test_save_name_is_a_plain_name(name):
    with pytest.raises(UserError) as stop:
        eval_and_make_adv.parse_args(
            ["--model_path", "m", "--save_name", name]
        )
    assert "--save_name" in str(stop.value)


def test_settings_are_typed_and_record_every_flag():
    args = eval_and_make_adv.parse_args(
        ["--model_path", "m", "--test_path", ""]
    )
    settings = eval_and_make_adv.settings(args)
    assert isinstance(settings, adv_eval.AdvEvalSettings)
    assert settings.test_path is None and settings.flags == vars(args)
    assert settings.model_path == "m"
