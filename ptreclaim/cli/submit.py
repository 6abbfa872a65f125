"""``scripts/submit.py``: the service's client: submit, follow, download.

::

    python scripts/submit.py tune soft_hard --trials 40 --suite train --follow --download out/
    python scripts/submit.py tune soft_hard --trace data/traces/redis_jemalloc.npz --follow
    python scripts/submit.py status <job id>
    python scripts/submit.py download <job id> --out out/

``--follow`` shows a progress bar until the job ends; ``--download DIR``
then fetches its artifacts.  The token for writes comes from
``$PTRECLAIM_TOKEN`` or ``--token-file`` (default ``runs/service/token``,
which ``scripts/serve.py`` writes).  Exit status: 0 done (or submitted), 1
the job failed or was cancelled, 2 bad input or a refused request.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..envs.configio import write_text_atomic
from ..envs.sim.config import ConfigError
from .common import OneLineParser, check_writable, run_cli

PROG = "submit.py"
TOKEN_ENV = "PTRECLAIM_TOKEN"
FINAL = ("succeeded", "failed", "cancelled")


def _input_flags(p: argparse.ArgumentParser, default: str | None) -> None:
    g = p.add_argument_group("scenarios (one of)")
    g.add_argument("--suite", default=None, metavar="NAME",
                   help=f"a shipped suite or scenario (default {default or 'the experiment'})")
    g.add_argument("--scenario", type=Path, metavar="FILE", help="upload a scenario YAML")
    g.add_argument("--trace", type=Path, metavar="FILE",
                   help="upload a captured trace (.npz): it becomes a trace-workload scenario")
    g.add_argument("--copies", type=int, help="trace: processes replaying it (default 4)")
    g.add_argument("--speed", type=float, help="trace: replay speed (default 1.0)")
    g.add_argument("--ticks", type=int, help="trace: scenario length in ticks (default 900)")


def _job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", default="", help="a name to show in lists")
    p.add_argument("--wall-seconds", type=float, help="wall-time cap (default: the server's)")
    p.add_argument("--follow", action="store_true", help="show progress until the job ends")
    p.add_argument("--download", type=Path, metavar="DIR",
                   help="with --follow: download the artifacts into DIR when it succeeds")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/submit.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Submit a job to a ptreclaim service, follow its progress, download its results."))
    p.add_argument("--url", default=os.environ.get("PTRECLAIM_SERVICE_URL",
                                                   "http://127.0.0.1:8080"),
                   help="the service (default http://127.0.0.1:8080 or $PTRECLAIM_SERVICE_URL)")
    p.add_argument("--token-file", type=Path, default=Path("runs/service/token"),
                   help=f"bearer token file (default runs/service/token; ${TOKEN_ENV} wins)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=OneLineParser)
    t = sub.add_parser("tune", help="tune a heuristic's thresholds")
    t.add_argument("target", help="soft_hard or periodic_scan")
    t.add_argument("--trials", type=int, default=20, help="trials (default 20)")
    t.add_argument("--seeds", type=int, default=3, help="seeds per scenario (default 3)")
    t.add_argument("--allow-few-seeds", action="store_true", help="allow --seeds 1 or 2")
    t.add_argument("--episodes", type=int, default=1, help="episodes per seed (default 1)")
    t.add_argument("--sampler", default="tpe", choices=("tpe", "cmaes", "random"))
    t.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    _input_flags(t, "train")
    _job_flags(t)
    r = sub.add_parser("train", help="train an agent")
    r.add_argument("--experiment", default="default",
                   help="a shipped experiment (default 'default')")
    r.add_argument("--experiment-file", type=Path, metavar="FILE",
                   help="upload an experiment YAML instead")
    r.add_argument("--algo", default=None)
    r.add_argument("--timesteps", type=int, required=True, help="steps per seed")
    r.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an experiment key (repeatable)")
    r.add_argument("--eval-suite", default=None, metavar="NAME")
    _input_flags(r, None)
    _job_flags(r)
    e = sub.add_parser("evaluate", help="evaluate policies")
    e.add_argument("policies", nargs="+", metavar="POLICY",
                   help="[LABEL=]heuristic:NAME, [LABEL=]job:<id>, or a thresholds file to "
                        "upload (.yaml/.json)")
    e.add_argument("--episodes", type=int, default=5, help="episodes per scenario (default 5)")
    e.add_argument("--seed", type=int, default=0)
    _input_flags(e, "test")
    _job_flags(e)
    x = sub.add_parser("export", help="export thresholds from a train job")
    x.add_argument("run_job", help="the train job's id")
    x.add_argument("--seed", type=int, default=None, help="which seed's run (default: the first)")
    x.add_argument("--best", action="store_true", help="distil best_model.zip, not model.zip")
    x.add_argument("--iterations", type=int, default=None, help="DAgger rounds")
    x.add_argument("--episodes", type=int, default=None,
                   help="collection episodes per training scenario per round")
    x.add_argument("--tree-depth", type=int, default=0)
    x.add_argument("--eval-episodes", type=int, default=None)
    x.add_argument("--no-unseen", action="store_true",
                   help="skip the evaluation on the run's unseen suite")
    _job_flags(x)
    for name, text in (("status", "show a job"), ("follow", "follow a job until it ends"),
                       ("cancel", "cancel a job")):
        s = sub.add_parser(name, help=text)
        s.add_argument("job")
    d = sub.add_parser("download", help="download a job's artifacts")
    d.add_argument("job")
    d.add_argument("names", nargs="*", help="artifact names (default: all)")
    d.add_argument("--out", type=Path, required=True, metavar="DIR")
    ls = sub.add_parser("list", help="list jobs")
    ls.add_argument("--state", default=None)
    return p


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``$PTRECLAIM_TOKEN``, else the ``--token-file``
    (None when that file does not exist: reads need no token)."""
    from ..service.client import header_safe

    if os.environ.get(TOKEN_ENV, "").strip():
        token = os.environ[TOKEN_ENV].strip()
        if not header_safe(token):
            raise ConfigError(f"${TOKEN_ENV} holds characters an HTTP header cannot carry "
                              f"(non-ASCII or control characters); set it to the token "
                              f"scripts/serve.py wrote")
        return token
    path = args.token_file
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--token-file {path}: not a text file (not UTF-8); give the token "
                          f"file scripts/serve.py writes (runs/service/token under its "
                          f"--root) or set ${TOKEN_ENV}") from None
    if not token:
        raise ConfigError(f"--token-file {path}: is empty; give the token file scripts/serve.py "
                          f"writes on its first start (runs/service/token under its --root) "
                          f"or set ${TOKEN_ENV}") from None
    if not header_safe(token):
        raise ConfigError(f"--token-file {path}: holds characters an HTTP header cannot carry "
                          f"(non-ASCII, control characters or several lines); give the token "
                          f"file scripts/serve.py writes or set ${TOKEN_ENV}") from None
    return token


