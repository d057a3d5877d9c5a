"""The experiment grid of a sweep: its cells, their state, and the
output root's layout and record.

A grid is a TOML file (see `configs/` and docs/sweep.md, "Sweeps and
the reproduction report"), read by `sweeper.schema`. Its cells are the
entry-script commands a user would type: phase 1 (`run_exp.py`), phase 2
from each saved θ(t) (`run_exp.py --base_model_path`), the evaluation of
each phase-2 model (`eval_and_make_adv.py`), the kernels of θ(t)
(`calculate_kernel.py`), their analysis (`analyze_kernels.py`) and feature
images (`visualize_ntk_features.py`). Each cell knows the cells it needs
and the files that show it finished, so a re-run skips finished cells and
resumes interrupted ones.

Every path of a grid is relative to the repository root (where the entry
scripts live), unless absolute; commands run from that root.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

import data
import utils
from models import MODELS
from ntk import kernel_files
from store import atomic, layout, pickles, resume
from sweeper import schema
from sweeper.schema import STATE_EVERY
from training import experiment
from utils import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Phase-2 dynamics (schema.DYNAMICS): run_exp.py's flags and
# eval_and_make_adv.py's.
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
# Checkpoints per calculate_kernel.py call. None: every checkpoint of a
# phase-1 run (of one kernel size) in one call, `--model_path P1 P2 ...
# --bonus_dir kernels/{name}` (one process: data loaded and functions
# compiled once). 1: one call per checkpoint, each with its literal
# --bonus_dir. Both write the same files.
KERNEL_CHECKPOINTS_PER_CALL = None
DONE, PARTIAL, TODO = "done", "partial", "todo"
# sweep.py --only PART: a part of a grid, the stages of its cells, and the
# sections it needs.
ONLY = {"kernels": ("phase1", "kernel", "analysis")}
ONLY_NEEDS = {"kernels": ("kernels", "analysis")}
# What parses an entry script's command line: script name -> its
# parse_args (sweep.py passes cli.run_exp's, cli.eval_and_make_adv's and
# cli.calculate_kernel's).
Parsers = Mapping[str, Callable[[list[str]], argparse.Namespace]]

# --------------------------------------------------------------------------
# The output root's layout (the files of each cell are layout.py's)
# --------------------------------------------------------------------------

SEED_DIR = "seed_{}"  # a seed's cells
PHASE1_DIR = "phase1_{}"  # a phase-1 run (its loader), in its seed's
# The order replicate C′_s of phase1.order_replicate: phase 1 of the
# benign run from the same θ_s(0) with another --order_seed, in its seed's.
# Its name in kernel keys ('C_reordered') and its folder.
REORDERED = f"{schema.ORDER_REPLICATE_LOADER}_reordered"
REORDERED_DIR = PHASE1_DIR.format(REORDERED)
PHASE2_DIR = "t_{}/phase2_{}_{}"  # (t, loader, dynamics), in phase 1's
KERNELS_DIR = "kernels"  # of a phase-1 run: a folder per checkpoint
EVAL_DIR = "eval"  # eval_and_make_adv.py's --bonus_dir
ROBUSTNESS_DIR = layout.ROBUSTNESS_DIR  # the robustness cells' --bonus_dir
# --save_name of a robustness cell: its attack and eps (in 1/255).
ROBUSTNESS_NAME = "{attack}_eps{eps:g}"
# The stages whose cells run eval_and_make_adv.py (their results json
# records their flags).
EVAL_STAGES = ("eval", "robustness")
ANALYSIS_DIR = "analysis"  # a seed's analyze_kernels.py --out_dir
LOGS_DIR = "logs"  # {cell id}.log
SLURM_DIR = "slurm"  # submitit's folders and jobs.json
JAX_CACHE_DIR = "jax_cache"  # the cells' JAX compilation cache
ANALYSIS_FILES = (
    layout.KERNELS_CSV,
    layout.PAIRWISE_CSV,
    layout.ANALYSIS_MARKER,
)
# The analysis across seeds (analyze_kernels.py --replicates).
SEEDS_ANALYSIS_DIR = layout.SEEDS_ANALYSIS_DIR
SEEDS_ANALYSIS_FILES = (*ANALYSIS_FILES, layout.REPLICATES_CSV)
# A kernel file of the grid: seed_{s}/phase1_{L}/kernels/{checkpoint stem}/
# {kernel file} (the seed folder optional: a path below it).
KERNEL_FILE = re.compile(
    r"(?:"
    + SEED_DIR.format(r"(?P<seed>\d+)")
    + r"/)?"
    + PHASE1_DIR.format(rf"(?P<phase1>[CAF]|{re.escape(REORDERED)})")
    + "/"
    + KERNELS_DIR
    + "/"
    + re.escape(layout.CHECKPOINT_PREFIX)
    + r"(?P<t>[^/]+)/"
    + re.escape(layout.KERNEL_SAVE_NAME)
    + r"(?:_class_(?P<class_index>\d+))?_(?P<n>\d+)\.pkl$"
)
# A kernel file's (seed, phase1, t, class_index, n); phase1 is the loader,
# or REORDERED for the order replicate C′.
KernelKey = tuple[int, str, float, int, int]


def kernel_key(seed: int | None, path: str) -> KernelKey | None:
    """(seed, phase1, t, class_index, n) of a kernel file's path in the
    grid's layout (seed None: read from the path), or None."""
    match = KERNEL_FILE.search(str(path).replace(os.sep, "/"))
    if match is None or (seed is None and match["seed"] is None):
        return None
    c = match["class_index"]
    return (
        int(match["seed"]) if seed is None else seed,
        match["phase1"],
        float(match["t"]),
        kernel_files.COMBINED if c is None else int(c),
        int(match["n"]),
    )


