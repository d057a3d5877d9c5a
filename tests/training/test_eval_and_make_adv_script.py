"""Tests of eval_and_make_adv.py on a checkpoint of a small MLP trained on
Fashion-MNIST: the paper's Example 5 command, its output files, transfer to
its own adversarial examples, and refusal of bad input."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import attacks
import cli
import data
import eval_and_make_adv
import models
import run_exp
from helpers import (
    ROOT,
    assert_close,
    assert_one_line_error,
    files_snapshot,
    linearized_logits,
    needs_neural_tangents,
    run_script,
    write_untrained_checkpoint,
)
from store import atomic, checkpoints

RUN_DIR = "saved_model_loaded_centering_phase_2"
EPS_255 = 4.0
# Example 5 of the paper's README, word for word.
EXAMPLE_5 = [
    "--model_path",
    f"./{RUN_DIR}/parameters_final.pkl",
    "--linear",
    "--centering",
    "--save_examples",
    "--bonus_dir",
    "test_results",
    "--random_seed",
    "0",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fashion_data, tiny_mlp):
    """A folder holding RUN_DIR/parameters_final.pkl and data/ (a link to
    the session's data folder); also the trained model (see
    train_tiny_mlp) as `workdir.trained`."""
    root = tmp_path_factory.mktemp("work")
    os.symlink(fashion_data, root / "data")
    trained = tiny_mlp
    checkpoints.save_checkpoint(
        root / RUN_DIR / "parameters_final.pkl",
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["meta"],
    )
    return root, trained


def small(root, test_size=100):
    """Flags that keep a run small: data folder, subset, short attack."""
    return [
        "--data_path",
        str(root / "data"),
        "--test_size",
        str(test_size),
        "--pgd_iters",
        "5",
    ]


def small_test_set(root, test_size=100):
    """The images (N, H, W, C) and labels of small(root)'s test subset."""
    return data.subset(
        *data.load_split("fashion_mnist", str(root / "data"), train=False),
        test_size,
        0,
    )


def run_main(root, argv, monkeypatch):
    """Runs the script's main in `root` as the command line would."""
    monkeypatch.chdir(root)
    return cli.run_cli(lambda: eval_and_make_adv.main(argv))


def outputs(root, name="test_results"):
    """The output folder of Example 5 and its files for save name `name`."""
    folder = root / RUN_DIR / "test_results"
    return {
        "results": folder / f"test_results_{name}.pkl",
        "examples": folder / f"adv_examples_{name}.pkl",
        "json": folder / f"results_{name}.json",
        "transfer": folder / f"transfer_{name}.json",
    }


@pytest.fixture(scope="module")
def example5(workdir):
    """Runs Example 5 (on 200 test images, 5 PGD steps) once, in-process."""
    root, _ = workdir
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_main(root, EXAMPLE_5 + small(root, 200), monkeypatch)
    files = outputs(root)
    return (
        checkpoints.load_pickle_arrays(files["results"]),
        checkpoints.load_pickle_arrays(files["examples"]),
        json.loads(files["json"].read_text()),
    )


@pytest.mark.medium
def test_example_5_results_file(example5):
    results, _, _ = example5
    assert set(results) == {
        "acc_clean",
        "acc_dirty",
        "predictions_clean",
        "predictions_dirty",
        "components_clean",
        "components_dirty",
    }
    assert isinstance(results["acc_clean"], float)
    assert 0 <= results["acc_dirty"] < results["acc_clean"] <= 1
    assert results["acc_clean"] > 0.5
    for kind in ("clean", "dirty"):
        assert results[f"predictions_{kind}"].shape == (200,)
        for part in ("f", "df"):
            component = results[f"components_{kind}"][part]
            assert component.shape == (200, 10)
            assert component.dtype == np.float32


def test_example_5_examples_stay_in_the_ball(example5, workdir):
    root, trained = workdir
    _, examples, _ = example5
    images, labels = examples["images"], examples["labels"]
    assert images.shape == (200, 1, 28, 28) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, trained["labels"])
    clean = data.to_nchw(trained["images"])
    assert np.max(np.abs(images - clean)) <= EPS_255 / 255 + 1e-6
    assert images.min() >= 0 and images.max() <= 1
    # Kept as floats: not every pixel is a multiple of 1/255.
    assert np.any(np.abs(images * 255 - np.round(images * 255)) > 1e-3)


