"""What a job asks for: the request schema of each job kind, and its checks.

A job spec is JSON, one of four kinds (``kind``): ``tune`` a heuristic,
``train`` an agent, ``evaluate`` policies, ``export`` thresholds from a
trained run.  Its scenarios come from ``input``: a shipped suite or scenario
by name, an uploaded scenario YAML, or an uploaded trace (``.npz``) that
becomes a trace-workload scenario (:mod:`.uploads`).  Every job has budget
caps (trials, timesteps, wall time) that the server bounds (:class:`Limits`).

:func:`check_spec` turns a parsed spec into the stored one, or raises
:class:`BadRequest` with one line that names the field and the fix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

__all__ = [
    "BadRequest",
    "EvaluateJob",
    "ExportJob",
    "JobSpec",
    "Limits",
    "ShippedInput",
    "TraceInput",
    "TrainJob",
    "TuneJob",
    "parse_spec",
]

#: A bare name: a shipped suite, scenario or experiment, a job id.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
#: Control characters (C0, DEL, C1): never in a label shown on the pages.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The shortest wall-time cap a job may ask for: less cannot even start one.
MIN_WALL_SECONDS = 1.0
#: The largest seed a spec takes (the samplers' and numpy's seed range).
MAX_SEED = 2**31


class BadRequest(Exception):
    """A request the service refuses: an HTTP status and one line."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """The server's caps on what one job may ask for."""

    max_trials: int = 200
    max_timesteps: int = 2_000_000
    max_wall_seconds: float = 6 * 3600.0
    max_episodes: int = 200
    max_yaml_bytes: int = 256 * 1024
    max_trace_bytes: int = 64 * 1024 * 1024


class _Base(BaseModel):
    # Strict: a string or a bool where a number belongs (``"trials": "3"``,
    # ``"trials": true``) is refused, not converted; no NaN or infinity either.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ShippedInput(_Base):
    """A suite or scenario shipped with ptreclaim (``configs/suites``,
    ``configs/scenarios``), by name."""

    source: Literal["shipped"] = "shipped"
    name: str = Field(pattern=NAME, description="e.g. 'train', 'test', 'redis_jemalloc'")


class ScenarioInput(_Base):
    """The scenario YAML uploaded with the job (multipart field ``scenario``)."""

    source: Literal["scenario"] = "scenario"


class TraceInput(_Base):
    """The trace uploaded with the job (multipart field ``trace``, a ``.npz``
    written by ``scripts/capture_trace.py``), replayed by ``copies``
    processes started ``ticks / (copies + 1)`` apart on the machine of the
    shipped ``heldout_real_traces`` scenario, each looping the trace."""

    source: Literal["trace"] = "trace"
    copies: int = Field(4, ge=1, le=16, description="processes replaying the trace")
    speed: float = Field(1.0, gt=0.0, le=100.0, description="trace time per simulated time")
    ticks: int = Field(900, ge=10, le=20_000, description="length of an episode's scenario")


InputSpec = Annotated[ShippedInput | ScenarioInput | TraceInput, Field(discriminator="source")]


class _Job(_Base):
    label: str = Field("", max_length=100, description="a name to show in lists (printable "
                                                       "text: no control characters)")
    wall_seconds: float | None = Field(
        None, ge=MIN_WALL_SECONDS,
        description="wall-time cap over all attempts, at least 1 s (default: the server's cap)")

    @field_validator("label")
    @classmethod
    def _printable(cls, value: str) -> str:
        bad = CONTROL.search(value)
        if bad is not None:
            raise ValueError(f"control character {bad.group()!r} at position {bad.start()}; "
                             "use printable text")
        return value


class TuneJob(_Job):
    """Tune a heuristic's thresholds with Optuna (``scripts/tune.py heuristic``)."""

    kind: Literal["tune"] = "tune"
    target: str = Field("soft_hard", description="the heuristic: soft_hard or periodic_scan")
    trials: int = Field(20, ge=1, description="trials in all (the budget cap)")
    seeds: int = Field(3, ge=1, le=1000, description="episode seeds per scenario and trial")
    allow_few_seeds: bool = Field(False, description="allow seeds 1 or 2")
    episodes: int = Field(1, ge=1, le=1000, description="episodes per scenario and seed")
    sampler: Literal["tpe", "cmaes", "random"] = "tpe"
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sampler seed")
    input: InputSpec = Field(default_factory=lambda: ShippedInput(name="train"))


class TrainJob(_Job):
    """Train an agent (``scripts/train.py``) from a shipped experiment or the
    uploaded one (``experiment: upload``, multipart field ``experiment``)."""

    kind: Literal["train"] = "train"
    experiment: str = Field("default", pattern=NAME,
                            description="a shipped experiment name, or 'upload'")
    algo: str | None = Field(None, pattern=NAME)
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        default_factory=lambda: [0], min_length=1, max_length=8)
    timesteps: int = Field(ge=1, description="training steps per seed (the budget cap: "
                                             "seeds x timesteps)")
    overrides: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list, max_length=50, description="key=value, as train.py --set")
    input: InputSpec | None = Field(None, description="training scenarios (default: the "
                                                      "experiment's)")
    eval_suite: str | None = Field(None, pattern=NAME,
                                   description="held-out suite (shipped name; default: the "
                                               "experiment's)")


