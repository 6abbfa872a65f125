"""``scripts/serve.py``: the HTTP API on uvicorn, with N local workers.

::

    python scripts/serve.py                       # 127.0.0.1:8080, SQLite, 1 worker
    python scripts/serve.py --workers 2
    python scripts/serve.py --db postgresql://ptreclaim@dbhost/ptreclaim --workers 0

By default everything is embedded: the job store is
``runs/service/service.db`` (SQLite), job folders are
``runs/service/<job id>/``, and ``--workers`` local workers (default 1) run
the jobs.  With ``--db postgresql://...`` the store is shared, and workers on
other machines (``scripts/worker.py --db ...``) take jobs from it too.  The
bearer token for writes is made on first start in ``runs/service/token``
(mode 0600).  SIGINT or SIGTERM stops the server and its workers; a running
job goes back to the queue (saved as the command lines save on a stop) and
resumes at the next start.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..envs.sim.config import ConfigError
from .common import OneLineParser, run_cli
from .worker import add_worker_flags, check_db_url, check_worker_flags, open_store

PROG = "serve.py"
#: Seconds the workers get to hand their jobs back on shutdown (training saves a checkpoint).
STOP_WAIT = 120.0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/serve.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Serve the ptreclaim job API and web page (FastAPI on uvicorn) and run local "
        "workers. Jobs: tune a heuristic, train an agent, evaluate policies, export "
        "thresholds; inputs: shipped scenarios, uploaded scenario YAML or captured traces."))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes, one job each at a time (default 1; 0: only "
                        "the API, workers run elsewhere)")
    add_worker_flags(p)
    g = p.add_argument_group("caps on one job (requests over them get 422)")
    g.add_argument("--max-trials", type=int, default=200, help="tuning trials (default 200)")
    g.add_argument("--max-timesteps", type=int, default=2_000_000,
                   help="training steps, all seeds together (default 2000000)")
    g.add_argument("--max-wall-seconds", type=float, default=6 * 3600.0,
                   help="wall time of a job over all its attempts (default 21600)")
    g.add_argument("--max-episodes", type=int, default=200,
                   help="episodes per scenario of an evaluation or tuning trial (default 200)")
    g.add_argument("--max-upload-mib", type=float, default=64.0,
                   help="size of an uploaded trace, MiB (YAML files: 256 KiB) (default 64)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--openapi", type=Path, metavar="FILE",
                   help="write the API's OpenAPI schema to FILE and exit (docs/openapi.json)")
    return p


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: {args.port} is not a port; allowed [1, 65535]")
    if not 0 <= args.workers <= 64:
        raise ConfigError(f"--workers: {args.workers} is out of range; allowed [0, 64]")
    check_worker_flags(args)
    for flag, value in (("--max-trials", args.max_trials), ("--max-timesteps", args.max_timesteps),
                        ("--max-wall-seconds", args.max_wall_seconds),
                        ("--max-episodes", args.max_episodes),
                        ("--max-upload-mib", args.max_upload_mib)):
        if not value > 0:
            raise ConfigError(f"{flag}: {value} must be > 0")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a port in use is one line, not a log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                          f"({exc.strerror or exc}); choose another --port") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _start_workers(n: int, url: str, root: Path, args: argparse.Namespace
                   ) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PTRECLAIM_SERVICE_DB"] = url  # never on a command line (ps shows those)
    cmd = [sys.executable, "-m", "ptreclaim.cli.worker", "--root", str(root),
           "--lease-seconds", str(args.lease_seconds), "--env-threads", str(args.env_threads),
           "--parent-pid", str(os.getpid())]
    return [subprocess.Popen([*cmd, "--name", f"{socket.gethostname()}:local{i}"], env=env,
                             stdin=subprocess.DEVNULL) for i in range(n)]


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=STOP_WAIT)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import uvicorn

    from ..service.app import TOKEN_FILE, create_app, load_or_create_token
    from ..service.specs import BadRequest, Limits
    from ..service.store import Store, redacted
    from ..service.worker import service_dir

    _check(args)
    if args.openapi is not None:
        from ..envs.configio import write_text_atomic
        from ..service.app import openapi_text

        # The schema needs no database: an in-memory one stands in.
        write_text_atomic(args.openapi, openapi_text(create_app(Store("sqlite://"), "", Limits())))
        print(f"serve.py: wrote {args.openapi}")
        return 0
    root = Path(args.root).resolve()
    sdir = service_dir(root)
    url = check_db_url(args.db or f"sqlite:///{sdir / 'service.db'}")
    sdir.mkdir(parents=True, exist_ok=True)
    try:
        token = load_or_create_token(sdir / TOKEN_FILE)
    except BadRequest as exc:
        raise ConfigError(exc.message) from None
    store = open_store(url)
    limits = Limits(max_trials=args.max_trials, max_timesteps=args.max_timesteps,
                    max_wall_seconds=args.max_wall_seconds, max_episodes=args.max_episodes,
                    max_trace_bytes=int(args.max_upload_mib * 1024 * 1024))
    sock = _listen(args.host, args.port)
    app = create_app(store, token, limits)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serve.py: http://{shown}:{args.port}/ (API docs at /docs); job store "
          f"{redacted(url)}; job folders {sdir}/; {args.workers} local worker(s); "
          f"the bearer token for writes is in {sdir / TOKEN_FILE} (mode 0600)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serve.py: listening on {args.host}: plain HTTP, so the token crosses the "
              "network in clear; put a TLS proxy in front", file=sys.stderr, flush=True)
    workers = _start_workers(args.workers, url, root, args)
    config = uvicorn.Config(app, log_level="info", access_log=args.access_log,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        _stop_workers(workers)
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input)."""
    # uvicorn handles SIGINT/SIGTERM itself (a graceful shutdown), then the workers stop.
    return run_cli(PROG, build_parser(), _main, argv, signals=False)
