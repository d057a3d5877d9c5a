"""Empirical neural tangent kernels of a Haiku model, block by block.

For logit c of a network f with parameters θ (every trainable parameter,
batch-norm scale and offset included), the per-class kernel on images
x_1..x_N is

    K_c[i, j] = ∇θ f_c(x_i) · ∇θ f_c(x_j),        (N, N),

with batch norm in eval mode: its running statistics are constants, never
differentiated, so each logit depends on its own image alone and the
Jacobians can be vmapped over the batch (`vmap_axes=0`). The combined
kernel is the mean over the K logits, (1/K) Σ_c K_c: the kernel the
original code computes with neural-tangents' default `trace_axes=(-1,)`,
which traces the logit axis and divides by its size.

The N×N kernel is computed in square blocks of `block_size` images; only
blocks on or above the diagonal are computed and the lower triangle is the
transpose. The last block is padded with zero images, so every call has
the same shapes and one compiled function serves every block. Peak memory
depends on the block size and the parameter count, never on N. The cross
kernel K(test, train), M×N, takes every block of the rectangle (test
blocks × training blocks) with the same compiled block functions.

One factory gives both, in the manner of neural-tangents'
`empirical_ntk_fn`: `ntk_fn(Network(apply_fn, params, net_state),
implementation, KernelOptions(...))` returns `kernel(images)` for the
N×N kernel and `kernel(test_images, images)` for the M×N cross kernel.

Implementations (`implementation=`), measured in bench/bench_kernel.py:

* 'rows' (default): per block, the Jacobian of the G wanted logits in
  jacobians.py's form: explicit per-image gradients for most parameters,
  inputs and cotangents for the layers where that is cheaper (the last
  ResNet stage, linear layers). A block of the kernel is then a batched
  matrix product plus the factored layers' terms, whose input overlaps
  ⟨x_s, x'_t⟩ are the same for every logit and kept across passes. Row i
  of blocks keeps J_i while the column blocks j > i are swept from the
  right, so the last column's J_{i+1} becomes row i+1's: 1 + n(n−1)/2
  block Jacobians for n blocks per row of the kernel, against n(n+1) for
  the pair-wise implementations below.
* 'jacobian', 'ntvp', 'structured': neural-tangents' `empirical_ntk_fn`
  with JACOBIAN_CONTRACTION, NTK_VECTOR_PRODUCTS or STRUCTURED_DERIVATIVES
  on each pair of blocks (i, j), i ≤ j, the logit axis a diagonal axis.
  Each pair recomputes both blocks' derivatives. NTK-vector products cost
  one forward and one backward pass per pair of images and logit, which is
  what makes the original code slow on CNNs.

Block size and logits per pass come from a model of memory and work
(planner.py: BlockCosts, make_plan). 'rows' is the default because it was
the fastest everywhere we measured; see BENCHMARKS.md for the numbers. All
four agree with J Jᵀ from `jax.jacrev` to float32 rounding
(tests/ntk/test_kernels.py).

Products run at full float32 precision (`jax.default_matmul_precision
("highest")`), also on GPUs whose default would be TF32.
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import data
import models
from ntk import jacobians, planner
from ntk.kernel_files import ALL_CLASSES, COMBINED
from ntk.planner import (
    DEFAULT_IMPLEMENTATION,
    DEFAULT_MEMORY_GB,
    IMPLEMENTATIONS,
)
from utils import UserError

# IMPLEMENTATIONS, DEFAULT_IMPLEMENTATION and DEFAULT_MEMORY_GB are the
# planner's, imported for the callers of ntk_fn too.
# Our names of neural-tangents' NtkImplementation members. neural-tangents
# is imported only when one of them is used, so 'rows' also runs where it
# cannot be (nt_compat's patches are made for the pinned JAX).
_NT_IMPLEMENTATIONS = {
    "jacobian": "JACOBIAN_CONTRACTION",
    "ntvp": "NTK_VECTOR_PRODUCTS",
    "structured": "STRUCTURED_DERIVATIVES",
}


# (params, net_state, x1 (B, ...), x2 (B, ...), classes (G,)) -> (G, B, B).
BlockFn = Callable[..., jax.Array]


# --------------------------------------------------------------------------
# Which kernel
# --------------------------------------------------------------------------


def kernel_classes(class_index: int | str, n_classes: int) -> tuple[int, ...]:
    """The logits whose kernels `class_index` asks for.

    Args:
      class_index: c in [0, n_classes) for K_c alone, COMBINED (−1) for
        the mean (1/K) Σ_c K_c, or ALL_CLASSES for every K_c.
      n_classes: the number of logits K.
    Returns:
      (c,) for one class, else (0, ..., K−1).
    Raises:
      UserError: `class_index` is none of the above.
    """
    if class_index in (ALL_CLASSES, COMBINED):
        return tuple(range(n_classes))
    if isinstance(class_index, (int, np.integer)) and (
        0 <= class_index < n_classes
    ):
        return (int(class_index),)
    raise UserError(
        f"--class_index {class_index} is not a class of this {n_classes}-"
        f"class model: pick 0..{n_classes - 1}, {COMBINED} (the mean over "
        f"logits) or {ALL_CLASSES!r}"
    )


# --------------------------------------------------------------------------
# Compiled block functions
# --------------------------------------------------------------------------


def _eval_logits(apply_fn: Callable) -> Callable:
    """(params, images (B, ...), net_state, classes (G,)) -> (B, G) logits
    with batch norm in eval mode."""

    def logits(
        params: models.Params,
        images: jax.Array,
        net_state: models.State,
        classes: jax.Array,
    ) -> jax.Array:
        out, _ = apply_fn(params, net_state, None, images, False)
        return out[:, classes]

    return logits


def require_implementation(implementation: str) -> None:
    """Raises UserError, naming the cause and the fix, when `implementation`
    needs neural-tangents and it cannot be used here (see nt_compat); call
    it before any work."""
    if implementation in _NT_IMPLEMENTATIONS:
        from ntk import nt_compat

        nt_compat.load()


def nt_block_fn(apply_fn: Callable, implementation: str) -> BlockFn:
    """Compiled kernel of one pair of blocks through neural-tangents.

    Returns:
      (params, net_state, x1 (B, ...), x2 (B, ...), classes (G,) int) ->
      float32 (G, B, B), entry [g, i, j] = ∇θ f_g(x1_i) · ∇θ f_g(x2_j).
    """
    from ntk.nt_compat import nt  # here: see _NT_IMPLEMENTATIONS

    ntk = nt.empirical_ntk_fn(
        _eval_logits(apply_fn),
        trace_axes=(),
        diagonal_axes=(-1,),
        vmap_axes=0,
        implementation=getattr(
            nt.NtkImplementation, _NT_IMPLEMENTATIONS[implementation]
        ),
    )

    @jax.jit
    def block(
        params: models.Params,
        net_state: models.State,
        x1: jax.Array,
        x2: jax.Array,
        classes: jax.Array,
    ) -> jax.Array:
        kernel = ntk(x1, x2, params, net_state=net_state, classes=classes)
        return jnp.moveaxis(kernel, -1, 0)

    return block


# --------------------------------------------------------------------------
# Block schedules: (i, j) and K[i-block, j-block] for i ≤ j
# --------------------------------------------------------------------------


def _pair_blocks(
    block_fn: BlockFn,
    params: models.Params,
    net_state: models.State,
    blocks: jax.Array,
    classes: jax.Array,
) -> Iterator[tuple[int, int, jax.Array]]:
    """Every block on or above the diagonal, from its own call."""
    for i, j in itertools.combinations_with_replacement(range(len(blocks)), 2):
        yield i, j, block_fn(params, net_state, blocks[i], blocks[j], classes)


def _row_blocks(
    jacobian_fn: Callable,
    params: models.Params,
    net_state: models.State,
    blocks: jax.Array,
    classes: jax.Array,
    overlaps: dict | None,
) -> Iterator[tuple[int, int, jax.Array]]:
    """Blocks row by row, reusing each block's Jacobian.

    Row i sweeps j from the last block down to i + 1, so the Jacobian
    formed last is J_{i+1}, which row i + 1 starts from. `overlaps`, if not
    None, keeps each pair's jacobians.overlaps, the same in every pass.
    """

    def block(
        i: int,
        j: int,
        row: jacobians.BlockJacobian,
        column: jacobians.BlockJacobian,
    ) -> tuple[int, int, jax.Array]:
        pair = overlaps.get((i, j)) if overlaps is not None else None
        if pair is None:
            pair = jacobians.overlaps(row, column)
            if overlaps is not None:
                overlaps[i, j] = pair
        return i, j, jacobians.gram(row, column, pair)

    row = jacobian_fn(params, net_state, blocks[0], classes)
    for i in range(len(blocks)):
        yield block(i, i, row, row)
        column = None
        for j in range(len(blocks) - 1, i, -1):
            column = None  # frees J_{j+1} before J_j is formed
            column = jacobian_fn(params, net_state, blocks[j], classes)
            yield block(i, j, row, column)
        row = column


def _rectangle_blocks(
    jacobian_fn: Callable,
    params: models.Params,
    net_state: models.State,
    blocks: jax.Array,
    columns: jax.Array,
    classes: jax.Array,
    overlaps: dict | None,
) -> Iterator[tuple[int, int, jax.Array]]:
    """Every block (i, j) of `blocks` × `columns` (a cross kernel).

    Row i's Jacobian is formed once; the columns are swept left to right
    in even rows and right to left in odd ones, so a row starts from the
    column Jacobian the previous row ended with: 1 + n_rows·n_columns
    block Jacobians in all. `overlaps` as in _row_blocks.
    """
    column, formed = None, None
    for i in range(len(blocks)):
        row = jacobian_fn(params, net_state, blocks[i], classes)
        order = range(len(columns))
        for j in order if i % 2 == 0 else reversed(order):
            if j != formed:
                column = None  # frees the last column before the next
                column = jacobian_fn(params, net_state, columns[j], classes)
                formed = j
            pair = overlaps.get((i, j)) if overlaps is not None else None
            if pair is None:
                pair = jacobians.overlaps(row, column)
                if overlaps is not None:
                    overlaps[i, j] = pair
            yield i, j, jacobians.gram(row, column, pair)


def block_schedule(apply_fn: Callable, implementation: str) -> Callable:
    """(params, net_state, blocks, classes, layers, factored, overlaps,
    columns=None) -> iterator of (i, j, block).

    Without `columns`, the blocks (i, j), i ≤ j, of the square kernel of
    `blocks`; with `columns` (blocks of other images, of the same size),
    every block (i, j) of the rectangle `blocks` × `columns`. `layers`
    and `factored` are the Survey's layers and the plan's factored
    layers, `overlaps` a dict kept across the passes of one kernel or None
    ('rows' only). Compiled functions are kept in the schedule: reuse it
    for every pass and every kernel of the same model, cross kernels
    included.
    """
    if implementation == "rows":
        compiled = {}

        def rows(
            params: models.Params,
            net_state: models.State,
            blocks: jax.Array,
            classes: jax.Array,
            layers: tuple[jacobians.WeightLayer, ...],
            factored: tuple[str, ...],
            overlaps: dict | None,
            columns: jax.Array | None = None,
        ) -> Iterator[tuple[int, int, jax.Array]]:
            if (layers, factored) not in compiled:
                compiled[layers, factored] = jacobians.block_jacobian_fn(
                    apply_fn, layers, factored
                )
            jacobian_fn = compiled[layers, factored]
            if columns is not None:
                return _rectangle_blocks(
                    jacobian_fn,
                    params,
                    net_state,
                    blocks,
                    columns,
                    classes,
                    overlaps,
                )
            return _row_blocks(
                jacobian_fn, params, net_state, blocks, classes, overlaps
            )

        return rows
    if implementation in _NT_IMPLEMENTATIONS:
        block_fn = nt_block_fn(apply_fn, implementation)

        def pairs(
            params: models.Params,
            net_state: models.State,
            blocks: jax.Array,
            classes: jax.Array,
            layers: tuple[jacobians.WeightLayer, ...],
            factored: tuple[str, ...],
            overlaps: dict | None,
            columns: jax.Array | None = None,
        ) -> Iterator[tuple[int, int, jax.Array]]:
            del layers, factored, overlaps  # neural-tangents does it all
            if columns is not None:
                return (
                    (i, j, block_fn(params, net_state, x1, x2, classes))
                    for i, x1 in enumerate(blocks)
                    for j, x2 in enumerate(columns)
                )
            return _pair_blocks(block_fn, params, net_state, blocks, classes)

        return pairs
    raise ValueError(
        f"unknown implementation {implementation!r}; choose "
        f"from {IMPLEMENTATIONS}"
    )


# --------------------------------------------------------------------------
# Whole kernels
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A model at the parameters its kernel is taken at.

    apply_fn: the model's `apply(params, state, rng, images, is_training)`
      returning ((B, K) logits, state).
    params: the parameter tree θ the kernel is taken at.
    net_state: batch-norm state (running statistics), held fixed.
    """

    apply_fn: Callable
    params: models.Params
    net_state: models.State


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """Which kernel, and how its blocks are planned.

    class_index: c for K_c, COMBINED (−1) for the mean over logits
      (1/K) Σ_c K_c, ALL_CLASSES for every K_c.
    block_size, classes_per_pass, memory_gb: see planner.make_plan.
    show_progress: a tqdm bar over blocks on stderr.
    """

    class_index: int | str = COMBINED
    block_size: int | None = None
    classes_per_pass: int | None = None
    memory_gb: float = DEFAULT_MEMORY_GB
    show_progress: bool = False


