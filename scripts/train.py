#!/usr/bin/env python3
"""Train an SB3 agent from an experiment YAML (see ``--help`` and docs/train.md)."""

import sys

from ptreclaim.agents.train import main

if __name__ == "__main__":
    sys.exit(main())
