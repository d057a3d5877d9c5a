r"""Empirical NTK of a checkpoint on a class-balanced training subset.

Batch norm in eval mode (running statistics frozen). The images are the
original's class-balanced subset of the training split
(data.balanced_subset_indices). Writes, in {dirname(model_path)}/
{bonus_dir}/, `{save_name}_{N}.pkl` for the mean over logits
(--class_index -1, as the original) or `{save_name}_class_{c}_{N}.pkl` per
class (--class_index c, or all); kernel_files.py describes their keys.

    python calculate_kernel.py --model_path saved_models/parameters_final.pkl \
        --dataset_size 500 --class_index all --show_progress
"""

import argparse
import os
import sys
import time

import numpy as np

import cli
import data
import kernel_files
import kernels
import models
import utils
from utils import UserError


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model_path",
        required=True,
        help="checkpoint (.pkl) to take the kernel of",
    )
    parser.add_argument(
        "--dataset_size",
        type=cli.positive_int,
        default=500,
        help="images N, a multiple of the number of classes",
    )
    parser.add_argument(
        "--save_name",
        default=kernel_files.DEFAULT_SAVE_NAME,
        help="prefix of the output file names",
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
        help="output subfolder of the checkpoint's folder",
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
        help="how blocks are computed (see kernels.py)",
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


def main(argv=None):
    args = parse_args(argv)
    checkpoint, spec = models.load_checkpoint(
        args.model_path,
        model=args.model,
        width=args.width,
        dataset=args.dataset,
    )
    kernels.kernel_classes(args.class_index, spec.n_classes)
    out_dir = utils.output_dir(args.model_path, args.bonus_dir)
    images, labels, indices = _subset(args, spec)
    params = checkpoint["lin_params" if args.use_linear_params else "params"]
    utils.ensure_writable_dir(out_dir)

    started = time.perf_counter()
    kernel = kernels.empirical_ntk(
        spec.build().apply,
        params,
        checkpoint["net_state"],
        images,
        args.class_index,
        implementation=args.implementation,
        block_size=args.block_size,
        memory_gb=args.memory_gb,
        show_progress=_show_progress(args.show_progress),
        log=print,
    )
    seconds = time.perf_counter() - started

    paths = kernel_files.write(
        out_dir,
        args.save_name,
        args.class_index,
        kernel,
        labels,
        indices,
        n_logits=spec.n_classes,
        epoch=kernel_files.checkpoint_epoch(
            checkpoint["meta"], args.model_path
        ),
        model_path=os.path.abspath(args.model_path),
        use_linear_params=args.use_linear_params,
        implementation=args.implementation,
        random_seed=args.random_seed,
        **spec.as_meta(),
    )
    for path in paths:
        print(f"wrote {path}: N = {len(indices)}, {seconds:.1f} s")


def _subset(args, spec):
    """(images (N, H, W, C), labels int64 (N,), indices int64 (N,)) of the
    class-balanced subset of the training split."""
    train_images, train_labels = data.load_split(
        spec.dataset, args.data_path, train=True
    )
    if args.dataset_size > len(train_labels):
        raise UserError(
            f"--dataset_size {args.dataset_size} exceeds the "
            f"{len(train_labels)} training images of {spec.dataset}"
        )
    indices = data.balanced_subset_indices(
        train_labels, args.dataset_size, args.random_seed
    )
    return (
        train_images[indices],
        train_labels[indices].astype(np.int64),
        indices,
    )


def _show_progress(flag):
    """The --show_progress choice, or whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


if __name__ == "__main__":
    cli.run_cli(main)
