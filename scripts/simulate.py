#!/usr/bin/env python3
"""Run a scenario for N ticks: summary table and PNG timeline (see ``--help``)."""

import sys

from ptreclaim.cli.simulate import main

if __name__ == "__main__":
    sys.exit(main())
