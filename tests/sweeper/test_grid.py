"""grid.py: the config file, its refusals, the cells (exact commands and
dependencies), their state and the cost estimate; sweep.py --dry_run."""

import os
import shlex

import numpy as np
import pytest

import cli
import data
import sweep
import utils
from helpers import ROOT, assert_one_line_error, files_snapshot
from ntk import kernel_files
from store import atomic
from sweep_fixtures import (
    THROUGHPUT,
    sweep_main,
    toml_text,
)
from sweeper import estimate, grid, runners, schema

PRESETS = ("cpu-small", "cpu-resnet", "gpu-fmnist", "paper-cifar10")


# --------------------------------------------------------------------------
# Presets and defaults
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    the_grid = grid.Grid.load(os.path.join(ROOT, "configs", f"{name}.toml"))
    assert the_grid.name == name
    assert the_grid.config["phase2"]["dynamics"] == ["centered"]
    stages = {cell.stage for cell in the_grid.cells()}
    # Evaluation, robustness and feature cells only where the preset has
    # the section (the stage of [evaluation]'s cells is eval).
    sections = {"evaluation": "eval", "robustness": "robustness"}
    sections["features"] = "features"
    unused = {
        stage
        for section, stage in sections.items()
        if not the_grid.config[section]
    }
    assert stages == set(schema.STAGES) - unused


@pytest.mark.parametrize("name", ["cpu-small", "cpu-resnet"])
def test_cpu_presets_decide_claim_one(name):
    """The CPU presets have three seeds, kernels of every seed on the same
    images and the analysis across seeds: the seed baseline exists."""
    the_grid = grid.Grid.load(os.path.join(ROOT, "configs", f"{name}.toml"))
    assert the_grid.config[""]["seeds"] == [0, 1, 2]
    cells = the_grid.cells()
    assert "between_seeds/analysis" in [c.id for c in cells]
    image_seeds = {
        c.args[c.args.index("--random_seed") + 1]
        for c in cells
        if c.stage == "kernel"
    }
    assert image_seeds == {"0"}


# --------------------------------------------------------------------------
# Bad input: one line naming the key, exit 2, nothing written
# --------------------------------------------------------------------------


def _refused(write_args, capsys, root, *named):
    status = sweep_main(write_args, "--dry_run")
    err = capsys.readouterr().err
    assert status == 2
    assert_one_line_error(err, *named)
    assert not os.path.exists(root)


def test_unknown_key_refused(tiny, capsys):
    config, root, write = tiny
    config["phase2"]["lrate"] = 0.1
    _refused(write(config), capsys, root, "phase2.lrate")


def test_unknown_section_refused(tiny, capsys):
    config, root, write = tiny
    config["phase3"] = {"epochs": 1}
    _refused(write(config), capsys, root, "phase3")


def test_missing_key_refused(tiny, capsys):
    config, root, write = tiny
    del config["phase1"]["epochs"]
    _refused(write(config), capsys, root, "missing key phase1.epochs")


def test_key_without_value_refused(tiny, capsys):
    config, root, write = tiny
    text = toml_text(config).replace("epochs = 1\n", "epochs =\n", 1)
    _refused(write(text=text), capsys, root, "phase1.epochs")


def test_wrong_type_refused(tiny, capsys):
    config, root, write = tiny
    config["phase2"]["epochs"] = "2"
    _refused(write(config), capsys, root, "phase2.epochs", "an integer")


def test_bad_value_refused(tiny, capsys):
    config, root, write = tiny
    config["phase2"]["loaders"] = ["C", "F"]
    _refused(write(config), capsys, root, "phase2.loaders", "'F'")


def test_phase2_from_unsaved_t_refused(tiny, capsys):
    config, root, write = tiny
    config["phase2"]["times"] = [2]
    _refused(
        write(config),
        capsys,
        root,
        "phase2.times",
        "t = 2",
        "phase1.epochs = 1",
    )


def test_kernel_size_not_a_multiple_of_classes_refused(tiny, capsys):
    config, root, write = tiny
    config["kernels"]["sizes"] = [25]
    _refused(write(config), capsys, root, "kernels.sizes", "25")


def test_features_without_their_kernel_refused(tiny, capsys):
    config, root, write = tiny
    config["kernels"]["class_index"] = 3
    config["features"] = {"times": [1], "class_index": 0}
    _refused(write(config), capsys, root, "features.class_index")


def test_output_root_under_a_file_refused(tiny, capsys, tmp_path):
    config, _, write = tiny
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    root = blocker / "root"
    config["output_root"] = str(root)
    _refused(write(config), capsys, root, "output_root")


def test_unwritable_output_root_refused(tiny, capsys):
    """/sys refuses new files even to root."""
    config, _, write = tiny
    root = "/sys/sweep_test_root"
    try:
        grid.check_output_root("x", root)
    except utils.UserError:
        pass
    else:
        pytest.skip("/sys is writable here")
    config["output_root"] = root
    _refused(write(config), capsys, root, "output_root", "not writable")


def test_no_mode_refused(tiny, capsys):
    _, _, write = tiny
    status = sweep_main(write())
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, "--dry_run", "--local")


