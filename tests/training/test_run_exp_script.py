"""run_exp.py end to end on a few hundred Fashion-MNIST images.

The paper's four example command lines run with size flags added; a narrow
network keeps compile and run times small. The tests of the promises of
docs/run_exp.md ("Promises of run_exp.py") are named after them:
test_promise_*.
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

import calculate_kernel
import cli
import data
import eval_and_make_adv
import models
import run_exp
import utils
from helpers import (
    ROOT,
    SUBPROCESS_TIMEOUT_S,
    assert_one_line_error,
    load_pickle,
    needs_fashion_mnist,
)
from helpers import run_script as run_entry_script
from store import atomic, checkpoints, pickles

pytestmark = [needs_fashion_mnist, pytest.mark.slow]

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
SPEC = models.ModelSpec("mlp_skinny", None, "fashion_mnist", 10)


def run_script(*args, data_path, check=True):
    """Runs run_exp.py with `args`; returns the CompletedProcess."""
    return run_entry_script(
        "run_exp.py", *args, "--data_path", data_path, check=check
    )


def run_in_process(argv, capsys):
    """(exit status, stdout, stderr) of run_exp's main run as the script
    runs it, in this process (no JAX start-up per call)."""
    try:
        cli.run_cli(lambda: run_exp.main([str(a) for a in argv]))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def data_path(fashion_data):
    return fashion_data


def phase_one_flags(save, loaders, epochs=3):
    return [
        "--standard_epochs",
        epochs,
        "--linear_epochs",
        "0",
        "--loaders",
        loaders,
        "--save_models",
        "--save_path",
        save,
        "--constant_save",
        "--random_seed",
        "0",
        *SIZE_FLAGS,
    ]


@pytest.fixture(scope="module")
def phase_one_runs(tmp_path_factory, data_path):
    """Examples 1 and 2: phase 1 benign (CC) and adversarial (AC)."""
    runs = {}
    for loaders in ("CC", "AC"):
        save = tmp_path_factory.mktemp(f"phase1_{loaders}")
        run_script(*phase_one_flags(save, loaders), data_path=data_path)
        runs[loaders] = save
    return runs


def phase_two_flags(base, save, loaders, *extra):
    return [
        "--base_model_path",
        base,
        "--loaders",
        loaders,
        "--linear_epochs",
        "2",
        "--second_lr",
        "0.01",
        "--save_models",
        "--centering",
        "--save_path",
        save,
        "--random_seed",
        "0",
        "--constant_save_linear",
        *SIZE_FLAGS,
        *extra,
    ]


@pytest.fixture(scope="module")
def phase_two_runs(tmp_path_factory, phase_one_runs, data_path):
    """Examples 3 and 4: centered phase 2 from epoch 2, benign and
    adversarial."""
    base = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    runs = {}
    for loaders in ("CC", "CA"):
        save = tmp_path_factory.mktemp(f"phase2_{loaders}")
        run_script(*phase_two_flags(base, save, loaders), data_path=data_path)
        runs[loaders] = save
    return runs


def read_log(save):
    return [
        json.loads(line)
        for line in (save / "log.jsonl").read_text().splitlines()
    ]


def check_results(path, evaluated, skipped=()):
    """results.pkl as the original writes it (0 where no evaluation ran),
    results.json with null there and the reason."""
    results = load_pickle(path / "results.pkl")
    record = json.loads((path / "results.json").read_text())
    assert set(results) == {"standard", "linear", "standard_second"}
    assert results["standard_second"] is False
    for phase in ("standard", "linear"):
        assert set(results[phase]) == {"clean", "l2", "linf"}
        if phase in evaluated:
            for value in results[phase].values():
                assert 0.0 < value <= 1.0
            # PGD can only lower the accuracy of the clean images.
            assert results[phase]["linf"] <= results[phase]["clean"]
            assert record[phase] == results[phase]
        else:
            assert results[phase] == {"clean": 0.0, "l2": 0.0, "linf": 0.0}
            assert record[phase] is None
    assert set(record["skipped"]) == set(skipped)
    # The attacks the numbers were measured with.
    assert record["attacks"]["linf"]["iters"] == 3
    assert record["attacks"]["linf"]["eps"] == pytest.approx(4 / 255)
    assert record["attacks"]["l2"]["eps"] == 0.25
    assert record["test_images"] == 100
    return record


def check_checkpoint(path, spec):
    checkpoint = load_pickle(path)  # plain pickle, as in a notebook
    assert {"params", "lin_params", "net_state", "meta"} <= set(checkpoint)
    for key in ("params", "lin_params"):
        leaves = jax.tree_util.tree_leaves(checkpoint[key])
        assert all(isinstance(leaf, np.ndarray) for leaf in leaves)
        models.check_params_fit(spec, checkpoint[key], checkpoint["net_state"])
    return checkpoint


@pytest.mark.parametrize("loaders", ["CC", "AC"])
def test_phase_one_writes_every_file(phase_one_runs, loaders):
    save = phase_one_runs[loaders]
    names = set(os.listdir(save))
    checkpoints = {f"parameters_checkpoint_{k}.pkl" for k in range(4)}
    checkpoints |= {f"parameters_checkpoint_{f}.pkl" for f in FRACTIONS}
    checkpoints.add("parameters_final.pkl")
    records = {
        "results.pkl",
        "results.json",
        "config.json",
        "log.jsonl",
        "train_state.pkl",
    }
    assert names == checkpoints | records  # no lock or temporary file left
    for name in checkpoints:
        check_checkpoint(save / name, SPEC)
    check_results(save, evaluated={"standard"}, skipped={"linear"})
    log = read_log(save)
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert all(r["adversarial"] == (loaders == "AC") for r in epochs)
    assert all(r["images"] == 200 for r in epochs)
    # Compilation is timed apart: only the first epoch compiles.
    assert epochs[0]["compile_seconds"] > 0
    assert epochs[1]["compile_seconds"] == 0 and epochs[1]["images_per_s"]
    evaluations = [r for r in log if r["kind"] == "evaluation"]
    assert [r["attack"] for r in evaluations] == ["linf", "l2"]
    assert all(r["seconds"] > 0 and r["images"] == 100 for r in evaluations)
    config = json.loads((save / "config.json").read_text())
    assert config["flags"]["loaders"] == loaders
    assert config["environment"]["jax"] == jax.__version__


def test_epoch_checkpoints_follow_training(phase_one_runs):
    save = phase_one_runs["CC"]
    first = load_pickle(save / "parameters_checkpoint_0.pkl")
    later = load_pickle(save / "parameters_checkpoint_3.pkl")
    final = load_pickle(save / "parameters_final.pkl")
    assert first["meta"]["epoch"] == 0 and later["meta"]["epoch"] == 3
    assert first["meta"]["width"] is None  # an MLP has no width
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
    # The loaded θ(t) is evaluated under 'standard', as the original does.
    check_results(save, evaluated={"standard", "linear"})
    base = load_pickle(phase_one_runs["CC"] / "parameters_checkpoint_2.pkl")
    final = check_checkpoint(save / "parameters_final.pkl", SPEC)
    # Centered linearized dynamics train lin_params only.
    assert utils.tree_equal(final["params"], base["params"])
    assert utils.tree_equal(final["net_state"], base["net_state"])
    assert not utils.tree_equal(final["lin_params"], base["params"])
    epochs = [r for r in read_log(save) if r["kind"] == "epoch"]
    assert [(r["phase"], r["adversarial"]) for r in epochs] == [
        ("linear", loaders == "CA")
    ] * 2


def test_base_model_evaluation_is_that_of_the_phase_one_run(
    tmp_path, phase_one_runs, phase_two_runs, data_path
):
    """results['standard'] of a phase-2 run is θ(t)'s accuracy: the same
    numbers as a phase-1 run that stops at t evaluates."""
    stopped = tmp_path / "stopped_at_2"
    run_script(*phase_one_flags(stopped, "CC", epochs=2), data_path=data_path)
    phase_one = load_pickle(stopped / "results.pkl")["standard"]
    phase_two = load_pickle(phase_two_runs["CC"] / "results.pkl")["standard"]
    assert phase_two == phase_one


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


def test_standard_second_writes_the_original_layout(
    tmp_path, phase_one_runs, data_path
):
    """--do_standard_second: params = the network trained in phase 2,
    lin_params = θ(t); eval_and_make_adv.py without --linear evaluates the
    trained network, and calculate_kernel.py takes its kernel."""
    base_path = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    save = tmp_path / "standard_second"
    run_script(
        "--base_model_path",
        base_path,
        "--linear_epochs",
        "1",
        "--do_standard_second",
        "--save_models",
        "--save_path",
        save,
        "--skip_first_test",
        *SIZE_FLAGS,
        data_path=data_path,
    )
    base = load_pickle(base_path)
    final = load_pickle(save / "parameters_final.pkl")
    assert utils.tree_equal(final["lin_params"], base["params"])
    assert not utils.tree_equal(final["params"], base["params"])
    assert final["meta"]["linear"] is False
    results = load_pickle(save / "results.pkl")
    assert results["standard_second"] is True
    # Without --linear the evaluation script evaluates the trained network:
    # the same clean accuracy as the run's own evaluation.
    eval_and_make_adv.main(
        [
            "--model_path",
            str(save / "parameters_final.pkl"),
            "--no_adv",
            "--test_size",
            "100",
            "--data_path",
            str(data_path),
            "--no_progress",
        ]
    )
    evaluated = load_pickle(save / "test_results_test_results.pkl")
    assert evaluated["acc_clean"] == results["linear"]["clean"]


# --------------------------------------------------------------------------
# Same seed, same numbers; resuming
# --------------------------------------------------------------------------


def test_promise_same_seed_same_numbers(tmp_path, phase_one_runs, data_path):
    save = tmp_path / "again"
    run_script(*phase_one_flags(save, "AC"), data_path=data_path)
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
            saved = pickles.safe_load_pickle(path)
            where = saved.get("position") or {}
            point = (saved["stage"], where.get("epoch"), where.get("step"))
            seen = "stage {}, epoch {}, step {}".format(*point)
            if None not in point and predicate(*point):
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


def start_run(flags, data_path):
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "run_exp.py"),
            *map(str, flags),
            "--data_path",
            str(data_path),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )


def stale_temp_name(target):
    """The name of a temporary file that a killed run of this host left."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    host = atomic.socket.gethostname()
    return f".{target}.tmp-{host}-{process.pid}-{'0' * 12}"


