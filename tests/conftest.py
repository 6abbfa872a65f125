"""Settings of the whole test session.

Every test (and every command a test starts, which inherits the environment)
signs and verifies pickled files with a trust key of the session's own, never
with the developer's ``~/.config/ptreclaim/trust.key`` (docs/trust.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from ptreclaim.agents.trust import KEY_ENV

_KEY_DIR = tempfile.mkdtemp(prefix="ptreclaim-test-key-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ[KEY_ENV] = os.path.join(_KEY_DIR, "trust.key")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_KEY_DIR, ignore_errors=True)
