"""Where phase 1's adversarial step loses to PyTorch: each convolution of
the ResNet-18, XLA against PyTorch, and the steps around them.

For every convolution of the network (read from the jaxpr of its training
forward pass) on a batch of random images: the forward convolution, its
image gradient and its kernel gradient, each jitted alone in JAX (XLA's CPU
convolutions, with any transposes XLA adds) and run in PyTorch
(`conv2d`, `aten.convolution_backward`, NCHW as bench/torch_epochs.py);
best of `--repeats` calls. Their sums per SGD update (forward, image
gradient but the stem's, kernel gradient) and per PGD iteration (forward,
image gradient) stand beside the whole steps: train's clean step (one
update) and one PGD iteration's image gradient, against bench/torch_epochs'
update and a 1-step PGD. What a step spends beyond its convolutions is the
rest (batch norm, ReLU, sums, the optimiser).

Then three ways to compute the kernel gradient of each stride-1 3×3
convolution in XLA: JAX's (a convolution XLA feeds through transposes),
the same convolution with the transposes written out, and nine matrix
products, one per tap; each checked against JAX's.

With `--torch_convs`, also train's clean step with the network's
convolutions computed by PyTorch (bench/torch_convs.py, a
`jax.pure_callback` per convolution) and the host seconds those calls take.

  .venv/bin/python bench/bench_convolutions.py --width 16 --torch_convs
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_attack_loop  # noqa: E402  (they put the measured code on sys.path)
import bench_epochs  # noqa: E402
import profile_epochs  # noqa: E402

import cli  # noqa: E402
import models  # noqa: E402
from store import atomic  # noqa: E402

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def best_ms(fn, *args, repeats=15):
    """Best milliseconds of `fn(*args)` over `repeats` calls, each blocked
    until done, after one call (which compiles): bench_attack_loop.timed."""
    return 1e3 * bench_attack_loop.timed(lambda: fn(*args), repeats)[1]


def conv(x, w, strides, padding):
    """The network's convolution: NHWC images, HWIO kernel."""
    return jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC_HWIO
    )


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in it."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def network_convolutions(setup, batch):
    """[(images shape, kernel shape, strides, padding)] of every
    convolution of the network's training forward pass on `batch` images,
    in order."""
    x = jnp.asarray(setup.images[:batch])

    def forward(images):
        return setup.model.apply(
            setup.params, setup.net_state, None, images, True
        )[0]

    convs = []
    for eqn in _eqns(jax.make_jaxpr(forward)(x).jaxpr):
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            convs.append(
                (
                    tuple(lhs),
                    tuple(rhs),
                    tuple(eqn.params["window_strides"]),
                    tuple(tuple(p) for p in eqn.params["padding"]),
                )
            )
    return convs


def xla_parts(x, w, strides, padding):
    """Jitted (forward, image gradient, kernel gradient) of one
    convolution, as functions of (x, w, cotangent)."""

    def d_images(x, w, g):
        return jax.vjp(lambda a: conv(a, w, strides, padding), x)[1](g)[0]

    def d_kernel(x, w, g):
        return jax.vjp(lambda k: conv(x, k, strides, padding), w)[1](g)[0]

    return (
        jax.jit(lambda x, w, g: conv(x, w, strides, padding)),
        jax.jit(d_images),
        jax.jit(d_kernel),
    )


def torch_parts(x, w, strides, padding):
    """(forward, image gradient, kernel gradient) of the same convolution
    in PyTorch on NCHW tensors, as functions of no argument. PyTorch pads
    symmetrically; the larger side keeps the output size (as
    bench/torch_epochs.py's network does)."""
    import torch

    pad = [max(p) for p in padding]
    xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
    wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    with torch.no_grad():
        out = torch.nn.functional.conv2d(xt, wt, None, strides, pad)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, None, strides, pad)

    def backward(mask):
        def run():
            return torch.ops.aten.convolution_backward(
                g,
                xt,
                wt,
                None,
                list(strides),
                pad,
                [1, 1],
                False,
                [0, 0],
                1,
                mask,
            )

        return run

    return (
        forward,
        backward([True, False, False]),
        backward([False, True, False]),
    )


def time_convolutions(convs, repeats, torch_too):
    """One row per convolution: its shapes and the milliseconds of its
    three parts in XLA (and in PyTorch)."""
    rng = np.random.default_rng(0)
    rows = []
    for x_shape, w_shape, strides, padding in convs:
        x = jnp.asarray(rng.uniform(size=x_shape).astype(np.float32))
        w = jnp.asarray(0.1 * rng.normal(size=w_shape).astype(np.float32))
        f, di, dk = xla_parts(x, w, strides, padding)
        out = jax.eval_shape(f, x, w, None)  # traced, not compiled
        g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
        row = {
            "images": x_shape,
            "kernel": w_shape,
            "strides": strides,
            "padding": padding,
            "xla_ms": [
                best_ms(fn, x, w, g, repeats=repeats) for fn in (f, di, dk)
            ],
        }
        if torch_too:
            row["torch_ms"] = [
                best_ms(fn, repeats=repeats)
                for fn in torch_parts(x, w, strides, padding)
            ]
        rows.append(row)
    return rows