# kernel(images_a (M, H, W, C), images_b (N, H, W, C) or None) -> float32.
KernelFn = Callable[..., np.ndarray]


def ntk_fn(
    network: Network,
    implementation: str = DEFAULT_IMPLEMENTATION,
    options: KernelOptions | None = None,
    *,
    schedule: Callable | None = None,
    log: Callable[[str], object] | None = None,
) -> KernelFn:
    """The empirical NTK of `network`, batch norm in eval mode, as a
    function of images (in the manner of neural-tangents'
    `empirical_ntk_fn`).

    `kernel(images)`, images (N, H, W, C): the kernel of the N images,
    float32 (N, N) for one class or COMBINED, (K, N, N) for ALL_CLASSES;
    exactly symmetric (the blocks on or above the diagonal, the rest their
    transpose).

    `kernel(images_a, images_b)`, (M, H, W, C) and (N, H, W, C): the cross
    kernel K(a, b), entry [a, i] = ∇θ f_c(x_a) · ∇θ f_c(x_i) for K_c (the
    mean over c for COMBINED), float32 (M, N) or (K, M, N). Blocks as
    the plan for the N images_b (the same block size, logits per pass and
    factored layers, so the same compiled functions); images_a are cut
    into blocks of that size, the last zero-padded, and every block of the
    rectangle is computed (block_schedule with `columns`). Peak memory is
    at most the square kernel's; with several passes the overlaps of all
    ⌈M/B⌉·⌈N/B⌉ pairs of blocks are kept.

    Args:
      network: the model and the parameters.
      implementation: one of IMPLEMENTATIONS.
      options: the kernel wanted and its plan (KernelOptions() if None).
      schedule: a block_schedule(network.apply_fn, implementation) to
        reuse (compiled functions are kept in it, across parameters of
        the same model); built once here when None.
      log: called with a line describing the plan (planner.describe_plan)
        by every square kernel; never by a cross kernel.
    Returns:
      kernel(images_a, images_b=None), which raises UserError when
      `options.class_index` is not valid for the model's K logits.
    """
    options = options or KernelOptions()
    schedule = schedule or block_schedule(network.apply_fn, implementation)

    def kernel(
        images_a: np.ndarray, images_b: np.ndarray | None = None
    ) -> np.ndarray:
        square = images_b is None
        images = np.asarray(images_a if square else images_b, np.float32)
        classes, plan, survey = _prepare(
            network, images, implementation, options, log if square else None
        )
        kernels = _per_class_kernels(
            schedule,
            network,
            images if square else np.asarray(images_a, np.float32),
            None if square else images,
            plan,
            survey,
            options.show_progress,
        )
        if square:
            kernels = {c: _symmetric(k) for c, k in kernels.items()}
        return _select(kernels, classes, options.class_index)

    return kernel


