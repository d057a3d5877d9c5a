"""Measures kernel files of calculate_kernel.py and how the kernel moves.

Distances between kernels, velocities and polar trajectories over a run's
epochs, spectra, alignment with the labels and kernel regression accuracy
(kernel_analysis.py has the formulas), as CSV tables, one JSON file and
seaborn figures in --out_dir.

    python analyze_kernels.py run/kernels --out_dir run/analysis
    python analyze_kernels.py runs/CC/kernels runs/AC/kernels \\
        --out_dir runs/analysis --compare runs/CC/kernels runs/AC/kernels
    python analyze_kernels.py --out_dir seeds/analysis \\
        --replicates s0/CC/kernels s1/CC/kernels s2/CC/kernels \\
        --replicates s0/AC/kernels s1/AC/kernels s2/AC/kernels
"""

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import threadpoolctl
from tqdm import tqdm

import cli
from analysis import kernel_analysis
from analysis.kernel_analysis import Kernel
from ntk import kernel_files
from store import atomic, layout
from utils import UserError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="KERNEL_FILE_OR_DIR",
        help="kernel files, or folders searched (with their subfolders) "
        "for kernel files",
    )
    parser.add_argument(
        "--out_dir", required=True, help="folder of the tables and figures"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        default=None,
        help="two folders of kernels over the same epochs (benign and "
        "adversarial, say): their distance at each epoch; their kernels "
        "are analysed too",
    )
    parser.add_argument(
        "--replicates",
        nargs="+",
        action="append",
        metavar="RUN",
        default=None,
        help="two or more folders of kernels of runs that differ only in "
        "their seed, on the same images (repeat the flag for each group): "
        "each kernel's mean distance to the same class and epoch of the "
        "other runs, the distance_between_seeds column and "
        "replicates.csv; their kernels are analysed too",
    )
    parser.add_argument(
        "--settle_fraction",
        type=cli.number(float, 0, 1),
        default=kernel_analysis.DEFAULT_SETTLE_FRACTION,
        help="a series has settled at the first epoch after which every "
        "kernel is within this fraction of the first kernel's distance to "
        "the last (settle_t; default "
        f"{kernel_analysis.DEFAULT_SETTLE_FRACTION:g})",
    )
    parser.add_argument(
        "--top_k",
        type=cli.positive_int,
        nargs="+",
        default=list(kernel_analysis.DEFAULT_TOP_K),
        help="k of the top-k eigenvalue mass and label energy columns",
    )
    parser.add_argument(
        "--polar_k",
        type=cli.positive_int,
        default=kernel_analysis.DEFAULT_POLAR_K,
        help="top eigenvectors of the last kernel for the polar projections",
    )
    cli.add_seed_flag(
        parser, "seed of the split that chooses kernel regression's ridge"
    )
    parser.add_argument(
        "--no_figures", action="store_true", help="tables and JSON only"
    )
    parser.add_argument(
        "--blas_threads",
        type=cli.positive_int,
        default=1,
        help="threads of NumPy's linear algebra (default 1: N×N kernels of "
        "a few thousand images gain little from more, and several threads "
        "slow down many times over on a CPU shared with other jobs)",
    )
    cli.add_progress_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with threadpoolctl.threadpool_limits(args.blas_threads, user_api="blas"):
        _analyse(args)


