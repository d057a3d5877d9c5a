"""Test set-up: importing helpers first sets the environment (JAX on the
CPU, a shared compilation cache, the repository root on sys.path) before any
test module imports JAX. Fixtures that several test modules share are
fixtures here. Made once per session: a data folder of Fashion-MNIST, the
small MLP trained on it, a small Haiku model with batch norm, and the
sweep tests' run of their tiny grid. Per test: the tiny grid's config and
the robustness grid written by hand. Tests must not change what a session
fixture returns."""

import helpers  # noqa: F401 (first: it sets JAX's environment)
from robust_cells import robust_grid  # noqa: F401
from session_fixtures import bn_model, fashion_data, tiny_mlp  # noqa: F401
from sweep_fixtures import tiny, tiny_local_run  # noqa: F401


def pytest_collection_modifyitems(items):
    """Marks `quick` (pytest.ini) every test marked neither `slow` nor
    `medium`."""
    for item in items:
        if not any(item.get_closest_marker(m) for m in ("slow", "medium")):
            item.add_marker("quick")
