"""Clean and robust accuracy of a model under given dynamics: under PGD
(`attacks.AttackConfig`) or a parameter-free attack
(`attacks.ParameterFree`: APGD-CE, APGD-T, FAB-T, Square, AutoAttack or
any other the registry holds).

Shared by `run_exp.py` (the test after each phase) and
`eval_and_make_adv.py`. The model is a `models.Network`: an `apply_fn`,
parameters (`params0`, the expansion point, and `params`) and the
`models.Dynamics` that say how they give logits. Every batch goes through
one compiled call that returns the logits' two components (f, df) on the
clean batch and, with an attack, the adversarial batch and its components.
Batch norm is always in eval mode, so examples never interact.

The end of the module reads and writes the files of `eval_and_make_adv.py`
(test results and adversarial examples, in the original code's layout).
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

import attacks
import data
import models
import utils
from store import checkpoints
from utils import UserError


@dataclasses.dataclass
class EvalResult:
    """What `evaluate` measured on the first `n` test examples.

    Attributes:
        acc_clean: fraction in [0, 1] of clean examples classified right.
        acc_dirty: the same on the adversarial examples; None without an
            attack.
        predictions_clean: int (n,) argmax of the clean logits.
        predictions_dirty: int (n,) argmax of the adversarial logits, or
            None.
        components_clean: {'f': (n, K), 'df': (n, K)} float32, the two terms
            of the uncentered logits f + df (see `models.Dynamics.parts`).
        components_dirty: the same on the adversarial examples, or None.
        adv_images: float32 (n, H, W, C) adversarial images in [0, 1], kept
            only when asked for; else None.
        n: number of examples evaluated.
        broken_by: int (n,) result codes (attacks.registry): the
            parameter-free attack that broke each example first
            (attacks.CLEAN: wrong when clean; attacks.ROBUST: none did);
            None under PGD or without an attack.
    """

    acc_clean: float
    acc_dirty: float | None
    predictions_clean: np.ndarray
    predictions_dirty: np.ndarray | None
    components_clean: dict
    components_dirty: dict | None
    adv_images: np.ndarray | None
    n: int
    broken_by: np.ndarray | None = None


Attack = attacks.AttackConfig | attacks.ParameterFree | None


def attack_record(
    attack: attacks.AttackConfig | attacks.ParameterFree,
    seed: int,
    eps_255: float,
) -> dict:
    """An evaluation attack's settings for the results files: its own, the
    --eps it was made from (`eps_255`; None outside L∞, whose radius does not
    follow it), the seed and how each batch's keys derive from it."""
    if isinstance(attack, attacks.ParameterFree):
        norm, keys = (
            attack.config.norm,
            "fold_in(fold_in(PRNGKey(seed), batch index), example) "
            "for each attack",
        )
        record = dict(attack.record())
    else:
        norm, keys = attack.norm, "fold_in(PRNGKey(seed), batch index)"
        record = dict(attack.kwargs(), random_start=True)
    return dict(
        record,
        eps_255=eps_255 if norm == "linf" else None,
        seed=seed,
        keys=keys,
    )


def make_eval_step(attack: Attack) -> Callable:
    """A compiled clean-and-adversarial evaluation of one batch.

    Args:
        attack: an `attacks.AttackConfig` (PGD), an
            `attacks.ParameterFree` attack, or None for clean only. The
            attack attacks the network's logits (centered: df; else
            f + df).

    Returns:
        A `jax.jit` function `(network, images, labels, key) -> dict` for a
        `models.Network`, images (B, H, W, C) in [0, 1], labels (B,) int
        and a PRNG key, returning 'f_clean', 'df_clean' (B, K) and, with an
        attack, 'adv_images' (B, H, W, C), 'f_adv', 'df_adv' (B, K). Batch
        norm is in eval mode. It compiles once per network structure and
        batch shape. Under a ParameterFree attack the step also returns
        'broken_by' (B,) and is a host function around compiled parts.
    """
    if isinstance(attack, attacks.ParameterFree):
        return _parameter_free_step(attack)

    def step(
        network: models.Network,
        images: jax.Array,
        labels: jax.Array,
        key: jax.Array,
    ) -> dict[str, jax.Array]:
        f, df, _ = network.parts(images)
        out = {"f_clean": f, "df_clean": df}
        if attack is None:
            return out
        adv = attacks.pgd(
            lambda x: network.logits(x)[0],
            images,
            labels,
            key,
            attack,
        )
        f_adv, df_adv, _ = network.parts(adv)
        out.update(adv_images=adv, f_adv=f_adv, df_adv=df_adv)
        return out

    return jax.jit(step)


