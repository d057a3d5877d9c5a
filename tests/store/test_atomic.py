"""Tests of store.atomic: atomic writes that leave the old file or the new
one, folders made or checked, the temporary files of killed writers cleaned
up, and folder locks that die with their holder."""

import io
import json
import os
import pickle
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import utils
from helpers import ROOT, SUBPROCESS_TIMEOUT_S
from store import atomic

# --------------------------------------------------------------------------
# Atomic writes and folders
# --------------------------------------------------------------------------


class _FailsToPickle:
    """Raises ``error`` when pickled."""

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_write_keeps_old_file(tmp_path, error):
    path = tmp_path / "parameters_final.pkl"
    atomic.atomic_pickle(path, {"old": np.arange(3)})
    before = path.read_bytes()
    broken = {"a": np.zeros(100_000), "b": _FailsToPickle(error)}
    with pytest.raises(type(error)):
        atomic.atomic_pickle(path, broken)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]


def test_atomic_writers_create_parents(tmp_path):
    base = tmp_path / "a" / "b"
    atomic.atomic_write_bytes(base / "x.bin", b"\x00\x01")
    atomic.atomic_write_text(base / "x.txt", "héllo\n")
    assert (base / "x.bin").read_bytes() == b"\x00\x01"
    assert (base / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    assert sorted(os.listdir(base)) == ["x.bin", "x.txt"]


def test_atomic_files_get_the_usual_mode(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    atomic.atomic_write_bytes(tmp_path / "atomic", b"")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_json_converts_numpy_and_jax(tmp_path):
    path = tmp_path / "config.json"
    atomic.atomic_write_json(
        path,
        {
            "b": np.float32(0.5),
            "a": np.arange(3),
            "c": jnp.ones(2),
            "d": np.bool_(True),
            "e": (1, "x"),
        },
    )
    text = path.read_text()
    assert json.loads(text) == {
        "a": [0, 1, 2],
        "b": 0.5,
        "c": [1.0, 1.0],
        "d": True,
        "e": [1, "x"],
    }
    assert text.index('"a"') < text.index('"b"')
    assert '\n  "a": [' in text


def test_write_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    target = blocker / "sub" / "x.pkl"
    with pytest.raises(utils.UserError, match=str(target)):
        atomic.atomic_pickle(target, {})


def test_ensure_writable_dir(tmp_path):
    made = atomic.ensure_writable_dir(tmp_path / "runs" / "one")
    assert made == str(tmp_path / "runs" / "one")
    assert os.path.isdir(made) and os.listdir(made) == []
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    with pytest.raises(utils.UserError) as info:
        atomic.ensure_writable_dir(blocker / "sub")
    assert str(blocker / "sub") in str(info.value)
    assert "\n" not in str(info.value)


def test_check_writable_dir_creates_nothing(tmp_path):
    target = tmp_path / "runs" / "one"
    assert atomic.check_writable_dir(target) == str(target)
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    for path in (blocker, blocker / "sub" / "deeper"):
        with pytest.raises(utils.UserError) as info:
            atomic.check_writable_dir(path)
        assert str(path) in str(info.value) and "is a file" in str(info.value)
    assert os.listdir(tmp_path) == ["plain_file"]


def test_atomic_write_stream_copies_what_it_reads(tmp_path):
    content = bytes(range(256)) * 300
    atomic.atomic_write_stream(tmp_path / "copy.bin", io.BytesIO(content))
    assert (tmp_path / "copy.bin").read_bytes() == content


def test_dir_write_problem_names_the_file_in_the_way(tmp_path):
    assert atomic.dir_write_problem(tmp_path / "new" / "deeper") is None
    assert os.listdir(tmp_path) == []
    blocker = tmp_path / "plain_file"
    blocker.write_text("")
    problem = atomic.dir_write_problem(blocker / "sub")
    assert problem == ("file", str(blocker), "")


def test_write_file_set_writes_every_file_and_removes_the_old(tmp_path):
    folder = tmp_path / "out"
    old = folder / "old.pkl"
    folder.mkdir()
    old.write_bytes(b"old")
    atomic.write_file_set(
        folder,
        {
            str(folder / "a.pkl"): atomic.pickle_writer({"a": 1}),
            str(folder / "done.json"): atomic.json_writer({"b": [2]}),
        },
        remove=[str(old), str(folder / "a.pkl")],
    )
    assert sorted(os.listdir(folder)) == ["a.pkl", "done.json"]
    with open(folder / "a.pkl", "rb") as f:
        assert pickle.load(f) == {"a": 1}
    assert (folder / "done.json").read_text() == atomic.json_text({"b": [2]})


@pytest.mark.parametrize("error", [RuntimeError("late"), KeyboardInterrupt()])
def test_write_file_set_leaves_nothing_when_it_fails(tmp_path, error):
    folder = tmp_path / "new" / "out"
    keep = tmp_path / "keep.pkl"
    keep.write_bytes(b"kept")

    def fail():
        raise error

    with pytest.raises(type(error)):
        atomic.write_file_set(
            folder,
            {str(folder / "a.pkl"): atomic.pickle_writer({"a": 1})},
            remove=[str(keep)],
            before_commit=fail,
        )
    assert os.listdir(tmp_path) == ["keep.pkl"]
    assert keep.read_bytes() == b"kept"


# --------------------------------------------------------------------------
# Temporary files of killed writers, and folder locks
# --------------------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    host = atomic.socket.gethostname()
    stale = f".parameters_checkpoint_0.pkl.tmp-{host}-{_dead_pid()}-{'a' * 12}"
    live = f".results.pkl.tmp-{host}-{os.getpid()}-{'b' * 12}"
    other_host = f".results.pkl.tmp-elsewhere-{_dead_pid()}-{'c' * 12}"
    legacy = f".parameters_final.pkl.{'d' * 12}.tmp"
    unrelated = [".hidden", "notes.tmp", "parameters_final.pkl"]
    for name in [stale, live, other_host, legacy, *unrelated]:
        (tmp_path / name).write_bytes(b"x")
    removed = atomic.remove_stale_temp_files(str(tmp_path))
    assert sorted(removed) == sorted([stale, legacy])
    assert sorted(os.listdir(tmp_path)) == sorted(
        [live, other_host, *unrelated]
    )


def test_temp_files_are_named_for_the_cleanup(tmp_path, monkeypatch):
    names = []
    real_replace = os.replace

    def spy(source, target):
        names.append(os.path.basename(source))
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", spy)
    atomic.atomic_pickle(tmp_path / "x.pkl", {"a": 1})
    match = atomic._TEMP_NAME.match(names[0])
    assert match and match["target"] == "x.pkl"
    assert int(match["pid"]) == os.getpid()


def test_folder_lock_refuses_a_second_holder_and_frees_on_exit(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom store import atomic\n"
            f"with atomic.FolderLock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(utils.UserError) as info:
            with atomic.FolderLock(str(tmp_path)):
                pass
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "--save_path" in message
    finally:
        holder.kill()  # as a crash would: no clean release
        holder.wait(timeout=SUBPROCESS_TIMEOUT_S)
    assert (tmp_path / ".lock").exists()  # left by the killed holder
    with atomic.FolderLock(str(tmp_path)):
        pass  # its lock died with it
    assert not (tmp_path / ".lock").exists()
