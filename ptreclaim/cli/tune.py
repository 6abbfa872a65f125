"""``scripts/tune.py``: tune a heuristic's thresholds or an agent's hyperparameters,
or find the best constant action.

Three modes, one command line::

    python scripts/tune.py heuristic soft_hard --n-trials 140 --jobs 2
    python scripts/tune.py heuristic periodic_scan
    python scripts/tune.py agent ppo --timesteps 8192 --pruner median
    python scripts/tune.py constant --jobs 2

``constant`` scores every action of the action space on the same episodes as a
heuristic study (no sampling, no study) and writes the best as the thresholds file
``best.yaml`` of the rule ``best_constant`` (:mod:`ptreclaim.agents.tune.constant`).

Heuristics are scored on the training suite (``--suite``, default ``train``;
never the held-out ``test`` suite), ``--seeds`` seeds x ``--episodes``
episodes per scenario, the same episodes for every trial, trial 0 being the
defaults (:mod:`ptreclaim.agents.tune.objectives`).  Agents train
``--train-seeds`` models of ``--timesteps`` steps per trial, reported to the
pruner every ``--eval-freq`` steps.  Studies are resumable and shareable
(:mod:`ptreclaim.agents.tune.storage`): re-running the same command adds
``--n-trials`` more; settings that change the objective must match the
study's, else exit status 2.  Outputs: :mod:`ptreclaim.agents.tune.outputs`.

SIGINT or SIGTERM marks the running trial FAIL (never RUNNING), stops the
workers and exits with 130 or 143 after one line; the study keeps every
complete trial and resumes with the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..agents import interrupts
from ..agents.evaluate import load_env_file, suite_scenarios
from ..agents.runs import versions
from ..agents.training.config import load_experiment
from ..agents.training.hyperparams import load_hyperparams
from ..agents.tune import constant
from ..agents.tune.objectives import (
    EPISODE_SEED,
    AgentObjective,
    AgentSetup,
    EpisodeRunner,
    HeuristicObjective,
    Objective,
    scenarios_digest,
)
from ..agents.tune.outputs import (
    Progress,
    RunInfo,
    best_trial,
    complete_trials,
    default_trial,
    paired_text,
    pm_text,
    write_outputs,
)
from ..agents.tune.spaces import AGENT_TARGETS, HEURISTIC_SPACES, HEURISTIC_TARGETS, default_agent
from ..agents.tune.storage import (
    check_sampler,
    check_storage_url,
    make_pruner,
    make_sampler,
    open_study,
    redact,
)
from ..envs.configio import resolve_suite, write_text_atomic
from ..envs.pagetable_env import EnvConfig
from ..envs.sim.config import ConfigError, check_range, did_you_mean, to_dict
from ..envs.sim.simulator import ScenarioConfig
from .common import (
    OneLineParser,
    check_out_dir,
    command_text,
    display_path,
    progress_bar,
    run_cli,
)

if TYPE_CHECKING:
    import optuna

PROG = "tune.py"
SAMPLERS = ("tpe", "cmaes", "random")
PRUNERS = ("median", "hyperband", "none")
DEFAULT_SEEDS = 3
#: Trials per invocation: a heuristic trial is a few seconds of episodes, and the issue
#: that made the baselines fair asks for at least 140; an agent trial is a training run.
DEFAULT_TRIALS = {"heuristic": 140, "agent": 30}
DEFAULT_TIMESTEPS = 8192
#: The held-out suite, never tuned on (``evaluate.py``'s default).
HELD_OUT_SUITE = "test"
#: Flags that only make sense for agents (their defaults are None to tell).
AGENT_FLAGS = ("config", "timesteps", "n_envs", "eval_freq", "train_seeds", "pruner",
               "warm_start")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/tune.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Tune a heuristic's thresholds or an agent's hyperparameters with Optuna on the "
        "training suite, noise-aware (every trial scored over several seeds), in a resumable "
        "study that several workers may share. Writes trials.csv, the best parameters, "
        "history.png, importances.png and report.md to --out."))
    p.add_argument("mode", choices=("heuristic", "agent", "constant"),
                   help="what to tune: a heuristic's parameters, an agent's hyperparameters, "
                        "or (constant) the best fixed action, by enumeration")
    p.add_argument("target", nargs="?", default=None,
                   help=f"heuristic: {', '.join(HEURISTIC_TARGETS)}; agent: "
                        f"{', '.join(AGENT_TARGETS)}; none for constant")
    p.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help=f"trials to run in this invocation (default "
                        f"{DEFAULT_TRIALS['heuristic']} for a heuristic, "
                        f"{DEFAULT_TRIALS['agent']} for an agent, or unlimited with --timeout); "
                        "a resumed study adds them")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop starting new trials after this many seconds")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, metavar="N",
                   help=f"episode seeds per scenario and trial (default {DEFAULT_SEEDS}; "
                        "at least 3 unless --allow-few-seeds)")
    p.add_argument("--allow-few-seeds", action="store_true",
                   help="allow --seeds 1 or 2 (the objective is then one noisy run)")
    p.add_argument("--suite", default="train", metavar="SUITE",
                   help="scenarios to tune on: a suite or scenario name or YAML (default "
                        "'train'; never tune on the held-out 'test')")
    p.add_argument("--episodes", type=int, default=1, metavar="N",
                   help="episodes per scenario and seed (default 1)")
    p.add_argument("--episode-seed", type=int, default=EPISODE_SEED, metavar="BASE",
                   help=f"seed s runs episode_seed(BASE + s, scenario, episode) (default "
                        f"{EPISODE_SEED})")
    p.add_argument("--env-config", default=None, metavar="FILE",
                   help="env settings YAML (EnvConfig keys, or an 'env:' section); default: "
                        "EnvConfig defaults (heuristic) or the experiment's env (agent)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL (default sqlite:///<out>/study.db); e.g. "
                        "postgresql://user:pass@host/db for workers on several machines")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="study name (default: the target); workers with the same storage and "
                        "name share trials")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/tune/<target>, runs/tune/constant)")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS,
                   help="tpe (default), cmaes (numeric parameters; categorical ones by TPE) "
                        "or random")
    p.add_argument("--seed", type=int, default=0,
                   help="sampler seed (default 0); give each concurrent worker its own")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="heuristic, constant: parallel processes for the episodes (default 1; "
                        "results do not depend on it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("agent tuning")
    g.add_argument("--config", default=None, metavar="FILE",
                   help="experiment YAML (default configs/experiments/default.yaml): env, "
                        "n_envs, normalisation, base hyperparameters")
    g.add_argument("--timesteps", type=int, default=None, metavar="N",
                   help=f"training steps per trial and training seed (default "
                        f"{DEFAULT_TIMESTEPS})")
    g.add_argument("--n-envs", type=int, default=None, metavar="N",
                   help="parallel envs per training (default: the experiment's)")
    g.add_argument("--eval-freq", type=int, default=None, metavar="N",
                   help="steps between validation evaluations reported to the pruner "
                        "(default timesteps/4)")
    g.add_argument("--train-seeds", type=int, default=None, metavar="N",
                   help="models trained per trial, seeds 0..N-1 (default 1)")
    g.add_argument("--pruner", default=None, choices=PRUNERS,
                   help="median (default), hyperband or none")
    g.add_argument("--warm-start", action="store_true", default=None,
                   help="start every training from the experiment's warm start "
                        "(pretrain.teacher cloned for pretrain.steps decisions, as train.py "
                        "does) and search its behaviour-cloning epochs too (default: random "
                        "weights)")
    return p


#: Flags of an Optuna study, which ``constant`` (an enumeration) does not run.
STUDY_FLAGS = ("n_trials", "timeout", "storage", "study_name")


def _check_args(args: argparse.Namespace) -> None:
    if args.mode == "constant":
        if args.target is not None:
            raise ConfigError(f"constant takes no target (it enumerates every action); drop "
                              f"{args.target!r}")
        given = [f for f in (*STUDY_FLAGS, *AGENT_FLAGS) if getattr(args, f) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} does not apply to constant (an "
                              "enumeration, not a study); drop it")
        _check_common(args)
        return
    known = HEURISTIC_TARGETS if args.mode == "heuristic" else AGENT_TARGETS
    if args.target is None:
        raise ConfigError(f"{args.mode} needs a target: one of {', '.join(known)}")
    if args.target not in known:
        other = AGENT_TARGETS if args.mode == "heuristic" else HEURISTIC_TARGETS
        hint = (f"; {args.target!r} is {'an agent' if args.mode == 'heuristic' else 'a heuristic'}"
                f", use '{'agent' if args.mode == 'heuristic' else 'heuristic'} {args.target}'"
                if args.target in other else did_you_mean(args.target, known))
        raise ConfigError(f"unknown {args.mode} {args.target!r}{hint}; known: "
                          f"{', '.join(known)}")
    if args.n_trials is not None:
        check_range("--n-trials", args.n_trials, 1, 1_000_000)
    if args.timeout is not None:
        check_range("--timeout", args.timeout, 0.0, 366 * 86400.0, lo_open=True)
    _check_common(args)
    if args.study_name is not None and not args.study_name.strip():
        raise ConfigError("--study-name: empty; give a name")
    if args.storage is not None:
        check_storage_url(args.storage)
    if args.mode == "heuristic":
        given = [f for f in AGENT_FLAGS if getattr(args, f) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} applies to agent tuning only; "
                              "drop it (or tune 'agent <algo>')")
    else:
        if args.jobs != 1:
            raise ConfigError("--jobs applies to heuristic tuning; for agents start more "
                              "workers on the same --storage and --study-name instead")
        for name, lo_, hi_ in (("timesteps", 1, 10**9), ("n_envs", 1, 1024),
                               ("eval_freq", 1, 10**9), ("train_seeds", 1, 100)):
            v = getattr(args, name)
            if v is not None:
                check_range(f"--{name.replace('_', '-')}", v, lo_, hi_)


def _check_not_held_out(suite: str, files: Sequence[Path]) -> None:
    """Refuse to tune on a scenario of the held-out ``test`` suite: what is
    tuned on it can no longer be judged on it."""
    _, held_out = resolve_suite(HELD_OUT_SUITE)
    leaked = sorted(f.stem for f in set(files) & set(held_out))
    if leaked:
        raise ConfigError(f"--suite {suite}: holds held-out scenarios of the '{HELD_OUT_SUITE}' "
                          f"suite ({', '.join(leaked)}), which only the final evaluation may "
                          "see; tune on 'train' or on a suite of scenarios of your own")


def _check_common(args: argparse.Namespace) -> None:
    """The flags every mode shares: seeds, episodes, seeds of the sampler, jobs."""
    lo = 1 if args.allow_few_seeds else 3
    if args.seeds < lo and args.seeds >= 1:
        raise ConfigError(f"--seeds: {args.seeds} is out of range; allowed [{lo}, 10000] (fewer "
                          "than 3 seeds make single-run noise look like progress; pass "
                          "--allow-few-seeds to insist)")
    check_range("--seeds", args.seeds, 1, 10_000)
    check_range("--episodes", args.episodes, 1, 10_000)
    check_range("--episode-seed", args.episode_seed, 0, 2**31)
    check_range("--seed", args.seed, 0, 2**31)
    check_range("--jobs", args.jobs, 1, 1024)


def _agent_setup(args: argparse.Namespace, scenarios: list[ScenarioConfig], suite: str,
                 env_override: EnvConfig | None) -> tuple[AgentSetup, dict[str, Any] | None]:
    timesteps = args.timesteps or DEFAULT_TIMESTEPS
    # Without --warm-start, trials train from random weights: the experiment's
    # pretrain.teacher does not apply to them.  With it, each training clones the
    # experiment's teacher first, as train.py does.
    sets = [("--algo", f"algo={args.target}"), ("--timesteps", f"timesteps={timesteps}")]
    if not args.warm_start:
        sets.append(("agent study", "pretrain.teacher="))
    if args.n_envs is not None:
        sets.append(("--n-envs", f"n_envs={args.n_envs}"))
    exp, _ = load_experiment(Path(args.config) if args.config else None, sets)
    if args.warm_start and not exp.pretrain.teacher:
        raise ConfigError(f"--warm-start: the experiment "
                          f"({args.config or 'configs/experiments/default.yaml'}) has no "
                          "pretrain.teacher to clone; give a --config with one, or drop "
                          "--warm-start")
    if env_override is not None:
        exp = dataclasses.replace(exp, env=env_override)
    base = load_hyperparams(exp)
    eval_freq = args.eval_freq or max(1, timesteps // 4)
    if eval_freq > timesteps:
        raise ConfigError(f"--eval-freq: {eval_freq} exceeds --timesteps {timesteps}; the "
                          "pruner would get no report before the end")
    train_seeds = tuple(range(args.train_seeds or 1))
    pruner = args.pruner or "median"
    objective = Objective(
        "agent", args.target, suite, tuple(s.name for s in scenarios),
        scenarios_digest(scenarios), args.seeds, args.episodes, args.episode_seed,
        to_dict(exp.env),
        {"timesteps": timesteps, "eval_freq": eval_freq, "train_seeds": list(train_seeds),
         "n_envs": exp.n_envs, "normalize": to_dict(exp.normalize), "pruner": pruner,
         "base_hyperparams": json.loads(json.dumps(base, default=str)),
         **({"warm_start": {k: v for k, v in to_dict(exp.pretrain).items() if k != "epochs"}}
            if exp.pretrain.teacher else {})})
    setup = AgentSetup(args.target, exp, base, scenarios, objective, timesteps, eval_freq,
                       train_seeds)
    return setup, default_agent(args.target, base, exp.normalize.clip_reward,
                                exp.pretrain.epochs if exp.pretrain.teacher else None)



def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import optuna

    _check_args(args)
    if args.mode == "constant":
        return _constant(args, argv)
    target = args.target
    out = Path(args.out) if args.out else Path("runs") / "tune" / target
    # Nothing is created until the inputs are known good: the storage (or the
    # first output) creates the folder.
    check_out_dir(out, (), force=True)
    scenarios, files = suite_scenarios(args.suite)
    _check_not_held_out(args.suite, files)
    names = [s.name for s in scenarios]
    env_override = load_env_file(args.env_config) if args.env_config else None
    url = args.storage or f"sqlite:///{out / 'study.db'}"
    study_name = args.study_name or target
    agent = args.mode == "agent"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if agent:
        import torch

        # One intra-op thread: small MLPs run faster so on a shared 2-core machine.
        torch.set_num_threads(1)
        setup, default = _agent_setup(args, scenarios, args.suite, env_override)
        objective = setup.objective
        func: Callable[[optuna.Trial], float] = AgentObjective(setup)
        runner: EpisodeRunner | None = None
    else:
        env_config = env_override or EnvConfig()
        objective = Objective("heuristic", target, args.suite, tuple(names),
                              scenarios_digest(scenarios), args.seeds, args.episodes,
                              args.episode_seed, to_dict(env_config))
        default = HEURISTIC_SPACES[target][1](env_config)
        runner = EpisodeRunner(scenarios, env_config, objective, args.jobs)
        func = HeuristicObjective(target, runner)
    study = open_study(url, study_name, objective, default)
    existing = len(study.get_trials(deepcopy=False))
    # A resumed (or joined) study gets a sampler seed of its own: the same seed
    # would propose the first run's random start-up points again.
    seed = args.seed if existing == 0 else int(
        np.random.SeedSequence([args.seed, existing]).generate_state(1)[0])
    study.sampler = make_sampler(args.sampler, seed)
    check_sampler(study.sampler, study)
    if agent:
        study.pruner = make_pruner(str(objective.agent["pruner"]), setup.eval_freq,
                                   setup.timesteps * len(setup.train_seeds))
    cmd = shlex.join(["python", "scripts/tune.py", *_redacted_argv(argv)])
    with contextlib.suppress(OSError):
        old = (out / "command.txt").read_text() if (out / "command.txt").exists() else ""
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        write_text_atomic(out / "command.txt", f"{old}# {stamp} cwd: {os.getcwd()}\n{cmd}\n")
    info = RunInfo(args.mode, target, study_name, redact(url), args.sampler, args.seed, out,
                   cmd, objective, [display_path(f) for f in files], _versions(agent),
                   args.jobs)
    n_trials = args.n_trials if args.n_trials is not None else (
        None if args.timeout is not None else DEFAULT_TRIALS[args.mode])
    t0 = time.perf_counter()
    try:
        with Progress(n_trials, args.quiet, f"{study_name}") as progress:

            def after_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                write_outputs(st, info)
                progress.trial(st, trial)
                if interrupts.stop_requested():
                    st.stop()  # a signal arrived outside a trial: stop before the next

            try:
                # An agent trial whose hyperparameters blow up (NaN logits: ValueError from
                # torch) is recorded as FAIL and the study goes on; in a heuristic trial
                # any exception is a bug and stops the study.
                catch = (ValueError, RuntimeError, AssertionError) if agent else ()
                # Signals wait for the trial (the objectives let them through) or
                # for the end of Optuna's bookkeeping, never cut into its storage.
                with interrupts.deferred():
                    study.optimize(func, n_trials=n_trials, timeout=args.timeout,
                                   callbacks=[after_trial], catch=catch)
                interrupts.check()
            finally:
                if runner is not None:
                    runner.close()
    except interrupts.Interrupted as exc:
        raise exc.explain(
            what=exc.what if "trial" in exc.what else "the study between two trials",
            kept=f"{len(complete_trials(study))} complete trials in {redact(url)} and the "
                 f"outputs in {out}/ as of the last one",
            resume="the same command (the study continues with the next trial)") from None
    wall = time.perf_counter() - t0
    info.finished = (wall, progress.done)
    written = write_outputs(study, info)
    if not args.quiet:
        _summary(study, info, wall, written)
    return 0


def _constant(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``tune.py constant``: score every action, write the best as ``best_constant``."""
    out = Path(args.out) if args.out else Path("runs") / "tune" / "constant"
    # A re-run replaces the enumeration's files on purpose: it is the same computation.
    check_out_dir(out, (), force=True)
    scenarios, files = suite_scenarios(args.suite)
    _check_not_held_out(args.suite, files)
    env_config = load_env_file(args.env_config) if args.env_config else EnvConfig()
    groups = constant.action_classes(constant.action_space(env_config))
    n_actions = sum(len(v) for v in groups.values())
    total = len(groups) * len(scenarios) * args.seeds * args.episodes
    show = not args.quiet
    try:
        with progress_bar(f"{n_actions} constant actions: episodes", total, show) as update:
            scores, run, written = constant.run_constant(
                scenarios, env_config, suite=args.suite,
                suite_files=[display_path(f) for f in files], seeds=args.seeds,
                episodes=args.episodes, episode_seed_base=args.episode_seed, jobs=args.jobs,
                out=out, command=command_text(PROG, argv),
                progress=None if update is None else lambda done, _total: update(done))
    except interrupts.Interrupted as exc:
        raise exc.explain(what="the enumeration of constant actions", kept="nothing new in "
                          f"{out}/ (it writes at the end)", resume="the same command") from None
    if not args.quiet:
        print(constant.summary_line(scores, run))
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _redacted_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the password of a ``--storage`` URL hidden (``command.txt``
    is an artifact people share; the service stores it too)."""
    out, hide = [], False
    for a in argv:
        if hide:
            a, hide = redact(a), False
        elif a == "--storage":
            hide = True
        elif a.startswith("--storage="):
            a = "--storage=" + redact(a.split("=", 1)[1])
        out.append(a)
    return out


def _versions(agent: bool) -> dict[str, Any]:
    """Versions of what shapes the result."""
    return versions("optuna", "numpy", "gymnasium",
                    *(("torch", "stable_baselines3") if agent else ()))


def _summary(study: optuna.Study, info: RunInfo, wall: float, files: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    best, d = best_trial(study), default_trial(study)
    t = Table(title=f"{info.study_name}: default vs tuned ({info.objective.suite}, "
                    f"{info.objective.seeds} seeds)", title_justify="left")
    for col in ("", "trial", "mean cost ± SE"):
        t.add_column(col)
    t.add_row("default", str(d.number) if d else "-", pm_text(d))
    t.add_row("tuned (best)", str(best.number) if best else "-", pm_text(best))
    if best is not None and d is not None:
        t.add_row("default - tuned (paired)", "", paired_text(d, best))
    console.print(t)
    console.print(f"{len(study.get_trials(deepcopy=False))} trials in the study; this run "
                  f"{wall:.0f} s; wrote {info.out}/: {', '.join(files)}",
                  highlight=False, markup=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130/143: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
