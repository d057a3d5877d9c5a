"""Clean and PGD-L∞ accuracy of a checkpoint; adversarial examples; transfer.

    python3 eval_and_make_adv.py --model_path RUN/parameters_final.pkl \
        --linear --centering --save_examples --bonus_dir test_results

evaluates the model of a checkpoint on the test set, clean and under PGD-L∞
(eps --eps/255, --pgd_iters steps of 2·eps/--pgd_iters, random start), and
writes in `{dirname(model_path)}/{bonus_dir}/`:

- `test_results_{save_name}.pkl`: {'acc_clean', 'acc_dirty',
  'predictions_clean', 'predictions_dirty', 'components_clean',
  'components_dirty'}; components are {'f': (N, K), 'df': (N, K)} float32
  with logits f + df (centered: df). With --no_adv no attack runs and, as
  in the original, the *_dirty entries are the clean ones.
- `adv_examples_{save_name}.pkl` (--save_examples): {'images' float32
  (N, C, H, W) in [0, 1], 'labels' int32 (N,)}: the adversarial images, or
  with --no_adv the clean ones.
- `results_{save_name}.json`: accuracies, the model and attack evaluated,
  the flags and the software environment.

Without --linear the network at `params` is evaluated (f = its logits,
df = 0), or with --centering f(x; params) − f(x; lin_params) as the original
(for --do_standard_second checkpoints: the trained network minus θ(t));
with --linear the linearization around `params`, at `lin_params` (centered
with --centering).

--test_path F1 [F2 ...] (or '', the original's default: the test set)
evaluates on example files (as written by
--save_examples) instead of the test set and also writes
`transfer_{save_name}.json`, a table of clean and robust accuracy per file.
With several files the per-file outputs get the suffix `_{i}` (i = the
file's position on the command line).
"""

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

import attacks
import cli
import data
import models
import utils
from store import atomic, provenance
from training import evaluation

