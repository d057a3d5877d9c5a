"""The checkpoint layout: a pickle of a plain dict {'params', 'lin_params',
'net_state', 'meta', ...} of NumPy arrays, read back safely."""

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from store.atomic import atomic_pickle
from store.pickles import safe_load_pickle
from utils import PyTree, StrPath, UserError, to_numpy_tree

CHECKPOINT_KEYS = ("params", "lin_params", "net_state")


def _check_keys(
    path: str, obj: object, required_keys: tuple[str, ...]
) -> None:
    """UserError unless ``obj`` is a mapping holding every required key."""
    expected = ", ".join(required_keys)
    if not isinstance(obj, Mapping):
        raise UserError(
            f"cannot use {path}: it holds a {type(obj).__name__}, not a dict "
            f"with keys {expected}"
        )
    missing = [key for key in required_keys if key not in obj]
    if missing:
        raise UserError(
            f"cannot use {path}: it lacks key(s) {', '.join(missing)} "
            f"(expected a dict with keys {expected})"
        )


def load_pickle_arrays(
    path: StrPath, required_keys: Iterable[str] = ()
) -> PyTree:
    """Safely load an artefact pickle and check it holds ``required_keys``.

    For adversarial example files (``{'images' (N, C, H, W), 'labels' (N,)}``),
    kernel files (``{'kernel' (N, N), 'labels' (N,)}``) and the like.

    Raises:
        UserError: as :func:`safe_load_pickle`, or the content is not a dict
            holding every key in ``required_keys``.
    """
    obj = safe_load_pickle(path)
    if required_keys:
        _check_keys(os.fspath(path), obj, tuple(required_keys))
    return obj


def save_checkpoint(
    path: StrPath,
    params: PyTree,
    lin_params: PyTree,
    net_state: PyTree,
    meta: Mapping[str, Any] | None,
) -> None:
    """Atomically write a checkpoint loadable with plain ``pickle.load``.

    The file holds ``{'params', 'lin_params', 'net_state', 'meta'}``: the
    first three are Haiku trees stored as nested ``dict``s of ``np.ndarray``
    (the original code's format); ``meta`` is a dict of plain values (model,
    width, dataset, n_classes, epoch, flags, ...).
    """
    checkpoint = {
        "params": to_numpy_tree(params),
        "lin_params": to_numpy_tree(lin_params),
        "net_state": to_numpy_tree(net_state),
        "meta": to_numpy_tree(dict(meta or {})),
    }
    atomic_pickle(path, checkpoint)


def load_checkpoint(path: StrPath) -> dict[str, Any]:
    """Safely load a checkpoint written by :func:`save_checkpoint`.

    Files of the original code, which lack ``'meta'``, load with ``meta={}``;
    their JAX arrays load as NumPy arrays.

    Returns:
        ``{'params', 'lin_params', 'net_state', 'meta'}``.
    Raises:
        UserError: the file is missing, truncated or corrupt, lacks one of
            params / lin_params / net_state, holds anything but arrays and
            containers, or holds parameters or state that are not finite.
    """
    checkpoint = load_pickle_arrays(path, CHECKPOINT_KEYS)
    meta = checkpoint.get("meta", {})
    if not isinstance(meta, Mapping):
        raise UserError(
            f"cannot use {os.fspath(path)}: its 'meta' is a "
            f"{type(meta).__name__}, not a dict"
        )
    loaded = {key: checkpoint[key] for key in CHECKPOINT_KEYS}
    for key in CHECKPOINT_KEYS:
        where = _first_non_finite(loaded[key])
        if where is not None:
            raise UserError(
                f"cannot use {os.fspath(path)}: its {key} hold NaN or "
                f"infinite values (at {where}); the run that wrote it "
                "diverged: use an earlier checkpoint"
            )
    loaded["meta"] = dict(meta)
    return loaded


def _first_non_finite(tree: PyTree, prefix: str = "") -> str | None:
    """The path of the first float array of `tree` with a NaN or an
    infinity (e.g. 'linear/w'), or None."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = _first_non_finite(value, f"{prefix}{key}/")
            if where is not None:
                return where
        return None
    if isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            where = _first_non_finite(value, f"{prefix}{index}/")
            if where is not None:
                return where
        return None
    array = np.asarray(tree)
    if np.issubdtype(array.dtype, np.inexact) and not np.all(
        np.isfinite(array)
    ):
        return prefix.rstrip("/") or "the top level"
    return None
