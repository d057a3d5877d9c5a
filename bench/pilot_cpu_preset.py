"""Pilot for the CPU preset: claim 2's effect size and seed spread, and the
cost, of candidate settings of a grid.

For each candidate (the base config with some keys replaced) it runs, for
every seed, the phase-1 runs C and A and the centered phase-2 runs C and A
from both kernels at the largest t only (no kernels, no separate
evaluation), through the sweep's own runner, then prints and writes (JSON)
per candidate:
  gain per seed   PGD-L∞ after benign phase 2, adversarial kernel minus
                  benign kernel (claim 2's statistic);
  mean, sd        over seeds, and mean / sd;
  cell seconds    mean wall time of a phase-1 C, phase-1 A, phase-2 C and
                  phase-2 A cell (2 cells at once), from which the full
                  grid's time is projected with the measured seconds of the
                  other cells (--other_cell_s each).

    .venv/bin/python bench/pilot_cpu_preset.py --out /tmp/pilot \\
        --candidate train_size=4000,eps=16 --candidate train_size=4000,eps=32

Keys of a candidate: train_size, test_size (run_exp.py's evaluation),
eps, phase1_epochs, phase2_epochs, t (the largest t; default
phase1_epochs), train_pgd_iters, model, width, phase2_lr.
"""

import argparse
import copy
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeper import (  # noqa: E402
    grid,
    runners,
    schema,
)

# A candidate's key: its type and the (section, key) of the config it sets
# (t: the largest t, set below).
KEYS = {
    "train_size": (int, ("data", "train_size")),
    "test_size": (int, ("data", "test_size")),
    "eps": (float, ("attack", "eps")),
    "phase1_epochs": (int, ("phase1", "epochs")),
    "phase2_epochs": (int, ("phase2", "epochs")),
    "t": (float, None),
    "train_pgd_iters": (int, ("attack", "train_pgd_iters")),
    "model": (str, ("model", "name")),
    "width": (int, ("model", "width")),
    "phase2_lr": (float, ("phase2", "lr")),
}


def parse_candidate(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"error: unknown candidate key {key!r}")
        out[key] = KEYS[key][0](value)
    return out


def candidate_config(base: dict, cand: dict) -> dict:
    c = copy.deepcopy(base)
    for key, value in cand.items():
        where = KEYS[key][1]
        if where is not None:
            section, name = where
            c[section][name] = value
    t = cand.get("t", float(c["phase1"]["epochs"]))
    c["phase1"]["times"] = [t]
    c["phase2"]["times"] = [t]
    c["phase2"]["loaders"] = ["C", "A"]
    c["phase2"]["dynamics"] = ["centered"]
    c["phase1"].pop("order_replicate", None)
    for section in (
        "evaluation",
        "kernels",
        "analysis",
        "features",
        "robustness",
    ):
        c[section] = None
    return c


def label(cand: dict) -> str:
    return ",".join(
        f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}"
        for k, v in cand.items()
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/cpu-small.toml")
    p.add_argument("--out", required=True, help="output root of the runs")
    p.add_argument("--candidate", action="append", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None, help="append results here")
    p.add_argument("--t_count", type=int, default=6, help="t of the full grid")
    p.add_argument(
        "--other_cell_s",
        type=float,
        default=9.0,
        help="seconds of an eval, kernel, analysis or feature cell",
    )
    args = p.parse_args()
    base = schema.load_config(args.config)
    for text in args.candidate:
        row = pilot(args, base, parse_candidate(text))
        print_row(row)
        if args.json:
            done = []
            if os.path.exists(args.json):
                with open(args.json) as f:
                    done = json.load(f)
            with open(args.json, "w") as f:
                json.dump(done + [row], f, indent=1)


def pilot(args: argparse.Namespace, base: dict, cand: dict) -> dict:
    """Runs a candidate's grid; its gains, accuracies and cell times."""
    config = candidate_config(base, cand)
    config[""]["seeds"] = list(args.seeds)
    root = os.path.join(args.out, label(cand).replace("=", "_"))
    the_grid = grid.Grid(args.config, config, root)
    cells = the_grid.cells()
    runners.prepare_data(the_grid)
    started = time.time()
    outcomes = runners.run_local(
        the_grid,
        cells,
        args.workers,
        echo=lambda *_: None,
        progress=False,
    )
    wall = time.time() - started
    bad = [o for o in outcomes if o.status not in runners.GOOD]
    if bad:
        raise SystemExit(f"error: {bad[0].line()}")
    seconds = {o.cell_id: o.seconds for o in outcomes}
    linf, kinds = {}, {}
    for cell in cells:
        if cell.stage == "phase1":
            kind = f"phase1_{cell.keys['phase1']}"
        else:
            kind = f"phase2_{cell.keys['phase2']}"
            with open(grid.here(cell.outputs[0])) as f:
                record = json.load(f)
            key = (cell.keys["seed"], cell.keys["phase1"], cell.keys["phase2"])
            linf[key] = record["linear"]["linf"]
        kinds.setdefault(kind, []).append(seconds[cell.id])
    gains = [linf[(s, "A", "C")] - linf[(s, "C", "C")] for s in args.seeds]
    mean_s = {k: statistics.mean(v) for k, v in kinds.items()}
    seeds = len(args.seeds)
    # The full grid: phase-2 C and A from both kernels at every t, an
    # evaluation per phase-2 cell, and about 8 other cells per seed.
    phase2_cells = 2 * args.t_count
    cell_s = seeds * (
        mean_s["phase1_C"]
        + mean_s["phase1_A"]
        + phase2_cells * (mean_s["phase2_C"] + mean_s["phase2_A"])
        + (4 * args.t_count + 8) * args.other_cell_s
    )
    return dict(
        candidate=label(cand),
        gains=gains,
        gain_mean=statistics.mean(gains),
        gain_sd=statistics.stdev(gains),
        linf_A=[linf[(s, "A", "C")] for s in args.seeds],
        linf_C=[linf[(s, "C", "C")] for s in args.seeds],
        linf_AA=[linf[(s, "A", "A")] for s in args.seeds],
        cell_seconds=mean_s,
        pilot_wall_s=wall,
        projected_full_grid_min=cell_s / args.workers / 60,
    )


def print_row(row: dict) -> None:
    """One line of a candidate's pilot."""
    mean_s, gains = row["cell_seconds"], row["gains"]
    print(
        f"{row['candidate']}: gains "
        + " ".join(f"{g:+.3f}" for g in gains)
        + f"; mean {row['gain_mean']:+.3f} sd {row['gain_sd']:.3f}"
        + f" (mean/sd {row['gain_mean'] / max(row['gain_sd'], 1e-9):.1f})"
        + f"; linf A {statistics.mean(row['linf_A']):.3f} C "
        + f"{statistics.mean(row['linf_C']):.3f}; cells "
        + ", ".join(f"{k} {v:.1f}s" for k, v in mean_s.items())
        + f"; pilot {row['pilot_wall_s']:.0f}s; full grid ~"
        + f"{row['projected_full_grid_min']:.0f} min",
        flush=True,
    )


if __name__ == "__main__":
    main()
