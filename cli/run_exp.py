"""run_exp.py's command line: its flags (the original's, then ours) and
the `training.experiment.RunSettings` they make. sweep.py parses its
cells' commands with the same parser."""

import argparse
from collections.abc import Sequence

import attacks
import cli
from store import layout
from training import experiment

DESCRIPTION = (
    "Phase 1 (standard training), then phase 2 (training with the kernel "
    "of\nθ(t) frozen), then clean and PGD test accuracies. See "
    "docs/run_exp.md."
)


def parser() -> cli.ArgumentParser:
    """run_exp.py's parser: the original's flags, then ours."""
    p = cli.ArgumentParser(description=DESCRIPTION)
    _add_original_flags(p)
    _add_our_flags(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """run_exp.py's flags of `argv` (default: the command line's), with
    --order_seed defaulting to --random_seed's value."""
    args = parser().parse_args(argv)
    if args.order_seed is None:
        args.order_seed = args.random_seed
    return args


def settings(args: argparse.Namespace) -> experiment.RunSettings:
    """The RunSettings of run_exp.py's parsed flags."""
    return cli.settings(experiment.RunSettings, args)


def _add_original_flags(p: argparse.ArgumentParser) -> None:
    """The original's flags, with its defaults."""
    p.add_argument(
        "--standard_epochs",
        type=cli.nonnegative_int,
        default=100,
        help="phase-1 epochs (default 100)",
    )
    p.add_argument(
        "--linear_epochs",
        type=cli.nonnegative_int,
        default=100,
        help="phase-2 epochs (default 100; 0 skips phase 2)",
    )
    p.add_argument(
        "--centering",
        action="store_true",
        help="phase 2 trains the centered linearization J(θ−θ(t))",
    )
    p.add_argument(
        "--save_models",
        action="store_true",
        help=f"write {layout.FINAL}",
    )
    p.add_argument(
        "--constant_save",
        action="store_true",
        help="checkpoint every phase-1 epoch and at epochs 0.125, "
        "0.25, 0.375, 0.5, 0.75, 1.5, 2.5",
    )
    p.add_argument(
        "--constant_save_linear",
        action="store_true",
        help="checkpoint every phase-2 epoch",
    )
    p.add_argument(
        "--loose_bn_second",
        action="store_true",
        help="batch norm in training mode during phase 2",
    )
    p.add_argument(
        "--do_standard_second",
        action="store_true",
        help="phase 2 trains the network itself, not its linearization",
    )
    p.add_argument(
        "--skip_first_test",
        action="store_true",
        help="no evaluation after phase 1",
    )
    p.add_argument(
        "--skip_second_test",
        action="store_true",
        help="no evaluation after phase 2",
    )
    cli.add_seed_flag(p, "initialisation, subsets, attacks; see --order_seed")

    p.add_argument(
        "--base_model_path",
        default="",
        help="checkpoint holding θ(t); phase 1 is skipped",
    )
    p.add_argument(
        "--loaders",
        default="CC",
        help="two letters, phase 1 then phase 2: C benign, "
        "A adversarial, F benign then adversarial from "
        "epoch 50 (default CC)",
    )
    p.add_argument(
        "--second_lr",
        type=cli.positive_float,
        default=0.01,
        help="phase-2 learning rate (default 0.01)",
    )
    cli.add_eps_flag(p)
    p.add_argument("--save_path", default="./saved_models/")
    cli.add_model_flags(p)
    cli.add_data_flags(p)


def _add_our_flags(p: argparse.ArgumentParser) -> None:
    """The flags this reimplementation adds."""
    p.add_argument(
        "--train_size",
        type=cli.positive_int,
        default=None,
        help="class-balanced training subset (default all)",
    )
    p.add_argument(
        "--test_size",
        type=cli.positive_int,
        default=None,
        help="class-balanced test subset (default all)",
    )
    cli.add_order_seed_flag(
        p,
        "seed of the data order and of the training attacks' random starts "
        "in both phases; the initialisation and the subsets stay "
        "--random_seed's",
    )
    p.add_argument("--batch_size", type=cli.positive_int, default=128)
    p.add_argument(
        "--train_pgd_iters",
        type=cli.positive_int,
        default=attacks.TRAIN_ITERS,
    )
    p.add_argument(
        "--eval_pgd_iters", type=cli.positive_int, default=attacks.EVAL_ITERS
    )
    p.add_argument(
        "--eval_attacks",
        default=",".join(attacks.EVAL_ATTACKS),
        help="comma-separated subset of "
        f"{','.join(attacks.EVAL_ATTACKS)}; empty: clean accuracy only",
    )
    cli.add_attack_flags(
        p,
        "an extra evaluation after each phase, L∞ at --eps, recorded "
        "under its own name beside PGD's",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --save_path",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run files in --save_path with a new run",
    )
    p.add_argument(
        "--state_every",
        type=cli.positive_int,
        default=100,
        help="save the resume state every N batches (and at every epoch end)",
    )
    cli.add_progress_flag(p)