def _analyse(args: argparse.Namespace) -> None:
    """main's work, within the BLAS thread limit."""
    if not args.inputs and not args.compare and not args.replicates:
        raise UserError(
            "no kernels given: pass kernel files or folders, --compare "
            "RUN_A RUN_B or --replicates RUN RUN ..."
        )
    for group in args.replicates or []:
        if len(group) < 2:
            raise UserError(
                f"--replicates {group[0]}: give two or more folders of runs "
                "that differ only in their seed"
            )
    notes = []
    kernels, sides, replicates = _read_all(args, notes)
    if len(kernels) < 2:
        raise UserError(
            f"only one kernel file ({kernels[0].path}): distances need "
            "pairs; give at least two kernels of the same class and images"
        )
    groups = kernel_analysis.series(kernels)
    sets = kernel_analysis.comparable_sets(kernels)
    if all(len(members) == 1 for members in sets):
        raise UserError(
            f"no two of the {len(kernels)} kernel files are of the same "
            "class and images, so there is no pair to compare"
        )
    matched = None
    if sides is not None:
        matched, unmatched = kernel_analysis.compare_runs(*sides)
        if unmatched:
            notes.append(
                f"{len(unmatched)} kernel(s) of the --compare folders have "
                "no kernel of the same class and epoch in the other folder"
            )
    replicate_rows, between_seeds = _replicates(replicates)
    # Created only when the outputs are ready to be written.
    atomic.check_writable_dir(args.out_dir)

    measures = [
        kernel_analysis.measure(kernel, args.top_k, args.random_seed)
        for kernel in tqdm(
            kernels, desc="kernels", unit="file", disable=args.no_progress
        )
    ]
    series_measures = {
        key: kernel_analysis.series_measures(
            members, args.polar_k, args.settle_fraction
        )
        for key, members in groups.items()
        if len(members) > 1
    }
    undated = sum(kernel.epoch is None for kernel in kernels)
    if undated:
        notes.append(
            f"{undated} kernel file(s) record no epoch: listed in kernels.csv"
            ", left out of the series (velocity, polar, distances to the "
            "first and last)"
        )
    single = [key for key, members in groups.items() if len(members) == 1]
    if single:
        notes.append(
            f"{len(single)} run/class group(s) hold a single epoch: no "
            "velocity or polar trajectory for them"
        )

    labels = _series_labels(kernels)
    tables = _tables(kernels, measures, groups, series_measures, labels)
    tables["kernels"]["distance_between_seeds"] = [
        between_seeds.get(id(kernel), np.nan) for kernel in kernels
    ]
    pairwise, heatmaps = _pairwise(kernels, sets, labels)
    compare_table = _compare_table(matched) if matched else None
    files = {
        "kernels.csv": tables["kernels"].to_csv(index=False),
        "pairwise.csv": pairwise.to_csv(index=False),
        "series.csv": tables["series"].to_csv(index=False),
    }
    if compare_table is not None:
        files["compare.csv"] = compare_table.to_csv(index=False)
    if replicate_rows is not None:
        files["replicates.csv"] = replicate_rows.to_csv(index=False)
    report = _report(
        args,
        kernels,
        measures,
        pairwise,
        series_measures,
        labels,
        compare_table,
        notes,
    )
    if replicate_rows is not None:
        report["replicates"] = dict(
            groups=args.replicates, rows=_records(replicate_rows)
        )
    figures = (
        {}
        if args.no_figures
        else _figures(
            args, kernels, measures, tables, heatmaps, compare_table, labels
        )
    )

    _write(args.out_dir, files, report, figures)
    for note in notes:
        print(f"note: {note}")
    written = [*figures, *files, MARKER]
    print(
        f"analysed {len(kernels)} kernel(s), {len(pairwise)} pair(s), "
        f"{len(series_measures)} series; wrote {', '.join(written)} in "
        f"{args.out_dir}"
    )


# The files a sweep checks to count an analysis finished
# (grid.ANALYSIS_FILES, grid.SEEDS_ANALYSIS_FILES) are written after every
# other output, analysis.json last of all.
MARKER = "analysis.json"
CHECKED_TABLES = ("kernels.csv", "pairwise.csv", "replicates.csv")


