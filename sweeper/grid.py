"""The experiment grid of a sweep: its config file, its cells and their state.

A grid is a TOML file (see `configs/` and README.md, "Sweeps and the
reproduction report"). Its cells are the entry-script commands a user would
type: phase 1 (`run_exp.py`), phase 2 from each saved θ(t) (`run_exp.py
--base_model_path`), the evaluation of each phase-2 model
(`eval_and_make_adv.py`), the kernels of θ(t) (`calculate_kernel.py`), their
analysis (`analyze_kernels.py`) and feature images
(`visualize_ntk_features.py`). Each cell knows the cells it needs and the
files that show it finished, so a re-run skips finished cells and resumes
interrupted ones.

Every path of a grid is relative to the repository root (where the entry
scripts live), unless absolute; commands run from that root.
"""

import dataclasses
import json
import math
import os
import shlex
import sys
import tomllib
from collections.abc import Callable, Collection, Sequence
from typing import Any

import cli
import data
import eval_and_make_adv
import models
import run_exp
import utils
from models import MODELS
from ntk import kernel_files
from store import atomic, layout, resume
from training import experiment, train
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's kernel times t (in epochs of phase 1).
PAPER_TIMES = (0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 5, 10)
PAPER_TIMES += (20, 50, 100)
PHASE1_LOADERS = ("C", "A", "F")
PHASE2_LOADERS = ("C", "A")
# Phase-2 dynamics: run_exp.py's flags and eval_and_make_adv.py's.
DYNAMICS_FLAGS = {
    "centered": ["--centering"],
    "linearized": [],
    "standard": ["--do_standard_second"],
}
EVAL_FLAGS = {
    "centered": ["--linear", "--centering"],
    "linearized": ["--linear"],
    "standard": [],
}
ATTACKS = ("linf", "l2")
STAGES = ("phase1", "phase2", "eval", "kernel", "analysis", "features")
EVAL_DIR = "eval"  # eval_and_make_adv.py's --bonus_dir
EVAL_SAVE_NAME = "test_results"
ANALYSIS_FILES = ("kernels.csv", "pairwise.csv", "analysis.json")
# The analysis across seeds (analyze_kernels.py --replicates).
SEEDS_ANALYSIS_DIR = "between_seeds"
SEEDS_ANALYSIS_FILES = (*ANALYSIS_FILES, "replicates.csv")
FEATURES_SAVE_NAME = "ntk_eig_images"
# Checkpoints per calculate_kernel.py call. None: every checkpoint of a
# phase-1 run (of one kernel size) in one call, `--model_path P1 P2 ...
# --bonus_dir kernels/{name}` (one process: data loaded and functions
# compiled once). 1: one call per checkpoint, each with its literal
# --bonus_dir. Both write the same files.
KERNEL_CHECKPOINTS_PER_CALL = None
DONE, PARTIAL, TODO = "done", "partial", "todo"
STATE_EVERY = 100  # run_exp.py's default --state_every
REQUIRED = object()
# A Key's check: what is wrong with a well-typed value, or None.
Check = Callable[[Any], str | None]


# --------------------------------------------------------------------------
# The config file
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of the config: its kind, what it means, its default.

    kind: 'int', 'float', 'str', 'bool', 'ints', 'floats', 'strs' or
    'table' (a table of strings, numbers or booleans).
    check(value) returns what is wrong with a well-typed value, or None.
    """

    kind: str
    meaning: str
    default: object = REQUIRED
    check: Callable | None = None


def _number(
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
) -> Check:
    """A number (or each of a list) by the scripts' rule for their flags,
    `cli.number_problem`: finite, at least `minimum` (greater with
    `above`), at most `maximum`."""

    def check(value: float | list[float]) -> str | None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            problem = cli.number_problem(v, minimum, maximum, above=above)
            if problem:
                return f"{problem}, not {v!r}"
        return None

    return check


def _at_least(minimum: float, strict: bool = False) -> Check:
    """At least `minimum` (greater than it when `strict`), and finite."""
    return _number(minimum, above=strict)


# Every number of a grid is finite; TOML's integers are 64-bit (a larger
# one is refused, as TOML says).
FINITE = _number()
TOML_INT = _number(-(2**63), 2**63 - 1)


def _seeds(value: int | list[int]) -> str | None:
    """Seeds of the class-balanced subsets (and of the runs): the scripts'
    range, in data.seed_problem's words."""
    for v in value if isinstance(value, list) else [value]:
        problem = data.seed_problem(v)
        if problem:
            return f": {problem}"
    return None


def _file_name(value: str) -> str | None:
    """A plain file name: printable, not empty, no folder in it."""
    if (
        value in ("", ".", "..")
        or "/" in value
        or "\\" in value
        or not value.isprintable()
    ):
        return (
            "must be a plain file name (printable, no '/' or '\\', not "
            f"empty, '.' or '..'), not {value!r}"
        )
    return None


def _path(value: str) -> str | None:
    """A path: not empty, printable."""
    if not value:
        return "must not be empty (a folder; '.' is the repository root)"
    if not value.isprintable():
        return f"must be a path of printable characters, not {value!r}"
    return None


def _one_of(choices: Collection[str]) -> Check:
    def check(value: str | list[str]) -> str | None:
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in choices:
                return f"must be one of {', '.join(choices)}, not {v!r}"
        return None

    return check


def _nonempty_unique(inner: Check | None = None) -> Check:
    def check(value: list) -> str | None:
        if not value:
            return "must list at least one value"
        if len(set(value)) != len(value):
            return f"lists a value twice: {value!r}"
        return inner(value) if inner else None

    return check


