"""The report's section "Robust accuracy under AutoAttack" (issue 20), for
a preset with a robustness table ({name}_robustness.csv): PGD beside
AutoAttack and APGD-CE alone, claim 2 recomputed with AutoAttack, the
masking diagnostics (robust accuracy against eps reaching 0, Square-only
breaks, PGD − AutoAttack gaps) and a paragraph generated from them. The
rules are `sweeper.verdicts`' (SQUARE_FRACTION, ZERO_ACCURACY,
ROBUSTNESS_GAIN), stated before the numbers."""

import math
import os

import pandas as pd

import utils
from store import layout
from sweeper.schema import LOADER_NAMES
from sweeper.verdicts import (
    AUTOATTACK,
    AUTOATTACK_COLUMN,
    FIRST,
    FIRST_COLUMN,
    GRADIENT,
    MODEL,
    PGD_COLUMN,
    SCORE_BASED,
    SCORE_COLUMN,
    SCORE_FRACTION_COLUMN,
    SQUARE_FRACTION,
    ZERO_ACCURACY,
    autoattack_models,
    claim_two,
    curve_attack,
    curve_ends,
    masked,
    pgd_column,
    stats,
)

EPS_FIGURE = layout.ROBUSTNESS_FIGURE
# The attacks in prose, from their registry entries: 'AutoAttack',
# 'APGD-CE' (its first attack, alone) and 'Square' (its score-based one).
AA = AUTOATTACK.title
ALONE = FIRST.title
SCORE = utils.word_list([a.title for a in SCORE_BASED])


def _fmt(mean: float, sd: float = math.nan) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.3f}" if math.isnan(sd) else f"{mean:.3f} ± {sd:.3f}"


