"""``scripts/train.py``: train SB3 agents on the page-table reclaim env, from YAML.

An experiment (``configs/experiments/<name>.yaml``,
:class:`~ptreclaim.agents.training.config.ExperimentConfig`) says what to
train; flags and ``--set key=value`` override it.  Every run writes a
self-describing folder ``runs/<experiment>__<algo>__<seed>__<time>/``
(:mod:`ptreclaim.agents.runs`); several seeds train in turn or ``--jobs`` at
a time (:mod:`ptreclaim.agents.training.multi`).  Exit status: 0 done, 1 a
seed failed (its weights went NaN: the run is marked ``failed``), 2 bad input
(one ``train.py: error:`` line, nothing overwritten), 128 + signal number when
interrupted (a checkpoint is saved first; ``--resume RUN_DIR`` continues,
``docs/interrupts.md`` says what each command keeps).

``--resume`` checks the run folder before any work: its config and state
(one line for each way they can be damaged) and that every file it will load
was written by this machine's ptreclaim (``docs/trust.md``); with
``--trust-model`` it adopts a folder from elsewhere instead (signs its files).
The process training a run holds its folder: a second one is refused.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..agents.interrupts import stop_signals
from ..agents.loading import ALGOS, trust_run
from ..agents.runs import RunFolder
from ..agents.training.config import (
    TrainError,
    coerce_number,
    load_experiment,
    resolve_scenarios,
)
from ..agents.training.hyperparams import load_hyperparams, materialize
from ..agents.training.loop import Output, check_resumable, check_resume, console, train_run
from ..agents.training.multi import read_runs, run_multi
from ..agents.training.runconfig import read_run_config, start_run, train_command
from ..envs.sim.config import ConfigError, quote
from .common import OneLineParser, check_writable, run_cli

PROG = "train.py"


def _count(text: str) -> int:
    """A non-negative integer, also written 100_000 or 1e5."""
    try:
        value = coerce_number(text.replace("_", ""))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {quote(text)}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/train.py``."""
    p = OneLineParser(prog=PROG,
                      description="Train an SB3 agent on ptreclaim from an experiment YAML "
                                  "(default: configs/experiments/default.yaml).")
    p.add_argument("--config", type=Path, help="experiment YAML")
    p.add_argument("--algo", help=f"algorithm: {', '.join(ALGOS)}")
    p.add_argument("--seed", type=_count, help="train this one seed")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--jobs", type=_count, help="seeds trained in parallel processes")
    p.add_argument("--timesteps", type=_count, help="training steps per seed (100000, 1e5)")
    p.add_argument("--n-envs", type=_count, help="parallel envs per seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment key, e.g. env.decision_ticks=20 or "
                        "hyperparams.ppo.learning_rate=lin_1e-3 (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run to its total, with its own config")
    p.add_argument("--trust-model", action="store_true",
                   help="with --resume: adopt a run folder this machine did not write (its "
                        "model and statistics files hold pickles, which can run code when "
                        "loaded): its files are signed as this machine's")
    p.add_argument("--out", type=Path, default=Path("runs"), help="runs folder (default runs/)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines, no live bar")
    # Train one seed in this new folder (a scheduler that names its runs itself).
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    return p


def _cli_sets(args: argparse.Namespace) -> list[tuple[str, str]]:
    sets: list[tuple[str, str]] = []
    if args.algo is not None:
        sets.append((f"--algo {args.algo}", f"algo={args.algo}"))
    if args.seed is not None and args.seeds is not None:
        raise TrainError("give --seed or --seeds, not both")
    if args.seed is not None:
        sets.append((f"--seed {args.seed}", f"seeds=[{args.seed}]"))
    if args.seeds is not None:
        parts = [s.strip() for s in args.seeds.split(",") if s.strip()]
        if not parts or not all(re.fullmatch(r"\d+", s) for s in parts):
            raise TrainError(f"--seeds {args.seeds!r}: expected comma-separated integers, "
                             "e.g. 0,1,2")
        sets.append((f"--seeds {args.seeds}", f"seeds=[{','.join(parts)}]"))
    if args.jobs is not None:
        sets.append((f"--jobs {args.jobs}", f"jobs={args.jobs}"))
    if args.timesteps is not None:
        sets.append((f"--timesteps {args.timesteps}", f"timesteps={args.timesteps}"))
    if args.n_envs is not None:
        sets.append((f"--n-envs {args.n_envs}", f"n_envs={args.n_envs}"))
    sets += [("--set", s) for s in args.set]
    return sets



