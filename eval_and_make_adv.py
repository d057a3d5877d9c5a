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

--attack autoattack (or apgd-ce, apgd-t, fab-t, square) replaces PGD by the
parameter-free attacks of attacks/ at the same radius; --attack_budget sets
their iterations, restarts and queries. The test results then also hold
'broken_by', per example the attack that broke it first, and the results
JSON counts them per source.
With several files the per-file outputs get the suffix `_{i}` (i = the
file's position on the command line).

Everything is checked before anything is loaded or attacked: --save_name is
a plain file-name prefix, the attack budget fits the attack and the model,
and an output folder that holds another evaluation saved under --save_name
is refused unless --overwrite (which replaces that evaluation's files, all
of them). The outputs are written as one set once every source is
evaluated, and the output folder is made only then; Ctrl-C ends the run
between batches with `interrupted` (exit status 130) and nothing written.
"""

import argparse
from collections.abc import Sequence

import attacks
import cli
import utils
from store import layout
from training import adv_eval


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
    args = parser.parse_args(argv)
    if args.test_path is not None and all(p == "" for p in args.test_path):
        args.test_path = None  # the original's default: the test set
    return args


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
    cli.add_attack_flags(parser, "the robust accuracy")
    parser.add_argument(
        "--attack_norm",
        default="linf",
        choices=("linf", "l2"),
        help="norm of the attack: linf (radius --eps/255) or l2 (radius "
        "0.25, the paper's L2 evaluation)",
    )
    cli.add_progress_flag(parser)


def main(argv: Sequence[str] | None = None) -> None:
    settings = adv_eval.AdvEvalSettings.from_args(parse_args(argv))
    # Ctrl-C ends the run between batches, with nothing written.
    with utils.deferred_interrupts():
        adv_eval.evaluate_checkpoint(settings)


if __name__ == "__main__":
    cli.run_cli(main)
