"""Where a grid's cells run: here, N at a time (`run_local`), or on a SLURM
cluster as job arrays submitted through submitit (`run_slurm`).

Both run a cell with `execute_cell`: the cell's command as a subprocess
from the repository root, its output appended to the cell's log file, with
`--resume` when a run_exp.py cell was interrupted. A cell counts as finished
by the files it wrote (grid.cell_status), so both ways of running write the
same files and a re-run skips what is done.

While either runs, the sweep holds a lock on its output root
(`claimed_root`), so a second sweep there is refused with one line naming
the holder. A cell's command runs in a process group of its own, which
Ctrl-C or SIGTERM to the sweep stops; on Linux the kernel also kills the
command when the sweep dies in any other way (SIGKILL included), so no
cell outlives its sweep.
"""

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from tqdm import tqdm

import utils
from store import atomic
from sweeper import grid, schema
from sweeper.grid import DONE, PARTIAL, Cell, here
from utils import UserError

if TYPE_CHECKING:  # optional (--slurm only), imported where used
    import submitit

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
BLOCKED, UNAVAILABLE, QUEUED = "blocked", "unavailable", "queued"
GOOD = (OK, SKIPPED)
BAD = (FAILED, BLOCKED, UNAVAILABLE)
# SLURM job states of a job that has not ended.
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}
DEFAULT_TIMEOUT_MIN = 60


@dataclasses.dataclass
class Outcome:
    """What became of a cell.

    status: OK (ran and wrote its files), FAILED (ran, did not finish),
    SKIPPED (finished earlier), BLOCKED (a cell it needs did not finish),
    UNAVAILABLE (its script is not in this checkout), QUEUED (submitted,
    not waited for). seconds: wall time of the run; message: why, for the
    bad ones; log: the cell's log file.
    """

    cell_id: str
    status: str
    seconds: float = 0.0
    message: str = ""
    log: str = ""

    def line(self) -> str:
        """One line for the terminal."""
        text = f"{self.status:<11} {self.cell_id}"
        if self.status == OK:
            text += f" ({self.seconds:.1f} s)"
        if self.message:
            text += f": {self.message}"
        if self.status == FAILED:
            text += f"; log: {self.log}"
        return text


class Terminated(KeyboardInterrupt):
    """SIGTERM to a sweep running cells here: it stops them as Ctrl-C does
    (cli.run_cli reports it as an interruption)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def claimed_root(the_grid: grid.Grid) -> Iterator[None]:
    """Holds the sweep's lock on its output root (atomic.FolderLock, the
    `.lock` file of the root) while the body runs, with the dataset
    prepared (prepare_data) and the sweep's record written (write_record)
    under it.

    A root that exists is locked first, so that a second sweep there is
    refused at once, before it reads or writes anything; a new root is
    created only once the dataset is ready, so a refused sweep leaves none.

    Raises (on entering):
        UserError: another sweep holds the root (the message names it), the
            dataset cannot be had, or the root holds a sweep of other
            settings.
    """
    root = here(the_grid.root)
    with contextlib.ExitStack() as held:
        locked = os.path.isdir(root)
        if locked:
            held.enter_context(atomic.FolderLock(root, "--output_root"))
        prepare_data(the_grid)
        if not locked:
            atomic.ensure_writable_dir(root)
            held.enter_context(atomic.FolderLock(root, "--output_root"))
        the_grid.check_record()  # again: another sweep may have written it
        the_grid.write_record()
        yield


# Run by this interpreter in place of a cell's command, which it then
# becomes (exec): on Linux it first asks the kernel to send it SIGKILL when
# its parent, the thread of the sweep that started it, ends, however the
# sweep ends. (Popen's preexec_fn could do the same, but is not safe in a
# process with threads, as a sweep is.) argv: the sweep's pid, then the
# command.
_LAUNCHER = """
import ctypes, os, signal, sys
parent, command = int(sys.argv[1]), sys.argv[2:]
if sys.platform.startswith("linux"):
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)
os.execv(command[0], command)
"""
# How much of a cell's stderr is kept to report its error.
_TAIL_BYTES = 16384


def _launch(command: list[str]) -> list[str]:
    """`command` started through _LAUNCHER."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *command]


