"""Long work says how far it is, also when stderr is a log file and not a terminal."""

from __future__ import annotations

import pytest

from ptreclaim.cli.common import progress_bar


def test_progress_in_a_log_is_one_line_per_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("constant actions: episodes", 411) as update:
        assert update is not None  # capsys's stderr is no terminal: plain lines
        for done in (1, 40, 41, 42, 200, 200, 411):  # jumps and repeats, as workers report
            update(done)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(",")[0] for ln in lines] == [
        "constant actions: episodes: 42/411 (10 %)",  # a tenth is 41.1 episodes: 41 is short
        "constant actions: episodes: 200/411 (48 %)",
        "constant actions: episodes: 411/411 (100 %)"]
    assert all(ln.endswith(" s") for ln in lines)


def test_quiet_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("episodes", 10, show=False) as update:
        assert update is None
    assert capsys.readouterr().err == ""
