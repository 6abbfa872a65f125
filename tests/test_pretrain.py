"""The warm start (agents/training/pretrain.py): a rule's decisions cloned into the policy
before PPO, its config checks, and its record in a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from ptreclaim.agents.training import config, pretrain
from ptreclaim.agents.training.fastvec import FastVecEnv
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.pagetable_env import EnvConfig, PageTableReclaimEnv

ENV = EnvConfig(decision_ticks=5, max_steps=12)
SCENARIO = load_scenario(CONFIG_DIR / "scenarios" / "balloon_host_hog.yaml")


class _Steps(gym.Env[np.ndarray, np.ndarray]):
    """Reward 1 at every decision, episodes of three decisions."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        return np.full(2, self.t / 3, np.float32), 1.0, False, self.t >= 3, {}


class _Fixed:
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.array([1, 2]), None


def test_returns_are_discounted_within_episodes() -> None:
    venv = DummyVecEnv([_Steps, _Steps])
    demos = pretrain.collect(venv, [_Fixed()], 12, gamma=0.5)
    # Two envs x 6 decisions: two episodes each of returns 1.75, 1.5, 1 (no bootstrap).
    assert demos.obs.shape == (12, 2) and demos.actions.tolist() == [[1, 2]] * 12
    per_env = demos.returns.reshape(6, 2).T
    for env_returns in per_env:
        assert env_returns.tolist() == pytest.approx([1.75, 1.5, 1.0, 1.75, 1.5, 1.0])


def _model_and_venv(seed: int) -> tuple[PPO, VecNormalize]:
    venv = FastVecEnv([PageTableReclaimEnv([SCENARIO], ENV) for _ in range(2)])
    venv.seed(seed)
    norm = VecNormalize(venv, gamma=0.99)
    model = PPO("MlpPolicy", norm, n_steps=16, batch_size=32, seed=seed, device="cpu",
                policy_kwargs={"net_arch": [32, 32]})
    return model, norm


def _warm(seed: int) -> tuple[PPO, dict[str, Any]]:
    cfg = config.PretrainConfig(teacher="heuristic:periodic_scan", steps=384, epochs=40,
                                batch_size=64, learning_rate=3e-3)
    model, venv = _model_and_venv(seed)
    rec = pretrain.pretrain(model, venv, cfg, ENV, SCENARIO, seed, lambda _: None)
    return model, rec


def test_warm_start_clones_the_teacher_and_is_deterministic() -> None:
    # Before: a random policy rarely picks the teacher's whole five-component action.
    model, venv = _model_and_venv(0)
    teachers = pretrain.teacher_policies(
        config.PretrainConfig(teacher="heuristic:periodic_scan"), ENV, SCENARIO)
    demos = pretrain.collect(venv, teachers, 384, 0.99)
    before = model.policy.predict(demos.obs, deterministic=True)[0]
    assert np.mean(np.all(before == demos.actions, axis=1)) < 0.5
    model, rec = _warm(0)
    assert rec["agreement"] >= 0.95 and rec["steps"] == 384
    assert rec["teacher"] == "heuristic:periodic_scan"
    again, rec2 = _warm(0)
    assert {k: v for k, v in rec.items() if k != "seconds"} == \
        {k: v for k, v in rec2.items() if k != "seconds"}
    for a, b in zip(model.policy.parameters(), again.policy.parameters(), strict=True):
        assert th.equal(a, b)


def test_several_teachers_are_dealt_the_envs_in_turn(tmp_path: Path) -> None:
    # Two rules that disagree: env 0 plays "none" (never a pass), env 1 a constant full
    # pass, for the whole collection; each env's decisions are exactly its own teacher's.
    every = tmp_path / "every.yaml"
    every.write_text("rule: {kind: constant, budget: 3, depth: 2, idle: 0, target: 0, "
                     "hard: 0}\n")
    cfg = config.PretrainConfig(teacher=f"heuristic:none, {every}")
    assert cfg.teachers == ("heuristic:none", str(every))
    _, venv = _model_and_venv(0)
    none, constant = pretrain.teacher_policies(cfg, ENV, SCENARIO)
    demos = pretrain.collect(venv, [none, constant], 64, 0.99)
    per_env = demos.actions.reshape(-1, 2, demos.actions.shape[1])
    raw = venv.unnormalize_obs(demos.obs).reshape(-1, 2, demos.obs.shape[1])
    for t in range(len(per_env)):
        assert np.array_equal(per_env[t, 0], none.predict(raw[t, 0], deterministic=True)[0])
        assert np.array_equal(per_env[t, 1], constant.predict(raw[t, 1], deterministic=True)[0])
    assert not np.array_equal(per_env[:, 0], per_env[:, 1])  # the two really differ


def test_teacher_is_checked_and_resolved(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    rule = tmp_path / "rules" / "mine.yaml"
    rule.parent.mkdir()
    rule.write_text("rule: {kind: periodic_scan, every_ticks: 2}\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\npretrain: {teacher: rules/mine.yaml}\n")
    cfg, data = config.load_experiment(exp)
    assert cfg.pretrain.teacher == str(rule.resolve())
    assert data["pretrain"]["teacher"] == str(rule.resolve())
    cfg, _ = config.load_experiment(exp, [("--set", "pretrain.teacher=heuristic:soft_hard")])
    assert cfg.pretrain.teacher == "heuristic:soft_hard"
    with pytest.raises(config.TrainError, match=r"pretrain\.teacher: .*no such file"):
        config.load_experiment(exp, [("--set", "pretrain.teacher=nowhere.yaml")])
    with pytest.raises(config.TrainError, match="unknown heuristic 'sofhard'"):
        config.load_experiment(exp, [("--set", "pretrain.teacher=heuristic:sofhard")])
    with pytest.raises(config.TrainError, match="needs ppo or a2c"):
        config.load_experiment(exp, [("--set", "algo=dqn")])
    # Several teachers: each resolved (in --set, against the current folder) and
    # checked; at most one per env.
    monkeypatch.chdir(tmp_path)
    cfg, _ = config.load_experiment(exp, [("--set", "pretrain.teacher=rules/mine.yaml,"
                                                    "heuristic:soft_hard")])
    assert cfg.pretrain.teachers == (str(rule.resolve()), "heuristic:soft_hard")
    with pytest.raises(config.TrainError, match="unknown heuristic 'sofhard'"):
        config.load_experiment(exp, [("--set", "pretrain.teacher=heuristic:none,"
                                                "heuristic:sofhard")])
    with pytest.raises(config.TrainError, match="3 teachers for n_envs 2"):
        config.load_experiment(exp, [("--set", "n_envs=2"), ("--set", "pretrain.teacher="
                                     "heuristic:none,heuristic:soft_hard,heuristic:on_zap")])
    with pytest.raises(config.TrainError, match=r"pretrain\.steps"):
        config.load_experiment(exp, [("--set", "pretrain.steps=0")])
