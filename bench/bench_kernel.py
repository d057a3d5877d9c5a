"""Times the empirical NTK: ours (kernels.py) against the original's method.

The original computes the kernel with neural-tangents'
`empirical_kernel_fn(f, vmap_axes=0, implementation=NTK_VECTOR_PRODUCTS)` on
4×4 blocks of images, in a Python double loop over the blocks on or above
the diagonal (7,875 calls for N = 500). Here that function is jitted once
and reused, the most favourable reading of the original. With class_index
−1 its kernel is traced over logits with neural-tangents' default
`trace_axes=(-1,)`, the mean over the K logits, which is what ours
computes too: the two are compared as they are.

Both run in one process on the same randomly perturbed ResNet-18 (batch-norm
running statistics set by one training-mode pass) and the same random
CIFAR-shaped images in [0, 1]. Times include compilation. With
`--original_blocks M` the original is timed on its first M blocks, after
one warm-up block, and its time is scaled up to all blocks: those rows say
"extrapolated", and their kernel difference is over the blocks computed.
Peak memory is the process's maximum resident set size so far (the original
runs last, so its figure is at least ours).

  .venv/bin/python bench/bench_kernel.py --widths 8 --sizes 200
  .venv/bin/python bench/bench_kernel.py --widths 64 --sizes 100 \
      --original_blocks 16
  .venv/bin/python bench/bench_kernel.py --widths 64 --sizes 500 \
      --skip_original
"""

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from ntk import (
    jacobians,  # noqa: E402
    kernel_files,  # noqa: E402
    kernels,  # noqa: E402
    planner,  # noqa: E402
)

IMAGE_SHAPE = (32, 32, 3)
N_CLASSES = 10
ORIGINAL_BLOCK = 4


def enable_x64():
    """A context manager computing in 64 bits, on JAX 0.5.3
    (`jax.experimental.enable_x64`) and 0.11 (`jax.enable_x64`)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64()


def perturbed_resnet(width, seed=0):
    """(apply_fn, params, net_state): a ResNet-18 with every parameter
    moved by N(0, 0.05²) and running statistics from one training pass."""
    model = models.get_model("resnet18", N_CLASSES, width)
    params, state = models.init_model(model, seed, IMAGE_SHAPE)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef,
        [
            p + 0.05 * jax.random.normal(k, p.shape)
            for p, k in zip(leaves, keys, strict=True)
        ],
    )
    batch = jax.random.uniform(
        jax.random.PRNGKey(seed + 2), (64, *IMAGE_SHAPE)
    )
    _, state = model.apply(params, state, None, batch, True)
    return model.apply, params, state


def random_images(n, seed=0):
    """float32 (n, 32, 32, 3) uniform in [0, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(n, *IMAGE_SHAPE)).astype(np.float32)