def test_entry_point_refuses_in_one_line(tiny):
    """The same refusal through the script itself."""
    from helpers import run_script

    config, root, write = tiny
    config["model"]["depth"] = 3
    result = run_script("sweep.py", write(config), "--dry_run")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "model.depth")
    assert not os.path.exists(root)


# --------------------------------------------------------------------------
# Cells: exact commands and dependencies
# --------------------------------------------------------------------------


def test_cells_are_the_exact_commands(tiny):
    config, root, write = tiny
    config["phase1"]["loaders"] = ["A"]
    config["phase2"] = {
        "loaders": ["C"],
        "epochs": 2,
        "lr": 0.05,
        "dynamics": ["centered", "standard"],
    }
    config["kernels"] = {"sizes": [20], "class_index": 3}
    config["features"] = {"times": [1], "class_index": 3, "steps": 7}
    the_grid = grid.Grid.load(write(config))
    cells = {cell.id: cell for cell in the_grid.cells()}
    r, data_path = str(root), "/nowhere/data"
    p1 = f"{r}/seed_0/phase1_A"
    common = ["--random_seed", "0", "--data_path", data_path]
    run = common + ["--train_size", "300", "--test_size", "100"]
    run += ["--eps", "8", "--train_pgd_iters", "3", "--eval_pgd_iters", "5"]
    run += ["--eval_attacks", "linf,l2"]
    want = {
        "seed_0/phase1_A": [
            "run_exp.py",
            "--standard_epochs",
            "1",
            "--linear_epochs",
            "0",
            "--loaders",
            "AC",
            "--save_models",
            "--constant_save",
            "--save_path",
            p1,
            "--model",
            "mlp_skinny",  # no --width: an MLP has none
            "--dataset",
            "fashion_mnist",
            *run,
            "--state_every",
            "1",
            "--no_progress",
        ],
    }
    for dynamics, flag in (
        ("centered", "--centering"),
        ("standard", "--do_standard_second"),
    ):
        p2 = f"{p1}/t_1/phase2_C_{dynamics}"
        want[f"seed_0/phase1_A/t_1/phase2_C_{dynamics}"] = [
            "run_exp.py",
            "--base_model_path",
            f"{p1}/parameters_checkpoint_1.pkl",
            "--loaders",
            "AC",
            "--linear_epochs",
            "2",
            "--second_lr",
            "0.05",
            flag,
            "--skip_first_test",
            "--save_models",
            "--save_path",
            p2,
            *run,
            "--no_progress",
        ]
        eval_flags = (
            ["--linear", "--centering"] if dynamics == "centered" else []
        )
        want[f"seed_0/phase1_A/t_1/phase2_C_{dynamics}/eval"] = [
            "eval_and_make_adv.py",
            "--model_path",
            f"{p2}/parameters_final.pkl",
            *eval_flags,
            "--bonus_dir",
            "eval",
            "--save_name",
            "test_results",
            *common,
            "--eps",
            "8",
            "--pgd_iters",
            "5",
            "--test_size",
            "100",
            "--no_progress",
        ]
    want["seed_0/phase1_A/kernels/t_1_n_20"] = [
        "calculate_kernel.py",
        "--model_path",
        f"{p1}/parameters_checkpoint_1.pkl",
        "--dataset_size",
        "20",
        "--class_index",
        "3",
        "--bonus_dir",
        "kernels/parameters_checkpoint_1",
        *common,
    ]
    # One phase-1 run with kernels at one t: no pair, so no analysis cell.
    assert "seed_0/analysis" not in cells
    want["seed_0/phase1_A/features/t_1"] = [
        "visualize_ntk_features.py",
        "--model_path",
        f"{p1}/parameters_checkpoint_1.pkl",
        "--class_index",
        "3",
        "--dataset_size",
        "20",
        "--n_images",
        "3",
        "--steps",
        "7",
        "--bonus_dir",
        "kernels/parameters_checkpoint_1",
        "--data_path",
        data_path,
    ]
    assert {k: c.argv() for k, c in cells.items()} == want
    p2c = "seed_0/phase1_A/t_1/phase2_C_centered"
    deps = {k: c.deps for k, c in cells.items()}
    assert deps == {
        "seed_0/phase1_A": (),
        p2c: ("seed_0/phase1_A",),
        p2c + "/eval": (p2c,),
        "seed_0/phase1_A/t_1/phase2_C_standard": ("seed_0/phase1_A",),
        "seed_0/phase1_A/t_1/phase2_C_standard/eval": (
            "seed_0/phase1_A/t_1/phase2_C_standard",
        ),
        "seed_0/phase1_A/kernels/t_1_n_20": ("seed_0/phase1_A",),
        "seed_0/phase1_A/features/t_1": ("seed_0/phase1_A/kernels/t_1_n_20",),
    }
    # Files that show each cell finished.
    kernel_dir = f"{p1}/kernels/parameters_checkpoint_1"
    assert cells["seed_0/phase1_A/kernels/t_1_n_20"].outputs == (
        f"{kernel_dir}/saved_kernel_class_3_20.pkl",
    )
    assert cells["seed_0/phase1_A/features/t_1"].outputs == (
        f"{kernel_dir}/ntk_eig_images_class_3_20.pkl",
        f"{kernel_dir}/ntk_eig_images_class_3_20.png",
    )
    assert cells[p2c + "/eval"].outputs == (
        f"{p1}/t_1/phase2_C_centered/eval/results_test_results.json",
    )
    # Every cell comes after the cells it needs.
    order = list(cells)
    for cell_id, needed in deps.items():
        assert all(order.index(d) < order.index(cell_id) for d in needed)


