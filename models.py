"""Haiku models of the paper, their (centered) linearizations, and the
bundle of a network with its parameters.

Every model is a `hk.TransformedWithState` whose
`apply(params, state, rng, images, is_training) -> (logits, state)` takes
images (B, H, W, C) float32 in [0, 1] and returns logits (B, n_classes).
No model draws random numbers, so `rng` may be None. Models are registered
in `MODELS`; add one there and nowhere else.

The linearized network around θ0 is f_lin(x; θ) = f(x; θ0) + J_θ0(x)(θ − θ0);
its centered version drops the first term, f_c(x; θ) = J_θ0(x)(θ − θ0), and
is exactly zero at θ = θ0. Both come from one `jax.jvp`, which returns f and
the tangent term df together.
"""

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero, linear_call

import data
import utils
from store import checkpoints
from utils import UserError

DEFAULT_WIDTH = 64  # the paper's ResNet-18

# A Haiku parameter tree: {module name: {parameter name: array}}.
Params = Any
# A Haiku state tree (batch-norm running statistics), shaped like Params.
State = Any
# A model's `apply(params, state, rng, images, is_training)` -> (logits
# (B, K), new state).
ApplyFn = Callable[..., tuple[jax.Array, State]]


# Convolutions whose input gradients XLA's CPU backend runs fast in loops.
#
# JAX differentiates a convolution (NHWC images, HWIO kernel) with respect
# to its input as a convolution whose kernel has its feature dimensions
# swapped ("01oi"). XLA's CPU compiler rewrites such convolutions into the
# canonical layout that its Eigen kernels take only in a program's entry
# computation; inside a loop body (`fori_loop`, `while_loop`, `lax.map`)
# they stay as they are and run as naive loops, five to eight times slower.
# An attack's steps are such a loop: a 5-step PGD of a width-16 ResNet-18
# on 128 images takes 7.0 s in a fori_loop and 1.2 s unrolled.
#
# `canonical_conv` is the same convolution with derivative rules that spell
# the input gradient in the canonical layout (the kernel flipped and
# transposed explicitly): a custom JVP whose tangent in the input is a
# `linear_call` with that transpose. The numbers are the same convolutions,
# summed in another order (float32 rounding apart). linear_call has no
# batching rule, so these rules serve only code that does not vmap the
# model: the attacks, which turn them on with `canonical_input_gradients`.
_NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
_CANONICAL_CONVS = contextvars.ContextVar("canonical_convs", default=False)

# (low, high) padding of each spatial dimension.
Padding = tuple[tuple[int, int], ...]


def _plain_conv(
    x: jax.Array,
    w: jax.Array,
    strides: tuple[int, ...],
    padding: Padding,
    lhs_dilation: tuple[int, ...] | None = None,
) -> jax.Array:
    """(B, H, W, C) images, (kh, kw, C, O) kernel -> (B, H', W', O)."""
    return jax.lax.conv_general_dilated(
        x,
        w,
        strides,
        padding,
        lhs_dilation=lhs_dilation,
        dimension_numbers=_NHWC_HWIO,
    )


def input_gradient_padding(
    size: int, kernel: int, stride: int, pad: tuple[int, int]
) -> tuple[int, int]:
    """The (low, high) padding of the convolution that maps an output
    cotangent (dilated by `stride`) back to an input of `size` along one
    spatial dimension, for a forward convolution of `kernel` taps, `stride`
    and padding `pad`; high may be negative (input rows no window saw)."""
    out = (size + pad[0] + pad[1] - kernel) // stride + 1
    low = kernel - 1 - pad[0]
    high = size + kernel - 1 - ((out - 1) * stride + 1) - low
    return low, high


