"""report.py: the aggregation of a grid's files (written here in the
formats run_exp.py, eval_and_make_adv.py and analyze_kernels.py document)
into the tidy CSV, the summary over seeds, the kernel table with distances
and velocities, the figures and the report; the verdicts on the claims."""

import itertools
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

import eval_and_make_adv
import run_exp
import sweep
import utils
from helpers import PNG_SIGNATURE, assert_one_line_error, files_snapshot
from kernel_tables import A_FIRST, hand_kernels
from store import atomic
from sweep_fixtures import tiny_config, write_config
from sweeper import (
    estimate,
    grid,
    report,
    report_figures,
    verdicts,
)

MEASURES = ("top10_mass", "effective_rank", "lambda_max")


@pytest.fixture
def synthetic(tmp_path):
    """A 2-seed grid (phase 1 C and A, t = 1, 2; phase 2 C and A) whose
    cells' files are written here with seeded random numbers, as the entry
    scripts and analyze_kernels.py lay them out."""
    return make_synthetic(tmp_path, order_replicate=False)


@pytest.fixture
def synthetic_replicate(tmp_path):
    """The synthetic grid with phase1.order_replicate: the runs C′ of each
    seed, their kernels in the seed's analysis."""
    return make_synthetic(tmp_path, order_replicate=True)


def make_synthetic(tmp_path, order_replicate):
    """The synthetic grid's config and cells' files: (grid, {cell id: its
    record}, {seed: (kernels.csv rows, {frozenset of two (run, t):
    distance})} with 'seeds': {(loader, t): distance between seeds} and
    'cross': {frozenset of two (seed, run, t): distance} of the analysis
    across seeds, tmp_path). A run is its loader, or grid.REORDERED."""
    root = tmp_path / "root"
    config = tiny_config(
        root,
        "/nowhere",
        name="synth",
        seeds=[0, 1],
        phase1={
            "loaders": ["C", "A"],
            "epochs": 2,
            "times": [1, 2],
            "order_replicate": order_replicate,
        },
        kernels={"sizes": [20], "class_index": 0},
        features={"times": [2], "class_index": 0, "n_images": 2},
    )
    the_grid = grid.Grid.load(write_config(tmp_path / "synth.toml", config))
    rng = np.random.default_rng(0)
    files = _synthetic_cells(the_grid, rng)
    kernels_of = _synthetic_analyses(the_grid, rng)
    return the_grid, files, kernels_of, tmp_path


def _run_name(cell):
    return grid.REORDERED if grid.is_reordered(cell) else cell.keys["phase1"]


def _synthetic_cells(the_grid, rng):
    """Writes the cells' files but the analyses'; returns their records."""
    files = {}
    for cell in the_grid.cells():
        if cell.stage == "phase1":
            record = {"standard": _accuracies(rng), "linear": None}
            atomic.atomic_write_json(cell.outputs[0], record)
            files[cell.id] = record
        elif cell.stage == "phase2":
            record = {
                "standard": None,
                "linear": _accuracies(rng),
                "standard_second": False,
            }
            atomic.atomic_write_json(cell.outputs[0], record)
            atomic.atomic_write_json(
                os.path.join(cell.keys["save_path"], "config.json"),
                {
                    "flags": vars(run_exp.parse_args(cell.args)),
                    "test_images": 100,
                    "environment": {"jax": "0.5.3", "device_kind": "cpu"},
                },
            )
            files[cell.id] = record
        elif cell.stage == "eval":
            record = {
                "flags": vars(eval_and_make_adv.parse_args(cell.args)),
                "attack": {"iters": 5},
                "sources": [
                    {
                        "acc_clean": float(rng.uniform()),
                        "acc_dirty": float(rng.uniform()),
                        "n": 100,
                    }
                ],
            }
            atomic.atomic_write_json(cell.outputs[0], record)
            files[cell.id] = record
        elif cell.stage == "features":
            atomic.atomic_pickle(
                cell.outputs[0],
                {"pos_images": rng.uniform(size=(2, 28, 28, 1))},
            )
    return files


def _synthetic_analyses(the_grid, rng):
    """Writes the analyses' files (kernels_of of make_synthetic)."""
    kernels_of = {}
    all_paths = {}
    for seed in (0, 1):
        runs = [
            c
            for c in the_grid.cells()
            if c.stage == "phase1" and c.keys["seed"] == seed
        ]
        rows, paths = [], {}
        for run, t in itertools.product(runs, (1.0, 2.0)):
            path = os.path.join(
                the_grid.kernel_dir(run, t), "saved_kernel_class_0_20.pkl"
            )
            paths[(_run_name(run), t)] = path
            all_paths[(seed, _run_name(run), t)] = path
            row = {"path": path, "epoch": t, "class_index": 0, "n": 20}
            # analyze_kernels.py's time to settle of the run (per class).
            row["settle_t"] = {"C": 2.0, "A": 1.0}[run.keys["phase1"]]
            row.update({m: float(rng.uniform()) for m in MEASURES})
            rows.append(row)
        out_dir = the_grid.analysis_dir(seed)
        os.makedirs(out_dir)
        pd.DataFrame(rows).to_csv(
            os.path.join(out_dir, "kernels.csv"), index=False
        )
        distances = _write_pairs(
            paths, list(paths), rng, os.path.join(out_dir, "pairwise.csv")
        )
        atomic.atomic_write_json(os.path.join(out_dir, "analysis.json"), {})
        kernels_of[seed] = (rows, distances)
    # The analysis across seeds: the same loader and t of seeds 0 and 1.
    seed_rows, between_seeds = [], {}
    for loader, t in itertools.product("CA", (1.0, 2.0)):
        d = float(rng.uniform())
        between_seeds[(loader, t)] = d
        seed_rows.append(
            {
                "a": all_paths[(0, loader, t)],
                "b": all_paths[(1, loader, t)],
                "distance": d,
            }
        )
    out_dir = the_grid.seeds_analysis_dir()
    os.makedirs(out_dir)
    pd.DataFrame(seed_rows).to_csv(
        os.path.join(out_dir, "replicates.csv"), index=False
    )
    # Its other outputs, analysis.json last: the analysis is finished.
    for name in ("kernels.csv", "pairwise.csv"):
        atomic.atomic_write_text(os.path.join(out_dir, name), "\n")
    atomic.atomic_write_json(os.path.join(out_dir, "analysis.json"), {})
    kernels_of["seeds"] = between_seeds
    # Its pairwise.csv: every pair of its kernels (not C′'s), each with
    # another number than the per-seed analyses' and replicates.csv's for
    # the same pair, to show which file a distance is read from.
    runs = [k for k in all_paths if k[1] != grid.REORDERED]
    kernels_of["cross"] = _write_pairs(
        all_paths, runs, rng, os.path.join(out_dir, "pairwise.csv")
    )
    return kernels_of


