"""``scripts/capture_trace.py``: record page-table traces of live processes,
and check how well the model replays them (the recorder and the checker:
:mod:`ptreclaim.envs.host.capture`).

* ``record -o OUT.npz [--pid PID | -- COMMAND...]``: a trace of a command or a running
  process; ``OUT.npz`` is checked (its folder exists, it does not unless ``--force``)
  before the capture, so a long recording is never lost at the end;
* ``check TRACE [--png FILE]``: replays it on the model, prints the fidelity table and
  writes a plot;
* ``info TRACE``: its summary statistics.

Bad input is one line and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..envs.host.capture import (
    GOAL_REL,
    GOAL_TABLES,
    PROG,
    RecordOptions,
    check_trace,
    info,
    record,
)
from ..envs.sim.config import ConfigError, check_range
from .common import OneLineParser, check_writable, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/capture_trace.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Capture page-table traces of live processes (VmPTE, maps, per-2 MiB page presence "
        "via PAGEMAP_SCAN, memory syscalls via strace), and check how well the page-table "
        "model replays them."))
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    r = sub.add_parser("record", help="record a trace of a command or a running PID")
    r.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="trace file")
    r.add_argument("--pid", type=int, default=None, help="attach to this running process")
    r.add_argument("--interval-ms", type=float, default=100.0, metavar="MS",
                   help="sampling interval (default 100)")
    r.add_argument("--max-cpu-share", type=float, default=0.05, metavar="F",
                   help="stretch the interval to keep the sampler's CPU time under this "
                        "share of wall time (default 0.05)")
    r.add_argument("--syscalls", action=argparse.BooleanOptionalAction, default=None,
                   help="record memory syscalls with strace (default: on when strace exists)")
    r.add_argument("--method", choices=("auto", "pagemap_scan", "pagemap"), default="auto",
                   help="page presence: PAGEMAP_SCAN ioctl, raw pagemap, or auto (default)")
    r.add_argument("--duration", type=float, default=0.0, metavar="S",
                   help="stop after S seconds (default: when the process exits)")
    r.add_argument("--force", action="store_true", help="overwrite an existing OUT.npz")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    c = sub.add_parser("check", help="replay a trace on the model: fidelity table and PNG")
    c.add_argument("trace", metavar="TRACE")
    c.add_argument("--png", default=None, metavar="FILE",
                   help="plot path (default: TRACE with .fidelity.png, replaced on each "
                        "check); an existing FILE needs --force")
    c.add_argument("--force", action="store_true", help="overwrite an existing --png FILE")
    c.add_argument("--rows", type=int, default=40, help="table rows to print (default 40)")
    i = sub.add_parser("info", help="summary statistics of a trace")
    i.add_argument("trace", metavar="TRACE")
    return p


def _handle(args: argparse.Namespace, argv: list[str]) -> int:
    from rich.console import Console

    if args.cmd == "record":
        command = [w for w in args.command if w != "--"] if args.command else []
        if bool(command) == (args.pid is not None):
            raise ConfigError("record takes either --pid PID or -- COMMAND, not both or neither")
        check_range("--max-cpu-share", args.max_cpu_share, 0.0, 1.0, lo_open=True)
        check_range("--interval-ms", args.interval_ms, 0.0, 3_600_000.0, lo_open=True)
        check_range("--duration", args.duration, 0.0, 365 * 86400.0)
        if args.pid is not None:
            check_range("--pid", args.pid, 1, 2**22)  # PID_MAX_LIMIT
        # Checked before the capture, so a long recording is never lost at the end.
        if not Path(args.output).resolve().parent.is_dir():
            raise ConfigError(f"-o {args.output}: its folder does not exist; create it first")
        check_writable(args.output, "-o", force=args.force)
        if command and shutil.which(command[0]) is None and not Path(command[0]).is_file():
            raise ConfigError(f"{command[0]}: command not found")
        syscalls = args.syscalls if args.syscalls is not None else bool(shutil.which("strace"))
        opts = RecordOptions(interval_ms=args.interval_ms, max_cpu_share=args.max_cpu_share,
                             syscalls=syscalls, method=args.method, duration_s=args.duration,
                             quiet=args.quiet)
        trace = record(command or None, args.pid, opts)
        trace.save(args.output)
        size = Path(args.output).stat().st_size
        Console(stderr=True, quiet=args.quiet).print(
            f"wrote {args.output}: {trace.samples} samples, {trace.syscall_count} syscalls, "
            f"{size / 1024:.0f} KiB")
        return 0
    if args.cmd == "check":
        check_range("--rows", args.rows, 0, 1_000_000)
        png = _png_path(args.trace, args.png, args.force)
        report = check_trace(args.trace, png, rows=args.rows)
        return 0 if report.summary(GOAL_REL, GOAL_TABLES)["all_within_goal"] else 1
    if args.cmd == "info":
        import json

        print(json.dumps(info(args.trace), indent=2))
        return 0
    raise ConfigError(f"unknown subcommand {args.cmd!r}")  # argparse prevents this


def _png_path(trace: str, png: str | None, force: bool) -> Path:
    """The plot ``check`` writes, checked before the replay.  The default,
    TRACE with ``.fidelity.png``, is check's own output and is replaced (named
    with ``--png`` or not); another ``--png`` FILE must be in a folder that
    exists, must not be the trace, and must not exist unless ``force`` (as
    ``record -o``)."""
    default = Path(trace).with_suffix(".fidelity.png")
    if png is None or (Path(png).resolve() == default.resolve()):
        check_writable(default, "--png", force=True)
        return default
    path = Path(png)
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"--png {png}: its folder does not exist; create it first")
    with contextlib.suppress(OSError):
        if os.path.samefile(path, trace):
            raise ConfigError(f"--png {png}: is the trace being checked; choose another --png")
    check_writable(path, "--png", force=force)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scripts/capture_trace.py``."""
    return run_cli(PROG, build_parser(), _handle, argv)



__all__ = ["build_parser", "main"]
