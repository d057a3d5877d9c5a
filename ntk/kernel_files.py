"""The kernel files of calculate_kernel.py: writing and reading.

A kernel file is a pickle of a plain dict, in
{dirname(model_path)}/{bonus_dir}/, named by store/layout.py
(layout.kernel_file, whose class_index None is COMBINED here):

* `{save_name}_{N}.pkl` for the combined kernel (class_index COMBINED, −1):
  the mean over the K logits, (1/K) Σ_c K_c, as the original's
  neural-tangents kernel traced over logits;
* `{save_name}_class_{c}_{N}.pkl` for the kernel of logit c,
  K_c[i, j] = ∇θ f_c(x_i) · ∇θ f_c(x_j).

Keys: the original's 'kernel' float32 (N, N) and 'labels' int64 (N,); ours
add 'indices' int64 (N,) (the images' positions in the training split),
'class_index' (c or −1), 'epoch' (the checkpoint's; None when unknown),
'n_logits' K, and for the combined kernel 'combined': 'mean_over_logits';
calculate_kernel.py adds how it was computed (model_path, model, width,
dataset, n_classes, use_linear_params, implementation, random_seed, the
checkpoint's 'phase' and 'checkpoint_relpath', its path relative to the
kernel file's folder, which tells which run the kernel belongs to after the
folders are moved, and 'run', the checkpoint's training as its meta records
it: {'loaders', 'seed', 'flags'}). With --test_size M a file also holds the
cross kernel 'test_kernel' float32 (M, N), entry [a, i] = k(x_test_a, x_i)
of the same logit (or mean over logits), with 'test_labels' int64 (M,) and
'test_indices' int64 (M,), the test images' positions in the test split.

The original's files hold only 'kernel' and 'labels'. `read` accepts them:
their class comes from the caller, and their indices are recomputed with the
original's rule (data.balanced_subset_indices) from the training labels and
the seed, then checked against the file's labels.
"""

import dataclasses
import os
from collections.abc import Mapping

import numpy as np

import data
from store import atomic, layout, pickles
from utils import UserError

COMBINED = -1  # class_index of the kernel averaged over all logits
ALL_CLASSES = "all"  # class_index asking for every per-class kernel
MEAN_OVER_LOGITS = "mean_over_logits"  # 'combined' of a combined kernel
ORIGINAL_KEYS = ("kernel", "labels")  # what every kernel file holds
TEST_KEYS = ("test_kernel", "test_labels", "test_indices")  # --test_size
# The largest max |K - Kᵀ| / max |K| a kernel file may hold: float32
# rounding of a matrix computed in two halves stays far below it.
SYMMETRY_TOLERANCE = 1e-3


# --------------------------------------------------------------------------
# Which kernel, and its checkpoint's epoch
# --------------------------------------------------------------------------


def parse_class_index(text: str) -> int | str:
    """A --class_index value: an integer, or ALL_CLASSES.

    Raises:
      UserError: `text` is neither.
    """
    if text == ALL_CLASSES:
        return ALL_CLASSES
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"--class_index {text!r} is neither an integer nor {ALL_CLASSES!r}"
        ) from None


def checkpoint_epoch(meta: Mapping, model_path: str) -> int | float | None:
    """The epoch of a checkpoint: its meta['epoch'] (when a finite number),
    else the e in the name of run_exp.py's checkpoint of epoch e, phase 1
    or 2 (layout.CHECKPOINT_EPOCH; e may be a fraction, e.g. 0.125), else
    None.

    Returns:
      an int for a whole epoch count, a float for a fraction, or None.
    """
    recorded = _epoch_value(meta.get("epoch"))
    if recorded is not None and np.isfinite(recorded):
        return recorded
    match = layout.CHECKPOINT_EPOCH.match(os.path.basename(model_path))
    if match is None:
        return None
    text = match.group(1)
    return float(text) if "." in text else int(text)


