"""Results of a sweep: tidy CSVs, figures, and docs/REPORT.md.

`aggregate(grid, results_dir, report_path)` (`sweep.py CONFIG --aggregate`)
reads every cell's files under the grid's output root and writes, in
`results_dir`:
  {name}.csv          a row per phase-2 cell: seed, phase1, t, phase2,
                      dynamics, clean, linf, l2 (run_exp.py's evaluation),
                      eval_clean, eval_linf (eval_and_make_adv.py's), the
                      phase-1 run's final accuracies, the kernel measures of
                      θ(t), the settings, the device and JAX version;
  {name}_summary.csv  mean and standard deviation over seeds;
  {name}_kernels.csv  a row per kernel of analyze_kernels.py's kernels.csv,
                      with the distance to the run's last kernel, the
                      velocity and the distance between the runs;
  {name}/*.png        the figures;
then regenerates the report from every preset's committed CSVs
(`python report.py` does only that). Files that are absent are reported as
missing, never guessed; a file that is there but damaged is refused in one
line naming its cell. Every output path is checked before anything is
written, and a preset's outputs replace its earlier ones as a whole.
"""

import io
import math
import os
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import cli  # noqa: E402
import models  # noqa: E402
import utils  # noqa: E402
from analysis import kernel_analysis  # noqa: E402
from store import atomic, checkpoints
from sweeper import grid  # noqa: E402

PRESETS = ("cpu-small", "cpu-resnet", "gpu-fmnist", "paper-cifar10")
COMMITTED_RESULTS = os.path.join(grid.ROOT, "docs", "results")
KEYS = ["seed", "phase1", "t", "phase2", "dynamics"]
# The paper grid's commands, beside the report's CSVs (write_report).
COMMANDS_FILE = "paper-cifar10_commands.txt"
ACCURACIES = ["clean", "linf", "l2"]
KERNEL_KEYS = ["seed", "phase1", "t", "class_index", "n"]
# A kernel file's (seed, phase1, t, class_index, n).
KernelKey = tuple[int, str, float, int, int]
DERIVED = [
    "distance_to_final",
    "velocity",
    "distance_between",
    "distance_between_seeds",
]
LOADER_NAMES = {
    "C": "benign",
    "A": "adversarial",
    "F": "benign, then adversarial",
}
# Thresholds of the verdicts (stated in the report beside each verdict).
# Claim 1: the distance between the benign and adversarial kernels over
# the distance between two seeds' kernels of the same training, and the
# fraction of kernel_analysis.settle_time.
SEED_BASELINE_FACTOR = 2.0
SETTLE_FRACTION = kernel_analysis.DEFAULT_SETTLE_FRACTION
ROBUSTNESS_GAIN = 0.05  # claim 2: robust accuracy gained, every seed
PAPER_ROBUST = 0.761  # claim 3: the abstract's PGD accuracy (CIFAR-10, 4/255)
PAPER_TOLERANCE = 0.02
KERNEL_FILE = re.compile(
    r"(?:seed_(?P<seed>\d+)/)?"
    r"phase1_(?P<phase1>[CAF])/kernels/parameters_checkpoint_(?P<t>[^/]+)/"
    r"saved_kernel(?:_class_(?P<class_index>\d+))?_(?P<n>\d+)\.pkl$"
)
# Columns of the kernel table: the distance to the same loader's kernel of
# seed s (same t, class and images), one column per seed of the grid.
TO_SEED = "distance_to_seed_{}"


def _value(record: object, *keys: str) -> float:
    """record[k1][k2]... as a float, NaN where absent or None.

    Raises:
        ValueError: the value is there but not a number.
    """
    for key in keys:
        if not isinstance(record, dict) or record.get(key) is None:
            return math.nan
        record = record[key]
    if isinstance(record, bool) or not isinstance(record, int | float):
        raise ValueError(f"{'.'.join(keys)} is {record!r}, not a number")
    return float(record)


def _read_record(
    cell_id: str, path: str, folder: str, needs: Sequence[str] = ()
) -> dict | None:
    """A cell's JSON object (None when absent; grid.read_cell_json), with
    the keys `needs` its script always writes.

    Raises:
        UserError: naming the cell and the file, when it is damaged.
    """
    record = grid.read_cell_json(cell_id, path, folder)
    if record is not None:
        absent = [key for key in needs if key not in record]
        if absent:
            raise grid.damaged(cell_id, path, f"no {absent[0]!r}", folder)
    return record


def _numbers(
    cell_id: str, path: str, folder: str, values: Mapping[str, tuple]
) -> dict[str, float]:
    """{name: _value(record, *keys)} for values {name: (record, *keys)};
    a value that is not a number makes the file damaged."""
    try:
        return {name: _value(*where) for name, where in values.items()}
    except ValueError as err:
        raise grid.damaged(cell_id, path, str(err), folder) from None


# --------------------------------------------------------------------------
# Collecting the cells' files
# --------------------------------------------------------------------------


