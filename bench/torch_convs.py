"""A convolution of JAX arrays computed by PyTorch (oneDNN on the CPU),
for bench/bench_convolutions.py's `--torch_convs` row: could the SGD
update reach PyTorch's speed by handing its convolutions to PyTorch's
kernels? Not for use in training: a `jax.pure_callback` per convolution
(the host round trip holds the GIL and copies each output back), reverse
mode only (a custom VJP: no JVP, no vmap).

`torch_conv(x, w, strides, padding)` is `lax.conv_general_dilated` on NHWC
images and an HWIO kernel with explicit (low, high) padding; its VJP is one
`aten.convolution_backward` call for the image and kernel cotangents
(the image cotangent skipped for images of at most 3 channels, the stem's,
which an update does not need). `torch_conv_forward(forward)` runs a Haiku
forward function with its plain Conv2D calls through it.
"""

import functools
import time
import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch.nn import functional

import models  # bench_convolutions puts the measured code on sys.path

# XLA hands a callback read-only arrays; PyTorch only reads them here.
warnings.filterwarnings(
    "ignore", message="The given NumPy array is not writable"
)

# Images with at most this many channels are the network's input: their
# cotangent is not computed (an SGD update differentiates the parameters).
INPUT_CHANNELS = 3


def _nchw(a: np.ndarray) -> torch.Tensor:
    """An NHWC array as an NCHW tensor in channels-last memory (no copy)."""
    return torch.from_numpy(np.asarray(a)).permute(0, 3, 1, 2)


def _oihw(w: np.ndarray) -> torch.Tensor:
    return (
        torch.from_numpy(np.asarray(w))
        .permute(3, 2, 0, 1)
        .contiguous(memory_format=torch.channels_last)
    )


def _padded(x: torch.Tensor, padding) -> tuple[torch.Tensor, list]:
    """(x padded where PyTorch's symmetric padding cannot say it, the
    padding left to the convolution)."""
    (top, bottom), (left, right) = padding
    if top == bottom and left == right:
        return x, [top, left]
    return functional.pad(x, (left, right, top, bottom)), [0, 0]


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).contiguous().numpy()


# Seconds spent in the host callbacks since the last reset (a list, so the
# bench can reset it): the callbacks' share of a step.
HOST_SECONDS = [0.0]


def _timed(host):
    @functools.wraps(host)
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return host(*args, **kwargs)
        finally:
            HOST_SECONDS[0] += time.perf_counter() - started

    return run


@_timed
def _forward_host(x, w, strides, padding):
    with torch.no_grad():
        images, pads = _padded(_nchw(x), padding)
        return _nhwc(functional.conv2d(images, _oihw(w), None, strides, pads))


@_timed
def _backward_host(x, w, g, strides, padding, need_images):
    with torch.no_grad():
        images, pads = _padded(_nchw(x), padding)
        d_images, d_kernel, _ = torch.ops.aten.convolution_backward(
            _nchw(g),
            images,
            _oihw(w),
            None,
            list(strides),
            pads,
            [1, 1],
            False,
            [0, 0],
            1,
            [need_images, True, False],
        )
        d_kernel = d_kernel.permute(2, 3, 1, 0).contiguous().numpy()
        if not need_images:
            return (d_kernel,)
        if images.shape[2:] != x.shape[1:3]:  # padded by _padded
            (top, bottom), (left, right) = padding
            d_images = d_images[
                :,
                :,
                top : d_images.shape[2] - bottom,
                left : d_images.shape[3] - right,
            ]
        return _nhwc(d_images), d_kernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def torch_conv(x, w, strides, padding):
    out = jax.eval_shape(
        functools.partial(
            jax.lax.conv_general_dilated,
            window_strides=strides,
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
        x,
        w,
    )
    host = functools.partial(_forward_host, strides=strides, padding=padding)
    return jax.pure_callback(host, out, x, w)


def _torch_conv_fwd(x, w, strides, padding):
    return torch_conv(x, w, strides, padding), (x, w)


def _torch_conv_bwd(strides, padding, residuals, g):
    x, w = residuals
    need_images = x.shape[-1] > INPUT_CHANNELS
    shapes = (jax.ShapeDtypeStruct(w.shape, w.dtype),)
    if need_images:
        shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), *shapes)
    host = functools.partial(
        _backward_host,
        strides=strides,
        padding=padding,
        need_images=need_images,
    )
    outs = jax.pure_callback(host, shapes, x, w, g)
    return (outs[0] if need_images else jnp.zeros_like(x)), outs[-1]


torch_conv.defvjp(_torch_conv_fwd, _torch_conv_bwd)


def _interceptor(next_fun, args, kwargs, context):
    """Plain hk.Conv2D calls (models.plain_conv2d_call) through torch_conv
    with the module's own kernel."""
    call = models.plain_conv2d_call(args, kwargs, context)
    if call is None:
        return next_fun(*args, **kwargs)
    return torch_conv(*call)


def torch_conv_forward(forward):
    """Haiku `forward(images, is_training)` with its convolutions through
    torch_conv in training mode (the SGD update) and untouched otherwise."""

    def run(images, is_training):
        if is_training is True:
            with hk.intercept_methods(_interceptor):
                return forward(images, is_training)
        return forward(images, is_training)

    return run
