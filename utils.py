"""Errors, atomic files and checkpoints shared by every entry script.

Checkpoints and other artefacts are pickles of plain nested ``dict``s of
NumPy arrays, so that a notebook can read them with ``pickle.load``. Reading
them back here goes through :func:`safe_load_pickle`, which refuses any pickle
that asks for more than NumPy arrays, NumPy scalars, dtypes and containers.
"""

import argparse
import importlib
import importlib.metadata
import json
import os
import pickle
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Protocol 5 (Python >= 3.8) writes large arrays in-band without an extra copy.
PICKLE_PROTOCOL = 5

CHECKPOINT_KEYS = ("params", "lin_params", "net_state")

# The globals a pickle of NumPy arrays, scalars and dtypes refers to, as
# (module, name) -> (module the object really lives in, name). NumPy 2 writes
# ``numpy._core``; files written by NumPy 1.x say ``numpy.core``.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"): (
        "numpy._core.multiarray",
        "_reconstruct",
    ),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): (
        "numpy._core.numeric",
        "_frombuffer",
    ),
    ("numpy.core.multiarray", "_reconstruct"): (
        "numpy._core.multiarray",
        "_reconstruct",
    ),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): (
        "numpy._core.numeric",
        "_frombuffer",
    ),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
    # Python values that some protocols build by calling their type.
    ("builtins", "complex"): ("builtins", "complex"),
    ("builtins", "set"): ("builtins", "set"),
    ("builtins", "frozenset"): ("builtins", "frozenset"),
    ("builtins", "bytearray"): ("builtins", "bytearray"),
}

_PLAIN_SCALARS = (bool, int, float, complex, str, bytes, type(None))

_DISTRIBUTIONS = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "haiku": "dm-haiku",
    "optax": "optax",
    "numpy": "numpy",
    "torch": "torch",
    "torchvision": "torchvision",
}


class UserError(Exception):
    """Bad input from the user.

    The message is one line that names the problem and what to do. Entry
    scripts print it and exit with status 2.
    """


def _one_line(text, limit=300):
    """``text`` with whitespace runs collapsed, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Directories and atomic writes
# --------------------------------------------------------------------------


def _unwritable(what, path, err):
    """UserError for an OSError met while creating or writing ``path``."""
    return UserError(
        f"{what} {path}: {err.strerror or err}; "
        "choose another path or fix its permissions"
    )


def ensure_writable_dir(path):
    """Create directory ``path`` (and its parents) and check it is writable.

    Writability is checked by creating and removing a temporary file, which
    also catches read-only mounts and full disks that permission bits miss.

    Returns:
        ``path`` as a ``str``.
    Raises:
        UserError: the directory cannot be created or written.
    """
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise _unwritable("cannot create directory", path, err) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write_test.")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise _unwritable("cannot write in directory", path, err) from None
    return path


def _remove_quietly(path):
    """Remove file ``path`` if it exists; ignore any error."""
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_dir(path):
    """Flush directory ``path``'s entries to disk where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp_file(directory, basename):
    """Open a new, uniquely named hidden file in ``directory`` for writing.

    Unlike ``tempfile.mkstemp`` (mode 0600), the file gets the mode any new
    file would get under the process umask, and keeps it after the rename.

    Returns:
        (file descriptor, path of the file).
    """
    while True:
        tmp_path = os.path.join(
            directory, f".{basename}.{os.urandom(6).hex()}.tmp"
        )
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return fd, tmp_path


