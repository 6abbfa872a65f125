"""Optuna tuning: the heuristics' thresholds and the agents' hyperparameters.

Two targets, one command line (``scripts/tune.py``, :func:`main`)::

    python scripts/tune.py heuristic soft_hard --n-trials 60 --jobs 2
    python scripts/tune.py heuristic periodic_scan
    python scripts/tune.py agent ppo --timesteps 8192 --pruner median

**Heuristics** (``soft_hard``, ``periodic_scan``): every trial runs the
heuristic with the sampled parameters on the same episodes (common random
numbers): each scenario of the training suite (``--suite``, default
``train``; never the held-out ``test`` suite) x ``--seeds`` seeds x
``--episodes`` episodes, episode ``k`` of scenario ``i`` under seed ``s``
seeded with ``episode_seed(EPISODE_SEED + s, i, k)``, i.e. exactly the
episodes of ``evaluate.py --suite train --seed <EPISODE_SEED + s>``.  The
objective is the mean episode cost; its standard error is taken over the
seeds' means (each the mean over every scenario and episode of that seed), so
the fixed differences between scenarios do not inflate it.  Trial 0 is
always the heuristic's default parameters, so the study shows default vs
tuned on identical episodes.

**Agents** (``ppo``, ``a2c``, ``dqn``, ``maskable_ppo``): every trial trains
``--train-seeds`` models (default 1) of ``--timesteps`` steps with the
sampled hyperparameters (rl-zoo style spaces, the experiment's algo YAML as
trial 0) on the training suite, and every ``--eval-freq`` steps evaluates
the current model on the validation episodes: the same scenarios with the
tuning episode seeds above, which training never draws (its episodes come
from the VecEnv's own seed stream).  Each evaluation is reported to Optuna,
and the pruner (``--pruner``, median by default) may stop the trial.  The
objective is the final evaluation's mean cost over every training seed x
episode seed x scenario.

**Storage**: ``--storage`` (default ``sqlite:///<out>/study.db``) is any
SQLAlchemy URL Optuna's :class:`~optuna.storages.RDBStorage` takes
(``postgresql://user:pass@host/db`` lets workers on several machines share a
study).  SQLite is opened with a 30 s lock timeout, and its schema and study
are created under a file lock, so that several worker processes on one
machine can share one file.  Heartbeats (every 10 s, 60 s grace) let a later
worker spot a trial whose process died: it is marked FAIL and its parameters
are enqueued again once.  Re-running the same command resumes the study
(``--n-trials`` more trials); settings that change the objective (suite,
seeds, episodes, env, budget) must match the study's, else exit status 2.

**Output** (``--out``, default ``runs/tune/<target>``; rewritten atomically
after every trial): ``trials.csv``, ``history.png``, ``importances.png``
(PED-ANOVA, from 2 complete trials on), ``report.md``, ``command.txt`` and the
best parameters: ``best.yaml`` + ``best.json`` (a thresholds file, for
``soft_hard``), ``best_params.yaml`` (``heuristic:NAME:best_params.yaml``), or
``best_hyperparams.yaml`` (an algo YAML: ``--set algo_config=...`` in
``train.py``).  Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import fcntl
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..envs.configio import (
    OneLineParser,
    dump_yaml,
    run_cli,
    write_text_atomic,
    write_yaml_atomic,
)
from ..envs.pagetable_env import DEFAULT_BUDGETS, EnvConfig
from ..envs.sim.config import ConfigError, build, did_you_mean, to_dict
from ..envs.sim.pagetable import MODEL_RULES_VERSION
from ..envs.sim.simulator import ScenarioConfig
from .evaluate import EpisodeResult, episode_seed, load_env_file, resolve_suite, run_episode
from .heuristics import PeriodicParams, SoftHardParams, make_heuristic

if TYPE_CHECKING:
    import optuna

PROG = "tune.py"
#: Heuristics with parameters to tune.
HEURISTIC_TARGETS = ("soft_hard", "periodic_scan")
#: Agents whose hyperparameters can be tuned (the names train.py takes).
AGENT_TARGETS = ("ppo", "a2c", "dqn", "maskable_ppo")
SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "hyperband", "none")
#: Base of the tuning episodes' seeds: seed s runs episode_seed(EPISODE_SEED + s, i, k).
#: Apart from evaluate.py's default 0 and training's held-out 1000/1001, so that
#: no tuning episode shares its seed with an evaluation one.
EPISODE_SEED = 5000
DEFAULT_SEEDS = 3
DEFAULT_TRIALS = 30
DEFAULT_TIMESTEPS = 8192
#: RDBStorage heartbeat: a RUNNING trial silent for GRACE seconds is stale.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
SQLITE_TIMEOUT = 30
#: Keys of the objective recorded in a study; a resumed study must match them.
OBJECTIVE_ATTR = "ptreclaim_objective"


# ------------------------------------------------------------ search spaces


def _budget_max(env_config: EnvConfig) -> int:
    """Largest budget index both the env's action space and the heuristics accept."""
    return min(len(env_config.budgets), len(DEFAULT_BUDGETS)) - 1


def suggest_soft_hard(trial: optuna.Trial, env_config: EnvConfig) -> dict[str, Any]:
    """Sample :class:`SoftHardParams` (as a mapping) for one trial.

    The soft limit is sampled as a share of the hard one (``soft_ratio``), so
    ``soft_pt_frac <= hard_pt_frac`` holds for every trial and no trial is
    wasted on an invalid combination.  ``use_hard_limit`` is searched only
    when the env offers the hard-limit action.
    """
    n = _budget_max(env_config)
    hard = trial.suggest_float("hard_pt_frac", 0.005, 0.5, log=True)
    ratio = trial.suggest_float("soft_ratio", 0.0, 1.0)
    params: dict[str, Any] = {
        # Rounded so that a thresholds file shows 0.04, not 0.04000000000000001.
        "soft_pt_frac": min(hard, round(ratio * hard, 6)),
        "hard_pt_frac": hard,
        "proc_ratio": trial.suggest_float("proc_ratio", 0.05, 0.99),
        "proc_pt_frac": trial.suggest_float("proc_pt_frac", 1e-4, 0.2, log=True),
        "psi_trigger": trial.suggest_float("psi_trigger", 0.0, 1.0),
        "free_trigger": trial.suggest_float("free_trigger", -0.25, 0.5),
        "soft_budget": trial.suggest_int("soft_budget", 0, n),
        "hard_budget": trial.suggest_int("hard_budget", 0, n),
        "soft_depth": trial.suggest_int("soft_depth", 0, 2),
        "hard_depth": trial.suggest_int("hard_depth", 0, 2),
    }
    if env_config.hard_limit_action:
        params["use_hard_limit"] = trial.suggest_categorical("use_hard_limit", [False, True])
    return params


def default_soft_hard(env_config: EnvConfig) -> dict[str, Any]:
    """The search-space parameters of the default :class:`SoftHardParams`."""
    d = SoftHardParams()
    n = _budget_max(env_config)
    out: dict[str, Any] = {
        "hard_pt_frac": d.hard_pt_frac, "soft_ratio": round(d.soft_pt_frac / d.hard_pt_frac, 9),
        "proc_ratio": d.proc_ratio, "proc_pt_frac": d.proc_pt_frac,
        "psi_trigger": d.psi_trigger, "free_trigger": d.free_trigger,
        "soft_budget": min(d.soft_budget, n), "hard_budget": min(d.hard_budget, n),
        "soft_depth": d.soft_depth, "hard_depth": d.hard_depth,
    }
    if env_config.hard_limit_action:
        out["use_hard_limit"] = d.use_hard_limit
    return out


