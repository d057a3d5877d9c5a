"""The block planner of the empirical NTK (kernels.py): how N images split
into blocks and the logits into passes, from a model of memory and work.

For a model's jacobians.Survey, BlockCosts counts the float32 values held
and the multiply-adds done for the Jacobian of a block of B images and G
logits and for the Gram of two blocks, with some weight layers kept
factored (inputs and cotangents instead of per-image gradients; see
jacobians.py). make_plan picks the block size and logits per pass with the
least modelled work whose modelled peak fits a memory budget, and which
layers 'rows' keeps factored (factoring_pays).
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

import data
from ntk import jacobians

# The implementations of kernels.py (described there): the plan depends on
# which computes the blocks.
IMPLEMENTATIONS = ("rows", "jacobian", "ntvp", "structured")
DEFAULT_IMPLEMENTATION = "rows"
# Memory a kernel's blocks may take by default, in GiB.
DEFAULT_MEMORY_GB = 8.0
# 'ntvp' keeps intermediates for each pair of images and logit, so its
# memory grows with B²·G: by default it gets the original code's 4×4 blocks.
NTVP_BLOCK_SIZE = 4
_BYTES_PER_FLOAT = 4
# Work charged to every compiled call on top of its multiply-adds (dispatch,
# copies), so that tiny blocks are not chosen for tiny models.
_CALL_OVERHEAD_MACS = 10**8


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
