"""analyze_kernels.py end to end: on kernel files written by
kernel_files.write from small random positive semi-definite kernels (two
runs over the same epochs, per-class and combined kernels, cross kernels),
every table checked against the formulas evaluated directly on the files'
matrices; one-line refusals of bad input that write nothing; and the whole
chain run_exp.py → calculate_kernel.py → analyze_kernels.py on a tiny
Fashion-MNIST run."""

import errno
import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

import analyze_kernels
import cli
import utils
from analysis import kernel_analysis, outputs
from helpers import (
    assert_one_line_error,
    files_snapshot,
    load_pickle,
    needs_fashion_mnist,
    run_script,
    write_untrained_checkpoint,
)
from kernel_objects import direct_distance
from ntk import kernel_files
from store import atomic
from sweeper import grid

N, M, C = 12, 6, 3  # images, test images, classes
EPOCHS = (0, 0.125, 0.5, 1, 2)
RUNS = ("CC", "AC")
REQUIRED = [
    "path",
    "epoch",
    "class_index",
    "n",
    "top10_mass",
    "top20_mass",
    "effective_rank",
    "condition_number",
    "lambda_max",
    "target_alignment",
    "centered_target_alignment",
    "kernel_regression_accuracy",
]


def write_run(folder, seed, epochs=EPOCHS, indices=None, speed=1.0):
    """Kernels of classes 0..C−1 and their mean at each epoch, in
    folder/kernels/{checkpoint name}/ as calculate_kernel.py --bonus_dir
    kernels/{name} writes them, drifting from a common start."""
    rng = np.random.default_rng(seed)
    start = np.random.default_rng(0).normal(size=(N + M, 5))
    labels = np.arange(N) % C
    for epoch in epochs:
        features = start + speed * np.sqrt(epoch) * rng.normal(size=(N + M, 5))
        full = np.stack(
            [(1 + c) * features @ features.T + c for c in range(C)]
        ).astype(np.float32)
        name = f"parameters_checkpoint_{epoch:g}"
        out = os.path.join(folder, "kernels", name)
        os.makedirs(out, exist_ok=True)
        common = dict(
            n_logits=C,
            epoch=epoch,
            phase="standard",
            checkpoint_relpath=os.path.join("..", "..", f"{name}.pkl"),
        )
        chosen = np.arange(N) if indices is None else indices
        tests = dict(test_labels=np.arange(M) % C, test_indices=np.arange(M))
        kernel_files.write(
            out,
            "saved_kernel",
            kernel_files.Kernels(
                kernel_files.ALL_CLASSES,
                full[:, :N, :N],
                labels,
                chosen,
                test_kernel=full[:, N:, :N],
                **tests,
            ),
            **common,
        )
        kernel_files.write(
            out,
            "saved_kernel",
            kernel_files.Kernels(
                kernel_files.COMBINED,
                full.mean(0)[:N, :N],
                labels,
                chosen,
                test_kernel=full.mean(0)[N:, :N],
                **tests,
            ),
            **common,
        )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed, run in enumerate(RUNS):
        write_run(str(root / run), seed + 1, speed=1.0 + 2 * seed)
    return root


def analyze(argv):
    """(exit status, stdout, stderr) of main(argv) run as the script runs
    it, in this process."""
    return analyze_kernels.main([str(a) for a in argv])


def run_main(argv, capsys):
    try:
        cli.run_cli(lambda: analyze(argv))
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def kernel_matrix(path):
    """The file's kernel as a notebook reads it, float64."""
    return load_pickle(path)["kernel"].astype(np.float64)


@pytest.fixture(scope="module")
def analysed(runs, tmp_path_factory):
    """The analysis of both runs with --compare, figures left out."""
    out = tmp_path_factory.mktemp("analysis")
    cc, ac = runs / "CC" / "kernels", runs / "AC" / "kernels"
    analyze(
        [cc, ac, "--out_dir", out, "--compare", cc, ac]
        + ["--no_figures", "--no_progress"]
    )
    return out


