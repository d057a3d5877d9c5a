"""The fixtures made once per test session (conftest.py registers them):
what several test modules share and none changes."""

import haiku as hk
import jax
import pytest

import data
import helpers


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


@pytest.fixture(scope="session")
def fashion_data(tmp_path_factory):
    """A data folder that every test reading Fashion-MNIST shares (Debian's
    copy is decompressed into it once); skips without the dataset."""
    helpers.require_fashion_mnist()
    folder = tmp_path_factory.mktemp("fashion_data")
    data.load_split("fashion_mnist", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_mlp(fashion_data):
    """helpers.train_tiny_mlp on the shared data folder, trained once."""
    return helpers.train_tiny_mlp(str(fashion_data))
