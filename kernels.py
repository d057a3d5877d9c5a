"""Empirical neural tangent kernels of a Haiku model, block by block.

For logit c of a network f with parameters θ (every trainable parameter,
batch-norm scale and offset included), the per-class kernel on images
x_1..x_N is

    K_c[i, j] = ∇θ f_c(x_i) · ∇θ f_c(x_j),        (N, N),

with batch norm in eval mode: its running statistics are constants, never
differentiated, so each logit depends on its own image alone and the
Jacobians can be vmapped over the batch (`vmap_axes=0`). The combined
kernel is Σ_c K_c, the trace over logits (neural-tangents' `trace_axes`
would give the mean instead).

The N×N kernel is computed in square blocks of `block_size` images; only
blocks on or above the diagonal are computed and the lower triangle is the
transpose. The last block is padded with zero images, so every call has the
same shapes and one compiled function serves every block. Peak memory
depends on the block size and the parameter count, never on N.

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
(make_plan). 'rows' is the default because it was the fastest everywhere
we measured; see BENCHMARKS.md for the numbers. All four agree with J Jᵀ
from `jax.jacrev` to float32 rounding (tests/test_kernels.py).

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

import jacobians
from utils import UserError

COMBINED = -1  # class_index of the kernel summed over all logits
DEFAULT_SAVE_NAME = "saved_kernel"  # calculate_kernel.py's --save_name
ALL_CLASSES = "all"  # class_index asking for every per-class kernel

IMPLEMENTATIONS = ("rows", "jacobian", "ntvp", "structured")
DEFAULT_IMPLEMENTATION = "rows"
# Our names of neural-tangents' NtkImplementation members. neural-tangents
# is imported only when one of them is used, so 'rows' also runs where it
# cannot be (nt_compat's patches are made for the pinned JAX).
_NT_IMPLEMENTATIONS = {
    "jacobian": "JACOBIAN_CONTRACTION",
    "ntvp": "NTK_VECTOR_PRODUCTS",
    "structured": "STRUCTURED_DERIVATIVES",
}

# Memory a kernel's blocks may take by default, in GiB.
DEFAULT_MEMORY_GB = 8.0
# 'ntvp' keeps intermediates for each pair of images and logit, so its
# memory grows with B²·G: by default it gets the original code's 4×4 blocks.
NTVP_BLOCK_SIZE = 4
_BYTES_PER_FLOAT = 4
# Work charged to every compiled call on top of its multiply-adds (dispatch,
# copies), so that tiny blocks are not chosen for tiny models.
_CALL_OVERHEAD_MACS = 10**8

# (params, net_state, x1 (B, ...), x2 (B, ...), classes (G,)) -> (G, B, B).
BlockFn = Callable[..., jax.Array]


# --------------------------------------------------------------------------
# Which kernel
# --------------------------------------------------------------------------


def parse_class_index(text: str) -> int | str:
    """A --class_index value: an integer, or ALL_CLASSES.

    Raises:
      UserError: `text` is neither.
    """
    if text == ALL_CLASSES:
        return ALL_CLASSES
    try:
        return int(text)
    except ValueError:
        raise UserError(
            f"--class_index {text!r} is neither an integer nor {ALL_CLASSES!r}"
        ) from None


def kernel_classes(class_index: int | str, n_classes: int) -> tuple[int, ...]:
    """The logits whose kernels `class_index` asks for.

    Args:
      class_index: c in [0, n_classes) for K_c alone, COMBINED (−1) for
        Σ_c K_c, or ALL_CLASSES for every K_c.
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
        f"class model: pick 0..{n_classes - 1}, {COMBINED} (the sum over "
        f"logits) or {ALL_CLASSES!r}"
    )


# --------------------------------------------------------------------------
# Block plan
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How N images split into blocks and the logits into passes.

    size: images per block B (the last block is padded up to it).
    n_blocks: ⌈N / B⌉ blocks per row of the kernel.
    passes: class indices per pass, each of the same length G (the last
      repeats its final class to keep the shape; repeats are dropped).
    factored: the layers kept factored ('rows'; see jacobians.py).
    """

    n_images: int
    size: int
    passes: tuple[tuple[int, ...], ...]
    factored: tuple[str, ...] = ()

    @property
    def n_blocks(self) -> int:
        return _ceil_div(self.n_images, self.size)

    @property
    def n_upper_blocks(self) -> int:
        """Blocks computed per pass: those on or above the diagonal."""
        return _upper_blocks(self.n_blocks)

    def blocks(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) -> (n_blocks, B, H, W, C), zero-padded."""
        padded = np.zeros(
            (self.n_blocks * self.size, *images.shape[1:]), np.float32
        )
        padded[: self.n_images] = images
        return padded.reshape(self.n_blocks, self.size, *images.shape[1:])


