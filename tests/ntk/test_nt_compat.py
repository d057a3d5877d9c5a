"""nt_compat: neural-tangents is optional; where it cannot be used, the
first use of `nt` says why in one line (a UserError), never a traceback of
an ImportError."""

import importlib.metadata
import importlib.util

import pytest

from ntk import nt_compat
from utils import UserError

INSTALLED = importlib.util.find_spec("neural_tangents") is not None


def _not_installed(distribution):
    raise importlib.metadata.PackageNotFoundError(distribution)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", _not_installed)
    assert nt_compat.unavailable_reason() == "neural-tangents is not installed"
    with pytest.raises(UserError) as error:
        from ntk.nt_compat import nt  # noqa: F401
    message = str(error.value)
    assert message.startswith("neural-tangents is not installed: ")
    assert "requirements.txt" in message and "--implementation rows" in message
    assert "\n" not in message


def test_new_jax_is_refused_before_importing(monkeypatch):
    monkeypatch.setattr(nt_compat, "_jax_version", lambda: (0, 11))
    monkeypatch.setattr(nt_compat, "_module", None)
    reason = nt_compat.unavailable_reason()
    if not INSTALLED:
        assert reason == "neural-tangents is not installed"
    else:
        assert "does not run on JAX" in reason and "JAX < 0.6" in reason
    with pytest.raises(UserError, match="--implementation rows"):
        nt_compat.load()


def test_jax_version_is_major_minor():
    major, minor = nt_compat._jax_version()
    assert (major, minor) >= (0, 5)


@pytest.mark.skipif(not INSTALLED, reason="neural-tangents is not installed")
def test_available_on_the_pinned_stack():
    if nt_compat._jax_version() >= nt_compat.FIRST_UNSUPPORTED_JAX:
        pytest.skip("JAX is too new for neural-tangents here")
    assert nt_compat.unavailable_reason() is None
    assert nt_compat.nt is nt_compat.load()
    assert hasattr(nt_compat.nt, "empirical_ntk_fn")


def test_other_attributes_are_attribute_errors():
    with pytest.raises(AttributeError):
        nt_compat.neural_tangents  # noqa: B018