def suggest_periodic(trial: optuna.Trial, env_config: EnvConfig) -> dict[str, Any]:
    """Sample :class:`PeriodicParams` (as a mapping) for one trial."""
    return {"every_ticks": trial.suggest_int("every_ticks", 1, 2000, log=True),
            "budget": trial.suggest_int("budget", 0, _budget_max(env_config)),
            "depth": trial.suggest_int("depth", 0, 2)}


def default_periodic(env_config: EnvConfig) -> dict[str, Any]:
    """The search-space parameters of the default :class:`PeriodicParams`."""
    d = PeriodicParams()
    return {"every_ticks": d.every_ticks, "budget": min(d.budget, _budget_max(env_config)),
            "depth": d.depth}


#: Heuristic -> (sampler of its parameters, its defaults in search-space terms).
HEURISTIC_SPACES: dict[str, tuple[Callable[[Any, EnvConfig], dict[str, Any]],
                                  Callable[[EnvConfig], dict[str, Any]]]] = {
    "soft_hard": (suggest_soft_hard, default_soft_hard),
    "periodic_scan": (suggest_periodic, default_periodic),
}

#: Network presets for policy_kwargs.net_arch.
NET_ARCHS: dict[str, list[int]] = {"tiny": [32, 32], "small": [64, 64], "medium": [128, 128]}
GAMMAS = [0.9, 0.95, 0.98, 0.99, 0.995]
GAE_LAMBDAS = [0.8, 0.9, 0.92, 0.95, 0.98, 1.0]
MAX_GRAD_NORMS = [0.3, 0.5, 1.0, 2.0, 5.0]


def suggest_agent(trial: optuna.Trial, algo: str) -> dict[str, Any]:
    """Sample an agent's search-space parameters (rl-zoo style).

    The choices include the shipped ``configs/algos/<algo>.yaml`` values, so
    the defaults can run as trial 0.  :func:`agent_hyperparams` turns the
    result into constructor hyperparameters.
    """
    p: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "lr_schedule": trial.suggest_categorical("lr_schedule", ["constant", "linear"]),
        "gamma": trial.suggest_categorical("gamma", GAMMAS),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
    }
    if algo in ("ppo", "maskable_ppo", "a2c"):
        p["gae_lambda"] = trial.suggest_categorical("gae_lambda", GAE_LAMBDAS)
        p["ent_coef"] = trial.suggest_float("ent_coef", 1e-6, 0.1, log=True)
        p["vf_coef"] = trial.suggest_float("vf_coef", 0.2, 1.0)
        p["max_grad_norm"] = trial.suggest_categorical("max_grad_norm", MAX_GRAD_NORMS)
        p["activation_fn"] = trial.suggest_categorical("activation_fn", ["tanh", "relu"])
    if algo in ("ppo", "maskable_ppo"):
        p["n_steps"] = trial.suggest_categorical("n_steps", [16, 32, 64, 128, 256, 512])
        p["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128, 256, 512])
        p["n_epochs"] = trial.suggest_categorical("n_epochs", [1, 5, 10, 20])
        p["clip_range"] = trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3, 0.4])
    elif algo == "a2c":
        p["n_steps"] = trial.suggest_categorical("n_steps", [5, 8, 16, 32, 64, 128])
        p["normalize_advantage"] = trial.suggest_categorical("normalize_advantage",
                                                             [False, True])
    elif algo == "dqn":
        p["batch_size"] = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
        p["buffer_size"] = trial.suggest_categorical("buffer_size", [10_000, 50_000, 100_000])
        p["learning_starts"] = trial.suggest_categorical("learning_starts", [0, 1000, 5000])
        p["train_freq"] = trial.suggest_categorical("train_freq", [1, 4, 8, 16])
        p["gradient_steps"] = trial.suggest_categorical("gradient_steps", [1, 2, 4])
        p["target_update_interval"] = trial.suggest_categorical("target_update_interval",
                                                                [100, 1000, 5000])
        p["exploration_fraction"] = trial.suggest_float("exploration_fraction", 0.05, 0.5)
        p["exploration_final_eps"] = trial.suggest_float("exploration_final_eps", 0.0, 0.2)
    return p


#: Search-space parameters that are categorical, with their choices (for
#: mapping the algo YAML's defaults into the space).
_AGENT_CHOICES: dict[str, list[Any]] = {
    "gamma": GAMMAS, "gae_lambda": GAE_LAMBDAS, "max_grad_norm": MAX_GRAD_NORMS,
    "activation_fn": ["tanh", "relu"], "clip_range": [0.1, 0.2, 0.3, 0.4],
    "n_epochs": [1, 5, 10, 20], "normalize_advantage": [False, True],
    "buffer_size": [10_000, 50_000, 100_000], "learning_starts": [0, 1000, 5000],
    "train_freq": [1, 4, 8, 16], "gradient_steps": [1, 2, 4],
    "target_update_interval": [100, 1000, 5000],
}
_AGENT_RANGES: dict[str, tuple[float, float]] = {
    "learning_rate": (1e-5, 3e-3), "ent_coef": (1e-6, 0.1), "vf_coef": (0.2, 1.0),
    "exploration_fraction": (0.05, 0.5), "exploration_final_eps": (0.0, 0.2),
}


def agent_hyperparams(algo: str, params: Mapping[str, Any], base: Mapping[str, Any],
                      n_envs: int) -> dict[str, Any]:
    """Constructor hyperparameters (algo YAML form: ``lin_<x>`` schedules,
    activation names) of search-space ``params`` on top of ``base``.

    A PPO mini-batch larger than a rollout (``n_steps x n_envs``) is cut to
    the rollout: SB3 would run it as one smaller batch anyway.
    """
    hp = dict(base)
    for key, value in params.items():
        if key in ("lr_schedule", "net_arch", "activation_fn"):
            continue
        hp[key] = value
    lr = float(params["learning_rate"])
    hp["learning_rate"] = f"lin_{lr:.6g}" if params.get("lr_schedule") == "linear" else lr
    pk = dict(hp.get("policy_kwargs") or {})
    pk["net_arch"] = list(NET_ARCHS[str(params["net_arch"])])
    if "activation_fn" in params:
        pk["activation_fn"] = params["activation_fn"]
    hp["policy_kwargs"] = pk
    if algo in ("ppo", "maskable_ppo") and "n_steps" in hp and "batch_size" in hp:
        hp["batch_size"] = min(int(hp["batch_size"]), int(hp["n_steps"]) * n_envs)
    return hp


