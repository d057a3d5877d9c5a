"""ntk.compute, calculate_kernel.py's work, called directly: a kernel
written for an untrained MLP against J Jᵀ from jax.jacrev, and the checks
that refuse colliding outputs before anything is loaded or created (the
script's own flags and messages are tested in
test_calculate_kernel_script.py)."""

import os

import numpy as np
import pytest

import calculate_kernel
import data
import models
from helpers import legacy_balanced_indices, write_untrained_checkpoint
from kernel_reference import reference_kernels, relative_error
from ntk import compute, kernel_files
from store import checkpoints
from utils import UserError


def compute_kernels(*argv):
    """compute.compute_kernels of calculate_kernel.py's flags `argv`."""
    compute.compute_kernels(calculate_kernel.parse_args(list(map(str, argv))))


def _checkpoints(folder, count):
    """`count` untrained mlp_skinny checkpoints in `folder`, named as
    run_exp.py --constant_save names them."""
    return [
        write_untrained_checkpoint(
            folder / f"parameters_checkpoint_{epoch}.pkl", seed=epoch
        )
        for epoch in range(1, count + 1)
    ]


def test_a_kernel_is_j_jt_of_the_balanced_subset(
    tmp_path, fashion_data, capsys
):
    (path,) = _checkpoints(tmp_path, 1)
    compute_kernels(
        "--model_path",
        path,
        "--dataset_size",
        10,
        "--class_index",
        0,
        "--data_path",
        fashion_data,
        "--bonus_dir",
        "k",
        "--random_seed",
        3,
    )
    written = os.path.join(tmp_path, "k", "saved_kernel_class_0_10.pkl")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("kernel (rows): 10 images")
    assert out[1].startswith(f"wrote {written}: N = 10, ")
    images, labels = data.load_split("fashion_mnist", str(fashion_data))
    indices = legacy_balanced_indices(labels, 10, 10, 3)
    checkpoint = checkpoints.load_checkpoint(path)
    spec = models.ModelSpec("mlp_skinny", None, "fashion_mnist", 10)
    (reference,) = reference_kernels(
        spec.build().apply,
        [checkpoint["params"]],
        checkpoint["net_state"],
        images[indices],
    )
    kernel = kernel_files.read(written, class_index=0, size=10)
    np.testing.assert_array_equal(kernel.indices, indices)
    # The epoch its meta records (write_untrained_checkpoint: 0).
    assert kernel.epoch == 0 and kernel.random_seed == 3
    assert relative_error(kernel.kernel, reference[0]) < 1e-5


def test_checkpoints_writing_one_file_are_refused_first(tmp_path):
    paths = _checkpoints(tmp_path, 2)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(UserError) as info:
        compute_kernels("--model_path", *paths, "--bonus_dir", "k")
    message = str(info.value)
    assert f"{paths[0]} and {paths[1]} would both write " in message
    assert "--bonus_dir kernels/{name}" in message
    with pytest.raises(UserError, match="is given twice"):
        compute_kernels("--model_path", paths[0], paths[0])
    with pytest.raises(UserError, match="would replace the checkpoint"):
        compute_kernels(
            "--model_path",
            *paths,
            "--bonus_dir",
            "{name}/..",
            "--save_name",
            "parameters_checkpoint",
            "--dataset_size",
            2,
        )
    assert sorted(os.listdir(tmp_path)) == before
