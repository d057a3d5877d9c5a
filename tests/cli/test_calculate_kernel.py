"""cli.calculate_kernel: calculate_kernel.py's parser with the original's
flags and defaults (SPEC), several checkpoints in one call, and the
KernelSettings it makes for ntk.compute."""

import pytest

from cli import calculate_kernel
from helpers import assert_original_defaults
from ntk import compute
from utils import UserError

ORIGINAL_DEFAULTS = {
    "dataset_size": 500,
    "save_name": "saved_kernel",
    "class_index": -1,
    "bonus_dir": ".",
    "random_seed": 0,
    "use_linear_params": False,
}


def test_the_original_flags_and_defaults():
    args = calculate_kernel.parse_args(["--model_path", "a"])
    assert_original_defaults(args, ORIGINAL_DEFAULTS)


@pytest.mark.parametrize(
    "flags", [["--dataset_size", "0"], ["--save_name", "a/b"]]
)
def test_bad_flags_are_refused_at_parse_time(flags):
    with pytest.raises(UserError) as stop:
        calculate_kernel.parse_args(["--model_path", "a", *flags])
    assert flags[0] in str(stop.value)


def test_settings_are_typed_with_every_checkpoint():
    args = calculate_kernel.parse_args(["--model_path", "a", "b"])
    settings = calculate_kernel.settings(args)
    assert isinstance(settings, compute.KernelSettings)
    assert settings.model_path == ["a", "b"]
    assert settings.dataset_size == 500