def _input(args: argparse.Namespace, files: dict[str, Path]) -> dict[str, Any] | None:
    given = [f for f in ("suite", "scenario", "trace") if getattr(args, f) is not None]
    if len(given) > 1:
        raise ConfigError(f"give one of --suite, --scenario, --trace (not {', '.join(given)})")
    trace_opts = {k: getattr(args, k) for k in ("copies", "speed", "ticks")
                  if getattr(args, k) is not None}
    if trace_opts and args.trace is None:
        raise ConfigError("--copies/--speed/--ticks apply to --trace only")
    if args.scenario is not None:
        files["scenario"] = args.scenario
        return {"source": "scenario"}
    if args.trace is not None:
        files["trace"] = args.trace
        return {"source": "trace", **trace_opts}
    return {"source": "shipped", "name": args.suite} if args.suite else None


def build_spec(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Path]]:
    """The job spec and the files to upload of a submitting command."""
    files: dict[str, Path] = {}
    spec: dict[str, Any] = {"kind": args.command, "label": args.label}
    if args.wall_seconds is not None:
        spec["wall_seconds"] = args.wall_seconds
    if args.command != "export":
        inp = _input(args, files)
        if inp is not None:
            spec["input"] = inp
    if args.command == "tune":
        spec.update(target=args.target, trials=args.trials, seeds=args.seeds,
                    allow_few_seeds=args.allow_few_seeds, episodes=args.episodes,
                    sampler=args.sampler, seed=args.seed)
    elif args.command == "train":
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds {args.seeds!r}: expected comma-separated integers"
                              ) from None
        spec.update(experiment=args.experiment, timesteps=args.timesteps, seeds=seeds,
                    overrides=args.set)
        if args.experiment_file is not None:
            spec["experiment"] = "upload"
            files["experiment"] = args.experiment_file
        for key in ("algo", "eval_suite"):
            if getattr(args, key):
                spec[key] = getattr(args, key)
    elif args.command == "evaluate":
        policies = []
        for p in args.policies:
            if Path(p).suffix.lower() in (".yaml", ".yml", ".json") and ":" not in p:
                if "thresholds" in files:
                    raise ConfigError("one thresholds file per job; evaluate the others in "
                                      "another job")
                files["thresholds"] = Path(p)
                policies.append("upload:thresholds")
            else:
                policies.append(p)
        spec.update(policies=policies, episodes=args.episodes, seed=args.seed)
    else:
        # The flags of export_thresholds.py that the export job takes, under its names.
        spec.update(run_job=args.run_job, tree_depth=args.tree_depth, best=args.best,
                    unseen=not args.no_unseen)
        for key in ("seed", "iterations", "episodes", "eval_episodes"):
            if getattr(args, key) is not None:
                spec[key] = getattr(args, key)
    return spec, files


