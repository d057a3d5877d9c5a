r"""Images whose parameter gradient aligns with a class's NTK eigenfeatures.

Reads a per-class kernel written by calculate_kernel.py (or by the original
code, whose images are then recomputed with the original's rule and
--random_seed) and the checkpoint it was computed from, and writes, in
{dirname(model_path)}/{bonus_dir}/, `{save_name}_class_{c}_{N}.pkl` (images
and the numbers behind them; see `features.FeatureImages.as_record`) and a
PNG grid of the same name. Before the loop it warns (one `warning:` line)
when most pixels of the start image cannot move.

    python visualize_ntk_features.py --class_index 3 --dataset_size 500 \
        --model_path saved_models/parameters_final.pkl
"""

import argparse
import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

import cli
import data
import models
import utils
from analysis import features
from ntk import kernel_files
from store import atomic, layout
from utils import UserError

if TYPE_CHECKING:  # imported where used: matplotlib is slow to import
    from matplotlib.axes import Axes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
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
        default="ntk_eig_images",
        help="prefix of the output file names (a plain name: --bonus_dir "
        "chooses the folder)",
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


def _start(text: str) -> features.Start:
    """The --start type: features.parse_start, its error argparse's."""
    try:
        return features.parse_start(text)
    except UserError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out_dir = layout.output_dir(args.model_path, args.bonus_dir)
    kernel_path = args.kernel_path or os.path.join(
        out_dir,
        layout.kernel_file(
            layout.KERNEL_SAVE_NAME,
            None
            if args.class_index == kernel_files.COMBINED
            else args.class_index,
            args.dataset_size,
        ),
    )
    checkpoint, spec = _load_model(args)
    train_images, train_labels = data.load_split(spec.dataset, args.data_path)
    kernel = _load_kernel(args, kernel_path, train_labels, spec.dataset)
    use_linear = kernel_files.resolve_use_linear_params(
        args.use_linear_params, kernel
    )
    images = train_images[kernel.indices]
    # Created only once the images are made, after every check (the
    # kernel's match with this network is checked in feature_images).
    atomic.check_writable_dir(out_dir)
    if kernel.indices_recomputed:
        print(
            f"{kernel_path} holds no indices (a file of the original code): "
            f"its {kernel.size} images were recomputed with the original's "
            f"rule and --random_seed {args.random_seed}"
        )

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
        start=args.start,
        warn=utils.warn,
    )
    _report(result)

    config = dict(
        vars(args),
        start=str(args.start),
        kernel_path=kernel_path,
        indices_recomputed=kernel.indices_recomputed,
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
        f"N = {kernel.size}, {args.start} start\n"
        f"{os.path.basename(args.model_path)}"
        f"{' (lin_params)' if use_linear else ''}"
    )
    atomic.ensure_writable_dir(out_dir)
    _write_outputs(
        os.path.join(
            out_dir, f"{args.save_name}_class_{args.class_index}_{kernel.size}"
        ),
        record,
        grid_png(result, title),
    )


def _load_kernel(
    args: argparse.Namespace,
    kernel_path: str,
    train_labels: np.ndarray,
    dataset: str,
) -> kernel_files.KernelFile:
    """The checked kernel file of logit --class_index, its indices checked
    against (or, for a file of the original code, recomputed from)
    `train_labels`, with room for --n_images eigenvectors."""
    kernel = kernel_files.read(
        kernel_path,
        class_index=args.class_index,
        size=args.dataset_size,
        train_labels=train_labels,
        seed=args.random_seed,
        dataset=dataset,
    )
    if args.n_images > kernel.size:
        raise UserError(
            f"--n_images {args.n_images} exceeds the kernel's "
            f"{kernel.size} eigenvectors"
        )
    return kernel


def _load_model(
    args: argparse.Namespace,
) -> tuple[dict, models.ModelSpec]:
    """(checkpoint, ModelSpec), --class_index and the parameters' shapes
    checked against the spec."""
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