def test_example_5_records_the_attack(example5):
    _, _, record = example5
    attack = record["attack"]
    assert attack["norm"] == "linf" and attack["loss"] == "ce"
    assert attack["eps"] == pytest.approx(EPS_255 / 255)
    assert attack["step_size"] == pytest.approx(2 * EPS_255 / 255 / 5)
    assert (attack["iters"], attack["restarts"], attack["seed"]) == (5, 1, 0)
    assert record["evaluated"] == {
        "linear": True,
        "centering": True,
        "parameters": "lin_params",
        "expansion_point": "params",
    }
    assert record["sources"][0]["source"] == "fashion_mnist test set"
    assert record["test"]["test_size"] == 200
    assert "jax" in record["environment"]


@needs_neural_tangents
def test_components_are_the_centered_linearization(example5, workdir):
    _, trained = workdir
    results, _, _ = example5
    want = linearized_logits(
        trained["model"],
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["images"],
    )
    components = results["components_clean"]
    assert_close(components["f"] + components["df"], want, rtol=1e-4)
    np.testing.assert_array_equal(
        results["predictions_clean"], np.argmax(components["df"], axis=-1)
    )


def test_own_examples_reproduce_robust_accuracy(
    example5, workdir, monkeypatch, capsys
):
    root, _ = workdir
    results, _, _ = example5
    examples = str(outputs(root)["examples"])
    run_main(
        root,
        EXAMPLE_5[:4]
        + [
            "--bonus_dir",
            "test_results",
            "--test_path",
            examples,
            examples,
            "--no_adv",
            "--save_name",
            "transfer",
            "--data_path",
            str(root / "data"),
        ],
        monkeypatch,
    )
    folder = root / RUN_DIR / "test_results"
    for index in (0, 1):
        again = checkpoints.load_pickle_arrays(
            folder / f"test_results_transfer_{index}.pkl"
        )
        assert again["acc_clean"] == results["acc_dirty"]
        np.testing.assert_array_equal(
            again["predictions_clean"], results["predictions_dirty"]
        )
        # --no_adv, as the original: the dirty entries are the clean ones.
        assert again["acc_dirty"] == again["acc_clean"]
        np.testing.assert_array_equal(
            again["predictions_dirty"], again["predictions_clean"]
        )
        np.testing.assert_array_equal(
            again["components_dirty"]["df"], again["components_clean"]["df"]
        )
    transfer = json.loads(outputs(root, "transfer")["transfer"].read_text())
    assert [row["source"] for row in transfer["rows"]] == [examples] * 2
    assert transfer["rows"][0]["acc_clean"] == results["acc_dirty"]
    assert transfer["attack"] is None
    table = capsys.readouterr().out
    assert examples in table and "robust" in table


def test_linear_without_phase_2_warns(workdir, monkeypatch, capsys):
    root, trained = workdir
    path = root / "phase1" / "parameters_final.pkl"
    checkpoints.save_checkpoint(
        path,
        trained["params"],
        trained["params"],
        trained["state"],
        trained["meta"],
    )
    run_main(
        root,
        ["--model_path", str(path), "--linear", "--no_adv", "--short"]
        + small(root),
        monkeypatch,
    )
    assert "warning: lin_params equal params" in capsys.readouterr().err
    results = checkpoints.load_pickle_arrays(
        root / "phase1" / "test_results_test_results.pkl"
    )
    assert not np.any(results["components_clean"]["df"])


def write_pickle(path, obj):
    atomic.atomic_pickle(path, obj)
    return str(path)