# Keys a re-run may change on an existing output root: the grid's axes
# (new values add cells) and what does not change any cell's files.
CHANGEABLE = {
    "name",
    "description",
    "seeds",
    "phase1.loaders",
    "phase1.times",
    "phase1.state_every",
    # An axis: true adds the replicate runs' cells.
    "phase1.order_replicate",
    "phase2.state_every",
    "phase2.loaders",
    "phase2.dynamics",
    "phase2.times",
    "kernels.sizes",
    "kernels.times",
    "kernels.memory_gb",
    "features.times",
    "analysis.compare",
    # Axes of the robustness cells: each value names cells of its own.
    "robustness.times",
    "robustness.dynamics",
    f"robustness.{schema.AUTOATTACK}",
    "robustness.eps_curve",
    "robustness.curve_attack",
    "slurm",
    "throughput",
    "reference",
    "output_root",
}


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


def is_reordered(cell: Cell) -> bool:
    """Whether `cell` is the order replicate's (its phase-1 run, or a
    cell of that run: keys with an order_seed)."""
    return "order_seed" in cell.keys


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


class CellRecords:
    """The JSON objects cells wrote, each file read once (read_cell_json):
    a sweep's checks and its aggregation share one."""

    def __init__(self) -> None:
        self._records: dict[str, dict | None] = {}

    def read(self, cell_id: str, path: str, folder: str) -> dict | None:
        """read_cell_json(cell_id, path, folder) (read_kernel_flags for a
        kernel file), from memory after the first read of `path`."""
        if path not in self._records:
            read = read_kernel_flags if path.endswith(".pkl") else None
            self._records[path] = (read or read_cell_json)(
                cell_id, path, folder
            )
        return self._records[path]


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
    "order_seed": "phase1.order_replicate",
    "pgd_iters": "evaluation.pgd_iters",
    "save_examples": "evaluation.save_examples",
}


# The grid key behind a flag of a robustness cell.
ROBUSTNESS_FLAG_KEYS = {
    "test_size": "robustness.test_size",
    "attack": "robustness.curve_attack",
    "attack_budget": "robustness.budget",
    "eps": "attack.eps or robustness.eps_curve",
}


def _flag_key(cell: Cell, flag: str) -> str:
    """The grid key behind `flag` of `cell`'s command, or '--flag'."""
    if cell.stage == "robustness" and flag in ROBUSTNESS_FLAG_KEYS:
        return ROBUSTNESS_FLAG_KEYS[flag]
    if cell.stage == "kernel":
        return KERNEL_FLAG_KEYS.get(flag, f"--{flag}")
    if flag == "test_size":
        return "data.test_size" if cell.run_exp else "evaluation.test_size"
    return FLAG_KEYS.get(flag, f"--{flag}")


