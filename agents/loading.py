"""Policies behind one interface, and the one loader of trained models.

Every policy -- an SB3 model, a heuristic, an exported thresholds rule, the
oracle bound -- exposes :class:`Policy`'s ``predict()`` (SB3's signature), so
one evaluator, one advisor and one simulator driver serve them all.

This module is the only one that loads pickled data: SB3 model zips (their
``data`` holds cloudpickled objects), VecNormalize statistics and replay
buffers all go through :func:`_pickled`, which can run code from the file
and is therefore the one trust gate: a file is loaded only when this machine's
ptreclaim wrote it (:mod:`ptreclaim.agents.trust`: a signed manifest of
SHA-256 digests in its folder) or when the user said ``--trust-model``.
Writers of pickled files go through :func:`write_pickled`, which signs them.
The API for other callers (the HTTP service): :func:`verify_run`,
:func:`sign_artifacts`, :func:`trust_run` and :class:`TrustError`.

It also holds the one algorithm registry (:data:`ALGOS`, :func:`algo_class`)
and the one parser of command-line policy specs (:func:`parse_policy`,
:func:`build_policy`), used by ``evaluate.py``, ``simulate.py``,
``export_thresholds.py``, ``tune.py`` and the live advisor.  A loaded model is put behind
the interface by :mod:`ptreclaim.agents.modelpolicy`.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..envs.configio import LIMITS, load_yaml, parse_json, write_text_atomic
from ..envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ..envs.sim.config import ConfigError, build, did_you_mean
from ..envs.sim.simulator import ScenarioConfig
from .export import read_thresholds
from .heuristics import HEURISTICS, make_heuristic, make_rule
from .modelpolicy import ObsNormalizedPolicy, env_nvec
from .oracle import OracleBound
from .runs import MODEL_FILES, model_label, parse_name, stats_for
from .trust import TrustError, pickled_files, sign_artifacts, verify_bytes, verify_folder

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize


class Policy(Protocol):
    """What every policy offers: SB3's ``predict``.  Returns the action(s) and
    the recurrent state (None for the policies here)."""

    def predict(self, observation: np.ndarray, state: Any = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]: ...


# ------------------------------------------------------------ algorithms

#: The SB3 algorithms ptreclaim trains, evaluates and tunes.
ALGOS: tuple[str, ...] = ("ppo", "a2c", "dqn", "maskable_ppo", "recurrent_ppo")
#: Other spellings a run's config.yaml may use -> the name in :data:`ALGOS`.
ALGO_ALIASES = {"maskableppo": "maskable_ppo", "ppo_mask": "maskable_ppo",
                "mppo": "maskable_ppo", "recurrentppo": "recurrent_ppo",
                "ppo_lstm": "recurrent_ppo", "lstm_ppo": "recurrent_ppo"}


def canonical_algo(name: str, where: str) -> str:
    """The :data:`ALGOS` name of ``name`` (any case, ``-`` or ``_``, an alias);
    :class:`ConfigError` naming ``where`` for an unknown one."""
    key = name.strip().lower().replace("-", "_")
    names = {**{a: a for a in ALGOS}, **ALGO_ALIASES}
    for k in (key, key.replace("_", "")):
        if k in names:
            return names[k]
    raise ConfigError(f"{where}: algorithm {name!r} is unknown{did_you_mean(key, names)}; "
                      f"known: {', '.join(ALGOS)}")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class of an :data:`ALGOS` name (imported lazily: torch is slow to load)."""
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
    if algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO
        return RecurrentPPO
    raise ConfigError(f"unknown algorithm {algo!r}{did_you_mean(algo, ALGOS)}; "
                      f"known: {', '.join(ALGOS)}")


def _single_thread_torch() -> None:
    """One intra-op thread: small MLPs run faster so, and the floating-point
    reduction order is then the same in every process (``--jobs``)."""
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------ pickled data

#: Replace the training-only schedules on load for evaluation: they are
#: pickled lambdas that need not unpickle across Python versions, and
#: evaluation never uses them.
_EVAL_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0,
                 "clip_range": lambda _: 0.0, "exploration_schedule": lambda _: 0.0}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or
    its type's name: what a one-line error shows of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def trust_note(what: str) -> None:
    """The one line on stderr that says ``--trust-model`` let ``what`` in
    unchecked (once per process and ``what``)."""
    if what in _NOTED:
        return
    _NOTED.add(what)
    tool = Path(sys.argv[0]).name or "ptreclaim"
    print(f"{tool}: note: --trust-model: {what} loaded without checking where it came from",
          file=sys.stderr)