def default_agent(algo: str, hp: Mapping[str, Any]) -> dict[str, Any] | None:
    """The search-space parameters of the algo YAML's hyperparameters ``hp``,
    or None when one of them lies outside the space (then no default trial)."""
    out: dict[str, Any] = {}
    lr = hp.get("learning_rate", 3e-4)
    if isinstance(lr, str):
        if not lr.startswith("lin_"):
            return None
        out["learning_rate"], out["lr_schedule"] = float(lr[4:]), "linear"
    else:
        out["learning_rate"], out["lr_schedule"] = float(lr), "constant"
    pk = hp.get("policy_kwargs") or {}
    arch = list(pk.get("net_arch", [64, 64]))
    names = [k for k, v in NET_ARCHS.items() if v == arch]
    if not names:
        return None
    out["net_arch"] = names[0]
    sample_keys = _space_keys(algo)
    for key in sample_keys:
        if key in out:
            continue
        if key == "activation_fn":
            value: Any = pk.get("activation_fn", "tanh")
        elif key in hp:
            value = hp[key]
        else:
            return None
        if key in _AGENT_CHOICES and value not in _AGENT_CHOICES[key]:
            return None
        if key in _AGENT_RANGES:
            lo, hi = _AGENT_RANGES[key]
            if not lo <= float(value) <= hi:
                return None
        out[key] = value
    lo, hi = _AGENT_RANGES["learning_rate"]
    if not lo <= out["learning_rate"] <= hi:
        return None
    for key, choices in (("n_steps", _n_steps_choices(algo)),
                         ("batch_size", _batch_choices(algo))):
        if key in out and out[key] not in choices:
            return None
    return out


def _n_steps_choices(algo: str) -> list[int]:
    return [5, 8, 16, 32, 64, 128] if algo == "a2c" else [16, 32, 64, 128, 256, 512]


def _batch_choices(algo: str) -> list[int]:
    return [32, 64, 128, 256] if algo == "dqn" else [32, 64, 128, 256, 512]


def _space_keys(algo: str) -> list[str]:
    """The search-space parameter names of ``algo`` (a dry run of the sampler)."""
    keys: list[str] = []

    class _Recorder:
        def suggest_float(self, name: str, *a: Any, **k: Any) -> float:
            keys.append(name)
            return 1e-4

        def suggest_int(self, name: str, *a: Any, **k: Any) -> int:
            keys.append(name)
            return 1

        def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
            keys.append(name)
            return choices[0]

    suggest_agent(_Recorder(), algo)  # type: ignore[arg-type]
    return keys


# ------------------------------------------------------------ the objective