def _write_outputs(stem: str, record: dict, png: bytes) -> None:
    """`stem`.pkl and `stem`.png, each written atomically."""
    atomic.atomic_pickle(stem + ".pkl", record)
    atomic.atomic_write_bytes(stem + ".png", png)
    print(f"wrote {stem}.pkl and {stem}.png")


def _report(result: features.FeatureImages) -> None:
    """One line per image: the cosine at the start, at the end and at its
    best (ASCII, whatever the terminal's encoding)."""
    print(f"w = (K + eps I)^-1 y solved with jitter eps = {result.jitter:.3g}")
    for i, (pos, neg) in enumerate(
        zip(result.pos_cosines, result.neg_cosines, strict=True)
    ):
        print(
            f"eigenvector {i} (eigenvalue {result.eigenvalues[i]:.4g}): "
            f"cosine {pos[0]:.4f} -> {pos[-1]:.4f} (pos; best "
            f"{result.best_pos_cosines[i]:.4f} at step "
            f"{result.best_pos_steps[i]}), {neg[-1]:.4f} (neg; best "
            f"{result.best_neg_cosines[i]:.4f} at step "
            f"{result.best_neg_steps[i]})"
        )
    print(
        f"w: cosine {result.w_cosines[0]:.4f} -> {result.w_cosines[-1]:.4f} "
        f"(best {result.best_w_cosine:.4f} at step {result.best_w_step})"
    )


def grid_png(result: features.FeatureImages, title: str = "") -> bytes:
    """A PNG of the images, final and best: rows positive (final),
    positive (best), negative (final), negative (best), column i for
    eigenvector i; a last row with the w image, final in column 0 and best
    in column 1. Titles give λ_i (or w), the step, and the cosine at the
    start and at that step."""
    # Imported here: matplotlib is slow to import and only this needs it.
    # Figure draws through Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure

    n = len(result.pos_images)
    columns = max(n, 2)
    figure = Figure(figsize=(2.3 * columns, 13.0), layout="constrained")
    axes = figure.subplots(5, columns, squeeze=False)
    steps = result.w_cosines.shape[0] - 1
    for row, kind in enumerate(("pos", "neg")):
        final_images = getattr(result, f"{kind}_images")
        best_images = getattr(result, f"best_{kind}_images")
        cosines = getattr(result, f"{kind}_cosines")
        best_steps = getattr(result, f"best_{kind}_steps")
        for i in range(n):
            eigen = rf"$\lambda_{{{i}}}$ = {result.eigenvalues[i]:.3g}"
            _show(
                axes[2 * row, i],
                final_images[i],
                f"{eigen}, final\n{_trajectory(cosines[i], steps)}",
            )
            _show(
                axes[2 * row + 1, i],
                best_images[i],
                f"{eigen}, best\n{_trajectory(cosines[i], best_steps[i])}",
            )
        for axis in axes[2 * row : 2 * row + 2, n:].flat:
            axis.set_axis_off()
    w_name = "$w = K^{-1}y$"
    _show(
        axes[4, 0],
        result.w_image,
        f"{w_name}, final\n{_trajectory(result.w_cosines, steps)}",
    )
    _show(
        axes[4, 1],
        result.best_w_image,
        f"{w_name}, best\n{_trajectory(result.w_cosines, result.best_w_step)}",
    )
    for axis in axes[4, 2:]:
        axis.set_axis_off()
    names = ("positive", "negative")
    for row, name in enumerate(names):
        axes[2 * row, 0].set_ylabel(f"{name}, final")
        axes[2 * row + 1, 0].set_ylabel(f"{name}, best")
    axes[4, 0].set_ylabel("w, final | best")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _show(axis: "Axes", image: np.ndarray, title: str) -> None:
    """Draws one (H, W, C) image in [0, 1], grey for one channel."""
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axis.imshow(np.clip(image, 0.0, 1.0))
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=9)


def _trajectory(cosines: np.ndarray, step: int) -> str:
    """'cos a → b at step t': the cosine at the start and after t steps."""
    return f"cos {cosines[0]:.3f} → {cosines[step]:.3f} at step {step}"


if __name__ == "__main__":
    cli.run_cli(main)