def _atomic_write(path, write_fn, mode="wb", encoding=None):
    """Write a file with ``write_fn(file)`` so that it appears all or nothing.

    The data go to a temporary file in the destination's directory, are
    flushed and fsynced, and the file is then renamed over ``path``. On any
    failure, KeyboardInterrupt included, the temporary file is removed and
    the old content of ``path``, if any, is untouched.

    Raises:
        UserError: the directory cannot be created or an OSError occurs
            while writing (e.g. a full disk).
        Anything else ``write_fn`` raises, unchanged.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = _create_temp_file(directory, os.path.basename(path))
    except OSError as err:
        raise _unwritable("cannot write", path, err) from None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as file:
            write_fn(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        _remove_quietly(tmp_path)
        raise _unwritable("cannot write", path, err) from None
    except BaseException:
        _remove_quietly(tmp_path)
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path, data):
    """Atomically replace file ``path`` with the bytes ``data``."""
    _atomic_write(path, lambda file: file.write(data))


def atomic_write_text(path, text):
    """Atomically replace file ``path`` with ``text``, UTF-8 encoded."""
    _atomic_write(
        path, lambda file: file.write(text), mode="w", encoding="utf-8"
    )


def atomic_pickle(path, obj):
    """Atomically replace file ``path`` with a pickle of ``obj``.

    The object is pickled straight into the temporary file, so a large
    checkpoint is never held twice in memory.
    """
    _atomic_write(
        path, lambda file: pickle.dump(obj, file, protocol=PICKLE_PROTOCOL)
    )


def _json_default(obj):
    """Plain-Python stand-in for what ``json`` cannot encode by itself."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, jax.Array)):
        return np.asarray(obj).tolist()
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def atomic_write_json(path, obj):
    """Atomically replace ``path`` with ``obj`` as JSON, indent 2, keys sorted.

    NumPy scalars become Python numbers and arrays (NumPy or JAX) nested lists.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------
# Trees of arrays
# --------------------------------------------------------------------------


def to_numpy_tree(tree):
    """Host copy of a tree of arrays made of plain Python containers.

    Mappings (Haiku's dicts and mapping types included) become ``dict``s,
    lists stay lists, tuples (named tuples included) become plain tuples, and
    JAX or NumPy arrays become ``np.ndarray`` copies of the same shape and
    dtype. Python numbers, strings and ``None`` are kept as they are, and so
    are NumPy scalars.

    Raises:
        TypeError: a leaf is none of the above.
    """
    if isinstance(tree, Mapping):
        return {key: to_numpy_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [to_numpy_tree(value) for value in tree]
    if isinstance(tree, tuple):
        return tuple(to_numpy_tree(value) for value in tree)
    if isinstance(tree, (_PLAIN_SCALARS, np.generic)):
        return tree
    if isinstance(tree, (np.ndarray, jax.Array)):
        return np.array(tree)
    raise TypeError(f"cannot convert a {type(tree).__name__} to NumPy")


def _leaf_equal(a, b):
    """Exact equality of two leaves: same type class, dtype, shape and bits."""
    a_is_array = isinstance(a, (np.ndarray, np.generic, jax.Array))
    b_is_array = isinstance(b, (np.ndarray, np.generic, jax.Array))
    if a_is_array != b_is_array:
        return False
    if not a_is_array:
        return type(a) is type(b) and a == b
    a, b = np.asarray(a), np.asarray(b)
    # Comparing bytes makes NaN equal to itself and -0.0 differ from 0.0.
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.tobytes() == b.tobytes()
    )


def tree_equal(a, b):
    """Whether two nested trees of arrays are exactly equal.

    Trees are mappings, lists and tuples; any two mappings with the same keys
    compare as the same structure, but a list never equals a tuple. Arrays
    must agree in dtype, shape and every bit of every value.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and set(a) == set(b)
            and all(tree_equal(a[key], b[key]) for key in a)
        )
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and isinstance(a, list) == isinstance(b, list)
            and len(a) == len(b)
            and all(tree_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return _leaf_equal(a, b)


def flatten_opt_state(opt_state):
    """Leaves of an optax optimiser state as a list of NumPy arrays.

    The order is that of ``jax.tree_util.tree_leaves``; restore the state
    with :func:`unflatten_like` on a freshly initialised state.
    """
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(opt_state)]


