"""train.py on random arrays: the steps against updates written out by hand,
the schedule, batch-norm modes, hooks, divergence, and a resumed phase
against an uninterrupted one. Seconds, no dataset needed."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import attacks
import models
import utils
from helpers import assert_close
from store import atomic, pickles
from training import experiment, train

SHAPE = (6, 6, 1)
N_CLASSES = 4


def _forward(images, is_training):
    """Flatten, 16 units, batch norm, ReLU, logits: small, with state."""
    x = hk.Flatten()(images)
    x = hk.Linear(16)(x)
    x = hk.BatchNorm(True, True, 0.9)(x, is_training)
    return hk.Linear(N_CLASSES)(jax.nn.relu(x))


MODEL = hk.transform_with_state(_forward)


def random_batch(seed, n=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int32)
    return train.Batch(jnp.asarray(images), jnp.asarray(labels))


@pytest.fixture(scope="module")
def start():
    """(params, net_state) with a non-zero last layer."""
    params, state = models.init_model(MODEL, 0, SHAPE)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jnp.ones_like(p), params
    )
    return params, state


def loss_fn(dynamics, params0, state, batch, training):
    """The mean cross-entropy as a function of the trained parameters, and
    the new state, written without train.py."""

    def loss(params):
        logits, new_state = dynamics.logits(
            MODEL.apply, params0, params, state, batch.images, training
        )
        labels = jax.nn.one_hot(batch.labels, N_CLASSES)
        ce = -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)
        return jnp.mean(ce), new_state

    return loss


def sgd_momentum(params, momentum, grads, lr):
    """optax.sgd with momentum 0.9, written out: m ← 0.9 m + g;
    θ ← θ − lr · m."""
    momentum = jax.tree_util.tree_map(
        lambda m, g: 0.9 * m + g, momentum, grads
    )
    params = jax.tree_util.tree_map(lambda p, m: p - lr * m, params, momentum)
    return params, momentum


def momentum_of(state):
    """The momentum buffer inside train's optimiser state."""
    return state.opt_state.inner_state[0].trace


ATTACK = attacks.AttackConfig("linf", eps=0.1, step_size=0.05, iters=3)


def steps_for(dynamics=models.STANDARD, bn=True, adv_bn=None, lr=0.1):
    return train.make_step_fns(
        MODEL.apply,
        dynamics,
        bn,
        optax.constant_schedule(lr),
        ATTACK,
        adversarial_bn_training=adv_bn,
    )


@pytest.mark.medium
def test_clean_steps_are_sgd_with_momentum(start):
    params, state = start
    steps = steps_for()
    ours = train.new_train_state(params, None, state)
    theirs, momentum = params, jax.tree_util.tree_map(jnp.zeros_like, params)
    for seed in range(3):
        batch = random_batch(seed)
        ours, metrics = steps.clean(ours, batch, None)
        (loss, state), grads = jax.value_and_grad(
            loss_fn(models.STANDARD, None, state, batch, True), has_aux=True
        )(theirs)
        theirs, momentum = sgd_momentum(theirs, momentum, grads, 0.1)
        assert_close(metrics.loss, loss)
    for got, want in zip(
        jax.tree_util.tree_leaves(ours.params),
        jax.tree_util.tree_leaves(theirs),
        strict=True,
    ):
        assert_close(got, want, rtol=1e-5)
    assert_close(
        jax.tree_util.tree_leaves(momentum_of(ours))[0],
        jax.tree_util.tree_leaves(momentum)[0],
    )
    assert int(ours.step) == 3
    # Batch norm in training mode: the running statistics of each batch.
    for got, want in zip(
        jax.tree_util.tree_leaves(ours.net_state),
        jax.tree_util.tree_leaves(state),
        strict=True,
    ):
        assert_close(got, want)


def test_adversarial_step_updates_twice_around_the_attack(start):
    """One update on the clean batch, PGD against the updated model (batch
    norm in eval mode), one update on the adversarial batch."""
    params, state = start
    batch = random_batch(5)
    key = jax.random.PRNGKey(3)
    ours, metrics = steps_for().adversarial(
        train.new_train_state(params, None, state), batch, key
    )
    # The same by hand.
    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    grads, state1 = jax.grad(
        loss_fn(models.STANDARD, None, state, batch, True), has_aux=True
    )(params)
    params1, momentum = sgd_momentum(params, momentum, grads, 0.1)
    adv = attacks.pgd(
        lambda x: MODEL.apply(params1, state1, None, x, False)[0],
        batch.images,
        batch.labels,
        key,
        ATTACK,
    )
    adv_batch = train.Batch(adv, batch.labels)
    (loss2, state2), grads = jax.value_and_grad(
        loss_fn(models.STANDARD, None, state1, adv_batch, True), has_aux=True
    )(params1)
    params2, _ = sgd_momentum(params1, momentum, grads, 0.1)
    assert_close(metrics.loss, loss2, rtol=1e-4)
    for got, want in zip(
        jax.tree_util.tree_leaves(ours.params),
        jax.tree_util.tree_leaves(params2),
        strict=True,
    ):
        assert_close(got, want, rtol=1e-4)
    assert int(ours.step) == 1  # one batch, one schedule step


