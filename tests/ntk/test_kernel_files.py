"""kernel_files: names (layout's), the checkpoint's epoch, atomic writes
read back by plain pickle, and reading with every check, the original's
files included (their indices recomputed as the original drew them)."""

import os

import numpy as np
import pytest

from helpers import legacy_balanced_indices, load_pickle
from ntk import kernel_files
from ntk.kernel_files import ALL_CLASSES, COMBINED
from store import layout
from store.atomic import atomic_pickle
from utils import UserError

N_CLASSES = 3
SIZE = 6  # two images of each class


def train_labels(per_class=5, seed=0):
    """Shuffled int32 labels, `per_class` images of each of N_CLASSES."""
    labels = np.repeat(np.arange(N_CLASSES, dtype=np.int32), per_class)
    return np.random.default_rng(seed).permutation(labels)


def kernel_matrix(size=SIZE, seed=2):
    """A symmetric positive semi-definite float32 (size, size)."""
    factor = np.random.default_rng(seed).normal(size=(size, size))
    return (factor @ factor.T).astype(np.float32)


def kernel_record(size=4, class_index=2, **changes):
    """A valid kernel file's content, with `changes` applied (a change to
    None drops the key)."""
    record = {
        "kernel": kernel_matrix(size),
        "labels": np.array([0, 1, 2, 2][:size] * (size // 4 or 1)),
        "indices": np.arange(10, 10 + size, dtype=np.int64),
        "class_index": class_index,
        "use_linear_params": True,
        "epoch": 3,
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not None}


def write(tmp_path, record, name="kernel.pkl"):
    path = str(tmp_path / name)
    atomic_pickle(path, record)
    return path


# --------------------------------------------------------------------------
# Names, flags, epochs
# --------------------------------------------------------------------------


def test_file_names():
    """layout.kernel_file, whose class None is COMBINED."""
    assert layout.kernel_file("k", 3, 500) == "k_class_3_500.pkl"
    assert layout.kernel_file("k", None, 500) == "k_500.pkl"
    assert (
        layout.kernel_file(layout.KERNEL_SAVE_NAME, 0, 20)
        == "saved_kernel_class_0_20.pkl"
    )


def test_parse_class_index():
    assert kernel_files.parse_class_index("all") == ALL_CLASSES
    assert kernel_files.parse_class_index("-1") == COMBINED
    assert kernel_files.parse_class_index("7") == 7
    with pytest.raises(UserError, match="class_index"):
        kernel_files.parse_class_index("two")


@pytest.mark.parametrize(
    "meta, name, epoch",
    [
        ({"epoch": 20}, "parameters_final.pkl", 20),
        ({"epoch": np.int64(4)}, "x.pkl", 4),
        ({"epoch": 0.125}, "parameters_checkpoint_9.pkl", 0.125),
        ({}, "parameters_checkpoint_20.pkl", 20),
        ({}, "parameters_checkpoint_0.125.pkl", 0.125),
        ({}, "parameters_checkpoint_linear_7.pkl", 7),
        ({}, "parameters_checkpoint_linear_2.5.pkl", 2.5),
        ({"epoch": None}, "parameters_checkpoint_1.5.pkl", 1.5),
        ({}, "parameters_final.pkl", None),
        ({}, "parameters_checkpoint_x.pkl", None),
        ({}, "old_parameters_checkpoint_3.pkl", None),
        ({"epoch": float("nan")}, "parameters_checkpoint_2.pkl", 2),
        ({"epoch": float("inf")}, "parameters_final.pkl", None),
    ],
)
def test_checkpoint_epoch(meta, name, epoch):
    got = kernel_files.checkpoint_epoch(meta, os.path.join("run", name))
    assert got == epoch and type(got) is type(epoch)


# --------------------------------------------------------------------------
# Writing, read back
# --------------------------------------------------------------------------


def test_all_classes_one_file_each(tmp_path):
    kernels = np.stack([kernel_matrix(seed=c) for c in range(N_CLASSES)])
    labels = np.repeat(np.arange(N_CLASSES), 2).astype(np.int32)
    indices = np.array([4, 1, 0, 9, 3, 7])
    paths = kernel_files.write(
        str(tmp_path),
        "k",
        kernel_files.Kernels(
            ALL_CLASSES,
            kernels,
            labels,
            indices,
        ),
        n_logits=N_CLASSES,
        epoch=0.25,
        model="mlp_skinny",
    )
    names = [f"k_class_{c}_{SIZE}.pkl" for c in range(N_CLASSES)]
    assert paths == [str(tmp_path / name) for name in names]
    # Nothing else, no temporary file left behind.
    assert sorted(os.listdir(tmp_path)) == names
    for c, path in enumerate(paths):
        record = load_pickle(path)  # as a notebook reads it
        assert record["class_index"] == c and "combined" not in record
        assert record["kernel"].dtype == np.float32
        np.testing.assert_array_equal(record["kernel"], kernels[c])
        assert record["labels"].dtype == np.int64
        assert record["indices"].dtype == np.int64
        assert record["epoch"] == 0.25 and record["n_logits"] == N_CLASSES
        assert record["model"] == "mlp_skinny"
        loaded = kernel_files.read(path, class_index=c, size=SIZE)
        np.testing.assert_array_equal(loaded.indices, indices)
        np.testing.assert_array_equal(loaded.labels, labels)
        np.testing.assert_array_equal(loaded.kernel, kernels[c])
        assert loaded.epoch == 0.25 and not loaded.indices_recomputed
        assert loaded.extras["model"] == "mlp_skinny"


def test_combined_file_says_it_is_the_mean(tmp_path):
    (path,) = kernel_files.write(
        str(tmp_path),
        "k",
        kernel_files.Kernels(
            COMBINED,
            kernel_matrix(),
            np.zeros(SIZE, int),
            np.arange(SIZE),
        ),
        n_logits=10,
        epoch=None,
        random_seed=4,
    )
    assert os.path.basename(path) == f"k_{SIZE}.pkl"
    record = load_pickle(path)
    assert record["combined"] == "mean_over_logits"
    assert record["n_logits"] == 10 and record["class_index"] == COMBINED
    loaded = kernel_files.read(path)
    assert loaded.combined and loaded.epoch is None
    assert loaded.random_seed == 4


# --------------------------------------------------------------------------
# The original's files: {'kernel', 'labels'} only
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 5])
def test_original_file_gets_the_originals_indices(tmp_path, seed):
    labels = train_labels()
    want = legacy_balanced_indices(labels, SIZE, N_CLASSES, seed)
    path = write(tmp_path, {"kernel": kernel_matrix(), "labels": labels[want]})
    loaded = kernel_files.read(
        path, class_index=1, size=SIZE, train_labels=labels, seed=seed
    )
    np.testing.assert_array_equal(loaded.indices, want)
    assert loaded.indices_recomputed and loaded.random_seed == seed
    assert loaded.class_index == 1  # from the caller
    assert loaded.use_linear_params is None and loaded.epoch is None