def unflatten_like(template, leaves):
    """Put ``leaves`` back onto the tree structure of ``template``.

    Args:
        template: a tree of the right structure, such as
            ``optimizer.init(params)``.
        leaves: arrays as returned by :func:`flatten_opt_state`.
    Returns:
        A tree like ``template`` whose leaves are ``jnp`` arrays of ``leaves``.
    Raises:
        UserError: the number, shapes or dtypes of the leaves do not match
            ``template`` (the stored state belongs to another model).
    """
    template_leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(leaves) != len(template_leaves):
        raise UserError(
            f"stored optimiser state has {len(leaves)} arrays but the model "
            f"needs {len(template_leaves)}; was it saved for another model?"
        )
    restored = []
    for index, (want, got) in enumerate(
        zip(template_leaves, leaves, strict=True)
    ):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape or want.dtype != got.dtype:
            raise UserError(
                f"stored optimiser state array {index} is {got.dtype}"
                f"{list(got.shape)} but the model needs {want.dtype}"
                f"{list(want.shape)}; was it saved for another model?"
            )
        restored.append(jnp.asarray(got))
    return jax.tree_util.tree_unflatten(treedef, restored)


def rng_key_to_numpy(key):
    """A JAX PRNG key as a NumPy ``uint32`` array (shape (2,) for threefry).

    Accepts raw keys from ``jax.random.PRNGKey`` and typed keys from
    ``jax.random.key`` (stored as their raw key data).
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.array(key, dtype=np.uint32)


def rng_key_from_numpy(array):
    """The raw JAX PRNG key stored by :func:`rng_key_to_numpy`.

    Raises:
        UserError: ``array`` is not a 1-D ``uint32`` array.
    """
    array = np.asarray(array)
    if array.dtype != np.uint32 or array.ndim != 1:
        raise UserError(
            f"stored random key is {array.dtype}{list(array.shape)}, not a "
            "uint32 vector; the file is not a checkpoint of this code"
        )
    return jnp.asarray(array)


# --------------------------------------------------------------------------
# Safe pickles and checkpoints
# --------------------------------------------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``.

    Every global a pickle names (its classes and the functions it calls) goes
    through ``find_class``, so refusing there stops any other code from
    running. Most builtin values need no global; the few that some protocols
    build by calling their type are on the list.
    """

    def __init__(self, file, path, encoding="ASCII"):
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module, name):
        """The allowed object for ``module.name``; UserError otherwise."""
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise UserError(
                f"refusing to load {self._path}: it asks for {module}.{name}, "
                "which is not an array or container"
            )
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid):
        """Refuse persistent ids: plain pickles of arrays have none."""
        raise UserError(
            f"refusing to load {self._path}: it uses a persistent id, "
            "which is not an array or container"
        )


def safe_load_pickle(path, encoding="ASCII"):
    """Load a pickle that may hold only arrays, NumPy scalars and containers.

    Allowed: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
    ``collections.OrderedDict``, Python numbers, strings and bytes,
    ``np.ndarray`` (any dtype NumPy can name), NumPy scalars and dtypes, as
    written by NumPy 1.x or 2.x with pickle protocols 3 to 5. ``encoding``
    decodes Python 2 strings (``"latin1"`` for Python 2 pickles of arrays,
    such as CIFAR's files).

    Raises:
        UserError: the file is missing or unreadable, truncated or corrupt,
            or asks for anything else (nothing it asks for is run).
    """
    path = os.fspath(path)
    try:
        file = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    with file:
        try:
            return _ArrayOnlyUnpickler(file, path, encoding).load()
        except UserError:
            raise
        except Exception as err:  # pickle raises many types on bad input
            raise UserError(
                f"cannot load {path}: the file is empty, truncated or not a "
                f"pickle ({type(err).__name__}: {_one_line(err, 120)})"
            ) from None


def _check_keys(path, obj, required_keys):
    """UserError unless ``obj`` is a mapping holding every required key."""
    expected = ", ".join(required_keys)
    if not isinstance(obj, Mapping):
        raise UserError(
            f"cannot use {path}: it holds a {type(obj).__name__}, not a dict "
            f"with keys {expected}"
        )
    missing = [key for key in required_keys if key not in obj]
    if missing:
        raise UserError(
            f"cannot use {path}: it lacks key(s) {', '.join(missing)} "
            f"(expected a dict with keys {expected})"
        )


