"""Training loops of both phases: compiled steps, epochs, resumable state.

A phase trains one parameter tree by SGD with momentum 0.9. Phase 1 trains
the network itself; phase 2 trains `lin_params` under the dynamics of
`models.Dynamics` around the frozen θ(t) (or, with --do_standard_second,
the network itself).

The state of a phase has two parts:
* `TrainState`, a pytree on the device: the trained parameters, the frozen
  expansion point, the optimiser state, the batch-norm state and the batch
  counter that sets the learning rate. A compiled step reads
  `step(state, batch, key) -> (state, StepMetrics)`.
* `LoopPosition`, on the host: the epoch and batch to run next, the
  epoch's running sums, the fractional save points passed.

Data order and attack keys derive from the seed, the epoch and the batch
index alone, so a run restored from both parts mid-epoch continues exactly
as an uninterrupted one would.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import attacks
import data
import models

if TYPE_CHECKING:  # tqdm is imported where a bar is made
    from tqdm import tqdm

MOMENTUM = 0.9
PHASE1_LR = 0.1
PHASE1_DECAY_EPOCHS = (100, 150)  # the rate is divided by 10 at each
FRACTIONAL_SAVE_EPOCHS = (0.125, 0.25, 0.375, 0.5, 0.75, 1.5, 2.5)
MIXED_SWITCH_EPOCH = 50  # loader 'F': benign before, adversarial from here
LOADERS = "CAF"
# Batch results are fetched from the device (and the loss checked) every
# this many batches, so the host does not wait for the device every step.
FETCH_EVERY = 10
# A loss above this many times its value at the start of the phase (and
# above this many nats) gets a warning: the learning rate is too high.
LOSS_GROWTH_WARNING = 100.0


def phase1_schedule(steps_per_epoch: int) -> optax.Schedule:
    """0.1, then 0.01 from epoch 100, then 0.001 from epoch 150; by batch."""
    return optax.piecewise_constant_schedule(
        PHASE1_LR, {e * steps_per_epoch: 0.1 for e in PHASE1_DECAY_EPOCHS}
    )


def constant_schedule(lr: float) -> optax.Schedule:
    """The phase-2 rate: `lr` at every batch."""
    return optax.constant_schedule(lr)


def make_optimizer() -> optax.GradientTransformation:
    """SGD with momentum 0.9 whose rate each step sets from the schedule.

    The rate is a hyperparameter in the optimiser state (`inject_
    hyperparams`), so one optimiser state serves any schedule; the value
    given here is only the state's initial entry.
    """
    return optax.inject_hyperparams(optax.sgd)(
        learning_rate=PHASE1_LR, momentum=MOMENTUM
    )


def _with_lr(
    opt_state: optax.OptState, lr: jax.Array | float
) -> optax.OptState:
    """`opt_state` of `make_optimizer` with its learning rate set to lr."""
    hyperparams = dict(opt_state.hyperparams, learning_rate=lr)
    return opt_state._replace(hyperparams=hyperparams)


def is_adversarial(loader: str, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) of a phase with `loader` is
    adversarial."""
    return loader == "A" or (loader == "F" and epoch >= MIXED_SWITCH_EPOCH)


class TrainState(NamedTuple):
    """The device side of a phase; a pytree.

    params: the trained tree (θ in phase 1; lin_params in phase 2, or the
      network itself with --do_standard_second).
    params0: the frozen expansion point θ(t) of phase 2; None in phase 1.
    opt_state: the optimiser state of `make_optimizer`.
    net_state: batch-norm state (running statistics).
    step: int32 scalar, the batches done; the schedule's argument.
    """

    params: models.Params
    params0: models.Params
    opt_state: optax.OptState
    net_state: models.State
    step: jax.Array

    def network(
        self, apply_fn: Callable, dynamics: models.Dynamics
    ) -> models.Network:
        """The network these parameters give under `dynamics`."""
        return models.Network(
            apply_fn, dynamics, self.params0, self.params, self.net_state
        )