def test_analysis_compares_benign_and_adversarial(tiny):
    config, root, write = tiny
    config["phase1"]["loaders"] = ["C", "A"]
    config["seeds"] = [0, 1]
    the_grid = grid.Grid.load(write(config))
    analyses = [c for c in the_grid.cells() if c.stage == "analysis"]
    assert [c.id for c in analyses] == [
        "seed_0/analysis",
        "seed_1/analysis",
        "between_seeds/analysis",
    ]
    s1 = f"{root}/seed_1"
    assert analyses[1].args == (
        f"{s1}/phase1_C/kernels",
        f"{s1}/phase1_A/kernels",
        "--out_dir",
        f"{s1}/analysis",
        "--compare",
        f"{s1}/phase1_C/kernels",
        f"{s1}/phase1_A/kernels",
    )
    assert analyses[1].deps == (
        "seed_1/phase1_C/kernels/t_1_n_20",
        "seed_1/phase1_A/kernels/t_1_n_20",
    )
    # The seed baseline: each loader's runs of every seed, as replicates,
    # after every kernel cell.
    s0 = f"{root}/seed_0"
    assert analyses[2].args == (
        "--replicates",
        f"{s0}/phase1_C/kernels",
        f"{s1}/phase1_C/kernels",
        "--replicates",
        f"{s0}/phase1_A/kernels",
        f"{s1}/phase1_A/kernels",
        "--out_dir",
        f"{root}/between_seeds",
        "--no_figures",
        "--no_progress",
    )
    assert set(analyses[2].deps) == {
        c.id for c in the_grid.cells() if c.stage == "kernel"
    }
    assert f"{root}/between_seeds/replicates.csv" in analyses[2].outputs
    # Kernels of every seed are taken on the same images (kernels.
    # image_seed, default 0), so that they can be compared.
    for cell in the_grid.cells():
        if cell.stage == "kernel":
            seed_flag = cell.args.index("--random_seed")
            assert cell.args[seed_flag + 1] == "0", cell.id
    config["kernels"]["image_seed"] = 5
    the_grid = grid.Grid.load(write(config))
    kernel = [c for c in the_grid.cells() if c.stage == "kernel"][-1]
    assert kernel.args[kernel.args.index("--random_seed") + 1] == "5"
    # One seed: no seed baseline.
    config["seeds"] = [0]
    the_grid = grid.Grid.load(write(config))
    assert "between_seeds/analysis" not in [c.id for c in the_grid.cells()]


# --------------------------------------------------------------------------
# phase1.order_replicate: the benign run C′_s from θ_s(0), another order
# --------------------------------------------------------------------------


def replicate_grid(config, write, **phase1):
    """The tiny grid with C and A in seeds 0 and 1, phase 2 from t = 1,
    kernels at t = 0.5 and 1, and phase1.order_replicate (or `phase1`)."""
    config["phase1"].update(
        loaders=["C", "A"], times=[0.5, 1], order_replicate=True, **phase1
    )
    config["phase2"]["times"] = [1]
    config["seeds"] = [0, 1]
    config["features"] = {"times": [1], "class_index": 0}
    return grid.Grid.load(write(config))


def test_order_replicate_is_c_again_with_another_order_seed(tiny):
    config, root, write = tiny
    cells = {c.id: c for c in replicate_grid(config, write).cells()}
    for seed in (0, 1):
        s = f"seed_{seed}"
        twin, benign = cells[f"{s}/phase1_C_reordered"], cells[f"{s}/phase1_C"]
        save = f"{root}/{s}/phase1_C_reordered"
        want = list(benign.argv())
        want[want.index(benign.keys["save_path"])] = save
        want[-1:-1] = ["--order_seed", str(seed + 1000)]
        assert twin.argv() == want
        assert twin.stage == "phase1" and twin.deps == ()
        assert twin.keys == dict(
            seed=seed, phase1="C", save_path=save, order_seed=seed + 1000
        )
        assert grid.is_reordered(twin) and not grid.is_reordered(benign)
        # Its kernels: the same t, sizes and images as the other runs'.
        kernel = cells[f"{s}/phase1_C_reordered/kernels/n_20_from_t_0.5"]
        other = cells[f"{s}/phase1_C/kernels/n_20_from_t_0.5"]
        assert kernel.deps == (twin.id,)
        assert kernel.args == tuple(
            a.replace("phase1_C/", "phase1_C_reordered/") for a in other.args
        )
        assert [grid.kernel_key(None, p) for p in kernel.outputs] == [
            (seed, "C_reordered", t, c, 20)
            for t in (0.5, 1)
            for c in range(10)
        ]
        # The seed's analysis reads them too; nothing else does.
        analysis = cells[f"{s}/analysis"]
        assert f"{save}/kernels" in analysis.args
        assert kernel.id in analysis.deps
        assert not [c for c in cells if c.startswith(f"{twin.id}/t_")]
        assert not [c for c in cells if c.startswith(f"{twin.id}/features")]
        assert cells[f"{s}/phase1_C/features/t_1"].deps == (other.id,)
    between = cells["between_seeds/analysis"]
    assert not [a for a in between.args if "reordered" in a]
    assert not [d for d in between.deps if "reordered" in d]