def test_original_file_needs_class_and_training_labels(tmp_path):
    labels = train_labels()
    want = legacy_balanced_indices(labels, SIZE, N_CLASSES, 0)
    path = write(tmp_path, {"kernel": kernel_matrix(), "labels": labels[want]})
    with pytest.raises(UserError, match="does not say which logit") as error:
        kernel_files.read(path, train_labels=labels, seed=0)
    assert path in str(error.value)
    with pytest.raises(UserError, match="holds no 'indices'") as error:
        kernel_files.read(path, class_index=0)
    assert path in str(error.value)


def test_original_file_whose_labels_differ_is_refused(tmp_path):
    """Labels not those of the images the rule picks with this seed."""
    labels = train_labels()
    picked = labels[legacy_balanced_indices(labels, SIZE, N_CLASSES, 0)]
    path = write(
        tmp_path, {"kernel": kernel_matrix(), "labels": picked[::-1].copy()}
    )
    with pytest.raises(UserError, match="--random_seed 0") as error:
        kernel_files.read(path, class_index=0, train_labels=labels, seed=0)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_original_file_that_cannot_be_balanced_is_refused(tmp_path):
    path = write(
        tmp_path,
        {"kernel": kernel_matrix(4), "labels": np.zeros(4, np.int64)},
    )
    with pytest.raises(UserError, match="multiple of") as error:
        kernel_files.read(
            path, class_index=0, train_labels=train_labels(), seed=0
        )
    assert str(error.value).startswith(path)


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------


