"""Reading a sweep's cells into tables: a row per phase-2 cell (its
accuracies, its evaluation's, its phase-1 run's, the settings) and a row
per kernel file that analyze_kernels.py analysed (its measures and the
distances between kernels). Files that are absent are listed as missing,
never guessed; a file that is there but damaged is refused in one line
naming its cell (grid.damaged)."""

import io
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

import attacks
import models
import utils
from analysis import kernel_analysis
from store import layout
from sweeper import grid, schema
from sweeper.grid import KernelKey

KEYS = ["seed", "phase1", "t", "phase2", "dynamics"]
# run_exp.py's accuracies: clean, and PGD's of each --eval_attacks.
ACCURACIES = ["clean", *schema.ATTACKS]
KERNEL_KEYS = ["seed", "phase1", "t", "class_index", "n"]
DERIVED = [
    "distance_to_final",
    "velocity",
    "distance_between",
    "distance_between_seeds",
]
# The robustness table ({name}_robustness.csv): a row per robustness cell.
ROBUSTNESS_KEYS = KEYS + ["attack", "eps"]
# Who broke an example first (eval_and_make_adv.py's broken_by counts,
# by name): wrong when clean, each attack with a result code (by code),
# robust to all (attacks.registry.outcomes).
BROKEN_BY = list(attacks.outcomes())
BROKEN = "broken_by_{}"  # its column: broken_by_apgd_ce, ...
# Of {name}.csv: AutoAttack at attack.eps, named after the attack.
AUTOATTACK_COLUMN = schema.AUTOATTACK


def column(name: str) -> str:
    """A table's column named after an attack: 'apgd-ce' -> 'apgd_ce'."""
    return name.replace("-", "_")


def broken_column(name: str) -> str:
    """The robustness table's column of a broken_by count (of an outcome
    of attacks.outcomes())."""
    return BROKEN.format(column(name))


# Columns of the kernel table: the distance to the same loader's kernel of
# seed s (same t, class and images), one column per seed of the grid.
TO_SEED = "distance_to_seed_{}"
# Claim 1 like with like. The distance to the other compared run's kernel
# of seed s (a row of C: S(C_s', A_s); same t, class and images), one
# column per seed of the grid; and, in the rows of the replicated loader
# (schema.ORDER_REPLICATE_LOADER), the distance to the order replicate's
# kernel of the same seed, S(C_s, C′_s) (grids with
# phase1.order_replicate).
CROSS_TO_SEED = "cross_distance_to_seed_{}"
TO_REORDERED = "distance_to_reordered"


# The values of a cell's JSON files: accuracies are fractions, the
# others (images, iterations, broken_by counts) counts.
COUNTS = ("n", "test_images", "eval_images", "eval_pgd_iters")


def _value_range(column: str) -> tuple[float, float]:
    """(minimum, maximum) of a column read from a cell's JSON file."""
    if column in COUNTS or column.startswith(BROKEN.format("")):
        return 0.0, math.inf
    return 0.0, 1.0


def _value(record: object, *keys: str) -> float:
    """record[k1][k2]... as a float, NaN where absent or None.

    Raises:
        ValueError: the value is there but not a finite number.
    """
    for key in keys:
        if not isinstance(record, dict) or record.get(key) is None:
            return math.nan
        record = record[key]
    if isinstance(record, bool) or not isinstance(record, int | float):
        raise ValueError(f"{'.'.join(keys)} is {record!r}, not a number")
    if not math.isfinite(record):
        raise ValueError(f"{'.'.join(keys)} is {record!r}, not finite")
    return float(record)


def _read_record(
    records: grid.CellRecords,
    cell_id: str,
    path: str,
    folder: str,
    needs: Sequence[str] = (),
) -> dict | None:
    """A cell's JSON object (None when absent; read through `records`),
    with the keys `needs` its script always writes.

    Raises:
        UserError: naming the cell and the file, when it is damaged.
    """
    record = records.read(cell_id, path, folder)
    if record is not None:
        absent = [key for key in needs if key not in record]
        if absent:
            raise grid.damaged(cell_id, path, f"no {absent[0]!r}", folder)
    return record


