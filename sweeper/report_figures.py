"""The figures of a sweep (seaborn and matplotlib, written as PNG):
accuracy after phase 2 against t, the kernels' dynamics, and the feature
images of θ(t)."""

import io
import os
from collections.abc import Iterable
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
from matplotlib.lines import Line2D  # noqa: E402

from store import atomic, checkpoints, layout  # noqa: E402
from sweeper import grid  # noqa: E402
from sweeper.collect import (  # noqa: E402
    ACCURACIES,
    ACROSS_SEEDS,
    SAME_START,
    class_means,
    like_with_like,
)
from sweeper.schema import (  # noqa: E402
    LOADER_NAMES,
    PHASE1_LOADERS,
    PHASE2_LOADERS,
)


def _t_label(t: float) -> str:
    """A t tick's label: a fraction of an epoch as 1/k ('1/8', the short
    form that keeps 0.125 and 0.25 apart on a log axis), else as in file
    names ('2', '2.5')."""
    if 0 < t < 1 and float(1 / t).is_integer():
        return f"1/{int(1 / t)}"
    return layout.format_t(t)


def _log_t_axis(ax: Axes, times: Iterable[float]) -> None:
    """A logarithmic t axis that keeps t = 0 (linear below the smallest
    positive t), ticked at the grid's t."""
    times = sorted(set(float(t) for t in times))
    positive = [t for t in times if t > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xticks(times)
    ax.set_xticklabels(
        [_t_label(t) for t in times],
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
    present = [p for p in PHASE1_LOADERS if p in set(frame["phase1"])]
    colours = dict(zip(PHASE1_LOADERS, sns.color_palette(), strict=False))
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
            for p in PHASE2_LOADERS
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


def plot_kernels(kernel_table: pd.DataFrame, out_dir: str) -> list:
    """kernel_dynamics.png: velocity, distance to the run's last kernel,
    and the distances between the benign and adversarial kernels beside
    their baselines (distance_lines), against t (mean ± sd over seeds or
    pairs of seeds, averaged over classes). Returns the paths written."""
    if kernel_table.empty:
        return []
    sns.set_theme(style="whitegrid")
    means = class_means(kernel_table)
    frame, style = _labelled(means)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
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
    data, palette = distance_lines(kernel_table)
    ax = axes[2]
    if len(data):
        sns.lineplot(
            data=data,
            x="t",
            y="distance",
            hue="line",
            hue_order=list(palette),
            palette=palette,
            style="role",
            style_order=[DISTANCE, BASELINE],
            dashes={DISTANCE: "", BASELINE: (4, 2)},
            marker="o",
            errorbar="sd",
            err_style="bars",
            ax=ax,
        )
        _line_legend(ax, data, palette)
    _log_t_axis(ax, frame["t"])
    ax.set_ylabel("distance between kernels")
    ax.set_title("benign vs. adversarial, beside their baselines", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, layout.KERNEL_FIGURE)
    _save(fig, path)
    return [path]


# The roles of distance_lines' lines (solid and dashed).
DISTANCE, BASELINE = "benign vs. adversarial", "baseline"


def _line_legend(ax: Axes, data: pd.DataFrame, palette: dict) -> None:
    """One legend entry per line of distance_lines, in its colour, dashed
    for a baseline, below the panel (the lines would hide under it)."""
    roles = data.drop_duplicates("line").set_index("line")["role"]
    handles = [
        Line2D(
            [],
            [],
            color=colour,
            marker="o",
            linestyle="--" if roles[label] == BASELINE else "-",
            label=f"{label} ({roles[label]})",
        )
        for label, colour in palette.items()
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        fontsize=7,
        handlelength=3.5,
        frameon=False,
    )


def distance_lines(
    kernel_table: pd.DataFrame,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The third panel's lines: a row per (line, t, seed or ordered pair
    of seeds) with columns t, distance, line (its label), role (DISTANCE
    or BASELINE), and {label: colour}, a distance and its baselines in one
    colour:

    * S(C_s, A_s), the same seed's (the compared runs' distance_between),
      beside S(C_s, C′_s) from the same θ(0) with the order replicate;
    * S(C_s, A_s′) across seeds beside the larger of S(C_s, C_s′) and
      S(A_s, A_s′) (collect.like_with_like), the baseline of both rules;
      without distances across seeds, each training's distance between
      seeds (distance_between_seeds) as before them.
    """
    means = class_means(kernel_table)
    pairs = like_with_like(kernel_table)
    colours = sns.color_palette()
    lines, palette = [], {}

    def add(
        label: str, role: str, t: pd.Series, values: pd.Series, colour: Any
    ) -> None:
        part = pd.DataFrame({"t": list(t), "distance": list(values)})
        part = part.dropna()
        if len(part):
            lines.append(part.assign(line=label, role=role))
            palette[label] = colour

    same = means.dropna(subset=["distance_between"])
    same = same.drop_duplicates(["seed", "t"])
    add(
        "S(C_s, A_s), same seed",
        DISTANCE,
        same["t"],
        same["distance_between"],
        colours[0],
    )
    start = pairs[pairs["comparison"] == SAME_START]
    add(
        "S(C_s, C′_s), same θ(0), another order",
        BASELINE,
        start["t"],
        start["baseline"],
        colours[0],
    )
    across = pairs[pairs["comparison"] == ACROSS_SEEDS]
    add(
        "S(C_s, A_s′), across seeds",
        DISTANCE,
        across["t"],
        across["distance"],
        colours[1],
    )
    add(
        "max(S(C_s, C_s′), S(A_s, A_s′)), seeds of one training",
        BASELINE,
        across["t"],
        across["baseline"],
        colours[1],
    )
    if across["distance"].isna().all() and "distance_between_seeds" in means:
        for i, loader in enumerate(PHASE1_LOADERS):
            seeds = means[means["phase1"] == loader]
            add(
                f"{LOADER_NAMES[loader]} vs. other seeds",
                BASELINE,
                seeds["t"],
                seeds["distance_between_seeds"],
                colours[2 + i],
            )
    if not lines:
        return pd.DataFrame(columns=["t", "distance", "line", "role"]), {}
    return pd.concat(lines, ignore_index=True), palette


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
        if c.stage == "phase1"
        and c.keys["seed"] == seed
        and not grid.is_reordered(c)
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
                f"{LOADER_NAMES[loader]} ({loader}), t = {layout.format_t(t)}",
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


def plot_robustness(
    robust: pd.DataFrame, attack: str | None, out_dir: str
) -> list:
    """robust_accuracy_vs_eps.png: robust accuracy under `attack` (the
    grid's robustness.curve_attack) against eps on a log axis, a line per
    {kernel} × {phase 2}, mean ± sd over seeds, a panel per t (the check
    against gradient masking: it must reach 0 at large eps). Returns the
    paths written."""
    if robust.empty or attack is None:
        return []
    curve = robust[robust["attack"] == attack]
    if curve.empty:
        return []
    sns.set_theme(style="whitegrid")
    times = sorted(curve["t"].unique())
    fig, axes = plt.subplots(
        1, len(times), figsize=(5.5 * len(times), 4), squeeze=False
    )
    for ax, t in zip(axes[0], times, strict=True):
        frame, style = _labelled(curve[curve["t"] == t])
        sns.lineplot(
            data=frame,
            x="eps",
            y="acc_robust",
            markers=True,
            errorbar="sd",
            err_style="bars",
            ax=ax,
            **style,
        )
        eps = sorted(frame["eps"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(eps)
        ax.set_xticklabels([f"{e:g}" for e in eps], fontsize=8)
        ax.minorticks_off()
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("ε (in 1/255)")
        ax.set_ylabel(f"{attack} robust accuracy")
        dynamics = ", ".join(sorted(frame["dynamics"].unique()))
        ax.set_title(f"{dynamics} phase 2 from θ(t = {layout.format_t(t)})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, layout.ROBUSTNESS_FIGURE)
    _save(fig, path)
    return [path]


def _save(fig: Figure, path: str) -> None:
    """Writes a figure as PNG, atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.atomic_write_bytes(path, buffer.getvalue())
