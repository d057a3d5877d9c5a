"""The library of `eval_and_make_adv.py` (see its docstring): a checkpoint's
clean and PGD-L∞ accuracy on the test set or on example files, the
adversarial examples, and the files that record them (named by
`store.layout`: layout.eval_outputs, layout.eval_summaries).

`evaluate_checkpoint(settings)` does what the script does, for the
`AdvEvalSettings` of its flags.
"""

import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

import attacks
import data
import models
import utils
from store import atomic, layout, provenance
from training import evaluation
from utils import UserError

SHORT_BATCHES = 10


@dataclasses.dataclass(frozen=True)
class AdvEvalSettings:
    """The settings of eval_and_make_adv.py: its flags, typed.

    Each field is the flag of the same name (see eval_and_make_adv.py
    --help; test_path None is the test set); `flags` is every flag as
    parsed, which the results file records as it is.
    """

    # The model and what of it is evaluated.
    model_path: str
    model: str | None
    width: int | None
    dataset: str | None
    linear: bool
    centering: bool
    # The test sources.
    test_path: list[str] | None
    data_path: str
    test_size: int | None
    random_seed: int
    batch_size: int
    short: bool
    # The attack.
    no_adv: bool
    eps: float
    pgd_iters: int
    attack_loss: str
    restarts: int
    attack: str
    attack_budget: list
    attack_norm: str
    # The outputs.
    bonus_dir: str
    save_name: str
    save_examples: bool
    overwrite: bool
    no_progress: bool
    flags: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def max_batches(self) -> int | None:
        """The batches evaluated per source (None: all)."""
        return SHORT_BATCHES if self.short else None


def load_model(
    settings: AdvEvalSettings,
) -> tuple[dict, models.ModelSpec]:
    """The checkpoint and its ModelSpec, checked against each other.

    Returns:
        (checkpoint {'params', 'lin_params', 'net_state', 'meta'}, spec).
    """
    return models.load_with_spec(
        settings.model_path,
        model=settings.model,
        width=settings.width,
        dataset=settings.dataset,
    )


def choose_network(
    settings: AdvEvalSettings, checkpoint: dict, spec: models.ModelSpec
) -> models.Network:
    """What the flags evaluate, as the original does: with --linear the
    linearization around params at lin_params (centered with
    --centering); without, the network at params, or with --centering
    f(x; params) − f(x; lin_params)."""
    apply_fn, state = spec.build().apply, checkpoint["net_state"]
    params, lin_params = checkpoint["params"], checkpoint["lin_params"]
    if settings.linear:
        dynamics = models.Dynamics(linear=True, centering=settings.centering)
        return models.Network(apply_fn, dynamics, params, lin_params, state)
    if settings.centering:
        dynamics = models.Dynamics(linear=False, centering=True)
        return models.Network(apply_fn, dynamics, lin_params, params, state)
    return models.Network(apply_fn, models.STANDARD, params, params, state)


def describe_network(network: models.Network) -> dict:
    """What was evaluated, for the results file."""
    dynamics = network.dynamics
    if dynamics.linear:
        parameters, point = "lin_params", "params"
    else:
        parameters = "params"
        point = "lin_params" if dynamics.centering else None
    return {
        "linear": dynamics.linear,
        "centering": dynamics.centering,
        "parameters": parameters,
        "expansion_point": point,
    }