def _class_index(value: object) -> str | None:
    if value == kernel_files.ALL_CLASSES or (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        return None
    return f"must be an integer class, -1 (the sum) or 'all', not {value!r}"


def _times_key(meaning: str, default: list[float] | None = None) -> Key:
    """A list of kernel times t (epochs of phase 1)."""
    return Key("floats", meaning, default, _nonempty_unique(_at_least(0)))


STATE_EVERY_KEY = Key(
    "int", "run_exp.py --state_every", STATE_EVERY, _at_least(1)
)

SCHEMA = {
    "": {
        "name": Key(
            "str",
            "the preset's name; aggregation writes docs/results/{name}.csv",
            check=_file_name,
        ),
        "description": Key("str", "one line on what the grid is for", ""),
        "output_root": Key(
            "str",
            "folder of every cell's files (relative to the repository)",
            check=_path,
        ),
        "seeds": Key(
            "ints",
            "random seeds (--random_seed)",
            check=_nonempty_unique(_seeds),
        ),
    },
    "data": {
        "dataset": Key(
            "str", "dataset", check=_one_of(tuple(sorted(data.DATASETS)))
        ),
        "data_path": Key("str", "dataset folder", "./data", _path),
        "train_size": Key(
            "int", "training subset (0: all)", 0, check=_at_least(0)
        ),
        "test_size": Key("int", "test subset (0: all)", 0, check=_at_least(0)),
    },
    "model": {
        "name": Key("str", "network", check=_one_of(models.MODELS)),
        "width": Key("int", "ResNet width", 64, check=_at_least(1)),
    },
    "phase1": {
        "loaders": Key(
            "strs",
            "phase-1 loaders (C benign, A adversarial, F from epoch 50)",
            check=_nonempty_unique(_one_of(PHASE1_LOADERS)),
        ),
        "epochs": Key("int", "phase-1 epochs", check=_at_least(0)),
        "times": _times_key("kernel times t (default: the paper's saved)"),
        "state_every": STATE_EVERY_KEY,
    },
    "phase2": {
        "loaders": Key(
            "strs",
            "phase-2 loaders (C benign, A adversarial)",
            check=_nonempty_unique(_one_of(PHASE2_LOADERS)),
        ),
        "dynamics": Key(
            "strs",
            "phase-2 dynamics",
            ["centered"],
            check=_nonempty_unique(_one_of(tuple(DYNAMICS_FLAGS))),
        ),
        "epochs": Key("int", "phase-2 epochs", check=_at_least(1)),
        "lr": Key("float", "phase-2 learning rate", 0.01, _at_least(0, True)),
        "times": _times_key("the t of θ(t) phase 2 starts from"),
        "state_every": STATE_EVERY_KEY,
    },
    "attack": {
        "eps": Key("float", "L-inf radius in 1/255", 4.0, _at_least(0, True)),
        "train_pgd_iters": Key(
            "int", "PGD steps in training", 20, _at_least(1)
        ),
        "eval_pgd_iters": Key(
            "int", "PGD steps in run_exp's evaluation", 100, _at_least(1)
        ),
        "eval_attacks": Key(
            "strs",
            "attacks of run_exp's evaluation",
            list(ATTACKS),
            check=_one_of(ATTACKS),
        ),
    },
    "evaluation": {
        "test_size": Key("int", "test subset (0: all)", 0, _at_least(0)),
        "pgd_iters": Key("int", "PGD steps", 100, _at_least(1)),
        "save_examples": Key("bool", "write the adversarial examples", False),
    },
    "kernels": {
        "sizes": Key(
            "ints",
            "kernel sizes N (multiples of the number of classes)",
            check=_nonempty_unique(_at_least(1)),
        ),
        "class_index": Key(
            "str|int", "logit c, -1 (sum) or 'all'", "all", _class_index
        ),
        "times": _times_key("the t of the kernels (default: phase1.times)"),
        "memory_gb": Key(
            "float", "calculate_kernel.py --memory_gb", 0.0, _at_least(0)
        ),
        "image_seed": Key(
            "int",
            "calculate_kernel.py --random_seed: the seed of the kernel "
            "images, the same for every seed of the grid so that kernels of "
            "different seeds can be compared",
            0,
            _seeds,
        ),
    },
    "analysis": {
        "compare": Key(
            "strs",
            "two phase-1 loaders whose kernels analyze_kernels.py compares",
            None,
            check=_one_of(PHASE1_LOADERS),
        ),
    },
    "features": {
        "times": _times_key("the t of the feature images", REQUIRED),
        "class_index": Key("int", "logit c", 0, _at_least(0)),
        "size": Key("int", "kernel size N (one of kernels.sizes)", None),
        "n_images": Key("int", "eigenvectors", 3, _at_least(1)),
        "steps": Key("int", "signed-gradient steps", 600, _at_least(0)),
    },
    "slurm": {
        "partition": Key("str", "partition", ""),
        "account": Key("str", "account", ""),
        "qos": Key("str", "quality of service", ""),
        "gpus_per_node": Key("int", "GPUs per job", 1, _at_least(0)),
        "cpus_per_task": Key("int", "CPUs per job", 4, _at_least(1)),
        "mem_gb": Key("float", "memory per job (GB)", 32.0, _at_least(0)),
        "array_parallelism": Key(
            "int", "tasks of an array at once", 64, _at_least(1)
        ),
        "timeout_min": Key(
            "table", "minutes per job, by stage (default 60)", {}
        ),
        "additional": Key("table", "further sbatch options", {}),
    },
    "throughput": {
        "device": Key("str", "the device of the numbers"),
        "source": Key("str", "where the numbers were measured"),
        "phase1_benign_images_per_s": Key(
            "float", "images/s", check=_at_least(0, True)
        ),
        "phase1_adversarial_images_per_s": Key(
            "float", "images/s", check=_at_least(0, True)
        ),
        "phase2_benign_images_per_s": Key(
            "float", "images/s", check=_at_least(0, True)
        ),
        "phase2_adversarial_images_per_s": Key(
            "float", "images/s", check=_at_least(0, True)
        ),
        "pgd_image_steps_per_s": Key(
            "float",
            "test images × PGD steps per second",
            check=_at_least(0, True),
        ),
        "kernel_file_s": Key(
            "float", "seconds per per-class kernel file", check=_at_least(0)
        ),
        "features_s": Key(
            "float", "seconds per feature-image cell", 0.0, _at_least(0)
        ),
    },
}
OPTIONAL_SECTIONS = (
    "evaluation",
    "kernels",
    "analysis",
    "features",
    "slurm",
    "throughput",
)
REFERENCE_KEYS = {
    "phase1": Key("str", "phase-1 loader", check=_one_of(PHASE1_LOADERS)),
    "t": Key("float", "t", check=_at_least(0)),
    "phase2": Key("str", "phase-2 loader", check=_one_of(PHASE2_LOADERS)),
    "dynamics": Key("str", "dynamics", "centered"),
    "clean": Key("float", "clean accuracy (fraction)", check=_number(0, 1)),
    "linf": Key("float", "PGD-L∞ accuracy (fraction)", check=_number(0, 1)),
    "source": Key("str", "where the numbers come from"),
}
# Keys a re-run may change on an existing output root: the grid's axes
# (new values add cells) and what does not change any cell's files.
CHANGEABLE = {
    "name",
    "description",
    "seeds",
    "phase1.loaders",
    "phase1.times",
    "phase1.state_every",
    "phase2.state_every",
    "phase2.loaders",
    "phase2.dynamics",
    "phase2.times",
    "kernels.sizes",
    "kernels.times",
    "kernels.memory_gb",
    "features.times",
    "analysis.compare",
    "slurm",
    "throughput",
    "reference",
    "output_root",
}


def _kind_ok(kind: str, value: object) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = is_int or isinstance(value, float)
    simple = {
        "int": is_int,
        "float": is_number,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "str|int": isinstance(value, str) or is_int,
    }
    if kind in simple:
        return simple[kind]
    if kind == "table":
        return isinstance(value, dict) and all(
            isinstance(v, str | int | float | bool) for v in value.values()
        )
    item = {"ints": "int", "floats": "float", "strs": "str"}[kind]
    return isinstance(value, list) and all(_kind_ok(item, v) for v in value)


KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "str|int": "an integer or a string",
    "ints": "a list of integers",
    "floats": "a list of numbers",
    "strs": "a list of strings",
    "table": "a table of strings and numbers",
}


