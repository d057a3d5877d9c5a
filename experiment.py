"""The run of `run_exp.py`: phase 1, phase 2, evaluation, files, resuming.

Files under `--save_path` (always): `config.json` (flags, versions, device),
`log.jsonl` (a line per epoch), `train_state.pkl` (what `--resume` needs),
`results.pkl` and `results.json`. With `--save_models`: `parameters_final.pkl`;
with `--constant_save` / `--constant_save_linear`: the epoch checkpoints.
"""

import dataclasses
import json
import os
import sys

import jax
import numpy as np

import attacks
import data
import evaluation
import models
import train
import utils
from utils import UserError

STATE_FILE = "train_state.pkl"
TEST_BATCH_SIZE = 100  # as the original
STAGES = ("standard", "linear", "done")
# Flags that change what a run computes; a resumed run must repeat them.
RUN_FLAGS = (
    "standard_epochs",
    "linear_epochs",
    "centering",
    "save_models",
    "constant_save",
    "constant_save_linear",
    "loose_bn_second",
    "do_standard_second",
    "skip_first_test",
    "skip_second_test",
    "random_seed",
    "base_model_path",
    "model",
    "loaders",
    "dataset",
    "second_lr",
    "eps",
    "width",
    "train_size",
    "test_size",
    "batch_size",
    "train_pgd_iters",
    "eval_pgd_iters",
    "eval_attacks",
    "data_path",
)


def validate_flags(args) -> None:
    """Raises UserError for flags that cannot make a run."""
    loaders = args.loaders
    if len(loaders) != 2 or any(c not in train.LOADERS for c in loaders):
        raise UserError(
            f"--loaders {loaders!r} must be two letters from "
            "C (benign), A (adversarial), F (benign, then "
            "adversarial from epoch 50), e.g. CC or AC"
        )
    for name in ("standard_epochs", "linear_epochs", "random_seed"):
        if getattr(args, name) < 0:
            raise UserError(
                f"--{name} must be 0 or more, not {getattr(args, name)}"
            )
    if args.eps <= 0:
        raise UserError(
            f"--eps must be positive (in 1/255 units, e.g. 4.0), "
            f"not {args.eps}"
        )
    for name in (
        "batch_size",
        "train_pgd_iters",
        "eval_pgd_iters",
        "width",
        "train_size",
        "test_size",
        "state_every",
    ):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, not {value}")
    if args.second_lr <= 0:
        raise UserError(f"--second_lr must be positive, not {args.second_lr}")
    unknown = set(eval_attack_names(args)) - {"linf", "l2"}
    if unknown:
        raise UserError(
            f"--eval_attacks takes a comma-separated list of linf "
            f"and l2, not {args.eval_attacks!r}"
        )


def eval_attack_names(args) -> list:
    return [n for n in args.eval_attacks.split(",") if n]


def run_flags(args) -> dict:
    return {name: getattr(args, name) for name in RUN_FLAGS}


@dataclasses.dataclass
class Run:
    """What every stage of a run shares."""

    args: object
    save_dir: str
    spec: models.ModelSpec
    apply_fn: object
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    def path(self, name: str) -> str:
        return os.path.join(self.save_dir, name)

    def meta(self, phase: str, epoch, dynamics: models.Dynamics) -> dict:
        return dict(
            self.spec.as_meta(),
            phase=phase,
            epoch=epoch,
            linear=dynamics.linear,
            centering=dynamics.centering,
            loaders=self.args.loaders,
            seed=self.args.random_seed,
            flags=run_flags(self.args),
        )


def run_experiment(args) -> dict:
    """Runs (or resumes) the experiment of `args`; returns the results."""
    validate_flags(args)
    saved = _saved_run(os.path.join(args.save_path, STATE_FILE), args)
    if saved is not None and saved["stage"] == "done":
        print(
            f"{args.save_path} already holds this finished run; nothing to do"
        )
        return saved["results"]
    base = _load_base_model(args)
    run = _prepare(args, base)
    _write_config(run)
    if saved is None:
        saved = _fresh_state(run, base)
    else:
        _trim_log(run, saved)
    if saved["stage"] == "standard":
        _phase_one(run, saved)
    if saved["stage"] == "linear":
        _phase_two(run, saved)
    return saved["results"]


def _saved_run(state_path: str, args):
    """The resume file's contents if this run should continue, else None."""
    if not os.path.exists(state_path):
        if args.resume:
            print(
                f"no saved state in {args.save_path}: starting from the "
                "beginning"
            )
        return None
    saved = utils.safe_load_pickle(state_path)
    if not args.resume:
        if saved.get("stage") != "done":
            raise UserError(
                f"{args.save_path} holds an unfinished run: pass --resume to "
                "continue it, or choose another --save_path"
            )
        return None
    if saved.get("flags") != run_flags(args):
        raise UserError(
            f"--resume: {args.save_path} holds a run with other "
            "flags; repeat its command line exactly, or choose "
            "another --save_path"
        )
    return saved


