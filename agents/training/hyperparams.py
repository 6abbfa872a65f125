"""An algorithm's hyperparameters: from the algo YAML, checked, made real.

``configs/algos/<algo>.yaml`` maps env ids (and ``default``) to the
constructor arguments of the SB3 algorithm; an experiment's
``hyperparams.<algo>`` overrides them key by key.  Unknown keys get a
did-you-mean hint, keys the pipeline sets itself are refused, and
``lin_<x>`` schedules become functions only when the model is built.
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
from ...envs.sim.config import ConfigError, did_you_mean, quote
from ..loading import algo_class
from .config import ExperimentConfig, coerce_number

#: Hyperparameters that accept a ``lin_<x>`` schedule (x decays linearly to 0).
SCHEDULE_KEYS = frozenset({"learning_rate", "clip_range", "clip_range_vf"})
#: Constructor arguments the pipeline sets itself (not hyperparameters).
PIPELINE_KEYS = frozenset({"env", "seed", "device", "verbose", "tensorboard_log",
                           "_init_setup_model", "stats_window_size"})
ACTIVATIONS = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")


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
    validate_hyperparams(exp.algo, hp, where)
    overrides = {k: coerce_number(v) for k, v in exp.hyperparams.get(exp.algo, {}).items()}
    validate_hyperparams(exp.algo, overrides, f"hyperparams.{exp.algo}")
    hp.update(overrides)
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


def validate_hyperparams(algo: str, hp: Mapping[str, Any], where: str) -> None:
    """Reject unknown keys (with a hint), pipeline-owned keys, values that
    are not finite and bad schedules."""
    allowed = _algo_params(algo)
    for key, value in hp.items():
        _check_finite(value, f"{where}.{key}")
        if key in PIPELINE_KEYS:
            raise ConfigError(f"{where}.{key}: set by the pipeline, not a hyperparameter "
                              "(seeds: --seed; logs: the run folder)")
        if key not in allowed:
            raise ConfigError(f"{where}: unknown {algo} hyperparameter {key!r}"
                              f"{did_you_mean(key, allowed)}")
        if isinstance(value, str) and key != "policy":
            if key not in SCHEDULE_KEYS:
                raise ConfigError(f"{where}.{key}: expected a number, got {quote(value)}")
            _schedule(value, f"{where}.{key}")
        if key == "policy_kwargs":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}.policy_kwargs: expected a mapping")
            act = value.get("activation_fn")
            if act is not None and act not in ACTIVATIONS:
                raise ConfigError(f"{where}.policy_kwargs.activation_fn: {quote(act)} is not one "
                                  f"of {', '.join(ACTIVATIONS)}"
                                  f"{did_you_mean(str(act), ACTIVATIONS)}")


def _schedule(value: str, where: str) -> Callable[[float], float]:
    """``lin_<x>``: x at the start, decaying linearly to 0 at the end."""
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