def _read_table(
    path: str, prefix: str, table: dict, schema: dict[str, Key]
) -> dict:
    """`table` checked against `schema`, defaults filled in.

    Raises UserError naming `prefix.key` for an unknown key, a missing one,
    a value of the wrong kind or a value its check refuses.
    """
    for key in table:
        if key not in schema:
            where = f"[{prefix}]" if prefix else "the top level"
            raise UserError(
                f"{path}: unknown key {_dotted(prefix, key)}; the keys of "
                f"{where} are {', '.join(schema)}"
            )
    out = {}
    for key, spec in schema.items():
        name = _dotted(prefix, key)
        if key not in table:
            if spec.default is REQUIRED:
                raise UserError(
                    f"{path}: missing key {name} ({spec.meaning}, "
                    f"{KIND_WORDS[spec.kind]})"
                )
            out[key] = spec.default
            continue
        value = table[key]
        if not _kind_ok(spec.kind, value):
            raise UserError(
                f"{path}: {name} must be {KIND_WORDS[spec.kind]} "
                f"({spec.meaning}), not {value!r}"
            )
        if spec.kind == "float":
            value = float(value)
        if spec.kind == "floats":
            value = [float(v) for v in value]
        problem = _general_problem(spec.kind, value)
        if problem is None and spec.check:
            problem = spec.check(value)
        if problem:
            sep = "" if problem.startswith((":", ".")) else " "
            raise UserError(f"{path}: {name}{sep}{problem}")
        out[key] = value
    return out


def _general_problem(kind: str, value: object) -> str | None:
    """What every value of its kind must be: numbers finite (integers
    64-bit), numbers of a table too ('.key must ...')."""
    if kind in ("int", "ints", "str|int") and not isinstance(value, str):
        return TOML_INT(value)
    if kind in ("float", "floats"):
        return FINITE(value)
    if kind == "table":
        for key, v in value.items():
            is_number = isinstance(v, int | float) and not isinstance(v, bool)
            problem = is_number and (
                TOML_INT(v) if isinstance(v, int) else FINITE(v)
            )
            if problem:
                return f".{key} {problem}"
    return None


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _toml_error(
    path: str, text: str, err: tomllib.TOMLDecodeError
) -> UserError:
    """A one-line UserError for a TOML syntax error, naming its key."""
    message = str(err)
    line_no = getattr(err, "lineno", None)
    if line_no is None:  # Python 3.11: "... (at line 5, column 9)"
        marker = message.rfind("(at line ")
        if marker >= 0:
            line_no = int(message[marker + 9 :].split(",")[0].rstrip(")"))
    section, key = "", None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if number == line_no:
            if "=" in stripped:
                key = stripped.split("=")[0].strip()
            break
        if stripped.startswith("[") and not stripped.startswith("[["):
            section = stripped.strip("[] ")
    named = f"key {_dotted(section, key)}: " if key else ""
    return UserError(
        f"{path}: {named}not valid TOML ({message}); give every key a value"
    )