def _copy_stderr(
    stream: IO[bytes], log_file: IO[bytes], tail: bytearray
) -> None:
    """Copies a command's stderr into its log as it comes, keeping its
    last _TAIL_BYTES in `tail`."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        log_file.write(chunk)
        log_file.flush()
        tail += chunk
        del tail[:-_TAIL_BYTES]


def _error_line(stderr_tail: bytes) -> str:
    """What a failed command said: its last `error: ...` line (the entry
    scripts' one-line errors), else the exception line of its last
    traceback (`ValueError: ...`: the first line after the traceback that
    is not indented, not what follows it, such as JAX's note on the frames
    it removed), else its last non-empty line ('' when none)."""
    text = stderr_tail.decode(errors="replace").replace("\r", "\n")
    raw = [line.rstrip() for line in text.split("\n") if line.strip()]
    lines = [line.strip() for line in raw]
    errors = [line for line in lines if line.startswith("error:")]
    starts = [i for i, line in enumerate(raw) if line.startswith("Traceback")]
    if not errors and starts:
        after = raw[starts[-1] + 1 :]
        errors = [next((x for x in after if not x[0].isspace()), lines[-1])]
    chosen = errors or lines
    return chosen[-1][:300] if chosen else ""


def _last_line(path: str) -> str:
    """The last non-empty line of a text file ('' when none)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def execute_cell(
    cell: Cell,
    env: dict | None = None,
    on_start: Callable | None = None,
) -> Outcome:
    """Runs `cell` unless its files show it finished.

    The command runs from the repository root with this interpreter, in a
    process group of its own that dies with the sweep (_LAUNCHER); its
    stdout and stderr are appended to the cell's log after a header line
    with the command. An interrupted run_exp.py cell gets `--resume`. A
    failure is reported with the command's own stderr (its `error:` line),
    never with a line another process wrote to the log.

    Args:
      cell: the cell.
      env: extra environment variables for the command.
      on_start: called with the Popen object once the command started.
    Returns:
      The Outcome: SKIPPED, OK (exit 0 and its files written), FAILED, or
      UNAVAILABLE (script not in this checkout).
    """
    log = here(cell.log)
    status = grid.cell_status(cell)
    if status == DONE:
        return Outcome(cell.id, SKIPPED, message="finished earlier", log=log)
    if not cell.available():
        return Outcome(
            cell.id,
            UNAVAILABLE,
            message=f"{cell.script} is not in this checkout",
            log=log,
        )
    command = [sys.executable, *cell.argv(resume=status == PARTIAL)]
    started = time.time()
    code, tail = _run_command(command, log, env, on_start)
    seconds = time.time() - started
    finished = grid.cell_status(cell) == DONE
    if code == 0 and finished:
        return Outcome(cell.id, OK, seconds, log=log)
    if code == 0:
        missing = [p for p in cell.outputs if not os.path.exists(here(p))]
        why = f"exit 0 but {missing[0]} is missing"
    elif code < 0:
        why = f"killed by {signal.Signals(-code).name}"
    else:
        said = _error_line(tail)
        why = (
            f"exit {code}: {said}" if said else f"exit {code}, no error output"
        )
    return Outcome(cell.id, FAILED, seconds, why, log)


def _run_command(
    command: list[str],
    log: str,
    env: dict | None,
    on_start: Callable | None,
) -> tuple[int, bytes]:
    """Runs `command` from the repository root as execute_cell says, its
    output appended to the file `log`. Returns (its exit status, the last
    _TAIL_BYTES of its stderr)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    tail = bytearray()
    with open(log, "ab") as log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"# {stamp} {shlex.join(command)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            _launch(command),
            cwd=grid.ROOT,
            stdout=log_file,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **(env or {})),
            start_new_session=True,
        )
        copier = threading.Thread(
            target=_copy_stderr, args=(process.stderr, log_file, tail)
        )
        copier.start()
        try:
            if on_start is not None:
                on_start(process)
            code = process.wait()
        except BaseException:  # e.g. Ctrl-C where the sweep waits here
            _stop(process)
            process.wait()
            raise
        finally:
            copier.join()
            process.stderr.close()
    return code, bytes(tail)


def prepare_data(the_grid: grid.Grid) -> None:
    """Reads the grid's dataset once before any cell starts, so that its
    first-time preparation (download, or decompression of Debian's
    Fashion-MNIST into the data folder) happens once, not in several cells
    at the same moment, each writing the same files.

    Raises UserError (one line) when the dataset cannot be had.
    """
    import data

    d = the_grid.config["data"]
    for train in (True, False):
        data.load_split(d["dataset"], here(d["data_path"]), train=train)


def _blocker(cell: Cell, outcomes: dict) -> str | None:
    """Why `cell` cannot run: a cell it needs that did not finish."""
    for dep in cell.deps:
        outcome = outcomes.get(dep)
        if outcome is not None and outcome.status in BAD:
            return f"needs {dep}, which is {outcome.status}"
    return None


def _ready(cell: Cell, outcomes: dict) -> bool:
    return all(
        dep in outcomes and outcomes[dep].status in GOOD for dep in cell.deps
    )


def visible_gpus() -> list:
    """The GPUs a worker may be pinned to: CUDA_VISIBLE_DEVICES's entries
    when it is set, else the indices `nvidia-smi` lists, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in result.stdout.splitlines() if line]


