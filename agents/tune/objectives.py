"""What a tuning trial is scored on, and the objectives Optuna calls.

**Heuristics**: every trial runs the heuristic with the sampled parameters
on the same episodes (common random numbers): each scenario of the suite x
``seeds`` seeds x ``episodes`` episodes, episode ``k`` of scenario ``i``
under seed ``s`` seeded with ``episode_seed(EPISODE_SEED + s, i, k)``, i.e.
exactly the episodes of ``evaluate.py --suite <suite> --seed <EPISODE_SEED +
s>``.  The objective is the mean episode cost; its standard error is taken
over the seeds' means, so the fixed differences between scenarios do not
inflate it.  Episodes run in a :class:`~ptreclaim.agents.rollout.WorkerPool`
kept for the whole study.

**Agents**: every trial trains ``train_seeds`` models with the sampled
hyperparameters and, every ``eval_freq`` steps, evaluates the current model
on those validation episodes (training never draws them); each evaluation is
reported to Optuna's pruner.  The objective is the final evaluation's mean
cost over every training seed x episode seed x scenario.

A trial stopped by SIGINT or SIGTERM raises
:class:`~ptreclaim.agents.interrupts.Interrupted`: Optuna records it as
FAIL (never left RUNNING), and the trial says why in its ``interrupted``
user attribute.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...envs.pagetable_env import EnvConfig
from ...envs.sim.config import to_dict
from ...envs.sim.pagetable import MODEL_RULES_VERSION
from ...envs.sim.simulator import ScenarioConfig
from .. import interrupts
from ..heuristics import make_heuristic
from ..loading import algo_class
from ..modelpolicy import as_policy
from ..results import EpisodeResult
from ..rollout import WorkerPool, episode_seed, run_episode, run_policies
from ..training.config import ExperimentConfig
from ..training.hyperparams import materialize, validate_hyperparams
from ..training.pretrain import pretrain
from ..training.vecenv import make_vec_env
from .spaces import HEURISTIC_SPACES, agent_hyperparams, suggest_agent

if TYPE_CHECKING:
    import optuna

#: Base of the tuning episodes' seeds: seed s runs episode_seed(EPISODE_SEED + s, i, k).
#: Apart from evaluate.py's default 0 and training's held-out 1000/1001, so that
#: no tuning episode shares its seed with an evaluation one.
EPISODE_SEED = 5000


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


#: An episode to run: (heuristic, params, scenario index, seed base, episode).
EpisodeTask = tuple[str, dict[str, Any], int, int, int]
_Context = tuple[list[ScenarioConfig], EnvConfig]


def _context(scenarios: list[ScenarioConfig], env_config: EnvConfig) -> _Context:
    return scenarios, env_config


def _run_heuristic_episode(ctx: _Context, task: EpisodeTask) -> EpisodeResult:
    scenarios, env_config = ctx
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
        self.env_config = env_config
        self.objective = objective
        self.n_scenarios = len(scenarios)
        self.pool: WorkerPool[_Context, EpisodeTask, EpisodeResult] = WorkerPool(
            jobs, _context, (list(scenarios), env_config), _run_heuristic_episode)

    def tasks(self, name: str, params: Mapping[str, Any]) -> list[tuple[EpisodeTask, int]]:
        """Every episode of one trial with its seed index, in a fixed order."""
        return [((name, dict(params), i, base, k), s)
                for s, base in enumerate(self.objective.episode_seeds())
                for i in range(self.n_scenarios) for k in range(self.objective.episodes)]

    def run(self, name: str, params: Mapping[str, Any]) -> tuple[list[EpisodeResult], list[int]]:
        """The results of one trial's episodes and each one's seed index."""
        tasks = self.tasks(name, params)
        return self.pool.map([t for t, _ in tasks]), [s for _, s in tasks]

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        self.pool.close()


def _scored(trial: optuna.Trial, t0: float,
            work: Callable[[], tuple[list[EpisodeResult], list[int]]]) -> float:
    """Run a trial's episodes (``work``: results and their seed groups), record
    its score in ``trial`` and return the mean cost.  A signal may stop the
    work anywhere (:func:`~ptreclaim.agents.interrupts.immediate`): the trial
    then records why, and Optuna marks it FAIL without logging a traceback
    (the command prints one line)."""
    import optuna

    try:
        with interrupts.immediate():
            results, groups = work()
    except interrupts.Interrupted as exc:
        trial.set_user_attr("interrupted", interrupts.signal_name(exc.signum))
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        exc.explain(what=f"trial {trial.number} (marked FAIL in the study)")
        raise
    s = score(results, groups)
    for key, value in s.attrs().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("seconds", time.perf_counter() - t0)
    return s.mean


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
        return _scored(trial, t0, lambda: self.runner.run(self.name, params))


# ------------------------------------------------------------ agent objective


@dataclass
class AgentSetup:
    """Everything an agent trial needs besides its sampled parameters."""

    algo: str
    experiment: ExperimentConfig  # with algo, timesteps, n_envs and env set
    base_hp: dict[str, Any]
    scenarios: list[ScenarioConfig]
    objective: Objective
    timesteps: int
    eval_freq: int
    train_seeds: tuple[int, ...]


def _evaluate_model(model: Any, setup: AgentSetup) -> tuple[list[EpisodeResult], list[int]]:
    """The current model on every validation episode (deterministic actions)."""
    from stable_baselines3.common.vec_env import VecNormalize

    venv = model.get_env()
    vn = venv if isinstance(venv, VecNormalize) else None
    policy = as_policy(model, vn, setup.experiment.env, "trial")
    results: list[EpisodeResult] = []
    groups: list[int] = []
    for s, base in enumerate(setup.objective.episode_seeds()):
        res = run_policies({"trial": policy}, setup.scenarios, setup.objective.episodes, base,
                           setup.experiment.env)
        results += res
        groups += [s] * len(res)
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
        t0 = time.perf_counter()
        st = self.setup
        warm = bool(st.experiment.pretrain.teacher)
        params = suggest_agent(trial, st.algo, warm_start=warm)
        hp = agent_hyperparams(st.algo, params, st.base_hp, st.experiment.n_envs)
        validate_hyperparams(st.algo, hp, f"trial {trial.number}")
        trial.set_user_attr("hyperparams", hp)
        normalize = dataclasses.replace(st.experiment.normalize,
                                        clip_reward=float(params["reward_clip"]))
        trial.set_user_attr("normalize", to_dict(normalize))
        experiment = dataclasses.replace(st.experiment, normalize=normalize)
        if warm:
            warm_cfg = dataclasses.replace(st.experiment.pretrain,
                                           epochs=int(params["pretrain_epochs"]))
            trial.set_user_attr("pretrain", to_dict(warm_cfg))
            experiment = dataclasses.replace(experiment, pretrain=warm_cfg)
        return _scored(trial, t0, lambda: self._train(trial, hp, experiment, t0))

    def _train(self, trial: optuna.Trial, hp: Mapping[str, Any], experiment: ExperimentConfig,
               t0: float) -> tuple[list[EpisodeResult], list[int]]:
        """Train every training seed; the last evaluation's results and groups."""
        import optuna
        from stable_baselines3.common.logger import Logger

        st = self.setup
        policy, kwargs = materialize(st.algo, hp)
        gamma = float(hp.get("gamma", 0.99))
        results: list[EpisodeResult] = []
        groups: list[int] = []
        # Reports of later training seeds continue the step count of the earlier
        # ones (a rollout may overshoot --timesteps, so count the real steps).
        offset = 0
        for t, seed in enumerate(st.train_seeds):
            venv = make_vec_env(experiment, st.scenarios, seed, gamma)
            try:
                with warnings.catch_warnings():
                    # e.g. PPO's "mini-batch size does not divide the rollout".
                    warnings.simplefilter("ignore")
                    model = algo_class(st.algo)(policy, venv, seed=seed, device="cpu",
                                                verbose=0, **kwargs)
                    # A logger that writes nowhere: SB3's default (no tensorboard_log)
                    # also makes an empty /tmp/SB3-<time> folder at every learn().
                    model.set_logger(Logger(folder=None, output_formats=[]))
                    if experiment.pretrain.teacher:
                        # The default experiment's warm start, as train.py makes it: the
                        # rule plays on this venv, the policy clones it, then PPO.
                        pretrain(model, venv, experiment.pretrain, experiment.env,
                                 st.scenarios[0], seed, lambda _m: None)
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
        return results, groups