def convolution_sums(rows, key):
    """(milliseconds of convolutions per SGD update, per PGD iteration):
    an update needs every forward and kernel gradient and every image
    gradient but the network input's; an iteration forwards and image
    gradients."""
    forward = sum(r[key][0] for r in rows)
    images = [r[key][1] for r in rows]
    kernels = sum(r[key][2] for r in rows)
    return forward + sum(images[1:]) + kernels, forward + sum(images)


def kernel_gradient_ways(x_shape, w_shape):
    """The kernel gradient of a stride-1 3×3 convolution ("SAME"), three
    ways, as jitted functions of (x, g)."""
    height, breadth = x_shape[1:3]
    pad = ((1, 1), (1, 1))
    zero = jnp.zeros(w_shape, jnp.float32)

    def jax_vjp(x, g):
        return jax.vjp(lambda k: conv(x, k, (1, 1), pad), zero)[1](g)[0]

    def transposed(x, g):
        # images (C, H, W, B) and cotangent (H, W, B, O): XLA's canonical
        # convolution, the batch contracted as the feature dimension
        out = conv(
            jnp.transpose(x, (3, 1, 2, 0)),
            jnp.transpose(g, (1, 2, 0, 3)),
            (1, 1),
            pad,
        )
        return jnp.transpose(out, (1, 2, 0, 3))

    def per_tap(x, g):
        xp = jnp.pad(x, ((0, 0), *pad, (0, 0)))
        contract = (((0, 1, 2), (0, 1, 2)), ((), ()))
        return jnp.stack(
            [
                jnp.stack(
                    [
                        jax.lax.dot_general(
                            xp[:, i : i + height, j : j + breadth], g, contract
                        )
                        for j in range(3)
                    ]
                )
                for i in range(3)
            ]
        )

    return {
        "JAX's (transposes inside)": jax.jit(jax_vjp),
        "transposes written out": jax.jit(transposed),
        "nine matrix products": jax.jit(per_tap),
    }


def time_kernel_gradients(convs, repeats):
    """{shape label: {way: (ms, largest difference from JAX's relative to
    its largest entry)}} for each distinct stride-1 3×3 convolution."""
    rng = np.random.default_rng(1)
    results = {}
    for x_shape, w_shape, strides, _ in convs:
        label = f"{x_shape[1]}x{x_shape[2]}x{w_shape[2]}->{w_shape[3]}"
        if strides != (1, 1) or w_shape[:2] != (3, 3) or label in results:
            continue
        x = jnp.asarray(rng.uniform(size=x_shape).astype(np.float32))
        g = jnp.asarray(
            rng.normal(size=(*x_shape[:3], w_shape[3])).astype(np.float32)
        )
        ways = kernel_gradient_ways(x_shape, w_shape)
        reference = ways["JAX's (transposes inside)"](x, g)
        scale = float(jnp.max(jnp.abs(reference)))
        results[label] = {
            name: (
                best_ms(fn, x, g, repeats=repeats),
                float(jnp.max(jnp.abs(fn(x, g) - reference))) / scale,
            )
            for name, fn in ways.items()
        }
    return results


def whole_steps(setup, args):
    """{name: ms}: train's clean step (one SGD update, batch norm in
    training mode) and one PGD iteration's image gradient (eval mode),
    ours; PyTorch's update and 1-step PGD when asked."""
    wired = bench_epochs.wire_setup(setup, "phase1", True, args.batch_size, 1)
    state = wired.state
    x, y = wired.batch
    name = "PGD iteration: input gradient"
    image_gradient = profile_epochs.part_functions(
        "phase1", setup.model.apply, wired.attack
    )[name]
    steps = {
        "SGD update": best_ms(
            wired.clean_step, *wired.step_args, repeats=args.repeats
        ),
        "PGD iteration": best_ms(
            image_gradient,
            state.params,
            state.params0,
            state.net_state,
            x,
            y,
            wired.key,
            repeats=args.repeats,
        ),
    }
    if not args.no_torch:
        steps.update(torch_steps(setup, args))
    return steps


def torch_steps(setup, args):
    import torch
    import torch_epochs

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    images = setup.images[: args.batch_size].transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(setup.labels[: args.batch_size].astype(np.int64))
    model = torch_epochs.ResNet18(args.width, x.shape[1])
    update = torch_epochs.make_step(model, False, 0.0, 1)

    def pgd_iteration():
        model.eval()
        return torch_epochs.pgd(model, x, y, bench_epochs.EPS_255 / 255, 1)

    return {
        "SGD update, PyTorch": best_ms(
            lambda: update(x, y), repeats=args.repeats
        ),
        "PGD iteration, PyTorch": best_ms(pgd_iteration, repeats=args.repeats),
    }


