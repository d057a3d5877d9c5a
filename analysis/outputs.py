"""What analyze_kernels.py writes in --out_dir, and the order it writes it.

The CSV tables (`csv_texts`), analysis.json (`report`) and the figures
(`figures`), written by `write` so that the folder counts as finished only
when every output is there: analysis.json (layout.ANALYSIS_MARKER) last.
"""

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import kernel_analysis, tables
from analysis.tables import Analysis
from store import atomic, layout
from utils import UserError

# The files a sweep checks to count an analysis finished
# (grid.ANALYSIS_FILES, grid.SEEDS_ANALYSIS_FILES) are written after every
# other output, analysis.json last of all.
CHECKED_TABLES = (
    layout.KERNELS_CSV,
    layout.PAIRWISE_CSV,
    layout.REPLICATES_CSV,
)


def csv_texts(analysis: Analysis) -> dict[str, str]:
    """{file name: CSV text} of the tables that have rows to hold."""
    files = {
        layout.KERNELS_CSV: analysis.kernel_table.to_csv(index=False),
        layout.PAIRWISE_CSV: analysis.pairwise.to_csv(index=False),
        layout.SERIES_CSV: analysis.series_table.to_csv(index=False),
    }
    if analysis.compare is not None:
        files[layout.COMPARE_CSV] = analysis.compare.to_csv(index=False)
    if analysis.replicates is not None:
        files[layout.REPLICATES_CSV] = analysis.replicates.to_csv(index=False)
    return files


# --------------------------------------------------------------------------
# analysis.json
# --------------------------------------------------------------------------


def plain(value: object) -> Any:
    """JSON-ready: arrays as lists, non-finite numbers as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def records(table: pd.DataFrame) -> list[dict]:
    """The rows of `table`, JSON-ready."""
    return [
        {k: plain(v) for k, v in row.items()}
        for row in table.to_dict(orient="records")
    ]


def report(analysis: Analysis, flags: Mapping[str, Any]) -> dict:
    """The content of analysis.json; `flags` analyze_kernels.py's, as
    parsed (recorded as they are; 'compare' and 'replicates' name the
    folders compared)."""
    labels = analysis.labels
    kernel_entries = [
        dict(
            tables.identity(kernel, labels),
            n_classes=kernel.n_classes,
            **measured,
        )
        for kernel, measured in zip(
            analysis.kernels, analysis.measures, strict=True
        )
    ]
    series_entries = [
        dict(
            series=labels[key],
            run=key.run,
            phase=key.phase,
            class_index=key.class_index,
            use_linear_params=key.use_linear_params,
            **result,
        )
        for key, result in analysis.series_measures.items()
    ]
    content = dict(
        kernels=kernel_entries,
        pairwise=records(analysis.pairwise),
        series=series_entries,
        notes=analysis.notes,
        command=sys.argv,
        flags=dict(flags),
        ridge_grid=dict(
            exponents=list(kernel_analysis.RIDGE_EXPONENTS),
            scale="mean of the kernel's diagonal",
            validation_fraction=kernel_analysis.VALIDATION_FRACTION,
        ),
    )
    if analysis.compare is not None:
        content["compare"] = dict(
            run_a=flags["compare"][0],
            run_b=flags["compare"][1],
            rows=records(analysis.compare),
        )
    content = plain(content)
    if analysis.replicates is not None:
        content["replicates"] = dict(
            groups=flags["replicates"], rows=records(analysis.replicates)
        )
    return content


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def run_names(compare: Sequence[str] | None) -> tuple[str, str]:
    """Short names of the two --compare folders ('A', 'B' without)."""
    if not compare:
        return "A", "B"
    names = tables.short_names(compare)
    return names[compare[0]], names[compare[1]]


def figures(
    analysis: Analysis, compare: Sequence[str] | None, polar_k: int
) -> dict[str, bytes]:
    """{file name: PNG bytes} of the figures that have data; `compare`
    the two --compare folders (or None), `polar_k` --polar_k."""
    from analysis import (
        kernel_figures,  # seaborn and matplotlib: only when drawing
    )

    series = analysis.series_table
    table = analysis.kernel_table
    drawn = {
        layout.DISTANCE_HEATMAP_PNG: kernel_figures.distance_heatmaps(
            analysis.heatmaps
        )
    }
    if len(series):
        drawn[layout.OVERVIEW_PNG] = kernel_figures.overview(
            series, table, analysis.compare, *run_names(compare)
        )
        drawn[layout.VELOCITY_PNG] = kernel_figures.velocity(series)
        drawn[layout.POLAR_PNG] = kernel_figures.polar(series, polar_k)
    drawn[layout.EIGENVALUE_DECAY_PNG] = kernel_figures.eigenvalue_decay(
        tables.decay_curves(analysis)
    )
    if table["epoch"].notna().any():
        drawn[layout.ALIGNMENT_PNG] = kernel_figures.alignment(table)
    if "kernel_regression_accuracy" in table and len(
        table.dropna(subset=["epoch", "kernel_regression_accuracy"])
    ):
        drawn[layout.KERNEL_REGRESSION_PNG] = (
            kernel_figures.regression_accuracy(table)
        )
    if analysis.compare is not None:
        drawn[layout.COMPARE_PNG] = kernel_figures.compare(
            analysis.compare, *run_names(compare)
        )
    return drawn


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _remove_previous(path: str) -> None:
    """Removes an output of the previous analysis, if it is there."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise UserError(
            f"cannot replace {path}: {err.strerror or err}; fix its "
            "permissions or choose another --out_dir"
        ) from None


def write(
    out_dir: str,
    texts: Mapping[str, str],
    content: dict,
    pngs: Mapping[str, bytes],
) -> list[str]:
    """Writes the outputs so that the folder counts as finished only when
    every one of them is there, and holds only this analysis's: under the
    folder's lock (atomic.FolderLock: a second analysis writing there at
    the same time is refused), the previous analysis.json first removed,
    then the tables and figures of an earlier analysis that this one does
    not write (a compare.csv of an earlier --compare), then the figures
    `pngs`, the other tables `texts`, the tables a sweep checks, and
    analysis.json (`content`) last. Other files in the folder are left as
    they are. A write that fails (a full disk) leaves no analysis.json, so
    the sweep runs the analysis again. Returns the names written, in the
    order of the message that lists them."""
    atomic.ensure_writable_dir(out_dir)
    with atomic.FolderLock(out_dir, "--out_dir"):
        marker = os.path.join(out_dir, layout.ANALYSIS_MARKER)
        _remove_previous(marker)
        for name in (*layout.ANALYSIS_TABLES, *layout.ANALYSIS_FIGURES):
            if name not in texts and name not in pngs:
                _remove_previous(os.path.join(out_dir, name))
        for name, png in pngs.items():
            atomic.atomic_write_bytes(os.path.join(out_dir, name), png)
        order = sorted(texts, key=lambda name: name in CHECKED_TABLES)
        for name in order:
            atomic.atomic_write_text(os.path.join(out_dir, name), texts[name])
        atomic.atomic_write_json(marker, content)
    return [*pngs, *texts, layout.ANALYSIS_MARKER]
