"""Warm start: clone a rule's decisions into the policy before reinforcement learning.

PPO from random weights on this env settles on "reclaim everything, always" and never
finds the pressure gate that the tuned ``periodic_scan`` rule uses (reclaim only when the
hold price is up): the benefit of holding back at low pressure is small per decision and
noisy, so the policy gradient does not see it (docs/results.md, "What it learned").  A
warm start gives PPO that knowledge and lets it search *from* the rule: the teacher (a
heuristic or a thresholds file, e.g. the rule ``tune.py`` found on the training suite)
plays ``steps`` decisions on the training envs; the policy is fitted to its actions
(behaviour cloning: maximum likelihood of each action component), and the value head to
the discounted returns those episodes earned, so that PPO's first advantages are not
noise.  This is "kickstarting" / demonstration-initialised RL (Hester et al. 2018,
"Deep Q-learning from Demonstrations"; Schmitt et al. 2018, "Kickstarting Deep
Reinforcement Learning").

Fairness: the teacher is chosen and tuned on the training suite only, and the held-out
comparison still includes the teacher itself (a learned policy that only copies its
teacher has not won anything).  The teacher's decisions are training data: the run
records how many (``state.json`` ``pretrain.steps``) beside PPO's own timesteps.

Determinism: the teacher is deterministic, the envs are seeded by the run, and the
minibatch order comes from a torch generator seeded with the run's seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...envs.pagetable_env import EnvConfig
from ...envs.sim.config import ConfigError
from ...envs.sim.simulator import ScenarioConfig
from ..loading import build_policy, parse_policy
from .config import PretrainConfig, TrainError


@dataclass(frozen=True)
class Demos:
    """The teacher's decisions: observations as the policy sees them (normalised when
    the run normalises), the actions, and the discounted returns (in the reward scale
    the value head learns: normalised when the run normalises rewards)."""

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray


def teacher_policies(cfg: PretrainConfig, env_config: EnvConfig, scenario: ScenarioConfig
                     ) -> list[Any]:
    """The teachers named by ``pretrain.teacher`` (rules; checked by the config)."""
    return [build_policy(parse_policy(one), env_config, scenario) for one in cfg.teachers]


def collect(venv: Any, teachers: Sequence[Any], steps: int, gamma: float) -> Demos:
    """Let the teachers act in the envs of ``venv`` for ``steps`` decisions in all; env
    ``i`` follows ``teachers[i % len(teachers)]`` for the whole collection, so every
    episode and its returns belong to one teacher.

    The teacher sees raw observations (a rule reads the env's units); the demos keep
    the observations the policy will see.  With ``VecNormalize`` the statistics keep
    updating while the teacher plays, and the stored observations and rewards are
    normalised with the final statistics, the ones PPO starts from.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    norm = venv if isinstance(venv, VecNormalize) else None
    n = venv.num_envs
    rounds = max(1, -(-steps // n))
    first = venv.reset()
    raw = np.asarray(norm.get_original_obs() if norm is not None else first)
    obs_l: list[np.ndarray] = []
    act_l: list[np.ndarray] = []
    rew_l: list[np.ndarray] = []
    done_l: list[np.ndarray] = []
    for _ in range(rounds):
        actions = np.stack([np.asarray(teachers[i % len(teachers)]
                                       .predict(raw[i], deterministic=True)[0])
                            for i in range(n)]).astype(np.int64)
        obs_l.append(np.array(raw, dtype=np.float32))
        act_l.append(actions)
        nxt, reward, done, _ = venv.step(actions)
        if norm is not None:
            raw = np.asarray(norm.get_original_obs())
            reward = norm.get_original_reward()
        else:
            raw = np.asarray(nxt)
        rew_l.append(np.asarray(reward, dtype=np.float64))
        done_l.append(np.asarray(done, dtype=bool))
    obs = np.stack(obs_l)       # (rounds, n, d)
    rewards = np.stack(rew_l)   # (rounds, n)
    dones = np.stack(done_l)
    if norm is not None:
        obs = np.asarray(norm.normalize_obs(obs.reshape(rounds * n, -1)),
                         dtype=np.float32).reshape(obs.shape)
        if norm.norm_reward:
            rewards = np.asarray(norm.normalize_reward(rewards))
    # Discounted return of each decision within its episode.  The last, unfinished
    # episode of each env and truncated episodes are not bootstrapped (there is no value
    # function yet): the targets of their last decisions are short by gamma^k terms,
    # which PPO's own value updates correct within the first rollouts.
    returns = np.zeros_like(rewards)
    acc = np.zeros(n)
    for t in range(rounds - 1, -1, -1):
        acc = rewards[t] + gamma * acc * (~dones[t])
        returns[t] = acc
    return Demos(obs.reshape(rounds * n, -1), np.stack(act_l).reshape(rounds * n, -1),
                 returns.reshape(-1).astype(np.float32))


def fit(model: Any, demos: Demos, cfg: PretrainConfig, seed: int, vf_coef: float
        ) -> dict[str, float]:
    """Fit the policy to the demos: the negative log-likelihood of the teacher's actions
    (summed over the action components) plus ``vf_coef`` times the value head's squared
    error against the returns (``pretrain.value``).  Returns what the fit reached: the
    share of decisions where the policy's most likely action is the teacher's, in every
    component, and the final losses."""
    import torch as th

    policy = model.policy
    policy.set_training_mode(True)
    obs = th.as_tensor(demos.obs, device=policy.device)
    act = th.as_tensor(demos.actions, device=policy.device)
    ret = th.as_tensor(demos.returns, device=policy.device)
    opt = th.optim.Adam(policy.parameters(), lr=cfg.learning_rate)
    gen = th.Generator().manual_seed(seed)
    n = len(obs)
    nll = vloss = th.zeros(())
    for _ in range(cfg.epochs):
        for idx in th.randperm(n, generator=gen).split(cfg.batch_size):
            values, log_prob, _ = policy.evaluate_actions(obs[idx], act[idx])
            nll = -log_prob.mean()
            loss = nll
            if cfg.value:
                vloss = th.nn.functional.mse_loss(values.flatten(), ret[idx])
                loss = loss + vf_coef * vloss
            opt.zero_grad()
            loss.backward()
            # The algorithm's own clip (PPO and A2C both have one), so the warm start
            # takes steps no larger than the updates that follow it.
            th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            opt.step()
    policy.set_training_mode(False)
    with th.no_grad():
        chosen = np.concatenate([policy.predict(demos.obs[i:i + 4096], deterministic=True)[0]
                                 .reshape(-1, demos.actions.shape[1])
                                 for i in range(0, n, 4096)])
    agree = float(np.mean(np.all(chosen == demos.actions, axis=1)))
    return {"agreement": agree, "nll": float(nll.detach()),
            "value_mse": float(vloss.detach())}


def pretrain(model: Any, venv: Any, cfg: PretrainConfig, env_config: EnvConfig,
             scenario: ScenarioConfig, seed: int, echo: Callable[[str], None]
             ) -> dict[str, Any]:
    """Collect the teacher's demos on ``venv`` and fit ``model``'s policy to them, with
    the model's own discount and value-loss weight (``gamma``, ``vf_coef``); the record
    that goes into ``state.json``."""
    t0 = time.perf_counter()
    try:
        teachers = teacher_policies(cfg, env_config, scenario)
    except ConfigError as exc:  # a file that changed since the config was checked
        raise TrainError(f"pretrain.teacher: {exc}") from None
    echo(f"warm start: {cfg.teacher} plays {cfg.steps} decisions, then {cfg.epochs} epochs "
         "of behaviour cloning")
    demos = collect(venv, teachers, cfg.steps, float(model.gamma))
    got = fit(model, demos, cfg, seed, float(model.vf_coef))
    record = {"teacher": cfg.teacher, "steps": len(demos.obs), "epochs": cfg.epochs,
              **{k: round(v, 6) for k, v in got.items()},
              "seconds": round(time.perf_counter() - t0, 3)}
    echo(f"warm start: the policy picks the teacher's action in {got['agreement']:.1%} of "
         f"{len(demos.obs)} decisions (value MSE {got['value_mse']:.3g})")
    return record
