"""Atomic writes and output folders.

Every file is written atomically (a hidden temporary file, renamed); the
temporary files of a killed process are removed by the next one
(:func:`remove_stale_temp_files`), and an output folder can be held by one
process at a time (:class:`FolderLock`).
"""

import contextlib
import fcntl
import json
import os
import pickle
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, BinaryIO

import jax
import numpy as np

from utils import StrPath, UserError, one_line

# Protocol 5 (Python >= 3.8) writes large arrays in-band without an extra copy.
PICKLE_PROTOCOL = 5

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


def pickle_writer(obj: object) -> Callable[[IO[bytes]], object]:
    """A writer for write_file_set: a pickle of ``obj``."""
    return lambda file: pickle.dump(obj, file, protocol=PICKLE_PROTOCOL)


def json_writer(obj: object) -> Callable[[IO[bytes]], object]:
    """A writer for write_file_set: ``obj`` as atomic_write_json writes
    it."""
    text = json_text(obj)
    return lambda file: file.write(text.encode("utf-8"))


def _missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def write_file_set(
    folder: StrPath,
    writers: Mapping[str, Callable[[IO[bytes]], object]],
    remove: Sequence[str] = (),
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Writes a set of files so that it appears whole or not at all.

    Each file (a path in ``folder``: its writer) is written to a temporary
    file first; only when every one is written and ``before_commit()``
    (e.g. a check for Ctrl-C) has returned are they renamed into place, in
    the order given (put the file that marks the set complete last), and
    the files of ``remove`` not in the set deleted (an earlier set the new
    one replaces). On any failure, KeyboardInterrupt included, the
    temporary files are removed, and so are the folders this call created
    (``folder`` and its missing parents): nothing is left behind.

    Raises:
        UserError: the folder cannot be created or a file cannot be written
            (e.g. a full disk).
        Anything else a writer or ``before_commit`` raises, unchanged.
    """
    folder = os.fspath(folder)
    created = _missing_folders(folder)
    staged: dict[str, str] = {}
    try:
        ensure_writable_dir(folder)
        for path, write_fn in writers.items():
            fd, staged[path] = _create_temp_file(
                folder, os.path.basename(path)
            )
            with os.fdopen(fd, "wb") as file:
                write_fn(file)
                file.flush()
                os.fsync(file.fileno())
        if before_commit is not None:
            before_commit()
    except BaseException as err:
        for tmp_path in staged.values():
            _remove_quietly(tmp_path)
        for made in created:
            with contextlib.suppress(OSError):
                os.rmdir(made)
        if isinstance(err, OSError):
            raise _unwritable("cannot write in", folder, err) from None
        raise
    for path, tmp_path in staged.items():
        os.replace(tmp_path, path)
    for path in remove:
        if path not in writers:
            _remove_quietly(path)
    _fsync_dir(folder)


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


def json_text(obj: object) -> str:
    """``obj`` as JSON text, indent 2, keys sorted, a line break at the end.

    NumPy scalars become Python numbers and arrays (NumPy or JAX) nested lists.
    """
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return text + "\n"


def atomic_write_json(path: StrPath, obj: object) -> None:
    """Atomically replace ``path`` with ``obj`` as JSON (json_text)."""
    atomic_write_text(path, json_text(obj))