def _numbers(
    cell_id: str, path: str, folder: str, values: Mapping[str, tuple]
) -> dict[str, float]:
    """{name: _value(record, *keys)} for values {name: (record, *keys)};
    a value that is not a finite number in its range (_value_range) makes
    the file damaged."""
    numbers = {}
    for name, (record, *keys) in values.items():
        try:
            value = _value(record, *keys)
        except ValueError as err:
            raise grid.damaged(cell_id, path, str(err), folder) from None
        low, high = _value_range(name)
        if not math.isnan(value) and not low <= value <= high:
            where = f"{'.'.join(keys)} is {value:g}"
            problem = (
                f"{where}, not in [{low:g}, {high:g}]"
                if high < math.inf
                else f"{where}, below {low:g}"
            )
            raise grid.damaged(cell_id, path, problem, folder)
        numbers[name] = value
    return numbers


# --------------------------------------------------------------------------
# Collecting the cells' files
# --------------------------------------------------------------------------


def collect_cells(
    the_grid: grid.Grid, records: grid.CellRecords | None = None
) -> tuple:
    """A row per phase-2 cell with results, and what is missing.

    records: where the cells' JSON files are read (each once; the flag
    check of the same files may have read them already).
    Returns:
        (DataFrame, missing): the rows (columns in the module docstring;
        accuracies as fractions, NaN where not measured) and a list of
        'cell id: what is missing' strings.
    Raises:
        UserError: one line naming the cell and the file, for a file that
        is there but is not what its script writes (truncated, not JSON, a
        list, a value that is not a number, ...).
    """
    records = records or grid.CellRecords()
    rows, missing = [], []
    phase1_results = {}
    autoattack = _autoattack(the_grid, records)
    for cell in the_grid.cells():
        if cell.stage == "phase1":
            phase1_results[cell.id] = (
                _read_record(
                    records,
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
        results = _read_record(
            records, cell.id, cell.outputs[0], folder, ("linear",)
        )
        if results is None:
            missing.append(f"{cell.id}: no {layout.RESULTS_JSON}")
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
        if the_grid.config["evaluation"] is not None:
            row.update(_eval_numbers(the_grid, cell, records, missing))
        if autoattack is not None:
            row[AUTOATTACK_COLUMN] = autoattack.get(cell.id, math.nan)
        phase1 = phase1_results.get(cell.deps[0], (None, ""))
        row.update(_phase1_numbers(cell.deps[0], *phase1))
        row.update(_settings(the_grid, cell, records))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if autoattack is not None and frame.get(AUTOATTACK_COLUMN) is not None:
        if frame[AUTOATTACK_COLUMN].isna().all():
            frame = frame.drop(columns=AUTOATTACK_COLUMN)
    # Image counts are whole numbers: written as such when all are known.
    if "test_images" in frame and frame["test_images"].notna().all():
        frame["test_images"] = frame["test_images"].astype(int)
    return frame, missing


def _autoattack(
    the_grid: grid.Grid, records: grid.CellRecords
) -> dict[str, float] | None:
    """{phase-2 cell id: AutoAttack's robust accuracy at attack.eps} of the
    robustness cells that ran; None when the grid runs no AutoAttack there
    (then {name}.csv has no autoattack column, as before the robustness
    cells)."""
    r = the_grid.config["robustness"]
    if r is None or not r[schema.AUTOATTACK]:
        return None
    eps = the_grid.config["attack"]["eps"]
    found = {}
    for cell in the_grid.cells():
        if (
            cell.stage == "robustness"
            and cell.keys["attack"] == schema.AUTOATTACK
            and cell.keys["eps"] == eps
        ):
            row = _robustness_row(cell, records)
            if row is not None:
                found[cell.deps[0]] = row["acc_robust"]
    return found


def _robustness_row(
    cell: grid.Cell, records: grid.CellRecords
) -> dict[str, object] | None:
    """A robustness cell's row of the robustness table from its results
    json (None when absent): the keys, n, clean and robust accuracy, and
    the broken_by counts (NaN where the attack records none, e.g. PGD).

    Raises:
        UserError: naming the cell and the file, when it is damaged.
    """
    path = cell.outputs[0]
    folder = os.path.dirname(path)
    record = _read_record(records, cell.id, path, folder, ("sources",))
    if record is None:
        return None
    sources = record["sources"]
    if not (
        isinstance(sources, list) and sources and isinstance(sources[0], dict)
    ):
        raise grid.damaged(cell.id, path, "no 'sources' rows", folder)
    source = sources[0]
    broken = source.get("broken_by")
    if broken is not None and not isinstance(broken, dict):
        raise grid.damaged(cell.id, path, "'broken_by' not an object", folder)
    row = {key: cell.keys[key] for key in ROBUSTNESS_KEYS}
    values = {
        "n": (source, "n"),
        "acc_clean": (source, "acc_clean"),
        "acc_robust": (source, "acc_dirty"),
    }
    values.update(
        {broken_column(b): (broken, b) for b in BROKEN_BY}
        if broken is not None
        else {}
    )
    row.update(_numbers(cell.id, path, folder, values))
    for b in BROKEN_BY:
        row.setdefault(broken_column(b), math.nan)
    row["cell"] = cell.id
    return row


def collect_robustness(
    the_grid: grid.Grid, records: grid.CellRecords | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """A row per robustness cell with results ({name}_robustness.csv:
    ROBUSTNESS_KEYS, n, acc_clean, acc_robust, the broken_by counts as
    broken_by_* columns, the cell id), and the cells without results
    (missing). An empty table when the grid has no [robustness]."""
    records = records or grid.CellRecords()
    rows, missing = [], []
    for cell in the_grid.cells():
        if cell.stage != "robustness":
            continue
        row = _robustness_row(cell, records)
        if row is None:
            missing.append(f"{cell.id}: no results json")
            continue
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        counts = ["n"] + [broken_column(b) for b in BROKEN_BY]
        for column in counts:
            if frame[column].notna().all():
                frame[column] = frame[column].astype(int)
    return frame, missing


def _phase1_numbers(
    cell_id: str, results: dict | None, path: str
) -> dict[str, float]:
    """The phase1_* columns: the final accuracies of a phase-1 run from
    its results.json at `path` (NaN when it has none)."""
    return _numbers(
        cell_id,
        path,
        os.path.dirname(path),
        {f"phase1_{name}": (results, "standard", name) for name in ACCURACIES},
    )


def _settings(
    the_grid: grid.Grid, cell: grid.Cell, records: grid.CellRecords
) -> dict:
    """The settings columns of a phase-2 cell's row: the grid's, the test
    images, device and JAX version its config.json records."""
    c = the_grid.config
    folder = cell.keys["save_path"]
    config_path = os.path.join(folder, layout.CONFIG)
    config = _read_record(records, cell.id, config_path, folder)
    env = (config or {}).get("environment")
    env = env if isinstance(env, dict) else {}
    test_images = _numbers(
        cell.id,
        config_path,
        folder,
        {"test_images": (config, "test_images")},
    )
    return dict(
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


def _eval_numbers(
    the_grid: grid.Grid,
    cell: grid.Cell,
    records: grid.CellRecords,
    missing: list,
) -> dict[str, float]:
    """The eval_* columns of a phase-2 cell from its evaluation's results
    json (NaN, and noted in `missing`, when it is absent)."""
    cell_id = f"{cell.id}/eval"
    path = the_grid.eval_results(cell)
    folder = os.path.dirname(path)
    record = _read_record(records, cell_id, path, folder, ("sources",))
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
    t) and distance_between_seeds (their mean over the other seeds); from
    its pairwise.csv, cross_distance_to_seed_{s} (to the other compared
    run's kernel of seed s at the same t: S(C_s', A_s) in a row of
    C_s'). With phase1.order_replicate, distance_to_reordered (in the rows
    of C: S(C_s, C′_s), from the seed's pairwise.csv); the order
    replicate's kernels give no rows of their own.

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
    finished = _finished_analyses(the_grid)
    pairs: dict[frozenset, float] = {}
    for seed in c[""]["seeds"]:
        found = _seed_kernels(the_grid, seed, (expected, finished), missing)
        if found is not None:
            frames.append(found[0])
            pairs.update(found[1])
    if not frames:
        return pd.DataFrame(), missing
    seeds = [s for s in c[""]["seeds"]]
    if len(seeds) > 1:
        pairs.update(_seeds_pairs(the_grid, finished, missing))
        # The pairs across seeds and trainings, S(C_s, A_s'), from the same
        # analysis; a pair read already keeps the distance read first.
        for key, distance in _cross_pairs(the_grid, finished, missing).items():
            pairs.setdefault(key, distance)
    table = pd.concat(frames, ignore_index=True)
    _add_derived(table, pairs, compare, seeds)
    if c["phase1"]["order_replicate"]:
        _add_reordered(table, pairs)
    return table, missing


def _finished_analyses(the_grid: grid.Grid) -> set[str]:
    """The ids of the grid's analysis cells that are finished by the
    sweep's own rule (grid.cell_status: every output there, analysis.json,
    written last, included)."""
    return {
        cell.id
        for cell in the_grid.cells()
        if cell.stage == "analysis" and grid.cell_status(cell) == grid.DONE
    }


def _unfinished(cell_id: str, out_dir: str, finished: set[str]) -> str | None:
    """What `missing` says of an analysis cell (its id and --out_dir) that
    is not finished: the outputs not there; None when it is finished."""
    if cell_id in finished:
        return None
    names = (
        grid.SEEDS_ANALYSIS_FILES
        if cell_id.startswith(grid.SEEDS_ANALYSIS_DIR + "/")
        else grid.ANALYSIS_FILES
    )
    absent = [
        name
        for name in names
        if not os.path.lexists(grid.here(os.path.join(out_dir, name)))
    ]
    return (
        f"{cell_id}: no {' or '.join(absent or names)} in {out_dir}: "
        f"unfinished (analyze_kernels.py writes {layout.ANALYSIS_MARKER} "
        "last)"
    )


def _seed_kernels(
    the_grid: grid.Grid,
    seed: int,
    known: tuple[dict[int, set[KernelKey]], set[str]],
    missing: list,
) -> tuple[pd.DataFrame, dict[frozenset, float]] | None:
    """(the kernel rows, the pairwise distances) of a seed's analysis, or
    None when it is not finished; `known`: (the kernels the grid expects
    per seed, the finished analysis cells). What is unfinished or lacking
    is noted in `missing`."""
    expected, finished = known
    out_dir = the_grid.analysis_dir(seed)
    cell_id = f"{grid.SEED_DIR.format(seed)}/{grid.ANALYSIS_DIR}"
    paths = {name: os.path.join(out_dir, name) for name in grid.ANALYSIS_FILES}
    unfinished = _unfinished(cell_id, out_dir, finished)
    if unfinished:
        missing.append(unfinished)
        return None
    table = _read_csv(cell_id, paths[layout.KERNELS_CSV], out_dir, ["path"])
    keys = [grid.kernel_key(seed, p) for p in table["path"]]
    unknown = [
        p for p, k in zip(table["path"], keys, strict=True) if k is None
    ]
    if unknown:
        missing.append(f"{cell_id}: unknown kernel path {unknown[0]}")
    lacking = sorted(expected.get(seed, set()) - set(keys))
    if lacking:
        missing.append(
            f"{cell_id}: {layout.KERNELS_CSV} has no row for {len(lacking)} "
            f"kernel(s) of the grid, e.g. {_key_text(lacking[0])} "
            f"(remove {out_dir} and run the sweep again to remake it)"
        )
    # The order replicate's kernels give distances (pairs), not rows.
    kept = [k is not None and k[1] != grid.REORDERED for k in keys]
    table = table[kept].copy()
    keyed = [k for k, keep in zip(keys, kept, strict=True) if keep]
    for i, name in enumerate(KERNEL_KEYS):
        table[name] = [k[i] for k in keyed]
    measures = [
        col
        for col in table.columns
        if col not in KERNEL_KEYS + ["path", "epoch"]
        and not col.startswith("Unnamed:")  # a written index
        and pd.api.types.is_numeric_dtype(table[col])
    ]
    _check_measures(table, measures, (cell_id, paths[layout.KERNELS_CSV]))
    pairs = _pair_distances(seed, cell_id, paths[layout.PAIRWISE_CSV], out_dir)
    return table[KERNEL_KEYS + measures], pairs


def _check_measures(
    table: pd.DataFrame, columns: Sequence[str], where: tuple[str, str]
) -> None:
    """Refuses (grid.damaged) a kernels.csv of (cell id, path) `where`
    whose measure `columns` hold a value no kernel can have
    (kernel_analysis.measure_problem: a distance outside [0, 1], a rank
    not above 0, a value that is not finite)."""
    cell_id, path = where
    for column in columns:
        if pd.api.types.is_bool_dtype(table[column]):
            continue
        for row, value in enumerate(table[column].to_numpy(float), start=1):
            problem = kernel_analysis.measure_problem(column, value)
            if problem:
                raise grid.damaged(
                    cell_id,
                    path,
                    f"{column} {value:g} in row {row} is {problem}",
                    os.path.dirname(path),
                )


def _seeds_pairs(
    the_grid: grid.Grid, finished: set[str], missing: list
) -> dict:
    """The distances between seeds' kernels from the analysis across seeds
    (empty, and noted in `missing`, when it is not finished)."""
    out_dir = the_grid.seeds_analysis_dir()
    path = os.path.join(out_dir, layout.REPLICATES_CSV)
    cell_id = f"{grid.SEEDS_ANALYSIS_DIR}/{grid.ANALYSIS_DIR}"
    unfinished = _unfinished(cell_id, out_dir, finished)
    if unfinished is None:
        return _pair_distances(None, cell_id, path, out_dir)
    missing.append(f"{unfinished}: no seed baseline")
    return {}


def _cross_pairs(
    the_grid: grid.Grid, finished: set[str], missing: list
) -> dict:
    """The distances between kernels of different seeds and different
    phase-1 runs (S(C_s, A_s')) from the pairwise.csv of the analysis
    across seeds, which pairs all its kernels of a class (empty, and noted
    in `missing`, when the analysis is not finished or the file is
    absent)."""
    out_dir = the_grid.seeds_analysis_dir()
    path = os.path.join(out_dir, layout.PAIRWISE_CSV)
    cell_id = f"{grid.SEEDS_ANALYSIS_DIR}/{grid.ANALYSIS_DIR}"
    if _unfinished(cell_id, out_dir, finished) is not None:
        return {}  # _seeds_pairs notes it
    if not os.path.lexists(grid.here(path)):
        missing.append(
            f"{cell_id}: no {layout.PAIRWISE_CSV} in {out_dir}: no "
            "distances across seeds between the compared runs"
        )
        return {}
    pairs = _pair_distances(None, cell_id, path, out_dir)
    return {
        key: distance
        for key, distance in pairs.items()
        if len({k[0] for k in key}) == 2 and len({k[1] for k in key}) == 2
    }


def _grid_kernels(the_grid: grid.Grid) -> dict[int, set[KernelKey]]:
    """{seed: the keys of the kernel files the grid's kernel cells write}."""
    kernels: dict[int, set[KernelKey]] = {}
    for cell in the_grid.cells():
        if cell.stage == "kernel":
            seed = cell.keys["seed"]
            for path in cell.outputs:
                key = grid.kernel_key(seed, path)
                if key is not None:
                    kernels.setdefault(seed, set()).add(key)
    return kernels


def _key_text(key: KernelKey) -> str:
    seed, phase1, t, class_index, n = key
    return (
        f"seed {seed}, phase1_{phase1}, t = {layout.format_t(t)}, class "
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
    _check_measures(
        pd.DataFrame({"distance": distances}), ["distance"], (cell_id, path)
    )
    pairs = {}
    for a_path, b_path, distance in zip(
        table["a"], table["b"], distances, strict=True
    ):
        a, b = grid.kernel_key(seed, a_path), grid.kernel_key(seed, b_path)
        if a is not None and b is not None:
            pairs[frozenset((a, b))] = float(distance)
    return pairs


def _add_derived(
    table: pd.DataFrame,
    pairs: Mapping[frozenset, float],
    compare: Sequence[str],
    seeds: Sequence[int],
) -> None:
    """Adds DERIVED, TO_SEED and CROSS_TO_SEED columns to `table` (in
    place) from `pairs`."""
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
    if len(seeds) > 1:
        _add_like_with_like(table, pairs, compare, seeds)


def _add_like_with_like(
    table: pd.DataFrame,
    pairs: Mapping[frozenset, float],
    compare: Sequence[str],
    seeds: Sequence[int],
) -> None:
    """Adds the CROSS_TO_SEED columns (in place): in a row of one of the
    compared runs, the distance to the other compared run's kernel of each
    other seed at the same t, class and size (NaN for its own seed, and in
    the rows of runs not compared)."""
    for other in seeds:
        table[CROSS_TO_SEED.format(other)] = math.nan
    keys = [tuple(k) for k in table[KERNEL_KEYS].itertuples(index=False)]
    for index, key in zip(table.index, keys, strict=True):
        seed, phase1, t, class_index, n = key
        if phase1 not in compare:
            continue
        partner = compare[1 - compare.index(phase1)]
        for other in seeds:
            if other != seed:
                twin = (other, partner, t, class_index, n)
                table.loc[index, CROSS_TO_SEED.format(other)] = pairs.get(
                    frozenset((key, twin)), math.nan
                )


def _add_reordered(
    table: pd.DataFrame, pairs: Mapping[frozenset, float]
) -> None:
    """Adds the TO_REORDERED column (in place): in the rows of the
    replicated loader, the distance to the order replicate's kernel of the
    same seed, t, class and size (NaN elsewhere)."""
    table[TO_REORDERED] = math.nan
    keys = [tuple(k) for k in table[KERNEL_KEYS].itertuples(index=False)]
    for index, key in zip(table.index, keys, strict=True):
        seed, phase1, t, class_index, n = key
        if phase1 == schema.ORDER_REPLICATE_LOADER:
            twin = (seed, grid.REORDERED, t, class_index, n)
            table.loc[index, TO_REORDERED] = pairs.get(
                frozenset((key, twin)), math.nan
            )


def like_with_like_columns(table: pd.DataFrame) -> list[str]:
    """The kernel table's columns of claim 1 like with like: CROSS_TO_SEED
    and TO_REORDERED."""
    prefix = CROSS_TO_SEED.format("")
    return [c for c in table.columns if c.startswith(prefix)] + [
        c for c in table.columns if c == TO_REORDERED
    ]


def join_kernels(
    rows: pd.DataFrame, kernel_table: pd.DataFrame
) -> pd.DataFrame:
    """`rows` with kernel_* columns: the measures of θ(t) of each row's
    phase-1 run at the largest kernel size, averaged over classes (not the
    like-with-like distances, which compare runs: the kernel table has
    them)."""
    if rows.empty or kernel_table.empty:
        return rows
    largest = kernel_table.groupby(["seed", "phase1"])["n"].transform("max")
    table = kernel_table[kernel_table["n"] == largest]
    skip = set(KERNEL_KEYS) | set(like_with_like_columns(table))
    measures = [c for c in table.columns if c not in skip]
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


def seed_columns(table: pd.DataFrame) -> list[str]:
    """The TO_SEED columns of a kernel table."""
    prefix = TO_SEED.format("")
    return [c for c in table.columns if c.startswith(prefix)]


def class_means(kernel_table: pd.DataFrame) -> pd.DataFrame:
    """Kernel rows of the largest size, averaged over classes (a mean is
    NaN where a class lacks the value)."""
    largest = kernel_table.groupby(["seed", "phase1"])["n"].transform("max")
    table = kernel_table[kernel_table["n"] == largest]
    columns = [c for c in DERIVED if c in table] + seed_columns(table)
    columns += like_with_like_columns(table)
    return table.groupby(["seed", "phase1", "t"], as_index=False)[columns].agg(
        lambda values: values.mean(skipna=False)
    )


# Claim 1 like with like: its two comparisons, the columns of their table
# (like_with_like) and the benign and adversarial runs compared.
ACROSS_SEEDS = "across seeds"
SAME_START = "same θ(0)"
LIKE_WITH_LIKE = ["comparison", "t", "seed", "other", "distance"]
LIKE_WITH_LIKE += ["baseline", "ratio"]
BENIGN, ADVERSARIAL = "C", "A"


def like_with_like(kernel_table: pd.DataFrame) -> pd.DataFrame:
    """Claim 1's benign-vs-adversarial distances beside a baseline that
    differs from them only in the training compared, at every t (class
    means of the largest N, class_means):

    * ACROSS_SEEDS, a row per t and ordered pair of seeds s ≠ s' (seed,
      other): distance S(C_s, A_s') (CROSS_TO_SEED), baseline the larger
      of S(C_s, C_s') and S(A_s, A_s') (TO_SEED);
    * SAME_START, a row per t and seed s (other = s), in grids with the
      order replicate (a TO_REORDERED column): distance S(C_s, A_s)
      (distance_between), baseline S(C_s, C′_s).

    ratio is kernel_analysis.distance_ratio(distance, baseline). NaN
    where a kernel is missing. Columns LIKE_WITH_LIKE; empty without the
    columns (a grid of one seed, without the replicate).
    """
    if kernel_table.empty:
        return pd.DataFrame(columns=LIKE_WITH_LIKE)
    means = class_means(kernel_table).set_index(["seed", "phase1", "t"])
    seeds = sorted(set(means.index.get_level_values("seed")))
    rows = []
    for t in sorted(set(means.index.get_level_values("t"))):
        if len(seeds) > 1 and CROSS_TO_SEED.format(seeds[0]) in means:
            rows += _across_rows(means, seeds, t)
        if TO_REORDERED in means:
            rows += _same_start_rows(means, seeds, t)
    frame = pd.DataFrame(rows, columns=LIKE_WITH_LIKE)
    frame["ratio"] = [
        kernel_analysis.distance_ratio(d, b)
        for d, b in zip(frame["distance"], frame["baseline"], strict=True)
    ]
    return frame


def _at(means: pd.DataFrame, key: tuple, column: str) -> float:
    """means[column] at (seed, phase1, t), NaN where absent."""
    if column not in means or key not in means.index:
        return math.nan
    return float(means.at[key, column])


def _across_rows(means: pd.DataFrame, seeds: list, t: float) -> list:
    """like_with_like's ACROSS_SEEDS rows at t (ratio left to fill)."""
    rows = []
    for seed in seeds:
        for other in seeds:
            if other == seed:
                continue
            baselines = [
                _at(means, (seed, loader, t), TO_SEED.format(other))
                for loader in (BENIGN, ADVERSARIAL)
            ]
            cross = CROSS_TO_SEED.format(other)
            rows.append(
                [
                    ACROSS_SEEDS,
                    t,
                    seed,
                    other,
                    _at(means, (seed, BENIGN, t), cross),
                    max(baselines)
                    if not np.isnan(baselines).any()
                    else math.nan,
                    math.nan,
                ]
            )
    return rows


def _same_start_rows(means: pd.DataFrame, seeds: list, t: float) -> list:
    """like_with_like's SAME_START rows at t (ratio left to fill)."""
    return [
        [
            SAME_START,
            t,
            seed,
            seed,
            _at(means, (seed, BENIGN, t), "distance_between"),
            _at(means, (seed, BENIGN, t), TO_REORDERED),
            math.nan,
        ]
        for seed in seeds
    ]
