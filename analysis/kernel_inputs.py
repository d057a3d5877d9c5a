"""Finding and reading the kernel files analyze_kernels.py analyses.

Its arguments are kernel files or folders searched (with their
subfolders) for files named as calculate_kernel.py names them
(`layout.is_kernel_file`); each file is read once, checked
(`read_kernel`) and kept as a `kernel_analysis.Kernel`, whichever
arguments name it.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from analysis import kernel_analysis
from analysis.kernel_analysis import Kernel
from ntk import kernel_files
from store import layout
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


def read_all(
    inputs: Sequence[str],
    compare: Sequence[str] | None,
    replicates: Sequence[Sequence[str]] | None,
    progress: bool = True,
) -> Inputs:
    """The kernels of the file and folder arguments `inputs`, of the two
    --compare folders and of the --replicates groups of folders."""
    reader = _Reader(progress)
    for argument in inputs:
        reader.collect(argument)
    sides = None
    if compare:
        _check_folders("--compare", compare, "the kernel folders of two runs")
        sides = tuple(reader.collect(folder) for folder in compare)
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
    notes = []
    if reader.skipped:
        notes.append(
            f"{reader.skipped} pickle(s) named like kernel files hold no "
            "'kernel' and were skipped"
        )
    return Inputs(list(reader.by_file.values()), sides, groups, notes)