def test_promise_killed_run_resumes_bit_for_bit(tmp_path, data_path):
    """Killed twice without warning (phase 1, phase 2), then resumed: the
    same parameters as an uninterrupted run; the killed run's lock and
    temporary files do not block or stay."""
    whole = tmp_path / "whole"
    run_script(*resnet_flags(whole), data_path=data_path)
    killed = tmp_path / "killed"
    for moment in (in_phase_one, in_phase_two):
        process = start_run(resnet_flags(killed) + ["--resume"], data_path)
        reached, seen = wait_until(killed, moment, process)
        assert reached, f"{moment.__name__} never reached: {seen}"
        process.send_signal(signal.SIGKILL)
        process.wait()
    left = killed / stale_temp_name("parameters_final.pkl")
    left.write_bytes(b"half a checkpoint")
    unfinished = run_script(
        *resnet_flags(killed), data_path=data_path, check=False
    )
    assert unfinished.returncode == 2 and "--resume" in unfinished.stderr
    run_script(*resnet_flags(killed), "--resume", data_path=data_path)
    assert not left.exists()
    first = load_pickle(whole / "parameters_final.pkl")
    resumed = load_pickle(killed / "parameters_final.pkl")
    for key in ("params", "lin_params", "net_state"):
        assert utils.tree_equal(first[key], resumed[key]), key
    epochs = [r for r in read_log(killed) if r["kind"] == "epoch"]
    assert [(r["phase"], r["epoch"]) for r in epochs] == [
        ("standard", 0),
        ("standard", 1),
    ] + [("linear", e) for e in range(3)]
    assert sorted(os.listdir(killed)) == sorted(os.listdir(whole))
    again = run_script(*resnet_flags(killed), "--resume", data_path=data_path)
    assert "nothing to do" in again.stdout


