#!/usr/bin/env python3
"""Run a scenario for N ticks: summary table and PNG timeline (see ``--help``)."""

import sys

from ptreclaim.envs.simulate_cli import main

if __name__ == "__main__":
    sys.exit(main())
