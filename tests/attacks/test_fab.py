"""Tests of attacks/fab.py: the box-constrained projection against a linear
program, and FAB-T on a linear model, whose smallest adversarial
perturbation is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linprog

import attacks
from attacks import fab


def box_problem(seed, batch=6, dim=12):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch, dim))
    x[:, :3] = np.round(x[:, :3])
    w = rng.normal(size=(batch, dim))
    w[:, 4] = 0.0
    return x, w, rng.normal(size=batch)


def linf_by_linprog(x, w, r):
    """min t with |δ_i| ≤ t, 0 ≤ x + δ ≤ 1, ⟨w, δ⟩ = r (variables δ, t)."""
    dim = len(x)
    eye = np.eye(dim)
    result = linprog(
        np.r_[np.zeros(dim), 1.0],
        A_ub=np.r_[np.c_[eye, -np.ones(dim)], np.c_[-eye, -np.ones(dim)]],
        b_ub=np.zeros(2 * dim),
        A_eq=np.r_[w, 0.0][None],
        b_eq=[r],
        bounds=[(-x[i], 1 - x[i]) for i in range(dim)] + [(0, None)],
    )
    assert result.success
    return result.fun


def test_linf_projection_is_the_linear_programs_optimum():
    x, w, r = box_problem(0)
    delta = np.asarray(
        fab.project_onto_plane(
            jnp.asarray(x, jnp.float32),
            jnp.asarray(w, jnp.float32),
            jnp.asarray(r, jnp.float32),
            "linf",
            newton_steps=len(x[0]),  # exact in at most one step per pixel
        ),
        np.float64,
    )
    np.testing.assert_allclose(np.sum(w * delta, 1), r, atol=1e-5)
    assert (x + delta).min() >= -1e-6 and (x + delta).max() <= 1 + 1e-6
    best = [linf_by_linprog(x[b], w[b], r[b]) for b in range(len(x))]
    np.testing.assert_allclose(np.abs(delta).max(1), best, rtol=1e-5)


def test_l2_projection_meets_the_kkt_conditions():
    x, w, r = box_problem(1)
    delta = np.asarray(
        fab.project_onto_plane(
            jnp.asarray(x, jnp.float32),
            jnp.asarray(w, jnp.float32),
            jnp.asarray(r, jnp.float32),
            "l2",
            newton_steps=len(x[0]),
        ),
        np.float64,
    )
    np.testing.assert_allclose(np.sum(w * delta, 1), r, atol=1e-5)
    # Optimal: δ = clip(λ w, box) for one λ (same sign as r) per example.
    ratio = np.where(np.abs(w) > 0, delta / np.where(w == 0, 1, w), np.nan)
    free = (np.abs(w) > 0) & (x + delta > 1e-6) & (x + delta < 1 - 1e-6)
    for b in range(len(x)):
        lam = ratio[b][free[b]]
        np.testing.assert_allclose(lam, lam[0], rtol=1e-4)
        assert np.sign(lam[0]) == np.sign(r[b])


def test_infeasible_plane_gives_the_corner():
    x = jnp.full((1, 4), 0.5)
    w = jnp.ones((1, 4))
    delta = fab.project_onto_plane(x, w, jnp.asarray([5.0]), "linf")
    np.testing.assert_allclose(delta, 0.5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_smallest_linear_perturbation(norm):
    rng = np.random.default_rng(2)
    shape, batch = (4, 4, 1), 8
    dim = int(np.prod(shape))
    w = rng.normal(size=(dim, 2))
    x = rng.uniform(0.3, 0.7, (batch, dim))
    normal = w[:, 1] - w[:, 0]
    # Far from the box's edges the smallest perturbation that reaches the
    # plane ⟨normal, x⟩ + b = 0 has size gap / ‖normal‖_dual; a bias per
    # batch position puts it at `distance` (class 0 ahead).
    dual = np.abs(normal).sum() if norm == "linf" else np.linalg.norm(normal)
    distance = rng.uniform(0.05, 0.2, batch)
    bias = -(x @ normal) - distance * dual
    logits_fn = lambda v: (
        v.reshape(v.shape[0], -1) @ jnp.asarray(w, jnp.float32)
        + jnp.stack([jnp.zeros(batch), jnp.asarray(bias)], 1)
    )
    images = jnp.asarray(x.reshape((batch,) + shape), jnp.float32)
    labels = jnp.zeros(batch, jnp.int32)
    assert not np.any(np.argmax(logits_fn(images), -1))
    config = attacks.FABConfig(norm=norm, n_targets=1)
    for factor, expected in [(1.01, True), (0.99, False)]:
        eps = jnp.asarray(factor * distance, jnp.float32)
        result = attacks.fab_t(
            logits_fn, images, labels, eps, jax.random.key(0), config
        )
        assert np.all(np.asarray(result.success) == expected), factor