SHORT_BATCHES = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's flags (the original's, then ours)."""
    parser = cli.ArgumentParser(
        description="Clean and PGD-Linf accuracy of a checkpoint, "
        "adversarial examples and transfer tests."
    )
    parser.add_argument(
        "--model_path",
        required=True,
        help="checkpoint (parameters_*.pkl) to evaluate",
    )
    parser.add_argument(
        "--save_name",
        default="test_results",
        help="suffix of the output file names",
    )
    parser.add_argument(
        "--linear",
        action="store_true",
        help="evaluate the linearization around params, at "
        "lin_params (else the network at params)",
    )
    parser.add_argument(
        "--centering",
        action="store_true",
        help="with --linear: the centered linearization; without: "
        "f(x; params) - f(x; lin_params)",
    )
    parser.add_argument(
        "--test_path",
        nargs="+",
        default=None,
        help="example files {images (N,C,H,W), labels} to "
        "evaluate on instead of the test set ('': the test set)",
    )
    parser.add_argument(
        "--bonus_dir",
        default=".",
        help="output folder, relative to the model's",
    )
    parser.add_argument(
        "--no_adv",
        action="store_true",
        help="clean accuracy only, no attack (dirty = clean)",
    )
    parser.add_argument(
        "--save_examples",
        action="store_true",
        help="write the adversarial examples (with --no_adv: the clean "
        "images)",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"only the first {SHORT_BATCHES} batches",
    )
    cli.add_seed_flag(parser, "seed of the attack and of --test_size")
    cli.add_data_flags(parser)
    cli.add_model_flags(parser)
    cli.add_eps_flag(parser)
    parser.add_argument(
        "--test_size",
        type=cli.positive_int,
        default=None,
        help="class-balanced subset of each test source (default: all)",
    )
    parser.add_argument("--batch_size", type=cli.positive_int, default=100)
    parser.add_argument(
        "--pgd_iters",
        type=cli.positive_int,
        default=100,
        help="PGD steps (step size 2 eps / pgd_iters)",
    )
    parser.add_argument(
        "--attack_loss",
        default="ce",
        choices=sorted(attacks.LOSSES),
        help="loss PGD maximises: cross-entropy or margin",
    )
    parser.add_argument(
        "--restarts",
        type=cli.positive_int,
        default=1,
        help="random starts per example; the worst counts",
    )
    cli.add_progress_flag(parser)
    args = parser.parse_args(argv)
    if args.test_path is not None and all(p == "" for p in args.test_path):
        args.test_path = None  # the original's default: the test set
    return args


def load_model(
    args: argparse.Namespace,
) -> tuple[dict, models.ModelSpec]:
    """The checkpoint and its ModelSpec, checked against each other.

    Returns:
        (checkpoint {'params', 'lin_params', 'net_state', 'meta'}, spec).
    """
    return models.load_checkpoint(
        args.model_path,
        model=args.model,
        width=args.width,
        dataset=args.dataset,
    )


def choose_network(
    args: argparse.Namespace, checkpoint: dict, spec: models.ModelSpec
) -> models.Network:
    """What the flags evaluate, as the original does: with --linear the
    linearization around params at lin_params (centered with
    --centering); without, the network at params, or with --centering
    f(x; params) − f(x; lin_params)."""
    apply_fn, state = spec.build().apply, checkpoint["net_state"]
    params, lin_params = checkpoint["params"], checkpoint["lin_params"]
    if args.linear:
        dynamics = models.Dynamics(linear=True, centering=args.centering)
        return models.Network(apply_fn, dynamics, params, lin_params, state)
    if args.centering:
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


def model_warnings(args: argparse.Namespace, checkpoint: dict) -> list[str]:
    """Lines saying where the flags and the checkpoint do not fit."""
    meta, path = checkpoint["meta"], args.model_path
    same = utils.tree_equal(checkpoint["params"], checkpoint["lin_params"])
    lines = []
    if args.centering and not args.linear and same:
        lines.append(
            f"lin_params equal params in {path}: --centering without "
            "--linear evaluates f(x; params) - f(x; lin_params), all zero"
        )
    if args.linear and same:
        lines.append(
            f"lin_params equal params in {path} (no phase 2?): --linear "
            "evaluates the linearization at its expansion point, i.e. the "
            "network at params"
            + (" minus itself: all-zero logits" if args.centering else "")
        )
    if args.linear and _recorded_false(meta, "linear") and not same:
        lines.append(
            f"{path} trained lin_params with standard dynamics "
            "(--do_standard_second): --linear evaluates their "
            "linearization around params, not the trained model"
        )
    if (
        args.linear
        and meta.get("linear")
        and not same
        and meta.get("centering") is not None
        and bool(meta["centering"]) != args.centering
    ):
        lines.append(
            f"{path} was trained with centering="
            f"{bool(meta['centering'])} but --centering is "
            f"{'on' if args.centering else 'off'}"
        )
    if not args.linear and not args.centering and not same:
        lines.append(
            f"lin_params of {path} differ from params but are "
            "not used: evaluating the network at params (--linear "
            "evaluates lin_params)"
        )
    return lines


def _recorded_false(meta: dict, key: str) -> bool:
    """Whether `meta` records `key` and it is false (NumPy bools too)."""
    return meta.get(key) is not None and not meta[key]


def attack_config(args: argparse.Namespace) -> attacks.AttackConfig | None:
    """The PGD-L∞ attack of the flags, or None with --no_adv."""
    if args.no_adv:
        return None
    return dataclasses.replace(
        attacks.eval_linf(args.eps, args.pgd_iters),
        loss=args.attack_loss,
        restarts=args.restarts,
    )


def load_sources(
    args: argparse.Namespace, spec: models.ModelSpec
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The test sources: [(name, images (N, H, W, C), labels (N,))].

    The test set, or each --test_path file; --test_size takes the same
    class-balanced subset of each.
    """
    if args.test_path:
        sources = [
            (
                path,
                *evaluation.load_examples(
                    path,
                    data.get_dataset(spec.dataset).image_shape,
                    spec.n_classes,
                ),
            )
            for path in args.test_path
        ]
    else:
        images, labels = data.load_split(
            spec.dataset, args.data_path, train=False
        )
        sources = [(f"{spec.dataset} test set", images, labels)]
    return [
        (name, *data.subset(images, labels, args.test_size, args.random_seed))
        for name, images, labels in sources
    ]