def test_promise_one_run_per_folder(tmp_path, data_path):
    """A second run in a folder in use is refused, naming the holder; once
    the holder is killed, --resume takes the folder."""
    save = tmp_path / "busy"
    flags = resnet_flags(save)
    holder = start_run(flags, data_path)
    try:
        reached, seen = wait_until(save, in_phase_one, holder)
        assert reached, seen
        # Frozen, it holds the lock however long the second run takes to
        # start (on a loaded machine it could otherwise finish first).
        holder.send_signal(signal.SIGSTOP)
        second = run_script(
            *flags, "--resume", data_path=data_path, check=False
        )
        assert second.returncode == 2
        assert_one_line_error(
            second.stderr, "in use by another run", f"pid {holder.pid}"
        )
    finally:
        holder.kill()
        holder.wait()
    run_script(*flags, "--resume", data_path=data_path)
    assert (save / "parameters_final.pkl").exists()


# --------------------------------------------------------------------------
# Finished folders: nothing to do, refused, or --overwrite
# --------------------------------------------------------------------------


def test_promise_finished_run_is_never_mixed_with_another(
    tmp_path, phase_one_runs, data_path, capsys
):
    """The paper's two phase-2 examples share one --save_path: run one
    after the other, the second is refused (the original silently replaced
    the first's results); the same command again has nothing to do;
    --overwrite replaces the run, leaving none of its files."""
    base = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    save = tmp_path / "saved_model_loaded_centering_phase_2"
    benign = phase_two_flags(base, save, "CC")
    adversarial = phase_two_flags(base, save, "CA")
    data_flags = ["--data_path", data_path]
    assert run_in_process(benign + data_flags, capsys)[0] == 0
    before = {name: (save / name).read_bytes() for name in os.listdir(save)}

    code, out, err = run_in_process(adversarial + data_flags, capsys)
    assert code == 2
    assert_one_line_error(err, "finished run with loaders CC", "--overwrite")
    assert {n: (save / n).read_bytes() for n in os.listdir(save)} == before

    code, out, _ = run_in_process(benign + data_flags, capsys)
    assert code == 0 and "nothing to do" in out
    assert {n: (save / n).read_bytes() for n in os.listdir(save)} == before

    # --overwrite with --constant_save_linear dropped: the old epoch files go.
    flags = [f for f in adversarial if f != "--constant_save_linear"]
    code, out, _ = run_in_process(flags + data_flags + ["--overwrite"], capsys)
    assert code == 0 and "removed" in out
    assert not (save / "parameters_checkpoint_linear_0.pkl").exists()
    assert (
        json.loads((save / "config.json").read_text())["flags"]["loaders"]
        == "CA"
    )
    assert [
        r["adversarial"] for r in read_log(save) if r["kind"] == "epoch"
    ] == [True, True]


