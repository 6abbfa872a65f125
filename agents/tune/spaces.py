"""Search spaces: the parameters Optuna samples, and the defaults as trial 0.

Heuristics (``soft_hard``, ``periodic_scan``) sample every knob of env v1 (pressure
triggers, per-level budget, class depth and idle requirement, the target among the
top consumers, the hard-limit rule) so that every trial is valid: the soft limit as a
share of the hard one, and the soft level as a step down from the hard one (at most
its budget and depth, at least its idle requirement), so the levels are monotone by
construction.  Agents sample rl-zoo style hyperparameters whose choices include the
shipped algo YAML, so the defaults can run as trial 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...envs.pagetable_env import EnvConfig
from ..heuristics import ACTION_HIGHS, PeriodicParams, SoftHardParams, TargetParams
from ..loading import ALGOS

if TYPE_CHECKING:
    import optuna

#: Heuristics with parameters to tune.
HEURISTIC_TARGETS = ("soft_hard", "periodic_scan")
#: Agents whose hyperparameters can be tuned (the algorithms training takes).
AGENT_TARGETS = ALGOS
TARGET_BY = ["ratio", "growth", "size"]


def _budget_max(env_config: EnvConfig) -> int:
    """Largest budget index both the env's action space and the heuristics accept."""
    return min(len(env_config.budgets) - 1, ACTION_HIGHS[0])


def _idle_max(env_config: EnvConfig) -> int:
    """Largest idle-level index both the env and the heuristics accept."""
    return min(len(env_config.idle_levels) - 1, ACTION_HIGHS[2])


def _suggest_target(trial: optuna.Trial, env_config: EnvConfig) -> dict[str, Any]:
    """The :class:`TargetParams` knobs: who is a suspect, which one is the target, and
    (only when the env offers the hard-limit action) the hard-limit rule, whose
    thresholds are sampled only when it is on."""
    p: dict[str, Any] = {
        "proc_ratio": trial.suggest_float("proc_ratio", 0.05, 0.99),
        "proc_pt_frac": trial.suggest_float("proc_pt_frac", 1e-4, 0.2, log=True),
        "target_by": trial.suggest_categorical("target_by", TARGET_BY),
    }
    if env_config.hard_limit_action:
        p["use_hard_limit"] = trial.suggest_categorical("use_hard_limit", [False, True])
        if p["use_hard_limit"]:
            p["limit_ratio"] = trial.suggest_float("limit_ratio", 0.5, 0.999)
            p["limit_growth"] = trial.suggest_float("limit_growth", 0.0, 1.0)
            p["limit_refault"] = trial.suggest_float("limit_refault", 0.0, 1.0)
    return p


def _default_target(d: TargetParams, env_config: EnvConfig) -> dict[str, Any]:
    """The search-space parameters of ``d``'s target knobs."""
    out: dict[str, Any] = {"proc_ratio": d.proc_ratio, "proc_pt_frac": d.proc_pt_frac,
                           "target_by": d.target_by}
    if env_config.hard_limit_action:
        out["use_hard_limit"] = d.use_hard_limit
        if d.use_hard_limit:
            out.update(limit_ratio=d.limit_ratio, limit_growth=d.limit_growth,
                       limit_refault=d.limit_refault)
    return out


