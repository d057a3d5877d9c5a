"""The run of `run_exp.py`: phase 1, phase 2, evaluation, files, resuming.

The flags become a `RunSettings` first; the functions here take it. Files
under `--save_path`, named by `store.layout` (always): the config
(layout.CONFIG: flags, versions, device), the log (layout.LOG: a line per
epoch and per evaluation), the resume file (layout.STATE, written by
`store.resume`: what `--resume` needs) and the results (layout.RESULTS_PKL,
layout.RESULTS_JSON). With `--save_models`: the final parameters
(layout.FINAL); with `--constant_save` / `--constant_save_linear`: the
epoch checkpoints (layout.checkpoint). While a run works in the folder it
holds its lock (`.lock`), so a second run there is refused.
"""

import dataclasses
import glob
import json
import os
import sys
import time

import jax
import numpy as np
import optax

import attacks
import data
import models
import utils
from store import atomic, checkpoints, layout, provenance, resume
from training import evaluation, train
from utils import UserError

TEST_BATCH_SIZE = 100  # as the original
# Flags that do not change what a run computes (how it is shown, how often
# it saves, where its files are). Every other flag is recorded with the
# run, and --resume must repeat it.
NON_RUN_FLAGS = (
    "resume",
    "overwrite",
    "no_progress",
    "state_every",
    "save_path",
    "data_path",
)
# Flags added after runs were recorded, with the defaults those runs had:
# a record without them holds these values (so that it can be resumed).
LATER_FLAGS = {"attack": attacks.PGD.name, "attack_budget": []}
# Flags added later whose default is another flag's value: a record
# without them holds that flag's value (--order_seed: --random_seed).
LATER_FLAGS_FROM = {"order_seed": "random_seed"}
# The files run_exp.py writes in --save_path (what --overwrite removes).
RUN_FILES = (*layout.RUN_FILES, *layout.RUN_GLOBS)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings of one run: run_exp.py's flags, typed.

    Each field is the flag of the same name (see run_exp.py --help);
    `flags` is every flag as parsed ({name: value}), which the run records
    (config.json, the resume file, checkpoint meta) as it is. The entry
    script makes it from the command line (cli.experiment.settings).
    """

    # Where.
    save_path: str
    data_path: str
    base_model_path: str
    # The model and the data.
    model: str | None
    width: int | None
    dataset: str | None
    train_size: int | None
    test_size: int | None
    random_seed: int
    order_seed: int
    batch_size: int
    # The two phases.
    standard_epochs: int
    linear_epochs: int
    loaders: str
    second_lr: float
    centering: bool
    do_standard_second: bool
    loose_bn_second: bool
    # Attacks.
    eps: float
    train_pgd_iters: int
    eval_pgd_iters: int
    eval_attacks: str
    attack: str
    attack_budget: list
    # Evaluations and files.
    skip_first_test: bool
    skip_second_test: bool
    save_models: bool
    constant_save: bool
    constant_save_linear: bool
    # How the run goes on in its folder, and how it shows.
    resume: bool
    overwrite: bool
    state_every: int
    no_progress: bool
    flags: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def attack_names(self) -> list[str]:
        """The names of --eval_attacks, in order."""
        return [name for name in self.eval_attacks.split(",") if name]

    @property
    def progress(self) -> bool:
        return not self.no_progress

    @property
    def run_flags(self) -> dict:
        """The recorded flags that define what the run computes."""
        return run_flags(self.flags)

    @property
    def continues_phase_one(self) -> bool:
        """--do_standard_second in one run (no base model): phase 2
        continues phase 1's optimizer, as the original."""
        return self.do_standard_second and not self.base_model_path


