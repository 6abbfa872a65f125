"""The command lines: every argument parser and ``main`` (``scripts/*.py`` call these)."""
