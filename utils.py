"""Errors, files and checkpoints shared by every entry script.

Checkpoints and other artefacts are pickles of plain nested ``dict``s of
NumPy arrays, so that a notebook can read them with ``pickle.load``. Reading
them back here goes through :func:`safe_load_pickle`, which refuses any pickle
that asks for more than NumPy arrays, NumPy scalars, dtypes and containers
(JAX arrays pickled by JAX itself load as NumPy arrays, without JAX code).

Every file is written atomically (a hidden temporary file, renamed); the
temporary files of a killed process are removed by the next one
(:func:`remove_stale_temp_files`), and an output folder can be held by one
process at a time (:class:`FolderLock`).
"""

import fcntl
import importlib
import importlib.metadata
import json
import os
import pickle
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, BinaryIO, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

# Protocol 5 (Python >= 3.8) writes large arrays in-band without an extra copy.
PICKLE_PROTOCOL = 5

# A nested tree of arrays: mappings (Haiku's dicts), lists and tuples whose
# leaves are NumPy or JAX arrays, NumPy scalars or plain Python values.
PyTree = Any
# A path as the file functions take it: a str or an os.PathLike of one.
StrPath = str | os.PathLike[str]

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
    # Python values that some protocols build by calling their type
    # (protocol 2 names the module `__builtin__`, as Python 2 did).
    **{
        (module, name): ("builtins", name)
        for module in ("builtins", "__builtin__")
        for name in ("complex", "set", "frozenset", "bytearray")
    },
    ("__builtin__", "bytes"): ("builtins", "bytes"),
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


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with whitespace runs collapsed, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Directories and atomic writes
# --------------------------------------------------------------------------


