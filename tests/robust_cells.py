"""The robustness grid of the sweeper's tests: a 2-seed grid with a
[robustness] section whose cells' files are written by hand, as run_exp.py
and eval_and_make_adv.py lay them out, with every number chosen here (the
PGD accuracies, AutoAttack's broken-by counts, APGD-CE's curve)."""

import argparse
import os

import pandas as pd
import pytest

import eval_and_make_adv
import run_exp
import sweep
from store import atomic
from sweep_fixtures import tiny_config, write_config
from sweeper import collect, grid, report

ROBUSTNESS = {"eps_curve": [8, 64], "budget": {"apgd_iters": 10}}


def eval_parse(argv):
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


PARSERS = dict(sweep.PARSERS, **{"eval_and_make_adv.py": eval_parse})


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


def write_results(path, acc_clean, acc_robust, n=100, broken=None):
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
    write_cells(the_grid, the_grid.cells())
    # The report would also show the committed presets' sections (their
    # CSVs in docs/results); this grid's report is read alone.
    monkeypatch.setattr(
        report, "COMMITTED_RESULTS", str(tmp_path / "no_committed_results")
    )
    return the_grid, tmp_path


def write_cells(the_grid, cells):
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
            config_json(cell)
        elif cell.stage == "phase2":
            record = {"linear": {"clean": 0.8, "linf": 0.4, "l2": 0.5}}
            atomic.atomic_write_json(cell.outputs[0], record)
            config_json(cell)
        elif cell.stage == "eval":
            source = write_results(None, 0.85, PGD[key])
            eval_json(cell, source, {"iters": 5})
        elif cell.stage == "robustness":
            attack, eps = cell.keys["attack"], cell.keys["eps"]
            if attack == "autoattack":
                b = BROKEN[key]
                robust = b[-1] / 100
                source = write_results(None, 1 - b[0] / 100, robust, 100, b)
            else:
                acc = CURVE[key][0 if eps == 8 else 1]
                source = write_results(None, 0.8, acc, 100, None)
                source["broken_by"] = {
                    "clean": 20,
                    "apgd-ce": 80 - round(acc * 100),
                    "apgd-t": 0,
                    "fab-t": 0,
                    "square": 0,
                    "robust": round(acc * 100),
                }
            eval_json(cell, source, {"name": attack, "eps_255": eps})


def config_json(cell):
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


def eval_json(cell, source, attack):
    flags = vars(eval_parse(cell.args))
    atomic.atomic_write_json(
        cell.outputs[0],
        {"flags": flags, "attack": attack, "sources": [source]},
    )


def aggregate(the_grid, tmp_path):
    results = tmp_path / "results"
    out = report.aggregate(
        the_grid, str(results), str(tmp_path / "R.md"), PARSERS
    )
    return out, results


def frames(robust_grid):
    the_grid, tmp_path = robust_grid
    out, results = aggregate(the_grid, tmp_path)
    rows = pd.read_csv(results / "rob.csv")
    robust = pd.read_csv(results / "rob_robustness.csv")
    return rows, robust, (tmp_path / "R.md").read_text()
