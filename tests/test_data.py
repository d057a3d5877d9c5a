"""Tests of data.py on tiny datasets written in the real on-disk formats.

Every file-reading test runs twice: through torchvision (where installed)
and through datafiles' NumPy readers (the JAX 0.11 stack's), against the
same expected arrays."""

import hashlib
import os
import pickle
import struct
import urllib.error

import numpy as np
import pytest

import data
from helpers import (
    cifar_rows,
    legacy_balanced_indices,
    needs_fashion_mnist,
    require_fashion_mnist,
    write_idx,
)
from utils import UserError

try:
    import torchvision.datasets as tv_datasets
except ImportError:  # the JAX 0.11 stack reads the files without it
    tv_datasets = None


@pytest.fixture(params=["torchvision", "numpy"])
def reader(request, monkeypatch):
    """Which reader data.load_split uses: torchvision's classes, or
    datafiles' (as on a stack without torchvision)."""
    if request.param == "torchvision":
        if tv_datasets is None:
            pytest.skip("torchvision is not installed (the JAX 0.11 stack)")
        # Whatever NTK_NUMPY_READERS says (helpers sets it for the suite).
        monkeypatch.setattr(data, "HAS_TORCHVISION", True)
    else:
        monkeypatch.setattr(data, "HAS_TORCHVISION", False)
    return request.param


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _random_images(rng, n, height, width, channels):
    return rng.integers(
        0, 256, size=(n, height, width, channels), dtype=np.uint8
    )


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return [os.path.basename(path), _md5(path)]


def _py2_string(text: bytes) -> bytes:
    """Opcode SHORT_BINSTRING: a Python 2 str (read back with latin1)."""
    return b"U" + bytes([len(text)]) + text


def _py2_int(number: int) -> bytes:
    """Opcode BININT: a signed 4-byte little-endian integer."""
    return b"J" + struct.pack("<i", number)


def _py2_uint8_array(array: np.ndarray) -> bytes:
    """How Python 2's NumPy pickled a uint8 array (protocol 2): the
    ndarray rebuilt by _reconstruct, its state (version, shape, dtype,
    Fortran order, the raw bytes as a Python 2 str)."""
    raw = array.tobytes()
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_string(b"u1")
        + b"K\x00K\x01\x87R(K\x03"  # (0, 1) -> REDUCE; state version 3
        + _py2_string(b"|")
        + b"NNN"
        + _py2_int(-1)
        + _py2_int(-1)
        + b"K\x00tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"K\x00\x85"
        + _py2_string(b"b")
        + b"\x87R(K\x01"
        + b"".join(_py2_int(n) for n in array.shape)
        + b"\x86"
        + dtype
        + b"\x89T"  # Fortran order False, then BINSTRING
        + struct.pack("<i", len(raw))
        + raw
        + b"tb"
    )


def _write_py2_cifar_batch(path, rows, labels):
    """A CIFAR batch as the dataset ships it: a Python 2 pickle (protocol
    2) of {'data': uint8 (n, 3072), 'labels': [int]}, str keys."""
    content = (
        b"\x80\x02}("
        + _py2_string(b"data")
        + _py2_uint8_array(rows)
        + _py2_string(b"labels")
        + b"]("
        + b"".join(_py2_int(int(label)) for label in labels)
        + b"eu."
    )
    with open(path, "wb") as f:
        f.write(content)
    return [os.path.basename(path), _md5(path)]


def _no_network(monkeypatch, class_name):
    """torchvision's dataset class `class_name` may not download."""
    if tv_datasets is None:
        return

    def refuse(self):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(getattr(tv_datasets, class_name), "download", refuse)


def _point_md5s(monkeypatch, class_name, train_list, test_list, meta):
    """torchvision checks each file's md5 against the real dataset's; point
    those checksums at the files the test wrote, so the check still runs."""
    if tv_datasets is None:
        return
    cifar = getattr(tv_datasets, class_name)
    monkeypatch.setattr(cifar, "train_list", train_list)
    monkeypatch.setattr(cifar, "test_list", test_list)
    monkeypatch.setattr(cifar, "meta", meta)


def _expected(images_uint8, labels):
    return images_uint8.astype(np.float32) / 255, np.asarray(labels)


def _assert_split(got, expected):
    got_images, got_labels = got
    want_images, want_labels = expected
    assert got_images.dtype == np.float32
    assert got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images, want_images)
    np.testing.assert_array_equal(got_labels, want_labels)


