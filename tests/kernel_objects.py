"""Kernels of the analysis tests, made here: random positive
semi-definite matrices, the distance S by its formula,
kernel_analysis.Kernel objects of them (no file read), and kernel files
written as calculate_kernel.py writes them."""

import os

import numpy as np

from analysis import kernel_analysis as ka
from analysis import tables
from ntk import kernel_files
from ntk.kernel_files import KernelFile


def psd(n, seed, rank=None):
    """A random positive semi-definite float64 (n, n) of rank `rank`."""
    factor = np.random.default_rng(seed).normal(size=(n, rank or n))
    return factor @ factor.T


def direct_distance(a, b):
    """1 − ⟨a, b⟩_F / (‖a‖_F ‖b‖_F), elementwise sums."""
    return 1 - np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))


def kernel(path, epoch, class_index=0, run="run", indices=(0, 1, 2), seed=0):
    """A kernel_analysis.Kernel of a random PSD kernel on `indices`, labels
    alternating 0, 1 (two classes), in phase "standard" at params."""
    matrix = psd(len(indices), seed)
    file = KernelFile(
        kernel=matrix,
        labels=np.arange(len(indices)) % 2,
        indices=np.asarray(indices),
        class_index=class_index,
        use_linear_params=False,
        epoch=epoch,
        random_seed=0,
        indices_recomputed=False,
        path=path,
        extras={"phase": "standard"},
    )
    return ka.Kernel(file, run, 2)


def write_kernel_file(
    folder, epoch, matrix=None, seed=0, class_index=0, name="k", **extra
):
    """A kernel file of logit `class_index` on 4 images (labels 0, 1, 0, 1)
    in `folder`, written by kernel_files.write (psd(4, seed) unless
    `matrix`) with save name `name`; its path."""
    os.makedirs(folder, exist_ok=True)
    kernels = kernel_files.Kernels(
        class_index,
        psd(4, seed) if matrix is None else matrix,
        np.array([0, 1, 0, 1]),
        np.arange(4),
    )
    (path,) = kernel_files.write(
        str(folder), name, kernels, n_logits=2, epoch=epoch, **extra
    )
    return path


def small_analysis():
    """The tables.Analysis of two kernels of one series (epochs 1 and 2),
    without --compare and --replicates, as analysis.pipeline builds it."""
    kernels = [kernel("a", 1, seed=1), kernel("b", 2, seed=2)]
    measures = [ka.measure(k, [1], 0) for k in kernels]
    groups = ka.series(kernels)
    results = {key: ka.series_measures(m, 1) for key, m in groups.items()}
    labels = tables.series_labels(kernels)
    pairwise, heatmaps = tables.pairwise(kernels, [[0, 1]], labels)
    return tables.Analysis(
        kernels=kernels,
        measures=measures,
        series_measures=results,
        labels=labels,
        kernel_table=tables.kernel_table(
            kernels, measures, groups, results, labels, {}
        ),
        series_table=tables.series_table(groups, results, labels),
        pairwise=pairwise,
        compare=None,
        replicates=None,
        heatmaps=heatmaps,
        notes=["a note"],
    )