def suggest_soft_hard(trial: optuna.Trial, env_config: EnvConfig) -> dict[str, Any]:
    """Sample :class:`SoftHardParams` (as a mapping) for one trial.

    The soft limit is sampled as a share of the hard one (``soft_ratio``), so
    ``soft_pt_frac <= hard_pt_frac`` holds for every trial; the hard level's budget,
    depth and idle requirement are sampled, and the soft level's as steps down from
    them (``soft_budget_drop``, ``soft_depth_drop``, ``soft_idle_extra``), so the hard
    level is never milder than the soft one and no trial is wasted on an invalid
    combination.
    """
    n, ni = _budget_max(env_config), _idle_max(env_config)
    hard = trial.suggest_float("hard_pt_frac", 0.005, 0.5, log=True)
    ratio = trial.suggest_float("soft_ratio", 0.0, 1.0)
    hard_budget = trial.suggest_int("hard_budget", 0, n)
    hard_depth = trial.suggest_int("hard_depth", 0, ACTION_HIGHS[1])
    hard_idle = trial.suggest_int("hard_idle", 0, ni)
    params: dict[str, Any] = {
        # Rounded so that a thresholds file shows 0.04, not 0.04000000000000001.
        "soft_pt_frac": min(hard, round(ratio * hard, 6)),
        "hard_pt_frac": hard,
        "soft_price": trial.suggest_float("soft_price", 0.0, 1.0),
        "free_trigger": trial.suggest_float("free_trigger", -0.25, 0.5),
        "psi_trigger": trial.suggest_float("psi_trigger", 0.0, 1.0),
        "refault_trigger": trial.suggest_float("refault_trigger", 0.0, 1.0),
        "suspect_soft": trial.suggest_categorical("suspect_soft", [True, False]),
        "soft_budget": max(0, hard_budget - trial.suggest_int("soft_budget_drop", 0, n)),
        "hard_budget": hard_budget,
        "soft_depth": max(0, hard_depth - trial.suggest_int("soft_depth_drop", 0,
                                                            ACTION_HIGHS[1])),
        "hard_depth": hard_depth,
        "soft_idle": min(ni, hard_idle + trial.suggest_int("soft_idle_extra", 0, ni)),
        "hard_idle": hard_idle,
    }
    params.update(_suggest_target(trial, env_config))
    return params


def default_soft_hard(env_config: EnvConfig) -> dict[str, Any]:
    """The search-space parameters of the default :class:`SoftHardParams`."""
    d = SoftHardParams()
    n, ni = _budget_max(env_config), _idle_max(env_config)
    hb, sb = min(d.hard_budget, n), min(d.soft_budget, n)
    hi, si = min(d.hard_idle, ni), min(d.soft_idle, ni)
    return {
        "hard_pt_frac": d.hard_pt_frac, "soft_ratio": round(d.soft_pt_frac / d.hard_pt_frac, 9),
        "hard_budget": hb, "hard_depth": d.hard_depth, "hard_idle": hi,
        "soft_price": d.soft_price, "free_trigger": d.free_trigger,
        "psi_trigger": d.psi_trigger, "refault_trigger": d.refault_trigger,
        "suspect_soft": d.suspect_soft, "soft_budget_drop": hb - sb,
        "soft_depth_drop": d.hard_depth - d.soft_depth, "soft_idle_extra": si - hi,
        **_default_target(d, env_config),
    }


def suggest_periodic(trial: optuna.Trial, env_config: EnvConfig) -> dict[str, Any]:
    """Sample :class:`PeriodicParams` (as a mapping) for one trial."""
    return {"every_ticks": trial.suggest_int("every_ticks", 1, 2000, log=True),
            "budget": trial.suggest_int("budget", 0, _budget_max(env_config)),
            "depth": trial.suggest_int("depth", 0, ACTION_HIGHS[1]),
            "idle": trial.suggest_int("idle", 0, _idle_max(env_config)),
            "min_price": trial.suggest_float("min_price", 0.0, 1.0),
            **_suggest_target(trial, env_config)}


def default_periodic(env_config: EnvConfig) -> dict[str, Any]:
    """The search-space parameters of the default :class:`PeriodicParams`."""
    d = PeriodicParams()
    return {"every_ticks": d.every_ticks, "budget": min(d.budget, _budget_max(env_config)),
            "depth": d.depth, "idle": min(d.idle, _idle_max(env_config)),
            "min_price": d.min_price, **_default_target(d, env_config)}


#: Heuristic -> (sampler of its parameters, its defaults in search-space terms).
HEURISTIC_SPACES: dict[str, tuple[Callable[[Any, EnvConfig], dict[str, Any]],
                                  Callable[[EnvConfig], dict[str, Any]]]] = {
    "soft_hard": (suggest_soft_hard, default_soft_hard),
    "periodic_scan": (suggest_periodic, default_periodic),
}

