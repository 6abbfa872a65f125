"""Bad flags of the benchmarks end in one error line (argparse's, exit status 2), not a
traceback, before any measuring starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120, env=env)


NEGATIVE = "must not be negative (0 or absent: the default)"


@pytest.mark.parametrize(("script", "args", "message"), [
    ("bench_env.py", ("--ppo-rounds", "-1"), f"--ppo-rounds -1: {NEGATIVE}"),
    ("bench_env.py", ("--rounds", "-2"), f"--rounds -2: {NEGATIVE}"),
    ("bench_cache.py", ("--steps", "0"), "--steps 0: must be at least 1"),
])
def test_a_bad_flag_is_one_error_line(script: str, args: tuple[str, ...], message: str) -> None:
    r = _run(script, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"{script}: error: {message}"


def test_bench_cache_without_valgrind_says_how_to_get_it(tmp_path: Path) -> None:
    # An empty folder as PATH: no valgrind on it (the interpreter is run by its full path).
    env = {**os.environ, "PATH": str(tmp_path)}
    r = _run("bench_cache.py", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "bench_cache.py: error: valgrind not found on PATH; install it "
        "(apt-get install valgrind)")