def _write_pairs(paths, keys, rng, path):
    """A pairwise.csv at `path` of every pair of `keys` (their files
    paths[key]) at random distances; returns {frozenset of two keys:
    distance}."""
    distances, rows = {}, []
    for a, b in itertools.combinations(keys, 2):
        d = float(rng.uniform())
        distances[frozenset((a, b))] = d
        rows.append({"a": paths[a], "b": paths[b], "distance": d})
    pd.DataFrame(rows).to_csv(path, index=False)
    return distances


def _accuracies(rng):
    return {k: float(rng.uniform()) for k in ("clean", "l2", "linf")}


def _aggregate(the_grid, tmp_path):
    results = tmp_path / "results"
    out = report.aggregate(
        the_grid, str(results), str(tmp_path / "R.md"), sweep.PARSERS
    )
    return out, results


def test_rows_hold_the_cells_numbers(synthetic):
    the_grid, files, kernels_of, tmp_path = synthetic
    out, results = _aggregate(the_grid, tmp_path)
    rows = pd.read_csv(results / "synth.csv")
    for column in ("seed", "phase1", "t", "phase2", "dynamics"):
        assert column in rows.columns
    assert {"clean", "linf", "l2"} <= set(rows.columns)
    phase2 = [c for c in the_grid.cells() if c.stage == "phase2"]
    assert len(rows) == len(phase2) == 16
    for cell in phase2:
        row = rows[rows["cell"] == cell.id].iloc[0]
        assert (row["seed"], row["phase1"], row["t"], row["phase2"]) == (
            cell.keys["seed"],
            cell.keys["phase1"],
            cell.keys["t"],
            cell.keys["phase2"],
        )
        for name in ("clean", "linf", "l2"):
            assert row[name] == files[cell.id]["linear"][name]
            phase1 = files[cell.deps[0]]["standard"][name]
            assert row[f"phase1_{name}"] == phase1
        source = files[cell.id + "/eval"]["sources"][0]
        assert row["eval_clean"] == source["acc_clean"]
        assert row["eval_linf"] == source["acc_dirty"]
        # Kernel measures of θ(t) of this row's phase-1 run.
        kernel_rows, _ = kernels_of[cell.keys["seed"]]
        (kernel,) = [
            k
            for k in kernel_rows
            if k["epoch"] == cell.keys["t"]
            and f"phase1_{cell.keys['phase1']}/" in k["path"]
        ]
        for measure in MEASURES:
            assert row[f"kernel_{measure}"] == pytest.approx(kernel[measure])
    assert out["missing"] == []


def test_summary_is_mean_and_std_over_seeds(synthetic):
    the_grid, _, _, tmp_path = synthetic
    _, results = _aggregate(the_grid, tmp_path)
    rows = pd.read_csv(results / "synth.csv")
    summary = pd.read_csv(results / "synth_summary.csv")
    assert len(summary) == 8 and (summary["n_seeds"] == 2).all()
    for _, line in summary.iterrows():
        group = rows[
            (rows["phase1"] == line["phase1"])
            & (rows["t"] == line["t"])
            & (rows["phase2"] == line["phase2"])
        ]
        for name in ("clean", "linf", "l2", "eval_linf"):
            values = group[name].to_numpy()
            assert line[f"{name}_mean"] == pytest.approx(np.mean(values))
            assert line[f"{name}_std"] == pytest.approx(np.std(values, ddof=1))


def test_kernel_distances_and_velocities(synthetic):
    the_grid, _, kernels_of, tmp_path = synthetic
    _, results = _aggregate(the_grid, tmp_path)
    table = pd.read_csv(results / "synth_kernels.csv")
    assert len(table) == 8
    # The run's time to settle comes from analyze_kernels.py's kernels.csv.
    settle = table.groupby("phase1")["settle_t"].unique()
    assert list(settle["C"]) == [2.0] and list(settle["A"]) == [1.0]
    for seed in (0, 1):
        _, d = kernels_of[seed]
        for loader, other in (("C", "A"), ("A", "C")):
            at = {
                t: table[
                    (table["seed"] == seed)
                    & (table["phase1"] == loader)
                    & (table["t"] == t)
                ].iloc[0]
                for t in (1.0, 2.0)
            }
            step = d[frozenset(((loader, 1.0), (loader, 2.0)))]
            assert math.isnan(at[1.0]["velocity"])
            assert at[2.0]["velocity"] == pytest.approx(step / (2.0 - 1.0))
            assert at[1.0]["distance_to_final"] == pytest.approx(step)
            assert at[2.0]["distance_to_final"] == 0.0
            for t in (1.0, 2.0):
                between = d[frozenset(((loader, t), (other, t)))]
                assert at[t]["distance_between"] == pytest.approx(between)
                # Two seeds: the one other seed's distance is the mean.
                seeds = kernels_of["seeds"][(loader, t)]
                assert at[t]["distance_between_seeds"] == pytest.approx(seeds)
                assert at[t][f"distance_to_seed_{1 - seed}"] == pytest.approx(
                    seeds
                )
                assert math.isnan(at[t][f"distance_to_seed_{seed}"])