def _write(
    out_dir: str,
    tables: Mapping[str, str],
    report: dict,
    figures: Mapping[str, bytes],
) -> None:
    """Writes the outputs so that the folder counts as finished only when
    every one of them is there: the previous analysis.json first removed,
    then the figures, the other tables, the tables a sweep checks, and
    analysis.json last. A write that fails (a full disk) leaves no
    analysis.json, so the sweep runs the analysis again."""
    atomic.ensure_writable_dir(out_dir)
    marker = os.path.join(out_dir, MARKER)
    try:
        os.remove(marker)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise UserError(
            f"cannot replace {marker}: {err.strerror or err}; fix its "
            "permissions or choose another --out_dir"
        ) from None
    for name, png in figures.items():
        atomic.atomic_write_bytes(os.path.join(out_dir, name), png)
    order = sorted(tables, key=lambda name: name in CHECKED_TABLES)
    for name in order:
        atomic.atomic_write_text(os.path.join(out_dir, name), tables[name])
    atomic.atomic_write_json(marker, report)


# --------------------------------------------------------------------------
# Finding and reading kernel files
# --------------------------------------------------------------------------


def _found(path: str) -> list[tuple[str, bool]]:
    """(file, whether found in a folder) for a file or folder argument."""
    if os.path.isfile(path):
        return [(path, False)]
    if not os.path.isdir(path):
        raise UserError(f"{path} does not exist: pass kernel files or folders")
    found = []
    for folder, subfolders, names in os.walk(path):
        subfolders.sort()
        found += [
            (os.path.join(folder, name), True)
            for name in sorted(names)
            if not name.startswith(".") and layout.is_kernel_file(name)
        ]
    if not found:
        raise UserError(
            f"{path} holds no kernel files (names ending in _{{N}}.pkl or "
            "_class_{c}_{N}.pkl, as calculate_kernel.py writes them)"
        )
    return found


def _read(path: str) -> Kernel:
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


def _read_all(
    args: argparse.Namespace, notes: list
) -> tuple[
    list[Kernel],
    tuple[list[Kernel], ...] | None,
    list[tuple[list[str], list[list[Kernel]]]],
]:
    """(every kernel once, in the order given; the two --compare folders'
    kernels or None; per --replicates group, its folders and each folder's
    kernels)."""
    by_file: dict[str, Kernel] = {}
    skipped = 0

    def collect(argument: str) -> list[Kernel]:
        nonlocal skipped
        found = _found(argument)
        kernels = []
        for path, in_folder in tqdm(
            found,
            desc=f"reading {argument}",
            unit="file",
            disable=args.no_progress,
            leave=False,
        ):
            key = os.path.realpath(path)
            if key not in by_file:
                try:
                    by_file[key] = _read(path)
                except kernel_files.NotAKernelFile:
                    if not in_folder:
                        raise
                    skipped += 1
                    continue
            kernels.append(by_file[key])
        if not kernels:
            raise UserError(
                f"{argument} holds no kernel files, only other pickles"
            )
        return kernels

    for argument in args.inputs:
        collect(argument)
    sides = None
    if args.compare:
        for folder in args.compare:
            if not os.path.isdir(folder):
                raise UserError(
                    f"--compare {folder} is not a folder: give the kernel "
                    "folders of two runs"
                )
        sides = tuple(collect(folder) for folder in args.compare)
    replicates = []
    for group in args.replicates or []:
        for folder in group:
            if not os.path.isdir(folder):
                raise UserError(
                    f"--replicates {folder} is not a folder: give the kernel "
                    "folders of runs that differ only in their seed"
                )
        replicates.append((group, [collect(folder) for folder in group]))
    if skipped:
        notes.append(
            f"{skipped} pickle(s) named like kernel files hold no 'kernel' "
            "and were skipped"
        )
    return list(by_file.values()), sides, replicates


def _replicates(
    groups: Sequence[tuple[list[str], list[list[Kernel]]]],
) -> tuple[pd.DataFrame | None, dict[int, float]]:
    """(replicates.csv's rows, or None without --replicates; {id(kernel):
    distance_between_seeds})."""
    if not groups:
        return None, {}
    rows, distances = [], []
    for number, (folders, runs) in enumerate(groups):
        for i, j, a, b in kernel_analysis.replicate_pairs(runs):
            distance = kernel_analysis.kernel_distance(
                a.file.kernel, b.file.kernel
            )
            distances.append((a, b, distance))
            key = kernel_analysis.series_key(a)
            rows.append(
                dict(
                    group=number,
                    run_a=folders[i],
                    run_b=folders[j],
                    class_index=a.class_index,
                    phase=key.phase,
                    use_linear_params=key.use_linear_params,
                    epoch=a.epoch,
                    a=a.path,
                    b=b.path,
                    distance=distance,
                )
            )
    between = kernel_analysis.distance_between_seeds(distances)
    return pd.DataFrame(rows), between


