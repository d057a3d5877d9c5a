"""Tests of store.datafiles, the NumPy readers of the datasets' files:
tiny files written in each format, read back as torchvision's classes
hold them (uint8 pixels, int64 labels); files of another format refused."""

import pickle

import numpy as np
import pytest

from helpers import cifar_rows, write_idx
from store import datafiles
from utils import UserError


def _mnist_folder(root, folder, n_train, n_test, seed=0):
    """{train: (pixels, labels)} written as idx files under root/folder."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    written = {}
    for train, prefix, n in (
        (True, "train", n_train),
        (False, "t10k", n_test),
    ):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", pixels)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[train] = pixels, labels
    return written


@pytest.mark.parametrize(
    "name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_formats_read_as_written(tmp_path, name, folder):
    written = _mnist_folder(tmp_path, folder, 5, 3)
    for train in (True, False):
        pixels, labels = datafiles.read_split(name, str(tmp_path), train)
        assert pixels.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(pixels, written[train][0])
        np.testing.assert_array_equal(labels, written[train][1])


def test_cifar_batches_read_in_order_as_nhwc(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12).tolist()
    names = datafiles.split_files("cifar10", str(tmp_path), True)
    assert [p.rsplit("/", 1)[1] for p in names] == [
        f"data_batch_{i}" for i in range(1, 6)
    ]
    for i, path in enumerate(names):
        rows = slice(2 * i, 2 * i + 2)
        with open(path, "wb") as f:
            pickle.dump(
                {"data": cifar_rows(images[rows]), "labels": labels[rows]}, f
            )
    pixels, got = datafiles.read_split("cifar10", str(tmp_path), True)
    np.testing.assert_array_equal(pixels, images[:10])
    np.testing.assert_array_equal(got, labels[:10])
    assert got.dtype == np.int64


def test_cifar100_reads_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
    with open(folder / "test", "wb") as f:
        pickle.dump(
            {
                "data": cifar_rows(images),
                "fine_labels": [71, 3],
                "coarse_labels": [1, 2],
            },
            f,
        )
    pixels, labels = datafiles.read_split("cifar100", str(tmp_path), False)
    np.testing.assert_array_equal(pixels, images)
    assert labels.tolist() == [71, 3]


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datafiles.read_split("mnist", str(tmp_path), False)
    assert info.value.filename == str(
        tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    )


def test_labels_of_another_length_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(2))
    with pytest.raises(UserError, match="number of labels"):
        datafiles.read_split("mnist", str(tmp_path), False)


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x00\x0b\x01\x00\x00\x00\x02ab",  # int16, not uint8
        b"\x00\x00\x08\x01\x00\x00\x00\x05abc",  # 3 bytes, 5 announced
        b"\x00\x00",  # cut inside the header
    ],
)
def test_corrupt_idx_file_is_refused(tmp_path, content):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        datafiles.read_idx(str(path))
