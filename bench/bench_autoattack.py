"""Speed of our attacks (robust/) against the reference's (torchattacks
3.5.1), in images/s on the same CPU, the same model and the same images.

A small MLP or a tiny CNN (tests/robust/reference_models.py: the same
weights in Haiku and PyTorch) is trained briefly on Fashion-MNIST; then
APGD-CE (100 steps), APGD-T (100 steps, 9 targets) and the standard
AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5,000 queries) run on `--images`
test images at `--eps`, ours and the reference's, each `--repeats` times
(ours: the first call compiles; the time reported is the best of the
others, with the first call's printed apart). Also printed: how many
images each broke (ours must break at least as many).

  .venv/bin/python bench/bench_autoattack.py --model mlp --images 200
  .venv/bin/python bench/bench_autoattack.py --model cnn --images 200
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "robust"))
import reference_models as rm  # noqa: E402
import robust  # noqa: E402


def timed(fn, repeats):
    """(seconds of the first call, best seconds of the others, result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:] or times), result


def ours(logits_fn, x, y, eps):
    """name -> () -> number of images broken, ours."""
    key = jax.random.key(0)
    jitted = {
        name: jax.jit(lambda x, y, k, a=attack: a(logits_fn, x, y, eps, k))
        for name, attack in [
            ("apgd-ce", robust.apgd_ce),
            ("apgd-t", robust.apgd_t),
        ]
    }

    def single(name):
        result = jitted[name](x, y, key)
        return rm.count_wrong(logits_fn, result.adv, y)

    def auto():
        result = robust.autoattack(logits_fn, x, y, eps, key)
        return int(np.sum(np.asarray(result.broken_by) != robust.ROBUST))

    return {
        "apgd-ce": lambda: single("apgd-ce"),
        "apgd-t": lambda: single("apgd-t"),
        "autoattack": auto,
    }


def reference(model, x, y, eps):
    """name -> () -> number of images broken, torchattacks'."""
    import torch
    import torchattacks

    images, labels = rm.nchw(x), torch.tensor(y).long()
    attacks = {
        "apgd-ce": lambda: torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=100, loss="ce", seed=0
        ),
        "apgd-t": lambda: torchattacks.APGDT(
            model, norm="Linf", eps=eps, steps=100, seed=0, n_classes=10
        ),
        "autoattack": lambda: torchattacks.AutoAttack(
            model,
            norm="Linf",
            eps=eps,
            version="standard",
            n_classes=10,
            seed=0,
        ),
    }

    def run(make):
        adv = make()(images, labels)
        with torch.no_grad():
            return int((model(adv).argmax(1).numpy() != y).sum())

    return {name: (lambda m=make: run(m)) for name, make in attacks.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--eps", type=float, default=3 / 255)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--attacks",
        default="apgd-ce,apgd-t,autoattack",
        help="comma-separated subset of apgd-ce,apgd-t,autoattack",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count())
    train_x, train_y = rm.read_fashion_mnist(True, 5000)
    x, y = rm.read_fashion_mnist(False, args.images)
    params, logits_fn = rm.train(args.model, train_x, train_y)
    model = rm.torch_model(args.model, params)
    print(
        f"device: CPU, {os.cpu_count()} cores; jax {jax.__version__}, "
        f"torch {torch.__version__}; model {args.model}, "
        f"{args.images} images, eps {args.eps * 255:.3g}/255"
    )
    mine, theirs = (
        ours(logits_fn, x, y, args.eps),
        reference(model, x, y, args.eps),
    )
    for name in args.attacks.split(","):
        first, best, broken = timed(mine[name], args.repeats)
        ref_first, ref_best, ref_broken = timed(theirs[name], args.repeats)
        print(
            f"{name:>10}: ours {args.images / best:8.1f} images/s "
            f"(first call {first:.1f} s) broke {broken}; reference "
            f"{args.images / ref_best:8.1f} images/s broke {ref_broken}; "
            f"speed-up {ref_best / best:.2f}x"
        )


if __name__ == "__main__":
    main()
