"""calculate_kernel.py's command line: its flags and the
`ntk.compute.KernelSettings` they make. sweep.py parses its cells'
commands with the same parser."""

import argparse
from collections.abc import Sequence

import cli
from ntk import compute, kernel_files, kernels
from store import layout

DESCRIPTION = (
    "Empirical NTK of checkpoints on a class-balanced training subset."
)


def parser() -> cli.ArgumentParser:
    """calculate_kernel.py's parser."""
    parser = cli.ArgumentParser(description=DESCRIPTION)
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
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """calculate_kernel.py's flags of `argv` (default: the command
    line's)."""
    return parser().parse_args(argv)


def settings(args: argparse.Namespace) -> compute.KernelSettings:
    """The KernelSettings of calculate_kernel.py's parsed flags."""
    return cli.settings(compute.KernelSettings, args)
