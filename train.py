"""Training loops of both phases: compiled steps, epochs, resumable state.

A phase trains one parameter tree (`trainable`) by SGD with momentum 0.9.
Phase 1 trains the network itself; phase 2 trains `lin_params` under the
dynamics of `models.Dynamics` around the frozen `params0` = θ(t).

Data order and attack keys derive from the seed, the epoch and the batch
index alone, so a run restored from a `TrainState` mid-epoch continues
exactly as an uninterrupted one would.
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import attacks
import data
import models
from utils import UserError

MOMENTUM = 0.9
PHASE1_LR = 0.1
PHASE1_DECAY_EPOCHS = (100, 150)  # the rate is divided by 10 at each
FRACTIONAL_SAVE_EPOCHS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5)
MIXED_SWITCH_EPOCH = 50  # loader 'F': benign before, adversarial from here
LOADERS = "CAF"


def phase1_schedule(steps_per_epoch: int) -> optax.Schedule:
    """0.1, then 0.01 from epoch 100, then 0.001 from epoch 150; by batch."""
    return optax.piecewise_constant_schedule(
        PHASE1_LR, {e * steps_per_epoch: 0.1 for e in PHASE1_DECAY_EPOCHS}
    )


def make_optimizer() -> optax.GradientTransformation:
    """SGD with momentum whose rate is set by each step (see `_with_lr`)."""
    return optax.inject_hyperparams(optax.sgd)(
        learning_rate=PHASE1_LR, momentum=MOMENTUM
    )


def _with_lr(opt_state, lr):
    """`opt_state` of `make_optimizer` with its learning rate set to lr."""
    hyperparams = dict(opt_state.hyperparams, learning_rate=lr)
    return opt_state._replace(hyperparams=hyperparams)


def is_adversarial(loader: str, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) of a phase with `loader` is
    adversarial."""
    return loader == "A" or (loader == "F" and epoch >= MIXED_SWITCH_EPOCH)


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The compiled steps of one phase.

    clean(trainable, params0, state, opt_state, x, y, step)
      -> (trainable, state, opt_state, loss, n_correct): one SGD update.
    adversarial(trainable, params0, state, opt_state, x, y, step, key)
      -> the same after two updates: one on the clean batch, then one on a
      PGD batch made against the just-updated model (batch norm in eval
      mode); loss and n_correct are those of the adversarial batch.
    `step` is the batch counter of the phase that sets the learning rate.
    """

    clean: Callable
    adversarial: Callable


def make_step_fns(
    apply_fn,
    dynamics: models.Dynamics,
    bn_training: bool,
    schedule: optax.Schedule,
    attack: attacks.AttackConfig,
) -> StepFns:
    """Compiles (lazily, once per batch shape) the two steps of a phase.

    Args:
      apply_fn: the model's apply.
      dynamics: how `trainable` maps to logits (with `params0`).
      bn_training: batch statistics in the forward pass and running
        averages updated; otherwise eval mode and `state` never changes.
      schedule: learning rate as a function of the phase's batch counter.
      attack: the PGD of adversarial batches.
    """
    optimizer = make_optimizer()

    def sgd_update(trainable, params0, state, opt_state, x, y, lr):
        def loss_fn(p):
            logits, new_state = dynamics.logits(
                apply_fn, params0, p, state, x, bn_training
            )
            losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return losses.mean(), (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(trainable)
        updates, opt_state = optimizer.update(
            grads, _with_lr(opt_state, lr), trainable
        )
        trainable = optax.apply_updates(trainable, updates)
        if not bn_training:
            new_state = state
        return (
            trainable,
            new_state,
            opt_state,
            loss,
            attacks.accuracy_counts(logits, y),
        )

    def clean(trainable, params0, state, opt_state, x, y, step):
        return sgd_update(
            trainable, params0, state, opt_state, x, y, schedule(step)
        )

    def adversarial(trainable, params0, state, opt_state, x, y, step, key):
        lr = schedule(step)
        trainable, state, opt_state, _, _ = sgd_update(
            trainable, params0, state, opt_state, x, y, lr
        )

        def logits_fn(images):
            return dynamics.logits(
                apply_fn, params0, trainable, state, images, False
            )[0]

        x_adv = attacks.pgd(logits_fn, x, y, key, **attack.kwargs())
        return sgd_update(trainable, params0, state, opt_state, x_adv, y, lr)

    # No buffer donation: executables with donated inputs that JAX 0.5.3
    # loads from its persistent compilation cache crash on the CPU (seen
    # here), and the saved memory is small next to activations.
    return StepFns(jax.jit(clean), jax.jit(adversarial))


def empty_metrics() -> dict:
    """An epoch's running sums before its first batch."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


@dataclasses.dataclass
class TrainState:
    """Everything a phase needs to continue exactly where it stopped.

    `epoch` and `step` name the next batch to run (0-based; step within the
    epoch). `metrics` holds the running sums of the current epoch.
    """

    trainable: dict
    params0: dict | None
    net_state: dict
    opt_state: object
    epoch: int = 0
    step: int = 0
    metrics: dict = dataclasses.field(default_factory=empty_metrics)
    saved_fractions: list = dataclasses.field(default_factory=list)


def new_train_state(trainable, params0, net_state) -> TrainState:
    """A phase's state before its first batch."""
    trainable = jax.tree_util.tree_map(jnp.array, trainable)  # own copy
    return TrainState(
        trainable, params0, net_state, make_optimizer().init(trainable)
    )


