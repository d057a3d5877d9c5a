r"""Images whose parameter gradient aligns with a class's NTK eigenfeatures.

Reads a per-class kernel written by calculate_kernel.py and the checkpoint
it was computed from, and writes, in {dirname(model_path)}/{bonus_dir}/,
`{save_name}_class_{c}_{N}.pkl` (images and the numbers behind them; see
`features.FeatureImages.as_record`) and a PNG grid of the same name.

    python visualize_ntk_features.py --class_index 3 --dataset_size 500 \
        --model_path saved_models/parameters_final.pkl
"""

import argparse
import os

import cli
import data
import features
import kernels
import models
import utils
from utils import UserError


def parse_args(argv=None):
    positive_int = cli.positive_int
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model_path",
        required=True,
        help="checkpoint whose kernel was computed",
    )
    parser.add_argument(
        "--dataset_size",
        type=positive_int,
        default=500,
        help="number of images N of the kernel",
    )
    parser.add_argument(
        "--save_name",
        default="ntk_eig_images",
        help="prefix of the output file names",
    )
    parser.add_argument(
        "--class_index",
        type=cli.nonnegative_int,
        required=True,
        help="the logit c of the kernel",
    )
    parser.add_argument(
        "--kernel_path",
        default=None,
        help="kernel file (default: calculate_kernel.py's "
        "saved_kernel_class_{c}_{N}.pkl in the output "
        "folder)",
    )
    parser.add_argument(
        "--n_images",
        type=positive_int,
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
        "--model",
        choices=models.MODELS,
        default=None,
        help="default: the checkpoint's",
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="ResNet width; default: the checkpoint's",
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(data.DATASETS),
        default=None,
        help="default: the checkpoint's",
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
        "--use_linear_params",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use lin_params instead of params (default: as "
        "the kernel file records, else params)",
    )
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=100,
        help="images per vector-Jacobian product",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out_dir = features.output_dir(args.model_path, args.bonus_dir)
    kernel_path = args.kernel_path or os.path.join(
        out_dir,
        features.kernel_file_name(
            kernels.DEFAULT_SAVE_NAME, args.class_index, args.dataset_size
        ),
    )
    kernel = _load_kernel(args, kernel_path)
    checkpoint, spec = _load_model(args)
    use_linear = features.resolve_use_linear_params(
        args.use_linear_params, kernel
    )
    images = _kernel_images(args, kernel, spec, checkpoint)
    utils.ensure_writable_dir(out_dir)

    params = checkpoint["lin_params" if use_linear else "params"]
    flat_params, logit_fn = features.class_logit_fn(
        spec.build().apply, params, checkpoint["net_state"], args.class_index
    )
    result = features.feature_images(
        logit_fn,
        flat_params,
        images,
        kernel,
        args.n_images,
        args.steps,
        args.step_size,
        args.batch_size,
    )
    _report(result)

    config = dict(
        vars(args),
        kernel_path=kernel_path,
        use_linear_params=use_linear,
        **spec.as_meta(),
    )
    record = result.as_record(
        class_index=args.class_index,
        indices=kernel.indices,
        labels=kernel.labels,
        config=config,
    )
    title = (
        f"{spec.model} on {spec.dataset}, class {args.class_index}, "
        f"N = {kernel.size}: {os.path.basename(args.model_path)}"
        f"{' (lin_params)' if use_linear else ''}"
    )
    _write_outputs(
        os.path.join(
            out_dir, f"{args.save_name}_class_{args.class_index}_{kernel.size}"
        ),
        record,
        features.grid_png(result, title),
    )


def _load_kernel(args, kernel_path):
    """The checked kernel file, with room for --n_images eigenvectors."""
    kernel = features.load_class_kernel(
        kernel_path, args.class_index, args.dataset_size
    )
    if args.n_images > kernel.size:
        raise UserError(
            f"--n_images {args.n_images} exceeds the kernel's "
            f"{kernel.size} eigenvectors"
        )
    return kernel


def _load_model(args):
    """(checkpoint, ModelSpec), --class_index checked against the spec."""
    checkpoint, spec = models.load_checkpoint(
        args.model_path,
        model=args.model,
        width=args.width,
        dataset=args.dataset,
    )
    if args.class_index >= spec.n_classes:
        raise UserError(
            f"--class_index {args.class_index} is not one of the "
            f"{spec.n_classes} classes of {spec.dataset}"
        )
    return checkpoint, spec


def _kernel_images(args, kernel, spec, checkpoint):
    """The kernel's training images (N, H, W, C), checked against the
    kernel's labels and the checkpoint's parameter shapes."""
    train_images, train_labels = data.load_split(spec.dataset, args.data_path)
    features.check_kernel_images(kernel, train_labels, spec.dataset)
    return train_images[kernel.indices]


def _write_outputs(stem, record, png):
    """`stem`.pkl and `stem`.png, each written atomically."""
    utils.atomic_pickle(stem + ".pkl", record)
    utils.atomic_write_bytes(stem + ".png", png)
    print(f"wrote {stem}.pkl and {stem}.png")


def _report(result):
    """One line per image: the cosine at the start and at the end (ASCII,
    whatever the terminal's encoding)."""
    print(f"w = (K + eps I)^-1 y solved with jitter eps = {result.jitter:.3g}")
    for i, (pos, neg) in enumerate(
        zip(result.pos_cosines, result.neg_cosines, strict=True)
    ):
        print(
            f"eigenvector {i} (eigenvalue {result.eigenvalues[i]:.4g}): "
            f"cosine {pos[0]:.4f} -> {pos[-1]:.4f} (pos), {neg[-1]:.4f} "
            "(neg)"
        )
    print(f"w: cosine {result.w_cosines[0]:.4f} -> {result.w_cosines[-1]:.4f}")


if __name__ == "__main__":
    cli.run_cli(main)