def _epoch_value(value: object) -> int | float | None:
    """`value` as an int (integer types) or a float (real types); None for
    None or anything else."""
    if value is None or np.ndim(value) != 0:
        return None
    dtype = np.asarray(value).dtype
    if np.issubdtype(dtype, np.bool_):
        return None
    if np.issubdtype(dtype, np.integer):
        return int(value)
    if np.issubdtype(dtype, np.floating):
        return float(value)
    return None


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kernels:
    """The kernels of one checkpoint, as kernels.ntk_fn gives them.

    class_index: c, COMBINED or ALL_CLASSES, as in the KernelOptions.
    kernel: float32 (N, N), or (K, N, N) for ALL_CLASSES.
    labels: (N,) the images' labels; indices: (N,) their positions in the
      training split.
    test_kernel: None, or the cross kernel K(test, train) of the same
      kernels: float32 (M, N), or (K, M, N) for ALL_CLASSES.
    test_labels, test_indices: (M,) the test images' labels and their
      positions in the test split (with test_kernel).
    """

    class_index: int | str
    kernel: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    test_kernel: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_indices: np.ndarray | None = None

    def by_class(self) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """[(c or COMBINED, kernel (N, N), test kernel (M, N) or None)],
        one per file, in class order."""
        if self.class_index != ALL_CLASSES:
            return [(self.class_index, self.kernel, self.test_kernel)]
        tests = (
            [None] * len(self.kernel)
            if self.test_kernel is None
            else list(self.test_kernel)
        )
        return [
            (c, kernel, test)
            for c, (kernel, test) in enumerate(
                zip(self.kernel, tests, strict=True)
            )
        ]


def write(
    out_dir: str,
    save_name: str,
    kernels: Kernels,
    *,
    n_logits: int,
    epoch: int | float | None,
    **extra,
) -> list[str]:
    """Writes each of `kernels` to its file (layout.kernel_file),
    atomically.

    Args:
      out_dir: the folder, which must exist.
      save_name: the file-name prefix.
      kernels: the kernels and their images.
      n_logits: K, the number of logits of the model.
      epoch: the checkpoint's (checkpoint_epoch).
      extra: more entries for every file (plain values).
    Returns:
      the paths written, in class order.
    """
    if kernels.test_kernel is not None:
        extra = dict(
            extra,
            test_labels=np.asarray(kernels.test_labels, np.int64),
            test_indices=np.asarray(kernels.test_indices, np.int64),
        )
    common = dict(
        extra,
        labels=np.asarray(kernels.labels, np.int64),
        indices=np.asarray(kernels.indices, np.int64),
        epoch=epoch,
        n_logits=int(n_logits),
    )
    paths = []
    for c, class_kernel, class_test in kernels.by_class():
        record = dict(
            common,
            kernel=np.asarray(class_kernel, np.float32),
            class_index=int(c),
        )
        if class_test is not None:
            record["test_kernel"] = np.asarray(class_test, np.float32)
        if c == COMBINED:
            record["combined"] = MEAN_OVER_LOGITS
        name = layout.kernel_file(
            save_name, None if c == COMBINED else c, len(kernels.labels)
        )
        path = os.path.join(out_dir, name)
        atomic.atomic_pickle(path, record)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelFile:
    """A kernel file, checked.

    kernel: float64 (N, N), symmetrised.
    labels: int64 (N,), the labels of the images.
    indices: int64 (N,), the images' positions in the training split.
    class_index: c, or COMBINED for the mean over logits.
    use_linear_params: whether it was computed at lin_params; None when the
      file does not say.
    epoch: the checkpoint's epoch (int, or float for a fraction); None when
      the file does not say.
    random_seed: the seed the images were chosen with; None when unknown.
    indices_recomputed: True for a file of the original code, whose
      indices were recomputed with the original's rule.
    path: the file it came from, for messages.
    test_kernel: float64 (M, N), the cross kernel K(test, train); None when
      the file holds none.
    test_labels, test_indices: int64 (M,), the test images' labels and
      positions in the test split; None without test_kernel.
    extras: the file's other entries (model_path, model, dataset, ...).
    """

    kernel: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    class_index: int
    use_linear_params: bool | None
    epoch: int | float | None
    random_seed: int | None
    indices_recomputed: bool
    path: str
    test_kernel: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        """N, the number of images."""
        return len(self.labels)

    @property
    def combined(self) -> bool:
        """Whether this is the mean over logits."""
        return self.class_index == COMBINED


