"""Experiments: what to train, on what, how long, and how to judge it.

An *experiment* (``configs/experiments/<name>.yaml``, :class:`ExperimentConfig`)
names the env id, the training and held-out evaluation scenarios, the
algorithm, seeds, budget, vectorisation, normalisation, evaluation and env
overrides; ``--set key=value`` overrides any key (typed, checked, with a
did-you-mean hint).  The algorithm's hyperparameters come from
:mod:`.hyperparams`.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym

from ...configs import CONFIG_DIR
from ...envs.configio import LIMITS, load_yaml, parse_yaml, resolve_suite, write_text_atomic
from ...envs.pagetable_env import EnvConfig
from ...envs.registration import DEFAULT_ID
from ...envs.sim.config import (
    ConfigError,
    build,
    check_range,
    clip,
    did_you_mean,
    quote,
    to_dict,
)
from ...envs.sim.simulator import ScenarioConfig
from ..heuristics import HEURISTICS
from ..loading import ALGOS, baseline_label, baseline_rule, baseline_spec, parse_policy

#: Policies of the final comparison, besides the learned ones.
BASELINES: tuple[str, ...] = ("none", "on_zap", "soft_hard", "periodic_scan")


class TrainError(ConfigError):
    """Bad input to training: printed as one ``error:`` line, exit status 2."""


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
    #: Processes for the baselines' episodes of the final evaluation (the oracle's are
    #: the slow ones); the results do not depend on it.  Seeds of a multi-seed run
    #: (``jobs`` > 1) split the baselines through the cache instead.
    jobs: int = 2
    #: Scenarios of families and combinations the training suite holds out (a suite name
    #: or path, e.g. ``unseen``; empty: none).  A multi-seed experiment runs every seed's
    #: final model and every baseline on them, ``unseen_episodes`` each, once the seeds
    #: are done: its report judges generalisation as it judges the held-out suite.
    unseen_suite: str = ""
    unseen_episodes: int = 5

    def __post_init__(self) -> None:
        check_range("eval.freq", self.freq, 0, 10**10)
        check_range("eval.episodes", self.episodes, 1, 10_000)
        check_range("eval.final_episodes", self.final_episodes, 1, 10_000)
        check_range("eval.seed", self.seed, 0, 2**31)
        check_range("eval.n_boot", self.n_boot, 100, 10**6)
        check_range("eval.jobs", self.jobs, 1, 256)
        check_range("eval.unseen_episodes", self.unseen_episodes, 1, 10_000)
        if self.select_on not in ("train", "eval"):
            raise ConfigError(f"eval.select_on: {self.select_on!r} is not 'train' (validation "
                              "episodes of the training scenarios) or 'eval' (the held-out "
                              "scenarios)")
        labels: list[str] = []
        for entry in self.baselines:
            if not isinstance(entry, str):
                raise ConfigError(f"eval.baselines: {entry!r} is not a string; an entry is a "
                                  "heuristic's name or LABEL=RULE (a thresholds file)")
            if entry not in HEURISTICS and "=" not in entry:
                raise ConfigError(f"eval.baselines: unknown heuristic {entry!r}"
                                  f"{did_you_mean(entry, HEURISTICS)}; known: "
                                  f"{', '.join(HEURISTICS)}; or LABEL=RULE, RULE a thresholds "
                                  ".yaml/.json (e.g. tuned_soft_hard=configs/rules/"
                                  "tuned_soft_hard.yaml)")
            labels.append(baseline_label(entry))
        for label in labels:
            if label == "oracle" or labels.count(label) > 1:
                raise ConfigError(f"eval.baselines: the label {label!r} is "
                                  + ("the oracle's (eval.oracle adds it)" if label == "oracle"
                                     else "given twice") + "; every baseline needs its own")

    @property
    def baseline_labels(self) -> list[str]:
        """The baselines' labels, as the results name them, without the oracle."""
        return [baseline_label(entry) for entry in self.baselines]

    @property
    def rivals(self) -> list[str]:
        """What the final evaluation runs besides the learned policies: every
        ``baselines`` entry, then ``oracle`` when ``oracle`` is on."""
        return list(self.baselines) + (["oracle"] if self.oracle else [])

    @property
    def rival_labels(self) -> list[str]:
        """:attr:`rivals` as the results label them."""
        return self.baseline_labels + (["oracle"] if self.oracle else [])