def make_plan(
    n_images: int,
    survey: jacobians.Survey,
    classes: Sequence[int],
    block_size: int | None = None,
    classes_per_pass: int | None = None,
    memory_gb: float = DEFAULT_MEMORY_GB,
    implementation: str = DEFAULT_IMPLEMENTATION,
) -> BlockPlan:
    """Block size, passes over the classes and factored layers for a kernel.

    'rows' factors the layers that pay with every wanted logit in one pass
    (Survey.factored). Then, among the block sizes that split N with the
    least padding and the pass sizes that split the classes evenly, the
    pair with the least modelled work (_modelled_macs) whose modelled peak
    memory (jacobians.BlockCosts.peak_floats) fits `memory_gb` is chosen;
    `block_size` or `classes_per_pass` fixes one of them. If none fits, the
    smallest is taken. 'ntvp' gets NTVP_BLOCK_SIZE images per block by
    default.

    Args:
      n_images: N.
      survey: the model's jacobians.survey.
      classes: the logits wanted (see kernel_classes).
      block_size: images per block, or None to choose; capped at N.
      classes_per_pass: logits per pass G, or None to choose.
      memory_gb: the GiB the blocks may take.
      implementation: one of IMPLEMENTATIONS.
    """
    factored = (
        survey.factored(len(classes)) if implementation == "rows" else ()
    )
    costs = jacobians.BlockCosts(survey, factored)
    if block_size is None and implementation == "ntvp":
        block_size = NTVP_BLOCK_SIZE
    sizes = (
        [min(block_size, n_images)] if block_size else _even_splits(n_images)
    )
    per_pass = (
        [min(classes_per_pass, len(classes))]
        if classes_per_pass
        else _even_splits(len(classes))
    )
    budget = memory_gb * 2**30 / _BYTES_PER_FLOAT
    fitting = [
        (size, logits)
        for size in sizes
        for logits in per_pass
        if _peak_floats(n_images, len(classes), size, logits, costs) <= budget
    ]
    size, logits = min(
        fitting or [(min(sizes), min(per_pass))],
        key=lambda choice: _modelled_macs(
            n_images, len(classes), *choice, costs, implementation
        ),
    )
    return BlockPlan(n_images, size, _split_classes(classes, logits), factored)


def plan_peak_gib(plan: BlockPlan, survey: jacobians.Survey) -> float:
    """The modelled peak memory of `plan`'s blocks, GiB."""
    costs = jacobians.BlockCosts(survey, plan.factored)
    n_classes = len({c for classes in plan.passes for c in classes})
    floats = _peak_floats(
        plan.n_images, n_classes, plan.size, len(plan.passes[0]), costs
    )
    return floats * _BYTES_PER_FLOAT / 2**30


def describe_plan(
    plan: BlockPlan, survey: jacobians.Survey, implementation: str
) -> str:
    """One line: images, blocks, passes, factored layers, modelled peak."""
    logits = len(plan.passes[0])
    return (
        f"kernel ({implementation}): {plan.n_images} images in "
        f"{plan.n_blocks} block(s) of {plan.size}, {logits} logit(s) "
        f"per pass, {len(plan.passes)} pass(es), "
        f"{len(plan.factored)} of {len(survey.layers)} weight layers "
        f"factored, modelled peak "
        f"{plan_peak_gib(plan, survey):.2f} GiB"
    )


def _peak_floats(
    n_images: int,
    n_classes: int,
    size: int,
    logits: int,
    costs: jacobians.BlockCosts,
) -> int:
    """The blocks' peak (BlockCosts.peak_floats) plus, when there are
    several passes, the overlaps kept for every pair of blocks; float32
    values."""
    n_blocks = _ceil_div(n_images, size)
    kept_pairs = _upper_blocks(n_blocks) if n_classes > logits else 0
    return costs.peak_floats(size, logits) + kept_pairs * costs.overlap_floats(
        size
    )


def _modelled_macs(
    n_images: int,
    n_classes: int,
    size: int,
    logits: int,
    costs: jacobians.BlockCosts,
    implementation: str,
) -> int:
    """Multiply-adds of a whole kernel in blocks of `size` images and
    passes of `logits` (the last pass padded by repetition)."""
    n_blocks = _ceil_div(n_images, size)
    grams = _upper_blocks(n_blocks)
    block_jacobians = (
        1 + n_blocks * (n_blocks - 1) // 2
        if implementation == "rows"
        else 2 * grams
    )
    per_pass = block_jacobians * costs.jacobian_macs(size, logits) + grams * (
        costs.gram_macs(size, logits) + _CALL_OVERHEAD_MACS
    )
    return _ceil_div(
        n_classes, logits
    ) * per_pass + grams * costs.overlap_macs(size)


