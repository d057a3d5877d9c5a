"""The [robustness] section of a grid (issue 20): its cells (exact
commands and dependencies), its refusals, the robustness CSV and the
autoattack column, the report's section "Robust accuracy under
AutoAttack" with its masking verdicts, and adding the section to a
finished sweep."""

import argparse
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import cli
import eval_and_make_adv
import run_exp
import sweep
from helpers import ROOT, assert_one_line_error
from store import atomic
from sweep_fixtures import (
    outcome_lines,
    run_sweep,
    tiny_config,
    write_config,
)
from sweeper import (
    collect,
    estimate,
    grid,
    report,
    robustness_report,
    runners,
    schema,
    verdicts,
)

ROBUSTNESS = {"eps_curve": [8, 64], "budget": {"apgd_iters": 10}}


def _eval_parse(argv):
    """eval_and_make_adv.py's parse_args; until it takes --attack and
    --attack_budget (issue 20, in parallel), those two are parsed here."""
    if "attack" in vars(eval_and_make_adv.parse_args(["--model_path", "m"])):
        return eval_and_make_adv.parse_args(argv)
    extra = argparse.ArgumentParser()
    extra.add_argument("--attack", default="pgd")
    extra.add_argument("--attack_budget", nargs="+", default=[])
    known, rest = extra.parse_known_args(list(argv))
    args = eval_and_make_adv.parse_args(rest)
    args.attack, args.attack_budget = known.attack, known.attack_budget
    return args


PARSERS = dict(sweep.PARSERS, **{"eval_and_make_adv.py": _eval_parse})


def run_main(*argv):
    try:
        return cli.run_cli(lambda: sweep.main([str(a) for a in argv]))
    except SystemExit as exit_:
        return exit_.code


def _grid(tmp_path, **changes):
    config = tiny_config(tmp_path / "root", "/nowhere/data", **changes)
    path = write_config(tmp_path / "grid.toml", config)
    return grid.Grid.load(path)


# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


def test_robustness_cells_are_the_exact_commands(tmp_path):
    the_grid = _grid(tmp_path, robustness=ROBUSTNESS)
    cells = the_grid.cells()
    robust = [c for c in cells if c.stage == "robustness"]
    phase2 = {c.id: c for c in cells if c.stage == "phase2"}
    # AutoAttack at attack.eps (8), then APGD-CE at each eps of the curve
    # (8 and 64), for each phase-2 model (C and A from θ(1)).
    names = ["autoattack_eps8", "apgd-ce_eps8", "apgd-ce_eps64"]
    assert [c.id for c in robust] == [
        f"{p2}/robustness/{name}" for p2 in phase2 for name in names
    ]
    root = str(tmp_path / "root")
    cell = robust[0]
    model = f"{root}/seed_0/phase1_C/t_1/phase2_C_centered"
    assert (
        cell.deps == ("seed_0/phase1_C/t_1/phase2_C_centered",)
        and cell.deps[0] in phase2
    )
    assert list(cell.args) == [
        "--model_path",
        f"{model}/parameters_final.pkl",
        "--linear",
        "--centering",
        "--bonus_dir",
        "robustness",
        "--save_name",
        "autoattack_eps8",
        "--random_seed",
        "0",
        "--data_path",
        "/nowhere/data",
        "--eps",
        "8",
        "--attack",
        "autoattack",
        "--attack_budget",
        "apgd_iters=10",
        "--test_size",
        "100",
        "--no_progress",
    ]
    assert cell.outputs == (
        f"{model}/robustness/results_autoattack_eps8.json",
    )
    assert robust[2].args[robust[2].args.index("--eps") + 1] == "64"
    assert robust[2].keys["attack"] == "apgd-ce"
    assert robust[2].keys["eps"] == 64.0
    # Each cell comes after the model it attacks.
    order = [c.id for c in cells]
    for c in robust:
        assert order.index(c.deps[0]) < order.index(c.id)