# The grid key behind a flag of a kernel cell.
KERNEL_FLAG_KEYS = {
    "random_seed": "kernels.image_seed",
    "dataset_size": "kernels.sizes",
    "class_index": "kernels.class_index",
}


def flags_record(cell: Cell) -> tuple[str, str] | None:
    """(the grid path of the file that records the flags a cell's command
    ran with, the folder that holds the cell's files), for run_exp.py cells
    (config.json), evaluations (their results json) and kernel cells (the
    first of their kernel files that is there); None for others."""
    if cell.run_exp:
        folder = cell.keys["save_path"]
        return os.path.join(folder, layout.CONFIG), folder
    if cell.stage in EVAL_STAGES:
        return cell.outputs[0], os.path.dirname(cell.outputs[0])
    if cell.stage == "kernel":
        there = [p for p in cell.outputs if os.path.lexists(here(p))]
        path = (there or cell.outputs)[0]
        return path, os.path.dirname(path)
    return None


# What a kernel file records of calculate_kernel.py's flags: the flag and
# the file's entry (--dataset_size: the number of its labels).
KERNEL_RECORDED = ("random_seed", "use_linear_params", "class_index")


def read_kernel_flags(cell_id: str, path: str, folder: str) -> dict | None:
    """{'flags': the calculate_kernel.py flags that the kernel file at grid
    path `path` records (KERNEL_RECORDED and dataset_size)}, or None when
    the file is absent.

    Raises:
        UserError (`damaged`): the file cannot be read or is not a kernel
        file.
    """
    if not os.path.lexists(here(path)):
        return None
    try:
        record = pickles.safe_load_pickle(here(path))
    except UserError as err:
        raise damaged(
            cell_id, path, utils.one_line(err, 120), folder
        ) from None
    if not isinstance(record, dict) or "labels" not in record:
        raise damaged(cell_id, path, "not a kernel file", folder)
    flags = {"dataset_size": int(np.size(record["labels"]))}
    for name in KERNEL_RECORDED:
        if name in record:  # the original's files record none of them
            value = record[name]
            flags[name] = (
                value.item() if isinstance(value, np.generic) else value
            )
    return {"flags": flags}


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


