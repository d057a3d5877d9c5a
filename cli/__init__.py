"""Command lines of the entry scripts: one-line errors, numbers checked at
parse time, the flags several scripts share, turning parsed flags into a
library's settings (`settings`), and running a script's main.

Every number a script takes is parsed by `number`, so a NaN, an infinity or
a value out of range is refused before anything runs, with one line that
names the flag. Choices of models, datasets and attacks come from their
registries (`models.MODELS`, `data.DATASETS`, `attacks.registry`).

The parsers of the scripts whose command lines a sweep reads are modules
here, named after their scripts (`cli.run_exp`, `cli.eval_and_make_adv`,
`cli.calculate_kernel`): the script and `sweep.py` both import them.

May import: every layer below it (the core, `ntk`, `training`,
`analysis`, `store`, `utils`); never an entry script.
"""

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import attacks
import data
import models
from utils import UserError, one_line, word_list

Settings = TypeVar("Settings")


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def number_problem(
    value: float,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: bool = False,
) -> str | None:
    """What is wrong with `value` under the rule of every number a script
    or a grid file takes: finite, at least `minimum` (greater than it with
    `above`), at most `maximum` (None: no bound). None when it is fine.

    Example: `number_problem(float("nan"))` is 'must be finite'.
    """
    # An int is finite (and may be too large for a float).
    if not isinstance(value, int) and not math.isfinite(value):
        return "must be finite"
    if minimum is not None and (
        value <= minimum if above else value < minimum
    ):
        bound = "greater than" if above else "at least"
        return f"must be {bound} {minimum}"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum}"
    return None


def number(
    kind: type,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: bool = False,
) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)`, checked by `number_problem` (finite,
    at least `minimum`, greater than it with `above`, at most `maximum`).

    Example: `number(float, 0, above=True)` takes positive finite floats.
    """

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {noun}"
            ) from None
        problem = number_problem(value, minimum, maximum, above=above)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in messages
    return parse


def file_prefix(text: str) -> str:
    """An argparse type: the prefix of output file names, a plain name:
    not empty, without a folder separator, not starting with '.' (hidden
    names are skipped by the scripts that read folders, and are those of
    temporary files). The folder is another flag's (--bonus_dir)."""
    separators = {os.sep, os.altsep or os.sep}
    if not text:
        raise argparse.ArgumentTypeError(
            "is empty: give a plain file-name prefix"
        )
    if any(sep in text for sep in separators) or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain file-name prefix: give a name without "
            "'/' that does not start with '.' (--bonus_dir chooses the "
            "folder)"
        )
    return text


positive_int = number(int, 1)
nonnegative_int = number(int, 0)
positive_float = number(float, 0, above=True)
nonnegative_float = number(float, 0)


def add_seed_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """--random_seed: an int from 0 to 2³² − 1, default 0. The bound is
    NumPy's legacy generator's (the class-balanced subsets), and beyond it
    jax.random.PRNGKey keeps only the low 32 bits, so 2³² would give seed
    0's numbers."""
    parser.add_argument(
        "--random_seed",
        type=number(int, 0, data.MAX_LEGACY_SEED),
        default=0,
        help=f"{help} (0 to {data.MAX_LEGACY_SEED})",
    )


def add_order_seed_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """--order_seed: an int in --random_seed's range, default None (the
    entry script puts --random_seed's value in its place, so that a run
    without the flag records the seed it used)."""
    parser.add_argument(
        "--order_seed",
        type=number(int, 0, data.MAX_LEGACY_SEED),
        default=None,
        help=f"{help} (0 to {data.MAX_LEGACY_SEED}; default --random_seed)",
    )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """--model and --width, defaulting to the checkpoint's (None here)."""
    parser.add_argument(
        "--model",
        choices=sorted(models.MODELS),
        default=None,
        help="default: the checkpoint's, else resnet18",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="ResNet first-stage channels; default: the checkpoint's, else "
        f"{models.DEFAULT_WIDTH}",
    )


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """--dataset (default: the checkpoint's, None here) and --data_path."""
    parser.add_argument(
        "--dataset",
        choices=sorted(data.DATASETS),
        default=None,
        help="default: the checkpoint's, else cifar10",
    )
    parser.add_argument(
        "--data_path", default="./data", help="where the datasets live"
    )


def add_eps_flag(parser: argparse.ArgumentParser) -> None:
    """--eps: the L∞ radius in 1/255 units, positive, default 4.0."""
    parser.add_argument(
        "--eps",
        type=positive_float,
        default=4.0,
        help="L∞ radius in 1/255 units (default 4.0)",
    )


# --attack's choices and --attack_budget's keys: the registry's.
ATTACK_CHOICES = attacks.names()
BUDGET_KEYS = tuple(attacks.budget_fields())


def budget_item(text: str) -> list:
    """An argparse type: one KEY=N of --attack_budget, KEY a budget field
    of the registered attacks and N an integer from 1 to the field's
    maximum, as [KEY, N] (a list, so that the flags recorded in
    config.json read back equal)."""
    key, sep, value = text.partition("=")
    if not sep or key not in BUDGET_KEYS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=N with KEY one of {', '.join(BUDGET_KEYS)}"
        )
    maximum = attacks.budget_fields()[key].maximum
    try:
        return [key, number(int, 1, maximum)(value)]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{key}: {err}") from None


def _budget_help() -> str:
    """--attack_budget's help: the keys, defaults and bounds."""
    fields = attacks.budget_fields().values()
    classes = [f.name for f in fields if f.classes_problem is not None]
    return (
        "iterations, restarts and queries of the parameter-free attacks ("
        + ", ".join(f"{f.name}={f.default}" for f in fields)
        + ": the standard version's); only the keys --attack reads, each "
        + "at most "
        + ", ".join(f"{f.maximum}" for f in fields)
        + " in that order"
        + (
            f" ({word_list(classes)} below the number of classes)"
            if classes
            else ""
        )
    )


def add_attack_flags(parser: argparse.ArgumentParser, what: str) -> None:
    """--attack and --attack_budget; `what` says what the attack measures
    (for the help)."""
    standard = attacks.AUTOATTACK
    parser.add_argument(
        "--attack",
        default=attacks.PGD.name,
        choices=ATTACK_CHOICES,
        help=f"attack of {what}: {attacks.PGD.name} (the original's), one "
        f"parameter-free attack, or {standard.name} ("
        f"{word_list([a.title for a in standard.members])} in turn, the "
        "standard version)",
    )
    parser.add_argument(
        "--attack_budget",
        nargs="+",
        type=budget_item,
        default=[],
        metavar="KEY=N",
        help=_budget_help(),
    )


def settings(cls: type[Settings], args: argparse.Namespace) -> Settings:
    """The frozen dataclass `cls` of a library's settings from a script's
    parsed flags: each field the flag of the same name, and a field
    `flags`, where `cls` has one, every flag as parsed (what the results
    files record)."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = {name: getattr(args, name) for name in names if name != "flags"}
    if "flags" in names:
        values["flags"] = dict(vars(args))
    return cls(**values)


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """--no_progress: no progress bars."""
    parser.add_argument(
        "--no_progress", action="store_true", help="no progress bars"
    )


def run_cli(main_fn: Callable[[], object]) -> object:
    """Run an entry script's ``main_fn()`` and turn user errors into exits.

    UserError: ``error: <message>`` on stderr, exit status 2, no traceback.
    KeyboardInterrupt: ``interrupted`` on stderr, exit status 130.

    Returns:
        Whatever ``main_fn`` returns.
    """
    try:
        return main_fn()
    except UserError as err:
        print(f"error: {one_line(err, limit=1000)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