def test_learning_rate_follows_the_batch_counter():
    per_epoch = 3
    schedule = train.phase1_schedule(per_epoch)
    values = [float(schedule(s)) for s in (0, 299, 300, 449, 450, 10**6)]
    np.testing.assert_allclose(
        values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6
    )
    assert float(train.constant_schedule(0.03)(12345)) == pytest.approx(0.03)


def test_a_step_uses_the_rate_of_its_batch_counter(start):
    """Two states that differ only in `step` (before and after epoch 100's
    boundary) take steps of 0.1 and 0.01."""
    params, state = start
    batch = random_batch(2)
    steps = train.make_step_fns(
        MODEL.apply,
        models.STANDARD,
        False,
        train.phase1_schedule(1),
        ATTACK,
    )
    grads = jax.grad(
        loss_fn(models.STANDARD, None, state, batch, False), has_aux=True
    )(params)[0]
    for step, lr in ((99, 0.1), (100, 0.01)):
        fresh = train.new_train_state(params, None, state, step=step)
        after, _ = steps.clean(fresh, batch, None)
        moved = jax.tree_util.tree_map(jnp.subtract, params, after.params)
        for d, g in zip(
            jax.tree_util.tree_leaves(moved),
            jax.tree_util.tree_leaves(grads),
            strict=True,
        ):
            assert_close(d, lr * g, rtol=1e-4)


@pytest.mark.parametrize("centering", [False, True])
def test_linearized_training_follows_the_frozen_jacobian(start, centering):
    """The gradient of a (centered) linearized step is Jᵀ ∂loss/∂logits with
    J the Jacobian at θ0, taken here with jax.vjp of the network itself."""
    params0, state = start
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params0)
    batch = random_batch(4)
    dynamics = models.Dynamics(linear=True, centering=centering)
    steps = steps_for(dynamics, bn=False, lr=1.0)
    state0 = train.new_train_state(params, params0, state)
    after, _ = steps.clean(state0, batch, None)
    step_taken = jax.tree_util.tree_map(jnp.subtract, params, after.params)

    def f(p):
        return MODEL.apply(p, state, None, batch.images, False)[0]

    f0, pullback = jax.vjp(f, params0)
    df = jax.jvp(
        f, (params0,), (jax.tree_util.tree_map(jnp.subtract, params, params0),)
    )[1]
    logits = df if centering else f0 + df
    probs = jax.nn.softmax(logits)
    dlogits = (probs - jax.nn.one_hot(batch.labels, N_CLASSES)) / len(
        batch.labels
    )
    (want,) = pullback(dlogits)
    for got, w in zip(
        jax.tree_util.tree_leaves(step_taken),
        jax.tree_util.tree_leaves(want),
        strict=True,
    ):
        assert_close(got, w, rtol=1e-4)
    # The network's own parameters and state never move.
    assert utils.tree_equal(after.params0, state0.params0)
    assert utils.tree_equal(after.net_state, state0.net_state)


def test_batch_norm_modes(start):
    params, state = start
    batch = random_batch(6)
    key = jax.random.PRNGKey(0)
    fresh = train.new_train_state(params, None, state)
    # Eval mode: the running statistics never change.
    frozen, _ = steps_for(bn=False).clean(fresh, batch, None)
    assert utils.tree_equal(frozen.net_state, state)
    # Training mode for the clean update, eval mode for the adversarial
    # one (the original's phase 2 with --loose_bn_second): the state is
    # that of the clean update alone.
    mixed, _ = steps_for(bn=True, adv_bn=False).adversarial(fresh, batch, key)
    clean_only, _ = steps_for(bn=True).clean(fresh, batch, None)
    assert utils.tree_equal(mixed.net_state, clean_only.net_state)
    both, _ = steps_for(bn=True).adversarial(fresh, batch, key)
    assert not utils.tree_equal(both.net_state, clean_only.net_state)


# --------------------------------------------------------------------------
# Phases: hooks, records, divergence, resuming
# --------------------------------------------------------------------------


def dataset(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, size=n).astype(np.int32)
    return images, labels


