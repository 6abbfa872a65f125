"""Seeded evaluation of any policy, with statistics that hold up.

Every policy (an SB3 model, a heuristic, exported thresholds, the oracle) is
run on the same seeded episodes of the same scenarios; a result is one row
per policy x scenario x episode with every cost term.  Statistics are
stratified bootstrap confidence intervals over episodes (resampling within
each scenario, as rliable does over tasks), the interquartile mean, the
normalised score ``(policy - none) / (oracle - none)`` (per scenario, then
aggregated) and the probability of improvement over a baseline.

The command line (``scripts/evaluate.py``, :func:`main`)::

    python scripts/evaluate.py runs/default__ppo__0__20250101-120000 \\
        heuristic:soft_hard tuned=heuristic:soft_hard:my_params.yaml \\
        --suite configs/suites/test.yaml --episodes 10 --jobs 2

evaluates any mix of policies (a run folder, a ``model.zip``, an exported
thresholds file, ``heuristic:NAME[:params.yaml]``; ``LABEL=SPEC`` names one),
always together with ``none`` (the normalisation baseline), the
``--baseline`` heuristic (default ``on_zap``) and, unless ``--no-oracle``,
the oracle bound; then prints tables and writes ``report.md``, ``results.csv``,
``results.json``, ``summary.json`` and PNG plots to ``--out``.  Bad input
prints one line on stderr and exits with status 2.

rliable itself is not used: its install pulls arch, statsmodels, pandas and
seaborn for what is here ~40 lines of numpy (the same percentile bootstrap,
resampling within each scenario, and the same 25 % trimmed IQM).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import re
import shlex
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..configs import CONFIG_DIR
from ..envs.configio import (
    OneLineParser,
    check_out_dir,
    dump_yaml,
    load_scenario,
    load_suite,
    load_yaml,
    progress_bar,
    run_cli,
    suite_paths,
    write_text_atomic,
)
from ..envs.pagetable_env import COST_TERMS, EnvConfig, PageTableReclaimEnv
from ..envs.sim.config import ConfigError, build, did_you_mean, to_dict
from ..envs.sim.simulator import ScenarioConfig
from .export import load_thresholds as load_thresholds  # the reader moved to export.py
from .export import read_thresholds
from .heuristics import HEURISTICS, make_heuristic, make_rule
from .oracle import OracleBound


@dataclass(frozen=True)
class EpisodeResult:
    """One evaluated episode.

    ``cost_terms`` are the raw per-episode sums of ``info["cost_terms"]``
    (MiB held, failure ticks, ms, events); ``weighted_terms`` the same times
    their reward weights, which add up to :attr:`cost`.
    """

    policy: str
    scenario: str
    episode: int
    seed: int
    reward: float  # minus the total weighted cost
    cost_terms: dict[str, float]
    steps: int
    failure_ticks: int
    oom_kills: int
    peak_pt_bytes: int
    weighted_terms: dict[str, float] = field(default_factory=dict)

    @property
    def cost(self) -> float:
        return -self.reward

    def row(self) -> dict[str, Any]:
        """A flat record for CSV/JSON: ``term_*`` raw, ``cost_*`` weighted."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("cost_terms", "weighted_terms")}
        d["cost"] = self.cost
        d.update({f"term_{k}": v for k, v in self.cost_terms.items()})
        d.update({f"cost_{k}": v for k, v in self.weighted_terms.items()})
        return d