def test_like_with_like_columns_of_the_aggregate(synthetic_replicate):
    """The kernel table gains the distances across seeds between the
    compared runs (from the analysis across seeds' pairwise.csv) and to
    the order replicate C′ (from the seed's pairwise.csv), as columns after
    the others; C′'s kernels give no rows, and {name}.csv no columns."""
    the_grid, _, kernels_of, tmp_path = synthetic_replicate
    out, results = _aggregate(the_grid, tmp_path)
    assert out["missing"] == []
    table = pd.read_csv(results / "synth_kernels.csv")
    assert len(table) == 8 and set(table["phase1"]) == {"C", "A"}
    assert list(table.columns[-3:]) == [
        "cross_distance_to_seed_0",
        "cross_distance_to_seed_1",
        "distance_to_reordered",
    ]
    for row in table.itertuples():
        seed, loader, t, other = row.seed, row.phase1, row.t, 1 - row.seed
        partner = "A" if loader == "C" else "C"
        key = frozenset(((seed, loader, t), (other, partner, t)))
        cross = getattr(row, f"cross_distance_to_seed_{other}")
        assert cross == pytest.approx(kernels_of["cross"][key])
        assert math.isnan(getattr(row, f"cross_distance_to_seed_{seed}"))
        # The seed baseline is still replicates.csv's.
        baseline = getattr(row, f"distance_to_seed_{other}")
        assert baseline == pytest.approx(kernels_of["seeds"][(loader, t)])
        _, d = kernels_of[seed]
        if loader == "C":
            twin = frozenset((("C", t), (grid.REORDERED, t)))
            assert row.distance_to_reordered == pytest.approx(d[twin])
        else:
            assert math.isnan(row.distance_to_reordered)
    rows = pd.read_csv(results / "synth.csv")
    assert not [c for c in rows if "cross" in c or "reordered" in c]


def test_like_with_like_columns_need_the_analysis_across_seeds(synthetic):
    the_grid, _, _, tmp_path = synthetic
    out, results = _aggregate(the_grid, tmp_path)
    table = pd.read_csv(results / "synth_kernels.csv")
    assert "distance_to_reordered" not in table  # no replicate runs
    assert table["cross_distance_to_seed_0"].notna().any()
    os.remove(os.path.join(the_grid.seeds_analysis_dir(), "pairwise.csv"))
    out, results = _aggregate(the_grid, tmp_path)
    assert any(
        m.startswith("between_seeds/analysis: no pairwise.csv")
        for m in out["missing"]
    )
    table = pd.read_csv(results / "synth_kernels.csv")
    assert table["cross_distance_to_seed_0"].isna().all()