def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    return run_cli(PROG, build_parser(), _main, argv, signals=False)


def _resume(args: argparse.Namespace, command: str, con: Any, live: bool) -> int:
    given = [f for f in ("config", "algo", "seed", "seeds", "jobs", "timesteps", "n_envs")
             if getattr(args, f) is not None] + (["set"] if args.set else [])
    if given:
        raise TrainError(f"--resume continues a run with its own config; drop "
                         f"{', '.join('--' + g.replace('_', '-') for g in given)}")
    run = RunFolder(args.resume)
    if not run.path.is_dir():
        raise TrainError(f"{run}: no such run folder; pass a folder that scripts/train.py "
                         "created")
    # Held until the run ends (train_run and run_multi claim it again, reentrantly).
    with run.claim():
        if run.is_multi:
            exp, _ = load_experiment(run / "experiment.yaml")
            for seed_run in read_runs(run).values():
                if (seed_run / "state.json").is_file():
                    state = seed_run.read_state()
                    if state["status"] not in ("finished", "failed"):
                        cfg = read_run_config(seed_run)
                        if args.trust_model:
                            trust_run(seed_run.path)
                        check_resume(seed_run, cfg, state)
            return run_multi(exp, load_hyperparams(exp), resolve_scenarios(exp), run.parent,
                             command, con, live, multi=run)
        cfg = read_run_config(run)
        state = run.read_state()
        # Refused before --trust-model signs anything: nothing is written then.
        check_resumable(run, state)
        if args.trust_model:
            trust_run(run.path)
        check_resume(run, cfg, state)
        run.add_command(command)
        with stop_signals("flag"):
            return train_run(run, cfg, Output(con, live), resume=True)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    con = console()
    live = con.is_terminal and not args.no_progress
    command = train_command(argv)
    if args.resume is not None:
        return _resume(args, command, con, live)
    if args.trust_model:
        raise TrainError("--trust-model applies to --resume only (training loads no model); "
                         "drop it")
    if args.run_dir is not None:
        check_writable(args.run_dir, "--run-dir", folder=True)
    else:
        check_writable(args.out, "--out", folder=True)
    exp, _ = load_experiment(args.config, _cli_sets(args))
    scen = resolve_scenarios(exp)
    hp = load_hyperparams(exp)
    # Fail on a bad hyperparameter combination now, not after creating a folder.
    materialize(exp.algo, hp)
    if args.run_dir is not None:
        if len(exp.seeds) != 1:
            raise TrainError("--run-dir takes exactly one seed")
        try:
            args.run_dir.mkdir(parents=True)
        except FileExistsError:
            raise TrainError(f"{args.run_dir}: exists; never overwriting a run") from None
        run = RunFolder(args.run_dir)
        cfg = start_run(run, exp, exp.seeds[0], hp, scen, command)
        with stop_signals("flag"):
            return train_run(run, cfg, Output(con, False, f"[seed {exp.seeds[0]}] "))
    if len(exp.seeds) == 1:
        run = RunFolder.create(args.out, exp.name, exp.algo, str(exp.seeds[0]))
        cfg = start_run(run, exp, exp.seeds[0], hp, scen, command)
        with stop_signals("flag"):
            return train_run(run, cfg, Output(con, live))
    return run_multi(exp, hp, scen, args.out, command, con, live)