def _prepare(
    network: Network,
    images: np.ndarray,
    implementation: str,
    options: KernelOptions,
    log: Callable[[str], object] | None,
) -> tuple[tuple[int, ...], planner.BlockPlan, jacobians.Survey]:
    """(the wanted logits, the plan for N = len(images), the survey)."""
    survey = jacobians.survey(
        network.apply_fn, network.params, network.net_state, images.shape[1:]
    )
    classes = kernel_classes(options.class_index, survey.n_logits)
    plan = planner.make_plan(
        len(images),
        survey,
        classes,
        options.block_size,
        options.classes_per_pass,
        options.memory_gb,
        implementation,
    )
    if log is not None:
        log(planner.describe_plan(plan, survey, implementation))
    return classes, plan, survey


def _select(
    kernels: dict[int, np.ndarray],
    classes: Sequence[int],
    class_index: int | str,
) -> np.ndarray:
    """The kernel `class_index` asks for, from the per-class ones."""
    if class_index == COMBINED:
        return (sum(kernels[c] for c in classes) / len(classes)).astype(
            np.float32
        )
    if class_index == ALL_CLASSES:
        return np.stack([kernels[c] for c in classes])
    return kernels[classes[0]]


def _per_class_kernels(
    schedule: Callable,
    network: Network,
    images: np.ndarray,
    columns: np.ndarray | None,
    plan: planner.BlockPlan,
    survey: jacobians.Survey,
    show_progress: bool,
) -> dict[int, np.ndarray]:
    """{c: float32 kernel of logit c} for every class in the plan's
    passes: without `columns` (N, N) with only the blocks on or above the
    diagonal filled (the rest zero); with `columns` (N', H, W, C) the full
    (N, N') cross kernel of `images` × `columns`. Full float32 products
    even where XLA would use TF32 (GPUs)."""
    blocks = functools.partial(
        schedule,
        network.params,
        network.net_state,
        layers=survey.layers,
        factored=plan.factored,
        overlaps={} if len(plan.passes) > 1 else None,
    )
    rows = plan.blocks(images)
    if columns is None:
        n_columns, computed = len(images), plan.n_upper_blocks
    else:
        n_columns = len(columns)
        columns = jnp.asarray(plan.blocks(columns))
        computed = len(rows) * len(columns)
    rows = jnp.asarray(rows)
    kernels = {}
    with (
        jax.default_matmul_precision("highest"),
        tqdm(
            total=len(plan.passes) * computed,
            unit="block",
            desc="kernel" if columns is None else "cross kernel",
            disable=not show_progress,
        ) as bar,
    ):
        for classes in plan.passes:
            out = np.zeros(
                (
                    len(classes),
                    rows.shape[0] * plan.size,
                    data.n_batches(n_columns, plan.size) * plan.size,
                ),
                np.float32,
            )
            for i, j, block in blocks(
                rows, jnp.asarray(classes, jnp.int32), columns=columns
            ):
                out[
                    :,
                    i * plan.size : (i + 1) * plan.size,
                    j * plan.size : (j + 1) * plan.size,
                ] = np.asarray(block)
                bar.update()
            for c, kernel in zip(classes, out, strict=True):
                kernels[c] = kernel[: len(images), :n_columns]
    return kernels


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle (diagonal included) is
    that of `upper` (N, N)."""
    return np.triu(upper) + np.triu(upper, 1).T