# --------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------


def _short_names(paths: Iterable[str]) -> dict[str, str]:
    """Each folder named by what tells it apart from the others."""
    unique = sorted(set(paths))
    absolute = [os.path.abspath(p) for p in unique]
    if len(unique) == 1:
        return {unique[0]: os.path.basename(absolute[0]) or unique[0]}
    common = os.path.commonpath(absolute)
    return {
        p: os.path.relpath(a, common)
        for p, a in zip(unique, absolute, strict=True)
    }


def _series_labels(
    kernels: Sequence[Kernel],
) -> dict[kernel_analysis.SeriesKey, str]:
    """A short name of each kernel's series key: the run, and its phase
    and lin_params where they are not phase 1 and params."""
    keys = {kernel_analysis.series_key(k) for k in kernels}
    runs = _short_names([key.run for key in keys])
    labels = {}
    for key in keys:
        label = runs[key.run]
        if key.phase not in (None, "standard"):
            label += f" ({key.phase})"
        if key.use_linear_params:
            label += " lin_params"
        labels[key] = label
    return labels


def _label(
    kernel: Kernel, labels: Mapping[kernel_analysis.SeriesKey, str]
) -> str:
    """The series label and epoch of a kernel (or its file name)."""
    series = labels[kernel_analysis.series_key(kernel)]
    if kernel.epoch is None:
        return f"{series} {os.path.basename(kernel.path)}"
    return f"{series} e{kernel.epoch:g}"


def _identity(
    kernel: Kernel, labels: Mapping[kernel_analysis.SeriesKey, str]
) -> dict:
    """What names a kernel in the tables: its file, series, run, phase,
    parameters, epoch and class."""
    key = kernel_analysis.series_key(kernel)
    return dict(
        path=kernel.path,
        series=labels[key],
        run=key.run,
        phase=key.phase,
        use_linear_params=key.use_linear_params,
        epoch=kernel.epoch,
        class_index=kernel.class_index,
    )


_ARRAYS = ("eigenvalues", "label_energy")


def _tables(
    kernels: Sequence[Kernel],
    measures: Sequence[dict],
    groups: Mapping[kernel_analysis.SeriesKey, list[Kernel]],
    series_measures: Mapping[kernel_analysis.SeriesKey, dict],
    labels: Mapping[kernel_analysis.SeriesKey, str],
) -> dict[str, pd.DataFrame]:
    """{'kernels': a row per file, 'series': a row per file of a series}."""
    to_first = {}
    series_rows = []
    for key, result in series_measures.items():
        members = groups[key]
        polar = result["polar"]
        velocity = np.append(result["velocity"], np.nan)
        following = np.append(result["velocity_next_epoch"], np.nan)
        for i, kernel in enumerate(members):
            to_first[id(kernel)] = (
                result["distance_to_first"][i],
                result["distance_to_last"][i],
                result["settle_t"],
            )
            row = dict(
                series=labels[key],
                run=key.run,
                phase=key.phase,
                use_linear_params=key.use_linear_params,
                class_index=key.class_index,
                epoch=kernel.epoch,
                path=kernel.path,
                distance_to_first=result["distance_to_first"][i],
                distance_to_last=result["distance_to_last"][i],
                velocity=velocity[i],
                next_epoch=following[i],
                velocity_midpoint=(kernel.epoch + following[i]) / 2,
                settle_t=result["settle_t"],
            )
            for name in kernel_analysis.PROJECTIONS:
                row[f"r_{name}"] = polar[name]["r"][i]
                row[f"phi_{name}"] = polar[name]["phi"][i]
            series_rows.append(row)
    kernel_rows = []
    for kernel, measured in zip(kernels, measures, strict=True):
        first, last, settle = to_first.get(id(kernel), (np.nan,) * 3)
        kernel_rows.append(
            dict(
                _identity(kernel, labels),
                **{k: v for k, v in measured.items() if k not in _ARRAYS},
                distance_to_first=first,
                distance_to_last=last,
                settle_t=settle,
            )
        )
    series_columns = [
        "series",
        "run",
        "phase",
        "use_linear_params",
        "class_index",
        "epoch",
        "path",
        "distance_to_first",
        "distance_to_last",
        "velocity",
        "next_epoch",
        "velocity_midpoint",
        "settle_t",
        *(
            f"{coordinate}_{name}"
            for name in kernel_analysis.PROJECTIONS
            for coordinate in ("r", "phi")
        ),
    ]
    return {
        "kernels": pd.DataFrame(kernel_rows),
        "series": pd.DataFrame(series_rows, columns=series_columns),
    }


