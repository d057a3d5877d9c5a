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
kernel K(test, train) (cross_ntk), M×N, takes every block of the rectangle
(test blocks × training blocks) with the same compiled block functions.

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
(BlockCosts, make_plan). 'rows' is the default because it was the
fastest everywhere we measured; see BENCHMARKS.md for the numbers. All
four agree with J Jᵀ from `jax.jacrev` to float32 rounding
(tests/test_kernels.py).

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
from ntk import jacobians
from ntk.kernel_files import ALL_CLASSES, COMBINED
from utils import UserError

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
# Block cost model
# --------------------------------------------------------------------------


def factoring_pays(layer: jacobians.WeightLayer, logits: int) -> bool:
    """Whether, with `logits` per pass, the factored inner product of a pair
    of images through `layer` (S²·(D + G·O) multiply-adds) takes fewer
    multiply-adds than the explicit one (G·D·O)."""
    factored = layer.positions**2 * (
        layer.in_features + logits * layer.out_features
    )
    return factored < logits * layer.in_features * layer.out_features


def factored_layers(survey: jacobians.Survey, logits: int) -> tuple[str, ...]:
    """Names of the survey's layers worth factoring with `logits` per
    pass (factoring_pays), in the survey's order."""
    return tuple(
        layer.name for layer in survey.layers if factoring_pays(layer, logits)
    )


@dataclasses.dataclass(frozen=True)
class BlockCosts:
    """Memory (float32 values) and work (multiply-adds) of the Jacobian of
    a block of B images and G logits, and of the Gram of two blocks, with
    the layers `factored` kept factored. The model behind make_plan's
    choice of block size and logits per pass."""

    survey: jacobians.Survey
    factored: tuple[str, ...]

    def _factored_layers(self) -> tuple[jacobians.WeightLayer, ...]:
        return tuple(
            layer
            for layer in self.survey.layers
            if layer.name in self.factored
        )

    def _explicit_params(self) -> int:
        """Parameters whose per-image gradients are formed."""
        return self.survey.n_params - sum(
            layer.in_features * layer.out_features
            for layer in self._factored_layers()
        )

    def jacobian_floats(self, images: int, logits: int) -> int:
        """A BlockJacobian: explicit gradients, inputs and cotangents."""
        per_logit = self._explicit_params() + sum(
            layer.positions * layer.out_features
            for layer in self._factored_layers()
        )
        per_image = sum(
            layer.positions * layer.in_features
            for layer in self._factored_layers()
        )
        return images * (logits * per_logit + per_image)

    def forming_floats(self, images: int, logits: int) -> int:
        """Inputs and cotangents of every collected layer, held while a
        block's Jacobian is formed."""
        return images * sum(
            layer.positions * (layer.in_features + logits * layer.out_features)
            for layer in self.survey.layers
        )

    def overlap_floats(self, images: int) -> int:
        """The overlaps ⟨x_s, x'_t⟩ of two blocks (jacobians.overlaps)."""
        return images**2 * sum(
            layer.positions**2 for layer in self._factored_layers()
        )

    def peak_floats(self, images: int, logits: int) -> int:
        """Peak while two Jacobians are kept (a row's and a column's) and a
        third is formed, or the two are multiplied."""
        jacobian = self.jacobian_floats(images, logits)
        return 2 * jacobian + max(
            jacobian + self.forming_floats(images, logits),
            2 * self.overlap_floats(images),
        )

    def jacobian_macs(self, images: int, logits: int) -> int:
        """One forward and `logits` backward passes (twice the forward's
        work each) per image."""
        return images * self.survey.forward_macs * (1 + 2 * logits)

    def overlap_macs(self, images: int) -> int:
        """The overlaps of two blocks of `images`."""
        return images**2 * sum(
            layer.positions**2 * layer.in_features
            for layer in self._factored_layers()
        )

    def gram_macs(self, images: int, logits: int) -> int:
        """The Gram of two blocks of `images`, given their overlaps."""
        per_logit = self._explicit_params() + sum(
            layer.positions**2 * layer.out_features
            for layer in self._factored_layers()
        )
        return images**2 * logits * per_logit


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
        return data.n_batches(self.n_images, self.size)

    @property
    def n_upper_blocks(self) -> int:
        """Blocks computed per pass: those on or above the diagonal."""
        return _upper_blocks(self.n_blocks)

    def blocks(self, images: np.ndarray) -> np.ndarray:
        """(M, H, W, C) -> (⌈M / B⌉, B, H, W, C), zero-padded; M is N or
        any other count (the test images of a cross kernel)."""
        count = data.n_batches(len(images), self.size)
        padded = np.zeros((count * self.size, *images.shape[1:]), np.float32)
        padded[: len(images)] = images
        return padded.reshape(count, self.size, *images.shape[1:])


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
    (factored_layers). Then, among the block sizes that split N with the
    least padding and the pass sizes that split the classes evenly, the
    pair with the least modelled work (_modelled_macs) whose modelled peak
    memory (BlockCosts.peak_floats) fits `memory_gb` is chosen;
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
        factored_layers(survey, len(classes))
        if implementation == "rows"
        else ()
    )
    costs = BlockCosts(survey, factored)
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
    costs = BlockCosts(survey, plan.factored)
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
    costs: BlockCosts,
) -> int:
    """The blocks' peak (BlockCosts.peak_floats) plus, when there are
    several passes, the overlaps kept for every pair of blocks; float32
    values."""
    n_blocks = data.n_batches(n_images, size)
    kept_pairs = _upper_blocks(n_blocks) if n_classes > logits else 0
    return costs.peak_floats(size, logits) + kept_pairs * costs.overlap_floats(
        size
    )