def test_order_replicate_off_leaves_every_cell_as_it_was(tiny):
    config, _, write = tiny
    without = replicate_grid(config, write).cells()
    config["phase1"]["order_replicate"] = False
    off = grid.Grid.load(write(config)).cells()
    del config["phase1"]["order_replicate"]
    absent = grid.Grid.load(write(config)).cells()
    assert off == absent
    # The seeds' analyses read C′'s kernels too.
    assert [c for c in without if not grid.is_reordered(c)] != off
    assert {c.id for c in without} - {c.id for c in off} == {
        f"seed_{s}/phase1_C_reordered{rest}"
        for s in (0, 1)
        for rest in ("", "/kernels/n_20_from_t_0.5")
    }


@pytest.mark.parametrize(
    "change, named",
    [
        ({"loaders": ["A"]}, "phase1.loaders has no C"),
        ({"kernels": None}, "needs a [kernels] section"),
        ({"seeds": [2**32 - 1000]}, "--order_seed 4294967296"),
    ],
)
def test_order_replicate_refusals(tiny, capsys, change, named):
    config, _, write = tiny
    config["phase1"]["order_replicate"] = True
    config["phase1"].update(change.get("loaders") and change or {})
    if "kernels" in change:
        del config["kernels"], config["analysis"]
    config["seeds"] = change.get("seeds", config["seeds"])
    assert sweep_main(write(config), "--dry_run") == 2
    assert_one_line_error(capsys.readouterr().err, "order_replicate", named)


def test_order_replicate_in_dry_run_estimate_and_record(tiny, capsys):
    config, root, write = tiny
    config["throughput"] = dict(THROUGHPUT)
    the_grid = replicate_grid(config, write)
    cells = the_grid.cells()
    assert sweep_main(write(config), "--dry_run") == 0
    out = capsys.readouterr().out
    assert "# seed_1/phase1_C_reordered [phase1, to run]" in out
    assert "--order_seed 1001" in out
    # Costed as a benign phase-1 run and its kernel files.
    cost = estimate.estimate(the_grid, cells)
    config["phase1"]["order_replicate"] = False
    plain = grid.Grid.load(write(config))
    base = estimate.estimate(plain, plain.cells())
    benign = 300 / 600 + 100 * 5 * 2 / 1000
    count, hours = cost["stages"]["phase1"]
    assert count == base["stages"]["phase1"][0] + 2
    assert hours == pytest.approx(
        base["stages"]["phase1"][1] + 2 * benign / 3600
    )
    kernel_hours = cost["stages"]["kernel"][1] - base["stages"]["kernel"][1]
    assert kernel_hours == pytest.approx(2 * 2 * 10 * 2.0 / 3600)
    # An axis: switching it on over an existing sweep adds its cells.
    plain.write_record()
    replicate_grid(config, write).check_record()


def test_order_replicate_resumes_and_is_checked_against_its_flags(tiny):
    config, _, write = tiny
    the_grid = replicate_grid(config, write)
    twin = [c for c in the_grid.cells() if grid.is_reordered(c)][0]
    save = twin.keys["save_path"]
    os.makedirs(save)
    atomic.atomic_pickle(f"{save}/train_state.pkl", {"stage": "standard"})
    assert grid.cell_status(twin) == grid.PARTIAL
    assert twin.argv(resume=True)[-1] == "--resume"
    flags = vars(sweep.PARSERS["run_exp.py"](list(twin.args)))
    assert flags["order_seed"] == 1000 and flags["random_seed"] == 0
    atomic.atomic_write_json(f"{save}/config.json", {"flags": flags})
    the_grid.check_cells(the_grid.cells(), sweep.PARSERS)
    atomic.atomic_write_json(
        f"{save}/config.json", {"flags": dict(flags, order_seed=0)}
    )
    with pytest.raises(utils.UserError, match="phase1.order_replicate"):
        the_grid.check_cells(the_grid.cells(), sweep.PARSERS)


def fake_local_runs(monkeypatch) -> list:
    """Cells run here 'run' by noting their ids in the list returned
    (no command runs, no dataset is read)."""
    ran = []

    def fake(cell, env=None, on_start=None):
        ran.append(cell.id)
        return runners.Outcome(cell.id, runners.OK)

    monkeypatch.setattr(runners, "prepare_data", lambda the_grid: None)
    monkeypatch.setattr(runners, "execute_cell", fake)
    return ran


def test_order_replicate_runs_locally_after_nothing(tiny, monkeypatch):
    """run_local runs C′ and its kernels, each after what it needs."""
    config, _, write = tiny
    the_grid = replicate_grid(config, write)
    ran = fake_local_runs(monkeypatch)
    runners.run_local(the_grid, the_grid.cells(), 1, echo=lambda line: None)
    twin = "seed_0/phase1_C_reordered"
    assert twin in ran
    assert ran.index(twin) < ran.index(f"{twin}/kernels/n_20_from_t_0.5")
    assert ran.index(f"{twin}/kernels/n_20_from_t_0.5") < ran.index(
        "seed_0/analysis"
    )


