"""bench/bench_convolutions.py and bench/torch_convs.py: the network's
convolutions as the model has them, the kernel-gradient formulations and
the PyTorch-computed convolution against explicit references, and the
bench end to end at width 2."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_convolutions  # noqa: E402
import bench_epochs  # noqa: E402


def kernel_gradient_by_definition(x, g):
    """dW[i, j, c, o] = Σ_{b, h, w} xpad[b, h + i, w + j, c] g[b, h, w, o]
    for a stride-1 3×3 convolution padded by one, in float64 NumPy."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    height, breadth = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((3, 3, x.shape[3], g.shape[3]))
    for i in range(3):
        for j in range(3):
            patch = xp[:, i : i + height, j : j + breadth]
            out[i, j] = np.einsum("bhwc,bhwo->co", patch, g)
    return out


def test_network_convolutions_are_the_models():
    setup = bench_epochs.make_setup(2, "28x28x1", 4)
    convs = bench_convolutions.network_convolutions(setup, 4)
    kernels = sorted(
        leaves["w"].shape
        for leaves in setup.params.values()
        if "w" in leaves and leaves["w"].ndim == 4
    )
    assert sorted(w for _, w, _, _ in convs) == kernels
    assert len(convs) == 20  # stem, 16 in blocks, 3 projections
    x_shape, w_shape, strides, _ = convs[0]
    assert x_shape == (4, 28, 28, 1) and w_shape == (3, 3, 1, 2)
    assert strides == (1, 1)
    strided = [(w[:2], s) for _, w, s, _ in convs if s != (1, 1)]
    assert sorted(strided) == [((1, 1), (2, 2))] * 3 + [((3, 3), (2, 2))] * 3


def test_kernel_gradient_ways_agree_with_the_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 5, 4)).astype(np.float32)
    g = rng.normal(size=(3, 6, 5, 2)).astype(np.float32)
    expected = kernel_gradient_by_definition(x, g)
    ways = bench_convolutions.kernel_gradient_ways(x.shape, (3, 3, 4, 2))
    assert len(ways) == 3
    for name, fn in ways.items():
        np.testing.assert_allclose(
            fn(jnp.asarray(x), jnp.asarray(g)),
            expected,
            rtol=1e-4,
            atol=1e-4,
            err_msg=name,
        )


def test_convolution_sums_leave_out_the_stems_image_gradient():
    rows = [
        {"xla_ms": [1.0, 10.0, 100.0]},  # the stem
        {"xla_ms": [2.0, 20.0, 200.0]},
    ]
    update, iteration = bench_convolutions.convolution_sums(rows, "xla_ms")
    assert update == 1 + 2 + 20 + 100 + 200
    assert iteration == 1 + 2 + 10 + 20


@pytest.mark.parametrize(
    "x_shape, w_shape, strides, padding",
    [
        ((2, 6, 6, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1))),
        ((2, 6, 6, 4), (3, 3, 4, 5), (2, 2), ((0, 1), (0, 1))),
        ((2, 7, 7, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
        ((2, 6, 6, 4), (1, 1, 4, 5), (2, 2), ((0, 0), (0, 0))),
    ],
)
def test_torch_conv_matches_jax(x_shape, w_shape, strides, padding):
    pytest.importorskip("torch")
    import torch_convs

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape).astype(np.float32))
    w = jnp.asarray(rng.normal(size=w_shape).astype(np.float32))

    def lax_conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    ours = torch_convs.torch_conv(x, w, strides, padding)
    expected = lax_conv(x, w)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.normal(size=expected.shape).astype(np.float32))
    _, vjp = jax.vjp(
        lambda a, b: torch_convs.torch_conv(a, b, strides, padding), x, w
    )
    _, vjp_expected = jax.vjp(lax_conv, x, w)
    for got, want in zip(vjp(g), vjp_expected(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_torch_conv_skips_the_networks_images():
    pytest.importorskip("torch")
    import torch_convs

    x = jnp.ones((2, 5, 5, 1))
    w = jnp.ones((3, 3, 1, 2))
    pads = ((1, 1), (1, 1))
    d_x, d_w = jax.grad(
        lambda a, b: torch_convs.torch_conv(a, b, (1, 1), pads).sum(),
        argnums=(0, 1),
    )(x, w)
    assert not np.any(d_x)  # not computed for ≤ 3 channels
    # the centre tap sees every pixel of both images once
    assert float(d_w[1, 1, 0, 0]) == 2 * 25


@pytest.mark.medium
def test_bench_runs_end_to_end(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    result = run_script(
        "bench/bench_convolutions.py",
        "--width",
        "2",
        "--batch_size",
        "8",
        "--repeats",
        "1",
        "--torch_convs",
        "--json",
        out,
        check=True,
    )
    assert "| SGD update (XLA) |" in result.stdout
    assert "| SGD update (PyTorch) |" in result.stdout
    record = json.loads(out.read_text())
    assert record["jax"] == jax.__version__ and record["width"] == 2
    rows = record["convolutions"]
    assert len(rows) == 20
    assert all(len(r["xla_ms"]) == len(r["torch_ms"]) == 3 for r in rows)
    assert all(t > 0 for r in rows for t in r["xla_ms"] + r["torch_ms"])
    steps = record["steps_ms"]
    assert set(steps) == {
        "SGD update",
        "PGD iteration",
        "SGD update, PyTorch",
        "PGD iteration, PyTorch",
    }
    update_ms, callback_ms = record["torch_convs_update_ms"]
    assert 0 < callback_ms < update_ms
    assert set(record["kernel_gradient_ways"]) == {
        "28x28x1->2",
        "28x28x2->2",
        "14x14x4->4",
        "7x7x8->8",
        "4x4x16->16",
    }
    for ways in record["kernel_gradient_ways"].values():
        for _, difference in ways.values():
            assert difference < 1e-4