_PARSED_KEYS = (
    "kernel",
    "labels",
    "indices",
    "class_index",
    "use_linear_params",
    "epoch",
    "random_seed",
    *TEST_KEYS,
)


class NotAKernelFile(UserError):
    """A readable pickle that is not a kernel file (no 'kernel' and
    'labels' entries)."""


def read(
    path: str,
    *,
    class_index: int | None = None,
    size: int | None = None,
    train_labels: np.ndarray | None = None,
    seed: int | None = None,
    dataset: str = "the dataset",
    recorded_only: bool = False,
) -> KernelFile:
    """Loads and checks the kernel file `path`.

    Args:
      path: the file.
      class_index: the kernel wanted (c or COMBINED), or None for any. A
        file without 'class_index' (the original's) is taken to be of this
        class.
      size: the number of images wanted, or None for any.
      train_labels: int (n_train,), the training split's labels: the
        indices are then checked against them, and a file without
        'indices' (the original's) gets them recomputed with
        data.balanced_subset_indices(train_labels, N, seed).
      seed: the seed for that recomputation.
      dataset: the dataset's name, for messages.
      recorded_only: refuse the original's files (no 'class_index' or
        'indices'), for callers that have no training labels to recompute
        their images from.
    Raises:
      NotAKernelFile: the file is a readable pickle without 'kernel' and
        'labels'.
      UserError (one line naming the file): the file is missing, corrupt or
        unsafe, holds another class's kernel or another number of images,
        its arrays (test ones included) have the wrong shapes or values
        (a kernel that is not finite or not symmetric within
        SYMMETRY_TOLERANCE; an epoch that is not a finite number),
        its class or indices cannot be known, or its indices do not name
        training images with its labels.
    """
    record = _load_record(path, recorded_only)
    kernel = _square_matrix(record["kernel"], path)
    n = len(kernel)
    if size is not None and n != size:
        raise UserError(
            f"{path} is a kernel of {n} images, not --dataset_size {size}: "
            f"pass --dataset_size {n} or another kernel"
        )
    labels = _integer_vector(record["labels"], n, "labels", path)
    recorded_class = _recorded_class(record, class_index, path)
    recorded_seed = _optional_int(
        record.get("random_seed"), "random_seed", path
    )
    recomputed = "indices" not in record
    if recomputed:
        indices = _recompute_indices(path, n, train_labels, seed, dataset)
        recorded_seed = seed
    else:
        indices = _integer_vector(record["indices"], n, "indices", path)
    if train_labels is not None:
        _check_images(
            path, indices, labels, train_labels, dataset, recomputed, seed
        )
    test_kernel, test_labels, test_indices = _test_arrays(record, n, path)
    return KernelFile(
        kernel=kernel,
        labels=labels,
        indices=indices,
        class_index=recorded_class,
        use_linear_params=_recorded_flag(
            record.get("use_linear_params"), path
        ),
        epoch=_recorded_epoch(record.get("epoch"), path),
        random_seed=recorded_seed,
        indices_recomputed=recomputed,
        path=path,
        test_kernel=test_kernel,
        test_labels=test_labels,
        test_indices=test_indices,
        extras={k: v for k, v in record.items() if k not in _PARSED_KEYS},
    )


def _load_record(path: str, recorded_only: bool) -> Mapping:
    """The pickle `path`, checked to hold a kernel file's keys (and, with
    `recorded_only`, not to be one of the original code's files)."""
    record = pickles.safe_load_pickle(path)
    missing = [
        key
        for key in ORIGINAL_KEYS
        if not isinstance(record, Mapping) or key not in record
    ]
    if missing:
        raise NotAKernelFile(
            f"cannot use {path}: it lacks key(s) {', '.join(missing)} of a "
            "kernel file (expected a dict with keys kernel, labels)"
        )
    if recorded_only and not {"class_index", "indices"} <= set(record):
        raise UserError(
            f"{path} holds no 'class_index' or 'indices' (a file of the "
            "original code): recompute it with calculate_kernel.py"
        )
    return record