def bad_inputs(root):
    """(case name, extra argv) pairs that must be refused."""
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    garbage = bad / "garbage.pkl"
    garbage.write_bytes(b"not a pickle at all")
    zeros = np.zeros((4, 1, 28, 28), np.float32)
    labels = np.zeros(4, np.int32)
    model = ["--model_path", f"./{RUN_DIR}/parameters_final.pkl"]
    return {
        "missing model": ["--model_path", str(bad / "absent.pkl")],
        "corrupt model": ["--model_path", str(garbage)],
        "corrupt test_path": model + ["--test_path", str(garbage)],
        "wrong shape": model
        + [
            "--test_path",
            write_pickle(
                bad / "cifar.pkl",
                {"images": np.zeros((4, 3, 32, 32)), "labels": labels},
            ),
        ],
        "out of range": model
        + [
            "--test_path",
            write_pickle(
                bad / "range.pkl", {"images": zeros + 1.5, "labels": labels}
            ),
        ],
        "eps zero": model + ["--eps", "0"],
        "eps negative": model + ["--eps", "-4"],
        "contradicting model": model + ["--model", "resnet18"],
        "unknown attack": model + ["--attack", "cw"],
        "budget zero": model
        + ["--attack", "autoattack", "--attack_budget", "apgd_iters=0"],
        "budget unknown key": model
        + ["--attack", "apgd-ce", "--attack_budget", "steps=10"],
        "budget with pgd": model + ["--attack_budget", "apgd_iters=10"],
        "budget key twice": model
        + [
            "--attack",
            "apgd-ce",
            "--attack_budget",
            "apgd_iters=10",
            "apgd_iters=20",
        ],
        "autoattack in l2": model
        + ["--attack", "autoattack", "--attack_norm", "l2"],
        "square in l2": model + ["--attack", "square", "--attack_norm", "l2"],
        "no_adv with autoattack": model
        + ["--no_adv", "--attack", "autoattack"],
    }


CASES = (
    "missing model",
    "corrupt model",
    "corrupt test_path",
    "wrong shape",
    "out of range",
    "eps zero",
    "eps negative",
    "contradicting model",
    "unknown attack",
    "budget zero",
    "budget unknown key",
    "budget with pgd",
    "budget key twice",
    "autoattack in l2",
    "square in l2",
    "no_adv with autoattack",
)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_one_line(workdir, monkeypatch, capsys, case):
    root, _ = workdir
    argv = (
        bad_inputs(root)[case]
        + ["--bonus_dir", "bad_out", "--save_name", "bad"]
        + small(root)
    )
    with pytest.raises(SystemExit) as exit_info:
        run_main(root, argv, monkeypatch)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not list(root.rglob("bad_out"))


