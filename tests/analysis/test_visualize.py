"""visualize_ntk_features.py end to end on Fashion-MNIST with a small MLP:
the files it writes, the original's kernel files (images recomputed as the
original drew them), and one-line refusals of bad input that write nothing
(the PNG grid is tested with feature_figures)."""

import os

import jax
import numpy as np
import pytest

import calculate_kernel
import cli
import data
import models
import visualize_ntk_features
from analysis import features
from helpers import (
    PNG_SIGNATURE,
    legacy_balanced_indices,
    load_pickle,
    run_script,
)
from store import atomic, checkpoints

CLASS_INDEX = 3
SIZE = 20  # two images of each of the ten classes
N_IMAGES = 2
STEPS = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_data):
    """A checkpoint of an untrained MLP and the kernel of logit CLASS_INDEX.

    Returns a dict of paths: 'root', 'data', 'checkpoint', 'kernel' (in a
    folder of its own, so that the checkpoint's folder holds no output).
    """
    root = tmp_path_factory.mktemp("visualize")
    data_path = str(fashion_data)
    images, labels = data.load_split("fashion_mnist", data_path)
    spec = models.ModelSpec("mlp_skinny", 64, "fashion_mnist", 10)
    params, state = models.init_model(spec.build(), 0, images.shape[1:])
    checkpoint = str(root / "model" / "parameters_final.pkl")
    checkpoints.save_checkpoint(
        checkpoint, params, params, state, spec.as_meta()
    )

    indices = data.balanced_subset_indices(labels, SIZE, seed=0)
    flat, logit_fn = features.class_logit_fn(
        spec.build().apply, params, state, CLASS_INDEX
    )
    jacobian = jax.jacrev(lambda p: logit_fn(p, images[indices]))(flat)
    kernel = {
        "kernel": np.asarray(jacobian @ jacobian.T, np.float32),
        "labels": labels[indices],
        "indices": indices,
        "class_index": CLASS_INDEX,
        "use_linear_params": False,
        "model_path": checkpoint,
    }
    kernel_path = str(root / "kernels" / f"k_class_{CLASS_INDEX}_{SIZE}.pkl")
    atomic.atomic_pickle(kernel_path, kernel)
    return dict(
        root=root,
        data=data_path,
        checkpoint=checkpoint,
        kernel=kernel_path,
        kernel_record=kernel,
        train_labels=labels,
    )


def cli_args(paths, bonus_dir="out", **changes):
    """Command-line arguments of a small run, with `changes` as flag: value
    (a value of None drops the flag)."""
    flags = {
        "model_path": paths["checkpoint"],
        "kernel_path": paths["kernel"],
        "dataset_size": SIZE,
        "class_index": CLASS_INDEX,
        "n_images": N_IMAGES,
        "steps": STEPS,
        "step_size": 0.01,
        "data_path": paths["data"],
        "bonus_dir": bonus_dir,
        "batch_size": 8,
    }
    flags.update(changes)
    args = []
    for name, value in flags.items():
        if value is True:
            args.append(f"--{name}")
        elif value is not None:
            args += [f"--{name}", str(value)]
    return args


