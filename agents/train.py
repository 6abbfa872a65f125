"""Train stable-baselines3 agents on the page-table reclaim env, from YAML.

An *experiment* (``configs/experiments/<name>.yaml``, :class:`ExperimentConfig`)
names the env id, the training and held-out evaluation scenarios, the
algorithm, seeds, budget, vectorisation, normalisation, evaluation and env
overrides; the algorithm's hyperparameters come from
``configs/algos/<algo>.yaml`` (keyed by env id, with a ``default`` entry).
Every run writes a self-describing folder
``runs/<experiment>__<algo>__<seed>__<time>/`` (see ``docs/train.md``):
resolved config, command, versions, models, normalisation statistics,
checkpoints, evaluations, TensorBoard logs, a report and plots.  At the end
the final and best models meet every fixed heuristic and the oracle bound on
the same seeded held-out episodes (:mod:`ptreclaim.agents.evaluate`).

Entry point: :func:`main` (``scripts/train.py``, ``python -m
ptreclaim.agents.train``).  Exit status: 0 done, 1 a seed failed, 2 bad input
(one ``error:`` line, nothing overwritten), 128 + signal number when
interrupted (a checkpoint is saved first; ``--resume RUN_DIR`` continues).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import inspect
import io
import json
import math
import os
import pickle
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import typing
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

# gymnasium first: importing it registers the env ids, which imports the env
# module; importing the env module first would re-enter it half-initialised.
import gymnasium as gym
import numpy as np
import yaml

from .. import __version__
from ..configs import CONFIG_DIR
from ..envs.configio import load_yaml, scenario_from_data, write_text_atomic, write_yaml_atomic
from ..envs.pagetable_env import COST_TERMS, EnvConfig, PageTableReclaimEnv
from ..envs.registration import DEFAULT_ID
from ..envs.sim.config import ConfigError, build, check_range, did_you_mean, to_dict
from ..envs.sim.simulator import ScenarioConfig
from .evaluate import (
    EpisodeResult,
    ObsNormalizedPolicy,
    PolicySummary,
    episode_seed,
    paired_difference_ci,
    run_episode,
    stratified_bootstrap,
    summarize,
)
from .heuristics import HEURISTICS, make_heuristic

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize

#: Algorithm names accepted in configs and on the command line.
ALGOS: tuple[str, ...] = ("ppo", "a2c", "dqn", "maskable_ppo")
#: Hyperparameters that accept a ``lin_<x>`` schedule (x decays linearly to 0).
SCHEDULE_KEYS = frozenset({"learning_rate", "clip_range", "clip_range_vf"})
#: Constructor arguments the pipeline sets itself (not hyperparameters).
PIPELINE_KEYS = frozenset({"env", "seed", "device", "verbose", "tensorboard_log",
                           "_init_setup_model", "stats_window_size"})
ACTIVATIONS = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")
#: Policies of the final comparison, besides the learned ones.
BASELINES: tuple[str, ...] = ("none", "on_zap", "soft_hard", "periodic_scan")
#: Test hook: stop (as if Ctrl-C) once this many steps are done.
STOP_AT_ENV = "PTRECLAIM_TRAIN_STOP_AT"
RUN_FILES = ("config.yaml", "state.json")


class TrainError(Exception):
    """Bad input: printed as one ``error:`` line, exit status 2."""


# ----------------------------------------------------------------- configs


@dataclass(frozen=True)
class NormalizeConfig:
    """VecNormalize settings.  Observations are already in [-1, 1] but many
    features live near 0 (page-table fractions of a few %), so standardising
    them helps the MLP; rewards span three orders of magnitude between quiet
    and failing steps, so scaling them keeps the value loss sane."""

    obs: bool = True
    reward: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0

    def __post_init__(self) -> None:
        check_range("normalize.clip_obs", self.clip_obs, 0.0, 1e6, lo_open=True)
        check_range("normalize.clip_reward", self.clip_reward, 0.0, 1e6, lo_open=True)


@dataclass(frozen=True)
class EvalConfig:
    """Model selection during training, and the final evaluation.

    During training, every ``freq`` steps the current model runs ``episodes``
    deterministic validation episodes per scenario of ``select_on`` (default
    ``train``: the training scenarios, so the held-out scenarios never
    influence which model is kept; ``eval``: the held-out ones, the old
    behaviour) with seeds drawn from ``seed + 1``; the best mean becomes
    ``best_model.zip``.  At the end every policy runs ``final_episodes`` per
    held-out scenario with seeds from ``seed``.
    """

    freq: int = 10_000
    episodes: int = 2
    final_episodes: int = 10
    seed: int = 1000
    select_on: str = "train"
    baselines: tuple[str, ...] = BASELINES
    oracle: bool = True
    cache_baselines: bool = True  # heuristics are deterministic: reuse across seeds/runs
    n_boot: int = 2000

    def __post_init__(self) -> None:
        check_range("eval.freq", self.freq, 0, 10**10)
        check_range("eval.episodes", self.episodes, 1, 10_000)
        check_range("eval.final_episodes", self.final_episodes, 1, 10_000)
        check_range("eval.seed", self.seed, 0, 2**31)
        check_range("eval.n_boot", self.n_boot, 100, 10**6)
        if self.select_on not in ("train", "eval"):
            raise ConfigError(f"eval.select_on: {self.select_on!r} is not 'train' (validation "
                              "episodes of the training scenarios) or 'eval' (the held-out "
                              "scenarios)")
        for name in self.baselines:
            if name not in HEURISTICS:
                raise ConfigError(f"eval.baselines: unknown heuristic {name!r}"
                                  f"{did_you_mean(name, HEURISTICS)}; known: "
                                  f"{', '.join(HEURISTICS)}")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: what to train, on what, how long, and how to judge it.

    ``train_suite``/``eval_suite``: a shipped suite or scenario name
    (``configs/suites/<name>.yaml``, ``configs/scenarios/<name>.yaml``) or a
    path to a suite or scenario YAML; empty ``train_suite`` means the env id's
    own scenarios.  ``env``: :class:`EnvConfig` fields.  ``hyperparams``:
    per-algorithm overrides of the algo YAML (``{ppo: {n_steps: 64}}``).
    """

    name: str = ""
    env_id: str = DEFAULT_ID
    train_suite: str = ""
    eval_suite: str = "test"
    algo: str = "ppo"
    algo_config: str = ""  # path of the algo YAML; empty: configs/algos/<algo>.yaml
    seeds: tuple[int, ...] = (0,)
    timesteps: int = 100_000
    n_envs: int = 8
    vec_env: Literal["dummy", "subproc"] = "dummy"
    jobs: int = 1
    torch_threads: int = 1
    checkpoint_freq: int = 0  # steps between checkpoints; 0: only at the end and on Ctrl-C
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    hyperparams: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '_', '-', '.'")
        if self.algo not in ALGOS:
            raise ConfigError(f"algo: unknown algorithm {self.algo!r}"
                              f"{did_you_mean(self.algo, ALGOS)}; known: {', '.join(ALGOS)}")
        for key in self.hyperparams:
            if key not in ALGOS:
                raise ConfigError(f"hyperparams: {key!r} is not an algorithm"
                                  f"{did_you_mean(key, ALGOS)}; known: {', '.join(ALGOS)}")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {list(self.seeds)} lists a seed twice")
        for s in self.seeds:
            check_range("seeds[]", s, 0, 2**31)
        check_range("timesteps", self.timesteps, 1, 10**10)
        check_range("n_envs", self.n_envs, 1, 1024)
        check_range("jobs", self.jobs, 1, 256)
        check_range("torch_threads", self.torch_threads, 1, 256)
        check_range("checkpoint_freq", self.checkpoint_freq, 0, 10**10)
        if not self.eval_suite:
            raise ConfigError("eval_suite: name the held-out scenarios (e.g. test)")


@dataclass
class Scenarios:
    """The resolved training and held-out scenarios."""

    train: list[ScenarioConfig]
    eval: list[ScenarioConfig]


# ------------------------------------------------------------ config loading


def default_experiment_path() -> Path:
    return CONFIG_DIR / "experiments" / "default.yaml"


def _coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; take numeric strings as numbers."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        f = float(value)
        return int(f) if re.fullmatch(r"[-+]?\d+", value) else f
    return value


def _parse_value(raw: str) -> Any:
    """A typed ``--set`` value: YAML scalars and flow lists/maps, never eval."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise TrainError(f"cannot parse {raw!r} as a YAML value") from None
    return _coerce_number(value)


def _resolve_suite_spec(spec: Any, base: Path) -> Any:
    """Paths (anything with a '/' or a .yaml suffix) become absolute, so a
    resolved config works from any folder; names stay names."""
    if isinstance(spec, str) and spec and ("/" in spec or spec.endswith((".yaml", ".yml"))):
        return str((base / spec).resolve())
    return spec


def _set_path(data: dict[str, Any], key: str, value: Any, label: str) -> None:
    """Put ``value`` at dotted ``key``, checking each dataclass level's keys."""
    parts = key.split(".")
    cls: Any = ExperimentConfig
    node = data
    for i, part in enumerate(parts):
        if not part:
            raise TrainError(f"{label}: empty key in {key!r}")
        if cls is not None:
            names = [f.name for f in dataclasses.fields(cls) if f.init]
            if part not in names:
                where = ".".join(parts[:i]) or "the experiment"
                raise TrainError(f"{label}: unknown key {part!r} in {where}"
                                 f"{did_you_mean(part, names)}; allowed: {', '.join(names)}")
            hint = _type_hints(cls)[part]
            cls = hint if dataclasses.is_dataclass(hint) else None
        if i == len(parts) - 1:
            node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            raise TrainError(f"{label}: {'.'.join(parts[:i + 1])} is not a mapping")
        else:
            child = dict(child)
        node[part] = child
        node = child