@dataclass(frozen=True)
class PretrainConfig:
    """Warm start (:mod:`.pretrain`): a rule plays ``steps`` decisions on the training
    envs and the policy is fitted to its actions (and the value head to its returns,
    ``value``) for ``epochs`` passes in minibatches of ``batch_size`` with Adam at
    ``learning_rate``, before PPO starts.  ``teacher`` empty: no warm start; else
    ``heuristic:NAME[:params.yaml]`` or a thresholds file (e.g. ``tune.py``'s
    ``best.yaml``), or several of these separated by commas: the envs are dealt among
    them in turn (env ``i`` follows teacher ``i mod k``), so the policy starts from
    their mixture and stays uncertain where they disagree.  Only on-policy
    algorithms with a stochastic actor (ppo, a2c)."""

    teacher: str = ""
    steps: int = 40_960
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 1e-3
    value: bool = True

    def __post_init__(self) -> None:
        check_range("pretrain.steps", self.steps, 1, 10**8)
        check_range("pretrain.epochs", self.epochs, 1, 10_000)
        check_range("pretrain.batch_size", self.batch_size, 1, 10**6)
        check_range("pretrain.learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        for one in self.teachers:
            try:
                spec = parse_policy(one)
            except ConfigError as exc:
                raise ConfigError(f"pretrain.teacher: {exc}") from None
            if spec.kind not in ("heuristic", "thresholds"):
                raise ConfigError(f"pretrain.teacher: {one!r} is a {spec.kind}; the "
                                  "teacher is a rule: heuristic:NAME[:params.yaml] or a "
                                  "thresholds .yaml/.json (e.g. runs/tune/periodic_scan/"
                                  "best.yaml), or several separated by commas")

    @property
    def teachers(self) -> tuple[str, ...]:
        """The rules named by ``teacher`` (empty: no warm start)."""
        return tuple(t.strip() for t in self.teacher.split(",")) if self.teacher else ()


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
    #: ``batched`` steps every env in one compiled call (FastVecEnv; same data as
    #: ``dummy``, see agents/training/fastvec.py) where the algorithm needs no action
    #: wrapper and the compiled core runs every scenario, else falls back to ``dummy``.
    vec_env: Literal["batched", "dummy", "subproc"] = "batched"
    #: Threads that step the batched env's envs (the caller and env_threads - 1 helpers,
    #: envs/sim/fast/pool.hpp): the same results for any number; faster in wall-clock time
    #: where a core would be idle, at the cost of the helpers' polling.  Keep 1 where the
    #: seeds' processes (``jobs``) already fill the cores.  Unused (and the run's first
    #: line says so) where the envs step through SB3's vector envs instead.
    env_threads: int = 1
    jobs: int = 1
    torch_threads: int = 1
    checkpoint_freq: int = 0  # steps between checkpoints; 0: only at the end and on Ctrl-C
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
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
        check_range("env_threads", self.env_threads, 1, 64)
        check_range("torch_threads", self.torch_threads, 1, 256)
        check_range("checkpoint_freq", self.checkpoint_freq, 0, 10**10)
        if not self.eval_suite:
            raise ConfigError("eval_suite: name the held-out scenarios (e.g. test)")


@dataclass
class Scenarios:
    """The resolved training and held-out scenarios."""

    train: list[ScenarioConfig]
    eval: list[ScenarioConfig]


def default_experiment_path() -> Path:
    """``configs/experiments/default.yaml``: the experiment of ``make run``."""
    return CONFIG_DIR / "experiments" / "default.yaml"


def coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; take numeric strings as numbers.
    An integer of more digits than the input limits allow is a
    :class:`ConfigError` (never an ``OverflowError``)."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        if re.fullmatch(r"[-+]?\d+", value):
            digits = len(value.lstrip("+-"))
            if digits > LIMITS.int_digits:
                raise ConfigError(f"{quote(value)}: an integer of {digits} digits (at most "
                                  f"{LIMITS.int_digits}); give a smaller number")
            return int(value)
        return float(value)
    return value


def _parse_value(raw: str) -> Any:
    """A typed ``--set`` value: YAML scalars and flow lists/maps, never eval,
    within the input limits of every YAML reader."""
    try:
        value = parse_yaml(raw, "the value") if raw.strip() else ""
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    return coerce_number(value)


def _resolve_suite_spec(spec: Any, base: Path) -> Any:
    """Paths (anything with a '/' or a .yaml suffix) become absolute, so a
    resolved config works from any folder; names stay names."""
    if isinstance(spec, str) and spec and ("/" in spec or spec.endswith((".yaml", ".yml"))):
        return str((base / spec).resolve())
    return spec


#: What a walk over an experiment's rule files does to each: (the file's path, its name in a
#: run's ``rules/``) -> the path to write in its place.
RuleMap = Callable[[str, str], str]


def _map_rule(rule: str, name: str, f: RuleMap) -> str:
    """One rule, a thresholds path or ``heuristic:NAME[:params.yaml]``, with ``f`` applied
    to the file it names (a heuristic without a params file names none)."""
    if rule.startswith("heuristic:"):
        heur, sep, params = rule[len("heuristic:"):].partition(":")
        return f"heuristic:{heur}{sep}{f(params, name) if params else ''}"
    return f(rule, name)


def _map_teacher(spec: Any, f: RuleMap) -> Any:
    """``pretrain.teacher`` (rules separated by commas) with ``f`` applied to each rule's
    file, the K-th named ``teacherK``."""
    if not isinstance(spec, str) or not spec:
        return spec
    rules = [one.strip() for one in spec.split(",")] if "," in spec else [spec]
    return ",".join(_map_rule(rule, f"teacher{k}", f) for k, rule in enumerate(rules))


def _map_baselines(entries: Any, f: RuleMap) -> Any:
    """``eval.baselines`` with ``f`` applied to the rule file of each ``LABEL=RULE``
    entry, named ``baseline_LABEL`` (a heuristic's name stays as it is)."""
    if not isinstance(entries, list | tuple):
        return entries
    out: list[Any] = []
    for entry in entries:
        split = baseline_rule(entry) if isinstance(entry, str) else None
        if split is not None:
            label, rule = split
            entry = f"{label}={_map_rule(rule, f'baseline_{label}', f)}"
        out.append(entry)
    return out


def _map_rules(data: Mapping[str, Any], f: RuleMap) -> dict[str, Any]:
    """An experiment's plain data with ``f`` applied to every rule file it names
    (``pretrain.teacher``, ``eval.baselines`` rules)."""
    out = dict(data)
    if isinstance(out.get("pretrain"), Mapping) and "teacher" in out["pretrain"]:
        out["pretrain"] = {**out["pretrain"],
                           "teacher": _map_teacher(out["pretrain"]["teacher"], f)}
    if isinstance(out.get("eval"), Mapping) and "baselines" in out["eval"]:
        out["eval"] = {**out["eval"], "baselines": _map_baselines(out["eval"]["baselines"], f)}
    return out


def _absolute(base: Path) -> RuleMap:
    """A rule file's path made absolute against ``base``, like the suites'."""
    return lambda path, _name: str((base / path).resolve())


def _resolve_teacher(spec: Any, base: Path) -> Any:
    """``pretrain.teacher``: a thresholds path, or the params file of
    ``heuristic:NAME:params.yaml``, made absolute like the suites; each of several
    separated by commas."""
    return _map_teacher(spec, _absolute(base))


def _resolve_baselines(entries: Any, base: Path) -> Any:
    """``eval.baselines``: the rule of each ``LABEL=RULE`` entry made absolute like the
    teacher's (a heuristic's name stays as it is)."""
    return _map_baselines(entries, _absolute(base))


def resolve_rule_paths(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """An experiment's plain data with the rule files it names (``pretrain.teacher``,
    ``eval.baselines`` rules) made absolute against ``base``, as :func:`load_experiment`
    does against the experiment file's folder; absolute paths stay as they are."""
    return _map_rules(data, _absolute(base))


#: The folder, in a run folder or a multi-seed experiment's folder, that holds copies of
#: the rule files its experiment names (:func:`snapshot_rules`).
RULES_DIR = "rules"


def snapshot_rules(data: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """An experiment's plain data (rule paths absolute, as :func:`load_experiment` makes
    them) with every rule file it names copied into ``folder``'s ``rules/`` and named by a
    path relative to ``folder``: ``rules/teacherK.EXT`` for the K-th teacher (or its
    ``heuristic:NAME:`` params file), ``rules/baseline_LABEL.EXT`` for a baseline's rule.
    A run folder then holds every file it needs to be resumed, evaluated or exported on
    another machine or checkout, and meets the rules as they were when it started, however
    the files change later (its reader resolves the paths with :func:`resolve_rule_paths`).
    The files are copied byte for byte, each written atomically."""
    def copy(rule: str, name: str) -> str:
        src = Path(rule)
        rel = f"{RULES_DIR}/{name}{src.suffix}"
        dst = folder / rel
        if src.resolve() != dst.resolve():
            try:
                body = src.read_bytes()
                dst.parent.mkdir(exist_ok=True)
                write_text_atomic(dst, body)
            except OSError as exc:
                raise TrainError(f"{rule}: cannot copy this rule file into {folder / RULES_DIR}"
                                 f" ({exc.strerror or exc}); check that it exists and is "
                                 "readable, and that the output folder is writable") from None
        return rel

    return _map_rules(data, copy)


def check_baseline_files(exp: ExperimentConfig) -> None:
    """Each ``eval.baselines`` rule read and checked now, before any training: a
    missing or bad file stops the run with one error, not its final evaluation."""
    for entry in exp.eval.baselines:
        try:
            baseline_spec(entry)
        except ConfigError as exc:
            raise TrainError(f"eval.baselines: {exc}") from None


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
    data = resolve_rule_paths(data, p.parent)
    if isinstance(data.get("eval"), dict) and "unseen_suite" in data["eval"]:
        data["eval"] = {**data["eval"], "unseen_suite": _resolve_suite_spec(
            data["eval"]["unseen_suite"], p.parent)}
    if not data.get("name"):
        data["name"] = p.stem
    exp = build(ExperimentConfig, data, p.name)
    for label, item in sets:
        if "=" not in item:
            raise TrainError(f"{label} {quote(item)}: expected key=value (e.g. "
                             "env.decision_ticks=20)")
        key, raw = item.split("=", 1)
        key = key.strip()
        # `--set k=v` names the item; a flag (`--algo x`) arrives with its own label.
        where = f"{label} {clip(item)}" if label == "--set" else label
        try:
            value = _parse_value(raw)
        except TrainError as exc:
            raise TrainError(f"{where}: {exc}") from None
        if key in ("train_suite", "eval_suite", "algo_config"):
            value = _resolve_suite_spec(value, Path.cwd())
        if key == "pretrain.teacher":
            value = _resolve_teacher(value, Path.cwd())
        if key == "eval.baselines":
            value = _resolve_baselines(value, Path.cwd())
        if key == "eval.unseen_suite":
            value = _resolve_suite_spec(value, Path.cwd())
        _set_path(data, key, value, where)
        try:
            exp = build(ExperimentConfig, data, "experiment")
        except ConfigError as exc:
            raise TrainError(f"{where}: {exc}") from None
    # Checked once every override is in, so that `--algo dqn --set pretrain.teacher=`
    # works whichever comes first.
    if exp.pretrain.teacher and exp.algo not in ("ppo", "a2c"):
        raise TrainError(f"pretrain.teacher: a warm start needs ppo or a2c (a stochastic "
                         f"actor fitted by likelihood), not {exp.algo}; train ppo, or add "
                         f"--set pretrain.teacher= (empty) to train {exp.algo} without one")
    learned = {exp.algo, f"{exp.algo}_best"} & set(exp.eval.baseline_labels)
    if learned:
        raise TrainError(f"eval.baselines: the label {sorted(learned)[0]!r} is the learned "
                         "policy's; give the baseline another label")
    check_baseline_files(exp)
    if exp.eval.unseen_suite:
        load_scenarios(exp.eval.unseen_suite, "eval.unseen_suite")  # a bad suite stops now
    if len(exp.pretrain.teachers) > exp.n_envs:
        raise TrainError(f"pretrain.teacher: {len(exp.pretrain.teachers)} teachers for "
                         f"n_envs {exp.n_envs}; each teacher plays in its own envs: name "
                         f"at most {exp.n_envs} rules, or raise n_envs")
    return exp, to_dict(exp)




def load_scenarios(spec: str, label: str) -> list[ScenarioConfig]:
    """Scenarios from a shipped suite/scenario name or a suite/scenario file
    (:func:`~ptreclaim.envs.configio.resolve_suite`)."""
    return resolve_suite(spec, label)[0]


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
