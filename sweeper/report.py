"""The reproduction report: `sweep.py --aggregate` and docs/REPORT.md.

`aggregate(grid, results_dir, report_path, parsers)` (`sweep.py CONFIG
--aggregate`) reads every cell's files under the grid's output root
(`sweeper.collect`) and writes, in `results_dir`:
  {name}.csv          a row per phase-2 cell: seed, phase1, t, phase2,
                      dynamics, clean, linf, l2 (run_exp.py's evaluation),
                      eval_clean, eval_linf (eval_and_make_adv.py's), the
                      phase-1 run's final accuracies, the kernel measures of
                      θ(t), the settings, the device and JAX version;
  {name}_summary.csv  mean and standard deviation over seeds;
  {name}_kernels.csv  a row per kernel of analyze_kernels.py's kernels.csv,
                      with the distance to the run's last kernel, the
                      velocity, the distance between the runs, to the
                      same run of each other seed, to the other run of
                      each other seed, and to the order replicate C′;
  {name}_robustness.csv  a row per robustness cell (eval_and_make_adv.py
                      --attack): the attack, eps, clean and robust
                      accuracy, the broken_by counts; {name}.csv then
                      has an autoattack column;
  {name}/*.png        the figures (`sweeper.report_figures`);
then regenerates the report from every preset's committed CSVs, with the
verdicts of `sweeper.verdicts` (`python report.py` does only that). Files
that are absent are reported as missing, never guessed; a file that is
there but damaged is refused in one line naming its cell. Every output
path is checked before anything is written, and a preset's outputs
replace its earlier ones as a whole.
"""

import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

import cli
import utils
from store import atomic, layout
from sweeper import collect, grid, report_figures
from sweeper.collect import ACCURACIES, ACROSS_SEEDS, SAME_START
from sweeper.estimate import estimate
from sweeper.robustness_report import robustness_section
from sweeper.schema import LOADER_NAMES
from sweeper.verdicts import (
    LIKE_WITH_LIKE_RULE,
    PAPER_ROBUST,
    PAPER_TOLERANCE,
    ROBUSTNESS_GAIN,
    SEED_BASELINE_FACTOR,
    SETTLE_FRACTION,
    claim_one,
    claim_one_like_with_like,
    claim_three,
    claim_two,
    curve_attack,
    main_dynamics,
    stats,
)

PRESETS = ("cpu-small", "cpu-resnet", "gpu-fmnist", "paper-cifar10")
COMMITTED_RESULTS = os.path.join(grid.ROOT, "docs", "results")
# The paper grid's commands, beside the report's CSVs (write_report).
COMMANDS_FILE = "paper-cifar10_commands.txt"
# The figure of robust accuracy against eps, shown in its own section.
EPS_FIGURE = layout.ROBUSTNESS_FIGURE


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def _unwritable(flag: str, path: str, problem: str) -> utils.UserError:
    return utils.UserError(
        f"{flag} {path}: {problem}; choose another {flag} (nothing was "
        "written)"
    )


def _check_folder(flag: str, path: str, given: str | None = None) -> None:
    """Refuses a folder that cannot be made or written, writing nothing
    that stays: the nearest existing folder gets a probe file, removed at
    once. given: the flag's value, as the message shows it."""
    given = path if given is None else given
    problem = atomic.dir_write_problem(path)
    if problem is None:
        return
    kind, probe_dir, reason = problem
    if kind == "file":
        raise _unwritable(flag, given, f"{probe_dir} is a file, not a folder")
    raise _unwritable(flag, given, f"{probe_dir} is not writable ({reason})")


def _check_file(flag: str, path: str, given: str | None = None) -> None:
    """Refuses a file path that names a folder or lies in a folder that
    cannot be made or written."""
    given = path if given is None else given
    if path.endswith(os.sep) or os.path.isdir(path):
        where = "" if path == given else f"{path} is "
        raise _unwritable(flag, given, f"{where}a folder, not a file")
    _check_folder(flag, os.path.dirname(os.path.abspath(path)), given)


def preset_csvs(results_dir: str, name: str) -> dict[str, str]:
    """{'', '_summary', '_kernels', '_robustness': the path of the
    preset's CSV}."""
    return {
        suffix: os.path.join(results_dir, f"{name}{suffix}.csv")
        for suffix in ("", "_summary", "_kernels", "_robustness")
    }