def conv_input_gradient(
    cotangent: jax.Array,
    w: jax.Array,
    input_hw: tuple[int, int],
    strides: tuple[int, ...],
    padding: Padding,
) -> jax.Array:
    """The gradient, with respect to its (B, H, W, C) input of spatial size
    `input_hw`, of `_plain_conv(x, w, strides, padding)` for the (B, H', W',
    O) output `cotangent`: one canonical-layout convolution of the dilated
    cotangent with the flipped, transposed (kh, kw, O, C) kernel."""
    flipped = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    pads = tuple(
        input_gradient_padding(input_hw[i], w.shape[i], strides[i], padding[i])
        for i in range(2)
    )
    return _plain_conv(cotangent, flipped, (1, 1), pads, tuple(strides))


def _conv_tangent(
    strides: tuple[int, ...],
    padding: Padding,
    x: jax.Array,
    w: jax.Array,
    x_dot: jax.Array | SymbolicZero,
    w_dot: jax.Array | SymbolicZero,
) -> jax.Array:
    """The tangent of the convolution at (x, w) along (x_dot, w_dot), either
    of which may be a symbolic zero."""
    terms = []
    if not isinstance(x_dot, SymbolicZero):
        terms.append(_conv_in_input(x_dot, w, strides, padding))
    if not isinstance(w_dot, SymbolicZero):
        terms.append(canonical_conv(x, w_dot, strides, padding))
    if not terms:
        return jnp.zeros(
            jax.eval_shape(lambda: _plain_conv(x, w, strides, padding)).shape,
            x.dtype,
        )
    return sum(terms[1:], terms[0])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def canonical_conv(
    x: jax.Array, w: jax.Array, strides: tuple[int, ...], padding: Padding
) -> jax.Array:
    """`_plain_conv(x, w, strides, padding)` whose input gradient is a
    canonical-layout convolution (see the notes above)."""
    return _plain_conv(x, w, strides, padding)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_in_input(
    x: jax.Array, w: jax.Array, strides: tuple[int, ...], padding: Padding
) -> jax.Array:
    """The same convolution as a linear function of `x` whose transpose is
    `conv_input_gradient` (a `linear_call`). Its own JVP rule is there for
    forward-mode differentiation on top (a linear_call has none): the
    gradient with respect to the images of a linearized network."""

    def forward(kernel: jax.Array, images: jax.Array) -> jax.Array:
        return _plain_conv(images, kernel, strides, padding)

    def transpose(kernel: jax.Array, cotangent: jax.Array) -> jax.Array:
        return conv_input_gradient(
            cotangent, kernel, x.shape[1:3], strides, padding
        )

    return linear_call(forward, transpose, w, x)


def _canonical_conv_jvp(
    strides: tuple[int, ...],
    padding: Padding,
    primals: tuple[jax.Array, jax.Array],
    tangents: tuple[Any, Any],
) -> tuple[jax.Array, jax.Array]:
    x, w = primals
    out = canonical_conv(x, w, strides, padding)
    return out, _conv_tangent(strides, padding, x, w, *tangents)


def _conv_in_input_jvp(
    strides: tuple[int, ...],
    padding: Padding,
    primals: tuple[jax.Array, jax.Array],
    tangents: tuple[Any, Any],
) -> tuple[jax.Array, jax.Array]:
    x, w = primals
    out = _conv_in_input(x, w, strides, padding)
    return out, _conv_tangent(strides, padding, x, w, *tangents)


canonical_conv.defjvp(_canonical_conv_jvp, symbolic_zeros=True)
_conv_in_input.defjvp(_conv_in_input_jvp, symbolic_zeros=True)


def _is_plain_conv2d(module: hk.Module, inputs: Any) -> bool:
    """Whether `module` is an hk.Conv2D that canonical_conv can stand in
    for: batched NHWC inputs, no bias, mask, groups or dilation."""
    return (
        type(module) is hk.Conv2D
        and getattr(inputs, "ndim", None) == 4
        and module.channel_index == -1
        and not module.with_bias
        and module.mask is None
        and module.feature_group_count == 1
        and all(d == 1 for d in module.lhs_dilation)
        and all(d == 1 for d in module.kernel_dilation)
    )


