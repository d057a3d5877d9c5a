r"""Empirical NTK of checkpoints on a class-balanced training subset.

Batch norm in eval mode (running statistics frozen). The images are the
original's class-balanced subset of the training split
(data.balanced_subset_indices). Writes, in {dirname(model_path)}/
{bonus_dir}/, `{save_name}_{N}.pkl` for the mean over logits
(--class_index -1, as the original) or `{save_name}_class_{c}_{N}.pkl` per
class (--class_index c, or all); ntk/kernel_files.py describes their keys.
With --test_size M each file also holds the cross kernel K(test, train) of
a class-balanced subset of M test images. Several --model_path values are
computed in one process, with the data loaded and the functions compiled
once; `{name}` in --bonus_dir stands for each checkpoint's file name
without .pkl. The flags are cli/calculate_kernel.py's; the work is
ntk/compute.py's.

    python calculate_kernel.py --model_path saved_models/parameters_final.pkl \
        --dataset_size 500 --class_index all --show_progress
    python calculate_kernel.py --model_path run/*checkpoint_*.pkl \
        --bonus_dir kernels/{name} --class_index all --test_size 500
"""

from collections.abc import Sequence

import cli
from cli.calculate_kernel import parse_args, settings
from ntk import compute


def main(argv: Sequence[str] | None = None) -> None:
    compute.compute_kernels(settings(parse_args(argv)))


if __name__ == "__main__":
    cli.run_cli(main)