def test_tables_hold_every_kernel_and_pair(analysed, runs):
    kernels = pd.read_csv(analysed / "kernels.csv")
    assert set(REQUIRED) <= set(kernels.columns)
    assert len(kernels) == len(RUNS) * len(EPOCHS) * (C + 1)
    assert sorted(kernels["epoch"].unique()) == list(EPOCHS)
    assert set(kernels["run"]) == {str(runs / run) for run in RUNS}
    # Pairs: within each class (and the combined kernel), every two of the
    # two runs' five epochs.
    pairwise = pd.read_csv(analysed / "pairwise.csv")
    assert list(pairwise.columns[:3]) == ["a", "b", "distance"]
    n = len(RUNS) * len(EPOCHS)
    assert len(pairwise) == (C + 1) * n * (n - 1) // 2
    for row in pairwise.sample(10, random_state=0).itertuples():
        want = direct_distance(kernel_matrix(row.a), kernel_matrix(row.b))
        assert row.distance == pytest.approx(want, abs=1e-9)
        assert load_pickle(row.a)["class_index"] == row.class_index
        assert load_pickle(row.b)["class_index"] == row.class_index


def test_kernel_rows_match_the_formulas(analysed):
    kernels = pd.read_csv(analysed / "kernels.csv")
    for row in kernels.sample(6, random_state=1).itertuples():
        record = load_pickle(row.path)
        matrix = record["kernel"].astype(np.float64)
        values = np.sort(np.linalg.eigvalsh(matrix))[::-1]
        assert row.n == N and row.class_index == record["class_index"]
        assert row.lambda_max == pytest.approx(values[0])
        assert row.top10_mass == pytest.approx(
            np.sum(values[:10] ** 2) / np.sum(matrix**2)
        )
        assert row.top20_mass == pytest.approx(1.0)  # 20 > N
        y = np.eye(C)[record["labels"]]
        if row.class_index != kernel_files.COMBINED:
            y = y[:, [row.class_index]]
        target = y @ y.T
        assert row.target_alignment == pytest.approx(
            np.sum(matrix * target)
            / (np.linalg.norm(matrix) * np.linalg.norm(target))
        )
        assert 0 <= row.kernel_regression_accuracy <= 1


def test_series_hold_velocities_and_polar_coordinates(analysed, runs):
    series = pd.read_csv(analysed / "series.csv")
    combined = series[
        (series["class_index"] == kernel_files.COMBINED)
        & (series["run"] == str(runs / "AC"))
    ]
    assert list(combined["epoch"]) == list(EPOCHS)
    matrices = [kernel_matrix(path) for path in combined["path"]]
    for i in range(len(EPOCHS) - 1):
        want = direct_distance(matrices[i], matrices[i + 1]) / (
            EPOCHS[i + 1] - EPOCHS[i]
        )
        assert combined["velocity"].iloc[i] == pytest.approx(want)
    assert np.isnan(combined["velocity"].iloc[-1])
    gaps = [np.linalg.norm(k - matrices[0]) for k in matrices]
    np.testing.assert_allclose(combined["r_whole"], np.array(gaps) / gaps[-1])
    np.testing.assert_allclose(
        combined["phi_whole"],
        [np.arccos(1 - direct_distance(k, matrices[0])) for k in matrices],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        combined["distance_to_last"],
        [direct_distance(k, matrices[-1]) for k in matrices],
        atol=1e-9,
    )


def test_compare_is_the_distance_between_runs(analysed):
    rows = pd.read_csv(analysed / "compare.csv")
    assert len(rows) == len(EPOCHS) * (C + 1)
    for row in rows.itertuples():
        assert "CC" in row.a and "AC" in row.b
        assert (
            load_pickle(row.a)["epoch"]
            == row.epoch
            == load_pickle(row.b)["epoch"]
        )
        want = direct_distance(kernel_matrix(row.a), kernel_matrix(row.b))
        assert row.distance == pytest.approx(want, abs=1e-9)
    start = rows[rows["epoch"] == 0]
    assert np.allclose(start["distance"], 0, atol=1e-6)  # same start


def test_json_is_strict_and_complete(analysed):
    text = (analysed / "analysis.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} in analysis.json")

    report = json.loads(text, parse_constant=refuse)
    assert len(report["kernels"]) == len(RUNS) * len(EPOCHS) * (C + 1)
    assert len(report["kernels"][0]["eigenvalues"]) == N
    assert len(report["series"]) == len(RUNS) * (C + 1)
    assert len(report["compare"]["rows"]) == len(EPOCHS) * (C + 1)
    first = report["series"][0]
    assert set(first["polar"]) == {"whole", "top", "rest"}
    assert len(first["velocity"]) == len(EPOCHS) - 1


