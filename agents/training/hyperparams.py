"""An algorithm's hyperparameters: from the algo YAML, checked, made real.

``configs/algos/<algo>.yaml`` maps env ids (and ``default``) to the
constructor arguments of the SB3 algorithm; an experiment's
``hyperparams.<algo>`` overrides them key by key.  Unknown keys get a
did-you-mean hint, keys the pipeline sets itself are refused, values are
range-checked (:data:`RANGES`, the policy, ``policy_kwargs`` and the checks that
combine keys) before any work starts, and ``lin_<x>`` schedules become functions
only when the model is built.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ...configs import CONFIG_DIR
from ...envs.configio import load_yaml
from ...envs.sim.config import ConfigError, check_range, did_you_mean, quote
from ..loading import algo_class
from .config import ExperimentConfig, coerce_number

#: Hyperparameters that accept a ``lin_<x>`` schedule (x decays linearly to 0).
SCHEDULE_KEYS = frozenset({"learning_rate", "clip_range", "clip_range_vf"})
#: Constructor arguments the pipeline sets itself (not hyperparameters).
PIPELINE_KEYS = frozenset({"env", "seed", "device", "verbose", "tensorboard_log",
                           "_init_setup_model", "stats_window_size"})
ACTIVATIONS = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")
#: The policy of each algorithm: the observation is one flat vector, so SB3's MLP
#: policy (sb3-contrib's LSTM one for RecurrentPPO); Cnn* wants images, MultiInput* dicts.
POLICIES = {"ppo": "MlpPolicy", "a2c": "MlpPolicy", "dqn": "MlpPolicy",
            "maskable_ppo": "MlpPolicy", "recurrent_ppo": "MlpLstmPolicy"}
#: Algorithms with PPO's mini-batches (SB3 asserts batch_size > 1 when normalising
#: advantages; sb3-contrib's take None, one batch of the whole rollout).
PPO_LIKE = ("ppo", "maskable_ppo", "recurrent_ppo")
#: Allowed ranges of numeric hyperparameters, key -> (lo, hi, lo open, integer): from
#: SB3's own assertions (batch_size, n_steps x n_envs, clip_range_vf > 0, train_freq > 0)
#: and its documented meanings (rates and coefficients >= 0, gamma, gae_lambda, tau and
#: epsilons in [0, 1], exploration_fraction in (0, 1]: its schedule divides by it);
#: the upper bounds of counts only catch typos (no machine holds more).
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "learning_rate": (0.0, None, True, False),
    "n_steps": (1, 10**6, False, True),
    "batch_size": (1, 10**7, False, True),
    "n_epochs": (1, 10**4, False, True),
    "gamma": (0.0, 1.0, False, False),
    "gae_lambda": (0.0, 1.0, False, False),
    "clip_range": (0.0, None, True, False),
    "clip_range_vf": (0.0, None, True, False),
    "ent_coef": (0.0, None, False, False),
    "vf_coef": (0.0, None, False, False),
    "max_grad_norm": (0.0, None, True, False),
    "target_kl": (0.0, None, True, False),
    "rms_prop_eps": (0.0, None, True, False),
    "sde_sample_freq": (-1, 10**10, False, True),
    "buffer_size": (1, 10**8, False, True),
    "learning_starts": (0, 10**10, False, True),
    "tau": (0.0, 1.0, False, False),
    "target_update_interval": (1, 10**10, False, True),
    "exploration_fraction": (0.0, 1.0, True, False),
    "exploration_initial_eps": (0.0, 1.0, False, False),
    "exploration_final_eps": (0.0, 1.0, False, False),
}
#: Keys that may be null (SB3's "off" or default).
NULLABLE = frozenset({"clip_range_vf", "target_kl"})
#: Keys that are true or false.
BOOLS = frozenset({"normalize_advantage", "use_rms_prop", "use_sde", "optimize_memory_usage"})
#: policy_kwargs that are numbers (lo, hi, integer) or true/false.
POLICY_RANGES: dict[str, tuple[float, float, bool]] = {
    "lstm_hidden_size": (1, 10**4, True), "n_lstm_layers": (1, 100, True),
    "log_std_init": (-100.0, 100.0, False)}
POLICY_BOOLS = frozenset({"ortho_init", "full_std", "use_expln", "squash_output",
                          "share_features_extractor", "normalize_images", "shared_lstm",
                          "enable_critic_lstm"})
#: The widest layer and the most layers of policy_kwargs.net_arch.
MAX_WIDTH, MAX_LAYERS = 10**4, 100


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
    hp = {str(k): coerce_number(v) for k, v in entry.items()}
    where = f"{path.name}[{exp.env_id if exp.env_id in data else 'default'}]"
    _check_values(exp.algo, hp, where)
    overrides = {k: coerce_number(v) for k, v in exp.hyperparams.get(exp.algo, {}).items()}
    over = f"hyperparams.{exp.algo}"
    _check_values(exp.algo, overrides, over)
    hp.update(overrides)
    # Keys that work only together, checked on the result (an override may fix the file's).
    _check_combined(exp.algo, hp, exp.n_envs,
                    lambda key: f"{over if key in overrides else where}.{key}")
    return hp


def _check_finite(value: Any, where: str) -> None:
    """No inf or nan anywhere in a hyperparameter (lists and mappings too):
    training would only turn them into NaN weights much later."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {quote(value)} is not a finite number; give a finite "
                          "value")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def validate_hyperparams(algo: str, hp: Mapping[str, Any], where: str,
                         n_envs: int | None = None) -> None:
    """Reject unknown keys (with a hint), pipeline-owned keys, values that
    are not finite, out of range (:data:`RANGES`) or of the wrong type, a policy
    or ``policy_kwargs`` SB3 would refuse, bad schedules, and keys that do not
    work together (with ``n_envs``, when known: the rollout ``n_steps x n_envs``).
    ``hp`` is a whole set (keys it lacks take SB3's defaults)."""
    _check_values(algo, hp, where)
    _check_combined(algo, hp, n_envs, lambda key: f"{where}.{key}")


