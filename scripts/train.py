#!/usr/bin/env python3
"""Train an SB3 agent from an experiment YAML (see ``--help`` and docs/layout.md)."""

import sys

from ptreclaim.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
