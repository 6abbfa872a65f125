"""Multi-seed experiments: one run folder per seed, then the aggregate report.

The seeds train in turn (``jobs: 1``) or ``jobs`` at a time in worker
processes (:class:`~ptreclaim.agents.rollout.WorkerPool`), each in its own
run folder; ``<experiment>__<algo>__multi__<time>/`` records the resolved
experiment (``experiment.yaml``: every seed trains with the very same
hyperparameters), which run folder each seed has (``runs.json``) and the
aggregate report.

Stopping: SIGINT or SIGTERM to the main process stops every seed at its
next step with a checkpoint (in parallel: the pool sends SIGTERM to each
worker and gives it :data:`STOP_GRACE` seconds), then prints one line naming
each seed's step and how to resume, and exits with 130 or 143.
``--resume <multi folder>`` resumes every unfinished seed and starts the
missing ones; ``--resume <run folder>`` resumes one seed alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...envs.configio import load_json, write_text_atomic, write_yaml_atomic
from ...envs.sim.config import ConfigError, to_dict
from ..interrupts import Interrupted, signal_name, stop_requested, stop_signals
from ..report import progress_display
from ..rollout import WorkerPool
from ..runs import RunFolder
from .config import ExperimentConfig, Scenarios, load_scenarios, snapshot_rules
from .loop import Output, console, train_run
from .report import UNSEEN_RESULTS, multi_report, unseen_label
from .runconfig import read_run_config, start_run

if TYPE_CHECKING:
    from rich.console import Console

#: Seconds a training worker gets to save its checkpoint once told to stop.
STOP_GRACE = 60.0

#: One seed to train: (seed, its run folder, resume it?).
SeedTask = tuple[int, str, bool]


@dataclass(frozen=True)
class _SeedContext:
    exp: ExperimentConfig
    hp: dict[str, Any]
    scen: Scenarios
    command: str


def _seed_context(exp: ExperimentConfig, hp: dict[str, Any], scen: Scenarios,
                  command: str) -> _SeedContext:
    return _SeedContext(exp, hp, scen, command)


def _train_seed(ctx: _SeedContext, task: SeedTask, out: Output | None = None) -> int:
    """Train one seed in its folder (a worker's task, or the main process's
    with ``jobs: 1``); its exit status."""
    seed, path, resume = task
    run = RunFolder(Path(path))
    out = out or Output(console(), False, f"[seed {seed}] ", report_stop=False)
    # In a worker: SIGTERM (from the pool, or the kernel when the main process
    # dies) stops at the next step with a checkpoint; SIGINT stays ignored.
    with stop_signals("flag", (signal.SIGTERM,)):
        if resume:
            run.add_command(ctx.command)
            return train_run(run, read_run_config(run), out, resume=True)
        cfg = start_run(run, dataclasses.replace(ctx.exp, seeds=(seed,)), seed, ctx.hp,
                        ctx.scen, ctx.command)
        return train_run(run, cfg, out)


def _seed_tasks(exp: ExperimentConfig, runs: dict[int, RunFolder], out: Path,
                record: Any) -> list[SeedTask]:
    """The seeds still to train: unfinished ones resume, the others start in
    a new folder (or in their empty one, created before an interrupt)."""
    tasks: list[SeedTask] = []
    for seed in exp.seeds:
        run = runs.get(seed)
        if run is not None and (run / "state.json").is_file():
            # A failed seed diverged: resuming it would only diverge again.
            if run.read_state()["status"] not in ("finished", "failed"):
                tasks.append((seed, str(run), True))
            continue
        if run is None or not run.path.is_dir() or any(run.path.iterdir()):
            run = RunFolder.create(out, exp.name, exp.algo, str(seed))
            record(seed, run)
        tasks.append((seed, str(run), False))
    return tasks


def read_runs(multi: RunFolder) -> dict[int, RunFolder]:
    """``runs.json`` of a multi-seed folder (seed -> run folder), checked;
    empty when the experiment was stopped before its first seed started."""
    path = multi / "runs.json"
    if not path.is_file():
        return {}
    data = load_json(path, "a multi-seed experiment's runs.json")
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and k.isdigit() and isinstance(v, str) and v
            for k, v in data.items()):
        raise ConfigError(f"{path}: not a map of seeds to run folders; the experiment "
                          "folder is damaged")
    return {int(k): RunFolder(Path(v)) for k, v in data.items()}


def _where(run: RunFolder) -> str:
    """How far a stopped seed got, from its state."""
    if not (run / "state.json").is_file():
        return "not started"
    state = run.read_state()
    if state["status"] == "trained":
        return "trained, before its final evaluation"
    return f"at step {state.get('num_timesteps', 0)}/{state.get('total_timesteps', '?')}"


def _evaluate_unseen(multi: RunFolder, exp: ExperimentConfig, runs: Mapping[int, RunFolder],
                     con: Console, live: bool) -> int:
    """Every finished seed's final model and every baseline on ``eval.unseen_suite``,
    written to ``unseen_results.json`` (the models labelled ``seed<N>``); the signal
    number if a stop request cut it short (nothing is written then), else 0.  The
    baselines' episodes are cached like the held-out ones."""
    from ..evaluate import evaluate_specs
    from ..loading import parse_policy
    from .baselines import baseline_results

    ev = exp.eval
    done = {s: r for s, r in sorted(runs.items()) if (r / "state.json").is_file()
            and r.read_state()["status"] == "finished" and (r / "model.zip").is_file()}
    if not done:
        return 0
    scen = load_scenarios(ev.unseen_suite, "eval.unseen_suite")
    specs = [parse_policy(f"{unseen_label(s)}={r.path}") for s, r in done.items()]
    names = ev.rivals
    total = (len(specs) + len(names)) * len(scen) * ev.unseen_episodes
    con.print(f"unseen suite {Path(ev.unseen_suite).stem}: {len(scen)} scenarios x "
              f"{ev.unseen_episodes} episodes (seeds from {ev.seed}), {len(specs)} final "
              f"models and {len(names)} baselines", highlight=False, markup=False)
    t0 = time.perf_counter()
    progress = None
    if live:
        progress = progress_display("unseen suite, episodes", con, transient=True,
                                    bar_width=24)
        task = progress.add_task("unseen", total=total)
    count = [0]

    def tick() -> None:
        count[0] += 1
        if progress is not None:
            progress.update(task, completed=count[0])

    try:
        # A signal interrupts the episodes (the pool then stops its workers).
        with stop_signals("raise"), (progress if progress is not None
                                     else contextlib.nullcontext()):
            models, _ = evaluate_specs(specs, scen, ev.unseen_episodes, ev.seed, exp.env,
                                       jobs=ev.jobs, progress=lambda _d, _t: tick(),
                                       timeline_scenario=None)
            cache = multi.path.parent / ".baseline_cache" if ev.cache_baselines else None
            base = baseline_results(names, scen, ev.unseen_episodes, ev.seed, exp.env, cache,
                                    tick, ev.jobs)
    except Interrupted as exc:
        return exc.signum
    write_text_atomic(multi / UNSEEN_RESULTS,
                      json.dumps([dataclasses.asdict(r) for r in base + models]) + "\n")
    con.print(f"unseen suite: {time.perf_counter() - t0:.0f} s", highlight=False,
              markup=False)
    return 0


