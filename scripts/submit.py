#!/usr/bin/env python3
"""Submit a job to the ptreclaim service, follow it, download its results (see ``--help``)."""

import sys

from ptreclaim.cli.submit import main

if __name__ == "__main__":
    sys.exit(main())
