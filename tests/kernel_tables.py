"""Kernel tables of the sweeper's tests, made by hand: diag(1, y, z)
kernels of three seeds whose distances are known in closed form, as
sweeper.collect lays them out (its claim-1 columns derived from their
pairwise distances)."""

import itertools

import numpy as np
import pandas as pd

from analysis import kernel_analysis as ka
from sweeper import collect, grid

SEED_SHIFT = (0.0, 0.1, 0.2)  # each seed's kernels moved along one axis


def hand_kernels(gap, eps, way, replicate=True):
    """diag(1, y, z) kernels of seeds 0-2 at t = 0, 1, 2: y is the
    training's (C goes to −gap, A to +gap, each by way[run][t] of the way),
    z the seed's (SEED_SHIFT), plus `eps` at t > 0 for the order replicate
    C′ (grid.REORDERED). Returns (the kernel table as collect builds it
    from their distances, {key: kernel})."""
    kernels = {}
    for seed, shift in enumerate(SEED_SHIFT):
        for t in (0.0, 1.0, 2.0):
            runs = {
                "C": (-gap * way["C"][int(t)], shift),
                "A": (gap * way["A"][int(t)], shift),
            }
            if replicate:
                runs[grid.REORDERED] = (runs["C"][0], shift + eps * (t > 0))
            for run, (y, z) in runs.items():
                kernels[(seed, run, t, 0, 3)] = np.diag([1.0, y, z])
    pairs = {
        frozenset((a, b)): ka.kernel_distance(kernels[a], kernels[b])
        for a, b in itertools.combinations(kernels, 2)
    }
    keys = [k for k in kernels if k[1] != grid.REORDERED]
    table = pd.DataFrame(keys, columns=collect.KERNEL_KEYS)
    collect._add_derived(table, pairs, ["C", "A"], [0, 1, 2])
    if replicate:
        collect._add_reordered(table, pairs)
    return table, kernels


# A settles at t = 1, C at t = 2 (A's rule of settling holds).
A_FIRST = {"C": (0, 0.3, 1), "A": (0, 1, 1)}


def s_of_diagonals(a, b):
    """S of diag(a), diag(b) by its formula, written out."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return 1 - a @ b / np.sqrt((a @ a) * (b @ b))
