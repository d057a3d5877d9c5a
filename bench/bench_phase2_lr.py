"""Which phase-2 learning rates train the centered linearization, against
the scale of the kernel it freezes.

Trains a ResNet-18 (phase 1, benign) on a Fashion-MNIST subset, then, from
the θ(t) it reaches, runs benign centered phase 2 at several --second_lr
values and prints each epoch's training loss. Beside them it prints the
kernel's scale on one training batch: λ_max of the batch NTK Θ_B = J Jᵀ
(B·K × B·K, all logits), by power iteration on Jᵀ J, and the rate
2(1 + β)·B·K / λ_max above which SGD with momentum β = 0.9 cannot be stable
on the first steps (the loss's Hessian at zero logits is Jᵀ H J with
λ_max(H) = 1/(B·K) for the mean cross-entropy of B images and K classes).

  .venv/bin/python bench/bench_phase2_lr.py --width 16 --images 2000
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attacks  # noqa: E402
import data  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402


def batch_ntk_lambda_max(network: models.Network, images, iters: int = 30):
    """λ_max of J Jᵀ for the logits of `images` at network.params0
    (batch norm in eval mode), by power iteration on Jᵀ J."""

    def logits(params):
        return network.apply_fn(params, network.state, None, images, False)[0]

    _, pullback = jax.vjp(logits, network.params0)
    jtj = jax.jit(
        lambda v: pullback(jax.jvp(logits, (network.params0,), (v,))[1])[0]
    )
    leaves, treedef = jax.tree_util.tree_flatten(network.params0)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    v = jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, x.shape)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )

    def norm(tree):
        return jnp.sqrt(
            sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree))
        )

    value = 0.0
    for _ in range(iters):
        scale = norm(v)
        v = jax.tree_util.tree_map(lambda x, s=scale: x / s, v)
        w = jtj(v)
        value = float(norm(w))
        v = w
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--phase1_epochs", type=int, default=2)
    parser.add_argument("--phase2_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4]
    )
    parser.add_argument("--data_path", default="./data")
    args = parser.parse_args()

    images, labels = data.subset(
        *data.load_split("fashion_mnist", args.data_path), args.images, 0
    )
    model = models.get_model("resnet18", 10, args.width)
    params, state = models.init_model(model, 0, images.shape[1:])
    per_epoch = data.n_batches(len(images), args.batch_size)
    hooks = train.Hooks(progress=False)
    steps = train.make_step_fns(
        model.apply,
        models.STANDARD,
        True,
        train.phase1_schedule(per_epoch),
        attacks.train_linf(4.0),
    )
    end = train.run_phase(
        train.PhasePlan(
            "standard", args.phase1_epochs, "C", 0, args.batch_size
        ),
        steps,
        train.new_train_state(params, None, state),
        train.LoopPosition(),
        images,
        labels,
        hooks,
        jax.random.PRNGKey(0),
    )
    theta_t, net_state = end.params, end.net_state
    dynamics = models.Dynamics(linear=True, centering=True)
    network = models.Network(
        model.apply, dynamics, theta_t, theta_t, net_state
    )
    lam = batch_ntk_lambda_max(network, images[: args.batch_size])
    bound = 2 * (1 + train.MOMENTUM) * args.batch_size * 10 / lam
    print(
        f"ResNet-18 width {args.width}, {args.images} Fashion-MNIST images, "
        f"θ({args.phase1_epochs}); batch NTK λ_max = {lam:.4g}; "
        f"first-step stability bound on --second_lr: {bound:.3g}"
    )
    print(
        "| --second_lr | × bound | "
        + " | ".join(f"loss epoch {e + 1}" for e in range(args.phase2_epochs))
        + " |"
    )
    print("|---|---|" + "---|" * args.phase2_epochs)
    for lr in args.rates:
        steps = train.make_step_fns(
            model.apply,
            dynamics,
            False,
            train.constant_schedule(lr),
            attacks.train_linf(4.0),
        )
        records = []
        hooks = train.Hooks(
            progress=False,
            epoch_end=lambda s, p, r, out=records: out.append(r["loss"]),
        )
        try:
            train.run_phase(
                train.PhasePlan(
                    "linear", args.phase2_epochs, "C", 0, args.batch_size
                ),
                steps,
                train.new_train_state(theta_t, theta_t, net_state),
                train.LoopPosition(),
                images,
                labels,
                hooks,
                jax.random.PRNGKey(0),
            )
        except train.Diverged:
            records.append(float("nan"))
        losses = [f"{x:.3g}" for x in records]
        losses += ["—"] * (args.phase2_epochs - len(losses))
        print(
            f"| {lr:g} | {lr / bound:.2g} | " + " | ".join(losses) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
