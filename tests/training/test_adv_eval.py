"""training.adv_eval, eval_and_make_adv.py's library, part by part on an
untrained MLP and records made here: the settings of the flags, what is
evaluated, the warnings, the attack, the outputs and their refusals (the
whole evaluation runs in test_eval_and_make_adv_script.py)."""

import dataclasses
import os

import numpy as np
import pytest

import attacks
import models
import utils
from cli import eval_and_make_adv
from helpers import write_untrained_checkpoint
from store import checkpoints, layout
from training import adv_eval
from utils import UserError


def settings(*argv):
    """AdvEvalSettings of eval_and_make_adv.py's flags `argv`."""
    args = eval_and_make_adv.parse_args(["--model_path", "r/p.pkl", *argv])
    return eval_and_make_adv.settings(args)


def test_settings_are_the_flags_typed():
    chosen = settings("--eps", "4", "--short", "--save_name", "s")
    assert (chosen.eps, chosen.save_name, chosen.short) == (4.0, "s", True)
    assert chosen.flags["eps"] == 4.0 and chosen.flags["model_path"] == (
        "r/p.pkl"
    )
    assert chosen.max_batches == adv_eval.SHORT_BATCHES
    assert settings().max_batches is None
    assert adv_eval.output_folder(settings("--bonus_dir", "out")) == (
        os.path.join("r", "out")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained mlp_skinny checkpoint whose lin_params differ."""
    path = write_untrained_checkpoint(
        tmp_path_factory.mktemp("adv_eval") / "parameters_final.pkl"
    )
    loaded = checkpoints.load_checkpoint(path)
    lin_params = {
        layer: {name: value + 0.5 for name, value in weights.items()}
        for layer, weights in loaded["params"].items()
    }
    checkpoints.save_checkpoint(
        path, loaded["params"], lin_params, loaded["net_state"], loaded["meta"]
    )
    return path


@pytest.mark.parametrize(
    "flags, dynamics, parameters, point",
    [
        ((), models.STANDARD, "params", None),
        (("--linear",), models.Dynamics(True, False), "lin_params", "params"),
        (
            ("--linear", "--centering"),
            models.Dynamics(True, True),
            "lin_params",
            "params",
        ),
        (
            ("--centering",),
            models.Dynamics(False, True),
            "params",
            "lin_params",
        ),
    ],
)
def test_the_network_evaluated(checkpoint, flags, dynamics, parameters, point):
    chosen = dataclasses.replace(settings(*flags), model_path=checkpoint)
    loaded, spec = adv_eval.load_model(chosen)
    network = adv_eval.choose_network(chosen, loaded, spec)
    assert network.dynamics == dynamics
    assert adv_eval.describe_network(network) == {
        "linear": dynamics.linear,
        "centering": dynamics.centering,
        "parameters": parameters,
        "expansion_point": point,
    }
    # Without --linear, --centering evaluates f(x; params) − f(x;
    # lin_params): the network "at" lin_params expanded around params.
    trained, around = (
        ("lin_params", "params")
        if dynamics.linear or dynamics.centering
        else ("params", "params")
    )
    if dynamics.centering and not dynamics.linear:
        trained, around = around, trained
    assert utils.tree_equal(network.params, loaded[trained])
    assert utils.tree_equal(network.params0, loaded[around])


def test_warnings_say_where_flags_and_checkpoint_do_not_fit():
    w = {"layer": {"w": np.ones(2, np.float32)}}
    other = {"layer": {"w": np.zeros(2, np.float32)}}
    same = {"params": w, "lin_params": w, "meta": {}}
    differ = {"params": w, "lin_params": other, "meta": {"linear": False}}
    assert adv_eval.model_warnings(settings("--linear"), same)[0].startswith(
        "lin_params equal params in r/p.pkl (no phase 2?)"
    )
    assert (
        "all zero" in adv_eval.model_warnings(settings("--centering"), same)[0]
    )
    assert (
        "--do_standard_second"
        in adv_eval.model_warnings(settings("--linear"), differ)[0]
    )
    assert "not used" in adv_eval.model_warnings(settings(), differ)[0]
    assert adv_eval.model_warnings(settings(), same) == []


def test_the_attack_of_the_flags():
    pgd = adv_eval.attack_config(settings("--eps", "8", "--pgd_iters", "7"))
    assert (pgd.norm, pgd.iters) == ("linf", 7)
    assert pgd.eps == pytest.approx(8 / 255)
    l2 = adv_eval.attack_config(settings("--attack_norm", "l2"))
    assert (l2.norm, l2.eps) == ("l2", 0.25)
    assert adv_eval.attack_config(settings("--no_adv")) is None
    record = adv_eval.attack_record(pgd, settings("--eps", "8"))
    assert record["name"] == "pgd"
    assert adv_eval.attack_record(None, settings()) is None
    free = adv_eval.attack_config(settings("--attack", "square"))
    assert isinstance(free, attacks.ParameterFree)
    with pytest.raises(UserError, match="--no_adv runs no attack"):
        adv_eval.attack_config(settings("--no_adv", "--attack", "square"))


def test_outputs_are_named_after_the_save_name():
    one = adv_eval.output_paths("d", "s", 0, 1)
    assert one == layout.eval_outputs("d", "s")
    assert adv_eval.output_paths("d", "s", 1, 2) == layout.eval_outputs(
        "d", "s_1"
    )


def test_transfer_record_table_and_summary():
    rows = [
        {"source": "a.pkl", "n": 10, "acc_clean": 0.5, "acc_dirty": 0.25},
        {"source": "bb.pkl", "n": 4, "acc_clean": 1.0, "acc_dirty": None},
    ]
    results = {
        "model_path": "m",
        "model": {},
        "evaluated": {},
        "attack": None,
        "sources": [dict(row, seconds=1.0) for row in rows],
    }
    assert adv_eval.transfer_record(results)["rows"] == rows
    assert adv_eval.transfer_table(rows).splitlines() == [
        "source       n    clean   robust",
        "a.pkl       10   50.00%   25.00%",
        "bb.pkl       4  100.00%        -",
    ]
    assert adv_eval.summary_line(rows[0]) == (
        "a.pkl: n=10 clean 50.00%, robust 25.00%"
    )
    assert adv_eval.summary_line(rows[1]) == "bb.pkl: n=4 clean 100.00%"


def test_an_earlier_evaluation_is_refused_or_replaced(tmp_path):
    out = str(tmp_path / "out")
    chosen = settings("--save_name", "s")
    assert adv_eval.check_outputs(chosen, out) == []
    contents = {layout.eval_record(out, "s"): {"a": 1}}
    adv_eval.write_outputs(chosen, out, contents)
    with pytest.raises(UserError, match="holds another evaluation saved"):
        adv_eval.check_outputs(chosen, out)
    again = settings("--save_name", "s", "--overwrite")
    old = os.path.join(out, "test_results_s.pkl")
    open(old, "wb").close()
    adv_eval.write_outputs(again, out, contents)
    assert os.listdir(out) == ["results_s.json"]
