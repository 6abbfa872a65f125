#!/usr/bin/env python3
"""Distil a trained run into deployable thresholds and score them (see ``--help``)."""

import sys

from ptreclaim.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