def run_multi(exp: ExperimentConfig, hp: Mapping[str, Any], scen: Scenarios, out: Path,
              command: str, con: Console, live: bool, multi: RunFolder | None = None) -> int:
    """Train every seed, then write the aggregate report.  With ``multi``
    (``--resume`` of a multi-seed folder): resume every unfinished seed,
    start the missing ones, and rewrite the aggregate report.  Returns the
    exit status (0, 1 when a seed failed, 128 + signal when stopped)."""
    t0 = time.perf_counter()
    runs: dict[int, RunFolder] = {}
    if multi is None:
        multi = RunFolder.create(out, exp.name, exp.algo, "multi")
    with multi.claim():
        return _run_multi(exp, hp, scen, out, command, con, live, multi, runs, t0)


def _run_multi(exp: ExperimentConfig, hp: Mapping[str, Any], scen: Scenarios, out: Path,
               command: str, con: Console, live: bool, multi: RunFolder,
               runs: dict[int, RunFolder], t0: float) -> int:
    if not (multi / "experiment.yaml").is_file():
        # Resolved once, so every seed trains with the very same hyperparameters.
        # The rule files it names, copied into the folder (rules/) and named relative to
        # it, so that a resume on another machine or checkout finds them.
        exp_data = snapshot_rules(to_dict(exp), Path(multi))
        exp_data["hyperparams"] = {exp.algo: dict(hp)}
        write_yaml_atomic(multi / "experiment.yaml", exp_data)
        write_text_atomic(multi / "command.txt", command)
    else:
        runs.update(read_runs(multi))
        multi.add_command(command)

    def record(seed: int, run: RunFolder) -> None:
        runs[seed] = run
        multi.write_json("runs.json", {str(s): str(r) for s, r in sorted(runs.items())})

    codes: dict[int, int] = {}
    signum = 0
    ctx = _SeedContext(exp, dict(hp), scen, command)
    tasks = _seed_tasks(exp, runs, out, record)
    jobs = min(exp.jobs, len(tasks))
    if jobs <= 1:
        # In this process: a signal stops the current seed at its next step.
        with stop_signals("flag"):
            for task in tasks:
                if stop_requested():
                    break
                seed = task[0]
                codes[seed] = _train_seed(ctx, task, Output(con, live, f"[seed {seed}] ",
                                                            report_stop=False))
            signum = stop_requested()
    else:
        # Here a signal interrupts the wait; the pool then stops every worker.
        with stop_signals("raise"):
            try:
                with WorkerPool(jobs, _seed_context, (exp, dict(hp), scen, command),
                                _train_seed, grace=STOP_GRACE) as pool:
                    for task, code in zip(tasks, pool.map(tasks), strict=True):
                        codes[task[0]] = code
            except Interrupted as exc:
                signum = exc.signum
    # Wall time over every invocation (a resumed experiment adds its own).
    prior = 0.0
    with contextlib.suppress(ConfigError, OSError, KeyError, ValueError, TypeError):
        prior = float(load_json(multi / "multi_state.json")["wall_seconds"])

    def save_wall() -> float:
        wall = time.perf_counter() - t0 + prior
        write_text_atomic(multi / "multi_state.json",
                          json.dumps({"wall_seconds": wall, "seeds": list(exp.seeds)}) + "\n")
        return wall

    wall = save_wall()
    stopped = signum or next((c - 128 for c in codes.values() if c >= 128), 0)
    unseen_stopped = False
    if not stopped and exp.eval.unseen_suite and not (multi / UNSEEN_RESULTS).is_file():
        stopped = _evaluate_unseen(multi, exp, runs, con, live)
        unseen_stopped = bool(stopped)
        wall = save_wall()
    report = multi_report(multi, {s: r.path for s, r in runs.items()}, exp,
                          None if stopped else con, wall)
    write_text_atomic(multi / "report.md", report)
    if stopped:
        unfinished = [s for s in exp.seeds if s in runs and (
            not (runs[s] / "state.json").is_file()
            or runs[s].read_state()["status"] != "finished")]
        where = ", ".join(f"seed {s} {_where(runs[s])}" for s in unfinished)
        one = (f" (one seed alone: --resume {shlex.quote(str(runs[unfinished[0]]))})"
               if unfinished else "")
        what = ("the unseen suite's evaluation, after the seeds; kept every run folder and "
                "the aggregate report so far" if unseen_stopped else
                f"{len(unfinished)} seed(s) ({where}); kept the checkpoint of each in its run "
                "folder and the aggregate report so far")
        con.print(f"{signal_name(stopped)} stopped {what}; resume with: python "
                  f"scripts/train.py --resume {shlex.quote(str(multi))}{one}",
                  highlight=False, markup=False, soft_wrap=True)
        return 128 + stopped
    con.print(f"aggregate report: {multi / 'report.md'} (wall time {wall:.0f} s)",
              highlight=False, markup=False)
    return 0 if all(c == 0 for c in codes.values()) else 1