def _files(folder):
    """{path relative to folder: bytes} of every file under it."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_aggregate_only_kernels_rewrites_the_kernel_part_alone(
    synthetic_replicate,
):
    """After a whole aggregation, the kernels' analyses change (here one
    distance across seeds): --aggregate --only kernels rewrites the kernel
    table, its figure and the report's claim-1 cell; every other file and
    line stays byte for byte."""
    the_grid, _, kernels_of, tmp_path = synthetic_replicate
    _, results = _aggregate(the_grid, tmp_path)
    before, report_before = _files(results), (tmp_path / "R.md").read_text()
    pairwise = os.path.join(the_grid.seeds_analysis_dir(), "pairwise.csv")
    table = pd.read_csv(pairwise)
    cross = table["a"].str.contains("seed_0/phase1_C/") & table[
        "b"
    ].str.contains("seed_1/phase1_A/")
    table.loc[table.index[cross][0], "distance"] = 0.123456
    table.to_csv(pairwise, index=False)
    status, err = _sweep_main(
        the_grid.path, "--aggregate", tmp_path, "--only", "kernels"
    )
    assert status == 0, err
    after = _files(results)
    changed = sorted(k for k in after if after[k] != before.get(k))
    assert changed == ["synth/kernel_dynamics.png", "synth_kernels.csv"]
    assert set(after) == set(before)
    kernels = pd.read_csv(results / "synth_kernels.csv")
    assert 0.123456 in kernels.filter(like="cross_distance").to_numpy()
    lines_before = report_before.splitlines()
    lines_after = (tmp_path / "R.md").read_text().splitlines()
    assert len(lines_before) == len(lines_after)
    differ = [
        i
        for i, (a, b) in enumerate(zip(lines_before, lines_after, strict=True))
        if a != b
    ]
    assert len(differ) == 1
    cells = lines_after[differ[0]].split(" | ")
    assert cells[0] == "| 1" and "**like with like**" in cells[-1]
    assert lines_before[differ[0]].split(" | ")[:-1] == cells[:-1]


def test_aggregate_only_kernels_refuses_what_is_ambiguous(synthetic):
    the_grid, _, _, tmp_path = synthetic
    # No earlier aggregation of the preset in --results_dir.
    status, err = _sweep_main(
        the_grid.path, "--aggregate", tmp_path, "--only", "kernels"
    )
    assert status == 2
    assert_one_line_error(err, "has no synth.csv", "without --only")
    assert not (tmp_path / "results").exists()
    _, results = _aggregate(the_grid, tmp_path)
    before = _files(results), (tmp_path / "R.md").read_bytes()
    # Kernels of other seeds than the aggregated rows'.
    rows = pd.read_csv(results / "synth.csv")
    rows[rows["seed"] == 0].to_csv(results / "synth.csv", index=False)
    status, err = _sweep_main(
        the_grid.path, "--aggregate", tmp_path, "--only", "kernels"
    )
    assert status == 2
    assert_one_line_error(err, "of seeds [0, 1]", "of seeds [0]")
    (results / "synth.csv").write_bytes(before[0]["synth.csv"])
    # A kernel analysis missing: no half-refreshed table.
    os.remove(os.path.join(the_grid.analysis_dir(1), "pairwise.csv"))
    status, err = _sweep_main(
        the_grid.path, "--aggregate", tmp_path, "--only", "kernels"
    )
    assert status == 2
    assert_one_line_error(err, "incomplete", "seed_1/analysis: no pairwise")
    assert (_files(results), (tmp_path / "R.md").read_bytes()) == before


def test_figures_and_report_written(synthetic):
    the_grid, _, _, tmp_path = synthetic
    out, results = _aggregate(the_grid, tmp_path)
    for name in (
        "accuracy_vs_t_centered.png",
        "kernel_dynamics.png",
        "features.png",
    ):
        path = results / "synth" / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
    text = (tmp_path / "R.md").read_text()
    rows = pd.read_csv(results / "synth.csv")
    two = verdicts.claim_two(rows)
    assert two["verdict"] in ("supported", "not supported")
    assert f"{two['verdict']}: PGD-L∞ at t = 2" in text
    assert "## synth" in text and "16 of 16 phase-2 cells" in text
    assert f"- {verdicts.LIKE_WITH_LIKE_RULE} " in text
    assert "- **Claim 1** (same-seed rule) holds when" in text
    for preset in report.PRESETS:
        assert f"## {preset}" in text


def test_report_keeps_committed_presets(synthetic):
    """Aggregating into another results folder: the committed presets'
    columns and sections are still there, read from docs/results/, and
    their figures are linked there."""
    the_grid, _, _, tmp_path = synthetic
    _aggregate(the_grid, tmp_path)
    text = (tmp_path / "R.md").read_text()
    header = next(line for line in text.splitlines() if "| # |" in line)
    assert header.endswith(
        "| cpu-small | cpu-resnet | gpu-fmnist | paper-cifar10 | synth |"
    )
    claim_two = next(line for line in text.splitlines() if "| 2 |" in line)
    cpu_small = claim_two.split(" | ")[3]
    assert cpu_small != "not run" and "PGD-L∞" in cpu_small
    committed = os.path.relpath(
        os.path.join(report.COMMITTED_RESULTS, "cpu-small"), tmp_path
    )
    assert f"]({committed}/kernel_dynamics.png)" in text
    assert "Committed results, read from `docs/results`" in text
    # The new grid's own section reads its own folder.
    assert "](results/synth/kernel_dynamics.png)" in text


def test_missing_analysis_is_reported_not_fatal(synthetic):
    the_grid, _, _, tmp_path = synthetic
    os.remove(os.path.join(the_grid.analysis_dir(1), "pairwise.csv"))
    out, results = _aggregate(the_grid, tmp_path)
    assert any(
        m.startswith("seed_1/analysis: no pairwise.csv")
        for m in out["missing"]
    )
    rows = pd.read_csv(results / "synth.csv")
    assert rows[rows["seed"] == 0]["kernel_top10_mass"].notna().all()
    assert rows[rows["seed"] == 1]["kernel_top10_mass"].isna().all()
    table = pd.read_csv(results / "synth_kernels.csv")
    assert set(table["seed"]) == {0}


def test_nothing_to_aggregate(synthetic):
    """No cell has run under the root: refused, nothing written."""
    the_grid, _, _, tmp_path = synthetic
    empty = grid.Grid(the_grid.path, the_grid.config, str(tmp_path / "none"))
    with pytest.raises(utils.UserError, match="no phase-2 cell of synth"):
        _aggregate(empty, tmp_path)
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "R.md").exists()


def test_report_without_results(tmp_path):
    """The report of presets not run yet says so, and gives the paper
    grid's commands and cost; committed presets come from docs/results."""
    text = report.write_report(str(tmp_path), str(tmp_path / "R.md"))
    assert "| not run | not run |" in text
    assert "**Not run yet**: no `gpu-fmnist.csv`" in text
    committed = pd.read_csv(
        os.path.join(report.COMMITTED_RESULTS, "cpu-small.csv")
    )
    assert f"{len(committed)} of " in text
    assert "Committed results, read from `docs/results`" in text
    paper = grid.Grid.load(
        os.path.join(grid.ROOT, "configs/paper-cifar10.toml")
    )
    cells = paper.cells()
    cost = estimate.estimate(paper, cells)
    assert f"prints its {len(cells)} commands" in text
    assert f"**{cost['total']:.1f}**" in text
    listed = (tmp_path / "paper-cifar10_commands.txt").read_text()
    assert listed.splitlines()[1::2] == [c.command("python") for c in cells]


# --------------------------------------------------------------------------
# Claim 1's cell of the report, on 3×3 kernels written here
# --------------------------------------------------------------------------


def test_claim_one_cell_gives_both_rules_labelled():
    table, _ = hand_kernels(0.25, 0.1, A_FIRST)
    cell = report.claim_one_cell(table)
    same, like = cell.split(" <br><br> ")
    one = verdicts.claim_one(table)
    assert same.startswith(
        f"**same-seed rule**: {one['verdict']}: at t = 2, benign vs. "
    )
    t, ratio = one["farthest"]
    assert same.endswith(
        "farthest apart in units of the seed baseline at "
        f"t = {t:g} (×{ratio:.1f}, mean over pairs)"
    )
    like_one = verdicts.claim_one_like_with_like(table)
    pair = like_one["across"][(1, 0)]
    assert like.startswith("**like with like**: supported: at t = 2, (a) ")
    assert (
        f"C s1 vs. A s0: {pair['distance']:.3f} vs. {pair['baseline']:.3f} "
        f"(×{pair['ratio']:.2f})"  # two decimals: 1.98 is not 2.0
    ) in like
    seed = like_one["same_start"][2]
    assert f"s2: {seed['distance']:.3f} vs. {seed['baseline']:.3f}" in like
    assert "t settled, adversarial vs. benign run: s0: 1 vs. 2" in like
    (ta, ra), (tb, rb) = (
        like_one["farthest"][k] for k in like_one["farthest"]
    )
    assert (
        f"farthest apart in units of the baseline: (a) t = {ta:g} "
        f"(×{ra:.1f}, mean over pairs), (b) t = {tb:g} (×{rb:.1f}, mean over "
        "seeds)"
    ) in like
    assert "|" not in cell and "\n" not in cell
    alone = report.claim_one_cell(hand_kernels(0.25, 0.1, A_FIRST, False)[0])
    assert "(b) not measured" in alone and "decided on (a) alone" in alone


