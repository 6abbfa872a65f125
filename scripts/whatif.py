#!/usr/bin/env python3
"""Run scenarios and real traces under every page-table reclaim design (see ``--help``)."""

import sys

from ptreclaim.cli.whatif import main

if __name__ == "__main__":
    sys.exit(main())