def test_order_replicate_goes_to_slurm_with_its_stage(tiny, monkeypatch):
    config, _, write = tiny
    the_grid = replicate_grid(config, write)
    submitted = []

    class Executor:
        folder = "slurm"

        def update_parameters(self, **params):
            self.dependency = params.get("dependency")

        def map_array(self, fn, cells, roots):
            array = str(100 + len(submitted))
            submitted.append(([c.id for c in cells], self.dependency, array))
            return [
                type("Job", (), {"job_id": f"{array}_{i}"})
                for i in range(len(cells))
            ]

    monkeypatch.setattr(runners, "prepare_data", lambda the_grid: None)
    monkeypatch.setattr(runners, "_executor", lambda the_grid: Executor())
    runners.run_slurm(
        the_grid, the_grid.cells(), wait=False, echo=lambda line: None
    )
    twin = "seed_1/phase1_C_reordered"
    kernel = f"{twin}/kernels/n_20_from_t_0.5"
    phase1_ids, dependency, phase1_array = submitted[0]
    assert twin in phase1_ids and dependency is None
    # Each kernel cell after its own phase-1 task, C′'s included.
    kernel_ids, dependency, _ = [s for s in submitted if kernel in s[0]][0]
    assert dependency == f"aftercorr:{phase1_array}"
    assert kernel_ids.index(kernel) == phase1_ids.index(twin)


# --------------------------------------------------------------------------
# sweep.py --only kernels
# --------------------------------------------------------------------------


def test_only_kernels_prints_estimates_and_runs_their_cells(
    tiny, capsys, monkeypatch
):
    config, _, write = tiny
    config["throughput"] = dict(THROUGHPUT)
    the_grid = replicate_grid(config, write)
    path = the_grid.path
    part = [c for c in the_grid.cells() if c.stage in grid.ONLY["kernels"]]
    assert {c.stage for c in part} == {"phase1", "kernel", "analysis"}
    assert the_grid.only_cells(the_grid.cells(), "kernels") == part
    assert sweep_main(path, "--dry_run", "--only", "kernels") == 0
    out = capsys.readouterr().out
    printed = [
        line[2:].split(" [")[0]
        for line in out.splitlines()
        if line.startswith("# ") and " [" in line
    ]
    assert printed == [c.id for c in part]
    assert "phase2" not in out and "features" not in out
    cost = estimate.estimate(the_grid, part)
    assert set(cost["stages"]) == {"phase1", "kernel", "analysis"}
    ran = fake_local_runs(monkeypatch)
    assert sweep_main(path, "--local", "1", "--only", "kernels") == 0
    assert sorted(ran) == sorted(c.id for c in part)


@pytest.mark.parametrize(
    "change, argv, named",
    [
        ({}, ["--dry_run", "--only", "plots"], "--only"),
        ({"analysis": None}, ["--dry_run", "--only", "kernels"], "[analysis]"),
        (
            {"analysis": None, "kernels": None},
            ["--local", "1", "--only", "kernels"],
            "[kernels]",
        ),
    ],
)
def test_only_refusals(tiny, capsys, change, argv, named):
    config, root, write = tiny
    for section in change:
        config.pop(section)
    assert sweep_main(write(config), *argv) == 2
    assert_one_line_error(capsys.readouterr().err, named)
    assert not os.path.exists(root)


def test_kernel_cells_in_the_several_path_form(tiny, monkeypatch):
    """KERNEL_CHECKPOINTS_PER_CALL = None (the default): one
    calculate_kernel.py call per phase-1 run and size, writing the same
    files as one call per checkpoint."""
    config, root, write = tiny
    config["phase1"]["times"] = [0.5, 1]
    path = write(config)
    joined = [c for c in grid.Grid.load(path).cells() if c.stage == "kernel"]
    monkeypatch.setattr(grid, "KERNEL_CHECKPOINTS_PER_CALL", 1)
    one_each = [c for c in grid.Grid.load(path).cells() if c.stage == "kernel"]
    assert len(one_each) == 2 and len(joined) == 1
    p1 = f"{root}/seed_0/phase1_C"
    assert joined[0].args[:4] == (
        "--model_path",
        f"{p1}/parameters_checkpoint_0.5.pkl",
        f"{p1}/parameters_checkpoint_1.pkl",
        "--dataset_size",
    )
    assert "kernels/{name}" in joined[0].args
    assert joined[0].outputs == one_each[0].outputs + one_each[1].outputs


def test_cell_status_from_the_files(tiny, tmp_path):
    config, root, write = tiny
    cells = grid.Grid.load(write(config)).cells()
    phase1, kernel = cells[0], [c for c in cells if c.stage == "kernel"][0]
    assert grid.cell_status(phase1) == grid.TODO
    save = phase1.keys["save_path"]
    os.makedirs(save)
    state = os.path.join(save, "train_state.pkl")
    atomic.atomic_pickle(state, {"stage": "standard"})
    assert grid.cell_status(phase1) == grid.PARTIAL
    atomic.atomic_pickle(state, {"stage": "done"})
    assert grid.cell_status(phase1) == grid.TODO  # no results.json
    atomic.atomic_write_json(os.path.join(save, "results.json"), {})
    assert grid.cell_status(phase1) == grid.DONE
    for i, path in enumerate(kernel.outputs):
        assert grid.cell_status(kernel) == grid.TODO
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic.atomic_write_bytes(path, b"x")
        if i == len(kernel.outputs) - 1:
            assert grid.cell_status(kernel) == grid.DONE