@pytest.mark.slow
def test_figures_and_notes(runs, tmp_path, capsys):
    """Figures of one run; a kernel without an epoch and pickles that are
    not kernels in the folder are listed in notes."""
    folder = tmp_path / "run"
    shutil.copytree(runs / "CC", folder)
    undated = folder / "kernels" / "other" / "saved_kernel_12.pkl"
    record = load_pickle(
        folder / "kernels" / "parameters_checkpoint_1" / "saved_kernel_12.pkl"
    )
    atomic.atomic_pickle(undated, dict(record, epoch=None))
    atomic.atomic_pickle(
        folder / "kernels" / "ntk_eig_images_class_0_12.pkl",
        {"pos_images": np.zeros((1, 1, 2, 2))},
    )
    out = tmp_path / "out"
    code, stdout, err = run_main(
        [folder, "--out_dir", out, "--no_progress"], capsys
    )
    assert code == 0, err
    assert "1 kernel file(s) record no epoch" in stdout
    assert "1 pickle(s) named like kernel files" in stdout
    for name in (
        "distance_heatmap.png",
        "velocity.png",
        "polar.png",
        "eigenvalue_decay.png",
        "alignment.png",
        "kernel_regression.png",
    ):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    kernels = pd.read_csv(out / "kernels.csv")
    row = kernels[kernels["path"] == str(undated)]
    assert len(row) == 1 and np.isnan(row["distance_to_first"].iloc[0])
    assert str(undated) not in set(pd.read_csv(out / "series.csv")["path"])


# --------------------------------------------------------------------------
# Bad input: one line, nothing written
# --------------------------------------------------------------------------


def one_file(runs, epoch=1, name="saved_kernel_12.pkl", run="CC"):
    return runs / run / "kernels" / f"parameters_checkpoint_{epoch:g}" / name


def bad_cases(runs, tmp_path):
    corrupt = tmp_path / "corrupt_12.pkl"
    corrupt.write_bytes(b"\x80\x05 not a pickle")
    checkpoint = tmp_path / "parameters_checkpoint_3.pkl"
    atomic.atomic_pickle(checkpoint, {"params": {}, "net_state": {}})
    original = tmp_path / "original_12.pkl"
    record = load_pickle(one_file(runs))
    atomic.atomic_pickle(
        original, {"kernel": record["kernel"], "labels": record["labels"]}
    )
    zero = tmp_path / "zero_12.pkl"
    atomic.atomic_pickle(zero, dict(record, kernel=np.zeros((N, N))))
    empty = tmp_path / "empty"
    empty.mkdir()
    # A copy of the CC run whose epoch-2 kernels are of other images.
    other = tmp_path / "other_images"
    write_run(str(other), 5, epochs=(1,))
    write_run(str(other), 5, epochs=(2,), indices=np.arange(N) + 100)
    # Two kernels of one epoch in one series.
    twice = tmp_path / "twice"
    shutil.copytree(runs / "CC", twice)
    shutil.copytree(
        twice / "kernels" / "parameters_checkpoint_1",
        twice / "kernels" / "copy",
    )
    cc = runs / "CC" / "kernels"
    return {
        "missing": ([tmp_path / "absent.pkl", cc], "absent.pkl"),
        "corrupt": ([corrupt, cc], "corrupt_12.pkl"),
        "not a kernel": ([checkpoint, cc], "lacks key(s) kernel"),
        "original": ([original, cc], "original code"),
        "zero": ([zero, cc], "is zero"),
        "single": ([one_file(runs)], "only one kernel"),
        "no pair": (
            [
                one_file(runs),
                one_file(runs, name="saved_kernel_class_0_12.pkl"),
            ],
            "no pair",
        ),
        "empty folder": ([empty], "holds no kernel files"),
        "other images": ([other], "different images"),
        "same epoch twice": ([twice], "both kernels of epoch 1"),
        "compare a file": (
            [cc, "--compare", cc, one_file(runs)],
            "is not a folder",
        ),
        "compare other images": (
            [cc, "--compare", cc, other / "kernels"],
            "different images",
        ),
        "nothing": ([], "no kernels given"),
        "bad top_k": ([cc, "--top_k", "0"], "--top_k"),
    }