def collect_cells(the_grid: grid.Grid) -> tuple:
    """A row per phase-2 cell with results, and what is missing.

    Returns:
        (DataFrame, missing): the rows (columns in the module docstring;
        accuracies as fractions, NaN where not measured) and a list of
        'cell id: what is missing' strings.
    Raises:
        UserError: one line naming the cell and the file, for a file that
        is there but is not what its script writes (truncated, not JSON, a
        list, a value that is not a number, ...).
    """
    c = the_grid.config
    rows, missing = [], []
    phase1_results = {}
    for cell in the_grid.cells():
        if cell.stage == "phase1":
            phase1_results[cell.id] = (
                _read_record(
                    cell.id,
                    cell.outputs[0],
                    cell.keys["save_path"],
                    ("standard",),
                ),
                cell.outputs[0],
            )
        if cell.stage != "phase2":
            continue
        folder = cell.keys["save_path"]
        results = _read_record(cell.id, cell.outputs[0], folder, ("linear",))
        if results is None:
            missing.append(f"{cell.id}: no results.json")
            continue
        row = {key: cell.keys[key] for key in KEYS}
        row.update(
            _numbers(
                cell.id,
                cell.outputs[0],
                folder,
                {name: (results, "linear", name) for name in ACCURACIES},
            )
        )
        if c["evaluation"] is not None:
            row.update(_eval_numbers(the_grid, cell, missing))
        phase1, phase1_path = phase1_results.get(cell.deps[0], (None, ""))
        row.update(
            _numbers(
                cell.deps[0],
                phase1_path,
                os.path.dirname(phase1_path),
                {
                    f"phase1_{name}": (phase1, "standard", name)
                    for name in ACCURACIES
                },
            )
        )
        config_path = os.path.join(folder, "config.json")
        config = _read_record(cell.id, config_path, folder)
        env = (config or {}).get("environment")
        env = env if isinstance(env, dict) else {}
        test_images = _numbers(
            cell.id,
            config_path,
            folder,
            {"test_images": (config, "test_images")},
        )
        row.update(
            dataset=c["data"]["dataset"],
            model=c["model"]["name"],
            width=(
                c["model"]["width"]
                if models.MODELS[c["model"]["name"]].has_width
                else None
            ),
            eps=c["attack"]["eps"],
            pgd_iters=c["attack"]["eval_pgd_iters"],
            **test_images,
            device=env.get("device_kind", ""),
            jax=env.get("jax", ""),
            cell=cell.id,
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    # Image counts are whole numbers: written as such when all are known.
    if "test_images" in frame and frame["test_images"].notna().all():
        frame["test_images"] = frame["test_images"].astype(int)
    return frame, missing


def _eval_numbers(
    the_grid: grid.Grid, cell: grid.Cell, missing: list
) -> dict[str, float]:
    """The eval_* columns of a phase-2 cell from its evaluation's results
    json (NaN, and noted in `missing`, when it is absent)."""
    cell_id = f"{cell.id}/eval"
    path = the_grid.eval_results(cell)
    folder = os.path.dirname(path)
    record = _read_record(cell_id, path, folder, ("sources",))
    if record is None:
        missing.append(f"{cell_id}: no results json")
        record = {"sources": [{}]}
    sources = record["sources"]
    if not (
        isinstance(sources, list) and sources and isinstance(sources[0], dict)
    ):
        raise grid.damaged(cell_id, path, "no 'sources' rows", folder)
    source = sources[0]
    return _numbers(
        cell_id,
        path,
        folder,
        {
            "eval_clean": (source, "acc_clean"),
            "eval_linf": (source, "acc_dirty"),
            "eval_pgd_iters": (record, "attack", "iters"),
            "eval_images": (source, "n"),
        },
    )


def _kernel_key(seed: int | None, path: str) -> KernelKey | None:
    """(seed, phase1, t, class_index, n) of a kernel file's path in the
    grid's layout (seed None: read from the path), or None."""
    match = KERNEL_FILE.search(str(path).replace(os.sep, "/"))
    if match is None or (seed is None and match["seed"] is None):
        return None
    c = match["class_index"]
    return (
        int(match["seed"]) if seed is None else seed,
        match["phase1"],
        float(match["t"]),
        -1 if c is None else int(c),
        int(match["n"]),
    )


def collect_kernels(the_grid: grid.Grid) -> tuple:
    """A row per kernel file that analyze_kernels.py analysed, and what is
    missing.

    Reads {output_root}/seed_{s}/analysis/kernels.csv (its numeric columns
    are the measures) and pairwise.csv (a, b, distance). Adds, from the
    pairwise distances between kernels of the same class and size:
    distance_to_final (to the same run's kernel at its last t), velocity
    (distance to the run's kernel at the previous t of the grid, per epoch)
    and distance_between (to the other run of analysis.compare at the same
    t). From the analysis across seeds (between_seeds/replicates.csv):
    distance_to_seed_{s} (to the same loader's kernel of seed s at the same
    t) and distance_between_seeds (their mean over the other seeds).

    Returns:
        (DataFrame, missing): an absent file, or a kernel of the grid that
        kernels.csv has no row for (an analysis older than the grid's
        kernel times, or a file cut at a line's end), is listed in missing.
    Raises:
        UserError: one line naming the cell and the file, for a CSV that is
        there but is not what analyze_kernels.py writes (cut short, not a
        table, a column absent, a distance that is not a number).
    """
    c = the_grid.config
    frames, missing = [], []
    if c["analysis"] is None:
        return pd.DataFrame(), missing
    compare = c["analysis"]["compare"] or ["C", "A"]
    expected = _grid_kernels(the_grid)
    pairs: dict[frozenset, float] = {}
    for seed in c[""]["seeds"]:
        out_dir = the_grid.analysis_dir(seed)
        cell_id = f"seed_{seed}/analysis"
        paths = {
            name: os.path.join(out_dir, name) for name in grid.ANALYSIS_FILES
        }
        absent = [
            n for n, p in paths.items() if not os.path.lexists(grid.here(p))
        ]
        if "kernels.csv" in absent or "pairwise.csv" in absent:
            missing.append(
                f"{cell_id}: no {' or '.join(absent)} "
                f"(analyze_kernels.py output) in {out_dir}"
            )
            continue
        table = _read_csv(cell_id, paths["kernels.csv"], out_dir, ["path"])
        keys = [_kernel_key(seed, p) for p in table["path"]]
        unknown = [
            p for p, k in zip(table["path"], keys, strict=True) if k is None
        ]
        if unknown:
            missing.append(f"{cell_id}: unknown kernel path {unknown[0]}")
        lacking = sorted(expected.get(seed, set()) - set(keys))
        if lacking:
            missing.append(
                f"{cell_id}: kernels.csv has no row for {len(lacking)} "
                f"kernel(s) of the grid, e.g. {_key_text(lacking[0])} "
                f"(remove {out_dir} and run the sweep again to remake it)"
            )
        table = table[[k is not None for k in keys]].copy()
        keyed = [k for k in keys if k is not None]
        for i, name in enumerate(KERNEL_KEYS):
            table[name] = [k[i] for k in keyed]
        measures = [
            col
            for col in table.columns
            if col not in KERNEL_KEYS + ["path", "epoch"]
            and not col.startswith("Unnamed:")  # a written index
            and pd.api.types.is_numeric_dtype(table[col])
        ]
        table = table[KERNEL_KEYS + measures]
        pairs.update(
            _pair_distances(seed, cell_id, paths["pairwise.csv"], out_dir)
        )
        frames.append(table)
    if not frames:
        return pd.DataFrame(), missing
    seeds = [s for s in c[""]["seeds"]]
    if len(seeds) > 1:
        out_dir = the_grid.seeds_analysis_dir()
        path = os.path.join(out_dir, "replicates.csv")
        if os.path.lexists(grid.here(path)):
            cell_id = f"{grid.SEEDS_ANALYSIS_DIR}/analysis"
            pairs.update(_pair_distances(None, cell_id, path, out_dir))
        else:
            missing.append(
                f"{grid.SEEDS_ANALYSIS_DIR}/analysis: no replicates.csv "
                f"(analyze_kernels.py --replicates output) in "
                f"{out_dir}: no seed baseline"
            )
    table = pd.concat(frames, ignore_index=True)
    _add_derived(table, pairs, compare, seeds)
    return table, missing


def _grid_kernels(the_grid: grid.Grid) -> dict[int, set[KernelKey]]:
    """{seed: the keys of the kernel files the grid's kernel cells write}."""
    kernels: dict[int, set[KernelKey]] = {}
    for cell in the_grid.cells():
        if cell.stage == "kernel":
            seed = cell.keys["seed"]
            for path in cell.outputs:
                key = _kernel_key(seed, path)
                if key is not None:
                    kernels.setdefault(seed, set()).add(key)
    return kernels


def _key_text(key: KernelKey) -> str:
    seed, phase1, t, class_index, n = key
    return (
        f"seed {seed}, phase1_{phase1}, t = {grid.format_t(t)}, class "
        f"{class_index}, N = {n}"
    )


def _read_csv(
    cell_id: str, path: str, folder: str, columns: Sequence[str]
) -> pd.DataFrame:
    """The CSV table a cell wrote at grid path `path`, with `columns`
    (none of them empty).

    Raises:
        UserError (grid.damaged): it cannot be read, is not a CSV table,
        was cut short (pandas writes a line break after every row), lacks
        a column or has an empty cell in one.
    """
    try:
        with open(grid.here(path), "rb") as f:
            raw = f.read()
    except IsADirectoryError:
        raise grid.damaged(cell_id, path, "a folder", folder) from None
    except OSError as err:
        raise grid.damaged(cell_id, path, err.strerror, folder) from None
    if not raw.endswith(b"\n"):
        problem = (
            "cut short: its last line has no line break"
            if raw
            else "an empty file"
        )
        raise grid.damaged(cell_id, path, problem, folder)
    try:
        # An empty table is written as one line break.
        table = (
            pd.DataFrame(columns=list(columns))
            if raw == b"\n"
            else pd.read_csv(io.BytesIO(raw))
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        problem = f"not a CSV table: {utils.one_line(err, limit=120)}"
        raise grid.damaged(cell_id, path, problem, folder) from None
    for column in columns:
        if column not in table.columns:
            problem = f"no column {column!r}"
            raise grid.damaged(cell_id, path, problem, folder)
        if table[column].isna().any():
            problem = f"an empty {column!r} in row {_first_na(table, column)}"
            raise grid.damaged(cell_id, path, problem, folder)
    return table


def _first_na(table: pd.DataFrame, column: str) -> int:
    """The 1-based data row of the first empty cell of `column`."""
    return int(np.flatnonzero(table[column].isna().to_numpy())[0]) + 1


def _pair_distances(
    seed: int | None, cell_id: str, path: str, folder: str
) -> dict[frozenset, float]:
    """{frozenset of two kernel keys: distance} from pairwise.csv or
    replicates.csv at grid path `path` (seed None: each kernel's seed read
    from its path). A damaged file is refused (_read_csv)."""
    table = _read_csv(cell_id, path, folder, ["a", "b", "distance"])
    distances = pd.to_numeric(table["distance"], errors="coerce")
    if distances.isna().any():
        row = int(np.flatnonzero(distances.isna().to_numpy())[0])
        problem = (
            f"distance {table['distance'].iloc[row]!r} in row {row + 1} is "
            "not a number"
        )
        raise grid.damaged(cell_id, path, problem, folder)
    pairs = {}
    for a_path, b_path, distance in zip(
        table["a"], table["b"], distances, strict=True
    ):
        a, b = _kernel_key(seed, a_path), _kernel_key(seed, b_path)
        if a is not None and b is not None:
            pairs[frozenset((a, b))] = float(distance)
    return pairs


def _add_derived(
    table: pd.DataFrame,
    pairs: Mapping[frozenset, float],
    compare: Sequence[str],
    seeds: Sequence[int],
) -> None:
    """Adds DERIVED and TO_SEED columns to `table` (in place) from
    `pairs`."""
    for name in DERIVED:
        table[name] = math.nan
    if len(seeds) > 1:
        for other in seeds:
            table[TO_SEED.format(other)] = math.nan
    keys = [tuple(k) for k in table[KERNEL_KEYS].itertuples(index=False)]
    runs = {}
    for key in keys:
        seed, phase1, t, class_index, n = key
        runs.setdefault((seed, phase1, class_index, n), []).append(t)
    for index, key in zip(table.index, keys, strict=True):
        seed, phase1, t, class_index, n = key
        times = sorted(runs[(seed, phase1, class_index, n)])
        final = (seed, phase1, times[-1], class_index, n)
        table.loc[index, "distance_to_final"] = (
            0.0
            if final == key
            else pairs.get(frozenset((key, final)), math.nan)
        )
        position = times.index(t)
        if position > 0:
            previous = (seed, phase1, times[position - 1], class_index, n)
            step = pairs.get(frozenset((key, previous)), math.nan)
            table.loc[index, "velocity"] = step / (t - times[position - 1])
        if phase1 in compare:
            other = compare[1 - compare.index(phase1)]
            twin = (seed, other, t, class_index, n)
            table.loc[index, "distance_between"] = pairs.get(
                frozenset((key, twin)), math.nan
            )
        if len(seeds) > 1:
            found = []
            for other_seed in seeds:
                if other_seed == seed:
                    continue
                replicate = (other_seed, phase1, t, class_index, n)
                d = pairs.get(frozenset((key, replicate)), math.nan)
                table.loc[index, TO_SEED.format(other_seed)] = d
                found.append(d)
            if found and not any(math.isnan(d) for d in found):
                table.loc[index, "distance_between_seeds"] = float(
                    np.mean(found)
                )


def join_kernels(
    rows: pd.DataFrame, kernel_table: pd.DataFrame
) -> pd.DataFrame:
    """`rows` with kernel_* columns: the measures of θ(t) of each row's
    phase-1 run at the largest kernel size, averaged over classes."""
    if rows.empty or kernel_table.empty:
        return rows
    largest = kernel_table.groupby(["seed", "phase1"])["n"].transform("max")
    table = kernel_table[kernel_table["n"] == largest]
    measures = [c for c in table.columns if c not in KERNEL_KEYS]
    means = table.groupby(["seed", "phase1", "t"])[measures].mean()
    means["n"] = table.groupby(["seed", "phase1", "t"])["n"].first()
    means = means.add_prefix("kernel_").reset_index()
    return rows.merge(means, on=["seed", "phase1", "t"], how="left")


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation over seeds of every numeric
    column, per (phase1, t, phase2, dynamics); n_seeds counts the seeds."""
    if rows.empty:
        return pd.DataFrame()
    group = ["phase1", "t", "phase2", "dynamics"]
    skip = set(group) | {"seed", "width", "eps", "pgd_iters", "kernel_n"}
    skip |= {"eval_pgd_iters", "eval_images", "test_images"}
    numeric = [
        c
        for c in rows.columns
        if c not in skip and pd.api.types.is_numeric_dtype(rows[c])
    ]
    grouped = rows.groupby(group)
    out = grouped[numeric].agg(["mean", "std"])
    out.columns = [f"{name}_{stat}" for name, stat in out.columns]
    out.insert(0, "n_seeds", grouped["seed"].nunique())
    return out.reset_index()


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _log_t_axis(ax: Axes, times: Iterable[float]) -> None:
    """A logarithmic t axis that keeps t = 0 (linear below the smallest
    positive t), ticked at the grid's t."""
    times = sorted(set(float(t) for t in times))
    positive = [t for t in times if t > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xticks(times)
    ax.set_xticklabels(
        [grid.format_t(t) for t in times],
        rotation=90 if len(times) > 8 else 0,
        fontsize=8,
    )
    ax.minorticks_off()
    ax.set_xlabel("t (epochs of phase 1)")


def _kernel_label(loader: str) -> str:
    return f"{LOADER_NAMES[loader]} kernel ({loader})"


def _phase2_label(loader: str) -> str:
    return f"{LOADER_NAMES[loader]} phase 2 ({loader})"


def _labelled(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`frame` with 'kernel' and 'phase 2' label columns, and the seaborn
    arguments that give each kernel the same colour in every figure."""
    frame = frame.copy()
    frame["kernel"] = [_kernel_label(p) for p in frame["phase1"]]
    present = [p for p in grid.PHASE1_LOADERS if p in set(frame["phase1"])]
    colours = dict(zip(grid.PHASE1_LOADERS, sns.color_palette(), strict=False))
    style = {
        "hue": "kernel",
        "hue_order": [_kernel_label(p) for p in present],
        "palette": {_kernel_label(p): colours[p] for p in present},
    }
    if "phase2" in frame:
        frame["phase 2"] = [_phase2_label(p) for p in frame["phase2"]]
        style["style"] = "phase 2"
        style["style_order"] = [
            _phase2_label(p)
            for p in grid.PHASE2_LOADERS
            if p in set(frame["phase2"])
        ]
    return frame, style


def plot_accuracy(rows: pd.DataFrame, out_dir: str) -> list:
    """accuracy_vs_t_{dynamics}.png: clean and robust accuracy after phase 2
    against t, a line per {kernel} × {phase 2}, mean ± sd over seeds.
    Returns the paths written."""
    written = []
    if rows.empty:
        return written
    sns.set_theme(style="whitegrid")
    metrics = [m for m in ACCURACIES if rows[m].notna().any()]
    titles = {"clean": "clean", "linf": "PGD-L∞", "l2": "PGD-L2"}
    for dynamics, frame in rows.groupby("dynamics"):
        frame, style = _labelled(frame)
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False
        )
        for ax, metric in zip(axes[0], metrics, strict=True):
            sns.lineplot(
                data=frame,
                x="t",
                y=metric,
                markers=True,
                errorbar="sd",
                err_style="bars",
                ax=ax,
                **style,
            )
            _log_t_axis(ax, frame["t"])
            ax.set_ylabel(f"{titles[metric]} accuracy")
            ax.set_title(f"{titles[metric]} after {dynamics} phase 2")
            if ax is not axes[0][-1]:
                ax.get_legend().remove()
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"accuracy_vs_t_{dynamics}.png")
        _save(fig, path)
        written.append(path)
    return written


def _seed_columns(table: pd.DataFrame) -> list[str]:
    """The TO_SEED columns of a kernel table."""
    prefix = TO_SEED.format("")
    return [c for c in table.columns if c.startswith(prefix)]


def _class_means(kernel_table: pd.DataFrame) -> pd.DataFrame:
    """Kernel rows of the largest size, averaged over classes (a mean is
    NaN where a class lacks the value)."""
    largest = kernel_table.groupby(["seed", "phase1"])["n"].transform("max")
    table = kernel_table[kernel_table["n"] == largest]
    columns = [c for c in DERIVED if c in table] + _seed_columns(table)
    return table.groupby(["seed", "phase1", "t"], as_index=False)[columns].agg(
        lambda values: values.mean(skipna=False)
    )


def plot_kernels(kernel_table: pd.DataFrame, out_dir: str) -> list:
    """kernel_dynamics.png: velocity, distance to the run's last kernel, and
    the distance between the two compared runs beside the seed baseline
    (each run's kernel against the same training's of the other seeds),
    against t (mean ± sd over seeds, averaged over classes). Returns the
    paths written."""
    if kernel_table.empty:
        return []
    sns.set_theme(style="whitegrid")
    means = _class_means(kernel_table)
    frame, style = _labelled(means)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (column, label) in zip(
        axes[:2],
        [
            ("velocity", "kernel velocity (distance / epoch)"),
            ("distance_to_final", "distance to the run's last kernel"),
        ],
        strict=True,
    ):
        sns.lineplot(
            data=frame.dropna(subset=[column]),
            x="t",
            y=column,
            marker="o",
            errorbar="sd",
            err_style="bars",
            ax=ax,
            **style,
        )
        _log_t_axis(ax, frame["t"])
        ax.set_ylabel(label)
    # The distance between the runs (one line: it is the same from either
    # run), and each training's distance between seeds.
    between = means.dropna(subset=["distance_between"])
    between = between.drop_duplicates(["seed", "t"]).assign(
        line="benign vs. adversarial (same seed)",
        distance=lambda f: f["distance_between"],
    )
    lines = [between]
    if "distance_between_seeds" in means:
        for loader in grid.PHASE1_LOADERS:
            seeds = means[
                (means["phase1"] == loader)
                & means["distance_between_seeds"].notna()
            ]
            if len(seeds):
                lines.append(
                    seeds.assign(
                        line=f"seed baseline: {LOADER_NAMES[loader]} "
                        "vs. other seeds",
                        distance=seeds["distance_between_seeds"],
                    )
                )
    data = pd.concat(lines, ignore_index=True)
    ax = axes[2]
    if len(data):
        sns.lineplot(
            data=data,
            x="t",
            y="distance",
            hue="line",
            style="line",
            marker="o",
            errorbar="sd",
            err_style="bars",
            ax=ax,
        )
        ax.legend(fontsize=7)
    _log_t_axis(ax, frame["t"])
    ax.set_ylabel("distance between kernels")
    fig.tight_layout()
    path = os.path.join(out_dir, "kernel_dynamics.png")
    _save(fig, path)
    return [path]


def _image(hwc: npt.ArrayLike) -> np.ndarray:
    """An (H, W, C) float image (the feature files' layout, the original's)
    as imshow takes it."""
    hwc = np.asarray(hwc, np.float32)
    return hwc[..., 0] if hwc.shape[-1] == 1 else np.clip(hwc, 0, 1)


def plot_features(the_grid: grid.Grid, out_dir: str, missing: list) -> list:
    """features.png: the first feature image of each phase-1 run's kernel
    (first seed) at each features.t; absent files are noted in `missing`.
    Returns the paths written."""
    f = the_grid.config["features"]
    if f is None:
        return []
    seed = the_grid.config[""]["seeds"][0]
    runs = [
        c
        for c in the_grid.cells()
        if c.stage == "phase1" and c.keys["seed"] == seed
    ]
    fig, axes = plt.subplots(
        len(runs),
        len(f["times"]),
        figsize=(max(4.5, 2.2 * len(f["times"])), 2.4 * len(runs) + 0.4),
        squeeze=False,
    )
    found = False
    for row, run in enumerate(runs):
        for col, t in enumerate(f["times"]):
            ax = axes[row][col]
            ax.axis("off")
            path = the_grid.features_file(run, t)
            if not os.path.exists(grid.here(path)):
                missing.append(f"{run.id}: no feature images {path}")
                ax.set_title("missing", fontsize=8)
                continue
            images = checkpoints.load_pickle_arrays(
                grid.here(path), ("pos_images",)
            )
            ax.imshow(
                _image(images["pos_images"][0]), cmap="gray", vmin=0, vmax=1
            )
            loader = run.keys["phase1"]
            ax.set_title(
                f"{LOADER_NAMES[loader]} ({loader}), t = {grid.format_t(t)}",
                fontsize=8,
            )
            found = True
    if not found:
        plt.close(fig)
        return []
    fig.suptitle(
        f"feature image of the top eigenvector\nclass {f['class_index']}, "
        f"N = {f['size']}, seed {seed}",
        fontsize=9,
    )
    fig.tight_layout()
    path = os.path.join(out_dir, "features.png")
    _save(fig, path)
    return [path]


def _save(fig: Figure, path: str) -> None:
    """Writes a figure as PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.atomic_write_bytes(path, buffer.getvalue())


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
    """{'', '_summary', '_kernels': the path of the preset's CSV}."""
    return {
        suffix: os.path.join(results_dir, f"{name}{suffix}.csv")
        for suffix in ("", "_summary", "_kernels")
    }


def check_outputs(name: str, results_dir: str, report_path: str) -> None:
    """Refuses, before anything is written, outputs `aggregate` could not
    write: a --results_dir (or its figure folder `{name}/`) that is a file
    or cannot be written, a CSV path that is a folder, a --report that is
    a folder or in a folder that cannot be written.

    Raises:
        UserError: one line naming the flag and the path.
    """
    _check_folder("--results_dir", results_dir)
    figure_dir = os.path.join(results_dir, name)
    _check_folder("--results_dir", figure_dir, results_dir)
    for path in preset_csvs(results_dir, name).values():
        _check_file("--results_dir", path, results_dir)
    _check_report(results_dir, report_path)


def _check_report(results_dir: str, report_path: str) -> None:
    """Refuses what write_report could not write: the report, and the
    paper grid's commands in `results_dir`."""
    _check_file("--report", report_path)
    commands = os.path.join(results_dir, COMMANDS_FILE)
    _check_file("--results_dir", commands, results_dir)


def aggregate(the_grid: grid.Grid, results_dir: str, report_path: str) -> dict:
    """Writes the CSVs and figures of `the_grid` into `results_dir`, then
    regenerates the report at `report_path` from every preset's CSVs there.

    Refuses (UserError, nothing written): an output that cannot be written
    (check_outputs); an output root whose sweep.json or cells record other
    settings than the grid's (Grid.check_record, Grid.check_cells); a
    damaged file of a cell; no phase-2 cell with results (so that a wrong
    output root never overwrites committed results).

    The preset's outputs in `results_dir` ({name}.csv, {name}_summary.csv,
    {name}_kernels.csv, the figures {name}/*.png) are replaced as a whole:
    made in a hidden folder there, then moved into place, and those of an
    earlier aggregation that this one does not make are removed.

    Returns:
        {'rows': DataFrame, 'summary': DataFrame, 'kernels': DataFrame,
        'missing': list of str, 'written': list of paths}.
    """
    name = the_grid.name
    check_outputs(name, results_dir, report_path)
    the_grid.check_record()
    the_grid.check_cells(the_grid.cells())
    rows, missing = collect_cells(the_grid)
    kernel_table, kernel_missing = collect_kernels(the_grid)
    missing += kernel_missing
    if rows.empty:
        raise utils.UserError(
            f"no phase-2 cell of {name} has results under {the_grid.root}: "
            "nothing to aggregate (run the grid first, or pass its "
            "--output_root)"
        )
    rows = join_kernels(rows, kernel_table)
    summary = summarize(rows)
    atomic.ensure_writable_dir(results_dir)
    with atomic.FolderLock(results_dir, "--results_dir"):
        written = _replace_outputs(
            the_grid, results_dir, (rows, summary, kernel_table), missing
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
        missing=missing,
        written=written,
    )


def _replace_outputs(
    the_grid: grid.Grid,
    results_dir: str,
    frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    missing: list,
) -> list[str]:
    """Makes the preset's CSVs and figures in a hidden folder of
    `results_dir`, then moves them into place and removes the preset's
    outputs this run does not make. Call with the folder's lock held.
    Returns the paths written."""
    name = the_grid.name
    rows, summary, kernel_table = frames
    staging = os.path.join(results_dir, f".{name}.aggregating")
    shutil.rmtree(staging, ignore_errors=True)  # of a killed aggregation
    os.makedirs(os.path.join(staging, name))
    try:
        made = {}  # final path -> staged path
        csvs = preset_csvs(results_dir, name)
        tables = {"": rows, "_summary": summary}
        if not kernel_table.empty:
            tables["_kernels"] = kernel_table
        for suffix, frame in tables.items():
            staged = os.path.join(staging, os.path.basename(csvs[suffix]))
            atomic.atomic_write_text(staged, frame.to_csv(index=False))
            made[csvs[suffix]] = staged
        staged_figures = os.path.join(staging, name)
        figures = plot_accuracy(rows, staged_figures)
        figures += plot_kernels(kernel_table, staged_figures)
        figures += plot_features(the_grid, staged_figures, missing)
        figure_dir = os.path.join(results_dir, name)
        for staged in figures:
            made[os.path.join(figure_dir, os.path.basename(staged))] = staged
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


def _main_dynamics(rows: pd.DataFrame) -> str:
    dynamics = list(rows["dynamics"].unique())
    return "centered" if "centered" in dynamics else dynamics[0]


def claim_two(rows: pd.DataFrame) -> dict:
    """Claim 2 on a preset's rows: the adversarial kernel's robust accuracy
    after benign phase 2 against the benign kernel's, at the largest t.

    Returns:
        {'verdict': 'supported' | 'in direction only' (higher in every
        seed, not by the margin in all) | 'not supported' | 'no data', 't',
        'gains': {seed: linf(A) - linf(C)}, 'adversarial', 'benign':
        (mean, std) of linf}.
    """
    if rows.empty:
        return {"verdict": "no data"}
    frame = rows[
        (rows["phase2"] == "C") & (rows["dynamics"] == _main_dynamics(rows))
    ]
    both = frame.groupby("t")["phase1"].agg(lambda s: {"A", "C"} <= set(s))
    times = sorted(t for t, ok in both.items() if ok)
    if not times:
        return {"verdict": "no data"}
    t = times[-1]
    at_t = frame[frame["t"] == t].set_index(["seed", "phase1"])["linf"]
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
        "adversarial": _stats(at[at["phase1"] == "A"]["linf"]),
        "benign": _stats(at[at["phase1"] == "C"]["linf"]),
    }


def claim_three(rows: pd.DataFrame) -> dict:
    """Claim 3: robust accuracy after adversarial phase 2 on the adversarial
    kernel at the largest t; tested only on CIFAR-10 at ε = 4/255."""
    if rows.empty:
        return {"verdict": "no data"}
    frame = rows[
        (rows["phase1"] == "A")
        & (rows["phase2"] == "A")
        & (rows["dynamics"] == _main_dynamics(rows))
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
        "robust": _stats(values),
        "per_seed": dict(zip(at["seed"], values, strict=True)),
    }


def claim_one(kernel_table: pd.DataFrame) -> dict:
    """Claim 1 on a preset's kernel table (class means of the largest N).

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
        'baseline': (mean, sd, count)}.
    """
    if kernel_table.empty or "distance_between" not in kernel_table:
        return {"verdict": "no data", "why": "no kernel analysis"}
    frame = _class_means(kernel_table)
    if not {"A", "C"} <= set(frame["phase1"]):
        return {"verdict": "no data", "why": "needs kernels of C and A"}
    seeds = sorted(frame["seed"].unique())
    if len(seeds) < 2 or not _seed_columns(frame):
        return {"verdict": "no data", "why": "no seed baseline (one seed)"}
    if frame[_seed_columns(frame)].isna().all().all():
        return {
            "verdict": "no data",
            "why": "no seed baseline (no analysis across seeds)",
        }
    t = frame["t"].max()
    last = frame[frame["t"] == t].set_index(["seed", "phase1"])
    between = {
        s: last["distance_between"].get((s, "A"), math.nan) for s in seeds
    }
    pairs = {}
    for i, a in enumerate(seeds):
        for b in seeds[i + 1 :]:
            both = [
                last[TO_SEED.format(b)].get((a, loader), math.nan)
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
    values = [
        v for p in pairs.values() for v in (*p["between"], p["baseline"])
    ]
    values += [v for d in settle.values() for v in d.values()]
    if any(math.isnan(v) for v in values):
        return {"verdict": "no data", "why": "kernels missing at some t"}
    far = all(p["ratio"] > SEED_BASELINE_FACTOR for p in pairs.values())
    rapid = all(d["A"] <= d["C"] for d in settle.values())
    baselines = [p["baseline"] for p in pairs.values()]
    return {
        "verdict": "supported" if far and rapid else "not supported",
        "t": t,
        "pairs": pairs,
        "settle": settle,
        "between": _stats(list(between.values())),
        "baseline": _stats(baselines),
    }


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (NaN for one value), count)."""
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return float(np.mean(values)), sd, len(values)


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
    devices = ", ".join(sorted(set(map(str, rows["device"].dropna()))))
    jaxes = ", ".join(sorted(set(map(str, rows["jax"].dropna()))))
    seeds = sorted(rows["seed"].unique())
    lines += [
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
    dynamics = _main_dynamics(rows)
    frame = rows[rows["dynamics"] == dynamics]
    t_max = frame["t"].max()
    lines += [
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
    for reference in c["reference"]:
        match = rows[
            (rows["phase1"] == reference["phase1"])
            & (rows["t"] == reference["t"])
            & (rows["phase2"] == reference["phase2"])
            & (rows["dynamics"] == reference["dynamics"])
        ]
        ours = (
            f"clean {_mean_text(_stats(match['clean']))}, PGD-L∞ "
            f"{_mean_text(_stats(match['linf']))}"
            if not match.empty
            else "no matching cell"
        )
        lines.append(
            f"- Reference ({reference['source']}): {reference['phase1']} "
            f"kernel, t = {reference['t']:g}, phase 2 {reference['phase2']}: "
            f"clean {reference['clean']:.3f}, PGD-L∞ {reference['linf']:.3f}; "
            f"ours: {ours}."
        )
    if c["reference"]:
        lines.append("")
    figure_dir = os.path.join(results_dir, name)
    for figure in (
        sorted(os.listdir(figure_dir)) if os.path.isdir(figure_dir) else []
    ):
        if figure.endswith(".png"):
            rel = os.path.relpath(os.path.join(figure_dir, figure), report_dir)
            lines += [f"![{figure}]({rel})", ""]
    if kernel_table.empty:
        lines += [
            "Kernel measures: missing (no analyze_kernels.py output was "
            "aggregated).",
            "",
        ]
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


def _claim_one_text(one: dict) -> str:
    pairs = "; ".join(
        f"s{a}–s{b}: {p['between'][0]:.3f}, {p['between'][1]:.3f} vs. "
        f"{p['baseline']:.3f} (×{p['ratio']:.1f})"
        for (a, b), p in one["pairs"].items()
    )
    settle = ", ".join(
        f"s{seed}: {grid.format_t(d['A'])} vs. {grid.format_t(d['C'])}"
        for seed, d in one["settle"].items()
    )
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


def _verdict_cells(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    rows, kernel_table = frames["rows"], frames["_kernels"]
    if rows.empty:
        return ["not run"] * 3
    results = (
        (claim_one(kernel_table), _claim_one_text),
        (claim_two(rows), _claim_two_text),
        (claim_three(rows), _claim_three_text),
    )
    cells = []
    for result, text in results:
        if result["verdict"] == "no data":
            cells.append(result.get("why", "no data"))
        else:
            cells.append(f"{result['verdict']}: {text(result)}")
    return cells


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
    """The paper grid's commands (a file) and GPU-hours."""
    the_grid = grid.Grid.load(config_path)
    cells = the_grid.cells()
    commands = os.path.join(results_dir, COMMANDS_FILE)
    text = "".join(
        f"# {cell.id}\n{cell.command('python')}\n" for cell in cells
    )
    atomic.atomic_write_text(commands, text)
    cost = grid.estimate(the_grid, cells)
    rel = os.path.relpath(commands, report_dir)
    lines = [
        f"### {the_grid.name}: commands and cost",
        "",
        f"`python sweep.py {_shown(config_path)} "
        f"--dry_run` prints its {len(cells)} commands (also in "
        f"[{os.path.basename(commands)}]({rel})). GPU-hours from "
        f"throughput measured on {cost['device']} "
        f"({cost['source']}):",
        "",
        "| stage | cells | GPU-hours |",
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
        "- **Claim 1** holds when (a) at the last t, in every pair of seeds "
        "(s, s′), the distance between the benign and the adversarial "
        "kernel of the same seed is, in each of s and s′, more than "
        f"**{SEED_BASELINE_FACTOR:g}×** the seed baseline: the distance "
        "between the kernels of s and s′ of the same training (the larger "
        "of benign's and adversarial's); and (b) in every seed the "
        "adversarial run settles no later than the benign run. A run "
        "settles at the first t after which its kernel stays within "
        f"**{SETTLE_FRACTION:g}** of its first kernel's distance to its "
        "last kernel. It needs two or more seeds.",
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
