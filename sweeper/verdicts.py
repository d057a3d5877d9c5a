"""The verdicts on the paper's three claims, decided mechanically from a
preset's tables by the thresholds below (the report states them beside
each verdict)."""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

import attacks
from analysis import kernel_analysis
from sweeper.collect import (
    ACROSS_SEEDS,
    SAME_START,
    TO_REORDERED,
    TO_SEED,
    broken_column,
    class_means,
    column,
    like_with_like,
    seed_columns,
)

# Claim 1: the distance between the benign and adversarial kernels over
# the distance between two seeds' kernels of the same training, and the
# fraction of kernel_analysis.settle_time.
SEED_BASELINE_FACTOR = 2.0
SETTLE_FRACTION = kernel_analysis.DEFAULT_SETTLE_FRACTION
# Claim 1 like with like: each benign-vs-adversarial distance against a
# baseline that differs from it only in the training compared; the rule,
# as docs/sweep.md and the report state it.
LIKE_WITH_LIKE_FACTOR = 2.0
LIKE_WITH_LIKE_RULE = (
    "Claim 1, like with like, holds when every benign-vs-adversarial "
    "distance at the last t is more than "
    f"{LIKE_WITH_LIKE_FACTOR:g}× a baseline that differs from it only in "
    "the training compared: (a) across seeds, for every ordered pair of "
    "seeds s ≠ s′, S(C_s, A_s′) against the larger of S(C_s, C_s′) and "
    "S(A_s, A_s′); (b) from the same θ(0), in every seed s, S(C_s, A_s) "
    "against S(C_s, C′_s), where C′_s is a benign run from θ_s(0) with "
    "another data order and attack noise (`--order_seed`); and in every "
    "seed the adversarial run settles no later than the benign run (as in "
    "today's rule). It is 'in direction only' when every such ratio "
    f"exceeds 1 but not all exceed {LIKE_WITH_LIKE_FACTOR:g} (and the "
    "settle condition holds). A grid without replicate runs is decided on "
    "(a) alone, and the verdict says so."
)
ROBUSTNESS_GAIN = 0.05  # claim 2: robust accuracy gained, every seed
PAPER_ROBUST = 0.761  # claim 3: the abstract's PGD accuracy (CIFAR-10, 4/255)
PAPER_TOLERANCE = 0.02
# Gradient masking (issue 20): Square, the score-based attack, breaking
# more than this fraction of a model's test images that every gradient
# attack of AutoAttack missed; and the robust accuracy against eps not
# falling to at most ZERO_ACCURACY at the curve's largest eps.
SQUARE_FRACTION = 0.01
ZERO_ACCURACY = 0.01
# A phase-2 model: the keys of a row of {name}.csv and of the robustness
# table.
MODEL = ["seed", "phase1", "t", "phase2", "dynamics"]
# AutoAttack's attacks as its diagnostics read them (attacks.registry):
# the first alone (APGD-CE), the gradient attacks (APGD-CE, APGD-T,
# FAB-T) and the score-based ones (Square), which read logits only.
AUTOATTACK = attacks.AUTOATTACK
FIRST = AUTOATTACK.members[0]
GRADIENT = tuple(a for a in AUTOATTACK.members if not a.gradient_free)
SCORE_BASED = tuple(a for a in AUTOATTACK.members if a.gradient_free)
# The columns of autoattack_models: PGD's accuracy, the first attack's
# alone, AutoAttack's, and the examples only the score-based ones broke.
PGD_COLUMN = attacks.PGD.name
FIRST_COLUMN = column(FIRST.name)
AUTOATTACK_COLUMN = AUTOATTACK.name
SCORE_COLUMN = "_".join(column(a.name) for a in SCORE_BASED)
SCORE_FRACTION_COLUMN = f"{SCORE_COLUMN}_fraction"


def main_dynamics(rows: pd.DataFrame) -> str:
    dynamics = list(rows["dynamics"].unique())
    return "centered" if "centered" in dynamics else dynamics[0]


