"""The config file of a sweep: one frozen dataclass per TOML section, and
its reading.

Each section's dataclass holds its keys: their types (the annotations),
defaults, meanings and checks (`key`). Numbers are checked by the rule of
every number a script takes, `cli.number_problem`; seeds and subset sizes
by the dataset module's rules. `load_config` reads a TOML file into plain
dicts (a section's `dataclasses.asdict`, as sweep.json records them), then
refuses combinations no run can make. Every refusal is one line naming the
file and the key.
"""

import copy
import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable
from typing import Any

import attacks
import cli
import data
import models
from cli import eval_and_make_adv, run_exp
from ntk import kernel_files
from store import layout
from training import train
from utils import UserError

# The paper's kernel times t (in epochs of phase 1).
PAPER_TIMES = (0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 5, 10)
PAPER_TIMES += (20, 50, 100)
PHASE1_LOADERS = ("C", "A", "F")
PHASE2_LOADERS = ("C", "A")
LOADER_NAMES = {
    "C": "benign",
    "A": "adversarial",
    "F": "benign, then adversarial",
}
DYNAMICS = ("centered", "linearized", "standard")  # of phase 2
# run_exp.py --eval_attacks: PGD in each norm (attacks.EVAL_ATTACKS).
ATTACKS = tuple(attacks.EVAL_ATTACKS)
# The stages of a grid's cells (the keys of slurm.timeout_min).
STAGES = ("phase1", "phase2", "eval", "kernel", "analysis", "features")
STAGES += ("robustness",)
# eval_and_make_adv.py --attack: every registered attack (PGD, the
# parameter-free ones, AutoAttack); robustness.autoattack runs the
# standard AutoAttack, and the eps curve APGD-CE by default.
ROBUST_ATTACKS = attacks.names()
AUTOATTACK = attacks.AUTOATTACK.name
CURVE_ATTACK = attacks.APGD_CE.name
# eval_and_make_adv.py --attack_budget KEY=N: the registry's budget fields
# and their defaults (the standard AutoAttack's).
BUDGET_DEFAULTS = {
    name: field.default for name, field in attacks.budget_fields().items()
}
# The scripts' defaults that a grid's keys default to, named once: read
# from the scripts' own parsers (cli.run_exp, cli.eval_and_make_adv).
RUN_EXP = run_exp.parser()
EVAL_AND_MAKE_ADV = eval_and_make_adv.parser()
# The cells pass --state_every only where it differs from run_exp.py's.
STATE_EVERY = RUN_EXP.get_default("state_every")
# phase1.order_replicate: the benign run C′_s of seed s trains from θ_s(0)
# with run_exp.py --order_seed s + ORDER_SEED_OFFSET (another data order
# and other attack noise).
ORDER_SEED_OFFSET = 1000
ORDER_REPLICATE_LOADER = "C"
REQUIRED = dataclasses.MISSING
# A key's own check: what is wrong with a well-typed value, or None.
Check = Callable[[Any], str | None]


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a key means and what its values must be.

    minimum, maximum, above: the number rule (`cli.number_problem`) every
    number of the value obeys (None: no bound). choices: the strings it
    may be. distinct: a list with at least one value, none twice. check:
    a further check of the key.
    """

    meaning: str
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    choices: tuple[str, ...] | None = None
    distinct: bool = False
    check: Check | None = None

    def problem(self, value: object) -> str | None:
        """What is wrong with a well-typed `value` by this rule, or None."""
        values = value if isinstance(value, list) else [value]
        if self.distinct:
            if not value:
                return "must list at least one value"
            if len(set(value)) != len(value):
                return f"lists a value twice: {value!r}"
        if self.minimum is not None or self.maximum is not None:
            problem = number_problem(
                values, self.minimum, self.maximum, self.above
            )
            if problem:
                return problem
        if self.choices is not None:
            for v in values:
                if v not in self.choices:
                    return (
                        f"must be one of {', '.join(self.choices)}, not {v!r}"
                    )
        return self.check(value) if self.check else None


def key(meaning: str, default: object = REQUIRED, **rule: Any) -> Any:
    """A section's key: a dataclass field with `default` (REQUIRED: none)
    and its Rule(meaning, **rule) as metadata."""
    metadata = {"rule": Rule(meaning, **rule)}
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: copy.deepcopy(default), metadata=metadata
        )
    return dataclasses.field(default=default, metadata=metadata)


def number_problem(
    values: list,
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
) -> str | None:
    """The first of `values` that breaks the scripts' rule for numbers,
    `cli.number_problem`, in its words ('must be at least 1, not 0')."""
    for v in values:
        problem = cli.number_problem(v, minimum, maximum, above=above)
        if problem:
            return f"{problem}, not {v!r}"
    return None


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


def _class_index(value: object) -> str | None:
    if value == kernel_files.ALL_CLASSES or (
        isinstance(value, int) and not isinstance(value, bool)
    ):
        return None
    return f"must be an integer class, -1 (the sum) or 'all', not {value!r}"


def _times(meaning: str, default: object = None) -> Any:
    """A list of kernel times t (epochs of phase 1)."""
    return key(meaning, default, minimum=0, distinct=True)


def _positive(meaning: str, default: object = REQUIRED) -> Any:
    """A number greater than 0."""
    return key(meaning, default, minimum=0, above=True)


STATE_EVERY_MEANING = "run_exp.py --state_every"
Table = dict[str, str | int | float | bool]

# --------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------

section = dataclasses.dataclass(frozen=True, kw_only=True)


@section
class Top:
    """The top-level keys."""

    name: str = key(
        "the preset's name; aggregation writes docs/results/{name}.csv",
        check=_file_name,
    )
    description: str = key("one line on what the grid is for", "")
    output_root: str = key(
        "folder of every cell's files (relative to the repository)",
        check=_path,
    )
    seeds: list[int] = key(
        "random seeds (--random_seed)", distinct=True, check=_seeds
    )


@section
class Data:
    """[data]: the dataset and its subsets."""

    dataset: str = key("dataset", choices=tuple(sorted(data.DATASETS)))
    data_path: str = key(
        "dataset folder", RUN_EXP.get_default("data_path"), check=_path
    )
    train_size: int = key("training subset (0: all)", 0, minimum=0)
    test_size: int = key("test subset (0: all)", 0, minimum=0)


@section
class Model:
    """[model]: the network."""

    name: str = key("network", choices=tuple(models.MODELS))
    width: int = key("ResNet width", models.DEFAULT_WIDTH, minimum=1)


@section
class Phase1:
    """[phase1]: training the network whose kernels are frozen."""

    loaders: list[str] = key(
        "phase-1 loaders (C benign, A adversarial, F from epoch 50)",
        distinct=True,
        choices=PHASE1_LOADERS,
    )
    epochs: int = key("phase-1 epochs", minimum=0)
    times: list[float] | None = _times(
        "kernel times t (default: the paper's saved)"
    )
    state_every: int = key(STATE_EVERY_MEANING, STATE_EVERY, minimum=1)
    order_replicate: bool = key(
        "per seed s, one more benign run C′_s from θ_s(0) with --order_seed "
        f"s + {ORDER_SEED_OFFSET} (another data order and attack noise), "
        "its kernels beside the others': claim 1's baseline from the same "
        "θ(0)",
        False,
    )


@section
class Phase2:
    """[phase2]: training with the kernel of θ(t) frozen."""

    loaders: list[str] = key(
        "phase-2 loaders (C benign, A adversarial)",
        distinct=True,
        choices=PHASE2_LOADERS,
    )
    dynamics: list[str] = key(
        "phase-2 dynamics", ["centered"], distinct=True, choices=DYNAMICS
    )
    epochs: int = key("phase-2 epochs", minimum=1)
    lr: float = _positive(
        "phase-2 learning rate", RUN_EXP.get_default("second_lr")
    )
    times: list[float] | None = _times("the t of θ(t) phase 2 starts from")
    state_every: int = key(STATE_EVERY_MEANING, STATE_EVERY, minimum=1)


@section
class Attack:
    """[attack]: the adversary of training and of run_exp's evaluation."""

    eps: float = _positive("L-inf radius in 1/255", RUN_EXP.get_default("eps"))
    train_pgd_iters: int = key(
        "PGD steps in training",
        RUN_EXP.get_default("train_pgd_iters"),
        minimum=1,
    )
    eval_pgd_iters: int = key(
        "PGD steps in run_exp's evaluation",
        RUN_EXP.get_default("eval_pgd_iters"),
        minimum=1,
    )
    eval_attacks: list[str] = key(
        "attacks of run_exp's evaluation", list(ATTACKS), choices=ATTACKS
    )


