"""Haiku models of the paper and their (centered) linearizations.

Every model is a `hk.TransformedWithState` whose
`apply(params, state, rng, images, is_training) -> (logits, state)` takes
images (B, H, W, C) float32 in [0, 1] and returns logits (B, n_classes).
No model draws random numbers, so `rng` may be None.

The linearized network around θ0 is f_lin(x; θ) = f(x; θ0) + J_θ0(x)(θ − θ0);
its centered version drops the first term, f_c(x; θ) = J_θ0(x)(θ − θ0), and
is exactly zero at θ = θ0. Both come from one `jax.jvp`, which returns f and
the tangent term df together.
"""

import dataclasses
from collections.abc import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from utils import UserError

MODELS = ("resnet18", "mlp_skinny", "mlp_wide")
MLP_WIDTHS = {"mlp_skinny": 256, "mlp_wide": 2048}


class CifarResNet18(hk.nets.ResNet):
    """ResNet-18 v1 for small images: 3×3 stride-1 stem, no max-pool.

    Stages of 2 basic blocks with `width·(1, 2, 4, 8)` channels and strides
    (1, 2, 2, 2); batch norm with decay 0.9 and eps 1e-5; global average pool;
    a final linear layer whose weights start at zero (Haiku's default), so
    the kernel at initialisation is that of the last layer alone.
    """

    def __init__(self, n_classes: int, width: int = 64):
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

    def __call__(self, inputs, is_training, test_local_stats=False):
        out = self.initial_conv(inputs)
        out = self.initial_batchnorm(out, is_training, test_local_stats)
        out = jax.nn.relu(out)
        for block_group in self.block_groups:
            out = block_group(out, is_training, test_local_stats)
        out = jnp.mean(out, axis=(1, 2))
        return self.logits(out)


def _mlp_forward(hidden: int, n_classes: int):
    """Flatten, two ReLU layers of `hidden` units, linear logits."""

    def forward(images, is_training):
        del is_training  # no batch norm or dropout
        return hk.nets.MLP([hidden, hidden, n_classes], name="mlp")(
            hk.Flatten()(images)
        )

    return forward


def get_model(
    name: str, n_classes: int, width: int = 64
) -> hk.TransformedWithState:
    """Returns the Haiku model `name` (one of MODELS).

    `width` is the first ResNet stage's channel count (64 in the paper); the
    MLPs ignore it.
    """
    if name == "resnet18":

        def forward(images, is_training):
            return CifarResNet18(n_classes, width)(images, is_training)
    elif name in MLP_WIDTHS:
        forward = _mlp_forward(MLP_WIDTHS[name], n_classes)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {MODELS}")
    return hk.transform_with_state(forward)


def init_model(
    model: hk.TransformedWithState, seed: int, image_shape: tuple
) -> tuple:
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


def _unit_initial_variances(state):
    """`state` with each running variance's `average` set to ones."""
    return {
        name: (
            dict(ema, average=jnp.ones_like(ema["average"]))
            if name.endswith("var_ema")
            else ema
        )
        for name, ema in state.items()
    }


def count_params(params) -> int:
    """Number of scalars in a parameter tree."""
    return int(
        sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params))
    )


def tree_sub(a, b):
    """a − b, leaf by leaf."""
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def linearized_parts(
    apply_fn: Callable,
    params0,
    params,
    state,
    images,
    is_training: bool = False,
):
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

    def forward(p):
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
        apply_fn,
        params0,
        params,
        state,
        images,
        is_training: bool = False,
    ):
        """(logits (B, K), new_state) of the trainable `params`."""
        f, df, new_state = self.parts(
            apply_fn, params0, params, state, images, is_training
        )
        return self.combine(f, df), new_state

    def combine(self, f, df):
        """The logits these dynamics classify with: df if centered, else
        f + df; (B, K) NumPy or JAX arrays -> (B, K)."""
        return df if self.centering else f + df

    def parts(
        self,
        apply_fn,
        params0,
        params,
        state,
        images,
        is_training: bool = False,
    ):
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
class ModelSpec:
    """What a checkpoint's parameters belong to; stored in its `meta`."""

    model: str = "resnet18"
    width: int = 64
    dataset: str = "cifar10"
    n_classes: int = 10

    def build(self) -> hk.TransformedWithState:
        return get_model(self.model, self.n_classes, self.width)

    def as_meta(self) -> dict:
        return dataclasses.asdict(self)


def resolve_spec(
    meta: dict,
    n_classes_of: Callable[[str], int],
    *,
    model: str | None = None,
    width: int | None = None,
    dataset: str | None = None,
    source: str = "checkpoint",
) -> ModelSpec:
    """The model spec from a checkpoint's `meta` and the user's flags.

    Flags left as None take the checkpoint's values, or the paper's defaults
    when `meta` lacks them (checkpoints of the original code have no meta).
    A flag that contradicts `meta` raises UserError.

    Args:
      meta: the checkpoint's 'meta' dict ({} when absent).
      n_classes_of: maps a dataset name to its class count (data.n_classes).
      source: the checkpoint's path, for error messages.
    """
    defaults = ModelSpec()
    chosen = {}
    for key, flag in (
        ("model", model),
        ("width", width),
        ("dataset", dataset),
    ):
        recorded = meta.get(key)
        if flag is not None and recorded is not None and flag != recorded:
            raise UserError(
                f"--{key} {flag} contradicts {source}, which was trained with "
                f"{key} {recorded}: drop the flag or pick another checkpoint"
            )
        chosen[key] = next(
            v
            for v in (flag, recorded, getattr(defaults, key))
            if v is not None
        )
    n_classes = meta.get("n_classes") or n_classes_of(chosen["dataset"])
    return ModelSpec(
        chosen["model"],
        int(chosen["width"]),
        chosen["dataset"],
        int(n_classes),
    )


def check_params_fit(
    spec: ModelSpec,
    params,
    net_state,
    image_shape: tuple,
    source: str = "checkpoint",
) -> None:
    """Raises UserError unless `params`/`net_state` have the shapes of `spec`.

    `image_shape` is (H, W, C). Only shapes are compared, so this costs no
    compilation.
    """
    model = spec.build()
    dummy = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    want_params, want_state = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, True), dummy
    )
    shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
    if shapes(want_params) != shapes(params) or shapes(want_state) != shapes(
        net_state
    ):
        raise UserError(
            f"{source} does not hold a {spec.model} of width {spec.width} "
            f"with {spec.n_classes} classes for {spec.dataset} images: pass "
            "the --model/--width/--dataset it was trained with"
        )
