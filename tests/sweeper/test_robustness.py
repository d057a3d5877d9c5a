"""The [robustness] section of a grid (issue 20): its cells (exact
commands and dependencies), its refusals, the robustness CSV and the
autoattack column, the report's section "Robust accuracy under
AutoAttack" with its masking verdicts, and adding the section to a
finished sweep."""

import os
import shutil

import pandas as pd
import pytest

import eval_and_make_adv
import sweep
from helpers import ROOT, assert_one_line_error
from robust_cells import (
    BROKEN,
    PARSERS,
    ROBUSTNESS,
    aggregate,
    write_cells,
)
from sweep_fixtures import (
    outcome_lines,
    run_sweep,
    sweep_main,
    tiny_config,
    tiny_grid,
    write_config,
)
from sweeper import (
    grid,
    report,
    runners,
    schema,
    verdicts,
)

# --------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------


def test_robustness_cells_are_the_exact_commands(tmp_path):
    the_grid = tiny_grid(tmp_path, robustness=ROBUSTNESS)
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
    the_grid = tiny_grid(
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
    the_grid = tiny_grid(
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
    the_grid = tiny_grid(tmp_path)
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
    assert sweep_main(path, "--dry_run") == 2
    assert_one_line_error(capsys.readouterr().err, words)
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def test_robustness_csv_and_autoattack_column(robust_grid):
    the_grid, tmp_path = robust_grid
    out, results = aggregate(the_grid, tmp_path)
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
    out, results = aggregate(the_grid, tmp_path)
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
    aggregate(bare, tmp_path)
    assert with_section == {
        p: (results / p).read_bytes() for p in with_section
    }
    assert (tmp_path / "R.md").read_text() == text


# --------------------------------------------------------------------------
# The report's section and its verdicts
# --------------------------------------------------------------------------


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
    assert sweep_main(the_grid.path, "--dry_run") == 0
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
        write_cells(the_grid, [cell])
        return runners.Outcome(cell.id, runners.OK)

    monkeypatch.setattr(runners, "execute_cell", fake_execute)
    monkeypatch.setattr(runners, "prepare_data", lambda the_grid: None)
    assert sweep_main(the_grid.path, "--local", "1") == 0
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
    args = eval_and_make_adv.parse_args(["--model_path", "m"])
    return "attack_budget" not in vars(args)


@pytest.mark.slow
def test_tiny_grid_with_robustness_end_to_end(
    tiny_local_run, fashion_data, tmp_path
):
    """The finished tiny grid (a copy) with [robustness] added: only the
    robustness cells run, and the largest eps brings accuracy to 0."""
    if _attack_flag_missing():
        pytest.skip("eval_and_make_adv.py does not take --attack yet")
    root = tmp_path / "root"
    shutil.copytree(tiny_local_run["root"], root)
    config = tiny_config(
        root,
        fashion_data,
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
    assert sweep_main(path, "--dry_run") == 2
    assert_one_line_error(capsys.readouterr().err, *named)
    assert sorted(os.listdir(tmp_path)) == ["grid.toml"]
    the_grid = tiny_grid(tmp_path, robustness={"budget": {"n_targets": 3}})
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