def new_train_state(
    params: models.Params,
    params0: models.Params,
    net_state: models.State,
    step: int = 0,
) -> TrainState:
    """A phase's state before its first batch: a fresh optimiser for
    (a copy of) `params`, the batch counter at `step`."""
    params = jax.tree_util.tree_map(jnp.array, params)  # own copy
    return TrainState(
        params,
        params0,
        make_optimizer().init(params),
        net_state,
        jnp.asarray(step, jnp.int32),
    )


class Batch(NamedTuple):
    """images (B, H, W, C) float32 in [0, 1]; labels (B,) int32."""

    images: np.ndarray | jax.Array
    labels: np.ndarray | jax.Array


class StepMetrics(NamedTuple):
    """loss: float32 scalar, the mean cross-entropy of the batch (of the
    adversarial batch, for an adversarial step); correct: int32 scalar."""

    loss: jax.Array
    correct: jax.Array


def correct_count(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """int32 scalar: rows of (B, K) `logits` whose argmax is the label."""
    return jnp.sum(jnp.argmax(logits, axis=-1) == labels).astype(jnp.int32)


# step(state, batch, key) -> (state, metrics); the clean step ignores key.
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Any]]


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The compiled steps of one phase.

    clean: one SGD update on the batch.
    adversarial: two updates, as the original: one on the clean batch,
      then one on a PGD batch made against the just-updated model (batch
      norm in eval mode); the metrics are those of the adversarial batch.
    """

    clean: StepFn
    adversarial: StepFn


def _sgd_update_fn(
    apply_fn: Callable, dynamics: models.Dynamics
) -> Callable[[TrainState, Batch, jax.Array, bool], tuple]:
    """`update(state, batch, lr, training) -> (state, StepMetrics)`: one
    SGD update of the state's params on the batch at rate lr, batch norm in
    training mode (its state updated) or eval mode; the batch counter is
    left as it is."""
    optimizer = make_optimizer()

    def update(
        state: TrainState, batch: Batch, lr: jax.Array, training: bool
    ) -> tuple[TrainState, StepMetrics]:
        def loss_fn(
            params: models.Params,
        ) -> tuple[jax.Array, tuple[jax.Array, models.State]]:
            logits, net_state = dynamics.logits(
                apply_fn,
                state.params0,
                params,
                state.net_state,
                batch.images,
                training,
            )
            losses = optax.softmax_cross_entropy_with_integer_labels(
                logits, batch.labels
            )
            return losses.mean(), (logits, net_state)

        (loss, (logits, net_state)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = optimizer.update(
            grads, _with_lr(state.opt_state, lr), state.params
        )
        state = state._replace(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            net_state=net_state if training else state.net_state,
        )
        return state, StepMetrics(loss, correct_count(logits, batch.labels))

    return update


def make_step_fns(
    apply_fn: Callable,
    dynamics: models.Dynamics,
    bn_training: bool,
    schedule: optax.Schedule,
    attack: attacks.AttackConfig,
    adversarial_bn_training: bool | None = None,
) -> StepFns:
    """Compiles (lazily, once per batch shape) the two steps of a phase.

    Args:
      apply_fn: the model's apply.
      dynamics: how the state's params (around params0) give logits.
      bn_training: batch statistics in the forward pass and running
        averages updated; otherwise eval mode and the state never changes.
      schedule: learning rate as a function of the state's batch counter.
      attack: the PGD of adversarial batches.
      adversarial_bn_training: bn_training of the update on the adversarial
        batch; None means `bn_training`. The original trains phase 2 with
        `--loose_bn_second` this way: the clean update in training mode,
        the adversarial update in eval mode.
    """
    sgd_update = _sgd_update_fn(apply_fn, dynamics)
    if adversarial_bn_training is None:
        adversarial_bn_training = bn_training

    def clean(
        state: TrainState, batch: Batch, key: jax.Array
    ) -> tuple[TrainState, StepMetrics]:
        del key
        lr = schedule(state.step)
        state, metrics = sgd_update(state, batch, lr, bn_training)
        return state._replace(step=state.step + 1), metrics

    def adversarial(
        state: TrainState, batch: Batch, key: jax.Array
    ) -> tuple[TrainState, StepMetrics]:
        lr = schedule(state.step)
        state, _ = sgd_update(state, batch, lr, bn_training)
        network = state.network(apply_fn, dynamics)
        adv = attacks.pgd(
            lambda x: network.logits(x)[0],
            batch.images,
            batch.labels,
            key,
            attack,
        )
        state, metrics = sgd_update(
            state, Batch(adv, batch.labels), lr, adversarial_bn_training
        )
        return state._replace(step=state.step + 1), metrics

    # No buffer donation: executables with donated inputs that JAX 0.5.3
    # loads from its persistent compilation cache crash on the CPU (seen
    # here), and the saved memory is small next to activations.
    return StepFns(jax.jit(clean), jax.jit(adversarial))


@dataclasses.dataclass
class EpochMetrics:
    """An epoch's running sums.

    loss_sum: Σ over batches of the batch's mean loss × its size.
    correct, seen: right answers and images so far.
    seconds: wall time of the batches so far.
    compile_seconds: the part of `seconds` spent in batches that compiled
      a step (the first batch of each step and batch shape in this
      process), which also ran them; `compile_images` their images.
    """

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0
    compile_images: int = 0


@dataclasses.dataclass
class LoopPosition:
    """The host side of a phase: where it is and what it has summed.

    epoch, step: the next batch to run (0-based; step within the epoch).
    metrics: the current epoch's running sums.
    saved_fractions: the fractional save points already passed.
    start_loss: the mean loss of the phase's first batches (for the growth
      warning); None before they ran.
    warned: whether the growth warning was given in this phase.
    """

    epoch: int = 0
    step: int = 0
    metrics: EpochMetrics = dataclasses.field(default_factory=EpochMetrics)
    saved_fractions: list = dataclasses.field(default_factory=list)
    start_loss: float | None = None
    warned: bool = False

    def as_record(self) -> dict:
        """Plain values, for the resume file."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "LoopPosition":
        fields = dict(record)
        fields["metrics"] = EpochMetrics(**fields["metrics"])
        fields["saved_fractions"] = list(fields["saved_fractions"])
        return cls(**fields)


