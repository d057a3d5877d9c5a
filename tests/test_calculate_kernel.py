"""calculate_kernel.py end to end on Fashion-MNIST with a width-2 ResNet-18:
file names, keys and values, and one-line refusals that write nothing."""

import os

import numpy as np
import pytest

import calculate_kernel
import data
import features
import models
import nt_compat
import utils
from helpers import NT_UNAVAILABLE, needs_fashion_mnist, needs_neural_tangents
from helpers import run_script as run_entry_script
from kernel_reference import perturb, reference_kernels, relative_error

SIZE = 20  # two images of each of the ten classes
BLOCK = 8  # three blocks, the last padded
SPEC = models.ModelSpec("resnet18", 2, "fashion_mnist", 10)

pytestmark = needs_fashion_mnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint (lin_params ≠ params, running statistics set) and the
    training split it is evaluated on."""
    root = tmp_path_factory.mktemp("kernel")
    data_path = str(root / "data")
    images, labels = data.load_split("fashion_mnist", data_path)
    model = SPEC.build()
    params, state = models.init_model(model, 0, images.shape[1:])
    params = perturb(params, 1, 0.1)
    lin_params = perturb(params, 2, 0.05)
    _, state = model.apply(params, state, None, images[:64], True)
    checkpoint = str(root / "model" / "parameters_final.pkl")
    utils.save_checkpoint(
        checkpoint, params, lin_params, state, SPEC.as_meta()
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
        utils.load_pickle_arrays(
            os.path.join(folder, name), ("kernel", "labels", "indices")
        )
        for name in names
    ]
    indices = records[0]["indices"]
    assert indices.dtype == np.int64 and indices.shape == (SIZE,)
    np.testing.assert_array_equal(
        indices, data.balanced_subset_indices(run_dir["labels"], SIZE, 0)
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
        assert relative_error(record["kernel"], reference[c]) < 1e-5
    # What visualize_ntk_features.py reads back.
    features.load_class_kernel(os.path.join(folder, names[3]), 3, SIZE)


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
    record = utils.load_pickle_arrays(path, ("kernel", "labels", "indices"))
    assert record["class_index"] == -1 and record["use_linear_params"]
    assert record["implementation"] == "structured"
    indices = data.balanced_subset_indices(run_dir["labels"], SIZE, 3)
    np.testing.assert_array_equal(record["indices"], indices)
    reference = subset_kernels(run_dir, indices, "lin_params").sum(0)
    assert relative_error(record["kernel"], reference) < 1e-5
    at_params = subset_kernels(run_dir, indices).sum(0)
    assert relative_error(record["kernel"], at_params) > 1e-3


def run_cli(argv):
    """Exit status of main(argv) run as the script runs it."""
    with pytest.raises(SystemExit) as exit_info:
        utils.run_cli(lambda: calculate_kernel.main(argv))
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
    utils.save_checkpoint(
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
