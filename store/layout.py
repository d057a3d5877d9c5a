"""Every file name and pattern the scripts exchange, in one place.

A run folder (run_exp.py --save_path), its checkpoints, the folders that
the scripts reading a checkpoint write into (eval_and_make_adv.py,
calculate_kernel.py, visualize_ntk_features.py), the kernel files, the
analysis tables (analyze_kernels.py) and a sweep's cells. Other modules ask
this one for a name; none spells one itself (tests/test_layers.py checks
the checkpoint and resume-state names).
"""

import os
import re

# --------------------------------------------------------------------------
# A run folder (run_exp.py --save_path)
# --------------------------------------------------------------------------

CONFIG = "config.json"  # flags, versions, device
LOG = "log.jsonl"  # a line per epoch and per evaluation
STATE = "train_state.pkl"  # what --resume needs
RESULTS_PKL = "results.pkl"  # the original's layout
RESULTS_JSON = "results.json"  # null and a reason where skipped
FINAL = "parameters_final.pkl"  # --save_models
CHECKPOINT_PREFIX = "parameters_checkpoint_"
CHECKPOINT_GLOB = CHECKPOINT_PREFIX + "*.pkl"
# Every file a run writes, as names or globs (a fresh run removes them).
RUN_FILES = (CONFIG, LOG, STATE, RESULTS_PKL, RESULTS_JSON, FINAL)
RUN_GLOBS = (CHECKPOINT_GLOB,)

# parameters_checkpoint_{e}.pkl and parameters_checkpoint_linear_{e}.pkl,
# e an epoch count or a fraction such as 0.125 (--constant_save).
CHECKPOINT_EPOCH = re.compile(
    r"^" + CHECKPOINT_PREFIX + r"(?:linear_)?(\d+(?:\.\d+)?)\.pkl$"
)
# Any of run_exp.py's parameter files (checkpoints and the final one).
PARAMETERS_NAME = re.compile(r"^parameters_(?:checkpoint_|final).*\.pkl$")


def format_t(t: float) -> str:
    """t as run_exp.py names its checkpoint: 3 -> '3', 0.125 -> '0.125',
    10**8 -> '100000000' (an epoch's number, never '1e+08')."""
    t = float(t)
    if t.is_integer():
        return str(int(t))
    short = f"{t:g}"
    return short if float(short) == t else repr(t)


def checkpoint_stem(t: float | str, linear: bool = False) -> str:
    """parameters_checkpoint_{t} (phase 1) or parameters_checkpoint_linear_{t}
    (phase 2), t an epoch (fractions for --constant_save) or its text."""
    text = t if isinstance(t, str) else format_t(t)
    return CHECKPOINT_PREFIX + ("linear_" if linear else "") + text


def checkpoint(t: float | str, linear: bool = False) -> str:
    """The file name of the checkpoint at t (see checkpoint_stem)."""
    return checkpoint_stem(t, linear) + ".pkl"


# --------------------------------------------------------------------------
# What the scripts that read a checkpoint write
# --------------------------------------------------------------------------


def output_dir(model_path: str, bonus_dir: str) -> str:
    """Where the scripts that read a checkpoint write: the folder
    ``{dirname(model_path)}/{bonus_dir}``, normalised (not created)."""
    return os.path.normpath(
        os.path.join(os.path.dirname(model_path), bonus_dir)
    )


EVAL_SAVE_NAME = "test_results"  # eval_and_make_adv.py's --save_name


# eval_and_make_adv.py's pickles: {'results', 'examples'} -> the name for
# a suffix (the --save_name, with _{index} when there are several test
# sets).
EVAL_PICKLES = {
    "results": "test_results_{}.pkl",
    "examples": "adv_examples_{}.pkl",
}


def eval_outputs(out_dir: str, suffix: str) -> dict[str, str]:
    """eval_and_make_adv.py's {'results', 'examples'} pickles for `suffix`
    (the --save_name, with _{index} when there are several test sets)."""
    return {
        kind: os.path.join(out_dir, name.format(suffix))
        for kind, name in EVAL_PICKLES.items()
    }


def eval_summaries(out_dir: str, save_name: str) -> dict[str, str]:
    """eval_and_make_adv.py's {'results', 'transfer'} JSON files for its
    --save_name: every source's accuracies and the run's settings, and
    (with --test_path) the transfer table."""
    return {
        "results": os.path.join(out_dir, f"results_{save_name}.json"),
        "transfer": os.path.join(out_dir, f"transfer_{save_name}.json"),
    }


def eval_record(out_dir: str, save_name: str) -> str:
    """eval_and_make_adv.py's JSON record of its evaluation (accuracies,
    the model and attack) for --save_name `save_name`."""
    return eval_summaries(out_dir, save_name)["results"]


