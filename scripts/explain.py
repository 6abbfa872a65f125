#!/usr/bin/env python3
"""What a policy does, per scenario, and which features it follows (see ``--help``)."""

import sys

from ptreclaim.cli.explain import main

if __name__ == "__main__":
    sys.exit(main())
