#!/usr/bin/env python3
"""Check the page-table model against the running kernel (see ``--help``)."""

import sys

from ptreclaim.cli.kernel_check import main

if __name__ == "__main__":
    sys.exit(main())
