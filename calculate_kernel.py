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
without .pkl. The work is ntk/compute.py's; this script parses the flags.

    python calculate_kernel.py --model_path saved_models/parameters_final.pkl \
        --dataset_size 500 --class_index all --show_progress
    python calculate_kernel.py --model_path run/*checkpoint_*.pkl \
        --bonus_dir kernels/{name} --class_index all --test_size 500
"""

import argparse
from collections.abc import Sequence

import cli
from ntk import compute, kernel_files, kernels
from store import layout


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model_path",
        required=True,
        nargs="+",
        help="checkpoint(s) (.pkl) to take the kernel of; several are "
        "computed in one process",
    )
    parser.add_argument(
        "--dataset_size",
        type=cli.positive_int,
        default=500,
        help="images N, a multiple of the number of classes",
    )
    parser.add_argument(
        "--save_name",
        type=cli.file_prefix,
        default=layout.KERNEL_SAVE_NAME,
        help="prefix of the output file names (a plain name: --bonus_dir "
        "chooses the folder)",
    )
    parser.add_argument(
        "--class_index",
        type=kernel_files.parse_class_index,
        default=kernel_files.COMBINED,
        help="logit c, -1 for the mean over logits, or 'all' "
        "for one file per class",
    )
    parser.add_argument(
        "--show_progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over blocks (default: when stderr is a terminal)",
    )
    cli.add_model_flags(parser)
    cli.add_data_flags(parser)
    parser.add_argument(
        "--bonus_dir",
        default=".",
        help="output subfolder of the checkpoint's folder; {name} stands "
        "for the checkpoint's file name without .pkl",
    )
    parser.add_argument(
        "--test_size",
        type=cli.positive_int,
        default=None,
        help="also the cross kernel K(test, train) of a class-balanced "
        "subset of this many test images (a multiple of the classes)",
    )
    cli.add_seed_flag(parser, "seed of the subset's choice")
    parser.add_argument(
        "--use_linear_params",
        action="store_true",
        help="the kernel at lin_params instead of params",
    )
    parser.add_argument(
        "--implementation",
        choices=kernels.IMPLEMENTATIONS,
        default=kernels.DEFAULT_IMPLEMENTATION,
        help="how blocks are computed (see ntk/kernels.py)",
    )
    parser.add_argument(
        "--block_size",
        type=cli.positive_int,
        default=None,
        help="images per block (default: the least modelled "
        "work within --memory_gb; 4 for ntvp)",
    )
    parser.add_argument(
        "--memory_gb",
        type=cli.positive_float,
        default=kernels.DEFAULT_MEMORY_GB,
        help="GiB the blocks' Jacobians may take (modelled peak)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    compute.compute_kernels(parse_args(argv))


if __name__ == "__main__":
    cli.run_cli(main)