def claim_two(rows: pd.DataFrame, column: str = "linf") -> dict:
    """Claim 2 on a preset's rows: the adversarial kernel's robust accuracy
    after benign phase 2 against the benign kernel's, at the largest t.

    column: the robust accuracy (run_exp.py's PGD-L∞, or e.g. AutoAttack's:
    then only rows where it was measured count, so t is the largest t
    attacked).

    Returns:
        {'verdict': 'supported' | 'in direction only' (higher in every
        seed, not by the margin in all) | 'not supported' | 'no data', 't',
        'gains': {seed: linf(A) - linf(C)}, 'adversarial', 'benign':
        (mean, std) of linf}.
    """
    if rows.empty:
        return {"verdict": "no data"}
    frame = rows[
        (rows["phase2"] == "C") & (rows["dynamics"] == main_dynamics(rows))
    ]
    if column != "linf":
        if column not in frame:
            return {"verdict": "no data"}
        frame = frame[frame[column].notna()]
    both = frame.groupby("t")["phase1"].agg(lambda s: {"A", "C"} <= set(s))
    times = sorted(t for t, ok in both.items() if ok)
    if not times:
        return {"verdict": "no data"}
    t = times[-1]
    at_t = frame[frame["t"] == t].set_index(["seed", "phase1"])[column]
    seeds = sorted({s for s, _ in at_t.index})
    gains = {
        s: at_t.get((s, "A"), math.nan) - at_t.get((s, "C"), math.nan)
        for s in seeds
    }
    values = list(gains.values())
    if any(math.isnan(v) for v in values):
        verdict = "no data"
    elif all(v > ROBUSTNESS_GAIN for v in values):
        verdict = "supported"
    elif all(v > 0 for v in values):
        verdict = "in direction only"
    else:
        verdict = "not supported"
    at = frame[frame["t"] == t]
    return {
        "verdict": verdict,
        "t": t,
        "gains": gains,
        "adversarial": stats(at[at["phase1"] == "A"][column]),
        "benign": stats(at[at["phase1"] == "C"][column]),
    }


def claim_three(rows: pd.DataFrame) -> dict:
    """Claim 3: robust accuracy after adversarial phase 2 on the adversarial
    kernel at the largest t; tested only on CIFAR-10 at ε = 4/255."""
    if rows.empty:
        return {"verdict": "no data"}
    frame = rows[
        (rows["phase1"] == "A")
        & (rows["phase2"] == "A")
        & (rows["dynamics"] == main_dynamics(rows))
    ]
    if frame.empty:
        return {"verdict": "no data"}
    t = frame["t"].max()
    at = frame[frame["t"] == t]
    values = at["linf"]
    mean = values.mean()
    comparable = (rows["dataset"].iloc[0] == "cifar10") and (
        float(rows["eps"].iloc[0]) == 4.0
    )
    if not comparable:
        verdict = "not tested (needs CIFAR-10 at ε = 4/255)"
    elif mean >= PAPER_ROBUST - PAPER_TOLERANCE:
        verdict = "supported"
    else:
        verdict = "not supported"
    return {
        "verdict": verdict,
        "t": t,
        "robust": stats(values),
        "per_seed": dict(zip(at["seed"], values, strict=True)),
    }


def _claim_one_frame(kernel_table: pd.DataFrame) -> tuple:
    """(class means, seeds, None) of a kernel table that claim 1 can be
    decided on, else (None, None, the 'no data' result)."""
    if kernel_table.empty or "distance_between" not in kernel_table:
        return None, None, {"verdict": "no data", "why": "no kernel analysis"}
    frame = class_means(kernel_table)
    if not {"A", "C"} <= set(frame["phase1"]):
        why = "needs kernels of C and A"
        return None, None, {"verdict": "no data", "why": why}
    seeds = sorted(frame["seed"].unique())
    if len(seeds) < 2 or not seed_columns(frame):
        why = "no seed baseline (one seed)"
        return None, None, {"verdict": "no data", "why": why}
    if frame[seed_columns(frame)].isna().all().all():
        why = "no seed baseline (no analysis across seeds)"
        return None, None, {"verdict": "no data", "why": why}
    return frame, seeds, None


