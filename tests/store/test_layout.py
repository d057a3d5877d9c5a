"""Tests of store.layout, the one owner of the file names the scripts
exchange: each name spelled out by hand, as the scripts' users see it."""

import os

import pytest

from store import layout


@pytest.mark.parametrize(
    "t, text",
    [
        (3, "3"),
        (3.0, "3"),
        (0.125, "0.125"),
        (1.5, "1.5"),
        (10**8, "100000000"),
    ],
)
def test_format_t_names_epochs_as_run_exp_does(t, text):
    assert layout.format_t(t) == text


def test_checkpoint_names():
    assert layout.checkpoint(20) == "parameters_checkpoint_20.pkl"
    assert layout.checkpoint(0.125) == "parameters_checkpoint_0.125.pkl"
    assert (
        layout.checkpoint(3, linear=True)
        == "parameters_checkpoint_linear_3.pkl"
    )
    assert layout.checkpoint_stem("2.5") == "parameters_checkpoint_2.5"
    for name, epoch in [
        ("parameters_checkpoint_20.pkl", "20"),
        ("parameters_checkpoint_linear_0.375.pkl", "0.375"),
    ]:
        assert layout.CHECKPOINT_EPOCH.match(name)[1] == epoch
    assert not layout.CHECKPOINT_EPOCH.match("parameters_final.pkl")


def test_output_dir_is_beside_the_checkpoint():
    assert layout.output_dir("/runs/a/parameters_final.pkl", "adv") == (
        "/runs/a/adv"
    )
    assert layout.output_dir("run/p.pkl", "../up") == "up"
    assert layout.output_dir("p.pkl", "adv") == "adv"


def test_evaluation_file_names():
    assert layout.eval_outputs("d", "test_results_0") == {
        "results": os.path.join("d", "test_results_test_results_0.pkl"),
        "examples": os.path.join("d", "adv_examples_test_results_0.pkl"),
    }
    assert layout.eval_summaries("d", "s") == {
        "results": os.path.join("d", "results_s.json"),
        "transfer": os.path.join("d", "transfer_s.json"),
    }
    assert layout.eval_record("d", "s") == os.path.join("d", "results_s.json")


def test_eval_set_is_one_evaluations_files(tmp_path):
    own = [
        "results_s.json",
        "transfer_s.json",
        "test_results_s.pkl",
        "adv_examples_s.pkl",
        "test_results_s_0.pkl",
        "adv_examples_s_1.pkl",
    ]
    # s_2 is an evaluation of its own (it has its results file); t is
    # another name, and s_x no index.
    others = [
        "results_s_2.json",
        "test_results_s_2.pkl",
        "results_t.json",
        "test_results_t.pkl",
        "test_results_s_x.pkl",
        "notes.txt",
    ]
    for name in own + others:
        (tmp_path / name).write_text("")
    assert layout.eval_set(str(tmp_path), "s") == sorted(
        str(tmp_path / name) for name in own
    )
    assert layout.eval_set(str(tmp_path / "missing"), "s") == []


def test_kernel_and_feature_names():
    assert layout.kernel_file("saved_kernel", None, 500) == (
        "saved_kernel_500.pkl"
    )
    assert layout.kernel_file("k", 3, 20) == "k_class_3_20.pkl"
    stem = layout.feature_stem("ntk_eig_images", 0, 100)
    assert stem == "ntk_eig_images_class_0_100"
    assert layout.feature_outputs(stem) == (stem + ".pkl", stem + ".png")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("saved_kernel_500.pkl", True),
        ("saved_kernel_class_3_500.pkl", True),
        ("k_20.pkl", True),
        ("parameters_checkpoint_20.pkl", False),
        ("parameters_checkpoint_linear_3.pkl", False),
        ("parameters_final.pkl", False),
        ("results.pkl", False),
        ("saved_kernel_500.json", False),
    ],
)
def test_kernel_file_names(name, expected):
    assert layout.is_kernel_file(name) is expected
