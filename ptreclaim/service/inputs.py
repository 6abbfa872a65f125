"""A job's inputs: uploaded files, shipped names, references to other jobs.

Uploads are checked when the job is submitted, with the readers every
command uses (so they get the same limits and one-line errors): a scenario or
experiment YAML through :mod:`ptreclaim.envs.configio`, a trace through
:func:`ptreclaim.envs.sim.trace.read_trace` (``allow_pickle=False``), a
thresholds file through :func:`ptreclaim.agents.export.read_thresholds`.
A model zip is refused unread: it holds pickles, and unpickling runs code.
An uploaded scenario may replay shipped traces only (a path in it would read
a file of the server's); an uploaded trace becomes a trace-workload scenario
(:func:`trace_scenario_data`).  Shipped suites, scenarios and experiments are
taken by bare name only, never by path.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..configs import CONFIG_DIR
from ..envs.configio import (
    load_scenario,
    load_yaml,
    parse_yaml,
    shipped_names,
    write_yaml_atomic,
)
from ..envs.sim.config import ConfigError
from .specs import (
    JOB_ID,
    BadRequest,
    EvaluateJob,
    ExportJob,
    Limits,
    ScenarioInput,
    ShippedInput,
    TraceInput,
    TrainJob,
    TuneJob,
    check_budget,
    policy_label,
    policy_parts,
)
from .store import Store

T = TypeVar("T")
AnySpec = TuneJob | TrainJob | EvaluateJob | ExportJob

#: Upload fields and the suffixes they take.
UPLOAD_SUFFIXES: dict[str, tuple[str, ...]] = {
    "scenario": (".yaml", ".yml"),
    "trace": (".npz",),
    "thresholds": (".yaml", ".yml", ".json"),
    "experiment": (".yaml", ".yml"),
}
#: The one name an upload of these fields is kept under (and read from, by the checks here
#: and the runner: :func:`input_path`), whatever the client called it (``s.yml`` too).
STORED_NAMES = {"scenario": "scenario.yaml", "trace": "trace.npz",
                "experiment": "experiment.yaml"}
#: Files that hold pickles: never accepted.
PICKLE_SUFFIXES = (".zip", ".pkl", ".pickle", ".pt", ".pth", ".joblib")
#: Experiment keys the service sets itself (from the spec, or from the worker that runs
#: the job: how many threads step its envs is the host's business), never a request.
MANAGED_KEYS = ("train_suite", "eval_suite", "algo_config", "seeds", "timesteps", "jobs",
                "checkpoint_freq", "env_threads")
#: The shipped scenario whose machine an uploaded trace runs on.
TRACE_MACHINE_FROM = "heldout_real_traces"
#: Where a job folder keeps its inputs.
INPUTS = "inputs"


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its form field, the client's file name, its bytes."""

    field: str
    filename: str
    data: bytes


def stored_name(field: str, filename: str) -> str:
    """The name an upload is kept under (never the client's name): the one of
    :data:`STORED_NAMES` (``scenario.yaml`` for ``s.yml`` too), or for a
    thresholds file ``thresholds`` with its suffix (``.json`` or YAML's),
    which tells its reader the format."""
    if field in STORED_NAMES:
        return STORED_NAMES[field]
    suffix = Path(filename).suffix.lower()
    allowed = UPLOAD_SUFFIXES[field]
    return field + (suffix if suffix in allowed else allowed[0])


def input_path(field: str) -> str:
    """Where a job's upload of ``field`` (scenario, trace, experiment) is in its folder."""
    return f"{INPUTS}/{STORED_NAMES[field]}"


