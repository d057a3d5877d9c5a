"""sweep.py --slurm against a real single-node SLURM (Debian's slurm-wlm
and munge, started here in a temporary configuration): the tiny grid runs
to completion through the scheduler and writes the same files as the local
run. Skipped, with the reason, where SLURM cannot be started. Also: how the
cells of a stage are grouped into job arrays and their dependencies."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest

from helpers import (
    assert_close,
    assert_one_line_error,
    load_pickle,
    run_script,
)
from sweep_fixtures import outcome_lines, tiny_config, write_config
from sweeper import grid, runners

SBIN = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "srun", "sinfo")
# Limits on waiting for the daemons, not performance expectations.
START_LIMIT_S = 300


# --------------------------------------------------------------------------
# Job arrays and their dependencies (no SLURM needed)
# --------------------------------------------------------------------------


def _cells(*ids):
    return [grid.Cell(i, "eval", "x.py", (), (), (), {}, "log") for i in ids]


def _group_ids(groups):
    return [([c.id for c in cells], dep) for cells, dep in groups]


def test_cells_needing_the_same_job_share_an_array():
    cells = _cells("a", "b", "c")
    deps = {"a": ["10_0"], "b": ["10_0"], "c": ["10_1"]}
    groups = runners._groups(cells, deps, {"10": 2})
    assert _group_ids(groups) == [
        (["a", "b"], "afterok:10_0"),
        (["c"], "afterok:10_1"),
    ]


def test_task_for_task_cells_form_an_aftercorr_array():
    cells = _cells("e2", "e0", "e1")
    deps = {"e0": ["20_0"], "e1": ["20_1"], "e2": ["20_2"]}
    groups = runners._groups(cells, deps, {"20": 3})
    assert _group_ids(groups) == [(["e0", "e1", "e2"], "aftercorr:20")]
    # Not every task of the array: one job each, after its own task.
    groups = runners._groups(cells[:2], deps, {"20": 3})
    assert _group_ids(groups) == [
        (["e0"], "afterok:20_0"),
        (["e2"], "afterok:20_2"),
    ]


def test_a_whole_array_is_named_by_its_id():
    cells = _cells("analysis")
    deps = {"analysis": ["30_0", "30_1", "30_2", "31_0"]}
    groups = runners._groups(cells, deps, {"30": 3, "31": 2})
    assert _group_ids(groups) == [(["analysis"], "afterok:30:31_0")]
    assert runners._dependency(["40"], {}) == "afterok:40"
    assert runners._dependency([], {}) is None
    assert _group_ids(runners._groups(_cells("p"), {"p": []}, {})) == [
        (["p"], None)
    ]


def test_slurm_refused_without_sbatch(tmp_path):
    """Where there is no SLURM, --slurm stops with one line, having
    written nothing."""
    config = write_config(
        tmp_path / "g.toml", tiny_config(tmp_path / "root", tmp_path)
    )
    result = run_script(
        "sweep.py", config, "--slurm", env={"PATH": str(tmp_path)}
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--slurm", "sbatch")
    assert not (tmp_path / "root").exists()


# --------------------------------------------------------------------------
# A real single-node SLURM
# --------------------------------------------------------------------------


def _why_no_slurm():
    """Why SLURM cannot be started here, or None."""
    if os.geteuid() != 0:
        return "SLURM test needs root (to run munged, slurmctld and slurmd)"
    for name in DAEMONS + CLIENTS:
        if shutil.which(name, path=SBIN) is None:
            return f"{name} not found: apt-get install slurm-wlm munge"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(base, node, ports):
    cpus = os.cpu_count() or 1
    return f"""ClusterName=sweeptest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={base}/munge/munge.sock
CredType=cred/munge
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _last_log_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