def _check_values(algo: str, hp: Mapping[str, Any], where: str) -> None:
    """The checks of :func:`validate_hyperparams` that look at one key at a time."""
    allowed = _algo_params(algo)
    for key, value in hp.items():
        _check_finite(value, f"{where}.{key}")
        if key in PIPELINE_KEYS:
            raise ConfigError(f"{where}.{key}: set by the pipeline, not a hyperparameter "
                              "(seeds: --seed; logs: the run folder)")
        if key not in allowed:
            raise ConfigError(f"{where}: unknown {algo} hyperparameter {key!r}"
                              f"{did_you_mean(key, allowed)}")
        at = f"{where}.{key}"
        if key == "policy":
            _check_policy(algo, value, at)
        elif key == "policy_kwargs":
            _check_policy_kwargs(algo, value, at)
        elif key.endswith("_class"):
            raise ConfigError(f"{at}: a class cannot be given in a config; drop it (SB3's "
                              "default)")
        elif key.endswith("_kwargs"):
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{at}: expected a mapping, got {quote(value)}")
        elif key in BOOLS:
            _check_bool(at, value)
            if key == "use_sde" and value:
                raise ConfigError(f"{at}: true needs continuous actions and these are "
                                  "discrete; set it to false")
        elif key == "train_freq":
            _check_train_freq(value, at)
        elif key == "gradient_steps":
            # -1: as many gradient steps as env steps in the rollout (SB3's docs).
            if not (isinstance(value, int) and value == -1):
                _check_number(at, value, 1, 10**6, integer=True,
                              hint=" (or -1: as many as the steps collected)")
        elif isinstance(value, str) and key in SCHEDULE_KEYS:
            lo, hi, lo_open, _ = RANGES[key]
            _check_number(at, _schedule_start(value, at), lo, hi, lo_open=lo_open,
                          what=f"{quote(value)} starts at")
        elif value is None and (key in NULLABLE or (key == "batch_size" and algo in (
                "maskable_ppo", "recurrent_ppo"))):
            continue
        elif key == "batch_size" and algo in PPO_LIKE:
            # Its lower bound (2 while advantages are normalised) is _check_combined's.
            _check_number(at, value, None, RANGES[key][1], integer=True)
        elif key in RANGES:
            lo, hi, lo_open, integer = RANGES[key]
            _check_number(at, value, lo, hi, lo_open=lo_open, integer=integer)