def plain_conv2d_call(args: tuple, kwargs: dict, context: Any) -> tuple | None:
    """For a Haiku method interceptor: (images, kernel, strides, padding)
    of a plain Conv2D call (`_is_plain_conv2d`, outside `init`, which
    creates the parameters Haiku's way), the kernel the module's own
    parameter `w` and the padding explicit ((low, high) per spatial
    dimension); None for any other call."""
    inputs = args[0] if args else None
    if (
        context.method_name != "__call__"
        or kwargs
        or len(args) != 1
        or hk.running_init()
        or not _is_plain_conv2d(context.module, inputs)
    ):
        return None
    module = context.module
    w_shape = (*module.kernel_shape, inputs.shape[-1], module.output_channels)
    w = hk.get_parameter("w", w_shape, inputs.dtype)
    padding = module.padding
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(
            inputs.shape[1:3], module.kernel_shape, module.stride, padding
        )
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return inputs, w, tuple(module.stride), padding


def _conv_interceptor(
    next_fun: Callable, args: tuple, kwargs: dict, context: Any
) -> Any:
    """Haiku method interceptor: plain Conv2D calls through canonical_conv
    (plain_conv2d_call); everything else untouched."""
    call = plain_conv2d_call(args, kwargs, context)
    if call is None:
        return next_fun(*args, **kwargs)
    return canonical_conv(*call)


@contextlib.contextmanager
def canonical_input_gradients() -> Iterator[None]:
    """Within this context, models traced on the CPU run their
    convolutions through `canonical_conv`. Differentiating them with
    respect to their images (and with jvp) is supported; vmapping them is
    not. Elsewhere (and on GPUs) it changes nothing."""
    token = _CANONICAL_CONVS.set(jax.default_backend() == "cpu")
    try:
        yield
    finally:
        _CANONICAL_CONVS.reset(token)


def with_canonical_input_gradients(fn: Callable) -> Callable:
    """`fn` run within `canonical_input_gradients` (for the logits
    function an attack differentiates in its loop)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with canonical_input_gradients():
            return fn(*args, **kwargs)

    return wrapped


# Batch norm in training mode with a shorter derivative, on the CPU.
#
# Haiku's batch norm takes the batch's mean μ = mean(x) and variance
# σ² = mean(x²) − μ² over all axes but the channels'. JAX differentiates
# that formula as written, and its transpose costs XLA's CPU backend more
# passes over the activations (reductions lowered as reduce-window trees,
# recomputed elementwise chains) than the textbook derivative.
# `batch_norm_train` computes the same outputs with a custom JVP in the
# normalised input x̂ = (x − μ)·r, r = rsqrt(σ² + eps), inv = scale·r:
#
#   ẏ = inv·ẋ + (offset' − inv·mean(ẋ)) + x̂·(scale' − inv·mean(x̂·ẋ))
#
# (μ' = mean(ẋ), σ²' = 2·mean(x̂·ẋ)/r): two reductions forward, and two in
# its transpose (Σȳ and Σx̂·ȳ, each shared by a parameter's gradient and
# the input's). The numbers differ from Haiku's by float32 rounding. It is
# a custom JVP, not a VJP, so forward mode (phase 2's linearization in
# training mode) and vmap keep working. A fwd+bwd pass of a width-16
# ResNet-18 in training mode runs about 5 % faster with it on the CPU
# (BENCHMARKS.md); on GPUs nothing changes.


def _batch_statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Haiku's (mean, variance) of `x` (..., C) over all axes but the
    last, each shaped (1, ..., 1, C)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes, keepdims=True)
    mean_of_squares = jnp.mean(jnp.square(x), axes, keepdims=True)
    return mean, mean_of_squares - jnp.square(mean)


def _inverse_std(var: jax.Array, eps: float) -> jax.Array:
    return jax.lax.rsqrt(var + jax.lax.convert_element_type(eps, var.dtype))


def _normalised(
    x: jax.Array, scale: jax.Array, offset: jax.Array, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(x − μ)·(scale·r) + offset, μ, σ² and r = rsqrt(σ² + eps): the
    primal of batch_norm_train, which its JVP rule computes too."""
    mean, var = _batch_statistics(x)
    rstd = _inverse_std(var, eps)
    return (x - mean) * (scale * rstd) + offset, mean, var, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, offset: jax.Array, eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """hk.BatchNorm's training-mode output (x − μ)·scale·r + offset of
    `x` (..., C), with `scale` and `offset` (1, ..., 1, C), and the batch's
    (mean, variance), (1, ..., 1, C), for the running averages; derivative
    rules as in the notes above."""
    out, mean, var, _ = _normalised(x, scale, offset, eps)
    return out, mean, var