def _stat_text(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    mean, sd, _ = stats(list(values))
    return _fmt(mean, sd)


def model_name(model: pd.Series) -> str:
    """A phase-2 model in a few characters: 's1 A→C t=10'."""
    return (
        f"s{int(model['seed'])} {model['phase1']}→{model['phase2']} "
        f"t={layout.format_t(float(model['t']))}"
    )


def robustness_section(
    name: str,
    config: dict,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    figure_dir: str,
    report_dir: str,
) -> list[str]:
    """The section's lines. frames: ({name}.csv, {name}_robustness.csv);
    config: the preset's (load_config's dict); figure_dir: where its
    figures are; report_dir: the report's folder (links are relative)."""
    rows, robust = frames
    models = autoattack_models(rows, robust)
    configured = (config.get("robustness") or {}).get("curve_attack")
    attack = curve_attack(robust, configured)
    ends = curve_ends(robust, attack) if attack else pd.DataFrame()
    lines = [f"### Robust accuracy under {AA}", ""]
    lines += _table_lines(name, config, rows, models)
    two = _claim_two_lines(rows, models)
    lines += two
    lines += _masking_lines(models, ends, attack, figure_dir, report_dir)
    lines += ["**What they show.** " + summary_text(models, ends, rows), ""]
    return lines


def _table_lines(
    name: str, config: dict, rows: pd.DataFrame, models: pd.DataFrame
) -> list[str]:
    """(a) PGD, APGD-CE alone and AutoAttack per phase-1 × phase-2 loader
    at each t, mean ± sd over seeds, with the per-seed values."""
    eps = config["attack"]["eps"]
    if models.empty:
        return [
            f"{AA} at ε = {eps:g}/255: no results in "
            f"`{name}_robustness.csv` (robustness.{AUTOATTACK.name} off, or "
            "its cells not run).",
            "",
        ]
    pgd = (
        "eval_and_make_adv.py's PGD (same script, seed and test images "
        f"as {AA}'s when robustness.test_size is the evaluation's)"
        if pgd_column(rows) == "eval_linf"
        else "run_exp.py's PGD-L∞ after phase 2"
    )
    budget = (config.get("robustness") or {}).get("budget") or {}
    budget_text = (
        "; budget " + ", ".join(f"{k} = {v}" for k, v in budget.items())
        if budget
        else "; the standard budget"
    )
    titles = ", ".join(a.title for a in AUTOATTACK.members)
    lines = [
        f"{AA} ({titles}{budget_text}) at "
        f"ε = {eps:g}/255 on {int(models['n'].iloc[0])} test images "
        f"(`{name}_robustness.csv`), beside {pgd} and {ALONE} alone (the "
        f"examples {AA}'s first attack broke). Mean ± sample standard "
        f"deviation over n seeds; per seed PGD / {ALONE} / {AA}.",
        "",
        f"| t | kernel (phase 1) | phase 2 | n | clean | PGD | {ALONE} | "
        f"{AA} | PGD − {AA} | per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (t, p1, p2), group in models.groupby(["t", "phase1", "phase2"]):
        per_seed = "; ".join(
            f"s{int(r['seed'])}: {_fmt(r[PGD_COLUMN])} / "
            f"{_fmt(r[FIRST_COLUMN])} / {_fmt(r[AUTOATTACK_COLUMN])}"
            for _, r in group.iterrows()
        )
        shown = (PGD_COLUMN, FIRST_COLUMN, AUTOATTACK_COLUMN, "gap")
        cells = [_stat_text(group[c]) for c in ("clean", *shown)]
        lines.append(
            f"| {layout.format_t(float(t))} | {LOADER_NAMES[p1]} ({p1}) | "
            f"{LOADER_NAMES[p2]} ({p2}) | {group['seed'].nunique()} | "
            + " | ".join(cells)
            + f" | {per_seed} |"
        )
    lines.append("")
    return lines


def _with_autoattack(rows: pd.DataFrame, models: pd.DataFrame) -> tuple:
    """(rows of the models AutoAttack attacked, with an AutoAttack column,
    the PGD column beside it)."""
    column = pgd_column(rows)
    keep = models[MODEL + [AUTOATTACK_COLUMN]]
    frame = rows.drop(columns=[AUTOATTACK_COLUMN], errors="ignore")
    return frame.merge(keep, on=MODEL, how="inner"), column


def claim_two_under_autoattack(
    rows: pd.DataFrame, models: pd.DataFrame
) -> dict:
    """Claim 2's rule (verdicts.claim_two) on the models AutoAttack
    attacked: {PGD_COLUMN: with PGD, AUTOATTACK_COLUMN: with AutoAttack,
    'survives': True / False (PGD supported it and AutoAttack does / does
    not) or None (PGD did not support it)}."""
    if models.empty:
        return {PGD_COLUMN: {"verdict": "no data"}, AUTOATTACK_COLUMN: {}}
    frame, column = _with_autoattack(rows, models)
    pgd = claim_two(frame, column)
    aa = claim_two(frame, AUTOATTACK_COLUMN)
    survives = None
    if pgd["verdict"] == "supported":
        survives = aa["verdict"] == "supported"
    return {PGD_COLUMN: pgd, AUTOATTACK_COLUMN: aa, "survives": survives}


def _gains(two: dict) -> str:
    return ", ".join(f"s{s}: {g:+.3f}" for s, g in two["gains"].items())


def _claim_two_lines(rows: pd.DataFrame, models: pd.DataFrame) -> list[str]:
    """Claim 2 recomputed with AutoAttack, beside PGD on the same models."""
    result = claim_two_under_autoattack(rows, models)
    pgd, aa = result[PGD_COLUMN], result[AUTOATTACK_COLUMN]
    if pgd["verdict"] == "no data" or aa.get("verdict") == "no data":
        return [
            f"**Claim 2 under {AA}**: no data (needs {AA} on "
            "benign phase 2 from both kernels at one t).",
            "",
        ]
    if result["survives"] is True:
        head = f"survives {AA}"
    elif result["survives"] is False:
        head = f"does not survive {AA}"
    else:
        head = f"is {aa['verdict']} under {AA}"
    return [
        f"**Claim 2 under {AA}** (the rule of claim 2 on the models "
        f"{AA} attacked): claim 2 {head}. {AA} at t = "
        f"{aa['t']:g}: {aa['verdict']}, adversarial kernel "
        f"{_fmt(*aa['adversarial'][:2])} vs. benign "
        f"{_fmt(*aa['benign'][:2])} (n = {aa['adversarial'][2]} seeds), "
        f"gain per seed {_gains(aa)}; PGD on the same models: "
        f"{pgd['verdict']}, gain per seed {_gains(pgd)}.",
        "",
    ]


def _masking_lines(
    models: pd.DataFrame,
    ends: pd.DataFrame,
    attack: str | None,
    figure_dir: str,
    report_dir: str,
) -> list[str]:
    """(b) The masking diagnostics: their rules, the figure, a row per
    model."""
    lines = [
        "**Masking diagnostics.** Rules, stated before the numbers: (1) "
        f"robust accuracy against ε under {attack or 'the curve attack'} "
        "must reach 0: a model passes when its accuracy at the curve's "
        f"largest ε is at most {ZERO_ACCURACY:g}; (2) {SCORE}-only breaks "
        f"(examples that {utils.word_list([a.title for a in GRADIENT])} all "
        f"missed and the score-based {SCORE} broke) above "
        f"{SQUARE_FRACTION:.0%} of the test images are a masking signal; "
        f"(3) PGD − {AA} is how much PGD overstates robust accuracy.",
        "",
    ]
    figure = os.path.join(figure_dir, EPS_FIGURE)
    if os.path.exists(figure):
        rel = os.path.relpath(figure, report_dir)
        lines += [f"![{EPS_FIGURE}]({rel})", ""]
    table = _diagnostics(models, ends)
    if table.empty:
        return lines
    lines += [
        "| model (seed, phase 1→2, t) | accuracy at largest ε | reaches 0 "
        f"| {SCORE}-only (of n) | PGD − {AA} |",
        "|---|---|---|---|---|",
    ]
    for _, m in table.iterrows():
        if pd.isna(m.get("eps_max")):
            at_max, zero = "–", "–"
        else:
            at_max = f"{m['acc_max']:.3f} at {m['eps_max']:g}/255"
            zero = "yes" if m["reaches_zero"] else "**no**"
        if pd.isna(m.get(SCORE_COLUMN)):
            score = "–"
        else:
            flag = (
                " **masking**"
                if m[SCORE_FRACTION_COLUMN] > SQUARE_FRACTION
                else ""
            )
            score = f"{int(m[SCORE_COLUMN])} of {int(m['n'])}{flag}"
        lines.append(
            f"| {model_name(m)} | {at_max} | {zero} | {score} | "
            f"{_fmt(m['gap']) if pd.notna(m.get('gap')) else '–'} |"
        )
    lines.append("")
    return lines


def _diagnostics(models: pd.DataFrame, ends: pd.DataFrame) -> pd.DataFrame:
    """A row per model of either table (outer join on MODEL)."""
    if models.empty and ends.empty:
        return pd.DataFrame()
    if models.empty:
        return ends
    if ends.empty:
        return models
    return models.merge(ends, on=MODEL, how="outer").sort_values(MODEL)


def summary_text(
    models: pd.DataFrame, ends: pd.DataFrame, rows: pd.DataFrame
) -> str:
    """(c) The paragraph: what the gaps, the Square-only breaks, the
    curves and claim 2 show, from the numbers."""
    parts = []
    if not models.empty and models["gap"].notna().any():
        gaps = models.dropna(subset=["gap"])
        worst = gaps.loc[gaps["gap"].idxmax()]
        alone = (gaps[PGD_COLUMN] - gaps[FIRST_COLUMN]).mean()
        mean = gaps["gap"].mean()
        parts.append(
            f"{AA}'s robust accuracy is {abs(mean):.3f} "
            f"{'below' if mean >= 0 else 'above'} PGD's on average over "
            f"{len(gaps)} models (largest gap {worst['gap']:+.3f}, "
            f"{model_name(worst)}); {ALONE} alone is {alone:+.3f} below PGD."
        )
    if not models.empty:
        flagged = masked(models)
        if flagged.empty:
            parts.append(
                f"{SCORE} broke at most {SQUARE_FRACTION:.0%} of the test "
                f"images that the gradient attacks missed in all "
                f"{len(models)} models (at most "
                f"{int(models[SCORE_COLUMN].max())}): no masking signal "
                "there."
            )
        else:
            names = ", ".join(model_name(m) for _, m in flagged.iterrows())
            parts.append(
                f"{SCORE} broke more than {SQUARE_FRACTION:.0%} of the test "
                f"images that every gradient attack missed in "
                f"{len(flagged)} of {len(models)} models ({names}): a "
                "gradient-masking signal."
            )
    parts += _curve_text(ends)
    two = claim_two_under_autoattack(rows, models)
    if two.get("survives") is True:
        parts.append(f"Claim 2 survives {AA}.")
    elif two.get("survives") is False:
        parts.append(
            "Claim 2, supported under PGD, is "
            f"{two[AUTOATTACK_COLUMN]['verdict']} under {AA}."
        )
    return " ".join(parts) if parts else "No robustness results yet."


def _curve_text(ends: pd.DataFrame) -> list[str]:
    """The curves' sentence: how many reach 0, and which do not."""
    if ends.empty:
        return []
    eps_max = ", ".join(f"{e:g}" for e in sorted(ends["eps_max"].unique()))
    reach = ends[ends["reaches_zero"]]
    text = (
        f"The robust accuracy against ε reaches 0 (at most "
        f"{ZERO_ACCURACY:g}) at ε = {eps_max}/255 in {len(reach)} of "
        f"{len(ends)} models"
    )
    short = ends[~ends["reaches_zero"].astype(bool)]
    if short.empty:
        return [text + "."]
    names = ", ".join(
        f"{model_name(m)} ({m['acc_max']:.3f})" for _, m in short.iterrows()
    )
    return [
        text + f"; not in {names}: gradient masking, or an attack too weak "
        "at that ε."
    ]
