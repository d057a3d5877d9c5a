"""analyze_kernels.py's work, once its flags are parsed and checked.

Reads the kernel files (kernel_inputs), checks that some can be compared,
measures each kernel and each series (kernel_analysis), builds the tables
(tables), and writes them with analysis.json and the figures (outputs).
--out_dir is created only once every output is ready to be written.
"""

import argparse
from collections.abc import Sequence

from tqdm import tqdm

from analysis import kernel_analysis, kernel_inputs, outputs, tables
from analysis.kernel_analysis import Kernel, SeriesKey
from analysis.tables import Analysis
from store import atomic, layout
from utils import UserError


def _comparable(
    kernels: Sequence[Kernel],
) -> tuple[dict[SeriesKey, list[Kernel]], list[list[int]]]:
    """(kernel_analysis.series, kernel_analysis.comparable_sets) of the
    kernels; UserError unless two of them can be compared."""
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
    return groups, sets


def _compared(
    sides: tuple[list[Kernel], ...] | None, notes: list[str]
) -> list[tuple[Kernel, Kernel]] | None:
    """The matched pairs of the two --compare folders (None without),
    a note for the kernels left unmatched."""
    if sides is None:
        return None
    matched, unmatched = kernel_analysis.compare_runs(*sides)
    if unmatched:
        notes.append(
            f"{len(unmatched)} kernel(s) of the --compare folders have "
            "no kernel of the same class and epoch in the other folder"
        )
    return matched


def _series_notes(
    kernels: Sequence[Kernel],
    groups: dict[SeriesKey, list[Kernel]],
    notes: list[str],
) -> None:
    """Notes of the kernels left out of the series: without an epoch, or
    alone in their series."""
    undated = sum(kernel.epoch is None for kernel in kernels)
    if undated:
        notes.append(
            f"{undated} kernel file(s) record no epoch: listed in "
            f"{layout.KERNELS_CSV}, left out of the series (velocity, polar, "
            "distances to the first and last)"
        )
    single = [key for key, members in groups.items() if len(members) == 1]
    if single:
        notes.append(
            f"{len(single)} run/class group(s) hold a single epoch: no "
            "velocity or polar trajectory for them"
        )


def _measured(
    args: argparse.Namespace,
    inputs: kernel_inputs.Inputs,
    comparable: tuple[dict[SeriesKey, list[Kernel]], list[list[int]]],
    matched: list[tuple[Kernel, Kernel]] | None,
) -> Analysis:
    """Every measure and table of `inputs`, `comparable` their series and
    comparable sets, `matched` the --compare pairs; `args` gives --top_k,
    --random_seed, --polar_k, --settle_fraction, --no_progress and
    --out_dir (checked, not created)."""
    kernels, notes = inputs.kernels, inputs.notes
    groups, sets = comparable
    replicate_rows, between_seeds = tables.replicates_table(inputs.replicates)
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
    _series_notes(kernels, groups, notes)
    labels = tables.series_labels(kernels)
    pairwise, heatmaps = tables.pairwise(kernels, sets, labels)
    return Analysis(
        kernels=kernels,
        measures=measures,
        series_measures=series_measures,
        labels=labels,
        kernel_table=tables.kernel_table(
            kernels, measures, groups, series_measures, labels, between_seeds
        ),
        series_table=tables.series_table(groups, series_measures, labels),
        pairwise=pairwise,
        compare=tables.compare_table(matched) if matched else None,
        replicates=replicate_rows,
        heatmaps=heatmaps,
        notes=notes,
    )


def analyse(args: argparse.Namespace) -> None:
    """Reads, measures and writes the kernels of analyze_kernels.py's
    arguments `args` (parsed and checked), printing its notes and a line
    naming what it wrote."""
    inputs = kernel_inputs.read_all(
        args.inputs, args.compare, args.replicates, not args.no_progress
    )
    kernels = inputs.kernels
    comparable = _comparable(kernels)
    matched = _compared(inputs.sides, inputs.notes)
    analysis = _measured(args, inputs, comparable, matched)
    texts = outputs.csv_texts(analysis)
    content = outputs.report(analysis, args)
    pngs = (
        {}
        if args.no_figures
        else outputs.figures(analysis, args.compare, args.polar_k)
    )
    written = outputs.write(args.out_dir, texts, content, pngs)
    for note in analysis.notes:
        print(f"note: {note}")
    print(
        f"analysed {len(kernels)} kernel(s), {len(analysis.pairwise)} "
        f"pair(s), {len(analysis.series_measures)} series; wrote "
        f"{', '.join(written)} in {args.out_dir}"
    )
