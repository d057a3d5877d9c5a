"""Finding and reading the kernel files analyze_kernels.py analyses.

Its arguments are kernel files or folders searched (with their
subfolders) for files named as calculate_kernel.py names them
(`layout.is_kernel_file`); each file is read once, checked
(`read_kernel`) and kept as a `kernel_analysis.Kernel`, whichever
arguments name it.
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from analysis import kernel_analysis
from analysis.kernel_analysis import Kernel
from ntk import kernel_files
from store import checkpoints, layout
from utils import UserError

# How kernel files' names end: _{N}.pkl and _class_{c}_{N}.pkl.
_ENDINGS = (
    layout.kernel_file("", None, "{N}"),
    layout.kernel_file("", "{c}", "{N}"),
)


def found(path: str) -> list[tuple[str, bool]]:
    """(file, whether found in a folder) for a file or folder argument."""
    if os.path.isfile(path):
        return [(path, False)]
    if not os.path.isdir(path):
        raise UserError(f"{path} does not exist: pass kernel files or folders")
    files = []
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        files += [
            (os.path.join(folder, name), True)
            for name in sorted(names)
            if not name.startswith(".") and layout.is_kernel_file(name)
        ]
    if not files:
        raise UserError(
            f"{path} holds no kernel files (names ending in {_ENDINGS[0]} "
            f"or {_ENDINGS[1]}, as calculate_kernel.py writes them)"
        )
    return files


def read_kernel(path: str) -> Kernel:
    """A checked kernel file, as a kernel_analysis.Kernel: finite,
    symmetric and with a finite epoch or none (kernel_files.read), not
    zero, positive semi-definite within kernel_analysis.PSD_TOLERANCE."""
    file = kernel_files.read(path, recorded_only=True)
    if not np.any(file.kernel):
        raise UserError(
            f"{path}: the kernel is zero, so it has no direction to compare"
        )
    recorded = file.extras.get("n_logits", file.extras.get("n_classes"))
    n_classes = int(file.labels.max()) + 1
    if isinstance(recorded, (int, np.integer)) and recorded > 0:
        n_classes = int(recorded)
    if file.class_index >= n_classes or file.labels.max() >= n_classes:
        raise UserError(
            f"{path}: class {file.class_index} or its labels do not fit its "
            f"{n_classes} classes; the file is damaged"
        )
    run = kernel_files.checkpoint_folder(file) or os.path.normpath(
        os.path.dirname(path) or "."
    )
    kernel = Kernel(file, run, n_classes)
    values = kernel.eigh[0]  # kept: every measurement needs it
    violation = kernel_analysis.psd_violation(values)
    if violation > kernel_analysis.PSD_TOLERANCE:
        raise UserError(
            f"{path}: the kernel is not positive semi-definite: its smallest "
            f"eigenvalue {values[-1]:.3g} is {-violation:.3g} x its largest "
            f"in magnitude, below the -{kernel_analysis.PSD_TOLERANCE:g} "
            "that rounding allows, so it is not a Gram matrix of gradients "
            "and its distances would leave [0, 1]; recompute it with "
            "calculate_kernel.py"
        )
    return kernel


# Flags of a run that differ between replicates: the seed, the seed of the
# data order (run_exp.py's --order_seed, by default the seed), and the path
# of the base checkpoint (each seed's own phase-1 run). What replicates
# share instead is the order seed's offset from the seed (0 by default; the
# sweep's order replicates C′ have ORDER_SEED_OFFSET).
SEED_FLAGS = ("random_seed", "order_seed", "base_model_path")


def _order_offset(flags: Mapping) -> int | None:
    """--order_seed − --random_seed of a run's flags (0 where the run
    predates --order_seed), None where they are not integers."""
    seed = flags.get("random_seed")
    order = flags.get("order_seed", seed)
    if isinstance(seed, int) and isinstance(order, int):
        return order - seed
    return None


def _identity(spec: Mapping, run: Mapping) -> dict:
    """What makes a training, from a checkpoint's meta (or what a kernel
    file records of it: `spec` its model entries, `run` its loaders, seed
    and flags): {'dataset', 'model', 'width', 'loaders', '--FLAG' ...,
    'seed'}."""
    flags = run.get("flags") if isinstance(run.get("flags"), Mapping) else {}
    identity = {key: spec.get(key) for key in ("dataset", "model", "width")}
    identity["loaders"] = run.get("loaders")
    identity.update(
        (f"--{name}", value)
        for name, value in sorted(flags.items())
        if name not in SEED_FLAGS
    )
    identity["order_seed − random_seed"] = _order_offset(flags)
    identity["seed"] = run.get("seed", flags.get("random_seed"))
    return identity


def run_identity(kernels: Sequence[Kernel]) -> dict | None:
    """The training a run's kernels came from (_identity): as its kernel
    files record it ('run', written by calculate_kernel.py), else from
    the meta of its checkpoint when that is still there; None when
    neither says."""
    for kernel in kernels:
        recorded = kernel.file.extras.get("run")
        if isinstance(recorded, Mapping):
            return _identity(kernel.file.extras, recorded)
    for kernel in kernels:
        relative = kernel.file.extras.get("checkpoint_relpath")
        if not isinstance(relative, str):
            continue
        path = os.path.join(os.path.dirname(kernel.path), relative)
        if os.path.isfile(path):
            try:
                meta = checkpoints.load_checkpoint(path)["meta"]
            except UserError:
                continue
            return _identity(meta, meta)
    return None


def replicate_runs_problem(
    folders: Sequence[str], runs: Sequence[Sequence[Kernel]]
) -> str | None:
    """Why the runs of a --replicates group (their folders and kernels) are
    not replicates, or None: two runs whose trainings (run_identity)
    differ in more than the seed, or have the same seed. Runs whose
    training is not recorded are not compared."""
    known = [
        (folder, identity)
        for folder, kernels in zip(folders, runs, strict=True)
        if (identity := run_identity(kernels)) is not None
    ]
    for i, (a, first) in enumerate(known):
        for b, second in known[i + 1 :]:
            differ = [
                key
                for key in sorted(set(first) | set(second))
                if key != "seed" and first.get(key) != second.get(key)
            ]
            if differ:
                key = differ[0]
                return (
                    f"--replicates {a} {b}: not runs of one training, "
                    f"{key} {first.get(key)!r} there, {second.get(key)!r} "
                    "here: a group holds runs that differ only in their seed"
                )
            if first["seed"] is not None and first["seed"] == second["seed"]:
                return (
                    f"--replicates {a} {b}: runs of the same seed "
                    f"{first['seed']} and flags, not replicates: a group "
                    "holds runs that differ in their seed"
                )
    return None


# Per --replicates group: its folders and each folder's kernels.
ReplicateGroup = tuple[list[str], list[list[Kernel]]]


@dataclasses.dataclass
class Inputs:
    """The kernels of analyze_kernels.py's arguments.

    kernels: every kernel once, in the order given.
    sides: the two --compare folders' kernels, or None.
    replicates: per --replicates group, its folders and their kernels.
    notes: what the reading noticed, for the notes of analysis.json.
    """

    kernels: list[Kernel]
    sides: tuple[list[Kernel], ...] | None
    replicates: list[ReplicateGroup]
    notes: list[str]


class _Reader:
    """Reads the kernel files of one argument after another, each file
    once (by its real path), counting the pickles skipped in folders."""

    def __init__(self, progress: bool) -> None:
        self.by_file: dict[str, Kernel] = {}
        self.skipped = 0
        self.progress = progress

    def collect(self, argument: str) -> list[Kernel]:
        """The kernels of a file or folder argument."""
        kernels = []
        for path, in_folder in tqdm(
            found(argument),
            desc=f"reading {argument}",
            unit="file",
            disable=not self.progress,
            leave=False,
        ):
            key = os.path.realpath(path)
            if key not in self.by_file:
                try:
                    self.by_file[key] = read_kernel(path)
                except kernel_files.NotAKernelFile:
                    if not in_folder:
                        raise
                    self.skipped += 1
                    continue
            kernels.append(self.by_file[key])
        if not kernels:
            raise UserError(
                f"{argument} holds no kernel files, only other pickles"
            )
        return kernels


def _check_folders(flag: str, folders: Sequence[str], what: str) -> None:
    """Raises UserError unless every one of `folders` is a folder."""
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {folder} is not a folder: give {what}")


def _overlap(a: str, b: str, kernels: tuple[list, list]) -> str | None:
    """How the run folders `a` and `b` (with their kernels) are one run,
    compared as real paths: 'one folder', 'b inside a', or 'the same
    kernel files'; None when they are two runs."""
    real_a, real_b = os.path.realpath(a), os.path.realpath(b)
    if real_a == real_b:
        return "one folder"
    if os.path.commonpath([real_a, real_b]) in (real_a, real_b):
        inner, outer = (b, a) if len(real_b) > len(real_a) else (a, b)
        return f"{inner} is inside {outer}"
    if {id(k) for k in kernels[0]} & {id(k) for k in kernels[1]}:
        return "they hold the same kernel files"
    return None