def _same_seed_pairs(frame: pd.DataFrame, seeds: list, t: float) -> tuple:
    """The same-seed rule at t: ({s: S(C_s, A_s)}, {(s, s'): {'between':
    (d_s, d_s'), 'baseline', 'ratio'}}) (claim_one)."""
    at = frame[frame["t"] == t].set_index(["seed", "phase1"])
    between = {
        s: at["distance_between"].get((s, "A"), math.nan) for s in seeds
    }
    pairs = {}
    for i, a in enumerate(seeds):
        for b in seeds[i + 1 :]:
            both = [
                at[TO_SEED.format(b)].get((a, loader), math.nan)
                for loader in ("C", "A")
            ]
            baseline = math.nan if any(map(math.isnan, both)) else max(both)
            pair_between = (between[a], between[b])
            pairs[(a, b)] = {
                "between": pair_between,
                "baseline": baseline,
                "ratio": min(pair_between) / baseline
                if baseline > 0
                else math.inf,
            }
    return between, pairs


def _settle_times(frame: pd.DataFrame, seeds: list) -> dict:
    """{seed: {'C', 'A': the run's kernel_analysis.settle_time at
    SETTLE_FRACTION of its class-mean distance to its last kernel}}."""
    settle = {}
    for seed in seeds:
        settle[seed] = {}
        for loader in ("C", "A"):
            run = frame[
                (frame["seed"] == seed) & (frame["phase1"] == loader)
            ].sort_values("t")
            settle[seed][loader] = kernel_analysis.settle_time(
                run["t"], run["distance_to_final"], SETTLE_FRACTION
            )
    return settle


def _farthest(ratios: pd.Series) -> tuple[float, float] | None:
    """(t, mean ratio) of the t whose mean ratio (over pairs or seeds,
    finite ratios only) is the largest, of `ratios` indexed by t; None
    when no t has a finite ratio."""
    finite = ratios[np.isfinite(ratios.astype(float))]
    if finite.empty:
        return None
    means = finite.groupby(level=0).mean()
    t = float(means.idxmax())
    return t, float(means[t])


def claim_one(kernel_table: pd.DataFrame) -> dict:
    """Claim 1 on a preset's kernel table (class means of the largest N),
    by the same-seed rule.

    Holds when (a) in every pair of seeds (s, s'), at the last t, the
    distance between the benign and the adversarial kernel is, in each of
    the two seeds, more than SEED_BASELINE_FACTOR times the seed baseline:
    the larger of the distances between the two seeds' benign kernels and
    between their adversarial kernels; and (b) in every seed the
    adversarial run settles no later than the benign run
    (kernel_analysis.settle_time at SETTLE_FRACTION of the class-mean
    distance to the run's last kernel).

    Returns:
        {'verdict': 'supported' | 'not supported' | 'no data', 'why' (for
        'no data'), 't', 'pairs': {(s, s'): {'between': (d_s, d_s'),
        'baseline', 'ratio'}}, 'settle': {s: {'A', 'C'}}, 'between' and
        'baseline': (mean, sd, count), 'farthest': (t, mean over pairs of
        'ratio') at the t where it is largest, or None}.
    """
    frame, seeds, no_data = _claim_one_frame(kernel_table)
    if no_data:
        return no_data
    t = frame["t"].max()
    between, pairs = _same_seed_pairs(frame, seeds, t)
    settle = _settle_times(frame, seeds)
    values = [
        v for p in pairs.values() for v in (*p["between"], p["baseline"])
    ]
    values += [v for d in settle.values() for v in d.values()]
    if any(math.isnan(v) for v in values):
        return {"verdict": "no data", "why": "kernels missing at some t"}
    far = all(p["ratio"] > SEED_BASELINE_FACTOR for p in pairs.values())
    rapid = all(d["A"] <= d["C"] for d in settle.values())
    baselines = [p["baseline"] for p in pairs.values()]
    every_t = [
        (time, p["ratio"])
        for time in sorted(frame["t"].unique())
        for p in _same_seed_pairs(frame, seeds, time)[1].values()
    ]
    ratios = pd.Series([r for _, r in every_t], [x for x, _ in every_t])
    return {
        "verdict": "supported" if far and rapid else "not supported",
        "t": t,
        "pairs": pairs,
        "settle": settle,
        "between": stats(list(between.values())),
        "baseline": stats(baselines),
        "farthest": _farthest(ratios),
    }


