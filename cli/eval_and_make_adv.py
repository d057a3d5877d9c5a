"""eval_and_make_adv.py's command line: its flags (the original's, then
ours) and the `training.adv_eval.AdvEvalSettings` they make. sweep.py
parses its cells' commands with the same parser."""

import argparse
from collections.abc import Sequence

import attacks
import cli
from store import layout
from training import adv_eval


def parser() -> cli.ArgumentParser:
    """eval_and_make_adv.py's parser: the original's flags, then ours."""
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
        type=cli.file_prefix,
        default=layout.EVAL_SAVE_NAME,
        help="suffix of the output file names (a plain name: --bonus_dir "
        "chooses the folder)",
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
        "--overwrite",
        action="store_true",
        help="replace the evaluation saved in the output folder under "
        "--save_name (its files, all of them); without it, such a folder "
        "is refused",
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"only the first {adv_eval.SHORT_BATCHES} batches",
    )
    _add_data_and_attack_flags(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """eval_and_make_adv.py's flags of `argv` (default: the command
    line's); --test_path '' is the test set (None), as the original's."""
    args = parser().parse_args(argv)
    if args.test_path is not None and all(p == "" for p in args.test_path):
        args.test_path = None  # the original's default: the test set
    return args


def settings(args: argparse.Namespace) -> adv_eval.AdvEvalSettings:
    """The AdvEvalSettings of eval_and_make_adv.py's parsed flags."""
    return cli.settings(adv_eval.AdvEvalSettings, args)


def _add_data_and_attack_flags(parser: argparse.ArgumentParser) -> None:
    """The seed, data, model, test-set and attack flags."""
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
        default=attacks.EVAL_ITERS,
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
    cli.add_attack_flags(parser, "the robust accuracy")
    parser.add_argument(
        "--attack_norm",
        default=attacks.LINF.name,
        choices=tuple(attacks.EVAL_ATTACKS),
        help="norm of the attack: linf (radius --eps/255) or l2 (radius "
        "0.25, the paper's L2 evaluation)",
    )
    cli.add_progress_flag(parser)