@section
class Evaluation:
    """[evaluation]: eval_and_make_adv.py on each phase-2 model."""

    test_size: int = key("test subset (0: all)", 0, minimum=0)
    pgd_iters: int = key(
        "PGD steps", EVAL_AND_MAKE_ADV.get_default("pgd_iters"), minimum=1
    )
    save_examples: bool = key("write the adversarial examples", False)


@section
class Kernels:
    """[kernels]: calculate_kernel.py on θ(t) of each phase-1 run."""

    sizes: list[int] = key(
        "kernel sizes N (multiples of the number of classes)",
        distinct=True,
        minimum=1,
    )
    class_index: str | int = key(
        "logit c, -1 (sum) or 'all'",
        kernel_files.ALL_CLASSES,
        check=_class_index,
    )
    times: list[float] | None = _times(
        "the t of the kernels (default: phase1.times)"
    )
    memory_gb: float = key("calculate_kernel.py --memory_gb", 0.0, minimum=0)
    image_seed: int = key(
        "calculate_kernel.py --random_seed: the seed of the kernel images, "
        "the same for every seed of the grid so that kernels of different "
        "seeds can be compared",
        0,
        check=_seeds,
    )


@section
class Analysis:
    """[analysis]: analyze_kernels.py on each seed's kernels."""

    compare: list[str] | None = key(
        "two phase-1 loaders whose kernels analyze_kernels.py compares",
        None,
        choices=PHASE1_LOADERS,
    )


