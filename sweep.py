"""Runs an experiment grid (a TOML file in configs/): prints its commands,
runs them here or on SLURM, estimates their device hours, aggregates their
results into docs/results/ and docs/REPORT.md. See docs/sweep.md."""

import argparse
import os
import sys
from collections.abc import Sequence

import cli
from cli import calculate_kernel, eval_and_make_adv, run_exp
from sweeper import grid, runners
from sweeper.estimate import estimate
from utils import UserError

# The parsers of the scripts whose cells record their flags (cli's): a
# cell's files are checked against its command parsed by its script's
# parser.
PARSERS: grid.Parsers = {
    "run_exp.py": run_exp.parse_args,
    "eval_and_make_adv.py": eval_and_make_adv.parse_args,
    "calculate_kernel.py": calculate_kernel.parse_args,
}


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """--output_root, and where --aggregate writes."""
    p.add_argument(
        "--output_root",
        default=None,
        help="use this output root instead of the config's",
    )
    p.add_argument(
        "--results_dir",
        default=os.path.join(grid.ROOT, "docs", "results"),
        help="where --aggregate writes (default docs/results)",
    )
    p.add_argument(
        "--report",
        default=os.path.join(grid.ROOT, "docs", "REPORT.md"),
        help="the report --aggregate regenerates (default docs/REPORT.md)",
    )
    p.add_argument(
        "--replace_results",
        action="store_true",
        help="with --aggregate: replace the results of the grid's name in "
        "RESULTS_DIR even when they came from another config or output "
        "root (without it, that is refused)",
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="grid file, e.g. configs/cpu-small.toml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry_run",
        action="store_true",
        help="print every cell's command (and its state); run nothing",
    )
    mode.add_argument(
        "--local",
        type=cli.nonnegative_int,
        nargs="?",
        const=0,
        default=None,
        metavar="N",
        help="run here, N cells at once (default: one per visible GPU, "
        "each pinned to it; 1 without GPUs)",
    )
    mode.add_argument(
        "--slurm",
        action="store_true",
        help="submit job arrays through submitit, then follow them",
    )
    mode.add_argument(
        "--estimate",
        action="store_true",
        help="device hours by stage, from the config's [throughput] (GPU-, "
        "CPU- or TPU-hours after its device)",
    )
    p.add_argument(
        "--aggregate",
        action="store_true",
        help="collect the results into RESULTS_DIR/{name}.csv, a summary, "
        "figures and the report (after running, with a run mode)",
    )
    _add_output_flags(p)
    p.add_argument(
        "--no_wait",
        action="store_true",
        help="with --slurm: submit and return",
    )
    p.add_argument(
        "--poll_s",
        type=cli.positive_float,
        default=10.0,
        help="with --slurm: seconds between looks at the queue (default 10)",
    )
    p.add_argument(
        "--only",
        choices=sorted(grid.ONLY),
        default=None,
        help="only a part of the grid: kernels = the phase-1, kernel and "
        "analysis cells (run, printed or estimated), and with --aggregate "
        "only {name}_kernels.csv, its figure and the report, the other "
        "results left as they are",
    )
    p.add_argument(
        "--no_progress", action="store_true", help="no progress bar"
    )
    args = p.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args: argparse.Namespace) -> None:
    """Refuses flags that do not make a command together."""
    modes = (args.dry_run, args.local is not None, args.slurm, args.estimate)
    if not any(modes) and not args.aggregate:
        raise UserError(
            "choose what to do: --dry_run, --local N, --slurm, --estimate "
            "or --aggregate (see --help)"
        )
    if args.no_wait and not args.slurm:
        raise UserError("--no_wait goes with --slurm")
    if args.replace_results and not args.aggregate:
        raise UserError("--replace_results goes with --aggregate")
    for flag in ("output_root", "results_dir", "report"):
        if getattr(args, flag) == "":
            raise UserError(f"--{flag} must not be empty: give a path")


