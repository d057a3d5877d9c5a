"""Measures kernel files of calculate_kernel.py and how the kernel moves.

Distances between kernels, velocities and polar trajectories over a run's
epochs, spectra, alignment with the labels and kernel regression accuracy
(analysis/kernel_analysis.py has the formulas), as CSV tables, one JSON
file and seaborn figures in --out_dir (analysis/pipeline.py does the
work; this script parses and checks the flags, into its AnalysisSettings).

    python analyze_kernels.py run/kernels --out_dir run/analysis
    python analyze_kernels.py runs/CC/kernels runs/AC/kernels \\
        --out_dir runs/analysis --compare runs/CC/kernels runs/AC/kernels
    python analyze_kernels.py --out_dir seeds/analysis \\
        --replicates s0/CC/kernels s1/CC/kernels s2/CC/kernels \\
        --replicates s0/AC/kernels s1/AC/kernels s2/AC/kernels
"""

import argparse
from collections.abc import Sequence

import threadpoolctl

import cli
from analysis import kernel_analysis, pipeline
from store import layout
from utils import UserError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="KERNEL_FILE_OR_DIR",
        help="kernel files, or folders searched (with their subfolders) "
        "for kernel files",
    )
    parser.add_argument(
        "--out_dir", required=True, help="folder of the tables and figures"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        default=None,
        help="two folders of kernels over the same epochs (benign and "
        "adversarial, say): their distance at each epoch; their kernels "
        "are analysed too",
    )
    parser.add_argument(
        "--replicates",
        nargs="+",
        action="append",
        metavar="RUN",
        default=None,
        help="two or more folders of kernels of runs that differ only in "
        "their seed, on the same images (repeat the flag for each group): "
        "each kernel's mean distance to the same class and epoch of the "
        "other runs, the distance_between_seeds column and "
        f"{layout.REPLICATES_CSV}; their kernels are analysed too",
    )
    parser.add_argument(
        "--settle_fraction",
        type=cli.number(float, 0, 1),
        default=kernel_analysis.DEFAULT_SETTLE_FRACTION,
        help="a series has settled at the first epoch after which every "
        "kernel is within this fraction of the first kernel's distance to "
        "the last (settle_t; default "
        f"{kernel_analysis.DEFAULT_SETTLE_FRACTION:g})",
    )
    parser.add_argument(
        "--top_k",
        type=cli.positive_int,
        nargs="+",
        default=list(kernel_analysis.DEFAULT_TOP_K),
        help="k of the top-k eigenvalue mass and label energy columns",
    )
    parser.add_argument(
        "--polar_k",
        type=cli.positive_int,
        default=kernel_analysis.DEFAULT_POLAR_K,
        help="top eigenvectors of the last kernel for the polar projections",
    )
    cli.add_seed_flag(
        parser, "seed of the split that chooses kernel regression's ridge"
    )
    parser.add_argument(
        "--no_figures", action="store_true", help="tables and JSON only"
    )
    parser.add_argument(
        "--blas_threads",
        type=cli.positive_int,
        default=1,
        help="threads of NumPy's linear algebra (default 1: N×N kernels of "
        "a few thousand images gain little from more, and several threads "
        "slow down many times over on a CPU shared with other jobs)",
    )
    cli.add_progress_flag(parser)
    return parser.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    """Raises UserError unless the flags name kernels to analyse, and
    every --replicates group two or more folders."""
    if not args.inputs and not args.compare and not args.replicates:
        raise UserError(
            "no kernels given: pass kernel files or folders, --compare "
            "RUN_A RUN_B or --replicates RUN RUN ..."
        )
    for group in args.replicates or []:
        if len(group) < 2:
            raise UserError(
                f"--replicates {group[0]}: give two or more folders of runs "
                "that differ only in their seed"
            )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with threadpoolctl.threadpool_limits(args.blas_threads, user_api="blas"):
        check_flags(args)
        pipeline.analyse(cli.settings(pipeline.AnalysisSettings, args))


if __name__ == "__main__":
    cli.run_cli(main)