def check_outputs(
    the_grid: grid.Grid,
    results_dir: str,
    report_path: str,
    replace: bool = False,
) -> None:
    """Refuses, before anything is written, outputs `aggregate` could not
    write: a --results_dir (or its figure folder `{name}/`) that is a file
    or cannot be written, a CSV path that is a folder, a --report that is
    a folder or in a folder that cannot be written; and outputs of another
    grid under the grid's name (check_source, unless `replace`).

    Raises:
        UserError: one line naming the flag and the path.
    """
    name = the_grid.name
    _check_folder("--results_dir", results_dir)
    figure_dir = os.path.join(results_dir, name)
    _check_folder("--results_dir", figure_dir, results_dir)
    for path in preset_csvs(results_dir, name).values():
        _check_file("--results_dir", path, results_dir)
    _check_report(results_dir, report_path)
    if not replace:
        check_source(the_grid, results_dir)


def source_record(the_grid: grid.Grid) -> dict[str, str]:
    """What a preset's outputs record of where they came from
    (layout.AGGREGATE_RECORD): {'config', 'output_root'}, each relative to
    the repository when in it."""
    return {
        "config": _shown(the_grid.path),
        "output_root": _shown(grid.here(the_grid.root)),
    }


def _same_source(recorded: object, the_grid: grid.Grid) -> bool:
    """Whether `recorded` (an AGGREGATE_RECORD's content) names the grid's
    config and output root, compared as real paths."""
    if not isinstance(recorded, dict):
        return False
    current = source_record(the_grid)
    for key in current:
        if not isinstance(recorded.get(key), str):
            return False
        was = os.path.realpath(os.path.join(grid.ROOT, recorded[key]))
        now = os.path.realpath(os.path.join(grid.ROOT, current[key]))
        if was != now:
            return False
    return True


def check_source(the_grid: grid.Grid, results_dir: str) -> None:
    """Refuses to aggregate `the_grid` where `results_dir` holds outputs of
    its name ({name}.csv, ..., {name}/) that record another config or
    output root (source_record), or record none.

    Raises:
        UserError: naming the grid, what the outputs came from and the way
            out (--replace_results, another name or --results_dir).
    """
    name = the_grid.name
    figure_dir = os.path.join(results_dir, name)
    made = [p for p in preset_csvs(results_dir, name).values()]
    if not any(os.path.lexists(p) for p in [*made, figure_dir]):
        return
    path = os.path.join(figure_dir, layout.AGGREGATE_RECORD)
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        recorded = None
    if _same_source(recorded, the_grid):
        return
    current = source_record(the_grid)
    if isinstance(recorded, dict) and set(current) <= set(recorded):
        was = (
            f"config {recorded['config']}, output root "
            f"{recorded['output_root']}"
        )
    else:
        was = f"a grid they do not record (no readable {path})"
    raise utils.UserError(
        f"--results_dir {results_dir} holds the results of {name} from "
        f"{was}, not from config {current['config']}, output root "
        f"{current['output_root']}: pass --replace_results to replace them "
        "with this grid's, or give this grid another name or --results_dir "
        "(nothing was written)"
    )


def _check_report(results_dir: str, report_path: str) -> None:
    """Refuses what write_report could not write: the report, and the
    paper grid's commands in `results_dir`."""
    _check_file("--report", report_path)
    commands = os.path.join(results_dir, COMMANDS_FILE)
    _check_file("--results_dir", commands, results_dir)


def aggregate(
    the_grid: grid.Grid,
    results_dir: str,
    report_path: str,
    parsers: grid.Parsers,
    replace: bool = False,
) -> dict:
    """Writes the CSVs and figures of `the_grid` into `results_dir`, then
    regenerates the report at `report_path` from every preset's CSVs there.

    Refuses (UserError, nothing written): an output that cannot be written
    (check_outputs); an output root whose sweep.json or cells record other
    settings than the grid's (Grid.check_record, Grid.check_cells with
    `parsers`, the entry scripts' parse_args by name; each cell's files
    are read once, for that check and for the tables); a
    damaged file of a cell; no phase-2 cell with results (so that a wrong
    output root never overwrites committed results); outputs of the
    grid's name made from another config or output root (check_source),
    unless `replace`; an output root another sweep holds (its lock is
    held while the cells are read).

    The preset's outputs in `results_dir` ({name}.csv, {name}_summary.csv,
    {name}_kernels.csv, the figures {name}/*.png) are replaced as a whole:
    made in a hidden folder there, then moved into place, and those of an
    earlier aggregation that this one does not make are removed.

    Returns:
        {'rows': DataFrame, 'summary': DataFrame, 'kernels': DataFrame,
        'missing': list of str, 'written': list of paths}.
    """
    name = the_grid.name
    check_outputs(the_grid, results_dir, report_path, replace)
    with _root_held(the_grid):
        the_grid.check_record()
        records = grid.CellRecords()
        the_grid.check_cells(the_grid.cells(), parsers, records=records)
        rows, missing = collect.collect_cells(the_grid, records)
        kernel_table, kernel_missing = collect.collect_kernels(the_grid)
        missing += kernel_missing
        robust_table, robust_missing = collect.collect_robustness(
            the_grid, records
        )
        missing += robust_missing
    if rows.empty:
        raise utils.UserError(
            f"no phase-2 cell of {name} has results under {the_grid.root}: "
            "nothing to aggregate (run the grid first, or pass its "
            "--output_root)"
        )
    rows = collect.join_kernels(rows, kernel_table)
    summary = collect.summarize(rows)
    atomic.ensure_writable_dir(results_dir)
    with atomic.FolderLock(results_dir, "--results_dir"):
        written = _replace_outputs(
            the_grid,
            results_dir,
            (rows, summary, kernel_table, robust_table),
            missing,
        )
    expected = sum(c.stage == "phase2" for c in the_grid.cells())
    print(f"aggregate: {len(rows)} of {expected} phase-2 cells have results")
    for line in missing:
        print(f"missing: {line}")
    for path in written:
        print(f"wrote {path}")
    extra = {} if name in PRESETS else {name: the_grid.path}
    write_report(results_dir, report_path, extra=extra)
    print(f"wrote {report_path}")
    return dict(
        rows=rows,
        summary=summary,
        kernels=kernel_table,
        robustness=robust_table,
        missing=missing,
        written=written,
    )


