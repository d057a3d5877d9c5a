"""The tiny grid of the sweep tests (mlp_skinny on 300 Fashion-MNIST
images, one epoch) as a config file, sweep.py's main run in-process, and
one local run of the grid shared by the test modules of a session."""

import json
import os

import pytest

import cli
import sweep
from helpers import run_script
from sweeper import grid


def toml_text(config: dict) -> str:
    """A TOML file of `config`: top-level keys, then one table per dict
    value (a list of dicts becomes an array of tables). Values: strings,
    numbers, booleans and lists of them."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    lines = [
        f"{k} = {value(v)}"
        for k, v in config.items()
        if not isinstance(v, dict | list) or k == "seeds"
    ]
    for name, table in config.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            for key, v in table.items():
                if isinstance(v, dict):
                    continue
                lines.append(f"{key} = {value(v)}")
            for key, v in table.items():
                if isinstance(v, dict):
                    lines.append(f"[{name}.{key}]")
                    lines += [f"{k} = {value(x)}" for k, x in v.items()]
        elif isinstance(table, list) and name != "seeds":
            for entry in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {value(x)}" for k, x in entry.items()]
    return "\n".join(lines) + "\n"


def tiny_config(root, data_path, **changes) -> dict:
    """The tiny grid: phase 1 benign (1 epoch, resume state every batch),
    phase 2 benign and adversarial from θ(1), their evaluation, the kernels
    of θ(1) on 20 images, their analysis. `changes`: section -> dict of
    keys to set, or None to drop the section."""
    config = {
        "name": "tiny",
        "output_root": str(root),
        "seeds": [0],
        "data": {
            "dataset": "fashion_mnist",
            "data_path": str(data_path),
            "train_size": 300,
            "test_size": 100,
        },
        "model": {"name": "mlp_skinny"},
        "phase1": {
            "loaders": ["C"],
            "epochs": 1,
            "times": [1],
            "state_every": 1,
        },
        "phase2": {"loaders": ["C", "A"], "epochs": 1},
        "attack": {"eps": 8.0, "train_pgd_iters": 3, "eval_pgd_iters": 5},
        "evaluation": {"test_size": 100, "pgd_iters": 5},
        "kernels": {"sizes": [20]},
        "analysis": {},
        "slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 0},
    }
    for section, keys in changes.items():
        if keys is None:
            config.pop(section, None)
        elif isinstance(config.get(section), dict):
            config[section] = dict(config[section], **keys)
        else:
            config[section] = keys
    return config


def write_config(path, config: dict) -> str:
    """Writes `config` as TOML to `path`; returns the path."""
    with open(path, "w") as f:
        f.write(toml_text(config))
    return str(path)


STATUSES = ("ok", "failed", "skipped", "blocked", "unavailable")


def outcome_lines(stdout: str) -> dict:
    """{cell id: (status, rest of the line)} from a sweep's output."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[0] in STATUSES:
            out[parts[1].rstrip(":")] = (parts[0], "".join(parts[2:]))
    return out


def run_sweep(*args, check=False):
    """`sweep.py args` as a subprocess (CPU), output captured."""
    return run_script("sweep.py", *args, "--no_progress", check=check)


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory, fashion_data):
    """The tiny grid run to completion here with 2 workers.

    Returns:
        dict with 'config' (its file), 'root', 'result' (CompletedProcess).
    """
    folder = tmp_path_factory.mktemp("tiny_local")
    root = os.path.join(folder, "root")
    config = write_config(
        os.path.join(folder, "tiny.toml"), tiny_config(root, fashion_data)
    )
    result = run_sweep(config, "--local", "2")
    return {"config": config, "root": root, "result": result}


# A [throughput] section: made-up rates of a device 'D'.
THROUGHPUT = {
    "device": "D",
    "source": "S",
    "phase1_benign_images_per_s": 600.0,
    "phase1_adversarial_images_per_s": 100.0,
    "phase2_benign_images_per_s": 50.0,
    "phase2_adversarial_images_per_s": 30.0,
    "pgd_image_steps_per_s": 1000.0,
    "kernel_file_s": 2.0,
}


def sweep_main(*argv):
    """sweep.py's main in this process, as its entry point runs it;
    returns the exit status."""
    try:
        status = cli.run_cli(lambda: sweep.main([str(a) for a in argv]))
    except SystemExit as exit_:
        return exit_.code
    return status


@pytest.fixture
def tiny(tmp_path):
    """The tiny grid's config (a dict), its root and a writer."""
    root = tmp_path / "root"
    config = tiny_config(root, "/nowhere/data")

    def write(cfg=None, text=None):
        path = tmp_path / "grid.toml"
        if text is not None:
            path.write_text(text)
            return str(path)
        return write_config(path, cfg or config)

    return config, root, write


def tiny_grid(tmp_path, **changes):
    """The tiny grid (data in a folder that does not exist) with
    `changes` (see tiny_config), its file in tmp_path."""
    config = tiny_config(tmp_path / "root", "/nowhere/data", **changes)
    path = write_config(tmp_path / "grid.toml", config)
    return grid.Grid.load(path)