def files_under(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.slow
def test_cli_writes_images_and_grid(run_dir):
    out_dir = os.path.join(os.path.dirname(run_dir["checkpoint"]), "out")
    result = run_script("visualize_ntk_features.py", *cli_args(run_dir))
    assert result.returncode == 0, result.stderr
    stem = os.path.join(out_dir, f"ntk_eig_images_class_{CLASS_INDEX}_{SIZE}")
    assert files_under(out_dir) == [
        os.path.basename(stem) + ".pkl",
        os.path.basename(stem) + ".png",
    ]

    record = load_pickle(stem + ".pkl")  # plain pickle, as a notebook
    # The original's layout: (n, H, W, C) and (H, W, C), float64.
    for key in (
        "pos_images",
        "neg_images",
        "best_pos_images",
        "best_neg_images",
    ):
        assert record[key].shape == (N_IMAGES, 28, 28, 1), key
    for key in ("w_image", "best_w_image", "start_image"):
        assert record[key].shape == (28, 28, 1), key
    for key in (
        "pos_images",
        "neg_images",
        "w_image",
        "best_pos_images",
        "best_neg_images",
        "best_w_image",
    ):
        assert record[key].dtype == np.float64
        assert record[key].min() >= 0.0 and record[key].max() <= 1.0
    assert record["image_layout"] == "NHWC"
    assert record["eigenvalues"].shape == (SIZE,)
    assert record["pos_cosines"].shape == (N_IMAGES, STEPS + 1)
    assert record["w_cosines"].shape == (STEPS + 1,)
    for kind, sign in (("pos", 1), ("neg", -1)):
        cosines = record[f"{kind}_cosines"]
        steps = record[f"best_{kind}_steps"]
        np.testing.assert_array_equal(steps, np.argmax(sign * cosines, 1))
        np.testing.assert_array_equal(
            record[f"best_{kind}_cosines"], cosines[np.arange(N_IMAGES), steps]
        )
    assert record["best_w_cosine"] == np.max(record["w_cosines"])
    assert record["best_w_step"] == np.argmax(record["w_cosines"])
    assert record["jitter"] > 0
    assert record["start"] == record["config"]["start"] == "grey"
    np.testing.assert_array_equal(record["start_image"], 0.5)
    np.testing.assert_array_equal(
        record["indices"], run_dir["kernel_record"]["indices"]
    )
    assert record["config"]["use_linear_params"] is False

    with open(stem + ".png", "rb") as file:
        png = file.read()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    assert matplotlib.image.imread(stem + ".png").ndim == 3


@pytest.mark.slow
def test_mean_start_and_a_dead_start(run_dir, capsys):
    """--start mean starts from the mean of the kernel's images, with no
    warning; at --start constant:0 every first-layer unit of the untrained
    MLP (zero biases) sits at the ReLU's kink, whose derivative is 0: one
    warning, and no pixel moves."""
    folder = os.path.dirname(run_dir["checkpoint"])
    name = f"ntk_eig_images_class_{CLASS_INDEX}_{SIZE}.pkl"
    run_main(cli_args(run_dir, bonus_dir="mean", start="mean"))
    assert "warning" not in capsys.readouterr().err
    record = load_pickle(os.path.join(folder, "mean", name))
    images, _ = data.load_split("fashion_mnist", run_dir["data"])
    mean = images[run_dir["kernel_record"]["indices"]].astype(np.float64)
    np.testing.assert_allclose(record["start_image"], mean.mean(0), atol=1e-6)
    assert record["start"] == record["config"]["start"] == "mean"
    assert not np.array_equal(record["pos_images"][0], record["start_image"])

    run_main(cli_args(run_dir, bonus_dir="dead", start="constant:0"))
    stderr = capsys.readouterr().err.splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("warning: "), stderr
    assert "constant:0 start" in stderr[0] and "pos 100%" in stderr[0]
    assert "--start mean" in stderr[0]
    record = load_pickle(os.path.join(folder, "dead", name))
    assert record["config"]["start"] == "constant:0"
    np.testing.assert_array_equal(record["zero_gradient_fractions"]["pos"], 1)
    for key in ("pos_images", "neg_images", "w_image"):
        np.testing.assert_array_equal(record[key], 0.0)


def write_kernel(run_dir, name, **changes):
    """A copy of the good kernel file with `changes` (a change to None
    drops the key); returns its path."""
    record = dict(run_dir["kernel_record"], **changes)
    record = {key: value for key, value in record.items() if value is not None}
    path = str(run_dir["root"] / "kernels" / name)
    atomic.atomic_pickle(path, record)
    return path


def original_kernel(run_dir, name, labels=None):
    """The good kernel as the original code writes it: only 'kernel' and
    'labels'; returns its path."""
    record = run_dir["kernel_record"]
    labels = record["labels"] if labels is None else labels
    path = str(run_dir["root"] / "kernels" / name)
    atomic.atomic_pickle(path, {"kernel": record["kernel"], "labels": labels})
    return path


def run_main(args):
    """visualize_ntk_features.main(args) as the script runs it."""
    cli.run_cli(lambda: visualize_ntk_features.main(args))


def test_original_kernel_file_gets_the_originals_images(run_dir, capsys):
    """A file of {'kernel', 'labels'} alone: its images are those the
    original's rule draws with --random_seed, so the outputs equal those
    of our file of the same kernel."""
    folder = os.path.dirname(run_dir["checkpoint"])
    run_main(cli_args(run_dir, bonus_dir="ours"))
    assert "recomputed" not in capsys.readouterr().out
    path = original_kernel(run_dir, f"orig_class_{CLASS_INDEX}_{SIZE}.pkl")
    run_main(
        cli_args(run_dir, bonus_dir="orig", kernel_path=path, random_seed=0)
    )
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "recomputed" in line
    ]
    assert len(lines) == 1 and "original's rule" in lines[0]
    assert "--random_seed 0" in lines[0] and path in lines[0]
    name = f"ntk_eig_images_class_{CLASS_INDEX}_{SIZE}.pkl"
    ours = load_pickle(os.path.join(folder, "ours", name))
    original = load_pickle(os.path.join(folder, "orig", name))
    np.testing.assert_array_equal(
        original["indices"],
        legacy_balanced_indices(run_dir["train_labels"], SIZE, 10, 0),
    )
    np.testing.assert_array_equal(original["indices"], ours["indices"])
    for key in ("pos_images", "neg_images", "w_image", "eigenvalues"):
        np.testing.assert_array_equal(original[key], ours[key])
    assert original["config"]["indices_recomputed"] is True
    assert ours["config"]["indices_recomputed"] is False