def validate_flags(settings: RunSettings) -> None:
    """Raises UserError for flags that cannot make a run together (each
    number is checked by its parser)."""
    loaders = settings.loaders
    if len(loaders) != 2 or any(c not in train.LOADERS for c in loaders):
        raise UserError(
            f"--loaders {loaders!r} must be two letters from "
            "C (benign), A (adversarial), F (benign, then "
            "adversarial from epoch 50), e.g. CC or AC"
        )
    unknown = set(settings.attack_names) - set(attacks.EVAL_ATTACKS)
    if unknown:
        raise UserError(
            "--eval_attacks takes a comma-separated list of "
            f"{', '.join(attacks.EVAL_ATTACKS)}, not "
            f"{settings.eval_attacks!r}"
        )
    # The class count is known from the flags unless a base model gives
    # the dataset; _prepare checks the budget again once it is known.
    known = settings.dataset or (
        None if settings.base_model_path else models.ModelSpec.dataset
    )
    attacks.check_budget(
        settings.attack,
        settings.attack_budget,
        data.n_classes(known) if known else None,
    )
    if settings.resume and settings.overwrite:
        raise UserError(
            "--resume continues the run in --save_path and --overwrite "
            "replaces it: pass one of them"
        )


def run_flags(flags: dict) -> dict:
    """The flags that define what a run computes, of every flag `flags`
    ({name: value}): all but NON_RUN_FLAGS, by name."""
    return {
        name: value
        for name, value in sorted(flags.items())
        if name not in NON_RUN_FLAGS
    }


def recorded_flags(flags: dict) -> dict:
    """The run flags a record holds, those added after it was written
    filled in with the values its run had (LATER_FLAGS, LATER_FLAGS_FROM)."""
    recorded = {**LATER_FLAGS, **flags}
    for name, source in LATER_FLAGS_FROM.items():
        if name not in recorded and source in recorded:
            recorded[name] = recorded[source]
    return recorded


def results_template(settings: RunSettings) -> dict:
    """The results dict before anything is measured: None = not (yet)
    measured."""
    return {
        "standard": None,
        "linear": None,
        "standard_second": bool(settings.do_standard_second),
    }


@dataclasses.dataclass
class Run:
    """What every stage of a run shares."""

    settings: RunSettings
    save_dir: str
    spec: models.ModelSpec
    apply_fn: models.ApplyFn
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    record: resume.ResumeRecord | None = None
    last_saved: str | None = None  # where the resume file's state is

    def path(self, name: str) -> str:
        return os.path.join(self.save_dir, name)

    def meta(
        self, phase: str, epoch: int | float, dynamics: models.Dynamics
    ) -> dict:
        return dict(
            self.spec.as_meta(),
            phase=phase,
            epoch=epoch,
            linear=dynamics.linear,
            centering=dynamics.centering,
            loaders=self.settings.loaders,
            seed=self.settings.random_seed,
            flags=self.settings.run_flags,
        )


def run_experiment(settings: RunSettings) -> dict:
    """Runs (or resumes) the experiment of run_exp.py's `settings`;
    returns the results."""
    validate_flags(settings)
    # A first look, before anything is loaded or written; decided again
    # under the folder's lock below.
    if _plan_start(settings, _read_record(settings)) == "nothing to do":
        return _report_nothing_to_do(settings)
    base = _load_base_model(settings)
    run = _prepare(settings, base)
    atomic.ensure_writable_dir(settings.save_path)
    with atomic.FolderLock(settings.save_path):
        removed = atomic.remove_stale_temp_files(settings.save_path)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of a killed run")
        if not _start(run, base):
            return _report_nothing_to_do(settings)
        _write_config(run)
        try:
            if run.record.stage == "standard":
                _phase_one(run, base)
            if run.record.stage == "linear":
                _phase_two(run)
        except train.Diverged as err:
            raise _divergence_error(run, err) from None
    return run.record.results


def _start(run: Run, base: tuple[dict, models.ModelSpec] | None) -> bool:
    """Under the folder's lock: sets run.record to a fresh record (written
    at once) or the resumed one; False when there is nothing to do."""
    settings = run.settings
    saved = _read_record(settings)
    start = _plan_start(settings, saved)
    if start == "nothing to do":
        return False
    if start == "fresh":
        if settings.resume and saved is None:
            print(
                f"no saved state in {settings.save_path}: starting from "
                "the beginning"
            )
        _remove_previous_run(settings)
        run.record = _fresh_record(run, base)
        _save_record(run)
        run.last_saved = "the start of the run"
    else:
        run.record = saved
        run.last_saved = "the point where the run was resumed"
        _trim_log(run)
    return True


