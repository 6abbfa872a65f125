"""Bad flags of the benchmarks end in one error line (argparse's, exit status 2), not a
traceback, before any measuring starts; `bench_env.py --parts` times every part it names."""

from __future__ import annotations

import os
import re
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


def test_bench_cache_orders_functions_by_the_event_asked_for() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from bench_cache import ranked
    finally:
        sys.path.remove(str(BENCH))
    events = ["Ir", "D1mr", "D1mw", "DLmr", "DLmw"]
    deltas = {"busy": [900, 1, 1, 0, 1], "missing": [100, 5, 5, 40, 2], "idle": [10, 0, 0, 0, 0]}
    assert ranked(deltas, events, "ir", 2) == ["busy", "missing"]
    assert ranked(deltas, events, "ll", 3) == ["missing", "busy", "idle"]
    assert ranked(deltas, events, "d1", 1) == ["missing"]


def test_env_parts_splits_the_envs_share_of_a_ppo_step() -> None:
    # `--parts` patches the vector envs' and the compiled core's entry points to time them:
    # a renamed one would silently time nothing (0.0), so each part must have been seen.
    env = {**os.environ, "COLUMNS": "400"}  # one line per printed line
    r = _run("bench_env.py", "--parts", "--quick", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(line for line in lines if line.startswith("round 0:"))
    split = next(line for line in lines if "the env's share, split" in line)
    step_wait = float(re.search(r"step_wait ([\d.]+) µs", head).group(1))
    parts = {name: float(v) for name, v in re.findall(
        r"(compiled steps|resets|the vector env's Python) (-?[\d.]+)", split)}
    assert set(parts) == {"compiled steps", "resets", "the vector env's Python"}, split
    assert parts["compiled steps"] > 0 and parts["resets"] > 0, split
    assert parts["compiled steps"] + parts["resets"] <= step_wait, (head, split)
    null_python = float(re.search(r"the null env's ([\d.]+)", split).group(1))
    assert null_python > 0, split


def test_the_ratio_s_verdict_comes_from_a_confidence_interval_of_its_median() -> None:
    """bench_env.py says the PPO ratio meets or misses 0.8 only when a distribution-free
    CI of the median of its paired rounds lies on one side; on 2-core VMs whose rounds
    move by +-0.15 a bare median said "misses" at 0.797."""
    sys.path.insert(0, str(BENCH))
    try:
        from bench_env import goal_verdict, median_ci
    finally:
        sys.path.remove(str(BENCH))
    nine = [0.74, 0.90, 0.78, 0.81, 0.79, 1.05, 0.80, 0.77, 0.83]
    med, low, high, conf = median_ci(nine)
    # n = 9: x(2) and x(8), P = 1 - 2 (1 + 9) / 512.
    assert (med, low, high) == (0.80, 0.77, 0.90) and conf == pytest.approx(1 - 20 / 512)
    assert goal_verdict(low, high, 0.8).startswith("cannot tell")
    med, low, high, conf = median_ci([0.85, 0.82, 0.90, 0.81, 0.95, 0.88, 0.84, 0.86, 0.83])
    assert (low, high) == (0.82, 0.90) and goal_verdict(low, high, 0.8) == "meets"
    assert goal_verdict(0.70, 0.79, 0.8) == "misses"
    # Too few rounds for 95 %: the range, with its own (lower) confidence, and no verdict.
    med, low, high, conf = median_ci([0.85, 0.9, 0.88])
    assert (med, low, high) == (0.88, 0.85, 0.9) and conf == pytest.approx(0.75)
    assert goal_verdict(low, high, 0.8, conf).startswith("too few rounds (75% < 95% sure)")
    assert median_ci([0.9] * 6)[3] == pytest.approx(1 - 2 / 64)  # 6 rounds suffice


def test_ppo_models_train_in_turns_of_one_update_the_order_reversed_each_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_env.py's PPO ratio trains the null env's model and the real env's in turns of
    one update, A B, B A, A B, ..., so the VM's drift within seconds hits both alike; each
    model's rate counts its own turns only, and every model's env is closed."""
    import gc
    import types

    sys.path.insert(0, str(BENCH))
    try:
        import bench_env
    finally:
        sys.path.remove(str(BENCH))
    clock = {"cpu": 0.0, "wall": 0.0}
    log: list[tuple[str, int, bool, int]] = []

    class Model:
        def __init__(self, name: str, n_envs: int, cost: float) -> None:
            self.name, self.n_steps, self.n_envs, self.cost = name, 128, n_envs, cost
            self.num_timesteps = 0
            self.closed = False

        def learn(self, total_timesteps: int, reset_num_timesteps: bool) -> None:
            log.append((self.name, total_timesteps, reset_num_timesteps, gc.get_freeze_count()))
            self.num_timesteps += total_timesteps
            clock["cpu"] += self.cost * total_timesteps
            clock["wall"] += 2 * self.cost * total_timesteps

        def get_env(self) -> Model:
            return self

        def close(self) -> None:
            self.closed = True

    fake_time = types.SimpleNamespace(process_time=lambda: clock["cpu"],
                                      perf_counter=lambda: clock["wall"],
                                      sleep=lambda s: None)
    monkeypatch.setattr(bench_env, "time", fake_time)
    models = {"null": Model("null", 4, 1e-4), "real": Model("real", 4, 2e-4),
              "big": Model("big", 8, 1e-4)}
    rates = bench_env.interleaved_rates(models, 2048, freeze_gc=True)
    # One update (n_steps x n_envs) per turn; turns alternate in order; a model that has its
    # steps drops out (big: 1024 per turn, done after 2 turns).
    assert [(n, t) for n, t, _, _ in log] == [
        ("null", 512), ("real", 512), ("big", 1024), ("big", 1024), ("real", 512),
        ("null", 512), ("null", 512), ("real", 512), ("real", 512), ("null", 512)]
    assert [r for _, _, r, _ in log] == [True] * 3 + [False] * 7  # the first turn resets
    assert all(frozen > 0 for *_, frozen in log) and gc.get_freeze_count() == 0
    assert rates == {"null": pytest.approx((1e4, 5e3)), "real": pytest.approx((5e3, 2.5e3)),
                     "big": pytest.approx((1e4, 5e3))}
    assert all(m.closed for m in models.values())