def test_kernel_file_loads(tmp_path):
    loaded = kernel_files.read(
        write(tmp_path, kernel_record()), class_index=2, size=4
    )
    assert loaded.size == 4 and loaded.class_index == 2
    assert loaded.use_linear_params is True and loaded.epoch == 3
    assert loaded.kernel.dtype == np.float64
    np.testing.assert_array_equal(loaded.kernel, loaded.kernel.T)
    np.testing.assert_array_equal(loaded.indices, [10, 11, 12, 13])


def test_rounding_asymmetry_is_symmetrised(tmp_path):
    kernel = kernel_matrix(4).astype(np.float64)
    kernel[0, 1] *= 1 + 1e-6
    loaded = kernel_files.read(write(tmp_path, kernel_record(kernel=kernel)))
    np.testing.assert_array_equal(loaded.kernel, loaded.kernel.T)
    np.testing.assert_allclose(loaded.kernel, kernel, rtol=1e-6)


def test_kernel_file_without_params_record(tmp_path):
    path = write(tmp_path, kernel_record(use_linear_params=None))
    assert kernel_files.read(path).use_linear_params is None


@pytest.mark.parametrize(
    "changes,size,message",
    [
        (dict(class_index=-1), 4, "mean over all logits"),
        (dict(class_index=0), 4, "kernel of class 0"),
        ({}, 5, "kernel of 4 images"),
        (dict(kernel=np.ones((4, 3))), 4, "not a square"),
        (dict(kernel=np.full((4, 4), np.nan)), 4, "NaN"),
        (dict(indices=np.arange(3)), 4, "'indices'"),
        (dict(indices=np.linspace(0, 1, 4)), 4, "'indices'"),
        (dict(labels=np.zeros(5, int)), 4, "'labels'"),
        (dict(class_index=1.5), 4, "'class_index' is not an integer"),
        (dict(labels=None), 4, "lacks key"),
        (dict(use_linear_params=np.ones(2)), 4, "not a yes/no"),
        (dict(epoch="three"), 4, "'epoch' is not a number"),
        (dict(epoch=float("nan")), 4, "'epoch' is nan, not a finite"),
        (dict(epoch=np.float32("-inf")), 4, "'epoch' is -inf, not a finite"),
        (
            dict(kernel=kernel_matrix(4) + np.triu(np.ones((4, 4)), 1)),
            4,
            "not symmetric",
        ),
    ],
)
def test_bad_kernel_files_are_refused(tmp_path, changes, size, message):
    path = write(tmp_path, kernel_record(**changes))
    with pytest.raises(UserError, match=message) as error:
        kernel_files.read(path, class_index=2, size=size)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_missing_and_corrupt_kernel_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        kernel_files.read(str(tmp_path / "absent.pkl"))
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(UserError, match="cannot load"):
        kernel_files.read(str(corrupt))


def test_kernel_images_must_fit_the_dataset(tmp_path):
    path = write(tmp_path, kernel_record())
    labels = np.zeros(20, np.int32)
    labels[10:14] = [0, 1, 2, 2]
    kernel_files.read(path, train_labels=labels, dataset="toy")
    with pytest.raises(UserError, match="has 12, numbered"):
        kernel_files.read(path, train_labels=labels[:12], dataset="toy")
    labels[12] = 1
    with pytest.raises(UserError, match="labels.*another dataset"):
        kernel_files.read(path, train_labels=labels, dataset="toy")


@pytest.mark.parametrize(
    "flag,recorded,expected",
    [
        (None, None, False),
        (True, None, True),
        (None, True, True),
        (False, False, False),
        (True, True, True),
    ],
)
def test_use_linear_params_resolution(tmp_path, flag, recorded, expected):
    path = write(tmp_path, kernel_record(use_linear_params=recorded))
    kernel = kernel_files.read(path)
    assert kernel_files.resolve_use_linear_params(flag, kernel) is expected