@dataclass(frozen=True)
class Objective:
    """What a trial is scored on; a resumed study must have the same."""

    kind: str  # "heuristic" or "agent"
    target: str
    suite: str
    scenarios: tuple[str, ...]
    scenarios_sha256: str
    seeds: int
    episodes: int
    episode_seed: int
    env: Mapping[str, Any]
    agent: Mapping[str, Any] = field(default_factory=dict)
    #: The page-table model's rules: costs under another model are not comparable.
    model_rules_version: str = MODEL_RULES_VERSION

    def to_data(self) -> dict[str, Any]:
        """Plain data, as stored in the study's user attributes."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def episode_seeds(self) -> list[int]:
        """The seeds passed to ``episode_seed`` (one per tuning seed)."""
        return [self.episode_seed + s for s in range(self.seeds)]


def scenarios_digest(scenarios: Sequence[ScenarioConfig]) -> str:
    """SHA-256 of the scenarios' resolved configs (a changed file changes it)."""
    data = json.dumps([to_dict(s) for s in scenarios], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()


@dataclass(frozen=True)
class Score:
    """A trial's cost: the mean, its standard error over seeds, and the parts."""

    mean: float
    stderr: float
    seed_means: list[float]
    scenario_means: dict[str, float]
    episodes: int

    def attrs(self) -> dict[str, Any]:
        """Trial user attributes (plain JSON data)."""
        return {"mean_cost": self.mean,
                "stderr": None if math.isnan(self.stderr) else self.stderr,
                "seed_costs": self.seed_means, "scenario_costs": self.scenario_means,
                "episodes": self.episodes}


def score(results: Sequence[EpisodeResult], groups: Sequence[int]) -> Score:
    """Mean cost over ``results`` and its standard error over ``groups`` (the
    seed index of each result): each group's mean is one noisy estimate of
    the objective, scenario differences cancel out within it."""
    costs = np.array([r.cost for r in results], dtype=float)
    g = np.asarray(groups)
    means = [float(costs[g == s].mean()) for s in sorted(set(groups))]
    se = float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan
    scen: dict[str, list[float]] = {}
    for r in results:
        scen.setdefault(r.scenario, []).append(r.cost)
    return Score(float(costs.mean()), se, means,
                 {k: float(np.mean(v)) for k, v in scen.items()}, len(results))


#: An episode to run in a worker: (heuristic, params, scenario index, seed base, episode).
EpisodeTask = tuple[str, dict[str, Any], int, int, int]
_WORKER: tuple[list[ScenarioConfig], EnvConfig] | None = None


def _worker_init(scenarios: list[ScenarioConfig], env_config: EnvConfig) -> None:
    global _WORKER
    # The parent handles Ctrl-C and shuts the pool down; workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = (scenarios, env_config)


def _run_heuristic_episode(task: EpisodeTask,
                           ctx: tuple[list[ScenarioConfig], EnvConfig] | None = None
                           ) -> EpisodeResult:
    scenarios, env_config = ctx or _WORKER or ([], EnvConfig())
    name, params, i, base, k = task
    policy = make_heuristic(name, params)
    return run_episode(policy, scenarios[i], episode_seed(base, i, k), env_config, name, i, k)


class EpisodeRunner:
    """Runs a heuristic on the tuning episodes, in this process (``jobs`` 1) or
    in a pool of ``jobs`` processes kept for the whole study (a pool per trial
    would pay the interpreter start-up every time).  Results do not depend on
    ``jobs``: every episode is seeded on its own."""

    def __init__(self, scenarios: Sequence[ScenarioConfig], env_config: EnvConfig,
                 objective: Objective, jobs: int) -> None:
        self.scenarios = list(scenarios)
        self.env_config = env_config
        self.objective = objective
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None

    def tasks(self, name: str, params: Mapping[str, Any]) -> list[tuple[EpisodeTask, int]]:
        """Every episode of one trial with its seed index, in a fixed order."""
        return [((name, dict(params), i, base, k), s)
                for s, base in enumerate(self.objective.episode_seeds())
                for i in range(len(self.scenarios)) for k in range(self.objective.episodes)]

    def run(self, name: str, params: Mapping[str, Any]) -> tuple[list[EpisodeResult], list[int]]:
        """The results of one trial's episodes and each one's seed index."""
        tasks = self.tasks(name, params)
        if self.jobs <= 1:
            ctx = (self.scenarios, self.env_config)
            results = [_run_heuristic_episode(t, ctx) for t, _ in tasks]
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.jobs, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_init, initargs=(self.scenarios, self.env_config))
            results = list(self._pool.map(_run_heuristic_episode, [t for t, _ in tasks]))
        return results, [s for _, s in tasks]

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class HeuristicObjective:
    """The Optuna objective of a heuristic: its mean cost on the tuning episodes."""

    def __init__(self, name: str, runner: EpisodeRunner) -> None:
        self.name = name
        self.runner = runner
        self.suggest = HEURISTIC_SPACES[name][0]

    def params(self, trial: optuna.Trial) -> dict[str, Any]:
        """The heuristic's parameters for ``trial`` (validated)."""
        params = self.suggest(trial, self.runner.env_config)
        make_heuristic(self.name, params)  # the space never yields an invalid one
        return params

    def __call__(self, trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        params = self.params(trial)
        trial.set_user_attr("params", params)
        results, groups = self.runner.run(self.name, params)
        s = score(results, groups)
        for key, value in s.attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return s.mean


# ------------------------------------------------------------ agent objective


@dataclass
class AgentSetup:
    """Everything an agent trial needs besides its sampled parameters."""

    algo: str
    experiment: Any  # train.ExperimentConfig with algo, timesteps, n_envs, env set
    base_hp: dict[str, Any]
    scenarios: list[ScenarioConfig]
    objective: Objective
    timesteps: int
    eval_freq: int
    train_seeds: tuple[int, ...]


def _evaluate_model(model: Any, setup: AgentSetup) -> tuple[list[EpisodeResult], list[int]]:
    """The current model on every validation episode (deterministic actions)."""
    from stable_baselines3.common.vec_env import VecNormalize

    from .train import as_policy

    venv = model.get_env()
    vn = venv if isinstance(venv, VecNormalize) else None
    policy = as_policy(model, vn, setup.experiment.env, "trial")
    results: list[EpisodeResult] = []
    groups: list[int] = []
    for s, base in enumerate(setup.objective.episode_seeds()):
        for i, scen in enumerate(setup.scenarios):
            for k in range(setup.objective.episodes):
                results.append(run_episode(policy, scen, episode_seed(base, i, k),
                                           setup.experiment.env, "trial", i, k))
                groups.append(s)
    return results, groups


def make_prune_callback(trial: optuna.Trial, setup: AgentSetup, offset: int) -> Any:
    """An SB3 callback that evaluates every ``eval_freq`` steps, reports the
    mean cost to ``trial`` at step ``offset + num_timesteps`` and stops
    training when the pruner says so (the caller then raises TrialPruned)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _TrialEval(BaseCallback):
        def __init__(self) -> None:
            super().__init__(verbose=0)
            self.next_eval = setup.eval_freq
            self.pruned = False
            self.last: tuple[list[EpisodeResult], list[int]] | None = None
            self.last_step = -1
            self.reports = 0

        def evaluate(self) -> None:
            self.last = _evaluate_model(self.model, setup)
            self.last_step = self.num_timesteps
            value = float(np.mean([r.cost for r in self.last[0]]))
            trial.report(value, offset + self.num_timesteps)
            self.reports += 1
            if trial.should_prune():
                self.pruned = True

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += setup.eval_freq
                self.evaluate()
            return not self.pruned

    return _TrialEval()


class AgentObjective:
    """The Optuna objective of an agent: train with the sampled
    hyperparameters, score the final model on the validation episodes."""

    def __init__(self, setup: AgentSetup) -> None:
        self.setup = setup

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from .train import algo_class, make_vec_env, materialize, validate_hyperparams

        t0 = time.perf_counter()
        st = self.setup
        params = suggest_agent(trial, st.algo)
        hp = agent_hyperparams(st.algo, params, st.base_hp, st.experiment.n_envs)
        validate_hyperparams(st.algo, hp, f"trial {trial.number}")
        trial.set_user_attr("hyperparams", hp)
        policy, kwargs = materialize(st.algo, hp)
        gamma = float(hp.get("gamma", 0.99))
        results: list[EpisodeResult] = []
        groups: list[int] = []
        # Reports of later training seeds continue the step count of the earlier
        # ones (a rollout may overshoot --timesteps, so count the real steps).
        offset = 0
        for t, seed in enumerate(st.train_seeds):
            venv = make_vec_env(st.experiment, st.scenarios, seed, gamma)
            try:
                with warnings.catch_warnings():
                    # e.g. PPO's "mini-batch size does not divide the rollout".
                    warnings.simplefilter("ignore")
                    model = algo_class(st.algo)(policy, venv, seed=seed, device="cpu",
                                                verbose=0, **kwargs)
                    cb = make_prune_callback(trial, st, offset)
                    model.learn(st.timesteps, callback=cb, progress_bar=False)
                    if cb.pruned:
                        trial.set_user_attr("seconds", time.perf_counter() - t0)
                        raise optuna.TrialPruned(f"pruned at step {offset + cb.last_step}")
                    if cb.last is None or cb.last_step != model.num_timesteps:
                        cb.evaluate()
                        if cb.pruned and t < len(st.train_seeds) - 1:
                            raise optuna.TrialPruned(
                                f"pruned at step {offset + cb.last_step}")
                    offset += model.num_timesteps
            finally:
                venv.close()
            assert cb.last is not None
            res, grp = cb.last
            results += res
            groups += [t * st.objective.seeds + g for g in grp]
        s = score(results, groups)
        for key, value in s.attrs().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return s.mean


# ------------------------------------------------------------ storage


def redact(url: str) -> str:
    """``url`` without its password (for files and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: say nothing of what it held
        return url.split("@")[-1] if "@" in url else url


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?")[0]
    return Path(rest) if rest and rest != ":memory:" else None


@contextlib.contextmanager
def _setup_lock(url: str) -> Iterator[None]:
    """Serialise schema and study creation of a local SQLite file: two
    workers starting at once would otherwise both create the tables."""
    db = _sqlite_file(url)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with (db.parent / f".{db.name}.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's RDBStorage for ``url``, with heartbeats (a dead worker's
    trial becomes FAIL and is enqueued again once) and, for SQLite, a lock
    timeout so that concurrent workers wait instead of failing."""
    import inspect

    import optuna

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
        or optuna.storages.RetryFailedTrialCallback
    engine: dict[str, Any] = ({"connect_args": {"timeout": SQLITE_TIMEOUT}}
                              if url.startswith("sqlite") else {"pool_pre_ping": True})
    names = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    cb_key = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names
              else "failed_trial_callback")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats are "experimental" in some versions
        kwargs: dict[str, Any] = {cb_key: retry_cls(max_retry=1)}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                          heartbeat_interval=HEARTBEAT_SECONDS,
                                          grace_period=GRACE_SECONDS, **kwargs)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (default), CMA-ES (numeric parameters; categorical ones fall back
    to a seeded TPE) or random search, all seeded."""
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise ConfigError("--sampler cmaes needs the 'cmaes' package (pip install cmaes); "
                          "or use --sampler tpe") from None
    return optuna.samplers.CmaEsSampler(
        seed=seed, independent_sampler=optuna.samplers.TPESampler(seed=seed),
        warn_independent_sampling=False)


def make_pruner(kind: str, eval_freq: int, total: int) -> optuna.pruners.BasePruner:
    """Median (prunes from a third of the budget on, after 3 trials),
    Hyperband (resources in steps) or none."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=total // 3)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_freq, max_resource=total,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def open_study(url: str, name: str, objective: Objective, default: Mapping[str, Any] | None
               ) -> optuna.Study:
    """Create or load (resume) the study; check that a loaded one tunes the
    same objective; enqueue the default parameters as the first trial of a
    new study.  Storage problems become one-line :class:`ConfigError`."""

    shown = redact(url)
    try:
        with _setup_lock(url):
            study = _create_study(url, name)
            stored = study.user_attrs.get(OBJECTIVE_ATTR)
            mine = objective.to_data()
            if stored is None:
                study.set_user_attr(OBJECTIVE_ATTR, mine)
            elif stored != mine:
                diff = next(k for k in mine if stored.get(k) != mine[k])
                raise ConfigError(
                    f"study {name!r} in {shown} tunes another objective ({diff}: stored "
                    f"{_short(stored.get(diff))}, now {_short(mine[diff])}); rerun with the "
                    "study's settings or choose another --study-name")
            if default is not None and not study.get_trials(deepcopy=False):
                study.enqueue_trial(dict(default), user_attrs={"default": True},
                                    skip_if_exists=True)
    except ConfigError:
        raise
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(f"--storage {shown}: its database driver is not installed "
                          f"({_first_line(exc)}); install it (e.g. psycopg2 for "
                          "postgresql://) or use sqlite:///path/study.db") from None
    except Exception as exc:  # SQLAlchemy/optuna raise many kinds for a bad URL
        raise ConfigError(f"--storage {shown}: cannot open the study ({type(exc).__name__}: "
                          f"{_first_line(exc)}); check the URL, e.g. "
                          "sqlite:///runs/tune/study.db or postgresql://user@host/db") from None
    return study


def _create_study(url: str, name: str, attempts: int = 4) -> optuna.Study:
    """Create or load the study, retrying a few times on the database errors
    a concurrent creator causes (another process creating the same tables,
    a locked SQLite file), which the file lock cannot rule out for processes
    that do not take it (a user's ``optuna.load_study``, a dashboard)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=make_storage(url), study_name=name,
                                       direction="minimize", load_if_exists=True)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------ outputs


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the lowest cost (the first, on a tie)."""
    done = _complete(study)
    if not done:
        return None
    return min(done, key=lambda t: (float(t.value if t.value is not None else math.inf),
                                    t.number))


def default_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial that ran the default parameters, if any."""
    return next((t for t in _complete(study) if t.user_attrs.get("default")), None)


def trials_csv(study: optuna.Study) -> str:
    """One row per trial (what ``study.trials_dataframe()`` holds, without
    needing pandas): number, state, value, SE, times, params, rule values."""
    import csv

    trials = study.get_trials(deepcopy=False)
    pnames = sorted({k for t in trials for k in t.params})
    rnames = sorted({k for t in trials for k in (t.user_attrs.get("params") or {})})
    header = ["number", "state", "value", "stderr", "default", "datetime_start",
              "datetime_complete", "duration_s", "last_step",
              *[f"params_{k}" for k in pnames], *[f"rule_{k}" for k in rnames]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for t in sorted(trials, key=lambda t: t.number):
        dur = ((t.datetime_complete - t.datetime_start).total_seconds()
               if t.datetime_complete and t.datetime_start else "")
        rule = t.user_attrs.get("params") or {}
        w.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value),
                    _cell(t.user_attrs.get("stderr")), int(bool(t.user_attrs.get("default"))),
                    t.datetime_start.isoformat() if t.datetime_start else "",
                    t.datetime_complete.isoformat() if t.datetime_complete else "",
                    dur, t.last_step if t.last_step is not None else "",
                    *[_cell(t.params.get(k)) for k in pnames],
                    *[_cell(rule.get(k)) for k in rnames]])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _savefig(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    # No timestamp in the metadata: the same study gives the same bytes.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    write_text_atomic(path, buf.getvalue())


def plot_history(study: optuna.Study, path: Path, title: str) -> None:
    """Each complete trial's cost with its SE, the best so far, the default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if done:
        x = [t.number for t in done]
        y = [float(t.value) for t in done]  # type: ignore[arg-type]
        se = [float(t.user_attrs.get("stderr") or 0.0) for t in done]
        ax.errorbar(x, y, yerr=se, fmt="o", ms=4, color="tab:blue", alpha=0.7,
                    elinewidth=0.8, label="trial (mean cost ± SE over seeds)")
        ax.step(x, np.minimum.accumulate(y), where="post", color="tab:red", label="best so far")
        d = default_trial(study)
        if d is not None and d.value is not None:
            ax.axhline(float(d.value), color="grey", ls="--", lw=1,
                       label=f"default (trial {d.number})")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.plot([t.number for t in pruned],
                [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel("mean episode cost (lower is better)")
    values = [float(t.value) for t in done]  # type: ignore[arg-type]
    # A log axis only pays off over an order of magnitude (bad trials dwarf good ones).
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def param_importances(study: optuna.Study) -> dict[str, float] | str:
    """PED-ANOVA importances of the search-space parameters, or why not.

    PED-ANOVA, not Optuna's default fANOVA: that one needs scikit-learn,
    which ptreclaim does not depend on.
    """
    import optuna

    done = _complete(study)
    if len(done) < 2:
        return f"needs at least 2 complete trials (has {len(done)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # too few distinct values, a one-point space, ...
        return f"could not be computed ({type(exc).__name__}: {_first_line(exc)})"
    return {k: float(v) for k, v in imp.items()}


def plot_importances(imp: Mapping[str, float], path: Path, title: str) -> None:
    """Horizontal bars, most important on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.4))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