def _pairwise(
    kernels: Sequence[Kernel],
    sets: Sequence[Sequence[int]],
    labels: Mapping[kernel_analysis.SeriesKey, str],
) -> tuple[pd.DataFrame, list[tuple[str, np.ndarray, list[str]]]]:
    """(a row per pair of comparable kernels, [(title, S (T, T), tick
    labels)] per set of two or more, kernels in order of series and
    epoch)."""
    rows, heatmaps = [], []
    for members in sets:
        if len(members) < 2:
            continue
        chosen = sorted(
            (kernels[i] for i in members),
            key=lambda k: (
                labels[kernel_analysis.series_key(k)],
                k.epoch is None,
                k.epoch or 0,
            ),
        )
        distances = kernel_analysis.distance_matrix(
            [k.file.kernel for k in chosen]
        )
        for i, a in enumerate(chosen):
            for j in range(i + 1, len(chosen)):
                rows.append(
                    dict(
                        a=a.path,
                        b=chosen[j].path,
                        distance=distances[i, j],
                        class_index=a.class_index,
                        epoch_a=a.epoch,
                        epoch_b=chosen[j].epoch,
                    )
                )
        title = (
            f"{kernel_analysis.class_title(chosen[0].class_index)}, "
            f"N = {chosen[0].file.size}"
        )
        heatmaps.append(
            (title, distances, [_label(k, labels) for k in chosen])
        )
    columns = ["a", "b", "distance", "class_index", "epoch_a", "epoch_b"]
    return pd.DataFrame(rows, columns=columns), heatmaps