@section
class Features:
    """[features]: visualize_ntk_features.py on θ(t)."""

    times: list[float] = _times("the t of the feature images", REQUIRED)
    class_index: int = key("logit c", 0, minimum=0)
    size: int | None = key("kernel size N (one of kernels.sizes)", None)
    n_images: int = key("eigenvectors", 3, minimum=1)
    steps: int = key("signed-gradient steps", 600, minimum=0)


def _distinct(value: list) -> str | None:
    """No value twice (an empty list is allowed)."""
    if len(set(value)) != len(value):
        return f"lists a value twice: {value!r}"
    return None


def _budget(table: dict) -> str | None:
    """--attack_budget's keys, each an integer from 1 to its bound
    (its BudgetField's maximum, as cli.budget_item checks them)."""
    for name, value in table.items():
        if name not in BUDGET_DEFAULTS:
            return (
                f".{name} is not a budget key; the keys are "
                f"{', '.join(BUDGET_DEFAULTS)}"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f".{name} must be a positive integer, not {value!r}"
        maximum = attacks.budget_fields()[name].maximum
        problem = number_problem([value], 1, maximum)
        if problem:
            return f".{name} {problem}"
    return None


@section
class Robustness:
    """[robustness]: eval_and_make_adv.py --attack on phase-2 models:
    AutoAttack at attack.eps, and robust accuracy against eps (the check
    against gradient masking)."""

    times: list[float] | None = _times(
        "the t of the phase-2 models attacked (default: the last of "
        "phase2.times)"
    )
    dynamics: str = key(
        "phase-2 dynamics of the models attacked", "centered", choices=DYNAMICS
    )
    autoattack: bool = key("AutoAttack at attack.eps on each model", True)
    eps_curve: list[float] = key(
        "eps (in 1/255) of the robust-accuracy-against-eps curve; the "
        "largest should bring accuracy to 0",
        [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        minimum=0,
        above=True,
        check=_distinct,
    )
    curve_attack: str = key(
        "the attack of the eps curve", CURVE_ATTACK, choices=ROBUST_ATTACKS
    )
    test_size: int | None = key(
        "test subset (0: all; default: evaluation.test_size, else "
        "data.test_size)",
        None,
        minimum=0,
    )
    budget: Table = key(
        "eval_and_make_adv.py --attack_budget (keys "
        + ", ".join(BUDGET_DEFAULTS)
        + "; default the standard AutoAttack's)",
        {},
        check=_budget,
    )


@section
class Slurm:
    """[slurm]: the resources of `sweep.py --slurm`'s jobs."""

    partition: str = key("partition", "")
    account: str = key("account", "")
    qos: str = key("quality of service", "")
    gpus_per_node: int = key("GPUs per job", 1, minimum=0)
    cpus_per_task: int = key("CPUs per job", 4, minimum=1)
    mem_gb: float = key("memory per job (GB)", 32.0, minimum=0)
    array_parallelism: int = key("tasks of an array at once", 64, minimum=1)
    timeout_min: Table = key("minutes per job, by stage (default 60)", {})
    additional: Table = key("further sbatch options", {})


@section
class Throughput:
    """[throughput]: measured speeds, for `sweep.py --estimate`."""

    device: str = key("the device of the numbers")
    source: str = key("where the numbers were measured")
    phase1_benign_images_per_s: float = _positive("images/s")
    phase1_adversarial_images_per_s: float = _positive("images/s")
    phase2_benign_images_per_s: float = _positive("images/s")
    phase2_adversarial_images_per_s: float = _positive("images/s")
    pgd_image_steps_per_s: float = _positive(
        "test images × PGD steps per second"
    )
    kernel_file_s: float = key("seconds per per-class kernel file", minimum=0)
    features_s: float = key("seconds per feature-image cell", 0.0, minimum=0)
    cell_start_s: float = key(
        "seconds of each cell's start-up (Python, JAX, data, compilation)",
        0.0,
        minimum=0,
    )


@section
class Reference:
    """A [[reference]] table: a published number to compare with."""

    phase1: str = key("phase-1 loader", choices=PHASE1_LOADERS)
    t: float = key("t", minimum=0)
    phase2: str = key("phase-2 loader", choices=PHASE2_LOADERS)
    dynamics: str = key("dynamics", "centered")
    clean: float = key("clean accuracy (fraction)", minimum=0, maximum=1)
    linf: float = key("PGD-L∞ accuracy (fraction)", minimum=0, maximum=1)
    source: str = key("where the numbers come from")


# The sections by name ('' for the top level), in the order of the file.
SECTIONS: dict[str, type] = {
    "": Top,
    "data": Data,
    "model": Model,
    "phase1": Phase1,
    "phase2": Phase2,
    "attack": Attack,
    "evaluation": Evaluation,
    "kernels": Kernels,
    "analysis": Analysis,
    "features": Features,
    "robustness": Robustness,
    "slurm": Slurm,
    "throughput": Throughput,
}
OPTIONAL_SECTIONS = (
    "evaluation",
    "kernels",
    "analysis",
    "features",
    "robustness",
    "slurm",
    "throughput",
)

# --------------------------------------------------------------------------
# Reading a section
# --------------------------------------------------------------------------

# The kind of each type a key may have, and its words in refusals.
KINDS = {
    int: "int",
    float: "float",
    str: "str",
    bool: "bool",
    str | int: "str|int",
    list[int]: "ints",
    list[float]: "floats",
    list[str]: "strs",
    Table: "table",
}
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


def kind(annotation: object) -> str:
    """The kind (a key of KIND_WORDS) of a key's type; `T | None` is T's
    (None is its default, never a value of the file)."""
    if annotation in KINDS:
        return KINDS[annotation]
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return KINDS[inner]
    raise TypeError(f"no kind for a key of type {annotation!r}")


def _kind_ok(kind_: str, value: object) -> bool:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = is_int or isinstance(value, float)
    simple = {
        "int": is_int,
        "float": is_number,
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "str|int": isinstance(value, str) or is_int,
    }
    if kind_ in simple:
        return simple[kind_]
    if kind_ == "table":
        return isinstance(value, dict) and all(
            isinstance(v, str | int | float | bool) for v in value.values()
        )
    item = {"ints": "int", "floats": "float", "strs": "str"}[kind_]
    return isinstance(value, list) and all(_kind_ok(item, v) for v in value)


# Every number of a grid is finite; TOML's integers are 64-bit (a larger
# one is refused, as TOML says).
INT64 = (-(2**63), 2**63 - 1)


def _general_problem(kind_: str, value: object) -> str | None:
    """What every value of its kind must be: numbers finite (integers
    64-bit), numbers of a table too ('.key must ...')."""
    values = value if isinstance(value, list) else [value]
    if kind_ in ("int", "ints", "str|int") and not isinstance(value, str):
        return number_problem(values, *INT64)
    if kind_ in ("float", "floats"):
        return number_problem(values)
    if kind_ == "table":
        for name, v in value.items():
            is_number = isinstance(v, int | float) and not isinstance(v, bool)
            bounds = INT64 if isinstance(v, int) else ()
            problem = is_number and number_problem([v], *bounds)
            if problem:
                return f".{name} {problem}"
    return None


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def read_section(path: str, prefix: str, table: dict, cls: type) -> Any:
    """`table` (the section `prefix` of the file `path`) as an instance of
    its section dataclass `cls`, checked, defaults filled in.

    Raises UserError naming `prefix.key` for an unknown key, a missing one,
    a value of the wrong kind or a value its check refuses.
    """
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for name in table:
        if name not in names:
            where = f"[{prefix}]" if prefix else "the top level"
            raise UserError(
                f"{path}: unknown key {_dotted(prefix, name)}; the keys of "
                f"{where} are {', '.join(names)}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for field in fields:
        name, rule = _dotted(prefix, field.name), field.metadata["rule"]
        kind_ = kind(hints[field.name])
        if field.name not in table:
            if field.default is REQUIRED and field.default_factory is REQUIRED:
                raise UserError(
                    f"{path}: missing key {name} ({rule.meaning}, "
                    f"{KIND_WORDS[kind_]})"
                )
            continue
        value = table[field.name]
        if not _kind_ok(kind_, value):
            raise UserError(
                f"{path}: {name} must be {KIND_WORDS[kind_]} "
                f"({rule.meaning}), not {value!r}"
            )
        if kind_ == "float":
            value = float(value)
        if kind_ == "floats":
            value = [float(v) for v in value]
        problem = _general_problem(kind_, value) or rule.problem(value)
        if problem:
            sep = "" if problem.startswith((":", ".")) else " "
            raise UserError(f"{path}: {name}{sep}{problem}")
        values[field.name] = value
    return cls(**values)


# --------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------


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
    prefix, name = "", None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if number == line_no:
            if "=" in stripped:
                name = stripped.split("=")[0].strip()
            break
        if stripped.startswith("[") and not stripped.startswith("[["):
            prefix = stripped.strip("[] ")
    named = f"key {_dotted(prefix, name)}: " if name else ""
    return UserError(
        f"{path}: {named}not valid TOML ({message}); give every key a value"
    )


def _read_toml(path: str) -> dict:
    """The TOML table of `path`; UserError (one line) when it cannot be
    read or is not TOML."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise UserError(
            f"cannot read grid file {path}: {err.strerror}"
        ) from None
    text = raw.decode("utf-8", errors="replace")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _toml_error(path, text, err) from None


def load_config(path: str) -> dict:
    """The config of `path`, checked, defaults filled in.

    Returns:
        A dict of sections (the top-level keys under ''), each a dict of
        key -> value (`dataclasses.asdict` of its SECTIONS class); absent
        optional sections are None; 'reference' is a list of dicts.
    Raises:
        UserError: one line naming the file and the key at fault.
    """
    table = _read_toml(path)
    top = {k: v for k, v in table.items() if not isinstance(v, dict | list)}
    top.update({k: v for k, v in table.items() if k == "seeds"})
    for name in (k for k in table if k not in top and k != "reference"):
        if name not in SECTIONS:
            raise UserError(
                f"{path}: unknown key {name}; the sections are "
                f"{', '.join(s for s in SECTIONS if s)}, reference"
            )
        if not isinstance(table[name], dict):
            raise UserError(f"{path}: {name} must be a table [{name}]")
    config = {}
    for name, cls in SECTIONS.items():
        given = top if not name else table.get(name)
        if given is None:
            if name not in OPTIONAL_SECTIONS:
                raise UserError(f"{path}: missing section [{name}]")
            config[name] = None
            continue
        config[name] = dataclasses.asdict(read_section(path, name, given, cls))
    references = table.get("reference", [])
    if not isinstance(references, list) or not all(
        isinstance(r, dict) for r in references
    ):
        raise UserError(f"{path}: reference must be [[reference]] tables")
    config["reference"] = [
        dataclasses.asdict(read_section(path, "reference", r, Reference))
        for r in references
    ]
    _check_combinations(path, config)
    return config


# --------------------------------------------------------------------------
# Combinations of keys
# --------------------------------------------------------------------------


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
        return ", ".join(layout.format_t(t) for t in saved_times(epochs))
    fractions = [f for f in train.FRACTIONAL_SAVE_EPOCHS if f < epochs]
    return (
        f"every integer from 0 to {epochs} and "
        f"{', '.join(layout.format_t(f) for f in fractions)}"
    )


def _check_combinations(path: str, config: dict) -> None:
    """Refuses combinations no run can make (one UserError line); fills in
    the default times."""
    _check_times(path, config)
    _check_robustness(path, config)
    _check_budget(path, config)
    _check_sizes(path, config)
    attacks_ = config["attack"]["eval_attacks"]
    if len(set(attacks_)) != len(attacks_):
        raise UserError(f"{path}: attack.eval_attacks lists an attack twice")
    _check_kernels(path, config)
    _check_order_replicate(path, config)
    _check_features(path, config)
    _check_slurm(path, config["slurm"])


def _check_times(path: str, config: dict) -> None:
    """Every t is one phase 1 saves; phase1.times defaults to the paper's
    it saves, phase2.times and kernels.times to phase1.times."""
    p1 = config["phase1"]
    epochs = p1["epochs"]
    if p1["times"] is None:
        p1["times"] = [float(t) for t in PAPER_TIMES if is_saved(t, epochs)]
    timed = [("phase1.times", p1["times"])]
    timed.append(("phase2.times", config["phase2"]["times"]))
    for name in ("kernels", "features"):
        if config[name] is not None:
            timed.append((f"{name}.times", config[name]["times"]))
    for name, times in timed:
        for t in times or []:
            if not is_saved(t, epochs):
                raise UserError(
                    f"{path}: {name} has t = {layout.format_t(t)}, which "
                    f"phase 1 (phase1.epochs = {epochs}) does not save; "
                    f"saved: {_saved_text(epochs)}"
                )
    for name in ("phase2", "kernels"):
        if config[name] is not None and config[name]["times"] is None:
            config[name]["times"] = list(p1["times"])


def _check_sizes(path: str, config: dict) -> None:
    """The class-balanced subsets the scripts draw, of the split each
    draws from (kernels: the training split), in their words
    (data.split_size_problem)."""
    dataset = config["data"]["dataset"]
    sized = [
        ("data.train_size", config["data"]["train_size"], True),
        ("data.test_size", config["data"]["test_size"], False),
    ]
    if config["evaluation"] is not None:
        size = config["evaluation"]["test_size"]
        sized.append(("evaluation.test_size", size, False))
    if config["kernels"] is not None:
        sized += [
            ("kernels.sizes", n, True) for n in config["kernels"]["sizes"]
        ]
    if config["robustness"] is not None:
        size = config["robustness"]["test_size"]
        sized.append(("robustness.test_size", size, False))
    for name, size, of_train in sized:
        problem = size and data.split_size_problem(dataset, size, of_train)
        if problem:
            raise UserError(f"{path}: {name}: {problem}")


def robustness_attacks(robustness: dict) -> list[str]:
    """The --attack of the robustness cells of a [robustness] section:
    autoattack (when on), then the curve's attack."""
    chosen = [AUTOATTACK] if robustness[AUTOATTACK] else []
    curve = robustness["curve_attack"]
    if robustness["eps_curve"] and curve not in chosen:
        chosen.append(curve)
    return chosen


def budget_keys(attack: str) -> tuple[str, ...]:
    """The --attack_budget keys eval_and_make_adv.py --attack `attack`
    reads (none for PGD)."""
    return attacks.get(attack).budget_keys()


def _check_budget(path: str, config: dict) -> None:
    """robustness.budget as eval_and_make_adv.py checks --attack_budget:
    every key read by an attack of the robustness cells (each cell gets
    the keys its attack reads), each value one the dataset's classes can
    run (its field's classes_problem: n_targets below them)."""
    rob = config["robustness"]
    if rob is None:
        return
    read = {k for a in robustness_attacks(rob) for k in budget_keys(a)}
    for name, value in rob["budget"].items():
        if name not in read:
            raise UserError(
                f"{path}: robustness.budget.{name} is read by none of the "
                f"robustness attacks ({', '.join(robustness_attacks(rob))}): "
                "drop it"
            )
        classes = data.n_classes(config["data"]["dataset"])
        check = attacks.budget_fields()[name].classes_problem
        problem = check and check(value, classes)
        if problem:
            raise UserError(f"{path}: robustness.budget.{name}: {problem}")


def _check_robustness(path: str, config: dict) -> None:
    """robustness.times are among phase2.times (default: the last),
    robustness.dynamics among phase2.dynamics; robustness.test_size
    defaults to the evaluation's (else the data's)."""
    rob, p2 = config["robustness"], config["phase2"]
    if rob is None:
        return
    if rob["times"] is None:
        rob["times"] = [max(p2["times"])]
    for t in rob["times"]:
        if t not in p2["times"]:
            raise UserError(
                f"{path}: robustness.times has t = {layout.format_t(t)}, "
                f"which is not in phase2.times (no phase-2 model from it)"
            )
    if rob["dynamics"] not in p2["dynamics"]:
        raise UserError(
            f"{path}: robustness.dynamics is {rob['dynamics']!r}, which is "
            f"not in phase2.dynamics {p2['dynamics']!r}"
        )
    if rob["test_size"] is None:
        source = config["evaluation"] or config["data"]
        rob["test_size"] = source["test_size"]


def _check_kernels(path: str, config: dict) -> None:
    """kernels.class_index is a class of the dataset; [analysis] and
    [features] need [kernels]; analysis.compare names two phase-1
    loaders of the grid."""
    kern = config["kernels"]
    if kern is not None:
        c = kern["class_index"]
        classes = data.n_classes(config["data"]["dataset"])
        if c != kernel_files.ALL_CLASSES and not -1 <= c < classes:
            raise UserError(
                f"{path}: kernels.class_index must be 0..{classes - 1}, -1 "
                f"or 'all', not {c!r}"
            )
    for name in ("analysis", "features"):
        if config[name] is not None and kern is None:
            raise UserError(
                f"{path}: [{name}] needs a [kernels] section (the "
                f"kernels it reads)"
            )
    analysis = config["analysis"]
    if analysis is None or analysis["compare"] is None:
        return
    pair = analysis["compare"]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise UserError(
            f"{path}: analysis.compare must name two different phase-1 "
            f"loaders, not {pair!r}"
        )
    for loader in pair:
        if loader not in config["phase1"]["loaders"]:
            raise UserError(
                f"{path}: analysis.compare names {loader}, which is not "
                f"in phase1.loaders"
            )


def _check_order_replicate(path: str, config: dict) -> None:
    """phase1.order_replicate needs the benign runs it replicates and the
    kernels it is for; every seed's --order_seed (s + ORDER_SEED_OFFSET)
    is in the seeds' range."""
    if not config["phase1"]["order_replicate"]:
        return
    if ORDER_REPLICATE_LOADER not in config["phase1"]["loaders"]:
        raise UserError(
            f"{path}: phase1.order_replicate replicates the benign runs, but "
            f"phase1.loaders has no {ORDER_REPLICATE_LOADER}"
        )
    if config["kernels"] is None:
        raise UserError(
            f"{path}: phase1.order_replicate needs a [kernels] section (the "
            "replicate runs are there for their kernels)"
        )
    highest = data.MAX_LEGACY_SEED - ORDER_SEED_OFFSET
    for seed in config[""]["seeds"]:
        if seed > highest:
            raise UserError(
                f"{path}: seeds has {seed}, whose replicate run would take "
                f"--order_seed {seed + ORDER_SEED_OFFSET}, above "
                f"{data.MAX_LEGACY_SEED}: with phase1.order_replicate pick "
                f"seeds up to {highest}"
            )


def _check_features(path: str, config: dict) -> None:
    """[features] asks for a kernel the grid computes; features.size
    defaults to the first kernel size."""
    feats, kern = config["features"], config["kernels"]
    if feats is None:
        return
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
    classes = data.n_classes(config["data"]["dataset"])
    if feats["class_index"] >= classes:
        raise UserError(
            f"{path}: features.class_index must be below {classes}"
        )
    for t in feats["times"]:
        if t not in kern["times"]:
            raise UserError(
                f"{path}: features.times has t = {layout.format_t(t)}, "
                f"which is not in kernels.times"
            )
    if feats["n_images"] > feats["size"]:
        raise UserError(
            f"{path}: features.n_images must be at most features.size"
        )


def _check_slurm(path: str, slurm: dict | None) -> None:
    """slurm.timeout_min: whole minutes by stage."""
    if slurm is None:
        return
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