def _read_record(settings: RunSettings) -> resume.ResumeRecord | None:
    """The resume file of --save_path, or None when there is none."""
    return resume.read(settings.save_path)


def _previous_files(settings: RunSettings) -> list[str]:
    """The run files (RUN_FILES) in --save_path, sorted."""
    found = []
    for pattern in RUN_FILES:
        found += glob.glob(
            os.path.join(glob.escape(settings.save_path), pattern)
        )
    return sorted(found)


def _plan_start(
    settings: RunSettings, saved: resume.ResumeRecord | None
) -> str:
    """'fresh', 'resume' or 'nothing to do' for the folder's content.

    Raises UserError where going on would mix two runs or lose one.
    """
    folder = settings.save_path
    if saved is None:
        previous = _previous_files(settings)
        if previous and not settings.overwrite:
            names = ", ".join(os.path.basename(p) for p in previous[:3])
            raise UserError(
                f"{folder} holds files of another run ({names}"
                f"{', ...' if len(previous) > 3 else ''}) but no "
                f"{layout.STATE}: pass --overwrite to replace them, or choose "
                "another --save_path"
            )
        return "fresh"
    if settings.overwrite:
        return "fresh"
    recorded = recorded_flags(saved.flags)
    same = recorded == settings.run_flags
    if saved.stage == "done":
        if same:
            return "nothing to do"
        raise UserError(
            f"{folder} holds a finished run with loaders "
            f"{saved.flags.get('loaders')} and other flags "
            f"({_differences(recorded, settings.run_flags)}): pass "
            "--overwrite to replace it, or choose another --save_path"
        )
    if not settings.resume:
        raise UserError(
            f"{folder} holds an unfinished run: pass --resume to continue "
            "it, --overwrite to start again, or choose another --save_path"
        )
    if not same:
        raise UserError(
            f"--resume: {folder} holds a run with other flags "
            f"({_differences(recorded, settings.run_flags)}); repeat its "
            "command line exactly, or choose another --save_path"
        )
    return "resume"


def _differences(saved: dict, wanted: dict, limit: int = 4) -> str:
    """'--eps 4.0 there, 8.0 here; ...' for the flags that differ."""
    names = sorted(
        name
        for name in set(saved) | set(wanted)
        if saved.get(name) != wanted.get(name)
    )
    parts = [
        f"--{name} {saved.get(name)!r} there, {wanted.get(name)!r} here"
        for name in names[:limit]
    ]
    return "; ".join(parts) + ("; ..." if len(names) > limit else "")


def _report_nothing_to_do(settings: RunSettings) -> dict:
    print(
        f"{settings.save_path} already holds this finished run; nothing to do"
    )
    return _read_record(settings).results


def _remove_previous_run(settings: RunSettings) -> None:
    """Removes the run files a fresh start replaces (with --overwrite)."""
    previous = _previous_files(settings)
    for path in previous:
        os.remove(path)
    if previous:
        print(
            f"--overwrite: removed {len(previous)} file(s) of the previous run"
        )


def _load_base_model(
    settings: RunSettings,
) -> tuple[dict, models.ModelSpec] | None:
    """(checkpoint, spec) of --base_model_path, or None."""
    if not settings.base_model_path:
        return None
    return models.load_with_spec(
        settings.base_model_path,
        model=settings.model,
        width=settings.width,
        dataset=settings.dataset,
    )


