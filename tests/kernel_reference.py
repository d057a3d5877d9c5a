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


# One compiled Jacobian per model and parameter structure, shared by the
# tests of a session: (apply_fn, treedef, leaf shapes) -> jitted function.
_JACOBIANS = {}


def _jacobian_fn(apply_fn, tree):
    """jit of (flat θs (T, P), state, images (N, ...)) -> (T, N, K, P): each
    image's Jacobian of its K logits by jax.jacrev of the flat θ."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    key = (apply_fn, treedef, tuple((x.shape, x.dtype) for x in leaves))
    if key not in _JACOBIANS:
        unravel = ravel_pytree(tree)[1]

        def one_image(theta, state, image):  # (K, P)
            return jax.jacrev(
                lambda t: apply_fn(
                    unravel(t), state, None, image[None], False
                )[0][0]
            )(theta)

        each_image = jax.vmap(one_image, in_axes=(None, None, 0))
        _JACOBIANS[key] = jax.jit(
            jax.vmap(each_image, in_axes=(0, None, None))
        )
    return _JACOBIANS[key]


def reference_kernels(apply_fn, trees, state, images):
    """[(K, N, N) for each parameter tree in `trees`]: K_c = J_c J_cᵀ in
    float64, J_c (N, P) the rows of each image's Jacobian of logit c with
    respect to the flat θ by jax.jacrev, batch norm in eval mode (so the
    images do not interact). One compilation per model, parameter
    structure and image count, whatever the trees' values."""
    flats = jnp.stack([ravel_pytree(tree)[0] for tree in trees])
    jacobian = _jacobian_fn(apply_fn, trees[0])
    jacobians = np.asarray(
        jacobian(flats, state, jnp.asarray(images)), np.float64
    )
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
