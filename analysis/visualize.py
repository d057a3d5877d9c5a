"""visualize_ntk_features.py's work, once its flags are parsed.

Loads the checkpoint and its per-class kernel file (checked against the
network and the training labels), makes the feature images
(features.feature_images), prints a line per image and writes the record
and its PNG grid (feature_figures.grid_png) as
layout.feature_outputs. The output folder is created only once the
images are made, after every check.
"""

import argparse
import os

import numpy as np

import data
import models
import utils
from analysis import feature_figures, features
from ntk import kernel_files
from store import atomic, layout
from utils import UserError


def default_kernel_path(args: argparse.Namespace, out_dir: str) -> str:
    """--kernel_path, else calculate_kernel.py's kernel file of logit
    --class_index on --dataset_size images in `out_dir`."""
    return args.kernel_path or os.path.join(
        out_dir,
        layout.kernel_file(
            layout.KERNEL_SAVE_NAME, args.class_index, args.dataset_size
        ),
    )


def load_kernel(
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


def load_model(
    args: argparse.Namespace,
) -> tuple[dict, models.ModelSpec]:
    """(checkpoint, ModelSpec), --class_index and the parameters' shapes
    checked against the spec."""
    checkpoint, spec = models.load_with_spec(
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


def write_outputs(stem: str, record: dict, png: bytes) -> None:
    """`stem`.pkl and `stem`.png (layout.feature_outputs), each written
    atomically."""
    pickle_path, png_path = layout.feature_outputs(stem)
    atomic.atomic_pickle(pickle_path, record)
    atomic.atomic_write_bytes(png_path, png)
    print(f"wrote {pickle_path} and {png_path}")


def print_summary(result: features.FeatureImages) -> None:
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


def settings(args: argparse.Namespace) -> features.Settings:
    """features.Settings of --n_images, --steps, --step_size,
    --batch_size and --start."""
    return features.Settings(
        n_images=args.n_images,
        steps=args.steps,
        step_size=args.step_size,
        batch_size=args.batch_size,
        start=args.start,
    )


def _title(
    args: argparse.Namespace,
    spec: models.ModelSpec,
    size: int,
    use_linear: bool,
) -> str:
    """The PNG grid's title: network, data, class, kernel size, start and
    checkpoint."""
    return (
        f"{spec.model} on {spec.dataset}, class {args.class_index}, "
        f"N = {size}, {args.start} start\n"
        f"{os.path.basename(args.model_path)}"
        f"{' (lin_params)' if use_linear else ''}"
    )


def visualize(args: argparse.Namespace) -> None:
    """Makes, prints and writes the feature images of
    visualize_ntk_features.py's parsed flags `args`."""
    out_dir = layout.output_dir(args.model_path, args.bonus_dir)
    kernel_path = default_kernel_path(args, out_dir)
    checkpoint, spec = load_model(args)
    train_images, train_labels = data.load_split(spec.dataset, args.data_path)
    kernel = load_kernel(args, kernel_path, train_labels, spec.dataset)
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
        logit_fn, flat_params, images, kernel, settings(args), utils.warn
    )
    print_summary(result)

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
    title = _title(args, spec, kernel.size, use_linear)
    atomic.ensure_writable_dir(out_dir)
    stem = layout.feature_stem(args.save_name, args.class_index, kernel.size)
    write_outputs(
        os.path.join(out_dir, stem),
        record,
        feature_figures.grid_png(result, title),
    )
