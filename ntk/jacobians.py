"""Per-image Jacobians of a Haiku model's logits, some layers factored.

kernels.py needs the Jacobian ∂f_g(x_b)/∂θ of G logits on a block of B
images only through inner products between images. A layer that applies
one weight matrix W (D × O) at S positions of an image, y_s = x_s W (a
convolution: x_s is the input window of output pixel s, D = kh·kw·C_in; a
linear layer: S = 1), has the gradient

    ∇W f_g(x) = Σ_s x_s ⊗ δ_gs,   δ_gs = ∂f_g / ∂y_s,

so between two images

    ⟨∇W f_g(x), ∇W f_g(x')⟩ = Σ_{s,t} ⟨x_s, x'_t⟩ ⟨δ_gs, δ'_gt⟩.

Every such layer's inputs x_s and cotangents δ_gs are collected in one
forward and G backward passes per image: the cotangents are the gradient
with respect to a zero "probe" added to the layer's output, found with a
Haiku method interceptor. Then each layer is either

* factored: kept as (inputs, cotangents), which costs S²·D + G·S²·O per
  pair of images instead of G·D·O, and B·S·D + G·B·S·O floats per block
  instead of G·B·D·O. It pays where positions are few and weights many:
  linear layers, and the last stage of a ResNet-18 on 32×32 images (S = 16;
  at width 64 its 8.4M of the 11.2M weights are then never formed per
  image); planner.py decides which (planner.factoring_pays) and models
  the cost of either choice (planner.BlockCosts); or
* explicit: its per-image gradient formed as one batched matrix product
  of inputs and cotangents, several times faster on a CPU than the
  per-example weight gradients of vmapped autodiff (grouped convolutions).

Every other parameter (batch-norm scales and offsets, biases) gets its
per-image gradient from `jax.jacrev`. Batch norm must be in eval mode, so
that each image's logits depend on that image alone and everything is
vmapped over the block.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import models

_HIGHEST = jax.lax.Precision.HIGHEST
# The modules whose calls are y_s = x_s W (survey checks the details).
_WEIGHT_MODULES = (hk.Conv2D, hk.Linear)


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """One hk.Conv2D or hk.Linear call, y_s = x_s W at S positions.

    name: the module's name; W is params[name]['w'].
    output_shape: the layer's output for one image, (1, ..., O).
    positions, in_features, out_features: S, D and O.
    conv: (kernel_shape, stride, padding, kernel_dilation) of a
      convolution; None for a linear layer.
    """

    name: str
    output_shape: tuple[int, ...]
    positions: int
    in_features: int
    out_features: int
    conv: tuple | None = None

    def windows(self, inputs: jax.Array) -> jax.Array:
        """The layer's input (1, ..., C_in) for one image -> (S, D), row s
        the x_s that output position s is computed from (for a
        convolution in (kh, kw, C_in) order, that of W's rows)."""
        if self.conv is not None:
            inputs = _conv_windows(
                inputs, *self.conv, output_size=self.output_shape[1:3]
            )
        return inputs.reshape(self.positions, self.in_features)

    @property
    def macs(self) -> int:
        """Multiply-adds of the layer's forward pass on one image."""
        return self.positions * self.in_features * self.out_features


def _conv_windows(
    inputs: jax.Array,
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    kernel_dilation: Sequence[int],
    *,
    output_size: Sequence[int],
) -> jax.Array:
    """(1, H, W, C) -> (1, H', W', kh, kw, C): each output pixel's input
    window, gathered from the padded input (lax's
    conv_general_dilated_patches is a convolution with an identity kernel:
    D times the work)."""
    spans = [
        (k - 1) * d + 1
        for k, d in zip(kernel_shape, kernel_dilation, strict=True)
    ]
    pads = (
        jax.lax.padtype_to_pads(inputs.shape[1:3], spans, stride, padding)
        if isinstance(padding, str)
        else padding
    )
    padded = jnp.pad(inputs, ((0, 0), *pads, (0, 0)))
    rows = (
        np.arange(output_size[0])[:, None] * stride[0]
        + np.arange(kernel_shape[0])[None, :] * kernel_dilation[0]
    )
    cols = (
        np.arange(output_size[1])[:, None] * stride[1]
        + np.arange(kernel_shape[1])[None, :] * kernel_dilation[1]
    )
    # (H', kh, W', kw) flat positions in the padded image.
    flat = rows[:, :, None, None] * padded.shape[2] + cols[None, None]
    flat = flat.transpose(0, 2, 1, 3)  # (H', W', kh, kw)
    pixels = (
        padded.reshape(-1, inputs.shape[3])
        .at[flat.reshape(-1)]
        .get(mode="promise_in_bounds")
    )
    return pixels.reshape(1, *output_size, *kernel_shape, inputs.shape[3])


@dataclasses.dataclass(frozen=True)
class Survey:
    """What one abstract trace of the model on one image tells.

    n_logits: K, the size of the model's output.
    n_params: P, all trainable parameters.
    layers: the weight layers whose inputs and cotangents are collected.
    """

    n_logits: int
    n_params: int
    layers: tuple[WeightLayer, ...]

    @property
    def forward_macs(self) -> int:
        """Multiply-adds of the weight layers on one image."""
        return sum(layer.macs for layer in self.layers)


def survey(
    apply_fn: Callable,
    params: models.Params,
    net_state: models.State,
    image_shape: Sequence[int],
) -> Survey:
    """Traces apply_fn abstractly on one image of `image_shape` (H, W, C).

    `params` and `net_state` may be arrays or jax.ShapeDtypeStructs.

    A layer is collected when it is an hk.Conv2D (NHWC, one feature group,
    no mask or input dilation) or hk.Linear called exactly once, with its
    weight at params[name]['w'] of the expected shape. Anything else (a
    model that is not Haiku, say) just yields fewer layers: their
    parameters get their gradients from jax.jacrev.
    """
    calls = []

    def record(
        next_f: Callable,
        args: tuple,
        kwargs: dict,
        context: hk.MethodContext,
    ) -> Any:
        out = next_f(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(
            context.module, _WEIGHT_MODULES
        ):
            calls.append(
                (context.module, _call_input(args, kwargs).shape, out.shape)
            )
        return out

    def logits(
        params: models.Params, net_state: models.State, images: jax.Array
    ) -> jax.Array:
        with hk.intercept_methods(record):
            return apply_fn(params, net_state, None, images, False)[0]

    out = jax.eval_shape(
        logits,
        params,
        net_state,
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
    )
    names = [getattr(module, "module_name", None) for module, _, _ in calls]
    layers = []
    for (module, in_shape, out_shape), name in zip(calls, names, strict=True):
        layer = _weight_layer(module, in_shape, out_shape, params)
        if layer is not None and names.count(name) == 1:
            layers.append(layer)
    return Survey(
        int(out.shape[-1]), models.count_params(params), tuple(layers)
    )


def _call_input(args: tuple, kwargs: dict) -> jax.Array:
    """The `inputs` argument of a Conv2D or Linear call."""
    return args[0] if args else kwargs["inputs"]


def _weight_layer(
    module: hk.Conv2D | hk.Linear,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    params: models.Params,
) -> WeightLayer | None:
    """The WeightLayer of one Conv2D or Linear call, or None if it cannot
    be one."""
    weight = params.get(module.module_name, {}).get("w")
    if weight is None:
        return None
    if isinstance(module, hk.Linear):
        conv = None
        expected = (in_shape[-1], module.output_size)
    else:
        if (
            module.channel_index != -1
            or module.feature_group_count != 1
            or module.mask is not None
            or any(d != 1 for d in module.lhs_dilation)
        ):
            return None
        padding = (
            module.padding
            if isinstance(module.padding, str)
            else tuple(map(tuple, module.padding))
        )
        conv = (
            tuple(module.kernel_shape),
            tuple(module.stride),
            padding,
            tuple(module.kernel_dilation),
        )
        expected = (*module.kernel_shape, in_shape[-1], module.output_channels)
    if tuple(weight.shape) != tuple(expected):
        return None
    return WeightLayer(
        module.module_name,
        tuple(out_shape),
        int(np.prod(out_shape[:-1])),
        int(np.prod(expected[:-1])),
        int(expected[-1]),
        conv,
    )


# --------------------------------------------------------------------------
# Block Jacobians
# --------------------------------------------------------------------------


class BlockJacobian(NamedTuple):
    """The logits' Jacobian on a block of B images, G logits.

    explicit: per-image gradients, a tree like the parameters without the
      factored weights, each leaf (G, B, *leaf shape).
    inputs: {factored layer: (B, S, D)} its x_s.
    cotangents: {factored layer: (G, B, S, O)} its δ_gs.
    """

    explicit: dict
    inputs: dict
    cotangents: dict


def split_params(
    params: models.Params, names: Sequence[str]
) -> tuple[dict, dict]:
    """(rest, weights): params without the weights of the layers `names`,
    and {name: {'w': weight}} of those weights."""
    names = set(names)
    rest, weights = {}, {}
    for module, leaves in params.items():
        kept = {
            k: v
            for k, v in leaves.items()
            if not (module in names and k == "w")
        }
        if kept:
            rest[module] = kept
        if module in names:
            weights[module] = {"w": leaves["w"]}
    return rest, weights


def merge_params(*trees: dict) -> dict:
    """The union of {module: {name: leaf}} trees (split_params' inverse)."""
    merged = {}
    for tree in trees:
        for module, leaves in tree.items():
            merged.setdefault(module, {}).update(leaves)
    return merged


def _probing(probes: dict, inputs: dict) -> Callable:
    """An interceptor adding probes[name] to the output of module `name` and
    recording its input in inputs[name]."""

    def intercept(
        next_f: Callable,
        args: tuple,
        kwargs: dict,
        context: hk.MethodContext,
    ) -> Any:
        out = next_f(*args, **kwargs)
        name = getattr(context.module, "module_name", None)
        if context.method_name == "__call__" and name in probes:
            inputs[name] = _call_input(args, kwargs)
            out = out + probes[name]
        return out

    return intercept


def block_jacobian_fn(
    apply_fn: Callable, layers: Sequence[WeightLayer], factored: Sequence[str]
) -> Callable:
    """Compiled Jacobian of G logits on a block.

    Args:
      apply_fn: the model's apply(params, state, rng, images, is_training).
      layers: the weight layers to collect (Survey.layers).
      factored: the names of those kept factored; the others' gradients
        are formed explicitly.
    Returns:
      (params, net_state, images (B, ...), classes (G,) int) ->
      BlockJacobian, batch norm in eval mode. One forward and G backward
      passes per image.
    """
    layers = tuple(layers)
    factored = frozenset(factored)
    one_image = _one_image_fn(apply_fn, layers)

    @jax.jit
    def block(
        params: models.Params,
        net_state: models.State,
        images: jax.Array,
        classes: jax.Array,
    ) -> BlockJacobian:
        rest, weights = split_params(params, [layer.name for layer in layers])
        grads, windows, cotangents = jax.vmap(
            one_image, in_axes=(None, None, None, 0, None), out_axes=(1, 0, 1)
        )(rest, weights, net_state, images, classes)
        formed = {
            layer.name: {
                "w": _explicit_gradient(
                    windows[layer.name],
                    cotangents[layer.name],
                    weights[layer.name]["w"].shape,
                )
            }
            for layer in layers
            if layer.name not in factored
        }
        return BlockJacobian(
            merge_params(grads, formed),
            {name: windows[name] for name in factored},
            {name: cotangents[name] for name in factored},
        )

    return block


def _one_image_fn(
    apply_fn: Callable, layers: tuple[WeightLayer, ...]
) -> Callable:
    """(rest, weights, net_state, image, classes (G,)) -> (the gradients
    of the G logits of one image with respect to `rest`, {layer: its
    input windows (S, D)}, {layer: its cotangents (G, S, O)}), batch norm
    in eval mode; `weights` are the collected layers' parameters (their
    gradients come from the windows and cotangents)."""

    def one_image(
        rest: models.Params,
        weights: models.Params,
        net_state: models.State,
        image: jax.Array,
        classes: jax.Array,
    ) -> tuple[models.Params, dict[str, jax.Array], dict[str, jax.Array]]:
        probes = {
            layer.name: jnp.zeros(layer.output_shape, image.dtype)
            for layer in layers
        }

        def logits(
            rest: models.Params, probes: dict[str, jax.Array]
        ) -> tuple[jax.Array, dict[str, jax.Array]]:
            inputs = {}
            with hk.intercept_methods(_probing(probes, inputs)):
                out, _ = apply_fn(
                    merge_params(rest, weights),
                    net_state,
                    None,
                    image[None],
                    False,
                )
            return out[0, classes], inputs

        (grads, cotangents), inputs = jax.jacrev(
            logits, argnums=(0, 1), has_aux=True
        )(rest, probes)
        windows = {
            layer.name: layer.windows(inputs[layer.name]) for layer in layers
        }
        cotangents = {
            layer.name: cotangents[layer.name].reshape(
                len(classes), layer.positions, layer.out_features
            )
            for layer in layers
        }
        return grads, windows, cotangents

    return one_image


def _explicit_gradient(
    windows: jax.Array, cotangents: jax.Array, weight_shape: tuple[int, ...]
) -> jax.Array:
    """(B, S, D) windows and (G, B, S, O) cotangents -> (G, B,
    *weight_shape) per-image gradients Σ_s x_s ⊗ δ_gs."""
    gradient = jnp.einsum(
        "bsd,gbso->gbdo", windows, cotangents, precision=_HIGHEST
    )
    return gradient.reshape(*gradient.shape[:2], *weight_shape)


@jax.jit
def overlaps(j1: BlockJacobian, j2: BlockJacobian) -> dict:
    """{factored layer: (B1, B2, S, S)} ⟨x_is, x'_jt⟩ of two blocks, the
    part of their Gram that is the same for every logit."""
    return {
        name: jnp.einsum(
            "isd,jtd->ijst", inputs, j2.inputs[name], precision=_HIGHEST
        )
        for name, inputs in j1.inputs.items()
    }


@jax.jit
def gram(j1: BlockJacobian, j2: BlockJacobian, overlaps: dict) -> jax.Array:
    """(G, B1, B2): entry [g, i, j] = ∇θ f_g(x1_i) · ∇θ f_g(x2_j), at full
    float32 precision, given the blocks' `overlaps`."""
    kernel = sum(
        jnp.einsum(
            "gip,gjp->gij",
            a.reshape(*a.shape[:2], -1),
            b.reshape(*b.shape[:2], -1),
            precision=_HIGHEST,
        )
        for a, b in zip(
            jax.tree_util.tree_leaves(j1.explicit),
            jax.tree_util.tree_leaves(j2.explicit),
            strict=True,
        )
    )
    for name, overlap in overlaps.items():
        kernel = kernel + _factored_gram(
            overlap, j1.cotangents[name], j2.cotangents[name]
        )
    return kernel


def _factored_gram(
    overlap: jax.Array, cotangents1: jax.Array, cotangents2: jax.Array
) -> jax.Array:
    """(G, B1, B2) Σ_{s,t} ⟨x_is, x'_jt⟩⟨δ_gis, δ'_gjt⟩ of one layer.

    overlap (B1, B2, S, S), cotangents (G, B, S, O). One logit at a time,
    so the largest intermediate is another B1·B2·S² floats.
    """

    def one_logit(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
        d1, d2 = pair
        products = jnp.einsum("iso,jto->ijst", d1, d2, precision=_HIGHEST)
        return jnp.einsum(
            "ijst,ijst->ij", overlap, products, precision=_HIGHEST
        )

    return jax.lax.map(one_logit, (cotangents1, cotangents2))