def _batch_norm_train_jvp(
    eps: float,
    primals: tuple[jax.Array, jax.Array, jax.Array],
    tangents: tuple[jax.Array, jax.Array, jax.Array],
) -> tuple[tuple, tuple]:
    x, scale, offset = primals
    x_dot, scale_dot, offset_dot = tangents
    out, mean, var, rstd = _normalised(x, scale, offset, eps)
    inv = scale * rstd
    x_hat = (x - mean) * rstd
    axes = tuple(range(x.ndim - 1))
    mean_dot = jnp.mean(x_dot, axes, keepdims=True)
    moment_dot = jnp.mean(x_hat * x_dot, axes, keepdims=True)
    out_dot = (
        inv * x_dot
        + (offset_dot - inv * mean_dot)
        + x_hat * (scale_dot - inv * moment_dot)
    )
    return (out, mean, var), (out_dot, mean_dot, 2 * moment_dot / rstd)


batch_norm_train.defjvp(_batch_norm_train_jvp)


def _is_plain_batch_norm(module: hk.Module, args: tuple) -> bool:
    """Whether `module(*args)` is an hk.BatchNorm call in training mode
    that batch_norm_train can stand in for: its own scale and offset,
    channels last, statistics over all other axes of this device's batch."""
    inputs = args[0] if args else None
    return (
        type(module) is hk.BatchNorm
        and 2 <= len(args) <= 3
        and args[1] is True
        and (len(args) < 3 or args[2] is False)  # test_local_stats
        and getattr(inputs, "ndim", 0) >= 2
        and module.create_scale
        and module.create_offset
        and module.channel_index in (-1, inputs.ndim - 1)
        and module.axis is None
        and module.cross_replica_axis is None
    )


def _batch_norm_interceptor(
    next_fun: Callable, args: tuple, kwargs: dict, context: Any
) -> Any:
    """Haiku method interceptor: BatchNorm calls in training mode (outside
    `init`) through batch_norm_train, with the module's own parameters and
    running averages; everything else untouched."""
    if (
        context.method_name != "__call__"
        or kwargs
        or hk.running_init()
        or not _is_plain_batch_norm(context.module, args)
    ):
        return next_fun(*args, **kwargs)
    module, inputs = context.module, args[0]
    shape = (1,) * (inputs.ndim - 1) + inputs.shape[-1:]
    scale = hk.get_parameter("scale", shape, inputs.dtype, module.scale_init)
    offset = hk.get_parameter(
        "offset", shape, inputs.dtype, module.offset_init
    )
    out, mean, var = batch_norm_train(inputs, scale, offset, module.eps)
    module.mean_ema(mean)
    module.var_ema(var)
    return out


def shorter_batch_norm_derivatives() -> bool:
    """Whether models traced now run batch norm in training mode through
    `batch_norm_train`: on the CPU, where it was measured to help."""
    return jax.default_backend() == "cpu"


def _intercepted(forward: Callable) -> Callable:
    """`forward` with its convolutions through canonical_conv while
    `canonical_input_gradients` is on, and its batch norms in training
    mode through batch_norm_train on the CPU."""

    @functools.wraps(forward)
    def run(images: jax.Array, is_training: bool) -> jax.Array:
        with contextlib.ExitStack() as stack:
            if _CANONICAL_CONVS.get():
                stack.enter_context(hk.intercept_methods(_conv_interceptor))
            if is_training is True and shorter_batch_norm_derivatives():
                stack.enter_context(
                    hk.intercept_methods(_batch_norm_interceptor)
                )
            return forward(images, is_training)

    return run


