"""sweeper.runners: the environment of each worker, the GPUs it sees,
and a cell's execution and outcome."""

import os
import textwrap

from helpers import ROOT
from sweeper import grid, runners


def test_worker_environment_pins_one_gpu_each(monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    envs = [runners.worker_env(s, 2, ["3", "5"], "r") for s in range(2)]
    assert envs == [
        {"CUDA_VISIBLE_DEVICES": "3"},
        {"CUDA_VISIBLE_DEVICES": "5"},
    ]
    shared = runners.worker_env(2, 3, ["3", "5"], "r")
    assert shared["CUDA_VISIBLE_DEVICES"] == "3"
    assert shared["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert runners.worker_env(0, 2, [], "r") == {}
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert runners.worker_env(0, 1, [], "r") == {
        "JAX_COMPILATION_CACHE_DIR": os.path.join(ROOT, "r", "jax_cache")
    }


def test_visible_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert runners.visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert runners.visible_gpus() == []


def test_promise_failed_cell_reports_its_own_error(tmp_path):
    """Another process appends an error line to the cell's log after the
    cell's own: the cell is reported with its own `error:` line."""
    log = tmp_path / "logs" / "cell.log"
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            print("error: the cell's own failure", file=sys.stderr, flush=True)
            print("output after it", flush=True)
            with open({str(log)!r}, "a") as other:
                other.write("error: another process's line\\n")
            sys.exit(2)
            """
        )
    )
    cell = grid.Cell(
        id="cell",
        stage="analysis",
        script=str(script),
        args=(),
        deps=(),
        outputs=(str(tmp_path / "never_written"),),
        keys={},
        log=str(log),
    )
    outcome = runners.execute_cell(cell)
    assert outcome.status == runners.FAILED
    assert outcome.message == "exit 2: error: the cell's own failure"
    text = log.read_text()
    assert text.startswith("# ") and str(script) in text.splitlines()[0]
    for line in ("the cell's own failure", "output after", "another process"):
        assert line in text


def _cell(tmp_path, body, outputs):
    """A grid.Cell of a script with `body`, that must write `outputs`."""
    script = tmp_path / "cell.py"
    script.write_text(textwrap.dedent(body))
    return grid.Cell(
        id="cell",
        stage="analysis",
        script=str(script),
        args=(),
        deps=(),
        outputs=tuple(str(tmp_path / name) for name in outputs),
        keys={},
        log=str(tmp_path / "logs" / "cell.log"),
    )


def test_a_cell_that_writes_its_files_is_ok_then_skipped(tmp_path):
    cell = _cell(
        tmp_path,
        f"open({str(tmp_path / 'done.txt')!r}, 'w').write('x')\n",
        ["done.txt"],
    )
    started = []
    outcome = runners.execute_cell(cell, on_start=started.append)
    assert outcome.status == runners.OK and outcome.message == ""
    assert len(started) == 1 and started[0].returncode == 0
    assert outcome.line().startswith("ok          cell (")
    again = runners.execute_cell(cell)
    assert (again.status, again.message) == (
        runners.SKIPPED,
        "finished earlier",
    )


def test_exit_0_without_the_files_is_a_failure(tmp_path):
    cell = _cell(tmp_path, "print('nothing written')\n", ["done.txt"])
    outcome = runners.execute_cell(cell)
    assert outcome.status == runners.FAILED
    assert outcome.message == f"exit 0 but {tmp_path / 'done.txt'} is missing"
    assert outcome.line().endswith(f"; log: {outcome.log}")


def test_the_cells_environment_is_passed(tmp_path):
    body = f"""
        import os
        open({str(tmp_path / "env.txt")!r}, "w").write(os.environ["CELL_X"])
        """
    cell = _cell(tmp_path, body, ["env.txt"])
    assert runners.execute_cell(cell, env={"CELL_X": "7"}).status == "ok"
    assert (tmp_path / "env.txt").read_text() == "7"
