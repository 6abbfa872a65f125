"""The training envs: a VecEnv of the page-table env, wrapped for each algorithm.

DQN needs one ``Discrete`` action (:class:`FlattenMultiDiscrete`);
MaskablePPO gets an action mask (:func:`action_mask`); observations and
rewards are normalised by VecNormalize when the experiment says so.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from ...envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ...envs.sim.simulator import ScenarioConfig
from ..loading import load_vecnormalize
from ..modelpolicy import unflatten_action
from .config import ExperimentConfig

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv


class FlattenMultiDiscrete(gym.ActionWrapper[np.ndarray, np.int64, np.ndarray]):
    """``MultiDiscrete(nvec)`` as one ``Discrete(prod(nvec))`` (DQN needs it);
    action ``k`` is ``np.unravel_index(k, nvec)``."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray]) -> None:
        super().__init__(env)
        space = env.action_space
        assert isinstance(space, gym.spaces.MultiDiscrete)
        self.nvec = np.asarray(space.nvec, dtype=np.int64)
        self.action_space = gym.spaces.Discrete(int(np.prod(self.nvec)))

    def action(self, action: np.int64) -> np.ndarray:
        return unflatten_action(action, self.nvec)


def action_mask(env: gym.Env[Any, Any]) -> np.ndarray:
    """MaskablePPO: a target beyond the processes that hold page tables is a no-op,
    so mask it.  Budget, class, idle age and the hard-limit bit are always valid."""
    inner = env.unwrapped
    assert isinstance(inner, PageTableReclaimEnv)
    nvec = inner.action_space.nvec
    masks = []
    for dim, n in enumerate(nvec):
        m = np.ones(int(n), dtype=bool)
        if dim == 3 and inner.sim is not None:
            for choice in range(1, int(n)):
                m[choice] = inner.target(choice) is not None
        masks.append(m)
    return np.concatenate(masks)


def _make_env_fn(scenarios: list[ScenarioConfig], env_config: EnvConfig, algo: str,
                 parent_pid: int) -> Callable[[], gym.Env[Any, Any]]:
    def _init() -> gym.Env[Any, Any]:
        if os.getpid() != parent_pid:
            # A SubprocVecEnv worker: the parent handles Ctrl-C and stops it cleanly.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        from stable_baselines3.common.monitor import Monitor

        env: gym.Env[Any, Any] = Monitor(PageTableReclaimEnv(scenarios, env_config))
        if algo == "dqn":
            env = FlattenMultiDiscrete(env)
        elif algo == "maskable_ppo":
            from sb3_contrib.common.wrappers import ActionMasker

            env = ActionMasker(env, action_mask)
        return env

    return _init


def batched_ok(algo: str, scenarios: list[ScenarioConfig], env_config: EnvConfig) -> bool:
    """Whether the batched vector env can serve: the algorithm acts in the env's own
    action space (DQN and MaskablePPO need wrappers) and the compiled core runs every
    scenario."""
    from ...envs.sim.fast.simulation import supports

    return (algo not in ("dqn", "maskable_ppo") and env_config.backend != "exact"
            and all(supports(s) is None for s in scenarios))


def envs_line(exp: ExperimentConfig, venv: VecEnv) -> str:
    """How the training envs are stepped, for the run's first line: ``8 envs``, ``8 envs
    on 2 threads``, or why ``env_threads`` is not used (the batched env cannot serve)."""
    from .fastvec import FastVecEnv

    inner = venv.unwrapped  # inside VecNormalize and any other wrapper
    threads = inner.threads if isinstance(inner, FastVecEnv) else 1
    line = f"{venv.num_envs} envs" + (f" on {threads} threads" if threads > 1 else "")
    if exp.env_threads > 1 and not isinstance(inner, FastVecEnv):
        why = (f"vec_env is {exp.vec_env}" if exp.vec_env != "batched" else
               f"{exp.algo} on these scenarios needs SB3's {type(inner).__name__}")
        line += f"; env_threads {exp.env_threads} unused: {why}"
    elif threads < exp.env_threads:
        line += f" (env_threads {exp.env_threads}: at most one per env and per usable CPU)"
    return line


def make_vec_env(exp: ExperimentConfig, scenarios: list[ScenarioConfig], seed: int,
                 gamma: float, stats: Path | None = None) -> VecEnv:
    """The training VecEnv (the batched compiled one by default, DummyVecEnv where it
    cannot serve: on 2 cores worker processes cost more than they save), wrapped in
    VecNormalize when configured;
    ``stats`` restores saved normalisation statistics."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    venv: VecEnv
    if exp.vec_env == "batched" and batched_ok(exp.algo, scenarios, exp.env):
        from .fastvec import FastVecEnv

        venv = FastVecEnv([PageTableReclaimEnv(scenarios, exp.env) for _ in range(exp.n_envs)],
                          threads=exp.env_threads)
    else:
        fns = [_make_env_fn(scenarios, exp.env, exp.algo, os.getpid())
               for _ in range(exp.n_envs)]
        venv = SubprocVecEnv(fns) if exp.vec_env == "subproc" else DummyVecEnv(fns)
    venv.seed(seed)
    if stats is not None:
        vn = load_vecnormalize(stats, venv)
        vn.training = True
        return vn
    return normalized(exp, venv, gamma)


def normalized(exp: ExperimentConfig, venv: VecEnv, gamma: float) -> VecEnv:
    """``venv`` in VecNormalize as ``exp.normalize`` says (unchanged when it normalises
    nothing)."""
    from stable_baselines3.common.vec_env import VecNormalize

    norm = exp.normalize
    if norm.obs or norm.reward:
        return VecNormalize(venv, norm_obs=norm.obs, norm_reward=norm.reward,
                            clip_obs=norm.clip_obs, clip_reward=norm.clip_reward, gamma=gamma)
    return venv

