"""The process that runs one job, in its job folder (``python -m ptreclaim.service.runner``).

A worker (:mod:`.worker`) lays out the job folder (``job.json``, the inputs
under ``inputs/``) and starts this process there with the job store's URL in
the environment (:data:`DB_ENV`, never on the command line).  It runs the job
with the functions the command lines run, so a job does exactly what the
command would, resumes the way the command resumes, and stops the way it
stops (SIGTERM: the running trial is marked FAIL, training saves a
checkpoint):

* ``tune``: :mod:`ptreclaim.cli.tune` with the study in the job store's
  database (``--storage``, study ``job-<id>``), for the trials the budget
  has left;
* ``train``: :mod:`ptreclaim.cli.train`, or ``--resume`` of the run folder an
  earlier attempt left;
* ``evaluate``: :func:`ptreclaim.agents.evaluate.run_evaluation`;
* ``export``: :mod:`ptreclaim.cli.export` on the train job's run folder.

Progress goes to ``progress.json`` (the worker copies it into the job store);
bad input ends the process with status 2 and its one line in ``error.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from ..agents.interrupts import Interrupted, die_with_parent, stop_signals
from ..envs.configio import write_text_atomic, write_yaml_atomic
from ..envs.sim.config import ConfigError
from .inputs import INPUTS, experiment_sets, input_path, trace_scenario_data
from .specs import (
    BadRequest,
    EvaluateJob,
    ExportJob,
    ScenarioInput,
    ShippedInput,
    TraceInput,
    TrainJob,
    TuneJob,
    parse_spec,
    policy_label,
    policy_parts,
)

#: The environment variable that carries the job store's URL to the job process.
DB_ENV = "PTRECLAIM_SERVICE_DB"
JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
ERROR_FILE = "error.txt"
LOG_FILE = "log.txt"
#: Share of a training job's progress that is the final evaluation.
TRAIN_EVAL_SHARE = 0.1


class Reporter:
    """Writes ``progress.json``: the fraction done, the phase and an ETA
    estimated from this attempt's rate (a resumed job starts part way)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.start: float | None = None
        self.lock = threading.Lock()

    def set(self, fraction: float, phase: str, *, final: bool = False) -> None:
        """Report ``fraction`` done and ``phase``; ``final``: the job ends here, short of
        done, and the worker records this share and phase rather than "finished"."""
        fraction = max(0.0, min(1.0, fraction))
        with self.lock:
            now = time.monotonic()
            if self.start is None:
                self.start = fraction
            eta = None
            gained = fraction - self.start
            if gained > 1e-6 and fraction < 1.0:
                eta = (now - self.t0) / gained * (1.0 - fraction)
            write_text_atomic(PROGRESS_FILE, json.dumps(
                {"fraction": fraction, "phase": phase, "eta_seconds": eta,
                 "final": final}) + "\n")

    @contextmanager
    def polling(self, probe: Callable[[], tuple[float, str] | None],
                every: float = 2.0) -> Iterator[None]:
        """Call ``probe`` every ``every`` seconds in a thread while the block
        runs and report what it returns (None: nothing new)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    got = probe()
                except Exception:  # a probe racing the job's own writes: try again later
                    continue
                if got is not None:
                    self.set(*got)

        thread = threading.Thread(target=loop, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


def call_cli(module: ModuleType, argv: Sequence[str], *, signals: bool = True) -> int:
    """Run a command line's main function on ``argv`` the way its ``main``
    does, keeping its bad-input line (``error.txt``) for the job."""
    errors: list[str] = []

    def handler(args: argparse.Namespace, given: list[str]) -> int:
        try:
            return int(module._main(args, given))
        except ConfigError as exc:
            errors.append(str(exc))
            raise

    from ..cli.common import run_cli

    try:
        code = run_cli(module.PROG, module.build_parser(), handler, list(argv),
                       signals=signals)
    except SystemExit as exc:  # a usage error: the service built a bad command line
        errors.append(f"{module.PROG}: rejected the job's arguments {list(argv)}")
        code = exc.code if isinstance(exc.code, int) else 2
    if code == 2 and errors:
        write_text_atomic(ERROR_FILE, errors[-1] + "\n")
    return code


def suite_arg(inp: ShippedInput | ScenarioInput | TraceInput) -> str:
    """The ``--suite`` of a job's input: a shipped name or a file in the job folder."""
    if isinstance(inp, ShippedInput):
        return inp.name
    if isinstance(inp, ScenarioInput):
        return input_path("scenario")
    path = f"{INPUTS}/trace_scenario.yaml"
    # Relative to the job folder, so that the tuning objective (which records the
    # scenario) is the same whichever machine resumes the job.
    write_yaml_atomic(path, trace_scenario_data(inp, input_path("trace")))
    return path


# ------------------------------------------------------------------------ tune

_STORAGES: dict[str, Any] = {}