@dataclass
class RunInfo:
    """How this invocation was started (for provenance and the report)."""

    mode: str
    target: str
    study_name: str
    storage: str  # redacted
    sampler: str
    seed: int
    out: Path
    command: str
    objective: Objective
    suite_files: list[str] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    n_jobs: int = 1
    #: Wall time and trials of this invocation, once it has finished.
    finished: tuple[float, int] | None = None


def thresholds_record(study: optuna.Study, info: RunInfo) -> dict[str, Any] | None:
    """The best soft_hard parameters as a thresholds file's plain data."""
    best = best_trial(study)
    if best is None or info.target != "soft_hard":
        return None
    d = default_trial(study)
    params = to_dict(build(SoftHardParams, best.user_attrs["params"], "best trial"))
    obj = info.objective
    return {
        "schema_version": 1,
        "name": "tuned_soft_hard",
        "description": (f"soft_hard thresholds tuned with Optuna ({info.sampler}) on suite "
                        f"{obj.suite!r}: mean episode cost over {len(obj.scenarios)} scenarios "
                        f"x {obj.seeds} seeds x {obj.episodes} episode(s); best of "
                        f"{len(_complete(study))} complete trials"),
        "rule": {"kind": "soft_hard", **params},
        "provenance": {
            "tool": "tune", "study_name": info.study_name, "storage": info.storage,
            "n_trials": len(_complete(study)), "best_trial": best.number,
            "sampler": info.sampler, "seed": info.seed, "suite": obj.suite,
            "suite_files": list(info.suite_files), "scenarios": list(obj.scenarios),
            "seeds": obj.seeds, "episodes": obj.episodes,
            "episode_seeds": obj.episode_seeds(), "env_config": dict(obj.env),
            "ptreclaim_version": __version__, "model_rules_version": obj.model_rules_version,
        },
        "score": {"objective": f"mean episode cost on {obj.suite} suite",
                  "value": float(best.value),  # type: ignore[arg-type]
                  "stderr": best.user_attrs.get("stderr"),
                  "default_value": None if d is None else d.value,
                  "default_stderr": None if d is None else d.user_attrs.get("stderr")},
    }


def write_thresholds_files(stem: Path, data: dict[str, Any]) -> list[Path]:
    """``<stem>.yaml`` and ``<stem>.json`` through the export module's writer
    (it checks that the record reads back to the same rule)."""
    from .export import record_from_data, write_thresholds

    return write_thresholds(stem, record_from_data(data, f"{stem.name} (to be written)"))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3g}"
    return str(x)


def _pm(t: optuna.trial.FrozenTrial | None) -> str:
    if t is None or t.value is None:
        return "-"
    return f"{float(t.value):.3f} ± {_fmt(t.user_attrs.get('stderr'))}"


