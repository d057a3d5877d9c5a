"""Tests of store.resume: a run's resume file written, read back, and
refused where it is of an earlier layout."""

import numpy as np
import pytest

import utils
from helpers import load_pickle
from store import layout, resume


def _record():
    return resume.ResumeRecord(
        stage="linear",
        flags={"loaders": "CC", "random_seed": 0},
        results={"standard": {"linf": [0.5]}},
        state={"params": {"w": np.arange(3, dtype=np.float32)}},
        position={"epoch": 2, "step": 5},
        warnings=["w"],
    )


def test_written_record_reads_back_equal(tmp_path):
    assert resume.path(str(tmp_path)) == str(tmp_path / layout.STATE)
    assert resume.read(str(tmp_path)) is None
    assert resume.stage(str(tmp_path)) is None
    saved = _record()
    resume.write(str(tmp_path), saved)
    loaded = resume.read(str(tmp_path))
    assert utils.tree_equal(loaded.state, saved.state)
    assert (loaded.stage, loaded.flags, loaded.results) == (
        saved.stage,
        saved.flags,
        saved.results,
    )
    assert (loaded.position, loaded.warnings) == (saved.position, ["w"])
    assert resume.stage(str(tmp_path)) == "linear"


def test_the_file_is_plain_dicts_with_a_version(tmp_path):
    resume.write(str(tmp_path), _record())
    raw = load_pickle(resume.path(str(tmp_path)))
    assert raw["version"] == resume.STATE_VERSION
    assert set(raw) == {
        "stage",
        "flags",
        "results",
        "state",
        "position",
        "warnings",
        "version",
    }


@pytest.mark.parametrize("version", [None, 1, resume.STATE_VERSION + 1])
def test_other_layouts_are_refused_in_one_line(tmp_path, version):
    record = dict(_record().as_dict(), version=version)
    if version is None:
        del record["version"]
    with pytest.raises(utils.UserError) as info:
        resume.ResumeRecord.from_dict(record, "where/train_state.pkl")
    message = str(info.value)
    assert message.startswith("where/train_state.pkl was written by an")
    assert "--overwrite" in message and "\n" not in message


def test_a_damaged_file_is_a_user_error(tmp_path):
    (tmp_path / layout.STATE).write_bytes(b"\x80\x04 cut")
    for read in (resume.read, resume.stage):
        with pytest.raises(utils.UserError, match=layout.STATE):
            read(str(tmp_path))
