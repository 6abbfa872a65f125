"""``FastVecEnv``: an SB3 ``VecEnv`` that steps N compiled envs in one call.

SB3's ``DummyVecEnv`` steps its envs one by one through Python and deep-copies every info
dict on every step; with the compiled simulator core that overhead is larger than the
simulation itself.  ``FastVecEnv`` keeps ``DummyVecEnv``'s semantics exactly -- the same
seeding (``seed(s)`` seeds env i with ``s + i`` at the next reset), the same automatic
reset without a seed at episode end, ``terminal_observation`` and ``TimeLimit.truncated``
in the info of an ending episode, and ``Monitor``'s ``episode`` record (``r``, ``l``,
``t``) -- so a seed trains the same model bit for bit with either (``tests/test_fast_env.py``),
but it steps every env in one compiled call (``_fast.step_batch``) and builds an info dict
only where an episode ends.  Infos of other steps are empty: code that reads the env's
per-step info (evaluation, the advisor) drives single envs, not this vector env.

With ``threads`` > 1 the compiled call steps the envs on this thread and helper threads at
once, with the GIL released (``envs/sim/fast/pool.hpp``): the envs share no state, so the
data are the same for any number of threads (``tests/test_fast_env.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from ...envs.pagetable_env import PageTableReclaimEnv
from ...envs.sim.fast._fast import StepThreads, actions_in_space, step_batch
from ...envs.sim.fast.simulation import prepare


class FastVecEnv(VecEnv):
    """N :class:`PageTableReclaimEnv` on the compiled backend, stepped together."""

    def __init__(self, envs: Sequence[PageTableReclaimEnv], threads: int = 1) -> None:
        """``threads``: the threads that step the envs, this one included
        (:class:`~ptreclaim.envs.sim.fast._fast.StepThreads`), at most one per env and per
        CPU this process may use; any number gives the same results."""
        if not envs:
            raise ValueError("FastVecEnv needs at least one env")
        if threads < 1:
            raise ValueError(f"FastVecEnv: threads must be at least 1, got {threads}")
        for env in envs:
            if not isinstance(env, PageTableReclaimEnv) or env.config.backend == "exact":
                raise ValueError("FastVecEnv steps unwrapped PageTableReclaimEnv instances "
                                 "on the compiled backend (env.backend 'fast' or 'auto')")
        self.envs = list(envs)
        # Each scenario's reusable parts now, not at its first episode (the envs of a
        # vector env usually share their scenario objects, which are made ready once).
        for env in self.envs:
            for scenario in env.scenarios:
                prepare(scenario)
        first = self.envs[0]
        super().__init__(len(self.envs), first.observation_space, first.action_space)
        shape = first.observation_space.shape
        assert shape is not None
        self._obs = np.zeros((self.num_envs, *shape), dtype=np.float32)
        self._nvec = np.asarray(first.action_space.nvec, dtype=np.int64)
        self._rewards = np.zeros(self.num_envs, dtype=np.float64)
        self._trunc = np.zeros(self.num_envs, dtype=np.uint8)
        self._actions: np.ndarray | None = None
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_len = np.zeros(self.num_envs, dtype=np.int64)
        self._ep_start = [time.time()] * self.num_envs
        # No more threads than envs, nor than the CPUs this process may run on: a helper
        # without a core of its own only makes the others wait for it.
        usable = min(threads, self.num_envs, len(os.sched_getaffinity(0)))
        self._threads = StepThreads(usable) if usable > 1 else None

    @property
    def threads(self) -> int:
        """The threads that step the envs, this one included."""
        return 1 if self._threads is None else self._threads.threads

    # -- the VecEnv API -------------------------------------------------------

    def reset(self) -> VecEnvObs:
        for i, env in enumerate(self.envs):
            obs, self.reset_infos[i] = env.reset(seed=self._seeds[i],
                                                 options=self._options[i])
            self._obs[i] = obs
            self._start_episode(i)
        self._reset_seeds()
        self._reset_options()
        return self._obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        # No copy when SB3 passes what it does (a fresh C-contiguous int64 array); like
        # DummyVecEnv, the actions are read at step_wait().
        a = np.ascontiguousarray(actions, dtype=np.int64).reshape(self.num_envs, -1)
        if not actions_in_space(a, self._nvec):
            raise ValueError(f"actions {np.asarray(actions).tolist()} are outside "
                             f"MultiDiscrete({self._nvec.tolist()})")
        self._actions = a

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async() first"
        cores = [env._core for env in self.envs]
        if None in cores:
            raise RuntimeError("every env must be reset on the compiled backend before step")
        # The compiled call also adds each reward to its episode's return and counts the
        # step, and says how many episodes ended: most steps end none.
        ended = step_batch(cores, self._actions, self._obs, self._rewards, self._trunc,
                           self._ep_return, self._ep_len, self._threads)
        # Each env's pickle journal records its action (an env taken out of the batch still
        # pickles right), from one tolist() for the batch.
        for env, row in zip(self.envs, self._actions.tolist(), strict=True):
            env.journal("step", row)
        self._actions = None
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        dones = self._trunc.astype(bool)
        if ended:
            for i in map(int, np.flatnonzero(dones)):
                self._end_episode(i, infos)
        return self._obs.copy(), self._rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self._threads = None  # the helpers stop now, not when the env is collected

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return [getattr(self.envs[i], method_name)(*method_args, **method_kwargs)
                for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper[Any, Any, Any, Any]],
                       indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in self.envs]

    # -- helpers --------------------------------------------------------------

    def _end_episode(self, i: int, infos: list[dict[str, Any]]) -> None:
        """Env ``i``'s episode ended: ``Monitor``'s record and the last observation go to
        its info, and it resets (without a seed, as ``DummyVecEnv`` does)."""
        env = self.envs[i]
        ep_r = float(self._ep_return[i])
        infos[i] = {
            "TimeLimit.truncated": True,
            "terminal_observation": self._obs[i].copy(),
            "episode": {"r": round(ep_r, 6), "l": int(self._ep_len[i]),
                        "t": round(time.time() - self._ep_start[i], 6)},
        }
        obs, self.reset_infos[i] = env.reset()
        self._obs[i] = obs
        self._start_episode(i)

    def _start_episode(self, i: int) -> None:
        self._ep_return[i] = 0.0
        self._ep_len[i] = 0
        self._ep_start[i] = time.time()
