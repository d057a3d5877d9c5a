r"""Images whose parameter gradient aligns with a class's NTK eigenfeatures.

Reads a per-class kernel written by calculate_kernel.py (or by the original
code, whose images are then recomputed with the original's rule and
--random_seed) and the checkpoint it was computed from, and writes, in
{dirname(model_path)}/{bonus_dir}/, `{save_name}_class_{c}_{N}.pkl` (images
and the numbers behind them; see `features.FeatureImages.as_record`) and a
PNG grid of the same name. Before the loop it warns (one `warning:` line)
when most pixels of the start image cannot move. analysis/visualize.py
does the work; this script parses the flags into its FeatureSettings.

    python visualize_ntk_features.py --class_index 3 --dataset_size 500 \
        --model_path saved_models/parameters_final.pkl
"""

import argparse
from collections.abc import Sequence

import cli
from analysis import features, visualize
from store import layout
from utils import UserError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    _add_kernel_flags(parser)
    _add_image_flags(parser)
    cli.add_model_flags(parser)
    cli.add_data_flags(parser)
    parser.add_argument(
        "--bonus_dir",
        default=".",
        help="output subfolder of the checkpoint's folder",
    )
    cli.add_seed_flag(
        parser,
        "for a kernel file of the original code (no 'indices'): the seed "
        "its images were chosen with",
    )
    parser.add_argument(
        "--use_linear_params",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use lin_params instead of params (default: as "
        "the kernel file records, else params)",
    )
    parser.add_argument(
        "--batch_size",
        type=cli.positive_int,
        default=100,
        help="images per vector-Jacobian product",
    )
    return parser.parse_args(argv)


def _add_kernel_flags(parser: argparse.ArgumentParser) -> None:
    """--model_path, --dataset_size, --save_name, --class_index and
    --kernel_path: the kernel and the checkpoint, and the output's name."""
    parser.add_argument(
        "--model_path",
        required=True,
        help="checkpoint whose kernel was computed",
    )
    parser.add_argument(
        "--dataset_size",
        type=cli.positive_int,
        default=500,
        help="number of images N of the kernel",
    )
    parser.add_argument(
        "--save_name",
        type=cli.file_prefix,
        default=layout.FEATURES_SAVE_NAME,
        help="prefix of the output file names (a plain name: --bonus_dir "
        "chooses the folder)",
    )
    parser.add_argument(
        "--class_index",
        type=cli.nonnegative_int,
        required=True,
        help="the logit c of the kernel",
    )
    default_name = layout.kernel_file(layout.KERNEL_SAVE_NAME, "{c}", "{N}")
    parser.add_argument(
        "--kernel_path",
        default=None,
        help=f"kernel file (default: calculate_kernel.py's {default_name} "
        "in the output folder)",
    )


def _add_image_flags(parser: argparse.ArgumentParser) -> None:
    """--n_images, --steps, --step_size and --start: the images made."""
    parser.add_argument(
        "--n_images",
        type=cli.positive_int,
        default=3,
        help="eigenvectors to visualise, largest first",
    )
    parser.add_argument(
        "--steps",
        type=cli.nonnegative_int,
        default=600,
        help="signed-gradient steps per image",
    )
    parser.add_argument(
        "--step_size",
        type=cli.nonnegative_float,
        default=0.001,
        help="per-pixel step, pixels in [0, 1]",
    )
    parser.add_argument(
        "--start",
        type=_start,
        default=features.Start(),
        help="start image: grey (every pixel 0.5, the original's), mean (the "
        "mean of the kernel's images) or constant:V with V in [0, 1]",
    )


def _start(text: str) -> features.Start:
    """The --start type: features.parse_start, its error argparse's."""
    try:
        return features.parse_start(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    visualize.visualize(cli.settings(visualize.FeatureSettings, args))


if __name__ == "__main__":
    cli.run_cli(main)