def eval_set(out_dir: str, save_name: str) -> list[str]:
    """The files of `out_dir` (sorted paths) that belong to the evaluation
    saved there as `save_name`: its JSON files (eval_summaries) and its
    pickles (eval_outputs), with or without an _{index} suffix; those of
    `{save_name}_{index}`'s own evaluation, which has its results JSON,
    apart."""
    try:
        names = set(os.listdir(out_dir))
    except OSError:
        return []
    wanted = {
        os.path.basename(p)
        for p in eval_summaries(out_dir, save_name).values()
    }
    wanted |= {name.format(save_name) for name in EVAL_PICKLES.values()}
    for pattern in EVAL_PICKLES.values():
        before, after = pattern.split("{}")
        indexed = re.compile(
            re.escape(f"{before}{save_name}_") + r"(\d+)" + re.escape(after)
        )
        for name in names:
            match = indexed.fullmatch(name)
            own = match and eval_record(out_dir, f"{save_name}_{match[1]}")
            if match and os.path.basename(own) not in names:
                wanted.add(name)
    return sorted(os.path.join(out_dir, name) for name in names & wanted)


KERNEL_SAVE_NAME = "saved_kernel"  # calculate_kernel.py's --save_name
# The names kernel_file gives: {save_name}_{N}.pkl and
# {save_name}_class_{c}_{N}.pkl.
KERNEL_FILE_NAME = re.compile(r"^.+?(?:_class_\d+)?_\d+\.pkl$")


def kernel_file(save_name: str, class_index: int | None, size: int) -> str:
    """The kernel file of logit `class_index` (None: the mean over logits)
    on `size` images."""
    if class_index is None:
        return f"{save_name}_{size}.pkl"
    return f"{save_name}_class_{class_index}_{size}.pkl"


def is_kernel_file(name: str) -> bool:
    """Whether the file name `name` (no folder) is one kernel_file gives
    and not one of run_exp.py's parameter files."""
    return bool(KERNEL_FILE_NAME.match(name)) and not PARAMETERS_NAME.match(
        name
    )


FEATURES_SAVE_NAME = "ntk_eig_images"  # visualize_ntk_features.py's


def feature_stem(save_name: str, class_index: int, size: int) -> str:
    """visualize_ntk_features.py's output stem (no folder, no extension)
    for the kernel of logit `class_index` on `size` images:
    {save_name}_class_{c}_{N}."""
    return f"{save_name}_class_{class_index}_{size}"


def feature_outputs(stem: str) -> tuple[str, str]:
    """visualize_ntk_features.py's (pickle, PNG) for the output stem."""
    return stem + ".pkl", stem + ".png"


# --------------------------------------------------------------------------
# analyze_kernels.py's --out_dir
# --------------------------------------------------------------------------

KERNELS_CSV = "kernels.csv"
PAIRWISE_CSV = "pairwise.csv"
SERIES_CSV = "series.csv"
REPLICATES_CSV = "replicates.csv"
COMPARE_CSV = "compare.csv"  # with --compare
ANALYSIS_MARKER = "analysis.json"  # written last: the analysis is complete
ANALYSIS_TABLES = (
    KERNELS_CSV,
    PAIRWISE_CSV,
    SERIES_CSV,
    REPLICATES_CSV,
    COMPARE_CSV,
)
# The figures (analysis/outputs.py draws those that have data).
DISTANCE_HEATMAP_PNG = "distance_heatmap.png"
OVERVIEW_PNG = "overview.png"
VELOCITY_PNG = "velocity.png"
POLAR_PNG = "polar.png"
EIGENVALUE_DECAY_PNG = "eigenvalue_decay.png"
ALIGNMENT_PNG = "alignment.png"
KERNEL_REGRESSION_PNG = "kernel_regression.png"
COMPARE_PNG = "compare.png"  # with --compare
ANALYSIS_FIGURES = (
    DISTANCE_HEATMAP_PNG,
    OVERVIEW_PNG,
    VELOCITY_PNG,
    POLAR_PNG,
    EIGENVALUE_DECAY_PNG,
    ALIGNMENT_PNG,
    KERNEL_REGRESSION_PNG,
    COMPARE_PNG,
)

# --------------------------------------------------------------------------
# A sweep's output root (sweep.py)
# --------------------------------------------------------------------------

SWEEP_RECORD = "sweep.json"
# In a preset's figure folder of sweep.py --aggregate's results folder
# ({results_dir}/{name}/): the config and output root its outputs came
# from.
AGGREGATE_RECORD = "aggregated_from.json"
SEEDS_ANALYSIS_DIR = "between_seeds"
# The figure of robust accuracy against eps (sweep.py --aggregate, in the
# preset's figure folder), and the robustness cells' folder in a phase-2
# run's (eval_and_make_adv.py --bonus_dir).
ROBUSTNESS_FIGURE = "robust_accuracy_vs_eps.png"
# The figure of the kernels' dynamics (sweep.py --aggregate, in the
# preset's figure folder; what --aggregate --only kernels rewrites).
KERNEL_FIGURE = "kernel_dynamics.png"
ROBUSTNESS_DIR = "robustness"