def _load_base_model(args):
    """The checkpoint of --base_model_path, or None."""
    if not args.base_model_path:
        return None
    return utils.load_checkpoint(args.base_model_path)


def _prepare(args, base) -> Run:
    """Resolves the model, loads the data and makes the save folder."""
    meta = base["meta"] if base else {}
    spec = models.resolve_spec(
        meta,
        data.n_classes,
        model=args.model,
        width=args.width,
        dataset=args.dataset,
        source=args.base_model_path or "checkpoint",
    )
    train_x, train_y = data.subset(
        *data.load_split(spec.dataset, args.data_path, train=True),
        args.train_size,
        args.random_seed,
    )
    test_x, test_y = data.subset(
        *data.load_split(spec.dataset, args.data_path, train=False),
        args.test_size,
        args.random_seed,
    )
    if base:
        models.check_params_fit(
            spec,
            base["params"],
            base["net_state"],
            train_x.shape[1:],
            args.base_model_path,
        )
    save_dir = utils.ensure_writable_dir(args.save_path)
    return Run(
        args,
        save_dir,
        spec,
        spec.build().apply,
        train_x,
        train_y,
        test_x,
        test_y,
    )


def _write_config(run: Run) -> None:
    config = {
        "flags": vars(run.args),
        "model": run.spec.as_meta(),
        "train_images": len(run.train_x),
        "test_images": len(run.test_x),
        "command": " ".join(sys.argv),
        "environment": utils.environment_info(),
    }
    utils.atomic_write_json(run.path("config.json"), config)


def _fresh_state(run: Run, base) -> dict:
    """The resume dict of a run that has not started."""
    results = {
        "standard": None,
        "linear": None,
        "standard_second": run.args.do_standard_second,
    }
    if base is None:
        params, net_state = models.init_model(
            run.spec.build(), run.args.random_seed, run.train_x.shape[1:]
        )
        saved = {
            "stage": "standard",
            "results": results,
            "train": _pack(train.new_train_state(params, None, net_state)),
        }
    else:
        print(f"loaded θ(t) from {run.args.base_model_path}; skipping phase 1")
        saved = {
            "stage": "linear",
            "results": results,
            "train": _phase_two_start(base["params"], base["net_state"]),
        }
    saved["flags"] = run_flags(run.args)
    if os.path.exists(run.path("log.jsonl")):
        os.remove(run.path("log.jsonl"))
    return saved


def _phase_two_start(params, net_state) -> dict:
    """Packed phase-2 state: lin_params starts equal to params = θ(t)."""
    return _pack(train.new_train_state(params, params, net_state))


def _pack(state: train.TrainState) -> dict:
    """A TrainState as plain dicts of NumPy arrays, for the resume file."""
    fields = utils.to_numpy_tree(
        {
            f.name: getattr(state, f.name)
            for f in dataclasses.fields(state)
            if f.name != "opt_state"
        }
    )
    fields["opt_leaves"] = utils.flatten_opt_state(state.opt_state)
    return fields


def _unpack(packed: dict) -> train.TrainState:
    template = train.make_optimizer().init(packed["trainable"])
    opt_state = utils.unflatten_like(template, packed["opt_leaves"])
    fields = {k: v for k, v in packed.items() if k != "opt_leaves"}
    return train.TrainState(opt_state=opt_state, **fields)


def _save_state(run: Run, saved: dict, state: train.TrainState | None):
    if state is not None:
        saved["train"] = _pack(state)
    utils.atomic_pickle(run.path(STATE_FILE), saved)


