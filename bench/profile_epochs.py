"""Where the time of each kind of training epoch goes.

For each of the four kinds of bench_epochs.py (phase 1 and centered phase
2, benign and adversarial) this first measures the kind as the bench does
(compile, two epochs through train.run_phase, FLOPs), then times the parts
of its step, each jitted alone on the same first batch:

* phase 1: the forward pass (batch norm in training mode), forward and
  backward (the loss's parameter gradient), the SGD step (train's clean
  step), one PGD iteration's input gradient (batch norm in eval mode);
* centered phase 2: the linearized forward pass (the JVP, batch norm in
  eval mode), the JVP's forward and backward (parameter gradient), the SGD
  step, one PGD iteration's input gradient through the JVP;
* adversarial kinds: also the whole PGD attack and the whole adversarial
  step alone;
* all: a batch's host-to-device transfer, the dispatch of a trivial jitted
  step, and the step as the epoch loop runs it (epoch seconds / batches);
  the loop's time beyond the step alone is host work between steps.

Each part's time is the median of repeated calls, each blocked until done,
after one call that compiles it. Shares are of the step in the epoch loop;
parts nest (the forward pass is inside forward and backward, which is
inside the SGD step), so shares do not add up. With `--trace DIR`, a
`jax.profiler` trace of `--trace_steps` steps of each kind, run by the
epoch loop, goes to DIR/KIND (TensorBoard's profile plugin or Perfetto).

  .venv/bin/python bench/profile_epochs.py --width 8 --images 512
  python3 bench/profile_epochs.py --width 64 --images 5120 --trace /tmp/tr
"""

import dataclasses
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_epochs  # noqa: E402  (puts the measured code on sys.path)

import attacks  # noqa: E402
import cli  # noqa: E402
import models  # noqa: E402
from store import atomic

DISPATCH_CALLS = 200


def time_call(fn, *args, min_seconds: float = 0.2, max_calls: int = 50):
    """Median milliseconds of `fn(*args)`, blocked until its results are
    computed, over at least 3 calls (more until `min_seconds` have passed,
    at most `max_calls`), after a first call that compiles it."""
    jax.block_until_ready(fn(*args))
    times = []
    while len(times) < 3 or (
        sum(times) < min_seconds and len(times) < max_calls
    ):
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def dispatch_ms() -> float:
    """Milliseconds per call of a trivial jitted step, dispatched
    back-to-back (JAX's per-call host overhead)."""
    step = jax.jit(lambda a: a + 1)
    value = jax.block_until_ready(step(jnp.zeros(())))
    started = time.perf_counter()
    for _ in range(DISPATCH_CALLS):
        value = step(value)
    jax.block_until_ready(value)
    return 1e3 * (time.perf_counter() - started) / DISPATCH_CALLS


def transfer_ms(x, y) -> float:
    """Milliseconds to put one batch (NumPy images and labels) on the
    device."""
    return time_call(lambda: jax.device_put((x, y)))


def _loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def part_functions(phase: str, apply_fn, attack) -> dict:
    """The parts of a phase's step as jitted functions of
    (trainable, params0, net_state, x, y, key), by name."""
    dynamics = (
        models.STANDARD if phase == "phase1" else bench_epochs.CENTERED_LINEAR
    )
    bn_training = phase == "phase1"

    def logits(trainable, params0, net_state, x, training):
        return dynamics.logits(
            apply_fn, params0, trainable, net_state, x, training
        )

    def forward(trainable, params0, net_state, x, y, key):
        return logits(trainable, params0, net_state, x, bn_training)

    def forward_backward(trainable, params0, net_state, x, y, key):
        def loss(p):
            out, state = logits(p, params0, net_state, x, bn_training)
            return _loss(out, y), state

        return jax.grad(loss, has_aux=True)(trainable)

    def input_gradient(trainable, params0, net_state, x, y, key):
        def loss(images):
            out, _ = logits(trainable, params0, net_state, images, False)
            return _loss(out, y)

        return jax.grad(loss)(x)

    def attack_all(trainable, params0, net_state, x, y, key):
        def logits_fn(images):
            return logits(trainable, params0, net_state, images, False)[0]

        return attacks.pgd(logits_fn, x, y, key, attack)

    names = (
        ("forward (BN train)", "forward + backward")
        if phase == "phase1"
        else ("JVP forward (BN eval)", "JVP forward + backward")
    )
    return {
        names[0]: jax.jit(forward),
        names[1]: jax.jit(forward_backward),
        "PGD iteration: input gradient": jax.jit(input_gradient),
        "PGD attack, all iterations": jax.jit(attack_all),
    }