def worker_env(slot: int, workers: int, gpus: list, root: str) -> dict:
    """Environment of worker `slot`: pinned to one GPU where there are
    GPUs (round robin; GPU memory is then allocated on demand if workers
    share a GPU), and a JAX compilation cache in the output root unless
    one is set."""
    env = {}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        if workers > len(gpus):
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = here(
            os.path.join(root, grid.JAX_CACHE_DIR)
        )
    return env


def _summary(outcomes: list, root: str) -> str:
    counts = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    parts = [f"{n} {status}" for status, n in counts.items()]
    return (
        f"sweep: {', '.join(parts)}; logs under "
        f"{os.path.join(root, grid.LOGS_DIR)}"
    )


def run_local(
    the_grid: grid.Grid,
    cells: list,
    workers: int,
    echo: Callable = tqdm.write,
    progress: bool = True,
) -> list:
    """Runs `cells` here, up to `workers` at once, each after the cells it
    needs, holding the output root (claimed_root).

    A cell whose needed cell failed is BLOCKED; independent cells go on.
    Prints a line per cell as it ends and keeps an overall tqdm bar.
    Ctrl-C or SIGTERM stops the running commands (their run_exp.py state
    stays, so a re-run resumes them), waits for them to end and raises
    KeyboardInterrupt (Terminated for SIGTERM).

    Returns:
        The Outcomes, in the order the cells ended.
    Raises:
        UserError: as claimed_root, before any cell starts.
    """
    with claimed_root(the_grid):
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread:
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return _run_local(the_grid, cells, workers, echo, progress)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def _run_local(
    the_grid: grid.Grid,
    cells: list,
    workers: int,
    echo: Callable,
    progress: bool,
) -> list:
    """run_local's work, under its lock and SIGTERM handler."""
    gpus = visible_gpus()
    device = f"GPUs {','.join(gpus)}" if gpus else "CPU"
    echo(f"sweep: {len(cells)} cells, {workers} worker(s) on {device}")
    bar = tqdm(total=len(cells), disable=not progress, unit="cell")
    run = _LocalRun(the_grid.root, workers, gpus, echo, bar)
    pending = []
    for cell in cells:
        if grid.cell_status(cell) == DONE:
            run.finish(Outcome(cell.id, SKIPPED, message="finished earlier"))
        else:
            pending.append(cell)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    try:
        run.run(pending, pool)
    except KeyboardInterrupt:
        run.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    echo(_summary(run.order, the_grid.root))
    return run.order