_NOTED: set[str] = set()


def _pickled(path: str | os.PathLike[str], what: str, trusted: bool = False) -> bytes:
    """The trust gate: every load of pickled data passes here first (model
    zips, VecNormalize statistics, replay buffers), and the caller unpickles
    the bytes returned, never the file again.  Without ``trusted`` (the
    user's ``--trust-model``) the bytes must be what this machine's ptreclaim
    wrote (:func:`ptreclaim.agents.trust.verify_bytes`); :class:`TrustError`
    otherwise, one line naming the reason and the way out."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such {what} file")
    try:
        if trusted:
            return p.read_bytes()
        return verify_bytes(p)
    except TrustError as exc:
        raise TrustError(f"{exc}; {what} files hold pickles (code that runs when loaded), "
                         "and ptreclaim loads only those it wrote on this machine; pass "
                         "--trust-model if you trust their source") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from None


def write_pickled(root: str | os.PathLike[str], path: str | os.PathLike[str],
                  data: bytes) -> None:
    """Write pickled ``data`` to ``path`` (atomically) and sign it in
    ``root``'s manifest, so that :func:`_pickled` loads it later."""
    write_text_atomic(path, data)
    sign_artifacts(root, [path])


def verify_run(path: str | os.PathLike[str]) -> None:
    """Check that every pickled file of a run folder (models, statistics,
    checkpoints) was written by this machine's ptreclaim; :class:`TrustError`
    (one line) naming the first that was not.  For callers that hand a folder
    on (the HTTP service) before anything in it is loaded."""
    try:
        verify_folder(path)
    except TrustError as exc:
        raise TrustError(f"{exc}; a run folder is trusted only when this machine's ptreclaim "
                         "wrote it (scripts/train.py --resume DIR --trust-model adopts one "
                         "you trust)") from None


def verify_pickled(path: str | os.PathLike[str], what: str) -> None:
    """Check that one pickled file may be loaded (see :func:`_pickled`)
    without loading it; :class:`TrustError` or :class:`ConfigError`."""
    _pickled(path, what)


def trust_run(path: str | os.PathLike[str]) -> list[Path]:
    """Adopt a run folder the user trusts (``--trust-model``): sign every
    pickled file in it as if this machine had written it, after one line on
    stderr.  Returns the files signed."""
    files = pickled_files(path)
    if files:
        trust_note(f"the {len(files)} pickled files of {path} (now signed as this machine's)")
        sign_artifacts(path, files)
    return files


def loads_restricted(data: bytes, allowed: frozenset[tuple[str, str]], what: str) -> Any:
    """Unpickle ``data`` that may come from anywhere (a shared Optuna
    storage) but may only build the classes in ``allowed`` (module, name):
    any other global, a function to call included, is refused before it is
    looked up (the "restricting globals" recipe of the pickle docs)."""

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in allowed:
                raise TrustError(f"{what}: refers to {module}.{name}, which it may not hold; "
                                 "it was not written by Optuna (remove the study or its trial)")
            return super().find_class(module, name)

    try:
        return _Restricted(io.BytesIO(data)).load()
    except TrustError:
        raise
    except Exception as exc:  # a damaged pickle raises anything
        raise ConfigError(f"{what}: cannot be read ({type(exc).__name__}); remove the study "
                          "or its damaged trial") from None