def torch_convs_step(setup, args):
    """(ms of train's clean step with the convolutions in PyTorch, ms of
    it spent in the convolution callbacks): the fastest of `--repeats`
    calls after one that compiles."""
    import haiku as hk
    import torch
    import torch_convs

    torch.set_num_threads(os.cpu_count())
    # get_model's forward (batch_norm_train on the CPU) under ours
    forward = models.forward_function(
        "resnet18", bench_epochs.N_CLASSES, args.width
    )
    model = hk.transform_with_state(torch_convs.torch_conv_forward(forward))
    wired = bench_epochs.wire_setup(
        setup, "phase1", False, args.batch_size, 1, model.apply
    )
    jax.block_until_ready(wired.clean_step(*wired.step_args))  # compiles
    timed = []  # (step seconds, seconds in the callbacks) of each call
    for _ in range(args.repeats):
        torch_convs.HOST_SECONDS[0] = 0.0
        started = time.perf_counter()
        jax.block_until_ready(wired.clean_step(*wired.step_args))
        timed.append(
            (time.perf_counter() - started, torch_convs.HOST_SECONDS[0])
        )
    step_s, host_s = min(timed)
    return 1e3 * step_s, 1e3 * host_s


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--image_shape", default="28x28x1", choices=bench_epochs.IMAGE_SHAPES
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--no_torch", action="store_true", help="XLA's times only"
    )
    parser.add_argument(
        "--torch_convs",
        action="store_true",
        help="also time the update with PyTorch's convolutions",
    )
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def print_tables(rows, sums, steps, kernel_ways, callback):
    torch_too = "torch_ms" in rows[0]
    print(
        "| images | kernel | strides | XLA forward / image grad / kernel "
        "grad (ms) |" + (" PyTorch (ms) |" if torch_too else "")
    )
    print("|---|---|---|---|" + ("---|" if torch_too else ""))
    for r in rows:
        cells = [
            "x".join(map(str, r["images"])),
            "x".join(map(str, r["kernel"])),
            "x".join(map(str, r["strides"])),
            " / ".join(f"{t:.2f}" for t in r["xla_ms"]),
        ]
        if torch_too:
            cells.append(" / ".join(f"{t:.2f}" for t in r["torch_ms"]))
        print("| " + " | ".join(cells) + " |")
    print("\n| per step | convolutions (ms) | whole step (ms) | rest (ms) |")
    print("|---|---|---|---|")
    for who, (update, iteration) in sums.items():
        suffix = "" if who == "XLA" else ", PyTorch"
        for name, convs in (
            ("SGD update", update),
            ("PGD iteration", iteration),
        ):
            whole = steps.get(name + suffix)
            if whole is None:
                continue
            print(
                f"| {name} ({who}) | {convs:.1f} | {whole:.1f} | "
                f"{whole - convs:.1f} |"
            )
    print("\n| kernel gradient of | way | ms | largest difference |")
    print("|---|---|---|---|")
    for label, ways in kernel_ways.items():
        for name, (ms, diff) in ways.items():
            print(f"| {label} | {name} | {ms:.2f} | {diff:.1e} |")
    if callback:
        print(
            f"\nSGD update with PyTorch's convolutions (callbacks): "
            f"{callback[0]:.1f} ms, of which {callback[1]:.1f} ms in the "
            f"callbacks; JAX's own: {steps['SGD update']:.1f} ms"
        )


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup = bench_epochs.make_setup(
        args.width, args.image_shape, args.batch_size
    )
    print(
        f"device: {setup.device}; JAX {jax.__version__}; ResNet-18 width "
        f"{args.width}; {args.batch_size} random {args.image_shape} images; "
        f"best of {args.repeats}"
    )
    steps = whole_steps(setup, args)  # first, in a process still small
    convs = network_convolutions(setup, args.batch_size)
    rows = time_convolutions(convs, args.repeats, not args.no_torch)
    sums = {"XLA": convolution_sums(rows, "xla_ms")}
    if not args.no_torch:
        sums["PyTorch"] = convolution_sums(rows, "torch_ms")
    kernel_ways = time_kernel_gradients(convs, args.repeats)
    callback = torch_convs_step(setup, args) if args.torch_convs else None
    print_tables(rows, sums, steps, kernel_ways, callback)
    record = {
        "device": setup.device,
        "jax": jax.__version__,
        "width": args.width,
        "batch_size": args.batch_size,
        "image_shape": args.image_shape,
        "convolutions": rows,
        "convolutions_per_step_ms": sums,
        "steps_ms": steps,
        "kernel_gradient_ways": kernel_ways,
        "torch_convs_update_ms": callback,
    }
    if args.json:
        atomic.atomic_write_json(args.json, record)
    return record


if __name__ == "__main__":
    cli.run_cli(main)