def model_warnings(settings: AdvEvalSettings, checkpoint: dict) -> list[str]:
    """Lines saying where the flags and the checkpoint do not fit."""
    meta, path = checkpoint["meta"], settings.model_path
    same = utils.tree_equal(checkpoint["params"], checkpoint["lin_params"])
    lines = []
    if settings.centering and not settings.linear and same:
        lines.append(
            f"lin_params equal params in {path}: --centering without "
            "--linear evaluates f(x; params) - f(x; lin_params), all zero"
        )
    if settings.linear and same:
        lines.append(
            f"lin_params equal params in {path} (no phase 2?): --linear "
            "evaluates the linearization at its expansion point, i.e. the "
            "network at params"
            + (" minus itself: all-zero logits" if settings.centering else "")
        )
    if settings.linear and _recorded_false(meta, "linear") and not same:
        lines.append(
            f"{path} trained lin_params with standard dynamics "
            "(--do_standard_second): --linear evaluates their "
            "linearization around params, not the trained model"
        )
    if (
        settings.linear
        and meta.get("linear")
        and not same
        and meta.get("centering") is not None
        and bool(meta["centering"]) != settings.centering
    ):
        lines.append(
            f"{path} was trained with centering="
            f"{bool(meta['centering'])} but --centering is "
            f"{'on' if settings.centering else 'off'}"
        )
    if not settings.linear and not settings.centering and not same:
        lines.append(
            f"lin_params of {path} differ from params but are "
            "not used: evaluating the network at params (--linear "
            "evaluates lin_params)"
        )
    return lines


def _recorded_false(meta: dict, key: str) -> bool:
    """Whether `meta` records `key` and it is false (NumPy bools too)."""
    return meta.get(key) is not None and not meta[key]


def attack_config(
    settings: AdvEvalSettings, n_classes: int | None = None
) -> evaluation.Attack:
    """The attack of the flags: PGD (L∞ of radius --eps/255, or with
    --attack_norm l2 the paper's L2 radius 0.25), a parameter-free attack
    at the same radius, or None with --no_adv. `n_classes`: the model's
    (None before it is known: the budget's targets are checked then).

    Raises:
      UserError: flags that do not go together, or a budget the attack
        cannot run (attacks.check_budget).
    """
    budget = attacks.check_budget(
        settings.attack, settings.attack_budget, n_classes
    )
    if settings.no_adv:
        if settings.attack != attacks.PGD.name:
            raise UserError(
                f"--no_adv runs no attack, and --attack {settings.attack} "
                "asks for one: pass one of them"
            )
        return None
    make = attacks.EVAL_ATTACKS[settings.attack_norm]
    pgd = dataclasses.replace(
        make(settings.eps, settings.pgd_iters),
        loss=settings.attack_loss,
        restarts=settings.restarts,
    )
    if settings.attack == attacks.PGD.name:
        return pgd
    return attacks.parameter_free(
        settings.attack, pgd.eps, settings.attack_norm, budget
    )