def claim_one_like_with_like(kernel_table: pd.DataFrame) -> dict:
    """Claim 1 like with like (LIKE_WITH_LIKE_RULE) on a preset's kernel
    table, from collect.like_with_like's distances and baselines (class
    means of the largest N) and the settle times of claim_one.

    Returns:
        {'verdict': 'supported' | 'in direction only' | 'not supported' |
        'no data', 'why' (for 'no data'), 't' (the last), 'across':
        {(s, s'): {'distance', 'baseline', 'ratio'}} at t, 'same_start':
        {s: {...}} at t (empty without replicate runs), 'replicates':
        whether the grid has them, 'settle': {s: {'A', 'C'}}, 'farthest':
        {ACROSS_SEEDS, SAME_START: (t, mean ratio) where it is largest, or
        None}}.
    """
    frame, seeds, no_data = _claim_one_frame(kernel_table)
    if no_data:
        return no_data
    table = like_with_like(kernel_table)
    replicates = (
        TO_REORDERED in kernel_table
        and kernel_table[TO_REORDERED].notna().any()
    )
    comparisons = [ACROSS_SEEDS] + ([SAME_START] if replicates else [])
    table = table[table["comparison"].isin(comparisons)]
    t = frame["t"].max()
    last = table[table["t"] == t]
    decided = {
        name: {
            (row.seed, row.other) if name == ACROSS_SEEDS else row.seed: {
                "distance": row.distance,
                "baseline": row.baseline,
                "ratio": row.ratio,
            }
            for row in last[last["comparison"] == name].itertuples()
        }
        for name in comparisons
    }
    across = table[table["comparison"] == ACROSS_SEEDS]
    if across["distance"].isna().all():
        why = (
            "no distances between the benign and adversarial kernels of "
            "different seeds (the analysis across seeds' pairwise.csv)"
        )
        return {"verdict": "no data", "why": why}
    settle = _settle_times(frame, seeds)
    ratios = [v["ratio"] for d in decided.values() for v in d.values()]
    values = ratios + [v for d in settle.values() for v in d.values()]
    if any(math.isnan(v) for v in values):
        return {"verdict": "no data", "why": "kernels missing at some t"}
    rapid = all(d["A"] <= d["C"] for d in settle.values())
    if rapid and all(r > LIKE_WITH_LIKE_FACTOR for r in ratios):
        verdict = "supported"
    elif rapid and all(r > 1 for r in ratios):
        verdict = "in direction only"
    else:
        verdict = "not supported"
    farthest = {
        name: _farthest(
            table[table["comparison"] == name].set_index("t")["ratio"]
        )
        for name in comparisons
    }
    return {
        "verdict": verdict,
        "t": t,
        "across": decided[ACROSS_SEEDS],
        "same_start": decided.get(SAME_START, {}),
        "replicates": bool(replicates),
        "settle": settle,
        "farthest": farthest,
    }


def stats(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (NaN for one value), count)."""
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), sd, len(values)


# --------------------------------------------------------------------------
# Robustness under AutoAttack and the masking diagnostics (issue 20)
# --------------------------------------------------------------------------


def pgd_column(rows: pd.DataFrame) -> str:
    """The PGD accuracy beside AutoAttack's: eval_and_make_adv.py's
    (eval_linf: the same script, seed and test images) where the grid has
    its evaluation, else run_exp.py's (linf)."""
    if "eval_linf" in rows and rows["eval_linf"].notna().any():
        return "eval_linf"
    return "linf"