@dataclasses.dataclass
class Recorder:
    """Hooks that record what they are called with."""

    events: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)
    records: list = dataclasses.field(default_factory=list)
    stop_at: tuple | None = None  # (epoch, step) to stop at, as a kill
    saved: dict | None = None

    def hooks(self, state_every=2):
        def save_state(state, position):
            self.events.append(("save", position.epoch, position.step))
            if (position.epoch, position.step) == self.stop_at:
                self.saved = {
                    "state": experiment._pack(state),
                    "position": position.as_record(),
                }
                raise KeyboardInterrupt

        return train.Hooks(
            epoch_start=lambda s, p: self.events.append(("start", p.epoch)),
            fraction=lambda s, p, f: self.events.append(
                ("fraction", f, p.epoch, p.step)
            ),
            epoch_end=lambda s, p, r: self.records.append(r),
            save_state=save_state,
            warn=self.warnings.append,
            state_every=state_every,
            progress=False,
        )


def run(plan, steps, state, position, recorder, images, labels):
    return train.run_phase(
        plan,
        steps,
        state,
        position,
        images,
        labels,
        recorder.hooks(),
        jax.random.PRNGKey(1),
    )


def test_hooks_and_records_of_a_phase(start):
    params, state = start
    images, labels = dataset(40)
    plan = train.PhasePlan("standard", 3, "C", 0, 8)  # 5 batches an epoch
    recorder = Recorder()
    run(
        plan,
        steps_for(),
        train.new_train_state(params, None, state),
        train.LoopPosition(),
        recorder,
        images,
        labels,
    )
    starts = [e for e in recorder.events if e[0] == "start"]
    assert starts == [("start", e) for e in range(4)]
    fractions = [e for e in recorder.events if e[0] == "fraction"]
    # Each save point at the first step past it: 0.125 · 5 = 0.625 → step 1.
    assert fractions == [
        ("fraction", 0.125, 0, 1),
        ("fraction", 0.25, 0, 2),
        ("fraction", 0.375, 0, 2),
        ("fraction", 0.5, 0, 3),
        ("fraction", 0.75, 0, 4),
        ("fraction", 1.5, 1, 3),
        ("fraction", 2.5, 2, 3),
    ]
    assert [r["epoch"] for r in recorder.records] == [0, 1, 2]
    assert all(r["images"] == 40 for r in recorder.records)
    # The first epoch compiles (timed apart); the others do not.
    assert recorder.records[0]["compile_seconds"] > 0
    assert all(r["compile_seconds"] == 0 for r in recorder.records[1:])
    assert all(r["images_per_s"] > 0 for r in recorder.records[1:])


def test_resumed_phase_equals_uninterrupted(start, tmp_path):
    """Stopped mid-epoch at a save point, written to and read back from a
    resume file, and continued: bit for bit the uninterrupted result."""
    params, state = start
    images, labels = dataset(40)
    plan = train.PhasePlan("standard", 2, "A", 0, 8)
    steps = steps_for()
    whole = run(
        plan,
        steps,
        train.new_train_state(params, None, state),
        train.LoopPosition(),
        Recorder(),
        images,
        labels,
    )

    stopped = Recorder(stop_at=(0, 2))
    with pytest.raises(KeyboardInterrupt):
        run(
            plan,
            steps,
            train.new_train_state(params, None, state),
            train.LoopPosition(),
            stopped,
            images,
            labels,
        )
    path = tmp_path / "train_state.pkl"
    atomic.atomic_pickle(path, stopped.saved)
    saved = pickles.safe_load_pickle(path)
    resumed = run(
        plan,
        steps,
        experiment._unpack(saved["state"]),
        train.LoopPosition.from_record(saved["position"]),
        Recorder(),
        images,
        labels,
    )
    for key in ("params", "net_state"):
        assert utils.tree_equal(
            utils.to_numpy_tree(getattr(whole, key)),
            utils.to_numpy_tree(getattr(resumed, key)),
        ), key
    assert utils.tree_equal(
        utils.flatten_opt_state(whole.opt_state),
        utils.flatten_opt_state(resumed.opt_state),
    )


def test_non_finite_loss_raises_diverged(start):
    params, state = start
    images, labels = dataset(40)
    plan = train.PhasePlan("linear", 1, "C", 0, 8)
    with pytest.raises(train.Diverged) as info:
        run(
            plan,
            steps_for(lr=1e38),
            train.new_train_state(params, None, state),
            train.LoopPosition(),
            Recorder(),
            images,
            labels,
        )
    assert info.value.phase == "linear" and info.value.epoch == 0


