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
from training import train  # noqa: E402


def _power_iteration(matvec, template, iters: int) -> float:
    """The largest eigenvalue of the PSD operator `matvec` on trees shaped
    like `template`."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
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
        w = matvec(v)
        value = float(norm(w))
        v = w
    return value


def curvatures(network: models.Network, images, iters: int = 30):
    """(λ_max(J Jᵀ), λ_max(Jᵀ H J)) for the logits of `images` at
    network.params0, batch norm in eval mode (see the module docstring)."""
    theta = network.params0
    images = jnp.asarray(images)

    def logits(params, x):
        return network.apply_fn(params, network.state, None, x, False)[0]

    batch, n_logits = len(images), logits(theta, images[:1]).shape[-1]

    def jvp(v, x):
        return jax.jvp(lambda p: logits(p, x), (theta,), (v,))[1]

    def vjp(u, x):
        return jax.vjp(lambda p: logits(p, x), theta)[1](u)[0]

    # The images are arguments, not constants, so XLA does not fold them.
    ntk = jax.jit(lambda v, x: vjp(jvp(v, x), x))

    @jax.jit
    def gauss_newton(v, x):
        u = jvp(v, x)
        u = (u - u.mean(axis=-1, keepdims=True)) / (batch * n_logits)
        return vjp(u, x)

    return (
        _power_iteration(lambda v: ntk(v, images), theta, iters),
        _power_iteration(lambda v: gauss_newton(v, images), theta, iters),
    )


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
    ntk_max, curvature = curvatures(network, images[: args.batch_size])
    bound = 2 * (1 + train.MOMENTUM) / curvature
    print(
        f"ResNet-18 width {args.width}, {args.images} Fashion-MNIST images, "
        f"θ({args.phase1_epochs}), batch {args.batch_size}: "
        f"λ_max(J Jᵀ) = {ntk_max:.4g}, λ_max(Jᵀ H J) = {curvature:.4g}; "
        f"bound on --second_lr 2(1 + β)/λ_max(Jᵀ H J) = {bound:.3g}"
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
