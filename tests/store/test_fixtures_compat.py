"""Files written by main before the move into packages (issue 19) still load:
tests/fixtures/pre_packages holds a phase-1 and a phase-2 checkpoint, their
resume states and results, and a kernel file, all written at fc224c4. The
checkpoints must give the logits recorded then on the same four images."""

import json
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

import models
from helpers import ROOT
from ntk import kernel_files

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "pre_packages")


def _path(name):
    return os.path.join(FIXTURES, name)


@pytest.mark.medium
def test_checkpoints_give_their_recorded_logits():
    images = jnp.asarray(np.load(_path("images.npy")))
    with open(_path("expected_logits.json")) as f:
        expected = json.load(f)
    cases = {
        "phase1_parameters_final.pkl": models.STANDARD,
        "phase2_linear_centered_parameters_final.pkl": models.Dynamics(
            linear=True, centering=True
        ),
    }
    for name, dynamics in cases.items():
        checkpoint, spec = models.load_with_spec(_path(name))
        assert (spec.model, spec.width, spec.dataset) == (
            "resnet18",
            2,
            "fashion_mnist",
        )
        network = models.Network(
            spec.build().apply,
            dynamics,
            checkpoint["params"],
            checkpoint["lin_params"],
            checkpoint["net_state"],
        )
        logits = np.asarray(network.logits(images)[0])
        want = np.asarray(expected[name], np.float32)
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-7)


def test_kernel_file_reads():
    kernel = kernel_files.read(_path("saved_kernel_class_3_10.pkl"))
    assert kernel.kernel.shape == (10, 10)
    np.testing.assert_allclose(kernel.kernel, kernel.kernel.T, rtol=1e-6)
    assert kernel.class_index == 3
    assert len(kernel.indices) == 10


def test_results_and_resume_states_are_plain_pickles():
    with open(_path("phase1_results.pkl"), "rb") as f:
        results = pickle.load(f)
    assert results["standard"]["clean"] == 0.1
    for name in ("phase1_train_state.pkl", "phase2_train_state.pkl"):
        with open(_path(name), "rb") as f:
            state = pickle.load(f)
        assert state["stage"] == "done"
        assert set(state) >= {"flags", "results", "version"}
