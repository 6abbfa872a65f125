#!/usr/bin/env python3
"""Take ptreclaim service jobs from a shared job store and run them (see ``--help``)."""

import sys

from ptreclaim.cli.worker import main

if __name__ == "__main__":
    sys.exit(main())