def check_upload_field(field: str, filename: str, size: int, limits: Limits) -> None:
    """Refuse an unknown field, a pickle file, a wrong suffix or a file over the caps."""
    if Path(filename).suffix.lower() in PICKLE_SUFFIXES or field == "model":
        raise BadRequest(f"{field}: {filename!r} is refused: model files hold pickles, which "
                         "run code when loaded; train the model with a train job instead",
                         415)
    if field not in UPLOAD_SUFFIXES:
        raise BadRequest(f"unknown upload field {field!r}; allowed: "
                         f"{', '.join(UPLOAD_SUFFIXES)} (and 'spec', the job as JSON)")
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES[field]:
        raise BadRequest(f"{field}: {filename!r} is not a {'/'.join(UPLOAD_SUFFIXES[field])} "
                         "file", 415)
    cap = limits.max_trace_bytes if field == "trace" else limits.max_yaml_bytes
    if size > cap:
        raise BadRequest(f"{field}: {filename!r} is over this server's cap of {cap} bytes "
                         "(serve.py --max-upload-mib)", 413)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ptreclaim-upload-") as tmp:
        yield Path(tmp)


def _config_call(tmp: Path, fn: Callable[[], T]) -> T:
    """Run a reader; its ConfigError becomes a 422 without the scratch folder's path."""
    try:
        return fn()
    except ConfigError as exc:
        raise BadRequest(str(exc).replace(f"{tmp}/", "")) from None


def check_shipped(name: str, field: str) -> None:
    """``name`` must be a shipped suite or scenario."""
    known = shipped_names("suites") + shipped_names("scenarios")
    if name not in known:
        raise BadRequest(f"{field}: {name!r} is not a shipped suite or scenario; known: "
                         f"{', '.join(known)} (or upload a scenario or a trace)")


def scenario_traces_shipped(data: Any, where: str) -> None:
    """An uploaded scenario may replay shipped traces only."""
    from ..envs.sim.workloads.trace import shipped_traces

    workloads = data.get("workloads") if isinstance(data, Mapping) else None
    for i, w in enumerate(workloads if isinstance(workloads, list) else []):
        if isinstance(w, Mapping) and w.get("family") == "trace":
            params = w.get("params")
            name = params.get("trace") if isinstance(params, Mapping) else None
            if name is not None and name not in shipped_traces():
                raise BadRequest(f"{where}.workloads[{i}].params.trace: {name!r} is not a "
                                 f"shipped trace ({', '.join(shipped_traces())}); to replay "
                                 "your own, upload it as the job's trace input")


def check_scenario_upload(data: bytes) -> None:
    """Read an uploaded scenario like ``scripts/simulate.py`` would."""
    with _scratch() as tmp:
        path = tmp / "scenario.yaml"
        path.write_bytes(data)
        parsed = _config_call(tmp, lambda: load_yaml(path))
        scenario_traces_shipped(parsed, "scenario.yaml")
        _config_call(tmp, lambda: load_scenario(path))


def check_trace_upload(data: bytes) -> None:
    """Read an uploaded trace (numpy's zip, ``allow_pickle=False``)."""
    from ..envs.sim.trace import read_trace

    with _scratch() as tmp:
        path = tmp / "trace.npz"
        path.write_bytes(data)
        trace = _config_call(tmp, lambda: read_trace(path))
        if trace.samples < 2:
            raise BadRequest("trace.npz: fewer than 2 samples; record a longer trace")


def check_thresholds_upload(name: str, data: bytes) -> None:
    """Read an uploaded thresholds file like ``scripts/evaluate.py`` would."""
    from ..agents.export import read_thresholds

    with _scratch() as tmp:
        path = tmp / name
        path.write_bytes(data)
        _config_call(tmp, lambda: read_thresholds(path))


def trace_scenario_data(spec: TraceInput, trace_file: str) -> dict[str, Any]:
    """The scenario of an uploaded trace: ``spec.copies`` processes replaying
    it (looping), started evenly over the first part of the episode, on the
    machine of the shipped ``heldout_real_traces`` scenario (a small host
    close to its watermarks, so that page tables matter)."""
    template = load_yaml(CONFIG_DIR / "scenarios" / f"{TRACE_MACHINE_FROM}.yaml")
    gap = spec.ticks // (spec.copies + 1)
    return {
        "name": "uploaded_trace",
        "description": f"{spec.copies} replays of an uploaded trace at speed {spec.speed:g} "
                       f"on the machine of {TRACE_MACHINE_FROM}",
        "ticks": spec.ticks,
        "jitter": 0.1,
        "machine": template["machine"],
        "workloads": [{"family": "trace", "start_tick": i * gap,
                       "params": {"trace": trace_file, "speed": spec.speed, "end": "loop"}}
                      for i in range(spec.copies)],
    }


