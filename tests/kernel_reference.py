"""Shared by the kernel tests: small perturbed networks (two of them built
once per session), and independent reference per-class kernels J_c J_cᵀ
from `jax.jacrev` of the flattened parameters, in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import models


def perturb(params, seed, scale):
    """params + scale·N(0, 1), leaf by leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef,
        [
            p + scale * jax.random.normal(k, p.shape)
            for p, k in zip(leaves, keys, strict=True)
        ],
    )


def network(name, n_classes, image_shape, n_images, width=2):
    """(apply, params, lin_params, state, images (n_images, ...)): a
    non-zero last layer, lin_params ≠ params, running statistics from one
    training pass."""
    model = models.get_model(name, n_classes, width)
    params, state = models.init_model(model, 0, image_shape)
    params = perturb(params, 1, 0.1)
    lin_params = perturb(params, 2, 0.05)
    images = np.asarray(
        jax.random.uniform(jax.random.PRNGKey(3), (n_images, *image_shape))
    )
    _, state = model.apply(params, state, None, images + 0.5, True)
    return model.apply, params, lin_params, state, images


def reference_kernels(apply_fn, trees, state, images):
    """[(K, N, N) for each parameter tree in `trees`]: K_c = J_c J_cᵀ from
    the full Jacobian of the flat θ, batch norm in eval mode (one
    compilation for all trees)."""
    flats, unravel = zip(*map(ravel_pytree, trees), strict=True)

    @jax.jit
    @jax.vmap
    def jacobian(theta):  # (N, K, P)
        return jax.jacrev(
            lambda t: apply_fn(unravel[0](t), state, None, images, False)[0]
        )(theta)

    jacobians = np.asarray(jacobian(jnp.stack(flats)), np.float64)
    return [np.einsum("ikp,jkp->kij", j, j) for j in jacobians]


def relative_error(got, want):
    """‖got − want‖_F / ‖want‖_F."""
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


N_IMAGES = 7
N_CLASSES = 3


@functools.cache
def resnet():
    """network() of a ResNet-18 of width 2 on 7 images 16×16×3, 3 logits."""
    return network("resnet18", N_CLASSES, (16, 16, 3), N_IMAGES)


@functools.cache
def mlp():
    """network() of mlp_skinny on 7 images 6×6×1, 3 logits."""
    return network("mlp_skinny", N_CLASSES, (6, 6, 1), N_IMAGES)
