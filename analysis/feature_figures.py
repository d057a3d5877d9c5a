"""visualize_ntk_features.py's figure: the feature images in a PNG grid.

Drawn on a matplotlib Figure (the Agg canvas; pyplot's global state is
never touched), imported only when drawing: matplotlib is slow to import.
"""

import io
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported where used: slow to import
    from matplotlib.axes import Axes

    from analysis.features import FeatureImages


def grid_png(result: "FeatureImages", title: str = "") -> bytes:
    """A PNG of the images, final and best: rows positive (final),
    positive (best), negative (final), negative (best), column i for
    eigenvector i; a last row with the w image, final in column 0 and best
    in column 1. Titles give λ_i (or w), the step, and the cosine at the
    start and at that step."""
    # Imported here: matplotlib is slow to import and only this needs it.
    # Figure draws through Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    n = len(result.pos_images)
    columns = max(n, 2)
    figure = Figure(figsize=(2.3 * columns, 13.0), layout="constrained")
    axes = figure.subplots(5, columns, squeeze=False)
    steps = result.w_cosines.shape[0] - 1
    for row, kind in enumerate(("pos", "neg")):
        final_images = getattr(result, f"{kind}_images")
        best_images = getattr(result, f"best_{kind}_images")
        cosines = getattr(result, f"{kind}_cosines")
        best_steps = getattr(result, f"best_{kind}_steps")
        for i in range(n):
            eigen = rf"$\lambda_{{{i}}}$ = {result.eigenvalues[i]:.3g}"
            _show(
                axes[2 * row, i],
                final_images[i],
                f"{eigen}, final\n{_trajectory(cosines[i], steps)}",
            )
            _show(
                axes[2 * row + 1, i],
                best_images[i],
                f"{eigen}, best\n{_trajectory(cosines[i], best_steps[i])}",
            )
        for axis in axes[2 * row : 2 * row + 2, n:].flat:
            axis.set_axis_off()
    w_name = "$w = K^{-1}y$"
    _show(
        axes[4, 0],
        result.w_image,
        f"{w_name}, final\n{_trajectory(result.w_cosines, steps)}",
    )
    _show(
        axes[4, 1],
        result.best_w_image,
        f"{w_name}, best\n{_trajectory(result.w_cosines, result.best_w_step)}",
    )
    for axis in axes[4, 2:]:
        axis.set_axis_off()
    names = ("positive", "negative")
    for row, name in enumerate(names):
        axes[2 * row, 0].set_ylabel(f"{name}, final")
        axes[2 * row + 1, 0].set_ylabel(f"{name}, best")
    axes[4, 0].set_ylabel("w, final | best")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _show(axis: "Axes", image: np.ndarray, title: str) -> None:
    """Draws one (H, W, C) image in [0, 1], grey for one channel."""
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axis.imshow(np.clip(image, 0.0, 1.0))
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=9)


def _trajectory(cosines: np.ndarray, step: int) -> str:
    """'cos a → b at step t': the cosine at the start and after t steps."""
    return f"cos {cosines[0]:.3f} → {cosines[step]:.3f} at step {step}"