def load_pickle_arrays(path, required_keys=()):
    """Safely load an artefact pickle and check it holds ``required_keys``.

    For adversarial example files (``{'images' (N, C, H, W), 'labels' (N,)}``),
    kernel files (``{'kernel' (N, N), 'labels' (N,)}``) and the like.

    Raises:
        UserError: as :func:`safe_load_pickle`, or the content is not a dict
            holding every key in ``required_keys``.
    """
    obj = safe_load_pickle(path)
    if required_keys:
        _check_keys(os.fspath(path), obj, tuple(required_keys))
    return obj


def save_checkpoint(path, params, lin_params, net_state, meta):
    """Atomically write a checkpoint loadable with plain ``pickle.load``.

    The file holds ``{'params', 'lin_params', 'net_state', 'meta'}``: the
    first three are Haiku trees stored as nested ``dict``s of ``np.ndarray``
    (the original code's format); ``meta`` is a dict of plain values (model,
    width, dataset, n_classes, epoch, flags, ...).
    """
    checkpoint = {
        "params": to_numpy_tree(params),
        "lin_params": to_numpy_tree(lin_params),
        "net_state": to_numpy_tree(net_state),
        "meta": to_numpy_tree(dict(meta or {})),
    }
    atomic_pickle(path, checkpoint)


def load_checkpoint(path):
    """Safely load a checkpoint written by :func:`save_checkpoint`.

    Files of the original code, which lack ``'meta'``, load with ``meta={}``.

    Returns:
        ``{'params', 'lin_params', 'net_state', 'meta'}``.
    Raises:
        UserError: the file is missing, truncated or corrupt, lacks one of
            params / lin_params / net_state, or holds anything but arrays and
            containers.
    """
    checkpoint = load_pickle_arrays(path, CHECKPOINT_KEYS)
    meta = checkpoint.get("meta", {})
    if not isinstance(meta, Mapping):
        raise UserError(
            f"cannot use {os.fspath(path)}: its 'meta' is a "
            f"{type(meta).__name__}, not a dict"
        )
    loaded = {key: checkpoint[key] for key in CHECKPOINT_KEYS}
    loaded["meta"] = dict(meta)
    return loaded


# --------------------------------------------------------------------------
# Entry scripts
# --------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are UserErrors: one line, exit 2."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def number_flag(kind, minimum, strict=False):
    """An argparse type: `kind(text)`, refused below `minimum` (or at it,
    when `strict`), NaN included."""

    def parse(text):
        value = kind(text)
        if not (value > minimum if strict else value >= minimum):
            bound = "greater than" if strict else "at least"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum}")
        return value

    return parse


def run_cli(main_fn):
    """Run an entry script's ``main_fn()`` and turn user errors into exits.

    UserError: ``error: <message>`` on stderr, exit status 2, no traceback.
    KeyboardInterrupt: ``interrupted`` on stderr, exit status 130.

    Returns:
        Whatever ``main_fn`` returns.
    """
    try:
        return main_fn()
    except UserError as err:
        print(f"error: {_one_line(err, limit=1000)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _package_version(distribution):
    """Installed version of ``distribution``, or None when it is absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_output(*args):
    """Stripped stdout of ``git args`` in this repository, or None."""
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def environment_info():
    """Versions, device and code revision, for a run's ``config.json``.

    Returns:
        ``{'python', 'jax', 'jaxlib', 'haiku', 'optax', 'numpy', 'torch',
        'torchvision'`` (version strings, None when not installed),
        ``'jax_backend', 'device_kind', 'device_count', 'hostname',
        'git_commit'`` (None outside a git checkout) and ``'git_dirty'``
        (whether tracked files differ from that commit; None when unknown)}.
    """
    info = {"python": platform.python_version()}
    for key, distribution in _DISTRIBUTIONS.items():
        info[key] = _package_version(distribution)
    devices = jax.devices()
    info["jax_backend"] = jax.default_backend()
    info["device_kind"] = devices[0].device_kind
    info["device_count"] = len(devices)
    info["hostname"] = socket.gethostname()
    info["git_commit"] = _git_output("rev-parse", "HEAD")
    status = _git_output("status", "--porcelain", "--untracked-files=no")
    info["git_dirty"] = None if status is None else bool(status)
    return info