class EvaluateJob(_Job):
    """Evaluate policies on the same seeded episodes (``scripts/evaluate.py``)."""

    kind: Literal["evaluate"] = "evaluate"
    policies: list[Annotated[str, Field(max_length=200)]] = Field(
        min_length=1, max_length=16,
        description="[LABEL=]heuristic:NAME, [LABEL=]job:<id> (a tune or export job's "
                    "thresholds, a train job's model) or [LABEL=]upload:thresholds")
    input: InputSpec = Field(default_factory=lambda: ShippedInput(name="test"))
    episodes: int = Field(5, ge=1, description="episodes per scenario (at most the server's "
                                               "cap: serve.py --max-episodes)")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    oracle: bool = True
    baseline: str = Field("on_zap", pattern=NAME)


class ExportJob(_Job):
    """Distil a train job's model into thresholds (``scripts/export_thresholds.py``)."""

    kind: Literal["export"] = "export"
    run_job: str = Field(description="the id of a finished train job")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="which seed's run (default: the first)")
    best: bool = False
    iterations: int | None = Field(None, ge=1, le=100)
    episodes: int | None = Field(None, ge=1, le=1000)
    eval_episodes: int | None = Field(
        None, ge=1, description="episodes per scenario of the rule's evaluation (at most the "
                                "server's cap: serve.py --max-episodes)")
    tree_depth: int = Field(0, ge=0, le=12)
    unseen: bool = Field(True, description="also evaluate the rule on the run's unseen suite "
                         "(eval.unseen_suite), as export_thresholds.py does; false: "
                         "--no-unseen")


JobSpec = Annotated[TuneJob | TrainJob | EvaluateJob | ExportJob, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)


#: What a strict field takes, for the complaint about a value of another type.
_EXPECTED = {"int_type": "an integer (e.g. 3)", "float_type": "a number (e.g. 1.5)",
             "bool_type": "true or false", "string_type": "a string",
             # The same, from text that spells none (the form's fields, not strict).
             "int_parsing": "an integer (e.g. 3)", "float_parsing": "a number (e.g. 1.5)",
             "bool_parsing": "true or false"}


def error_line(exc: ValidationError) -> str:
    """One line for pydantic's first complaint: ``field.path: message``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"])
    if err["type"] in _EXPECTED:
        got = json.dumps(err.get("input"), default=str)
        msg = f"expected {_EXPECTED[err['type']]}, not {got[:60]}"
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif err["type"] == "extra_forbidden":
        msg = "unknown field; see the job kinds in GET /openapi.json"
    elif err["type"] == "union_tag_invalid" or err["type"] == "union_tag_not_found":
        msg = f"{msg}; one of: tune, train, evaluate, export (input: shipped, scenario, trace)"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc or 'spec'}: {msg}{extra}"


def parse_spec(data: Any, strict: bool = True) -> TuneJob | TrainJob | EvaluateJob | ExportJob:
    """Validate a job spec's shape (types, ranges, unknown fields); the
    server's caps and the uploads are checked by :func:`check_spec`.  ``strict``
    false converts text that spells a number (the web form's fields; a spec stored
    before the types were strict)."""
    try:
        return _ADAPTER.validate_python(data, strict=strict)
    except ValidationError as exc:
        raise BadRequest(error_line(exc)) from None


def parse_spec_json(text: str | bytes) -> TuneJob | TrainJob | EvaluateJob | ExportJob:
    """:func:`parse_spec` of JSON text."""
    try:
        return _ADAPTER.validate_json(text)
    except ValidationError as exc:
        raise BadRequest(error_line(exc)) from None


def policy_parts(policy: str) -> tuple[str | None, str, str]:
    """``[LABEL=]SCHEME:VALUE`` -> (label, scheme, value)."""
    label, spec = (None, policy)
    head, sep, rest = policy.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", head) and ":" in rest:
        label, spec = head, rest
    scheme, _, value = spec.partition(":")
    return label, scheme, value


def policy_label(policy: str) -> str:
    """The label a spec's policy is reported under: its ``LABEL=``, else the
    heuristic's name, ``uploaded`` (``upload:thresholds``) or ``job-<first 8
    hex digits>`` (``job:<id>``)."""
    label, scheme, value = policy_parts(policy)
    if label:
        return label
    if scheme == "heuristic":
        return value
    if scheme == "upload":
        return "uploaded"
    return f"job-{value[:8]}"


def check_budget(spec: TuneJob | TrainJob | EvaluateJob | ExportJob, limits: Limits) -> None:
    """Refuse a job over the server's caps (one line naming the cap)."""
    if spec.wall_seconds is not None and spec.wall_seconds > limits.max_wall_seconds:
        raise BadRequest(f"wall_seconds: {spec.wall_seconds:g} exceeds this server's cap of "
                         f"{limits.max_wall_seconds:g} s (serve.py --max-wall-seconds)")
    if isinstance(spec, TuneJob) and spec.trials > limits.max_trials:
        raise BadRequest(f"trials: {spec.trials} exceeds this server's cap of "
                         f"{limits.max_trials} (serve.py --max-trials)")
    if isinstance(spec, TrainJob):
        total = spec.timesteps * len(spec.seeds)
        if total > limits.max_timesteps:
            raise BadRequest(f"timesteps: {spec.timesteps} x {len(spec.seeds)} seeds = {total} "
                             f"exceeds this server's cap of {limits.max_timesteps} "
                             "(serve.py --max-timesteps)")
    field, episodes = ("eval_episodes", spec.eval_episodes) if isinstance(spec, ExportJob) \
        else ("episodes", getattr(spec, "episodes", None))
    if not isinstance(spec, TrainJob) and episodes and episodes > limits.max_episodes:
        raise BadRequest(f"{field}: {episodes} exceeds this server's cap of "
                         f"{limits.max_episodes} (serve.py --max-episodes)")
