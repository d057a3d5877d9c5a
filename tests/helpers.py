"""Helpers shared by the test modules: the test environment (the repository
root on sys.path, JAX on the CPU, one persistent compilation cache for the
whole session, so that the many entry-script runs in subprocesses compile
each network only once), the Fashion-MNIST skip, entry scripts run as
subprocesses, pickles read the way a notebook reads them, the one-line error
check, the original's class-balanced draw, and a small trained MLP."""

import importlib
import os
import pickle
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Before JAX is imported: it reads these when it starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "ntk-jax-cache"),
)
# Every compilation cached, however short: the same small functions are
# compiled again in every entry script a test starts.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Datasets read by datafiles' NumPy readers, here and in every entry script
# a test starts: the arrays torchvision's classes give (test_data.py tests
# both readers and that they agree) without importing torch (3 to 4 s) in
# each process.
os.environ.setdefault("NTK_NUMPY_READERS", "1")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
from ntk import nt_compat  # noqa: E402

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# A limit on a whole subprocess, not a performance expectation: generous
# enough for a loaded 2-core machine compiling from a cold cache.
SUBPROCESS_TIMEOUT_S = 1800

has_fashion_mnist = os.path.isdir(FASHION_MNIST)
needs_fashion_mnist = pytest.mark.skipif(
    not has_fashion_mnist,
    reason="Debian package dataset-fashion-mnist is not installed",
)


def require_fashion_mnist() -> None:
    """Skips the calling test or fixture when Fashion-MNIST is missing."""
    if not has_fashion_mnist:
        pytest.skip("Debian package dataset-fashion-mnist is not installed")


# neural-tangents serves only as an independent reference and as optional
# kernel implementations; the JAX 0.11 stack (requirements-jax011.txt) has
# none, and these tests skip there, saying why.
NT_UNAVAILABLE = nt_compat.unavailable_reason()
needs_neural_tangents = pytest.mark.skipif(
    NT_UNAVAILABLE is not None,
    reason=f"{NT_UNAVAILABLE} (the JAX 0.11 stack has none)",
)


