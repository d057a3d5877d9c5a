"""sweeper.verdicts: the claims' verdicts decided on tables made by hand,
whose every number is known: claim 2 and 3 on accuracies, claim 1 on
synthetic kernels (the same-seed rule) and on 3×3 kernels (like with
like)."""

import itertools
import math
import os

import numpy as np
import pandas as pd
import pytest

from analysis import kernel_analysis as ka
from kernel_tables import A_FIRST, hand_kernels, s_of_diagonals
from robust_cells import frames
from sweeper import collect, grid, verdicts


def _rows(linf_a, linf_c, dataset="fashion_mnist", eps=8.0):
    """Rows of two seeds at t = 1 and 3, benign and adversarial kernel,
    benign and adversarial phase 2; PGD-L∞ accuracy at t = 3 per kernel."""
    rows = []
    for seed, t, p1, p2 in itertools.product((0, 1), (1.0, 3.0), "CA", "CA"):
        linf = {"A": linf_a, "C": linf_c}[p1][seed] if t == 3.0 else 0.1
        rows.append(
            dict(
                seed=seed,
                phase1=p1,
                t=t,
                phase2=p2,
                dynamics="centered",
                clean=0.9,
                linf=linf,
                l2=0.5,
                dataset=dataset,
                eps=eps,
            )
        )
    return pd.DataFrame(rows)


def test_claim_two_verdicts():
    two = verdicts.claim_two(_rows((0.80, 0.84), (0.39, 0.30)))
    assert two["verdict"] == "supported" and two["t"] == 3.0
    assert two["gains"] == {
        0: pytest.approx(0.41),
        1: pytest.approx(0.54),
    }
    assert two["adversarial"][0] == pytest.approx(0.82)
    # A gain below 0.05 in one seed is not enough; higher in every seed is
    # "in direction only"; lower in one seed is not supported.
    two = verdicts.claim_two(_rows((0.80, 0.33), (0.39, 0.30)))
    assert two["verdict"] == "in direction only"
    two = verdicts.claim_two(_rows((0.80, 0.29), (0.39, 0.30)))
    assert two["verdict"] == "not supported"
    assert verdicts.claim_two(pd.DataFrame())["verdict"] == "no data"


def test_claim_three_verdicts():
    three = verdicts.claim_three(_rows((0.80, 0.84), (0.3, 0.3)))
    assert three["verdict"].startswith("not tested")
    assert three["robust"][0] == pytest.approx(0.82)
    cifar = _rows((0.75, 0.76), (0.3, 0.3), "cifar10", 4.0)
    assert verdicts.claim_three(cifar)["verdict"] == "supported"
    low = _rows((0.70, 0.71), (0.3, 0.3), "cifar10", 4.0)
    assert verdicts.claim_three(low)["verdict"] == "not supported"


def _synthetic_kernels(seed_noise, speeds, times=(0.0, 1.0, 2.0, 4.0)):
    """The class-0 kernels (N = 8) of three seeds' benign and adversarial
    runs: each run goes from a common start K_s to its training's end
    (K_C or K_A) by t · speed of the way (capped at all of it), plus a
    per-seed perturbation of relative size `seed_noise`, as report's
    kernel table holds them: the derived columns computed from the
    kernels' pairwise distances."""
    rng = np.random.default_rng(7)

    def unit_psd():
        m = rng.normal(size=(8, 8))
        k = m @ m.T
        return k / np.linalg.norm(k)

    start, ends = unit_psd(), {"C": unit_psd(), "A": unit_psd()}
    kernels = {}
    for seed in (0, 1, 2):
        noise = unit_psd()
        for loader in "CA":
            for t in times:
                w = min(1.0, t * speeds[loader])
                kernels[(seed, loader, t, 0, 8)] = (
                    (1 - w) * start + w * ends[loader] + seed_noise * noise
                )
    keys = list(kernels)
    pairs = {
        frozenset((a, b)): ka.kernel_distance(kernels[a], kernels[b])
        for a, b in itertools.combinations(keys, 2)
    }
    table = pd.DataFrame(keys, columns=collect.KERNEL_KEYS)
    collect._add_derived(table, pairs, ["C", "A"], [0, 1, 2])
    return table, kernels


def test_claim_one_on_synthetic_kernels():
    """Claim 1 holds where the adversarial kernel reaches its own end by
    t = 1 and seeds barely differ; fails where the seeds differ as much as
    the trainings, or where the adversarial kernel settles last."""
    fast_a = {"A": 1.0, "C": 0.25}
    table, kernels = _synthetic_kernels(0.02, fast_a)
    one = verdicts.claim_one(table)
    assert one["verdict"] == "supported", one
    assert one["t"] == 4.0
    assert set(one["pairs"]) == {(0, 1), (0, 2), (1, 2)}
    # The numbers it was decided on are the kernels' distances.
    pair = one["pairs"][(0, 2)]
    d = ka.kernel_distance
    assert pair["between"][0] == pytest.approx(
        d(kernels[(0, "C", 4.0, 0, 8)], kernels[(0, "A", 4.0, 0, 8)])
    )
    assert pair["baseline"] == pytest.approx(
        max(
            d(kernels[(0, p, 4.0, 0, 8)], kernels[(2, p, 4.0, 0, 8)])
            for p in "CA"
        )
    )
    assert one["settle"][1] == {"A": 1.0, "C": 4.0}
    # Seeds as far apart as the trainings: the baseline swallows the gap.
    noisy = verdicts.claim_one(_synthetic_kernels(2.0, fast_a)[0])
    assert noisy["verdict"] == "not supported"
    assert all(
        p["ratio"] < verdicts.SEED_BASELINE_FACTOR
        for p in noisy["pairs"].values()
    )
    # The adversarial kernel settles after the benign one.
    slow = verdicts.claim_one(
        _synthetic_kernels(0.02, {"A": 0.25, "C": 1.0})[0]
    )
    assert slow["verdict"] == "not supported"
    assert slow["settle"][0] == {"A": 4.0, "C": 1.0}
    # One seed has no baseline; no kernels, no data.
    single = table[table["seed"] == 0]
    assert verdicts.claim_one(single)["verdict"] == "no data"
    assert verdicts.claim_one(pd.DataFrame())["verdict"] == "no data"