# --------------------------------------------------------------------------
# Promises of sweep.py (docs/sweep.md, "Promises of sweep.py")
# --------------------------------------------------------------------------


def _cut(path):
    """The file at `path` cut in the middle of a line."""
    text = open(path).read()
    half = len(text) // 2
    if text[half - 1] == "\n":
        half -= 2
    with open(path, "w") as f:
        f.write(text[:half])


def _phase2(the_grid, index=0):
    return [c for c in the_grid.cells() if c.stage == "phase2"][index]


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


DAMAGES = {
    "truncated results.json": (
        lambda g: _phase2(g).outputs[0],
        _cut,
        "not valid JSON",
    ),
    "results.json of []": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _write(p, "[]"),
        "a list, not a JSON object",
    ),
    "results.json without results": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _write(p, '{"standard": null}'),
        "no 'linear'",
    ),
    "results.json with a word for a number": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _write(p, '{"linear": {"clean": "high"}}'),
        "linear.clean is 'high', not a number",
    ),
    "phase-1 results.json of a number": (
        lambda g: [c for c in g.cells() if c.stage == "phase1"][0].outputs[0],
        lambda p: _write(p, "3"),
        "int, not a JSON object",
    ),
    "truncated eval json": (
        lambda g: g.eval_results(_phase2(g)),
        _cut,
        "not valid JSON",
    ),
    "eval json without sources": (
        lambda g: g.eval_results(_phase2(g)),
        lambda p: _write(p, '{"sources": [], "flags": {}}'),
        "no 'sources' rows",
    ),
    "config.json a folder": (
        lambda g: os.path.join(_phase2(g).keys["save_path"], "config.json"),
        lambda p: (os.remove(p), os.mkdir(p)),
        "a folder, not a file",
    ),
    "garbage kernels.csv": (
        lambda g: os.path.join(g.analysis_dir(0), "kernels.csv"),
        lambda p: open(p, "wb").write(b'\x00\xff"garbage\nx\n'),
        "not a CSV table",
    ),
    "truncated kernels.csv": (
        lambda g: os.path.join(g.analysis_dir(0), "kernels.csv"),
        _cut,
        "cut short: its last line has no line break",
    ),
    "kernels.csv without paths": (
        lambda g: os.path.join(g.analysis_dir(1), "kernels.csv"),
        lambda p: _write(p, "epoch,n\n1,20\n"),
        "no column 'path'",
    ),
    "garbage pairwise.csv": (
        lambda g: os.path.join(g.analysis_dir(1), "pairwise.csv"),
        lambda p: _write(p, "a,b,distance\nx,y,far\n"),
        "distance 'far' in row 1 is not a number",
    ),
    "empty pairwise.csv": (
        lambda g: os.path.join(g.analysis_dir(1), "pairwise.csv"),
        lambda p: _write(p, ""),
        "an empty file",
    ),
    "garbage replicates.csv": (
        lambda g: os.path.join(g.seeds_analysis_dir(), "replicates.csv"),
        lambda p: _write(p, "hello\nworld\n"),
        "no column 'a'",
    ),
}


def _cell_of(the_grid, path):
    """The id and folder of the cell whose file `path` is."""
    for cell in the_grid.cells():
        if cell.stage == "analysis":
            folder = os.path.dirname(cell.outputs[0])
        elif cell.run_exp:
            folder = cell.keys["save_path"]
        else:
            folder = os.path.dirname(cell.outputs[0])
        if os.path.dirname(path) == folder:
            return cell.id, folder
    raise AssertionError(path)


@pytest.mark.parametrize("case", list(DAMAGES))
def test_promise_damaged_cell_files_refused_by_aggregate(synthetic, case):
    """A cell's file that is there but is not what its script writes: one
    line naming the cell and the file and the fix, nothing written."""
    the_grid, _, _, tmp_path = synthetic
    where, damage, problem = DAMAGES[case]
    path = where(the_grid)
    damage(path)
    cell_id, folder = _cell_of(the_grid, path)
    with pytest.raises(utils.UserError) as info:
        _aggregate(the_grid, tmp_path)
    assert_one_line_error(
        f"error: {info.value}\n",
        f"{cell_id}: {path} is damaged (",
        problem,
        f"remove {folder} and run the sweep again",
    )
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "R.md").exists()


def test_promise_damaged_cell_files_refused_by_aggregate_cli(synthetic):
    """The same through sweep.py: exit 2, one line."""
    the_grid, _, _, tmp_path = synthetic
    _cut(_phase2(the_grid).outputs[0])
    status, err = _sweep_main(the_grid.path, "--aggregate", tmp_path)
    assert status == 2
    assert_one_line_error(err, _phase2(the_grid).id, "results.json")
    assert not (tmp_path / "results").exists()


