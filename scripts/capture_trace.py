#!/usr/bin/env python3
"""Capture page-table traces of live processes and check their replay (see ``--help``)."""

import sys

from ptreclaim.cli.capture_trace import main

if __name__ == "__main__":
    sys.exit(main())
