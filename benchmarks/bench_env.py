"""Benchmark the Gymnasium env: raw step rate, and what it costs PPO training.

Prints, from one run and measured side by side (interleaved, so machine noise
hits both alike):

1. env steps per second of the default id under random actions;
2. SB3 PPO training steps per second (4 envs, DummyVecEnv, one torch thread)
   on this env and on a null env with identical spaces, and their ratio (the
   goal: the env costs at most 20 % of training time, ratio >= 0.8);
3. step time with a 1 GiB vs a 100 TiB sparse page-table hog in the scenario
   (user space ends at 128 TiB).

Reproduce: ``.venv/bin/python benchmarks/bench_env.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import ptreclaim  # noqa: F401  (registers the env ids)
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.registration import DEFAULT_ID
from ptreclaim.envs.sim.machine import MachineConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, WorkloadSpec

#: Steps of the hog comparison: 40 decisions of 10 ticks stay below the 512
#: tables a 1 GiB mapping holds.
HOG_STEPS = 40


class NullEnv(gym.Env[np.ndarray, np.ndarray]):
    """Same spaces as the real env, no work: the cost of the learner alone."""

    def __init__(self, like: gym.Env[Any, Any], max_steps: int) -> None:
        self.observation_space = like.observation_space
        self.action_space = like.action_space
        shape = like.observation_space.shape
        assert shape is not None
        self._obs: np.ndarray = np.zeros(shape, dtype=np.float32)
        self._t = 0
        self._max = max_steps

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs, 0.0, False, self._t >= self._max, {}


def env_steps_per_s(env: gym.Env[Any, Any], steps: int, seed: int) -> float:
    env.reset(seed=seed)
    env.action_space.seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - t0)


def ppo_steps_per_s(make: Any, steps: int, seed: int) -> float:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.set_num_threads(1)
    venv = DummyVecEnv([make for _ in range(4)])
    model = PPO("MlpPolicy", venv, n_steps=128, batch_size=128, n_epochs=4, seed=seed,
                verbose=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    rate = steps / (time.perf_counter() - t0)
    venv.close()
    return rate


def hog_scenario(size: int) -> ScenarioConfig:
    """One write hog, slow enough (1 table per tick) that the 1 GiB one does not
    wrap around within the measured steps: both do the same work, only the
    mapped size differs."""
    return ScenarioConfig(name=f"hog-{size}", machine=MachineConfig(ram_mib=4096),
                          workloads=(WorkloadSpec("hog", {"variant": "write",
                                                          "size_gib": size,
                                                          "tables_per_tick": 1}),),
                          ticks=10_000, jitter=0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    console = Console()
    console.print(f"python {platform.python_version()}, {platform.platform()}, "
                  f"{os.cpu_count()} CPUs; reproduce: {' '.join([sys.executable, *sys.argv])}")
    rounds = 1 if args.quick else 3
    env_steps = 100 if args.quick else 600
    ppo_steps = 512 if args.quick else 4096

    real = gym.make(DEFAULT_ID)
    null = NullEnv(real, max_steps=EnvConfig().max_steps)
    rates: dict[str, list[float]] = {"env": [], "ppo_env": [], "ppo_null": []}
    for r in range(rounds):
        rates["env"].append(env_steps_per_s(real, env_steps, args.seed + r))
        rates["ppo_null"].append(ppo_steps_per_s(
            lambda: NullEnv(real, EnvConfig().max_steps), ppo_steps, args.seed + r))
        rates["ppo_env"].append(ppo_steps_per_s(lambda: gym.make(DEFAULT_ID), ppo_steps,
                                                args.seed + r))
    med = {k: statistics.median(v) for k, v in rates.items()}
    t = Table(title=f"{DEFAULT_ID}: median of {rounds} interleaved rounds")
    for col in ("measure", "steps/s", "µs/step"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    t.add_row("env alone, random actions", f"{med['env']:,.0f}", f"{1e6 / med['env']:,.0f}")
    t.add_row("PPO on a null env (same spaces)", f"{med['ppo_null']:,.0f}",
              f"{1e6 / med['ppo_null']:,.0f}")
    t.add_row("PPO on this env", f"{med['ppo_env']:,.0f}", f"{1e6 / med['ppo_env']:,.0f}")
    console.print(t)
    ratio = med["ppo_env"] / med["ppo_null"]
    verdict = "meets" if ratio >= 0.8 else "misses"
    console.print(f"training-speed ratio env/null = {ratio:.2f} ({verdict} the goal >= 0.8)")
    del null

    t2 = Table(title="step time with a sparse write hog: 1 GiB vs 100 TiB region")
    for col in ("region", "µs/step (median)", "page tables after"):
        t2.add_column(col, justify="right")
    sizes = (1, 100 * 1024)
    per: dict[int, list[float]] = {s: [] for s in sizes}
    tables: dict[int, int] = {}
    for r in range(rounds):
        for size in sizes:
            env = PageTableReclaimEnv([hog_scenario(size)], EnvConfig(max_steps=10**6))
            per[size].append(1e6 / env_steps_per_s(env, HOG_STEPS, args.seed + r))
            assert env.sim is not None
            tables[size] = sum(p.mm.tables for p in env.sim.alive)
    for size in sizes:
        label = "1 GiB" if size == 1 else "100 TiB"
        t2.add_row(label, f"{statistics.median(per[size]):,.0f}", f"{tables[size]:,}")
    console.print(t2)
    ratio2 = statistics.median(per[sizes[1]]) / statistics.median(per[sizes[0]])
    console.print(f"100 TiB / 1 GiB step-time ratio: {ratio2:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