def _prepare(
    settings: RunSettings, base: tuple[dict, models.ModelSpec] | None
) -> Run:
    """Resolves the model and loads the data; writes nothing."""
    if base is not None:
        spec = base[1]
        if settings.loaders[0] != "C":
            utils.warn(
                f"--loaders {settings.loaders}: with --base_model_path "
                f"phase 1 is skipped, so its letter {settings.loaders[0]} is "
                "not used"
            )
    else:
        spec = models.resolve_spec(
            {},
            model=settings.model,
            width=settings.width,
            dataset=settings.dataset,
        )
    # Before any data is loaded or any epoch runs.
    attacks.check_budget(
        settings.attack, settings.attack_budget, spec.n_classes
    )
    train_x, train_y = data.subset(
        *data.load_split(spec.dataset, settings.data_path, train=True),
        settings.train_size,
        settings.random_seed,
    )
    test_x, test_y = data.subset(
        *data.load_split(spec.dataset, settings.data_path, train=False),
        settings.test_size,
        settings.random_seed,
    )
    return Run(
        settings,
        settings.save_path,
        spec,
        spec.build().apply,
        train_x,
        train_y,
        test_x,
        test_y,
    )


def _write_config(run: Run) -> None:
    config = {
        "flags": run.settings.flags,
        "model": run.spec.as_meta(),
        "train_images": len(run.train_x),
        "test_images": len(run.test_x),
        "command": " ".join(sys.argv),
        "environment": provenance.environment_info(),
    }
    atomic.atomic_write_json(run.path(layout.CONFIG), config)


def _fresh_record(
    run: Run, base: tuple[dict, models.ModelSpec] | None
) -> resume.ResumeRecord:
    """The resume record of a run that has not started."""
    settings = run.settings
    if base is None:
        params, net_state = models.init_model(
            run.spec.build(),
            settings.random_seed,
            data.get_dataset(run.spec.dataset).image_shape,
        )
    else:
        print(f"loaded θ(t) from {settings.base_model_path}; skipping phase 1")
        params, net_state = base[0]["params"], base[0]["net_state"]
    state = train.new_train_state(params, None, net_state)
    return resume.ResumeRecord(
        stage="standard",
        flags=settings.run_flags,
        results=results_template(settings),
        state=_pack(state),
        position=train.LoopPosition().as_record(),
    )


def _pack(state: train.TrainState) -> dict:
    """A TrainState as plain trees of NumPy arrays, for the resume file
    (the optimiser state as its list of leaves)."""
    return {
        "params": utils.to_numpy_tree(state.params),
        "params0": utils.to_numpy_tree(state.params0),
        "opt_leaves": utils.flatten_opt_state(state.opt_state),
        "net_state": utils.to_numpy_tree(state.net_state),
        "step": int(state.step),
    }


def _unpack(packed: dict) -> train.TrainState:
    template = train.make_optimizer().init(packed["params"])
    return train.TrainState(
        params=jax.tree_util.tree_map(jax.numpy.asarray, packed["params"]),
        params0=packed["params0"],
        opt_state=utils.unflatten_like(template, packed["opt_leaves"]),
        net_state=packed["net_state"],
        step=jax.numpy.asarray(packed["step"], jax.numpy.int32),
    )


def _save_record(
    run: Run,
    state: train.TrainState | None = None,
    position: train.LoopPosition | None = None,
) -> None:
    """Writes the resume file, with the stage's state if given."""
    record = run.record
    if state is not None:
        record.state = _pack(state)
        record.position = position.as_record()
        run.last_saved = (
            f"the start of phase {record.stage}"
            if (position.epoch, position.step) == (0, 0)
            else f"phase {record.stage}, epoch {position.epoch + 1}, "
            f"batch {position.step}"
        )
    resume.write(run.save_dir, record)


def _divergence_error(run: Run, err: train.Diverged) -> UserError:
    """The one-line error of a run whose loss stopped being finite."""
    if run.last_saved is None:
        saved = "no resume state had been written before it"
    else:
        saved = (
            f"{layout.STATE} holds the last state written before it "
            f"({run.last_saved})"
        )
    rate = "--second_lr" if err.phase == "linear" else "the learning rate"
    return UserError(
        f"the training loss became non-finite in phase {err.phase}, epoch "
        f"{err.epoch + 1}, before batch {err.step}; {saved}; lower {rate} "
        "and start again (--overwrite, or another --save_path)"
    )