class FolderLock:
    """An exclusive lock on an output folder, held while a run writes there.

    The lock is ``fcntl.flock`` on the hidden file ``.lock`` in the folder,
    so the operating system releases it when the holder exits, however it
    exits: a killed run never blocks the next one (its ``.lock`` file stays
    until the next run takes and removes it). The file records the holder
    (host, pid, start time, command line) for the message another process
    gets. Use as a context manager; the folder must exist.

    Raises (on entering):
        UserError: another process holds the lock; the message names it.
    """

    NAME = ".lock"

    def __init__(self, directory: str, flag: str = "--save_path") -> None:
        self.path = os.path.join(os.fspath(directory), self.NAME)
        self.directory = os.fspath(directory)
        self.flag = flag
        self._fd = None

    def __enter__(self) -> "FolderLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise _unwritable("cannot lock", self.directory, err) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.directory} is in use by another run ({holder}): "
                    f"wait for it to end, or choose another {self.flag}"
                ) from None
            # The holder before us removes the file as it ends: the lock
            # counts only on the file that is still there.
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            _remove_quietly(self.path)  # while still holding the lock
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    """The holder recorded in a lock file, as text for a message."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode())
        return (
            f"pid {holder['pid']} on {holder['host']}, started "
            f"{holder['started']}: {one_line(holder['command'], 160)}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _unwritable(what: str, path: str, err: OSError) -> UserError:
    """UserError for an OSError met while creating or writing ``path``."""
    return UserError(
        f"{what} {path}: {err.strerror or err}; "
        "choose another path or fix its permissions"
    )


def ensure_writable_dir(path: StrPath) -> str:
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


def dir_write_problem(path: StrPath) -> tuple[str, str, str] | None:
    """Why directory ``path`` could not be created and written, finding
    out without creating anything that stays: the nearest folder that
    exists (``path`` itself, or the one its missing parents would go in)
    gets a probe file, removed at once.

    Returns:
        None when it could; else ``('file', F, '')``, F the file in the
        way (``path`` or a parent), or ``('unwritable', D, reason)``, D the
        nearest existing folder and reason the system's words.
    """
    existing = os.path.abspath(os.fspath(path))
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            return ("file", existing, "")
        existing = os.path.dirname(existing)
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write_test.")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        return ("unwritable", existing, err.strerror or str(err))
    return None


def check_writable_dir(path: StrPath) -> str:
    """Check that directory ``path`` could be created and written, creating
    nothing that stays (:func:`dir_write_problem`). For the checks a script
    makes before its outputs' folder is created (with
    :func:`ensure_writable_dir`, once every check passed).

    Returns:
        ``path`` as a ``str``.
    Raises:
        UserError: ``path`` or a parent is a file, or the nearest existing
            folder cannot be written.
    """
    path = os.fspath(path)
    problem = dir_write_problem(path)
    if problem is None:
        return path
    kind, existing, reason = problem
    if kind == "file":
        raise UserError(
            f"cannot create directory {path}: {existing} is a file; "
            "choose another path"
        )
    what = "write in" if existing == os.path.abspath(path) else "create"
    raise UserError(
        f"cannot {what} directory {path}: {reason}; choose another path or "
        "fix its permissions"
    )


def output_dir(model_path: str, bonus_dir: str) -> str:
    """Where the scripts that read a checkpoint write: the folder
    ``{dirname(model_path)}/{bonus_dir}``, normalised (not created)."""
    return os.path.normpath(
        os.path.join(os.path.dirname(model_path), bonus_dir)
    )


def _remove_quietly(path: str) -> None:
    """Remove file ``path`` if it exists; ignore any error."""
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
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


# A temporary file's name: `.{target}.tmp-{host}-{pid}-{12 hex digits}`, so
# that the next process can tell whether the process that wrote it is gone.
_TEMP_NAME = re.compile(
    r"^\.(?P<target>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{12}$"
)
# The names of earlier versions of this code: `.{target}.{12 hex}.tmp`.
_LEGACY_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")


def _create_temp_file(directory: str, basename: str) -> tuple[int, str]:
    """Open a new, uniquely named hidden file in ``directory`` for writing.

    Unlike ``tempfile.mkstemp`` (mode 0600), the file gets the mode any new
    file would get under the process umask, and keeps it after the rename.
    The name records the host and process (see ``_TEMP_NAME``).

    Returns:
        (file descriptor, path of the file).
    """
    owner = f"{socket.gethostname()}-{os.getpid()}"
    while True:
        tmp_path = os.path.join(
            directory, f".{basename}.tmp-{owner}-{os.urandom(6).hex()}"
        )
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        return fd, tmp_path


def _process_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temp_files(directory: str) -> list[str]:
    """Removes the temporary files that killed writers left in `directory`.

    A temporary file of ``_atomic_write`` is stale when the process named in
    it, on this host, no longer runs (a file of another host, or of a
    running process, is kept), or when it has the name earlier versions of
    this code used. Files of other programs are never touched.

    Returns:
        The names removed.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    host = socket.gethostname()
    removed = []
    for name in names:
        match = _TEMP_NAME.match(name)
        if match:
            stale = match["host"] == host and not _process_alive(
                int(match["pid"])
            )
        else:
            stale = _LEGACY_TEMP_NAME.match(name) is not None
        if stale and os.path.isfile(os.path.join(directory, name)):
            _remove_quietly(os.path.join(directory, name))
            removed.append(name)
    return removed