def test_promise_other_runs_files_are_not_overwritten(
    tmp_path, data_path, capsys
):
    """A folder with run files but no train_state.pkl (e.g. the original
    code's) is refused without --overwrite."""
    save = tmp_path / "original_run"
    save.mkdir()
    (save / "results.pkl").write_bytes(b"the original's results")
    code, _, err = run_in_process(
        phase_one_flags(save, "CC", epochs=1) + ["--data_path", data_path],
        capsys,
    )
    assert code == 2
    assert_one_line_error(err, "results.pkl", "--overwrite")
    assert (save / "results.pkl").read_bytes() == b"the original's results"


# --------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------


def test_promise_divergence_stops_with_the_truth(
    tmp_path, phase_one_runs, data_path, capsys
):
    base = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    save = tmp_path / "diverged"
    code, _, err = run_in_process(
        phase_two_flags(base, save, "CC", "--skip_first_test")
        + ["--second_lr", "1e38", "--data_path", data_path],
        capsys,
    )
    assert code == 2
    assert_one_line_error(
        err,
        "non-finite in phase linear, epoch 1",
        "train_state.pkl holds the last state written before it (the start "
        "of phase linear)",
        "lower --second_lr",
    )
    assert pickles.safe_load_pickle(save / "train_state.pkl")["stage"] in (
        "standard",
        "linear",
    )
    assert not (save / "results.pkl").exists()