def _trim_log(run: Run) -> None:
    """Drops log lines of what the resumed run will do again: epochs from
    the resume point on, and the current stage's evaluations."""
    path = run.path(layout.LOG)
    if not os.path.exists(path):
        return
    stage = run.record.stage
    epoch = train.LoopPosition.from_record(run.record.position).epoch
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]

    def keep(r: dict) -> bool:
        if resume.STAGES.index(r["phase"]) < resume.STAGES.index(stage):
            return True
        return (
            r["phase"] == stage
            and r.get("kind", "epoch") == "epoch"
            and r["epoch"] < epoch
        )

    kept = [r for r in records if keep(r)]
    atomic.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _append_log(run: Run, record: dict) -> None:
    with open(run.path(layout.LOG), "a") as f:
        f.write(json.dumps(record) + "\n")


def _log_epoch(run: Run, record: dict) -> None:
    _append_log(run, dict(record, kind="epoch"))
    rate = record["images_per_s"]
    print(
        f"{record['phase']} epoch {record['epoch'] + 1}: loss "
        f"{record['loss']:.4f}, accuracy {record['accuracy']:.4f}, "
        + (f"{rate:.0f} images/s" if rate else "compiling")
        + (" (adversarial)" if record["adversarial"] else ""),
        flush=True,
    )


def _warn(run: Run, message: str) -> None:
    utils.warn(message)
    run.record.warnings.append(message)


def _checkpoint(
    run: Run,
    name: str,
    params: models.Params,
    lin_params: models.Params,
    net_state: models.State,
    meta: dict,
) -> None:
    checkpoints.save_checkpoint(
        run.path(name), params, lin_params, net_state, meta
    )


def _checkpoint_trees(
    state: train.TrainState, dynamics: models.Dynamics
) -> tuple[models.Params, models.Params]:
    """(params, lin_params) of a checkpoint, the original's layout: phase 1
    and --do_standard_second put the trained network in params (and
    θ(t) in lin_params); linearized phase 2 puts θ(t) in params and the
    trained lin_params in lin_params."""
    if state.params0 is None:
        return state.params, state.params
    if dynamics.linear:
        return state.params0, state.params
    return state.params, state.params0


def _hooks(run: Run, phase: str, dynamics: models.Dynamics) -> train.Hooks:
    """The callbacks that write a phase's files."""
    settings = run.settings

    def save(name: str, state: train.TrainState, epoch: int | float) -> None:
        params, lin_params = _checkpoint_trees(state, dynamics)
        _checkpoint(
            run,
            name,
            params,
            lin_params,
            state.net_state,
            run.meta(phase, epoch, dynamics),
        )

    def epoch_start(
        state: train.TrainState, position: train.LoopPosition
    ) -> None:
        if phase == "standard" and settings.constant_save:
            save(layout.checkpoint(position.epoch), state, position.epoch)
        if phase == "linear" and settings.constant_save_linear:
            save(
                layout.checkpoint(position.epoch, linear=True),
                state,
                position.epoch,
            )

    def fraction(
        state: train.TrainState, position: train.LoopPosition, value: float
    ) -> None:
        if phase == "standard" and settings.constant_save:
            save(layout.checkpoint(value), state, value)

    return train.Hooks(
        epoch_start=epoch_start,
        fraction=fraction,
        epoch_end=lambda state, position, record: _log_epoch(run, record),
        save_state=lambda state, position: _save_record(run, state, position),
        warn=lambda message: _warn(run, message),
        state_every=settings.state_every,
        progress=settings.progress,
    )