class CifarResNet18(hk.nets.ResNet):
    """ResNet-18 v1 for small images: 3×3 stride-1 stem, no max-pool.

    Stages of 2 basic blocks with `width·(1, 2, 4, 8)` channels and strides
    (1, 2, 2, 2); batch norm with decay 0.9 and eps 1e-5; global average pool;
    a final linear layer whose weights start at zero (Haiku's default), so
    the kernel at initialisation is that of the last layer alone.
    """

    def __init__(self, n_classes: int, width: int = DEFAULT_WIDTH) -> None:
        config = dict(hk.nets.ResNet.CONFIGS[18])
        config["channels_per_group"] = tuple(width * m for m in (1, 2, 4, 8))
        super().__init__(
            num_classes=n_classes,
            initial_conv_config=dict(
                output_channels=width, kernel_shape=3, stride=1
            ),
            strides=(1, 2, 2, 2),
            name="res_net18",
            **config,
        )

    def __call__(
        self,
        inputs: jax.Array,
        is_training: bool,
        test_local_stats: bool = False,
    ) -> jax.Array:
        out = self.initial_conv(inputs)
        out = self.initial_batchnorm(out, is_training, test_local_stats)
        out = jax.nn.relu(out)
        for block_group in self.block_groups:
            out = block_group(out, is_training, test_local_stats)
        out = jnp.mean(out, axis=(1, 2))
        return self.logits(out)


def _mlp(hidden: int) -> Callable:
    """Builder of flatten, two ReLU layers of `hidden` units, logits.

    The layers are top-level `hk.Linear`s named `linear`, `linear_1` and
    `linear_2`, the names of the original code's checkpoints.
    """

    def build(n_classes: int, width: int | None) -> Callable:
        del width  # an MLP has no width flag

        def forward(images: jax.Array, is_training: bool) -> jax.Array:
            del is_training  # no batch norm or dropout
            out = hk.Flatten()(images)
            out = jax.nn.relu(hk.Linear(hidden)(out))
            out = jax.nn.relu(hk.Linear(hidden)(out))
            return hk.Linear(n_classes)(out)

        return forward

    return build


def _resnet18(n_classes: int, width: int | None) -> Callable:
    def forward(images: jax.Array, is_training: bool) -> jax.Array:
        return CifarResNet18(n_classes, width)(images, is_training)

    return forward


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A model of the registry.

    forward: (n_classes, width) -> the Haiku forward function
      `(images, is_training) -> logits`.
    has_width: whether `--width` means something for it.
    description: one line for docs/ and --help.
    """

    forward: Callable[[int, int | None], Callable]
    has_width: bool
    description: str


MODELS: dict[str, ModelEntry] = {
    "resnet18": ModelEntry(
        _resnet18, True, "ResNet-18 v1, 3×3 stem, no max-pool (the paper's)"
    ),
    "mlp_skinny": ModelEntry(_mlp(256), False, "flatten, 256, 256, logits"),
    "mlp_wide": ModelEntry(_mlp(2048), False, "flatten, 2048, 2048, logits"),
}


def get_model(
    name: str, n_classes: int, width: int | None = DEFAULT_WIDTH
) -> hk.TransformedWithState:
    """Returns the Haiku model `name` (a key of MODELS).

    `width` is the first ResNet stage's channel count (64 in the paper); the
    MLPs ignore it.
    """
    return hk.transform_with_state(forward_function(name, n_classes, width))


def forward_function(
    name: str, n_classes: int, width: int | None = DEFAULT_WIDTH
) -> Callable:
    """The Haiku forward function `(images, is_training) -> logits` of
    model `name` that get_model transforms (its convolutions and batch
    norms wired as `_intercepted` says), for code that wraps it further."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list(MODELS)}")
    return _intercepted(MODELS[name].forward(n_classes, width))


