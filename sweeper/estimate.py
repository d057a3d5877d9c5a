"""The cost of a grid (`sweep.py --estimate`): device hours of each cell
from the config's [throughput], measured images per second, and the
dataset registry's split sizes (`data.DATASETS`)."""

import attacks
import data
from ntk import kernel_files
from sweeper.grid import Cell, Grid
from training import train
from utils import UserError


def _run_eval_seconds(grid: Grid) -> float:
    """Seconds of run_exp.py's evaluation at the end of a run."""
    c = grid.config
    test_images = c["data"]["test_size"] or _dataset(grid).n_test
    run_eval = test_images * c["attack"]["eval_pgd_iters"]
    run_eval *= len(c["attack"]["eval_attacks"])
    return run_eval / c["throughput"]["pgd_image_steps_per_s"]


def _dataset(grid: Grid) -> data.Dataset:
    return data.get_dataset(grid.config["data"]["dataset"])


def _phase1_seconds(grid: Grid, cell: Cell, train_images: int) -> float:
    """Phase-1 training: adversarial epochs at their rate, the others at
    the benign one."""
    c = grid.config
    rate = c["throughput"]
    epochs = c["phase1"]["epochs"]
    adversarial = {
        "C": 0,
        "A": epochs,
        "F": max(0, epochs - train.MIXED_SWITCH_EPOCH),
    }[cell.keys["phase1"]]
    seconds = adversarial * train_images
    seconds /= rate["phase1_adversarial_images_per_s"]
    seconds += (
        (epochs - adversarial)
        * train_images
        / (rate["phase1_benign_images_per_s"])
    )
    return seconds


def cell_seconds(grid: Grid, cell: Cell) -> float:
    """Estimated device seconds of `cell` from the config's [throughput]:
    its work at the measured rates (work_seconds) and its start-up
    (`cell_start_s`, each cell a new process)."""
    return work_seconds(grid, cell) + grid.config["throughput"]["cell_start_s"]


def work_seconds(grid: Grid, cell: Cell) -> float:
    """Device seconds of `cell`'s work at the config's [throughput] rates."""
    c = grid.config
    rate = c["throughput"]
    d = c["data"]
    train_images = d["train_size"] or _dataset(grid).n_train
    if cell.stage == "phase1":
        seconds = _phase1_seconds(grid, cell, train_images)
        return seconds + _run_eval_seconds(grid)
    if cell.stage == "phase2":
        kind = "adversarial" if cell.keys["phase2"] == "A" else "benign"
        per_s = rate[f"phase2_{kind}_images_per_s"]
        seconds = c["phase2"]["epochs"] * train_images / per_s
        return seconds + _run_eval_seconds(grid)
    if cell.stage == "eval":
        e = c["evaluation"]
        images = e["test_size"] or _dataset(grid).n_test
        return images * e["pgd_iters"] / rate["pgd_image_steps_per_s"]
    if cell.stage == "kernel":
        files = len(cell.keys["times"]) * len(grid.kernel_classes())
        if c["kernels"]["class_index"] == kernel_files.COMBINED:
            files = len(cell.keys["times"]) * _dataset(grid).n_classes
        return files * rate["kernel_file_s"]
    if cell.stage == "features":
        return rate["features_s"]
    if cell.stage == "robustness":
        return robustness_seconds(grid, cell)
    return 0.0


def attack_steps(attack: str, budget: dict) -> float:
    """PGD-step equivalents per test image of `attack` with `budget`
    (--attack_budget, over the standard AutoAttack's defaults): its
    registry entry's cost, an upper bound, as if every image went through
    every iteration. AutoAttack's is the sum of its attacks' (each runs
    only on the images the earlier ones left robust, so the bound holds
    for a model robust to all); PGD's is at eval_and_make_adv.py's
    default --pgd_iters, which its robustness cells run."""
    return attacks.get(attack).cost(attacks.Budget(**budget))


def robustness_seconds(grid: Grid, cell: Cell) -> float:
    """A robustness cell: its attack's PGD-step equivalents per image
    (attack_steps) × the test images / throughput.pgd_image_steps_per_s."""
    r = grid.config["robustness"]
    images = r["test_size"] or _dataset(grid).n_test
    steps = attack_steps(cell.keys["attack"], r["budget"])
    return images * steps / grid.config["throughput"]["pgd_image_steps_per_s"]


# The unit of the hours of a [throughput].device, by the first of these
# words its name holds (case aside); "device-hours" for none.
HOUR_UNITS = (
    ("tpu", "TPU-hours"),
    ("cpu", "CPU-hours"),
    ("gpu", "GPU-hours"),
    ("nvidia", "GPU-hours"),
    ("cuda", "GPU-hours"),
    ("amd instinct", "GPU-hours"),
)


def hours_unit(device: str) -> str:
    """The unit of the estimate's hours on `device` ([throughput].device):
    'CPU-hours' for 'CPU, 2 cores', 'GPU-hours' for 'NVIDIA H100 80GB',
    'TPU-hours', else 'device-hours'."""
    words = device.lower()
    for word, unit in HOUR_UNITS:
        if word in words:
            return unit
    return "device-hours"


def estimate(grid: Grid, cells: list) -> dict:
    """Device hours by stage: {stage: (cells, hours)}, plus 'total',
    'per_seed', the 'device' and 'source' of [throughput] and the 'unit' of
    the hours (hours_unit). Raises UserError when the config has no
    [throughput]."""
    if grid.config["throughput"] is None:
        raise UserError(
            f"{grid.path}: --estimate needs a [throughput] section (measured "
            f"images/s and their source)"
        )
    by_stage = {}
    for cell in cells:
        count, hours = by_stage.get(cell.stage, (0, 0.0))
        by_stage[cell.stage] = (
            count + 1,
            hours + cell_seconds(grid, cell) / 3600,
        )
    total = sum(hours for _, hours in by_stage.values())
    seeds = len(grid.config[""]["seeds"])
    return {
        "stages": by_stage,
        "total": total,
        "per_seed": total / seeds,
        "device": grid.config["throughput"]["device"],
        "source": grid.config["throughput"]["source"],
        "unit": hours_unit(grid.config["throughput"]["device"]),
    }