def _check_distinct(
    flag: str, folders: Sequence[tuple[int, str, list[Kernel]]]
) -> None:
    """Raises UserError when two of `folders` ((group, folder, kernels))
    are one run: within a group (or the two --compare folders) a run
    would be compared with itself, at distance 0; in two groups it would
    get the mean of both."""
    for i, (group_a, a, kernels_a) in enumerate(folders):
        for group_b, b, kernels_b in folders[i + 1 :]:
            how = _overlap(a, b, (kernels_a, kernels_b))
            if how is None:
                continue
            if group_a != group_b:
                raise UserError(
                    f"{flag}: {a} and {b} are one run ({how}) in two groups: "
                    "a run belongs to one group; give each group its own "
                    "runs' kernel folders"
                )
            raise UserError(
                f"{flag} {a} {b}: one run ({how}), compared with itself "
                "at distance 0: give the kernel folders of different runs"
                + (", each once" if flag == "--replicates" else "")
            )


def read_all(
    inputs: Sequence[str],
    compare: Sequence[str] | None,
    replicates: Sequence[Sequence[str]] | None,
    progress: bool = True,
) -> Inputs:
    """The kernels of the file and folder arguments `inputs`, of the two
    --compare folders and of the --replicates groups of folders.

    Raises:
        UserError: a folder is missing or holds no kernels; two --compare
            folders, or two --replicates folders of any groups, are one
            run (_check_distinct); the runs of a group differ in more
            than their seed (replicate_runs_problem).
    """
    reader = _Reader(progress)
    for argument in inputs:
        reader.collect(argument)
    sides = None
    if compare:
        _check_folders("--compare", compare, "the kernel folders of two runs")
        sides = tuple(reader.collect(folder) for folder in compare)
        _check_distinct(
            "--compare",
            [(0, f, k) for f, k in zip(compare, sides, strict=True)],
        )
    groups = []
    for group in replicates or []:
        _check_folders(
            "--replicates",
            group,
            "the kernel folders of runs that differ only in their seed",
        )
        groups.append(
            (list(group), [reader.collect(folder) for folder in group])
        )
    _check_distinct(
        "--replicates",
        [
            (number, folder, kernels)
            for number, (folders, runs) in enumerate(groups)
            for folder, kernels in zip(folders, runs, strict=True)
        ],
    )
    for folders, runs in groups:
        problem = replicate_runs_problem(folders, runs)
        if problem:
            raise UserError(problem)
    notes = []
    if reader.skipped:
        notes.append(
            f"{reader.skipped} pickle(s) named like kernel files hold no "
            "'kernel' and were skipped"
        )
    return Inputs(list(reader.by_file.values()), sides, groups, notes)