class ObsNormalizedPolicy:
    """An SB3 model behind the policy interface, with the VecNormalize
    observation statistics it was trained with (if any).

    ``action_shape`` (the env's ``MultiDiscrete`` nvec) decodes a model
    trained on the flattened ``Discrete(prod(nvec))`` action space (DQN),
    C order: the last component varies fastest.
    """

    kernel_pt_reclaim = True
    privileged = False

    def __init__(self, model: Any, normalize: Callable[[np.ndarray], np.ndarray] | None = None,
                 name: str = "model", action_shape: Sequence[int] | None = None) -> None:
        self.model = model
        self.normalize = normalize
        self.name = name
        self.action_shape = tuple(int(n) for n in action_shape) if action_shape else None

    def predict(self, observation: np.ndarray, state: Any = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        obs = self.normalize(observation) if self.normalize is not None else observation
        action, state = self.model.predict(obs, state=state, episode_start=episode_start,
                                           deterministic=deterministic)
        if self.action_shape is not None:
            flat = np.asarray(action, dtype=np.int64)
            action = np.stack(np.unravel_index(flat, self.action_shape), axis=-1)
        return action, state


def episode_seed(base_seed: int, scenario_index: int, episode: int) -> int:
    """The seed of one episode: the same for every policy."""
    return int(np.random.SeedSequence([base_seed, scenario_index, episode]).generate_state(1)[0])


def _fresh(policy: Any) -> Any:
    """A privileged policy for one episode.

    The oracle caches the episode's future keyed on ``id(env.sim)``; a new
    env's simulation can reuse a freed one's address, which would hand it the
    previous episode's future (and make results depend on episode order, so
    ``--jobs`` would change them).  A shallow copy with the cache cleared
    leaves the caller's instance untouched.
    """
    clone = copy.copy(policy)
    if hasattr(clone, "_sim_id"):
        clone._sim_id = -1
        clone._trace = {}
    return clone


def _timeline_record(step: int, info: dict[str, Any], recs: Sequence[Any], action: Any,
                     reward: float) -> dict[str, Any]:
    """One step of an episode's timeline (``recs``: the step's tick records)."""
    return {"step": step, "tick": info["tick"], "pt_bytes": info["pt_bytes"],
            "normal_free_pages": info["normal_free_pages"],
            "wmark_min": info["watermarks"][0], "wmark_low": info["watermarks"][1],
            "wmark_high": info["watermarks"][2], "psi_some_avg10": info["psi_some_avg10"],
            "failures": info["failures"], "oom_kills": len(info["oom_kills"]),
            "reclaim_freed": info["reclaim_freed"],
            "reclaim_scanned": sum(x.reclaim_scanned for x in recs),
            "action": [] if action is None else [int(a) for a in np.asarray(action).ravel()],
            "reward": reward}


def run_episode(policy: Any, scenario: ScenarioConfig, seed: int, env_config: EnvConfig,
                name: str, scenario_index: int = 0, episode: int = 0,
                timeline: list[dict[str, Any]] | None = None) -> EpisodeResult:
    """Run one deterministic episode of ``policy`` on ``scenario``.

    A policy with ``kernel_pt_reclaim = False`` (``none``) runs on a kernel
    without the 6.14+ on-zap reclaim; every other policy runs on the
    scenario's own kernel (a scenario with ``pt_reclaim: false`` is a
    pre-6.14 machine for everyone).  A privileged policy (``oracle``) is bound
    to the env first.  With ``timeline``, per-step signals are appended to it
    (step 0 is the state after reset's warm-up ticks, which the episode's costs
    do not include).
    """
    pt_reclaim = scenario.pt_reclaim and bool(getattr(policy, "kernel_pt_reclaim", True))
    scen = scenario if pt_reclaim == scenario.pt_reclaim else dataclasses.replace(
        scenario, pt_reclaim=pt_reclaim)
    config = dataclasses.replace(env_config, max_steps=max(env_config.max_steps, 1))
    env = PageTableReclaimEnv([scen], config)
    if getattr(policy, "privileged", False):
        policy = _fresh(policy)
        policy.bind(env)
    obs, info = env.reset(seed=seed)
    terms = dict.fromkeys(COST_TERMS, 0.0)
    reward = 0.0
    steps = failures = kills = 0
    peak = info["pt_bytes"]
    tick = info["tick"]
    state = None
    start = np.ones((1,), dtype=bool)
    if timeline is not None:
        # Step 0: the state after reset's warm-up ticks (not charged to the episode).
        timeline.append(_timeline_record(0, info, [], None, 0.0))
    while True:
        action, state = policy.predict(obs, state=state, episode_start=start, deterministic=True)
        start = np.zeros((1,), dtype=bool)
        obs, r, terminated, truncated, info = env.step(action)
        reward += r
        steps += 1
        for k, v in info["cost_terms"].items():
            terms[k] += v
        failures += info["failures"]
        kills += len(info["oom_kills"])
        peak = max(peak, info["pt_bytes"])
        if timeline is not None:
            assert env.sim is not None
            timeline.append(_timeline_record(steps, info, env.sim.history[tick:info["tick"]],
                                             action, r))
        tick = info["tick"]
        if terminated or truncated:
            break
    w = env_config.reward
    weighted = {k: getattr(w, k) * v for k, v in terms.items()}
    return EpisodeResult(name, scenario.name, episode, seed, float(reward), terms, steps,
                         failures, kills, int(peak), weighted)


def evaluate(policies: dict[str, Any], scenarios: Sequence[ScenarioConfig], episodes: int,
             seed: int, env_config: EnvConfig,
             progress: Callable[[int, int], None] | None = None) -> list[EpisodeResult]:
    """Every policy on every scenario for ``episodes`` seeded episodes each
    (in this process; :func:`evaluate_specs` runs in parallel)."""
    jobs = [(name, i, k) for name in policies for i in range(len(scenarios))
            for k in range(episodes)]
    out = []
    for done, (name, i, k) in enumerate(jobs):
        out.append(run_episode(policies[name], scenarios[i], episode_seed(seed, i, k),
                               env_config, name, i, k))
        if progress is not None:
            progress(done + 1, len(jobs))
    return out


# ------------------------------------------------------------ policy specs

#: SB3 algorithm names (as a run's config.yaml may spell them) -> canonical.
ALGOS = {"ppo": "ppo", "a2c": "a2c", "dqn": "dqn", "maskableppo": "maskable_ppo",
         "maskable_ppo": "maskable_ppo", "ppo_mask": "maskable_ppo", "mppo": "maskable_ppo"}

_LABEL = re.compile(r"^[A-Za-z0-9_.+\-\[\]]+$")


@dataclass(frozen=True)
class PolicySpec:
    """A policy as the command line names it: enough to rebuild it in a
    worker process (policies themselves may not pickle).

    ``kind`` is ``heuristic``, ``thresholds``, ``model`` or ``oracle``;
    ``name`` the heuristic or the SB3 algorithm; ``params`` the heuristic's
    parameters; ``path`` the file it came from; ``vecnormalize`` the model's
    observation statistics (or ``""``); ``env`` the env config the model
    was trained with (from its run's ``config.yaml``), if known.
    """

    label: str
    kind: str
    name: str = ""
    params: Mapping[str, Any] | None = None
    path: str = ""
    vecnormalize: str = ""
    env: Mapping[str, Any] | None = None
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """Plain data for config.yaml and the report."""
        d: dict[str, Any] = {"label": self.label, "kind": self.kind, "name": self.name,
                             "source": self.source or self.label}
        if self.path:
            d["path"] = self.path
        if self.vecnormalize:
            d["vecnormalize"] = self.vecnormalize
        if self.params:
            d["params"] = dict(self.params)
        return d


def heuristic_spec(name: str, label: str | None = None) -> PolicySpec:
    """The spec of a built-in heuristic with default parameters."""
    make_heuristic(name)
    return PolicySpec(label or name, "heuristic", name, source=f"heuristic:{name}")


def oracle_spec() -> PolicySpec:
    """The spec of the oracle bound."""
    return PolicySpec("oracle", "oracle", "oracle", source="--oracle")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _check_trust(path: Path, trust_model: bool, runs_root: Path) -> None:
    if trust_model or _inside(path, runs_root):
        return
    raise ConfigError(f"{path}: outside {runs_root}/, and SB3 model zips and VecNormalize "
                      "files carry pickled Python objects that run code when loaded; pass "
                      "--trust-model if you trust where it came from")


def _algo_from_run_config(data: Any) -> str | None:
    if not isinstance(data, Mapping):
        return None
    cands: list[Any] = [data.get("algo")]
    for key in ("train", "experiment", "training"):
        sub = data.get(key)
        if isinstance(sub, Mapping):
            cands.append(sub.get("algo"))
    for c in cands:
        if isinstance(c, Mapping):
            c = c.get("name", c.get("algo", c.get("class")))
        if isinstance(c, str):
            return c
    return None


def _normalise_algo(name: str, where: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key in ALGOS:
        return ALGOS[key]
    if key.replace("_", "") in ALGOS:
        return ALGOS[key.replace("_", "")]
    raise ConfigError(f"{where}: algorithm {name!r} is unknown{did_you_mean(key, ALGOS)}; "
                      "known: ppo, a2c, dqn, maskable_ppo")


def _algo_from_zip(path: Path) -> str:
    """Guess the algorithm of a bare model.zip from its JSON ``data`` entry
    (reads no pickle)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not an SB3 model zip ({type(exc).__name__}: "
                          f"{_first_line(exc)}); pass the model.zip a training run saved"
                          ) from None
    module = str(data.get("policy_class", {}).get("__module__", "")) \
        if isinstance(data.get("policy_class"), Mapping) else ""
    if "sb3_contrib" in module and "maskable" in module:
        return "maskable_ppo"
    if ".dqn" in module or "exploration_initial_eps" in data:
        return "dqn"
    if "n_epochs" in data:
        return "ppo"
    if "normalize_advantage" in data:
        return "a2c"
    raise ConfigError(f"{path}: cannot tell which algorithm saved this model; put it in a run "
                      "folder whose config.yaml names the algo")


def _run_config(folder: Path) -> tuple[str | None, Mapping[str, Any] | None]:
    """(algo, env mapping) from a run folder's config.yaml, if it exists."""
    cfg = folder / "config.yaml"
    if not cfg.is_file():
        parts = folder.name.split("__")
        return (parts[1] if len(parts) == 4 else None), None
    data = load_yaml(cfg)
    algo = _algo_from_run_config(data)
    if algo is None:
        parts = folder.name.split("__")
        algo = parts[1] if len(parts) == 4 else None
    env, where = None, "env"
    if isinstance(data, Mapping):
        # train.py writes experiment.env; a hand-written config may have a top-level env.
        exp = data.get("experiment")
        if isinstance(exp, Mapping) and exp.get("env") is not None:
            env, where = exp["env"], "experiment.env"
        else:
            env = data.get("env")
    if env is not None:
        if not isinstance(env, Mapping):
            raise ConfigError(f"{cfg}: '{where}' must be a mapping of env settings")
        build(EnvConfig, env, f"{cfg.name}.{where}")
    return algo, env


def _model_spec(label: str | None, model: Path, stats: Path | None, folder: Path,
                source: str, trust_model: bool, runs_root: Path) -> PolicySpec:
    _check_trust(model, trust_model, runs_root)
    algo, env = _run_config(folder)
    algo = _normalise_algo(algo, str(folder / "config.yaml")) if algo else _algo_from_zip(model)
    if stats is not None:
        _check_trust(stats, trust_model, runs_root)
    return PolicySpec(label or _run_label(folder, model), "model", algo, None, str(model),
                      str(stats) if stats is not None else "", env, source)


def _run_label(folder: Path, model: Path) -> str:
    parts = folder.name.split("__")
    base = "__".join(parts[:3]) if len(parts) == 4 else folder.name or model.stem
    if model.name == "best_model.zip":
        base += "[best]"
    elif model.name != "model.zip":
        base += f"[{model.stem}]"
    return base


def _stats_for(model: Path) -> Path | None:
    """The VecNormalize statistics saved next to ``model`` (run-folder names)."""
    name = "best_vecnormalize.pkl" if model.name == "best_model.zip" else "vecnormalize.pkl"
    stats = model.with_name(name)
    if stats.is_file():
        return stats
    if model.name == "best_model.zip" and model.with_name("vecnormalize.pkl").is_file():
        raise ConfigError(f"{model}: the run normalised observations but saved no "
                          "best_vecnormalize.pkl for its best model, so its statistics are "
                          "unknown; evaluate the final model (drop --best)")
    return None


class _Where(dict[str, Any]):
    """A params mapping that carries the place to name in error messages."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        super().__init__(data)
        self.where = where


def _heuristic(name: str, params: Mapping[str, Any] | None) -> Any:
    """``make_heuristic``, but errors name the file the parameters came from."""
    return make_heuristic(name, dict(params) if params else None,
                          getattr(params, "where", None))


def _split_label(arg: str) -> tuple[str | None, str]:
    """``LABEL=SPEC`` -> (LABEL, SPEC); anything else (a path with '=' in it
    included) is a SPEC without a label."""
    if "=" in arg and not os.path.exists(arg):
        label, spec = arg.split("=", 1)
        if _LABEL.match(label):
            return label, spec
    return None, arg


def parse_policy(arg: str, *, best: bool = False, trust_model: bool = False,
                 runs_root: str | os.PathLike[str] = "runs") -> PolicySpec:
    """Turn one command-line policy into a checked :class:`PolicySpec`.

    ``[LABEL=]SPEC`` with SPEC one of: a run folder (its ``model.zip``, or
    ``best_model.zip`` with ``best``, and the matching VecNormalize stats);
    a ``*.zip`` model; a thresholds ``*.yaml``/``*.yml``/``*.json``;
    ``heuristic:NAME`` or ``heuristic:NAME:params.yaml``.  Models outside
    ``runs_root`` need ``trust_model``.  Raises :class:`ConfigError`.
    """
    root = Path(runs_root)
    label, spec = _split_label(arg)
    if spec.startswith("heuristic:"):
        name, _, params_path = spec[len("heuristic:"):].partition(":")
        if name not in HEURISTICS:
            raise ConfigError(f"{arg}: unknown heuristic {name!r}"
                              f"{did_you_mean(name, HEURISTICS)}; known: {', '.join(HEURISTICS)}")
        params: Mapping[str, Any] | None = None
        if params_path:
            data = load_yaml(params_path)
            if data is None:
                raise ConfigError(f"{params_path}: the file is empty; it should map parameter "
                                  f"names of {name} to values")
            if not isinstance(data, Mapping):
                raise ConfigError(f"{params_path}: expected a mapping of {name} parameters, "
                                  f"got {type(data).__name__}")
            params = _Where(data, Path(params_path).name)
        _heuristic(name, params)
        default = name if not params_path else f"{name}[{Path(params_path).stem}]"
        return PolicySpec(label or default, "heuristic", name,
                          dict(params) if params else None, params_path, source=arg)
    p = Path(spec)
    if not spec or not p.exists():
        hint = f"; did you mean heuristic:{spec}?" if spec in HEURISTICS else ""
        raise ConfigError(f"{spec or arg!r}: no such file or folder; a policy is a run folder, "
                          "a model .zip, a thresholds .yaml/.json, or "
                          f"heuristic:NAME[:params.yaml]{hint}")
    if p.is_dir():
        model = p / ("best_model.zip" if best else "model.zip")
        if not model.is_file():
            hint = ("drop --best (the run saved no best model)" if best else
                    "is the training still running? (or pass --best for best_model.zip)")
            raise ConfigError(f"{p}: no {model.name} in this run folder; {hint}")
        return _model_spec(label, model, _stats_for(model), p, arg, trust_model, root)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return _model_spec(label, p, _stats_for(p), p.parent, arg, trust_model, root)
    if suffix in (".yaml", ".yml", ".json"):
        record = read_thresholds(p)
        return PolicySpec(label or f"thresholds[{p.stem}]", "thresholds",
                          record.kind, dict(record.params), str(p), source=arg)
    raise ConfigError(f"{p}: not a policy (expected a run folder, a model .zip, a thresholds "
                      ".yaml/.json, or heuristic:NAME[:params.yaml])")


# ------------------------------------------------------------ building policies

def _algo_class(algo: str) -> Any:
    if algo == "maskable_ppo":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    import stable_baselines3 as sb3

    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}[algo]


#: Replace the training-only schedules on load: they are pickled lambdas that
#: need not unpickle across Python versions, and evaluation never uses them.
_CUSTOM_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0,
                   "clip_range": lambda _: 0.0, "exploration_schedule": lambda _: 0.0}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _space_text(space: Any) -> str:
    return str(space).replace("\n", " ")


def _action_shape(model_space: Any, env: PageTableReclaimEnv, path: str) -> tuple[int, ...] | None:
    from gymnasium import spaces

    nvec = [int(n) for n in env.action_space.nvec]
    if isinstance(model_space, spaces.MultiDiscrete) and \
            [int(n) for n in model_space.nvec] == nvec:
        return None
    if isinstance(model_space, spaces.Discrete) and int(model_space.n) == math.prod(nvec):
        return tuple(nvec)
    raise ConfigError(f"{path}: trained for actions {_space_text(model_space)}, but the env "
                      f"takes {_space_text(env.action_space)}; evaluate with the env config it "
                      "was trained with (--env, or keep the run's config.yaml next to it)")


def load_model_policy(spec: PolicySpec, env_config: EnvConfig,
                      scenario: ScenarioConfig) -> ObsNormalizedPolicy:
    """Load an SB3 model (and its VecNormalize statistics, in eval mode:
    ``training=False``, ``norm_reward=False``) and check that it was trained
    for this env's observation and action spaces.  Sets torch to one
    intra-op thread first (see :func:`_single_thread_torch`)."""
    import warnings

    _single_thread_torch()
    env = PageTableReclaimEnv([scenario], env_config)
    cls = _algo_class(spec.name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.load(spec.path, device="cpu", custom_objects=_CUSTOM_OBJECTS)
    except Exception as exc:
        raise ConfigError(f"{spec.path}: cannot load as a {spec.name} model "
                          f"({type(exc).__name__}: {_first_line(exc)}); is it a complete "
                          "model.zip saved by training?") from None
    obs_shape = getattr(model.observation_space, "shape", None)
    if obs_shape != env.observation_space.shape:
        raise ConfigError(f"{spec.path}: trained for observations of shape {obs_shape}, but "
                          f"the env gives {env.observation_space.shape}; evaluate with the env "
                          "config it was trained with (--env, or keep the run's config.yaml)")
    shape = _action_shape(model.action_space, env, spec.path)
    normalize: Callable[[np.ndarray], np.ndarray] | None = None
    if spec.vecnormalize:
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        venv = DummyVecEnv([lambda: env])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vn = VecNormalize.load(spec.vecnormalize, venv)
        except Exception as exc:
            raise ConfigError(f"{spec.vecnormalize}: cannot load the VecNormalize statistics "
                              f"({type(exc).__name__}: {_first_line(exc)}); they must come "
                              "from the same run and env as the model") from None
        vn.training = False
        vn.norm_reward = False

        def normalize(obs: np.ndarray) -> np.ndarray:
            return np.asarray(vn.normalize_obs(obs))

    return ObsNormalizedPolicy(model, normalize, spec.label, shape)


def build_policy(spec: PolicySpec, env_config: EnvConfig, scenario: ScenarioConfig) -> Any:
    """The policy object of ``spec`` (``scenario`` only sizes a throwaway env
    for space checks and VecNormalize)."""
    if spec.kind == "oracle":
        return OracleBound()
    if spec.kind == "thresholds":
        return make_rule(spec.name, spec.params, spec.path or spec.label)
    if spec.kind == "heuristic":
        return _heuristic(spec.name, spec.params)
    if spec.kind == "model":
        return load_model_policy(spec, env_config, scenario)
    raise ConfigError(f"policy {spec.label!r}: unknown kind {spec.kind!r}")


# ------------------------------------------------------------ parallel evaluation

@dataclass
class _Context:
    policies: dict[str, Any]
    scenarios: list[ScenarioConfig]
    env_config: EnvConfig
    seed: int


_WORKER: _Context | None = None

#: One episode to run: (index, policy label, scenario index, episode, want timeline).
Task = tuple[int, str, int, int, bool]


def _single_thread_torch() -> None:
    """One intra-op thread: small MLPs run faster so, and the floating-point
    reduction order is then the same in every process (--jobs)."""
    import torch

    torch.set_num_threads(1)


def _make_context(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                  env_config: EnvConfig, seed: int) -> _Context:
    policies = {s.label: build_policy(s, env_config, scenarios[0]) for s in specs}
    return _Context(policies, list(scenarios), env_config, seed)


def _init_worker(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                 env_config: EnvConfig, seed: int) -> None:
    global _WORKER
    _WORKER = _make_context(specs, scenarios, env_config, seed)


def _run_task(task: Task, ctx: _Context | None = None) -> tuple[int, EpisodeResult,
                                                                list[dict[str, Any]] | None]:
    ctx = ctx or _WORKER
    assert ctx is not None, "worker not initialised"
    j, label, i, k, want = task
    timeline: list[dict[str, Any]] | None = [] if want else None
    res = run_episode(ctx.policies[label], ctx.scenarios[i], episode_seed(ctx.seed, i, k),
                      ctx.env_config, label, i, k, timeline=timeline)
    return j, res, timeline


def evaluate_specs(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                   episodes: int, seed: int, env_config: EnvConfig, jobs: int = 1,
                   progress: Callable[[int, int], None] | None = None,
                   timeline_scenario: int | None = 0,
                   ) -> tuple[list[EpisodeResult], dict[str, list[dict[str, Any]]]]:
    """Every spec'd policy on every scenario for ``episodes`` seeded episodes,
    in ``jobs`` processes (spawned; the results are the same for any ``jobs``).

    Returns the results in (policy, scenario, episode) order and, per policy,
    the timeline of episode 0 of scenario ``timeline_scenario``.
    """
    if not scenarios:
        raise ConfigError("no scenarios to evaluate on")
    labels = [s.label for s in specs]
    tasks: list[Task] = []
    for label in labels:
        for i in range(len(scenarios)):
            for k in range(episodes):
                tasks.append((len(tasks), label, i, k, i == timeline_scenario and k == 0))
    results: list[EpisodeResult | None] = [None] * len(tasks)
    timelines: dict[str, list[dict[str, Any]]] = {}

    def collect(out: tuple[int, EpisodeResult, list[dict[str, Any]] | None], done: int) -> None:
        j, res, tl = out
        results[j] = res
        if tl is not None:
            timelines[res.policy] = tl
        if progress is not None:
            progress(done, len(tasks))

    if jobs <= 1 or len(tasks) <= 1:
        ctx = _make_context(specs, scenarios, env_config, seed)
        for n, task in enumerate(tasks, 1):
            collect(_run_task(task, ctx), n)
    else:
        # Interleave policies so that the slow ones (the oracle) spread over workers.
        order = sorted(tasks, key=lambda t: (t[2], t[3], labels.index(t[1])))
        mp = multiprocessing.get_context("spawn")
        with mp.Pool(min(jobs, len(tasks)), _init_worker,
                     (list(specs), list(scenarios), env_config, seed)) as pool:
            for n, out in enumerate(pool.imap_unordered(_run_task, order), 1):
                collect(out, n)
    done = [r for r in results if r is not None]
    assert len(done) == len(tasks)
    return done, {label: timelines[label] for label in labels if label in timelines}


# ---------------------------------------------------------------- statistics


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (rliable's aggregate)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        return float("nan")
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(v[lo:hi].mean()) if hi > lo else float(v.mean())


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    s = np.sort(samples, axis=1)
    n = s.shape[1]
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return s[:, lo:hi].mean(axis=1) if hi > lo else s.mean(axis=1)


def stratified_bootstrap(groups: Sequence[Sequence[float]],
                         statistic: Callable[[Any], Any] = np.mean,
                         n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``statistic`` over the pooled
    values, resampling with replacement within each group (scenario).

    ``np.mean`` and :func:`iqm` are vectorised; any other statistic is
    applied to each resample in turn.
    """
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return float("nan"), float("nan"), float("nan")
    pooled = np.concatenate(arrays)
    point = float(statistic(pooled))
    rng = np.random.default_rng(seed)
    samples = np.concatenate([a[rng.integers(0, len(a), (n_boot, len(a)))] for a in arrays],
                             axis=1)
    if statistic is np.mean:
        stats = samples.mean(axis=1)
    elif statistic is iqm:
        stats = _iqm_rows(samples)
    else:
        stats = np.array([statistic(row) for row in samples], dtype=float)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)


@dataclass
class PolicySummary:
    """Aggregates of one policy over all scenarios, or over one (``scenario``).

    Costs: lower is better.  ``normalized`` is the mean normalised score
    ``(none - policy) / (none - oracle)`` on each scenario's mean costs of
    ``none`` and ``oracle`` (1 = as good as the oracle, 0 = as bad as no
    reclaim), ``prob_improvement`` P(cost < ``improvement_over``'s on the same
    episode).  ``terms`` are raw mean cost terms per episode, ``weighted_terms``
    the weighted ones (they add up to ``mean_cost``).
    """

    policy: str
    episodes: int
    mean_cost: float
    ci_low: float
    ci_high: float
    iqm_cost: float
    normalized: float | None = None
    prob_improvement: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    scenario: str = "all"
    iqm_ci_low: float = float("nan")
    iqm_ci_high: float = float("nan")
    norm_ci_low: float | None = None
    norm_ci_high: float | None = None
    iqm_normalized: float | None = None
    improvement_over: str | None = None
    poi_ci_low: float | None = None
    poi_ci_high: float | None = None
    weighted_terms: dict[str, float] = field(default_factory=dict)
    failure_ticks: float = 0.0
    oom_kills: float = 0.0


def _by_scenario(results: Iterable[EpisodeResult], policy: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.policy == policy:
            groups.setdefault(r.scenario, []).append(r.cost)
    return groups


def normalized_scores(results: Sequence[EpisodeResult], baseline: str = "none",
                      oracle: str = "oracle") -> dict[str, dict[str, list[float]]]:
    """Per policy, per scenario: each episode's ``(none - cost) / (none - oracle)``
    with ``none`` and ``oracle`` the scenario's mean costs of those policies.

    Scenarios where the two means are equal (nothing to win) are left out.
    """
    refs: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.policy in (baseline, oracle):
            refs.setdefault(r.scenario, {}).setdefault(r.policy, []).append(r.cost)
    scale: dict[str, tuple[float, float]] = {}
    for scen, d in refs.items():
        if baseline in d and oracle in d:
            b, o = float(np.mean(d[baseline])), float(np.mean(d[oracle]))
            if b != o:
                scale[scen] = (b, b - o)
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.scenario in scale:
            b, span = scale[r.scenario]
            out.setdefault(r.policy, {}).setdefault(r.scenario, []).append((b - r.cost) / span)
    return out


def summarize(results: Sequence[EpisodeResult], baseline: str = "none",
              oracle: str = "oracle", n_boot: int = 2000, seed: int = 0, *,
              improvement_over: str | None = None,
              scenario: str | None = None) -> list[PolicySummary]:
    """One summary per policy, in first-seen order.

    ``baseline`` and ``oracle`` define the normalised score;
    ``improvement_over`` (default ``baseline``) the probability of improvement;
    ``scenario`` restricts everything to one scenario.
    """
    if scenario is not None:
        results = [r for r in results if r.scenario == scenario]
    poi_base = baseline if improvement_over is None else improvement_over
    names = list(dict.fromkeys(r.policy for r in results))
    norm = normalized_scores(results, baseline, oracle)
    out = []
    for n in names:
        groups = _by_scenario(results, n)
        mean, lo, hi = stratified_bootstrap(list(groups.values()), n_boot=n_boot, seed=seed)
        _, ilo, ihi = stratified_bootstrap(list(groups.values()), iqm, n_boot=n_boot, seed=seed)
        costs = [c for g in groups.values() for c in g]
        s = PolicySummary(n, len(costs), mean, lo, hi, iqm(costs), scenario=scenario or "all",
                          iqm_ci_low=ilo, iqm_ci_high=ihi)
        if n in norm:
            ngroups = list(norm[n].values())
            s.normalized, s.norm_ci_low, s.norm_ci_high = stratified_bootstrap(
                ngroups, n_boot=n_boot, seed=seed)
            s.iqm_normalized = iqm([v for g in ngroups for v in g])
        if n != poi_base and any(r.policy == poi_base for r in results):
            indicator = _improvement_indicators(results, n, poi_base)
            if indicator:
                s.improvement_over = poi_base
                s.prob_improvement, s.poi_ci_low, s.poi_ci_high = stratified_bootstrap(
                    list(indicator.values()), n_boot=n_boot, seed=seed)
        rows = [r for r in results if r.policy == n]
        s.terms = {k: float(np.mean([r.cost_terms[k] for r in rows])) for k in COST_TERMS}
        if all(r.weighted_terms for r in rows):
            s.weighted_terms = {k: float(np.mean([r.weighted_terms[k] for r in rows]))
                                for k in COST_TERMS}
        s.failure_ticks = float(np.mean([r.failure_ticks for r in rows]))
        s.oom_kills = float(np.mean([r.oom_kills for r in rows]))
        out.append(s)
    return out


def summarize_by_scenario(results: Sequence[EpisodeResult], baseline: str = "none",
                          oracle: str = "oracle", n_boot: int = 2000, seed: int = 0, *,
                          improvement_over: str | None = None
                          ) -> dict[str, list[PolicySummary]]:
    """:func:`summarize` for each scenario, in first-seen order."""
    return {scen: summarize(results, baseline, oracle, n_boot, seed,
                            improvement_over=improvement_over, scenario=scen)
            for scen in dict.fromkeys(r.scenario for r in results)}


def _improvement_indicators(results: Sequence[EpisodeResult], policy: str,
                            baseline: str) -> dict[str, list[float]]:
    base = {(r.scenario, r.episode): r.cost for r in results if r.policy == baseline}
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.policy == policy and (r.scenario, r.episode) in base:
            b = base[(r.scenario, r.episode)]
            groups.setdefault(r.scenario, []).append(
                1.0 if r.cost < b else 0.5 if r.cost == b else 0.0)
    return groups


def probability_of_improvement(results: Sequence[EpisodeResult], policy: str,
                               baseline: str) -> float:
    """P(policy's cost < baseline's cost) on the same episode, ties count half."""
    groups = _improvement_indicators(results, policy, baseline)
    values = [v for g in groups.values() for v in g]
    if not values:
        return float("nan")
    return float(np.mean(values))


def paired_difference_ci(results: Sequence[EpisodeResult], policy: str, other: str,
                         n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (other's cost - policy's cost) on the same episodes, with a
    stratified bootstrap CI: above zero means ``policy`` is better."""
    base = {(r.scenario, r.episode): r.cost for r in results if r.policy == other}
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.policy == policy and (r.scenario, r.episode) in base:
            groups.setdefault(r.scenario, []).append(base[(r.scenario, r.episode)] - r.cost)
    return stratified_bootstrap(list(groups.values()), n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------- command line

PROG = "evaluate.py"
DEFAULT_SUITE = "test"
#: Files an evaluation writes into its output folder.
OUTPUT_FILES = ("report.md", "results.csv", "results.json", "summary.json", "scores.png",
                "cost_terms.png", "timeline.png", "config.yaml", "command.txt")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/evaluate.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Evaluate policies on the same seeded episodes of a suite: trained runs, model zips, "
        "exported thresholds and heuristics, always next to 'none' (no reclaim, the "
        "normalisation baseline), the --baseline heuristic and the oracle bound. Prints "
        "tables; writes report.md, results.csv/json, summary.json and PNG plots."))
    p.add_argument("policies", nargs="*", metavar="POLICY",
                   help="[LABEL=]SPEC, SPEC one of: a run folder runs/<exp>__<algo>__<seed>__<time>"
                        "/ (model.zip, or best_model.zip with --best, with its VecNormalize "
                        "stats); a model .zip; a thresholds .yaml/.json (rule: {kind: soft_hard,"
                        " ...}); heuristic:NAME or heuristic:NAME:params.yaml (NAME: "
                        f"{', '.join(HEURISTICS)}). Default: every heuristic")
    p.add_argument("--suite", default=None, metavar="FILE",
                   help="suite of scenarios: a suite or scenario YAML, or the name of a shipped "
                        "one (configs/suites/NAME.yaml, configs/scenarios/NAME.yaml); default "
                        f"{DEFAULT_SUITE!r}: the held-out scenarios")
    p.add_argument("--episodes", type=int, default=10, metavar="N",
                   help="seeded episodes per scenario (default 10)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the episodes (default 0)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="parallel processes (default 1; results do not depend on it)")
    p.add_argument("--best", action="store_true",
                   help="run folders: evaluate best_model.zip (with best_vecnormalize.pkl)")
    p.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                   help="include the oracle bound (default on; needed for normalised scores)")
    p.add_argument("--baseline", default="on_zap", metavar="NAME",
                   help="policy for the probability of improvement: a label or a heuristic "
                        "name, added if missing (default on_zap)")
    p.add_argument("--env", default=None, metavar="FILE",
                   help="env settings YAML (EnvConfig keys, an 'env:' section, or a run's "
                        "config.yaml); "
                        "default: the evaluated run's, else the defaults")
    p.add_argument("--timeline-scenario", default=None, metavar="NAME",
                   help="scenario whose episode 0 is plotted as a timeline (default: the first)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default 2000)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: a new folder under runs/eval/)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--trust-model", action="store_true",
                   help="allow models from outside runs/ (model zips hold pickles, which can "
                        "run code when loaded)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no tables on stdout (files are still written)")
    return p


def load_env_file(path: str | os.PathLike[str]) -> EnvConfig:
    """Env settings from a YAML file: a mapping of :class:`EnvConfig` fields,
    or a file with an ``env:`` section (an experiment) or an
    ``experiment.env`` one (a run's ``config.yaml``)."""
    data = load_yaml(path)
    where = Path(path).name
    if isinstance(data, Mapping) and isinstance(data.get("experiment"), Mapping) \
            and isinstance(data["experiment"].get("env"), Mapping):
        data, where = data["experiment"]["env"], f"{where}.experiment.env"
    elif isinstance(data, Mapping) and isinstance(data.get("env"), Mapping):
        data, where = data["env"], f"{where}.env"
    return build(EnvConfig, data, where)


def _load_env_config(path: str | None, specs: Sequence[PolicySpec]) -> EnvConfig:
    if path is not None:
        return load_env_file(path)
    envs = [(s, s.env) for s in specs if s.env is not None]
    if not envs:
        return EnvConfig()
    first_spec, first = envs[0]
    config = build(EnvConfig, first, f"{first_spec.label}: config.yaml.env")
    for s, e in envs[1:]:
        other = build(EnvConfig, e, f"{s.label}: config.yaml.env")
        if other != config:
            diff = next(f.name for f in dataclasses.fields(EnvConfig)
                        if getattr(other, f.name) != getattr(config, f.name))
            raise ConfigError(f"{first_spec.label} and {s.label} were trained with different env "
                              f"settings ({diff}); evaluate them separately or pass --env")
    return config


def _resolve_policies(args: argparse.Namespace) -> tuple[list[PolicySpec], str]:
    given = [parse_policy(a, best=args.best, trust_model=args.trust_model)
             for a in (args.policies or [f"heuristic:{h}" for h in HEURISTICS])]
    labels = [s.label for s in given]
    for lab in labels:
        if labels.count(lab) > 1:
            raise ConfigError(f"two policies are labelled {lab!r}; name them apart with "
                              "LABEL=SPEC")
        if lab == "oracle":
            raise ConfigError("the label 'oracle' is reserved for the oracle bound (--oracle); "
                              "choose another with LABEL=SPEC")
    specs: list[PolicySpec] = []
    by_label = {s.label: s for s in given}
    none = by_label.pop("none", None)
    if none is not None and (none.kind != "heuristic" or none.name != "none"):
        raise ConfigError("the label 'none' is reserved for the no-reclaim baseline; choose "
                          "another with LABEL=SPEC")
    specs.append(heuristic_spec("none"))
    baseline = args.baseline
    if baseline not in by_label and baseline != "none":
        if baseline in HEURISTICS:
            specs.append(heuristic_spec(baseline))
        else:
            known = [*by_label, "none", *HEURISTICS]
            raise ConfigError(f"--baseline {baseline!r} is neither an evaluated policy nor a "
                              f"heuristic{did_you_mean(baseline, known)}; known: "
                              f"{', '.join(dict.fromkeys(known))}")
    specs += [s for s in given if s.label != "none"]
    if args.oracle:
        specs.append(oracle_spec())
    return specs, baseline


def resolve_suite(suite: str) -> tuple[list[ScenarioConfig], list[Path]]:
    """The scenarios of ``suite`` and their files: a path to a suite YAML
    (``scenarios: [...]``) or to one scenario YAML, else the name of a shipped
    suite (``configs/suites/NAME.yaml``) or scenario."""
    p = Path(suite)
    if not p.exists() and p.suffix == "" and len(p.parts) == 1:
        for cand in (CONFIG_DIR / "suites" / f"{suite}.yaml",
                     CONFIG_DIR / "scenarios" / f"{suite}.yaml"):
            if cand.is_file():
                p = cand
                break
        else:
            known = sorted(x.stem for x in (CONFIG_DIR / "suites").glob("*.yaml"))
            raise ConfigError(f"--suite {suite!r}: no such file, nor a shipped suite or "
                              f"scenario{did_you_mean(suite, known)}; shipped suites: "
                              f"{', '.join(known)}")
    data = load_yaml(p)
    if isinstance(data, Mapping) and "workloads" in data and "scenarios" not in data:
        return [load_scenario(p)], [p.resolve()]
    return load_suite(p), suite_paths(p)


def _default_out(suite: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / "eval" / f"{Path(suite).stem}__{stamp}"
    out, k = base, 1
    while out.exists():
        out = base.with_name(f"{base.name}-{k}")
        k += 1
    return out


def _display(path: Path) -> str:
    """``path`` relative to the working folder or the shipped configs, if under one."""
    for base, prefix in ((Path.cwd(), ""), (CONFIG_DIR, "configs/")):
        try:
            return prefix + str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.episodes <= 100_000:
        raise ConfigError(f"--episodes: {args.episodes} is out of range; allowed [1, 100000]")
    if args.seed < 0:
        raise ConfigError(f"--seed: {args.seed} is out of range; use a seed >= 0")
    if not 1 <= args.jobs <= 1024:
        raise ConfigError(f"--jobs: {args.jobs} is out of range; allowed [1, 1024]")
    if not 100 <= args.bootstrap <= 1_000_000:
        raise ConfigError(f"--bootstrap: {args.bootstrap} is out of range; allowed "
                          "[100, 1000000]")


def _with_progress(run: Callable[[Callable[[int, int], None] | None], Any], total: int,
                   show: bool) -> Any:
    with progress_bar("episodes", total, show) as update:
        return run(None if update is None else lambda done, _total: update(done))


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_args(args)
    suite = args.suite or DEFAULT_SUITE
    specs, baseline = _resolve_policies(args)
    scenarios, suite_files = resolve_suite(suite)
    if not scenarios:
        raise ConfigError(f"{suite}: the suite lists no scenarios")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"{suite}: two scenarios share a name; names label the results")
    tl_index = 0
    if args.timeline_scenario is not None:
        if args.timeline_scenario not in names:
            raise ConfigError(f"--timeline-scenario {args.timeline_scenario!r} is not in the "
                              f"suite{did_you_mean(args.timeline_scenario, names)}; "
                              f"scenarios: {', '.join(names)}")
        tl_index = names.index(args.timeline_scenario)
    env_config = _load_env_config(args.env, specs)
    out = Path(args.out) if args.out else _default_out(suite)
    check_out_dir(out, OUTPUT_FILES, args.force)
    cmd = " ".join(shlex.quote(a) for a in [PROG, *argv])
    run_evaluation(specs, scenarios, env_config, out, suite=str(suite),
                   suite_files=[_display(p) for p in suite_files], episodes=args.episodes,
                   seed=args.seed, jobs=args.jobs, bootstrap=args.bootstrap, baseline=baseline,
                   oracle=args.oracle, timeline_index=tl_index, command=cmd, quiet=args.quiet)
    return 0


def run_evaluation(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                   env_config: EnvConfig, out: Path, *, suite: str, suite_files: Sequence[str],
                   episodes: int, seed: int, jobs: int = 1, bootstrap: int = 2000,
                   baseline: str = "on_zap", oracle: bool = True, timeline_index: int = 0,
                   command: str = "", quiet: bool = False,
                   ) -> tuple[list[EpisodeResult], list[PolicySummary]]:
    """Evaluate ``specs`` on ``scenarios`` and write the full report folder
    ``out`` (what ``evaluate.py`` writes; also used by ``export_thresholds.py``).

    Every policy is loaded first, so that a bad model fails before any work.
    Returns the episode results and the pooled summaries.
    """
    from . import report

    names = [s.name for s in scenarios]
    for s in specs:
        build_policy(s, env_config, scenarios[0])
    total = len(specs) * len(scenarios) * episodes
    show = not quiet and sys.stderr.isatty()
    t0 = time.perf_counter()
    results, timelines = _with_progress(
        lambda progress: evaluate_specs(specs, scenarios, episodes, seed, env_config,
                                        jobs, progress, timeline_index), total, show)
    wall = time.perf_counter() - t0
    ref = "oracle" if oracle else ""
    overall = summarize(results, "none", ref, bootstrap, seed, improvement_over=baseline)
    per_scen = summarize_by_scenario(results, "none", ref, bootstrap, seed,
                                     improvement_over=baseline)
    meta = {
        "suite": suite, "suite_files": list(suite_files),
        "scenarios": names, "episodes": episodes, "seed": seed,
        "seeds": {n: [episode_seed(seed, i, k) for k in range(episodes)]
                  for i, n in enumerate(names)},
        "baseline": baseline, "normalisation": {"zero": "none", "one": ref or None},
        "bootstrap": bootstrap,
        "timeline": {"scenario": names[timeline_index], "episode": 0,
                     "seed": episode_seed(seed, timeline_index, 0)},
        "env": to_dict(env_config), "policies": [s.describe() for s in specs],
    }
    out.mkdir(parents=True, exist_ok=True)
    files = report.render_all(results, overall, per_scen, timelines, meta)
    files["command.txt"] = f"{command}\n# cwd: {os.getcwd()}\n"
    files["config.yaml"] = dump_yaml(meta)
    for name in OUTPUT_FILES:
        write_text_atomic(out / name, files[name])
    if not quiet:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 130)
        for table in report.rich_tables(overall, per_scen, meta):
            console.print(table)
        console.print(f"{len(results)} episodes in {wall:.1f} s; wrote {out}/: "
                      f"{', '.join(OUTPUT_FILES)}")
    return results, overall


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