def _paired(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> str:
    """Mean of a - b over the seeds' means (same episodes) ± its SE."""
    xa, xb = a.user_attrs.get("seed_costs"), b.user_attrs.get("seed_costs")
    if not xa or not xb or len(xa) != len(xb):
        return "-"
    diff = np.asarray(xa, dtype=float) - np.asarray(xb, dtype=float)
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return f"{float(diff.mean()):.3f} ± {_fmt(se)}"


def report_md(study: optuna.Study, info: RunInfo, imp: Mapping[str, float] | str,
              files: Sequence[str]) -> str:
    """The study's report: default vs tuned, parameters, top trials, plots."""
    from optuna.trial import TrialState

    obj = info.objective
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(study)
    d = default_trial(study)
    lines = [f"# Tuning {info.target} ({info.mode})", ""]
    lines += [f"Study `{info.study_name}` in `{info.storage}`: {len(trials)} trials "
              f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
              f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running, "
              f"{count[TrialState.WAITING]} waiting); sampler {info.sampler}, seed {info.seed}.",
              ""]
    per = f"{len(obj.scenarios)} scenarios x {obj.seeds} seeds x {obj.episodes} episode(s)"
    if info.mode == "heuristic":
        lines += [f"Objective: mean episode cost (lower is better) over suite `{obj.suite}`: "
                  f"{per} = {len(obj.scenarios) * obj.seeds * obj.episodes} episodes per "
                  "trial, the same episodes for every trial (seed s runs "
                  f"`episode_seed({obj.episode_seed} + s, scenario, episode)`, i.e. "
                  f"`evaluate.py --suite {obj.suite} --seed {obj.episode_seed}+s`). ± is the "
                  "standard error over the seeds' means.", ""]
    else:
        a = obj.agent
        lines += [f"Objective: mean episode cost of the final model over "
                  f"{len(a.get('train_seeds', []))} training seed(s) x {per} validation "
                  f"episodes of suite `{obj.suite}` (seeds from {obj.episode_seed}; training "
                  f"draws its own episodes); {a.get('timesteps')} steps per training seed, "
                  f"evaluated every {a.get('eval_freq')} steps for the pruner "
                  f"({a.get('pruner')}). ± is the standard error over (training seed, "
                  "episode seed) means.", ""]
    lines += ["| | trial | mean cost ± SE |", "| --- | ---: | ---: |",
              f"| default | {d.number if d else '-'} | {_pm(d)} |",
              f"| tuned (best) | {best.number if best else '-'} | {_pm(best)} |"]
    if best is not None and d is not None:
        lines.append(f"| default - tuned (paired, same episodes) | | {_paired(d, best)} |")
    lines += ["", "The best of many trials scored on the same episodes is optimistic (the "
              "winner's curse): judge it on held-out episodes, e.g. "
              + (f"`python scripts/evaluate.py {info.out}/best.yaml --jobs 2`."
                 if info.target == "soft_hard" else
                 f"`python scripts/evaluate.py heuristic:{info.target}:"
                 f"{info.out}/best_params.yaml`." if info.mode == "heuristic" else
                 f"`python scripts/train.py --algo {info.target} --set "
                 f"algo_config={info.out}/best_hyperparams.yaml`."), ""]
    if best is not None:
        lines += ["## Best parameters", ""]
        if info.mode == "heuristic":
            tuned = best.user_attrs.get("params") or {}
            dflt = d.user_attrs.get("params") if d else {}
            lines += ["| parameter | default | tuned |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {_fmt((dflt or {}).get(k), 4)} | {_fmt(v, 4)} |"
                      for k, v in tuned.items()]
        else:
            hp = best.user_attrs.get("hyperparams") or {}
            dflt = (d.user_attrs.get("hyperparams") if d else None) or {}
            lines += ["| hyperparameter | default | tuned |", "| --- | ---: | ---: |"]
            lines += [f"| {k} | {_fmt(dflt.get(k), 4)} | {_fmt(v, 4)} |"
                      for k, v in hp.items()]
        lines.append("")
        sb = best.user_attrs.get("scenario_costs") or {}
        sd = (d.user_attrs.get("scenario_costs") if d else None) or {}
        if sb:
            lines += ["## Per scenario (mean cost)", "", "| scenario | default | tuned |",
                      "| --- | ---: | ---: |"]
            lines += [f"| {k} | {_fmt(sd.get(k))} | {_fmt(v)} |" for k, v in sb.items()]
            lines.append("")
    done = sorted(_complete(study), key=lambda t: (float(t.value or 0.0), t.number))
    if done:
        lines += ["## Top trials", "", "| trial | mean cost ± SE | seconds |",
                  "| ---: | ---: | ---: |"]
        lines += [f"| {t.number}{' (default)' if t.user_attrs.get('default') else ''} | "
                  f"{_pm(t)} | {_fmt(t.user_attrs.get('seconds'), 1)} |" for t in done[:10]]
        lines.append("")
    lines += ["## Plots", "", "![optimisation history](history.png)", ""]
    if isinstance(imp, str):
        lines += [f"Parameter importances: skipped, {imp}.", ""]
    else:
        lines += ["![parameter importances (PED-ANOVA)](importances.png)", ""]
    lines += ["## Files", "", ", ".join(f"`{f}`" for f in files), "",
              "## Command and versions", ""]
    if info.finished is not None:
        lines += [f"The last invocation ran {info.finished[1]} trials in "
                  f"{info.finished[0]:.0f} s wall time (--jobs {info.n_jobs}).", ""]
    lines += ["```", info.command, "```", "",
              "```json", json.dumps(info.versions, indent=1), "```", ""]
    return "\n".join(lines)


def write_outputs(study: optuna.Study, info: RunInfo) -> list[str]:
    """Write every output file from the study's current state (atomically);
    returns the names written.  Safe to call from several workers at once."""
    out = info.out
    files = ["trials.csv", "history.png"]
    write_text_atomic(out / "trials.csv", trials_csv(study))
    plot_history(study, out / "history.png", f"study {info.study_name}: {info.mode} "
                 f"{info.target} on suite {info.objective.suite}")
    imp = param_importances(study)
    if not isinstance(imp, str):
        plot_importances(imp, out / "importances.png",
                         f"{info.study_name}: parameter importances")
        files.append("importances.png")
    best = best_trial(study)
    if best is not None:
        if info.mode == "heuristic":
            # Every field of the params dataclass, not only the searched ones.
            policy = make_heuristic(info.target, best.user_attrs.get("params") or {})
            params = to_dict(getattr(policy, "params", None)) or {}
            write_yaml_atomic(out / "best_params.yaml", params)
            files.append("best_params.yaml")
            record = thresholds_record(study, info)
            if record is not None:
                write_thresholds_files(out / "best", record)
                files += ["best.yaml", "best.json"]
        else:
            hp = best.user_attrs.get("hyperparams") or {}
            text = (f"# Best {info.target} hyperparameters of study {info.study_name!r} (trial "
                    f"{best.number}, mean cost {float(best.value or 0.0):.3f}).\n"
                    f"# Use: python scripts/train.py --algo {info.target} --set "
                    f"algo_config={out / 'best_hyperparams.yaml'}\n")
            write_text_atomic(out / "best_hyperparams.yaml", text + dump_yaml(
                {"default": dict(hp)}))
            files.append("best_hyperparams.yaml")
    files += ["report.md", "command.txt"]
    write_text_atomic(out / "report.md", report_md(study, info, imp, files))
    return files


# ---------------------------------------------------------------- progress


class Progress:
    """A rich progress bar of trials with the best so far; one line per
    finished trial above it (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int | None, quiet: bool, label: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self.total = total
        self.label = label
        self.done = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn(f"[bold]{self.label}[/]"), BarColumn(bar_width=24),
                            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("<"),
                            TimeRemainingColumn(), TextColumn("{task.fields[best]}"),
                            console=self.console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("trials", total=self.total, best="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def trial(self, study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        """Show one finished trial and the best so far."""
        self.done += 1
        best = best_trial(study)
        from optuna.trial import TrialState

        if t.state == TrialState.COMPLETE and t.value is not None:
            state = f"{float(t.value):.3f} ± {_fmt(t.user_attrs.get('stderr'))}"
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            state = f"pruned at step {step} ({t.intermediate_values[step]:.3f})"
        else:
            state = t.state.name.lower()
        tag = " (default)" if t.user_attrs.get("default") else ""
        best_s = (f"best {float(best.value):.3f} (trial {best.number})"  # type: ignore[arg-type]
                  if best is not None else "")
        line = (f"trial {t.number:>4}{tag}: {state} [{_fmt(t.user_attrs.get('seconds'), 1)} s]"
                f"  {best_s}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, best=best_s)
            self._bar.console.print(line, highlight=False, markup=False)
        elif not self.quiet:
            self.console.print(line, highlight=False, markup=False)
            with contextlib.suppress(OSError, ValueError):
                self.console.file.flush()


# ---------------------------------------------------------------- command line


#: Flags that only make sense for agents (their defaults are None to tell).
AGENT_FLAGS = ("config", "timesteps", "n_envs", "eval_freq", "train_seeds", "pruner")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/tune.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Tune a heuristic's thresholds or an agent's hyperparameters with Optuna on the "
        "training suite, noise-aware (every trial scored over several seeds), in a resumable "
        "study that several workers may share. Writes trials.csv, the best parameters, "
        "history.png, importances.png and report.md to --out."))
    p.add_argument("mode", choices=("heuristic", "agent"),
                   help="what to tune: a heuristic's parameters or an agent's hyperparameters")
    p.add_argument("target", help=f"heuristic: {', '.join(HEURISTIC_TARGETS)}; agent: "
                                  f"{', '.join(AGENT_TARGETS)}")
    p.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help=f"trials to run in this invocation (default {DEFAULT_TRIALS}, or "
                        "unlimited with --timeout); a resumed study adds them")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop starting new trials after this many seconds")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                   help=f"episode seeds per scenario and trial (default {DEFAULT_SEEDS}; "
                        "at least 3 unless --allow-few-seeds)")
    p.add_argument("--allow-few-seeds", action="store_true",
                   help="allow --seeds 1 or 2 (the objective is then one noisy run)")
    p.add_argument("--suite", default="train", metavar="SUITE",
                   help="scenarios to tune on: a suite or scenario name or YAML (default "
                        "'train'; never tune on the held-out 'test')")
    p.add_argument("--episodes", type=int, default=1, metavar="N",
                   help="episodes per scenario and seed (default 1)")
    p.add_argument("--episode-seed", type=int, default=EPISODE_SEED, metavar="BASE",
                   help=f"seed s runs episode_seed(BASE + s, scenario, episode) (default "
                        f"{EPISODE_SEED})")
    p.add_argument("--env-config", default=None, metavar="FILE",
                   help="env settings YAML (EnvConfig keys, or an 'env:' section); default: "
                        "EnvConfig defaults (heuristic) or the experiment's env (agent)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL (default sqlite:///<out>/study.db); e.g. "
                        "postgresql://user:pass@host/db for workers on several machines")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="study name (default: the target); workers with the same storage and "
                        "name share trials")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/tune/<target>)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS,
                   help="tpe (default), cmaes (numeric parameters; categorical ones by TPE) "
                        "or random")
    p.add_argument("--seed", type=int, default=0,
                   help="sampler seed (default 0); give each concurrent worker its own")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="heuristic: parallel processes for a trial's episodes (default 1; "
                        "results do not depend on it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("agent tuning")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="experiment YAML (default configs/experiments/default.yaml): env, "
                        "n_envs, normalisation, base hyperparameters")
    g.add_argument("--timesteps", type=int, default=None, metavar="N",
                   help=f"training steps per trial and training seed (default "
                        f"{DEFAULT_TIMESTEPS})")
    g.add_argument("--n-envs", type=int, default=None, metavar="N",
                   help="parallel envs per training (default: the experiment's)")
    g.add_argument("--eval-freq", type=int, default=None, metavar="N",
                   help="steps between validation evaluations reported to the pruner "
                        "(default timesteps/4)")
    g.add_argument("--train-seeds", type=int, default=None, metavar="N",
                   help="models trained per trial, seeds 0..N-1 (default 1)")
    g.add_argument("--pruner", default=None, choices=PRUNERS,
                   help="median (default), hyperband or none")
    return p


def _check_args(args: argparse.Namespace) -> None:
    known = HEURISTIC_TARGETS if args.mode == "heuristic" else AGENT_TARGETS
    if args.target not in known:
        other = AGENT_TARGETS if args.mode == "heuristic" else HEURISTIC_TARGETS
        hint = (f"; {args.target!r} is {'an agent' if args.mode == 'heuristic' else 'a heuristic'}"
                f", use '{'agent' if args.mode == 'heuristic' else 'heuristic'} {args.target}'"
                if args.target in other else did_you_mean(args.target, known))
        raise ConfigError(f"unknown {args.mode} {args.target!r}{hint}; known: "
                          f"{', '.join(known)}")
    if args.n_trials is not None and not 1 <= args.n_trials <= 1_000_000:
        raise ConfigError(f"--n-trials: {args.n_trials} is out of range; allowed [1, 1000000]")
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout: {args.timeout} must be > 0 seconds")
    lo = 1 if args.allow_few_seeds else 3
    if not lo <= args.seeds <= 10_000:
        extra = "" if args.allow_few_seeds else (
            " (fewer than 3 seeds make single-run noise look like progress; pass "
            "--allow-few-seeds to insist)")
        raise ConfigError(f"--seeds: {args.seeds} is out of range; allowed [{lo}, 10000]{extra}")
    if not 1 <= args.episodes <= 10_000:
        raise ConfigError(f"--episodes: {args.episodes} is out of range; allowed [1, 10000]")
    if not 0 <= args.episode_seed <= 2**31:
        raise ConfigError(f"--episode-seed: {args.episode_seed} is out of range; allowed "
                          "[0, 2147483648]")
    if not 0 <= args.seed <= 2**31:
        raise ConfigError(f"--seed: {args.seed} is out of range; allowed [0, 2147483648]")
    if not 1 <= args.jobs <= 1024:
        raise ConfigError(f"--jobs: {args.jobs} is out of range; allowed [1, 1024]")
    if args.study_name is not None and not args.study_name.strip():
        raise ConfigError("--study-name: empty; give a name")
    if args.mode == "heuristic":
        given = [f for f in AGENT_FLAGS if getattr(args, f) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to agent tuning only; "
                              "drop it (or tune 'agent <algo>')")
    else:
        if args.jobs != 1:
            raise ConfigError("--jobs applies to heuristic tuning; for agents start more "
                              "workers on the same --storage and --study-name instead")
        for name, lo_, hi_ in (("timesteps", 1, 10**9), ("n_envs", 1, 1024),
                               ("eval_freq", 1, 10**9), ("train_seeds", 1, 100)):
            v = getattr(args, name)
            if v is not None and not lo_ <= v <= hi_:
                raise ConfigError(f"--{name.replace('_', '-')}: {v} is out of range; "
                                  f"allowed [{lo_}, {hi_}]")


def versions(agent: bool) -> dict[str, Any]:
    """Versions of what shapes the result."""
    import gymnasium
    import optuna

    info: dict[str, Any] = {"python": platform.python_version(), "ptreclaim": __version__,
                            "optuna": optuna.__version__, "numpy": np.__version__,
                            "gymnasium": gymnasium.__version__}
    if agent:
        import stable_baselines3
        import torch

        info["torch"] = torch.__version__
        info["stable_baselines3"] = stable_baselines3.__version__
    return info


def _display(path: Path) -> str:
    from ..configs import CONFIG_DIR

    for base, prefix in ((Path.cwd(), ""), (CONFIG_DIR, "configs/")):
        with contextlib.suppress(ValueError):
            return prefix + str(path.resolve().relative_to(base.resolve()))
    return str(path)


def _agent_setup(args: argparse.Namespace, scenarios: list[ScenarioConfig], suite: str,
                 env_override: EnvConfig | None) -> tuple[AgentSetup, dict[str, Any] | None]:
    from .train import TrainError, load_experiment, load_hyperparams

    timesteps = args.timesteps or DEFAULT_TIMESTEPS
    sets = [("--algo", f"algo={args.target}"), ("--timesteps", f"timesteps={timesteps}")]
    if args.n_envs is not None:
        sets.append(("--n-envs", f"n_envs={args.n_envs}"))
    try:
        exp, _ = load_experiment(Path(args.config) if args.config else None, sets)
        if env_override is not None:
            exp = dataclasses.replace(exp, env=env_override)
        base = load_hyperparams(exp)
    except TrainError as exc:
        raise ConfigError(str(exc)) from None
    eval_freq = args.eval_freq or max(1, timesteps // 4)
    if eval_freq > timesteps:
        raise ConfigError(f"--eval-freq: {eval_freq} exceeds --timesteps {timesteps}; the "
                          "pruner would get no report before the end")
    train_seeds = tuple(range(args.train_seeds or 1))
    pruner = args.pruner or "median"
    objective = Objective(
        "agent", args.target, suite, tuple(s.name for s in scenarios),
        scenarios_digest(scenarios), args.seeds, args.episodes, args.episode_seed,
        to_dict(exp.env),
        {"timesteps": timesteps, "eval_freq": eval_freq, "train_seeds": list(train_seeds),
         "n_envs": exp.n_envs, "normalize": to_dict(exp.normalize), "pruner": pruner,
         "base_hyperparams": json.loads(json.dumps(base, default=str))})
    setup = AgentSetup(args.target, exp, base, scenarios, objective, timesteps, eval_freq,
                       train_seeds)
    return setup, default_agent(args.target, base)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import optuna

    _check_args(args)
    target = args.target
    out = Path(args.out) if args.out else Path("runs") / "tune" / target
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}); choose "
                          "another --out") from None
    scenarios, files = resolve_suite(args.suite)
    if not scenarios:
        raise ConfigError(f"--suite {args.suite}: lists no scenarios")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"--suite {args.suite}: two scenarios share a name")
    env_override = load_env_file(args.env_config) if args.env_config else None
    url = args.storage or f"sqlite:///{out / 'study.db'}"
    study_name = args.study_name or target
    agent = args.mode == "agent"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if agent:
        import torch

        # One intra-op thread: small MLPs run faster so on a shared 2-core machine.
        torch.set_num_threads(1)
        setup, default = _agent_setup(args, scenarios, args.suite, env_override)
        objective = setup.objective
        func: Callable[[optuna.Trial], float] = AgentObjective(setup)
        runner: EpisodeRunner | None = None
    else:
        env_config = env_override or EnvConfig()
        objective = Objective("heuristic", target, args.suite, tuple(names),
                              scenarios_digest(scenarios), args.seeds, args.episodes,
                              args.episode_seed, to_dict(env_config))
        default = HEURISTIC_SPACES[target][1](env_config)
        runner = EpisodeRunner(scenarios, env_config, objective, args.jobs)
        func = HeuristicObjective(target, runner)
    study = open_study(url, study_name, objective, default)
    existing = len(study.get_trials(deepcopy=False))
    # A resumed (or joined) study gets a sampler seed of its own: the same seed
    # would propose the first run's random start-up points again.
    seed = args.seed if existing == 0 else int(
        np.random.SeedSequence([args.seed, existing]).generate_state(1)[0])
    study.sampler = make_sampler(args.sampler, seed)
    if agent:
        study.pruner = make_pruner(str(objective.agent["pruner"]), setup.eval_freq,
                                   setup.timesteps * len(setup.train_seeds))
    cmd = shlex.join(["python", "scripts/tune.py", *argv])
    with contextlib.suppress(OSError):
        old = (out / "command.txt").read_text() if (out / "command.txt").exists() else ""
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        write_text_atomic(out / "command.txt", f"{old}# {stamp} cwd: {os.getcwd()}\n{cmd}\n")
    info = RunInfo(args.mode, target, study_name, redact(url), args.sampler, args.seed, out,
                   cmd, objective, [_display(f) for f in files], versions(agent), args.jobs)
    n_trials = args.n_trials if args.n_trials is not None else (
        None if args.timeout is not None else DEFAULT_TRIALS)
    t0 = time.perf_counter()
    with Progress(n_trials, args.quiet, f"{study_name}") as progress:

        def after_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            write_outputs(st, info)
            progress.trial(st, trial)

        try:
            # An agent trial whose hyperparameters blow up (NaN logits: ValueError from
            # torch) is recorded as FAIL and the study goes on; in a heuristic trial
            # any exception is a bug and stops the study.
            catch = (ValueError, RuntimeError, AssertionError) if agent else ()
            study.optimize(func, n_trials=n_trials, timeout=args.timeout,
                           callbacks=[after_trial], catch=catch)
        finally:
            if runner is not None:
                runner.close()
    wall = time.perf_counter() - t0
    info.finished = (wall, progress.done)
    written = write_outputs(study, info)
    if not args.quiet:
        _summary(study, info, wall, written)
    return 0


def _summary(study: optuna.Study, info: RunInfo, wall: float, files: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    best, d = best_trial(study), default_trial(study)
    t = Table(title=f"{info.study_name}: default vs tuned ({info.objective.suite}, "
                    f"{info.objective.seeds} seeds)", title_justify="left")
    for col in ("", "trial", "mean cost ± SE"):
        t.add_column(col)
    t.add_row("default", str(d.number) if d else "-", _pm(d))
    t.add_row("tuned (best)", str(best.number) if best else "-", _pm(best))
    if best is not None and d is not None:
        t.add_row("default - tuned (paired)", "", _paired(d, best))
    console.print(t)
    console.print(f"{len(study.get_trials(deepcopy=False))} trials in the study; this run "
                  f"{wall:.0f} s; wrote {info.out}/: {', '.join(files)}",
                  highlight=False, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
