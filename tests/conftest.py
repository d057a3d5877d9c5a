"""Test set-up: importing helpers first sets the environment (JAX on the
CPU, a shared compilation cache, the repository root on sys.path) before any
test module imports JAX. Fixtures that several test modules share are
fixtures here: the sweep tests' tiny grid, its one run (once per session)
and the robustness grid written by hand; a small Haiku model with batch
norm (once per session)."""

import haiku as hk
import jax
import pytest
from robust_cells import robust_grid  # noqa: F401

import helpers  # noqa: F401
from sweep_fixtures import sweep_data, tiny, tiny_local_run  # noqa: F401


def _mlp_with_batch_norm(images, is_training):
    """Flatten, 8 units, batch norm, ReLU, 3 logits."""
    x = hk.Flatten()(images)
    x = hk.Linear(8)(x)
    x = hk.BatchNorm(True, True, decay_rate=0.9, eps=1e-5)(x, is_training)
    return hk.Linear(3)(jax.nn.relu(x))


@pytest.fixture(scope="session")
def bn_model():
    """(params, net_state, apply) of a small Haiku model on (n, 2, 2, 3)
    images, its batch-norm state updated once. Tests must not change it."""
    net = hk.transform_with_state(_mlp_with_batch_norm)
    images = jax.random.uniform(jax.random.PRNGKey(1), (4, 2, 2, 3))
    params, state = net.init(jax.random.PRNGKey(0), images, True)
    _, state = net.apply(params, state, None, images, True)
    return params, state, net.apply
