"""Regenerates docs/REPORT.md from docs/results/*.csv (sweeper.report)."""

import sys

import cli
from sweeper import report

if __name__ == "__main__":
    sys.exit(cli.run_cli(report.main))
