"""The batched vector env's compiled helpers: the action check and the episode bookkeeping
that ``step_batch`` took over from NumPy calls in ``FastVecEnv`` (branch ``speed4``).

The check must accept exactly what ``MultiDiscrete(nvec)`` contains, and ``step_batch``
must add each reward to its episode's return as NumPy's ``+=`` did (same doubles, same
order), count the steps and report how many episodes ended.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptreclaim.agents.training.fastvec import FastVecEnv
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_suite
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ptreclaim.envs.sim.fast._fast import actions_in_space, step_batch


def test_actions_in_space_is_multidiscrete_contains() -> None:
    nvec = np.array([5, 3, 4, 4, 2], dtype=np.int64)
    rng = np.random.default_rng(0)
    seen = {True: 0, False: 0}
    for _ in range(2000):
        a = rng.integers(-1, 7, size=(int(rng.integers(1, 5)), 5), dtype=np.int64)
        want = bool(((a >= 0) & (a < nvec)).all())
        assert actions_in_space(a, nvec) is want
        seen[want] += 1
    assert seen[True] and seen[False]  # both outcomes were exercised
    # A row of the wrong width is outside the space, whatever its values.
    assert not actions_in_space(np.zeros((2, 4), dtype=np.int64), nvec)
    assert not actions_in_space(np.zeros((2, 6), dtype=np.int64), nvec)


def test_step_async_rejects_actions_outside_the_space_and_steps_nothing() -> None:
    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    venv = FastVecEnv([PageTableReclaimEnv(scenarios, EnvConfig()) for _ in range(2)])
    venv.seed(1)
    venv.reset()
    ticks = [env.sim.tick_no for env in venv.envs]
    bad = np.zeros((2, 5), dtype=np.int64)
    bad[1, 0] = venv.action_space.nvec[0]  # one past the largest budget index
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        venv.step_async(bad)
    with pytest.raises(ValueError, match="outside MultiDiscrete"):
        venv.step_async(-np.ones((2, 5), dtype=np.int64))
    assert [env.sim.tick_no for env in venv.envs] == ticks
    # Other integer and float dtypes are converted as before (astype(int64)).
    venv.step_async(np.zeros((2, 5), dtype=np.int32))
    venv.step_wait()
    assert [env.sim.tick_no for env in venv.envs] != ticks


def test_step_batch_keeps_the_episode_sums_numpy_kept() -> None:
    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    envs = [PageTableReclaimEnv(scenarios, EnvConfig(max_steps=7)) for _ in range(3)]
    for i, env in enumerate(envs):
        env.reset(seed=10 + i)
    nvec = envs[0].action_space.nvec
    rng = np.random.default_rng(4)
    obs = np.zeros((3, *envs[0].observation_space.shape), dtype=np.float32)
    rewards = np.zeros(3)
    trunc = np.zeros(3, dtype=np.uint8)
    ret = np.full(3, 0.1)  # a start that is not 0, so the sum's rounding shows
    length = np.zeros(3, dtype=np.int64)
    want_ret = ret.copy()
    for step in range(7):
        acts = np.ascontiguousarray(rng.integers(nvec, size=(3, len(nvec))), dtype=np.int64)
        ended = step_batch([env._core for env in envs], acts, obs, rewards, trunc, ret, length)
        want_ret += rewards
        assert ret.tobytes() == want_ret.tobytes()
        assert length.tolist() == [step + 1] * 3
        assert ended == int(trunc.sum()) == (3 if step == 6 else 0)


def test_step_batch_refuses_arrays_of_another_length_and_steps_nothing() -> None:
    # With the GIL released nothing may write past an array: a short one is refused first,
    # before any env steps (the refused call leaves the envs as a fresh pair is).
    scenarios = load_suite(CONFIG_DIR / "suites" / "train.yaml")

    def fresh() -> list[PageTableReclaimEnv]:
        envs = [PageTableReclaimEnv(scenarios, EnvConfig()) for _ in range(2)]
        for i, env in enumerate(envs):
            env.reset(seed=i)
        return envs

    refused, untouched = fresh(), fresh()
    width = refused[0].observation_space.shape[0]
    acts = np.ones((2, len(refused[0].action_space.nvec)), dtype=np.int64)

    def step(envs: list[PageTableReclaimEnv], rows: int = 2) -> np.ndarray:
        obs = np.zeros((rows, width), dtype=np.float32)
        step_batch([env._core for env in envs], acts, obs, np.zeros(2),
                   np.zeros(2, dtype=np.uint8), np.zeros(2), np.zeros(2, dtype=np.int64))
        return obs

    with pytest.raises(ValueError, match=r"one row per env \(2\)"):
        step(refused, rows=1)
    assert step(refused).tobytes() == step(untouched).tobytes()
