"""The resume file of a run (run_exp.py --resume): its layout, reading and
writing.

`{save_path}/train_state.pkl` (layout.STATE) is a pickle of
ResumeRecord.as_dict(): plain dicts and NumPy arrays, with a `version`.
"""

import dataclasses
import os

from store import atomic, layout, pickles
from utils import UserError

STAGES = ("standard", "linear", "done")
STATE_VERSION = 2  # of the resume file's layout


@dataclasses.dataclass
class ResumeRecord:
    """What `train_state.pkl` holds: enough to continue the run exactly.

    stage: 'standard' (phase 1 and its test), 'linear' (phase 2 and its
      test) or 'done'.
    flags: run_flags of the run.
    results: the results so far (see `results_template`).
    state: the TrainState of the stage as plain NumPy trees, or None.
    position: the LoopPosition of the stage as plain values, or None.
    warnings: warnings given so far (also written to results.json).
    """

    stage: str
    flags: dict
    results: dict
    state: dict | None = None
    position: dict | None = None
    warnings: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), version=STATE_VERSION)

    @classmethod
    def from_dict(cls, record: dict, path: str) -> "ResumeRecord":
        if record.get("version") != STATE_VERSION:
            raise UserError(
                f"{path} was written by an earlier version of this code and "
                "cannot be resumed: start the run again in another "
                "--save_path, or pass --overwrite"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


def path(save_path: str) -> str:
    """The resume file of the run in `save_path`."""
    return os.path.join(save_path, layout.STATE)


def read(save_path: str) -> ResumeRecord | None:
    """The run's ResumeRecord, or None where it has no resume file.

    Raises:
      UserError: the file is damaged or of an earlier layout.
    """
    file = path(save_path)
    if not os.path.exists(file):
        return None
    return ResumeRecord.from_dict(pickles.safe_load_pickle(file), file)


def write(save_path: str, record: ResumeRecord) -> None:
    """Writes `record` as the resume file of the run in `save_path`
    (atomically: a reader sees the old file or the new one)."""
    atomic.atomic_pickle(path(save_path), record.as_dict())


def stage(save_path: str) -> str | None:
    """The recorded stage ('standard', 'linear', 'done') of the run in
    `save_path`, or None where it has no resume file.

    Raises:
      UserError: the file cannot be read (being written, or damaged).
    """
    file = path(save_path)
    if not os.path.exists(file):
        return None
    return pickles.safe_load_pickle(file).get("stage")