def _test_arrays(record: Mapping, size: int, path: str) -> tuple:
    """(test_kernel float64 (M, N), test_labels int64 (M,), test_indices
    int64 (M,)) of a file with a cross kernel, (None, None, None) without;
    UserError for a file holding some of them or of the wrong shapes."""
    present = [key for key in TEST_KEYS if key in record]
    if not present:
        return None, None, None
    if len(present) < len(TEST_KEYS):
        absent = [key for key in TEST_KEYS if key not in record]
        raise UserError(
            f"{path} holds {', '.join(present)} without "
            f"{', '.join(absent)}: recompute it with calculate_kernel.py "
            "--test_size"
        )
    cross = np.asarray(record["test_kernel"])
    if (
        cross.ndim != 2
        or cross.shape[1] != size
        or not np.issubdtype(cross.dtype, np.floating)
    ):
        raise UserError(
            f"{path}: 'test_kernel' is {cross.dtype}{list(cross.shape)}, not "
            f"a float matrix of {size} columns (one per training image)"
        )
    if not np.all(np.isfinite(cross)):
        raise UserError(
            f"{path}: 'test_kernel' holds NaN or infinite values; recompute it"
        )
    m = len(cross)
    return (
        cross.astype(np.float64),
        _integer_vector(record["test_labels"], m, "test_labels", path),
        _integer_vector(record["test_indices"], m, "test_indices", path),
    )


def _recorded_class(record: Mapping, wanted: int | None, path: str) -> int:
    """The file's class_index, checked against `wanted`; `wanted` for a
    file that does not say."""
    if "class_index" not in record:
        if wanted is None:
            raise UserError(
                f"{path} does not say which logit its kernel is of (a file "
                "of the original code): pass its --class_index"
            )
        return int(wanted)
    recorded = _optional_int(record["class_index"], "class_index", path)
    if recorded is None:
        raise UserError(f"{path}: 'class_index' is not an integer")
    if wanted is not None and recorded != wanted:
        if recorded == COMBINED:
            raise UserError(
                f"{path} holds the combined kernel (the mean over all "
                f"logits), not the kernel of logit {wanted}: run "
                f"calculate_kernel.py with --class_index {wanted}"
            )
        raise UserError(
            f"{path} is the kernel of class {recorded}, not --class_index "
            f"{wanted}: pass --class_index {recorded} or another kernel"
        )
    return recorded


def _recompute_indices(
    path: str,
    size: int,
    train_labels: np.ndarray | None,
    seed: int | None,
    dataset: str,
) -> np.ndarray:
    """The original's class-balanced indices of `size` images."""
    if train_labels is None or seed is None:
        raise UserError(
            f"{path} holds no 'indices' (a file of the original code): its "
            "images can only be recomputed from the training labels and the "
            "--random_seed it was computed with"
        )
    try:
        return data.balanced_subset_indices(train_labels, size, seed)
    except UserError as error:
        raise UserError(
            f"{path} holds no 'indices' and its {size} images cannot be "
            f"chosen from {dataset} with the original's rule: {error}"
        ) from None


def _check_images(
    path: str,
    indices: np.ndarray,
    labels: np.ndarray,
    train_labels: np.ndarray,
    dataset: str,
    recomputed: bool,
    seed: int | None,
) -> None:
    """UserError unless `indices` name training images whose labels are
    the file's."""
    if indices.min() < 0 or indices.max() >= len(train_labels):
        raise UserError(
            f"{path} names training images {indices.min()} to "
            f"{indices.max()} but {dataset} has {len(train_labels)}, numbered "
            "from 0: was the kernel computed on another dataset?"
        )
    if np.array_equal(np.asarray(train_labels)[indices], labels):
        return
    if recomputed:
        raise UserError(
            f"the labels in {path} differ from those of the images that the "
            f"original's rule picks from {dataset} with --random_seed {seed}: "
            "pass the seed and --dataset_size the kernel was computed with"
        )
    raise UserError(
        f"the labels in {path} differ from those of its images in "
        f"{dataset}: was the kernel computed on another dataset?"
    )