@pytest.mark.parametrize(
    "gap, eps, way, replicate, verdict",
    [
        (0.25, 0.1, A_FIRST, True, "supported"),
        (0.04, 0.065, A_FIRST, True, "in direction only"),
        # Benign and adversarial closer than two seeds' kernels.
        (0.04, 0.1, A_FIRST, True, "not supported"),
        (0.25, 0.1, {"C": (0, 1, 1), "A": (0, 0.3, 1)}, True, "not supported"),
        (0.25, 0.1, A_FIRST, False, "supported"),
    ],
)
def test_like_with_like_verdicts(gap, eps, way, replicate, verdict):
    table, _ = hand_kernels(gap, eps, way, replicate)
    one = verdicts.claim_one_like_with_like(table)
    assert one["verdict"] == verdict, one
    ratios = [p["ratio"] for p in one["across"].values()]
    ratios += [p["ratio"] for p in one["same_start"].values()]
    assert len(one["across"]) == 6 and one["t"] == 2.0
    assert len(one["same_start"]) == (3 if replicate else 0)
    assert one["replicates"] is replicate
    if verdict == "in direction only":
        assert min(ratios) > 1 and min(ratios) <= 2
    pair = one["across"][(0, 1)]
    assert pair["distance"] == pytest.approx(
        s_of_diagonals([1, -gap, 0.0], [1, gap, 0.1])
    )


def test_like_with_like_names_where_the_kernels_are_farthest_apart():
    """The t of the largest mean ratio, with that ratio: here the runs
    are farthest apart at t = 1, before both settle back."""
    way = {"C": (0, 1, 0.6), "A": (0, 1.4, 1)}
    table, _ = hand_kernels(0.25, 0.1, way)
    one = verdicts.claim_one_like_with_like(table)
    pairs = collect.like_with_like(table)
    for name in ("across seeds", "same θ(0)"):
        means = pairs[pairs["comparison"] == name].groupby("t")["ratio"].mean()
        assert one["farthest"][name] == (1.0, pytest.approx(means[1.0]))
        assert means[1.0] > means[2.0]
    same_seed = verdicts.claim_one(table)["farthest"]
    assert same_seed[0] == 1.0


def test_like_with_like_rule_is_stated_verbatim():
    """The rule as docs/sweep.md and the report state it, word for word."""
    words = " ".join(verdicts.LIKE_WITH_LIKE_RULE.split())
    with open(os.path.join(grid.ROOT, "docs", "sweep.md")) as f:
        page = " ".join(f.read().split())
    assert words in page
    assert words.startswith("Claim 1, like with like, holds when every ")
    assert "more than 2× a baseline" in words


def test_like_with_like_without_its_data():
    table, _ = hand_kernels(0.25, 0.1, A_FIRST)
    one = verdicts.claim_one_like_with_like(table[table["seed"] == 0])
    assert one["verdict"] == "no data"
    crossless = table.drop(
        columns=[c for c in table if c.startswith("cross_distance")]
    )
    one = verdicts.claim_one_like_with_like(crossless)
    assert one["verdict"] == "no data" and "pairwise.csv" in one["why"]
    # A kernel missing at the last t: of C′ (b), or across seeds (a).
    last = table["t"] == 2.0
    for column, rows in (
        ("distance_to_reordered", last),
        ("cross_distance_to_seed_0", last & (table["seed"] == 1)),
    ):
        gappy = table.copy()
        gappy.loc[rows, column] = math.nan
        one = verdicts.claim_one_like_with_like(gappy)
        assert one["verdict"] == "no data", column
    assert verdicts.claim_one_like_with_like(pd.DataFrame())["verdict"] == (
        "no data"
    )


def test_autoattack_models_by_hand(robust_grid):
    rows, robust, _ = frames(robust_grid)
    models = verdicts.autoattack_models(rows, robust)
    assert len(models) == 8
    m = models.set_index(["seed", "phase1", "phase2"])
    # s0 C->C: PGD 0.30; APGD-CE alone 1 - (20 + 52) / 100; AutoAttack 26.
    assert m.loc[(0, "C", "C"), "pgd"] == pytest.approx(0.30)
    assert m.loc[(0, "C", "C"), "apgd_ce"] == pytest.approx(0.28)
    assert m.loc[(0, "C", "C"), "autoattack"] == pytest.approx(0.26)
    assert m.loc[(0, "C", "C"), "gap"] == pytest.approx(0.04)
    assert m.loc[(1, "A", "C"), "square_fraction"] == pytest.approx(0.05)
    # Masking: 5 of 100 > 1 %; 1 of 100 is not more than 1 %.
    flagged = verdicts.masked(models)
    assert [(r.seed, r.phase1, r.phase2) for r in flagged.itertuples()] == [
        (1, "A", "C")
    ]
    ends = verdicts.curve_ends(robust, "apgd-ce")
    assert len(ends) == 8 and (ends["eps_max"] == 64).all()
    short = ends[~ends["reaches_zero"]]
    assert [(r.seed, r.phase1, r.phase2) for r in short.itertuples()] == [
        (1, "A", "C")
    ]
    assert short["acc_max"].iloc[0] == pytest.approx(0.2)