def _modelled_macs(
    n_images: int,
    n_classes: int,
    size: int,
    logits: int,
    costs: BlockCosts,
    implementation: str,
) -> int:
    """Multiply-adds of a whole kernel in blocks of `size` images and
    passes of `logits` (the last pass padded by repetition)."""
    n_blocks = data.n_batches(n_images, size)
    grams = _upper_blocks(n_blocks)
    block_jacobians = (
        1 + n_blocks * (n_blocks - 1) // 2
        if implementation == "rows"
        else 2 * grams
    )
    per_pass = block_jacobians * costs.jacobian_macs(size, logits) + grams * (
        costs.gram_macs(size, logits) + _CALL_OVERHEAD_MACS
    )
    return data.n_batches(
        n_classes, logits
    ) * per_pass + grams * costs.overlap_macs(size)


def _upper_blocks(n_blocks: int) -> int:
    """Blocks on or above the diagonal of an n_blocks × n_blocks grid."""
    return n_blocks * (n_blocks + 1) // 2


def _even_splits(n: int) -> list[int]:
    """The sizes ⌈n / k⌉, k = 1..n: the least padding for each count k."""
    return sorted({data.n_batches(n, k) for k in range(1, n + 1)})


def _split_classes(
    classes: Sequence[int], per_pass: int
) -> tuple[tuple[int, ...], ...]:
    """`classes` in ⌈K / per_pass⌉ chunks of equal length, at most
    `per_pass`, the last padded by repetition."""
    per_pass = data.n_batches(
        len(classes), data.n_batches(len(classes), per_pass)
    )
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


def _prepare(
    apply_fn: Callable,
    params: models.Params,
    net_state: models.State,
    images: np.ndarray,
    class_index: int | str,
    implementation: str,
    block_size: int | None,
    classes_per_pass: int | None,
    memory_gb: float,
    log: Callable[[str], object] | None,
) -> tuple[tuple[int, ...], BlockPlan, jacobians.Survey]:
    """(the wanted logits, the plan for N = len(images), the survey)."""
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
    return classes, plan, survey


def empirical_ntk(
    apply_fn: Callable,
    params: models.Params,
    net_state: models.State,
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
      class_index: c for K_c, COMBINED (−1) for the mean over logits
        (1/K) Σ_c K_c, ALL_CLASSES for every K_c.
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
    classes, plan, survey = _prepare(
        apply_fn,
        params,
        net_state,
        images,
        class_index,
        implementation,
        block_size,
        classes_per_pass,
        memory_gb,
        log,
    )
    kernels = _per_class_kernels(
        schedule or block_schedule(apply_fn, implementation),
        params,
        net_state,
        images,
        None,
        plan,
        survey,
        show_progress,
    )
    return _select(
        {c: _symmetric(kernel) for c, kernel in kernels.items()},
        classes,
        class_index,
    )


def cross_ntk(
    apply_fn: Callable,
    params: models.Params,
    net_state: models.State,
    test_images: np.ndarray,
    images: np.ndarray,
    class_index: int | str = COMBINED,
    *,
    implementation: str = DEFAULT_IMPLEMENTATION,
    block_size: int | None = None,
    classes_per_pass: int | None = None,
    memory_gb: float = DEFAULT_MEMORY_GB,
    show_progress: bool = False,
    schedule: Callable | None = None,
) -> np.ndarray:
    """The cross kernel K(test, train) of a model, batch norm in eval mode.

    Entry [a, i] = ∇θ f_c(x_test_a) · ∇θ f_c(x_i) for K_c (the mean over
    c for COMBINED). Blocks as empirical_ntk's plan for the N training
    images (the same block size, logits per pass and factored layers, so
    the same compiled functions); the M test images are cut into blocks of
    that size, the last zero-padded, and every block of the rectangle is
    computed (block_schedule with `columns`). Peak memory is at most
    empirical_ntk's; with several passes the overlaps of all
    ⌈M/B⌉·⌈N/B⌉ pairs of blocks are kept.

    Args:
      test_images: (M, H, W, C) float32, the rows.
      images: (N, H, W, C) float32, the training images, the columns.
      the rest: as empirical_ntk.
    Returns:
      float32 (M, N) for one class or COMBINED, (K, M, N) for ALL_CLASSES.
    Raises:
      UserError: `class_index` is not valid for the model's K logits.
    """
    images = np.asarray(images, np.float32)
    classes, plan, survey = _prepare(
        apply_fn,
        params,
        net_state,
        images,
        class_index,
        implementation,
        block_size,
        classes_per_pass,
        memory_gb,
        None,
    )
    kernels = _per_class_kernels(
        schedule or block_schedule(apply_fn, implementation),
        params,
        net_state,
        np.asarray(test_images, np.float32),
        images,
        plan,
        survey,
        show_progress,
    )
    return _select(kernels, classes, class_index)


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
    params: models.Params,
    net_state: models.State,
    images: np.ndarray,
    columns: np.ndarray | None,
    plan: BlockPlan,
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
                params,
                net_state,
                rows,
                jnp.asarray(classes, jnp.int32),
                columns=columns,
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