def test_promise_damaged_cell_files_incomplete_kernels_listed(synthetic):
    """kernels.csv cut at the end of a line has no row for some of the
    grid's kernels: listed among the missing, never silently ignored."""
    the_grid, _, _, tmp_path = synthetic
    path = os.path.join(the_grid.analysis_dir(0), "kernels.csv")
    lines = open(path).read().splitlines(keepends=True)
    _write(path, "".join(lines[:2]))  # the header and one kernel of four
    out, results = _aggregate(the_grid, tmp_path)
    (line,) = [m for m in out["missing"] if "kernels.csv has no row" in m]
    assert line.startswith("seed_0/analysis: kernels.csv has no row for 3")
    table = pd.read_csv(results / "synth_kernels.csv")
    assert len(table[table["seed"] == 0]) == 1


def _sweep_main(config, mode, tmp_path, *more):
    """sweep.py's main in this process; (exit status, stderr)."""
    import contextlib
    import io

    import cli
    import sweep

    err = io.StringIO()
    argv = [str(config), mode, *map(str, more)]
    if "--results_dir" not in more:
        argv += ["--results_dir", str(tmp_path / "results")]
    if "--report" not in more:
        argv += ["--report", str(tmp_path / "R.md")]
    with contextlib.redirect_stderr(err):
        try:
            status = cli.run_cli(lambda: sweep.main(argv))
        except SystemExit as exit_:
            status = exit_.code
    return status, err.getvalue()


def _unwritable_dir():
    """A folder that refuses new files even to root (/sys), or skip."""
    try:
        report._check_folder("x", "/sys/probe")
    except utils.UserError:
        return "/sys"
    pytest.skip("/sys is writable here")


OUTPUTS = {
    "--report a folder": (
        lambda t: ["--report", t / "folder"],
        "--report",
        "a folder, not a file",
    ),
    "--report in a read-only place": (
        lambda t: ["--report", os.path.join(_unwritable_dir(), "R.md")],
        "--report",
        "is not writable",
    ),
    "--report under a file": (
        lambda t: ["--report", t / "a_file" / "R.md"],
        "--report",
        "is a file, not a folder",
    ),
    "--results_dir in a read-only place": (
        lambda t: ["--results_dir", os.path.join(_unwritable_dir(), "r")],
        "--results_dir",
        "is not writable",
    ),
    "--results_dir a file": (
        lambda t: ["--results_dir", t / "a_file"],
        "--results_dir",
        "is a file, not a folder",
    ),
    "a CSV path that is a folder": (
        lambda t: ["--results_dir", t / "held"],
        "--results_dir",
        "synth_summary.csv is a folder, not a file",
    ),
    "the figure folder a file": (
        lambda t: ["--results_dir", t / "held2"],
        "--results_dir",
        "synth is a file, not a folder",
    ),
}


