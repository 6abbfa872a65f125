"""``scripts/worker.py``: a worker that takes jobs from a shared job store.

::

    PGPASSWORD=... python scripts/worker.py --db postgresql://ptreclaim@dbhost/ptreclaim

Claims one job at a time (row locks and leases,
:mod:`ptreclaim.service.store`), runs it in its job folder
``<root>/runs/service/<job id>/`` and copies its progress and artifacts into
the store (:mod:`ptreclaim.service.worker`).  SIGINT or SIGTERM hands the
running job back to the queue (it stops the way the command lines stop) and
exits; a worker killed outright leaves its job to another once the lease
runs out.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..envs.sim.config import ConfigError
from .common import OneLineParser, run_cli

if TYPE_CHECKING:
    from ..service.store import Store

PROG = "worker.py"
DB_ENV = "PTRECLAIM_SERVICE_DB"
DB_HELP = ("give sqlite:///path/service.db or postgresql://user@host/dbname (the password "
           "in PGPASSWORD or ~/.pgpass, not in the URL)")


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """``--db``, ``--root`` and ``--lease-seconds``: shared by serve.py and worker.py."""
    p.add_argument("--db", default=None, metavar="URL",
                   help=f"job store: SQLAlchemy URL (default sqlite:///<root>/runs/service/"
                        f"service.db; or ${DB_ENV}); postgresql://... to share it")
    p.add_argument("--root", default=".", metavar="DIR",
                   help="folder whose runs/service/ holds the job folders (default: here)")
    p.add_argument("--lease-seconds", type=float, default=30.0, metavar="S",
                   help="a job whose worker is silent this long is taken by another "
                        "(default 30)")
    p.add_argument("--env-threads", type=int, default=1, metavar="N",
                   help="threads that step a training job's envs (the experiment's "
                        "env_threads; default 1; 2 where a worker's job would leave a core "
                        "idle: the same results, faster, for more CPU)")


def check_worker_flags(args: argparse.Namespace) -> None:
    """The ranges of :func:`add_worker_flags`' numbers; else one line."""
    if not 1.0 <= args.lease_seconds <= 3600:
        raise ConfigError(f"--lease-seconds: {args.lease_seconds} is out of range; allowed "
                          "[1, 3600]")
    if not 1 <= args.env_threads <= 64:
        raise ConfigError(f"--env-threads: {args.env_threads} is out of range; allowed "
                          "[1, 64]")


def check_db_url(url: str) -> str:
    """``url`` if SQLAlchemy takes it and it names SQLite or PostgreSQL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except ArgumentError:
        raise ConfigError(f"--db: not a database URL; {DB_HELP}") from None
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"--db: {u.get_backend_name()!r} is not supported; {DB_HELP}")
    if u.get_backend_name() == "sqlite" and not u.database:
        raise ConfigError(f"--db: an in-memory SQLite store cannot be shared; {DB_HELP}")
    return url


def open_store(url: str) -> Store:
    """The job store at ``url``, reachable now; else one line (exit status 2)."""
    from ..service.store import Store, redacted

    try:
        store = Store(url)
        store.ping()
    except Exception as exc:  # drivers raise many kinds for a bad URL or a down server
        raise ConfigError(f"--db {redacted(url)}: cannot open the job store "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); {DB_HELP}"
                          ) from None
    return store


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/worker.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Take ptreclaim service jobs from a job store and run them, one at a time."))
    add_worker_flags(p)
    p.add_argument("--name", default=None,
                   help="this worker's name in the job store (default host:pid)")
    p.add_argument("--once", action="store_true",
                   help="run at most one job, then exit (exit at once when none is queued)")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return p


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..agents.interrupts import die_with_parent
    from ..service.store import redacted
    from ..service.worker import Worker, WorkerConfig, service_dir

    if args.parent_pid is not None:
        # A local worker of serve.py: stop when the server goes, however it goes.
        die_with_parent(args.parent_pid)
    check_worker_flags(args)
    root = Path(args.root).resolve()
    url = check_db_url(args.db or os.environ.get(DB_ENV)
                       or f"sqlite:///{service_dir(root) / 'service.db'}")
    store = open_store(url)
    cfg = WorkerConfig(url=url, root=root, lease_seconds=args.lease_seconds,
                       heartbeat_seconds=min(2.0, args.lease_seconds / 4),
                       env_threads=args.env_threads)
    if args.name:
        cfg.name = args.name
    worker = Worker(cfg, store)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, worker.request_stop)
    print(f"worker.py: {cfg.name} takes jobs from {redacted(url)} into {service_dir(root)}/",
          flush=True)
    try:
        worker.run(once=args.once)
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input)."""
    return run_cli(PROG, build_parser(), _main, argv, signals=False)


if __name__ == "__main__":  # serve.py starts its local workers as `python -m ptreclaim.cli.worker`
    import sys

    sys.exit(main())
