"""calculate_kernel.py end to end on Fashion-MNIST with a width-2 ResNet-18:
file names, keys and values (per-class kernels J_c J_cᵀ and the combined
mean Σ_c J_c J_cᵀ / K from jax.jacrev, on the images the original's rule
draws), and one-line refusals that write nothing."""

import os

import numpy as np
import pytest

import calculate_kernel
import cli
import data
import models
from helpers import (
    NT_UNAVAILABLE,
    assert_close,
    legacy_balanced_indices,
    load_pickle,
    needs_fashion_mnist,
    needs_neural_tangents,
)
from helpers import run_script as run_entry_script
from kernel_reference import perturb, reference_kernels, relative_error
from ntk import kernel_files, nt_compat
from store import checkpoints

SIZE = 20  # two images of each of the ten classes
BLOCK = 8  # three blocks, the last padded
SPEC = models.ModelSpec("resnet18", 2, "fashion_mnist", 10)
EPOCH = 20  # the checkpoint's meta['epoch']

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_data):
    """A checkpoint (lin_params ≠ params, running statistics set) and the
    training split it is evaluated on."""
    root = tmp_path_factory.mktemp("kernel")
    data_path = str(fashion_data)
    images, labels = data.load_split("fashion_mnist", data_path)
    model = SPEC.build()
    params, state = models.init_model(model, 0, images.shape[1:])
    params = perturb(params, 1, 0.1)
    lin_params = perturb(params, 2, 0.05)
    _, state = model.apply(params, state, None, images[:64], True)
    checkpoint = str(root / "model" / "parameters_final.pkl")
    checkpoints.save_checkpoint(
        checkpoint,
        params,
        lin_params,
        state,
        dict(SPEC.as_meta(), epoch=EPOCH),
    )
    return dict(
        root=root,
        data=data_path,
        checkpoint=checkpoint,
        images=images,
        labels=labels,
        params=params,
        lin_params=lin_params,
        state=state,
    )


def subset_kernels(run_dir, indices, key="params"):
    """(K, N, N) kernels J_c J_cᵀ of the subset, from jax.jacrev."""
    return reference_kernels(
        SPEC.build().apply,
        [run_dir[key]],
        run_dir["state"],
        run_dir["images"][indices],
    )[0]


def cli_args(run_dir, bonus_dir, *extra):
    """Arguments of a small run, then `extra` (a repeated flag overrides:
    argparse keeps the last value)."""
    return [
        "--model_path",
        run_dir["checkpoint"],
        "--dataset_size",
        str(SIZE),
        "--data_path",
        run_dir["data"],
        "--bonus_dir",
        bonus_dir,
        "--block_size",
        str(BLOCK),
        *extra,
    ]


def out_dir(run_dir, bonus_dir):
    return os.path.join(os.path.dirname(run_dir["checkpoint"]), bonus_dir)