@pytest.mark.parametrize("case", list(OUTPUTS))
def test_promise_aggregate_checks_every_output_first(synthetic, case):
    """An output --aggregate could not write is refused before any CSV,
    figure or report is written (and, by sweep.py, before any cell
    runs)."""
    the_grid, _, _, tmp_path = synthetic
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    (tmp_path / "held" / "synth_summary.csv").mkdir(parents=True)
    (tmp_path / "held2").mkdir()
    (tmp_path / "held2" / "synth").write_text("")
    flags, flag, problem = OUTPUTS[case]
    argv = flags(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*") if "root" not in p.parts)
    status, err = _sweep_main(the_grid.path, "--aggregate", tmp_path, *argv)
    assert status == 2
    assert_one_line_error(err, f"{flag} {argv[1]}", problem)
    after = sorted(p for p in tmp_path.rglob("*") if "root" not in p.parts)
    assert after == before
    # In the same order when report.aggregate is called itself.
    results = tmp_path / "results"
    report_path = tmp_path / "R.md"
    chosen = {"--results_dir": results, "--report": report_path}
    chosen[argv[0]] = argv[1]
    with pytest.raises(utils.UserError, match=problem):
        report.aggregate(
            the_grid,
            str(chosen["--results_dir"]),
            str(chosen["--report"]),
            sweep.PARSERS,
        )
    after = sorted(p for p in tmp_path.rglob("*") if "root" not in p.parts)
    assert after == before


def _outputs(results):
    return sorted(
        str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()
    )


def test_promise_aggregate_replaces_a_presets_outputs_whole(
    synthetic, monkeypatch
):
    """A second aggregation into the same folder replaces the preset's
    CSVs and figures as a whole: what the new run does not make (its
    kernel table, kernel and feature figures, a stray figure) is gone, and
    the report does not read it. A failure while making the outputs
    leaves the earlier ones as they were."""
    the_grid, _, _, tmp_path = synthetic
    out, results = _aggregate(the_grid, tmp_path)
    first = _outputs(results)
    assert "synth_kernels.csv" in first
    assert "synth/kernel_dynamics.png" in first
    assert "synth/features.png" in first
    (results / "synth" / "from_an_older_version.png").write_bytes(
        PNG_SIGNATURE
    )
    (results / "synth" / "notes.txt").write_text("mine")
    # A failure half-way: nothing of the earlier outputs changes.
    contents = {p: (results / p).read_bytes() for p in _outputs(results)}

    def fail(*_):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(report_figures, "plot_features", fail)
        with pytest.raises(OSError):
            _aggregate(the_grid, tmp_path)
    assert {p: (results / p).read_bytes() for p in _outputs(results)} == (
        contents
    )
    assert not [p for p in os.listdir(results) if p.startswith(".")]
    # The kernels and feature images gone: their outputs go too.
    for seed in (0, 1):
        for name in grid.ANALYSIS_FILES:
            os.remove(os.path.join(the_grid.analysis_dir(seed), name))
    for cell in the_grid.cells():
        if cell.stage == "features":
            for path in cell.outputs:
                if os.path.exists(path):
                    os.remove(path)
    out, results = _aggregate(the_grid, tmp_path)
    assert _outputs(results) == [
        "paper-cifar10_commands.txt",
        "synth.csv",
        "synth/accuracy_vs_t_centered.png",
        "synth/aggregated_from.json",
        "synth/notes.txt",
        "synth_summary.csv",
    ]
    text = (tmp_path / "R.md").read_text()
    section = text[text.index("## synth") :]
    assert "kernel_dynamics.png" not in section
    assert "Kernel measures: missing" in section
    assert not [p for p in os.listdir(results) if p.startswith(".")]
    # One aggregation at a time in a results folder.
    outputs = {p: (results / p).read_bytes() for p in _outputs(results)}
    with atomic.FolderLock(str(results)):
        with pytest.raises(utils.UserError, match="in use by another run"):
            _aggregate(the_grid, tmp_path)
    assert {p: (results / p).read_bytes() for p in _outputs(results)} == (
        outputs
    )


def _other_eps(the_grid, tmp_path, eps=4.0):
    """The synthetic grid's config with another attack.eps, on its root."""
    text = open(the_grid.path).read().replace("eps = 8.0", f"eps = {eps}")
    path = tmp_path / "other.toml"
    path.write_text(text)
    return grid.Grid.load(str(path), the_grid.root)


@pytest.mark.medium
def test_promise_aggregate_refuses_cells_of_other_settings(synthetic, capsys):
    """--aggregate --output_root R with a config whose eps is not that of
    R's cells: refused from each cell's recorded flags (config.json), and
    from R's sweep.json as --local refuses it; --dry_run does not call
    those cells finished."""
    import sweep

    the_grid, _, _, tmp_path = synthetic
    other = _other_eps(the_grid, tmp_path)
    phase2 = _phase2(the_grid)
    with pytest.raises(utils.UserError) as info:
        _aggregate(other, tmp_path)
    assert_one_line_error(
        f"error: {info.value}\n",
        f"holds cell {phase2.id} made with --eps 8.0, not 4.0",
        os.path.join(phase2.keys["save_path"], "config.json"),
        "restore attack.eps",
    )
    assert not (tmp_path / "results").exists()
    status, err = _sweep_main(
        other.path, "--aggregate", tmp_path, "--output_root", the_grid.root
    )
    assert status == 2 and "made with --eps 8.0, not 4.0" in err
    # --local refuses the same cells before running any.
    status, err = _sweep_main(
        other.path, "--local", tmp_path, "1", "--output_root", the_grid.root
    )
    assert status == 2 and "made with --eps 8.0, not 4.0" in err
    # With R's sweep.json: the words of --local's refusal.
    the_grid.write_record()
    status, err = _sweep_main(
        other.path, "--aggregate", tmp_path, "--output_root", the_grid.root
    )
    assert status == 2
    assert_one_line_error(
        err, "holds a sweep made with attack.eps = 8.0, not 4.0"
    )
    assert not (tmp_path / "results").exists()
    # The dry run: finished phase-2 runs (train_state.pkl done) of eps 8
    # are finished for the grid of eps 8, not for that of eps 4.
    phase2_cells = [c for c in the_grid.cells() if c.stage == "phase2"]
    for cell in phase2_cells:
        state = os.path.join(cell.keys["save_path"], "train_state.pkl")
        atomic.atomic_pickle(state, {"stage": "done"})
    capsys.readouterr()
    sweep.dry_run(the_grid, the_grid.cells())
    lines = capsys.readouterr().out.splitlines()
    for cell in phase2_cells:
        assert any(
            line.startswith(f"# {cell.id} [phase2, finished;")
            for line in lines
        )
    sweep.dry_run(other, other.cells())
    lines = capsys.readouterr().out.splitlines()
    for cell in phase2_cells:
        (line,) = [x for x in lines if x.startswith(f"# {cell.id} [phase2")]
        assert "finished" not in line
        assert "made with other flags: --eps 8.0, not 4.0" in line
    # The same grid aggregates them.
    out, _ = _aggregate(the_grid, tmp_path)
    assert len(out["rows"]) == len(phase2_cells)


# --------------------------------------------------------------------------
# Issue 30: aggregates in range, finished, and from their own grid
# --------------------------------------------------------------------------


def _watched(tmp_path):
    """The files --aggregate may write (results, report), before/after."""
    return files_snapshot(tmp_path / "results"), (
        (tmp_path / "R.md").read_bytes()
        if (tmp_path / "R.md").exists()
        else None
    )


def test_item11_another_grid_under_a_presets_name_is_refused(
    synthetic, capsys
):
    """A grid named like one whose results are there, made from another
    config or output root, is refused before anything is written (the
    earlier CSVs, figures and report as they were); --replace_results
    replaces them, and the outputs record their new source. A tiny copy
    named cpu-small is refused over the committed results."""
    the_grid, _, _, tmp_path = synthetic
    _aggregate(the_grid, tmp_path)
    recorded = json.loads(
        (tmp_path / "results" / "synth" / "aggregated_from.json").read_text()
    )
    assert recorded == report.source_record(the_grid)
    copy = tmp_path / "copy.toml"
    copy.write_text(open(the_grid.path).read())
    before = _watched(tmp_path)
    for config, more in (
        (copy, []),
        (the_grid.path, ["--output_root", tmp_path / "elsewhere"]),
    ):
        status, err = _sweep_main(config, "--aggregate", tmp_path, *more)
        assert status == 2
        assert_one_line_error(
            err, "results of synth from", "--replace_results"
        )
        assert _watched(tmp_path) == before
    status, err = _sweep_main(
        copy, "--aggregate", tmp_path, "--replace_results"
    )
    assert status == 0, err
    recorded = json.loads(
        (tmp_path / "results" / "synth" / "aggregated_from.json").read_text()
    )
    assert recorded["config"] == str(copy)
    # The committed results record their grid: a copy named cpu-small is
    # refused over them (here over a copy of docs/results).
    committed = tmp_path / "committed"
    shutil.copytree(report.COMMITTED_RESULTS, committed)
    before = files_snapshot(committed)
    tiny = grid.Grid.load(
        write_config(
            tmp_path / "tiny.toml",
            dict(tiny_config(tmp_path / "root", "/nowhere"), name="cpu-small"),
        )
    )
    status, err = _sweep_main(
        tiny.path, "--aggregate", tmp_path, "--results_dir", committed
    )
    assert status == 2
    assert_one_line_error(
        err, "results of cpu-small from config configs/cpu-small.toml"
    )
    assert files_snapshot(committed) == before
    preset = grid.Grid.load(
        os.path.join(grid.ROOT, "configs", "cpu-small.toml")
    )
    report.check_source(preset, report.COMMITTED_RESULTS)


IMPOSSIBLE = {
    "clean accuracy 17": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _set_json(p, ("linear", "clean"), 17.0),
        "linear.clean is 17, not in [0, 1]",
    ),
    "PGD accuracy -3": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _set_json(p, ("linear", "linf"), -3),
        "linear.linf is -3, not in [0, 1]",
    ),
    "a NaN accuracy": (
        lambda g: _phase2(g).outputs[0],
        lambda p: _set_json(p, ("linear", "l2"), float("nan")),
        "linear.l2 is nan, not finite",
    ),
    "evaluation accuracy 1.5": (
        lambda g: g.eval_results(_phase2(g)),
        lambda p: _set_json(p, ("sources", 0, "acc_dirty"), 1.5),
        "acc_dirty is 1.5, not in [0, 1]",
    ),
    "distance_to_first 7.5": (
        lambda g: os.path.join(g.analysis_dir(0), "kernels.csv"),
        lambda p: _set_csv(p, "distance_to_first", 7.5),
        "distance_to_first 7.5 in row 1 is not in [0, 1]",
    ),
    "effective_rank -40": (
        lambda g: os.path.join(g.analysis_dir(1), "kernels.csv"),
        lambda p: _set_csv(p, "effective_rank", -40),
        "effective_rank -40 in row 1 is not above 0",
    ),
    "an infinite lambda_max": (
        lambda g: os.path.join(g.analysis_dir(1), "kernels.csv"),
        lambda p: _set_csv(p, "lambda_max", float("inf")),
        "lambda_max inf in row 1 is not a finite number",
    ),
    "a pairwise distance 1.5": (
        lambda g: os.path.join(g.analysis_dir(0), "pairwise.csv"),
        lambda p: _set_csv(p, "distance", 1.5),
        "distance 1.5 in row 1 is not in [0, 1]",
    ),
}