def _atomic_write(
    path: StrPath,
    write_fn: Callable[[IO[Any]], object],
    mode: str = "wb",
    encoding: str | None = None,
) -> None:
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


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Atomically replace file ``path`` with the bytes ``data``."""
    _atomic_write(path, lambda file: file.write(data))


def atomic_write_stream(path: StrPath, stream: BinaryIO) -> None:
    """Atomically replace file ``path`` with what binary ``stream`` reads
    (copied in chunks, never held whole in memory)."""
    _atomic_write(path, lambda file: shutil.copyfileobj(stream, file))


def atomic_write_text(path: StrPath, text: str) -> None:
    """Atomically replace file ``path`` with ``text``, UTF-8 encoded."""
    _atomic_write(
        path, lambda file: file.write(text), mode="w", encoding="utf-8"
    )


def atomic_pickle(path: StrPath, obj: object) -> None:
    """Atomically replace file ``path`` with a pickle of ``obj``.

    The object is pickled straight into the temporary file, so a large
    checkpoint is never held twice in memory.
    """
    _atomic_write(
        path, lambda file: pickle.dump(obj, file, protocol=PICKLE_PROTOCOL)
    )


def _json_default(obj: object) -> object:
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


def atomic_write_json(path: StrPath, obj: object) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON, indent 2, keys sorted.

    NumPy scalars become Python numbers and arrays (NumPy or JAX) nested lists.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(path, text + "\n")


# --------------------------------------------------------------------------
# Trees of arrays
# --------------------------------------------------------------------------


def to_numpy_tree(tree: PyTree) -> PyTree:
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


def _leaf_equal(a: object, b: object) -> bool:
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


def tree_equal(a: PyTree, b: PyTree) -> bool:
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


def flatten_opt_state(opt_state: PyTree) -> list[np.ndarray]:
    """Leaves of an optax optimiser state as a list of NumPy arrays.

    The order is that of ``jax.tree_util.tree_leaves``; restore the state
    with :func:`unflatten_like` on a freshly initialised state.
    """
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(opt_state)]


def unflatten_like(template: PyTree, leaves: Sequence[np.ndarray]) -> PyTree:
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


# --------------------------------------------------------------------------
# Safe pickles and checkpoints
# --------------------------------------------------------------------------


# Bounds on what a pickle may build: containers nested deeper, or more
# objects in all, are refused. Checkpoints nest about 4 deep and hold a few
# hundred arrays; the bounds leave ample room and stop deliberate bombs.
MAX_PICKLE_DEPTH = 64
MAX_PICKLE_OBJECTS = 1_000_000

# The array reconstructors JAX pickles its arrays with: jax.Array
# (`_reconstruct_array(fun, args, arr_state, aval_state)`) and the
# DeviceArray of JAX before 0.4 (`reconstruct_device_array(fun, args,
# arr_state)`). Both call fun(*args) (NumPy's `_reconstruct`), give the
# result its state, and put it on a device; here the NumPy array is kept.
_JAX_RECONSTRUCTORS = {
    ("jax._src.array", "_reconstruct_array"),
    ("jax._src.device_array", "reconstruct_device_array"),
}


class _RefusedPickle(Exception):
    """Raised inside the unpickler; safe_load_pickle adds the path."""


def _numpy_from_jax_pickle(
    fun: Callable[..., np.ndarray],
    args: tuple,
    arr_state: object,
    aval_state: object = None,
) -> np.ndarray:
    """What a JAX array reconstructor builds, as a NumPy array.

    Only NumPy's own `_reconstruct` of an ndarray is accepted as `fun`; no
    JAX code is imported or run. `aval_state` (the weak type) is dropped.
    """
    del aval_state
    reconstruct = importlib.import_module("numpy._core.multiarray")
    if fun is not reconstruct._reconstruct or not (
        isinstance(args, tuple) and args and args[0] is np.ndarray
    ):
        raise _RefusedPickle(
            "it asks a JAX array reconstructor to call something other "
            "than NumPy's array constructor"
        )
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol 2 uses it: bytes from a latin-1 str."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise _RefusedPickle("it asks _codecs.encode for something else")
    return text.encode("latin1")


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``,
    JAX's array reconstructors (as NumPy arrays) and protocol 2's bytes.

    Every global a pickle names (its classes and the functions it calls) goes
    through ``find_class``, so refusing there stops any other code from
    running. Most builtin values need no global; the few that some protocols
    build by calling their type are on the list.
    """

    def find_class(self, module: str, name: str) -> object:
        """The allowed object for ``module.name``; refused otherwise."""
        if (module, name) in _JAX_RECONSTRUCTORS:
            return _numpy_from_jax_pickle
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise _RefusedPickle(
                f"it asks for {module}.{name}, which is not an array or "
                "container"
            )
        return getattr(importlib.import_module(target[0]), target[1])

    def persistent_load(self, pid: object) -> NoReturn:
        """Refuse persistent ids: plain pickles of arrays have none."""
        raise _RefusedPickle(
            "it uses a persistent id, which is not an array or container"
        )


