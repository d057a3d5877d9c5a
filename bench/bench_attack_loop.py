"""One attack's loop on the CPU: a 5-step PGD-L∞ of a ResNet-18, its input
gradients with plain convolutions in a `fori_loop`, the same loop unrolled
(no loop body), and the loop with `models.canonical_conv`
(`models.with_canonical_input_gradients`, what the attacks use), against
the network (phase 1) and its centered linearization (phase 2); and one
forward-and-backward pass of the loss in the parameters (batch norm in
training mode, a phase-1 SGD step's work). Prints compile and best-of-3
seconds of each. XLA flags come from the environment, so the same command
measures them:

  .venv/bin/python bench/bench_attack_loop.py --width 16
  XLA_FLAGS=--xla_cpu_use_xnnpack=true \
      .venv/bin/python bench/bench_attack_loop.py
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(
    0,
    os.environ.get("BENCH_CODE_DIR")
    or os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
)
import attacks  # noqa: E402
import cli  # noqa: E402
import models  # noqa: E402

IMAGE_SHAPE = (28, 28, 1)
N_CLASSES = 10
MODES = ("loop", "unrolled", "canonical")


def timed(fn, repeats: int = 3) -> tuple[float, float]:
    """(seconds of the first call, which compiles; best of `repeats`)."""
    started = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - started
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - started)
    return first, best


def pgd_loop(logits_fn, images, labels, mode: str, iters: int = 5):
    """A jitted thunk: `iters` signed steps of train_linf(16)'s size from a
    fixed random start, the input gradient by `mode`."""
    attack = attacks.train_linf(16.0, iters)
    loss = attacks.LOSSES["ce"]
    gradient = jax.grad(lambda x: jnp.sum(loss(logits_fn(x), labels)))
    if mode == "canonical":
        gradient = models.with_canonical_input_gradients(gradient)
    key = jax.random.PRNGKey(0)
    noise = jax.random.uniform(
        key, images.shape, minval=-attack.eps, maxval=attack.eps
    )
    start = jnp.clip(images + noise, 0.0, 1.0)

    def body(_, adv):
        adv = adv + attack.step_size * jnp.sign(gradient(adv))
        delta = jnp.clip(adv - images, -attack.eps, attack.eps)
        return jnp.clip(images + delta, 0.0, 1.0)

    return jax.jit(
        lambda: jax.lax.fori_loop(
            0, iters, body, start, unroll=mode == "unrolled"
        )
    )


def main(argv=None) -> list:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=cli.positive_int, default=16)
    parser.add_argument("--batch_size", type=cli.positive_int, default=128)
    args = parser.parse_args(argv)
    model = models.get_model("resnet18", N_CLASSES, args.width)
    params, state = models.init_model(model, 0, IMAGE_SHAPE)
    rng = np.random.default_rng(0)
    shape = (args.batch_size, *IMAGE_SHAPE)
    images = jnp.asarray(rng.uniform(size=shape).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, N_CLASSES, args.batch_size))
    moved = jax.tree_util.tree_map(
        lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
        params,
    )
    centered = models.Dynamics(linear=True, centering=True)
    logits = {
        "network": lambda x: model.apply(params, state, None, x, False)[0],
        "centered linearization": lambda x: centered.logits(
            model.apply, params, moved, state, x
        )[0],
    }
    print(
        f"JAX {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
        f"; ResNet-18 width {args.width}, {args.batch_size} images"
    )
    print("| logits | input gradients | compile + first (s) | best of 3 (s) |")
    print("|---|---|---|---|")
    rows = []
    for name, fn in logits.items():
        for mode in MODES:
            first, best = timed(pgd_loop(fn, images, labels, mode))
            rows.append((name, mode, first, best))
            print(
                f"| {name} | {mode} | {first:.1f} | {best:.3f} |", flush=True
            )

    def train_loss(p):
        out = model.apply(p, state, None, images, True)[0]
        return jnp.mean(attacks.LOSSES["ce"](out, labels))

    step = jax.jit(jax.grad(train_loss))
    first, best = timed(lambda: step(params))
    rows.append(("network", "parameter gradient (BN training)", first, best))
    label = "| network | parameter gradient, BN training |"
    print(f"{label} {first:.1f} | {best:.3f} |")
    return rows


if __name__ == "__main__":
    cli.run_cli(main)