def _phase_one(run: Run, base: tuple[dict, models.ModelSpec] | None) -> None:
    """Standard training of the network (unless a base model was given),
    then its evaluation."""
    settings = run.settings
    state = _unpack(run.record.state)
    position = train.LoopPosition.from_record(run.record.position)
    if base is None:
        plan = train.PhasePlan(
            "standard",
            settings.standard_epochs,
            settings.loaders[0],
            settings.order_seed,
            settings.batch_size,
        )
        per_epoch = data.n_batches(len(run.train_x), settings.batch_size)
        steps = train.make_step_fns(
            run.apply_fn,
            models.STANDARD,
            True,
            train.phase1_schedule(per_epoch),
            attacks.train_linf(settings.eps, settings.train_pgd_iters),
        )
        state = train.run_phase(
            plan,
            steps,
            state,
            position,
            run.train_x,
            run.train_y,
            _hooks(run, "standard", models.STANDARD),
            _base_key(settings, 1),
        )
    if settings.skip_first_test:
        run.record.results["standard"] = None
    else:
        run.record.results["standard"] = _evaluate(
            run, state.network(run.apply_fn, models.STANDARD), "standard"
        )
    run.record.stage = "linear"
    phase_two = _phase_two_start(settings, state)
    _save_record(run, phase_two, train.LoopPosition())


def phase_two_dynamics(settings: RunSettings) -> models.Dynamics:
    return models.Dynamics(
        linear=not settings.do_standard_second, centering=settings.centering
    )


def _phase_two_start(
    settings: RunSettings, end_of_phase_one: train.TrainState
) -> train.TrainState:
    """Phase 2's first state: the trained copy starts at θ(t), which stays
    as params0. --do_standard_second in one run (no base model) continues
    phase 1's optimizer, learning rate and momentum, as the original;
    otherwise a fresh optimizer at --second_lr."""
    theta_t = end_of_phase_one.params
    if settings.continues_phase_one:
        return end_of_phase_one._replace(params0=theta_t)
    return train.new_train_state(theta_t, theta_t, end_of_phase_one.net_state)


def _phase_two_schedule(run: Run) -> optax.Schedule:
    settings = run.settings
    if settings.continues_phase_one:
        print(
            "--do_standard_second in one run continues phase 1's optimizer "
            "(its learning-rate schedule and momentum), as the original; "
            "--second_lr is not used"
        )
        return train.phase1_schedule(
            data.n_batches(len(run.train_x), settings.batch_size)
        )
    return train.constant_schedule(settings.second_lr)


def _phase_two(run: Run) -> None:
    """Training under phase-2 dynamics; evaluation; the final files."""
    settings = run.settings
    dynamics = phase_two_dynamics(settings)
    state = _unpack(run.record.state)
    position = train.LoopPosition.from_record(run.record.position)
    if settings.linear_epochs > 0:
        plan = train.PhasePlan(
            "linear",
            settings.linear_epochs,
            settings.loaders[1],
            settings.order_seed,
            settings.batch_size,
        )
        steps = train.make_step_fns(
            run.apply_fn,
            dynamics,
            settings.loose_bn_second,
            _phase_two_schedule(run),
            attacks.train_linf(settings.eps, settings.train_pgd_iters),
            # The original's adversarial update of phase 2 runs batch norm
            # in eval mode, also with --loose_bn_second.
            adversarial_bn_training=False,
        )
        state = train.run_phase(
            plan,
            steps,
            state,
            position,
            run.train_x,
            run.train_y,
            _hooks(run, "linear", dynamics),
            _base_key(settings, 2),
        )
        if not settings.skip_second_test:
            run.record.results["linear"] = _evaluate(
                run, state.network(run.apply_fn, dynamics), "linear"
            )
    if settings.save_models:
        params, lin_params = _checkpoint_trees(state, dynamics)
        _checkpoint(
            run,
            layout.FINAL,
            params,
            lin_params,
            state.net_state,
            run.meta("final", settings.linear_epochs, dynamics),
        )
    _write_results(run)
    run.record.stage = "done"
    run.record.state = run.record.position = None
    _save_record(run)


def _skip_reasons(settings: RunSettings) -> dict:
    """{phase: why its evaluation did not run} for the results JSON."""
    reasons = {}
    if settings.skip_first_test:
        reasons["standard"] = "--skip_first_test"
    if settings.linear_epochs == 0:
        reasons["linear"] = "--linear_epochs 0: no phase 2"
    elif settings.skip_second_test:
        reasons["linear"] = "--skip_second_test"
    return reasons