def experiment_sets(spec: TrainJob, train_suite: str | None, env_threads: int = 1
                    ) -> list[tuple[str, str]]:
    """The ``(label, key=value)`` overrides a train job applies to its
    experiment (what ``scripts/train.py --set`` takes); ``env_threads`` is the worker's
    (``worker.py --env-threads``)."""
    sets = [("--seeds", f"seeds=[{','.join(str(s) for s in spec.seeds)}]"),
            ("--timesteps", f"timesteps={spec.timesteps}"), ("--jobs", "jobs=1"),
            # A checkpoint every tenth of the run: a worker that dies loses at most that.
            ("service", f"checkpoint_freq={max(1, spec.timesteps // 10)}"),
            ("worker.py --env-threads", f"env_threads={env_threads}")]
    if spec.algo:
        sets.append(("--algo", f"algo={spec.algo}"))
    if train_suite:
        sets.append(("input", f"train_suite={train_suite}"))
    if spec.eval_suite:
        sets.append(("eval_suite", f"eval_suite={spec.eval_suite}"))
    return sets + [("--set", item) for item in spec.overrides]


def _check_teacher(value: Any, where: str) -> None:
    """A warm-start teacher from a request: none, or a built-in heuristic by name (with
    its default parameters); files on the server are not taken by path.  The shipped
    experiments' own teacher (a shipped rule) is set by their file, not by a request."""
    if value in (None, "") or (isinstance(value, str) and re.fullmatch(
            r"heuristic:[a-z_]+", value.strip())):
        return
    raise BadRequest(f"{where}: {str(value)[:80]!r}: the service takes a warm-start teacher "
                     "as heuristic:NAME only (files on the server are not taken by path); "
                     "drop it to keep the experiment's own")


def _check_baselines(value: Any, where: str) -> None:
    """Final-evaluation baselines from a request: built-in heuristics by name only; a
    rule file on the server is not taken by path (``LABEL=RULE``).  The shipped
    experiments' own (the shipped tuned rules) are set by their file, not by a request."""
    entries = value
    if isinstance(value, str):
        try:
            entries = parse_yaml(value, where) if value.strip() else []
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
    if entries is None:
        return
    if not isinstance(entries, list | tuple):
        entries = [entries]
    for entry in entries:
        if not (isinstance(entry, str) and re.fullmatch(r"[a-z_]+", entry.strip())):
            raise BadRequest(f"{where}: {str(entry)[:80]!r}: the service takes baselines as "
                             "built-in heuristic names only (rule files on the server are not "
                             "taken by path); drop it to keep the experiment's own")