def _tiny_cifar10(tmp_path, monkeypatch, write_batch):
    """Five train batches of 3 images and a test batch of 4, on disk, each
    written by `write_batch(path, rows, labels)`; the expected splits."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_images, train_labels, train_list = [], [], []
    for batch in range(1, 6):
        images = _random_images(rng, 3, 32, 32, 3)
        labels = rng.integers(0, 10, size=3).tolist()
        train_list.append(
            write_batch(
                folder / f"data_batch_{batch}", cifar_rows(images), labels
            )
        )
        train_images.append(images)
        train_labels += labels
    test_images = _random_images(rng, 4, 32, 32, 3)
    test_labels = rng.integers(0, 10, size=4).tolist()
    test_list = [
        write_batch(
            folder / "test_batch", cifar_rows(test_images), test_labels
        )
    ]
    meta = _write_pickle(
        folder / "batches.meta", {"label_names": [str(c) for c in range(10)]}
    )
    _point_md5s(
        monkeypatch,
        "CIFAR10",
        train_list,
        test_list,
        {"filename": meta[0], "key": "label_names", "md5": meta[1]},
    )
    _no_network(monkeypatch, "CIFAR10")
    return {
        True: _expected(np.concatenate(train_images), train_labels),
        False: _expected(test_images, test_labels),
    }


def _write_py3_cifar_batch(path, rows, labels):
    return _write_pickle(path, {"data": rows, "labels": labels})


def test_load_cifar10_reads_pixels_and_labels(tmp_path, monkeypatch, reader):
    expected = _tiny_cifar10(tmp_path, monkeypatch, _write_py3_cifar_batch)
    for train in (True, False):
        got = data.load_split("cifar10", str(tmp_path), train=train)
        assert got[0].shape[1:] == (32, 32, 3)
        _assert_split(got, expected[train])


def test_load_cifar10_reads_python2_pickles(tmp_path, monkeypatch, reader):
    """The files CIFAR ships are Python 2 pickles; the safe loader reads
    them with latin1, as torchvision does."""
    expected = _tiny_cifar10(tmp_path, monkeypatch, _write_py2_cifar_batch)
    # The hand-written opcodes mean what they should, by plain pickle.
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    np.testing.assert_array_equal(
        batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
        np.round(expected[False][0] * 255).astype(np.uint8),
    )
    assert batch["labels"] == list(expected[False][1])
    for train in (True, False):
        _assert_split(
            data.load_split("cifar10", str(tmp_path), train), expected[train]
        )


def test_load_cifar100_reads_fine_labels(tmp_path, monkeypatch, reader):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    expected, files = {}, {}
    for train, file_name, n in ((True, "train", 6), (False, "test", 2)):
        images = _random_images(rng, n, 32, 32, 3)
        fine = rng.integers(0, 100, size=n).tolist()
        coarse = rng.integers(0, 20, size=n).tolist()
        files[train] = _write_pickle(
            folder / file_name,
            {
                "data": cifar_rows(images),
                "fine_labels": fine,
                "coarse_labels": coarse,
            },
        )
        expected[train] = _expected(images, fine)
    meta = _write_pickle(
        folder / "meta",
        {
            "fine_label_names": [str(c) for c in range(100)],
            "coarse_label_names": [str(c) for c in range(20)],
        },
    )
    _point_md5s(
        monkeypatch,
        "CIFAR100",
        [files[True]],
        [files[False]],
        {"filename": meta[0], "key": "fine_label_names", "md5": meta[1]},
    )
    _no_network(monkeypatch, "CIFAR100")
    for train in (True, False):
        _assert_split(
            data.load_split("cifar100", str(tmp_path), train), expected[train]
        )


def test_load_mnist_reads_idx_files(tmp_path, monkeypatch, reader):
    rng = np.random.default_rng(2)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    expected = {}
    for train, prefix, n in ((True, "train", 7), (False, "t10k", 3)):
        images = _random_images(rng, n, 28, 28, 1)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images[..., 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        expected[train] = _expected(images, labels)
    _no_network(monkeypatch, "MNIST")
    for train in (True, False):
        got = data.load_split("mnist", str(tmp_path), train)
        assert got[0].shape[1:] == (28, 28, 1)
        _assert_split(got, expected[train])


def test_cifar_batch_without_data_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "HAS_TORCHVISION", False)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        _write_pickle(folder / name, {"fine_labels": [1]})
    with pytest.raises(UserError, match="cifar-100-python/test.*keys"):
        data.load_split("cifar100", str(tmp_path), train=False)


@needs_fashion_mnist
def test_debian_fashion_mnist_installs_offline(tmp_path, monkeypatch, reader):
    _no_network(monkeypatch, "FashionMNIST")
    # The first ten labels of each split, as published with the dataset.
    first_labels = {
        True: [9, 0, 0, 3, 0, 2, 7, 2, 5, 5],
        False: [9, 2, 1, 1, 6, 1, 4, 6, 5, 7],
    }
    for train, n in ((True, 60000), (False, 10000)):
        images, labels = data.load_split("fashion_mnist", str(tmp_path), train)
        assert images.shape == (n, 28, 28, 1)
        np.testing.assert_array_equal(labels[:10], first_labels[train])
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
        np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)
        # What the registry says of the split (the grid check reads it).
        registry = data.DATASETS["fashion_mnist"]
        assert (registry.n_train if train else registry.n_test) == n
        smallest = registry.smallest_class[0 if train else 1]
        assert smallest == np.bincount(labels).min()
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(data._IDX_FILES)


def test_readers_agree_on_fashion_mnist(tmp_path, monkeypatch):
    """The NumPy readers give torchvision's arrays on the real files."""
    require_fashion_mnist()
    if tv_datasets is None:
        pytest.skip("torchvision is not installed (the JAX 0.11 stack)")
    _no_network(monkeypatch, "FashionMNIST")
    monkeypatch.setattr(data, "HAS_TORCHVISION", True)
    for train in (True, False):
        by_torchvision = data.load_split("fashion_mnist", str(tmp_path), train)
        with monkeypatch.context() as patch:
            patch.setattr(data, "HAS_TORCHVISION", False)
            by_numpy = data.load_split("fashion_mnist", str(tmp_path), train)
        _assert_split(by_numpy, by_torchvision)