def _original_results(results: dict) -> dict:
    """The results pickle: the original's layout, where an evaluation that
    did not run is stored as 0 (a phase not evaluated: every accuracy 0)."""
    out = {"standard_second": results["standard_second"]}
    for phase in ("standard", "linear"):
        accuracies = results[phase] or {}
        out[phase] = {
            name: accuracies.get(name) or 0.0
            for name in ("clean", "l2", "linf")
        }
    return out


def _write_results(run: Run) -> None:
    """The results pickle (the original's layout) and JSON (null where
    nothing was measured, with the reasons, the attacks and warnings)."""
    settings = run.settings
    results = run.record.results
    atomic.atomic_pickle(
        run.path(layout.RESULTS_PKL), _original_results(results)
    )
    attacks_run = {
        name: evaluation.attack_record(
            attack, settings.random_seed, settings.eps
        )
        for name, attack in eval_attacks(settings)
        if name is not None
    }
    skipped = _skip_reasons(settings)
    for name in ("clean", "l2", "linf"):
        if name != "clean" and name not in attacks_run:
            skipped[name] = "not in --eval_attacks"
    record = dict(
        results,
        skipped=skipped,
        attacks=attacks_run,
        test_images=len(run.test_x),
        test_batch_size=TEST_BATCH_SIZE,
        warnings=list(run.record.warnings),
    )
    atomic.atomic_write_json(run.path(layout.RESULTS_JSON), record)


def _base_key(settings: RunSettings, phase: int) -> jax.Array:
    """The key the training attacks' keys of `phase` (1 or 2) derive from:
    --order_seed's (--random_seed's unless given)."""
    return jax.random.fold_in(jax.random.PRNGKey(settings.order_seed), phase)


def eval_attacks(
    settings: RunSettings,
) -> list[tuple[str | None, evaluation.Attack]]:
    """(name, attack) of each evaluation of a model: PGD in each norm of
    --eval_attacks, then with --attack the parameter-free attack in L∞ at
    --eps under its own name; [(None, None)] for clean accuracy only."""
    chosen: list[tuple[str | None, evaluation.Attack]] = [
        (
            name,
            attacks.EVAL_ATTACKS[name](settings.eps, settings.eval_pgd_iters),
        )
        for name in settings.attack_names
    ]
    if settings.attack != attacks.PGD.name:
        budget = attacks.check_budget(settings.attack, settings.attack_budget)
        eps = attacks.eval_linf(settings.eps, 1).eps
        chosen.append(
            (
                settings.attack,
                attacks.parameter_free(settings.attack, eps, "linf", budget),
            )
        )
    return chosen or [(None, None)]


def _evaluate(run: Run, network: models.Network, name: str) -> dict:
    """Clean and robust accuracies (fractions) on the test set; each
    evaluation's time goes to the log."""
    settings = run.settings
    accuracies = {"clean": None, "l2": None, "linf": None}
    for attack_name, attack in eval_attacks(settings):
        started = time.perf_counter()
        result = evaluation.evaluate(
            network,
            run.test_x,
            run.test_y,
            attack=attack,
            options=evaluation.EvalOptions(
                batch_size=TEST_BATCH_SIZE,
                seed=settings.random_seed,
                progress=settings.progress,
                desc=f"{name} eval {attack_name or 'clean'}",
            ),
        )
        seconds = time.perf_counter() - started
        accuracies["clean"] = result.acc_clean
        if attack_name:
            accuracies[attack_name] = result.acc_dirty
        _append_log(
            run,
            {
                "kind": "evaluation",
                "phase": name,
                "attack": attack_name,
                "images": result.n,
                "clean": result.acc_clean,
                "robust": result.acc_dirty,
                "seconds": seconds,
            },
        )
    print(
        f"{name} model: "
        + ", ".join(
            f"{k} {v:.4f}" for k, v in accuracies.items() if v is not None
        ),
        flush=True,
    )
    return accuracies
