"""analysis.tables: the rows of analyze_kernels.py's tables built from
kernels made here, every distance against S by its formula."""

import dataclasses
import os

import numpy as np
import pytest

from analysis import kernel_analysis as ka
from analysis import tables
from kernel_objects import direct_distance, kernel


def _at_lin_params(k):
    """The kernel `k` as if computed at lin_params."""
    file = dataclasses.replace(k.file, use_linear_params=True)
    return ka.Kernel(file, k.run, k.n_classes)


def test_short_names_keep_what_tells_folders_apart(tmp_path):
    a, b = str(tmp_path / "runs" / "C"), str(tmp_path / "runs" / "A" / "x")
    assert tables.short_names([a, b, a]) == {a: "C", b: os.path.join("A", "x")}
    assert tables.short_names([a]) == {a: "C"}


def test_labels_name_the_run_phase_and_parameters():
    c = kernel("c1", 1, run="/r/C")
    a = kernel("a2", 2, run="/r/A")
    a.file.extras["phase"] = "linear"
    lin = _at_lin_params(kernel("l", None, run="/r/C"))
    labels = tables.series_labels([c, a, lin])
    assert sorted(labels.values()) == ["A (linear)", "C", "C lin_params"]
    assert tables.label(c, labels) == "C e1"
    assert tables.label(lin, labels) == "C lin_params l"
    assert tables.identity(a, labels) == dict(
        path="a2",
        series="A (linear)",
        run="/r/A",
        phase="linear",
        use_linear_params=False,
        epoch=2,
        class_index=0,
    )


def test_pairwise_rows_and_heatmaps_of_comparable_sets():
    kernels = [kernel("b", 2, seed=1), kernel("a", 1, seed=2)]
    kernels.append(kernel("other", 1, class_index=1, seed=3))
    labels = tables.series_labels(kernels)
    rows, heatmaps = tables.pairwise(kernels, [[0, 1], [2]], labels)
    assert len(rows) == 1 and len(heatmaps) == 1
    row = rows.iloc[0]
    assert (row["a"], row["b"], row["epoch_a"], row["epoch_b"]) == (
        "a",
        "b",
        1,
        2,
    )
    want = direct_distance(kernels[1].file.kernel, kernels[0].file.kernel)
    assert row["distance"] == pytest.approx(want)
    title, distances, ticks = heatmaps[0]
    assert title == "class 0, N = 3" and ticks == ["run e1", "run e2"]
    assert distances[0, 1] == distances[1, 0] == pytest.approx(want)


def test_compare_table_is_the_distance_of_each_matched_pair():
    a = kernel("a", 1, run="A", seed=4)
    b = _at_lin_params(kernel("b", 1, run="B", seed=5))
    table = tables.compare_table([(a, b)])
    assert table.loc[0, "variant"] == "standard"
    assert table.loc[0, "distance"] == pytest.approx(
        direct_distance(a.file.kernel, b.file.kernel)
    )


def test_kernel_table_keeps_scalars_and_series_distances():
    kernels = [kernel("a", 0, seed=6), kernel("b", 1, seed=7)]
    kernels.append(kernel("alone", None, seed=8))
    measures = [ka.measure(k, [1], 0) for k in kernels]
    labels = tables.series_labels(kernels)
    groups = ka.series(kernels)
    results = {key: ka.series_measures(m, 1) for key, m in groups.items()}
    table = tables.kernel_table(
        kernels, measures, groups, results, labels, {id(kernels[1]): 0.25}
    )
    assert list(table["path"]) == ["a", "b", "alone"]
    assert not set(tables.ARRAYS) & set(table.columns)
    assert table["top1_mass"].tolist() == [m["top1_mass"] for m in measures]
    d = direct_distance(kernels[0].file.kernel, kernels[1].file.kernel)
    assert table["distance_to_last"].iloc[0] == pytest.approx(d)
    assert table["distance_to_first"].iloc[1] == pytest.approx(d)
    assert np.isnan(table["distance_to_first"].iloc[2])
    assert np.isnan(table["distance_between_seeds"].iloc[0])
    assert table["distance_between_seeds"].iloc[1] == 0.25
    series = tables.series_table(groups, results, labels)
    assert list(series.columns) == tables.SERIES_COLUMNS
    assert series["velocity"].iloc[0] == pytest.approx(d)
    assert np.isnan(series["velocity"].iloc[1])


def test_no_replicates_no_table():
    assert tables.replicates_table([]) == (None, {})
