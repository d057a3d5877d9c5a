"""The figures of analyze_kernels.py, drawn with seaborn on matplotlib
Figures (the Agg canvas; pyplot's global state is never touched).

Every function takes the tables analyze_kernels.py writes (pandas
DataFrames with its column names) and returns PNG bytes. Panels are one
per kernel class ("combined" for the mean over logits, "class c"), lines
one per series (a run's kernels over epochs; the `series` column). Epochs
start at 0, so epoch axes are symmetric-logarithmic: linear below the
smallest positive epoch, logarithmic above.
"""

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.kernel_analysis import class_title

_PANEL = (4.2, 3.3)  # inches per panel
_DPI = 110
_MAX_TICKS = 40  # tick labels per heatmap axis


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _panels(
    count: int,
    columns: int = 4,
    polar: bool = False,
    size: tuple[float, float] = _PANEL,
) -> tuple[Figure, list]:
    """A figure of `count` panels in rows of at most `columns`."""
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    figure = Figure(
        figsize=(size[0] * columns, size[1] * rows), layout="constrained"
    )
    kwargs = {"projection": "polar"} if polar else {}
    axes = [
        figure.add_subplot(rows, columns, i + 1, **kwargs)
        for i in range(count)
    ]
    return figure, axes


def _palette(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per name, stable across panels."""
    names = list(dict.fromkeys(names))
    return dict(
        zip(names, sns.color_palette(n_colors=len(names)), strict=True)
    )


def _epoch_axis(ax: Axes, epochs: pd.Series) -> None:
    """Symmetric-log x axis linear below the smallest positive epoch."""
    positive = np.asarray(epochs, np.float64)
    positive = positive[positive > 0]
    ax.set_xscale(
        "symlog", linthresh=float(positive.min()) if len(positive) else 1.0
    )
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch")


def _by_class(table: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
    """(class_index, rows) for each class, combined first."""
    return sorted(table.groupby("class_index"), key=lambda item: item[0])


def distance_heatmaps(sets: Sequence[tuple[str, np.ndarray, list]]) -> bytes:
    """One heatmap of S per comparable set.

    Args:
      sets: (title, distances (T, T), tick labels (T,)) per set.
    """
    with sns.axes_style("white"):
        figure, axes = _panels(len(sets), columns=2, size=(6.0, 5.2))
        for ax, (title, distances, labels) in zip(axes, sets, strict=True):
            step = math.ceil(len(labels) / _MAX_TICKS)  # every step-th label
            sns.heatmap(
                pd.DataFrame(distances, index=labels, columns=labels),
                ax=ax,
                cmap="viridis",
                vmin=0.0,
                square=True,
                xticklabels=step,
                yticklabels=step,
                cbar_kws={"label": "kernel distance S"},
            )
            ax.set_title(title)
            ax.tick_params(labelsize=6)
        return _png(figure)


def _class_lines(
    rows: pd.DataFrame,
    palette: dict[str, tuple],
    x: str,
    y: str,
    ylabel: str,
    configure: Callable[[Axes, pd.DataFrame], None],
    style: str | None = None,
) -> bytes:
    """A panel per class of `rows`: `y` against `x`, a line per series
    (dashes by `style`), then `configure(ax, group)` for its axes."""
    with sns.axes_style("whitegrid"):
        classes = _by_class(rows)
        figure, axes = _panels(len(classes))
        for ax, (class_index, group) in zip(axes, classes, strict=True):
            sns.lineplot(
                data=group.sort_values(x),
                x=x,
                y=y,
                hue="series",
                style=style,
                palette=palette,
                marker="o",
                estimator=None,
                errorbar=None,
                ax=ax,
            )
            configure(ax, group)
            ax.set_ylabel(ylabel)
            ax.set_title(class_title(class_index))
        return _png(figure)


def velocity(series: pd.DataFrame) -> bytes:
    """v(t) = S(K_t, K_{t+Δ}) / Δ against the pair's midpoint (t + t')/2,
    log x (and log y when every velocity is positive)."""

    def configure(ax: Axes, group: pd.DataFrame) -> None:
        ax.set_xscale("log")
        if (group["velocity"] > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("epoch (midpoint of t, t + Δ)")

    return _class_lines(
        series.dropna(subset=["velocity"]),
        _palette(series["series"]),
        "velocity_midpoint",
        "velocity",
        "kernel velocity S(K_t, K_t+Δ) / Δ",
        configure,
    )


def polar(series: pd.DataFrame, polar_k: int) -> bytes:
    """(φ(t), r(t)) of each series in polar axes: a row per class, columns
    for the whole kernel and its projections on the top-k and the other
    eigenvectors of the last kernel."""
    palette = _palette(series["series"])
    classes = _by_class(series)
    titles = {
        "whole": "whole kernel",
        "top": f"on the top {polar_k} eigenvectors of K_T",
        "rest": "on the other eigenvectors of K_T",
    }
    with sns.axes_style("whitegrid"):
        figure, axes = _panels(
            3 * len(classes), columns=3, polar=True, size=(4.0, 3.6)
        )
        for row, (class_index, group) in enumerate(classes):
            for column, name in enumerate(titles):
                ax = axes[3 * row + column]
                angles = group[f"phi_{name}"].to_numpy(np.float64)
                for label, members in group.groupby("series", sort=False):
                    ax.plot(
                        members[f"phi_{name}"],
                        members[f"r_{name}"],
                        marker="o",
                        markersize=3,
                        color=palette[label],
                        label=label,
                    )
                finite = angles[np.isfinite(angles)]
                top = math.degrees(finite.max()) if len(finite) else 90.0
                ax.set_thetamin(0)
                ax.set_thetamax(
                    min(180.0, max(10.0, 10 * math.ceil(top / 10)))
                )
                ax.set_title(
                    f"{class_title(class_index)}\n{titles[name]}", fontsize=9
                )
        axes[0].legend(fontsize=7, loc="upper right")
        figure.suptitle(
            "angle φ(t) = arccos(1 − S(K_t, K_0)), radius "
            "r(t) = ‖K_t − K_0‖ / ‖K_T − K_0‖",
            fontsize=10,
        )
        return _png(figure)


def eigenvalue_decay(curves: Sequence[tuple[str, list]]) -> bytes:
    """λ_i / λ_1 against i, log-log, a panel per series.

    Args:
      curves: (title, [(label, eigenvalues (N,) descending), ...] in order
        of time) per panel; lines coloured from dark (first) to light.
    """
    with sns.axes_style("whitegrid"):
        figure, axes = _panels(len(curves))
        for ax, (title, lines) in zip(axes, curves, strict=True):
            colours = sns.color_palette("viridis", n_colors=len(lines))
            for i, ((label, values), colour) in enumerate(
                zip(lines, colours, strict=True)
            ):
                values = np.asarray(values, np.float64)
                ranks = np.arange(1, len(values) + 1)
                keep = values > 0
                ends = i in (0, len(lines) - 1)
                ax.plot(
                    ranks[keep],
                    values[keep] / values[0],
                    color=colour,
                    linewidth=1.0,
                    label=label if ends else None,
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("eigenvalue index i")
            ax.set_ylabel("λ_i / λ_1")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=7)
        return _png(figure)


def alignment(kernels: pd.DataFrame) -> bytes:
    """Target alignment (solid) and centered alignment (dashed) against
    the epoch, a panel per class."""
    rows = kernels.dropna(subset=["epoch"]).melt(
        id_vars=["series", "class_index", "epoch"],
        value_vars=["target_alignment", "centered_target_alignment"],
        var_name="alignment",
        value_name="value",
    )
    rows["alignment"] = rows["alignment"].map(
        {
            "target_alignment": "A(K, YYᵀ)",
            "centered_target_alignment": "centered",
        }
    )
    return _class_lines(
        rows,
        _palette(kernels["series"]),
        "epoch",
        "value",
        "kernel–target alignment",
        lambda ax, group: _epoch_axis(ax, group["epoch"]),
        style="alignment",
    )


def regression_accuracy(kernels: pd.DataFrame) -> bytes:
    """Test accuracy of kernel regression against the epoch, a panel per
    class."""
    return _class_lines(
        kernels.dropna(subset=["epoch", "kernel_regression_accuracy"]),
        _palette(kernels["series"]),
        "epoch",
        "kernel_regression_accuracy",
        "kernel regression test accuracy",
        lambda ax, group: _epoch_axis(ax, group["epoch"]),
    )


def compare(rows: pd.DataFrame, run_a: str, run_b: str) -> bytes:
    """S(K_A(t), K_B(t)) against the epoch, a line per class."""
    rows = rows.assign(kernel=rows["class_index"].map(class_title))
    with sns.axes_style("whitegrid"):
        figure, (ax,) = _panels(1, size=(6.4, 4.4))
        sns.lineplot(
            data=rows.sort_values("epoch"),
            x="epoch",
            y="distance",
            hue="kernel",
            style="variant" if rows["variant"].nunique() > 1 else None,
            marker="o",
            estimator=None,
            errorbar=None,
            ax=ax,
        )
        _epoch_axis(ax, rows["epoch"])
        ax.set_ylabel("kernel distance S(K_A(t), K_B(t))")
        ax.set_title(f"A = {run_a}, B = {run_b}", fontsize=9)
        ax.legend(fontsize=7)
        return _png(figure)


def _overview_velocity(ax: Axes, series: pd.DataFrame, common: dict) -> None:
    """The overview's velocity panel, against the midpoint epoch."""
    moving = series.dropna(subset=["velocity"])
    sns.lineplot(
        data=moving,
        x="velocity_midpoint",
        y="velocity",
        ax=ax,
        **common,
    )
    ax.set_xscale("log")
    if (moving["velocity"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch (midpoint of t, t + Δ)")
    ax.set_ylabel("velocity S(K_t, K_t+Δ) / Δ")


def _overview_runs_apart(
    ax: Axes,
    kernels: pd.DataFrame,
    compared: pd.DataFrame | None,
    class_index: int,
    run_names: tuple[str, str],
    common: dict,
) -> None:
    """The overview's third panel: the distance between the --compare
    runs, else the centered alignment."""
    if compared is not None:
        rows = compared[compared["class_index"] == class_index]
        sns.lineplot(
            data=rows.sort_values("epoch"),
            x="epoch",
            y="distance",
            marker="o",
            color="black",
            estimator=None,
            errorbar=None,
            ax=ax,
        )
        ax.set_ylabel("S(K_A(t), K_B(t)), the runs apart")
        run_a, run_b = run_names
        ax.set_title(f"A = {run_a}\nB = {run_b}", fontsize=8)
    else:
        sns.lineplot(
            data=kernels.sort_values("epoch"),
            x="epoch",
            y="centered_target_alignment",
            ax=ax,
            **common,
        )
        ax.set_ylabel("centered target alignment")


def _overview_quality(ax: Axes, kernels: pd.DataFrame, common: dict) -> None:
    """The overview's last panel: kernel regression accuracy, else the
    target alignment."""
    quality = (
        "kernel_regression_accuracy"
        if "kernel_regression_accuracy" in kernels
        and kernels["kernel_regression_accuracy"].notna().any()
        else "target_alignment"
    )
    sns.lineplot(
        data=kernels.sort_values("epoch"),
        x="epoch",
        y=quality,
        ax=ax,
        **common,
    )
    ax.set_ylabel(
        "kernel regression test accuracy"
        if quality == "kernel_regression_accuracy"
        else "target alignment"
    )


def overview(
    series: pd.DataFrame,
    kernels: pd.DataFrame,
    compared: pd.DataFrame | None,
    run_a: str = "A",
    run_b: str = "B",
) -> bytes:
    """One class at a glance (the combined kernel if there is one, else
    the lowest class): velocity, distance to the first kernel, the
    distance between the --compare runs (else the centered alignment) and
    kernel regression accuracy (else the alignment), against the epoch."""
    class_index = min(series["class_index"])
    series = series[series["class_index"] == class_index]
    kernels = kernels[kernels["class_index"] == class_index].dropna(
        subset=["epoch"]
    )
    palette = _palette(series["series"])
    common = dict(
        hue="series",
        palette=palette,
        marker="o",
        estimator=None,
        errorbar=None,
    )
    with sns.axes_style("whitegrid"):
        figure, axes = _panels(4, columns=4, size=(3.9, 3.3))
        _overview_velocity(axes[0], series, common)
        sns.lineplot(
            data=series, x="epoch", y="distance_to_first", ax=axes[1], **common
        )
        axes[1].set_ylabel("S(K_t, K_0)")
        _overview_runs_apart(
            axes[2], kernels, compared, class_index, (run_a, run_b), common
        )
        _overview_quality(axes[3], kernels, common)
        for ax in axes[1:]:
            _epoch_axis(ax, series["epoch"])
        for ax in axes[1:]:
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        figure.suptitle(class_title(class_index), fontsize=10)
        return _png(figure)
