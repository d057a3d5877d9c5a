"""calculate_kernel.py's work: checking its checkpoints and outputs,
choosing the images, computing each checkpoint's kernels and writing them.

`compute_kernels(settings)` takes a `KernelSettings` (calculate_kernel.py
makes it from its flags: cli.calculate_kernel). Every
check (checkpoints, class index, sizes, colliding outputs, writable
folders) passes before any folder is created or any kernel computed. The
data are loaded once per dataset and the block functions compiled once per
model (a block schedule kept across checkpoints); the plan is printed for
the first checkpoint of each model.
"""

import dataclasses
import os
import sys
import time

import numpy as np

import data
import models
from ntk import kernel_files, kernels
from store import atomic, layout
from utils import UserError

# In --bonus_dir: the checkpoint's file name without .pkl.
NAME = "{name}"


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """What calculate_kernel.py computes: its flags, typed (each field the
    flag of the same name; see calculate_kernel.py --help).

    model_path: the checkpoints; their kernels go to
        {dirname(path)}/{bonus_dir} ({NAME} in bonus_dir: the checkpoint's
        file name without .pkl), named after save_name, class_index and
        dataset_size (layout.kernel_file).
    dataset_size, test_size, random_seed: the class-balanced images N of
        the training split (and M of the test split, None: none).
    class_index: logit c, kernel_files.COMBINED (-1) or ALL_CLASSES.
    model, width, dataset: override the checkpoint's spec (None: its own).
    use_linear_params: the kernel at lin_params instead of params.
    implementation, block_size, memory_gb: how blocks are computed
        (ntk.kernels); show_progress None: when stderr is a terminal.
    """

    model_path: list[str]
    dataset_size: int
    save_name: str
    class_index: int | str
    bonus_dir: str
    data_path: str
    random_seed: int
    test_size: int | None = None
    model: str | None = None
    width: int | None = None
    dataset: str | None = None
    use_linear_params: bool = False
    implementation: str = kernels.DEFAULT_IMPLEMENTATION
    block_size: int | None = None
    memory_gb: float = kernels.DEFAULT_MEMORY_GB
    show_progress: bool | None = None


@dataclasses.dataclass(frozen=True)
class _Job:
    """One checkpoint, checked: where its kernels go and what its files
    record."""

    model_path: str
    spec: models.ModelSpec
    out_dir: str
    paths: tuple[str, ...]
    epoch: int | float | None
    phase: str | None
    run: dict = dataclasses.field(default_factory=dict)


# What a kernel file records of its checkpoint's training (its meta's
# entries, as run_exp.py writes them): the kernels of replicate runs must
# differ in the seed alone (analyze_kernels.py --replicates).
RUN_KEYS = ("loaders", "seed", "flags")


@dataclasses.dataclass(frozen=True)
class _Images:
    """The class-balanced images of one dataset.

    images: (N, H, W, C) float32; labels, indices: int64 (N,), positions
    in the training split. test_*: the same for the --test_size subset of
    the test split, None without it.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_indices: np.ndarray | None = None


def compute_kernels(settings: KernelSettings) -> None:
    """calculate_kernel.py's work for its `settings`: checks every
    checkpoint, flag and output folder first (UserError naming the fix),
    then computes and writes each checkpoint's kernels in turn, one line
    per file.
    """
    kernels.require_implementation(settings.implementation)
    jobs = [_checked_job(settings, path) for path in settings.model_path]
    _refuse_collisions(jobs, settings.bonus_dir)
    for job in jobs:
        atomic.check_writable_dir(job.out_dir)
    images = {}
    for job in jobs:
        if job.spec.dataset not in images:
            images[job.spec.dataset] = _subsets(settings, job.spec)
    # Every check passed: the folders are created now, not before.
    for job in jobs:
        atomic.ensure_writable_dir(job.out_dir)
    schedules = {}
    for job in jobs:
        _compute(settings, job, images[job.spec.dataset], schedules)


def _checked_job(settings: KernelSettings, model_path: str) -> _Job:
    """Loads and checks one checkpoint (then lets it go: it is loaded again
    when its turn comes, so that many checkpoints never share memory)."""
    checkpoint, spec = _load(settings, model_path)
    classes = kernels.kernel_classes(settings.class_index, spec.n_classes)
    if settings.class_index != kernel_files.ALL_CLASSES:
        classes = (settings.class_index,)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    out_dir = layout.output_dir(
        model_path, settings.bonus_dir.replace(NAME, stem)
    )
    meta = checkpoint["meta"]
    return _Job(
        model_path=model_path,
        spec=spec,
        out_dir=out_dir,
        paths=tuple(
            os.path.join(
                out_dir,
                layout.kernel_file(
                    settings.save_name,
                    None if c == kernel_files.COMBINED else c,
                    settings.dataset_size,
                ),
            )
            for c in classes
        ),
        epoch=kernel_files.checkpoint_epoch(meta, model_path),
        phase=meta.get("phase")
        if isinstance(meta.get("phase"), str)
        else None,
        run={key: meta[key] for key in RUN_KEYS if key in meta},
    )


def _load(
    settings: KernelSettings, model_path: str
) -> tuple[dict, models.ModelSpec]:
    """(checkpoint, spec) of models.load_with_spec with the flags."""
    return models.load_with_spec(
        model_path,
        model=settings.model,
        width=settings.width,
        dataset=settings.dataset,
    )


def _refuse_collisions(jobs: list[_Job], bonus_dir: str) -> None:
    """UserError when a checkpoint is given twice, two checkpoints would
    write the same file, or a kernel file would replace a checkpoint given.

    Paths are compared as real paths (symbolic links resolved), so two
    names of one file through a link count as the same file.
    """
    given = {}
    for job in jobs:
        key = os.path.realpath(job.model_path)
        if key in given:
            raise UserError(
                f"--model_path {job.model_path} is given twice: give each "
                "checkpoint once"
            )
        given[key] = job.model_path
    writers = {}
    for job in jobs:
        for path in job.paths:
            key = os.path.realpath(path)
            if key in given:
                raise UserError(
                    f"the kernel file {path} would replace the checkpoint "
                    f"{given[key]}: pass another --save_name or --bonus_dir"
                )
            other, other_path = writers.setdefault(key, (job.model_path, path))
            if other == job.model_path:
                continue
            same = "" if other_path == path else f" (the file {other_path})"
            hint = (
                f"put {NAME} in --bonus_dir (e.g. --bonus_dir "
                f"kernels/{NAME}) to give each checkpoint its own folder"
                if NAME not in bonus_dir
                else "pass another --bonus_dir or --save_name"
            )
            raise UserError(
                f"{other} and {job.model_path} would both write {path}"
                f"{same}: {hint}"
            )


def _subsets(settings: KernelSettings, spec: models.ModelSpec) -> _Images:
    """The class-balanced training images (and test images with
    --test_size) of the spec's dataset."""
    train_images, train_labels = data.load_split(
        spec.dataset, settings.data_path, train=True
    )
    indices = _balanced(
        train_labels,
        settings.dataset_size,
        settings.random_seed,
        spec,
        "dataset",
    )
    chosen = _Images(
        train_images[indices], train_labels[indices].astype(np.int64), indices
    )
    if settings.test_size is None:
        return chosen
    test_images, test_labels = data.load_split(
        spec.dataset, settings.data_path, train=False
    )
    test_indices = _balanced(
        test_labels, settings.test_size, settings.random_seed, spec, "test"
    )
    return dataclasses.replace(
        chosen,
        test_images=test_images[test_indices],
        test_labels=test_labels[test_indices].astype(np.int64),
        test_indices=test_indices,
    )


