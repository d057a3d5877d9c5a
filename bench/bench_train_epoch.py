"""Times one training epoch, benign and adversarial, in images per second.

Random CIFAR-shaped images (no dataset needed); compile time is measured
separately from the timed epoch, which reuses the compiled steps.

  .venv/bin/python bench/bench_train_epoch.py --width 8 --images 1024
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attacks  # noqa: E402
import models  # noqa: E402
from training import train  # noqa: E402


def time_epoch(steps, state, images, labels, loader, batch_size):
    """(seconds of the first epoch, which compiles the steps; seconds of
    the second, which reuses them)."""
    hooks = train.Hooks(progress=False, state_every=10**9)
    position = train.LoopPosition()
    key = jax.random.PRNGKey(0)
    timings = []
    for epochs in (1, 2):  # train up to epoch 1, then on to epoch 2
        plan = train.PhasePlan("standard", epochs, loader, 0, batch_size)
        started = time.perf_counter()
        state = train.run_phase(
            plan, steps, state, position, images, labels, hooks, key
        )
        jax.block_until_ready(state.params)
        timings.append(time.perf_counter() - started)
    return tuple(timings)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--pgd_iters", type=int, default=20)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(args.images, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=args.images).astype(np.int32)
    model = models.get_model("resnet18", 10, args.width)
    params, net_state = models.init_model(model, 0, (32, 32, 3))
    per_epoch = -(-args.images // args.batch_size)
    steps = train.make_step_fns(
        model.apply,
        models.STANDARD,
        True,
        train.phase1_schedule(per_epoch),
        attacks.train_linf(4.0, args.pgd_iters),
    )
    device = jax.devices()[0].device_kind
    print(
        "| device | width | images | epoch | compile+first epoch (s) "
        "| epoch (s) | images/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for loader, name in (("C", "benign"), ("A", "adversarial")):
        state = train.new_train_state(params, None, net_state)
        first, seconds = time_epoch(
            steps, state, images, labels, loader, args.batch_size
        )
        print(
            f"| {device} | {args.width} | {args.images} | {name} | "
            f"{first:.1f} | {seconds:.2f} | {args.images / seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