def load_config(path: str) -> dict:
    """The config of `path`, checked, defaults filled in.

    Returns:
        A dict of sections (the top-level keys under ''), each a dict of
        key -> value; absent optional sections are None; 'reference' is a
        list of dicts.
    Raises:
        UserError: one line naming the file and the key at fault.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise UserError(
            f"cannot read grid file {path}: {err.strerror}"
        ) from None
    text = raw.decode("utf-8", errors="replace")
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _toml_error(path, text, err) from None
    top = {k: v for k, v in table.items() if not isinstance(v, dict | list)}
    top.update({k: v for k, v in table.items() if k == "seeds"})
    sections = {k for k in table if k not in top and k != "reference"}
    for name in sections:
        if name not in SCHEMA:
            raise UserError(
                f"{path}: unknown key {name}; the sections are "
                f"{', '.join(s for s in SCHEMA if s)}, reference"
            )
        if not isinstance(table[name], dict):
            raise UserError(f"{path}: {name} must be a table [{name}]")
    config = {"": _read_table(path, "", top, SCHEMA[""])}
    for name, schema in SCHEMA.items():
        if not name:
            continue
        if name not in table:
            if name not in OPTIONAL_SECTIONS:
                raise UserError(f"{path}: missing section [{name}]")
            config[name] = None
            continue
        config[name] = _read_table(path, name, table[name], schema)
    references = table.get("reference", [])
    if not isinstance(references, list) or not all(
        isinstance(r, dict) for r in references
    ):
        raise UserError(f"{path}: reference must be [[reference]] tables")
    config["reference"] = [
        _read_table(path, "reference", r, REFERENCE_KEYS) for r in references
    ]
    _check_combinations(path, config)
    return config


def saved_times(epochs: int) -> list:
    """The t of the checkpoints `run_exp.py --constant_save` writes in
    `epochs` epochs of phase 1: every integer 0..epochs and the fractional
    save points below `epochs`, ascending. (A list as long as `epochs`:
    the config check uses `is_saved`, which holds none.)"""
    times = {float(k) for k in range(epochs + 1)}
    times |= {f for f in train.FRACTIONAL_SAVE_EPOCHS if f < epochs}
    return sorted(times)


def is_saved(t: float, epochs: int) -> bool:
    """Whether `run_exp.py --constant_save` writes θ(t) in `epochs` epochs
    of phase 1 (t in saved_times(epochs), without listing them)."""
    if float(t).is_integer():
        return 0 <= t <= epochs
    return t in train.FRACTIONAL_SAVE_EPOCHS and t < epochs


def _saved_text(epochs: int) -> str:
    """saved_times(epochs) in words, short for any number of epochs."""
    if epochs <= 10:
        return ", ".join(format_t(t) for t in saved_times(epochs))
    fractions = [f for f in train.FRACTIONAL_SAVE_EPOCHS if f < epochs]
    return (
        f"every integer from 0 to {epochs} and "
        f"{', '.join(format_t(f) for f in fractions)}"
    )


def format_t(t: float) -> str:
    """t as run_exp.py names its checkpoint: 3 -> '3', 0.125 -> '0.125',
    10**8 -> '100000000' (an epoch's number, never '1e+08')."""
    t = float(t)
    if t.is_integer():
        return str(int(t))
    short = f"{t:g}"
    return short if float(short) == t else repr(t)


def _check_combinations(path: str, config: dict) -> None:
    """Refuses combinations no run can make (one UserError line)."""
    p1 = config["phase1"]
    epochs = p1["epochs"]
    if p1["times"] is None:
        p1["times"] = [float(t) for t in PAPER_TIMES if is_saved(t, epochs)]
    timed = [("phase1.times", p1["times"])]
    timed.append(("phase2.times", config["phase2"]["times"]))
    for section in ("kernels", "features"):
        if config[section] is not None:
            timed.append((f"{section}.times", config[section]["times"]))
    for name, times in timed:
        for t in times or []:
            if not is_saved(t, epochs):
                raise UserError(
                    f"{path}: {name} has t = {format_t(t)}, which phase 1 "
                    f"(phase1.epochs = {epochs}) does not save; "
                    f"saved: {_saved_text(epochs)}"
                )
    for section in ("phase2", "kernels"):
        if config[section] is not None and config[section]["times"] is None:
            config[section]["times"] = list(p1["times"])
    classes = data.n_classes(config["data"]["dataset"])
    # The class-balanced subsets the scripts draw, in their words.
    sized = [
        (f"data.{k}", config["data"][k]) for k in ("train_size", "test_size")
    ]
    if config["evaluation"] is not None:
        sized.append(
            ("evaluation.test_size", config["evaluation"]["test_size"])
        )
    if config["kernels"] is not None:
        sized += [("kernels.sizes", n) for n in config["kernels"]["sizes"]]
    for name, size in sized:
        problem = size and data.subset_size_problem(size, classes)
        if problem:
            raise UserError(f"{path}: {name}: {problem}")
    attacks_ = config["attack"]
    if len(set(attacks_["eval_attacks"])) != len(attacks_["eval_attacks"]):
        raise UserError(f"{path}: attack.eval_attacks lists an attack twice")
    kern = config["kernels"]
    if kern is not None:
        c = kern["class_index"]
        if c != kernel_files.ALL_CLASSES and not -1 <= c < classes:
            raise UserError(
                f"{path}: kernels.class_index must be 0..{classes - 1}, -1 "
                f"or 'all', not {c!r}"
            )
    for section in ("analysis", "features"):
        if config[section] is not None and kern is None:
            raise UserError(
                f"{path}: [{section}] needs a [kernels] section (the "
                f"kernels it reads)"
            )
    analysis = config["analysis"]
    if analysis is not None and analysis["compare"] is not None:
        pair = analysis["compare"]
        if len(pair) != 2 or pair[0] == pair[1]:
            raise UserError(
                f"{path}: analysis.compare must name two different phase-1 "
                f"loaders, not {pair!r}"
            )
        for loader in pair:
            if loader not in p1["loaders"]:
                raise UserError(
                    f"{path}: analysis.compare names {loader}, which is not "
                    f"in phase1.loaders"
                )
    feats = config["features"]
    if feats is not None:
        if feats["size"] is None:
            feats["size"] = kern["sizes"][0]
        if feats["size"] not in kern["sizes"]:
            raise UserError(
                f"{path}: features.size {feats['size']} is not one of "
                f"kernels.sizes {kern['sizes']}"
            )
        c = kern["class_index"]
        if c != kernel_files.ALL_CLASSES and c != feats["class_index"]:
            raise UserError(
                f"{path}: features.class_index {feats['class_index']} needs "
                f"its per-class kernel, but kernels.class_index is {c!r}"
            )
        if feats["class_index"] >= classes:
            raise UserError(
                f"{path}: features.class_index must be below {classes}"
            )
        for t in feats["times"]:
            if t not in kern["times"]:
                raise UserError(
                    f"{path}: features.times has t = {format_t(t)}, which is "
                    f"not in kernels.times"
                )
        if feats["n_images"] > feats["size"]:
            raise UserError(
                f"{path}: features.n_images must be at most features.size"
            )
    slurm = config["slurm"]
    if slurm is not None:
        for stage, minutes in slurm["timeout_min"].items():
            if stage not in STAGES:
                raise UserError(
                    f"{path}: unknown key slurm.timeout_min.{stage}; the "
                    f"stages are {', '.join(STAGES)}"
                )
            if (
                not isinstance(minutes, int)
                or isinstance(minutes, bool)
                or minutes < 1
            ):
                raise UserError(
                    f"{path}: slurm.timeout_min.{stage} must be a positive "
                    f"integer number of minutes, not {minutes!r}"
                )


def check_output_root(path: str, root: str) -> None:
    """Refuses an output root that cannot be written, writing nothing that
    stays: the nearest existing folder gets a probe file, removed at once."""
    problem = atomic.dir_write_problem(root)
    if problem is None:
        return
    kind, probe_dir, reason = problem
    if kind == "file":
        raise UserError(
            f"{path}: output_root {root} is under a file, "
            f"{probe_dir}; choose another output_root"
        )
    raise UserError(
        f"{path}: output_root {root} is not writable ({probe_dir}: "
        f"{reason}); choose another output_root"
    )


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """One command of the grid.

    id: the cell's name, a path-like string ('seed_0/phase1_A/t_3/...').
    stage: one of STAGES.
    script: the entry script (a file name in the repository root).
    args: its arguments, as a user would type them.
    deps: ids of the cells whose files it reads.
    outputs: files (paths as in args) that show it finished.
    keys: what the cell stands for: seed, phase1, t, phase2, dynamics, ...
    log: the file its stdout and stderr go to.
    """

    id: str
    stage: str
    script: str
    args: tuple
    deps: tuple
    outputs: tuple
    keys: dict
    log: str

    @property
    def run_exp(self) -> bool:
        return self.script == "run_exp.py"

    def argv(self, resume: bool = False) -> list:
        """The command's arguments; `--resume` added to continue a run."""
        return [self.script, *self.args, *(["--resume"] if resume else [])]

    def command(self, python: str = "python", resume: bool = False) -> str:
        """The command line, quoted for a POSIX shell."""
        return shlex.join([python, *self.argv(resume)])

    def available(self) -> bool:
        """Whether its entry script is in this checkout."""
        return os.path.exists(os.path.join(ROOT, self.script))


def here(path: str) -> str:
    """A grid path as an absolute path (grid paths are relative to ROOT)."""
    return os.path.normpath(os.path.join(ROOT, path))


def cell_status(cell: Cell) -> str:
    """DONE when the cell's files show it finished, PARTIAL for a run_exp.py
    run that started and can be resumed, TODO otherwise."""
    finished = all(os.path.exists(here(p)) for p in cell.outputs)
    if not cell.run_exp:
        return DONE if finished else TODO
    try:
        stage = resume.stage(here(cell.keys["save_path"]))
    except UserError:
        return PARTIAL  # being written, or damaged: run_exp.py says which
    if stage is None:
        return TODO
    if stage == "done":
        return DONE if finished else TODO
    return PARTIAL


def damaged(cell_id: str, path: str, problem: str, folder: str) -> UserError:
    """The one-line refusal of a cell's file that is not what its script
    writes: names the cell, the file, what is wrong and the fix."""
    return UserError(
        f"{cell_id}: {path} is damaged ({problem}): restore it, or remove "
        f"{folder} and run the sweep again to remake it"
    )


def read_cell_json(cell_id: str, path: str, folder: str) -> dict | None:
    """The JSON object a cell wrote at grid path `path`, or None when the
    file is absent.

    Raises:
        UserError (`damaged`): the file cannot be read, is not JSON, or
        holds something else than an object (e.g. a list).
    """
    try:
        with open(here(path), encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise damaged(cell_id, path, "a folder, not a file", folder) from None
    except OSError as err:
        raise damaged(cell_id, path, err.strerror, folder) from None
    except (ValueError, RecursionError) as err:
        problem = f"not valid JSON: {utils.one_line(err, limit=120)}"
        raise damaged(cell_id, path, problem, folder) from None
    if not isinstance(record, dict):
        kind = "a list" if isinstance(record, list) else type(record).__name__
        problem = f"{kind}, not a JSON object"
        raise damaged(cell_id, path, problem, folder)
    return record


# Flags that say where a cell reads and writes, or how it shows progress,
# not what it computes: a moved output root keeps its cells.
WHERE_FLAGS = set(experiment.NON_RUN_FLAGS) | {
    "base_model_path",
    "model_path",
    "bonus_dir",
    "save_name",
}
# The grid key behind each flag the grid sets, for the refusals' fix.
FLAG_KEYS = {
    "standard_epochs": "phase1.epochs",
    "linear_epochs": "phase2.epochs",
    "second_lr": "phase2.lr",
    "eps": "attack.eps",
    "train_pgd_iters": "attack.train_pgd_iters",
    "eval_pgd_iters": "attack.eval_pgd_iters",
    "eval_attacks": "attack.eval_attacks",
    "train_size": "data.train_size",
    "dataset": "data.dataset",
    "model": "model.name",
    "width": "model.width",
    "random_seed": "seeds",
    "pgd_iters": "evaluation.pgd_iters",
    "save_examples": "evaluation.save_examples",
}


def _flag_key(cell: Cell, flag: str) -> str:
    """The grid key behind `flag` of `cell`'s command, or '--flag'."""
    if flag == "test_size":
        return "data.test_size" if cell.run_exp else "evaluation.test_size"
    return FLAG_KEYS.get(flag, f"--{flag}")


def flags_record(cell: Cell) -> tuple[str, str] | None:
    """(the grid path of the file that records the flags a cell's command
    ran with, the folder that holds the cell's files), for run_exp.py cells
    (config.json) and evaluations (their results json); None for others."""
    if cell.run_exp:
        folder = cell.keys["save_path"]
        return os.path.join(folder, "config.json"), folder
    if cell.stage == "eval":
        return cell.outputs[0], os.path.dirname(cell.outputs[0])
    return None


def _same(a: object, b: object) -> bool:
    both_nan = all(isinstance(v, float) and math.isnan(v) for v in (a, b))
    return both_nan or a == b


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A flag a cell's files record with another value than its command's."""

    flag: str
    recorded: object
    wanted: object

    def __str__(self) -> str:
        return f"--{self.flag} {self.recorded!r}, not {self.wanted!r}"


def flag_mismatch(cell: Cell, strict: bool = True) -> Mismatch | None:
    """The first flag whose value the cell's files record differently from
    its command (str: '--eps 4.0, not 8.0'); None when they agree or
    nothing is recorded yet. Flags of WHERE_FLAGS do not count.

    strict: a damaged record raises UserError (`damaged`); otherwise it
    counts as nothing recorded (the cell's script handles it when it runs).
    """
    where = flags_record(cell)
    if where is None:
        return None
    path, folder = where
    try:
        record = read_cell_json(cell.id, path, folder)
        if record is not None and not isinstance(record.get("flags"), dict):
            raise damaged(cell.id, path, "no 'flags' object", folder)
    except UserError:
        if strict:
            raise
        return None
    if record is None:
        return None
    parse = (
        run_exp.parse_args if cell.run_exp else eval_and_make_adv.parse_args
    )
    wanted = vars(parse(list(cell.args)))
    recorded = record["flags"]
    for name in sorted(set(wanted) & set(recorded) - WHERE_FLAGS):
        if not _same(recorded[name], wanted[name]):
            return Mismatch(name, recorded[name], wanted[name])
    return None


@dataclasses.dataclass
class Grid:
    """A checked config and the cells it makes.

    path: the config file; config: load_config's dict; root: the output
    root as written in the config (or overridden), relative to ROOT unless
    absolute.
    """

    path: str
    config: dict
    root: str

    @classmethod
    def load(cls, path: str, output_root: str | None = None) -> "Grid":
        config = load_config(path)
        root = output_root or config[""]["output_root"]
        return cls(path, config, root)

    @property
    def name(self) -> str:
        return self.config[""]["name"]

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def log_path(self, cell_id: str) -> str:
        return self._path("logs", cell_id + ".log")

    def _cell(
        self,
        cell_id: str,
        stage: str,
        script: str,
        args: Sequence[object],
        deps: Sequence[str],
        outputs: Sequence[str],
        **keys: object,
    ) -> Cell:
        return Cell(
            cell_id,
            stage,
            script,
            tuple(str(a) for a in args),
            tuple(deps),
            tuple(outputs),
            keys,
            self.log_path(cell_id),
        )

    def cells(self) -> list:
        """Every cell, in an order where each comes after those it needs."""
        c = self.config
        out = []
        every_kernel_cell: list[Cell] = []
        for seed in c[""]["seeds"]:
            runs = {}
            for loader in c["phase1"]["loaders"]:
                phase1 = self._phase1(seed, loader)
                runs[loader] = phase1
                out.append(phase1)
                for t in c["phase2"]["times"]:
                    for p2 in c["phase2"]["loaders"]:
                        for dynamics in c["phase2"]["dynamics"]:
                            cell = self._phase2(phase1, t, p2, dynamics)
                            out.append(cell)
                            if c["evaluation"] is not None:
                                out.append(self._eval(cell))
            kernel_cells = []
            if c["kernels"] is not None:
                for phase1 in runs.values():
                    kernel_cells += self._kernels(phase1)
                out += kernel_cells
            # The analysis compares kernels: it needs two of them (two times,
            # or two phase-1 runs at one time).
            if (
                c["analysis"] is not None
                and kernel_cells
                and (len(c["kernels"]["times"]) > 1 or len(runs) > 1)
            ):
                out.append(self._analysis(seed, runs, kernel_cells))
            if c["features"] is not None:
                for phase1 in runs.values():
                    out += self._features(phase1, kernel_cells)
            every_kernel_cell += kernel_cells
        # The seed baseline of the kernel distances: every phase-1 run's
        # kernels against the same loader's of the other seeds.
        if (
            c["analysis"] is not None
            and every_kernel_cell
            and len(c[""]["seeds"]) > 1
        ):
            out.append(self._seeds_analysis(every_kernel_cell))
        return out

    def _common(self, seed: int) -> list[str | int]:
        d = self.config["data"]
        args = ["--random_seed", seed, "--data_path", d["data_path"]]
        return args

    def _run_flags(self, seed: int, phase: str) -> list[str | int]:
        c = self.config
        d, a = c["data"], c["attack"]
        args = self._common(seed)
        for name in ("train_size", "test_size"):
            if d[name]:
                args += [f"--{name}", d[name]]
        args += [
            "--eps",
            f"{a['eps']:g}",
            "--train_pgd_iters",
            a["train_pgd_iters"],
            "--eval_pgd_iters",
            a["eval_pgd_iters"],
            "--eval_attacks",
            ",".join(a["eval_attacks"]),
        ]
        state_every = c[phase]["state_every"]
        if state_every != STATE_EVERY:
            args += ["--state_every", state_every]
        return args + ["--no_progress"]

    def _phase1(self, seed: int, loader: str) -> Cell:
        c = self.config
        save = self._path(f"seed_{seed}", f"phase1_{loader}")
        m = c["model"]
        args = [
            "--standard_epochs",
            c["phase1"]["epochs"],
            "--linear_epochs",
            0,
            "--loaders",
            f"{loader}C",
            "--save_models",
            "--constant_save",
            "--save_path",
            save,
            "--model",
            m["name"],
            *(["--width", m["width"]] if MODELS[m["name"]].has_width else []),
            "--dataset",
            c["data"]["dataset"],
            *self._run_flags(seed, "phase1"),
        ]
        return self._cell(
            f"seed_{seed}/phase1_{loader}",
            "phase1",
            "run_exp.py",
            args,
            [],
            [os.path.join(save, "results.json")],
            seed=seed,
            phase1=loader,
            save_path=save,
        )

    def checkpoint(self, phase1: Cell, t: float) -> str:
        """θ(t) of a phase-1 cell."""
        return os.path.join(
            phase1.keys["save_path"],
            f"parameters_checkpoint_{format_t(t)}.pkl",
        )

    def _phase2(
        self, phase1: Cell, t: float, loader: str, dynamics: str
    ) -> Cell:
        c = self.config
        keys = dict(phase1.keys, t=t, phase2=loader, dynamics=dynamics)
        name = f"t_{format_t(t)}/phase2_{loader}_{dynamics}"
        save = os.path.join(phase1.keys["save_path"], name)
        keys["save_path"] = save
        args = [
            "--base_model_path",
            self.checkpoint(phase1, t),
            "--loaders",
            f"{phase1.keys['phase1']}{loader}",
            "--linear_epochs",
            c["phase2"]["epochs"],
            "--second_lr",
            f"{c['phase2']['lr']:g}",
            *DYNAMICS_FLAGS[dynamics],
            "--skip_first_test",
            "--save_models",
            "--save_path",
            save,
            *self._run_flags(phase1.keys["seed"], "phase2"),
        ]
        return self._cell(
            f"{phase1.id}/{name}",
            "phase2",
            "run_exp.py",
            args,
            [phase1.id],
            [os.path.join(save, "results.json")],
            **keys,
        )

    def eval_results(self, phase2: Cell) -> str:
        """The results json of a phase-2 cell's evaluation."""
        return os.path.join(
            phase2.keys["save_path"],
            EVAL_DIR,
            f"results_{EVAL_SAVE_NAME}.json",
        )

    def _eval(self, phase2: Cell) -> Cell:
        e = self.config["evaluation"]
        keys = {k: v for k, v in phase2.keys.items() if k != "save_path"}
        args = [
            "--model_path",
            os.path.join(phase2.keys["save_path"], "parameters_final.pkl"),
            *EVAL_FLAGS[phase2.keys["dynamics"]],
            "--bonus_dir",
            EVAL_DIR,
            "--save_name",
            EVAL_SAVE_NAME,
            *self._common(phase2.keys["seed"]),
            "--eps",
            f"{self.config['attack']['eps']:g}",
            "--pgd_iters",
            e["pgd_iters"],
        ]
        if e["test_size"]:
            args += ["--test_size", e["test_size"]]
        if e["save_examples"]:
            args.append("--save_examples")
        args.append("--no_progress")
        return self._cell(
            f"{phase2.id}/eval",
            "eval",
            "eval_and_make_adv.py",
            args,
            [phase2.id],
            [self.eval_results(phase2)],
            **keys,
        )

    def kernel_classes(self) -> list:
        """The class indices of the kernel files each kernel cell writes."""
        c = self.config["kernels"]["class_index"]
        if c == kernel_files.ALL_CLASSES:
            return list(range(data.n_classes(self.config["data"]["dataset"])))
        return [c]

    def kernel_dir(self, phase1: Cell, t: float) -> str:
        """Where the kernels of θ(t) of a phase-1 cell go."""
        stem = f"parameters_checkpoint_{format_t(t)}"
        return os.path.join(phase1.keys["save_path"], "kernels", stem)

    def _kernels(self, phase1: Cell) -> list[Cell]:
        """The calculate_kernel.py cells of a phase-1 cell; see
        KERNEL_CHECKPOINTS_PER_CALL."""
        k = self.config["kernels"]
        times = k["times"]
        per_call = KERNEL_CHECKPOINTS_PER_CALL or len(times)
        cells = []
        for n in k["sizes"]:
            for start in range(0, len(times), per_call):
                chunk = times[start : start + per_call]
                if len(chunk) == 1:
                    bonus = os.path.relpath(
                        self.kernel_dir(phase1, chunk[0]),
                        phase1.keys["save_path"],
                    )
                    name = f"kernels/t_{format_t(chunk[0])}_n_{n}"
                else:
                    bonus = os.path.join("kernels", "{name}")
                    name = f"kernels/n_{n}_from_t_{format_t(chunk[0])}"
                args = ["--model_path"]
                args += [self.checkpoint(phase1, t) for t in chunk]
                args += [
                    "--dataset_size",
                    n,
                    "--class_index",
                    k["class_index"],
                    "--bonus_dir",
                    bonus,
                    *self._common(k["image_seed"]),
                ]
                if k["memory_gb"]:
                    args += ["--memory_gb", f"{k['memory_gb']:g}"]
                outputs = [
                    os.path.join(
                        self.kernel_dir(phase1, t),
                        layout.kernel_file(
                            layout.KERNEL_SAVE_NAME,
                            None if c == kernel_files.COMBINED else c,
                            n,
                        ),
                    )
                    for t in chunk
                    for c in self.kernel_classes()
                ]
                keys = {k_: v for k_, v in phase1.keys.items()}
                cells.append(
                    self._cell(
                        f"{phase1.id}/{name}",
                        "kernel",
                        "calculate_kernel.py",
                        args,
                        [phase1.id],
                        outputs,
                        **dict(keys, times=list(chunk), size=n),
                    )
                )
        return cells

    def analysis_dir(self, seed: int) -> str:
        return self._path(f"seed_{seed}", "analysis")

    def _analysis(
        self, seed: int, runs: dict[str, Cell], kernel_cells: list[Cell]
    ) -> Cell:
        compare = self.config["analysis"]["compare"]
        if compare is None and {"C", "A"} <= set(runs):
            compare = ["C", "A"]
        out_dir = self.analysis_dir(seed)
        args = [
            os.path.join(cell.keys["save_path"], "kernels")
            for cell in runs.values()
        ]
        args += ["--out_dir", out_dir]
        if compare:
            args.append("--compare")
            args += [
                os.path.join(runs[loader].keys["save_path"], "kernels")
                for loader in compare
            ]
        deps = [c.id for c in kernel_cells if c.keys["seed"] == seed]
        return self._cell(
            f"seed_{seed}/analysis",
            "analysis",
            "analyze_kernels.py",
            args,
            deps,
            [os.path.join(out_dir, name) for name in ANALYSIS_FILES],
            seed=seed,
        )

    def seeds_analysis_dir(self) -> str:
        return self._path(SEEDS_ANALYSIS_DIR)

    def _seeds_analysis(self, kernel_cells: list[Cell]) -> Cell:
        """analyze_kernels.py --replicates over the seeds: a group per
        phase-1 loader, its runs' kernel folders of every seed."""
        folders: dict[str, list[str]] = {}
        for cell in kernel_cells:
            folder = os.path.join(cell.keys["save_path"], "kernels")
            group = folders.setdefault(cell.keys["phase1"], [])
            if folder not in group:
                group.append(folder)
        out_dir = self.seeds_analysis_dir()
        args = []
        for group in folders.values():
            args += ["--replicates", *group]
        args += ["--out_dir", out_dir, "--no_figures", "--no_progress"]
        return self._cell(
            f"{SEEDS_ANALYSIS_DIR}/analysis",
            "analysis",
            "analyze_kernels.py",
            args,
            [c.id for c in kernel_cells],
            [os.path.join(out_dir, name) for name in SEEDS_ANALYSIS_FILES],
        )

    def features_file(self, phase1: Cell, t: float) -> str:
        """The feature-image pickle of θ(t) of a phase-1 cell."""
        f = self.config["features"]
        return os.path.join(
            self.kernel_dir(phase1, t),
            f"{FEATURES_SAVE_NAME}_class_{f['class_index']}_{f['size']}.pkl",
        )

    def _features(self, phase1: Cell, kernel_cells: list[Cell]) -> list[Cell]:
        f = self.config["features"]
        cells = []
        for t in f["times"]:
            needs = [
                c.id
                for c in kernel_cells
                if c.keys["phase1"] == phase1.keys["phase1"]
                and c.keys["seed"] == phase1.keys["seed"]
                and t in c.keys["times"]
                and c.keys["size"] == f["size"]
            ]
            args = [
                "--model_path",
                self.checkpoint(phase1, t),
                "--class_index",
                f["class_index"],
                "--dataset_size",
                f["size"],
                "--n_images",
                f["n_images"],
                "--steps",
                f["steps"],
                "--bonus_dir",
                os.path.relpath(
                    self.kernel_dir(phase1, t), phase1.keys["save_path"]
                ),
                "--data_path",
                self.config["data"]["data_path"],
            ]
            pickle_path = self.features_file(phase1, t)
            cells.append(
                self._cell(
                    f"{phase1.id}/features/t_{format_t(t)}",
                    "features",
                    "visualize_ntk_features.py",
                    args,
                    needs,
                    [pickle_path, pickle_path[: -len(".pkl")] + ".png"],
                    **dict(phase1.keys, t=t),
                )
            )
        return cells

    # ----------------------------------------------------------------------
    # The record of a sweep in its output root
    # ----------------------------------------------------------------------

    def record_path(self) -> str:
        return self._path("sweep.json")

    def fixed_settings(self) -> dict:
        """The settings every cell's files depend on, flattened to
        'section.key' -> value (CHANGEABLE keys left out)."""
        flat = {}
        for section, table in self.config.items():
            if section in CHANGEABLE or table is None:
                continue
            if section == "reference":
                continue
            for key, value in table.items():
                name = _dotted(section, key)
                if name not in CHANGEABLE:
                    flat[name] = value
        return flat

    def read_record(self) -> dict | None:
        """The output root's sweep.json ({'fixed': {...}, ...}), or None
        when there is none.

        Raises:
            UserError: one line naming the file and the fix, when it is
            not a sweep record (truncated, not an object, a folder, ...).
        """
        path = here(self.record_path())
        if not os.path.lexists(path):
            return None

        def refused(problem: str) -> UserError:
            return UserError(
                f"{path} is not a sweep record ({problem}): restore it, or "
                f"remove it if every cell under {self.root} was made with "
                f"the settings of {self.path} (the next run writes it anew)"
            )

        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except IsADirectoryError:
            raise refused("a folder, not a file") from None
        except OSError as err:
            raise refused(f"cannot be read: {err.strerror}") from None
        except (ValueError, RecursionError) as err:
            problem = f"not valid JSON: {utils.one_line(err, limit=120)}"
            raise refused(problem) from None
        if not isinstance(record, dict):
            raise refused(f"a JSON {type(record).__name__}, not an object")
        if not isinstance(record.get("fixed"), dict):
            raise refused("no 'fixed' object of settings")
        return record

    def check_record(self) -> None:
        """Refuses to mix this grid's cells into an output root that holds a
        sweep made with other fixed settings (or a damaged sweep.json)."""
        record = self.read_record()
        if record is None:
            return
        recorded = record["fixed"]
        current = self.fixed_settings()
        # A section added or dropped only adds or drops cells.
        for name in sorted(set(recorded) & set(current)):
            if not _same(recorded[name], current[name]):
                raise UserError(
                    f"{self.path}: output_root {self.root} holds a sweep made "
                    f"with {name} = {recorded.get(name)!r}, not "
                    f"{current.get(name)!r}; choose another output_root or "
                    f"restore {name}"
                )

    def check_cells(self, cells: Sequence[Cell], strict: bool = True) -> None:
        """Refuses cells under the output root whose files record other
        flags than their commands (see flag_mismatch): they were made with
        other settings, by another grid or by hand.

        strict: a damaged record is refused too (otherwise the cell's
        script decides when it runs).
        """
        for cell in cells:
            mismatch = flag_mismatch(cell, strict)
            if mismatch:
                path = flags_record(cell)[0]
                raise UserError(
                    f"{self.path}: output_root {self.root} holds cell "
                    f"{cell.id} made with {mismatch} (recorded in {path}); "
                    f"choose another output_root or restore "
                    f"{_flag_key(cell, mismatch.flag)}"
                )

    def write_record(self) -> None:
        atomic.ensure_writable_dir(here(self.root))
        atomic.atomic_write_json(
            here(self.record_path()),
            {
                "config_file": os.path.abspath(self.path),
                "fixed": self.fixed_settings(),
                "config": self.config,
            },
        )


# --------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------

TRAIN_IMAGES = {"cifar10": 50000, "cifar100": 50000}
TRAIN_IMAGES.update(fashion_mnist=60000, mnist=60000)
TEST_IMAGES = 10000


def cell_seconds(grid: Grid, cell: Cell) -> float:
    """Estimated device seconds of `cell` from the config's [throughput]."""
    c = grid.config
    rate = c["throughput"]
    d = c["data"]
    train_images = d["train_size"] or TRAIN_IMAGES[d["dataset"]]
    test_images = d["test_size"] or TEST_IMAGES
    run_eval = test_images * c["attack"]["eval_pgd_iters"]
    run_eval *= len(c["attack"]["eval_attacks"])
    run_eval /= rate["pgd_image_steps_per_s"]
    if cell.stage == "phase1":
        epochs = c["phase1"]["epochs"]
        adversarial = {
            "C": 0,
            "A": epochs,
            "F": max(0, epochs - train.MIXED_SWITCH_EPOCH),
        }[cell.keys["phase1"]]
        seconds = adversarial * train_images
        seconds /= rate["phase1_adversarial_images_per_s"]
        seconds += (
            (epochs - adversarial)
            * train_images
            / (rate["phase1_benign_images_per_s"])
        )
        return seconds + run_eval
    if cell.stage == "phase2":
        kind = "adversarial" if cell.keys["phase2"] == "A" else "benign"
        per_s = rate[f"phase2_{kind}_images_per_s"]
        return c["phase2"]["epochs"] * train_images / per_s + run_eval
    if cell.stage == "eval":
        e = c["evaluation"]
        images = e["test_size"] or TEST_IMAGES
        return images * e["pgd_iters"] / rate["pgd_image_steps_per_s"]
    if cell.stage == "kernel":
        files = len(cell.keys["times"]) * len(grid.kernel_classes())
        if c["kernels"]["class_index"] == kernel_files.COMBINED:
            files = len(cell.keys["times"]) * data.n_classes(d["dataset"])
        return files * rate["kernel_file_s"]
    if cell.stage == "features":
        return rate["features_s"]
    return 0.0


def estimate(grid: Grid, cells: list) -> dict:
    """Device hours by stage: {stage: (cells, hours)}, plus 'total' and
    'per_seed'. Raises UserError when the config has no [throughput]."""
    if grid.config["throughput"] is None:
        raise UserError(
            f"{grid.path}: --estimate needs a [throughput] section (measured "
            f"images/s and their source)"
        )
    by_stage = {}
    for cell in cells:
        count, hours = by_stage.get(cell.stage, (0, 0.0))
        by_stage[cell.stage] = (
            count + 1,
            hours + cell_seconds(grid, cell) / 3600,
        )
    total = sum(hours for _, hours in by_stage.values())
    seeds = len(grid.config[""]["seeds"])
    return {
        "stages": by_stage,
        "total": total,
        "per_seed": total / seeds,
        "device": grid.config["throughput"]["device"],
        "source": grid.config["throughput"]["source"],
    }


def python_display() -> str:
    """The interpreter as the dry run prints it (relative when under the
    current folder)."""
    exe = sys.executable
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe
