"""Import neural-tangents 0.6.5 on the pinned JAX 0.5.3.

Why this module exists: neural-tangents 0.6.5 still reaches for two names
that JAX moved (`jax.interpreters.ad.source_info_util`, `ad.config`), and its
package `__init__` imports `neural_tangents.experimental`, which needs
TensorFlow. We never use the experimental part, so an empty module stands in
for it. Import `nt` from here, never `neural_tangents` directly.

Do not use `nt.NtkImplementation.AUTO`: it is broken on this JAX.
"""

import sys
import types

import jax
import jax.extend
from jax.interpreters import ad


def _import_neural_tangents():
    """Returns the `neural_tangents` module after the compatibility aliases."""
    if not hasattr(ad, "source_info_util"):
        ad.source_info_util = jax.extend.source_info_util
    if not hasattr(ad, "config"):
        ad.config = jax.config
    sys.modules.setdefault(
        "neural_tangents.experimental",
        types.ModuleType("neural_tangents.experimental"),
    )
    import neural_tangents

    return neural_tangents


nt = _import_neural_tangents()