def _check_train(spec: TrainJob, uploads: Mapping[str, bytes]) -> None:
    from ..agents.training.config import load_experiment

    for item in spec.overrides:
        key = item.split("=", 1)[0].strip()
        if key in MANAGED_KEYS or "=" not in item:
            raise BadRequest(f"overrides: {item!r}: " + (
                "expected key=value" if "=" not in item else
                f"{key} is set by the service from the job (seeds, timesteps, input, "
                "eval_suite) or by the worker that runs it (env_threads: worker.py "
                "--env-threads); remove it"))
        value = item.split("=", 1)[1].strip()
        if key == "pretrain.teacher":
            _check_teacher(value, "overrides: pretrain.teacher")
        if key == "pretrain":
            raise BadRequest("overrides: pretrain: set its keys one by one "
                             "(pretrain.teacher=heuristic:NAME, pretrain.steps=N)")
        if key == "eval.baselines":
            _check_baselines(value, "overrides: eval.baselines")
        if key == "eval.unseen_suite" and value:
            check_shipped(value, "overrides: eval.unseen_suite")
        if key == "eval":
            raise BadRequest("overrides: eval: set its keys one by one "
                             "(eval.final_episodes=N, eval.baselines=[NAME, ...])")
    if spec.eval_suite:
        check_shipped(spec.eval_suite, "eval_suite")
    with _scratch() as tmp:
        if spec.experiment == "upload":
            path = tmp / STORED_NAMES["experiment"]
            path.write_bytes(uploads[STORED_NAMES["experiment"]])
            data = _config_call(tmp, lambda: load_yaml(path))
            if isinstance(data, Mapping):
                for key in ("train_suite", "eval_suite"):
                    if data.get(key):
                        check_shipped(str(data[key]), f"experiment.yaml.{key}")
                if data.get("algo_config"):
                    raise BadRequest("experiment.yaml.algo_config: paths are not taken; put "
                                     "the hyperparameters under 'hyperparams:'")
                pre = data.get("pretrain")
                if isinstance(pre, Mapping):
                    _check_teacher(pre.get("teacher"), "experiment.yaml.pretrain.teacher")
                ev = data.get("eval")
                if isinstance(ev, Mapping) and "baselines" in ev:
                    _check_baselines(ev.get("baselines"), "experiment.yaml.eval.baselines")
                if isinstance(ev, Mapping) and ev.get("unseen_suite"):
                    check_shipped(str(ev["unseen_suite"]), "experiment.yaml.eval.unseen_suite")
        else:
            path = CONFIG_DIR / "experiments" / f"{spec.experiment}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in (CONFIG_DIR / "experiments").glob("*.yaml"))
                raise BadRequest(f"experiment: {spec.experiment!r} is not a shipped experiment;"
                                 f" known: {', '.join(known)} (or 'upload')")
        train_suite = None
        if isinstance(spec.input, ShippedInput):
            check_shipped(spec.input.name, "input.name")
            train_suite = spec.input.name
        elif isinstance(spec.input, ScenarioInput):
            train_suite = str(tmp / STORED_NAMES["scenario"])
            (tmp / STORED_NAMES["scenario"]).write_bytes(uploads[STORED_NAMES["scenario"]])
        elif isinstance(spec.input, TraceInput):
            trace = tmp / STORED_NAMES["trace"]
            trace.write_bytes(uploads[STORED_NAMES["trace"]])
            train_suite = str(tmp / "trace_scenario.yaml")
            write_yaml_atomic(train_suite, trace_scenario_data(spec.input, str(trace)))
        _config_call(tmp, lambda: load_experiment(path, experiment_sets(spec, train_suite)))


def _check_reference(store: Store, job_id: str, field: str, kinds: tuple[str, ...]) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise BadRequest(f"{field}: {job_id!r} is not a job id (16 hex digits)")
    job = store.get(job_id)
    if job is None:
        raise BadRequest(f"{field}: no job {job_id}", 422)
    if job.kind not in kinds:
        raise BadRequest(f"{field}: job {job_id} is a {job.kind} job; expected "
                         f"{' or '.join(kinds)}")
    if job.state != "succeeded":
        raise BadRequest(f"{field}: job {job_id} is {job.state}; wait until it has succeeded")


def _check_labels(spec: EvaluateJob) -> None:
    """The checks ``scripts/evaluate.py`` makes of the policies' labels and
    ``--baseline`` (:func:`~ptreclaim.agents.evaluate.policy_specs`: no two
    policies labelled alike, ``oracle`` and ``none`` reserved, the baseline an
    evaluated policy or a heuristic), made now on the labels the job's
    policies will have (:func:`~.specs.policy_label`) rather than when it runs.
    A policy that is a file at run time stands in here as a heuristic under
    its label (not ``none``'s, so that ``none=job:<id>`` is refused as there)."""
    from ..agents.evaluate import policy_specs
    from ..agents.heuristics import HEURISTICS

    stand_in = next(h for h in HEURISTICS if h != "none")
    args = [p if policy_parts(p)[1] == "heuristic" else
            f"{policy_label(p)}=heuristic:{stand_in}" for p in spec.policies]
    try:
        policy_specs(args, best=False, trust_model=False, baseline=spec.baseline,
                     oracle=spec.oracle)
    except ConfigError as exc:
        msg = str(exc)
        if msg.startswith("--baseline "):
            raise BadRequest("baseline: " + msg.removeprefix("--baseline ")) from None
        raise BadRequest(f"policies: {msg}") from None