def test_missing_dataset_names_dataset_and_path(tmp_path, monkeypatch, reader):
    _no_network(monkeypatch, "CIFAR10")
    with pytest.raises(UserError, match="cifar10") as error:
        data.load_split("cifar10", str(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(error.value)
    assert "cifar-10-batches-py" in str(error.value)


def test_missing_fashion_mnist_without_debian_copy(
    tmp_path, monkeypatch, reader
):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no"))
    _no_network(monkeypatch, "FashionMNIST")
    with pytest.raises(UserError, match="fashion_mnist") as error:
        data.load_split("fashion_mnist", str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UserError, match="cifar100.*fashion_mnist"):
        data.load_split("svhn")
    with pytest.raises(UserError, match="svhn"):
        data.n_classes("svhn")


def test_split_size_problem_in_the_scripts_words():
    """The grid check's refusal of a subset the split cannot give is the
    class-balanced draw's, but for the class's name."""
    problem = data.split_size_problem("fashion_mnist", 60010, train=True)
    labels = np.repeat(np.arange(10), 6000)
    with pytest.raises(UserError) as info:
        data.balanced_subset_indices(labels, 60010, 0)
    assert str(info.value) == "class 0 " + problem.split(" split ", 1)[1]
    assert data.split_size_problem("fashion_mnist", 60000, True) is None
    assert "892 images" in data.split_size_problem("mnist", 8930, False)
    assert "multiple" in data.split_size_problem("cifar100", 50, True)


def test_n_classes():
    assert [
        data.n_classes(name)
        for name in ("cifar10", "cifar100", "fashion_mnist", "mnist")
    ] == [10, 100, 10, 10]


def _labels(num_classes, per_class, seed=0):
    """Shuffled int32 labels with `per_class` images of every class."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_balanced_subset_counts_and_order(num_classes):
    labels = _labels(num_classes, per_class=8)
    idx = data.balanced_subset_indices(labels, 5 * num_classes, seed=3)
    assert idx.dtype == np.int64
    assert len(np.unique(idx)) == len(idx) == 5 * num_classes
    np.testing.assert_array_equal(
        labels[idx], np.repeat(np.arange(num_classes), 5)
    )


@pytest.mark.parametrize("num_classes", [10, 3])
@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 - 1])
def test_balanced_subset_is_the_originals_draw(num_classes, seed):
    """The same indices, in the same order, as the original's
    np.random.seed(seed) and np.random.choice per class."""
    labels = _labels(num_classes, per_class=40, seed=seed % 97)
    size = 6 * num_classes
    want = legacy_balanced_indices(labels, size, num_classes, seed)
    got = data.balanced_subset_indices(labels, size, seed)
    np.testing.assert_array_equal(got, want)


def test_balanced_subset_keeps_drawn_order_and_global_state():
    """Within a class the picks are in drawn order, not sorted, and NumPy's
    global generator is neither used nor reseeded."""
    labels = _labels(10, per_class=50)
    before = np.random.get_state()
    idx = data.balanced_subset_indices(labels, 100, seed=0)
    after = np.random.get_state()
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2:] == before[2:]
    blocks = idx.reshape(10, 10)
    assert any(np.any(np.diff(block) < 0) for block in blocks)


def test_balanced_subset_seeds():
    labels = _labels(10, per_class=50)
    first = data.balanced_subset_indices(labels, 100, seed=0)
    np.testing.assert_array_equal(
        first, data.balanced_subset_indices(labels, 100, seed=0)
    )
    assert not np.array_equal(
        first, data.balanced_subset_indices(labels, 100, seed=1)
    )


def test_balanced_subset_rejects_bad_sizes():
    labels = _labels(10, per_class=4)
    with pytest.raises(UserError, match="multiple"):
        data.balanced_subset_indices(labels, 55, seed=0)
    with pytest.raises(UserError, match="class"):
        data.balanced_subset_indices(labels, 50, seed=0)
    for seed in (-1, 2**32):
        with pytest.raises(UserError, match="random_seed"):
            data.balanced_subset_indices(labels, 20, seed=seed)


def test_subset_applies_indices_or_passes_through():
    labels = _labels(3, per_class=4)
    images = np.arange(len(labels), dtype=np.float32)[:, None] * [1, -1]
    same_images, same_labels = data.subset(images, labels, None, seed=0)
    assert same_images is images and same_labels is labels
    small_images, small_labels = data.subset(images, labels, 6, seed=0)
    idx = data.balanced_subset_indices(labels, 6, seed=0)
    np.testing.assert_array_equal(small_images, images[idx])
    np.testing.assert_array_equal(small_labels, labels[idx])


def _epoch(n=10, batch_size=4, seed=0, epoch=0, start_step=0):
    images = np.arange(n)[:, None] * np.ones((1, 2))
    labels = np.arange(n)
    return list(
        data.train_batches(images, labels, batch_size, seed, epoch, start_step)
    )


def test_train_batches_cover_every_index_once():
    batches = _epoch(n=10, batch_size=4)
    assert [step for step, _, _ in batches] == [0, 1, 2]
    assert [len(y) for _, _, y in batches] == [4, 4, 2]
    seen = np.concatenate([y for _, _, y in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(10))
    for _, x, y in batches:
        np.testing.assert_array_equal(x[:, 0], y)


def test_train_batches_order_depends_on_seed_and_epoch():
    def order(**kwargs):
        return np.concatenate([y for _, _, y in _epoch(n=50, **kwargs)])

    np.testing.assert_array_equal(
        order(seed=1, epoch=2), order(seed=1, epoch=2)
    )
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=1, epoch=3))
    assert not np.array_equal(order(seed=1, epoch=2), order(seed=2, epoch=2))


def test_train_batches_resume_matches_skipping():
    full = _epoch(n=23, batch_size=5, seed=4, epoch=7)
    resumed = _epoch(n=23, batch_size=5, seed=4, epoch=7, start_step=2)
    assert len(resumed) == len(full) - 2
    for (step_a, x_a, y_a), (step_b, x_b, y_b) in zip(
        full[2:], resumed, strict=True
    ):
        assert step_a == step_b
        np.testing.assert_array_equal(x_a, x_b)
        np.testing.assert_array_equal(y_a, y_b)


def test_n_batches():
    assert [data.n_batches(n, 4) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_test_batches_in_order_with_short_last():
    images = np.arange(10)[:, None]
    labels = np.arange(10)
    batches = list(data.test_batches(images, labels, 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in batches]), labels
    )
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches]), images
    )


def test_layout_round_trip():
    nhwc = np.random.default_rng(0).random((2, 5, 6, 3), dtype=np.float32)
    nchw = data.to_nchw(nhwc)
    assert nchw.shape == (2, 3, 5, 6)
    assert nchw[1, 2, 4, 5] == nhwc[1, 4, 5, 2]
    assert nchw.flags.c_contiguous
    np.testing.assert_array_equal(data.to_nhwc(nchw), nhwc)
    with pytest.raises(UserError, match="shape"):
        data.to_nhwc(nhwc[0])