def init_model(
    model: hk.TransformedWithState, seed: int, image_shape: tuple
) -> tuple[Params, State]:
    """Initial (params, state) for images of `image_shape` (H, W, C).

    Haiku starts every batch-norm running average at zero, so in eval mode an
    untrained network divides by sqrt(0 + eps) in every layer and overflows.
    The running variance's `average` (read only in eval mode; the first
    training step overwrites it) starts at one instead, so θ(0) can be
    evaluated and its kernel computed. Training is unchanged.
    """
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params, state = model.init(
        jax.random.PRNGKey(seed), dummy, is_training=True
    )
    return params, _unit_initial_variances(state)


def _unit_initial_variances(state: State) -> State:
    """`state` with each running variance's `average` set to ones."""
    return {
        name: (
            dict(ema, average=jnp.ones_like(ema["average"]))
            if name.endswith("var_ema")
            else ema
        )
        for name, ema in state.items()
    }


def count_params(params: Params) -> int:
    """Number of scalars in a parameter tree."""
    return int(
        sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    )


def tree_sub(a: utils.PyTree, b: utils.PyTree) -> utils.PyTree:
    """a − b, leaf by leaf."""
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def linearized_parts(
    apply_fn: Callable,
    params0: Params,
    params: Params,
    state: State,
    images: jax.Array,
    is_training: bool = False,
) -> tuple[jax.Array, jax.Array, State]:
    """The two terms of the linearization around `params0`, and the state.

    Args:
      apply_fn: the model's `apply(params, state, rng, images, is_training)`.
      params0: θ0, the expansion point (the network's `params`).
      params: θ, the trainable copy (`lin_params`).
      state: batch-norm state; in eval mode it is used, not changed.
      images: (B, H, W, C) float32.
    Returns:
      f: (B, K) logits f(x; θ0).
      df: (B, K) the tangent term J_θ0(x)(θ − θ0).
      new_state: the state after the forward pass at θ0 (changed only when
        `is_training`).
    """

    def forward(p: Params) -> tuple[jax.Array, State]:
        return apply_fn(p, state, None, images, is_training)

    f, df, new_state = jax.jvp(
        forward, (params0,), (tree_sub(params, params0),), has_aux=True
    )
    return f, df, new_state


@dataclasses.dataclass(frozen=True)
class Dynamics:
    """How the trainable parameters map to logits.

    linear: the network linearized around `params0` (the paper's phase 2)
      instead of the network itself.
    centering: subtract f(x; θ0), so the logits start at exactly zero. For a
      linearized network this is the centered linearization J(θ − θ0); for
      the network itself it is f(x; θ) − f(x; θ0).
    """

    linear: bool = False
    centering: bool = False

    def logits(
        self,
        apply_fn: ApplyFn,
        params0: Params,
        params: Params,
        state: State,
        images: jax.Array,
        is_training: bool = False,
    ) -> tuple[jax.Array, State]:
        """(logits (B, K), new_state) of the trainable `params`."""
        f, df, new_state = self.parts(
            apply_fn, params0, params, state, images, is_training
        )
        return self.combine(f, df), new_state

    def combine(
        self, f: np.ndarray | jax.Array, df: np.ndarray | jax.Array
    ) -> np.ndarray | jax.Array:
        """The logits these dynamics classify with: df if centered, else
        f + df; (B, K) NumPy or JAX arrays -> (B, K)."""
        return df if self.centering else f + df

    def parts(
        self,
        apply_fn: ApplyFn,
        params0: Params,
        params: Params,
        state: State,
        images: jax.Array,
        is_training: bool = False,
    ) -> tuple[jax.Array, jax.Array, State]:
        """(f, df, new_state) where f + df are the uncentered logits.

        Linear: f = f(x; θ0), df = J_θ0(x)(θ − θ0). Standard and centered:
        f = f(x; θ0), df = f(x; θ) − f(x; θ0). Standard: f = f(x; θ), df = 0.
        """
        if self.linear:
            return linearized_parts(
                apply_fn, params0, params, state, images, is_training
            )
        logits, new_state = apply_fn(params, state, None, images, is_training)
        if not self.centering:
            return logits, jnp.zeros_like(logits), new_state
        # No stop_gradient on f0: it depends on params0 alone, and PGD
        # needs its gradient with respect to the images.
        f0, _ = apply_fn(params0, state, None, images, is_training)
        return f0, logits - f0, new_state


