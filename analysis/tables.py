"""The tables of analyze_kernels.py, as pandas DataFrames.

kernels.csv (a row per kernel file: its measures, its distances to the
first and last kernel of its series and between seeds), series.csv (a row
per kernel of a series: distances, velocity, polar coordinates),
pairwise.csv (a row per pair of comparable kernels), compare.csv (a row
per matched pair of the --compare folders) and replicates.csv (a row per
pair of replicate kernels). Every kernel is named by its series label
(`series_labels`): the run, its phase and lin_params.
"""

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis import kernel_analysis
from analysis.kernel_analysis import Kernel, SeriesKey
from analysis.kernel_inputs import ReplicateGroup

# A heatmap of a set of comparable kernels: title, S (T, T), tick labels.
Heatmap = tuple[str, np.ndarray, list[str]]


@dataclasses.dataclass
class Analysis:
    """Every measure of the kernels and the tables made of them.

    kernels: every kernel, in the order given; measures: their
      kernel_analysis.measure, in the same order.
    series_measures: kernel_analysis.series_measures per series of two or
      more epochs.
    labels: the short name of each series key (`series_labels`).
    kernel_table, series_table, pairwise, compare, replicates: the rows of
      kernels.csv, series.csv, pairwise.csv, compare.csv (None without
      --compare) and replicates.csv (None without --replicates).
    heatmaps: a distance heatmap per set of two or more comparable kernels.
    notes: the notes printed and kept in analysis.json.
    """

    kernels: Sequence[Kernel]
    measures: Sequence[dict]
    series_measures: Mapping[SeriesKey, dict]
    labels: Mapping[SeriesKey, str]
    kernel_table: pd.DataFrame
    series_table: pd.DataFrame
    pairwise: pd.DataFrame
    compare: pd.DataFrame | None
    replicates: pd.DataFrame | None
    heatmaps: list[Heatmap]
    notes: list[str]


def short_names(paths: Iterable[str]) -> dict[str, str]:
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


def series_labels(kernels: Sequence[Kernel]) -> dict[SeriesKey, str]:
    """A short name of each kernel's series key: the run, and its phase
    and lin_params where they are not phase 1 and params."""
    keys = {kernel_analysis.series_key(k) for k in kernels}
    runs = short_names([key.run for key in keys])
    labels = {}
    for key in keys:
        label = runs[key.run]
        if key.phase not in (None, "standard"):
            label += f" ({key.phase})"
        if key.use_linear_params:
            label += " lin_params"
        labels[key] = label
    return labels


def label(kernel: Kernel, labels: Mapping[SeriesKey, str]) -> str:
    """The series label and epoch of a kernel (or its file name)."""
    series = labels[kernel_analysis.series_key(kernel)]
    if kernel.epoch is None:
        return f"{series} {os.path.basename(kernel.path)}"
    return f"{series} e{kernel.epoch:g}"


def identity(kernel: Kernel, labels: Mapping[SeriesKey, str]) -> dict:
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


# The measures kept in analysis.json but not in kernels.csv.
ARRAYS = ("eigenvalues", "label_energy")

SERIES_COLUMNS = [
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


def _series_rows(
    key: SeriesKey, members: Sequence[Kernel], result: dict, label: str
) -> list[dict]:
    """series.csv's rows of one series, `result` its series_measures."""
    polar = result["polar"]
    velocity = np.append(result["velocity"], np.nan)
    following = np.append(result["velocity_next_epoch"], np.nan)
    rows = []
    for i, kernel in enumerate(members):
        row = dict(
            series=label,
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
        rows.append(row)
    return rows


def series_table(
    groups: Mapping[SeriesKey, list[Kernel]],
    series_measures: Mapping[SeriesKey, dict],
    labels: Mapping[SeriesKey, str],
) -> pd.DataFrame:
    """series.csv: a row per kernel of a series of two or more epochs."""
    rows = []
    for key, result in series_measures.items():
        rows += _series_rows(key, groups[key], result, labels[key])
    return pd.DataFrame(rows, columns=SERIES_COLUMNS)


def kernel_table(
    kernels: Sequence[Kernel],
    measures: Sequence[dict],
    groups: Mapping[SeriesKey, list[Kernel]],
    series_measures: Mapping[SeriesKey, dict],
    labels: Mapping[SeriesKey, str],
    between_seeds: Mapping[int, float],
) -> pd.DataFrame:
    """kernels.csv: a row per kernel file, with its distances to the first
    and last kernel of its series and its distance_between_seeds
    ({id(kernel): distance})."""
    to_first = {}
    for key, result in series_measures.items():
        for i, kernel in enumerate(groups[key]):
            to_first[id(kernel)] = (
                result["distance_to_first"][i],
                result["distance_to_last"][i],
                result["settle_t"],
            )
    rows = []
    for kernel, measured in zip(kernels, measures, strict=True):
        first, last, settle = to_first.get(id(kernel), (np.nan,) * 3)
        rows.append(
            dict(
                identity(kernel, labels),
                **{k: v for k, v in measured.items() if k not in ARRAYS},
                distance_to_first=first,
                distance_to_last=last,
                settle_t=settle,
            )
        )
    table = pd.DataFrame(rows)
    table["distance_between_seeds"] = [
        between_seeds.get(id(kernel), np.nan) for kernel in kernels
    ]
    return table


def pairwise(
    kernels: Sequence[Kernel],
    sets: Sequence[Sequence[int]],
    labels: Mapping[SeriesKey, str],
) -> tuple[pd.DataFrame, list[Heatmap]]:
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
        heatmaps.append((title, distances, [label(k, labels) for k in chosen]))
    columns = ["a", "b", "distance", "class_index", "epoch_a", "epoch_b"]
    return pd.DataFrame(rows, columns=columns), heatmaps


def compare_table(matched: Sequence[tuple[Kernel, Kernel]]) -> pd.DataFrame:
    """compare.csv: a row per matched pair of the --compare folders."""
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


def replicates_table(
    groups: Sequence[ReplicateGroup],
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


def decay_curves(
    analysis: Analysis,
) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """Per series (kernels without an epoch apart): its title and its
    kernels' (label, eigenvalues) in order of epoch."""
    panels: dict[str, list] = {}
    for kernel, measured in sorted(
        zip(analysis.kernels, analysis.measures, strict=True),
        key=lambda pair: (pair[0].epoch is None, pair[0].epoch or 0),
    ):
        key = kernel_analysis.series_key(kernel)
        title = (
            f"{analysis.labels[key]}: "
            f"{kernel_analysis.class_title(key.class_index)}"
        )
        if kernel.epoch is None:
            title += " (no epoch)"
            name = os.path.basename(kernel.path)
        else:
            name = f"epoch {kernel.epoch:g}"
        panels.setdefault(title, []).append((name, measured["eigenvalues"]))
    return sorted(panels.items())