def batch_key(base_key: jax.Array, epoch: int, step: int) -> jax.Array:
    """The PRNG key of one batch's attack."""
    return jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)


@dataclasses.dataclass(frozen=True)
class PhasePlan:
    """What one phase does.

    name: 'standard' or 'linear' (used in logs and the resume file).
    epochs: number of epochs.
    loader: 'C', 'A' or 'F'.
    seed: the seed of the data order and the attack keys (run_exp.py's
      --order_seed).
    batch_size: training batch size.
    """

    name: str
    epochs: int
    loader: str
    seed: int
    batch_size: int


class Diverged(Exception):
    """The training loss stopped being finite.

    phase, epoch, step: where (the loss of a batch before `step` of
    `epoch` was not finite).
    """

    def __init__(self, phase: str, epoch: int, step: int) -> None:
        super().__init__(f"non-finite loss in {phase}, epoch {epoch}")
        self.phase, self.epoch, self.step = phase, epoch, step


@dataclasses.dataclass
class Hooks:
    """Callbacks of `run_phase`.

    epoch_start(state, position): before the first batch of
      `position.epoch` (also at epoch == epochs, after the last one).
    fraction(state, position, fraction): when training first passes
      `fraction` epochs.
    epoch_end(state, position, record): after an epoch; record is its log
      line.
    save_state(state, position): a moment to save the resume file (every
      `state_every` batches and at each epoch end).
    warn(message): a warning about the run (e.g. a growing loss).
    """

    epoch_start: Callable = lambda state, position: None
    fraction: Callable = lambda state, position, fraction: None
    epoch_end: Callable = lambda state, position, record: None
    save_state: Callable = lambda state, position: None
    warn: Callable = lambda message: None
    state_every: int = 100
    progress: bool = True


