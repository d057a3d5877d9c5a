"""analysis.outputs: the tables' CSV texts, analysis.json's content made
JSON-ready, and the order of the writes (analysis.json last, the old one
removed first), on an analysis of kernels made here."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

import analyze_kernels
from analysis import outputs
from kernel_objects import small_analysis
from store import atomic, layout
from utils import UserError


@pytest.fixture
def analysis():
    return small_analysis()


def test_plain_makes_values_json_ready():
    value = {
        1: np.arange(2),
        "f": np.float32(0.5),
        "nan": math.nan,
        "inf": np.float64(np.inf),
        "t": (np.int64(3), [math.nan]),
    }
    assert outputs.plain(value) == {
        "1": [0, 1],
        "f": 0.5,
        "nan": None,
        "inf": None,
        "t": [3, [None]],
    }
    table = pd.DataFrame({"a": [1.5, math.nan], "b": ["x", "y"]})
    assert outputs.records(table) == [
        {"a": 1.5, "b": "x"},
        {"a": None, "b": "y"},
    ]


def test_csv_texts_are_the_tables_that_exist(analysis):
    texts = outputs.csv_texts(analysis)
    assert sorted(texts) == sorted(
        [layout.KERNELS_CSV, layout.PAIRWISE_CSV, layout.SERIES_CSV]
    )
    assert texts[layout.PAIRWISE_CSV] == analysis.pairwise.to_csv(index=False)


def test_report_is_strict_json_with_every_kernel(analysis):
    args = analyze_kernels.parse_args(["a", "b", "--out_dir", "o"])
    content = outputs.report(analysis, vars(args))
    text = json.dumps(content, allow_nan=False)
    assert json.loads(text)["flags"]["out_dir"] == "o"
    assert [k["path"] for k in content["kernels"]] == ["a", "b"]
    assert content["kernels"][0]["eigenvalues"] == pytest.approx(
        analysis.measures[0]["eigenvalues"].tolist()
    )
    assert content["notes"] == ["a note"]
    assert len(content["series"]) == 1 and "compare" not in content


def test_run_names_of_the_compare_folders(tmp_path):
    assert outputs.run_names(None) == ("A", "B")
    runs = [str(tmp_path / "x" / "C"), str(tmp_path / "x" / "A")]
    assert outputs.run_names(runs) == ("C", "A")


def test_write_puts_the_marker_last(tmp_path):
    out = tmp_path / "out"
    texts = {layout.KERNELS_CSV: "k\n", layout.SERIES_CSV: "s\n"}
    written = outputs.write(str(out), texts, {"x": 1}, {"f.png": b"png"})
    assert written == [
        "f.png",
        layout.KERNELS_CSV,
        layout.SERIES_CSV,
        layout.ANALYSIS_MARKER,
    ]
    assert json.loads((out / layout.ANALYSIS_MARKER).read_text()) == {"x": 1}
    assert (out / layout.SERIES_CSV).read_text() == "s\n"


def test_a_failed_write_leaves_no_marker(tmp_path):
    out = tmp_path / "out"
    outputs.write(str(out), {}, {"old": True}, {})
    os.makedirs(out / "f.png")  # a folder where the figure should go
    with pytest.raises(UserError, match="f.png"):
        outputs.write(str(out), {}, {"new": True}, {"f.png": b"png"})
    assert not (out / layout.ANALYSIS_MARKER).exists()


def test_write_removes_an_earlier_analysiss_outputs_and_nothing_else(
    tmp_path,
):
    out = tmp_path / "out"
    earlier = {layout.KERNELS_CSV: "old\n", layout.COMPARE_CSV: "old\n"}
    outputs.write(
        str(out), earlier, {"old": True}, {layout.COMPARE_PNG: b"old"}
    )
    (out / "notes.txt").write_text("mine")
    (out / "compare_by_hand.png").write_bytes(b"mine")
    written = outputs.write(
        str(out),
        {layout.KERNELS_CSV: "new\n"},
        {"new": True},
        {layout.POLAR_PNG: b"new"},
    )
    assert sorted(os.listdir(out)) == sorted(
        [*written, "notes.txt", "compare_by_hand.png"]
    )
    assert (out / layout.KERNELS_CSV).read_text() == "new\n"
    assert (out / "notes.txt").read_text() == "mine"


def test_write_is_refused_while_another_run_writes_there(tmp_path):
    out = tmp_path / "out"
    outputs.write(str(out), {layout.KERNELS_CSV: "old\n"}, {"old": 1}, {})
    with atomic.FolderLock(str(out), "--out_dir"):
        with pytest.raises(
            UserError, match="in use by another run.*--out_dir"
        ):
            outputs.write(
                str(out), {layout.KERNELS_CSV: "new\n"}, {"new": 1}, {}
            )
        # nothing of the earlier analysis was touched
        assert (out / layout.KERNELS_CSV).read_text() == "old\n"
        assert json.loads((out / layout.ANALYSIS_MARKER).read_text()) == {
            "old": 1
        }
    assert not (out / atomic.FolderLock.NAME).exists()


def test_every_figure_drawn_has_a_name_in_layout(analysis):
    drawn = outputs.figures(analysis, None, 2)
    assert drawn and set(drawn) <= set(layout.ANALYSIS_FIGURES)
    assert set(outputs.csv_texts(analysis)) <= set(layout.ANALYSIS_TABLES)