STANDARD = Dynamics(linear=False, centering=False)


@dataclasses.dataclass(frozen=True)
class Network:
    """A network with its parameters: what training, evaluation and the
    scripts pass around.

    Its logits are those of `dynamics` at `params` around `params0`:
    the network itself at `params` (standard dynamics; `params0` unused),
    f(x; params) − f(x; params0) (standard, centered), or the (centered)
    linearization around `params0` at `params`. A pytree whose leaves are
    the parameters and the state, so a jitted function can take it.

    apply_fn: the Haiku model's `apply`.
    dynamics: a Dynamics.
    params0: θ0, the expansion point (θ(t) in phase 2).
    params: θ, the parameters the dynamics evaluate.
    state: batch-norm state.
    """

    apply_fn: Callable
    dynamics: Dynamics
    params0: Params
    params: Params
    state: State

    def logits(
        self, images: jax.Array, is_training: bool = False
    ) -> tuple[jax.Array, State]:
        """(logits (B, K), new batch-norm state) of images (B, H, W, C)."""
        f, df, new_state = self.parts(images, is_training)
        return self.dynamics.combine(f, df), new_state

    def parts(
        self, images: jax.Array, is_training: bool = False
    ) -> tuple[jax.Array, jax.Array, State]:
        """(f, df, new state): the logits' two terms (see Dynamics.parts)."""
        return self.dynamics.parts(
            self.apply_fn,
            self.params0,
            self.params,
            self.state,
            images,
            is_training,
        )