def batch_key(base_key, epoch: int, step: int):
    """The PRNG key of one batch's attack."""
    return jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What one phase does.

    name: 'standard' or 'linear' (used in logs and the resume file).
    epochs: number of epochs.
    loader: 'C', 'A' or 'F'.
    seed: the run's seed (data order and attack keys).
    batch_size: training batch size.
    """

    name: str
    epochs: int
    loader: str
    seed: int
    batch_size: int


@dataclasses.dataclass
class Hooks:
    """Callbacks of `run_phase`; each receives the TrainState.

    epoch_start(state): before the first batch of `state.epoch` (also at
      epoch == epochs, after the last one).
    fraction(state, fraction): when training first passes `fraction` epochs.
    epoch_end(state, record): after an epoch; record is its log line.
    save_state(state): a moment to save the resume file (every
      `state_every` batches and at each epoch end).
    """

    epoch_start: Callable = lambda state: None
    fraction: Callable = lambda state, fraction: None
    epoch_end: Callable = lambda state, record: None
    save_state: Callable = lambda state: None
    state_every: int = 100
    progress: bool = True


def run_phase(
    plan: PhasePlan,
    steps: StepFns,
    state: TrainState,
    images: np.ndarray,
    labels: np.ndarray,
    hooks: Hooks,
    base_key,
) -> TrainState:
    """Trains from `state` to the end of the phase; returns the final state.

    Raises UserError when the loss stops being finite; the last state handed
    to `hooks.save_state` is then the last good one.
    """
    per_epoch = data.n_batches(len(images), plan.batch_size)
    while state.epoch < plan.epochs:
        if state.step == 0:
            hooks.epoch_start(state)
        _run_epoch(
            plan, steps, state, images, labels, hooks, base_key, per_epoch
        )
        record = _epoch_record(plan, state)
        state.epoch += 1
        state.step = 0
        state.metrics = empty_metrics()
        hooks.epoch_end(state, record)
        hooks.save_state(state)
    hooks.epoch_start(state)
    return state


def _run_epoch(plan, steps, state, images, labels, hooks, base_key, per_epoch):
    """Runs the rest of epoch `state.epoch`, updating `state` in place."""
    adversarial = is_adversarial(plan.loader, state.epoch)
    batches = data.train_batches(
        images,
        labels,
        plan.batch_size,
        plan.seed,
        state.epoch,
        start_step=state.step,
    )
    bar = _progress_bar(plan, state, per_epoch, hooks.progress)
    pending_loss, pending_correct, pending_seen = [], [], 0
    started = time.perf_counter()
    for step, x, y in batches:
        global_step = state.epoch * per_epoch + step
        args = (
            state.trainable,
            state.params0,
            state.net_state,
            state.opt_state,
            x,
            y,
            global_step,
        )
        if adversarial:
            out = steps.adversarial(
                *args, batch_key(base_key, state.epoch, step)
            )
        else:
            out = steps.clean(*args)
        (state.trainable, state.net_state, state.opt_state, loss, correct) = (
            out
        )
        pending_loss.append(loss * len(y))
        pending_correct.append(correct)
        pending_seen += len(y)
        state.step = step + 1
        _check_fractions(state, per_epoch, hooks)
        due = state.step % hooks.state_every == 0 or state.step == per_epoch
        if due or state.step % 10 == 0:
            elapsed = time.perf_counter() - started
            _absorb(
                state,
                plan,
                pending_loss,
                pending_correct,
                pending_seen,
                elapsed,
            )
            pending_loss, pending_correct, pending_seen = [], [], 0
            started = time.perf_counter()
            _show(bar, state)
            if due and state.step < per_epoch:
                hooks.save_state(state)
        bar.update(1)
    bar.close()


def _absorb(state, plan, losses, corrects, seen, seconds):
    """Adds pending batch results to the epoch's sums; stops on divergence."""
    if not seen:
        return
    loss_sum = float(jnp.sum(jnp.stack(losses)))
    if not np.isfinite(loss_sum):
        raise UserError(
            f"the training loss became non-finite in phase {plan.name}, epoch "
            f"{state.epoch}, before batch {state.step}: the last good state "
            "was saved before it; lower the learning rate"
        )
    metrics = state.metrics
    metrics["loss_sum"] += loss_sum
    metrics["correct"] += int(jnp.sum(jnp.stack(corrects)))
    metrics["seen"] += seen
    metrics["seconds"] += seconds


def _check_fractions(state, per_epoch, hooks):
    """Calls hooks.fraction for each fractional save point just passed."""
    done = state.epoch + state.step / per_epoch
    for fraction in FRACTIONAL_SAVE_EPOCHS:
        if fraction <= done and fraction not in state.saved_fractions:
            state.saved_fractions.append(fraction)
            hooks.fraction(state, fraction)


def _epoch_record(plan, state) -> dict:
    """The epoch's line for log.jsonl."""
    m = state.metrics
    seen = max(m["seen"], 1)
    return {
        "phase": plan.name,
        "epoch": state.epoch,
        "adversarial": is_adversarial(plan.loader, state.epoch),
        "loss": m["loss_sum"] / seen,
        "accuracy": m["correct"] / seen,
        "images": m["seen"],
        "seconds": m["seconds"],
        "images_per_s": m["seen"] / max(m["seconds"], 1e-9),
    }


def _progress_bar(plan, state, per_epoch, enabled):
    from tqdm import tqdm

    return tqdm(
        total=per_epoch,
        initial=state.step,
        disable=not enabled,
        desc=f"{plan.name} epoch {state.epoch + 1}/{plan.epochs}",
        leave=False,
        dynamic_ncols=True,
    )


def _show(bar, state):
    m = state.metrics
    if m["seen"]:
        bar.set_postfix(
            loss=f"{m['loss_sum'] / m['seen']:.3f}",
            acc=f"{m['correct'] / m['seen']:.3f}",
            img_s=f"{m['seen'] / max(m['seconds'], 1e-9):.0f}",
        )
