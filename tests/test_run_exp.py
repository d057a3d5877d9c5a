"""run_exp.py end to end on a few hundred Fashion-MNIST images.

The paper's four example command lines run with size flags added; a narrow
network keeps compile and run times small.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import data
import models
import utils
from helpers import (
    ROOT,
    SUBPROCESS_TIMEOUT_S,
    load_pickle,
    needs_fashion_mnist,
)
from helpers import run_script as run_entry_script

pytestmark = needs_fashion_mnist

FRACTIONS = ("0.125", "0.25", "0.375", "0.5", "0.75", "1.5", "2.5")
# Small versions of the paper's runs: 200 training images in batches of 100.
SIZE_FLAGS = [
    "--dataset",
    "fashion_mnist",
    "--model",
    "mlp_skinny",
    "--train_size",
    "200",
    "--test_size",
    "100",
    "--batch_size",
    "100",
    "--train_pgd_iters",
    "2",
    "--eval_pgd_iters",
    "3",
    "--no_progress",
]


def run_script(*args, data_path, check=True):
    """Runs run_exp.py with `args`; returns the CompletedProcess."""
    return run_entry_script(
        "run_exp.py", *args, "--data_path", data_path, check=check
    )


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def phase_one_runs(tmp_path_factory, data_path):
    """Examples 1 and 2: phase 1 benign (CC) and adversarial (AC)."""
    runs = {}
    for loaders in ("CC", "AC"):
        save = tmp_path_factory.mktemp(f"phase1_{loaders}")
        run_script(
            "--standard_epochs",
            "3",
            "--linear_epochs",
            "0",
            "--loaders",
            loaders,
            "--save_models",
            "--save_path",
            str(save),
            "--constant_save",
            "--random_seed",
            "0",
            *SIZE_FLAGS,
            data_path=data_path,
        )
        runs[loaders] = save
    return runs


@pytest.fixture(scope="module")
def phase_two_runs(tmp_path_factory, phase_one_runs, data_path):
    """Examples 3 and 4: centered phase 2 from epoch 2, benign and
    adversarial."""
    base = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    runs = {}
    for loaders in ("CC", "CA"):
        save = tmp_path_factory.mktemp(f"phase2_{loaders}")
        run_script(
            "--base_model_path",
            str(base),
            "--loaders",
            loaders,
            "--linear_epochs",
            "2",
            "--second_lr",
            "0.01",
            "--save_models",
            "--centering",
            "--save_path",
            str(save),
            "--random_seed",
            "0",
            "--constant_save_linear",
            *SIZE_FLAGS,
            data_path=data_path,
        )
        runs[loaders] = save
    return runs


def check_results(path, evaluated):
    results = load_pickle(path / "results.pkl")
    assert set(results) == {"standard", "linear", "standard_second"}
    assert results["standard_second"] is False
    for phase in ("standard", "linear"):
        if phase in evaluated:
            assert set(results[phase]) == {"clean", "l2", "linf"}
            for value in results[phase].values():
                assert 0.0 <= value <= 1.0
            # PGD can only lower the accuracy of the clean images.
            assert results[phase]["linf"] <= results[phase]["clean"]
        else:
            assert results[phase] is None
    assert json.loads((path / "results.json").read_text()) == results


def check_checkpoint(path, spec):
    checkpoint = load_pickle(path)  # plain pickle, as in a notebook
    assert {"params", "lin_params", "net_state", "meta"} <= set(checkpoint)
    for key in ("params", "lin_params"):
        leaves = jax.tree_util.tree_leaves(checkpoint[key])
        assert all(isinstance(leaf, np.ndarray) for leaf in leaves)
        models.check_params_fit(
            spec, checkpoint[key], checkpoint["net_state"], (28, 28, 1)
        )
    return checkpoint


SPEC = models.ModelSpec("mlp_skinny", 64, "fashion_mnist", 10)


@pytest.mark.parametrize("loaders", ["CC", "AC"])
def test_phase_one_writes_every_file(phase_one_runs, loaders):
    save = phase_one_runs[loaders]
    names = set(os.listdir(save))
    expected = {f"parameters_checkpoint_{k}.pkl" for k in range(4)}
    expected |= {f"parameters_checkpoint_{f}.pkl" for f in FRACTIONS}
    expected |= {
        "parameters_final.pkl",
        "results.pkl",
        "results.json",
        "config.json",
        "log.jsonl",
        "train_state.pkl",
    }
    assert expected == names
    for name in expected - {
        "results.pkl",
        "results.json",
        "config.json",
        "log.jsonl",
        "train_state.pkl",
    }:
        check_checkpoint(save / name, SPEC)
    check_results(save, evaluated={"standard"})
    log = [
        json.loads(line)
        for line in (save / "log.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert all(r["adversarial"] == (loaders == "AC") for r in log)
    assert all(r["images"] == 200 for r in log)
    config = json.loads((save / "config.json").read_text())
    assert config["flags"]["loaders"] == loaders
    assert config["environment"]["jax"] == jax.__version__


def test_epoch_checkpoints_follow_training(phase_one_runs):
    save = phase_one_runs["CC"]
    first = load_pickle(save / "parameters_checkpoint_0.pkl")
    later = load_pickle(save / "parameters_checkpoint_3.pkl")
    final = load_pickle(save / "parameters_final.pkl")
    assert first["meta"]["epoch"] == 0 and later["meta"]["epoch"] == 3
    assert not utils.tree_equal(first["params"], later["params"])
    assert utils.tree_equal(later["params"], final["params"])
    # Phase 2 ran zero epochs: lin_params is still θ(t).
    assert utils.tree_equal(final["lin_params"], final["params"])
    init = models.init_model(SPEC.build(), 0, (28, 28, 1))[0]
    assert utils.tree_equal(first["params"], utils.to_numpy_tree(init))


@pytest.mark.parametrize("loaders", ["CC", "CA"])
def test_phase_two_files_and_frozen_params(
    phase_one_runs, phase_two_runs, loaders
):
    save = phase_two_runs[loaders]
    names = set(os.listdir(save))
    assert {
        "parameters_final.pkl",
        "results.pkl",
        "results.json",
        "parameters_checkpoint_linear_0.pkl",
        "parameters_checkpoint_linear_1.pkl",
    } <= names
    check_results(save, evaluated={"linear"})
    base = load_pickle(phase_one_runs["CC"] / "parameters_checkpoint_2.pkl")
    final = check_checkpoint(save / "parameters_final.pkl", SPEC)
    # Centered linearized dynamics train lin_params only.
    assert utils.tree_equal(final["params"], base["params"])
    assert utils.tree_equal(final["net_state"], base["net_state"])
    assert not utils.tree_equal(final["lin_params"], base["params"])
    log = [
        json.loads(line)
        for line in (save / "log.jsonl").read_text().splitlines()
    ]
    assert [(r["phase"], r["adversarial"]) for r in log] == [
        ("linear", loaders == "CA")
    ] * 2


def test_centered_phase_two_starts_from_zero_logits(phase_two_runs, data_path):
    start = load_pickle(
        phase_two_runs["CC"] / "parameters_checkpoint_linear_0.pkl"
    )
    assert utils.tree_equal(start["params"], start["lin_params"])
    images, _ = data.load_split("fashion_mnist", str(data_path), train=False)
    model = SPEC.build()
    logits, _ = models.Dynamics(linear=True, centering=True).logits(
        model.apply,
        start["params"],
        start["lin_params"],
        start["net_state"],
        images[:50],
    )
    np.testing.assert_array_equal(np.asarray(logits), 0.0)


def test_same_seed_gives_identical_parameters(
    tmp_path, phase_one_runs, data_path
):
    save = tmp_path / "again"
    run_script(
        "--standard_epochs",
        "3",
        "--linear_epochs",
        "0",
        "--loaders",
        "AC",
        "--save_models",
        "--save_path",
        str(save),
        "--random_seed",
        "0",
        *SIZE_FLAGS,
        data_path=data_path,
    )
    first = load_pickle(phase_one_runs["AC"] / "parameters_final.pkl")
    again = load_pickle(save / "parameters_final.pkl")
    for key in ("params", "lin_params", "net_state"):
        assert utils.tree_equal(first[key], again[key])
    assert load_pickle(save / "results.pkl") == load_pickle(
        phase_one_runs["AC"] / "results.pkl"
    )


def resnet_flags(save):
    return [
        "--standard_epochs",
        "2",
        "--linear_epochs",
        "3",
        "--loaders",
        "AA",
        "--centering",
        "--loose_bn_second",
        "--save_models",
        "--save_path",
        str(save),
        "--state_every",
        "1",
        "--dataset",
        "fashion_mnist",
        "--model",
        "resnet18",
        "--width",
        "2",
        "--train_size",
        "150",
        "--test_size",
        "20",
        "--batch_size",
        "50",
        "--train_pgd_iters",
        "1",
        "--eval_attacks",
        "",
        "--no_progress",
    ]


def wait_until(save, predicate, process):
    """Polls train_state.pkl until predicate(stage, epoch, step) holds.

    Waits on what the run writes, not on a clock: it gives up only when the
    process has ended or after SUBPROCESS_TIMEOUT_S. Returns (whether it
    held, a description of the last state seen, for the failure message).
    """
    path = save / "train_state.pkl"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    seen = "no train_state.pkl yet"
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists():
            saved = utils.safe_load_pickle(path)
            train = saved.get("train") or {}
            position = (saved["stage"], train.get("epoch"), train.get("step"))
            seen = "stage {}, epoch {}, step {}".format(*position)
            if predicate(*position):
                return True, seen
        time.sleep(0.005)
    ended = process.poll()
    return False, (
        f"last seen: {seen}; process "
        + ("still running" if ended is None else f"exited with {ended}")
    )


def in_phase_one(stage, epoch, step):
    return stage == "standard" and (epoch, step) >= (0, 2)


def in_phase_two(stage, epoch, step):
    return stage == "linear" and (epoch, step) >= (1, 1)


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, data_path):
    whole = tmp_path / "whole"
    run_script(*resnet_flags(whole), data_path=data_path)
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        os.path.join(ROOT, "run_exp.py"),
        *resnet_flags(killed),
        "--data_path",
        str(data_path),
    ]
    # Killed without warning twice: once in phase 1, once in phase 2.
    for moment in (in_phase_one, in_phase_two):
        process = subprocess.Popen(
            command + ["--resume"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        reached, seen = wait_until(killed, moment, process)
        assert reached, f"{moment.__name__} never reached: {seen}"
        process.send_signal(signal.SIGKILL)
        process.wait()
    unfinished = run_script(
        *resnet_flags(killed), data_path=data_path, check=False
    )
    assert unfinished.returncode == 2 and "--resume" in unfinished.stderr
    run_script(*resnet_flags(killed), "--resume", data_path=data_path)
    first = load_pickle(whole / "parameters_final.pkl")
    resumed = load_pickle(killed / "parameters_final.pkl")
    for key in ("params", "lin_params", "net_state"):
        assert utils.tree_equal(first[key], resumed[key]), key
    log = [
        json.loads(line)
        for line in (killed / "log.jsonl").read_text().splitlines()
    ]
    assert [(r["phase"], r["epoch"]) for r in log] == [
        ("standard", 0),
        ("standard", 1),
    ] + [("linear", e) for e in range(3)]
    again = run_script(*resnet_flags(killed), "--resume", data_path=data_path)
    assert "nothing to do" in again.stdout


def bad_input_cases(tmp_path, phase_one_runs):
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x05not a pickle")
    mlp_base = phase_one_runs["CC"] / "parameters_checkpoint_1.pkl"
    no_meta = tmp_path / "no_meta.pkl"  # as the original's checkpoints
    checkpoint = load_pickle(mlp_base)
    utils.atomic_pickle(
        no_meta, {k: checkpoint[k] for k in utils.CHECKPOINT_KEYS}
    )
    return {
        "loaders": (["--loaders", "CX"], "--loaders"),
        "epochs": (["--standard_epochs", "-1"], "--standard_epochs"),
        "eps": (["--eps", "0"], "--eps"),
        "missing base": (
            ["--base_model_path", str(tmp_path / "nope.pkl")],
            "nope.pkl",
        ),
        "corrupt base": (["--base_model_path", str(corrupt)], "corrupt.pkl"),
        "other model": (
            ["--base_model_path", str(mlp_base), "--model", "mlp_wide"],
            "mlp_wide",
        ),
        "shapes differ": (
            [
                "--base_model_path",
                str(no_meta),
                "--model",
                "resnet18",
                "--width",
                "4",
            ],
            "no_meta.pkl",
        ),
        "unwritable": (["--save_path", str(corrupt / "sub")], "corrupt.pkl"),
        "offline dataset": (["--dataset", "cifar100"], "cifar100"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "loaders",
        "epochs",
        "eps",
        "missing base",
        "corrupt base",
        "other model",
        "shapes differ",
        "unwritable",
        "offline dataset",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path, phase_one_runs, data_path, case
):
    flags, named = bad_input_cases(tmp_path, phase_one_runs)[case]
    save = tmp_path / "out"
    base = [
        "--standard_epochs",
        "1",
        "--linear_epochs",
        "0",
        "--save_path",
        str(save),
        "--train_size",
        "20",
        "--test_size",
        "10",
        "--no_progress",
    ]
    if "--dataset" not in flags:
        base += ["--dataset", "fashion_mnist"]
    if "--model" not in flags:
        base += ["--model", "mlp_skinny"]
    result = run_script(*base, *flags, data_path=data_path, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.stderr
    assert not save.exists()