@pytest.fixture(scope="module")
def slurm_cluster():
    """munged, slurmctld and slurmd in a temporary configuration (state,
    spool and logs in a temporary folder, free ports, this host as the one
    node); yields the environment that points clients at it; stops the
    daemons."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    # Short: the munge socket's path must fit a UNIX socket address.
    base = tempfile.mkdtemp(prefix="slurm", dir="/tmp")
    for sub in ("munge", "state", "spool", "log"):
        os.makedirs(os.path.join(base, sub), mode=0o700)
    key = os.path.join(base, "munge", "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
        f.write(os.urandom(1024))
    node = socket.gethostname().split(".")[0]
    conf = os.path.join(base, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_slurm_conf(base, node, (_free_port(), _free_port())))
    env = dict(os.environ, SLURM_CONF=conf)
    processes = []

    def start(name, *args):
        log = open(os.path.join(base, "log", f"{name}.out"), "w")
        processes.append(
            subprocess.Popen(
                [shutil.which(name, path=SBIN), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        )
        log.close()

    def wait_for(ready, what):
        deadline = time.monotonic() + START_LIMIT_S
        while not ready():
            for process, name in zip(processes, DAEMONS, strict=False):
                if process.poll() is not None:
                    out = os.path.join(base, "log", f"{name}.out")
                    return f"{name} exited: {_last_log_line(out)}"
            if time.monotonic() > deadline:
                return f"{what} not ready in {START_LIMIT_S} s"
            time.sleep(0.2)
        return None

    try:
        m = os.path.join(base, "munge")
        start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={m}/munge.sock",
            f"--key-file={key}",
            f"--log-file={m}/munged.log",
            f"--pid-file={m}/munged.pid",
            f"--seed-file={m}/munged.seed",
        )
        problem = wait_for(
            lambda: os.path.exists(os.path.join(m, "munge.sock")), "munged"
        )
        if problem is None:
            start("slurmctld", "-D", "-f", conf)
            start("slurmd", "-D", "-f", conf)

            def idle():
                result = subprocess.run(
                    ["sinfo", "--noheader", "--format=%T"],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                return result.returncode == 0 and "idle" in result.stdout

            problem = wait_for(idle, "the SLURM node")
        if problem is not None:
            pytest.skip(f"SLURM could not be started: {problem}")
        yield {"SLURM_CONF": conf}
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(base, ignore_errors=True)


SKIPPED_KEYS = {
    "environment",
    "command",
    "seconds",
    "compile_seconds",
    "images_per_s",
}


def _files(root):
    """Relative paths of the cells' files under an output root (not the
    logs, the scheduler's folder, the compilation cache or the record)."""
    out = set()
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        if rel == ".":
            dirs[:] = [
                d for d in dirs if d not in ("logs", "slurm", "jax_cache")
            ]
            names = [n for n in names if n != "sweep.json"]
        out |= {os.path.normpath(os.path.join(rel, n)) for n in names}
    return out


def _same(got, want, roots, where):
    """`got` equals `want` (the same file of the other run): arrays and
    floats to float32 rounding, strings with one root put for the other;
    timing and environment records skipped."""
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            if key not in SKIPPED_KEYS:
                _same(got[key], want[key], roots, f"{where}/{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, roots, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        if want.dtype.kind in "fc":
            assert_close(got, want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got, want, err_msg=where)
    elif isinstance(want, str):
        assert got.replace(roots[0], roots[1]) == want, where
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-6), where
    else:
        assert got == want, where


def _load(path):
    if path.endswith(".pkl"):
        return load_pickle(path)
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    return None


@pytest.mark.slow
def test_slurm_run_equals_local_run(slurm_cluster, tiny_local_run, tmp_path):
    assert tiny_local_run["result"].returncode == 0
    root = str(tmp_path / "slurm_root")
    result = run_script(
        "sweep.py",
        tiny_local_run["config"],
        "--slurm",
        "--output_root",
        root,
        "--poll_s",
        "1",
        "--no_progress",
        env=slurm_cluster,
    )
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    out = result.stdout
    # One array per stage and parent: phase 2 after its phase-1 job, each
    # evaluation after its own phase-2 task, the kernels after phase 1.
    submitted = dict(
        re.findall(r"^submitted +(\w+) job (\S+ .*)$", out, re.MULTILINE)
    )
    phase1_job = re.match(r"(\d+): 1 cell", submitted["phase1"])[1]
    assert re.fullmatch(
        rf"\d+: 2 cell\(s\) after afterok:{phase1_job}", submitted["phase2"]
    )
    phase2_job = submitted["phase2"].split(":")[0]
    assert submitted["eval"].endswith(
        f"2 cell(s) after aftercorr:{phase2_job}"
    )
    assert submitted["kernel"].endswith(f"after afterok:{phase1_job}")
    lines = outcome_lines(out)
    for cell in grid.Grid.load(tiny_local_run["config"]).cells():
        want = "unavailable" if not cell.available() else "ok"
        assert lines[cell.id][0] == want, (cell.id, lines[cell.id])
    local = tiny_local_run["root"]
    files = _files(root)
    assert files == _files(local)
    assert any(f.endswith("parameters_final.pkl") for f in files)
    compared = 0
    for rel in sorted(files):
        got = _load(os.path.join(root, rel))
        if got is None:
            continue
        want = _load(os.path.join(local, rel))
        _same(got, want, (root, local), rel)
        compared += 1
    assert compared >= 10