#: Algorithms with PPO's hyperparameters (rollout length, mini-batches, epochs, clipping).
_PPO_LIKE = ("ppo", "maskable_ppo", "recurrent_ppo")
#: Network presets for policy_kwargs.net_arch.
NET_ARCHS: dict[str, list[int]] = {"tiny": [32, 32], "small": [64, 64], "medium": [128, 128]}
GAMMAS = [0.9, 0.95, 0.98, 0.99, 0.995]
GAE_LAMBDAS = [0.8, 0.9, 0.92, 0.95, 0.98, 1.0]
MAX_GRAD_NORMS = [0.3, 0.5, 1.0, 2.0, 5.0]
#: Where VecNormalize clips the scaled reward (``normalize.clip_reward``, an experiment
#: setting, not a constructor argument).  SB3's default 10 flattens the rare large costs
#: (an OOM kill is charged 200 harm units, a burst of failed unmovable allocations more):
#: with the reward scaled to unit variance they land far beyond 10 and are cut, so the agent
#: sees a kill as a bad step, not a catastrophe.  1000 keeps them.
REWARD_CLIPS = [10.0, 1000.0]
#: Behaviour-cloning epochs of the warm start (``pretrain.epochs``), searched only when the
#: trials warm-start (``tune.py agent --warm-start``): how closely the clone keeps its
#: teacher decides how far PPO moves from it (docs/results.md "Choosing the warm start"
#: measured 1, 2 and 10 by hand; 5 sits between).
PRETRAIN_EPOCHS = [1, 2, 5, 10]


def suggest_agent(trial: optuna.Trial, algo: str, warm_start: bool = False
                  ) -> dict[str, Any]:
    """Sample an agent's search-space parameters (rl-zoo style).

    The choices include the shipped ``configs/algos/<algo>.yaml`` values, so
    the defaults can run as trial 0.  :func:`agent_hyperparams` turns the
    result into constructor hyperparameters.  With ``warm_start`` the trial also
    samples the warm start's behaviour-cloning epochs (``pretrain_epochs``, an
    experiment setting like ``reward_clip``).
    """
    p: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "lr_schedule": trial.suggest_categorical("lr_schedule", ["constant", "linear"]),
        "gamma": trial.suggest_categorical("gamma", GAMMAS),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCHS)),
        # Applies when the experiment normalises rewards (normalize.reward, the default).
        "reward_clip": trial.suggest_categorical("reward_clip", REWARD_CLIPS),
    }
    if algo in ("ppo", "maskable_ppo", "recurrent_ppo", "a2c"):
        p["gae_lambda"] = trial.suggest_categorical("gae_lambda", GAE_LAMBDAS)
        p["ent_coef"] = trial.suggest_float("ent_coef", 1e-6, 0.1, log=True)
        p["vf_coef"] = trial.suggest_float("vf_coef", 0.2, 1.0)
        p["max_grad_norm"] = trial.suggest_categorical("max_grad_norm", MAX_GRAD_NORMS)
        p["activation_fn"] = trial.suggest_categorical("activation_fn", ["tanh", "relu"])
    if algo in _PPO_LIKE:
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
    if warm_start:
        p["pretrain_epochs"] = trial.suggest_categorical("pretrain_epochs", PRETRAIN_EPOCHS)
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
        if key in ("lr_schedule", "net_arch", "activation_fn", "reward_clip",
                   "pretrain_epochs"):
            continue
        hp[key] = value
    lr = float(params["learning_rate"])
    hp["learning_rate"] = f"lin_{lr:.6g}" if params.get("lr_schedule") == "linear" else lr
    pk = dict(hp.get("policy_kwargs") or {})
    pk["net_arch"] = list(NET_ARCHS[str(params["net_arch"])])
    if "activation_fn" in params:
        pk["activation_fn"] = params["activation_fn"]
    hp["policy_kwargs"] = pk
    if algo in _PPO_LIKE and "n_steps" in hp and "batch_size" in hp:
        hp["batch_size"] = min(int(hp["batch_size"]), int(hp["n_steps"]) * n_envs)
    return hp


def default_agent(algo: str, hp: Mapping[str, Any], clip_reward: float = 10.0,
                  pretrain_epochs: int | None = None) -> dict[str, Any] | None:
    """The search-space parameters of the algo YAML's hyperparameters ``hp``, the
    experiment's ``normalize.clip_reward`` and, for warm-started trials, its
    ``pretrain.epochs``; None when one of them lies outside the space (then no default
    trial)."""
    if float(clip_reward) not in REWARD_CLIPS:
        return None
    out: dict[str, Any] = {"reward_clip": float(clip_reward)}
    if pretrain_epochs is not None:
        if pretrain_epochs not in PRETRAIN_EPOCHS:
            return None
        out["pretrain_epochs"] = int(pretrain_epochs)
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
