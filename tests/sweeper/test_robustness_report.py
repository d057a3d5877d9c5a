"""sweeper.robustness_report: claim 2 under AutoAttack, the report's
section "Robust accuracy under AutoAttack" and its paragraph, on the
robustness grid whose every number is written by hand (robust_cells)."""

import pandas as pd
import pytest

from robust_cells import (
    BROKEN,
    PGD,
    frames,
)
from sweeper import robustness_report, verdicts


def test_claim_two_under_autoattack_by_hand(robust_grid):
    rows, robust, _ = frames(robust_grid)
    models = verdicts.autoattack_models(rows, robust)
    two = robustness_report.claim_two_under_autoattack(rows, models)
    # PGD (eval_linf) after benign phase 2: A 0.60, 0.64 vs. C 0.30, 0.32.
    assert two["pgd"]["verdict"] == "supported"
    assert two["pgd"]["gains"] == {
        0: pytest.approx(0.30),
        1: pytest.approx(0.32),
    }
    # AutoAttack: A 0.57, 0.54 vs. C 0.26, 0.28.
    assert two["autoattack"]["verdict"] == "supported"
    assert two["autoattack"]["gains"] == {
        0: pytest.approx(0.31),
        1: pytest.approx(0.26),
    }
    assert two["survives"] is True
    # AutoAttack finds the adversarial kernel's models as weak: it fails.
    weaker = models.copy()
    weaker.loc[weaker["phase1"] == "A", "autoattack"] = 0.28
    two = robustness_report.claim_two_under_autoattack(rows, weaker)
    assert two["autoattack"]["verdict"] == "not supported"
    assert two["survives"] is False


def test_report_section_by_hand(robust_grid):
    rows, robust, text = frames(robust_grid)
    section = text[text.index("### Robust accuracy under AutoAttack") :]
    # (a) the table: A kernel, benign phase 2: PGD 0.60, 0.64; APGD-CE
    # 0.60, 0.62; AutoAttack 0.57, 0.54; gap 0.03, 0.10.
    line = next(
        x
        for x in section.splitlines()
        if x.startswith("| 1 | adversarial (A) | benign (C)")
    )
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "2"
    assert cells[5] == "0.620 ± 0.028"
    assert cells[6] == "0.610 ± 0.014"
    assert cells[7] == "0.555 ± 0.021"
    assert cells[8] == "0.065 ± 0.049"
    assert cells[9] == "s0: 0.600 / 0.600 / 0.570; s1: 0.640 / 0.620 / 0.540"
    assert "claim 2 survives AutoAttack" in section
    assert "gain per seed s0: +0.310, s1: +0.260" in section
    # (b) the diagnostics, a row per model.
    assert "](results/rob/robust_accuracy_vs_eps.png)" in section
    flagged = next(x for x in section.splitlines() if "| s1 A→C t=1 |" in x)
    assert "0.200 at 64/255 | **no** | 5 of 100 **masking**" in flagged
    clean = next(x for x in section.splitlines() if "| s0 C→A t=1 |" in x)
    assert "0.000 at 64/255 | yes | 1 of 100 |" in clean
    # (c) the paragraph, from the numbers.
    paragraph = next(
        x for x in section.splitlines() if x.startswith("**What they show")
    )
    gaps = [PGD[k] - BROKEN[k][-1] / 100 for k in PGD]
    assert f"is {sum(gaps) / len(gaps):.3f} below PGD's" in paragraph
    assert "in 1 of 8 models (s1 A→C t=1): a gradient-masking signal" in (
        paragraph
    )
    assert "reaches 0 (at most 0.01) at ε = 64/255 in 7 of 8 models" in (
        paragraph
    )
    assert "not in s1 A→C t=1 (0.200)" in paragraph
    assert "Claim 2 survives AutoAttack." in paragraph
    # The figure is linked in the section only.
    assert text.count("robust_accuracy_vs_eps.png)") == 1


def test_report_without_masking(robust_grid):
    """Square-only breaks at most 1 % and every curve at 0: the paragraph
    says there is no masking signal."""
    rows, robust, _ = frames(robust_grid)
    robust.loc[robust["broken_by_square"] == 5, "broken_by_square"] = 1
    robust.loc[robust["attack"] == "apgd-ce", "acc_robust"] = 0.0
    models = verdicts.autoattack_models(rows, robust)
    ends = verdicts.curve_ends(robust, "apgd-ce")
    assert verdicts.masked(models).empty and ends["reaches_zero"].all()
    text = robustness_report.summary_text(models, ends, rows)
    assert "no masking signal there" in text
    assert "in 8 of 8 models." in text


def test_model_name_is_short():
    model = pd.Series({"seed": 1, "phase1": "A", "phase2": "C", "t": 0.125})
    assert robustness_report.model_name(model) == "s1 A→C t=0.125"
    model["t"] = 10.0
    assert robustness_report.model_name(model) == "s1 A→C t=10"