def test_kernel_of_calculate_kernel_by_default(run_dir, capsys):
    """Without --kernel_path: calculate_kernel.py's file of the class, in
    the output folder, and its images."""
    folder = os.path.dirname(run_dir["checkpoint"])
    calculate_kernel.main(
        cli_args(  # the flags the two scripts share
            run_dir,
            bonus_dir="chain",
            kernel_path=None,
            n_images=None,
            steps=None,
            step_size=None,
            batch_size=None,
            random_seed=4,
        )
    )
    run_main(cli_args(run_dir, bonus_dir="chain", kernel_path=None))
    kernel = load_pickle(
        os.path.join(
            folder, "chain", f"saved_kernel_class_{CLASS_INDEX}_{SIZE}.pkl"
        )
    )
    images = load_pickle(
        os.path.join(
            folder, "chain", f"ntk_eig_images_class_{CLASS_INDEX}_{SIZE}.pkl"
        )
    )
    np.testing.assert_array_equal(images["indices"], kernel["indices"])
    np.testing.assert_array_equal(
        images["indices"],
        legacy_balanced_indices(run_dir["train_labels"], SIZE, 10, 4),
    )


def corrupt_file(run_dir, name):
    path = run_dir["root"] / "kernels" / name
    path.write_bytes(b"not a pickle at all")
    return str(path)


BAD_INPUTS = {
    "size differs": lambda d: dict(dataset_size=30),
    "class differs": lambda d: dict(class_index=4),
    "combined kernel": lambda d: dict(
        kernel_path=write_kernel(d, "combined.pkl", class_index=-1)
    ),
    "indices beyond the dataset": lambda d: dict(
        kernel_path=write_kernel(
            d, "far.pkl", indices=d["kernel_record"]["indices"] + 10**6
        )
    ),
    "labels differ": lambda d: dict(
        kernel_path=write_kernel(
            d, "relabelled.pkl", labels=(d["kernel_record"]["labels"] + 1) % 10
        )
    ),
    "too many images": lambda d: dict(n_images=SIZE + 1),
    "missing kernel": lambda d: dict(kernel_path=d["kernel"] + ".absent"),
    "default kernel path absent": lambda d: dict(kernel_path=None),
    "corrupt kernel": lambda d: dict(kernel_path=corrupt_file(d, "bad.pkl")),
    "missing checkpoint": lambda d: dict(model_path=str(d["root"] / "no.pkl")),
    "corrupt checkpoint": lambda d: dict(
        model_path=corrupt_file(d, "bad_checkpoint.pkl")
    ),
    "contradicting model flag": lambda d: dict(model="mlp_wide"),
    "contradicting params flag": lambda d: dict(use_linear_params=True),
    "class beyond the model": lambda d: dict(
        class_index=12, kernel_path=write_kernel(d, "k12.pkl", class_index=12)
    ),
    "original file, other labels": lambda d: dict(
        kernel_path=original_kernel(
            d, "orig_relabelled.pkl", d["kernel_record"]["labels"][::-1]
        )
    ),
    "negative seed": lambda d: dict(random_seed=-1),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(run_dir, case, capsys):
    bonus_dir = f"bad_{case.replace(' ', '_').replace(',', '')}"
    args = cli_args(run_dir, bonus_dir=bonus_dir, **BAD_INPUTS[case](run_dir))
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: visualize_ntk_features.main(args))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    out_dir = os.path.join(os.path.dirname(run_dir["checkpoint"]), bonus_dir)
    assert not os.path.exists(out_dir)


@pytest.mark.parametrize(
    "case", ["kernel of other parameters", "sub/x", "../sn", ""]
)
def test_promise_nothing_is_created_before_the_checks_pass(
    run_dir, capsys, case
):
    """A kernel that is not this network's (found only once its features
    are computed) or a --save_name that is not a plain file-name prefix
    is refused with one line, and leaves no --bonus_dir folder behind,
    nor its missing parents."""
    if case == "kernel of other parameters":
        kernel = run_dir["kernel_record"]["kernel"]
        path = write_kernel(run_dir, "scaled.pkl", kernel=3 * kernel)
        changes, message = dict(kernel_path=path), "not the kernel of this"
    else:
        changes = dict(save_name=case)
        message = "is empty" if case == "" else "not a plain file-name prefix"
    args = cli_args(run_dir, bonus_dir="refused/bonus", **changes)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: visualize_ntk_features.main(args))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    folder = os.path.dirname(run_dir["checkpoint"])
    assert not os.path.exists(os.path.join(folder, "refused"))


@pytest.mark.slow
def test_cli_process_exits_2_on_bad_input(run_dir):
    result = run_script(
        "visualize_ntk_features.py",
        *cli_args(run_dir, kernel_path=run_dir["kernel"] + ".absent"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot read")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "flags",
    [
        ["--class_index", "-1"],
        ["--class_index", "x"],
        [],
        ["--class_index", "0", "--start", "white"],
        ["--class_index", "0", "--start", "constant:1.5"],
        ["--class_index", "0", "--start", "constant:"],
    ],
)
def test_bad_flags_are_one_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(
            lambda: visualize_ntk_features.main(
                ["--model_path", "m.pkl", *flags]
            )
        )
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