def cell_state(cell: grid.Cell, other: set[str]) -> tuple[str, str]:
    """(a cell's status, its state as the dry run prints it); `other`: the
    ids of the cells found made with other flags so far (this one is added
    when it is, or when it was made from one of them)."""
    status = grid.cell_status(cell)
    states = {grid.DONE: "finished", grid.PARTIAL: "to resume"}
    state = states.get(status, "to run")
    if status != grid.TODO:
        # Its files may be another run's: not finished for this grid.
        try:
            mismatch = grid.flag_mismatch(cell, PARSERS)
        except UserError:
            state = f"damaged: {grid.flags_record(cell)[0]}"
        else:
            made_from = [dep for dep in cell.deps if dep in other]
            if mismatch:
                state = f"made with other flags: {mismatch}"
            elif made_from:
                state = f"made from cells of other flags: {made_from[0]}"
            if mismatch or made_from:
                other.add(cell.id)
    if not cell.available():
        state = f"{cell.script} not in this checkout"
    return status, state


def dry_run(the_grid: grid.Grid, cells: list) -> None:
    """Prints each cell's command, with its id, what it needs and its
    state, then the estimate where the config has [throughput]."""
    python = grid.python_display()
    print(f"# {len(cells)} cells of {the_grid.path}; run from {grid.ROOT}")
    other: set[str] = set()
    for cell in cells:
        status, state = cell_state(cell, other)
        needs = f"; needs {', '.join(cell.deps)}" if cell.deps else ""
        print(f"# {cell.id} [{cell.stage}, {state}{needs}]")
        print(cell.command(python, resume=status == grid.PARTIAL))
    if the_grid.config["throughput"] is not None:
        print_estimate(the_grid, cells)


def print_estimate(the_grid: grid.Grid, cells: list) -> None:
    cost = estimate(the_grid, cells)
    unit = cost["unit"]
    print(f"# estimate on {cost['device']} ({cost['source']})")
    for stage, (count, hours) in cost["stages"].items():
        print(f"#   {stage:<9} {count:>5} cells  {hours:9.1f} {unit}")
    seeds = len(the_grid.config[""]["seeds"])
    print(
        f"#   total {cost['total']:.1f} {unit} for {seeds} seed(s), "
        f"{cost['per_seed']:.1f} per seed"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    the_grid = grid.Grid.load(args.config, args.output_root)
    cells = the_grid.cells()
    if args.only:
        cells = the_grid.only_cells(cells, args.only)
    running = args.local is not None or args.slurm
    if running or args.dry_run or args.estimate:
        grid.check_output_root(args.config, the_grid.root)
    if args.aggregate:
        from sweeper import report

        # Before any cell runs: where the results will go can be written.
        if args.only:
            report.check_kernel_outputs(
                the_grid, args.results_dir, args.report, args.replace_results
            )
        else:
            report.check_outputs(
                the_grid, args.results_dir, args.report, args.replace_results
            )
    status = 0
    if args.dry_run:
        dry_run(the_grid, cells)
    elif args.estimate:
        print_estimate(the_grid, cells)
    elif running:
        the_grid.check_record()
        the_grid.check_cells(cells, PARSERS, strict=False)
        if args.slurm:
            runners.check_slurm()
        progress = not args.no_progress
        if args.slurm:
            outcomes = runners.run_slurm(
                the_grid,
                cells,
                wait=not args.no_wait,
                poll_s=args.poll_s,
                progress=progress,
            )
        else:
            workers = args.local or max(1, len(runners.visible_gpus()))
            outcomes = runners.run_local(
                the_grid, cells, workers, progress=progress
            )
        if any(
            o.status in (runners.FAILED, runners.BLOCKED) for o in outcomes
        ):
            status = 1
    if args.aggregate:
        gather = report.aggregate_kernels if args.only else report.aggregate
        gather(
            the_grid,
            args.results_dir,
            args.report,
            PARSERS,
            replace=args.replace_results,
        )
    return status


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
