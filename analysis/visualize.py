"""visualize_ntk_features.py's work, for its `FeatureSettings` (the
script makes them from its flags).

Loads the checkpoint and its per-class kernel file (checked against the
network and the training labels), makes the feature images
(features.feature_images), prints a line per image and writes the record
and its PNG grid (feature_figures.grid_png) as
layout.feature_outputs. The output folder is created only once the
images are made, after every check.
"""

import dataclasses
import os

import numpy as np

import data
import models
import utils
from analysis import feature_figures, features
from ntk import kernel_files
from store import atomic, layout
from utils import UserError


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """What visualize_ntk_features.py makes: its flags, typed (each field
    the flag of the same name; see visualize_ntk_features.py --help).

    model_path, model, width, dataset: the checkpoint, and overrides of
        its spec (None: its own).
    class_index, dataset_size, kernel_path: the per-class kernel of logit
        c on N images (kernel_path None: calculate_kernel.py's file of
        them in the output folder); random_seed: for a kernel file of the
        original code, the seed its images were drawn with.
    use_linear_params: lin_params instead of params (None: as the kernel
        file records, else params).
    n_images, steps, step_size, batch_size, start: the images made
        (features.Settings).
    data_path, bonus_dir, save_name: the data, and where the outputs go
        ({dirname(model_path)}/{bonus_dir}, layout.feature_stem).
    flags: every flag as parsed, recorded in the output's config.
    """

    model_path: str
    class_index: int
    dataset_size: int
    n_images: int
    steps: int
    step_size: float
    batch_size: int
    start: features.Start
    random_seed: int
    data_path: str
    bonus_dir: str
    save_name: str
    kernel_path: str | None = None
    use_linear_params: bool | None = None
    model: str | None = None
    width: int | None = None
    dataset: str | None = None
    flags: dict = dataclasses.field(default_factory=dict, repr=False)


def default_kernel_path(settings: FeatureSettings, out_dir: str) -> str:
    """--kernel_path, else calculate_kernel.py's kernel file of logit
    --class_index on --dataset_size images in `out_dir`."""
    return settings.kernel_path or os.path.join(
        out_dir,
        layout.kernel_file(
            layout.KERNEL_SAVE_NAME,
            settings.class_index,
            settings.dataset_size,
        ),
    )


def load_kernel(
    settings: FeatureSettings,
    kernel_path: str,
    train_labels: np.ndarray,
    dataset: str,
) -> kernel_files.KernelFile:
    """The checked kernel file of logit --class_index, its indices checked
    against (or, for a file of the original code, recomputed from)
    `train_labels`, with room for --n_images eigenvectors."""
    kernel = kernel_files.read(
        kernel_path,
        class_index=settings.class_index,
        size=settings.dataset_size,
        train_labels=train_labels,
        seed=settings.random_seed,
        dataset=dataset,
    )
    if settings.n_images > kernel.size:
        raise UserError(
            f"--n_images {settings.n_images} exceeds the kernel's "
            f"{kernel.size} eigenvectors"
        )
    return kernel


def load_model(
    settings: FeatureSettings,
) -> tuple[dict, models.ModelSpec]:
    """(checkpoint, ModelSpec), --class_index and the parameters' shapes
    checked against the spec."""
    checkpoint, spec = models.load_with_spec(
        settings.model_path,
        model=settings.model,
        width=settings.width,
        dataset=settings.dataset,
    )
    if settings.class_index >= spec.n_classes:
        raise UserError(
            f"--class_index {settings.class_index} is not one of the "
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


def image_settings(settings: FeatureSettings) -> features.Settings:
    """features.Settings of --n_images, --steps, --step_size,
    --batch_size and --start."""
    return features.Settings(
        n_images=settings.n_images,
        steps=settings.steps,
        step_size=settings.step_size,
        batch_size=settings.batch_size,
        start=settings.start,
    )


def _title(
    settings: FeatureSettings,
    spec: models.ModelSpec,
    size: int,
    use_linear: bool,
) -> str:
    """The PNG grid's title: network, data, class, kernel size, start and
    checkpoint."""
    return (
        f"{spec.model} on {spec.dataset}, class {settings.class_index}, "
        f"N = {size}, {settings.start} start\n"
        f"{os.path.basename(settings.model_path)}"
        f"{' (lin_params)' if use_linear else ''}"
    )


def visualize(settings: FeatureSettings) -> None:
    """Makes, prints and writes the feature images of `settings`."""
    out_dir = layout.output_dir(settings.model_path, settings.bonus_dir)
    kernel_path = default_kernel_path(settings, out_dir)
    checkpoint, spec = load_model(settings)
    train_images, train_labels = data.load_split(
        spec.dataset, settings.data_path
    )
    kernel = load_kernel(settings, kernel_path, train_labels, spec.dataset)
    use_linear = kernel_files.resolve_use_linear_params(
        settings.use_linear_params, kernel
    )
    images = train_images[kernel.indices]
    # Created only once the images are made, after every check (the
    # kernel's match with this network is checked in feature_images).
    atomic.check_writable_dir(out_dir)
    if kernel.indices_recomputed:
        print(
            f"{kernel_path} holds no indices (a file of the original code): "
            f"its {kernel.size} images were recomputed with the original's "
            f"rule and --random_seed {settings.random_seed}"
        )

    params = checkpoint["lin_params" if use_linear else "params"]
    flat_params, logit_fn = features.class_logit_fn(
        spec.build().apply,
        params,
        checkpoint["net_state"],
        settings.class_index,
    )
    result = features.feature_images(
        logit_fn,
        flat_params,
        images,
        kernel,
        image_settings(settings),
        utils.warn,
    )
    print_summary(result)

    config = dict(
        settings.flags,
        start=str(settings.start),
        kernel_path=kernel_path,
        indices_recomputed=kernel.indices_recomputed,
        use_linear_params=use_linear,
        **spec.as_meta(),
    )
    record = result.as_record(
        class_index=settings.class_index,
        indices=kernel.indices,
        labels=kernel.labels,
        config=config,
    )
    title = _title(settings, spec, kernel.size, use_linear)
    atomic.ensure_writable_dir(out_dir)
    stem = layout.feature_stem(
        settings.save_name, settings.class_index, kernel.size
    )
    write_outputs(
        os.path.join(out_dir, stem),
        record,
        feature_figures.grid_png(result, title),
    )
