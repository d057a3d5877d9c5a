"""Errors, files and checkpoints shared by every entry script.

Checkpoints and other artefacts are pickles of plain nested ``dict``s of
NumPy arrays, so that a notebook can read them with ``pickle.load``. Reading
them back here goes through :func:`safe_load_pickle`, which refuses any pickle
that asks for more than NumPy arrays, NumPy scalars, dtypes and containers
(JAX arrays pickled by JAX itself load as NumPy arrays, without JAX code).

Every file is written atomically (a hidden temporary file, renamed); the
temporary files of a killed process are removed by the next one
(:func:`remove_stale_temp_files`), and an output folder can be held by one
process at a time (:class:`FolderLock`).
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# A nested tree of arrays: mappings (Haiku's dicts), lists and tuples whose
# leaves are NumPy or JAX arrays, NumPy scalars or plain Python values.
PyTree = Any
# A path as the file functions take it: a str or an os.PathLike of one.
StrPath = str | os.PathLike[str]

PLAIN_SCALARS = (bool, int, float, complex, str, bytes, type(None))


class UserError(Exception):
    """Bad input from the user.

    The message is one line that names the problem and what to do. Entry
    scripts print it and exit with status 2.
    """


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with whitespace runs collapsed, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------
# Trees of arrays
# --------------------------------------------------------------------------


def to_numpy_tree(tree: PyTree) -> PyTree:
    """Host copy of a tree of arrays made of plain Python containers.

    Mappings (Haiku's dicts and mapping types included) become ``dict``s,
    lists stay lists, tuples (named tuples included) become plain tuples, and
    JAX or NumPy arrays become ``np.ndarray`` copies of the same shape and
    dtype. Python numbers, strings and ``None`` are kept as they are, and so
    are NumPy scalars.

    Raises:
        TypeError: a leaf is none of the above.
    """
    if isinstance(tree, Mapping):
        return {key: to_numpy_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [to_numpy_tree(value) for value in tree]
    if isinstance(tree, tuple):
        return tuple(to_numpy_tree(value) for value in tree)
    if isinstance(tree, (PLAIN_SCALARS, np.generic)):
        return tree
    if isinstance(tree, (np.ndarray, jax.Array)):
        return np.array(tree)
    raise TypeError(f"cannot convert a {type(tree).__name__} to NumPy")


def _leaf_equal(a: object, b: object) -> bool:
    """Exact equality of two leaves: same type class, dtype, shape and bits."""
    a_is_array = isinstance(a, (np.ndarray, np.generic, jax.Array))
    b_is_array = isinstance(b, (np.ndarray, np.generic, jax.Array))
    if a_is_array != b_is_array:
        return False
    if not a_is_array:
        return type(a) is type(b) and a == b
    a, b = np.asarray(a), np.asarray(b)
    # Comparing bytes makes NaN equal to itself and -0.0 differ from 0.0.
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.tobytes() == b.tobytes()
    )


def tree_equal(a: PyTree, b: PyTree) -> bool:
    """Whether two nested trees of arrays are exactly equal.

    Trees are mappings, lists and tuples; any two mappings with the same keys
    compare as the same structure, but a list never equals a tuple. Arrays
    must agree in dtype, shape and every bit of every value.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and isinstance(b, Mapping)
            and set(a) == set(b)
            and all(tree_equal(a[key], b[key]) for key in a)
        )
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and isinstance(a, list) == isinstance(b, list)
            and len(a) == len(b)
            and all(tree_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return _leaf_equal(a, b)


def flatten_opt_state(opt_state: PyTree) -> list[np.ndarray]:
    """Leaves of an optax optimiser state as a list of NumPy arrays.

    The order is that of ``jax.tree_util.tree_leaves``; restore the state
    with :func:`unflatten_like` on a freshly initialised state.
    """
    return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(opt_state)]


def unflatten_like(template: PyTree, leaves: Sequence[np.ndarray]) -> PyTree:
    """Put ``leaves`` back onto the tree structure of ``template``.

    Args:
        template: a tree of the right structure, such as
            ``optimizer.init(params)``.
        leaves: arrays as returned by :func:`flatten_opt_state`.
    Returns:
        A tree like ``template`` whose leaves are ``jnp`` arrays of ``leaves``.
    Raises:
        UserError: the number, shapes or dtypes of the leaves do not match
            ``template`` (the stored state belongs to another model).
    """
    template_leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(leaves) != len(template_leaves):
        raise UserError(
            f"stored optimiser state has {len(leaves)} arrays but the model "
            f"needs {len(template_leaves)}; was it saved for another model?"
        )
    restored = []
    for index, (want, got) in enumerate(
        zip(template_leaves, leaves, strict=True)
    ):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape or want.dtype != got.dtype:
            raise UserError(
                f"stored optimiser state array {index} is {got.dtype}"
                f"{list(got.shape)} but the model needs {want.dtype}"
                f"{list(want.shape)}; was it saved for another model?"
            )
        restored.append(jnp.asarray(got))
    return jax.tree_util.tree_unflatten(treedef, restored)


def word_list(words: Sequence[str], last: str = "and") -> str:
    """The words in prose: 'a', 'a and b', 'a, b and c' (`last` joins the
    last two: 'and', 'or')."""
    if len(words) < 2:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def warn(message: str) -> None:
    """One `warning: ...` line on stderr."""
    print(f"warning: {one_line(message, limit=1000)}", file=sys.stderr)


# --------------------------------------------------------------------------
# Ctrl-C between steps
# --------------------------------------------------------------------------

# Whether Ctrl-C came while deferred_interrupts held it back.
_interrupt = {"pending": False}


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Holds Ctrl-C (SIGINT) back while the body runs: it sets a flag
    instead of raising KeyboardInterrupt wherever the program happens to
    be (one raised inside a garbage-collection callback, e.g. JAX's, is
    printed as "Exception ignored" and lost, and the run goes on).
    `raise_if_interrupted`, called between steps, raises it; so does the
    end of the body. A second Ctrl-C raises at once. Outside the main
    thread (where no signal handler can be set) it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hold(signum: int, frame: object) -> None:
        if _interrupt["pending"]:
            raise KeyboardInterrupt
        _interrupt["pending"] = True

    _interrupt["pending"] = False
    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
        raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupt["pending"] = False


def raise_if_interrupted() -> None:
    """Raises KeyboardInterrupt when Ctrl-C came while deferred_interrupts
    held it back (a no-op otherwise)."""
    if _interrupt["pending"]:
        raise KeyboardInterrupt
