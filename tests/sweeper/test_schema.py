"""sweeper.schema: a grid's config file read and checked (defaults, the
saved t of phase 1, refusals in one line naming the key)."""

import os

import pytest

import data
from helpers import ROOT
from sweeper import schema
from utils import UserError


def test_paper_preset_is_the_paper_grid():
    c = schema.load_config(os.path.join(ROOT, "configs", "paper-cifar10.toml"))
    assert c["data"]["dataset"] == "cifar10"
    assert c["attack"]["eps"] == 4.0
    assert c["phase1"]["epochs"] == 101 and c["phase2"]["epochs"] == 100
    assert c["phase1"]["loaders"] == ["C", "A"]
    assert c["phase2"]["loaders"] == ["C", "A"]
    # Default t: all of the paper's, since 101 epochs save every one.
    assert c["phase1"]["times"] == [float(t) for t in schema.PAPER_TIMES]
    assert c["kernels"]["sizes"] == [500]


def test_saved_times_are_run_exps_checkpoints():
    assert schema.saved_times(0) == [0.0]
    assert schema.saved_times(1) == [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1]
    assert schema.saved_times(3) == [
        0,
        0.125,
        0.25,
        0.375,
        0.5,
        0.75,
        1,
        1.5,
        2,
        2.5,
        3,
    ]


def test_default_times_are_the_papers_that_phase1_saves(tiny):
    config, _, write = tiny
    config["phase1"] = {"loaders": ["C"], "epochs": 3}
    c = schema.load_config(write(config))
    want = [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1.5, 2, 2.5, 3]
    assert c["phase1"]["times"] == want
    assert c["phase2"]["times"] == want and c["kernels"]["times"] == want
    assert c["phase2"]["dynamics"] == ["centered"]
    assert c["phase2"]["lr"] == 0.01


def test_promise_grid_refuses_what_the_scripts_refuse_the_seed_limit():
    """The grid's limit is the scripts': 2**32 - 1 is taken by both."""
    labels = [c for c in range(10) for _ in range(3)]
    assert len(data.balanced_subset_indices(labels, 20, 2**32 - 1)) == 20
    assert schema._seeds([0, 2**32 - 1]) is None


@schema.section
class _Example:
    """A section of two keys, for read_section."""

    epochs: int = schema.key("epochs of the example", minimum=1)
    lr: float = schema.key("its learning rate", 0.5, minimum=0, above=True)


def test_read_section_fills_defaults_and_converts():
    read = schema.read_section("g.toml", "ex", {"epochs": 3}, _Example)
    assert read == _Example(epochs=3, lr=0.5)
    read = schema.read_section(
        "g.toml", "ex", {"epochs": 3, "lr": 2}, _Example
    )
    assert read.lr == 2.0 and isinstance(read.lr, float)


@pytest.mark.parametrize(
    "table, message",
    [
        (
            {"epochs": 1, "rate": 1},
            "g.toml: unknown key ex.rate; the keys of [ex] are epochs, lr",
        ),
        (
            {},
            "g.toml: missing key ex.epochs (epochs of the example, an "
            "integer)",
        ),
        (
            {"epochs": "2"},
            "g.toml: ex.epochs must be an integer (epochs of "
            "the example), not '2'",
        ),
        (
            {"epochs": True},
            "g.toml: ex.epochs must be an integer (epochs of "
            "the example), not True",
        ),
        ({"epochs": 0}, "g.toml: ex.epochs must be at least 1, not 0"),
        (
            {"epochs": 1, "lr": 0.0},
            "g.toml: ex.lr must be greater than 0, not 0.0",
        ),
    ],
)
def test_read_section_refuses_in_one_line(table, message):
    with pytest.raises(UserError) as info:
        schema.read_section("g.toml", "ex", table, _Example)
    assert str(info.value) == message


def test_number_problem_names_the_first_bad_value():
    assert schema.number_problem([1, 2], 1) is None
    assert schema.number_problem([1, 0, -1], 1) == "must be at least 1, not 0"
    assert schema.number_problem([float("nan")]).endswith(", not nan")


def test_load_config_reads_the_tiny_grid(tiny):
    config, _, write = tiny
    read = schema.load_config(write(config))
    assert read[""]["seeds"] == [0] and read[""]["name"] == "tiny"
    assert read["phase1"]["times"] == [1.0]
    assert read["phase2"]["loaders"] == ["C", "A"]
    assert read["robustness"] is None and read["reference"] == []
    assert read["phase1"]["state_every"] == 1


def test_load_config_refuses_a_missing_section(tiny, tmp_path):
    config, _, write = tiny
    del config["phase1"]
    path = write(config)
    with pytest.raises(UserError, match=r"missing section \[phase1\]"):
        schema.load_config(path)
    with pytest.raises(UserError, match="cannot read grid file"):
        schema.load_config(str(tmp_path / "absent.toml"))