# --------------------------------------------------------------------------
# Dry run, estimate, the record of a sweep
# --------------------------------------------------------------------------


def test_dry_run_prints_every_command(tiny, capsys):
    config, root, write = tiny
    path = write(config)
    assert sweep_main(path, "--dry_run") == 0
    out = capsys.readouterr().out.splitlines()
    commands = [line for line in out if not line.startswith("#")]
    cells = grid.Grid.load(path).cells()
    assert commands == [c.command(grid.python_display()) for c in cells]
    assert shlex.split(commands[0])[1:] == cells[0].argv()
    assert not os.path.exists(root)


def test_output_root_of_another_sweep_refused(tiny, capsys):
    config, root, write = tiny
    the_grid = grid.Grid.load(write(config))
    the_grid.write_record()
    # Axes may change: more seeds add cells.
    config["seeds"] = [0, 1]
    grid.Grid.load(write(config)).check_record()
    # Settings every cell depends on may not.
    config["phase2"]["lr"] = 0.5
    with pytest.raises(utils.UserError, match="phase2.lr"):
        grid.Grid.load(write(config)).check_record()
    status = sweep_main(write(config), "--local", "1")
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, "phase2.lr", "0.01")


# --------------------------------------------------------------------------
# Promises of sweep.py (docs/sweep.md, "Promises of sweep.py")
# --------------------------------------------------------------------------

REFERENCE = {
    "phase1": "C",
    "t": 1.0,
    "phase2": "C",
    "clean": 0.5,
    "linf": 0.25,
    "source": "S",
}


def _with(config, section, key, placeholder):
    """`config` with `section.key` set to a number written as
    `placeholder` (replaced in the TOML text by a value Python cannot
    write there, e.g. nan)."""
    if section == "":
        config[key] = placeholder
    elif isinstance(config.get(section), list):
        config[section][0][key] = placeholder
    else:
        config[section] = dict(config.get(section) or {}, **{key: placeholder})
    return config


@pytest.mark.parametrize(
    "section, key, toml_value, value, rule",
    [
        ("attack", "eps", "nan", float("nan"), (0, None, True)),
        ("attack", "eps", "-inf", float("-inf"), (0, None, True)),
        ("phase2", "lr", "inf", float("inf"), (0, None, True)),
        ("phase2", "lr", "nan", float("nan"), (0, None, True)),
        ("kernels", "memory_gb", "nan", float("nan"), (0, None, False)),
        ("slurm", "mem_gb", "inf", float("inf"), (0, None, False)),
        (
            "throughput",
            "phase1_adversarial_images_per_s",
            "nan",
            float("nan"),
            (0, None, True),
        ),
        ("throughput", "kernel_file_s", "inf", float("inf"), (0, None, False)),
        ("reference", "clean", "nan", float("nan"), (0, 1, False)),
        ("reference", "linf", "1.5", 1.5, (0, 1, False)),
        ("attack", "eps", "0.0", 0.0, (0, None, True)),
        ("phase1", "epochs", "-1", -1, (0, None, False)),
        (
            "phase1",
            "epochs",
            str(2**63),
            2**63,
            (-(2**63), 2**63 - 1, False),
        ),
    ],
)
def test_promise_grid_numbers_checked_like_cli(
    tiny, capsys, section, key, toml_value, value, rule
):
    """Every number of a grid by cli.number's rule (finite, in range), one
    line naming the key, before anything is written: even with --local,
    no sweep.json, no cell."""
    config, root, write = tiny
    config["throughput"] = dict(THROUGHPUT)
    config["reference"] = [dict(REFERENCE)]
    placeholder = 123456.75
    _with(config, section, key, placeholder)
    text = toml_text(config).replace(repr(placeholder), toml_value)
    minimum, maximum, above = rule
    problem = cli.number_problem(value, minimum, maximum, above=above)
    assert problem  # the scripts' own rule refuses it
    status = sweep_main(write(text=text), "--local", "1")
    assert status == 2
    name = f"{section}.{key}" if section else key
    assert_one_line_error(capsys.readouterr().err, f"{name} {problem}")
    assert not os.path.exists(root)


def test_promise_grid_numbers_checked_like_cli_in_tables(tiny, capsys):
    """The numbers of [slurm] tables too; a boolean is not a number."""
    config, root, write = tiny
    config["slurm"]["additional"] = {"exclusive": True, "nodes": 1.5}
    text = toml_text(config).replace("nodes = 1.5", "nodes = nan")
    assert sweep_main(write(text=text), "--dry_run") == 2
    assert_one_line_error(
        capsys.readouterr().err, "slurm.additional.nodes must be finite"
    )
    assert not os.path.exists(root)


