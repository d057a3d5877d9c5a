"""Datasets as NumPy arrays, class-balanced subsets and epoch batching.

Images are float32 in [0, 1], laid out N x H x W x C (NHWC); labels are int32
class indices. Files are read through torchvision's dataset classes, which
know the on-disk formats, or, where torchvision is not installed (the JAX
0.11 stack), by `datafiles`' NumPy readers of the same files into the same
arrays, without downloads; nothing is normalised or augmented.
"""

import dataclasses
import gzip
import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from store import atomic, datafiles
from utils import UserError

if TYPE_CHECKING:  # imported where used: torch is slow to import
    import torchvision.datasets

# Looked up, not imported: torch is slow to import. With NTK_NUMPY_READERS
# set, datafiles' readers serve even where torchvision is installed (the
# test suite sets it: the same arrays, without torch's seconds of import in
# every process; tests/test_data.py tests both readers).
HAS_TORCHVISION = importlib.util.find_spec(
    "torchvision"
) is not None and not os.environ.get("NTK_NUMPY_READERS")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset: what the code needs to know of it.

    name: the `--dataset` value.
    n_classes: number of classes C; labels are 0 .. C-1.
    image_shape: (H, W, C) of one image.
    torchvision_class: the torchvision.datasets class that reads its files.
    folder: what that class reads under `--data_path` (what a user must put
      there to work offline).
    n_train, n_test: images of its training and test split.
    smallest_class: (training, test): the images of the smallest class of
      each split, the most a class-balanced subset can take of each class.
    """

    name: str
    n_classes: int
    image_shape: tuple[int, int, int]
    torchvision_class: str
    folder: str
    n_train: int
    n_test: int
    smallest_class: tuple[int, int]


# The registry: add a dataset here (and nowhere else).
DATASETS: dict[str, Dataset] = {
    entry.name: entry
    for entry in (
        Dataset(
            "cifar10",
            10,
            (32, 32, 3),
            "CIFAR10",
            "cifar-10-batches-py",
            50000,
            10000,
            (5000, 1000),
        ),
        Dataset(
            "cifar100",
            100,
            (32, 32, 3),
            "CIFAR100",
            "cifar-100-python",
            50000,
            10000,
            (500, 100),
        ),
        Dataset(
            "fashion_mnist",
            10,
            (28, 28, 1),
            "FashionMNIST",
            "FashionMNIST/raw",
            60000,
            10000,
            (6000, 1000),
        ),
        # MNIST's classes differ in size; digit 5 has the fewest images.
        Dataset(
            "mnist",
            10,
            (28, 28, 1),
            "MNIST",
            "MNIST/raw",
            60000,
            10000,
            (5421, 892),
        ),
    )
}

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def get_dataset(name: str) -> Dataset:
    """The registry entry of dataset `name`; UserError if there is none."""
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}: choose one of "
            f"{', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def n_classes(name: str) -> int:
    """Number of classes of dataset `name` (a key of DATASETS)."""
    return get_dataset(name).n_classes


def load_split(
    name: str, data_path: str = "./data", train: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole split of a dataset.

    Args:
      name: a key of DATASETS.
      data_path: the folder torchvision's files live in (or are downloaded
        to).
      train: the training split if True, else the test split.

    Returns:
      images: float32 (N, H, W, C) in [0, 1]; CIFAR (N, 32, 32, 3), MNIST
        and Fashion-MNIST (N, 28, 28, 1).
      labels: int32 (N,).

    Raises:
      UserError: unknown name, or the files are absent and cannot be had.
    """
    dataset = get_dataset(name)
    if not HAS_TORCHVISION:
        pixels, targets = _read_without_torchvision(dataset, data_path, train)
        return _pixels_to_float(pixels), _labels_to_int32(targets)
    opened = _open_torchvision(dataset, data_path, train)
    return _pixels_to_float(opened.data), _labels_to_int32(opened.targets)


