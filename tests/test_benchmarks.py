"""Bad flags of the benchmarks end in one error line (argparse's, exit status 2), not a
traceback, before any measuring starts; `bench_env.py --parts` times every part it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def _bench(name: str) -> Any:
    """The benchmark module ``benchmarks/<name>.py`` (it imports its sibling modules as
    top-level ones, so the folder is on the path while it loads)."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


NEGATIVE = "must not be negative (0 or absent: the default)"


@pytest.mark.parametrize(("script", "args", "message"), [
    ("bench_env.py", ("--ppo-rounds", "-1"), f"--ppo-rounds -1: {NEGATIVE}"),
    ("bench_env.py", ("--rounds", "-2"), f"--rounds -2: {NEGATIVE}"),
    ("bench_env.py", ("--ratio", "--parts"),
     "--parts and --ratio measure different things: give one of them"),
    ("bench_env.py", ("--ratio", "--rounds", "3"),
     "--rounds sets measures that --ratio does not run; its rounds are --ppo-rounds"),
    ("bench_cache.py", ("--steps", "0"), "--steps 0: must be at least 1"),
    ("bench_policies.py", ("--rounds", "0"), "--rounds 0: must be at least 1"),
    ("bench_policies.py", ("--scenarios", "-1"), "--scenarios -1: must be at least 1"),
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
    ranked = _bench("bench_cache").ranked
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


def test_ratio_alone_prints_each_round_and_the_median_of_their_ratios() -> None:
    # `--ratio` trains only the goal's pair, in turns, round after round: each round's line
    # holds both rates and their quotient, and the summary is the median of those.
    env = {**os.environ, "COLUMNS": "400"}  # one line per printed line
    r = _run("bench_env.py", "--ratio", "--quick", "--ppo-rounds", "3", env=env)
    assert r.returncode == 0, r.stderr
    rounds = re.findall(r"^round (\d+): PPO null ([\d,]+) steps/s, batched ([\d,]+) "
                        r"\(ratio ([\d.]+)\)$", r.stdout, re.M)
    assert [int(k) for k, *_ in rounds] == [0, 1, 2], r.stdout
    for _, null, batched, ratio in rounds:
        quotient = int(batched.replace(",", "")) / int(null.replace(",", ""))
        assert abs(quotient - float(ratio)) < 2e-3, (null, batched, ratio)
    summary = re.search(r"one torch thread\) = ([\d.]+), median of 3 paired rounds", r.stdout)
    assert summary, r.stdout
    assert float(summary.group(1)) == sorted(float(x[3]) for x in rounds)[1]
    # Nothing else is measured: the header, the three rounds, the summary.
    assert len(r.stdout.strip().splitlines()) == 5, r.stdout
    # The summary is the median, also of rounds far apart (the quick ones sit close).
    line = _bench("bench_env").ratio_line([0.5, 0.79, 0.8], 4)
    assert "= 0.790, median of 3 paired rounds" in line, line


def test_the_ratio_s_verdict_comes_from_a_confidence_interval_of_its_median() -> None:
    """bench_env.py says the PPO ratio meets or misses 0.8 only when a distribution-free
    CI of the median of its paired rounds lies on one side; on 2-core VMs whose rounds
    move by +-0.15 a bare median said "misses" at 0.797."""
    bench_env = _bench("bench_env")
    goal_verdict, median_ci = bench_env.goal_verdict, bench_env.median_ci
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


def test_models_train_in_turns_the_order_reversed_each_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_env.py's PPO ratio runs the null env's model and the real env's in turns of
    one update, A B, B A, A B, ..., so the VM's drift within seconds hits both alike; each
    model's rate counts its own turns only, not the call that ends its training."""
    import gc
    import types

    bench_env = _bench("bench_env")
    clock = {"cpu": 0.0, "wall": 0.0}
    log: list[tuple[str, int]] = []

    def turns(name: str, per_turn: int, n: int, cost: float) -> Generator[int, None, None]:
        for _ in range(n):
            log.append((name, gc.get_freeze_count()))
            clock["cpu"] += cost * per_turn
            clock["wall"] += 2 * cost * per_turn
            yield per_turn
        log.append((f"{name} ends", gc.get_freeze_count()))
        clock["cpu"] += 1.0  # ending is not a turn: not timed
        clock["wall"] += 1.0

    pauses = []

    def sleep(seconds: float) -> None:  # a pause after each turn, not timed
        pauses.append(seconds)
        clock["cpu"] += 100.0
        clock["wall"] += 100.0

    monkeypatch.setattr(bench_env, "time", types.SimpleNamespace(
        process_time=lambda: clock["cpu"], perf_counter=lambda: clock["wall"], sleep=sleep))
    rates = bench_env.interleaved_rates({"null": turns("null", 512, 4, 1e-4),
                                         "real": turns("real", 512, 4, 2e-4),
                                         "big": turns("big", 1024, 2, 1e-4)}, freeze_gc=True)
    assert [name for name, _ in log] == [
        "null", "real", "big", "big", "real", "null", "null", "real", "big ends",
        "real", "null", "null ends", "real ends"]
    assert all(frozen > 0 for _, frozen in log) and gc.get_freeze_count() == 0
    assert len(pauses) == 10 and all(p > 0 for p in pauses)  # after each of the 10 turns
    assert rates == {"null": pytest.approx((1e4, 5e3)), "real": pytest.approx((5e3, 2.5e3)),
                     "big": pytest.approx((1e4, 5e3))}
    log.clear()
    bench_env.interleaved_rates({"a": turns("a", 8, 1, 1.0)})
    assert log == [("a", 0), ("a ends", 0)]  # the collector left alone

    # A failing turn: the others are closed (a started ppo_turns closes its env then).
    closed = []

    def closing(name: str) -> Generator[int, None, None]:
        try:
            yield 8
            yield 8
        finally:
            closed.append(name)

    def failing() -> Generator[int, None, None]:
        yield 8
        raise RuntimeError("boom")

    gens = {"b": closing("b"), "c": failing()}  # held here: not closed by being freed
    with pytest.raises(RuntimeError, match="boom"):
        bench_env.interleaved_rates(gens, freeze_gc=True)
    assert closed == ["b"] and gc.get_freeze_count() == 0


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_ppo_turns_is_learn_one_update_at_a_time(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Training in turns is SB3's learn() step by step: the same parameters bit for bit,
    the schedules seeing the progress through all the steps (a learn() per update would
    train every update at progress 0: a `lin_` learning rate of 0), one env reset, no
    /tmp/SB3-* folder, the env closed at the end."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    bench_env = _bench("bench_env")
    monkeypatch.delenv("SB3_LOGDIR", raising=False)  # SB3 would log there, not in TMPDIR
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    like = gym.make("CartPole-v1")

    class Noisy(bench_env.NullEnv):  # type: ignore[name-defined]
        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
            super().reset(seed=seed)
            self._obs = self.np_random.normal(size=self._obs.shape).astype(np.float32)
            return self._obs, {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool,
                                                     dict[str, Any]]:
            obs, _, term, trunc, info = super().step(action)
            return obs, float(action), term, trunc, info

    def model() -> Any:
        venv = DummyVecEnv([lambda: Noisy(like, 5) for _ in range(2)])
        return PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=2, seed=0,
                   learning_rate=lambda progress: progress * 1e-3, device="cpu")

    whole = model().learn(48)
    folders = set(tmp_path.glob("SB3-*"))  # learn()'s default logger made one
    m = model()
    venv = m.get_env()
    resets = closes = 0
    reset, close = venv.reset, venv.close

    def counted_reset() -> Any:
        nonlocal resets
        resets += 1
        return reset()

    def counted_close() -> None:
        nonlocal closes
        closes += 1
        close()

    venv.reset, venv.close = counted_reset, counted_close
    lrs = []
    for n in bench_env.ppo_turns(m, 48):
        assert n == 16
        lrs.append(m.policy.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([2e-3 / 3, 1e-3 / 3, 0.0])
    assert (resets, closes, m._n_updates) == (1, 1, 6)
    for (name, a), b in zip(whole.policy.state_dict().items(),
                            m.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert set(tmp_path.glob("SB3-*")) == folders and len(folders) == 1


def test_bench_policies_times_both_forms_and_checks_they_agree(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A small run: both rows measured, the agreement of actions and episodes checked."""
    import torch

    threads = torch.get_num_threads()
    try:
        assert _bench("bench_policies").main(["--rounds", "2", "--observations", "30",
                                             "--scenarios", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = " ".join(capsys.readouterr().out.split())
    assert "checked" in out
    assert "[range]" in out
    assert re.search(r"SB3 predict, 30 calls .? \d+ \[\d+, \d+\] .? \d+ \[\d+, \d+\] .? "
                     r"\d\.\d\d", out)
    assert "validation, 1 scenarios x 2 episodes" in out
    assert "oracle, 1 scenarios x 2 episodes" in out