def _check_bounds(obj: object) -> None:
    """Refuses containers nested deeper than MAX_PICKLE_DEPTH or more than
    MAX_PICKLE_OBJECTS objects in all; walks without recursion."""
    stack, count = [(obj, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > MAX_PICKLE_OBJECTS:
            raise _RefusedPickle(
                f"it holds more than {MAX_PICKLE_OBJECTS:,} objects"
            )
        if isinstance(item, Mapping):
            children = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if children and depth + 1 > MAX_PICKLE_DEPTH:
            raise _RefusedPickle(
                f"its containers nest deeper than {MAX_PICKLE_DEPTH} levels"
            )
        stack.extend((child, depth + 1) for child in children)


def safe_load_pickle(path: StrPath, encoding: str = "ASCII") -> PyTree:
    """Load a pickle that may hold only arrays, NumPy scalars and containers.

    Allowed: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
    ``collections.OrderedDict``, Python numbers, strings and bytes,
    ``np.ndarray`` (any dtype NumPy can name), NumPy scalars and dtypes, as
    written by NumPy 1.x or 2.x with pickle protocols 2 to 5; JAX arrays
    pickled by JAX (``jax.Array``, and the ``DeviceArray`` of JAX before 0.4)
    become NumPy arrays. At most MAX_PICKLE_DEPTH levels of containers and
    MAX_PICKLE_OBJECTS objects.
    ``encoding`` decodes Python 2 strings (``"latin1"`` for Python 2
    pickles of arrays, such as CIFAR's files).

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
            obj = _ArrayOnlyUnpickler(file, encoding=encoding).load()
            _check_bounds(obj)
            return obj
        except _RefusedPickle as err:
            raise UserError(f"refusing to load {path}: {err}") from None
        except RecursionError:
            raise UserError(
                f"refusing to load {path}: its containers nest too deeply"
            ) from None
        except Exception as err:  # pickle raises many types on bad input
            raise UserError(
                f"cannot load {path}: the file is empty, truncated or not a "
                f"pickle ({type(err).__name__}: {one_line(err, 120)})"
            ) from None


def _check_keys(
    path: str, obj: object, required_keys: tuple[str, ...]
) -> None:
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


def load_pickle_arrays(
    path: StrPath, required_keys: Iterable[str] = ()
) -> PyTree:
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


def save_checkpoint(
    path: StrPath,
    params: PyTree,
    lin_params: PyTree,
    net_state: PyTree,
    meta: Mapping[str, Any] | None,
) -> None:
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


def load_checkpoint(path: StrPath) -> dict[str, Any]:
    """Safely load a checkpoint written by :func:`save_checkpoint`.

    Files of the original code, which lack ``'meta'``, load with ``meta={}``;
    their JAX arrays load as NumPy arrays.

    Returns:
        ``{'params', 'lin_params', 'net_state', 'meta'}``.
    Raises:
        UserError: the file is missing, truncated or corrupt, lacks one of
            params / lin_params / net_state, holds anything but arrays and
            containers, or holds parameters or state that are not finite.
    """
    checkpoint = load_pickle_arrays(path, CHECKPOINT_KEYS)
    meta = checkpoint.get("meta", {})
    if not isinstance(meta, Mapping):
        raise UserError(
            f"cannot use {os.fspath(path)}: its 'meta' is a "
            f"{type(meta).__name__}, not a dict"
        )
    loaded = {key: checkpoint[key] for key in CHECKPOINT_KEYS}
    for key in CHECKPOINT_KEYS:
        where = _first_non_finite(loaded[key])
        if where is not None:
            raise UserError(
                f"cannot use {os.fspath(path)}: its {key} hold NaN or "
                f"infinite values (at {where}); the run that wrote it "
                "diverged: use an earlier checkpoint"
            )
    loaded["meta"] = dict(meta)
    return loaded


def _first_non_finite(tree: PyTree, prefix: str = "") -> str | None:
    """The path of the first float array of `tree` with a NaN or an
    infinity (e.g. 'linear/w'), or None."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = _first_non_finite(value, f"{prefix}{key}/")
            if where is not None:
                return where
        return None
    if isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            where = _first_non_finite(value, f"{prefix}{index}/")
            if where is not None:
                return where
        return None
    array = np.asarray(tree)
    if np.issubdtype(array.dtype, np.inexact) and not np.all(
        np.isfinite(array)
    ):
        return prefix.rstrip("/") or "the top level"
    return None


# --------------------------------------------------------------------------
# What a run records of its environment
# --------------------------------------------------------------------------


def _package_version(distribution: str) -> str | None:
    """Installed version of ``distribution``, or None when it is absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_output(*args: str) -> str | None:
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


def environment_info() -> dict[str, str | int | bool | None]:
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