def _compare_table(
    matched: Sequence[tuple[Kernel, Kernel]],
) -> pd.DataFrame:
    """A row per matched pair of the --compare folders."""
    rows = []
    for a, b in matched:
        key = kernel_analysis.series_key(a)
        variant = key.phase or "standard"
        if key.use_linear_params:
            variant += " lin_params"
        rows.append(
            dict(
                class_index=a.class_index,
                phase=key.phase,
                use_linear_params=key.use_linear_params,
                variant=variant,
                epoch=a.epoch,
                a=a.path,
                b=b.path,
                distance=kernel_analysis.kernel_distance(
                    a.file.kernel, b.file.kernel
                ),
            )
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------
# JSON and figures
# --------------------------------------------------------------------------


def _plain(value: object) -> Any:
    """JSON-ready: arrays as lists, non-finite numbers as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _records(table: pd.DataFrame) -> list[dict]:
    return [
        {k: _plain(v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]


def _report(
    args: argparse.Namespace,
    kernels: Sequence[Kernel],
    measures: Sequence[dict],
    pairwise: pd.DataFrame,
    series_measures: Mapping[kernel_analysis.SeriesKey, dict],
    labels: Mapping[kernel_analysis.SeriesKey, str],
    compare_table: pd.DataFrame | None,
    notes: list[str],
) -> dict:
    """The content of analysis.json."""
    kernel_entries = []
    for kernel, measured in zip(kernels, measures, strict=True):
        kernel_entries.append(
            dict(
                _identity(kernel, labels),
                n_classes=kernel.n_classes,
                **measured,
            )
        )
    series_entries = [
        dict(
            series=labels[key],
            run=key.run,
            phase=key.phase,
            class_index=key.class_index,
            use_linear_params=key.use_linear_params,
            **result,
        )
        for key, result in series_measures.items()
    ]
    report = dict(
        kernels=kernel_entries,
        pairwise=_records(pairwise),
        series=series_entries,
        notes=notes,
        command=sys.argv,
        flags=vars(args),
        ridge_grid=dict(
            exponents=list(kernel_analysis.RIDGE_EXPONENTS),
            scale="mean of the kernel's diagonal",
            validation_fraction=kernel_analysis.VALIDATION_FRACTION,
        ),
    )
    if compare_table is not None:
        report["compare"] = dict(
            run_a=args.compare[0],
            run_b=args.compare[1],
            rows=_records(compare_table),
        )
    return _plain(report)


def _figures(
    args: argparse.Namespace,
    kernels: Sequence[Kernel],
    measures: Sequence[dict],
    tables: Mapping[str, pd.DataFrame],
    heatmaps: Sequence[tuple[str, np.ndarray, list[str]]],
    compare_table: pd.DataFrame | None,
    labels: Mapping[kernel_analysis.SeriesKey, str],
) -> dict[str, bytes]:
    """{file name: PNG bytes} of the figures that have data."""
    from analysis import (
        kernel_figures,  # seaborn and matplotlib: only when drawing
    )

    series = tables["series"]
    table = tables["kernels"]
    figures = {
        "distance_heatmap.png": kernel_figures.distance_heatmaps(heatmaps)
    }
    if len(series):
        figures["overview.png"] = kernel_figures.overview(
            series, table, compare_table, *_run_names(args)
        )
        figures["velocity.png"] = kernel_figures.velocity(series)
        figures["polar.png"] = kernel_figures.polar(series, args.polar_k)
    figures["eigenvalue_decay.png"] = kernel_figures.eigenvalue_decay(
        _decay_curves(kernels, measures, labels)
    )
    if table["epoch"].notna().any():
        figures["alignment.png"] = kernel_figures.alignment(table)
    if "kernel_regression_accuracy" in table and len(
        table.dropna(subset=["epoch", "kernel_regression_accuracy"])
    ):
        figures["kernel_regression.png"] = kernel_figures.regression_accuracy(
            table
        )
    if compare_table is not None:
        figures["compare.png"] = kernel_figures.compare(
            compare_table, *_run_names(args)
        )
    return figures


def _run_names(args: argparse.Namespace) -> tuple[str, str]:
    """Short names of the two --compare folders ('A', 'B' without)."""
    if not args.compare:
        return "A", "B"
    names = _short_names(args.compare)
    return names[args.compare[0]], names[args.compare[1]]


def _decay_curves(
    kernels: Sequence[Kernel],
    measures: Sequence[dict],
    labels: Mapping[kernel_analysis.SeriesKey, str],
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Per series (kernels without an epoch apart): its title and its
    kernels' (label, eigenvalues) in order of epoch."""
    panels: dict[str, list] = {}
    for kernel, measured in sorted(
        zip(kernels, measures, strict=True),
        key=lambda pair: (pair[0].epoch is None, pair[0].epoch or 0),
    ):
        key = kernel_analysis.series_key(kernel)
        title = (
            f"{labels[key]}: {kernel_analysis.class_title(key.class_index)}"
        )
        if kernel.epoch is None:
            title += " (no epoch)"
            label = os.path.basename(kernel.path)
        else:
            label = f"epoch {kernel.epoch:g}"
        panels.setdefault(title, []).append((label, measured["eigenvalues"]))
    return sorted(panels.items())


if __name__ == "__main__":
    cli.run_cli(main)
