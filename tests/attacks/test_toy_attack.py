"""Adding an attack is one module and one registry line: a toy attack
registered only in its own module (tests/attacks/toy_attack.py) appears in
--attack's choices and --attack_budget's keys, the grid's schema and its
commands, the estimate and the report's columns, and runs through the
AutoAttack driver under its own result code; no other module names it.
Run in a process of its own, so that the registry of this one stays as
it is."""

import json
import os
import subprocess
import sys
import textwrap

import attacks
import cli
from helpers import ROOT, SUBPROCESS_TIMEOUT_S

SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    import jax
    import numpy as np

    import toy_attack  # registers "toy"; nothing else is edited

    import attacks
    import cli
    from cli import eval_and_make_adv, run_exp
    from sweep_fixtures import tiny_config, write_config
    from sweeper import collect, estimate, grid, schema

    root = sys.argv[1]
    out = {"choices": list(cli.ATTACK_CHOICES)}
    args = eval_and_make_adv.parse_args(
        ["--model_path", "m", "--attack", "toy", "--attack_budget",
         "toy_steps=5"]
    )
    out["eval_flags"] = [args.attack, args.attack_budget]
    out["run_exp_attack"] = run_exp.parse_args(["--attack", "toy"]).attack
    out["schema"] = [list(schema.ROBUST_ATTACKS), schema.BUDGET_DEFAULTS]
    config = tiny_config(
        os.path.join(root, "out"), "/nowhere", kernels=None, analysis=None,
        robustness={"autoattack": False, "eps_curve": [8],
                    "curve_attack": "toy", "budget": {"toy_steps": 5}},
    )
    the_grid = grid.Grid.load(
        write_config(os.path.join(root, "toy.toml"), config)
    )
    cells = [c for c in the_grid.cells() if c.stage == "robustness"]
    out["commands"] = [[str(a) for a in c.args] for c in cells]
    out["steps"] = estimate.attack_steps("toy", {"toy_steps": 5})

    # The attack itself, through the driver: its code in broken_by.
    w = jax.random.normal(jax.random.key(0), (16, 10))
    images = jax.random.uniform(jax.random.key(1), (32, 4, 4, 1))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
    labels = np.array(jax.numpy.argmax(logits_fn(images), -1))
    labels[:3] = (labels[:3] + 1) % 10
    config = attacks.AutoAttackConfig(
        attacks=("toy",), budget=attacks.Budget(toy_steps=2)
    )
    result = attacks.autoattack(
        logits_fn, images, labels, 0.5, jax.random.key(2), config
    )
    counts = attacks.count_codes(np.asarray(result.broken_by))
    out["counts"] = counts

    # Each cell's results as eval_and_make_adv.py writes them: the table.
    for cell in cells:
        os.makedirs(os.path.dirname(cell.outputs[0]), exist_ok=True)
        source = {"source": "test set", "n": 32, "acc_clean": 29 / 32,
                  "acc_dirty": counts["robust"] / 32, "broken_by": counts}
        with open(cell.outputs[0], "w") as f:
            json.dump({"sources": [source]}, f)
    table, missing = collect.collect_robustness(the_grid)
    out["columns"] = list(table.columns)
    out["broken_by_toy"] = table["broken_by_toy"].tolist()
    print(json.dumps(out))
    """
)


def _run_toy(tmp_path):
    env = dict(os.environ)
    tests = os.path.join(ROOT, "tests")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(tests, "attacks"), tests, ROOT]
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_toy_attack_registered_in_its_own_module_is_everywhere(tmp_path):
    out = _run_toy(tmp_path)
    assert out["choices"] == [*attacks.names(), "toy"]
    assert out["eval_flags"] == ["toy", [["toy_steps", 5]]]
    assert out["run_exp_attack"] == "toy"
    robust_attacks, defaults = out["schema"]
    assert robust_attacks == [*attacks.names(), "toy"]
    assert defaults["toy_steps"] == 3
    assert out["commands"]  # a cell per phase-2 model
    for command in out["commands"]:
        at = command.index("--attack")
        assert command[at : at + 4] == [
            "--attack",
            "toy",
            "--attack_budget",
            "toy_steps=5",
        ]
    assert out["steps"] == 5
    # Its code counts under its name; wrong-when-clean and robust too.
    assert set(out["counts"]) == {*attacks.outcomes(), "toy"}
    assert out["counts"]["clean"] >= 3 and out["counts"]["toy"] > 0
    columns = out["columns"]
    at = columns.index("broken_by_square")
    assert columns[at + 1 : at + 3] == ["broken_by_toy", "broken_by_robust"]
    assert out["broken_by_toy"] == [out["counts"]["toy"]] * len(
        out["commands"]
    )


def test_only_its_module_names_the_toy_attack():
    """This process never imported it: the registry is the shipped one,
    and no module of the project refers to the toy's module."""
    assert "toy" not in attacks.names() and "toy" not in cli.ATTACK_CHOICES
    for folder, _, files in os.walk(ROOT):
        top = os.path.relpath(folder, ROOT).split(os.sep)[0]
        if top.startswith(".") or top in ("tests", "data"):
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    assert "toy_attack" not in f.read(), name
