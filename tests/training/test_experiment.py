"""experiment.py without running a network: which flags define a run, what
a folder's content lets a run do, the results files, the checkpoint layout,
phase 2's first state and the resume record. Seconds, no dataset."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli
import data
import models
import run_exp
import utils
from helpers import (
    assert_one_line_error,
    files_snapshot,
    write_untrained_checkpoint,
)
from store import atomic, layout, pickles, resume
from training import experiment, train

ARGS = run_exp.parse_args([])
SETTINGS = run_exp.settings(ARGS)


def args_with(**changes) -> argparse.Namespace:
    return argparse.Namespace(**dict(vars(ARGS), **changes))


def settings_with(**changes) -> experiment.RunSettings:
    return run_exp.settings(args_with(**changes))


def test_settings_keep_every_flag_as_parsed():
    args = args_with(brand_new=1, eval_attacks="linf,", loaders="AC")
    settings = run_exp.settings(args)
    assert settings.flags == vars(args)
    assert settings.run_flags == experiment.run_flags(vars(args))
    assert settings.attack_names == ["linf"]
    assert (settings.loaders, settings.progress) == ("AC", True)


def test_run_flags_are_every_flag_but_the_few_that_change_nothing():
    flags = experiment.run_flags(vars(ARGS))
    assert set(flags) == set(vars(ARGS)) - set(experiment.NON_RUN_FLAGS)
    # A flag added to the parser tomorrow is part of the run by default.
    assert "brand_new" in experiment.run_flags(vars(args_with(brand_new=1)))
    for name in (
        "resume",
        "overwrite",
        "no_progress",
        "state_every",
        "save_path",
        "data_path",
    ):
        assert name not in flags
    # A folder moved elsewhere, or data read from another copy, resumes.
    assert (
        experiment.run_flags(
            vars(args_with(save_path="/moved", data_path="/copy"))
        )
        == flags
    )


def record(stage, **flag_changes):
    return resume.ResumeRecord(
        stage=stage,
        flags=experiment.run_flags(vars(args_with(**flag_changes))),
        results=experiment.results_template(SETTINGS),
    )


@pytest.mark.parametrize(
    "saved, flags, expected",
    [
        (None, {}, "fresh"),
        (None, {"resume": True}, "fresh"),
        ("standard", {"resume": True}, "resume"),
        ("linear", {"resume": True}, "resume"),
        ("standard", {"overwrite": True}, "fresh"),
        ("done", {}, "nothing to do"),
        ("done", {"resume": True}, "nothing to do"),
        ("done", {"overwrite": True}, "fresh"),
    ],
)
def test_what_a_folder_lets_a_run_do(tmp_path, saved, flags, expected):
    settings = settings_with(save_path=str(tmp_path), **flags)
    saved = None if saved is None else record(saved)
    assert experiment._plan_start(settings, saved) == expected


@pytest.mark.parametrize(
    "saved, flags, named",
    [
        ("standard", {}, "--resume to continue"),
        ("standard", {"resume": True, "eps": 8.0}, "--eps 4.0 there, 8.0"),
        ("done", {"loaders": "CA"}, "finished run with loaders CC"),
    ],
)
def test_what_a_folder_refuses(tmp_path, saved, flags, named):
    settings = settings_with(save_path=str(tmp_path), **flags)
    with pytest.raises(utils.UserError, match=named):
        experiment._plan_start(settings, record(saved))


def test_order_seed_defaults_to_the_random_seed():
    assert run_exp.parse_args([]).order_seed == 0
    assert run_exp.parse_args(["--random_seed", "3"]).order_seed == 3
    given = run_exp.parse_args(["--random_seed", "3", "--order_seed", "7"])
    assert (given.random_seed, given.order_seed) == (3, 7)
    with pytest.raises(utils.UserError, match="--order_seed"):
        run_exp.parse_args(["--order_seed", "-1"])


def test_order_seed_sets_the_attack_keys_not_the_evaluation_seed():
    same = settings_with(random_seed=3, order_seed=3)
    other = settings_with(random_seed=3, order_seed=4)
    for phase in (1, 2):
        key = experiment._base_key(same, phase)
        assert not np.array_equal(key, experiment._base_key(other, phase))
        want = jax.random.fold_in(jax.random.PRNGKey(4), phase)
        assert np.array_equal(experiment._base_key(other, phase), want)


def test_record_without_order_seed_has_the_random_seed_in_its_place(
    tmp_path,
):
    """A run recorded before --order_seed existed used --random_seed for
    its data order: it counts as made with --order_seed = --random_seed."""
    old = record("done", random_seed=5, order_seed=5)
    del old.flags["order_seed"]
    assert experiment.recorded_flags(old.flags)["order_seed"] == 5
    settings = settings_with(
        save_path=str(tmp_path), random_seed=5, order_seed=5
    )
    assert experiment._plan_start(settings, old) == "nothing to do"
    other = settings_with(save_path=str(tmp_path), random_seed=5, order_seed=6)
    with pytest.raises(utils.UserError, match="--order_seed 5 there, 6"):
        experiment._plan_start(other, old)


def test_files_of_another_run_need_overwrite(tmp_path):
    (tmp_path / "parameters_checkpoint_3.pkl").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"mine")
    settings = settings_with(save_path=str(tmp_path))
    with pytest.raises(utils.UserError, match="parameters_checkpoint_3.pkl"):
        experiment._plan_start(settings, None)
    settings = settings_with(save_path=str(tmp_path), overwrite=True)
    assert experiment._plan_start(settings, None) == "fresh"
    experiment._remove_previous_run(settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_results_pkl_is_the_original_layout_with_zeros():
    results = {
        "standard": None,
        "linear": {"clean": 0.9, "l2": None, "linf": 0.5},
        "standard_second": True,
    }
    assert experiment._original_results(results) == {
        "standard": {"clean": 0.0, "l2": 0.0, "linf": 0.0},
        "linear": {"clean": 0.9, "l2": 0.0, "linf": 0.5},
        "standard_second": True,
    }


def test_skip_reasons():
    assert experiment._skip_reasons(SETTINGS) == {}
    assert experiment._skip_reasons(
        settings_with(skip_first_test=True, linear_epochs=0)
    ) == {
        "standard": "--skip_first_test",
        "linear": "--linear_epochs 0: no phase 2",
    }


def tree(value):
    return {"linear": {"w": jnp.full((2, 2), value, jnp.float32)}}


def test_checkpoint_layout_is_the_originals():
    trained, theta_t = tree(1.0), tree(2.0)
    phase_one = train.new_train_state(trained, None, {})
    phase_two = train.new_train_state(trained, theta_t, {})
    layouts = {
        "phase 1": experiment._checkpoint_trees(phase_one, models.STANDARD),
        "linear": experiment._checkpoint_trees(
            phase_two, models.Dynamics(linear=True)
        ),
        "standard second": experiment._checkpoint_trees(
            phase_two, models.Dynamics(linear=False, centering=True)
        ),
    }
    values = {
        name: (
            float(params["linear"]["w"][0, 0]),
            float(lin_params["linear"]["w"][0, 0]),
        )
        for name, (params, lin_params) in layouts.items()
    }
    # (params, lin_params): θ(t) = 2, the trained parameters = 1.
    assert values == {
        "phase 1": (1.0, 1.0),
        "linear": (2.0, 1.0),
        "standard second": (1.0, 2.0),
    }


def test_phase_two_start_continues_phase_one_only_for_standard_second():
    end = train.new_train_state(tree(1.0), None, {"bn": jnp.ones(2)}, step=7)
    momentum = jax.tree_util.tree_map(lambda x: x + 3.0, end.opt_state)
    end = end._replace(opt_state=momentum)
    one_run = experiment._phase_two_start(
        settings_with(do_standard_second=True), end
    )
    assert int(one_run.step) == 7
    assert utils.tree_equal(one_run.opt_state, end.opt_state)
    assert utils.tree_equal(one_run.params0, end.params)
    for changes in (
        {},
        {"do_standard_second": True, "base_model_path": "theta_t.pkl"},
    ):
        fresh = experiment._phase_two_start(settings_with(**changes), end)
        assert int(fresh.step) == 0
        assert not utils.tree_equal(fresh.opt_state, end.opt_state)
        assert utils.tree_equal(fresh.params, end.params)
        assert utils.tree_equal(fresh.params0, end.params)


def test_resume_record_round_trip(tmp_path):
    state = train.new_train_state(tree(0.5), tree(0.25), {}, step=3)
    position = train.LoopPosition(epoch=2, step=5, saved_fractions=[0.125])
    position.metrics.loss_sum = 1.5
    saved = resume.ResumeRecord(
        stage="linear",
        flags=experiment.run_flags(vars(ARGS)),
        results=experiment.results_template(SETTINGS),
        state=experiment._pack(state),
        position=position.as_record(),
        warnings=["w"],
    )
    path = tmp_path / layout.STATE
    atomic.atomic_pickle(path, saved.as_dict())
    loaded = resume.ResumeRecord.from_dict(
        pickles.safe_load_pickle(path), str(path)
    )
    assert loaded.flags == saved.flags and loaded.warnings == ["w"]
    again = experiment._unpack(loaded.state)
    assert int(again.step) == 3
    assert utils.tree_equal(
        utils.to_numpy_tree(again.params), utils.to_numpy_tree(state.params)
    )
    assert train.LoopPosition.from_record(loaded.position) == position
    with pytest.raises(utils.UserError, match="earlier version"):
        resume.ResumeRecord.from_dict({"stage": "done"}, str(path))


def test_trim_log_keeps_what_the_resumed_run_will_not_redo(tmp_path):
    lines = [
        {"kind": "epoch", "phase": "standard", "epoch": 0},
        {"kind": "epoch", "phase": "standard", "epoch": 1},
        {"kind": "evaluation", "phase": "standard", "attack": "linf"},
        {"kind": "epoch", "phase": "linear", "epoch": 0},
        {"kind": "epoch", "phase": "linear", "epoch": 1},
        {"kind": "evaluation", "phase": "linear", "attack": "linf"},
    ]
    (tmp_path / "log.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines)
    )
    run = experiment.Run(
        SETTINGS, str(tmp_path), None, None, None, None, None, None
    )
    run.record = resume.ResumeRecord(
        "linear", {}, {}, position=train.LoopPosition(epoch=1).as_record()
    )
    experiment._trim_log(run)
    kept = [
        json.loads(line)
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
    ]
    assert kept == lines[:4]


def test_divergence_message_says_what_was_saved():
    run = experiment.Run(SETTINGS, ".", None, None, None, None, None, None)
    err = train.Diverged("linear", 0, 10)
    assert "no resume state had been written" in str(
        experiment._divergence_error(run, err)
    )
    run.last_saved = "phase linear, epoch 1, batch 5"
    message = str(experiment._divergence_error(run, err))
    assert (
        "train_state.pkl holds the last state written before it "
        "(phase linear, epoch 1, batch 5)" in message
    )
    assert "lower --second_lr" in message
    assert np.char.count(message, "\n") == 0


def _no_data(*args, **kwargs):
    raise AssertionError("data loaded before the budget was checked")


def test_item1_n_targets_above_wrong_classes_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    """--attack apgd-t --attack_budget n_targets=20 on 10 classes, known
    from --dataset or from the base checkpoint: refused in one line before
    any image is loaded or any epoch runs (so no phase-1 training is
    lost), nothing written."""
    base = write_untrained_checkpoint(
        tmp_path / "base" / "parameters_final.pkl"
    )
    monkeypatch.setattr(data, "load_split", _no_data)
    before = files_snapshot(tmp_path)
    budget = ["--attack", "apgd-t", "--attack_budget", "n_targets=20"]
    for given in (["--dataset", "fashion_mnist"], ["--base_model_path", base]):
        argv = [*budget, *given, "--save_path", str(tmp_path / "out")]
        with pytest.raises(SystemExit) as exit_info:
            cli.run_cli(lambda argv=argv: run_exp.main(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert_one_line_error(err, "n_targets=20", "9 wrong ones")
        assert files_snapshot(tmp_path) == before