def _read_without_torchvision(
    dataset: Dataset, data_path: str, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """datafiles.read_split, after Debian's Fashion-MNIST where needed."""
    name = dataset.name
    try:
        return datafiles.read_split(name, data_path, train)
    except FileNotFoundError as error:
        missing = error.filename
    if name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
        _install_debian_fashion_mnist(data_path)
        return datafiles.read_split(name, data_path, train)
    raise UserError(
        f"dataset {name} not found under {data_path} ({missing} is missing) "
        f"and torchvision, which would download it, is not installed: place "
        f"torchvision's {dataset.folder} folder under {data_path} or "
        f"pass --data_path"
    )


def _open_torchvision(
    dataset: Dataset, data_path: str, train: bool
) -> "torchvision.datasets.VisionDataset":
    """The torchvision dataset object, trying local files before the net."""
    # Imported here: torch is slow to import and only this function needs it.
    import torchvision.datasets

    name, folder = dataset.name, dataset.folder
    dataset_class = getattr(torchvision.datasets, dataset.torchvision_class)
    try:
        return dataset_class(data_path, train=train, download=False)
    except RuntimeError:
        pass  # Not there (torchvision's way of saying so): look elsewhere.
    if name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
        _install_debian_fashion_mnist(data_path)
        return dataset_class(data_path, train=train, download=False)
    try:
        return dataset_class(data_path, train=train, download=True)
    # Offline, a download fails in many ways (URLError, OSError, bad md5...).
    except Exception as error:
        raise UserError(
            f"dataset {name} not found under {data_path} and it could not be "
            f"downloaded ({type(error).__name__}; offline?): place "
            f"torchvision's {folder} folder under {data_path} or pass "
            f"--data_path"
        ) from error


def _install_debian_fashion_mnist(data_path: str) -> None:
    """Decompresses Debian's Fashion-MNIST into data_path/FashionMNIST/raw.

    torchvision reads the four decompressed idx files there without checking
    checksums. Copying the gz files instead would not do: Debian recompressed
    them, so their md5s differ from torchvision's and it would try the net.
    """
    raw = os.path.join(os.path.expanduser(data_path), "FashionMNIST", "raw")
    try:
        os.makedirs(raw, exist_ok=True)
        for file_name in _IDX_FILES:
            _gunzip(
                os.path.join(DEBIAN_FASHION_MNIST, file_name + ".gz"),
                os.path.join(raw, file_name),
            )
    except OSError as error:
        raise UserError(
            f"cannot copy {DEBIAN_FASHION_MNIST} into {raw} "
            f"({error}): make {data_path} writable or pass "
            f"another --data_path"
        ) from error


def _gunzip(source: str, target: str) -> None:
    """Decompresses `source` to `target`, leaving no partial `target`.

    torchvision only checks that the file exists, so a half-written one
    left by an interrupted copy would be read as data: the data go to a
    temporary file of this process, renamed when complete, so several
    processes decompressing at once each leave a whole file.
    """
    with gzip.open(source, "rb") as reader:
        atomic.atomic_write_stream(target, reader)


def _pixels_to_float(pixels: npt.ArrayLike) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, H, W, C) in [0, 1]."""
    images = np.asarray(pixels).astype(np.float32)
    images /= 255
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images


def _labels_to_int32(targets: npt.ArrayLike) -> np.ndarray:
    """A list or tensor of class indices -> int32 (N,)."""
    return np.asarray(targets).astype(np.int32)


# Seeds NumPy's legacy generator (np.random.RandomState) accepts.
MAX_LEGACY_SEED = 2**32 - 1


def subset_size_problem(size: int, num_classes: int) -> str | None:
    """Why `size` cannot be a class-balanced subset of `num_classes`
    classes (balanced_subset_indices' words), or None."""
    if size <= 0 or size % num_classes:
        return (
            f"subset size {size} is not a positive multiple of "
            f"the {num_classes} classes: pick a multiple of "
            f"{num_classes}"
        )
    return None


def _too_few(where: str, have: int, per_class: int) -> str:
    """The words of a subset that asks a class for more images than it
    has."""
    return (
        f"{where} has {have} images, fewer than the {per_class} per class "
        "asked for: pick a smaller subset size"
    )


def split_size_problem(name: str, size: int, train: bool) -> str | None:
    """Why `size` cannot be a class-balanced subset of the training (or
    test) split of dataset `name`, in the words of balanced_subset_indices
    (not a multiple of the classes; more per class than the split's
    smallest class has, Dataset.smallest_class), or None."""
    dataset = get_dataset(name)
    problem = subset_size_problem(size, dataset.n_classes)
    if problem:
        return problem
    smallest = dataset.smallest_class[0 if train else 1]
    per_class = size // dataset.n_classes
    if per_class > smallest:
        split = "training" if train else "test"
        return _too_few(
            f"the smallest class of {name}'s {split} split",
            smallest,
            per_class,
        )
    return None


def seed_problem(seed: int) -> str | None:
    """Why `seed` cannot seed the legacy generator of
    balanced_subset_indices (its words), or None."""
    if not 0 <= seed <= MAX_LEGACY_SEED:
        return (
            f"seed {seed} is outside NumPy's legacy generator's range: pick "
            f"a --random_seed from 0 to {MAX_LEGACY_SEED}"
        )
    return None


def balanced_subset_indices(
    labels: npt.ArrayLike, size: int, seed: int
) -> np.ndarray:
    """Indices of a class-balanced subset, drawn as the original code draws.

    The rule of the paper's `calculate_kernel.py`, the only class-balanced
    subset of the project (kernel images, --train_size, --test_size): NumPy's
    legacy generator seeded with `seed`; then, for each class c in order,
    `picks = choice(len(members_c), size // C, replace=False)` of the indices
    `members_c` (ascending) whose label is c, taken as `members_c[picks]` in
    drawn order. A local np.random.RandomState(seed) makes exactly the draws
    of `np.random.seed(seed)` and `np.random.choice` without touching NumPy's
    global state.

    Args:
      labels: int (N,) class indices in [0, C), C = labels.max() + 1.
      size: total subset size, a positive multiple of C.
      seed: int in [0, 2**32 - 1], the legacy generator's seed.

    Returns:
      int64 (size,): size // C distinct indices of each class, grouped in
      class order (all of class 0, then class 1, ...), in drawn order within
      a class (not sorted).

    Raises:
      UserError: size is not a positive multiple of C, a class has fewer
        than size // C images, or the seed is out of range.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    problem = subset_size_problem(size, num_classes) or seed_problem(seed)
    if problem:
        raise UserError(problem)
    per_class = size // num_classes
    rng = np.random.RandomState(seed)
    chosen = [
        _choose_from_class(labels, label, per_class, rng)
        for label in range(num_classes)
    ]
    return np.concatenate(chosen).astype(np.int64)


def _choose_from_class(
    labels: np.ndarray, label: int, count: int, rng: np.random.RandomState
) -> np.ndarray:
    """`count` indices of class `label`, drawn without replacement by the
    legacy generator `rng`, in drawn order."""
    members = np.flatnonzero(labels == label)
    if len(members) < count:
        raise UserError(_too_few(f"class {label}", len(members), count))
    return members[rng.choice(len(members), count, replace=False)]


def subset(
    images: np.ndarray, labels: np.ndarray, size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced subset of (images, labels), or both unchanged.

    Args:
      images: (N, ...) array.
      labels: int (N,).
      size: subset size (see balanced_subset_indices), or None for all.
      seed: non-negative int.

    Returns:
      (images[idx], labels[idx]) with idx from balanced_subset_indices, or
      the inputs themselves when size is None.
    """
    if size is None:
        return images, labels
    idx = balanced_subset_indices(labels, size, seed)
    return images[idx], labels[idx]


def n_batches(n: int, batch_size: int) -> int:
    """Number of batches of `batch_size` covering `n` items: ceil(n / bs)."""
    return -(-n // batch_size)


def train_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """One shuffled epoch of training batches.

    The order is a permutation drawn from np.random.default_rng([seed,
    epoch]), so any epoch's order can be rebuilt alone (resuming mid-epoch
    relies on this).

    Args:
      images: (N, ...) array.
      labels: (N,) array.
      batch_size: images per batch; the last batch may be shorter.
      seed, epoch: non-negative ints.
      start_step: batches of this epoch to skip (never gathered).

    Yields:
      (step, x, y): step, the batch's index within the epoch, from
      start_step up; x (B, ...) and y (B,) copies, B <= batch_size.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    for step in range(start_step, n_batches(len(labels), batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        yield step, images[idx], labels[idx]


def test_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches in order, the last one possibly shorter.

    Args:
      images: (N, ...) array.
      labels: (N,) array.
      batch_size: images per batch.

    Yields:
      (x, y): views x (B, ...) and y (B,), B <= batch_size.
    """
    for start in range(0, len(labels), batch_size):
        stop = start + batch_size
        yield images[start:stop], labels[start:stop]


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> C-contiguous (N, C, H, W), same dtype."""
    _check_4d(images, "(N, H, W, C)")
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))


def to_nhwc(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> C-contiguous (N, H, W, C), same dtype."""
    _check_4d(images, "(N, C, H, W)")
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


def _check_4d(images: npt.ArrayLike, layout: str) -> None:
    shape = np.shape(images)
    if len(shape) != 4:
        raise UserError(
            f"expected images of shape {layout}, got shape "
            f"{shape}: pass a batch of images"
        )