CASES = (
    "missing",
    "corrupt",
    "not a kernel",
    "original",
    "zero",
    "single",
    "no pair",
    "empty folder",
    "other images",
    "same epoch twice",
    "compare a file",
    "compare other images",
    "nothing",
    "bad top_k",
)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(
    runs, tmp_path, capsys, case
):
    argv, message = bad_cases(runs, tmp_path)[case]
    out = tmp_path / "out"
    code, _, err = run_main(
        [*argv, "--out_dir", out, "--no_figures", "--no_progress"], capsys
    )
    assert code == 2
    assert_one_line_error(err, message)
    assert not out.exists()


def test_refusal_of_other_images_names_both_files(runs, tmp_path, capsys):
    argv, _ = bad_cases(runs, tmp_path)["other images"]
    _, _, err = run_main([*argv, "--out_dir", tmp_path / "out"], capsys)
    assert (
        "parameters_checkpoint_1" in err and "parameters_checkpoint_2" in err
    )


def test_script_error_has_no_traceback(tmp_path):
    result = run_script(
        "analyze_kernels.py", tmp_path / "absent", "--out_dir", tmp_path / "o"
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "absent")


# --------------------------------------------------------------------------
# The whole chain on a tiny run
# --------------------------------------------------------------------------


@pytest.mark.slow
@needs_fashion_mnist
def test_kernels_of_a_tiny_runs_checkpoints(tmp_path, fashion_data):
    """run_exp.py --constant_save (one epoch: checkpoints 0, 0.125, ...,
    0.75, 1), calculate_kernel.py over all of them in one process with
    cross kernels, then analyze_kernels.py over the kernel folder."""
    data_path, save = fashion_data, tmp_path / "run"
    run_script(
        "run_exp.py",
        *("--standard_epochs", 1, "--linear_epochs", 0, "--constant_save"),
        *("--save_path", save, "--data_path", data_path, "--skip_first_test"),
        *("--dataset", "fashion_mnist", "--model", "mlp_skinny"),
        *("--train_size", 200, "--batch_size", 25, "--no_progress"),
        check=True,
    )
    checkpoints = sorted(
        str(save / name)
        for name in os.listdir(save)
        if name.startswith("parameters_checkpoint_")
    )
    assert len(checkpoints) == 7
    run_script(
        "calculate_kernel.py",
        *("--model_path", *checkpoints, "--bonus_dir", "kernels/{name}"),
        *("--dataset_size", 50, "--test_size", 50, "--data_path", data_path),
        check=True,
    )
    out = tmp_path / "analysis"
    result = run_script(
        "analyze_kernels.py", save / "kernels", "--out_dir", out, check=True
    )
    assert "7 kernel(s), 21 pair(s), 1 series" in result.stdout
    series = pd.read_csv(out / "series.csv")
    assert list(series["epoch"]) == [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1]
    assert set(series["run"]) == {str(save)}
    assert (series["velocity"].iloc[:-1] > 0).all()
    kernels = pd.read_csv(out / "kernels.csv")
    # The kernel changes as the network trains, and predicts better than
    # chance from epoch 0 on.
    assert (kernels["kernel_regression_accuracy"] > 0.2).all()
    assert series["distance_to_first"].iloc[-1] > 0
    assert (out / "polar.png").exists() and (out / "velocity.png").exists()


# --------------------------------------------------------------------------
# Replicates (distance between seeds) and time to settle, by hand
# --------------------------------------------------------------------------

# Kernels diag(cos θ, sin θ) of two images: S between two of them is
# 1 − cos(θ − θ′). Three replicate runs over epochs 0, 1, 2.
ANGLES = {"r0": (0.1, 0.7, 0.8), "r1": (0.1, 0.5, 0.8), "r2": (0.3, 0.7, 1.0)}