def output_paths(
    out_dir: str, save_name: str, index: int, count: int
) -> dict[str, str]:
    """{'results', 'examples'} pickle paths of source `index` of `count`."""
    suffix = save_name if count == 1 else f"{save_name}_{index}"
    return {
        "results": os.path.join(out_dir, f"test_results_{suffix}.pkl"),
        "examples": os.path.join(out_dir, f"adv_examples_{suffix}.pkl"),
    }


def evaluate_source(
    args: argparse.Namespace,
    network: models.Network,
    attack: attacks.AttackConfig | None,
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
        batch_size=args.batch_size,
        seed=args.random_seed,
        max_batches=SHORT_BATCHES if args.short else None,
        keep_examples=args.save_examples and attack is not None,
        progress=not args.no_progress,
        desc=os.path.basename(name),
    )
    return result, images[: result.n], labels[: result.n]


def write_source_outputs(
    args: argparse.Namespace,
    paths: dict[str, str],
    result: evaluation.EvalResult,
    images: np.ndarray,
    labels: np.ndarray,
) -> dict[str, str]:
    """Writes the results pickle (and with --save_examples the examples:
    adversarial, or with --no_adv the clean images, as the original);
    returns the files written."""
    atomic.atomic_pickle(paths["results"], evaluation.results_record(result))
    written = {"results_file": paths["results"]}
    if args.save_examples:
        examples = images if result.adv_images is None else result.adv_images
        atomic.atomic_pickle(
            paths["examples"], evaluation.examples_record(examples, labels)
        )
        written["examples_file"] = paths["examples"]
    return written


def attack_record(
    attack: attacks.AttackConfig | None, args: argparse.Namespace
) -> dict | None:
    """The attack that ran, for the results files (None with --no_adv)."""
    if attack is None:
        return None
    return dict(
        attack.kwargs(),
        eps_255=args.eps,
        seed=args.random_seed,
        random_start=True,
        keys="fold_in(PRNGKey(seed), batch index)",
    )


def run_record(
    args: argparse.Namespace,
    spec: models.ModelSpec,
    network: models.Network,
    attack: attacks.AttackConfig | None,
    rows: list[dict],
) -> dict:
    """The `results_{save_name}.json` content."""
    return {
        "model_path": args.model_path,
        "model": spec.as_meta(),
        "evaluated": describe_network(network),
        "attack": attack_record(attack, args),
        "test": {
            "batch_size": args.batch_size,
            "test_size": args.test_size,
            "short": args.short,
            "max_batches": SHORT_BATCHES if args.short else None,
        },
        "sources": rows,
        "flags": vars(args),
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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    checkpoint, spec = load_model(args)
    network = choose_network(args, checkpoint, spec)
    attack = attack_config(args)
    sources = load_sources(args, spec)
    out_dir = atomic.ensure_writable_dir(
        os.path.join(os.path.dirname(args.model_path), args.bonus_dir)
    )
    atomic.remove_stale_temp_files(out_dir)
    # Only once every input has been checked, so that errors stay one line.
    for line in model_warnings(args, checkpoint):
        utils.warn(line)

    eval_step = evaluation.make_eval_step(attack)
    rows = []
    for index, source in enumerate(sources):
        started = time.perf_counter()
        result, images, labels = evaluate_source(
            args, network, attack, eval_step, source
        )
        paths = output_paths(out_dir, args.save_name, index, len(sources))
        row = {
            "source": source[0],
            "n": result.n,
            "acc_clean": result.acc_clean,
            "acc_dirty": result.acc_dirty,
            "seconds": time.perf_counter() - started,
        }
        row.update(write_source_outputs(args, paths, result, images, labels))
        rows.append(row)
        print(summary_line(row))

    record = run_record(args, spec, network, attack, rows)
    atomic.atomic_write_json(
        os.path.join(out_dir, f"results_{args.save_name}.json"), record
    )
    if args.test_path:
        atomic.atomic_write_json(
            os.path.join(out_dir, f"transfer_{args.save_name}.json"),
            transfer_record(record),
        )
        print(transfer_table(rows))


if __name__ == "__main__":
    cli.run_cli(main)