@dataclasses.dataclass
class _Phase:
    """What every epoch of one `run_phase` call shares.

    compiled: the (step kind, batch size) pairs compiled in this process.
    """

    plan: PhasePlan
    steps: StepFns
    images: np.ndarray
    labels: np.ndarray
    hooks: Hooks
    base_key: jax.Array
    per_epoch: int
    compiled: set[tuple[str, int]] = dataclasses.field(default_factory=set)


def run_phase(
    plan: PhasePlan,
    steps: StepFns,
    state: TrainState,
    position: LoopPosition,
    images: np.ndarray,
    labels: np.ndarray,
    hooks: Hooks,
    base_key: jax.Array,
) -> TrainState:
    """Trains from (`state`, `position`) to the end of the phase.

    `position` is updated in place. Returns the final TrainState.

    Raises:
      Diverged: the loss stopped being finite; the last state handed to
        `hooks.save_state` is then the last good one.
    """
    per_epoch = data.n_batches(len(images), plan.batch_size)
    phase = _Phase(plan, steps, images, labels, hooks, base_key, per_epoch)
    while position.epoch < plan.epochs:
        if position.step == 0:
            hooks.epoch_start(state, position)
        state = _run_epoch(phase, state, position)
        record = _epoch_record(plan, position)
        position.epoch += 1
        position.step = 0
        position.metrics = EpochMetrics()
        hooks.epoch_end(state, position, record)
        hooks.save_state(state, position)
    hooks.epoch_start(state, position)
    return state


def _run_epoch(
    phase: _Phase, state: TrainState, position: LoopPosition
) -> TrainState:
    """Runs the rest of epoch `position.epoch`; returns the state."""
    plan, hooks, per_epoch = phase.plan, phase.hooks, phase.per_epoch
    adversarial = is_adversarial(plan.loader, position.epoch)
    kind = "adversarial" if adversarial else "clean"
    step_fn = phase.steps.adversarial if adversarial else phase.steps.clean
    batches = data.train_batches(
        phase.images,
        phase.labels,
        plan.batch_size,
        plan.seed,
        position.epoch,
        start_step=position.step,
    )
    bar = _progress_bar(plan, position, per_epoch, hooks.progress)
    pending = []
    started = time.perf_counter()
    for step, x, y in batches:
        key = batch_key(phase.base_key, position.epoch, step)
        if (kind, len(y)) not in phase.compiled:
            # A batch that compiles its step is timed alone, so that the
            # epoch's rate can leave compilation out.
            _absorb(plan, position, pending, hooks, started)
            pending, started = [], time.perf_counter()
            state, metrics = step_fn(state, Batch(x, y), key)
            seconds = _absorb(
                plan, position, [(metrics, len(y))], hooks, started
            )
            phase.compiled.add((kind, len(y)))
            position.metrics.compile_seconds += seconds
            position.metrics.compile_images += len(y)
            started = time.perf_counter()
        else:
            state, metrics = step_fn(state, Batch(x, y), key)
            pending.append((metrics, len(y)))
        position.step = step + 1
        _check_fractions(state, position, per_epoch, hooks)
        due = (
            position.step % hooks.state_every == 0
            or position.step == per_epoch
        )
        if due or position.step % FETCH_EVERY == 0:
            _absorb(plan, position, pending, hooks, started)
            pending, started = [], time.perf_counter()
            _show(bar, position)
            if due and position.step < per_epoch:
                hooks.save_state(state, position)
        bar.update(1)
    _absorb(plan, position, pending, hooks, started)
    bar.close()
    return state