def write_angle_run(folder, angles, **extras):
    """The kernels of a run at the angles `angles`, one epoch each;
    `extras`: more entries of every file (e.g. the run it records)."""
    for epoch, theta in enumerate(angles):
        name = f"parameters_checkpoint_{epoch}"
        out = os.path.join(folder, "kernels", name)
        os.makedirs(out)
        kernel_files.write(
            out,
            "saved_kernel",
            kernel_files.Kernels(
                0,
                np.diag([np.cos(theta), np.sin(theta)]).astype(np.float32),
                np.array([0, 1]),
                np.array([5, 9]),
            ),
            n_logits=2,
            epoch=epoch,
            phase="standard",
            checkpoint_relpath=os.path.join("..", "..", f"{name}.pkl"),
            **extras,
        )


@pytest.fixture(scope="module")
def angle_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("angles")
    for run, angles in ANGLES.items():
        write_angle_run(str(root / run), angles)
    return root


def test_distance_between_seeds_and_settle_t_by_hand(angle_runs, tmp_path):
    folders = [angle_runs / run / "kernels" for run in ANGLES]
    out = tmp_path / "out"
    analyze(
        ["--replicates", *folders, "--out_dir", out, "--no_figures"]
        + ["--no_progress", "--settle_fraction", "0.25"]
    )
    table = pd.read_csv(out / "kernels.csv")
    c = 1 - np.cos(0.2)
    expected = {
        # run: per epoch, the mean S to the other two runs' kernels
        "r0": (c / 2, c / 2, c / 2),
        "r1": (c / 2, c, c / 2),
        "r2": (c, c / 2, c),
    }
    for run, values in expected.items():
        rows = table[table["run"].str.endswith(run)].sort_values("epoch")
        np.testing.assert_allclose(
            rows["distance_between_seeds"], values, rtol=1e-6, atol=1e-9
        )
    # r0: S to its last kernel 1 − cos 0.7, 1 − cos 0.1, 0; with f = 0.25
    # the limit is 0.0588, so it settles at epoch 1.
    # r1 and r2: 1 − cos 0.7, 1 − cos 0.3 = 0.0447 < 0.0588, 0: epoch 1.
    assert set(table["settle_t"]) == {1.0}
    pairs = pd.read_csv(out / "replicates.csv")
    assert len(pairs) == 3 * 3  # three pairs of runs, three epochs each
    one = pairs[(pairs["epoch"] == 1)]
    np.testing.assert_allclose(
        sorted(one["distance"]), sorted([c, 0.0, c]), rtol=1e-6, atol=1e-9
    )
    # A smaller fraction: r0's 1 − cos 0.1 = 0.0050 exceeds 0.01 · 0.235.
    strict = tmp_path / "strict"
    analyze(
        [folders[0], "--out_dir", strict, "--no_figures", "--no_progress"]
        + ["--settle_fraction", "0.01"]
    )
    assert set(pd.read_csv(strict / "kernels.csv")["settle_t"]) == {2.0}
    series = pd.read_csv(strict / "series.csv")
    assert set(series["settle_t"]) == {2.0}
    # Without --replicates the column is there, and empty.
    assert (
        pd.read_csv(strict / "kernels.csv")["distance_between_seeds"]
        .isna()
        .all()
    )


