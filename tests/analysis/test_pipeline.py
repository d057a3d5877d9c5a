"""analysis.pipeline: analyze_kernels.py's work on kernel files written
here: the tables' distances against S by its formula, the notes, and the
refusals that come before --out_dir is created."""

import os

import pandas as pd
import pytest

import analyze_kernels
import cli
from analysis import pipeline
from kernel_objects import direct_distance, psd, write_kernel_file
from store import layout
from utils import UserError


def analyse(*argv):
    """pipeline.analyse of analyze_kernels.py's flags `argv`."""
    args = analyze_kernels.parse_args(
        [*map(str, argv), "--top_k", "2", "--polar_k", "2", "--no_progress"]
    )
    analyze_kernels.check_flags(args)
    pipeline.analyse(cli.settings(pipeline.AnalysisSettings, args))


def test_a_series_analysed_by_its_formulas(tmp_path, capsys):
    seeds = {
        write_kernel_file(
            tmp_path / "run", epoch, seed=epoch, name=f"e{epoch}"
        ): (epoch)
        for epoch in (1, 2, 4)
    }
    undated = write_kernel_file(tmp_path / "other", None, seed=9)
    seeds[undated] = 9
    out = tmp_path / "out"
    analyse(tmp_path / "run", undated, "--out_dir", out, "--no_figures")
    assert sorted(os.listdir(out)) == sorted(
        [
            layout.KERNELS_CSV,
            layout.PAIRWISE_CSV,
            layout.SERIES_CSV,
            layout.ANALYSIS_MARKER,
        ]
    )
    pairs = pd.read_csv(out / layout.PAIRWISE_CSV)
    assert len(pairs) == 6  # four kernels of one class and images
    for row in pairs.itertuples():
        want = direct_distance(psd(4, seeds[row.a]), psd(4, seeds[row.b]))
        assert row.distance == pytest.approx(want, rel=1e-6)
    series = pd.read_csv(out / layout.SERIES_CSV)
    assert list(series["path"]) == list(seeds)[:3]
    assert series["velocity"].iloc[1] == pytest.approx(
        direct_distance(psd(4, 2), psd(4, 4)) / 2, rel=1e-6
    )
    printed = capsys.readouterr().out
    assert "note: 1 kernel file(s) record no epoch" in printed
    assert printed.splitlines()[-1].startswith(
        "analysed 4 kernel(s), 6 pair(s), 1 series; wrote "
    )


@pytest.mark.parametrize(
    "classes, words",
    [((0,), "only one kernel file"), ((0, 1), "no two of the 2 kernel")],
)
def test_refused_before_the_out_dir_is_made(tmp_path, classes, words):
    for number, class_index in enumerate(classes):
        write_kernel_file(tmp_path / f"k{number}", 1, class_index=class_index)
    with pytest.raises(UserError, match=words):
        analyse(tmp_path, "--out_dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()
