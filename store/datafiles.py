"""NumPy readers of the datasets' files, for a stack without torchvision.

The JAX 0.11 stack (requirements-jax011.txt) has no torch: on Python 3.12
the only torch on PyPI for Linux is a CUDA build of several GB, which would
be installed only to read four small file formats. These readers take the
files torchvision's dataset classes read, in the folders they read them
from, and return the arrays those classes hold (`dataset.data`,
`dataset.targets`); `data.load_split` turns both into its float32 images and
int32 labels the same way (tested against torchvision where it is
installed). They do not download: without torchvision the files must be
there (or Debian's Fashion-MNIST, which `data` decompresses first).

Formats:
* MNIST and Fashion-MNIST: decompressed idx files in `{root}/MNIST/raw/` and
  `{root}/FashionMNIST/raw/`: a big-endian header (two zero bytes, the type
  code 0x08 for unsigned bytes, the number of dimensions D), D big-endian
  uint32 sizes, then the bytes in C order.
* CIFAR-10 `{root}/cifar-10-batches-py/data_batch_1..5` and `test_batch`,
  CIFAR-100 `{root}/cifar-100-python/train` and `test`: pickles (Python 2's,
  hence latin1) of dicts whose 'data' is uint8 (n, 3072), each row the red,
  green and blue 32×32 planes, and whose 'labels' (CIFAR-10) or
  'fine_labels' (CIFAR-100) are lists of class indices. They are read with
  the safe loader, which runs none of a pickle's code.
"""

import os

import numpy as np

from store import pickles
from utils import UserError

_IDX_UBYTE = 0x08  # the idx type code of unsigned bytes
_CIFAR_SIDE = 32

# Files of each split, relative to the data folder, and the label key of
# CIFAR's pickles.
_MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        {
            True: [f"data_batch_{i}" for i in range(1, 6)],
            False: ["test_batch"],
        },
        "labels",
    ),
    "cifar100": (
        "cifar-100-python",
        {True: ["train"], False: ["test"]},
        "fine_labels",
    ),
}


def split_files(name: str, root: str, train: bool) -> list[str]:
    """Paths of the files split `train` of dataset `name` is read from."""
    if name in _MNIST_FOLDERS:
        raw = os.path.join(root, _MNIST_FOLDERS[name], "raw")
        prefix = "train" if train else "t10k"
        return [
            os.path.join(raw, f"{prefix}-images-idx3-ubyte"),
            os.path.join(raw, f"{prefix}-labels-idx1-ubyte"),
        ]
    folder, files, _ = _CIFAR[name]
    return [os.path.join(root, folder, file) for file in files[train]]


def read_split(
    name: str, root: str, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The raw arrays of one split, as torchvision's dataset class holds them.

    Args:
      name: 'mnist', 'fashion_mnist', 'cifar10' or 'cifar100'.
      root: the data folder (torchvision's `root`).
      train: the training split if True, else the test split.

    Returns:
      pixels: uint8, (N, 28, 28) for MNIST and Fashion-MNIST, (N, 32, 32, 3)
        for CIFAR.
      labels: int64 (N,).

    Raises:
      FileNotFoundError: a file of the split is missing (its `filename`).
      UserError: a file is there but not in its format.
    """
    root = os.path.expanduser(root)
    paths = split_files(name, root, train)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "no such file", path)
    if name in _MNIST_FOLDERS:
        pixels, labels = (read_idx(path) for path in paths)
        _check(pixels.ndim == 3 and labels.ndim == 1, paths[0], "shape")
    else:
        pixels, labels = _read_cifar(paths, _CIFAR[name][2])
    _check(len(pixels) == len(labels), paths[0], "number of labels")
    return pixels, labels.astype(np.int64)


def read_idx(path: str) -> np.ndarray:
    """An idx file of unsigned bytes as a uint8 array of its dimensions.

    Raises:
      UserError: the header is not that of unsigned bytes, or the size does
        not match it.
    """
    with open(path, "rb") as file:
        content = file.read()
    header = np.frombuffer(content[:4], np.uint8)
    _check(
        len(header) == 4
        and header[0] == header[1] == 0
        and header[2] == _IDX_UBYTE
        and 1 <= header[3] <= 3,
        path,
        "idx header",
    )
    ndim = int(header[3])
    start = 4 * (ndim + 1)
    shape = tuple(int(n) for n in np.frombuffer(content[4:start], ">u4"))
    _check(len(shape) == ndim, path, "idx header")
    pixels = np.frombuffer(content, np.uint8, offset=start)
    _check(pixels.size == int(np.prod(shape)), path, "size")
    return pixels.reshape(shape)


def _read_cifar(
    paths: list[str], label_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) and int64 (N,) from CIFAR's pickled batches."""
    rows, labels = [], []
    for path in paths:
        batch = pickles.safe_load_pickle(path, encoding="latin1")
        _check(
            isinstance(batch, dict) and "data" in batch and label_key in batch,
            path,
            f"keys ('data', {label_key!r})",
        )
        data = np.asarray(batch["data"])
        _check(
            data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3 * _CIFAR_SIDE**2,
            path,
            "'data' (uint8, n × 3072)",
        )
        rows.append(data)
        labels.extend(batch[label_key])
    planes = np.concatenate(rows).reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return planes.transpose(0, 2, 3, 1), np.asarray(labels, np.int64)


def _check(condition: bool, path: str, what: str) -> None:
    """UserError naming `path` and the part of its format that is wrong."""
    if not condition:
        raise UserError(
            f"{path} is not a valid dataset file (its {what} is wrong): "
            "replace it with the dataset's original file"
        )