def _root_held(the_grid: grid.Grid) -> contextlib.AbstractContextManager:
    """The output root's lock (the one a running sweep holds), while the
    cells are read: a root in use is refused in one line. Nothing to hold
    where the root does not exist."""
    root = grid.here(the_grid.root)
    # A root no sweep of ours could write in (read-only) holds no lock.
    if not os.path.isdir(root) or not os.access(root, os.W_OK):
        return contextlib.nullcontext()
    return atomic.FolderLock(root, "--output_root")


def check_kernel_outputs(
    the_grid: grid.Grid,
    results_dir: str,
    report_path: str,
    replace: bool = False,
) -> None:
    """What aggregate_kernels needs, refused before anything runs or is
    written: its outputs writable ({name}_kernels.csv, the figure folder,
    the report), the preset's earlier aggregation in `results_dir`
    ({name}.csv: the results whose kernel part it refreshes), made from
    this grid's config and output root (check_source, unless `replace`).

    Raises:
        UserError: one line naming the flag and the path.
    """
    name = the_grid.name
    _check_folder("--results_dir", results_dir)
    figure_dir = os.path.join(results_dir, name)
    _check_folder("--results_dir", figure_dir, results_dir)
    csvs = preset_csvs(results_dir, name)
    _check_file("--results_dir", csvs["_kernels"], results_dir)
    _check_report(results_dir, report_path)
    if not os.path.isfile(csvs[""]):
        raise utils.UserError(
            f"--aggregate --only kernels refreshes the kernel part of "
            f"results aggregated before, but --results_dir {results_dir} "
            f"has no {name}.csv: aggregate the whole grid (--aggregate "
            "without --only)"
        )
    if not replace:
        check_source(the_grid, results_dir)


def aggregate_kernels(
    the_grid: grid.Grid,
    results_dir: str,
    report_path: str,
    parsers: grid.Parsers,
    replace: bool = False,
) -> dict:
    """`sweep.py CONFIG --aggregate --only kernels`: rewrites only the
    kernel part of a preset's results in `results_dir` ({name}_kernels.csv
    and {name}/kernel_dynamics.png) from the grid's phase-1, kernel and
    analysis cells, then regenerates the report (whose claim-1 cell is
    all that they change); every other file of the preset stays as it is.
    The output root's lock is held while its cells are read; `replace`
    as aggregate's.

    Refuses (UserError, nothing written) what would leave the results
    ambiguous: no earlier aggregation of the preset (check_kernel_outputs),
    an output root of other settings, any kernel or analysis of the grid
    missing, kernels of other seeds than the aggregated rows'.

    Returns:
        {'kernels': DataFrame, 'written': list of paths}.
    """
    name = the_grid.name
    check_kernel_outputs(the_grid, results_dir, report_path, replace)
    with _root_held(the_grid):
        the_grid.check_record()
        cells = the_grid.only_cells(the_grid.cells(), "kernels")
        the_grid.check_cells(cells, parsers)
        kernel_table, missing = collect.collect_kernels(the_grid)
    if missing or kernel_table.empty:
        why = missing[0] if missing else "no kernel analysis"
        raise utils.UserError(
            f"--only kernels: the kernel part of {name} is incomplete under "
            f"{the_grid.root} ({len(missing)} missing, e.g. {why}); nothing "
            f"was written: run `sweep.py {the_grid.path} --local N --only "
            "kernels` first"
        )
    csvs = preset_csvs(results_dir, name)
    aggregated = set(pd.read_csv(csvs[""])["seed"])
    if set(kernel_table["seed"]) != aggregated:
        raise utils.UserError(
            f"--only kernels: the kernels of {name} are of seeds "
            f"{sorted(set(kernel_table['seed']))} but {csvs['']} of seeds "
            f"{sorted(aggregated)}; nothing was written: aggregate the "
            "whole grid (--aggregate without --only)"
        )
    with atomic.FolderLock(results_dir, "--results_dir"):
        written = _replace_kernel_outputs(name, results_dir, kernel_table)
    for path in written:
        print(f"wrote {path}")
    extra = {} if name in PRESETS else {name: the_grid.path}
    write_report(results_dir, report_path, extra=extra)
    print(f"wrote {report_path}")
    return {"kernels": kernel_table, "written": written}


