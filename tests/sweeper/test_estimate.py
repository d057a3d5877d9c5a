"""sweeper.estimate: the hours of a grid's cells from its [throughput]
rates, worked out by hand, and the unit the hours are named in."""

import os

import pytest

from helpers import ROOT, assert_one_line_error
from robust_cells import ROBUSTNESS
from sweep_fixtures import THROUGHPUT, sweep_main, tiny_grid
from sweeper import estimate, grid


def test_estimate_of_robustness_cells(tmp_path):
    throughput = {
        "device": "cpu",
        "source": "test",
        "phase1_benign_images_per_s": 600.0,
        "phase1_adversarial_images_per_s": 100.0,
        "phase2_benign_images_per_s": 300.0,
        "phase2_adversarial_images_per_s": 30.0,
        "pgd_image_steps_per_s": 1000.0,
        "kernel_file_s": 2.0,
    }
    the_grid = tiny_grid(
        tmp_path, robustness=ROBUSTNESS, throughput=throughput
    )
    cells = the_grid.cells()
    cost = estimate.estimate(the_grid, cells)
    # Per image: AutoAttack with apgd_iters = 10: APGD-CE 10, APGD-T 9 x 10,
    # FAB-T 9 x 100, Square 5000 / 3; APGD-CE alone 10.
    autoattack = 10 + 90 + 900 + 5000 / 3
    per_model = 100 * (autoattack + 10 + 10) / 1000
    assert cost["stages"]["robustness"] == (
        6,
        pytest.approx(2 * per_model / 3600),
    )


def test_estimate_by_hand(tiny, capsys):
    config, _, write = tiny
    config["phase1"]["loaders"] = ["C", "A"]
    config["phase2"] = {"loaders": ["A"], "epochs": 3}
    config["throughput"] = dict(THROUGHPUT)
    the_grid = grid.Grid.load(write(config))
    cost = estimate.estimate(the_grid, the_grid.cells())
    # 300 training images, 100 test images, 5 PGD steps x 2 attacks.
    run_eval = 100 * 5 * 2 / 1000
    phase1 = (300 / 600 + run_eval) + (300 / 100 + run_eval)
    phase2 = 2 * (3 * 300 / 30 + run_eval)
    evals = 2 * (100 * 5 / 1000)
    kernel = 2 * 10 * 2.0  # two runs, class 'all': 10 files each
    assert cost["stages"]["phase1"] == (2, pytest.approx(phase1 / 3600))
    assert cost["stages"]["phase2"] == (2, pytest.approx(phase2 / 3600))
    assert cost["stages"]["eval"] == (2, pytest.approx(evals / 3600))
    assert cost["stages"]["kernel"] == (2, pytest.approx(kernel / 3600))
    total = (phase1 + phase2 + evals + kernel) / 3600
    assert cost["total"] == pytest.approx(total)
    assert sweep_main(write(config), "--estimate") == 0
    # The unit follows [throughput].device ("D" names no kind of chip).
    assert f"total {total:.1f} device-hours" in capsys.readouterr().out


def test_estimate_adds_each_cells_start_up(tiny):
    """throughput.cell_start_s: every cell (a new process) costs that many
    seconds more, analysis cells too."""
    config, _, write = tiny
    config["throughput"] = dict(THROUGHPUT)
    the_grid = grid.Grid.load(write(config))
    cells = the_grid.cells()
    without = estimate.estimate(the_grid, cells)
    config["throughput"]["cell_start_s"] = 30.0
    started = grid.Grid.load(write(config))
    with_start = estimate.estimate(started, started.cells())
    for stage, (count, hours) in without["stages"].items():
        assert with_start["stages"][stage] == (
            count,
            pytest.approx(hours + count * 30.0 / 3600),
        )
    assert with_start["total"] == pytest.approx(
        without["total"] + len(cells) * 30.0 / 3600
    )


def test_estimate_needs_throughput(tiny, capsys):
    _, _, write = tiny
    assert sweep_main(write(), "--estimate") == 2
    assert_one_line_error(capsys.readouterr().err, "[throughput]")


def test_unit_item_estimate_hours_follow_the_device(tiny, capsys):
    """--estimate names the hours after [throughput].device: CPU-hours for
    a CPU (configs/cpu-resnet.toml), GPU-hours for an NVIDIA GPU, else
    device-hours; never GPU-hours for a CPU."""
    assert estimate.hours_unit("CPU, 2 cores (JAX 0.5.3)") == "CPU-hours"
    assert estimate.hours_unit("NVIDIA H100 80GB HBM3") == "GPU-hours"
    assert estimate.hours_unit("TPU v5e") == "TPU-hours"
    assert estimate.hours_unit("D") == "device-hours"
    cpu = os.path.join(ROOT, "configs", "cpu-resnet.toml")
    assert sweep_main(cpu, "--estimate") == 0
    out = capsys.readouterr().out
    assert "CPU-hours" in out and "GPU-hours" not in out
