"""Tests for cli: numbers checked at parse time, shared flags from the
registries, one-line errors and exit statuses."""

import argparse
import dataclasses
import os
import subprocess
import sys

import pytest

import attacks
import cli
import data
import models
from helpers import ROOT, SUBPROCESS_TIMEOUT_S, assert_one_line_error


def parser_with(*flag_types):
    parser = cli.ArgumentParser()
    for name, kind in flag_types:
        parser.add_argument(f"--{name}", type=kind)
    return parser


@pytest.mark.parametrize(
    "kind, text, problem",
    [
        (cli.positive_float, "nan", "must be finite"),
        (cli.positive_float, "inf", "must be finite"),
        (cli.positive_float, "-inf", "must be finite"),
        (cli.positive_float, "0", "greater than 0"),
        (cli.positive_float, "-1e-9", "greater than 0"),
        (cli.nonnegative_float, "-0.5", "at least 0"),
        (cli.positive_int, "0", "at least 1"),
        (cli.nonnegative_int, "-1", "at least 0"),
        (cli.positive_int, "2.5", "not an integer"),
        (cli.positive_float, "four", "not a number"),
        (cli.number(float, 0, 1), "1.5", "at most 1"),
        (cli.file_prefix, "", "is empty"),
        (cli.file_prefix, "sub/x", "not a plain file-name prefix"),
        (cli.file_prefix, "../sn", "not a plain file-name prefix"),
        (cli.file_prefix, ".x", "not a plain file-name prefix"),
    ],
)
def test_bad_numbers_and_names_are_refused_at_parse_time(kind, text, problem):
    with pytest.raises(cli.UserError) as info:
        parser_with(("x", kind)).parse_args([f"--x={text}"])
    message = str(info.value)
    assert "--x" in message and problem in message and "\n" not in message


@pytest.mark.parametrize(
    "kind, text, value",
    [
        (cli.positive_float, "1e-30", 1e-30),
        (cli.positive_float, "4", 4.0),
        (cli.nonnegative_float, "0", 0.0),
        (cli.positive_int, "7", 7),
        (cli.nonnegative_int, "0", 0),
        (cli.number(float, 0, 1), "1", 1.0),
    ],
)
def test_good_numbers_parse(kind, text, value):
    assert parser_with(("x", kind)).parse_args(["--x", text]).x == value


def test_shared_flags_take_their_choices_from_the_registries():
    parser = cli.ArgumentParser()
    cli.add_model_flags(parser)
    cli.add_data_flags(parser)
    cli.add_seed_flag(parser, "seed")
    cli.add_eps_flag(parser)
    args = parser.parse_args([])
    assert (args.model, args.width, args.dataset, args.random_seed) == (
        None,
        None,
        None,
        0,
    )
    assert args.eps == 4.0
    for name in models.MODELS:
        assert parser.parse_args(["--model", name]).model == name
    for name in data.DATASETS:
        assert parser.parse_args(["--dataset", name]).dataset == name
    for bad in (["--model", "vgg"], ["--dataset", "svhn"], ["--eps", "nan"]):
        with pytest.raises(cli.UserError):
            parser.parse_args(bad)
    with pytest.raises(cli.UserError, match="random_seed"):
        parser.parse_args(["--random_seed", "-1"])
    # 2**32 would draw seed 0's numbers (PRNGKey keeps the low 32 bits).
    assert parser.parse_args(["--random_seed", str(2**32 - 1)]).random_seed
    with pytest.raises(cli.UserError, match="at most 4294967295"):
        parser.parse_args(["--random_seed", str(2**32)])


def test_order_seed_flag_has_the_seed_range_and_no_default_of_its_own():
    parser = cli.ArgumentParser()
    cli.add_order_seed_flag(parser, "data order")
    assert parser.parse_args([]).order_seed is None
    assert parser.parse_args(["--order_seed", "1002"]).order_seed == 1002
    with pytest.raises(cli.UserError, match="at most 4294967295"):
        parser.parse_args(["--order_seed", str(2**32)])


def test_run_cli_user_error_exits_2_without_traceback():
    code = (
        "import cli, utils\n"
        "def main():\n"
        "    raise utils.UserError('bad --eps: must be positive')\n"
        "cli.run_cli(main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 2
    assert result.stderr == "error: bad --eps: must be positive\n"
    assert result.stdout == ""


def test_run_cli_interrupt_and_success(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        cli.run_cli(interrupted)
    assert info.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert cli.run_cli(lambda: 7) == 7


def test_parse_errors_are_one_line(capsys):
    def main():
        parser = cli.ArgumentParser()
        parser.add_argument("--eps", type=cli.positive_float)
        parser.parse_args(["--eps", "inf"])

    with pytest.raises(SystemExit) as info:
        cli.run_cli(main)
    assert info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--eps", "finite")


def test_attack_flags_read_the_attack_registry():
    """--attack's choices and --attack_budget's keys, defaults and bounds
    are the registry's (attacks.names(), attacks.budget_fields())."""
    parser = cli.ArgumentParser()
    cli.add_attack_flags(parser, "the test")
    assert cli.ATTACK_CHOICES == attacks.names()
    args = parser.parse_args([])
    assert (args.attack, args.attack_budget) == (attacks.PGD.name, [])
    args = parser.parse_args(
        ["--attack", "fab-t", "--attack_budget", "fab_iters=7"]
    )
    assert (args.attack, args.attack_budget) == ("fab-t", [["fab_iters", 7]])
    text = " ".join(parser.format_help().split())
    for name, field in attacks.budget_fields().items():
        assert f"{name}={field.default}" in text
        assert cli.budget_item(f"{name}={field.maximum}") == [
            name,
            field.maximum,
        ]
        with pytest.raises(argparse.ArgumentTypeError, match="at most"):
            cli.budget_item(f"{name}={field.maximum + 1}")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=N"):
        cli.budget_item("steps=3")
    assert "APGD-CE, APGD-T, FAB-T and Square in turn" in text


def test_settings_take_the_fields_of_the_dataclass_only():
    @dataclasses.dataclass(frozen=True)
    class Plain:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Recorded:
        a: int
        flags: dict

    args = argparse.Namespace(a=1, b=2)
    assert cli.settings(Plain, args) == Plain(1)
    assert cli.settings(Recorded, args) == Recorded(1, {"a": 1, "b": 2})