def test_replicates_refusals(angle_runs, tmp_path, capsys):
    one = angle_runs / "r0" / "kernels"
    code, _, err = run_main(
        ["--replicates", one, "--out_dir", tmp_path / "o"], capsys
    )
    assert code == 2 and "two or more folders" in err
    code, _, err = run_main(
        [
            "--replicates",
            one,
            tmp_path / "nothing",
            "--out_dir",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 2 and "is not a folder" in err
    # Replicates on other images cannot be compared.
    other = tmp_path / "other"
    write_angle_run(str(other), ANGLES["r1"])
    for path in other.rglob("*.pkl"):
        record = load_pickle(path)
        record["indices"] = np.array([6, 9])
        atomic.atomic_pickle(str(path), record)
    code, _, err = run_main(
        ["--replicates", one, other / "kernels", "--out_dir", tmp_path / "o"],
        capsys,
    )
    assert code == 2 and "different images" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------
# Kernels checked on load; distances whatever the kernels' units
# --------------------------------------------------------------------------


def write_kernel_copy(folder, at, source, **changes):
    """A copy of kernel file `source` as the kernel of epoch `at` of the run
    in `folder`, with `changes` to its entries (arrays kept as given, e.g.
    float64)."""
    name = f"parameters_checkpoint_{at:g}"
    path = folder / "kernels" / name / "saved_kernel_12.pkl"
    record = dict(
        load_pickle(source),
        epoch=at,
        checkpoint_relpath=os.path.join("..", "..", f"{name}.pkl"),
    )
    record.pop("test_kernel")
    for key in ("test_labels", "test_indices"):
        record.pop(key)
    atomic.atomic_pickle(path, dict(record, **changes))
    return path


def test_promise_kernels_are_checked_on_load_and_distances_are_scale_safe(
    runs, tmp_path, capsys
):
    """A kernel that is not positive semi-definite, not symmetric, or of
    epoch NaN or infinity is refused with one line naming its file, and
    nothing is written; K and 1e300·K are at distance 0, without a NumPy
    warning."""
    source = one_file(runs, epoch=0)
    kernel = kernel_matrix(source)
    noise = np.triu(np.random.default_rng(0).normal(size=(N, N)), 1)
    bad = {
        "negative": (
            dict(kernel=-kernel),
            "not positive semi-definite",
        ),
        "indefinite": (
            dict(kernel=kernel - 0.5 * np.abs(kernel).max() * np.eye(N)),
            "not positive semi-definite",
        ),
        "asymmetric": (
            dict(kernel=kernel + np.abs(kernel).max() * noise),
            "not symmetric",
        ),
        "epoch nan": (dict(epoch=float("nan")), "'epoch' is nan"),
        "epoch inf": (dict(epoch=np.float64("inf")), "'epoch' is inf"),
    }
    for case, (changes, message) in bad.items():
        folder = tmp_path / case.replace(" ", "_")
        write_kernel_copy(folder, 1, one_file(runs, epoch=1))
        path = write_kernel_copy(folder, 2, source, **changes)
        out = tmp_path / "out" / case
        code, _, err = run_main(
            [folder, "--out_dir", out, "--no_figures", "--no_progress"],
            capsys,
        )
        assert code == 2, case
        assert_one_line_error(err, str(path), message)
        assert "Warning" not in err
        assert not (tmp_path / "out").exists()

    scaled = tmp_path / "scaled"
    write_kernel_copy(scaled, 0, source, kernel=kernel)
    write_kernel_copy(scaled, 1, source, kernel=kernel * 1e300)
    for factor in (1e300, 1e-300, 3.0):
        assert kernel_analysis.kernel_distance(kernel, kernel * factor) < 1e-12
    out = tmp_path / "scaled_out"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run_main(
            [scaled, "--out_dir", out, "--no_figures", "--no_progress"],
            capsys,
        )
    assert code == 0, err
    pairwise = pd.read_csv(out / "pairwise.csv")
    assert len(pairwise) == 1 and pairwise["distance"][0] < 1e-12
    series = pd.read_csv(out / "series.csv")
    np.testing.assert_allclose(series["distance_to_first"], 0, atol=1e-12)
    np.testing.assert_allclose(series["velocity"][:1], 0, atol=1e-12)
    kernels = pd.read_csv(out / "kernels.csv").sort_values("epoch")
    for column in ("target_alignment", "top10_mass", "effective_rank"):
        first, second = kernels[column]
        assert second == pytest.approx(first, rel=1e-9), column


# --------------------------------------------------------------------------
# A finished analysis has every output
# --------------------------------------------------------------------------


def analysis_cell(out, names, tmp_path):
    """A grid cell whose outputs are `names` in `out`, as the sweep's."""
    return grid.Cell(
        id="analysis",
        stage="analysis",
        script="analyze_kernels.py",
        args=(),
        deps=(),
        outputs=tuple(str(out / name) for name in names),
        keys={},
        log=str(tmp_path / "analysis.log"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["per seed", "between seeds"])
def test_promise_analysis_is_finished_only_when_every_output_is_written(
    angle_runs, tmp_path, capsys, monkeypatch, cell
):
    """A full disk met after the tables a sweep checks were written before
    (a figure of the per-seed cell, series.csv of the cross-seed cell)
    leaves the cell unfinished, so the sweep runs it again, and the re-run
    writes every output."""
    folders = [angle_runs / run / "kernels" for run in ANGLES]
    out = tmp_path / "out"
    if cell == "per seed":
        argv = [folders[0], "--out_dir", out, "--no_progress"]
        names, failing = grid.ANALYSIS_FILES, "distance_heatmap.png"
    else:
        argv = ["--replicates", *folders, "--out_dir", out]
        argv += ["--no_figures", "--no_progress"]
        names, failing = grid.SEEDS_ANALYSIS_FILES, "series.csv"
    the_cell = analysis_cell(out, names, tmp_path)
    assert run_main(argv, capsys)[0] == 0
    assert grid.cell_status(the_cell) == grid.DONE

    def no_space(file):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writers = {"atomic_write_bytes": atomic.atomic_write_bytes}
    writers["atomic_write_text"] = atomic.atomic_write_text
    for name, write in writers.items():

        def full_disk(path, content, write=write):
            if os.path.basename(path) == failing:
                atomic._atomic_write(path, no_space)
            write(path, content)

        monkeypatch.setattr(atomic, name, full_disk)
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert_one_line_error(err, failing, os.strerror(errno.ENOSPC))
    assert grid.cell_status(the_cell) == grid.TODO
    monkeypatch.undo()

    assert run_main(argv, capsys)[0] == 0
    assert grid.cell_status(the_cell) == grid.DONE
    assert (out / failing).exists()


@pytest.mark.parametrize("case", ["bad kernel", "under a file", "drawing"])
def test_promise_nothing_is_created_before_the_checks_pass(
    runs, tmp_path, capsys, monkeypatch, case
):
    """--out_dir (and its missing parents) is created only when the
    outputs are ready: a refused kernel, an --out_dir under a file, or a
    failure while the figures are made leave no folder."""
    folder = tmp_path / "run"
    write_kernel_copy(folder, 1, one_file(runs, epoch=1))
    out = tmp_path / "new" / "out"
    if case == "bad kernel":
        kernel = -kernel_matrix(one_file(runs, epoch=0))
        write_kernel_copy(folder, 2, one_file(runs, epoch=0), kernel=kernel)
        message = "not positive semi-definite"
    else:
        write_kernel_copy(folder, 2, one_file(runs, epoch=2))
    if case == "under a file":
        (tmp_path / "new").write_text("a file where a folder would go")
        message = "is a file"
    if case == "drawing":

        def fail(*args):
            raise utils.UserError("the figures could not be drawn")

        monkeypatch.setattr(outputs, "figures", fail)
        message = "could not be drawn"
    code, _, err = run_main(
        [folder, "--out_dir", out, "--no_progress"], capsys
    )
    assert code == 2
    assert_one_line_error(err, message)
    assert sorted(os.listdir(tmp_path)) == (
        ["new", "run"] if case == "under a file" else ["run"]
    )


# --------------------------------------------------------------------------
# Issue 30: the seed baseline cannot be faked
# --------------------------------------------------------------------------


def refused(argv, capsys, watched, *named):
    """analyze_kernels.py `argv` exits 2 with one `error:` line naming each
    of `named`, and the files under each folder of `watched` are as they
    were (no --out_dir made)."""
    before = [files_snapshot(folder) for folder in watched]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert_one_line_error(err, *named)
    assert [files_snapshot(folder) for folder in watched] == before


def test_item8_a_run_paired_with_itself_is_refused(
    angle_runs, tmp_path, capsys
):
    """The same run twice in a --replicates group or in --compare, however
    it is named (X X, X X/../X, a link to X, a folder and its own
    subfolder), would be at distance 0 from itself: refused, compared as
    real paths, before anything is written."""
    x = angle_runs / "r0" / "kernels"
    (tmp_path / "link").symlink_to(x)
    same = {
        "twice": [x, x],
        "through ..": [x, x / ".." / "kernels"],
        "a link": [x, tmp_path / "link"],
        "its subfolder": [x, x / "parameters_checkpoint_1"],
    }
    out = ["--out_dir", tmp_path / "out", "--no_figures", "--no_progress"]
    for folders in same.values():
        for flag in (["--replicates"], [x, "--compare"]):
            argv = [*flag, *folders, *out]
            refused(argv, capsys, [angle_runs, tmp_path], "one run")


def _identity(loaders="CC", seed=0, **flags):
    """What calculate_kernel.py records of a run (its checkpoint's meta)."""
    recorded = dict({"eps": 4.0, "loaders": loaders}, **flags)
    recorded.update(random_seed=seed, base_model_path=f"s{seed}/ckpt.pkl")
    return {"loaders": loaders, "seed": seed, "flags": recorded}


def test_item9_replicates_differ_only_in_their_seed(tmp_path, capsys):
    """A --replicates group of a benign and an adversarial run, of runs
    with another flag, or of two runs of one seed is refused, from what
    the kernel files record of their training or, for files that record
    none, from their checkpoint's meta; runs that differ in the seed (and
    the base checkpoint's path) alone are analysed."""
    angles = ANGLES["r0"]
    runs = {
        "benign": {"run": _identity("CC", 0)},
        "adversarial": {"run": _identity("AC", 1)},
        "other eps": {"run": _identity("CC", 1, eps=8.0)},
        "seed 1": {"run": _identity("CC", 1)},
        "seed 0 again": {"run": _identity("CC", 0)},
        # run_exp.py records --order_seed, the seed by default: runs of
        # seeds 0 and 1 then differ in it too, and are replicates; an order
        # replicate (order seed = seed + 1000) is a replicate of its kind.
        "seed 0 ordered": {"run": _identity("CC", 0, order_seed=0)},
        "seed 1 ordered": {"run": _identity("CC", 1, order_seed=1)},
        "seed 1 reordered": {"run": _identity("CC", 1, order_seed=1001)},
        "seed 2 reordered": {"run": _identity("CC", 2, order_seed=1002)},
    }
    for name, extras in runs.items():
        write_angle_run(str(tmp_path / name), angles, **extras)
    # A run whose kernel files record nothing: its checkpoints' meta says.
    write_angle_run(str(tmp_path / "meta"), angles)
    for epoch in range(len(angles)):
        write_untrained_checkpoint(
            tmp_path / "meta" / f"parameters_checkpoint_{epoch}.pkl",
            **_identity("AC", 2),
        )
    out = ["--out_dir", tmp_path / "out", "--no_figures", "--no_progress"]
    folder = {name: tmp_path / name / "kernels" for name in [*runs, "meta"]}
    for first, other, named in (
        ("benign", "adversarial", "loaders 'CC' there, 'AC' here"),
        ("benign", "other eps", "--eps 4.0 there, 8.0 here"),
        ("benign", "seed 0 again", "same seed 0"),
        ("benign", "meta", "loaders 'CC' there, 'AC' here"),
        ("seed 0 ordered", "seed 1 reordered", "order_seed − random_seed"),
    ):
        argv = ["--replicates", folder[first], folder[other], *out]
        refused(argv, capsys, [tmp_path], named, "differ")
    for pair in (
        ("benign", "seed 1"),
        ("seed 0 ordered", "seed 1 ordered"),
        ("benign", "seed 1 ordered"),  # a record made before --order_seed
        ("seed 1 reordered", "seed 2 reordered"),
    ):
        argv = ["--replicates", *(folder[name] for name in pair), *out]
        argv[-3] = tmp_path / f"out_{pair[0]}_{pair[1]}"
        assert run_main(argv, capsys)[0] == 0, pair


def test_item10_a_run_belongs_to_one_replicates_group(
    angle_runs, tmp_path, capsys
):
    """A run in two groups (and a group given twice) would get the mean of
    both groups' distances and duplicate replicates.csv's rows: refused,
    compared as real paths."""
    r0, r1, r2 = (angle_runs / run / "kernels" for run in ANGLES)
    out = ["--out_dir", tmp_path / "out", "--no_figures", "--no_progress"]
    for second in (
        [r0, r2],
        [r0, r1],
        [r1 / ".." / ".." / "r0" / "kernels", r2],
    ):
        argv = ["--replicates", r0, r1, "--replicates", *second, *out]
        refused(argv, capsys, [angle_runs, tmp_path], "two groups")
