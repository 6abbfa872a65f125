#!/usr/bin/env python3
"""Serve the ptreclaim job API and web page with local workers (see ``--help``)."""

import sys

from ptreclaim.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