def peak_rss_gib():
    """Maximum resident set size of this process so far, GiB (Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def time_ours(
    apply_fn,
    params,
    state,
    images,
    class_index,
    implementation,
    block_size,
    memory_gb,
):
    """(seconds, kernel) of kernels.ntk_fn's square kernel, compilation
    included."""
    started = time.perf_counter()
    kernel = kernels.ntk_fn(
        kernels.Network(apply_fn, params, state),
        implementation,
        kernels.KernelOptions(
            class_index, block_size=block_size, memory_gb=memory_gb
        ),
    )(images)
    return time.perf_counter() - started, kernel


def original_kernel_fn(apply_fn, state, class_index):
    """The original's jitted (x1, x2, params) -> (4, 4) kernel block.

    One logit for class_index ≥ 0; otherwise all logits, traced (the mean
    over logits) by neural-tangents.
    """
    from ntk.nt_compat import nt  # here: only the original needs it

    def f(params, images):
        logits, _ = apply_fn(params, state, None, images, False)
        return (
            logits
            if class_index < 0
            else logits[:, class_index : class_index + 1]
        )

    kernel_fn = nt.empirical_kernel_fn(
        f, vmap_axes=0, implementation=nt.NtkImplementation.NTK_VECTOR_PRODUCTS
    )
    return jax.jit(lambda x1, x2, p: kernel_fn(x1, x2, "ntk", p))


def time_original(apply_fn, params, state, images, class_index, max_blocks):
    """(seconds, kernel, computed, extrapolated) of the original's loop.

    Its double loop visits the (N/4)(N/4 + 1)/2 blocks on or above the
    diagonal (7,875 calls for N = 500). With 0 < max_blocks < that count,
    only the first max_blocks are timed, after one warm-up block, and the
    time is scaled up to all blocks. `computed` (N, N) bool marks the
    entries of `kernel` that were computed.
    """
    block_fn = original_kernel_fn(apply_fn, state, class_index)
    starts = range(0, len(images), ORIGINAL_BLOCK)
    pairs = [(i, j) for i in starts for j in starts if j >= i]
    extrapolate = 0 < max_blocks < len(pairs)
    if extrapolate:
        block_fn(images[:4], images[:4], params).block_until_ready()
    timed = pairs[:max_blocks] if extrapolate else pairs
    kernel = np.zeros((len(images), len(images)), np.float32)
    computed = np.zeros(kernel.shape, bool)
    started = time.perf_counter()
    for i, j in timed:
        rows = slice(i, i + ORIGINAL_BLOCK)
        cols = slice(j, j + ORIGINAL_BLOCK)
        kernel[rows, cols] = block_fn(images[rows], images[cols], params)
        computed[rows, cols] = True
    seconds = time.perf_counter() - started
    return seconds * len(pairs) / len(timed), kernel, computed, extrapolate


def max_relative_difference(kernel, reference, where=...):
    """max |K − K_ref| / max |K_ref| over the entries `where` (all by
    default)."""
    return float(
        np.abs(kernel - reference)[where].max()
        / np.abs(reference)[where].max()
    )


def ours_rows(width, apply_fn, params, state, images, args):
    """(markdown rows, [(seconds, kernel)]) for each of our implementations."""
    survey = jacobians.survey(apply_fn, params, state, IMAGE_SHAPE)
    classes = kernels.kernel_classes(args.class_index, N_CLASSES)
    rows, results = [], []
    for implementation in args.implementations:
        plan = planner.make_plan(
            len(images),
            survey,
            classes,
            args.block_size,
            None,
            args.memory_gb,
            implementation,
        )
        seconds, kernel = time_ours(
            apply_fn,
            params,
            state,
            images,
            args.class_index,
            implementation,
            args.block_size,
            args.memory_gb,
        )
        results.append((seconds, kernel))
        rows.append(
            [
                width,
                len(images),
                f"ours: {implementation}",
                f"{plan.size}×{plan.size}, {len(plan.passes[0])} logit(s)",
                f"{seconds:.1f}",
                "",
                "",
                f"{peak_rss_gib():.2f}",
            ]
        )
    return rows, results


def original_row(width, apply_fn, params, state, images, args, rows, results):
    """(the original's markdown row, its kernel): the kernel holds the
    computed entries (the float64 check's first images are in its first
    blocks). Fills speedup and difference in `rows`."""
    seconds, reference, computed, extrapolated = time_original(
        apply_fn,
        params,
        state,
        images,
        int(args.class_index),
        args.original_blocks,
    )
    for row, (ours_seconds, kernel) in zip(rows, results, strict=True):
        row[5] = f"{seconds / ours_seconds:.1f}"
        row[6] = f"{max_relative_difference(kernel, reference, computed):.1e}"
    label = "original: ntvp" + (" (extrapolated)" if extrapolated else "")
    return [
        width,
        len(images),
        label,
        "4×4",
        f"{seconds:.1f}",
        "1",
        "",
        f"{peak_rss_gib():.2f}",
    ], reference


def float64_kernel(apply_fn, params, state, images, class_index):
    """(N, N) or (K, N, N) like kernels.ntk_fn's result, from jax.jacrev of
    each image's logits in float64 (N·K·P doubles: keep N small)."""
    with enable_x64():
        params, state, images = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), (params, state, images)
        )
        flat, unravel = ravel_pytree(params)
        jacobian = jax.jit(
            lambda image: jax.jacrev(
                lambda theta: apply_fn(
                    unravel(theta), state, None, image[None], False
                )[0][0]
            )(flat)
        )
        rows = np.stack([np.asarray(jacobian(image)) for image in images])
    per_class = np.einsum("ikp,jkp->kij", rows, rows)
    if class_index == kernel_files.ALL_CLASSES:
        return per_class
    return per_class.mean(0) if class_index < 0 else per_class[class_index]