def test_use_linear_params_contradicting_the_kernel_is_refused(tmp_path):
    path = write(tmp_path, kernel_record(use_linear_params=False))
    with pytest.raises(UserError, match="computed at params"):
        kernel_files.resolve_use_linear_params(True, kernel_files.read(path))


# --------------------------------------------------------------------------
# Cross kernels, names, runs
# --------------------------------------------------------------------------


def test_cross_kernels_are_written_per_class_and_read_back(tmp_path):
    kernels = np.stack([kernel_matrix(seed=c) for c in range(N_CLASSES)])
    cross = np.random.default_rng(3).normal(size=(N_CLASSES, 4, SIZE))
    paths = kernel_files.write(
        str(tmp_path),
        "k",
        kernel_files.Kernels(
            ALL_CLASSES,
            kernels,
            np.repeat(np.arange(N_CLASSES), 2),
            np.arange(SIZE),
            test_kernel=cross,
            test_labels=np.array([0, 1, 2, 0]),
            test_indices=np.array([7, 3, 9, 1]),
        ),
        n_logits=N_CLASSES,
        epoch=1,
    )
    for c, path in enumerate(paths):
        record = load_pickle(path)
        assert record["test_kernel"].dtype == np.float32
        np.testing.assert_array_equal(
            record["test_kernel"], cross[c].astype(np.float32)
        )
        loaded = kernel_files.read(path)
        assert loaded.test_kernel.dtype == np.float64
        np.testing.assert_array_equal(loaded.test_indices, [7, 3, 9, 1])
        np.testing.assert_array_equal(loaded.test_labels, [0, 1, 2, 0])
    plain = kernel_files.read(
        write(tmp_path, kernel_record(), name="plain.pkl")
    )
    assert plain.test_kernel is None and plain.test_labels is None


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(test_kernel=np.ones((2, 4))), "without test_labels"),
        (
            dict(
                test_kernel=np.ones((2, 3)),
                test_labels=np.zeros(2, int),
                test_indices=np.arange(2),
            ),
            "of 4 columns",
        ),
        (
            dict(
                test_kernel=np.full((2, 4), np.inf),
                test_labels=np.zeros(2, int),
                test_indices=np.arange(2),
            ),
            "NaN or infinite",
        ),
        (
            dict(
                test_kernel=np.ones((2, 4)),
                test_labels=np.zeros(3, int),
                test_indices=np.arange(2),
            ),
            "'test_labels'",
        ),
    ],
)
def test_bad_cross_kernels_are_refused(tmp_path, changes, message):
    path = write(tmp_path, kernel_record(**changes))
    with pytest.raises(UserError, match=message) as error:
        kernel_files.read(path)
    assert path in str(error.value) and "\n" not in str(error.value)


def test_pickles_that_are_not_kernel_files(tmp_path):
    with pytest.raises(kernel_files.NotAKernelFile, match="lacks key"):
        kernel_files.read(write(tmp_path, {"params": {}}))
    with pytest.raises(kernel_files.NotAKernelFile, match="lacks key"):
        kernel_files.read(write(tmp_path, [1, 2]))
    original = write(
        tmp_path, {"kernel": kernel_matrix(), "labels": np.zeros(SIZE, int)}
    )
    with pytest.raises(UserError, match="original code") as error:
        kernel_files.read(original, recorded_only=True)
    assert not isinstance(error.value, kernel_files.NotAKernelFile)


def test_checkpoint_folder_follows_the_relative_path(tmp_path):
    folder = tmp_path / "run" / "kernels" / "parameters_checkpoint_2"
    folder.mkdir(parents=True)
    path = write(
        folder,
        kernel_record(
            checkpoint_relpath=os.path.join(
                "..", "..", "parameters_checkpoint_2.pkl"
            )
        ),
    )
    loaded = kernel_files.read(path)
    assert kernel_files.checkpoint_folder(loaded) == str(tmp_path / "run")
    assert (
        kernel_files.checkpoint_folder(
            kernel_files.read(write(tmp_path, kernel_record()))
        )
        is None
    )