class _LocalRun:
    """The state of run_local: the outcomes so far, the free worker slots,
    the cells running and their processes (to stop them on Ctrl-C)."""

    def __init__(
        self, root: str, workers: int, gpus: list, echo: Callable, bar: tqdm
    ) -> None:
        self.root, self.workers, self.gpus = root, workers, gpus
        self.echo, self.bar = echo, bar
        self.outcomes: dict[str, Outcome] = {}
        self.order: list[Outcome] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.free = list(range(workers))
        self.running: dict[concurrent.futures.Future, tuple] = {}

    def started(self, cell_id: str, process: subprocess.Popen) -> None:
        """Notes a cell's process (stopped at once when stopping)."""
        with self.lock:
            self.processes[cell_id] = process
            if self.stopping.is_set():
                _stop(process)

    def finish(self, outcome: Outcome) -> None:
        self.outcomes[outcome.cell_id] = outcome
        self.order.append(outcome)
        self.echo(outcome.line())
        self.bar.update(1)

    def stop_all(self) -> None:
        """Stops every running command, and those that start later."""
        with self.lock:
            self.stopping.set()
            for process in self.processes.values():
                _stop(process)

    def _start_ready(
        self, pending: list, pool: concurrent.futures.Executor
    ) -> None:
        """Blocks the cells whose needed cells failed and starts those that
        can run on free slots, until nothing changes."""
        changed = True
        while changed:
            changed = False
            for cell in list(pending):
                why = _blocker(cell, self.outcomes)
                if why is not None:
                    pending.remove(cell)
                    self.finish(Outcome(cell.id, BLOCKED, message=why))
                    changed = True
                elif self.free and _ready(cell, self.outcomes):
                    pending.remove(cell)
                    slot = self.free.pop(0)
                    env = worker_env(slot, self.workers, self.gpus, self.root)
                    future = pool.submit(
                        execute_cell,
                        cell,
                        env,
                        lambda p, c=cell: self.started(c.id, p),
                    )
                    self.running[future] = (cell, slot)
                    changed = True

    def run(self, pending: list, pool: concurrent.futures.Executor) -> None:
        """Runs the `pending` cells, each once those it needs finished."""
        while pending or self.running:
            self._start_ready(pending, pool)
            if not self.running:
                for cell in pending:
                    missing = [d for d in cell.deps if d not in self.outcomes]
                    message = f"needs {missing[0]}, which is not in this run"
                    self.finish(Outcome(cell.id, BLOCKED, message=message))
                break
            done, _ = concurrent.futures.wait(
                self.running, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                cell, slot = self.running.pop(future)
                with self.lock:
                    self.processes.pop(cell.id, None)
                self.free.append(slot)
                self.finish(future.result())


def _stop(process: subprocess.Popen) -> None:
    """Terminates a cell's command and its children (its own process
    group), stopped ones included (SIGCONT lets them receive SIGTERM)."""
    for signum in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.killpg(process.pid, signum)
        except OSError:
            pass


# --------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------


def slurm_job(cell: Cell, root: str) -> str:
    """What a SLURM job runs: `execute_cell(cell)`, with a local worker's
    environment (GPU pinning is SLURM's).

    Raises RuntimeError unless the cell finished, so that the job fails and
    the jobs that need it are cancelled (--kill-on-invalid-dep).
    """
    outcome = execute_cell(cell, worker_env(0, 1, [], root))
    if outcome.status not in GOOD:
        raise RuntimeError(outcome.line())
    return outcome.status


def squeue_states(job_ids: list) -> dict | None:
    """{job id: (state, reason)} of the jobs SLURM still lists (array tasks
    one by one), or None when squeue fails."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    if not arrays:
        return {}
    states = {}
    for start in range(0, len(arrays), 200):
        try:
            result = subprocess.run(
                [
                    "squeue",
                    "--noheader",
                    "--array",
                    "--states=all",
                    "--format=%i|%T|%r",
                    "--jobs=" + ",".join(arrays[start : start + 200]),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if result.returncode != 0:
            # squeue refuses a list whose jobs have all left its memory.
            if "Invalid job id" in result.stderr:
                continue
            return None
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                states[parts[0]] = (parts[1], parts[2])
    return states


class _Jobs:
    """The SLURM job of each submitted cell, kept in
    {root}/slurm/jobs.json so that a re-run follows jobs still queued
    instead of submitting them again."""

    def __init__(self, root: str) -> None:
        self.path = here(os.path.join(root, grid.SLURM_DIR, "jobs.json"))
        self.by_cell = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.by_cell = json.load(f)

    def save(self) -> None:
        atomic.atomic_write_json(self.path, self.by_cell)


def _dependency(deps: list, sizes: dict) -> str | None:
    """afterok on job ids, an array's id standing for all its tasks."""
    if not deps:
        return None
    tasks = {}
    for job_id in deps:
        array, _, index = job_id.partition("_")
        tasks.setdefault(array, set()).add(index)
    ids = []
    for array, indices in sorted(tasks.items()):
        if "" in indices or len(indices) == sizes.get(array, -1):
            ids.append(array)
        else:
            ids += [f"{array}_{i}" for i in sorted(indices, key=int)]
    return "afterok:" + ":".join(ids)


def _groups(stage_cells: list, dep_jobs: dict, sizes: dict) -> list:
    """Job arrays for the cells of one stage: [(cells, dependency)].

    Cells needing the same jobs share an array (afterok on those jobs).
    Cells that each need one task of the same earlier array, covering it
    task for task, form one array in its order with aftercorr, so each
    starts once its own task succeeded.
    """
    by_deps = {}
    for cell in stage_cells:
        by_deps.setdefault(tuple(sorted(dep_jobs[cell.id])), []).append(cell)
    groups, single = [], {}
    for deps, members in by_deps.items():
        if len(deps) == 1 and len(members) == 1 and "_" in deps[0]:
            array, _, index = deps[0].partition("_")
            single.setdefault(array, {})[int(index)] = members[0]
        else:
            groups.append((members, _dependency(list(deps), sizes)))
    for array, by_index in single.items():
        size = sizes.get(array, 0)
        if size > 1 and sorted(by_index) == list(range(size)):
            ordered = [by_index[i] for i in range(size)]
            groups.append((ordered, f"aftercorr:{array}"))
        else:
            for index, cell in sorted(by_index.items()):
                groups.append(([cell], f"afterok:{array}_{index}"))
    return groups


def check_slurm() -> None:
    """Raises UserError unless submitit and SLURM's clients are here."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError(
            "--slurm needs submitit: pip install submitit==1.5.4"
        ) from None
    for client in ("sbatch", "srun", "squeue"):
        if shutil.which(client) is None:
            raise UserError(
                f"--slurm: {client} is not on PATH; run on a SLURM login "
                "node, or use --local"
            )


def _executor(the_grid: grid.Grid) -> "submitit.SlurmExecutor":
    """A submitit SlurmExecutor with the config's [slurm] resources."""
    import submitit

    check_slurm()
    folder = here(os.path.join(the_grid.root, grid.SLURM_DIR, "%j"))
    executor = submitit.SlurmExecutor(folder=folder)
    s = the_grid.config["slurm"] or {}
    params = {
        "cpus_per_task": s.get("cpus_per_task", 4),
        "array_parallelism": s.get("array_parallelism", 64),
        "setup": [f"cd {shlex.quote(grid.ROOT)}"],
        "additional_parameters": {
            "kill-on-invalid-dep": "yes",
            **{k: v for k, v in s.get("additional", {}).items()},
        },
    }
    if s.get("gpus_per_node", 1):
        params["gpus_per_node"] = s.get("gpus_per_node", 1)
    if s.get("mem_gb", 32.0):
        params["mem"] = f"{int(s.get('mem_gb', 32.0) * 1024)}MB"
    for name in ("partition", "account", "qos"):
        if s.get(name):
            params[name] = s[name]
    executor.update_parameters(**params)
    return executor


def run_slurm(
    the_grid: grid.Grid,
    cells: list,
    wait: bool = True,
    poll_s: float = 10.0,
    echo: Callable = tqdm.write,
    progress: bool = True,
) -> list:
    """Submits the unfinished cells as SLURM job arrays, stage by stage,
    each array depending on the jobs of the cells it needs, then (with
    `wait`) follows them to the end.

    Cells finished earlier are skipped; cells whose jobs are still queued
    from an earlier call are followed, not submitted again. A failed job
    cancels the jobs that need it (--kill-on-invalid-dep=yes).

    Holds the output root (claimed_root) while it submits and follows.

    Returns:
        The Outcomes: one per cell (QUEUED for those not waited for).
    Raises:
        UserError: as claimed_root, before any job is submitted.
    """
    with claimed_root(the_grid):
        return _run_slurm(the_grid, cells, wait, poll_s, echo, progress)


def _run_slurm(
    the_grid: grid.Grid,
    cells: list,
    wait: bool,
    poll_s: float,
    echo: Callable,
    progress: bool,
) -> list:
    """run_slurm's work, under its lock."""
    executor = _executor(the_grid)
    timeouts = (the_grid.config["slurm"] or {}).get("timeout_min", {})
    jobs = _Jobs(the_grid.root)
    known = squeue_states(list(jobs.by_cell.values())) or {}
    outcomes, order = {}, []

    def finish(outcome: Outcome) -> None:
        outcomes[outcome.cell_id] = outcome
        order.append(outcome)
        echo(outcome.line())

    by_id = {cell.id: cell for cell in cells}
    job_of = {}  # cell id -> job id of this call (submitted or followed)
    sizes = {}  # array id -> tasks
    for cell in cells:
        recorded = jobs.by_cell.get(cell.id)
        if grid.cell_status(cell) == DONE:
            finish(Outcome(cell.id, SKIPPED, message="finished earlier"))
        elif not cell.available():
            message = f"{cell.script} is not in this checkout"
            finish(Outcome(cell.id, UNAVAILABLE, message=message))
        elif recorded and known.get(recorded, ("",))[0] in ACTIVE_STATES:
            job_of[cell.id] = recorded
            echo(f"{'following':<11} {cell.id}: job {recorded} still queued")
    for stage in schema.STAGES:
        stage_cells = []
        for cell in cells:
            if cell.stage != stage or cell.id in outcomes:
                continue
            if cell.id in job_of:
                continue
            why = _blocker(cell, outcomes)
            if why is not None:
                finish(Outcome(cell.id, BLOCKED, message=why))
                continue
            stage_cells.append(cell)
        dep_jobs = {
            cell.id: [job_of[d] for d in cell.deps if d in job_of]
            for cell in stage_cells
        }
        for members, dependency in _groups(stage_cells, dep_jobs, sizes):
            executor.update_parameters(
                job_name=f"{the_grid.name}-{stage}",
                time=int(timeouts.get(stage, DEFAULT_TIMEOUT_MIN)),
                dependency=dependency,
            )
            submitted = executor.map_array(
                slurm_job, members, [the_grid.root] * len(members)
            )
            array = submitted[0].job_id.split("_")[0]
            sizes[array] = len(members)
            for cell, job in zip(members, submitted, strict=True):
                job_of[cell.id] = job.job_id
                jobs.by_cell[cell.id] = job.job_id
            jobs.save()
            after = f" after {dependency}" if dependency else ""
            echo(
                f"{'submitted':<11} {stage} job {array}: {len(members)} "
                f"cell(s){after}"
            )
    if not wait:
        for cell_id in job_of:
            finish(Outcome(cell_id, QUEUED, message=f"job {job_of[cell_id]}"))
        return order
    _follow(by_id, job_of, executor.folder, poll_s, finish, progress)
    echo(_summary(order, the_grid.root))
    return order


def _scheduler_log(folder: utils.StrPath, job_id: str) -> str:
    """submitit's stderr file of a job (where a job that failed before its
    cell started says why)."""
    from submitit.core.utils import JobPaths

    return str(JobPaths(folder, job_id=job_id, task_id=0).stderr)


def _follow(
    by_id: dict[str, Cell],
    job_of: dict[str, str],
    folder: utils.StrPath,
    poll_s: float,
    finish: Callable[[Outcome], None],
    progress: bool,
) -> None:
    """Waits until every job of `job_of` has left the queue; an Outcome per
    cell from the files it wrote and the job's last state."""
    waiting = dict(job_of)
    bar = tqdm(total=len(waiting), disable=not progress, unit="job")
    while waiting:
        states = squeue_states(list(waiting.values()))
        if states is not None:
            for cell_id, job_id in list(waiting.items()):
                state, reason = states.get(job_id, ("GONE", ""))
                if state in ACTIVE_STATES:
                    continue
                cell = by_id[cell_id]
                del waiting[cell_id]
                bar.update(1)
                log = here(cell.log)
                if grid.cell_status(cell) == DONE:
                    finish(Outcome(cell_id, OK, message=f"job {job_id}"))
                elif state == "CANCELLED" and "Dependency" in reason:
                    message = f"job {job_id} cancelled: a cell it needs failed"
                    finish(Outcome(cell_id, BLOCKED, message=message))
                else:
                    if not os.path.exists(log):
                        log = _scheduler_log(folder, job_id)
                    last = _last_line(log) or "no output"
                    message = f"job {job_id} {state.lower()}: {last}"
                    finish(Outcome(cell_id, FAILED, message=message, log=log))
        if waiting:
            time.sleep(poll_s)
    bar.close()