def files_in(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def run_script(argv):
    """The finished `python calculate_kernel.py argv` (text output)."""
    return run_entry_script("calculate_kernel.py", *argv)


@pytest.mark.slow
def test_all_classes_one_file_each(run_dir):
    result = run_script(
        cli_args(run_dir, "all", "--class_index", "all", "--show_progress")
    )
    assert result.returncode == 0, result.stderr
    folder = out_dir(run_dir, "all")
    names = [f"saved_kernel_class_{c}_{SIZE}.pkl" for c in range(10)]
    assert files_in(folder) == sorted(names)
    assert result.stdout.count("wrote") == 10
    # The plan: 20 images in blocks of 8, all ten logits in one pass.
    assert (
        "20 images in 3 block(s) of 8, 10 logit(s) per pass" in result.stdout
    )
    assert "block" in result.stderr  # the progress bar

    records = [
        checkpoints.load_pickle_arrays(
            os.path.join(folder, name), ("kernel", "labels", "indices")
        )
        for name in names
    ]
    indices = records[0]["indices"]
    assert indices.dtype == np.int64 and indices.shape == (SIZE,)
    np.testing.assert_array_equal(
        indices, legacy_balanced_indices(run_dir["labels"], SIZE, 10, 0)
    )
    reference = subset_kernels(run_dir, indices)
    for c, record in enumerate(records):
        assert record["class_index"] == c
        assert record["kernel"].dtype == np.float32
        assert record["kernel"].shape == (SIZE, SIZE)
        np.testing.assert_array_equal(record["indices"], indices)
        np.testing.assert_array_equal(
            record["labels"], run_dir["labels"][indices]
        )
        assert record["use_linear_params"] is False
        assert record["epoch"] == EPOCH and "combined" not in record
        assert relative_error(record["kernel"], reference[c]) < 1e-5
    # What visualize_ntk_features.py reads back.
    kernel_files.read(
        os.path.join(folder, names[3]),
        class_index=3,
        size=SIZE,
        train_labels=run_dir["labels"],
    )


@pytest.mark.slow
@needs_neural_tangents
def test_combined_kernel_at_lin_params(run_dir, capsys):
    calculate_kernel.main(
        cli_args(
            run_dir,
            "lin",
            "--use_linear_params",
            "--implementation",
            "structured",
            "--random_seed",
            "3",
            "--save_name",
            "k",
        )
    )
    path = os.path.join(out_dir(run_dir, "lin"), f"k_{SIZE}.pkl")
    assert files_in(out_dir(run_dir, "lin")) == [os.path.basename(path)]
    assert path in capsys.readouterr().out
    record = checkpoints.load_pickle_arrays(
        path, ("kernel", "labels", "indices")
    )
    assert record["class_index"] == -1 and record["use_linear_params"]
    assert record["combined"] == "mean_over_logits"
    assert record["n_logits"] == 10 and record["epoch"] == EPOCH
    assert record["implementation"] == "structured"
    indices = legacy_balanced_indices(run_dir["labels"], SIZE, 10, 3)
    np.testing.assert_array_equal(record["indices"], indices)
    # The original's kernel: the mean over the ten logits.
    reference = subset_kernels(run_dir, indices, "lin_params").sum(0) / 10
    assert relative_error(record["kernel"], reference) < 1e-5
    at_params = subset_kernels(run_dir, indices).sum(0) / 10
    assert relative_error(record["kernel"], at_params) > 1e-3


def run_cli(argv):
    """Exit status of main(argv) run as the script runs it."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: calculate_kernel.main(argv))
    return exit_info.value.code


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--dataset_size", "15", "multiple of"),
        ("--dataset_size", "60010", "exceeds"),
        ("--dataset_size", "0", "dataset_size"),
        ("--class_index", "10", "class_index"),
        ("--class_index", "first", "class_index"),
        ("--random_seed", "-1", "random_seed"),
        ("--width", "4", "contradicts"),
        ("--model_path", "missing.pkl", "missing.pkl"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    run_dir, capsys, flag, value, message
):
    if flag == "--model_path":
        value = str(run_dir["root"] / value)
    code = run_cli(cli_args(run_dir, "bad", flag, value))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert files_in(out_dir(run_dir, "bad")) == []


@pytest.mark.parametrize("implementation", ["jacobian", "ntvp", "structured"])
def test_neural_tangents_options_refused_where_it_is_unavailable(
    run_dir, capsys, monkeypatch, implementation
):
    """On the JAX 0.11 stack for real; elsewhere as if it were missing."""
    if NT_UNAVAILABLE is None:
        monkeypatch.setattr(
            nt_compat,
            "unavailable_reason",
            lambda: "neural-tangents is not installed",
        )
    code = run_cli(cli_args(run_dir, "nt", "--implementation", implementation))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: neural-tangents ") and err.count("\n") == 1
    assert "requirements.txt" in err and "--implementation rows" in err
    assert not os.path.exists(out_dir(run_dir, "nt"))


def test_checkpoint_of_another_model_is_refused(run_dir, capsys):
    """A checkpoint without meta whose parameters are not a width-64 net."""
    path = str(run_dir["root"] / "old" / "parameters_final.pkl")
    checkpoints.save_checkpoint(
        path, run_dir["params"], run_dir["params"], run_dir["state"], {}
    )
    code = run_cli(
        cli_args(
            run_dir, "bad", "--model_path", path, "--dataset", "fashion_mnist"
        )
    )
    err = capsys.readouterr().err
    assert code == 2 and "--model/--width/--dataset" in err
    assert err.count("\n") == 1
    assert files_in(os.path.join(os.path.dirname(path), "bad")) == []


def test_error_from_the_command_line_has_no_traceback(run_dir):
    result = run_script(cli_args(run_dir, "bad", "--class_index", "11"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


# --------------------------------------------------------------------------
# Several checkpoints in one process, {name}, cross kernels
# --------------------------------------------------------------------------

TEST_SIZE = 10  # one test image of each class


@pytest.fixture(scope="module")
def sweep(run_dir):
    """Two checkpoints of one run named as run_exp.py --constant_save names
    them, without an epoch in their meta (it comes from the names)."""
    folder = run_dir["root"] / "sweep"
    paths = []
    for seed, epoch in ((5, "0.5"), (6, "2")):
        path = str(folder / f"parameters_checkpoint_{epoch}.pkl")
        checkpoints.save_checkpoint(
            path,
            perturb(run_dir["params"], seed, 0.05),
            run_dir["params"],
            run_dir["state"],
            dict(SPEC.as_meta(), phase="standard"),
        )
        paths.append(path)
    return paths


def sweep_args(run_dir, paths, bonus_dir, *extra):
    """cli_args with the checkpoints `paths` and class 3 (the later
    --model_path replaces cli_args' one)."""
    return cli_args(
        run_dir,
        bonus_dir,
        "--model_path",
        *paths,
        "--class_index",
        "3",
        *extra,
    )


@pytest.mark.slow
def test_several_checkpoints_with_cross_kernels(run_dir, sweep, capsys):
    calculate_kernel.main(
        sweep_args(
            run_dir, sweep, "kernels/{name}", "--test_size", str(TEST_SIZE)
        )
    )
    out = capsys.readouterr().out.splitlines()
    name = f"saved_kernel_class_3_{SIZE}.pkl"
    folder = os.path.dirname(sweep[0])
    written = [
        os.path.join(folder, "kernels", stem, name)
        for stem in ("parameters_checkpoint_0.5", "parameters_checkpoint_2")
    ]
    # The plan once, then one line per file.
    assert len(out) == 3 and out[0].startswith("kernel (rows)")
    for line, path in zip(out[1:], written, strict=True):
        assert line.startswith(f"wrote {path}: N = {SIZE}, M = {TEST_SIZE}")

    test_images, test_labels = data.load_split(
        "fashion_mnist", run_dir["data"], train=False
    )
    test_indices = legacy_balanced_indices(test_labels, TEST_SIZE, 10, 0)
    indices = legacy_balanced_indices(run_dir["labels"], SIZE, 10, 0)
    both = np.concatenate(
        [run_dir["images"][indices], test_images[test_indices]]
    )
    loaded = [checkpoints.load_checkpoint(path) for path in sweep]
    references = reference_kernels(
        SPEC.build().apply,
        [checkpoint["params"] for checkpoint in loaded],
        run_dir["state"],
        both,
    )
    for path, epoch, reference in zip(
        written, (0.5, 2), references, strict=True
    ):
        kernel = kernel_files.read(
            path, class_index=3, size=SIZE, train_labels=run_dir["labels"]
        )
        assert kernel.epoch == epoch and kernel.extras["phase"] == "standard"
        assert kernel_files.checkpoint_folder(kernel) == folder
        np.testing.assert_array_equal(kernel.test_indices, test_indices)
        np.testing.assert_array_equal(
            kernel.test_labels, test_labels[test_indices]
        )
        assert relative_error(kernel.kernel, reference[3, :SIZE, :SIZE]) < 1e-5
        # The cross kernel: J_3(test) J_3(train)ᵀ.
        assert kernel.test_kernel.shape == (TEST_SIZE, SIZE)
        assert (
            relative_error(kernel.test_kernel, reference[3, SIZE:, :SIZE])
            < 1e-5
        )
    # The same numbers as a run given the second checkpoint alone.
    calculate_kernel.main(
        sweep_args(run_dir, sweep[1:], "single", "--test_size", str(TEST_SIZE))
    )
    alone = load_pickle(os.path.join(folder, "single", name))
    together = load_pickle(written[1])
    for key in ("kernel", "test_kernel", "indices", "test_indices"):
        assert_close(together[key], alone[key], rtol=1e-6)


def test_checkpoints_writing_the_same_file_are_refused(run_dir, sweep, capsys):
    folder = os.path.dirname(sweep[0])
    before = files_in(folder)
    assert run_cli(sweep_args(run_dir, sweep, ".")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sweep[0] in err and sweep[1] in err
    assert "--bonus_dir kernels/{name}" in err
    assert run_cli(sweep_args(run_dir, [sweep[0], sweep[0]], "k/{name}")) == 2
    assert "given twice" in capsys.readouterr().err
    assert files_in(folder) == before


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--test_size", "15", "--test_size 15"),
        ("--test_size", "10010", "exceeds the 10000 test images"),
        ("--model_path", "missing.pkl", "missing.pkl"),
    ],
)
def test_bad_input_among_several_writes_nothing(
    run_dir, sweep, capsys, flag, value, message
):
    """Every checkpoint and size is checked before any kernel is computed."""
    paths = list(sweep)
    extra = []
    if flag == "--model_path":
        paths.append(os.path.join(os.path.dirname(sweep[0]), value))
    else:
        extra = [flag, value]
    assert run_cli(sweep_args(run_dir, paths, "bad/{name}", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert files_in(os.path.join(os.path.dirname(sweep[0]), "bad")) == []


def test_promise_output_paths_are_compared_as_real_paths(
    run_dir, sweep, capsys
):
    """Two checkpoints whose kernel files are one file through a symbolic
    link (cklink -> ck) are refused before anything is written, and so is
    a --save_name that is not a plain file-name prefix."""
    folder = os.path.dirname(sweep[0])
    link = os.path.join(run_dir["root"], "sweep_link")
    os.symlink(folder, link)
    through_link = os.path.join(link, os.path.basename(sweep[1]))
    before = files_in(folder)
    assert run_cli(sweep_args(run_dir, [sweep[0], through_link], ".")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    name = f"saved_kernel_class_3_{SIZE}.pkl"
    assert f"would both write {os.path.join(link, name)}" in err
    assert f"(the file {os.path.join(folder, name)})" in err
    assert files_in(folder) == before
    # A kernel file that would replace a checkpoint given.
    argv = sweep_args(run_dir, sweep, "{name}/..", "--class_index", "-1")
    argv += ["--save_name", "parameters_checkpoint", "--dataset_size", "2"]
    assert run_cli(argv) == 2
    assert "would replace the checkpoint" in capsys.readouterr().err
    for save_name in ("sub/x", "../sn", "", ".hidden"):
        argv = sweep_args(run_dir, sweep, "bad/{name}", "--save_name")
        assert run_cli([*argv, save_name]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: argument --save_name: ") and (
            err.count("\n") == 1
        ), err
    assert files_in(folder) == before


def test_promise_nothing_is_created_before_the_checks_pass(
    run_dir, sweep, capsys
):
    """The second checkpoint's output folder cannot be made (a file is in
    the way): refused with one line before the first checkpoint's folder
    is created."""
    root = run_dir["root"] / "blocked"
    paths = []
    for part, checkpoint in zip(("a", "b"), sweep, strict=True):
        path = root / part / os.path.basename(checkpoint)
        os.makedirs(path.parent)
        os.symlink(checkpoint, path)
        paths.append(str(path))
    (root / "b" / "kernels").write_text("a file where a folder would go")
    assert run_cli(sweep_args(run_dir, paths, "kernels/{name}")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "is a file" in err and str(root / "b" / "kernels") in err
    assert sorted(os.listdir(root / "a")) == [os.path.basename(sweep[0])]