def _absorb(
    plan: PhasePlan,
    position: LoopPosition,
    pending: list[tuple[StepMetrics, int]],
    hooks: Hooks,
    started: float,
) -> float:
    """Adds pending (metrics, batch size) pairs to the epoch's sums, with
    the time since `started` (a perf_counter reading) once their results
    are fetched; returns that time.

    Raises Diverged on a non-finite loss; warns (once per phase) when the
    loss has grown LOSS_GROWTH_WARNING-fold since the phase began.
    """
    if not pending:
        return 0.0
    # Fetching waits for the device, so the time covers the batches' work.
    losses = np.asarray(jnp.stack([m.loss for m, _ in pending]))
    corrects = np.asarray(jnp.stack([m.correct for m, _ in pending]))
    seconds = time.perf_counter() - started
    sizes = np.asarray([n for _, n in pending], np.float64)
    loss_sum = float(np.sum(losses.astype(np.float64) * sizes))
    if not np.isfinite(loss_sum):
        raise Diverged(plan.name, position.epoch, position.step)
    mean = loss_sum / float(np.sum(sizes))
    if position.start_loss is None:
        position.start_loss = mean
    elif not position.warned and mean > LOSS_GROWTH_WARNING * max(
        position.start_loss, 1.0
    ):
        position.warned = True
        hooks.warn(
            f"phase {plan.name}, epoch {position.epoch + 1}: the training "
            f"loss grew from {position.start_loss:.3g} to {mean:.3g}; the "
            "learning rate is probably too high"
        )
    metrics = position.metrics
    metrics.loss_sum += loss_sum
    metrics.correct += int(np.sum(corrects))
    metrics.seen += int(np.sum(sizes))
    metrics.seconds += seconds
    return seconds


def _check_fractions(
    state: TrainState, position: LoopPosition, per_epoch: int, hooks: Hooks
) -> None:
    """Calls hooks.fraction for each fractional save point just passed."""
    done = position.epoch + position.step / per_epoch
    for fraction in FRACTIONAL_SAVE_EPOCHS:
        if fraction <= done and fraction not in position.saved_fractions:
            position.saved_fractions.append(fraction)
            hooks.fraction(state, position, fraction)


def _epoch_record(plan: PhasePlan, position: LoopPosition) -> dict:
    """The epoch's line for log.jsonl.

    images_per_s leaves out the batches that compiled a step
    (compile_seconds, which includes running them).
    """
    m = position.metrics
    seen = max(m.seen, 1)
    steady_images = m.seen - m.compile_images
    steady_seconds = m.seconds - m.compile_seconds
    return {
        "phase": plan.name,
        "epoch": position.epoch,
        "adversarial": is_adversarial(plan.loader, position.epoch),
        "loss": m.loss_sum / seen,
        "accuracy": m.correct / seen,
        "images": m.seen,
        "seconds": m.seconds,
        "compile_seconds": m.compile_seconds,
        "images_per_s": (
            steady_images / steady_seconds
            if steady_images and steady_seconds > 0
            else None
        ),
    }


def _progress_bar(
    plan: PhasePlan, position: LoopPosition, per_epoch: int, enabled: bool
) -> "tqdm":
    from tqdm import tqdm

    return tqdm(
        total=per_epoch,
        initial=position.step,
        disable=not enabled,
        desc=f"{plan.name} epoch {position.epoch + 1}/{plan.epochs}",
        leave=False,
        dynamic_ncols=True,
    )


def _show(bar: "tqdm", position: LoopPosition) -> None:
    m = position.metrics
    if m.seen:
        steady = m.seconds - m.compile_seconds
        rate = (m.seen - m.compile_images) / steady if steady > 0 else 0.0
        bar.set_postfix(
            loss=f"{m.loss_sum / m.seen:.3f}",
            acc=f"{m.correct / m.seen:.3f}",
            img_s=f"{rate:.0f}",
        )
