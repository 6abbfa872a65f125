#!/usr/bin/env python3
"""Capture page-table traces of live processes and check their replay (see ``--help``)."""

import sys

from ptreclaim.envs.capture import main

if __name__ == "__main__":
    sys.exit(main())