def _check_evaluate(spec: EvaluateJob, store: Store) -> None:
    from ..agents.heuristics import HEURISTICS

    for i, policy in enumerate(spec.policies):
        _label, scheme, value = policy_parts(policy)
        where = f"policies[{i}]"
        if scheme == "heuristic":
            if value not in HEURISTICS:
                raise BadRequest(f"{where}: unknown heuristic {value!r}; known: "
                                 f"{', '.join(HEURISTICS)}")
        elif scheme == "job":
            _check_reference(store, value, where, ("tune", "export", "train"))
        elif scheme == "upload":
            if value != "thresholds":
                raise BadRequest(f"{where}: upload:{value} is not an upload; use "
                                 "upload:thresholds")
        else:
            raise BadRequest(f"{where}: {policy!r} is not heuristic:NAME, job:<id> or "
                             "upload:thresholds (files on the server are not taken by path)")
    # The baseline's characters are the spec's (NAME); whether it is a label here or a
    # heuristic, policy_specs says.
    _check_labels(spec)


def needed_uploads(spec: AnySpec) -> set[str]:
    """The upload fields a spec refers to."""
    fields: set[str] = set()
    inp = getattr(spec, "input", None)
    if isinstance(inp, ScenarioInput):
        fields.add("scenario")
    elif isinstance(inp, TraceInput):
        fields.add("trace")
    if isinstance(spec, TrainJob) and spec.experiment == "upload":
        fields.add("experiment")
    if isinstance(spec, EvaluateJob) and any(policy_parts(p)[1:] == ("upload", "thresholds")
                                             for p in spec.policies):
        fields.add("thresholds")
    return fields


def check_job(spec: AnySpec, uploads: Mapping[str, Upload], limits: Limits, store: Store
              ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check a submitted job against the caps, its uploads and the jobs it
    names; returns the spec to store (caps filled in) and the inputs by
    stored name.  Raises :class:`BadRequest`."""
    check_budget(spec, limits)
    needed = needed_uploads(spec)
    for field in uploads:
        if field not in needed:
            raise BadRequest(f"upload {field!r} is not used by this job; drop it or refer to "
                             "it from the spec (input.source, experiment: upload, "
                             "upload:thresholds)")
    missing = sorted(needed - set(uploads))
    if missing:
        raise BadRequest(f"the spec refers to an uploaded {missing[0]} but none was sent; add "
                         f"the multipart file field {missing[0]!r}")
    files = {stored_name(u.field, u.filename): u.data for u in uploads.values()}
    for name, data in files.items():
        if name.startswith("scenario"):
            check_scenario_upload(data)
        elif name.startswith("trace"):
            check_trace_upload(data)
        elif name.startswith("thresholds"):
            check_thresholds_upload(name, data)
    inp = getattr(spec, "input", None)
    if isinstance(inp, ShippedInput) and not isinstance(spec, TrainJob):
        check_shipped(inp.name, "input.name")
    if isinstance(spec, TuneJob):
        from ..agents.tune.spaces import HEURISTIC_TARGETS

        if spec.target not in HEURISTIC_TARGETS:
            raise BadRequest(f"target: {spec.target!r} is not a tunable heuristic; known: "
                             f"{', '.join(HEURISTIC_TARGETS)}")
        if spec.seeds < 3 and not spec.allow_few_seeds:
            raise BadRequest(f"seeds: {spec.seeds} is below 3 (single-run noise looks like "
                             "progress); set allow_few_seeds to insist")
    elif isinstance(spec, TrainJob):
        _check_train(spec, files)
    elif isinstance(spec, EvaluateJob):
        _check_evaluate(spec, store)
    else:
        _check_reference(store, spec.run_job, "run_job", ("train",))
    stored = spec.model_dump(mode="json")
    if stored.get("wall_seconds") is None:
        stored["wall_seconds"] = limits.max_wall_seconds
    return stored, files