def _set_json(path, keys, value):
    """The JSON file at `path` with record[k1][k2]... = value (NaN written
    as JSON's NaN)."""
    with open(path) as f:
        record = json.load(f)
    inner = record
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    _write(path, json.dumps(record))


def _set_csv(path, column, value):
    """The CSV table at `path` with `column` of its first row = value
    (the others 0.5 when the column is new)."""
    table = pd.read_csv(path)
    if column not in table:
        table[column] = 0.5
    table.loc[0, column] = value
    table.to_csv(path, index=False)


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_item12_impossible_numbers_refused_by_aggregate(synthetic, case):
    """An accuracy outside [0, 1] or not finite, a distance outside
    [0, 1], a rank not above 0, a measure that is not finite: no verdict
    is decided on them; one line naming the cell, the file and the value,
    exit status 2, nothing written."""
    the_grid, _, _, tmp_path = synthetic
    where, damage, problem = IMPOSSIBLE[case]
    path = where(the_grid)
    damage(path)
    cell_id, _ = _cell_of(the_grid, path)
    status, err = _sweep_main(the_grid.path, "--aggregate", tmp_path)
    assert status == 2
    assert_one_line_error(err, f"{cell_id}: {path} is damaged (", problem)
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "R.md").exists()


def test_item13_aggregate_takes_only_finished_analyses_and_respects_the_lock(
    synthetic,
):
    """An analysis without its analysis.json (analyze_kernels.py writes it
    last) is unfinished, as --dry_run says: listed as missing, its kernels
    left out. A root another sweep holds is refused in one line, nothing
    written."""
    the_grid, _, _, tmp_path = synthetic
    os.remove(os.path.join(the_grid.analysis_dir(0), "analysis.json"))
    cell = next(c for c in the_grid.cells() if c.id == "seed_0/analysis")
    assert grid.cell_status(cell) == grid.TODO
    root = grid.here(the_grid.root)
    with atomic.FolderLock(root, "--output_root"):
        status, err = _sweep_main(the_grid.path, "--aggregate", tmp_path)
    assert status == 2
    assert_one_line_error(err, root, "in use by another run", "--output_root")
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "R.md").exists()
    out, results = _aggregate(the_grid, tmp_path)
    assert any(
        line.startswith("seed_0/analysis: no analysis.json")
        and "unfinished" in line
        for line in out["missing"]
    )
    assert set(pd.read_csv(results / "synth_kernels.csv")["seed"]) == {1}


def test_the_committed_results_give_the_committed_report(tmp_path):
    """docs/REPORT.md is generated from docs/results/*.csv and the presets'
    configs, never by hand: regenerated from the committed CSVs with
    today's attack registry, verdicts and columns, it reads word for word
    as committed (its figure links aside: they are relative to where the
    report is written). So the stored results read as they did before
    the attacks had one registry (issue 31)."""
    path = tmp_path / "REPORT.md"
    text = report.write_report(report.COMMITTED_RESULTS, str(path))
    shown = os.path.relpath(report.COMMITTED_RESULTS, tmp_path)
    text = text.replace(f"]({shown}/", "](results/")
    committed = os.path.join(grid.ROOT, "docs", "REPORT.md")
    with open(committed, encoding="utf-8") as f:
        assert text == f.read()