def _upper_blocks(n_blocks: int) -> int:
    """Blocks on or above the diagonal of an n_blocks × n_blocks grid."""
    return n_blocks * (n_blocks + 1) // 2


def _even_splits(n: int) -> list[int]:
    """The sizes ⌈n / k⌉, k = 1..n: the least padding for each count k."""
    return sorted({_ceil_div(n, k) for k in range(1, n + 1)})


def _ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for positive ints."""
    return -(-a // b)


def _split_classes(
    classes: Sequence[int], per_pass: int
) -> tuple[tuple[int, ...], ...]:
    """`classes` in ⌈K / per_pass⌉ chunks of equal length, at most
    `per_pass`, the last padded by repetition."""
    per_pass = _ceil_div(len(classes), _ceil_div(len(classes), per_pass))
    chunks = []
    for start in range(0, len(classes), per_pass):
        chunk = tuple(classes[start : start + per_pass])
        chunks.append(chunk + (chunk[-1],) * (per_pass - len(chunk)))
    return tuple(chunks)


# --------------------------------------------------------------------------
# Compiled block functions
# --------------------------------------------------------------------------


def _eval_logits(apply_fn: Callable) -> Callable:
    """(params, images (B, ...), net_state, classes (G,)) -> (B, G) logits
    with batch norm in eval mode."""

    def logits(params, images, net_state, classes):
        out, _ = apply_fn(params, net_state, None, images, False)
        return out[:, classes]

    return logits


def require_implementation(implementation: str) -> None:
    """Raises UserError, naming the cause and the fix, when `implementation`
    needs neural-tangents and it cannot be used here (see nt_compat); call
    it before any work."""
    if implementation in _NT_IMPLEMENTATIONS:
        import nt_compat

        nt_compat.load()


def nt_block_fn(apply_fn: Callable, implementation: str) -> BlockFn:
    """Compiled kernel of one pair of blocks through neural-tangents.

    Returns:
      (params, net_state, x1 (B, ...), x2 (B, ...), classes (G,) int) ->
      float32 (G, B, B), entry [g, i, j] = ∇θ f_g(x1_i) · ∇θ f_g(x2_j).
    """
    from nt_compat import nt  # here: see _NT_IMPLEMENTATIONS

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
    def block(params, net_state, x1, x2, classes):
        kernel = ntk(x1, x2, params, net_state=net_state, classes=classes)
        return jnp.moveaxis(kernel, -1, 0)

    return block


# --------------------------------------------------------------------------
# Block schedules: (i, j) and K[i-block, j-block] for i ≤ j
# --------------------------------------------------------------------------


def _pair_blocks(
    block_fn: BlockFn, params, net_state, blocks, classes
) -> Iterator[tuple[int, int, jax.Array]]:
    """Every block on or above the diagonal, from its own call."""
    for i, j in itertools.combinations_with_replacement(range(len(blocks)), 2):
        yield i, j, block_fn(params, net_state, blocks[i], blocks[j], classes)


def _row_blocks(
    jacobian_fn: Callable, params, net_state, blocks, classes, overlaps: dict
) -> Iterator[tuple[int, int, jax.Array]]:
    """Blocks row by row, reusing each block's Jacobian.

    Row i sweeps j from the last block down to i + 1, so the Jacobian
    formed last is J_{i+1}, which row i + 1 starts from. `overlaps`, if not
    None, keeps each pair's jacobians.overlaps, the same in every pass.
    """

    def block(i, j, row, column):
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


def block_schedule(apply_fn: Callable, implementation: str) -> Callable:
    """(params, net_state, blocks, classes, layers, factored, overlaps) ->
    iterator of (i, j, block).

    `layers` and `factored` are the Survey's layers and the plan's factored
    layers, `overlaps` a dict kept across the passes of one kernel or None
    ('rows' only). Compiled functions are kept in the schedule: reuse it
    for every pass and every kernel of the same model.
    """
    if implementation == "rows":
        compiled = {}

        def rows(
            params, net_state, blocks, classes, layers, factored, overlaps
        ):
            if (layers, factored) not in compiled:
                compiled[layers, factored] = jacobians.block_jacobian_fn(
                    apply_fn, layers, factored
                )
            return _row_blocks(
                compiled[layers, factored],
                params,
                net_state,
                blocks,
                classes,
                overlaps,
            )

        return rows
    if implementation in _NT_IMPLEMENTATIONS:
        block_fn = nt_block_fn(apply_fn, implementation)

        def pairs(
            params, net_state, blocks, classes, layers, factored, overlaps
        ):
            del layers, factored, overlaps  # neural-tangents does it all
            return _pair_blocks(block_fn, params, net_state, blocks, classes)

        return pairs
    raise ValueError(
        f"unknown implementation {implementation!r}; choose "
        f"from {IMPLEMENTATIONS}"
    )


# --------------------------------------------------------------------------
# Whole kernels
# --------------------------------------------------------------------------


def empirical_ntk(
    apply_fn: Callable,
    params,
    net_state,
    images: np.ndarray,
    class_index: int | str = COMBINED,
    *,
    implementation: str = DEFAULT_IMPLEMENTATION,
    block_size: int | None = None,
    classes_per_pass: int | None = None,
    memory_gb: float = DEFAULT_MEMORY_GB,
    show_progress: bool = False,
    schedule: Callable | None = None,
    log: Callable[[str], object] | None = None,
) -> np.ndarray:
    """The empirical NTK of a model on `images`, batch norm in eval mode.

    Args:
      apply_fn: the model's `apply(params, state, rng, images, is_training)`
        returning ((B, K) logits, state).
      params: the parameter tree θ the kernel is taken at.
      net_state: batch-norm state (running statistics), held fixed.
      images: (N, H, W, C) float32.
      class_index: c for K_c, COMBINED (−1) for Σ_c K_c, ALL_CLASSES for
        every K_c.
      implementation: one of IMPLEMENTATIONS.
      block_size, classes_per_pass, memory_gb: see make_plan.
      show_progress: a tqdm bar over blocks on stderr.
      schedule: a block_schedule(apply_fn, implementation) to reuse
        (compiled functions are kept in it); built when None.
      log: called with a line describing the plan (describe_plan).
    Returns:
      float32 (N, N) for one class or COMBINED, (K, N, N) for ALL_CLASSES;
      exactly symmetric.
    Raises:
      UserError: `class_index` is not valid for the model's K logits.
    """
    images = np.asarray(images, np.float32)
    survey = jacobians.survey(apply_fn, params, net_state, images.shape[1:])
    classes = kernel_classes(class_index, survey.n_logits)
    plan = make_plan(
        len(images),
        survey,
        classes,
        block_size,
        classes_per_pass,
        memory_gb,
        implementation,
    )
    if log is not None:
        log(describe_plan(plan, survey, implementation))
    schedule = schedule or block_schedule(apply_fn, implementation)
    blocks = functools.partial(
        schedule,
        layers=survey.layers,
        factored=plan.factored,
        overlaps={} if len(plan.passes) > 1 else None,
    )
    # Full float32 products even where XLA would use TF32 (GPUs).
    with jax.default_matmul_precision("highest"):
        kernels = _per_class_kernels(
            blocks, params, net_state, images, plan, show_progress
        )
    if class_index == COMBINED:
        return _symmetric(sum(kernels[c] for c in classes))
    if class_index == ALL_CLASSES:
        return np.stack([_symmetric(kernels[c]) for c in classes])
    return _symmetric(kernels[classes[0]])


def _per_class_kernels(
    schedule: Callable,
    params,
    net_state,
    images: np.ndarray,
    plan: BlockPlan,
    show_progress: bool,
) -> dict[int, np.ndarray]:
    """{c: upper block triangle of K_c, float32 (N, N)} for every class in
    the plan's passes; entries below the diagonal blocks are left zero."""
    blocks = jnp.asarray(plan.blocks(images))
    padded = plan.n_blocks * plan.size
    kernels = {}
    with tqdm(
        total=len(plan.passes) * plan.n_upper_blocks,
        unit="block",
        desc="kernel",
        disable=not show_progress,
    ) as bar:
        for classes in plan.passes:
            upper = np.zeros((len(classes), padded, padded), np.float32)
            for i, j, block in schedule(
                params, net_state, blocks, jnp.asarray(classes, jnp.int32)
            ):
                rows = slice(i * plan.size, (i + 1) * plan.size)
                cols = slice(j * plan.size, (j + 1) * plan.size)
                upper[:, rows, cols] = np.asarray(block)
                bar.update()
            for c, kernel in zip(classes, upper, strict=True):
                kernels[c] = kernel[: plan.n_images, : plan.n_images]
    return kernels


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle (diagonal included) is
    that of `upper` (N, N)."""
    return np.triu(upper) + np.triu(upper, 1).T