@dataclasses.dataclass
class Part:
    name: str
    calls_per_step: int
    ms: float


def profile_kind(setup, args, phase: str, adversarial: bool, trace):
    """Measures one kind, times its parts, prints its table, and traces it
    when `trace` is a folder. Returns (KindResult, [Part])."""
    result, wired = bench_epochs.measure(setup, args, phase, adversarial)
    state = wired.state
    trainable, params0, net_state = (
        state.params,
        state.params0,
        state.net_state,
    )
    x, y = wired.batch
    parts = part_functions(phase, setup.model.apply, wired.attack)
    ms = {
        name: time_call(
            fn, trainable, params0, net_state, x, y, jax.random.PRNGKey(0)
        )
        for name, fn in parts.items()
        if adversarial or "PGD" not in name
    }
    sgd = time_call(wired.clean_step, *wired.step_args)
    forward, forward_backward = list(parts)[:2]
    rows = [
        Part(forward, 1, ms[forward]),
        Part(forward_backward, 1, ms[forward_backward]),
        Part("SGD step (train's clean step)", 2 if adversarial else 1, sgd),
    ]
    alone = sgd
    if adversarial:
        alone = time_call(wired.step, *wired.step_args)
        name = "PGD iteration: input gradient"
        rows.append(Part(name, wired.attack.iters, ms[name]))
        name = "PGD attack, all iterations"
        rows.append(Part(name, 1, ms[name]))
        rows.append(Part("adversarial step alone", 1, alone))
    x_host, y_host = setup.images[: len(x)], setup.labels[: len(y)]
    rows.append(
        Part(
            "host-to-device transfer of a batch",
            1,
            transfer_ms(x_host, y_host),
        )
    )
    rows.append(Part("dispatch of a trivial jitted step", 1, dispatch_ms()))
    loop_ms = 1e3 * result.epoch_s / -(-result.images // args.batch_size)
    rows.append(Part("step in the epoch loop (run_phase)", 1, loop_ms))
    rows.append(
        Part("host work between steps (loop − alone)", 1, loop_ms - alone)
    )

    print(
        f"\n{bench_epochs.table_row(result, setup)}\n"
        "| part | calls per step | ms per call | ms per step "
        "| share of the step |\n|---|---|---|---|---|"
    )
    for part in rows:
        per_step = part.calls_per_step * part.ms
        print(
            f"| {part.name} | {part.calls_per_step} | {part.ms:.3f} "
            f"| {per_step:.3f} | {100 * per_step / loop_ms:.1f} % |",
            flush=True,
        )
    if trace:
        kind = bench_epochs.KIND_NAMES[
            bench_epochs.KINDS.index((phase, adversarial))
        ]
        folder = os.path.join(trace, kind)
        n = args.trace_steps * args.batch_size
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            wired.run_to(3, setup.images[:n], setup.labels[:n])
        print(f"trace of {args.trace_steps} steps of the epoch loop: {folder}")
    return result, rows


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    bench_epochs.add_flags(parser)
    parser.add_argument(
        "--trace", default=None, help="write jax.profiler traces here"
    )
    parser.add_argument(
        "--trace_steps",
        type=cli.positive_int,
        default=3,
        help="steps of each kind in its trace",
    )
    return parser.parse_args(argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    setup = bench_epochs.make_setup(args.width, args.image_shape, args.images)
    bench_epochs.print_header(setup, args)
    profiled = []
    for phase, adversarial in bench_epochs.selected_kinds(args.kinds):
        profiled.append(
            profile_kind(setup, args, phase, adversarial, args.trace)
        )
        if args.json:  # after each kind, so a run cut short keeps them
            record = bench_epochs.results_record(
                setup, args, [result for result, _ in profiled]
            )
            for kind, (_, rows) in zip(record["kinds"], profiled, strict=True):
                kind["parts"] = [dataclasses.asdict(part) for part in rows]
            atomic.atomic_write_json(args.json, record)
    print("\n" + bench_epochs.TABLE_HEAD)
    for result, _ in profiled:
        print(bench_epochs.table_row(result, setup))
    return profiled


if __name__ == "__main__":
    cli.run_cli(main)