def _load_sb3(path: str | os.PathLike[str], algo: str,
              custom_objects: Mapping[str, Any] | None = None, trusted: bool = False
              ) -> BaseAlgorithm:
    data = _pickled(path, "model", trusted)
    p = Path(path)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ConfigError(f"{p}: cannot load as a {algo} model (not a zip archive); pass a "
                          "model.zip saved by training")
    cls = algo_class(algo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.load(io.BytesIO(data), device="cpu",
                            custom_objects=dict(custom_objects) if custom_objects else None)
    except Exception as exc:  # SB3 raises many kinds for foreign or damaged archives
        raise ConfigError(f"{p}: cannot load as a {algo} model ({type(exc).__name__}: "
                          f"{first_line(exc)}); is it a complete model.zip saved by "
                          "training?") from None


def load_vecnormalize(path: str | os.PathLike[str], venv: VecEnv | None = None,
                      trusted: bool = False) -> VecNormalize:
    """VecNormalize statistics saved by a run, attached to ``venv`` if given
    (without one only ``normalize_obs`` works).  Flags are as saved: callers
    set ``training`` and ``norm_reward``.  ``trusted``: the user's
    ``--trust-model`` (see :func:`_pickled`)."""
    from stable_baselines3.common.vec_env import VecNormalize

    data = _pickled(path, "VecNormalize statistics", trusted)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vn = pickle.loads(data)
            if not isinstance(vn, VecNormalize):
                raise TypeError(f"holds a {type(vn).__name__}")
            if venv is not None:
                vn.set_venv(venv)
    except Exception as exc:  # pickle raises anything for a damaged file
        raise ConfigError(f"{path}: cannot load the VecNormalize statistics "
                          f"({type(exc).__name__}: {first_line(exc)}); they must come "
                          "from the same run and env as the model") from None
    return vn


def load_replay_buffer(model: Any, path: str | os.PathLike[str], trusted: bool = False) -> None:
    """Restore an off-policy model's replay buffer from a checkpoint."""
    data = _pickled(path, "replay buffer", trusted)
    try:
        model.load_replay_buffer(io.BytesIO(data))
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load the replay buffer ({type(exc).__name__}: "
                          f"{first_line(exc)}); resume from another checkpoint") from None


def _space_text(space: Any) -> str:
    return str(space).replace("\n", " ")


def load_model(path: str | os.PathLike[str], algo: str, env_config: EnvConfig,
               trusted: bool = False) -> BaseAlgorithm:
    """Load an SB3 model to go on training it: it must have exactly the
    spaces of this env config (:class:`ConfigError`, one line, for a missing,
    corrupt, untrusted or foreign file)."""
    from gymnasium import spaces

    model = _load_sb3(path, algo, trusted=trusted)
    env = PageTableReclaimEnv(ScenarioConfig(), env_config)
    obs: Any = env.observation_space
    act: Any = env.action_space
    if algo == "dqn":
        act = spaces.Discrete(math.prod(env_nvec(env_config)))
    if model.observation_space != obs or model.action_space != act:
        raise ConfigError(f"{path}: the model is from another env: it observes "
                          f"{model.observation_space} and acts in {model.action_space}, "
                          f"this run's env observes {obs} and acts in {act}")
    return model


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
    """Load an SB3 model to act with it (and its VecNormalize statistics, in
    eval mode: ``training=False``, ``norm_reward=False``), checking that it
    was trained for this env's observation and action spaces.  Sets torch to
    one intra-op thread first (see :func:`_single_thread_torch`)."""
    _single_thread_torch()
    env = PageTableReclaimEnv([scenario], env_config)
    model = _load_sb3(spec.path, spec.name, _EVAL_OBJECTS, spec.trusted)
    obs_shape = getattr(model.observation_space, "shape", None)
    if obs_shape != env.observation_space.shape:
        raise ConfigError(f"{spec.path}: trained for observations of shape {obs_shape}, but "
                          f"the env gives {env.observation_space.shape}; evaluate with the env "
                          "config it was trained with (--env, or keep the run's config.yaml)")
    shape = _action_shape(model.action_space, env, spec.path)
    normalize: Callable[[np.ndarray], np.ndarray] | None = None
    if spec.vecnormalize:
        from stable_baselines3.common.vec_env import DummyVecEnv

        vn = load_vecnormalize(spec.vecnormalize, DummyVecEnv([lambda: env]), spec.trusted)
        vn.training = False
        vn.norm_reward = False

        def normalize(obs: np.ndarray) -> np.ndarray:
            return np.asarray(vn.normalize_obs(obs))

    return ObsNormalizedPolicy(model, normalize, spec.label, shape)


# ------------------------------------------------------------ policy specs

_LABEL = re.compile(r"^[A-Za-z0-9_.+\-\[\]]+$")


@dataclass(frozen=True)
class PolicySpec:
    """A policy as the command line names it: enough to rebuild it in a
    worker process (policies themselves may not pickle).

    ``kind`` is ``heuristic``, ``thresholds``, ``model`` or ``oracle``;
    ``name`` the heuristic or the SB3 algorithm; ``params`` the heuristic's
    parameters; ``path`` the file it came from; ``vecnormalize`` the model's
    observation statistics (or ``""``); ``env`` the env config the model
    was trained with (from its run's ``config.yaml``), if known; ``trusted``
    that the user vouched for its pickled files (``--trust-model``): they are
    loaded without the signature check (:func:`_pickled`).
    """

    label: str
    kind: str
    name: str = ""
    params: Mapping[str, Any] | None = None
    path: str = ""
    vecnormalize: str = ""
    env: Mapping[str, Any] | None = None
    source: str = ""
    trusted: bool = False

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


def baseline_label(entry: str) -> str:
    """The label of one ``eval.baselines`` entry (:func:`baseline_spec`), read without
    opening its file: the heuristic's name, or LABEL of ``LABEL=RULE``."""
    label, _ = _split_label(entry)
    return entry if label is None else label


def baseline_rule(entry: str) -> tuple[str, str] | None:
    """``(LABEL, RULE)`` of an ``eval.baselines`` entry ``LABEL=RULE``, read without
    opening its file; None for a built-in heuristic's name."""
    label, rule = _split_label(entry)
    return None if label is None else (label, rule)


def baseline_spec(entry: str) -> PolicySpec:
    """One ``eval.baselines`` entry of an experiment, checked: a built-in heuristic's
    name (its default parameters), or ``LABEL=RULE`` with RULE a thresholds
    ``.yaml``/``.json`` or ``heuristic:NAME:params.yaml`` -- a tuned rule, such as the
    shipped ``configs/rules/*.yaml``.  Raises :class:`ConfigError`."""
    if entry in HEURISTICS:
        return heuristic_spec(entry)
    label, rule = _split_label(entry)
    if label is None or not rule:
        raise ConfigError(f"{entry!r}: not a built-in heuristic"
                          f"{did_you_mean(entry, HEURISTICS)} (known: {', '.join(HEURISTICS)}) "
                          "nor LABEL=RULE, RULE a thresholds .yaml/.json or "
                          "heuristic:NAME:params.yaml (e.g. tuned_soft_hard="
                          "configs/rules/tuned_soft_hard.yaml)")
    if not rule.startswith("heuristic:") and not Path(rule).exists():
        raise ConfigError(f"{entry!r}: {rule}: no such file; a baseline's rule is a "
                          "thresholds .yaml/.json (e.g. configs/rules/tuned_soft_hard.yaml, "
                          "or what tune.py and export_thresholds.py write) or "
                          "heuristic:NAME:params.yaml")
    if not rule.startswith("heuristic:") and (Path(rule).suffix.lower() == ".zip"
                                              or Path(rule).is_dir()):
        # Refused before anything is read: a model's files hold pickles.
        raise ConfigError(f"{entry!r}: {rule} is a model; a baseline is a rule (a thresholds "
                          ".yaml/.json or heuristic:NAME:params.yaml): compare trained models "
                          "with scripts/evaluate.py")
    return parse_policy(entry)


def oracle_spec() -> PolicySpec:
    """The spec of the oracle bound."""
    return PolicySpec("oracle", "oracle", "oracle", source="--oracle")


def _check_trust(model: Path, stats: Path | None, trust_model: bool) -> None:
    """Checked when the policy is named, before any work: the load itself
    (maybe in a worker process) checks again, on the bytes it unpickles."""
    if trust_model:
        trust_note(f"{model}" + (f" and {stats}" if stats is not None else ""))
        return
    _pickled(model, "model")
    if stats is not None:
        _pickled(stats, "VecNormalize statistics")


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


def _algo_from_zip(path: Path) -> str:
    """Guess the algorithm of a bare model.zip from its JSON ``data`` entry
    (reads no pickle)."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.getinfo("data").file_size > LIMITS.file_bytes:
                raise ValueError("its data entry is too large")
            data = parse_json(zf.read("data").decode("utf-8"), f"{path}: data")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not an SB3 model zip ({type(exc).__name__}: "
                          f"{first_line(exc)}); pass the model.zip a training run saved"
                          ) from None
    module = str(data.get("policy_class", {}).get("__module__", "")) \
        if isinstance(data.get("policy_class"), Mapping) else ""
    if "sb3_contrib" in module and "maskable" in module:
        return "maskable_ppo"
    if "sb3_contrib" in module and "recurrent" in module:
        return "recurrent_ppo"
    if ".dqn" in module or "exploration_initial_eps" in data:
        return "dqn"
    if "n_epochs" in data:
        return "ppo"
    if "normalize_advantage" in data:
        return "a2c"
    raise ConfigError(f"{path}: cannot tell which algorithm saved this model; put it in a run "
                      "folder whose config.yaml names the algo")


def _algo_from_name(folder: Path) -> str | None:
    parts = parse_name(folder.name)
    return parts[1] if parts else None


def _run_config(folder: Path) -> tuple[str | None, Mapping[str, Any] | None, bool]:
    """(algo, env mapping, whether ``normalize.obs`` was on) from a run folder's
    config.yaml, if it exists (a hand-written one included, so this is lenient where
    training's reader is strict)."""
    cfg = folder / "config.yaml"
    if not cfg.is_file():
        return _algo_from_name(folder), None, False
    data = load_yaml(cfg)
    algo = _algo_from_run_config(data)
    if algo is None:
        algo = _algo_from_name(folder)
    env, where, normalized = None, "env", False
    if isinstance(data, Mapping):
        # train.py writes experiment.env; a hand-written config may have a top-level env.
        exp = data.get("experiment")
        if isinstance(exp, Mapping) and exp.get("env") is not None:
            env, where = exp["env"], "experiment.env"
        else:
            env = data.get("env")
        norm = exp.get("normalize") if isinstance(exp, Mapping) else None
        normalized = isinstance(norm, Mapping) and norm.get("obs") is True
    if env is not None:
        if not isinstance(env, Mapping):
            raise ConfigError(f"{cfg}: '{where}' must be a mapping of env settings")
        build(EnvConfig, env, f"{cfg.name}.{where}")
    return algo, env, normalized


def _model_spec(label: str | None, model: Path, stats: Path | None, folder: Path,
                source: str, trust_model: bool) -> PolicySpec:
    _check_trust(model, stats, trust_model)
    algo, env, normalized = _run_config(folder)
    if normalized and stats is None:  # raw observations, every decision wrong, silently
        which = "best" if model.name == MODEL_FILES["best"][0] else "final"
        raise ConfigError(f"{model.with_name(MODEL_FILES[which][1])}: missing; "
                          "the run's config.yaml says the model was trained on normalised "
                          "observations (normalize.obs), and without their statistics it "
                          "cannot act; copy the run folder whole")
    algo = canonical_algo(algo, str(folder / "config.yaml")) if algo else _algo_from_zip(model)
    return PolicySpec(label or model_label(folder, model), "model", algo, None, str(model),
                      str(stats) if stats is not None else "", env, source, trust_model)


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


def parse_policy(arg: str, *, best: bool = False, trust_model: bool = False) -> PolicySpec:
    """Turn one command-line policy into a checked :class:`PolicySpec`.

    ``[LABEL=]SPEC`` with SPEC one of: a run folder (its ``model.zip``, or
    ``best_model.zip`` with ``best``, and the matching VecNormalize stats);
    a ``*.zip`` model; a thresholds ``*.yaml``/``*.yml``/``*.json``;
    ``heuristic:NAME`` or ``heuristic:NAME:params.yaml``.  A model (and its
    statistics) must be trusted (:func:`_pickled`) unless ``trust_model``,
    which notes it on stderr.  Raises :class:`ConfigError`.
    """
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
        return _model_spec(label, model, stats_for(model), p, arg, trust_model)
    suffix = p.suffix.lower()
    if suffix == ".zip":
        return _model_spec(label, p, stats_for(p), p.parent, arg, trust_model)
    if suffix in (".yaml", ".yml", ".json"):
        record = read_thresholds(p)
        return PolicySpec(label or f"thresholds[{p.stem}]", "thresholds",
                          record.kind, dict(record.params), str(p), source=arg)
    raise ConfigError(f"{p}: not a policy (expected a run folder, a model .zip, a thresholds "
                      ".yaml/.json, or heuristic:NAME[:params.yaml])")



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