def _type_hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def load_experiment(path: Path | None, sets: Sequence[tuple[str, str]] = ()
                    ) -> tuple[ExperimentConfig, dict[str, Any]]:
    """Load an experiment YAML and apply ``(label, "key=value")`` overrides.

    Returns the frozen config and its plain data (paths made absolute).
    """
    p = path or default_experiment_path()
    data = load_yaml(p)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of experiment keys, got {type(data).__name__}")
    data = dict(data)
    for key in ("train_suite", "eval_suite", "algo_config"):
        if key in data:
            data[key] = _resolve_suite_spec(data[key], p.parent)
    if not data.get("name"):
        data["name"] = p.stem
    exp = build(ExperimentConfig, data, p.name)
    for label, item in sets:
        if "=" not in item:
            raise TrainError(f"{label} {item!r}: expected key=value (e.g. env.decision_ticks=20)")
        key, raw = item.split("=", 1)
        key = key.strip()
        # `--set k=v` names the item; a flag (`--algo x`) arrives with its own label.
        where = f"{label} {item}" if label == "--set" else label
        try:
            value = _parse_value(raw)
        except TrainError as exc:
            raise TrainError(f"{where}: {exc}") from None
        if key in ("train_suite", "eval_suite", "algo_config"):
            value = _resolve_suite_spec(value, Path.cwd())
        _set_path(data, key, value, where)
        try:
            exp = build(ExperimentConfig, data, "experiment")
        except ConfigError as exc:
            raise TrainError(f"{where}: {exc}") from None
    return exp, to_dict(exp)


def _suite_names() -> list[str]:
    return sorted({p.stem for p in (CONFIG_DIR / "suites").glob("*.yaml")}
                  | {p.stem for p in (CONFIG_DIR / "scenarios").glob("*.yaml")})


def load_scenarios(spec: str, label: str) -> list[ScenarioConfig]:
    """Scenarios from a shipped suite/scenario name or a suite/scenario file."""
    from ..envs.configio import load_scenario, load_suite

    if "/" in spec or spec.endswith((".yaml", ".yml")):
        p = Path(spec)
        data = load_yaml(p)
        if isinstance(data, Mapping) and "scenarios" in data and "workloads" not in data:
            return load_suite(p)
        return [load_scenario(p)]
    suite = CONFIG_DIR / "suites" / f"{spec}.yaml"
    if suite.exists():
        return load_suite(suite)
    scen = CONFIG_DIR / "scenarios" / f"{spec}.yaml"
    if scen.exists():
        return [load_scenario(scen)]
    raise TrainError(f"{label}: no suite or scenario named {spec!r}"
                     f"{did_you_mean(spec, _suite_names())}; give a name from "
                     f"configs/suites or configs/scenarios, or a path to a YAML file")


def resolve_scenarios(exp: ExperimentConfig) -> Scenarios:
    """Load the training scenarios (the env id's own when ``train_suite`` is
    empty) and the held-out ones."""
    if exp.env_id not in gym.registry or not exp.env_id.startswith("ptreclaim/"):
        ids = [k for k in gym.registry if k.startswith("ptreclaim/")]
        raise TrainError(f"env_id: {exp.env_id!r} is not a ptreclaim env id"
                         f"{did_you_mean(exp.env_id, ids)}; e.g. {DEFAULT_ID}")
    train_spec = exp.train_suite
    if not train_spec:
        kwargs = gym.spec(exp.env_id).kwargs
        train_spec = kwargs.get("scenario") or kwargs.get("suite") or "train"
    return Scenarios(load_scenarios(train_spec, "train_suite"),
                     load_scenarios(exp.eval_suite, "eval_suite"))


# ------------------------------------------------------------ hyperparameters


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of an algorithm name (imported lazily: torch is slow to load)."""
    if algo == "ppo":
        from stable_baselines3 import PPO
        return PPO
    if algo == "a2c":
        from stable_baselines3 import A2C
        return A2C
    if algo == "dqn":
        from stable_baselines3 import DQN
        return DQN
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO
        return MaskablePPO
    raise TrainError(f"unknown algorithm {algo!r}{did_you_mean(algo, ALGOS)}; "
                     f"known: {', '.join(ALGOS)}")


def _algo_params(algo: str) -> list[str]:
    """Constructor arguments of the algorithm (its hyperparameters)."""
    sig = inspect.signature(algo_class(algo).__init__)
    return [n for n in sig.parameters if n != "self"]


def load_hyperparams(exp: ExperimentConfig) -> dict[str, Any]:
    """Hyperparameters for ``exp.algo`` on ``exp.env_id``: the algo YAML's
    entry for the env id (or its ``default`` entry, when there is none), then
    the experiment's ``hyperparams.<algo>`` overrides key by key; validated."""
    path = Path(exp.algo_config) if exp.algo_config else CONFIG_DIR / "algos" / f"{exp.algo}.yaml"
    data = load_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of env ids (and 'default') to "
                          "hyperparameters")
    entry = data.get(exp.env_id, data.get("default"))
    if entry is None:
        raise ConfigError(f"{path}: no entry for {exp.env_id!r} and no 'default' entry")
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{path}: the entry for {exp.env_id!r} must be a mapping")
    hp = {str(k): _coerce_number(v) for k, v in entry.items()}
    where = f"{path.name}[{exp.env_id if exp.env_id in data else 'default'}]"
    validate_hyperparams(exp.algo, hp, where)
    overrides = {k: _coerce_number(v) for k, v in exp.hyperparams.get(exp.algo, {}).items()}
    validate_hyperparams(exp.algo, overrides, f"hyperparams.{exp.algo}")
    hp.update(overrides)
    return hp


def validate_hyperparams(algo: str, hp: Mapping[str, Any], where: str) -> None:
    """Reject unknown keys (with a hint), pipeline-owned keys and bad schedules."""
    allowed = _algo_params(algo)
    for key, value in hp.items():
        if key in PIPELINE_KEYS:
            raise ConfigError(f"{where}.{key}: set by the pipeline, not a hyperparameter "
                              "(seeds: --seed; logs: the run folder)")
        if key not in allowed:
            raise ConfigError(f"{where}: unknown {algo} hyperparameter {key!r}"
                              f"{did_you_mean(key, allowed)}")
        if isinstance(value, str) and key != "policy":
            if key not in SCHEDULE_KEYS:
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            _schedule(value, f"{where}.{key}")
        if key == "policy_kwargs":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.policy_kwargs: expected a mapping")
            act = value.get("activation_fn")
            if act is not None and act not in ACTIVATIONS:
                raise ConfigError(f"{where}.policy_kwargs.activation_fn: {act!r} is not one of "
                                  f"{', '.join(ACTIVATIONS)}{did_you_mean(str(act), ACTIVATIONS)}")


def _schedule(value: str, where: str) -> Callable[[float], float]:
    """``lin_<x>``: x at the start, decaying linearly to 0 at the end."""
    m = re.fullmatch(r"lin_(.+)", value)
    start = _coerce_number(m.group(1)) if m else None
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        raise ConfigError(f"{where}: {value!r} is not a number nor a schedule like 'lin_3e-4'")
    x = float(start)

    def linear(progress_remaining: float) -> float:
        return progress_remaining * x

    return linear