def _replace_kernel_outputs(
    name: str, results_dir: str, kernel_table: pd.DataFrame
) -> list[str]:
    """Makes {name}_kernels.csv and the kernel figure in a hidden folder
    of `results_dir`, then moves them into place. Call with the folder's
    lock held. Returns the paths written."""
    staging = os.path.join(results_dir, f".{name}.kernels")
    shutil.rmtree(staging, ignore_errors=True)  # of a killed aggregation
    os.makedirs(staging)
    try:
        csv = preset_csvs(results_dir, name)["_kernels"]
        staged_csv = os.path.join(staging, os.path.basename(csv))
        atomic.atomic_write_text(staged_csv, kernel_table.to_csv(index=False))
        (staged_figure,) = report_figures.plot_kernels(kernel_table, staging)
        figure = os.path.join(results_dir, name, layout.KERNEL_FIGURE)
        os.makedirs(os.path.dirname(figure), exist_ok=True)
        os.replace(staged_figure, figure)
        os.replace(staged_csv, csv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [csv, figure]


def _replace_outputs(
    the_grid: grid.Grid,
    results_dir: str,
    frames: tuple[pd.DataFrame, ...],
    missing: list,
) -> list[str]:
    """Makes the preset's CSVs and figures in a hidden folder of
    `results_dir`, then moves them into place and removes the preset's
    outputs this run does not make. Call with the folder's lock held.
    Returns the paths written."""
    name = the_grid.name
    rows, summary, kernel_table, robust_table = frames
    staging = os.path.join(results_dir, f".{name}.aggregating")
    shutil.rmtree(staging, ignore_errors=True)  # of a killed aggregation
    os.makedirs(os.path.join(staging, name))
    try:
        made = {}  # final path -> staged path
        csvs = preset_csvs(results_dir, name)
        tables = {"": rows, "_summary": summary}
        if not kernel_table.empty:
            tables["_kernels"] = kernel_table
        if not robust_table.empty:
            tables["_robustness"] = robust_table
        for suffix, frame in tables.items():
            staged = os.path.join(staging, os.path.basename(csvs[suffix]))
            atomic.atomic_write_text(staged, frame.to_csv(index=False))
            made[csvs[suffix]] = staged
        staged_figures = os.path.join(staging, name)
        figures = report_figures.plot_accuracy(rows, staged_figures)
        figures += report_figures.plot_kernels(kernel_table, staged_figures)
        figures += report_figures.plot_features(
            the_grid, staged_figures, missing
        )
        configured = (the_grid.config["robustness"] or {}).get("curve_attack")
        figures += report_figures.plot_robustness(
            robust_table,
            curve_attack(robust_table, configured),
            staged_figures,
        )
        figure_dir = os.path.join(results_dir, name)
        for staged in figures:
            made[os.path.join(figure_dir, os.path.basename(staged))] = staged
        record = os.path.join(staged_figures, layout.AGGREGATE_RECORD)
        atomic.atomic_write_json(record, source_record(the_grid))
        made[os.path.join(figure_dir, layout.AGGREGATE_RECORD)] = record
        # Everything is made: into place, then away with the earlier run's.
        os.makedirs(figure_dir, exist_ok=True)
        for final, staged in made.items():
            os.replace(staged, final)
        stale = [p for p in csvs.values() if p not in made]
        stale += [
            os.path.join(figure_dir, f)
            for f in os.listdir(figure_dir)
            if f.endswith(".png") and os.path.join(figure_dir, f) not in made
        ]
        for path in stale:
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return list(made)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------


def _fmt(mean: float | None, std: float | None = math.nan) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or math.isnan(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def _read_frames(results_dir: str, name: str) -> dict[str, pd.DataFrame]:
    """{'rows', '_summary', '_kernels': the preset's CSVs in
    `results_dir` (empty where absent)}."""
    frames = {}
    for suffix, path in preset_csvs(results_dir, name).items():
        frames[suffix or "rows"] = (
            pd.read_csv(path)
            if os.path.exists(path) and os.path.getsize(path) > 1
            else pd.DataFrame()
        )
    return frames


def _preset_section(
    name: str,
    config_path: str,
    frames: Mapping[str, pd.DataFrame],
    dirs: tuple[str, str],
    report_dir: str,
) -> list[str]:
    """A preset's section; dirs: (the folder its CSVs and figures were
    read from, the report's results folder)."""
    results_dir, report_results = dirs
    rows, kernel_table = frames["rows"], frames["_kernels"]
    lines = [f"## {name}", ""]
    if os.path.abspath(results_dir) != os.path.abspath(report_results):
        lines += [
            f"Committed results, read from `{_shown(results_dir)}` (this "
            "report's own results are elsewhere).",
            "",
        ]
    try:
        the_grid = grid.Grid.load(config_path)
    except utils.UserError as err:
        return lines + [f"Config not readable: {err}", ""]
    c = the_grid.config
    lines.append(f"{c['']['description']} (`{_shown(config_path)}`).")
    lines.append("")
    expected = sum(cell.stage == "phase2" for cell in the_grid.cells())
    if rows.empty:
        lines += [
            f"**Not run yet**: no `{name}.csv` among the results. Run "
            f"`python sweep.py {_shown(config_path)} --local N --aggregate`.",
            "",
        ]
        return lines
    lines += _results_line(rows, expected)
    lines += _accuracy_table(name, rows)
    lines += _reference_lines(c["reference"], rows)
    lines += _figure_lines(os.path.join(results_dir, name), report_dir)
    if not frames["_robustness"].empty:
        lines += robustness_section(
            name,
            c,
            (rows, frames["_robustness"]),
            os.path.join(results_dir, name),
            report_dir,
        )
    if kernel_table.empty:
        lines += [
            "Kernel measures: missing (no analyze_kernels.py output was "
            "aggregated).",
            "",
        ]
    return lines


def _results_line(rows: pd.DataFrame, expected: int) -> list[str]:
    """What a preset's rows are: cells, seeds, device, settings."""
    devices = ", ".join(sorted(set(map(str, rows["device"].dropna()))))
    jaxes = ", ".join(sorted(set(map(str, rows["jax"].dropna()))))
    seeds = sorted(rows["seed"].unique())
    return [
        f"Results: {len(rows)} of {expected} phase-2 cells, seeds "
        f"{', '.join(map(str, seeds))}; device {devices}, JAX {jaxes}; "
        f"{rows['dataset'].iloc[0]}, {rows['model'].iloc[0]}"
        + (
            f" (width {int(rows['width'].iloc[0])})"
            if pd.notna(rows["width"].iloc[0])
            else ""
        )
        + f", ε = {rows['eps'].iloc[0]:g}/255, "
        f"PGD-{int(rows['pgd_iters'].iloc[0])} on "
        f"{int(rows['test_images'].iloc[0])} test images.",
        "",
    ]


def _accuracy_table(name: str, rows: pd.DataFrame) -> list[str]:
    """Accuracy after phase 2 (the main dynamics) from θ of the largest t,
    a row per (phase 1, phase 2)."""
    dynamics = main_dynamics(rows)
    frame = rows[rows["dynamics"] == dynamics]
    t_max = frame["t"].max()
    lines = [
        f"Accuracy after {dynamics} phase 2 from θ(t = {t_max:g}), mean ± "
        f"standard deviation over n seeds (`{name}_summary.csv` has every "
        "t):",
        "",
        "| kernel (phase 1) | phase 2 | n | clean | PGD-L∞ | PGD-L2 |",
        "|---|---|---|---|---|---|",
    ]
    at_t = frame[frame["t"] == t_max]
    for (p1, p2), group in at_t.groupby(["phase1", "phase2"]):
        cells = [_fmt(group[m].mean(), group[m].std()) for m in ACCURACIES]
        lines.append(
            f"| {LOADER_NAMES[p1]} ({p1}) | {LOADER_NAMES[p2]} ({p2}) | "
            f"{group['seed'].nunique()} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return lines


def _reference_lines(references: list[dict], rows: pd.DataFrame) -> list:
    """A line per [[reference]] of the config: its numbers and ours."""
    lines = []
    for reference in references:
        match = rows[
            (rows["phase1"] == reference["phase1"])
            & (rows["t"] == reference["t"])
            & (rows["phase2"] == reference["phase2"])
            & (rows["dynamics"] == reference["dynamics"])
        ]
        ours = (
            f"clean {_mean_text(stats(match['clean']))}, PGD-L∞ "
            f"{_mean_text(stats(match['linf']))}"
            if not match.empty
            else "no matching cell"
        )
        lines.append(
            f"- Reference ({reference['source']}): {reference['phase1']} "
            f"kernel, t = {reference['t']:g}, phase 2 {reference['phase2']}: "
            f"clean {reference['clean']:.3f}, PGD-L∞ {reference['linf']:.3f}; "
            f"ours: {ours}."
        )
    if references:
        lines.append("")
    return lines


def _figure_lines(figure_dir: str, report_dir: str) -> list[str]:
    """The figures of `figure_dir`, linked relative to the report."""
    lines = []
    for figure in (
        sorted(os.listdir(figure_dir)) if os.path.isdir(figure_dir) else []
    ):
        if figure.endswith(".png") and figure != EPS_FIGURE:
            rel = os.path.relpath(os.path.join(figure_dir, figure), report_dir)
            lines += [f"![{figure}]({rel})", ""]
    return lines


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the repository when in
    it."""
    rel = os.path.relpath(os.path.abspath(path), grid.ROOT)
    return path if rel.startswith("..") else rel


def _mean_text(stats: tuple[float, float, int], unit: str = "seeds") -> str:
    """'m ± sd (n = k seeds)' of _stats' (mean, sd, count)."""
    mean, sd, count = stats
    return f"{_fmt(mean, sd)} (n = {count} {unit})"


def _farthest_text(farthest: tuple | None, over: str) -> str:
    """'t = 2 (×1.8, mean over pairs)' of a verdict's farthest (t, mean
    ratio); over: what the mean is over."""
    if farthest is None:
        return "no t with a ratio"
    t, ratio = farthest
    return f"t = {layout.format_t(t)} (×{ratio:.1f}, mean over {over})"


def _settle_text(settle: dict) -> str:
    return ", ".join(
        f"s{seed}: {layout.format_t(d['A'])} vs. {layout.format_t(d['C'])}"
        for seed, d in settle.items()
    )


def _claim_one_text(one: dict) -> str:
    """The same-seed rule's text (as before the like-with-like rule), then
    where the kernels are farthest apart in units of the seed baseline."""
    return (
        _same_seed_text(one)
        + "; farthest apart in units of the seed baseline at "
        + _farthest_text(one["farthest"], "pairs")
    )


def _like_with_like_text(one: dict) -> str:
    """The like-with-like verdict's numbers: at the last t each ratio it
    was decided on, the settle times, where the kernels are farthest apart
    in units of each baseline."""
    across = "; ".join(
        f"C s{a} vs. A s{b}: {p['distance']:.3f} vs. {p['baseline']:.3f} "
        f"(×{p['ratio']:.2f})"
        for (a, b), p in one["across"].items()
    )
    text = (
        f"at t = {one['t']:g}, (a) across seeds, S(C_s, A_s′) vs. the "
        "larger of S(C_s, C_s′) and S(A_s, A_s′), per ordered pair: "
        f"{across}; "
    )
    far = one["farthest"]
    if one["replicates"]:
        same = "; ".join(
            f"s{seed}: {p['distance']:.3f} vs. {p['baseline']:.3f} "
            f"(×{p['ratio']:.2f})"
            for seed, p in one["same_start"].items()
        )
        text += (
            "(b) from the same θ(0), S(C_s, A_s) vs. S(C_s, C′_s), per "
            f"seed: {same}; "
        )
        where = (
            f"(a) {_farthest_text(far[ACROSS_SEEDS], 'pairs')}, (b) "
            f"{_farthest_text(far[SAME_START], 'seeds')}"
        )
    else:
        text += (
            "(b) not measured: no replicate runs (phase1.order_replicate), "
            "so decided on (a) alone; "
        )
        where = _farthest_text(far[ACROSS_SEEDS], "pairs")
    settle = _settle_text(one["settle"])
    return (
        f"{text}t settled, adversarial vs. benign run: {settle}; farthest "
        f"apart in units of the baseline: {where}"
    )


def _same_seed_text(one: dict) -> str:
    pairs = "; ".join(
        f"s{a}–s{b}: {p['between'][0]:.3f}, {p['between'][1]:.3f} vs. "
        f"{p['baseline']:.3f} (×{p['ratio']:.1f})"
        for (a, b), p in one["pairs"].items()
    )
    settle = _settle_text(one["settle"])
    return (
        f"at t = {one['t']:g}, benign vs. adversarial kernel "
        f"{_mean_text(one['between'])}, seed baseline "
        f"{_mean_text(one['baseline'], 'seed pairs')}; per pair (C vs. A of "
        f"each seed vs. baseline, smaller ratio): {pairs}; t settled, "
        f"adversarial vs. benign run: {settle}"
    )


def _claim_two_text(two: dict) -> str:
    return (
        f"PGD-L∞ at t = {two['t']:g}, adversarial kernel "
        f"{_mean_text(two['adversarial'])} vs. benign "
        f"{_mean_text(two['benign'])}; gain per seed "
        + ", ".join(f"s{s}: {g:+.3f}" for s, g in two["gains"].items())
    )


def _claim_three_text(three: dict) -> str:
    return (
        f"PGD-L∞ {_mean_text(three['robust'])} at t = {three['t']:g}; per "
        "seed "
        + ", ".join(f"s{s}: {v:.3f}" for s, v in three["per_seed"].items())
    )


def _verdict_text(result: dict, text: Callable[[dict], str]) -> str:
    """'verdict: numbers' of a claim's result, or why it has no data."""
    if result["verdict"] == "no data":
        return result.get("why", "no data")
    return f"{result['verdict']}: {text(result)}"


def claim_one_cell(kernel_table: pd.DataFrame) -> str:
    """The report's claim-1 cell: the same-seed rule's verdict, then the
    like-with-like rule's, each labelled."""
    same = _verdict_text(claim_one(kernel_table), _claim_one_text)
    like = _verdict_text(
        claim_one_like_with_like(kernel_table), _like_with_like_text
    )
    return f"**same-seed rule**: {same} <br><br> **like with like**: {like}"


def _verdict_cells(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    rows, kernel_table = frames["rows"], frames["_kernels"]
    if rows.empty:
        return ["not run"] * 3
    return [
        claim_one_cell(kernel_table),
        _verdict_text(claim_two(rows), _claim_two_text),
        _verdict_text(claim_three(rows), _claim_three_text),
    ]


CLAIMS = (
    (
        "Under adversarial training the empirical NTK rapidly converges to "
        "a different kernel than under standard training.",
        "`kernel_dynamics.png`, `{name}_kernels.csv`: velocity, distance to "
        "the last kernel, distance between the benign and adversarial runs",
    ),
    (
        "That kernel gives robustness even when phase 2 (training with the "
        "kernel frozen) is benign.",
        "`accuracy_vs_t_centered.png`, `{name}.csv`: PGD-L∞ accuracy after "
        "benign phase 2, adversarial vs. benign kernel",
    ),
    (
        "Adversarial training on top of a fixed kernel reaches 76.1% PGD "
        "robust accuracy at ε = 4/255 on CIFAR-10.",
        "`{name}.csv`: PGD-L∞ after adversarial phase 2 on the adversarial "
        "kernel at the largest t",
    ),
)


def _cost_section(
    config_path: str, results_dir: str, report_dir: str
) -> list[str]:
    """The paper grid's commands (a file) and device hours (in the unit of
    its [throughput].device)."""
    the_grid = grid.Grid.load(config_path)
    cells = the_grid.cells()
    commands = os.path.join(results_dir, COMMANDS_FILE)
    text = "".join(
        f"# {cell.id}\n{cell.command('python')}\n" for cell in cells
    )
    atomic.atomic_write_text(commands, text)
    cost = estimate(the_grid, cells)
    unit = cost["unit"]
    rel = os.path.relpath(commands, report_dir)
    lines = [
        f"### {the_grid.name}: commands and cost",
        "",
        f"`python sweep.py {_shown(config_path)} "
        f"--dry_run` prints its {len(cells)} commands (also in "
        f"[{os.path.basename(commands)}]({rel})). {unit} from "
        f"throughput measured on {cost['device']} "
        f"({cost['source']}):",
        "",
        f"| stage | cells | {unit} |",
        "|---|---|---|",
    ]
    for stage, (count, hours) in cost["stages"].items():
        lines.append(f"| {stage} | {count} | {hours:.1f} |")
    seeds = len(the_grid.config[""]["seeds"])
    lines += [
        f"| **total** ({seeds} seeds) | {len(cells)} | "
        f"**{cost['total']:.1f}** ({cost['per_seed']:.1f} per seed) |",
        "",
    ]
    return lines


def write_report(
    results_dir: str,
    report_path: str,
    configs_dir: str = os.path.join(grid.ROOT, "configs"),
    extra: dict | None = None,
) -> str:
    """Writes the report from the CSVs in `results_dir` and the configs:
    a column and a section per preset (configs_dir/{name}.toml) and per
    grid of `extra` ({name: config path}); returns its text. Refuses
    (UserError, nothing written) a report path that cannot be written."""
    _check_report(results_dir, report_path)
    report_dir = os.path.dirname(os.path.abspath(report_path))
    configs = {n: os.path.join(configs_dir, f"{n}.toml") for n in PRESETS}
    configs.update(extra or {})
    names = list(configs)
    sources, frames = _sources(results_dir, names)
    lines = _claims_lines(results_dir, names, frames)
    for name, config_path in configs.items():
        lines += _preset_section(
            name,
            config_path,
            frames[name],
            (sources[name], results_dir),
            report_dir,
        )
        if name == "paper-cifar10" and os.path.exists(config_path):
            lines += _cost_section(config_path, results_dir, report_dir)
    text = "\n".join(lines).rstrip() + "\n"
    atomic.ensure_writable_dir(report_dir)
    atomic.atomic_write_text(report_path, text)
    return text


def _sources(
    results_dir: str, names: Sequence[str]
) -> tuple[dict[str, str], dict[str, dict[str, pd.DataFrame]]]:
    """({name: the folder its CSVs are read from}, {name: its frames}):
    `results_dir`, or for a preset not aggregated there, the committed
    results."""
    sources, frames = {}, {}
    for name in names:
        sources[name] = results_dir
        frames[name] = _read_frames(results_dir, name)
        # A preset not aggregated into results_dir: its committed results.
        if (
            frames[name]["rows"].empty
            and name in PRESETS
            and os.path.abspath(results_dir) != COMMITTED_RESULTS
        ):
            committed = _read_frames(COMMITTED_RESULTS, name)
            if not committed["rows"].empty:
                sources[name], frames[name] = COMMITTED_RESULTS, committed
    return sources, frames


def _claims_lines(
    results_dir: str,
    names: Sequence[str],
    frames: Mapping[str, Mapping[str, pd.DataFrame]],
) -> list[str]:
    """The report's head: the claims, the rules of their verdicts, and a
    table of the verdicts, a column per preset."""
    lines = [
        "# Reproduction report",
        "",
        f"Generated from the CSVs in `{_shown(results_dir)}` (written by "
        "`python sweep.py configs/PRESET.toml --aggregate`; `python "
        "report.py` regenerates it), and for presets with none there, "
        "from the committed ones in `docs/results/`; do not edit by hand. "
        "Every number below is read from those files or, for costs, "
        "computed from the presets' configs.",
        "",
        "## The paper's claims",
        "",
        "Verdicts are mechanical, decided by these rules, stated before "
        "any number. Kernel distances S are class means of the per-class "
        "kernels of the largest N, all kernels on the same images in every "
        "seed.",
        "",
        "- **Claim 1** (same-seed rule) holds when (a) at the last t, in "
        "every pair of seeds (s, s′), the distance between the benign and "
        "the adversarial kernel of the same seed is, in each of s and s′, "
        f"more than **{SEED_BASELINE_FACTOR:g}×** the seed baseline: the "
        "distance between the kernels of s and s′ of the same training "
        "(the larger of benign's and adversarial's); and (b) in every seed "
        "the adversarial run settles no later than the benign run. A run "
        "settles at the first t after which its kernel stays within "
        f"**{SETTLE_FRACTION:g}** of its first kernel's distance to its "
        "last kernel. It needs two or more seeds.",
        f"- {LIKE_WITH_LIKE_RULE} Each claim-1 cell gives both verdicts, "
        "each with the t where the benign and adversarial kernels are "
        "farthest apart in units of its baseline (the t of the largest "
        "mean ratio, and that ratio).",
        "- **Claim 2** holds when, at the largest t, the adversarial "
        "kernel's PGD-L∞ accuracy after benign phase 2 exceeds the benign "
        f"kernel's by more than **{ROBUSTNESS_GAIN:g}** in every seed "
        '("in direction only" when it is higher in every seed, but not by '
        "that margin in all).",
        "- **Claim 3** holds when the mean is at least "
        f"{PAPER_ROBUST - PAPER_TOLERANCE:.3f} (the paper's "
        f"{PAPER_ROBUST:.3f} less {PAPER_TOLERANCE:g}); it is tested only "
        "on CIFAR-10 at ε = 4/255.",
        "",
        "Means are given as mean ± sample standard deviation over seeds "
        "(n = the number of seeds, or of seed pairs); each verdict lists "
        "the per-seed (or per-pair) values it was decided on.",
        "",
        "| # | claim (abstract) | tested by | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    verdicts = {name: _verdict_cells(frames[name]) for name in names}
    for index, (claim, test) in enumerate(CLAIMS):
        cells = [verdicts[name][index] for name in names]
        lines.append(
            f"| {index + 1} | {claim} | {test.format(name='PRESET')} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    p = cli.ArgumentParser(
        description="Regenerates docs/REPORT.md from docs/results/*.csv."
    )
    p.add_argument(
        "--results_dir", default=os.path.join(grid.ROOT, "docs", "results")
    )
    p.add_argument(
        "--report", default=os.path.join(grid.ROOT, "docs", "REPORT.md")
    )
    args = p.parse_args(argv)
    write_report(args.results_dir, args.report)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