def test_promise_growing_loss_is_reported(
    tmp_path, phase_one_runs, data_path, capsys
):
    base = phase_one_runs["CC"] / "parameters_checkpoint_2.pkl"
    save = tmp_path / "exploding"
    code, _, err = run_in_process(
        phase_two_flags(
            base, save, "CC", "--skip_first_test", "--skip_second_test"
        )
        + ["--second_lr", "1e6", "--data_path", data_path],
        capsys,
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "loss grew from 2.3" in warnings[0]
    assert "learning rate" in warnings[0]
    record = json.loads((save / "results.json").read_text())
    assert len(record["warnings"]) == 1


# --------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------


def write_checkpoint_like(path, source, **meta_changes):
    checkpoint = load_pickle(source)
    checkpoint["meta"] = dict(checkpoint["meta"], **meta_changes)
    atomic.atomic_pickle(path, checkpoint)
    return path


def bad_input_cases(tmp_path, phase_one_runs):
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x05not a pickle")
    mlp_base = phase_one_runs["CC"] / "parameters_checkpoint_1.pkl"
    no_meta = tmp_path / "no_meta.pkl"  # as the original's checkpoints
    checkpoint = load_pickle(mlp_base)
    atomic.atomic_pickle(
        no_meta, {k: checkpoint[k] for k in checkpoints.CHECKPOINT_KEYS}
    )
    nan_base = tmp_path / "nan_base.pkl"
    checkpoints.save_checkpoint(
        nan_base,
        jax.tree_util.tree_map(lambda a: a * np.nan, checkpoint["params"]),
        checkpoint["lin_params"],
        checkpoint["net_state"],
        checkpoint["meta"],
    )
    deep = tmp_path / "deep.pkl"
    deep.write_bytes(
        b"\x80\x04}\x8c\x06params" + b"]" * 300_000 + b"a" * 299_999 + b"s."
    )
    base = ["--base_model_path"]
    return {
        "loaders": (["--loaders", "CX"], "--loaders"),
        "epochs": (["--standard_epochs", "-1"], "--standard_epochs"),
        "eps": (["--eps", "0"], "--eps"),
        "eps nan": (["--eps", "nan"], "--eps"),
        "eps inf": (["--eps", "inf"], "--eps"),
        "second_lr nan": (["--second_lr", "nan"], "--second_lr"),
        "resume and overwrite": (["--resume", "--overwrite"], "--overwrite"),
        "missing base": (base + [tmp_path / "nope.pkl"], "nope.pkl"),
        "corrupt base": (base + [corrupt], "corrupt.pkl"),
        "non-finite base": (base + [nan_base], "NaN"),
        "deep base": (base + [deep], "nest deeper"),
        "meta model foo": (
            base
            + [
                write_checkpoint_like(
                    tmp_path / "foo.pkl", mlp_base, model="foo"
                )
            ],
            "model 'foo'",
        ),
        "meta width abc": (
            base
            + [
                write_checkpoint_like(
                    tmp_path / "abc.pkl",
                    mlp_base,
                    model="resnet18",
                    width="abc",
                )
            ],
            "width 'abc'",
        ),
        "other model": (
            base + [mlp_base, "--model", "mlp_wide"],
            "mlp_wide",
        ),
        "shapes differ": (
            base + [no_meta, "--model", "resnet18", "--width", "4"],
            "no_meta.pkl",
        ),
        "unwritable": (["--save_path", corrupt / "sub"], "corrupt.pkl"),
        "offline dataset": (["--dataset", "cifar100"], "cifar100"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "loaders",
        "epochs",
        "eps",
        "eps nan",
        "eps inf",
        "second_lr nan",
        "resume and overwrite",
        "missing base",
        "corrupt base",
        "non-finite base",
        "deep base",
        "meta model foo",
        "meta width abc",
        "other model",
        "shapes differ",
        "unwritable",
        "offline dataset",
    ],
)
def test_promise_bad_input_is_one_line_and_writes_nothing(
    tmp_path, phase_one_runs, data_path, case, capsys
):
    flags, named = bad_input_cases(tmp_path, phase_one_runs)[case]
    save = tmp_path / "out"
    base = [
        "--standard_epochs",
        "1",
        "--linear_epochs",
        "0",
        "--save_path",
        save,
        "--train_size",
        "20",
        "--test_size",
        "10",
        "--no_progress",
        "--data_path",
        data_path,
    ]
    if "--dataset" not in flags:
        base += ["--dataset", "fashion_mnist"]
    if "--model" not in flags and "--base_model_path" not in flags:
        base += ["--model", "mlp_skinny"]
    code, _, err = run_in_process(base + flags, capsys)
    assert code == 2
    assert_one_line_error(err, named)
    assert not save.exists()


def test_bad_meta_is_one_line_in_every_script(
    tmp_path, phase_one_runs, data_path, capsys
):
    mlp_base = phase_one_runs["CC"] / "parameters_checkpoint_1.pkl"
    bad = write_checkpoint_like(tmp_path / "foo.pkl", mlp_base, model="foo")
    for main, argv in (
        (eval_and_make_adv.main, ["--model_path", bad]),
        (calculate_kernel.main, ["--model_path", bad, "--dataset_size", "20"]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_cli(
                lambda m=main, a=argv: m(
                    [str(x) for x in a] + ["--data_path", str(data_path)]
                )
            )
        assert exit_info.value.code == 2
        assert_one_line_error(capsys.readouterr().err, "model 'foo'")


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path, data_path):
    result = run_script(
        "--eps",
        "nan",
        "--save_path",
        tmp_path / "out",
        data_path=data_path,
        check=False,
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--eps", "finite")
    assert not (tmp_path / "out").exists()


def test_attack_adds_an_evaluation_beside_pgd(tmp_path, data_path, capsys):
    """--attack apgd-ce: each phase's test also runs APGD-CE (L∞ at --eps),
    recorded under its name beside PGD's, never above it (APGD-CE with 20
    steps against PGD with 3); results.pkl keeps the original's layout."""
    save = tmp_path / "aa"
    flags = phase_one_flags(save, "CC", epochs=1) + [
        "--attack",
        "apgd-ce",
        "--attack_budget",
        "apgd_iters=20",
        "--data_path",
        data_path,
    ]
    code, _, err = run_in_process(flags, capsys)
    assert code == 0, err
    results = json.loads((save / "results.json").read_text())
    standard = results["standard"]
    assert standard["apgd-ce"] <= standard["linf"]
    record = results["attacks"]["apgd-ce"]
    assert record["name"] == "apgd-ce" and record["norm"] == "linf"
    assert record["budget"]["apgd_iters"] == 20
    assert record["eps_255"] == 4.0
    assert set(load_pickle(save / "results.pkl")["standard"]) == {
        "clean",
        "l2",
        "linf",
    }


def test_record_made_before_the_attack_flags_still_resumes(
    tmp_path, data_path, capsys
):
    """A finished run whose record predates --attack and --attack_budget
    counts as made with their defaults: nothing to do, not 'other flags'."""
    save = tmp_path / "old"
    flags = phase_one_flags(save, "CC", epochs=1) + ["--data_path", data_path]
    code, _, err = run_in_process(flags, capsys)
    assert code == 0, err
    state_path = save / "train_state.pkl"
    state = load_pickle(state_path)
    for name in ("attack", "attack_budget"):
        del state["flags"][name]
    atomic.atomic_pickle(state_path, state)
    code, out, err = run_in_process(flags, capsys)
    assert code == 0, err
    assert "nothing to do" in out


def test_order_seed_changes_the_data_order_not_the_initialisation(
    tmp_path, data_path, capsys
):
    """--order_seed equal to --random_seed is the run without it, file for
    file; another --order_seed keeps θ(0) (and the subsets) but changes
    θ(1): the data order is its own (test_experiment.py tests the seed of
    the attack keys)."""
    saved = {}
    for name, order_seed in (("default", None), ("same", 0), ("other", 1000)):
        save = tmp_path / name
        flags = phase_one_flags(save, "CC", epochs=1) + ["--skip_first_test"]
        if order_seed is not None:
            flags += ["--order_seed", order_seed]
        code, _, err = run_in_process(
            [*flags, "--data_path", data_path], capsys
        )
        assert code == 0, err
        saved[name] = {
            t: load_pickle(save / f"parameters_checkpoint_{t}.pkl")
            for t in (0, 1)
        }
        config = json.loads((save / "config.json").read_text())
        assert config["flags"]["order_seed"] == (order_seed or 0)
    for t in (0, 1):
        for key in ("params", "net_state"):
            assert utils.tree_equal(
                saved["default"][t][key], saved["same"][t][key]
            )
    assert utils.tree_equal(
        saved["default"][0]["params"], saved["other"][0]["params"]
    )
    assert not utils.tree_equal(
        saved["default"][1]["params"], saved["other"][1]["params"]
    )
    assert saved["same"][1]["meta"]["flags"]["order_seed"] == 0


def test_record_made_before_the_order_seed_still_resumes(
    tmp_path, data_path, capsys
):
    """A record without order_seed counts as made with --order_seed =
    --random_seed: the same command finds nothing to do; another
    --order_seed is another run."""
    save = tmp_path / "old"
    flags = phase_one_flags(save, "CC", epochs=1)
    flags += ["--skip_first_test", "--data_path", data_path]
    code, _, err = run_in_process(flags, capsys)
    assert code == 0, err
    state_path = save / "train_state.pkl"
    state = load_pickle(state_path)
    del state["flags"]["order_seed"]
    atomic.atomic_pickle(state_path, state)
    code, out, err = run_in_process(flags, capsys)
    assert code == 0, err
    assert "nothing to do" in out
    code, _, err = run_in_process(flags + ["--order_seed", "3"], capsys)
    assert code == 2 and "--order_seed 0 there, 3 here" in err
