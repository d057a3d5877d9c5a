"""bench/bench_epochs.py and bench/profile_epochs.py: the analytic FLOP
count against the model's own layers, XLA's counts against it, and both
scripts end to end at width 2."""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import models
from helpers import ROOT, run_script

sys.path.insert(0, os.path.join(ROOT, "bench"))
import bench_epochs  # noqa: E402

KIND_LABELS = [
    "phase 1, benign",
    "phase 1, adversarial",
    "centered phase 2, benign",
    "centered phase 2, adversarial",
]


def forward_flops_from_parameters(width, image_shape):
    """2 × multiply-adds of every conv and linear weight of the Haiku
    ResNet-18, each weight's size times its output positions (the stem
    and stage 0 at full resolution, each later stage halved, rounded up)."""
    model = models.get_model("resnet18", 10, width)
    params, _ = models.init_model(model, 0, image_shape)
    side = image_shape[0]
    sides = [side]
    for _ in range(3):
        sides.append(-(-sides[-1] // 2))
    macs = 0
    for module, leaves in params.items():
        weight = leaves.get("w")
        if weight is None:
            continue
        if module.endswith("logits"):
            positions = 1
        else:
            group = re.search(r"block_group_(\d)", module)
            stage = int(group.group(1)) if group else 0
            positions = sides[stage] ** 2
        macs += weight.size * positions
    return 2 * macs


@pytest.mark.medium
@pytest.mark.parametrize(
    "width, shape", [(4, (32, 32, 3)), (2, (28, 28, 1)), (64, (32, 32, 3))]
)
def test_analytic_forward_flops_count_every_layer(width, shape):
    assert bench_epochs.resnet18_forward_flops(
        width, shape
    ) == forward_flops_from_parameters(width, shape)


def test_paper_resnet_forward_is_about_half_a_gigaflop():
    # Width 64 on CIFAR: 0.56 G multiply-adds, the usual figure for this
    # ResNet-18 (no max-pool, stride-1 stem).
    flops = bench_epochs.resnet18_forward_flops(64, (32, 32, 3))
    assert 1.1e9 < flops < 1.2e9


def test_xla_counts_the_forward_pass_near_the_analytic_count():
    """XLA leaves out the padding taps of 3×3 convolutions and adds batch
    norm and ReLU, so it lands a little below the analytic count."""
    model = models.get_model("resnet18", 10, 4)
    params, state = models.init_model(model, 0, (32, 32, 3))
    x = jnp.zeros((8, 32, 32, 3))

    def forward(p, s, x):  # parameters as arguments: nothing folds away
        return model.apply(p, s, None, x, False)[0]

    compiled = jax.jit(forward).lower(params, state, x).compile()
    per_image = bench_epochs.xla_flops(compiled) / 8
    ratio = per_image / bench_epochs.resnet18_forward_flops(4, (32, 32, 3))
    assert 0.8 < ratio < 1.05, ratio


def test_pgd_iteration_flops_are_one_input_gradient():
    """The attack with one iteration minus none is one forward pass and
    one input gradient (plus the elementwise step), counted by XLA."""
    model = models.get_model("mlp_skinny", 10)
    params, state = models.init_model(model, 0, (28, 28, 1))
    x = jnp.asarray(
        np.random.default_rng(0).uniform(size=(16, 28, 28, 1)), jnp.float32
    )
    y = jnp.arange(16, dtype=jnp.int32) % 10
    attack = bench_epochs.attacks.train_linf(4.0, 20)
    got = bench_epochs.pgd_iteration_flops(
        model.apply, models.STANDARD, params, None, state, x, y, attack
    )

    def input_gradient(p, s, x, y):
        def loss(images):
            logits = model.apply(p, s, None, images, False)[0]
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, y
            ).sum()

        return jax.grad(loss)(x)

    want = bench_epochs.xla_flops(
        jax.jit(input_gradient).lower(params, state, x, y).compile()
    )
    assert 0.95 < got / want < 1.1, (got, want)


def test_peaks_of_known_devices():
    assert bench_epochs.device_peak_tflops("NVIDIA H100 80GB HBM3")[1] == 495
    assert bench_epochs.device_peak_tflops("NVIDIA H100 PCIe")[1] == 378
    assert bench_epochs.device_peak_tflops("NVIDIA H200")[2] == 989
    assert bench_epochs.device_peak_tflops("cpu") is None


def _rows(stdout):
    """{kind label: table cells} of the printed table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0].split(", PyTorch")[0] in KIND_LABELS:
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_bench_prints_the_four_rates(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script(
        "bench/bench_epochs.py",
        "--width",
        "2",
        "--images",
        "8",
        "--json",
        out,
        "--torch_reference",
        "--peak_gflops",
        "100",
        check=True,
    )
    rows = _rows(result.stdout)
    torch_rows = [k for k in rows if "PyTorch" in k]
    assert [k.split(", PyTorch")[0] for k in torch_rows] == KIND_LABELS[:2]
    rows = {k: v for k, v in rows.items() if k not in torch_rows}
    assert list(rows) == KIND_LABELS, result.stdout
    for cells in rows.values():
        assert float(cells[4].replace(",", "")) > 0  # images/s
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["jax"] == jax.__version__
    kinds = {(k["phase"], k["adversarial"]): k for k in record["kinds"]}
    assert len(kinds) == 4
    for kind in kinds.values():
        assert kind["images"] == 8 and kind["epoch_s"] > 0
        assert kind["images_per_s"] == pytest.approx(8 / kind["epoch_s"])
    reference = record["torch_reference"]
    assert [(r["phase"], r["adversarial"]) for r in reference] == [
        ("phase1", False),
        ("phase1", True),
    ]
    for r in reference:  # our count of the same work, its own seconds
        ours = kinds[r["phase"], r["adversarial"]]
        assert r["flops_per_image"] == ours["flops_per_image"]
        assert r["images_per_s"] == pytest.approx(8 / r["epoch_s"])
    flops = {key: kind["flops_per_image"] for key, kind in kinds.items()}
    forward = record["forward_flops_per_image"]
    # A benign step is a forward and a backward pass, 2 to 4 forwards.
    assert 2 * forward < flops["phase1", False] < 4 * forward
    # An adversarial step adds 20 PGD iterations (a forward pass and an
    # input gradient each) to two SGD steps: over 40 forwards.
    for phase in ("phase1", "phase2c"):
        assert flops[phase, True] > 40 * forward
        assert flops[phase, True] > 10 * flops[phase, False]
    # Through the JVP every pass carries a tangent too.
    for adversarial in (False, True):
        assert flops["phase2c", adversarial] > flops["phase1", adversarial]


@pytest.mark.slow
def test_profile_prints_parts_and_writes_a_trace(tmp_path):
    trace = tmp_path / "trace"
    result = run_script(
        "bench/profile_epochs.py",
        "--width",
        "2",
        "--images",
        "16",
        "--batch_size",
        "8",
        "--pgd_iters",
        "2",
        "--kinds",
        "phase2c-adv",
        "--trace",
        trace,
        "--trace_steps",
        "1",
        "--json",
        tmp_path / "profile.json",
        check=True,
    )
    assert list(_rows(result.stdout)) == ["centered phase 2, adversarial"]
    record = json.loads((tmp_path / "profile.json").read_text())
    parts = {p["name"]: p for p in record["kinds"][0]["parts"]}
    assert parts["PGD iteration: input gradient"]["calls_per_step"] == 2
    assert parts["SGD step (train's clean step)"]["calls_per_step"] == 2
    for name in (
        "JVP forward (BN eval)",
        "JVP forward + backward",
        "adversarial step alone",
        "host-to-device transfer of a batch",
        "dispatch of a trivial jitted step",
        "step in the epoch loop (run_phase)",
    ):
        assert parts[name]["ms"] > 0, name
    written = [
        f for _, _, files in os.walk(trace / "phase2c-adv") for f in files
    ]
    assert any(f.endswith(".xplane.pb") for f in written), written


def test_torch_reference_is_our_resnet_in_pytorch():
    """bench/torch_epochs.py's network has our ResNet-18's parameters
    (count and per-layer shapes, HWIO against OIHW) and its output size;
    its PGD stays in the ε-ball and in [0, 1]."""
    torch = pytest.importorskip("torch")
    import torch_epochs

    for width, shape in ((4, (28, 28, 1)), (2, (32, 32, 3))):
        ours, _ = models.init_model(
            models.get_model("resnet18", 10, width), 0, shape
        )
        theirs = torch_epochs.ResNet18(width, shape[-1])
        count = sum(p.numel() for p in theirs.parameters())
        assert count == models.count_params(ours)
        conv_shapes = lambda shapes: sorted(shapes)
        assert conv_shapes(
            tuple(int(d) for d in p.shape)
            for p in theirs.parameters()
            if p.ndim == 4
        ) == conv_shapes(
            (w.shape[3], w.shape[2], w.shape[0], w.shape[1])
            for layer in ours.values()
            for w in [layer.get("w")]
            if w is not None and w.ndim == 4
        )
    torch.manual_seed(0)
    net = torch_epochs.ResNet18(2, 1).eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    assert net(x).shape == (4, 10)
    adv = torch_epochs.pgd(net, x, y, eps=8 / 255, iters=3)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