def _optional_int(value: object, key: str, path: str) -> int | None:
    """None, or `value` as a Python int; UserError naming `key` otherwise."""
    if value is None:
        return None
    if np.ndim(value) != 0 or not np.issubdtype(
        np.asarray(value).dtype, np.integer
    ):
        raise UserError(f"{path}: '{key}' is not an integer")
    return int(value)


def _square_matrix(value: object, path: str) -> np.ndarray:
    """A finite, symmetric (within SYMMETRY_TOLERANCE) square float array,
    symmetrised, as float64."""
    kernel = np.asarray(value)
    if (
        kernel.ndim != 2
        or kernel.shape[0] != kernel.shape[1]
        or not np.issubdtype(kernel.dtype, np.floating)
    ):
        raise UserError(
            f"{path}: 'kernel' is {kernel.dtype}"
            f"{list(kernel.shape)}, not a square float matrix"
        )
    if not np.all(np.isfinite(kernel)):
        raise UserError(
            f"{path}: 'kernel' holds NaN or infinite values; recompute it"
        )
    kernel = kernel.astype(np.float64)
    largest = np.max(np.abs(kernel), initial=0.0)
    if largest > 0:
        asymmetry = np.max(np.abs(kernel - kernel.T)) / largest
        if asymmetry > SYMMETRY_TOLERANCE:
            raise UserError(
                f"{path}: 'kernel' is not symmetric (max |K - K^T| is "
                f"{asymmetry:.3g} x max |K|, above {SYMMETRY_TOLERANCE:g}), "
                "so it is not a kernel of calculate_kernel.py; recompute it"
            )
    # Halves first: the sum of two entries near the largest float would
    # overflow.
    return kernel / 2 + kernel.T / 2


def _integer_vector(
    value: object, size: int, key: str, path: str
) -> np.ndarray:
    """An integer array of shape (size,), as int64."""
    array = np.asarray(value)
    if array.shape != (size,) or not np.issubdtype(array.dtype, np.integer):
        raise UserError(
            f"{path}: '{key}' is {array.dtype}{list(array.shape)}"
            f", not {size} integers"
        )
    return array.astype(np.int64)


def _recorded_flag(value: object, path: str) -> bool | None:
    """A kernel file's optional yes/no record: None, or a bool."""
    if value is None:
        return None
    if np.ndim(value) != 0:
        raise UserError(f"{path}: 'use_linear_params' is not a yes/no value")
    return bool(value)


def _recorded_epoch(value: object, path: str) -> int | float | None:
    """A kernel file's optional epoch: None, or a finite number."""
    epoch = _epoch_value(value)
    if value is not None and epoch is None:
        raise UserError(f"{path}: 'epoch' is not a number")
    if epoch is not None and not np.isfinite(epoch):
        raise UserError(
            f"{path}: 'epoch' is {epoch}, not a finite number of epochs: "
            "recompute the kernel with calculate_kernel.py, or record "
            "'epoch': None in the file for a kernel of no known epoch"
        )
    return epoch


def checkpoint_folder(kernel: KernelFile) -> str | None:
    """The folder of the checkpoint the kernel was computed from, found
    from the kernel file's folder and its 'checkpoint_relpath' (so it
    survives moving the run folder with its kernels); None when the file
    does not record it."""
    relative = kernel.extras.get("checkpoint_relpath")
    if not isinstance(relative, str):
        return None
    folder = os.path.dirname(kernel.path)
    return os.path.normpath(os.path.dirname(os.path.join(folder, relative)))


def resolve_use_linear_params(flag: bool | None, kernel: KernelFile) -> bool:
    """Whether to use lin_params: the flag, else the kernel file's record,
    else False. A flag contradicting the record raises UserError."""
    recorded = kernel.use_linear_params
    if flag is not None and recorded is not None and flag != recorded:
        computed_at = "lin_params" if recorded else "params"
        raise UserError(
            f"{kernel.path} was computed at {computed_at}: drop "
            "--use_linear_params/--no-use_linear_params or pass the other"
        )
    return next((v for v in (flag, recorded) if v is not None), False)
