#!/usr/bin/env python3
"""Evaluate policies on the same seeded episodes: tables, report and plots (see ``--help``)."""

import sys

from ptreclaim.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
