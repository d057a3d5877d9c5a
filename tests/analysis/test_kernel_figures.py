"""analysis.kernel_figures: each figure of analyze_kernels.py drawn from
the tables of an analysis of kernels made here, as a PNG that is not
blank."""

import io

import matplotlib.image
import pandas as pd
import pytest

from analysis import kernel_figures, tables
from helpers import PNG_SIGNATURE
from kernel_objects import small_analysis


def _drawn(png):
    """The pixels of a PNG that has more than one colour."""
    assert png.startswith(PNG_SIGNATURE)
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.std() > 0
    return pixels


@pytest.fixture(scope="module")
def analysis():
    return small_analysis()


def test_series_figures(analysis):
    series, kernels = analysis.series_table, analysis.kernel_table
    _drawn(kernel_figures.velocity(series))
    _drawn(kernel_figures.polar(series, 1))
    _drawn(kernel_figures.alignment(kernels))
    wide = _drawn(kernel_figures.overview(series, kernels, None))
    assert wide.shape[1] > 2 * wide.shape[0]  # four panels in a row


def test_heatmaps_one_panel_per_set(analysis):
    one = _drawn(kernel_figures.distance_heatmaps(analysis.heatmaps))
    two = _drawn(kernel_figures.distance_heatmaps(analysis.heatmaps * 2))
    assert two.shape[1] > one.shape[1]


def test_eigenvalue_decay(analysis):
    _drawn(kernel_figures.eigenvalue_decay(tables.decay_curves(analysis)))


def test_compare_figure():
    rows = pd.DataFrame(
        {
            "class_index": [0, 0],
            "variant": ["standard"] * 2,
            "epoch": [1, 2],
            "distance": [0.1, 0.3],
        }
    )
    _drawn(kernel_figures.compare(rows, "C", "A"))


def test_regression_figure():
    regression = pd.DataFrame(
        {
            "series": ["run"] * 2,
            "class_index": [0, 0],
            "epoch": [1.0, 2.0],
            "kernel_regression_accuracy": [0.5, 0.75],
        }
    )
    _drawn(kernel_figures.regression_accuracy(regression))