def materialize(algo: str, hp: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The policy name and the constructor keyword arguments of ``hp``."""
    import torch

    kwargs = dict(hp)
    policy = str(kwargs.pop("policy", "MlpPolicy"))
    for key in SCHEDULE_KEYS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = _schedule(kwargs[key], key)
    if "policy_kwargs" in kwargs:
        pk = dict(kwargs["policy_kwargs"])
        names = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU,
                 "leaky_relu": torch.nn.LeakyReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}
        if "activation_fn" in pk:
            pk["activation_fn"] = names[pk["activation_fn"]]
        kwargs["policy_kwargs"] = pk
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    return policy, kwargs


# ----------------------------------------------------------------- the envs


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


def unflatten_action(action: Any, nvec: np.ndarray) -> np.ndarray:
    """A flat index (or a batch of them) back to MultiDiscrete actions."""
    a = np.asarray(action, dtype=np.int64)
    parts = np.unravel_index(a, tuple(int(n) for n in nvec))
    return np.stack(parts, axis=-1).astype(np.int64)


def _action_mask(env: gym.Env[Any, Any]) -> np.ndarray:
    """MaskablePPO: targeting "the most suspicious process" (and capping it)
    is a no-op while no process holds 1 MiB of page tables, so mask it then.
    Budget and class are always valid."""
    inner = env.unwrapped
    assert isinstance(inner, PageTableReclaimEnv)
    nvec = inner.action_space.nvec
    has_suspect = inner.sim is not None and inner.most_suspicious() is not None
    masks = []
    for dim, n in enumerate(nvec):
        m = np.ones(int(n), dtype=bool)
        if dim >= 2 and not has_suspect:
            m[1:] = False
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

            env = ActionMasker(env, _action_mask)
        return env

    return _init


def make_vec_env(exp: ExperimentConfig, scenarios: list[ScenarioConfig], seed: int,
                 gamma: float, stats: Path | None = None) -> VecEnv:
    """The training VecEnv (DummyVecEnv by default: on 2 cores worker processes
    cost more than they save), wrapped in VecNormalize when configured;
    ``stats`` restores saved normalisation statistics."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    fns = [_make_env_fn(scenarios, exp.env, exp.algo, os.getpid()) for _ in range(exp.n_envs)]
    venv: VecEnv = (SubprocVecEnv(fns) if exp.vec_env == "subproc"
                    else DummyVecEnv(fns))
    venv.seed(seed)
    norm = exp.normalize
    if stats is not None:
        vn = VecNormalize.load(str(stats), venv)
        vn.training = True
        return vn
    if norm.obs or norm.reward:
        return VecNormalize(venv, norm_obs=norm.obs, norm_reward=norm.reward,
                            clip_obs=norm.clip_obs, clip_reward=norm.clip_reward, gamma=gamma)
    return venv


# ------------------------------------------------------ policies and loading


class _Unflatten:
    """Wraps a Discrete-action model so it acts in the MultiDiscrete env."""

    def __init__(self, model: Any, nvec: np.ndarray) -> None:
        self.model = model
        self.nvec = nvec

    def predict(self, observation: np.ndarray, state: Any = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        action, state = self.model.predict(observation, state=state,
                                           episode_start=episode_start,
                                           deterministic=deterministic)
        return unflatten_action(action, self.nvec), state


def as_policy(model: Any, normalizer: VecNormalize | None, env_config: EnvConfig,
              name: str) -> ObsNormalizedPolicy:
    """A trained model behind the evaluator's policy interface."""
    inner: Any = model
    if isinstance(model.action_space, gym.spaces.Discrete):
        inner = _Unflatten(model, np.asarray(_env_nvec(env_config), dtype=np.int64))
    normalize = None
    if normalizer is not None and normalizer.norm_obs:
        stats = normalizer

        def normalize(obs: np.ndarray) -> np.ndarray:
            return np.asarray(stats.normalize_obs(obs))

    return ObsNormalizedPolicy(inner, normalize, name)


def _env_nvec(env_config: EnvConfig) -> list[int]:
    return [int(n) for n in PageTableReclaimEnv(ScenarioConfig(), env_config).action_space.nvec]


def _env_spaces(env_config: EnvConfig, algo: str) -> tuple[gym.Space[Any], gym.Space[Any]]:
    """Observation and action spaces the model must have.  They depend on the
    env config only, so an env over a placeholder scenario tells them (the
    constructor builds no simulation)."""
    env = PageTableReclaimEnv(ScenarioConfig(), env_config)
    act: gym.Space[Any] = env.action_space
    if algo == "dqn":
        act = gym.spaces.Discrete(int(np.prod(env.action_space.nvec)))
    return env.observation_space, act


def load_model(path: Path, algo: str, env_config: EnvConfig) -> BaseAlgorithm:
    """Load an SB3 model and check it was trained on this env's spaces;
    :class:`TrainError` (one line) for a missing, corrupt or foreign file."""
    if not path.is_file():
        raise TrainError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise TrainError(f"{path}: not a stable-baselines3 model (not a zip archive)")
    try:
        model = algo_class(algo).load(str(path), device="cpu")
    except Exception as exc:  # SB3 raises many kinds for foreign or damaged archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"{path}: cannot load as a {algo} model: {first}") from None
    obs, act = _env_spaces(env_config, algo)
    if model.observation_space != obs or model.action_space != act:
        raise TrainError(f"{path}: the model is from another env: it observes "
                         f"{model.observation_space} and acts in {model.action_space}, "
                         f"this run's env observes {obs} and acts in {act}")
    return model


def load_normalizer(path: Path) -> VecNormalize | None:
    """VecNormalize statistics saved by a run (used without a VecEnv: only
    ``normalize_obs``), or None when the file does not exist."""
    if not path.is_file():
        return None
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        with path.open("rb") as f:
            vn = pickle.load(f)
    except Exception as exc:  # pickle raises anything for a damaged file
        raise TrainError(f"{path}: cannot read normalisation statistics: {exc}") from None
    if not isinstance(vn, VecNormalize):
        raise TrainError(f"{path}: not VecNormalize statistics")
    vn.training = False
    return vn


def load_trained_policy(run_dir: str | os.PathLike[str], which: str = "final",
                        ) -> ObsNormalizedPolicy:
    """The final (``model.zip``) or best (``best_model.zip``) policy of a run
    folder, with its normalisation statistics, for :mod:`.evaluate`."""
    run = Path(run_dir)
    if which not in ("final", "best"):
        raise TrainError(f"which={which!r}: expected 'final' or 'best'")
    cfg = read_run_config(run)
    exp = cfg.experiment
    model_file, stats = ((run / "model.zip", run / "vecnormalize.pkl") if which == "final"
                         else (run / "best_model.zip", run / "best_vecnormalize.pkl"))
    model = load_model(model_file, exp.algo, exp.env)
    return as_policy(model, load_normalizer(stats), exp.env,
                     exp.algo if which == "final" else f"{exp.algo}_best")


# -------------------------------------------------------------- run folders


@dataclass
class RunConfig:
    """What ``config.yaml`` of a run folder holds, rebuilt."""

    experiment: ExperimentConfig
    seed: int
    hyperparams: dict[str, Any]
    scenarios: Scenarios


def run_config_data(exp: ExperimentConfig, seed: int, hp: Mapping[str, Any],
                    scen: Scenarios) -> dict[str, Any]:
    """The resolved config of one run: enough to repeat it without any other file."""
    exp_data = to_dict(dataclasses.replace(exp, seeds=(seed,), jobs=1))
    return {"ptreclaim": __version__, "seed": seed, "experiment": exp_data,
            "hyperparams": dict(hp),
            "scenarios": {"train": [to_dict(s) for s in scen.train],
                          "eval": [to_dict(s) for s in scen.eval]}}


def read_run_config(run: Path) -> RunConfig:
    """Read a run folder's ``config.yaml`` (:class:`TrainError` if it is not a run)."""
    if not run.is_dir():
        raise TrainError(f"{run}: no such run folder")
    missing = [f for f in RUN_FILES if not (run / f).is_file()]
    if missing:
        raise TrainError(f"{run}: not a run folder (no {', '.join(missing)}); "
                         "pass a folder that scripts/train.py created")
    data = load_yaml(run / "config.yaml")
    if not isinstance(data, Mapping) or not {"experiment", "seed", "hyperparams",
                                             "scenarios"} <= set(data):
        raise TrainError(f"{run / 'config.yaml'}: not a run config "
                         "(needs experiment, seed, hyperparams, scenarios)")
    exp = build(ExperimentConfig, data["experiment"], "config.yaml.experiment")
    sc = data["scenarios"]
    scen = Scenarios([scenario_from_data(s, f"config.yaml.scenarios.train[{i}]")
                      for i, s in enumerate(sc["train"])],
                     [scenario_from_data(s, f"config.yaml.scenarios.eval[{i}]")
                      for i, s in enumerate(sc["eval"])])
    hp = dict(data["hyperparams"])
    validate_hyperparams(exp.algo, hp, "config.yaml.hyperparams")
    return RunConfig(exp, int(data["seed"]), hp, scen)


def _stamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run_dir(out: Path, name: str, algo: str, tag: str) -> Path:
    """Create ``out/<name>__<algo>__<tag>__<time>``; never reuses a folder
    (a same-second collision gets a ``-2``, ``-3`` ... suffix)."""
    out.mkdir(parents=True, exist_ok=True)
    base = f"{name}__{algo}__{tag}__{_stamp()}"
    for k in range(1, 1000):
        path = out / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise TrainError(f"{out}: cannot create a new run folder named {base}*")


def versions() -> dict[str, Any]:
    """Versions of everything that shapes a result (and the git commit)."""
    import stable_baselines3
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "ptreclaim": __version__, "torch": torch.__version__,
        "stable_baselines3": stable_baselines3.__version__,
        "gymnasium": gym.__version__, "numpy": np.__version__,
    }
    try:
        import sb3_contrib

        info["sb3_contrib"] = sb3_contrib.__version__
    except ImportError:
        info["sb3_contrib"] = None
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], check=True,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_commit"] = commit
        info["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _write_bytes(path: Path, data: bytes) -> None:
    write_text_atomic(path, data)


def _save_model(model: BaseAlgorithm, path: Path) -> None:
    buf = io.BytesIO()
    model.save(buf)
    _write_bytes(path, buf.getvalue())


def _save_stats(venv: VecEnv, path: Path) -> None:
    from stable_baselines3.common.vec_env import VecNormalize

    if isinstance(venv, VecNormalize):
        # VecNormalize pickles without its envs (see its __getstate__).
        _write_bytes(path, pickle.dumps(venv))


def _read_state(run: Path) -> dict[str, Any]:
    try:
        data = json.loads((run / "state.json").read_text())
    except (OSError, ValueError):
        raise TrainError(f"{run / 'state.json'}: unreadable; not a run folder") from None
    if not isinstance(data, dict) or "status" not in data:
        raise TrainError(f"{run / 'state.json'}: not a run state")
    return data


def _write_state(run: Path, **fields: Any) -> dict[str, Any]:
    state = {}
    with contextlib.suppress(TrainError, FileNotFoundError):
        if (run / "state.json").exists():
            state = _read_state(run)
    state.update(fields)
    state["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
    write_text_atomic(run / "state.json", json.dumps(state, indent=2) + "\n")
    return state


# ---------------------------------------------------------------- signals


class StopRequest:
    """First Ctrl-C / SIGTERM: finish the current step, save, exit; a second
    one exits at once.  Child processes (parallel seeds run in their own
    session, so the terminal's Ctrl-C reaches only the parent) get every
    signal forwarded: the first makes them save, the second stops them too."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}
        self.children: list[subprocess.Popen[bytes]] = []

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def request(self, signum: int) -> None:
        self.signum = signum

    def _forward(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(OSError):
                    child.send_signal(signum)

    def _handle(self, signum: int, frame: Any) -> None:
        self._forward(signum)
        if self.signum:
            os.write(2, b"\nsecond interrupt: exiting now (the last checkpoint stays)\n")
            os._exit(128 + signum)
        self.signum = signum
        # os.write, not print: print is not reentrant if the signal lands inside one.
        if self.children:
            os.write(2, b"\ninterrupted: every running seed saves a checkpoint "
                        b"(interrupt again to quit at once)\n")
        else:
            os.write(2, b"\ninterrupted: saving a checkpoint (interrupt again to quit at once)\n")

    @property
    def requested(self) -> bool:
        return self.signum != 0


class Interrupted(Exception):
    """Raised to unwind the final evaluation after a stop request."""


# ----------------------------------------------------------- evaluation


def _code_fingerprint() -> str:
    """Hash of the code that decides a baseline's episodes (env, simulator,
    heuristics, oracle, evaluator): a change invalidates cached results."""
    h = hashlib.sha256()
    envs_dir = Path(str(sys.modules[PageTableReclaimEnv.__module__].__file__)).resolve().parent
    here = Path(__file__).resolve().parent
    files = [*sorted(envs_dir.rglob("*.py")),
             here / "heuristics.py", here / "oracle.py", here / "evaluate.py"]
    for f in files:
        h.update(f.name.encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()


def _make_baseline(name: str) -> Any:
    if name == "oracle":
        from .oracle import OracleBound

        return OracleBound()
    return make_heuristic(name)


def run_policies(policies: Mapping[str, Any], scenarios: Sequence[ScenarioConfig],
                 episodes: int, seed: int, env_config: EnvConfig,
                 tick: Callable[[], None] | None = None) -> list[EpisodeResult]:
    """Every policy on the same seeded episodes (``episode_seed(seed, i, k)``)."""
    out = []
    for name, pol in policies.items():
        for i, scen in enumerate(scenarios):
            for k in range(episodes):
                out.append(run_episode(pol, scen, episode_seed(seed, i, k), env_config,
                                       name, i, k))
                if tick is not None:
                    tick()
    return out


def baseline_results(names: Sequence[str], scenarios: Sequence[ScenarioConfig], episodes: int,
                     seed: int, env_config: EnvConfig, cache_dir: Path | None,
                     tick: Callable[[], None] | None = None) -> list[EpisodeResult]:
    """The baselines' results on the seeded episodes, in ``names`` order.

    Each baseline's results are cached (``cache_dir``) under a key of
    everything that decides them (scenarios, env config, seeds, episodes, the
    code's fingerprint), so every seed of an experiment, and every later run
    of the same evaluation, reuses them: the policies are deterministic.  One
    file lock per baseline lets parallel seeds split the work: each takes the
    baselines nobody is computing, then waits for the rest.
    """
    if cache_dir is None:
        return run_policies({n: _make_baseline(n) for n in names}, scenarios, episodes,
                            seed, env_config, tick)
    common = {"scenarios": [to_dict(s) for s in scenarios], "episodes": episodes,
              "seed": seed, "env": to_dict(env_config), "code": _code_fingerprint(),
              "version": __version__}
    cache_dir.mkdir(parents=True, exist_ok=True)
    got: dict[str, list[EpisodeResult]] = {}
    for blocking in (False, True):
        for name in names:
            if name in got:
                continue
            key = hashlib.sha256(json.dumps({**common, "policy": name},
                                            sort_keys=True).encode()).hexdigest()[:20]
            path = cache_dir / f"{name}-{key}.json"
            with (cache_dir / f"{name}-{key}.lock").open("a") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    continue  # another seed is computing it: take the next one
                try:
                    got[name] = _cached(path)
                    if not got[name]:
                        got[name] = run_policies({name: _make_baseline(name)}, scenarios,
                                                 episodes, seed, env_config, tick)
                        write_text_atomic(path, json.dumps(
                            [dataclasses.asdict(r) for r in got[name]]))
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return [r for name in names for r in got[name]]


def _cached(path: Path) -> list[EpisodeResult]:
    """Results stored by :func:`baseline_results`, or [] when absent/unreadable."""
    try:
        return [EpisodeResult(**r) for r in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []


# ----------------------------------------------------------------- callback


def _make_callback(**kw: Any) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class _Callback(BaseCallback):
        """Periodic validation (fixed seeds, deterministic; ``eval.select_on``) with
        best-model saving, checkpoints with their normalisation stats,
        stop requests, cost-term logging and the live progress line."""

        def __init__(self, run: Path, exp: ExperimentConfig, scen: Scenarios, total: int,
                     stop: StopRequest, progress: Progress | None, task: TaskID | None,
                     echo: Callable[[str], None], label: str) -> None:
            super().__init__(verbose=0)
            self.run = run
            self.exp = exp
            self.scen = scen
            self.total = total
            self.stop = stop
            self.progress = progress
            self.task = task
            self.echo = echo
            self.label = label
            self.evals: dict[str, list[Any]] = {"timesteps": [], "results": [],
                                                "ep_lengths": [], "costs": []}
            self.best = -math.inf
            self.last: float | None = None
            self.next_eval: float = 0.0
            self.next_ckpt: float = 0.0
            self.stop_at = int(os.environ.get(STOP_AT_ENV, "0") or 0)
            self.t0 = time.perf_counter()
            self.n0 = 0
            self.term_sums = dict.fromkeys(COST_TERMS, 0.0)
            self.term_n = 0

        def _on_training_start(self) -> None:
            n = self.num_timesteps
            self.n0 = n
            freq, ck = self.exp.eval.freq, self.exp.checkpoint_freq
            self.next_eval = (n // freq + 1) * freq if freq else math.inf
            self.next_ckpt = (n // ck + 1) * ck if ck else math.inf
            old = self.run / "evaluations.npz"
            if old.is_file():
                with np.load(old) as d:
                    for k in self.evals:
                        self.evals[k] = list(d[k]) if k in d else []
                if self.evals["results"]:
                    self.best = max(float(np.mean(r)) for r in self.evals["results"])
                    self.last = -float(np.mean(self.evals["results"][-1]))

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                terms = info.get("cost_terms")
                if terms:
                    for k in COST_TERMS:
                        self.term_sums[k] += terms.get(k, 0.0)
                    self.term_n += 1
            n = self.num_timesteps
            if n >= self.next_eval:
                self.evaluate()
                self.next_eval += self.exp.eval.freq
                while self.next_eval <= n:
                    self.next_eval += self.exp.eval.freq
            if n >= self.next_ckpt:
                save_checkpoint(self.model, self.run, n, self.total)
                while self.next_ckpt <= n:
                    self.next_ckpt += self.exp.checkpoint_freq
            if self.stop_at and n >= self.stop_at and not self.stop.requested:
                self.stop.request(signal.SIGINT)
            self._show(n)
            return not self.stop.requested

        def _on_rollout_end(self) -> None:
            if self.term_n:
                for k in COST_TERMS:
                    self.logger.record(f"cost_terms/{k}", self.term_sums[k] / self.term_n)
                self.term_sums = dict.fromkeys(COST_TERMS, 0.0)
                self.term_n = 0

        def fps(self) -> float:
            dt = time.perf_counter() - self.t0
            return (self.num_timesteps - self.n0) / dt if dt > 0 else 0.0

        def _status(self) -> str:
            ev = (f"eval cost {self.last:.2f} (best {-self.best:.2f})" if self.last is not None
                  else "first eval at step " + str(int(self.next_eval)))
            return f"{self.fps():.0f} steps/s | {ev}"

        def _show(self, n: int) -> None:
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, completed=n, status=self._status())

        def evaluate(self) -> None:
            """Deterministic validation episodes (``eval.select_on``), seeds
            from ``eval.seed + 1``; saves the best model with its statistics."""
            from stable_baselines3.common.vec_env import VecNormalize

            venv = self.model.get_env()
            vn = venv if isinstance(venv, VecNormalize) else None
            policy = as_policy(self.model, vn, self.exp.env, "current")
            scenarios = self.scen.train if self.exp.eval.select_on == "train" else self.scen.eval
            res = run_policies({"current": policy}, scenarios, self.exp.eval.episodes,
                               self.exp.eval.seed + 1, self.exp.env)
            rewards = np.array([r.reward for r in res])
            lengths = np.array([r.steps for r in res])
            mean = float(rewards.mean())
            n = self.num_timesteps
            self.evals["timesteps"].append(n)
            self.evals["results"].append(rewards)
            self.evals["ep_lengths"].append(lengths)
            self.evals["costs"].append(np.array([[r.cost_terms[k] for k in COST_TERMS]
                                                 for r in res]))
            arrays: dict[str, Any] = {k: np.asarray(v) for k, v in self.evals.items()}
            arrays["scenarios"] = np.array([r.scenario for r in res])
            arrays["term_names"] = np.array(COST_TERMS)
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            _write_bytes(self.run / "evaluations.npz", buf.getvalue())
            self.last = -mean
            self.logger.record("eval/mean_cost", -mean)
            self.logger.record("eval/mean_reward", mean)
            if mean > self.best:
                self.best = mean
                _save_model(self.model, self.run / "best_model.zip")
                if vn is not None:
                    _save_stats(vn, self.run / "best_vecnormalize.pkl")
                _write_state(self.run, best_timesteps=n, best_mean_cost=-mean)
            if self.progress is None:
                pct = 100.0 * n / self.total
                self.echo(f"{self.label}step {n}/{self.total} ({pct:.0f}%) {self._status()}")

    return _Callback(**kw)


def save_checkpoint(model: BaseAlgorithm, run: Path, n: int, total: int) -> Path:
    """``checkpoints/model_<n>_steps.zip`` with its VecNormalize statistics
    (and the replay buffer for off-policy algorithms); records it in state.json."""
    ck = run / "checkpoints"
    ck.mkdir(exist_ok=True)
    path = ck / f"model_{n}_steps.zip"
    _save_model(model, path)
    venv = model.get_env()
    if venv is not None:
        _save_stats(venv, ck / f"vecnormalize_{n}_steps.pkl")
    if hasattr(model, "replay_buffer") and getattr(model, "replay_buffer", None) is not None:
        buf = io.BytesIO()
        model.save_replay_buffer(buf)  # type: ignore[attr-defined]
        _write_bytes(ck / f"replay_buffer_{n}_steps.pkl", buf.getvalue())
    _write_state(run, num_timesteps=n, total_timesteps=total,
                 checkpoint=str(path.relative_to(run)))
    return path


# ------------------------------------------------------------------ one run


@dataclass
class Output:
    """Where a run talks: a rich console, and whether to draw a live bar."""

    console: Console
    live: bool
    label: str = ""

    def echo(self, msg: str) -> None:
        self.console.print(msg, highlight=False, markup=False)
        # Piped output (parallel seeds, tee, CI logs) should show progress as it happens.
        with contextlib.suppress(OSError, ValueError):
            self.console.file.flush()


def _console(file: TextIO | None = None) -> Console:
    from rich.console import Console

    # Piped output (logs, parallel seeds) gets a fixed width wide enough for the tables.
    return Console(file=file, width=None if (file or sys.stdout).isatty() else 150)


def train_run(run: Path, cfg: RunConfig, out: Output, stop: StopRequest,
              resume: bool = False) -> int:
    """Train (or continue) one seed in ``run``, then evaluate and report."""
    import torch

    exp = cfg.experiment
    torch.set_num_threads(exp.torch_threads)
    state = _read_state(run)
    total = exp.timesteps
    done = int(state.get("num_timesteps", 0))
    if state["status"] in ("running", "interrupted") and done < total:
        code = _train(run, cfg, out, stop, resume, state)
        if code:
            return code
    return _finish(run, cfg, out, stop)


def _train(run: Path, cfg: RunConfig, out: Output, stop: StopRequest, resume: bool,
           state: dict[str, Any]) -> int:
    exp, seed, hp = cfg.experiment, cfg.seed, cfg.hyperparams
    total = exp.timesteps
    policy, kwargs = materialize(exp.algo, hp)
    gamma = float(hp.get("gamma", 0.99))
    cls = algo_class(exp.algo)
    ckpt = state.get("checkpoint") if resume else None
    if ckpt:
        ck_path = run / ckpt
        n = int(state["num_timesteps"])
        stats = run / "checkpoints" / f"vecnormalize_{n}_steps.pkl"
        if (exp.normalize.obs or exp.normalize.reward) and not stats.is_file():
            raise TrainError(f"{stats}: missing; cannot resume without the checkpoint's "
                             "normalisation statistics")
        model = load_model(ck_path, exp.algo, exp.env)
        # A fresh stream: do not replay the episodes seen before the interrupt.
        venv = make_vec_env(exp, cfg.scenarios.train, seed + n, gamma,
                            stats if stats.is_file() else None)
        model.set_env(venv)
        model.set_random_seed(seed + n)
        rb = run / "checkpoints" / f"replay_buffer_{n}_steps.pkl"
        if rb.is_file() and hasattr(model, "load_replay_buffer"):
            model.load_replay_buffer(str(rb))
        out.echo(f"{out.label}resuming {run.name} at step {n}/{total}")
    else:
        venv = make_vec_env(exp, cfg.scenarios.train, seed, gamma)
        model = cls(policy, venv, seed=seed, device="cpu", verbose=0,
                    tensorboard_log=str(run / "tb"), **kwargs)
    _write_state(run, status="running", total_timesteps=total)
    progress = None
    task = None
    if out.live:
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(TextColumn(f"{escape(out.label)}[bold]{exp.algo}[/] seed {seed}"),
                            BarColumn(bar_width=24),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("<"),
                            TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                            console=out.console, transient=False)
        task = progress.add_task("train", total=total, completed=model.num_timesteps,
                                 status="")
    cb = _make_callback(run=run, exp=exp, scen=cfg.scenarios, total=total, stop=stop,
                        progress=progress, task=task, echo=out.echo, label=out.label)
    t0 = time.perf_counter()
    remaining = total - model.num_timesteps
    if progress is None:
        out.echo(f"{out.label}training {exp.algo} seed {seed}: {remaining} steps "
                 f"({exp.n_envs} envs) -> {run}")
    try:
        with progress if progress is not None else contextlib.nullcontext():
            model.learn(remaining, callback=cb, tb_log_name=exp.algo,
                        reset_num_timesteps=not ckpt, progress_bar=False)
    finally:
        spent = time.perf_counter() - t0
        _write_state(run, train_seconds=float(state.get("train_seconds", 0.0)) + spent)
    n = model.num_timesteps
    if stop.requested:
        save_checkpoint(model, run, n, total)
        _write_state(run, status="interrupted")
        venv.close()
        sig = signal.Signals(stop.signum).name
        out.echo(f"{out.label}{sig}: stopped at step {n}/{total}; checkpoint and "
                 f"normalisation stats saved in {run / 'checkpoints'}")
        out.echo(f"{out.label}resume with: python scripts/train.py --resume "
                 f"{shlex.quote(str(run))}")
        return 128 + stop.signum
    # The curve ends at the final model, which may also be the best one.
    if exp.eval.freq and (not cb.evals["timesteps"] or cb.evals["timesteps"][-1] != n):
        cb.evaluate()
    _save_model(model, run / "model.zip")
    _save_stats(venv, run / "vecnormalize.pkl")
    save_checkpoint(model, run, n, total)
    if not (run / "best_model.zip").is_file():
        # No evaluation during training: the final model is the best we know.
        _write_bytes(run / "best_model.zip", (run / "model.zip").read_bytes())
        if (run / "vecnormalize.pkl").is_file():
            _write_bytes(run / "best_vecnormalize.pkl", (run / "vecnormalize.pkl").read_bytes())
    _write_state(run, status="trained", num_timesteps=n, fps=cb.fps())
    venv.close()
    return 0


def _finish(run: Path, cfg: RunConfig, out: Output, stop: StopRequest) -> int:
    """Final evaluation of the final and best models against every baseline,
    then the report, plots and table."""
    exp = cfg.experiment
    ev = exp.eval
    out.echo(f"{out.label}final evaluation on {len(cfg.scenarios.eval)} held-out scenarios x "
             f"{ev.final_episodes} episodes (seeds from {ev.seed}), every policy")
    learned = {exp.algo: load_trained_policy(run, "final")}
    if (run / "best_model.zip").is_file():
        learned[f"{exp.algo}_best"] = load_trained_policy(run, "best")
    names = list(ev.baselines) + (["oracle"] if ev.oracle else [])
    cache = run.parent / ".baseline_cache" if ev.cache_baselines else None

    per_policy = len(cfg.scenarios.eval) * ev.final_episodes
    progress = None
    if out.live:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        # Cached baselines finish at once, so the bar may jump: it counts episodes run.
        progress = Progress(TextColumn("final evaluation"), BarColumn(bar_width=24),
                            MofNCompleteColumn(), TextColumn("episodes"),
                            console=out.console, transient=True)
        curve = (len(names) * len(cfg.scenarios.eval) * ev.episodes
                 if (run / "evaluations.npz").is_file() else 0)
        task = progress.add_task("eval", total=per_policy * (len(learned) + len(names)) + curve)

    def tick() -> None:
        if stop.requested:
            raise Interrupted
        if progress is not None:
            progress.advance(task)

    t0 = time.perf_counter()
    try:
        with progress if progress is not None else contextlib.nullcontext():
            # Own models first: parallel seeds then reach the shared baselines at
            # different times and split them instead of waiting on one another.
            mine = run_policies(learned, cfg.scenarios.eval, ev.final_episodes, ev.seed,
                                exp.env, tick)
            base = baseline_results(names, cfg.scenarios.eval, ev.final_episodes, ev.seed,
                                    exp.env, cache, tick)
            curve_scen = cfg.scenarios.train if ev.select_on == "train" else cfg.scenarios.eval
            curve_base = (baseline_results(names, curve_scen, ev.episodes,
                                           ev.seed + 1, exp.env, cache, tick)
                          if (run / "evaluations.npz").is_file() else [])
    except Interrupted:
        out.echo(f"{out.label}interrupted during the final evaluation; the trained model is "
                 f"saved. Finish with: python scripts/train.py --resume {shlex.quote(str(run))}")
        return 128 + stop.signum
    results = base + mine
    write_text_atomic(run / "eval_results.json",
                      json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    summaries = summarize(results, n_boot=ev.n_boot)
    paired = {(p, h): paired_difference_ci(results, p, h, n_boot=ev.n_boot)
              for p in learned for h in names}
    state = _write_state(run, eval_seconds=time.perf_counter() - t0)
    plot_learning_curve(run, curve_base, exp.algo, f"{run.name}")
    plot_cost_terms(run / "cost_terms.png", summaries, exp.env)
    write_text_atomic(run / "report.md",
                      run_report(run, cfg, summaries, paired, results, state))
    print_tables(out.console, summaries, paired, title=f"{run.name}: held-out evaluation")
    _write_state(run, status="finished")
    out.echo(f"{out.label}report: {run / 'report.md'}")
    return 0


# ----------------------------------------------------------------- reports


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def print_tables(console: Console, summaries: Sequence[PolicySummary],
                 paired: Mapping[tuple[str, str], tuple[float, float, float]],
                 title: str) -> None:
    """The rich table of the final comparison, and the paired differences."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("policy", "mean cost", "95% CI", "IQM", "score", "P(< none)"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        t.add_row(s.policy, f"{s.mean_cost:.2f}", f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
                  f"{s.iqm_cost:.2f}", _fmt(s.normalized), _fmt(s.prob_improvement))
    console.print(t)
    if paired:
        p = Table(title="paired difference: heuristic cost - learned cost (> 0: learned better)",
                  title_justify="left")
        for col in ("learned", "vs", "mean", "95% CI", "better?"):
            p.add_column(col, justify="left" if col in ("learned", "vs") else "right")
        for (pol, other), (m, lo, hi) in paired.items():
            verdict = "yes" if lo > 0 else ("no (worse)" if hi < 0 else "not sure")
            p.add_row(pol, other, f"{m:.2f}", f"[{lo:.2f}, {hi:.2f}]", verdict)
        console.print(p)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def summary_rows(summaries: Sequence[PolicySummary]) -> list[list[str]]:
    return [[s.policy, f"{s.mean_cost:.2f}", f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
             f"{s.iqm_cost:.2f}", _fmt(s.normalized), _fmt(s.prob_improvement)]
            for s in summaries]


SUMMARY_HEADER = ("policy", "mean cost", "95% CI", "IQM", "score", "P(< none)")


def run_report(run: Path, cfg: RunConfig, summaries: Sequence[PolicySummary],
               paired: Mapping[tuple[str, str], tuple[float, float, float]],
               results: Sequence[EpisodeResult], state: Mapping[str, Any]) -> str:
    """``report.md`` of one run."""
    exp = cfg.experiment
    w = exp.env.reward
    names = list(dict.fromkeys(r.policy for r in results))
    scen_names = list(dict.fromkeys(r.scenario for r in results))
    lines = [f"# {run.name}", "",
             f"{exp.algo} on `{exp.env_id}`, seed {cfg.seed}, {state.get('num_timesteps')} "
             f"steps in {float(state.get('train_seconds', 0.0)):.0f} s of training "
             f"({float(state.get('fps', 0.0)):.0f} steps/s, {exp.n_envs} envs, {exp.vec_env}); "
             f"final evaluation {float(state.get('eval_seconds', 0.0)):.0f} s.",
             f"Trained on: {', '.join(s.name for s in cfg.scenarios.train)}.",
             f"Held out: {', '.join(s.name for s in cfg.scenarios.eval)}, "
             f"{exp.eval.final_episodes} seeded episodes each (seeds from {exp.eval.seed}), "
             "the same episodes for every policy.", "",
             "Cost = minus the episode reward (lower is better); CI: 95 % stratified "
             "bootstrap over episodes; score = (policy - none) / (oracle - none) "
             "(1 = as good as the privileged oracle bound, 0 = no better than never "
             "reclaiming on an old kernel); P(< none): probability of a lower cost than "
             "`none` on the same episode. "
             f"`{exp.algo}` is the final model, `{exp.algo}_best` the best one on the "
             "training-time validation episodes ("
             + ("training scenarios with their own seeds: the held-out scenarios play no part "
                "in choosing it" if exp.eval.select_on == "train" else
                "other seeds of the held-out scenarios") + ").", "",
             "## Results", "", _md_table(SUMMARY_HEADER, summary_rows(summaries)), "",
             "## Learned vs each baseline (paired by episode)", "",
             "Mean of (baseline cost - learned cost) on the same episodes, 95 % CI; "
             "above zero: the learned policy is better.", ""]
    rows = []
    for (pol, other), (m, lo, hi) in paired.items():
        verdict = "better" if lo > 0 else ("worse" if hi < 0 else "inconclusive")
        rows.append([pol, other, f"{m:.2f}", f"[{lo:.2f}, {hi:.2f}]", verdict])
    lines += [_md_table(("learned", "baseline", "mean diff", "95% CI", "verdict"), rows), "",
              "## Mean cost per scenario", ""]
    rows = []
    for n in names:
        rows.append([n] + [f"{np.mean([r.cost for r in results if r.policy == n and r.scenario == s]):.2f}"  # noqa: E501
                           for s in scen_names])
    lines += [_md_table(["policy", *scen_names], rows), "",
              "## Weighted cost terms (mean per episode)", "",
              "weight x term: " + ", ".join(f"{k} x {getattr(w, k):g}" for k in COST_TERMS), ""]
    rows = [[s.policy] + [f"{getattr(w, k) * s.terms[k]:.2f}" for k in COST_TERMS]
            for s in summaries]
    lines += [_md_table(["policy", *COST_TERMS], rows), "",
              "Raw terms (units: see RewardWeights):", ""]
    rows = [[s.policy] + [f"{s.terms[k]:.1f}" for k in COST_TERMS] for s in summaries]
    lines += [_md_table(["policy", *COST_TERMS], rows), "",
              "## Plots", "",
              *(["![learning curve](learning_curve.png)", ""]
                if (run / "learning_curve.png").is_file() else []),
              "![cost terms](cost_terms.png)", "",
              "## Reproduce", "", "```", _read_text(run / "command.txt").strip(), "```", ""]
    return "\n".join(lines)


def _read_text(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _savefig(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _write_bytes(path, buf.getvalue())


def plot_learning_curve(run: Path, curve_base: Sequence[EpisodeResult], algo: str,
                        title: str) -> None:
    """Validation cost during training (``eval.select_on``), with each
    baseline's level on the same episodes."""
    path = run / "evaluations.npz"
    if not path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(path) as d:
        ts = np.asarray(d["timesteps"])
        costs = -np.asarray(d["results"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    mean, std = costs.mean(axis=1), costs.std(axis=1)
    ax.plot(ts, mean, marker="o", color="black", label=f"{algo} (mean over episodes)")
    ax.fill_between(ts, np.maximum(mean - std, 1e-3), mean + std, color="black", alpha=0.12)
    names = list(dict.fromkeys(r.policy for r in curve_base))
    colors = plt.get_cmap("tab10")
    for i, n in enumerate(names):
        level = float(np.mean([r.cost for r in curve_base if r.policy == n]))
        ax.axhline(level, ls="--" if n != "oracle" else ":", color=colors(i), label=f"{n}")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation episode cost")
    levels = [r.cost for r in curve_base] + list(costs.ravel())
    if min(levels) > 0 and max(levels) / min(levels) > 10:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _savefig(fig, run / "learning_curve.png")
    plt.close(fig)


def plot_cost_terms(path: Path, summaries: Sequence[PolicySummary], env_config: EnvConfig
                    ) -> None:
    """Stacked weighted cost terms per policy (what the reward counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = env_config.reward
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(summaries))
    bottom = np.zeros(len(summaries))
    for k in COST_TERMS:
        vals = np.array([getattr(w, k) * s.terms[k] for s in summaries])
        ax.bar(x, vals, bottom=bottom, label=k)
        bottom += vals
    ax.set_xticks(x, [s.policy for s in summaries], rotation=20, fontsize=8)
    ax.set_ylabel("mean weighted cost per episode")
    ax.set_title("cost terms per policy (held-out episodes)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _savefig(fig, path)
    plt.close(fig)


# -------------------------------------------------------------- multi-seed


def _load_results(run: Path) -> list[EpisodeResult]:
    rows = json.loads((run / "eval_results.json").read_text())
    return [EpisodeResult(**r) for r in rows]


def pooled_difference(per_seed: Sequence[Sequence[EpisodeResult]], policy: str, other: str,
                      n_boot: int) -> tuple[float, float, float]:
    """(other - policy) on the same episodes, pooled over seeds, stratified by scenario."""
    groups: dict[str, list[float]] = {}
    for results in per_seed:
        base = {(r.scenario, r.episode): r.cost for r in results if r.policy == other}
        for r in results:
            if r.policy == policy and (r.scenario, r.episode) in base:
                groups.setdefault(r.scenario, []).append(base[(r.scenario, r.episode)] - r.cost)
    return stratified_bootstrap(list(groups.values()), n_boot=n_boot)


def multi_report(multi: Path, runs: Mapping[int, Path], exp: ExperimentConfig,
                 console: Console, wall: float) -> str:
    """Per-seed and pooled results of a multi-seed experiment."""
    per_seed: dict[int, list[EpisodeResult]] = {}
    for seed, run in runs.items():
        if (run / "eval_results.json").is_file():
            per_seed[seed] = _load_results(run)
    algo = exp.algo
    names = list(exp.eval.baselines) + (["oracle"] if exp.eval.oracle else [])
    nb = exp.eval.n_boot
    lines = [f"# {multi.name}", "",
             f"{algo} on `{exp.env_id}`, seeds {', '.join(map(str, exp.seeds))}, "
             f"{exp.timesteps} steps each; wall time {wall:.0f} s for all seeds "
             "(training + final evaluation).", "",
             "Runs: " + ", ".join(f"[seed {s}]({r.name}/report.md)" for s, r in runs.items()), ""]
    if not per_seed:
        return "\n".join([*lines, "No seed finished.", ""])
    from rich.table import Table

    learned = [algo, f"{algo}_best"]
    header = ["seed", "policy", "mean cost [95% CI]", "score"] + [f"vs {h}" for h in BASELINES
                                                                 if h in names]
    rows: list[list[str]] = []
    verdicts: dict[str, list[bool]] = {p: [] for p in learned}
    for seed, results in per_seed.items():
        sums = {s.policy: s for s in summarize(results, n_boot=nb)}
        for pol in learned:
            if pol not in sums:
                continue
            s = sums[pol]
            row = [str(seed), pol, _ci(s.mean_cost, s.ci_low, s.ci_high), _fmt(s.normalized)]
            ok = True
            for h in BASELINES:
                if h in names:
                    m, lo, hi = paired_difference_ci(results, pol, h, n_boot=nb)
                    row.append(_ci(m, lo, hi))
                    ok = ok and lo > 0
            verdicts[pol].append(ok)
            rows.append(row)
    first = next(iter(per_seed.values()))
    base_sums = {s.policy: s for s in summarize(first, n_boot=nb)}
    lines += ["## Per seed", "",
              "Paired differences: baseline cost - learned cost on the same episodes "
              "(> 0: learned better), mean [95% CI].", "", _md_table(header, rows), ""]
    prow: list[list[str]] = []
    for pol in learned:
        pooled = [r for res in per_seed.values() for r in res if r.policy == pol]
        if not pooled:
            continue
        groups: dict[str, list[float]] = {}
        for r in pooled:
            groups.setdefault(r.scenario, []).append(r.cost)
        m, lo, hi = stratified_bootstrap(list(groups.values()), n_boot=nb)
        none = base_sums.get("none")
        orac = base_sums.get("oracle")
        score = ((none.mean_cost - m) / (none.mean_cost - orac.mean_cost)
                 if none and orac and none.mean_cost != orac.mean_cost else None)
        row = ["pooled", pol, _ci(m, lo, hi), _fmt(score)]
        for h in BASELINES:
            if h in names:
                row.append(_ci(*pooled_difference(list(per_seed.values()), pol, h, nb)))
        prow.append(row)
    brow = [["-", n, _ci(s.mean_cost, s.ci_low, s.ci_high), _fmt(s.normalized)]
            + [""] * (len(header) - 4) for n, s in base_sums.items() if n in names]
    lines += ["## Pooled over seeds", "",
              "Every seed's episodes together (the baselines are the same for every seed).",
              "", _md_table(header, prow + brow), ""]
    verdict_lines = [f"`{pol}` beats every baseline heuristic (95 % CI of the paired "
                     f"difference above zero) on {sum(v)} of {len(v)} seeds."
                     for pol, v in verdicts.items() if v]
    lines += [f"- {v}" for v in verdict_lines] + [""]
    t = Table(title=f"{multi.name}: per seed and pooled", title_justify="left")
    for col in header:
        t.add_column(col)
    for cells in rows + prow + brow:
        # One decimal on screen (the report keeps two): the table must fit a terminal.
        t.add_row(*[_one_decimal(c) if "[" in c else c for c in cells])
    console.print(t)
    for v in verdict_lines:
        console.print(v.replace("`", ""), markup=False, highlight=False)
    plot_multi_curves(multi / "learning_curves.png", runs, algo)
    lines += ["![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def _one_decimal(cell: str) -> str:
    return re.sub(r"-?\d+\.\d+", lambda m: f"{float(m.group()):.1f}", cell)


def plot_multi_curves(path: Path, runs: Mapping[int, Path], algo: str) -> None:
    """All seeds' validation curves on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lows: list[float] = []
    highs: list[float] = []
    for seed, run in runs.items():
        f = run / "evaluations.npz"
        if not f.is_file():
            continue
        with np.load(f) as d:
            cost = -np.asarray(d["results"]).mean(axis=1)
            ax.plot(d["timesteps"], cost, marker=".", label=f"{algo} seed {seed}")
            lows.append(float(cost.min()))
            highs.append(float(cost.max()))
    if not lows:
        plt.close(fig)
        return
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation episode cost (training-time evaluations)")
    # A log axis only pays off over an order of magnitude.
    if min(lows) > 0 and max(highs) / min(lows) > 10:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _savefig(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> Any:
        self.exit(2, f"error: {message} (see --help)\n")


def _count(text: str) -> int:
    """A non-negative integer, also written 100_000 or 1e5."""
    value = _coerce_number(text.replace("_", ""))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="train.py",
                description="Train an SB3 agent on ptreclaim from an experiment YAML "
                            "(default: configs/experiments/default.yaml).")
    p.add_argument("--config", type=Path, help="experiment YAML")
    p.add_argument("--algo", help=f"algorithm: {', '.join(ALGOS)}")
    p.add_argument("--seed", type=_count, help="train this one seed")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--jobs", type=_count, help="seeds trained in parallel processes")
    p.add_argument("--timesteps", type=_count, help="training steps per seed (100000, 1e5)")
    p.add_argument("--n-envs", type=_count, help="parallel envs per seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment key, e.g. env.decision_ticks=20 or "
                        "hyperparams.ppo.learning_rate=lin_1e-3 (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run to its total, with its own config")
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs folder (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines, no live bar")
    # Internal: the multi-seed parent names each child's run folder.
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    return p


def _cli_sets(args: argparse.Namespace) -> list[tuple[str, str]]:
    sets: list[tuple[str, str]] = []
    if args.algo is not None:
        sets.append((f"--algo {args.algo}", f"algo={args.algo}"))
    if args.seed is not None and args.seeds is not None:
        raise TrainError("give --seed or --seeds, not both")
    if args.seed is not None:
        sets.append((f"--seed {args.seed}", f"seeds=[{args.seed}]"))
    if args.seeds is not None:
        parts = [s.strip() for s in args.seeds.split(",") if s.strip()]
        if not parts or not all(re.fullmatch(r"\d+", s) for s in parts):
            raise TrainError(f"--seeds {args.seeds!r}: expected comma-separated integers, "
                             "e.g. 0,1,2")
        sets.append((f"--seeds {args.seeds}", f"seeds=[{','.join(parts)}]"))
    if args.jobs is not None:
        sets.append((f"--jobs {args.jobs}", f"jobs={args.jobs}"))
    if args.timesteps is not None:
        sets.append((f"--timesteps {args.timesteps}", f"timesteps={args.timesteps}"))
    if args.n_envs is not None:
        sets.append((f"--n-envs {args.n_envs}", f"n_envs={args.n_envs}"))
    sets += [("--set", s) for s in args.set]
    return sets


def _command(argv: Sequence[str]) -> str:
    return (f"# cwd: {os.getcwd()}\n"
            + "python " + shlex.join([sys.argv[0] or "scripts/train.py", *argv])
            + "\n")


def _start_run(run: Path, exp: ExperimentConfig, seed: int, hp: Mapping[str, Any],
               scen: Scenarios, argv: Sequence[str]) -> RunConfig:
    write_yaml_atomic(run / "config.yaml", run_config_data(exp, seed, hp, scen))
    write_text_atomic(run / "command.txt", _command(argv))
    write_text_atomic(run / "versions.json", json.dumps(versions(), indent=2) + "\n")
    _write_state(run, status="running", num_timesteps=0, total_timesteps=exp.timesteps,
                 checkpoint=None, seed=seed)
    return read_run_config(run)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    stop = StopRequest()
    try:
        return _main(args, argv, stop)
    except (TrainError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop.restore()


def _main(args: argparse.Namespace, argv: Sequence[str], stop: StopRequest) -> int:
    console = _console()
    live = console.is_terminal and not args.no_progress
    if args.resume is not None:
        given = [f for f in ("config", "algo", "seed", "seeds", "jobs", "timesteps", "n_envs")
                 if getattr(args, f) is not None] + (["set"] if args.set else [])
        if given:
            raise TrainError(f"--resume continues a run with its own config; drop "
                             f"{', '.join('--' + g.replace('_', '-') for g in given)}")
        run = args.resume
        if _is_multi(run):
            exp, _ = load_experiment(run / "experiment.yaml")
            hp = load_hyperparams(exp)
            return run_multi(exp, hp, resolve_scenarios(exp), run.parent, argv, console, live,
                             stop, multi=run)
        cfg = read_run_config(run)
        state = _read_state(run)
        if state["status"] == "finished":
            raise TrainError(f"{run}: this run is finished (see its report.md); start a new one")
        if state["status"] in ("running", "interrupted") and state.get("num_timesteps", 0) \
                and not state.get("checkpoint"):
            raise TrainError(f"{run}: no checkpoint to resume from")
        if state["status"] in ("running", "interrupted") and state.get("checkpoint"):
            # Check the model before doing anything else.
            load_model(run / state["checkpoint"], cfg.experiment.algo, cfg.experiment.env)
        with contextlib.suppress(OSError), (run / "command.txt").open("a") as f:
            f.write(_command(argv))
        stop.install()
        return train_run(run, cfg, Output(console, live), stop, resume=True)

    exp, _ = load_experiment(args.config, _cli_sets(args))
    scen = resolve_scenarios(exp)
    hp = load_hyperparams(exp)
    # Fail on a bad hyperparameter combination now, not after creating a folder.
    materialize(exp.algo, hp)
    if args.run_dir is not None:
        if len(exp.seeds) != 1:
            raise TrainError("--run-dir takes exactly one seed")
        run = args.run_dir
        try:
            run.mkdir(parents=True)
        except FileExistsError:
            raise TrainError(f"{run}: exists; never overwriting a run") from None
        cfg = _start_run(run, exp, exp.seeds[0], hp, scen, argv)
        stop.install()
        label = f"[seed {exp.seeds[0]}] "
        return train_run(run, cfg, Output(console, False, label), stop)
    if len(exp.seeds) == 1:
        run = new_run_dir(args.out, exp.name, exp.algo, str(exp.seeds[0]))
        cfg = _start_run(run, exp, exp.seeds[0], hp, scen, argv)
        stop.install()
        return train_run(run, cfg, Output(console, live), stop)
    return run_multi(exp, hp, scen, args.out, argv, console, live, stop)


def _free_run_path(out: Path, name: str, algo: str, seed: int) -> Path:
    """A run folder name nobody has taken (the child process creates it)."""
    base = out / f"{name}__{algo}__{seed}__{_stamp()}"
    run, k = base, 2
    while run.exists():
        run = base.with_name(f"{base.name}-{k}")
        k += 1
    return run


def run_multi(exp: ExperimentConfig, hp: Mapping[str, Any], scen: Scenarios, out: Path,
              argv: Sequence[str], console: Console, live: bool, stop: StopRequest,
              multi: Path | None = None) -> int:
    """Train every seed (in turn, or ``jobs`` at a time in child processes),
    then write the aggregate report.  With ``multi`` (``--resume`` of a
    multi-seed folder): resume every unfinished seed, start the missing ones,
    and rewrite the aggregate report."""
    t0 = time.perf_counter()
    runs: dict[int, Path] = {}
    if multi is None:
        multi = new_run_dir(out, exp.name, exp.algo, "multi")
        # Resolved once, so every seed trains with the very same hyperparameters.
        exp_data = to_dict(exp)
        exp_data["hyperparams"] = {exp.algo: dict(hp)}
        write_yaml_atomic(multi / "experiment.yaml", exp_data)
        write_text_atomic(multi / "command.txt", _command(argv))
    else:
        with contextlib.suppress(OSError, ValueError):
            runs = {int(k): Path(v) for k, v in
                    json.loads((multi / "runs.json").read_text()).items()}
        with contextlib.suppress(OSError), (multi / "command.txt").open("a") as f:
            f.write(_command(argv))
    tasks: list[tuple[int, bool]] = []  # (seed, resume?)
    for seed in exp.seeds:
        if seed in runs and (runs[seed] / "state.json").is_file():
            if _read_state(runs[seed])["status"] != "finished":
                tasks.append((seed, True))
        else:
            tasks.append((seed, False))

    def record(seed: int, run: Path) -> None:
        runs[seed] = run
        write_text_atomic(multi / "runs.json", json.dumps(
            {str(s): str(r) for s, r in sorted(runs.items())}, indent=2) + "\n")

    codes: dict[int, int] = {}
    stop.install()
    if exp.jobs == 1:
        for seed, resume in tasks:
            if stop.requested:
                break
            o = Output(console, live, f"[seed {seed}] ")
            if resume:
                codes[seed] = train_run(runs[seed], read_run_config(runs[seed]), o, stop,
                                        resume=True)
                continue
            run = new_run_dir(out, exp.name, exp.algo, str(seed))
            record(seed, run)
            cfg = _start_run(run, dataclasses.replace(exp, seeds=(seed,)), seed, hp, scen, argv)
            codes[seed] = train_run(run, cfg, o, stop)
    else:
        pending = list(tasks)
        procs: dict[int, subprocess.Popen[bytes]] = {}
        me = [sys.executable, "-m", "ptreclaim.agents.train"]
        while pending or procs:
            while pending and len(procs) < exp.jobs and not stop.requested:
                seed, resume = pending.pop(0)
                if resume:
                    cmd = [*me, "--resume", str(runs[seed]), "--no-progress"]
                else:
                    run = _free_run_path(out, exp.name, exp.algo, seed)
                    record(seed, run)
                    cmd = [*me, "--config", str(multi / "experiment.yaml"), "--seed", str(seed),
                           "--out", str(out), "--run-dir", str(run), "--no-progress"]
                # A session of its own: the terminal's Ctrl-C reaches only this
                # process, which forwards it (see StopRequest).
                procs[seed] = subprocess.Popen(cmd, start_new_session=True)
                stop.children.append(procs[seed])
            if stop.requested:
                pending = []
            for seed, proc in list(procs.items()):
                rc = proc.poll()
                if rc is not None:
                    codes[seed] = rc
                    del procs[seed]
            time.sleep(0.2)
    # Wall time over every invocation (a resumed experiment adds its own).
    wall = time.perf_counter() - t0
    with contextlib.suppress(OSError, ValueError, TypeError):
        wall += float(json.loads((multi / "multi_state.json").read_text())["wall_seconds"])
    write_text_atomic(multi / "multi_state.json",
                      json.dumps({"wall_seconds": wall, "seeds": list(exp.seeds)}) + "\n")
    report = multi_report(multi, runs, exp, console, wall)
    write_text_atomic(multi / "report.md", report)
    console.print(f"aggregate report: {multi / 'report.md'} (wall time {wall:.0f} s)",
                  highlight=False, markup=False)
    unfinished = [s for s in exp.seeds if s in runs and (runs[s] / "state.json").is_file()
                  and _read_state(runs[s])["status"] != "finished"]
    if stop.requested or any(c >= 128 for c in codes.values()):
        console.print(f"resume every seed: python scripts/train.py --resume "
                      f"{shlex.quote(str(multi))}", highlight=False, markup=False)
        for s in unfinished:
            console.print(f"  or seed {s} alone: python scripts/train.py --resume "
                          f"{shlex.quote(str(runs[s]))}", highlight=False, markup=False)
        return 128 + (stop.signum or signal.SIGINT)
    return 0 if all(c == 0 for c in codes.values()) else 1


def _is_multi(path: Path) -> bool:
    return (path / "experiment.yaml").is_file() and not (path / "config.yaml").exists()


if __name__ == "__main__":
    # Run the module under its real name, not as __main__: classes and closures
    # pickled into models and checkpoints then refer to ptreclaim.agents.train.
    from ptreclaim.agents.train import main as _real_main

    sys.exit(_real_main())