def test_robustness_defaults_and_times(tmp_path):
    the_grid = _grid(
        tmp_path,
        phase1={"loaders": ["C"], "epochs": 2, "times": [1, 2]},
        robustness={"autoattack": False, "eps_curve": [4]},
    )
    r = the_grid.config["robustness"]
    assert r["times"] == [2.0]  # the last of phase2.times
    assert r["test_size"] == 100  # the evaluation's
    assert r["curve_attack"] == "apgd-ce" and r["budget"] == {}
    robust = [c for c in the_grid.cells() if c.stage == "robustness"]
    assert [c.id.split("/", 2)[2] for c in robust] == [
        "t_2/phase2_C_centered/robustness/apgd-ce_eps4",
        "t_2/phase2_A_centered/robustness/apgd-ce_eps4",
    ]
    assert "--attack_budget" not in robust[0].args
    # An AutoAttack curve shares the cell at attack.eps.
    the_grid = _grid(
        tmp_path,
        robustness={"eps_curve": [8, 16], "curve_attack": "autoattack"},
    )
    names = [
        c.id.rsplit("/", 1)[1]
        for c in the_grid.cells()
        if c.stage == "robustness" and c.keys["phase2"] == "C"
    ]
    assert names == ["autoattack_eps8", "autoattack_eps16"]


def test_no_section_no_robustness_cells(tmp_path):
    the_grid = _grid(tmp_path)
    assert the_grid.config["robustness"] is None
    assert not [c for c in the_grid.cells() if c.stage == "robustness"]