def test_growing_loss_warns_once(start):
    """Centered linearized training at far too high a rate: the loss grows
    a thousandfold and more, stays finite; one warning."""
    params, state = start
    images, labels = dataset(160)
    plan = train.PhasePlan("linear", 2, "C", 0, 8)
    dynamics = models.Dynamics(linear=True, centering=True)
    for lr, warnings in ((1e3, 1), (0.01, 0)):
        recorder = Recorder()
        run(
            plan,
            steps_for(dynamics, bn=False, lr=lr),
            train.new_train_state(params, params, state),
            train.LoopPosition(),
            recorder,
            images,
            labels,
        )
        assert len(recorder.warnings) == warnings, (lr, recorder.warnings)
        if warnings:
            recorder_warning = recorder.warnings
    assert "loss grew from" in recorder_warning[0]


def _conv_forward(images, is_training):
    """A strided and a plain 3×3 convolution, batch norm, ReLU, logits:
    what models.canonical_conv stands in for in a ResNet, small."""
    x = hk.Conv2D(4, 3, stride=2, with_bias=False)(images)
    x = jax.nn.relu(hk.BatchNorm(True, True, 0.9)(x, is_training))
    x = hk.Conv2D(4, 3, with_bias=False)(x)
    return hk.Linear(N_CLASSES)(jnp.mean(x, axis=(1, 2)))


# As models.get_model builds its networks: convolutions through
# canonical_conv under models.canonical_input_gradients.
CONV_MODEL = hk.transform_with_state(models._intercepted(_conv_forward))


def _three_adversarial_steps(phase, bn):
    """A function running three adversarial steps of CONV_MODEL through
    train's own steps (phase 1, or centered phase 2 from its start), batch
    norm in training mode or not: (losses, final params)."""
    model = CONV_MODEL
    shape = (12, 12, 1)
    params, net_state = models.init_model(model, 0, shape)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape),
        params,
    )
    rng = np.random.default_rng(0)
    batches = [
        train.Batch(
            jnp.asarray(rng.uniform(size=(8, *shape)).astype(np.float32)),
            jnp.asarray(rng.integers(0, N_CLASSES, 8).astype(np.int32)),
        )
        for _ in range(3)
    ]
    if phase == "phase1":
        dynamics, params0 = models.STANDARD, None
        schedule = train.constant_schedule(0.1)
    else:
        dynamics, params0 = models.Dynamics(True, True), params
        schedule = train.constant_schedule(0.01)

    def three_steps():
        steps = train.make_step_fns(
            model.apply, dynamics, bn, schedule, attacks.train_linf(16.0, 3)
        )
        state = train.new_train_state(params, params0, net_state)
        losses = []
        for i, batch in enumerate(batches):
            state, metrics = steps.adversarial(
                state, batch, jax.random.PRNGKey(i)
            )
            losses.append(metrics.loss)
        return losses, state.params

    return three_steps


def _assert_same_steps(got, want):
    assert_close(got[0], want[0])
    for g, w in zip(
        jax.tree_util.tree_leaves(got[1]),
        jax.tree_util.tree_leaves(want[1]),
        strict=True,
    ):
        assert_close(g, w)


@pytest.mark.medium
@pytest.mark.parametrize("phase,bn", [("phase1", True), ("phase2c", False)])
def test_adversarial_steps_with_canonical_convolutions_match_plain_ones(
    phase, bn, monkeypatch
):
    """Three adversarial steps of a small convolutional network through
    train's own steps, with the attack's convolutions in the canonical
    layout (what the attacks do) and plain (the code before them,
    attacks.differentiable as the identity): losses and parameters match
    to float32 tolerance."""
    three_steps = _three_adversarial_steps(phase, bn)
    canonical = three_steps()
    monkeypatch.setattr(attacks, "differentiable", lambda fn: fn)
    _assert_same_steps(canonical, three_steps())


@pytest.mark.medium
@pytest.mark.parametrize(
    "phase,bn", [("phase1", True), ("phase2c", True), ("phase2c", False)]
)
def test_adversarial_steps_with_shorter_batch_norm_derivatives_match(
    phase, bn, monkeypatch
):
    """The same three adversarial steps with batch norm in training mode
    through models.batch_norm_train (the CPU's default) and through
    Haiku's own (phase 2 in training mode is --loose_bn_second's clean
    update: a JVP through batch norm, then its gradient): losses and
    parameters match to float32 tolerance."""
    three_steps = _three_adversarial_steps(phase, bn)
    monkeypatch.setattr(models, "shorter_batch_norm_derivatives", lambda: True)
    shorter = three_steps()
    monkeypatch.setattr(
        models, "shorter_batch_norm_derivatives", lambda: False
    )
    _assert_same_steps(shorter, three_steps())
