#!/usr/bin/env python3
"""Tune a heuristic's thresholds or an agent's hyperparameters with Optuna (see ``--help``)."""

import sys

from ptreclaim.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