def _check_number(where: str, value: Any, lo: float | None, hi: float | None, *,
                  lo_open: bool = False, integer: bool = False, what: str = "",
                  hint: str = "") -> None:
    """:func:`check_range` of a number (an integer with ``integer``; never true or
    false), ``hint`` appended to its message."""
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, "
                          f"got {quote(value)}")
    try:
        check_range(where, value, lo, hi, lo_open=lo_open)
    except ConfigError as exc:
        msg = str(exc)
        if what:
            msg = msg.replace(f"{where}: ", f"{where}: {what} ", 1)
        raise ConfigError(msg + hint) from None


def _check_bool(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {quote(value)}")


def _check_policy(algo: str, value: Any, where: str) -> None:
    """The one policy SB3 can build for this env (a flat vector observation)."""
    name = POLICIES[algo]
    if value != name:
        raise ConfigError(f"{where}: {quote(value)} is not a policy {algo} can train here; "
                          f"use {name} (the observation is one flat vector)")


def _policy_args(algo: str) -> list[str]:
    """The ``policy_kwargs`` the algorithm's policy takes: its constructor
    arguments, less those the algorithm passes itself and classes."""
    cls = algo_class(algo).policy_aliases[POLICIES[algo]]
    own = {"self", "observation_space", "action_space", "lr_schedule", "use_sde"}
    return [n for n in inspect.signature(cls.__init__).parameters
            if n not in own and not n.endswith("_class")]


def _check_policy_kwargs(algo: str, value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    allowed = _policy_args(algo)
    for key, v in value.items():
        at = f"{where}.{key}"
        if key not in allowed:
            raise ConfigError(f"{where}: unknown {POLICIES[algo]} argument {quote(key)}"
                              f"{did_you_mean(str(key), allowed)}")
        if key == "activation_fn":
            if v not in ACTIVATIONS:
                raise ConfigError(f"{at}: {quote(v)} is not one of {', '.join(ACTIVATIONS)}"
                                  f"{did_you_mean(str(v), ACTIVATIONS)}")
        elif key == "net_arch":
            _check_net_arch(algo, v, at)
        elif key in POLICY_BOOLS:
            _check_bool(at, v)
        elif key in POLICY_RANGES:
            lo, hi, integer = POLICY_RANGES[key]
            _check_number(at, v, lo, hi, integer=integer)
        elif key.endswith("_kwargs") and v is not None and not isinstance(v, Mapping):
            raise ConfigError(f"{at}: expected a mapping, got {quote(v)}")
    # sb3-contrib's RecurrentActorCriticPolicy asserts both (enable_critic_lstm is true and
    # share_features_extractor true unless given).
    if value.get("shared_lstm") is True:
        if value.get("enable_critic_lstm", True) is True:
            raise ConfigError(f"{where}.shared_lstm: true needs enable_critic_lstm: false "
                              "(one LSTM for both, or a critic LSTM of its own)")
        if value.get("share_features_extractor", True) is False:
            raise ConfigError(f"{where}.shared_lstm: true needs share_features_extractor: "
                              "true")


def _check_net_arch(algo: str, value: Any, where: str) -> None:
    """Layer widths: a list of positive integers (actor and critic alike), or
    ``{pi: [...], vf: [...]}`` for the actor-critic algorithms (not DQN)."""
    shape = "a list of layer widths like [64, 64]" + (
        "" if algo == "dqn" else " or {pi: [64, 64], vf: [64, 64]}")
    if value is None:
        return
    if isinstance(value, Mapping) and algo != "dqn":
        for k, layers in value.items():
            if k not in ("pi", "vf"):
                raise ConfigError(f"{where}: unknown key {quote(k)}"
                                  f"{did_you_mean(str(k), ('pi', 'vf'))}; allowed: pi, vf")
            _check_layers(layers, f"{where}.{k}", shape)
        return
    _check_layers(value, where, shape)


def _check_layers(value: Any, where: str, shape: str) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected {shape}, got {quote(value)}")
    if len(value) > MAX_LAYERS:
        raise ConfigError(f"{where}: {len(value)} layers (at most {MAX_LAYERS})")
    for i, width in enumerate(value):
        _check_number(f"{where}[{i}]", width, 1, MAX_WIDTH, integer=True)


def _check_train_freq(value: Any, where: str) -> None:
    """DQN's ``train_freq``: steps between updates, or ``[n, step|episode]``."""
    if isinstance(value, list):
        if len(value) != 2 or value[1] not in ("step", "episode"):
            raise ConfigError(f"{where}: expected a number of steps or [n, step] / "
                              f"[n, episode], got {quote(value)}")
        value = value[0]
    _check_number(where, value, 1, 10**10, integer=True)


def _check_combined(algo: str, hp: Mapping[str, Any], n_envs: int | None,
                    where: Callable[[str], str]) -> None:
    """Keys that SB3 refuses (or turns into NaN) together; ``where(key)`` names
    the place a key was set."""
    normalize = hp.get("normalize_advantage", algo != "a2c")
    bs = hp.get("batch_size")
    if algo in PPO_LIKE and isinstance(bs, int):
        # SB3's PPO asserts batch_size > 1 (a one-sample mini-batch normalises to NaN).
        lo = 2 if normalize is True else 1
        _check_number(where("batch_size"), bs, lo, RANGES["batch_size"][1], integer=True,
                      hint=" (advantages are normalised per mini-batch)" if lo == 2 else "")
    n = hp.get("n_steps")
    if normalize is True and n_envs is not None and algo != "dqn" and isinstance(n, int) \
            and n * n_envs < 2:
        # SB3 asserts n_steps * n_envs > 1 (advantages normalised over the rollout).
        raise ConfigError(f"{where('n_steps')}: {n} x n_envs {n_envs} is a rollout of "
                          f"{n * n_envs} step; advantages are normalised over at least 2: "
                          "raise n_steps or n_envs")
    tf = hp.get("train_freq")
    if algo == "dqn" and n_envs is not None and n_envs > 1 and isinstance(tf, list) \
            and tf[1:] == ["episode"]:
        raise ConfigError(f"{where('train_freq')}: updates per episode need n_envs 1 (SB3), "
                          f"not {n_envs}; count steps: [{tf[0]}, step]")
    if algo == "dqn" and hp.get("optimize_memory_usage") is True:
        rb = hp.get("replay_buffer_kwargs") or {}
        if rb.get("handle_timeout_termination", True) is not False:
            raise ConfigError(f"{where('optimize_memory_usage')}: true needs "
                              "replay_buffer_kwargs: {handle_timeout_termination: false} "
                              "(SB3's ReplayBuffer cannot do both)")


def _schedule(value: str, where: str) -> Callable[[float], float]:
    """``lin_<x>``: x at the start, decaying linearly to 0 at the end."""
    x = _schedule_start(value, where)

    def linear(progress_remaining: float) -> float:
        return progress_remaining * x

    return linear


def _schedule_start(value: str, where: str) -> float:
    """The x of ``lin_<x>``."""
    m = re.fullmatch(r"lin_(.+)", value)
    try:
        start = coerce_number(m.group(1)) if m else None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        raise ConfigError(f"{where}: {quote(value)} is not a number nor a schedule like "
                          "'lin_3e-4'")
    x = float(start)
    if not math.isfinite(x):
        raise ConfigError(f"{where}: {quote(value)} does not start at a finite number; give "
                          "one like 'lin_3e-4'")
    return x


def materialize(algo: str, hp: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The policy name and the constructor keyword arguments of ``hp``."""
    import torch

    kwargs = dict(hp)
    policy = str(kwargs.pop("policy", POLICIES.get(algo, "MlpPolicy")))
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

