r"""Empirical NTK of a checkpoint on a class-balanced training subset.

Batch norm in eval mode (running statistics frozen). Writes, in
{dirname(model_path)}/{bonus_dir}/, `{save_name}_{N}.pkl` for the kernel
summed over logits (--class_index -1) or `{save_name}_class_{c}_{N}.pkl`
per class (--class_index c, or all), each a pickle of
{'kernel' float32 (N, N), 'labels' (N,), 'indices' (N,) positions in the
training split, 'class_index', and how it was computed}.

    python calculate_kernel.py --model_path saved_models/parameters_final.pkl \
        --dataset_size 500 --class_index all --show_progress
"""

import argparse
import os
import sys
import time

import numpy as np

import data
import features
import kernels
import models
import utils
from utils import UserError


def parse_args(argv=None):
    positive_int = utils.number_flag(int, 1)
    parser = utils.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model_path",
        required=True,
        help="checkpoint (.pkl) to take the kernel of",
    )
    parser.add_argument(
        "--dataset_size",
        type=positive_int,
        default=500,
        help="images N, a multiple of the number of classes",
    )
    parser.add_argument(
        "--save_name",
        default=kernels.DEFAULT_SAVE_NAME,
        help="prefix of the output file names",
    )
    parser.add_argument(
        "--class_index",
        type=kernels.parse_class_index,
        default=kernels.COMBINED,
        help="logit c, -1 for the sum over logits, or 'all' "
        "for one file per class",
    )
    parser.add_argument(
        "--show_progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar over blocks (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "--model",
        choices=models.MODELS,
        default=None,
        help="default: the checkpoint's, else resnet18",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="ResNet width; default: the checkpoint's, else 64",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(data.DATASETS),
        default=None,
        help="default: the checkpoint's, else cifar10",
    )
    parser.add_argument(
        "--data_path", default="./data", help="where the datasets live"
    )
    parser.add_argument(
        "--bonus_dir",
        default=".",
        help="output subfolder of the checkpoint's folder",
    )
    parser.add_argument(
        "--random_seed",
        type=int,
        default=0,
        help="seed of the subset's choice",
    )
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
        type=positive_int,
        default=None,
        help="images per block (default: the least modelled "
        "work within --memory_gb; 4 for ntvp)",
    )
    positive_float = utils.number_flag(float, 0.0, strict=True)
    parser.add_argument(
        "--memory_gb",
        type=positive_float,
        default=kernels.DEFAULT_MEMORY_GB,
        help="GiB the blocks' Jacobians may take (modelled peak)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    kernels.require_implementation(args.implementation)
    checkpoint = utils.load_checkpoint(args.model_path)
    spec = models.resolve_spec(
        checkpoint["meta"],
        data.n_classes,
        model=args.model,
        width=args.width,
        dataset=args.dataset,
        source=args.model_path,
    )
    kernels.kernel_classes(args.class_index, spec.n_classes)
    out_dir = features.output_dir(args.model_path, args.bonus_dir)
    images, labels, indices = _subset(args, spec)
    params = checkpoint["lin_params" if args.use_linear_params else "params"]
    models.check_params_fit(
        spec,
        params,
        checkpoint["net_state"],
        images.shape[1:],
        source=args.model_path,
    )
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

    record = dict(
        labels=labels,
        indices=indices,
        model_path=os.path.abspath(args.model_path),
        use_linear_params=args.use_linear_params,
        implementation=args.implementation,
        random_seed=args.random_seed,
        **spec.as_meta(),
    )
    for path in _write_kernels(
        out_dir, args.save_name, args.class_index, kernel, record
    ):
        print(f"wrote {path}: N = {len(indices)}, {seconds:.1f} s")


def _write_kernels(out_dir, save_name, class_index, kernel, record):
    """Writes one file per kernel of empirical_ntk's result, each `record`
    plus 'kernel' and 'class_index'; returns their paths."""
    if class_index == kernels.ALL_CLASSES:
        by_class = list(enumerate(kernel))
    else:
        by_class = [(class_index, kernel)]
    paths = []
    for c, class_kernel in by_class:
        path = os.path.join(
            out_dir, features.kernel_file_name(save_name, c, len(class_kernel))
        )
        utils.atomic_pickle(
            path, dict(record, kernel=class_kernel, class_index=c)
        )
        paths.append(path)
    return paths


def _subset(args, spec):
    """(images (N, H, W, C), labels int64 (N,), indices int64 (N,)) of the
    class-balanced subset of the training split."""
    if args.random_seed < 0:
        raise UserError(f"--random_seed must be >= 0, not {args.random_seed}")
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
    utils.run_cli(main)