def load_sources(
    settings: AdvEvalSettings, spec: models.ModelSpec
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The test sources: [(name, images (N, H, W, C), labels (N,))].

    The test set, or each --test_path file; --test_size takes the same
    class-balanced subset of each.
    """
    if settings.test_path:
        sources = [
            (
                path,
                *evaluation.load_examples(
                    path,
                    data.get_dataset(spec.dataset).image_shape,
                    spec.n_classes,
                ),
            )
            for path in settings.test_path
        ]
    else:
        images, labels = data.load_split(
            spec.dataset, settings.data_path, train=False
        )
        sources = [(f"{spec.dataset} test set", images, labels)]
    return [
        (
            name,
            *data.subset(
                images, labels, settings.test_size, settings.random_seed
            ),
        )
        for name, images, labels in sources
    ]


def output_paths(
    out_dir: str, save_name: str, index: int, count: int
) -> dict[str, str]:
    """{'results', 'examples'} pickle paths of source `index` of `count`."""
    suffix = save_name if count == 1 else f"{save_name}_{index}"
    return layout.eval_outputs(out_dir, suffix)


def evaluate_source(
    settings: AdvEvalSettings,
    network: models.Network,
    attack: evaluation.Attack,
    eval_step: Callable,
    source: tuple[str, np.ndarray, np.ndarray],
) -> tuple[evaluation.EvalResult, np.ndarray, np.ndarray]:
    """Evaluates `network` on one (name, images, labels) source.

    Returns:
        (EvalResult, the images and labels of its n examples).
    """
    name, images, labels = source
    result = evaluation.evaluate(
        network,
        images,
        labels,
        attack=attack,
        eval_step=eval_step,
        options=evaluation.EvalOptions(
            batch_size=settings.batch_size,
            seed=settings.random_seed,
            max_batches=settings.max_batches,
            keep_examples=settings.save_examples and attack is not None,
            progress=not settings.no_progress,
            desc=os.path.basename(name),
        ),
    )
    return result, images[: result.n], labels[: result.n]


def source_outputs(
    settings: AdvEvalSettings,
    paths: dict[str, str],
    result: evaluation.EvalResult,
    images: np.ndarray,
    labels: np.ndarray,
) -> tuple[dict[str, str], dict[str, object]]:
    """What one source writes: (its row's file entries, {path: content} of
    the results pickle and with --save_examples the examples: adversarial,
    or with --no_adv the clean images, as the original)."""
    contents = {paths["results"]: evaluation.results_record(result)}
    written = {"results_file": paths["results"]}
    if settings.save_examples:
        examples = images if result.adv_images is None else result.adv_images
        contents[paths["examples"]] = evaluation.examples_record(
            examples, labels
        )
        written["examples_file"] = paths["examples"]
    return written, contents


def attack_record(
    attack: evaluation.Attack, settings: AdvEvalSettings
) -> dict | None:
    """The attack that ran, for the results files (None with --no_adv)."""
    if attack is None:
        return None
    record = evaluation.attack_record(
        attack, settings.random_seed, settings.eps
    )
    if not isinstance(attack, attacks.ParameterFree):
        record["name"] = attacks.PGD.name
    return record


def run_record(
    settings: AdvEvalSettings,
    spec: models.ModelSpec,
    network: models.Network,
    attack: evaluation.Attack,
    rows: list[dict],
) -> dict:
    """The `results_{save_name}.json` content."""
    return {
        "model_path": settings.model_path,
        "model": spec.as_meta(),
        "evaluated": describe_network(network),
        "attack": attack_record(attack, settings),
        "test": {
            "batch_size": settings.batch_size,
            "test_size": settings.test_size,
            "short": settings.short,
            "max_batches": settings.max_batches,
        },
        "sources": rows,
        "flags": settings.flags,
        "environment": provenance.environment_info(),
    }


def transfer_record(results: dict) -> dict:
    """The `transfer_{save_name}.json` content from the results record:
    the model and attack, and one row {source, n, acc_clean, acc_dirty} per
    example file."""
    transfer = {
        key: results[key]
        for key in ("model_path", "model", "evaluated", "attack")
    }
    transfer["rows"] = [
        {key: row[key] for key in ("source", "n", "acc_clean", "acc_dirty")}
        for row in results["sources"]
    ]
    return transfer


def transfer_table(rows: list[dict]) -> str:
    """The transfer matrix as text: one line per source file."""
    width = max(len(row["source"]) for row in rows)
    lines = [f"{'source':<{width}}  {'n':>6}  {'clean':>7}  {'robust':>7}"]
    for row in rows:
        robust = (
            "-"
            if row["acc_dirty"] is None
            else f"{100 * row['acc_dirty']:6.2f}%"
        )
        lines.append(
            f"{row['source']:<{width}}  {row['n']:>6}  "
            f"{100 * row['acc_clean']:6.2f}%  {robust:>7}"
        )
    return "\n".join(lines)


def summary_line(row: dict) -> str:
    """One line of accuracies for the terminal."""
    text = f"{row['source']}: n={row['n']} clean {100 * row['acc_clean']:.2f}%"
    if row["acc_dirty"] is not None:
        text += f", robust {100 * row['acc_dirty']:.2f}%"
    return text


def output_folder(settings: AdvEvalSettings) -> str:
    """{dirname(model_path)}/{bonus_dir}, where the outputs go."""
    return os.path.join(
        os.path.dirname(settings.model_path), settings.bonus_dir
    )


def check_outputs(settings: AdvEvalSettings, out_dir: str) -> list[str]:
    """Refuses, before anything is loaded, outputs that could not be
    written or that would mix with another evaluation's: an output folder
    that cannot be made or written, or one that holds an evaluation saved
    under --save_name (unless --overwrite, which replaces it whole).

    Returns:
        The files of that earlier evaluation (layout.eval_set).
    """
    atomic.check_writable_dir(out_dir)
    earlier = layout.eval_set(out_dir, settings.save_name)
    if earlier and not settings.overwrite:
        names = ", ".join(os.path.basename(p) for p in earlier[:3])
        more = ", ..." if len(earlier) > 3 else ""
        raise UserError(
            f"{out_dir} holds another evaluation saved as "
            f"{settings.save_name!r} ({names}{more}): pass --overwrite to "
            "replace it, or choose another --save_name or --bonus_dir"
        )
    return earlier


def evaluate_checkpoint(settings: AdvEvalSettings) -> None:
    """What eval_and_make_adv.py does: checks the flags and the output
    folder, evaluates the checkpoint's model on each source, then writes
    every source's results (and examples), the results file (and with
    --test_path the transfer table) as one set (write_outputs)."""
    out_dir = output_folder(settings)
    check_outputs(settings, out_dir)
    # The flags alone, before anything is loaded (with --dataset, the
    # class count is known already).
    attack_config(
        settings,
        data.n_classes(settings.dataset) if settings.dataset else None,
    )
    checkpoint, spec = load_model(settings)
    network = choose_network(settings, checkpoint, spec)
    attack = attack_config(settings, spec.n_classes)
    sources = load_sources(settings, spec)
    # Only once every input has been checked, so that errors stay one line.
    for line in model_warnings(settings, checkpoint):
        utils.warn(line)

    eval_step = evaluation.make_eval_step(attack)
    rows, contents = [], {}
    for index, source in enumerate(sources):
        paths = output_paths(out_dir, settings.save_name, index, len(sources))
        row, outputs = _evaluate_source_row(
            settings, (network, attack, eval_step), source, paths
        )
        rows.append(row)
        contents.update(outputs)
        print(summary_line(row))

    record = run_record(settings, spec, network, attack, rows)
    summaries = layout.eval_summaries(out_dir, settings.save_name)
    if settings.test_path:
        contents[summaries["transfer"]] = transfer_record(record)
    contents[summaries["results"]] = record  # last: marks the set whole
    write_outputs(settings, out_dir, contents)
    if settings.test_path:
        print(transfer_table(rows))


def write_outputs(
    settings: AdvEvalSettings, out_dir: str, contents: dict[str, object]
) -> None:
    """Writes `contents` ({path: a pickle's dict, or a JSON file's record
    for .json paths}) as one set (atomic.write_file_set): the folder is
    made only now, nothing is written when Ctrl-C came (the run ends
    `interrupted`), and with --overwrite the earlier evaluation's files
    that this one does not write are removed."""
    # Again: another run may have written there meanwhile.
    earlier = check_outputs(settings, out_dir)
    if os.path.isdir(out_dir):
        atomic.remove_stale_temp_files(out_dir)
    writers = {
        path: (
            atomic.json_writer(content)
            if path.endswith(".json")
            else atomic.pickle_writer(content)
        )
        for path, content in contents.items()
    }
    atomic.write_file_set(
        out_dir,
        writers,
        remove=earlier,
        before_commit=utils.raise_if_interrupted,
    )
    if earlier:
        print(
            f"--overwrite: replaced the {len(earlier)} file(s) of the "
            f"earlier evaluation saved as {settings.save_name!r}"
        )


def _evaluate_source_row(
    settings: AdvEvalSettings,
    evaluated: tuple[models.Network, evaluation.Attack, Callable],
    source: tuple[str, np.ndarray, np.ndarray],
    paths: dict[str, str],
) -> tuple[dict, dict[str, object]]:
    """Evaluates (network, attack, eval_step) `evaluated` on one source;
    returns its row of the results file and its files' contents
    (source_outputs)."""
    network, attack, eval_step = evaluated
    started = time.perf_counter()
    result, images, labels = evaluate_source(
        settings, network, attack, eval_step, source
    )
    row = {
        "source": source[0],
        "n": result.n,
        "acc_clean": result.acc_clean,
        "acc_dirty": result.acc_dirty,
        "seconds": time.perf_counter() - started,
    }
    if result.broken_by is not None:
        row["broken_by"] = attacks.count_codes(result.broken_by)
    written, outputs = source_outputs(settings, paths, result, images, labels)
    row.update(written)
    return row, outputs
