"""Speed of our attacks (attacks/) against the reference's (torchattacks
3.5.1), in images/s on the same CPU, the same model, the same images and
the same budget.

A small MLP or a tiny CNN (bench/reference_models.py: the same
weights in Haiku and PyTorch) is trained briefly on Fashion-MNIST; then on
`--images` test images at `--eps`, ours and the reference's, each
`--repeats` times (ours: the first call compiles; the time reported is the
best of the others, with the first call's printed apart):

  apgd-ce         APGD-CE, 100 steps;
  apgd-t          APGD-T, 100 steps for each of 9 targets;
  autoattack      the standard AutoAttack at the standard budget (APGD-CE
                  and APGD-T 100 steps, FAB-T 100 steps for each of 9
                  targets, Square 5,000 queries), each attack on the
                  examples the earlier ones left robust;
  autoattack-10   the same at the budget torchattacks' own
                  `AutoAttack(version="standard")` runs: it leaves APGD,
                  APGDT and FAB at their class defaults of 10 steps, not
                  the standard 100 (`reference_stages` builds both, and
                  tests/attacks/test_bench_autoattack.py checks that they
                  equal torchattacks' own at 10 steps).

Also printed: how many images each broke (ours must break at least as
many). `--stages` adds, for the two AutoAttack rows, the time of each
stage (the sequence grown one attack at a time, each timed once warm).

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
sys.path.insert(0, os.path.join(ROOT, "bench"))
import attacks  # noqa: E402
import reference_models as rm  # noqa: E402
from attacks import STANDARD, AutoAttackConfig, Budget  # noqa: E402
from attacks.autoattack import stage  # noqa: E402

# The budgets of the two AutoAttack rows.
BUDGETS = {
    "autoattack": Budget(),
    "autoattack-10": Budget(apgd_iters=10, fab_iters=10),
}
NAMES = ("apgd-ce", "apgd-t", *BUDGETS)


def timed(fn, repeats):
    """(seconds of the first call, best seconds of the others, result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times[0], min(times[1:] or times), result


def ours(logits_fn, x, y, eps):
    """name -> (stages -> () -> number of images broken), ours; `stages`
    is how many attacks of the AutoAttack sequence run (all for the single
    attacks)."""
    key = jax.random.key(0)
    standard = AutoAttackConfig(budget=BUDGETS["autoattack"])
    alone = {name: stage(name, standard) for name in ("apgd-ce", "apgd-t")}
    jitted = {
        name: jax.jit(lambda x, y, k, a=attack: a(logits_fn, x, y, eps, k))
        for name, attack in alone.items()
    }

    def single(name):
        result = jitted[name](x, y, key)
        return rm.count_wrong(logits_fn, result.adv, y)

    def auto(budget, stages):
        config = AutoAttackConfig(budget=budget, attacks=STANDARD[:stages])
        result = attacks.autoattack(logits_fn, x, y, eps, key, config)
        return int(np.sum(np.asarray(result.broken_by) != attacks.ROBUST))

    runs = {name: lambda _, n=name: lambda: single(n) for name in jitted}
    for name, budget in BUDGETS.items():
        runs[name] = lambda stages, b=budget: lambda: auto(b, stages)
    return runs


def reference_stages(model, eps, budget):
    """The four torchattacks attacks of the standard AutoAttack at
    `budget`, in order (the settings of torchattacks' own
    `AutoAttack(version="standard")` but for the steps)."""
    import torchattacks

    common = {"norm": "Linf", "eps": eps, "seed": 0, "n_restarts": 1}
    classes = budget.n_targets + 1
    return [
        torchattacks.APGD(model, loss="ce", steps=budget.apgd_iters, **common),
        torchattacks.APGDT(
            model, steps=budget.apgd_iters, n_classes=classes, **common
        ),
        torchattacks.FAB(
            model,
            multi_targeted=True,
            steps=budget.fab_iters,
            n_classes=classes,
            **common,
        ),
        torchattacks.Square(model, n_queries=budget.square_queries, **common),
    ]


def reference(model, x, y, eps):
    """name -> (stages -> () -> number of images broken), torchattacks'."""
    import torch
    import torchattacks

    images, labels = rm.nchw(x), torch.tensor(y).long()
    standard = BUDGETS["autoattack"]
    single = {
        "apgd-ce": lambda: reference_stages(model, eps, standard)[0],
        "apgd-t": lambda: reference_stages(model, eps, standard)[1],
    }

    def sequence(budget, stages):
        attacks = reference_stages(model, eps, budget)[:stages]
        if len(attacks) == 1:
            return attacks[0]
        return torchattacks.MultiAttack(attacks)

    def run(make):
        adv = make()(images, labels)
        with torch.no_grad():
            return int((model(adv).argmax(1).numpy() != y).sum())

    runs = {
        name: lambda _, m=make: lambda: run(m) for name, make in single.items()
    }
    for name, budget in BUDGETS.items():
        runs[name] = lambda stages, b=budget: (
            lambda: run(lambda: sequence(b, stages))
        )
    return runs


def print_stages(name, mine, theirs, repeats):
    """The time of each stage of AutoAttack row `name`, ours and theirs."""
    before = [0.0, 0.0]
    for stages in range(1, len(STANDARD) + 1):
        times = [
            timed(runs[name](stages), repeats)[1] for runs in (mine, theirs)
        ]
        print(
            f"{'':>13}stage {STANDARD[stages - 1]:<8} ours "
            f"{times[0] - before[0]:6.2f} s, reference "
            f"{times[1] - before[1]:6.2f} s"
        )
        before = times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--eps", type=float, default=3 / 255)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--attacks",
        default=",".join(NAMES),
        help=f"comma-separated subset of {','.join(NAMES)}",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="also time each stage of the AutoAttack rows",
    )
    args = parser.parse_args()
    unknown = set(args.attacks.split(",")) - set(NAMES)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; choose from {NAMES}")
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
        first, best, broken = timed(mine[name](len(STANDARD)), args.repeats)
        _, ref_best, ref_broken = timed(
            theirs[name](len(STANDARD)), args.repeats
        )
        print(
            f"{name:>13}: ours {args.images / best:8.1f} images/s "
            f"(first call {first:.1f} s) broke {broken}; reference "
            f"{args.images / ref_best:8.1f} images/s broke {ref_broken}; "
            f"speed-up {ref_best / best:.2f}x",
            flush=True,
        )
        if args.stages and name in BUDGETS:
            print_stages(name, mine, theirs, args.repeats)


if __name__ == "__main__":
    main()