def flag_mismatch(
    cell: Cell,
    parsers: Parsers,
    strict: bool = True,
    records: "CellRecords | None" = None,
) -> Mismatch | None:
    """The first flag whose value the cell's files record differently from
    its command (str: '--eps 4.0, not 8.0'); None when they agree or
    nothing is recorded yet. The command is parsed by its script's parser
    (`parsers[cell.script]`), so every flag counts, defaults included;
    flags of WHERE_FLAGS do not.

    strict: a damaged record raises UserError (`damaged`); otherwise it
    counts as nothing recorded (the cell's script handles it when it runs).
    records: where the cell's files are read (each once); a new
    CellRecords when None.
    Raises:
        KeyError: `parsers` lacks the parser of a cell's script.
    """
    where = flags_record(cell)
    if where is None:
        return None
    path, folder = where
    try:
        record = (records or CellRecords()).read(cell.id, path, folder)
        if record is not None and not isinstance(record.get("flags"), dict):
            raise damaged(cell.id, path, "no 'flags' object", folder)
    except UserError:
        if strict:
            raise
        return None
    if record is None:
        return None
    if cell.script not in parsers:
        raise KeyError(f"no parser of {cell.script} to check {cell.id}")
    wanted = vars(parsers[cell.script](list(cell.args)))
    if cell.stage == "kernel":  # the class of this file ('all': each one)
        wanted["class_index"] = kernel_key(cell.keys["seed"], path)[3]
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
        config = schema.load_config(path)
        root = output_root or config[""]["output_root"]
        return cls(path, config, root)

    @property
    def name(self) -> str:
        return self.config[""]["name"]

    def _path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def log_path(self, cell_id: str) -> str:
        return self._path(LOGS_DIR, cell_id + ".log")

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
                out += self._phase2_cells(phase1)
            replicate = self._order_replicate(seed)
            out += replicate
            kernel_cells = []
            if c["kernels"] is not None:
                for phase1 in [*runs.values(), *replicate]:
                    kernel_cells += self._kernels(phase1)
                out += kernel_cells
            # The analysis compares kernels: it needs two of them (two times,
            # or two phase-1 runs at one time).
            if (
                c["analysis"] is not None
                and kernel_cells
                and (
                    len(c["kernels"]["times"]) > 1
                    or len(runs) + len(replicate) > 1
                )
            ):
                out.append(self._analysis(seed, runs, replicate, kernel_cells))
            if c["features"] is not None:
                for phase1 in runs.values():
                    out += self._features(phase1, kernel_cells)
            # The seed baseline compares runs of one training: not C′.
            every_kernel_cell += [
                cell for cell in kernel_cells if not is_reordered(cell)
            ]
        # The seed baseline of the kernel distances: every phase-1 run's
        # kernels against the same loader's of the other seeds.
        if (
            c["analysis"] is not None
            and every_kernel_cell
            and len(c[""]["seeds"]) > 1
        ):
            out.append(self._seeds_analysis(every_kernel_cell))
        return out

    def only_cells(self, cells: Sequence[Cell], part: str) -> list[Cell]:
        """The cells of `cells` in `part` of the grid (ONLY: sweep.py
        --only), in order.

        Raises:
            UserError: the grid has no such part (a section it needs is
            absent).
        """
        absent = [s for s in ONLY_NEEDS[part] if self.config[s] is None]
        if absent:
            raise UserError(
                f"{self.path}: --only {part} refreshes the {part} and their "
                f"analysis, but the grid has no [{absent[0]}] section"
            )
        return [cell for cell in cells if cell.stage in ONLY[part]]

    def _phase2_cells(self, phase1: Cell) -> list[Cell]:
        """The phase-2 cells of a phase-1 cell, each followed by its
        evaluation and robustness cells."""
        c = self.config
        out = []
        for t in c["phase2"]["times"]:
            for p2 in c["phase2"]["loaders"]:
                for dynamics in c["phase2"]["dynamics"]:
                    cell = self._phase2(phase1, t, p2, dynamics)
                    out.append(cell)
                    if c["evaluation"] is not None:
                        out.append(self._eval(cell))
                    out += self._robustness(cell)
        return out

    def _order_replicate(self, seed: int) -> list[Cell]:
        """[the phase-1 cell of C′_s] with phase1.order_replicate, else []:
        the benign run of seed s (the same --random_seed, so the same θ(0)
        and training images) with --order_seed s + ORDER_SEED_OFFSET, in
        REORDERED_DIR. It has kernels, no phase 2 and no feature images."""
        if not self.config["phase1"]["order_replicate"]:
            return []
        order_seed = seed + schema.ORDER_SEED_OFFSET
        return [
            self._phase1(
                seed, schema.ORDER_REPLICATE_LOADER, order_seed=order_seed
            )
        ]

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

    def _phase1(
        self, seed: int, loader: str, order_seed: int | None = None
    ) -> Cell:
        """The phase-1 cell of `loader` in `seed`; with `order_seed`, the
        order replicate (run_exp.py --order_seed, in REORDERED_DIR, its
        keys holding order_seed)."""
        c = self.config
        folder = PHASE1_DIR.format(loader)
        if order_seed is not None:
            folder = REORDERED_DIR
        cell_id = f"{SEED_DIR.format(seed)}/{folder}"
        save = self._path(cell_id)
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
        keys = {}
        if order_seed is not None:
            args[-1:-1] = ["--order_seed", order_seed]  # before --no_progress
            keys["order_seed"] = order_seed
        return self._cell(
            cell_id,
            "phase1",
            "run_exp.py",
            args,
            [],
            [os.path.join(save, layout.RESULTS_JSON)],
            seed=seed,
            phase1=loader,
            save_path=save,
            **keys,
        )

    def checkpoint(self, phase1: Cell, t: float) -> str:
        """θ(t) of a phase-1 cell."""
        return os.path.join(phase1.keys["save_path"], layout.checkpoint(t))

    def _phase2(
        self, phase1: Cell, t: float, loader: str, dynamics: str
    ) -> Cell:
        c = self.config
        keys = dict(phase1.keys, t=t, phase2=loader, dynamics=dynamics)
        name = PHASE2_DIR.format(layout.format_t(t), loader, dynamics)
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
            [os.path.join(save, layout.RESULTS_JSON)],
            **keys,
        )

    def eval_results(self, phase2: Cell) -> str:
        """The results json of a phase-2 cell's evaluation."""
        out_dir = os.path.join(phase2.keys["save_path"], EVAL_DIR)
        return layout.eval_record(out_dir, layout.EVAL_SAVE_NAME)

    def _eval(self, phase2: Cell) -> Cell:
        e = self.config["evaluation"]
        keys = {k: v for k, v in phase2.keys.items() if k != "save_path"}
        args = [
            "--model_path",
            os.path.join(phase2.keys["save_path"], layout.FINAL),
            *EVAL_FLAGS[phase2.keys["dynamics"]],
            "--bonus_dir",
            EVAL_DIR,
            "--save_name",
            layout.EVAL_SAVE_NAME,
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

    def robustness_runs(self) -> list[tuple[str, float]]:
        """(attack, eps in 1/255) of the robustness cells of each model:
        AutoAttack at attack.eps, then the eps curve (one cell per pair:
        a curve of AutoAttack shares the cell at attack.eps)."""
        r = self.config["robustness"]
        runs = []
        if r[schema.AUTOATTACK]:
            runs.append((schema.AUTOATTACK, self.config["attack"]["eps"]))
        for eps in r["eps_curve"]:
            if (r["curve_attack"], eps) not in runs:
                runs.append((r["curve_attack"], eps))
        return runs

    def robustness_results(self, phase2: Cell, attack: str, eps: float) -> str:
        """The results json of a phase-2 model's robustness cell."""
        out_dir = os.path.join(phase2.keys["save_path"], ROBUSTNESS_DIR)
        name = ROBUSTNESS_NAME.format(attack=attack, eps=eps)
        return layout.eval_record(out_dir, name)

    def _robustness(self, phase2: Cell) -> list[Cell]:
        """The robustness cells of a phase-2 cell (none unless it is one
        of [robustness]'s t and dynamics): eval_and_make_adv.py --attack,
        its results in the model's robustness/ folder."""
        r = self.config["robustness"]
        if (
            r is None
            or phase2.keys["t"] not in r["times"]
            or phase2.keys["dynamics"] != r["dynamics"]
        ):
            return []
        keys = {k: v for k, v in phase2.keys.items() if k != "save_path"}
        cells = []
        for attack, eps in self.robustness_runs():
            # The keys its attack reads (eval_and_make_adv.py refuses others).
            budget = [
                f"{k}={v}"
                for k, v in r["budget"].items()
                if k in schema.budget_keys(attack)
            ]
            name = ROBUSTNESS_NAME.format(attack=attack, eps=eps)
            args = [
                "--model_path",
                os.path.join(phase2.keys["save_path"], layout.FINAL),
                *EVAL_FLAGS[phase2.keys["dynamics"]],
                "--bonus_dir",
                ROBUSTNESS_DIR,
                "--save_name",
                name,
                *self._common(phase2.keys["seed"]),
                "--eps",
                f"{eps:g}",
                "--attack",
                attack,
                *(["--attack_budget", *budget] if budget else []),
            ]
            if r["test_size"]:
                args += ["--test_size", r["test_size"]]
            args.append("--no_progress")
            cells.append(
                self._cell(
                    f"{phase2.id}/{ROBUSTNESS_DIR}/{name}",
                    "robustness",
                    "eval_and_make_adv.py",
                    args,
                    [phase2.id],
                    [self.robustness_results(phase2, attack, eps)],
                    **dict(keys, attack=attack, eps=eps),
                )
            )
        return cells

    def kernel_classes(self) -> list:
        """The class indices of the kernel files each kernel cell writes."""
        c = self.config["kernels"]["class_index"]
        if c == kernel_files.ALL_CLASSES:
            dataset = data.get_dataset(self.config["data"]["dataset"])
            return list(range(dataset.n_classes))
        return [c]

    def kernel_dir(self, phase1: Cell, t: float) -> str:
        """Where the kernels of θ(t) of a phase-1 cell go."""
        stem = layout.checkpoint_stem(t)
        return os.path.join(phase1.keys["save_path"], KERNELS_DIR, stem)

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
                    t = layout.format_t(chunk[0])
                    name = f"{KERNELS_DIR}/t_{t}_n_{n}"
                else:
                    bonus = os.path.join(KERNELS_DIR, "{name}")
                    t = layout.format_t(chunk[0])
                    name = f"{KERNELS_DIR}/n_{n}_from_t_{t}"
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
        return self._path(SEED_DIR.format(seed), ANALYSIS_DIR)

    def _analysis(
        self,
        seed: int,
        runs: dict[str, Cell],
        replicate: list[Cell],
        kernel_cells: list[Cell],
    ) -> Cell:
        """analyze_kernels.py on the seed's runs' kernels (and the order
        replicate's, so that pairwise.csv holds S(C_s, C′_s)), comparing
        analysis.compare's two runs."""
        compare = self.config["analysis"]["compare"]
        if compare is None and {"C", "A"} <= set(runs):
            compare = ["C", "A"]
        out_dir = self.analysis_dir(seed)
        args = [
            os.path.join(cell.keys["save_path"], KERNELS_DIR)
            for cell in [*runs.values(), *replicate]
        ]
        args += ["--out_dir", out_dir]
        if compare:
            args.append("--compare")
            args += [
                os.path.join(runs[loader].keys["save_path"], KERNELS_DIR)
                for loader in compare
            ]
        deps = [c.id for c in kernel_cells if c.keys["seed"] == seed]
        return self._cell(
            f"{SEED_DIR.format(seed)}/{ANALYSIS_DIR}",
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
            folder = os.path.join(cell.keys["save_path"], KERNELS_DIR)
            group = folders.setdefault(cell.keys["phase1"], [])
            if folder not in group:
                group.append(folder)
        out_dir = self.seeds_analysis_dir()
        args = []
        for group in folders.values():
            args += ["--replicates", *group]
        args += ["--out_dir", out_dir, "--no_figures", "--no_progress"]
        return self._cell(
            f"{SEEDS_ANALYSIS_DIR}/{ANALYSIS_DIR}",
            "analysis",
            "analyze_kernels.py",
            args,
            [c.id for c in kernel_cells],
            [os.path.join(out_dir, name) for name in SEEDS_ANALYSIS_FILES],
        )

    def features_files(self, phase1: Cell, t: float) -> tuple[str, str]:
        """The feature images of θ(t) of a phase-1 cell: (pickle, PNG)."""
        f = self.config["features"]
        stem = layout.feature_stem(
            layout.FEATURES_SAVE_NAME, f["class_index"], f["size"]
        )
        return layout.feature_outputs(
            os.path.join(self.kernel_dir(phase1, t), stem)
        )

    def features_file(self, phase1: Cell, t: float) -> str:
        """The feature-image pickle of θ(t) of a phase-1 cell."""
        return self.features_files(phase1, t)[0]

    def _features(self, phase1: Cell, kernel_cells: list[Cell]) -> list[Cell]:
        f = self.config["features"]
        cells = []
        for t in f["times"]:
            needs = [
                c.id
                for c in kernel_cells
                if c.keys["save_path"] == phase1.keys["save_path"]
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
            cells.append(
                self._cell(
                    f"{phase1.id}/features/t_{layout.format_t(t)}",
                    "features",
                    "visualize_ntk_features.py",
                    args,
                    needs,
                    list(self.features_files(phase1, t)),
                    **dict(phase1.keys, t=t),
                )
            )
        return cells

    # ----------------------------------------------------------------------
    # The record of a sweep in its output root
    # ----------------------------------------------------------------------

    def record_path(self) -> str:
        return self._path(layout.SWEEP_RECORD)

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
                name = f"{section}.{key}" if section else key
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

    def check_cells(
        self,
        cells: Sequence[Cell],
        parsers: Parsers,
        strict: bool = True,
        records: CellRecords | None = None,
    ) -> None:
        """Refuses cells under the output root whose files record other
        flags than their commands (see flag_mismatch, with `parsers`):
        they were made with other settings, by another grid or by hand.

        strict: a damaged record is refused too (otherwise the cell's
        script decides when it runs). records: where the files are read.
        """
        records = records or CellRecords()
        for cell in cells:
            mismatch = flag_mismatch(cell, parsers, strict, records)
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


def python_display() -> str:
    """The interpreter as the dry run prints it (relative when under the
    current folder)."""
    exe = sys.executable
    rel = os.path.relpath(exe)
    return rel if not rel.startswith("..") else exe
