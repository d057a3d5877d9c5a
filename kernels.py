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

* 'rows' (default): per block, the Jacobian (G, B, P) of the G wanted
  logits is formed explicitly, flattened over the P parameters, and a block
  of the kernel is one batched matrix product J_i J_jᵀ. Row i of blocks
  keeps J_i while the column blocks j > i are swept from the right, so the
  last column's J_{i+1} becomes row i+1's: 1 + n(n−1)/2 block Jacobians for
  n blocks per row of the kernel, against n(n+1) for the pair-wise
  implementations below. Memory ≈ 3·G·B·P·4 bytes (two Jacobians kept, one
  being formed).
* 'jacobian', 'ntvp', 'structured': neural-tangents' `empirical_ntk_fn`
  with JACOBIAN_CONTRACTION, NTK_VECTOR_PRODUCTS or STRUCTURED_DERIVATIVES
  on each pair of blocks (i, j), i ≤ j, the logit axis a diagonal axis.
  Each pair recomputes both blocks' derivatives. NTK-vector products cost
  one forward and one backward pass per pair of images and logit, which is
  what makes the original code slow on CNNs.

'rows' is the default because it was the fastest everywhere we measured
(2-core Xeon CPU, compilation included, bench/bench_kernel.py): ResNet-18 of
width 8, N = 200, summed kernel: rows 10 s, structured 14 s, jacobian 15 s
(the original's 4×4 NTK-vector products: 148 s); width 64, N = 100, one
class: rows 21 s, structured 24 s, jacobian 25 s. On blocks of 25 images
(width 8, all logits) NTK-vector products took 6× longer per entry than
structured derivatives. All four agree with J Jᵀ from `jax.jacrev` to
float32 rounding (tests/test_kernels.py).

Products run at full float32 precision (`jax.default_matmul_precision
("highest")`), also on GPUs whose default would be TF32.
"""
import dataclasses
import itertools
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

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

# Memory the Jacobians of a block may take by default, in GiB.
DEFAULT_MEMORY_GB = 8.0
# 'ntvp' keeps intermediates for each pair of images and logit, so its
# memory grows with B²·G: by default it gets the original code's 4×4 blocks.
NTVP_BLOCK_SIZE = 4
# Jacobian-sized float32 buffers alive at once ('rows': two kept, one being
# formed; the pair-wise implementations hold two and their contraction).
_JACOBIAN_COPIES = 3
_BYTES_PER_FLOAT = 4

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
        raise UserError(f"--class_index {text!r} is neither an integer nor "
                        f"{ALL_CLASSES!r}") from None


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
            0 <= class_index < n_classes):
        return (int(class_index),)
    raise UserError(
        f"--class_index {class_index} is not a class of this {n_classes}-"
        f"class model: pick 0..{n_classes - 1}, {COMBINED} (the sum over "
        f"logits) or {ALL_CLASSES!r}")


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
    """
    n_images: int
    size: int
    passes: tuple[tuple[int, ...], ...]

    @property
    def n_blocks(self) -> int:
        return _ceil_div(self.n_images, self.size)

    @property
    def n_upper_blocks(self) -> int:
        """Blocks computed per pass: those on or above the diagonal."""
        return self.n_blocks * (self.n_blocks + 1) // 2

    def blocks(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, C) -> (n_blocks, B, H, W, C), zero-padded."""
        padded = np.zeros((self.n_blocks * self.size, *images.shape[1:]),
                          np.float32)
        padded[:self.n_images] = images
        return padded.reshape(self.n_blocks, self.size, *images.shape[1:])


def jacobian_gib(n_params: int, block_size: int, classes_per_pass: int = 1
                 ) -> float:
    """GiB of the Jacobian buffers of one block, float32.

    _JACOBIAN_COPIES buffers of block_size × classes_per_pass × n_params
    floats: the estimate of peak memory beyond the network's own
    activations (a ResNet-18 of width 64 has P = 11.2M: 0.125 GiB per
    image and logit).
    """
    floats = _JACOBIAN_COPIES * block_size * classes_per_pass * n_params
    return floats * _BYTES_PER_FLOAT / 2 ** 30


def make_plan(n_images: int, n_params: int, classes: Sequence[int],
              block_size: int | None = None,
              classes_per_pass: int | None = None,
              memory_gb: float = DEFAULT_MEMORY_GB,
              implementation: str = DEFAULT_IMPLEMENTATION) -> BlockPlan:
    """Block size and passes over the classes for a kernel of N images.

    Bigger blocks are faster (fewer Jacobian recomputations, larger matrix
    products), so by default blocks are as large as `memory_gb` allows with
    one logit per pass, evened out so that the last block wastes the least
    padding; then as many logits share each pass (and its forward pass) as
    still fit. That memory model is the one of 'rows', 'jacobian' and
    'structured'; 'ntvp' gets NTVP_BLOCK_SIZE by default.

    Args:
      n_images: N.
      n_params: P, the number of trainable parameters.
      classes: the logits wanted (see kernel_classes).
      block_size: images per block, or None for the automatic choice;
        capped at N.
      classes_per_pass: logits per pass G, or None for the automatic choice.
      memory_gb: the GiB the Jacobians may take (see jacobian_gib).
      implementation: one of IMPLEMENTATIONS.
    """
    per_image = jacobian_gib(n_params, 1)
    if block_size is None and implementation == "ntvp":
        block_size = NTVP_BLOCK_SIZE
    if block_size is None:
        largest = max(1, int(memory_gb // per_image))
        block_size = _ceil_div(n_images, _ceil_div(n_images, largest))
    size = max(1, min(block_size, n_images))
    if classes_per_pass is None:
        classes_per_pass = int(memory_gb // (per_image * size))
    n_passes = _ceil_div(len(classes),
                         max(1, min(classes_per_pass, len(classes))))
    per_pass = _ceil_div(len(classes), n_passes)
    return BlockPlan(n_images, size, _split_classes(classes, per_pass))


def _ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for positive ints."""
    return -(-a // b)


def _split_classes(classes: Sequence[int], per_pass: int
                   ) -> tuple[tuple[int, ...], ...]:
    """`classes` in chunks of `per_pass`, the last padded by repetition."""
    chunks = []
    for start in range(0, len(classes), per_pass):
        chunk = tuple(classes[start:start + per_pass])
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


def nt_block_fn(apply_fn: Callable, implementation: str) -> BlockFn:
    """Compiled kernel of one pair of blocks through neural-tangents.

    Returns:
      (params, net_state, x1 (B, ...), x2 (B, ...), classes (G,) int) ->
      float32 (G, B, B), entry [g, i, j] = ∇θ f_g(x1_i) · ∇θ f_g(x2_j).
    """
    from nt_compat import nt  # here: see _NT_IMPLEMENTATIONS
    ntk = nt.empirical_ntk_fn(
        _eval_logits(apply_fn), trace_axes=(), diagonal_axes=(-1,),
        vmap_axes=0, implementation=getattr(
            nt.NtkImplementation, _NT_IMPLEMENTATIONS[implementation]))

    @jax.jit
    def block(params, net_state, x1, x2, classes):
        kernel = ntk(x1, x2, params, net_state=net_state, classes=classes)
        return jnp.moveaxis(kernel, -1, 0)
    return block


def flat_jacobian_fn(apply_fn: Callable) -> Callable:
    """Compiled Jacobian of G logits of a block, flattened over parameters.

    Returns:
      (params, net_state, images (B, ...), classes (G,) int) -> float32
      (G, B, P), row [g, i] = ∇θ f_g(x_i) in `ravel_pytree` order. One
      forward and G backward passes per image; B·G·P floats.
    """
    logits = _eval_logits(apply_fn)

    def one_image(params, net_state, image, classes):
        grads = jax.jacrev(lambda p: logits(p, image[None], net_state,
                                            classes)[0])(params)
        return jnp.concatenate(
            [leaf.reshape(len(classes), -1)
             for leaf in jax.tree_util.tree_leaves(grads)], axis=1)

    return jax.jit(jax.vmap(one_image, in_axes=(None, None, 0, None),
                            out_axes=1))


@jax.jit
def gram(j1: jax.Array, j2: jax.Array) -> jax.Array:
    """(G, B, P), (G, B, P) -> (G, B, B): J1 J2ᵀ per logit, full float32
    precision. 2·G·B²·P flops."""
    return jnp.einsum("gip,gjp->gij", j1, j2,
                      precision=jax.lax.Precision.HIGHEST)


# --------------------------------------------------------------------------
# Block schedules: (i, j) and K[i-block, j-block] for i ≤ j
# --------------------------------------------------------------------------

def _pair_blocks(block_fn: BlockFn, params, net_state, blocks, classes
                 ) -> Iterator[tuple[int, int, jax.Array]]:
    """Every block on or above the diagonal, from its own call."""
    for i, j in itertools.combinations_with_replacement(range(len(blocks)),
                                                        2):
        yield i, j, block_fn(params, net_state, blocks[i], blocks[j], classes)


def _row_blocks(jacobian_fn: Callable, params, net_state, blocks, classes
                ) -> Iterator[tuple[int, int, jax.Array]]:
    """Blocks row by row, reusing each block's Jacobian.

    Row i sweeps j from the last block down to i + 1, so the Jacobian
    formed last is J_{i+1}, which row i + 1 starts from.
    """
    row = jacobian_fn(params, net_state, blocks[0], classes)
    for i in range(len(blocks)):
        yield i, i, gram(row, row)
        column = None
        for j in range(len(blocks) - 1, i, -1):
            column = None  # frees J_{j+1} before J_j is formed
            column = jacobian_fn(params, net_state, blocks[j], classes)
            yield i, j, gram(row, column)
        row = column


def block_schedule(apply_fn: Callable, implementation: str) -> Callable:
    """(params, net_state, blocks, classes) -> iterator of (i, j, block).

    Builds (and, on the first call, compiles) the implementation's
    functions once; reuse the result for every pass and every kernel of the
    same model and block size.
    """
    if implementation == "rows":
        jacobian_fn = flat_jacobian_fn(apply_fn)
        return lambda *args: _row_blocks(jacobian_fn, *args)
    if implementation in _NT_IMPLEMENTATIONS:
        block_fn = nt_block_fn(apply_fn, implementation)
        return lambda *args: _pair_blocks(block_fn, *args)
    raise ValueError(f"unknown implementation {implementation!r}; choose "
                     f"from {IMPLEMENTATIONS}")


# --------------------------------------------------------------------------
# Whole kernels
# --------------------------------------------------------------------------

def empirical_ntk(apply_fn: Callable, params, net_state, images: np.ndarray,
                  class_index: int | str = COMBINED, *,
                  implementation: str = DEFAULT_IMPLEMENTATION,
                  block_size: int | None = None,
                  classes_per_pass: int | None = None,
                  memory_gb: float = DEFAULT_MEMORY_GB,
                  show_progress: bool = False,
                  schedule: Callable | None = None) -> np.ndarray:
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
    Returns:
      float32 (N, N) for one class or COMBINED, (K, N, N) for ALL_CLASSES;
      exactly symmetric.
    Raises:
      UserError: `class_index` is not valid for the model's K logits.
    """
    images = np.asarray(images, np.float32)
    n_logits = jax.eval_shape(
        lambda x: apply_fn(params, net_state, None, x, False)[0],
        jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)).shape[-1]
    classes = kernel_classes(class_index, n_logits)
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    plan = make_plan(len(images), n_params, classes, block_size,
                     classes_per_pass, memory_gb, implementation)
    schedule = schedule or block_schedule(apply_fn, implementation)
    # Full float32 products even where XLA would use TF32 (GPUs).
    with jax.default_matmul_precision("highest"):
        kernels = _per_class_kernels(schedule, params, net_state, images,
                                     plan, show_progress)
    if class_index == COMBINED:
        return _symmetric(sum(kernels[c] for c in classes))
    if class_index == ALL_CLASSES:
        return np.stack([_symmetric(kernels[c]) for c in classes])
    return _symmetric(kernels[classes[0]])


def _per_class_kernels(schedule: Callable, params, net_state,
                       images: np.ndarray, plan: BlockPlan,
                       show_progress: bool) -> dict[int, np.ndarray]:
    """{c: upper block triangle of K_c, float32 (N, N)} for every class in
    the plan's passes; entries below the diagonal blocks are left zero."""
    blocks = jnp.asarray(plan.blocks(images))
    padded = plan.n_blocks * plan.size
    kernels = {}
    with tqdm(total=len(plan.passes) * plan.n_upper_blocks, unit="block",
              desc="kernel", disable=not show_progress) as bar:
        for classes in plan.passes:
            upper = np.zeros((len(classes), padded, padded), np.float32)
            for i, j, block in schedule(params, net_state, blocks,
                                        jnp.asarray(classes, jnp.int32)):
                rows = slice(i * plan.size, (i + 1) * plan.size)
                cols = slice(j * plan.size, (j + 1) * plan.size)
                upper[:, rows, cols] = np.asarray(block)
                bar.update()
            for c, kernel in zip(classes, upper):
                kernels[c] = kernel[:plan.n_images, :plan.n_images]
    return kernels


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle (diagonal included) is
    that of `upper` (N, N)."""
    return np.triu(upper) + np.triu(upper, 1).T