BAD = {
    "unknown attack": (
        {"curve_attack": "cw"},
        "robustness.curve_attack must be one of",
    ),
    "eps zero": ({"eps_curve": [0, 8]}, "robustness.eps_curve"),
    "eps negative": ({"eps_curve": [-2]}, "robustness.eps_curve"),
    "eps twice": ({"eps_curve": [8, 8]}, "robustness.eps_curve lists"),
    "t not in phase2.times": (
        {"times": [0]},
        "robustness.times has t = 0, which is not in phase2.times",
    ),
    "dynamics not in phase2": (
        {"dynamics": "standard"},
        "robustness.dynamics is 'standard'",
    ),
    "budget key": (
        {"budget": {"pgd_iters": 5}},
        "robustness.budget.pgd_iters is not a budget key",
    ),
    "budget zero": (
        {"budget": {"square_queries": 0}},
        "robustness.budget.square_queries must be a positive integer",
    ),
    "budget float": (
        {"budget": {"n_targets": 2.5}},
        "robustness.budget.n_targets must be a positive integer",
    ),
    "test size": ({"test_size": 15}, "robustness.test_size"),
    "unknown key": ({"restarts": 2}, "unknown key robustness.restarts"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_robustness_config_is_one_line(tmp_path, capsys, case):
    keys, words = BAD[case]
    config = tiny_config(tmp_path / "root", "/nowhere", robustness=keys)
    path = write_config(tmp_path / "grid.toml", config)
    assert run_main(path, "--dry_run") == 2
    assert_one_line_error(capsys.readouterr().err, words)
    assert not (tmp_path / "root").exists()


def test_estimate_of_robustness_cells(tmp_path):
    throughput = {
        "device": "cpu",
        "source": "test",
        "phase1_benign_images_per_s": 600.0,
        "phase1_adversarial_images_per_s": 100.0,
        "phase2_benign_images_per_s": 300.0,
        "phase2_adversarial_images_per_s": 30.0,
        "pgd_image_steps_per_s": 1000.0,
        "kernel_file_s": 2.0,
    }
    the_grid = _grid(tmp_path, robustness=ROBUSTNESS, throughput=throughput)
    cells = the_grid.cells()
    cost = estimate.estimate(the_grid, cells)
    # Per image: AutoAttack with apgd_iters = 10: APGD-CE 10, APGD-T 9 x 10,
    # FAB-T 9 x 100, Square 5000 / 3; APGD-CE alone 10.
    autoattack = 10 + 90 + 900 + 5000 / 3
    per_model = 100 * (autoattack + 10 + 10) / 1000
    assert cost["stages"]["robustness"] == (
        6,
        pytest.approx(2 * per_model / 3600),
    )


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------

# Hand-made results: (seed, phase1, phase2) -> PGD (eval_linf) and the
# AutoAttack broken_by counts of 100 images (clean, apgd-ce, apgd-t, fab-t,
# square, robust).
PGD = {
    (0, "C", "C"): 0.30,
    (0, "C", "A"): 0.50,
    (1, "C", "C"): 0.32,
    (1, "C", "A"): 0.52,
    (0, "A", "C"): 0.60,
    (0, "A", "A"): 0.70,
    (1, "A", "C"): 0.64,
    (1, "A", "A"): 0.72,
}
BROKEN = {
    (0, "C", "C"): (20, 52, 2, 0, 0, 26),
    (0, "C", "A"): (25, 26, 1, 0, 1, 47),
    (1, "C", "C"): (20, 50, 2, 0, 0, 28),
    (1, "C", "A"): (25, 25, 1, 1, 0, 48),
    (0, "A", "C"): (10, 30, 3, 0, 0, 57),
    # Seed 1's adversarial kernel: Square alone broke 5 of 100 (masking).
    (0, "A", "A"): (15, 15, 2, 0, 1, 67),
    (1, "A", "C"): (10, 28, 2, 1, 5, 54),
    (1, "A", "A"): (15, 14, 1, 0, 0, 70),
}
# APGD-CE's curve: robust accuracy at eps 8 and 64; seed 1's A -> C model
# does not reach 0.
CURVE = {key: (0.5, 0.0) for key in BROKEN}
CURVE[(1, "A", "C")] = (0.6, 0.2)


def _write_results(path, acc_clean, acc_robust, n=100, broken=None):
    source = {
        "source": "test set",
        "n": n,
        "acc_clean": acc_clean,
        "acc_dirty": acc_robust,
        "seconds": 1.0,
        "results_file": "",
    }
    if broken is not None:
        source["broken_by"] = dict(zip(collect.BROKEN_BY, broken, strict=True))
    return source


@pytest.fixture
def robust_grid(tmp_path, monkeypatch):
    """A 2-seed grid (phase 1 C and A at t = 1, phase 2 C and A, robustness
    with eps_curve [8, 64]) whose cells' files are written here by hand, as
    run_exp.py and eval_and_make_adv.py lay them out (the robustness cells'
    results as eval_and_make_adv.py --attack documents them)."""
    config = tiny_config(
        tmp_path / "root",
        "/nowhere",
        name="rob",
        seeds=[0, 1],
        phase1={"loaders": ["C", "A"], "epochs": 1, "times": [1]},
        kernels=None,
        analysis=None,
        robustness={"eps_curve": [8, 64]},
    )
    the_grid = grid.Grid.load(write_config(tmp_path / "rob.toml", config))
    _write_cells(the_grid, the_grid.cells())
    # The report would also show the committed presets' sections (their
    # CSVs in docs/results); this grid's report is read alone.
    monkeypatch.setattr(
        report, "COMMITTED_RESULTS", str(tmp_path / "no_committed_results")
    )
    return the_grid, tmp_path


def _write_cells(the_grid, cells):
    for cell in cells:
        key = (
            cell.keys.get("seed"),
            cell.keys.get("phase1"),
            cell.keys.get("phase2"),
        )
        if cell.stage == "phase1":
            atomic.atomic_write_json(
                cell.outputs[0],
                {"standard": {"clean": 0.9, "linf": 0.1, "l2": 0.2}},
            )
            _config_json(cell)
        elif cell.stage == "phase2":
            record = {"linear": {"clean": 0.8, "linf": 0.4, "l2": 0.5}}
            atomic.atomic_write_json(cell.outputs[0], record)
            _config_json(cell)
        elif cell.stage == "eval":
            source = _write_results(None, 0.85, PGD[key])
            _eval_json(cell, source, {"iters": 5})
        elif cell.stage == "robustness":
            attack, eps = cell.keys["attack"], cell.keys["eps"]
            if attack == "autoattack":
                b = BROKEN[key]
                robust = b[-1] / 100
                source = _write_results(None, 1 - b[0] / 100, robust, 100, b)
            else:
                acc = CURVE[key][0 if eps == 8 else 1]
                source = _write_results(None, 0.8, acc, 100, None)
                source["broken_by"] = {
                    "clean": 20,
                    "apgd-ce": 80 - round(acc * 100),
                    "apgd-t": 0,
                    "fab-t": 0,
                    "square": 0,
                    "robust": round(acc * 100),
                }
            _eval_json(cell, source, {"name": attack, "eps_255": eps})


def _config_json(cell):
    folder = cell.keys["save_path"]
    atomic.atomic_write_json(
        os.path.join(folder, "config.json"),
        {
            "flags": vars(run_exp.parse_args(cell.args)),
            "test_images": 100,
            "environment": {"jax": "0.5.3", "device_kind": "cpu"},
        },
    )
    # A finished run_exp.py run.
    atomic.atomic_pickle(
        os.path.join(folder, "train_state.pkl"), {"stage": "done"}
    )


def _eval_json(cell, source, attack):
    flags = vars(_eval_parse(cell.args))
    atomic.atomic_write_json(
        cell.outputs[0],
        {"flags": flags, "attack": attack, "sources": [source]},
    )


def _aggregate(the_grid, tmp_path):
    results = tmp_path / "results"
    out = report.aggregate(
        the_grid, str(results), str(tmp_path / "R.md"), PARSERS
    )
    return out, results


def test_robustness_csv_and_autoattack_column(robust_grid):
    the_grid, tmp_path = robust_grid
    out, results = _aggregate(the_grid, tmp_path)
    assert out["missing"] == []
    table = pd.read_csv(results / "rob_robustness.csv")
    assert list(table.columns[:10]) == [
        "seed",
        "phase1",
        "t",
        "phase2",
        "dynamics",
        "attack",
        "eps",
        "n",
        "acc_clean",
        "acc_robust",
    ]
    assert [c for c in table.columns if c.startswith("broken_by_")] == [
        "broken_by_clean",
        "broken_by_apgd_ce",
        "broken_by_apgd_t",
        "broken_by_fab_t",
        "broken_by_square",
        "broken_by_robust",
    ]
    assert len(table) == 8 * 3
    row = table[
        (table["seed"] == 1)
        & (table["phase1"] == "A")
        & (table["phase2"] == "C")
        & (table["attack"] == "autoattack")
    ].iloc[0]
    assert row["eps"] == 8.0 and row["n"] == 100
    assert row["acc_clean"] == pytest.approx(0.90)
    assert row["acc_robust"] == pytest.approx(0.54)
    assert row["broken_by_square"] == 5 and row["broken_by_fab_t"] == 1
    curve = table[(table["attack"] == "apgd-ce") & (table["eps"] == 64)]
    assert sorted(curve["acc_robust"]) == [0.0] * 7 + [0.2]
    rows = pd.read_csv(results / "rob.csv")
    assert rows.columns.get_loc("autoattack") == (
        rows.columns.get_loc("eval_images") + 1
    )
    for (seed, p1, p2), broken in BROKEN.items():
        (value,) = rows[
            (rows["seed"] == seed)
            & (rows["phase1"] == p1)
            & (rows["phase2"] == p2)
        ]["autoattack"]
        assert value == pytest.approx(broken[-1] / 100)
    summary = pd.read_csv(results / "rob_summary.csv")
    at = summary[(summary["phase1"] == "A") & (summary["phase2"] == "C")]
    assert at["autoattack_mean"].iloc[0] == pytest.approx(0.555)
    assert (results / "rob" / "robust_accuracy_vs_eps.png").exists()


def test_without_robustness_data_the_outputs_are_as_before(robust_grid):
    """No robustness cell ran: no robustness CSV, no autoattack column,
    no figure and no section; the outputs are those of the grid without
    the section."""
    the_grid, tmp_path = robust_grid
    for cell in the_grid.cells():
        if cell.stage == "robustness":
            os.remove(cell.outputs[0])
    out, results = _aggregate(the_grid, tmp_path)
    with_section = {
        p: (results / p).read_bytes() for p in ("rob.csv", "rob_summary.csv")
    }
    text = (tmp_path / "R.md").read_text()
    assert not (results / "rob_robustness.csv").exists()
    assert "autoattack" not in pd.read_csv(results / "rob.csv").columns
    assert "Robust accuracy under AutoAttack" not in text
    assert len(out["missing"]) == 8 * 3
    # The same grid without [robustness].
    config = grid.schema.load_config(the_grid.path)
    config["robustness"] = None
    bare = grid.Grid(the_grid.path, config, the_grid.root)
    _aggregate(bare, tmp_path)
    assert with_section == {
        p: (results / p).read_bytes() for p in with_section
    }
    assert (tmp_path / "R.md").read_text() == text


# --------------------------------------------------------------------------
# The report's section and its verdicts
# --------------------------------------------------------------------------


def _frames(robust_grid):
    the_grid, tmp_path = robust_grid
    out, results = _aggregate(the_grid, tmp_path)
    rows = pd.read_csv(results / "rob.csv")
    robust = pd.read_csv(results / "rob_robustness.csv")
    return rows, robust, (tmp_path / "R.md").read_text()


def test_autoattack_models_by_hand(robust_grid):
    rows, robust, _ = _frames(robust_grid)
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


def test_claim_two_under_autoattack_by_hand(robust_grid):
    rows, robust, _ = _frames(robust_grid)
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
    rows, robust, text = _frames(robust_grid)
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
    rows, robust, _ = _frames(robust_grid)
    robust.loc[robust["broken_by_square"] == 5, "broken_by_square"] = 1
    robust.loc[robust["attack"] == "apgd-ce", "acc_robust"] = 0.0
    models = verdicts.autoattack_models(rows, robust)
    ends = verdicts.curve_ends(robust, "apgd-ce")
    assert verdicts.masked(models).empty and ends["reaches_zero"].all()
    text = robustness_report.summary_text(models, ends, rows)
    assert "no masking signal there" in text
    assert "in 8 of 8 models." in text


# --------------------------------------------------------------------------
# Adding the section to a finished sweep
# --------------------------------------------------------------------------


def test_adding_the_section_runs_only_the_new_cells(
    robust_grid, monkeypatch, capsys
):
    the_grid, tmp_path = robust_grid
    config = grid.schema.load_config(the_grid.path)
    config["robustness"] = None
    bare = grid.Grid(the_grid.path, config, the_grid.root)
    bare.write_record()  # the finished sweep, without the section
    for cell in the_grid.cells():
        if cell.stage == "robustness":
            os.remove(cell.outputs[0])
    # Its settings are unchanged: the record and the cells are accepted.
    the_grid.check_record()
    the_grid.check_cells(the_grid.cells(), PARSERS)
    assert run_main(the_grid.path, "--dry_run") == 0
    out = capsys.readouterr().out
    states = {
        line.split(" [")[0][2:]: line.split(" [")[1].split(",")[1].strip()
        for line in out.splitlines()
        if line.startswith("# seed_")
    }
    for cell in the_grid.cells():
        want = "to run" if cell.stage == "robustness" else "finished"
        assert states[cell.id].startswith(want), (cell.id, states[cell.id])
    # Running it starts the robustness cells and nothing else.
    ran = []

    def fake_execute(cell, env=None, on_start=None):
        ran.append(cell.id)
        _write_cells(the_grid, [cell])
        return runners.Outcome(cell.id, runners.OK)

    monkeypatch.setattr(runners, "execute_cell", fake_execute)
    monkeypatch.setattr(runners, "prepare_data", lambda the_grid: None)
    assert run_main(the_grid.path, "--local", "1") == 0
    robust = [c.id for c in the_grid.cells() if c.stage == "robustness"]
    assert sorted(ran) == sorted(robust)
    # The record now holds the section; changing an axis of it adds cells.
    the_grid.check_record()
    config = grid.schema.load_config(the_grid.path)
    config["robustness"]["eps_curve"] = [8, 64, 128]
    grid.Grid(the_grid.path, config, the_grid.root).check_record()
    config["robustness"]["budget"] = {"apgd_iters": 5}
    with pytest.raises(sweep.UserError, match="robustness.budget"):
        grid.Grid(the_grid.path, config, the_grid.root).check_record()


def test_committed_preset_gets_only_robustness_cells():
    """configs/cpu-small.toml's [robustness] adds cells and changes none
    of the others (their ids and commands are those without it)."""
    path = os.path.join(ROOT, "configs", "cpu-small.toml")
    with_section = grid.Grid.load(path)
    config = schema.load_config(path)
    config["robustness"] = None
    bare = grid.Grid(path, config, with_section.root)
    old = [(c.id, c.args) for c in bare.cells()]
    new = with_section.cells()
    assert [(c.id, c.args) for c in new if c.stage != "robustness"] == old
    robust = [c for c in new if c.stage == "robustness"]
    # seeds × phase-1 loaders × phase-2 loaders × (AutoAttack + 4 eps)
    assert len(robust) == 3 * 2 * 2 * (1 + 4)
    fixed = bare.fixed_settings()
    assert {
        k: v for k, v in with_section.fixed_settings().items() if k in fixed
    } == fixed


# --------------------------------------------------------------------------
# End to end, once eval_and_make_adv.py takes --attack
# --------------------------------------------------------------------------


def _attack_flag_missing() -> bool:
    result = subprocess.run(
        [sys.executable, "eval_and_make_adv.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return "--attack_budget" not in result.stdout


@pytest.mark.slow
def test_tiny_grid_with_robustness_end_to_end(
    tiny_local_run, sweep_data, tmp_path
):
    """The finished tiny grid (a copy) with [robustness] added: only the
    robustness cells run, and the largest eps brings accuracy to 0."""
    if _attack_flag_missing():
        pytest.skip("eval_and_make_adv.py does not take --attack yet")
    root = tmp_path / "root"
    shutil.copytree(tiny_local_run["root"], root)
    config = tiny_config(
        root,
        sweep_data,
        robustness={
            "eps_curve": [8, 255],
            "budget": {
                "apgd_iters": 5,
                "n_targets": 2,
                "fab_iters": 5,
                "square_queries": 50,
            },
        },
    )
    path = write_config(tmp_path / "tiny.toml", config)
    result = run_sweep(path, "--local", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = [
        cell_id
        for cell_id, (status, _) in outcome_lines(result.stdout).items()
        if status == "ok"
    ]
    assert ran and all("/robustness/" in cell_id for cell_id in ran)
    the_grid = grid.Grid.load(path)
    for cell in the_grid.cells():
        assert grid.cell_status(cell) == grid.DONE, cell.id
    out = report.aggregate(
        the_grid, str(tmp_path / "res"), str(tmp_path / "R.md"), sweep.PARSERS
    )
    table = out["robustness"]
    assert len(table) == 2 * 3
    end = table[table["eps"] == 255]
    assert (end["acc_robust"] <= verdicts.ZERO_ACCURACY).all()
    assert (
        "Robust accuracy under AutoAttack" in (tmp_path / "R.md").read_text()
    )


# --------------------------------------------------------------------------
# Issue 30: a budget no cell can run is refused by the grid check
# --------------------------------------------------------------------------

BUDGETS = {
    "more targets than wrong classes": (
        {"budget": {"n_targets": 20}},
        ("robustness.budget.n_targets", "9 wrong ones"),
    ),
    "iterations beyond the bound": (
        {"budget": {"apgd_iters": 10**23 // 10**5}},
        ("robustness.budget.apgd_iters must be at most 100000",),
    ),
    "a key no robustness attack reads": (
        {"autoattack": False, "budget": {"square_queries": 5}},
        ("robustness.budget.square_queries is read by none", "apgd-ce"),
    ),
}


@pytest.mark.parametrize("case", list(BUDGETS))
def test_item3_budget_no_cell_can_run_refused_by_the_grid_check(
    tmp_path, capsys, case
):
    """robustness.budget is checked as eval_and_make_adv.py checks
    --attack_budget: --dry_run refuses, in one line naming the key, what
    would make the AutoAttack cells die; nothing written. Each cell gets
    the keys its attack reads (no n_targets for APGD-CE), and a failed
    cell without an `error:` line is reported by its exception's line,
    not by JAX's note that follows it."""
    keys, named = BUDGETS[case]
    config = tiny_config(tmp_path / "root", "/nowhere", robustness=keys)
    path = write_config(tmp_path / "grid.toml", config)
    assert run_main(path, "--dry_run") == 2
    assert_one_line_error(capsys.readouterr().err, *named)
    assert sorted(os.listdir(tmp_path)) == ["grid.toml"]
    the_grid = _grid(tmp_path, robustness={"budget": {"n_targets": 3}})
    for cell in the_grid.cells():
        if cell.stage == "robustness":
            given = "n_targets=3" in cell.args
            assert given == (cell.keys["attack"] == "autoattack"), cell.id
    tail = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "ValueError: 20 target classes but only 9 wrong ones\n"
        "--------------------\nFor simplicity, JAX has removed its "
        "internal frames from the traceback of the following exception.\n"
    )
    said = runners._error_line(tail.encode())
    assert said == "ValueError: 20 target classes but only 9 wrong ones"


def test_grid_keys_named_after_the_registry_and_the_scripts():
    """robustness.autoattack is the key of the attack of that name; the
    keys that default to a script's default read it from its parser."""
    import dataclasses

    import attacks
    from cli import eval_and_make_adv as eval_flags
    from cli import run_exp as run_flags

    keys = {f.name: f for f in dataclasses.fields(schema.Robustness)}
    assert schema.AUTOATTACK == attacks.AUTOATTACK.name in keys
    assert keys["curve_attack"].default == attacks.APGD_CE.name
    run_parser, eval_parser = run_flags.parser(), eval_flags.parser()
    defaults = {
        (schema.Phase1, "state_every"): run_parser.get_default("state_every"),
        (schema.Phase2, "lr"): run_parser.get_default("second_lr"),
        (schema.Attack, "eps"): run_parser.get_default("eps"),
        (schema.Evaluation, "pgd_iters"): eval_parser.get_default("pgd_iters"),
    }
    for (section, name), default in defaults.items():
        field = {f.name: f for f in dataclasses.fields(section)}[name]
        assert field.default == default, name
