#!/usr/bin/env python3
"""Distil a trained run into deployable thresholds and score them (see ``--help``)."""

import sys

from ptreclaim.agents.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
