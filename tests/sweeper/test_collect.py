"""sweeper.collect: the tables it builds from a grid's files, checked on
tables made by hand (the like-with-like distances by their formula)."""

import math

import numpy as np
import pandas as pd
import pytest

from kernel_tables import A_FIRST, hand_kernels, s_of_diagonals
from sweeper import collect


def test_like_with_like_distances_by_hand():
    """Each distance and baseline at every t, against the formula of S
    on the kernels' diagonals."""
    gap, eps = 0.25, 0.1
    table, _ = hand_kernels(gap, eps, A_FIRST)
    pairs = collect.like_with_like(table)
    assert set(pairs["comparison"]) == {"across seeds", "same θ(0)"}
    across = pairs[pairs["comparison"] == "across seeds"]
    assert len(across) == 3 * 6  # three t, six ordered pairs
    row = across[(across["t"] == 2) & (across["seed"] == 2)]
    row = row[row["other"] == 0].iloc[0]
    # S(C_2, A_0) against max(S(C_2, C_0), S(A_2, A_0)) (equal here).
    assert row["distance"] == pytest.approx(
        s_of_diagonals([1, -gap, 0.2], [1, gap, 0])
    )
    baseline = s_of_diagonals([1, -gap, 0.2], [1, -gap, 0])
    assert row["baseline"] == pytest.approx(baseline)
    assert row["ratio"] == pytest.approx(row["distance"] / baseline)
    # At t = 0 every run of a seed is θ_s(0): S(C_s, A_s') is the seed
    # baseline itself.
    start = across[across["t"] == 0]
    assert np.allclose(start["ratio"], 1.0)
    same = pairs[pairs["comparison"] == "same θ(0)"].set_index(["t", "seed"])
    assert same.loc[(1.0, 1), "distance"] == pytest.approx(
        s_of_diagonals([1, -0.3 * gap, 0.1], [1, gap, 0.1])
    )
    assert same.loc[(1.0, 1), "baseline"] == pytest.approx(
        s_of_diagonals([1, -0.3 * gap, 0.1], [1, -0.3 * gap, 0.1 + eps])
    )
    # At t = 0 both are 0 (one θ(0)): no ratio.
    assert same.loc[(0.0, 0), "distance"] == 0.0
    assert math.isnan(same.loc[(0.0, 0), "ratio"])
    # Without the replicate: the comparison across seeds alone.
    alone = collect.like_with_like(hand_kernels(gap, eps, A_FIRST, False)[0])
    assert set(alone["comparison"]) == {"across seeds"}


def _accuracy_rows():
    """Two seeds of two models after phase 2, numbers chosen by hand."""
    return pd.DataFrame(
        {
            "seed": [0, 1, 0, 1],
            "phase1": ["C", "C", "A", "A"],
            "t": [1.0] * 4,
            "phase2": ["C"] * 4,
            "dynamics": ["centered"] * 4,
            "clean": [0.8, 0.9, 0.6, 0.7],
            "linf": [0.1, 0.3, 0.4, 0.4],
            "eval_images": [100] * 4,
        }
    )


def test_summarize_is_mean_and_sample_sd_over_seeds():
    summary = collect.summarize(_accuracy_rows()).set_index("phase1")
    assert summary.loc["C", "n_seeds"] == 2
    assert summary.loc["C", "clean_mean"] == pytest.approx(0.85)
    assert summary.loc["C", "linf_std"] == pytest.approx(math.sqrt(0.02))
    assert summary.loc["A", "linf_std"] == 0
    assert "eval_images_mean" not in summary and "seed_mean" not in summary
    assert collect.summarize(pd.DataFrame()).empty


def test_join_kernels_adds_the_class_mean_of_the_largest_size():
    kernels = pd.DataFrame(
        {
            "seed": [0, 0, 0, 0],
            "phase1": ["C"] * 4,
            "t": [1.0] * 4,
            "class_index": [0, 1, 0, 1],
            "n": [20, 20, 10, 10],
            "top10_mass": [0.2, 0.4, 0.9, 0.9],
        }
    )
    joined = collect.join_kernels(_accuracy_rows(), kernels)
    row = joined[(joined["seed"] == 0) & (joined["phase1"] == "C")].iloc[0]
    assert row["kernel_top10_mass"] == pytest.approx(0.3)
    assert row["kernel_n"] == 20
    other = joined[joined["phase1"] == "A"]
    assert other["kernel_top10_mass"].isna().all()
    assert collect.join_kernels(_accuracy_rows(), pd.DataFrame()).equals(
        _accuracy_rows()
    )


def test_broken_by_columns_are_named_after_the_attack():
    assert collect.broken_column("apgd-ce") == "broken_by_apgd_ce"
    assert collect.broken_column("robust") == "broken_by_robust"