def _finished_trials(url: str, study: str) -> int | None:
    """COMPLETE and PRUNED trials of ``study`` (None: no such study yet)."""
    import optuna
    from optuna.trial import TrialState

    storage = _STORAGES.get(url)
    if storage is None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # The tune command creates the tables; this only reads them.
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True,
                                             skip_compatibility_check=True)
        _STORAGES[url] = storage
    try:
        sid = storage.get_study_id_from_name(study)
    except KeyError:
        return None
    return len(storage.get_all_trials(sid, deepcopy=False,
                                      states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _tune_timeout(job: dict[str, Any]) -> float:
    """Seconds in which tuning may start trials: up to the job's deadline (the
    worker stops it there) less a tenth of its budget, at least 2 s, for the
    trial still running then to end in time."""
    left = float(job["deadline"]) - time.time()
    return max(1.0, left - max(2.0, 0.1 * float(job["wall_left"])))


def run_tune(spec: TuneJob, job: dict[str, Any], url: str, rep: Reporter) -> int:
    from ..cli import tune

    study = f"job-{job['id']}"
    done = (_finished_trials(url, study) or 0) if job["attempt"] > 1 else 0
    left = spec.trials - done
    rep.set(done / spec.trials, f"trial {done}/{spec.trials}")
    if left <= 0:
        return 0
    argv = ["heuristic", spec.target, "--n-trials", str(left), "--seeds", str(spec.seeds),
            "--episodes", str(spec.episodes), "--suite", suite_arg(spec.input),
            "--storage", url, "--study-name", study, "--out", ".", "--sampler", spec.sampler,
            "--seed", str(spec.seed), "-q", "--timeout", f"{_tune_timeout(job):.1f}"]
    if spec.allow_few_seeds:
        argv.append("--allow-few-seeds")

    def probe() -> tuple[float, str] | None:
        n = _finished_trials(url, study)
        return None if n is None else (n / spec.trials, f"trial {n}/{spec.trials}")

    with rep.polling(probe):
        code = call_cli(tune, argv)
    if code == 0:
        n = _finished_trials(url, study) or 0
        # A budget-stopped study reports the share of trials it ran, not 1.
        rep.set(min(1.0, n / spec.trials), f"{n} of {spec.trials} trials" + (
            "" if n >= spec.trials else " (stopped by the wall-time budget)"),
            final=n < spec.trials)
    return code


# ----------------------------------------------------------------------- train

def _run_folders(root: Path) -> list[Path]:
    """Single-seed run folders under ``root`` (``config.yaml`` + ``state.json``)."""
    return sorted(p.parent for p in root.glob("*/state.json") if (p.parent / "config.yaml")
                  .is_file())


def _train_probe(spec: TrainJob) -> tuple[float, str] | None:
    total = spec.timesteps * len(spec.seeds)
    steps, evaluated, phase = 0, 0, "starting"
    for run in _run_folders(Path("runs")):
        try:
            state = json.loads((run / "state.json").read_text())
        except (OSError, ValueError):
            continue
        steps += int(state.get("num_timesteps", 0))
        status = state.get("status")
        if status == "finished":
            evaluated += 1
        phase = "final evaluation" if status == "trained" else "training"
    if steps == 0 and evaluated == 0:
        return None
    frac = (1 - TRAIN_EVAL_SHARE) * min(1.0, steps / total) + \
        TRAIN_EVAL_SHARE * evaluated / len(spec.seeds)
    return frac, f"{phase}: {steps}/{total} steps saved, {evaluated}/{len(spec.seeds)} " \
                 "seeds evaluated"


def run_train(spec: TrainJob, job: dict[str, Any], url: str, rep: Reporter) -> int:
    from ..agents.runs import RunFolder
    from ..cli import train

    runs = Path("runs")
    multi = [p for p in sorted(runs.glob("*")) if RunFolder(p).is_multi]
    single = _run_folders(runs)
    if multi or single:
        # An earlier attempt left its run folder: continue it from its last checkpoint.
        folder = multi[0] if multi else single[0]
        if not multi and json.loads((folder / "state.json").read_text()).get(
                "status") == "finished":
            return 0
        argv = ["--resume", str(folder), "--no-progress"]
    else:
        config = (input_path("experiment") if spec.experiment == "upload" else
                  str(_shipped_experiment(spec.experiment)))
        train_suite = None if spec.input is None else suite_arg(spec.input)
        argv = ["--config", config, "--out", "runs", "--no-progress"]
        for _label, item in experiment_sets(spec, train_suite,
                                            int(job.get("env_threads", 1))):
            argv += ["--set", item]
    with rep.polling(lambda: _train_probe(spec)):
        code = call_cli(train, argv, signals=False)
    if code == 0:
        rep.set(1.0, "finished")
    return code


def _shipped_experiment(name: str) -> Path:
    from ..configs import CONFIG_DIR

    return CONFIG_DIR / "experiments" / f"{name}.yaml"


# -------------------------------------------------------------------- evaluate

def referenced_run(job_id: str, seed: int | None = None) -> Path:
    """The run folder of a materialised train job (``inputs/job-<id>/``):
    the one of ``seed``, else the first."""
    folders = _run_folders(Path(INPUTS) / f"job-{job_id}" / "runs")
    for folder in folders:
        if seed is None or folder.name.split("__")[2] == str(seed):
            return folder
    raise ConfigError(f"job {job_id}: no run folder" + (f" of seed {seed}" if seed is not None
                                                        else "") + " among its artifacts")


def referenced_thresholds(job_id: str) -> Path:
    """The thresholds file of a materialised tune (``best.yaml``) or export
    (``thresholds.yaml``) job."""
    base = Path(INPUTS) / f"job-{job_id}"
    for name in ("thresholds.yaml", "best.yaml"):
        if (base / name).is_file():
            return base / name
    raise ConfigError(f"job {job_id}: no thresholds file (best.yaml, thresholds.yaml) among "
                      "its artifacts")


def policy_arg(policy: str, kinds: dict[str, str]) -> str:
    """A spec's policy as ``scripts/evaluate.py`` takes it, with files in the
    job folder; ``kinds`` maps referenced job ids to their kind."""
    _label, scheme, value = policy_parts(policy)
    # The label the submit checks saw (inputs._check_labels).
    prefix = f"{policy_label(policy)}="
    if scheme == "heuristic":
        return policy
    if scheme == "upload":
        name = next(p.name for p in Path(INPUTS).glob("thresholds.*"))
        return f"{prefix}{INPUTS}/{name}"
    if kinds[value] == "train":
        return f"{prefix}{referenced_run(value)}"
    return f"{prefix}{referenced_thresholds(value)}"


def run_evaluate(spec: EvaluateJob, job: dict[str, Any], url: str, rep: Reporter) -> int:
    from ..agents.evaluate import env_config_for, policy_specs, run_evaluation
    from ..cli.common import command_text, display_path
    from ..envs.configio import resolve_suite

    policies = [policy_arg(p, job["references"]) for p in spec.policies]
    # A referenced train job's model is loaded only if its run folder's signed
    # manifest verifies with this worker's key (docs/trust.md): workers share
    # one key (PTRECLAIM_TRUST_KEY_FILE), so a row of the store alone is no trust.
    specs = policy_specs(policies, best=False, trust_model=False, baseline=spec.baseline,
                         oracle=spec.oracle)
    suite = suite_arg(spec.input)
    scenarios, files = resolve_suite(suite)
    env_config = env_config_for(None, specs)
    rep.set(0.0, "episodes")

    def progress(done: int, total: int) -> None:
        rep.set(done / max(1, total), f"episode {done}/{total}")

    with stop_signals("raise"):
        run_evaluation(specs, scenarios, env_config, Path("."), suite=suite,
                       suite_files=[display_path(p) for p in files], episodes=spec.episodes,
                       seed=spec.seed, jobs=1, baseline=spec.baseline, oracle=spec.oracle,
                       command=command_text("service evaluate", policies), quiet=True,
                       progress=progress)
    rep.set(1.0, "finished")
    return 0


# ---------------------------------------------------------------------- export

def export_argv(spec: ExportJob, run: Path) -> list[str]:
    """The ``export_thresholds.py`` command line of an export job on ``run``."""
    argv = [str(run), "--out", ".", "-q", "--jobs", "1", "--tree-depth", str(spec.tree_depth)]
    for flag, value in (("--iterations", spec.iterations), ("--episodes", spec.episodes),
                        ("--eval-episodes", spec.eval_episodes)):
        if value is not None:
            argv += [flag, str(value)]
    if spec.best:
        argv.append("--best")
    if not spec.unseen:
        argv.append("--no-unseen")
    return argv


def run_export(spec: ExportJob, job: dict[str, Any], url: str, rep: Reporter) -> int:
    from ..cli import export

    argv = export_argv(spec, referenced_run(spec.run_job, spec.seed))

    def probe() -> tuple[float, str]:
        # The rule is written once distilled, then evaluated.
        return ((0.5, "evaluating the rule") if Path("thresholds.yaml").is_file()
                else (0.0, "distilling"))

    rep.set(0.0, "distilling")
    with rep.polling(probe):
        code = call_cli(export, argv)
    if code == 0:
        rep.set(1.0, "finished")
    return code


RUNNERS: dict[str, Callable[[Any, dict[str, Any], str, Reporter], int]] = {
    "tune": run_tune, "train": run_train, "evaluate": run_evaluate, "export": run_export}


def main() -> int:
    """Run the job of the current folder; returns the exit status (0 done,
    2 bad input, 128 + signal when stopped, 1 otherwise)."""
    job = json.loads(Path(JOB_FILE).read_text())
    die_with_parent(int(job["worker_pid"]))
    url = os.environ.get(DB_ENV, "")
    if not url:
        print(f"runner: {DB_ENV} is not set; workers start this process", file=sys.stderr)
        return 2
    try:
        # Checked at submit; not strictly here, so that a job stored before a check was
        # tightened still runs, and one that cannot is one line, not a traceback.
        spec = parse_spec(job["spec"], strict=False)
        print(f"== attempt {job['attempt']} of job {job['id']} ({spec.kind}) on "
              f"{job['worker']}", flush=True)
        return RUNNERS[spec.kind](spec, job, url, Reporter())
    except (ConfigError, BadRequest) as exc:
        write_text_atomic(ERROR_FILE, f"{exc}\n")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"runner: {exc.line()}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