def _balanced(
    labels: np.ndarray,
    size: int,
    seed: int,
    spec: models.ModelSpec,
    kind: str,
) -> np.ndarray:
    """data.balanced_subset_indices of --{kind}_size, checked against the
    split's size."""
    split = "training" if kind == "dataset" else "test"
    if size > len(labels):
        raise UserError(
            f"--{kind}_size {size} exceeds the {len(labels)} {split} images "
            f"of {spec.dataset}"
        )
    try:
        return data.balanced_subset_indices(labels, size, seed)
    except UserError as error:
        raise UserError(f"--{kind}_size {size}: {error}") from None


def _compute(
    settings: KernelSettings, job: _Job, chosen: _Images, schedules: dict
) -> None:
    """The kernels of one checkpoint, written; one line per file.

    `schedules` keeps one block schedule (with its compiled functions) per
    model spec across checkpoints; the plan is printed the first time.
    """
    checkpoint, spec = _load(settings, job.model_path)
    first = spec not in schedules
    if first:
        apply_fn = spec.build().apply
        schedules[spec] = (
            apply_fn,
            kernels.block_schedule(apply_fn, settings.implementation),
        )
    apply_fn, schedule = schedules[spec]
    params = checkpoint[
        "lin_params" if settings.use_linear_params else "params"
    ]
    kernel_fn = kernels.ntk_fn(
        kernels.Network(apply_fn, params, checkpoint["net_state"]),
        settings.implementation,
        kernels.KernelOptions(
            class_index=settings.class_index,
            block_size=settings.block_size,
            memory_gb=settings.memory_gb,
            show_progress=_show_progress(settings.show_progress),
        ),
        schedule=schedule,
        log=print if first else None,
    )
    started = time.perf_counter()
    computed = kernel_files.Kernels(
        settings.class_index,
        kernel_fn(chosen.images),
        chosen.labels,
        chosen.indices,
    )
    if chosen.test_images is not None:
        computed = dataclasses.replace(
            computed,
            test_kernel=kernel_fn(chosen.test_images, chosen.images),
            test_labels=chosen.test_labels,
            test_indices=chosen.test_indices,
        )
    seconds = time.perf_counter() - started
    paths = kernel_files.write(
        job.out_dir,
        settings.save_name,
        computed,
        n_logits=spec.n_classes,
        epoch=job.epoch,
        phase=job.phase,
        model_path=os.path.abspath(job.model_path),
        checkpoint_relpath=os.path.relpath(
            os.path.abspath(job.model_path), os.path.abspath(job.out_dir)
        ),
        use_linear_params=settings.use_linear_params,
        implementation=settings.implementation,
        random_seed=settings.random_seed,
        **spec.as_meta(),
        **({"run": job.run} if job.run else {}),
    )
    sizes = f"N = {len(chosen.indices)}"
    if chosen.test_images is not None:
        sizes += f", M = {len(chosen.test_indices)} test images"
    for path in paths:
        print(f"wrote {path}: {sizes}, {seconds:.1f} s", flush=True)


def _show_progress(flag: bool | None) -> bool:
    """The --show_progress choice, or whether stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag
