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

The flags are cli/eval_and_make_adv.py's; the work is training/adv_eval.py's.
"""

from collections.abc import Sequence

import cli
import utils
from cli.eval_and_make_adv import parse_args, settings
from training import adv_eval


def main(argv: Sequence[str] | None = None) -> None:
    settings_ = settings(parse_args(argv))
    # Ctrl-C ends the run between batches, with nothing written.
    with utils.deferred_interrupts():
        adv_eval.evaluate_checkpoint(settings_)


if __name__ == "__main__":
    cli.run_cli(main)