def reference_side(bench_module: str) -> tuple:
    """(torch, torchattacks, bench/`bench_module`) for the tests against
    the reference implementation of the attacks; skips the calling module
    where torch or torchattacks is missing (the JAX 0.11 stack has
    neither). bench/ shares its reference models with the tests
    (bench/reference_models.py)."""
    torch = pytest.importorskip(
        "torch", reason="torch is not installed (the JAX 0.11 stack has none)"
    )
    torchattacks = pytest.importorskip(
        "torchattacks",
        reason="torchattacks is not installed (requirements-nodeps.txt)",
    )
    bench = os.path.join(ROOT, "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return torch, torchattacks, importlib.import_module(bench_module)


def kernel_implementations(names) -> list:
    """pytest parameters of kernel implementations `names`; those that run
    through neural-tangents carry `needs_neural_tangents`."""
    from ntk import kernels

    return [
        pytest.param(
            name,
            marks=[needs_neural_tangents]
            if name in kernels._NT_IMPLEMENTATIONS
            else [],
        )
        for name in names
    ]


def run_script(
    script: str, *args, cwd=None, check: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python ROOT/script args` to completion, text output captured.

    With `check`, asserts exit status 0 and shows the end of stderr if not.
    """
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def enable_x64():
    """A context manager in which JAX computes in 64 bits, on JAX 0.5.3
    (`jax.experimental.enable_x64`) and 0.11 (`jax.enable_x64`)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64()


def load_pickle(path):
    """A pickle read with plain `pickle.load`, as a notebook would."""
    with open(path, "rb") as file:
        return pickle.load(file)


def assert_original_defaults(args, defaults: dict) -> None:
    """The parsed flags `args` hold the original's `defaults` (SPEC), and
    --model and --dataset, None (a checkpoint's own), resolve to the
    original's resnet18 on cifar10."""
    assert {k: getattr(args, k) for k in defaults} == defaults
    spec = models.resolve_spec(
        {}, model=args.model, width=args.width, dataset=args.dataset
    )
    assert (spec.model, spec.dataset) == ("resnet18", "cifar10")


def assert_one_line_error(stderr: str, *named: str) -> None:
    """stderr is one `error: ...` line, without a traceback, naming each
    string of `named`."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for text in named:
        assert text in lines[0], (text, lines[0])


def assert_close(got, want, rtol: float = 1e-5) -> None:
    """Every entry of `got` within rtol·max|want| of `want`.

    float32 results of the same sum in another order (other batch shapes,
    other fusions) differ by about 1e-7 of the magnitudes summed, so a
    tolerance relative to the scale holds on any machine where an absolute
    one does not.
    """
    want = np.asarray(want, np.float64)
    scale = max(float(np.max(np.abs(want))), 1e-30)
    np.testing.assert_allclose(
        np.asarray(got, np.float64), want, rtol=0, atol=rtol * scale
    )


def legacy_balanced_indices(labels, size, n_classes, seed) -> np.ndarray:
    """The original code's class-balanced draw, made with NumPy's legacy
    global API itself: `np.random.seed(seed)`, then for each class c in
    order `np.random.choice(len(class_indices), size // n_classes,
    replace=False)` of `class_indices = np.where(labels == c)[0]`, the
    picks concatenated unsorted. NumPy's global state is restored after.

    Returns:
      int (size,) indices into `labels`.
    """
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        chosen = []
        for c in range(n_classes):
            class_indices = np.where(np.asarray(labels) == c)[0]
            picks = np.random.choice(
                len(class_indices), size // n_classes, replace=False
            )
            chosen.append(class_indices[picks])
        return np.concatenate(chosen)
    finally:
        np.random.set_state(saved)


# --------------------------------------------------------------------------
# A small MLP trained on Fashion-MNIST (evaluation and its script)
# --------------------------------------------------------------------------

TINY_IMAGE_SHAPE = (28, 28, 1)
TINY_TRAIN_SIZE = 2048
TINY_TEST_SIZE = 200


def sgd_steps(
    model,
    dynamics,
    params0,
    params,
    state,
    images,
    labels,
    steps,
    batch_size=128,
):
    """`steps` SGD steps (lr 0.1, momentum 0.9) of `params` on the
    cross-entropy of `dynamics`' logits, batches taken in order."""
    optimizer = optax.sgd(0.1, momentum=0.9)

    def loss(trained, x, y):
        logits, _ = dynamics.logits(model.apply, params0, trained, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y
        ).mean()

    @jax.jit
    def step(trained, opt_state, x, y):
        grads = jax.grad(loss)(trained, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, trained)
        return optax.apply_updates(trained, updates), opt_state

    opt_state = optimizer.init(params)
    for i in range(steps):
        start = (i * batch_size) % len(labels)
        params, opt_state = step(
            params,
            opt_state,
            images[start : start + batch_size],
            labels[start : start + batch_size],
        )
    return params


def train_tiny_mlp(data_path):
    """mlp_skinny after 40 standard SGD steps (params) and 20 more of the
    centered linearization around them (lin_params), on 2048 Fashion-MNIST
    training images; also a balanced 200-image test subset.

    Returns:
        dict with 'model', 'params', 'lin_params', 'state', 'meta' (as
        run_exp.py writes it), 'images' (200, 28, 28, 1), 'labels' (200,).
    """
    images, labels = data.load_split("fashion_mnist", data_path, train=True)
    images, labels = images[:TINY_TRAIN_SIZE], labels[:TINY_TRAIN_SIZE]
    model = models.get_model("mlp_skinny", 10)
    params, state = models.init_model(model, 0, TINY_IMAGE_SHAPE)
    params = sgd_steps(
        model, models.STANDARD, params, params, state, images, labels, 40
    )
    lin_params = sgd_steps(
        model,
        models.Dynamics(linear=True, centering=True),
        params,
        params,
        state,
        images,
        labels,
        20,
    )
    test_images, test_labels = data.subset(
        *data.load_split("fashion_mnist", data_path, train=False),
        TINY_TEST_SIZE,
        0,
    )
    spec = models.ModelSpec("mlp_skinny", 64, "fashion_mnist", 10)
    meta = dict(spec.as_meta(), centering=True, linear=True, phase=2, epoch=1)
    return dict(
        model=model,
        params=params,
        lin_params=lin_params,
        state=state,
        meta=meta,
        images=test_images,
        labels=test_labels,
    )


def linearized_logits(model, params0, params, state, images):
    """f(x; θ0) + J(θ − θ0) by neural-tangents, independently of models.py."""

    def f(p, x):
        return model.apply(p, state, None, x, False)[0]

    linearize = nt_compat.load().linearize
    return np.asarray(jax.jit(linearize(f, params0))(params, images))


# --------------------------------------------------------------------------
# Refusals: nothing written, nothing replaced
# --------------------------------------------------------------------------


def files_snapshot(root) -> dict:
    """{path relative to `root`: its bytes} of every file under `root`
    (folders as None, so that an empty folder left behind shows), to
    compare before and after a refused command."""
    found = {}
    for folder, subfolders, names in os.walk(root):
        for name in subfolders:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def write_untrained_checkpoint(path, seed: int = 0, **meta) -> str:
    """An untrained mlp_skinny for Fashion-MNIST saved at `path` as
    run_exp.py saves a phase-1 checkpoint (meta: its model entries, phase,
    epoch, then `meta`); for refusals that come before any data is
    loaded. Returns the path."""
    from store import checkpoints

    spec = models.ModelSpec("mlp_skinny", None, "fashion_mnist", 10)
    model = spec.build()
    params, state = models.init_model(model, seed, TINY_IMAGE_SHAPE)
    recorded = dict(spec.as_meta(), phase="standard", epoch=0, **meta)
    checkpoints.save_checkpoint(path, params, params, state, recorded)
    return str(path)


def assert_plain_tree(tree) -> None:
    """`tree` is made of plain dicts of np.ndarray only (what a checkpoint
    holds, readable without Haiku or JAX)."""
    assert type(tree) is dict
    for value in tree.values():
        if isinstance(value, dict):
            assert_plain_tree(value)
        else:
            assert type(value) is np.ndarray


def cifar_rows(images):
    """NHWC uint8 -> the CIFAR file layout: one row of R, G, B planes."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_idx(path, array):
    """Big-endian idx file of uint8: magic 0x0000080D with D dimensions."""
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(array.astype(np.uint8).tobytes())


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first bytes of every PNG file