def test_example_5_command_line(workdir):
    root, _ = workdir
    done = run_script(
        "eval_and_make_adv.py",
        *EXAMPLE_5 + ["--save_name", "cli", "--short"] + small(root),
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    files = outputs(root, "cli")
    assert all(files[key].is_file() for key in ("results", "examples", "json"))


def test_bad_input_from_the_command_line(workdir):
    root, _ = workdir
    done = run_script(
        "eval_and_make_adv.py", "--model_path", "absent.pkl", cwd=root
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_centering_without_linear_is_the_difference_of_networks(
    workdir, monkeypatch
):
    """As the original: f(x; params) − f(x; lin_params), e.g. a
    --do_standard_second checkpoint's trained network minus θ(t)."""
    root, trained = workdir
    run_main(
        root,
        EXAMPLE_5[:2]
        + [
            "--centering",
            "--no_adv",
            "--save_name",
            "difference",
            "--bonus_dir",
            "difference",
        ]
        + small(root),
        monkeypatch,
    )
    results = checkpoints.load_pickle_arrays(
        root / RUN_DIR / "difference" / "test_results_difference.pkl"
    )
    images, _ = small_test_set(root)
    apply, state = trained["model"].apply, trained["state"]
    f_params = apply(trained["params"], state, None, images, False)[0]
    f_lin = apply(trained["lin_params"], state, None, images, False)[0]
    components = results["components_clean"]
    assert_close(components["f"], f_lin)
    assert_close(components["df"], np.asarray(f_params) - np.asarray(f_lin))
    np.testing.assert_array_equal(
        results["predictions_clean"], np.argmax(components["df"], axis=-1)
    )


def test_no_adv_save_examples_writes_the_clean_images(workdir, monkeypatch):
    root, trained = workdir
    run_main(
        root,
        EXAMPLE_5[:4]
        + [
            "--no_adv",
            "--save_examples",
            "--save_name",
            "clean",
            "--bonus_dir",
            "clean",
            "--test_path",
            "",
        ]  # '': the test set
        + small(root),
        monkeypatch,
    )
    folder = root / RUN_DIR / "clean"
    examples = checkpoints.load_pickle_arrays(
        folder / "adv_examples_clean.pkl"
    )
    images, labels = small_test_set(root)
    np.testing.assert_array_equal(examples["images"], data.to_nchw(images))
    np.testing.assert_array_equal(examples["labels"], labels)
    results = checkpoints.load_pickle_arrays(folder / "test_results_clean.pkl")
    assert results["acc_dirty"] == results["acc_clean"]
    assert not (folder / "transfer_clean.json").exists()


def signal_mid_attack(root, bonus_dir, signum):
    """Runs the script (1,000 test images, 200 PGD steps, batches of 10)
    with --bonus_dir `bonus_dir`, sends it `signum` once its progress bar
    shows the second batch done, and returns (exit status, stderr)."""
    command = [
        sys.executable,
        os.path.join(ROOT, "eval_and_make_adv.py"),
        *EXAMPLE_5[:4],
        *("--bonus_dir", bonus_dir, "--save_examples"),
        *("--data_path", str(root / "data"), "--test_size", "1000"),
        *("--pgd_iters", "200", "--batch_size", "10"),
    ]
    process = subprocess.Popen(
        command,
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    seen = ""
    try:
        # Wait on what it writes: the progress bar's second finished batch.
        while "2/100" not in seen and process.poll() is None:
            seen += process.stderr.read(1)
        assert process.poll() is None, (
            f"ended before the signal: {seen[-300:]}"
        )
        process.send_signal(signum)
        seen += process.communicate(timeout=600)[1]
    finally:
        process.kill()
        process.wait()
    return process.returncode, seen


@pytest.mark.slow
def test_killed_mid_attack_leaves_no_output(workdir):
    """A kill while the attack works leaves no output file, whole or
    half-written, and no output folder (made only when the outputs are
    written)."""
    root, _ = workdir
    code, _ = signal_mid_attack(root, "killed", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (root / RUN_DIR / "killed").exists()


# --------------------------------------------------------------------------
# Issue 30: budgets checked first, output folders exclusive, Ctrl-C
# --------------------------------------------------------------------------


def _no_work(*args, **kwargs):
    raise AssertionError("loaded or evaluated before the checks passed")


def refused(root, argv, monkeypatch, capsys, *named, stage=data):
    """Runs the script in `root` and asserts: exit status 2, one `error:`
    line naming each of `named`, no file of `root` written, changed or
    removed; `stage` (data: its load_split; models: its load_with_spec)
    fails the test if the refusal comes after it."""
    if stage is data:
        monkeypatch.setattr(data, "load_split", _no_work)
    else:
        monkeypatch.setattr(models, "load_with_spec", _no_work)
    before = files_snapshot(root)
    with pytest.raises(SystemExit) as exit_info:
        run_main(root, [str(a) for a in argv], monkeypatch)
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, *named)
    assert files_snapshot(root) == before
    monkeypatch.undo()


@pytest.fixture
def untrained(tmp_path):
    """A folder holding run/parameters_final.pkl, an untrained mlp_skinny
    of Fashion-MNIST; (folder, its --model_path)."""
    path = write_untrained_checkpoint(
        tmp_path / "run" / "parameters_final.pkl"
    )
    return tmp_path, path


@pytest.mark.parametrize("attack", ["apgd-t", "fab-t", "autoattack"])
def test_item1_n_targets_above_wrong_classes_refused_before_loading(
    untrained, monkeypatch, capsys, attack
):
    """n_targets=20 of a 10-class model (from its checkpoint): refused
    before any image is loaded, in one line; nothing written (no empty
    output folder)."""
    root, model = untrained
    argv = ["--model_path", model, "--attack", attack, "--bonus_dir", "out"]
    argv += ["--attack_budget", "n_targets=20"]
    refused(root, argv, monkeypatch, capsys, "n_targets=20", "9 wrong ones")
    # Given with --dataset, the class count is known from the flags.
    argv += ["--dataset", "fashion_mnist"]
    refused(root, argv, monkeypatch, capsys, "n_targets=20", stage=models)


@pytest.mark.parametrize("key", attacks.budget_fields())
def test_item2_budget_numbers_have_an_upper_bound(
    untrained, monkeypatch, capsys, key
):
    """Every --attack_budget number is bounded (its field's maximum): one
    above, or 10^23, is refused when the command line is read, by both
    scripts; the bound itself is taken."""
    root, model = untrained
    limit = attacks.budget_fields()[key].maximum
    for value in (limit + 1, 99999999999999999999999):
        budget = [
            "--attack",
            "autoattack",
            "--attack_budget",
            f"{key}={value}",
        ]
        argv = ["--model_path", model, "--bonus_dir", "out", *budget]
        named = (key, f"must be at most {limit}")
        refused(root, argv, monkeypatch, capsys, *named, stage=models)
        with pytest.raises(cli.UserError, match=f"at most {limit}"):
            run_exp.parse_args(budget)
    parsed = run_exp.parse_args(["--attack_budget", f"{key}={limit}"])
    assert parsed.attack_budget == [[key, limit]]
    with pytest.raises(ValueError, match="at most"):
        attacks.Budget(**{key: limit + 1})


@pytest.mark.parametrize(
    "attack,key",
    [("apgd-ce", "square_queries"), ("apgd-t", "apgd_restarts")],
)
def test_item4_budget_key_the_attack_does_not_use_refused(
    untrained, monkeypatch, capsys, attack, key
):
    """A budget key --attack does not read (Square's queries for APGD-CE;
    restarts for APGD-T, which runs once per target) is refused before
    anything is loaded, naming the key and what the attack reads."""
    root, model = untrained
    argv = ["--model_path", model, "--bonus_dir", "out", "--attack", attack]
    argv += ["--attack_budget", f"{key}=5"]
    refused(root, argv, monkeypatch, capsys, key, "does not use", stage=models)


@pytest.mark.parametrize(
    "name", ["sub/../../../escaped", "sub/x", "", "../../esc", ".hidden"]
)
def test_item5_save_name_is_a_plain_name_checked_before_loading(
    untrained, monkeypatch, capsys, name
):
    """--save_name takes calculate_kernel.py's rule: a plain file-name
    prefix, refused when the command line is read; nothing written above
    or below the output folder."""
    root, model = untrained
    argv = ["--model_path", model, "--bonus_dir", "s1", "--save_name", name]
    refused(root, argv, monkeypatch, capsys, "--save_name", stage=models)


def _evaluate(root, monkeypatch, *flags):
    """A short evaluation of the trained MLP into RUN_DIR/shared."""
    argv = EXAMPLE_5[:4] + ["--bonus_dir", "shared", "--no_progress"]
    argv += small(root, 20) + ["--batch_size", "10", *flags]
    run_main(root, argv, monkeypatch)
    return root / RUN_DIR / "shared"


def test_item6_a_folders_evaluation_is_replaced_only_whole(
    workdir, monkeypatch, capsys, tmp_path
):
    """A second evaluation under the same --save_name is refused (the
    first one's files as they were); with --overwrite it replaces the
    first one's set whole: its examples and its _0/_1 files are gone."""
    root, _ = workdir
    folder = _evaluate(root, monkeypatch, "--save_examples")
    argv = EXAMPLE_5[:4] + ["--bonus_dir", "shared", "--pgd_iters", "3"]
    argv += ["--data_path", str(root / "data"), "--test_size", "20"]
    refused(root, argv, monkeypatch, capsys, "--overwrite", "test_results")
    _evaluate(root, monkeypatch, "--pgd_iters", "3", "--overwrite")
    names = sorted(os.listdir(folder))
    assert names == [
        "results_test_results.json",
        "test_results_test_results.pkl",
    ]
    record = json.loads((folder / names[0]).read_text())
    assert record["attack"]["iters"] == 3
    # Two sources, then one: the _0/_1 files of the first go with it.
    images, labels = small_test_set(root, 20)
    source = write_pickle(
        tmp_path / "a.pkl", evaluation_examples(images, labels)
    )
    _evaluate(
        root,
        monkeypatch,
        "--no_adv",
        "--overwrite",
        "--test_path",
        source,
        source,
    )
    assert "test_results_test_results_1.pkl" in os.listdir(folder)
    _evaluate(
        root, monkeypatch, "--no_adv", "--overwrite", "--test_path", source
    )
    assert sorted(os.listdir(folder)) == [
        "results_test_results.json",
        "test_results_test_results.pkl",
        "transfer_test_results.json",
    ]


def evaluation_examples(images, labels):
    """An example file's content (eval_and_make_adv.py --save_examples)."""
    return {"images": data.to_nchw(images), "labels": np.asarray(labels)}


@pytest.mark.slow
def test_item7_ctrl_c_ends_interrupted_with_nothing_written(workdir):
    """SIGINT while the attack runs: the run ends with `interrupted`, exit
    status 130, nothing printed as ignored, no output file and no output
    folder."""
    root, _ = workdir
    code, err = signal_mid_attack(root, "interrupted", signal.SIGINT)
    assert code == 130, err[-2000:]
    assert err.rstrip().endswith("interrupted")
    assert "Exception ignored" not in err
    assert not (root / RUN_DIR / "interrupted").exists()
