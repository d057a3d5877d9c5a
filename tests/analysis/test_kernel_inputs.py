"""analysis.kernel_inputs: kernel files found in folders, read and checked
once each, and the --compare and --replicates runs told apart, on files
written here with kernel_files.write."""

import numpy as np
import pytest

from analysis import kernel_inputs
from kernel_objects import psd, write_kernel_file
from store import atomic
from utils import UserError


def test_found_lists_kernel_files_in_order(tmp_path):
    second = write_kernel_file(tmp_path / "run" / "b", 2)
    first = write_kernel_file(tmp_path / "run" / "a", 1)
    (tmp_path / "run" / "a" / "parameters_final.pkl").write_bytes(b"")
    (tmp_path / "run" / "a" / ".k_class_0_4.pkl").write_bytes(b"")
    assert kernel_inputs.found(str(tmp_path / "run")) == [
        (first, True),
        (second, True),
    ]
    assert kernel_inputs.found(first) == [(first, False)]
    with pytest.raises(UserError, match="does not exist"):
        kernel_inputs.found(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no kernel files"):
        kernel_inputs.found(str(tmp_path / "empty"))


def test_read_kernel_keeps_the_file_and_its_run(tmp_path):
    path = write_kernel_file(tmp_path / "kernels", 3, seed=1)
    kernel = kernel_inputs.read_kernel(path)
    np.testing.assert_allclose(kernel.file.kernel, psd(4, 1), rtol=1e-6)
    assert (kernel.epoch, kernel.class_index, kernel.n_classes) == (3, 0, 2)
    assert kernel.run == str(tmp_path / "kernels")


@pytest.mark.parametrize(
    "matrix, words",
    [
        (np.zeros((4, 4)), "the kernel is zero"),
        (np.diag([1.0, 1.0, 1.0, -0.5]), "not positive semi-definite"),
    ],
)
def test_read_kernel_refuses_what_has_no_distance(tmp_path, matrix, words):
    path = write_kernel_file(tmp_path, 1, matrix=matrix)
    with pytest.raises(UserError, match=words) as info:
        kernel_inputs.read_kernel(path)
    assert str(info.value).startswith(path)


def test_read_all_reads_each_file_once(tmp_path):
    a = write_kernel_file(tmp_path / "A", 1, seed=2)
    write_kernel_file(tmp_path / "B", 1, seed=3)
    atomic.atomic_pickle(tmp_path / "B" / "x_class_1_4.pkl", {"other": 1})
    read = kernel_inputs.read_all([a, str(tmp_path)], None, None, False)
    assert [k.path for k in read.kernels] == [
        a,
        str(tmp_path / "B" / "k_class_0_4.pkl"),
    ]
    assert read.notes == [
        "1 pickle(s) named like kernel files hold no 'kernel' and were skipped"
    ]
    sides = [str(tmp_path / "A"), str(tmp_path / "B")]
    read = kernel_inputs.read_all([a], sides, None, progress=False)
    assert read.sides[0][0] is read.kernels[0]
    assert [len(side) for side in read.sides] == [1, 1]
    with pytest.raises(UserError, match="one run .one folder."):
        kernel_inputs.read_all(
            [], [str(tmp_path / "A")] * 2, None, progress=False
        )


def _run(loaders, seed, lr=0.1):
    return {"loaders": loaders, "seed": seed, "flags": {"lr": lr}}


def test_replicates_differ_in_their_seed_alone(tmp_path):
    runs = []
    for name, run in (("s0", _run("CC", 0)), ("s1", _run("CC", 1))):
        path = write_kernel_file(
            tmp_path / name, 1, run=run, model="mlp_skinny"
        )
        runs.append([kernel_inputs.read_kernel(path)])
    folders = ["s0", "s1"]
    assert kernel_inputs.run_identity(runs[0])["--lr"] == 0.1
    assert kernel_inputs.replicate_runs_problem(folders, runs) is None
    same = [runs[0], runs[0]]
    assert "runs of the same seed 0" in kernel_inputs.replicate_runs_problem(
        folders, same
    )
    other = write_kernel_file(tmp_path / "s2", 1, run=_run("CC", 2, lr=0.5))
    problem = kernel_inputs.replicate_runs_problem(
        folders, [runs[0], [kernel_inputs.read_kernel(other)]]
    )
    assert "--lr 0.1 there, 0.5 here" in problem