def autoattack_models(
    rows: pd.DataFrame, robust: pd.DataFrame
) -> pd.DataFrame:
    """A row per phase-2 model that AutoAttack attacked at the grid's eps:
    MODEL, n, clean, PGD_COLUMN (PGD's accuracy), FIRST_COLUMN (the first
    attack's robust accuracy alone, APGD-CE's: 1 − (clean + its breaks) /
    n), AUTOATTACK_COLUMN, gap (PGD − AutoAttack), SCORE_COLUMN (the
    examples only the score-based attacks broke, Square's) and
    SCORE_FRACTION_COLUMN (of n)."""
    columns = MODEL + ["n", "clean", PGD_COLUMN, FIRST_COLUMN]
    columns += [AUTOATTACK_COLUMN, "gap", SCORE_COLUMN, SCORE_FRACTION_COLUMN]
    if robust.empty or rows.empty:
        return pd.DataFrame(columns=columns)
    eps = float(rows["eps"].iloc[0])
    aa = robust[(robust["attack"] == AUTOATTACK.name) & (robust["eps"] == eps)]
    if aa.empty:
        return pd.DataFrame(columns=columns)
    pgd = rows[MODEL + [pgd_column(rows)]].rename(
        columns={pgd_column(rows): PGD_COLUMN}
    )
    out = aa.merge(pgd, on=MODEL, how="left")
    n = out["n"].astype(float)
    out["clean"] = out["acc_clean"]
    out[AUTOATTACK_COLUMN] = out["acc_robust"]
    breaks = out[broken_column(attacks.registry.CLEAN_NAME)]
    out[FIRST_COLUMN] = 1 - (breaks + out[broken_column(FIRST.name)]) / n
    out["gap"] = out[PGD_COLUMN] - out[AUTOATTACK_COLUMN]
    out[SCORE_COLUMN] = sum(out[broken_column(a.name)] for a in SCORE_BASED)
    out[SCORE_FRACTION_COLUMN] = out[SCORE_COLUMN] / n
    return out[columns].sort_values(MODEL).reset_index(drop=True)


def masked(models: pd.DataFrame) -> pd.DataFrame:
    """The models of autoattack_models whose score-based-only breaks
    exceed SQUARE_FRACTION of their test images: a gradient-masking
    signal."""
    return models[models[SCORE_FRACTION_COLUMN] > SQUARE_FRACTION]


def curve_attack(robust: pd.DataFrame, configured: str | None) -> str | None:
    """The attack of the robust-accuracy-against-eps curve: `configured`
    (robustness.curve_attack) where the table has it, else the attack with
    the most eps values (None for an empty table)."""
    if robust.empty:
        return None
    if configured is not None and configured in set(robust["attack"]):
        return configured
    counts = robust.groupby("attack")["eps"].nunique()
    return str(counts.idxmax())


def curve_ends(robust: pd.DataFrame, attack: str) -> pd.DataFrame:
    """Per model, where its curve of `attack` ends: MODEL, eps_max (the
    largest eps it was attacked at), acc_max (robust accuracy there) and
    reaches_zero (acc_max ≤ ZERO_ACCURACY)."""
    curve = robust[robust["attack"] == attack]
    columns = MODEL + ["eps_max", "acc_max", "reaches_zero"]
    if curve.empty:
        return pd.DataFrame(columns=columns)
    last = curve.loc[curve.groupby(MODEL)["eps"].idxmax()]
    out = last[MODEL].copy()
    out["eps_max"] = last["eps"].to_numpy()
    out["acc_max"] = last["acc_robust"].to_numpy()
    out["reaches_zero"] = out["acc_max"] <= ZERO_ACCURACY
    return out.sort_values(MODEL).reset_index(drop=True)