def _script_refusal(call):
    with pytest.raises(utils.UserError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize(
    "section, key, value, words",
    [
        ("", "seeds", [2**32], lambda: _subset(20, 2**32)),
        ("kernels", "image_seed", 2**32, lambda: _subset(20, 2**32)),
        ("data", "train_size", 205, lambda: _subset(205, 0)),
        ("data", "test_size", 55, lambda: _subset(55, 0)),
        ("evaluation", "test_size", 55, lambda: _subset(55, 0)),
        ("kernels", "sizes", [25], lambda: _subset(25, 0)),
    ],
)
def test_promise_grid_refuses_what_the_scripts_refuse(
    tiny, capsys, section, key, value, words
):
    """Values the cells' scripts would refuse are refused by the grid
    check, in the scripts' own words (data.balanced_subset_indices, which
    run_exp.py, eval_and_make_adv.py and calculate_kernel.py draw their
    subsets with)."""
    config, root, write = tiny
    _with(config, section, key, value)
    assert sweep_main(write(config), "--dry_run") == 2
    name = f"{section}.{key}" if section else key
    assert_one_line_error(capsys.readouterr().err, f"{name}: {words()}")
    assert not os.path.exists(root)


def _subset(size, seed):
    """The refusal of the scripts' class-balanced draw, 10 classes."""
    labels = [c for c in range(10) for _ in range(30)]
    return _script_refusal(
        lambda: data.balanced_subset_indices(labels, size, seed)
    )


def test_promise_huge_epochs_planned_lazily(tiny, capsys):
    """phase1.epochs = 10**8: the saved t are never listed; the dry run
    prints every command, and an unsaved t is refused in a short line."""
    config, root, write = tiny
    config["phase1"]["epochs"] = 100_000_000
    config["phase2"]["times"] = [1, 99_999_999]
    config["kernels"]["times"] = [0.125, 100_000_000]
    assert sweep_main(write(config), "--dry_run") == 0
    out = capsys.readouterr().out
    assert "--standard_epochs 100000000 " in out
    assert "parameters_checkpoint_99999999.pkl" in out
    assert not os.path.exists(root)
    config["phase2"]["times"] = [2.5, 99_999_999.5]
    assert sweep_main(write(config), "--dry_run") == 2
    err = capsys.readouterr().err
    assert_one_line_error(
        err,
        "phase2.times has t = 99999999.5",
        "saved: every integer from 0 to 100000000 and 0.125, 0.25",
    )
    assert len(err) < 400
    # is_saved is saved_times without the list.
    for epochs in range(5):
        saved = schema.saved_times(epochs)
        for t in [k / 8 for k in range(50)]:
            assert schema.is_saved(t, epochs) == (t in saved), (t, epochs)


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(name="../../evil"), "name must be a plain file name"),
        (dict(name=""), "name must be a plain file name"),
        (dict(name=".."), "name must be a plain file name"),
        (dict(name="a/b"), "name must be a plain file name"),
        (dict(output_root=""), "output_root must not be empty"),
        (dict(data={"data_path": ""}), "data.data_path must not be empty"),
        (
            dict(slurm={"timeout_min": {"phase1": True}}),
            "slurm.timeout_min.phase1 must be a positive integer",
        ),
        (dict(phase2={"epochs": True}), "phase2.epochs must be an integer"),
        (dict(attack={"eps": True}), "attack.eps must be a number"),
        (dict(seeds=[0, False]), "seeds must be a list of integers"),
    ],
)
def test_promise_grid_names_are_plain_and_values_typed(
    tiny, capsys, tmp_path, change, named
):
    """Names that become file names are plain file names (nothing written
    outside --results_dir); no value may be empty where a path is meant;
    booleans are not numbers. Refused even with --aggregate, before
    anything is written."""
    config, root, write = tiny
    for section, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(section), dict):
            config[section] = dict(config[section], **value)
        else:
            config[section] = value
    results = tmp_path / "results"
    status = sweep_main(
        write(config),
        "--aggregate",
        "--results_dir",
        results,
        "--report",
        tmp_path / "R.md",
    )
    assert status == 2
    assert_one_line_error(capsys.readouterr().err, named)
    assert sorted(os.listdir(tmp_path)) == ["grid.toml"]


def test_promise_grid_names_are_plain_and_values_typed_flags(tiny, capsys):
    """The same of sweep.py's own path flags: an empty one is refused."""
    _, root, write = tiny
    path = write()
    for flag in ("--output_root", "--results_dir", "--report"):
        assert sweep_main(path, "--dry_run", flag, "") == 2
        assert_one_line_error(capsys.readouterr().err, f"{flag} must not")
    assert not os.path.exists(root)


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_text('{"fixed": {"attack.ep'), "not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "a JSON list, not an object"),
        (lambda p: p.write_text('{"fixed": [1]}'), "no 'fixed' object"),
        (lambda p: p.write_text('"fixed"'), "a JSON str, not an object"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
        (lambda p: p.mkdir(), "a folder, not a file"),
    ],
)
@pytest.mark.parametrize("mode", ["--local", "--aggregate"])
def test_promise_damaged_sweep_record_is_one_line(
    tiny, capsys, tmp_path, damage, problem, mode
):
    """A truncated, wrong-typed or folder sweep.json: one line naming the
    file and the fix, exit 2, nothing else written in the output root."""
    config, root, write = tiny
    os.makedirs(root)
    record = root / "sweep.json"
    damage(record)
    args = ["--local", "1"] if mode == "--local" else ["--aggregate"]
    status = sweep_main(
        write(config),
        *args,
        "--results_dir",
        tmp_path / "results",
        "--report",
        tmp_path / "R.md",
    )
    assert status == 2
    assert_one_line_error(
        capsys.readouterr().err,
        f"{record} is not a sweep record ({problem}",
        "restore it, or remove it",
    )
    assert os.listdir(root) == ["sweep.json"]
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------
# Issue 30: cells checked against their files; sizes the data can give
# --------------------------------------------------------------------------