jax.tree_util.register_dataclass(
    Network,
    data_fields=["params0", "params", "state"],
    meta_fields=["apply_fn", "dynamics"],
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint's parameters belong to; stored in its `meta`.

    width is None for models without a width (the MLPs).
    """

    model: str = "resnet18"
    width: int | None = DEFAULT_WIDTH
    dataset: str = "cifar10"
    n_classes: int = 10

    def build(self) -> hk.TransformedWithState:
        return get_model(self.model, self.n_classes, self.width)

    def as_meta(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """E.g. 'resnet18 of width 64 with 10 classes for cifar10 images'."""
        width = f" of width {self.width}" if self.width is not None else ""
        return (
            f"{self.model}{width} with {self.n_classes} classes for "
            f"{self.dataset} images"
        )


def _recorded(
    meta: dict, key: str, valid: Callable, expected: str, source: str
) -> Any:
    """meta[key] if valid (None when absent); UserError naming `source`."""
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if not valid(value):
        raise UserError(
            f"cannot use {source}: its meta records {key} {value!r}, which "
            f"is not {expected}; the file is damaged or was not written by "
            "this code"
        )
    return value


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def resolve_spec(
    meta: dict,
    *,
    model: str | None = None,
    width: int | None = None,
    dataset: str | None = None,
    source: str = "checkpoint",
) -> ModelSpec:
    """The model spec from a checkpoint's `meta` and the user's flags.

    Flags left as None take the checkpoint's values, or the paper's defaults
    when `meta` lacks them (checkpoints of the original code have no meta).
    `meta` is checked like any input.

    Args:
      meta: the checkpoint's 'meta' dict ({} when absent).
      source: the checkpoint's path, for error messages.
    Raises:
      UserError: `meta` records an unknown model or dataset or a width or
        class count that is not a positive integer; a flag contradicts
        `meta`; --width is given for a model without one.
    """
    recorded = {
        "model": _recorded(
            meta,
            "model",
            lambda v: v in MODELS,
            f"one of {list(MODELS)}",
            source,
        ),
        "dataset": _recorded(
            meta,
            "dataset",
            lambda v: v in data.DATASETS,
            f"one of {sorted(data.DATASETS)}",
            source,
        ),
        "width": _recorded(
            meta, "width", _positive_int, "a positive integer", source
        ),
    }
    n_classes = _recorded(
        meta, "n_classes", _positive_int, "a positive integer", source
    )
    chosen = {}
    for key, flag in (("model", model), ("dataset", dataset)):
        if flag is not None and recorded[key] not in (None, flag):
            raise UserError(
                f"--{key} {flag} contradicts {source}, which was trained with "
                f"{key} {recorded[key]}: drop the flag or pick another "
                "checkpoint"
            )
        chosen[key] = flag or recorded[key] or getattr(ModelSpec, key)
    if not MODELS[chosen["model"]].has_width:
        if width is not None:
            raise UserError(
                f"--width means nothing for {chosen['model']}: drop it"
            )
        chosen_width = None  # files of earlier versions record 64 here
    else:
        if width is not None and recorded["width"] not in (None, width):
            raise UserError(
                f"--width {width} contradicts {source}, which was trained "
                f"with width {recorded['width']}: drop the flag or pick "
                "another checkpoint"
            )
        chosen_width = width or recorded["width"] or DEFAULT_WIDTH
    return ModelSpec(
        chosen["model"],
        chosen_width,
        chosen["dataset"],
        n_classes or data.n_classes(chosen["dataset"]),
    )


# The MLP layer names of earlier versions of this code (hk.nets.MLP) and
# the original code's names, which the MLPs use now.
_LEGACY_MLP_NAMES = {
    "mlp/~/linear_0": "linear",
    "mlp/~/linear_1": "linear_1",
    "mlp/~/linear_2": "linear_2",
}


def adapt_params(spec: ModelSpec, params: dict) -> dict:
    """`params` with the MLP layer names of earlier versions of this code
    renamed to the original's (`linear`, `linear_1`, `linear_2`); other
    trees unchanged."""
    if MODELS[spec.model].has_width or not set(params) <= set(
        _LEGACY_MLP_NAMES
    ):
        return params
    return {_LEGACY_MLP_NAMES[name]: value for name, value in params.items()}


def check_params_fit(
    spec: ModelSpec,
    params: Params,
    net_state: State,
    source: str = "checkpoint",
) -> None:
    """Raises UserError unless `params`/`net_state` have the shapes of `spec`
    for images of its dataset. Only shapes are compared, so this costs no
    compilation."""
    model = spec.build()
    image_shape = data.get_dataset(spec.dataset).image_shape
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    want_params, want_state = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, True), dummy
    )
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
    if shapes(want_params) != shapes(params):
        names = sorted(params) if isinstance(params, dict) else []
        raise UserError(
            f"{source} does not hold a {spec.describe()} (its layers: "
            f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
            "pass the --model/--width/--dataset it was trained with"
        )
    if shapes(want_state) != shapes(net_state):
        raise UserError(
            f"the net_state of {source} does not fit a {spec.describe()}: "
            "pass the --model/--width/--dataset it was trained with"
        )


def load_with_spec(
    path: str,
    *,
    model: str | None = None,
    width: int | None = None,
    dataset: str | None = None,
) -> tuple[dict, ModelSpec]:
    """A checkpoint and the spec of its network, checked against each other.

    Loads `path` safely (checkpoints.load_checkpoint), resolves the spec
    from its
    meta and the flags (resolve_spec), renames the MLP layers of earlier
    versions (adapt_params), and checks that params and lin_params fit.

    Returns:
      ({'params', 'lin_params', 'net_state', 'meta'}, ModelSpec).
    Raises:
      UserError: anything wrong with the file, its meta or the flags.
    """
    checkpoint = checkpoints.load_checkpoint(path)
    spec = resolve_spec(
        checkpoint["meta"],
        model=model,
        width=width,
        dataset=dataset,
        source=path,
    )
    for key in ("params", "lin_params"):
        checkpoint[key] = adapt_params(spec, checkpoint[key])
        check_params_fit(
            spec, checkpoint[key], checkpoint["net_state"], f"{path} ({key})"
        )
    return checkpoint, spec
