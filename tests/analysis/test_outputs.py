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
from store import layout
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
