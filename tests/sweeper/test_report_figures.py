"""sweeper.report_figures: what each figure draws, from tables made by
hand, and that it writes a PNG."""

import os

import numpy as np
import pandas as pd

from helpers import PNG_SIGNATURE
from kernel_tables import A_FIRST, hand_kernels
from sweeper import collect, report_figures


def test_kernel_figure_draws_the_baselines_at_every_t(tmp_path):
    """The third panel: each benign-vs-adversarial distance beside its
    baseline at every t, in one colour, the baselines dashed."""
    table, _ = hand_kernels(0.25, 0.1, A_FIRST)
    data, palette = report_figures.distance_lines(table)
    pairs = collect.like_with_like(table)
    lines = dict(list(data.groupby("line")))
    start = pairs[pairs["comparison"] == "same θ(0)"].dropna(subset="baseline")
    across = pairs[pairs["comparison"] == "across seeds"]
    want = {
        "S(C_s, A_s), same seed": ("benign vs. adversarial", 9),
        "S(C_s, C′_s), same θ(0), another order": ("baseline", len(start)),
        "S(C_s, A_s′), across seeds": ("benign vs. adversarial", 18),
        "max(S(C_s, C_s′), S(A_s, A_s′)), seeds of one training": (
            "baseline",
            18,
        ),
    }
    assert {k: (v["role"].iloc[0], len(v)) for k, v in lines.items()} == want
    assert sorted(set(lines["S(C_s, A_s′), across seeds"]["t"])) == [0, 1, 2]
    assert np.allclose(
        np.sort(lines["S(C_s, C′_s), same θ(0), another order"]["distance"]),
        np.sort(start["baseline"]),
    )
    assert np.allclose(
        np.sort(lines["S(C_s, A_s′), across seeds"]["distance"]),
        np.sort(across["distance"]),
    )
    assert (
        palette["S(C_s, A_s′), across seeds"]
        == palette["max(S(C_s, C_s′), S(A_s, A_s′)), seeds of one training"]
    )
    (path,) = report_figures.plot_kernels(table, str(tmp_path))
    assert open(path, "rb").read()[:8] == PNG_SIGNATURE
    # A table of before the like-with-like columns: each training's seed
    # baseline, as before.
    old = table.drop(
        columns=collect.like_with_like_columns(table), errors="ignore"
    )
    data, _ = report_figures.distance_lines(old)
    assert set(data["line"]) == {
        "S(C_s, A_s), same seed",
        "benign vs. other seeds",
        "adversarial vs. other seeds",
    }
    assert report_figures.plot_kernels(old, str(tmp_path))


def test_accuracy_figure_per_dynamics(tmp_path):
    rows = pd.DataFrame(
        {
            "seed": [0, 1] * 4,
            "phase1": ["C"] * 4 + ["A"] * 4,
            "t": [1.0, 1.0, 2.0, 2.0] * 2,
            "phase2": ["C"] * 8,
            "dynamics": ["centered"] * 6 + ["standard"] * 2,
            "clean": np.linspace(0.5, 0.9, 8),
            "linf": np.linspace(0.1, 0.4, 8),
            "l2": [np.nan] * 8,
        }
    )
    paths = report_figures.plot_accuracy(rows, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [
        "accuracy_vs_t_centered.png",
        "accuracy_vs_t_standard.png",
    ]
    for path in paths:
        assert open(path, "rb").read()[:8] == PNG_SIGNATURE
    assert report_figures.plot_accuracy(rows.iloc[:0], str(tmp_path)) == []


def test_t_ticks_read_fractions_of_an_epoch_as_fractions():
    labels = [
        report_figures._t_label(t) for t in (0, 0.125, 0.25, 0.375, 1, 2.5)
    ]
    assert labels == ["0", "1/8", "1/4", "0.375", "1", "2.5"]