def float64_lines(apply_fn, params, state, images, args, labels, kernels_):
    """One line per kernel in `kernels_`: its largest difference from the
    float64 reference on the first args.float64_images images."""
    m = args.float64_images
    reference = float64_kernel(
        apply_fn, params, state, images[:m], args.class_index
    )
    lines = []
    for label, kernel in zip(labels, kernels_, strict=True):
        difference = max_relative_difference(kernel[..., :m, :m], reference)
        lines.append(
            f"float64 check, first {m} images: {label}: max rel. "
            f"diff {difference:.1e}"
        )
    return lines


def bench_one(width, n, args):
    """Markdown rows for one (width, N), then the float64 check's lines."""
    apply_fn, params, state = perturbed_resnet(width)
    images = random_images(n)
    rows, results = ours_rows(width, apply_fn, params, state, images, args)
    labels = [row[2] for row in rows]
    computed = [kernel for _, kernel in results]
    if not args.skip_original and args.class_index != kernel_files.ALL_CLASSES:
        row, reference = original_row(
            width, apply_fn, params, state, images, args, rows, results
        )
        rows.append(row)
        labels.append("original")
        computed.append(reference)
    lines = (
        float64_lines(apply_fn, params, state, images, args, labels, computed)
        if args.float64_images
        else []
    )
    return rows, lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[8, 64])
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[200, 100],
        help="N for each width, in the same order",
    )
    p.add_argument(
        "--class_index",
        type=kernel_files.parse_class_index,
        default=kernel_files.COMBINED,
    )
    p.add_argument(
        "--implementations",
        nargs="+",
        choices=kernels.IMPLEMENTATIONS,
        default=[kernels.DEFAULT_IMPLEMENTATION],
    )
    p.add_argument(
        "--block_size",
        type=int,
        default=None,
        help="ours: images per block (default: automatic)",
    )
    p.add_argument(
        "--memory_gb", type=float, default=kernels.DEFAULT_MEMORY_GB
    )
    p.add_argument(
        "--original_blocks",
        type=int,
        default=0,
        help="time the original on this many 4×4 blocks and "
        "extrapolate (0: all blocks)",
    )
    p.add_argument("--skip_original", action="store_true")
    p.add_argument(
        "--float64_images",
        type=int,
        default=0,
        help="compare every kernel with a float64 jax.jacrev "
        "reference on this many first images (0: no)",
    )
    args = p.parse_args(argv)
    if len(args.widths) != len(args.sizes):
        p.error("--widths and --sizes need the same number of values")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0].device_kind
    print(
        f"device: {device}; class_index {args.class_index}; times include "
        "compilation"
    )
    print(
        "| width | N | method | blocks | seconds | speedup | "
        "max rel. diff | peak RSS (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for width, n in zip(args.widths, args.sizes, strict=True):
        rows, lines = bench_one(width, n, args)
        for row in rows:
            print(
                "| " + " | ".join(str(cell) for cell in row) + " |", flush=True
            )
        print("\n".join(lines))


if __name__ == "__main__":
    main()