def _line(job: dict[str, Any]) -> str:
    eta = job.get("eta_seconds")
    tail = f", ETA {eta:.0f} s" if eta is not None and job["state"] == "running" else ""
    err = f": {job['error']}" if job.get("error") else ""
    return (f"job {job['id']} ({job['kind']}) {job['state']}: {100 * job['progress']:.0f} % "
            f"{job['phase']}{tail}{err}")


def follow(client: Any, job_id: str, quiet: bool = False, poll: float = 1.0
           ) -> dict[str, Any]:
    """Poll a job until it ends, with a progress bar on a terminal (a line
    per change otherwise); returns its last state."""
    from .common import progress_bar

    job = client.job(job_id)
    shown = ""
    # Off a terminal this prints its own line per change (state, phase, error), which
    # says more than progress_bar's line per tenth: the bar is for terminals only.
    with progress_bar(f"job {job_id}", 1000, not quiet and sys.stderr.isatty()) as update:
        while True:
            if update is not None:
                update(int(1000 * job["progress"]))
            elif not quiet and (key := f"{job['state']} {job['progress']:.3f} {job['phase']}"
                                ) != shown:
                # A line per change of state, progress or phase (not of the ETA alone).
                shown = key
                print(_line(job), file=sys.stderr, flush=True)
            if job["state"] in FINAL:
                return dict(job)
            time.sleep(poll)
            job = client.job(job_id)


def download(client: Any, job_id: str, out: Path, names: Sequence[str] = ()) -> list[Path]:
    """Write a job's artifacts (all, or ``names``) into ``out`` (atomically)."""
    from ..service.worker import safe_name

    wanted = list(names) or [a["name"] for a in client.artifacts(job_id)]
    written = []
    for name in wanted:
        if not safe_name(name):
            raise ConfigError(f"artifact name {name!r} is not a plain relative path")
        path = out / name
        write_text_atomic(path, client.artifact(job_id, name))
        written.append(path)
    return written


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..service.client import Client, ServiceError

    token = _token(args)
    try:
        client = Client(args.url, token)
    except ServiceError as exc:  # a URL that cannot be parsed
        raise ConfigError(f"--url {exc}") from None
    try:
        with client:
            return _run(args, client)
    except ServiceError as exc:
        raise ConfigError(str(exc)) from None


def _run(args: argparse.Namespace, client: Any) -> int:
    cmd = args.command
    if cmd == "list":
        for job in client.jobs(args.state):
            print(_line(job))
        return 0
    if cmd == "status":
        print(json.dumps(client.job(args.job), indent=1))
        return 0
    if cmd == "cancel":
        print(_line(client.cancel(args.job)))
        return 0
    if cmd == "download":
        check_writable(args.out, "--out", folder=True)
        for path in download(client, args.job, args.out, args.names):
            print(path)
        return 0
    if cmd == "follow":
        job = follow(client, args.job)
    else:
        if args.download is not None and not args.follow:
            raise ConfigError("--download needs --follow (or use: submit.py download JOB)")
        if args.download is not None:
            # Before the job is submitted: an unwritable folder is known now, not hours later.
            check_writable(args.download, "--download", folder=True)
        spec, files = build_spec(args)
        job = client.submit(spec, files)
        print(f"submitted job {job['id']} ({job['kind']}): {args.url.rstrip('/')}/jobs/"
              f"{job['id']}", flush=True)
        if not args.follow:
            return 0
        job = follow(client, job["id"])
    print(_line(job))
    if job["state"] != "succeeded":
        return 1
    if getattr(args, "download", None) is not None:
        for path in download(client, job["id"], args.download):
            print(f"downloaded {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 1 the job failed, 2 bad input)."""
    return run_cli(PROG, build_parser(), _main, argv)