def _network_logits(network: models.Network, images: jax.Array) -> jax.Array:
    """The logits the network classifies with (batch norm in eval mode)."""
    return network.logits(images)[0]


@jax.jit
def _parts(
    network: models.Network, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(f, df) of the network on a batch (see models.Dynamics.parts)."""
    f, df, _ = network.parts(images)
    return f, df


def _parameter_free_step(attack: attacks.ParameterFree) -> Callable:
    """make_eval_step's step for a ParameterFree attack: the clean parts,
    attacks.autoattack on the batch (the network passed to the compiled
    attacks as an argument, not baked in), and the adversarial parts."""

    def step(
        network: models.Network,
        images: jax.Array,
        labels: jax.Array,
        key: jax.Array,
    ) -> dict[str, jax.Array]:
        f, df = _parts(network, images)
        result = attacks.autoattack(
            jax.tree_util.Partial(_network_logits, network),
            images,
            labels,
            attack.eps,
            key,
            attack.config,
        )
        f_adv, df_adv = _parts(network, result.adv)
        return {
            "f_clean": f,
            "df_clean": df,
            "adv_images": result.adv,
            "f_adv": f_adv,
            "df_adv": df_adv,
            "broken_by": result.broken_by,
        }

    return step


def _padded(
    images: np.ndarray, labels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The batch grown to `size` rows by repeating its last example.

    Padding the short last batch lets it reuse the compiled step instead of
    compiling a second one; eval-mode batch norm keeps the extra rows from
    touching the real ones, and their outputs are dropped. Measured for
    ResNet-18 with PGD-100 on an H100: a compilation takes about 4.5 s, a
    whole batch of 100 0.2 s (standard) to 0.5 s (linearized).
    """
    extra = size - len(labels)
    if extra == 0:
        return images, labels
    repeat = np.concatenate(
        [np.arange(len(labels)), np.full(extra, len(labels) - 1)]
    )
    return images[repeat], labels[repeat]


def _to_host(
    dynamics: models.Dynamics,
    out: Mapping[str, jax.Array],
    labels: np.ndarray,
    keep_examples: bool,
) -> dict[str, np.ndarray]:
    """The real rows of one step's outputs, as NumPy, with predictions.

    Args:
        dynamics: the step's `models.Dynamics`.
        out: the step's dict of (B, ...) device arrays.
        labels: int (n,) labels of the first n rows (the rest is padding).
        keep_examples: keep 'adv_images'.

    Returns:
        {name: (n, ...) array} for the outputs kept, plus 'pred_clean' and,
        with an attack, 'pred_adv' (int (n,)).
    """
    n = len(labels)
    host = {
        name: np.asarray(value)[:n]
        for name, value in out.items()
        if keep_examples or name != "adv_images"
    }
    for suffix in ("clean", "adv"):
        if f"f_{suffix}" in host:
            logits = dynamics.combine(
                host[f"f_{suffix}"], host[f"df_{suffix}"]
            )
            host[f"pred_{suffix}"] = np.argmax(logits, axis=-1)
    return host


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to labels, a float in [0, 1]."""
    return float(np.mean(predictions == labels))


@dataclasses.dataclass
class _Gathered:
    """Host copies of the finished batches, and their running accuracy.

    dynamics: the `models.Dynamics` evaluated (to turn f, df into logits).
    keep_examples: keep the adversarial images.
    """

    dynamics: models.Dynamics
    keep_examples: bool
    chunks: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    correct: dict = dataclasses.field(default_factory=dict)

    def add(self, out: Mapping[str, jax.Array], labels: np.ndarray) -> None:
        """Fetches a step's output `out` for the int (n,) `labels` of its
        first n rows (the rest is padding), and counts its right answers."""
        host = _to_host(self.dynamics, out, labels, self.keep_examples)
        self.chunks.append(host)
        self.labels.append(labels)
        for kind, suffix in (("clean", "clean"), ("robust", "adv")):
            if f"pred_{suffix}" in host:
                right = int(np.sum(host[f"pred_{suffix}"] == labels))
                self.correct[kind] = self.correct.get(kind, 0) + right

    def running_accuracies(self) -> dict[str, str]:
        """{'clean': '93.0%', 'robust': '41.0%'} so far, for the bar."""
        n = max(sum(map(len, self.labels)), 1)
        return {
            kind: f"{100 * count / n:.1f}%"
            for kind, count in self.correct.items()
        }

    def result(self) -> EvalResult:
        """The EvalResult of every batch added."""
        labels = np.concatenate(self.labels)
        joined = {
            name: np.concatenate([chunk[name] for chunk in self.chunks])
            for name in self.chunks[0]
        }

        def components(suffix: str) -> dict[str, np.ndarray] | None:
            if f"f_{suffix}" not in joined:
                return None
            return {
                "f": joined[f"f_{suffix}"].astype(np.float32),
                "df": joined[f"df_{suffix}"].astype(np.float32),
            }

        attacked = "pred_adv" in joined
        return EvalResult(
            acc_clean=_accuracy(joined["pred_clean"], labels),
            acc_dirty=(
                _accuracy(joined["pred_adv"], labels) if attacked else None
            ),
            predictions_clean=joined["pred_clean"],
            predictions_dirty=joined.get("pred_adv"),
            components_clean=components("clean"),
            components_dirty=components("adv"),
            adv_images=joined.get("adv_images"),
            n=len(labels),
            broken_by=joined.get("broken_by"),
        )


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` goes through a test set.

    Attributes:
        batch_size: examples per compiled call.
        seed: seed of the attack's random starts.
        max_batches: evaluate only the first `max_batches` batches (None:
            all).
        keep_examples: keep the adversarial images in the result.
        progress: show a tqdm bar with the running clean and robust
            accuracy.
        desc: the bar's label.
    """

    batch_size: int = 100
    seed: int = 0
    max_batches: int | None = None
    keep_examples: bool = False
    progress: bool = True
    desc: str = "eval"


def evaluate(
    network: models.Network,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    attack: Attack,
    options: EvalOptions | None = None,
    eval_step: Callable | None = None,
) -> EvalResult:
    """Clean and (with `attack`) robust accuracy on a test set.

    Batches of `options.batch_size` are taken in order; a short last batch
    is padded to the full size (so it needs no second compilation) and its
    padding dropped. Batch b is attacked with key
    `fold_in(PRNGKey(options.seed), b)`, so results do not depend on what
    ran before.

    Args:
        network: the `models.Network` evaluated (batch norm in eval mode).
        images: float32 (N, H, W, C) in [0, 1].
        labels: int (N,).
        attack: an `attacks.AttackConfig` (PGD), an
            `attacks.ParameterFree` attack, or None for clean accuracy only.
        options: an EvalOptions (None: its defaults).
        eval_step: a step from `make_eval_step(attack)` to reuse (and not
            compile again); None makes one.

    Returns:
        An EvalResult.
    """
    options = options or EvalOptions()
    batch_size, max_batches = options.batch_size, options.max_batches
    if len(labels) == 0:
        raise ValueError("evaluate needs at least one example")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, not {max_batches}")
    if eval_step is None:
        eval_step = make_eval_step(attack)
    network = jax.device_put(network)
    size = min(batch_size, len(labels))
    total = data.n_batches(len(labels), batch_size)
    if max_batches is not None:
        total = min(total, max_batches)
    base_key = jax.random.PRNGKey(options.seed)
    batches = zip(
        range(total),
        data.test_batches(images, labels, batch_size),
        strict=False,
    )
    bar = tqdm(
        batches,
        total=total,
        desc=options.desc,
        disable=not options.progress,
        leave=False,
    )
    gathered = _Gathered(network.dynamics, options.keep_examples)
    pending = None
    for index, (x, y) in bar:
        # Ctrl-C held back (utils.deferred_interrupts) ends the run here.
        utils.raise_if_interrupted()
        padded_x, padded_y = _padded(x, y, size)
        out = eval_step(
            network,
            jnp.asarray(padded_x),
            jnp.asarray(padded_y),
            jax.random.fold_in(base_key, index),
        )
        # Steps run asynchronously: this one is queued before the previous
        # one is fetched, so the device does not wait for the host.
        if pending is not None:
            gathered.add(*pending)
            bar.set_postfix(gathered.running_accuracies())
        pending = (out, np.asarray(y))
    gathered.add(*pending)
    bar.set_postfix(gathered.running_accuracies())
    bar.close()
    return gathered.result()


# --------------------------------------------------------------------------
# Result and example files (the layout of the original code)
# --------------------------------------------------------------------------

EXAMPLE_KEYS = ("images", "labels")


def results_record(result: EvalResult) -> dict:
    """The `test_results_*.pkl` dict of an EvalResult.

    Returns:
        {'acc_clean': float, 'acc_dirty': float,
        'predictions_clean': int (N,), 'predictions_dirty': int (N,),
        'components_clean': {'f': (N, K), 'df': (N, K)} float32,
        'components_dirty': the same}. Without an attack (--no_adv) the
        dirty entries are the clean ones, as the original writes them.
        Under a parameter-free attack also 'broken_by' int (N,) (see
        EvalResult).
    """
    attacked = result.acc_dirty is not None
    return {
        "acc_clean": result.acc_clean,
        "acc_dirty": result.acc_dirty if attacked else result.acc_clean,
        "predictions_clean": result.predictions_clean,
        "predictions_dirty": (
            result.predictions_dirty if attacked else result.predictions_clean
        ),
        "components_clean": result.components_clean,
        "components_dirty": (
            result.components_dirty if attacked else result.components_clean
        ),
    } | ({} if result.broken_by is None else {"broken_by": result.broken_by})


def examples_record(
    adv_images: npt.ArrayLike, labels: npt.ArrayLike
) -> dict[str, np.ndarray]:
    """The `adv_examples_*.pkl` dict: {'images' float32 (N, C, H, W),
    'labels' int (N,)} from NHWC `adv_images` (N, H, W, C); pixels stay
    floats in [0, 1], not re-quantized."""
    return {
        "images": data.to_nchw(np.asarray(adv_images, np.float32)),
        "labels": np.asarray(labels),
    }


def load_examples(
    path: str, image_shape: tuple[int, int, int], n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks an examples file written by `examples_record`.

    Args:
        path: a pickle of {'images' (N, C, H, W), 'labels' (N,)}, loaded
            with the safe loader.
        image_shape: (H, W, C) the model expects.
        n_classes: labels must lie in [0, n_classes).

    Returns:
        images float32 (N, H, W, C) in [0, 1] and labels int32 (N,).

    Raises:
        UserError: unreadable file, missing keys, or wrong shapes, dtypes or
            values.
    """
    record = checkpoints.load_pickle_arrays(path, EXAMPLE_KEYS)
    images = _checked_images(record["images"], image_shape, path)
    labels = _checked_labels(record["labels"], len(images), n_classes, path)
    return data.to_nhwc(images), labels


def _checked_images(
    images: object, image_shape: tuple[int, int, int], path: str
) -> np.ndarray:
    """float32 (N, C, H, W) images in [0, 1], or UserError naming `path`."""
    height, width, channels = image_shape
    want = (channels, height, width)
    if (
        not isinstance(images, np.ndarray)
        or images.ndim != 4
        or images.shape[1:] != want
        or len(images) == 0
    ):
        raise UserError(
            f"{path}: 'images' must be an array of shape (N, {channels}, "
            f"{height}, {width}) with N >= 1 for this model, not "
            f"{_describe(images)}"
        )
    if not (
        np.issubdtype(images.dtype, np.floating)
        or np.issubdtype(images.dtype, np.integer)
    ):
        raise UserError(
            f"{path}: 'images' must be numbers, not {images.dtype}"
        )
    images = images.astype(np.float32)
    if not np.all((images >= 0) & (images <= 1)):
        hint = "; 8-bit pixels? divide by 255" if images.max() > 1 else ""
        raise UserError(
            f"{path}: 'images' must lie in [0, 1] (found min {images.min():g}"
            f", max {images.max():g}){hint}"
        )
    return images


def _checked_labels(
    labels: object, n: int, n_classes: int, path: str
) -> np.ndarray:
    """int32 (n,) labels in [0, n_classes), or UserError naming `path`."""
    if (
        not isinstance(labels, np.ndarray)
        or labels.shape != (n,)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise UserError(
            f"{path}: 'labels' must be an int array of shape "
            f"({n},), not {_describe(labels)}"
        )
    if labels.min() < 0 or labels.max() >= n_classes:
        raise UserError(
            f"{path}: 'labels' must lie in [0, {n_classes}), "
            f"found {labels.min()} to {labels.max()}"
        )
    return labels.astype(np.int32)


def _describe(value: object) -> str:
    """'float32 array of shape (2, 3)' or the type name, for messages."""
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"
