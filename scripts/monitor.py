#!/usr/bin/env python3
"""Live advisor, read-only: what a policy would reclaim on this host now, from whom, and why
(see ``--help``)."""

import sys

from ptreclaim.cli.monitor import main

if __name__ == "__main__":
    sys.exit(main())
