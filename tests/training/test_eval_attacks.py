"""eval_and_make_adv.py --attack: the parameter-free attacks of attacks/ on
real checkpoints (a small trained MLP, and the ResNet-18 checkpoints of
tests/fixtures/pre_packages) under every dynamics. AutoAttack's robust
accuracy must not exceed PGD's on the same images, and its per-example
record must agree with its accuracies."""

import json
import os
import shutil

import numpy as np
import pytest

import attacks
import cli
import data
import eval_and_make_adv
from helpers import ROOT
from store import checkpoints

# A budget that keeps each run to seconds; PGD gets fewer steps than
# APGD-CE alone, so AutoAttack can only do better.
BUDGET = [
    "--attack_budget",
    "apgd_iters=20",
    "n_targets=3",
    "fab_iters=10",
    "square_queries=200",
]
DYNAMICS = {
    "standard": [],
    "linear": ["--linear"],
    "centered": ["--linear", "--centering"],
}
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pre_packages")
TEST_SIZE = 30  # three test images of each class


@pytest.fixture(scope="module")
def checkpoints_dir(tmp_path_factory, fashion_data, tiny_mlp):
    """{'mlp': path, 'resnet_phase1': path, 'resnet_phase2': path} and the
    data folder (a link to the session's), all in one temporary folder."""
    root = tmp_path_factory.mktemp("attacks")
    os.symlink(fashion_data, root / "data")
    trained = tiny_mlp
    paths = {"mlp": str(root / "mlp" / "parameters_final.pkl")}
    checkpoints.save_checkpoint(
        paths["mlp"],
        trained["params"],
        trained["lin_params"],
        trained["state"],
        trained["meta"],
    )
    for name, file in (
        ("resnet_phase1", "phase1_parameters_final.pkl"),
        ("resnet_phase2", "phase2_linear_centered_parameters_final.pkl"),
    ):
        os.makedirs(root / name)
        paths[name] = str(root / name / "parameters_final.pkl")
        shutil.copy(os.path.join(FIXTURES, file), paths[name])
    return root, paths


def run(root, argv, monkeypatch):
    monkeypatch.chdir(root)
    return cli.run_cli(lambda: eval_and_make_adv.main(argv))


def evaluate(root, model_path, flags, name, monkeypatch, test_size=TEST_SIZE):
    """Runs the script; returns (results JSON, test-results pickle)."""
    argv = [
        "--model_path",
        model_path,
        "--data_path",
        str(root / "data"),
        "--test_size",
        str(test_size),
        "--pgd_iters",
        "5",
        "--save_name",
        name,
        "--no_progress",
        *flags,
    ]
    run(root, argv, monkeypatch)
    folder = os.path.dirname(model_path)
    with open(os.path.join(folder, f"results_{name}.json")) as f:
        record = json.load(f)
    results = checkpoints.load_pickle_arrays(
        os.path.join(folder, f"test_results_{name}.pkl")
    )
    return record, results


def subset_labels(root, test_size=TEST_SIZE):
    """The labels of the script's class-balanced test subset."""
    split = data.load_split("fashion_mnist", str(root / "data"), train=False)
    return data.subset(*split, test_size, 0)[1]


def check_consistent(record, results, labels):
    """The per-example codes, their counts and the accuracies agree: an
    example counts as robust exactly where its adversarial image is
    classified right, and as wrong when clean where its clean one is not."""
    (row,) = record["sources"]
    codes = np.asarray(results["broken_by"])
    counts = row["broken_by"]
    assert sum(counts.values()) == row["n"] == len(codes) == len(labels)
    assert counts["robust"] / row["n"] == pytest.approx(row["acc_dirty"])
    assert counts["clean"] / row["n"] == pytest.approx(1 - row["acc_clean"])
    right = results["predictions_dirty"] == labels
    assert np.array_equal(right, codes == attacks.ROBUST)
    wrong_clean = results["predictions_clean"] != labels
    assert np.array_equal(wrong_clean, codes == attacks.CLEAN)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,dynamics",
    [
        ("mlp", "standard"),
        ("mlp", "linear"),
        ("mlp", "centered"),
        ("resnet_phase1", "standard"),
        ("resnet_phase2", "linear"),
        ("resnet_phase2", "centered"),
    ],
)
def test_autoattack_is_at_most_pgd(
    checkpoints_dir, monkeypatch, model, dynamics
):
    root, paths = checkpoints_dir
    flags = DYNAMICS[dynamics]
    pgd, _ = evaluate(
        root, paths[model], flags, f"pgd_{dynamics}", monkeypatch
    )
    aa, results = evaluate(
        root,
        paths[model],
        [*flags, "--attack", "autoattack", *BUDGET],
        f"aa_{dynamics}",
        monkeypatch,
    )
    (pgd_row,) = pgd["sources"]
    (aa_row,) = aa["sources"]
    assert aa_row["acc_clean"] == pgd_row["acc_clean"]
    assert aa_row["acc_dirty"] <= pgd_row["acc_dirty"]
    assert aa["attack"]["name"] == "autoattack"
    assert aa["attack"]["attacks"] == list(attacks.STANDARD)
    assert aa["attack"]["budget"]["apgd_iters"] == 20
    assert pgd["attack"]["name"] == "pgd" and "broken_by" not in pgd_row
    check_consistent(aa, results, subset_labels(root))
