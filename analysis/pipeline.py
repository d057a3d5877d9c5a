"""analyze_kernels.py's work, for its `AnalysisSettings` (the script
makes them from its flags, parsed and checked).

Reads the kernel files (kernel_inputs), checks that some can be compared,
measures each kernel and each series (kernel_analysis), builds the tables
(tables), and writes them with analysis.json and the figures (outputs).
--out_dir is created only once every output is ready to be written.
"""

import dataclasses
from collections.abc import Sequence

from tqdm import tqdm

from analysis import kernel_analysis, kernel_inputs, outputs, tables
from analysis.kernel_analysis import Kernel, SeriesKey
from analysis.tables import Analysis
from store import atomic, layout
from utils import UserError


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """What analyze_kernels.py analyses: its flags, typed (each field the
    flag of the same name; see analyze_kernels.py --help).

    inputs: kernel files, or folders searched for them.
    compare: two folders whose kernels are compared epoch by epoch, or
        None. replicates: groups of folders of runs that differ only in
        their seed, or None.
    out_dir: where the tables, analysis.json and figures go.
    top_k, polar_k, settle_fraction, random_seed: the measures'
        (kernel_analysis).
    no_figures: tables and JSON only. no_progress: no progress bar.
    flags: every flag as parsed, recorded in analysis.json.
    """

    inputs: list[str]
    out_dir: str
    compare: list[str] | None = None
    replicates: list[list[str]] | None = None
    top_k: list[int] = dataclasses.field(
        default_factory=lambda: list(kernel_analysis.DEFAULT_TOP_K)
    )
    polar_k: int = kernel_analysis.DEFAULT_POLAR_K
    settle_fraction: float = kernel_analysis.DEFAULT_SETTLE_FRACTION
    random_seed: int = 0
    no_figures: bool = False
    no_progress: bool = False
    flags: dict = dataclasses.field(default_factory=dict, repr=False)


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
    settings: AnalysisSettings,
    inputs: kernel_inputs.Inputs,
    comparable: tuple[dict[SeriesKey, list[Kernel]], list[list[int]]],
    matched: list[tuple[Kernel, Kernel]] | None,
) -> Analysis:
    """Every measure and table of `inputs`, `comparable` their series and
    comparable sets, `matched` the --compare pairs; `settings` gives
    top_k, random_seed, polar_k, settle_fraction, no_progress and out_dir
    (checked, not created)."""
    kernels, notes = inputs.kernels, inputs.notes
    groups, sets = comparable
    replicate_rows, between_seeds = tables.replicates_table(inputs.replicates)
    # Created only when the outputs are ready to be written.
    atomic.check_writable_dir(settings.out_dir)
    measures = [
        kernel_analysis.measure(kernel, settings.top_k, settings.random_seed)
        for kernel in tqdm(
            kernels, desc="kernels", unit="file", disable=settings.no_progress
        )
    ]
    series_measures = {
        key: kernel_analysis.series_measures(
            members, settings.polar_k, settings.settle_fraction
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


def analyse(settings: AnalysisSettings) -> None:
    """Reads, measures and writes the kernels of `settings`, printing its
    notes and a line naming what it wrote."""
    inputs = kernel_inputs.read_all(
        settings.inputs,
        settings.compare,
        settings.replicates,
        not settings.no_progress,
    )
    kernels = inputs.kernels
    comparable = _comparable(kernels)
    matched = _compared(inputs.sides, inputs.notes)
    analysis = _measured(settings, inputs, comparable, matched)
    texts = outputs.csv_texts(analysis)
    content = outputs.report(analysis, settings.flags)
    pngs = (
        {}
        if settings.no_figures
        else outputs.figures(analysis, settings.compare, settings.polar_k)
    )
    written = outputs.write(settings.out_dir, texts, content, pngs)
    for note in analysis.notes:
        print(f"note: {note}")
    print(
        f"analysed {len(kernels)} kernel(s), {len(analysis.pairwise)} "
        f"pair(s), {len(analysis.series_measures)} series; wrote "
        f"{', '.join(written)} in {settings.out_dir}"
    )