def _write_kernels(the_grid, image_seed):
    """Every kernel cell's files, as calculate_kernel.py --random_seed
    `image_seed` writes them (small random PSD kernels), and the
    analysis cells' outputs."""
    rng = np.random.default_rng(0)
    for cell in the_grid.cells():
        if cell.stage == "kernel":
            n, classes = cell.keys["size"], the_grid.kernel_classes()
            features = rng.normal(size=(len(classes), n, 3))
            for t in cell.keys["times"]:
                out_dir = grid.here(the_grid.kernel_dir(cell, t))
                os.makedirs(out_dir, exist_ok=True)
                kernel_files.write(
                    out_dir,
                    "saved_kernel",
                    kernel_files.Kernels(
                        kernel_files.ALL_CLASSES,
                        np.einsum("cni,cmi->cnm", features, features),
                        np.arange(n) % 10,
                        np.arange(n),
                    ),
                    n_logits=10,
                    epoch=t,
                    random_seed=image_seed,
                    use_linear_params=False,
                )
        if cell.stage == "analysis":
            for path in cell.outputs:
                atomic.atomic_write_text(grid.here(path), "\n")


def test_item14_kernel_cells_checked_against_their_files(
    tiny, capsys, tmp_path
):
    """Kernels made with kernels.image_seed = 0 under a grid that now says
    5 (its sweep.json removed): --dry_run calls them and the analysis of
    them made with other flags, never finished; --aggregate and --local
    refuse the root in one line naming the cell, the flag and the grid key,
    and write nothing (no sweep.json over the old kernels)."""
    config, root, write = tiny
    config["kernels"]["image_seed"] = 5
    config["phase1"]["times"] = [0, 1]  # two kernels: an analysis cell
    path = write(config)
    the_grid = grid.Grid.load(path)
    _write_kernels(the_grid, image_seed=0)
    kernel_cell = next(c for c in the_grid.cells() if c.stage == "kernel")
    analysis_cell = next(c for c in the_grid.cells() if c.stage == "analysis")
    assert grid.cell_status(kernel_cell) == grid.DONE
    before = files_snapshot(tmp_path)
    assert sweep_main(path, "--dry_run") == 0
    out = capsys.readouterr().out
    assert (
        f"# {kernel_cell.id} [kernel, made with other flags: "
        "--random_seed 0, not 5" in out
    )
    assert (
        f"# {analysis_cell.id} [analysis, made from cells of other flags: "
        f"{kernel_cell.id}" in out
    )
    results = tmp_path / "results"
    for mode in (
        ["--aggregate", "--results_dir", results, "--report", tmp_path / "R"],
        ["--local", "1"],
    ):
        assert sweep_main(path, *mode) == 2
        err = capsys.readouterr().err
        assert_one_line_error(
            err, kernel_cell.id, "--random_seed 0, not 5", "kernels.image_seed"
        )
        assert files_snapshot(tmp_path) == before
    # The grid that made them finds them finished.
    config["kernels"]["image_seed"] = 0
    assert sweep_main(write(config), "--dry_run") == 0
    assert f"# {kernel_cell.id} [kernel, finished" in capsys.readouterr().out


SIZES = {
    "data.train_size": (("data", "train_size", 60010), 6000, 6001),
    "data.test_size": (("data", "test_size", 10010), 1000, 1001),
    "kernels.sizes": (("kernels", "sizes", [70000]), 6000, 7000),
    "evaluation.test_size": (("evaluation", "test_size", 20000), 1000, 2000),
}


@pytest.mark.parametrize("name", list(SIZES))
def test_item15_sizes_the_data_cannot_give_refused_by_the_grid_check(
    tiny, capsys, name
):
    """More images per class than Fashion-MNIST's split has (6,000 for
    training and the kernels, 1,000 for the test): refused by --dry_run in
    the words of the scripts' own refusal (data.balanced_subset_indices),
    nothing written."""
    config, root, write = tiny
    (section, key, value), have, asked = SIZES[name]
    _with(config, section, key, value)
    path = write(config)
    before = files_snapshot(root.parent)
    assert sweep_main(path, "--dry_run") == 2
    err = capsys.readouterr().err
    labels = np.repeat(np.arange(10), have)
    words = _script_refusal(
        lambda: data.balanced_subset_indices(labels, asked * 10, 0)
    )
    # "class 0 has 6000 images, fewer than the 6001 per class asked for:
    # pick a smaller subset size": the same words but the class's name.
    assert words.startswith("class 0 has ")
    assert_one_line_error(err, name, words[len("class 0 ") :])
    assert files_snapshot(root.parent) == before
    assert not os.path.exists(root)
