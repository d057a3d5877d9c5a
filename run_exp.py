"""Phase 1 (standard training), then phase 2 (training with the kernel of
θ(t) frozen), then clean and PGD test accuracies. See docs/run_exp.md.

The flags are cli/run_exp.py's; the work is training/experiment.py's."""

from collections.abc import Sequence

import cli
from cli.run_exp import parse_args, settings
from training import experiment


def main(argv: Sequence[str] | None = None) -> None:
    experiment.run_experiment(settings(parse_args(argv)))


if __name__ == "__main__":
    cli.run_cli(main)