def _trim_log(run: Run, saved: dict) -> None:
    """Drops log lines of epochs the resumed run will train again."""
    path = run.path("log.jsonl")
    if not os.path.exists(path):
        return
    stage, epoch = saved["stage"], saved["train"]["epoch"]
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    kept = [
        r
        for r in records
        if STAGES.index(r["phase"]) < STAGES.index(stage)
        or (r["phase"] == stage and r["epoch"] < epoch)
    ]
    utils.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _append_log(run: Run, record: dict) -> None:
    with open(run.path("log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    print(
        f"{record['phase']} epoch {record['epoch'] + 1}: loss "
        f"{record['loss']:.4f}, accuracy {record['accuracy']:.4f}, "
        f"{record['images_per_s']:.0f} images/s"
        + (" (adversarial)" if record["adversarial"] else ""),
        flush=True,
    )


def _checkpoint(run, name, params, lin_params, net_state, meta):
    utils.save_checkpoint(run.path(name), params, lin_params, net_state, meta)


def _hooks(run: Run, saved: dict, phase: str, dynamics) -> train.Hooks:
    """The callbacks that write a phase's files."""
    args = run.args

    def epoch_start(state):
        if phase == "standard" and args.constant_save:
            _checkpoint(
                run,
                f"parameters_checkpoint_{state.epoch}.pkl",
                state.trainable,
                state.trainable,
                state.net_state,
                run.meta(phase, state.epoch, dynamics),
            )
        if phase == "linear" and args.constant_save_linear:
            _checkpoint(
                run,
                f"parameters_checkpoint_linear_{state.epoch}.pkl",
                state.params0,
                state.trainable,
                state.net_state,
                run.meta(phase, state.epoch, dynamics),
            )

    def fraction(state, value):
        if phase == "standard" and args.constant_save:
            _checkpoint(
                run,
                f"parameters_checkpoint_{value:g}.pkl",
                state.trainable,
                state.trainable,
                state.net_state,
                run.meta(phase, value, dynamics),
            )

    return train.Hooks(
        epoch_start=epoch_start,
        fraction=fraction,
        epoch_end=lambda state, record: _append_log(run, record),
        save_state=lambda state: _save_state(run, saved, state),
        state_every=args.state_every,
        progress=not args.no_progress,
    )


def _phase_one(run: Run, saved: dict) -> None:
    """Standard training of the network, then its evaluation."""
    args = run.args
    plan = train.PhasePlan(
        "standard",
        args.standard_epochs,
        args.loaders[0],
        args.random_seed,
        args.batch_size,
    )
    per_epoch = data.n_batches(len(run.train_x), args.batch_size)
    steps = train.make_step_fns(
        run.apply_fn,
        models.STANDARD,
        True,
        train.phase1_schedule(per_epoch),
        attacks.train_linf(args.eps, args.train_pgd_iters),
    )
    state = train.run_phase(
        plan,
        steps,
        _unpack(saved["train"]),
        run.train_x,
        run.train_y,
        _hooks(run, saved, "standard", models.STANDARD),
        _base_key(args, 1),
    )
    params, net_state = state.trainable, state.net_state
    if not args.skip_first_test:
        saved["results"]["standard"] = _evaluate(
            run, models.STANDARD, params, params, net_state, "standard"
        )
    saved["stage"] = "linear"
    saved["train"] = _phase_two_start(params, net_state)
    _save_state(run, saved, None)


def phase_two_dynamics(args) -> models.Dynamics:
    return models.Dynamics(
        linear=not args.do_standard_second, centering=args.centering
    )


def _phase_two(run: Run, saved: dict) -> None:
    """Training of lin_params under phase-2 dynamics; evaluation; files."""
    args = run.args
    dynamics = phase_two_dynamics(args)
    state = _unpack(saved["train"])
    if args.linear_epochs > 0:
        plan = train.PhasePlan(
            "linear",
            args.linear_epochs,
            args.loaders[1],
            args.random_seed,
            args.batch_size,
        )
        steps = train.make_step_fns(
            run.apply_fn,
            dynamics,
            args.loose_bn_second,
            lambda step: args.second_lr,
            attacks.train_linf(args.eps, args.train_pgd_iters),
        )
        state = train.run_phase(
            plan,
            steps,
            state,
            run.train_x,
            run.train_y,
            _hooks(run, saved, "linear", dynamics),
            _base_key(args, 2),
        )
        if not args.skip_second_test:
            saved["results"]["linear"] = _evaluate(
                run,
                dynamics,
                state.params0,
                state.trainable,
                state.net_state,
                "linear",
            )
    if args.save_models:
        _checkpoint(
            run,
            "parameters_final.pkl",
            state.params0,
            state.trainable,
            state.net_state,
            run.meta("final", args.linear_epochs, dynamics),
        )
    results = saved["results"]
    utils.atomic_pickle(run.path("results.pkl"), results)
    utils.atomic_write_json(run.path("results.json"), results)
    utils.atomic_pickle(
        run.path(STATE_FILE),
        {"stage": "done", "flags": saved["flags"], "results": results},
    )
    saved["stage"] = "done"


def _base_key(args, phase: int):
    return jax.random.fold_in(jax.random.PRNGKey(args.random_seed), phase)


def _evaluate(run: Run, dynamics, params0, params, net_state, name) -> dict:
    """Clean and PGD accuracies (fractions) on the test set."""
    args = run.args
    configs = {
        "linf": attacks.eval_linf(args.eps, args.eval_pgd_iters),
        "l2": attacks.eval_l2(args.eval_pgd_iters),
    }
    accuracies = {"clean": None, "l2": None, "linf": None}
    names = eval_attack_names(args) or [None]
    for attack_name in names:
        result = evaluation.evaluate(
            run.apply_fn,
            dynamics,
            params0,
            params,
            net_state,
            run.test_x,
            run.test_y,
            attack=configs.get(attack_name),
            batch_size=TEST_BATCH_SIZE,
            seed=args.random_seed,
            progress=not args.no_progress,
            desc=f"{name} eval {attack_name or 'clean'}",
        )
        accuracies["clean"] = result.acc_clean
        if attack_name:
            accuracies[attack_name] = result.acc_dirty
    print(
        f"{name} model: "
        + ", ".join(
            f"{k} {v:.4f}" for k, v in accuracies.items() if v is not None
        ),
        flush=True,
    )
    return accuracies
