"""``scripts/monitor.py``: the live advisor, read-only, in shadow mode.

Every ``--interval`` seconds it samples the host the way the env observes the
simulator and prints what the policy would do now and why
(:mod:`ptreclaim.agents.advisor`); it never acts::

    python scripts/monitor.py --policy thresholds.yaml            # live table
    python scripts/monitor.py --policy thresholds.yaml --once --json
    python scripts/monitor.py --policy runs/default__ppo__0__20250101-120000 --count 12

``--policy`` takes anything ``evaluate.py`` takes (an exported thresholds
``.yaml``/``.json``, ``heuristic:NAME[:params.yaml]``, a run folder, a model
``.zip``).  ``--scan-top K`` also walks the mappings of the top K page-table
consumers with ``PAGEMAP_SCAN`` to estimate how many of their PTE tables are
empty.

Strictly read-only: it opens files under ``/proc`` for reading only, writes
nothing but its own output (stdout, or the ``--json-out`` file it appends
to, and the ``--plot`` PNG) and sends no signal (``tests/test_monitor.py``
runs it under strace and under an audit hook to check).  Ctrl-C (or SIGTERM)
is how it is stopped: not an error, exit status 0.  Bad input prints one line
on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from ..agents.advisor import Advisor, Interval, LivePolicy, default_policy_arg, load_policy
from ..agents.heuristics import HEURISTICS
from ..agents.report import png, pyplot
from ..envs.configio import write_text_atomic
from ..envs.features import OBS_NAMES
from ..envs.host.sample import PAGE_KIB, Notes, os_reason
from ..envs.sim.config import ConfigError, check_range
from ..envs.simulate import plot_psi
from .common import OneLineParser, add_model_flags, check_writable, run_cli

if TYPE_CHECKING:
    from rich.console import RenderableType

PROG = "monitor.py"


def render(it: Interval, live: LivePolicy, scan_top: int) -> RenderableType:
    """The rich view of one interval: the advice, then the top consumers."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    a = it.advice
    z = it.host.zone
    psi = it.host.psi
    head = Text()
    head.append(f"{live.spec.label}: ", style="bold")
    head.append(a.summary(), style="bold red" if a.target != "none" else "bold green")
    head.append(f"\n  why: {a.reason}")
    if a.pid is not None:
        head.append(f"\n  target: PID {a.pid} {a.cmdline or a.comm}")
    pt = it.host.pt_kib
    pt_text = "?" if pt is None else f"{pt / 1024:.1f} MiB"
    psi_text = "n/a" if psi is None else f"{100 * psi.get('some_avg10', 0.0):.2f} %"
    head.append(
        f"\n  host: unmovable zone {z.pages * PAGE_KIB / 1024:.0f} MiB, free "
        f"{z.free * PAGE_KIB / 1024:.0f} MiB (watermarks min/low/high {z.min}/{z.low}/{z.high} "
        f"pages); page tables {pt_text}; PSI some avg10 {psi_text}"
        f"\n  sample {it.index}: {len(it.scan.procs)} processes ({len(it.scan.unreadable)} "
        f"unreadable); {it.wall_ms:.0f} ms wall, {it.cpu_ms:.0f} ms CPU", style="dim")
    table = Table(title="top page-table consumers", title_justify="left")
    for col in ("PID", "comm", "VmPTE MiB", "VmRSS MiB", "PT/(RSS+PT)", "maps"):
        table.add_column(col, justify="left" if col == "comm" else "right")
    if scan_top:
        table.add_column("empty tables (est.)", justify="right")
    for p in it.top:
        mark = " *" if p.pid == a.pid else ""
        row = [f"{p.pid}{mark}", it.comms.get(p.pid, "?"), f"{p.pte_kib / 1024:.2f}",
               f"{p.rss_kib / 1024:.1f}", f"{p.ratio:.3f}", "?" if p.maps is None else str(p.maps)]
        if scan_top:
            res = it.empty.get(p.pid)
            row.append("" if res is None else str(res.empty_tables))
        table.add_row(*row, style="bold" if mark else None)
    return Group(head, table)


class JsonSink:
    """One JSON line per interval to a text stream or appended to a file.

    A file is opened in append mode and each line goes out in one ``write``
    and is flushed: earlier lines are never rewritten (a crash can cost at
    most the last line), which an atomic whole-file rewrite per interval
    would make quadratic."""

    def __init__(self, stream: TextIO | None, path: Path | None) -> None:
        self.stream = stream
        self.path = path
        self._file: TextIO | None = None
        if path is not None:
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            except OSError as exc:
                raise ConfigError(f"--json-out {path}: cannot open for appending: "
                                  f"{os_reason(exc)}; choose another file") from None

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        for f in (self.stream, self._file):
            if f is not None:
                f.write(line)
                f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass(frozen=True)
class Point:
    """What ``--plot`` keeps of one interval (small: a day at 5 s is 17280 points)."""

    t: float  # seconds since the first sample
    pt_frac: float
    top1_pt_frac: float
    top1_pt_ratio: float
    free_vs_wmark: float
    free_frac: float
    psi_some_avg10: float
    psi_full_avg10: float
    budget_tables: int
    pid: int | None


def point(it: Interval, t: float) -> Point:
    """The plotted signals of one interval."""
    o = {n: float(v) for n, v in zip(OBS_NAMES, it.obs, strict=True)}
    return Point(t, o["pt_frac"], o["top1_pt_frac"], o["top1_pt_ratio"], o["free_vs_wmark"],
                 o["free_frac"], o["psi_some_avg10"], o["psi_full_avg10"],
                 it.advice.budget_tables, it.advice.pid)


def plot_session(points: Sequence[Point], title: str, dpi: int = 90) -> bytes:
    """The PNG timeline of a session (bytes): page-table signals with the
    advised passes, free memory against the watermarks, PSI."""
    plt = pyplot()
    t = np.array([p.t for p in points])
    fig, (ax_pt, ax_free, ax_psi) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 2, 1.5]})
    ax_pt.plot(t, [p.pt_frac for p in points], color="black", lw=1.4,
               label="page tables / unmovable zone (pt_frac)")
    ax_pt.plot(t, [p.top1_pt_frac for p in points], color="tab:blue", lw=1.0,
               label="largest holder (top1_pt_frac)")
    ax_pt.set_ylabel("fraction of the zone")
    ax_pt.set_ylim(bottom=0)
    ax_r = ax_pt.twinx()
    ax_r.plot(t, [p.top1_pt_ratio for p in points], color="tab:orange", lw=1.0, ls="--",
              label="largest holder's tables / (RSS + tables)")
    ax_r.set_ylim(0, 1.05)
    ax_r.set_ylabel("ratio")
    adv = [p for p in points if p.budget_tables > 0]
    if adv:
        ys = [p.pt_frac for p in adv]
        ax_pt.scatter([p.t for p in adv], ys, marker="v", color="tab:red", zorder=3,
                      label=f"reclaim advised ({len(adv)} of {len(points)} intervals)")
        last: int | None = -1
        for p, y in zip(adv, ys, strict=True):
            if p.pid != last:  # label where the target changes, not every interval
                ax_pt.annotate("global" if p.pid is None else f"PID {p.pid}", (p.t, y),
                               xytext=(2, 6), textcoords="offset points", fontsize=7)
                last = p.pid
    lines = ax_pt.get_legend_handles_labels()
    more = ax_r.get_legend_handles_labels()
    # Above the panel: the lines may sit anywhere inside it.
    ax_pt.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize=7,
                 frameon=False, ncol=2, bbox_to_anchor=(0.0, 1.0))
    ax_free.plot(t, [p.free_vs_wmark for p in points], color="tab:blue", lw=1.0,
                 label="(free - min) / (high - min) / 4, clipped (free_vs_wmark)")
    ax_free.plot(t, [p.free_frac for p in points], color="tab:green", lw=1.0,
                 label="free / zone (free_frac)")
    ax_free.axhline(0.0, color="tab:red", lw=0.8, ls=":", label="min watermark")
    ax_free.set_ylim(-1.05, 1.05)
    ax_free.legend(loc="lower left", fontsize=7, frameon=False)
    plot_psi(ax_psi, t, [100 * p.psi_some_avg10 for p in points],
             [100 * p.psi_full_avg10 for p in points], "PSI memory (%)")
    ax_psi.set_xlabel("seconds since the first sample")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return png(fig, dpi)


# ------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/monitor.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Live advisor, read-only: every INTERVAL seconds, sample this host (zone free memory "
        "and watermarks, PSI, page tables, every process's VmPTE/VmRSS/mappings), build the "
        "env's observation and print what the policy would reclaim now, from whom, and why. "
        "It never writes to /proc or /sys and never signals a process."))
    p.add_argument("--policy", default=None, metavar="SPEC",
                   help="an exported thresholds .yaml/.json (default: ./thresholds.yaml if "
                        "present, else heuristic:soft_hard), heuristic:NAME[:params.yaml] "
                        f"(NAME: {', '.join(HEURISTICS)}), a run folder or a model .zip")
    p.add_argument("--interval", type=float, default=5.0, metavar="S",
                   help="seconds between samples (default 5)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after N samples; 0 (the default) means no limit: run until Ctrl-C")
    p.add_argument("--once", action="store_true", help="one sample, then exit (= --count 1)")
    p.add_argument("--json", action="store_true",
                   help="one JSON line per interval on stdout instead of the table")
    p.add_argument("--json-out", default=None, metavar="FILE",
                   help="append one JSON line per interval to FILE (the table still shows)")
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="rows of top page-table consumers shown and logged (default 10)")
    p.add_argument("--scan-top", type=int, default=0, metavar="K",
                   help="estimate empty PTE tables of the top K consumers with a PAGEMAP_SCAN "
                        "pass over their mappings (default 0: off)")
    p.add_argument("--no-maps", action="store_true",
                   help="do not count every process's mappings (saves reading /proc/PID/maps)")
    p.add_argument("--proc-root", default="/proc", metavar="DIR",
                   help="where procfs is mounted (default /proc; tests point it at a fake tree)")
    add_model_flags(p)
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="at the end (after --count samples or Ctrl-C) write a PNG timeline "
                        "of the session: page-table signals with the advised passes, free "
                        "memory, PSI")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no table (with --json-out: only the file is written)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    check_range("--interval", args.interval, 0.05, 86400.0)
    check_range("--count", args.count, 0, 2**63 - 1)
    check_range("--top", args.top, 1, 1000)
    check_range("--scan-top", args.scan_top, 0, 256)
    root = Path(args.proc_root)
    if not root.is_dir():
        raise ConfigError(f"--proc-root {root}: not a folder; point it at a mounted procfs")
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".png":
            raise ConfigError(f"--plot {plot}: the plot is a PNG; name it *.png")
        if not plot.resolve().parent.is_dir():
            raise ConfigError(f"--plot {plot}: no folder {plot.parent}; create it first")
        # Now, not after a session of hours: the plot is written at its end.
        check_writable(plot, "--plot")


def _ticks(interval: float, count: int) -> Iterator[int]:
    """Sample indices, sleeping so that samples start ``interval`` apart."""
    start = time.monotonic()
    k = 0
    while count == 0 or k < count:
        if k:
            time.sleep(max(0.0, start + k * interval - time.monotonic()))
        yield k
        k += 1


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from rich.console import Console

    _check_args(args)
    notes = Notes()
    count = 1 if args.once else args.count
    root = Path(args.proc_root).resolve()
    live = load_policy(args.policy or default_policy_arg(notes), best=args.best,
                       trust_model=args.trust_model)
    sink = (JsonSink(sys.stdout if args.json else None,
                     Path(args.json_out) if args.json_out else None)
            if args.json or args.json_out else None)
    show = not args.json and not args.quiet
    console = Console(width=None if sys.stdout.isatty() else 130)
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 130)
    advisor = Advisor(live, root, notes, args.interval, args.top, args.scan_top,
                      not args.no_maps)
    live_view = show and sys.stdout.isatty() and count != 1
    emit: Callable[[Interval], None]
    with contextlib.ExitStack() as stack:
        if sink is not None:
            stack.callback(sink.close)
        if live_view:
            from rich.live import Live

            view = stack.enter_context(Live(console=console, auto_refresh=False))

            def emit_live(it: Interval) -> None:
                view.update(render(it, live, args.scan_top), refresh=True)

            emit = emit_live
        else:
            def emit_plain(it: Interval) -> None:
                console.print(render(it, live, args.scan_top))

            emit = emit_plain
        points: deque[Point] = deque(maxlen=100_000)
        t0 = time.monotonic()
        try:
            for _ in _ticks(args.interval, count):
                it = advisor.sample()
                if args.plot is not None:
                    points.append(point(it, time.monotonic() - t0))
                new = notes.take()
                if sink is not None:
                    sink.write(it.record(live.spec.label, new))
                if not args.quiet:
                    for msg in new:
                        err.print(f"{PROG}: note: {msg}", markup=False, highlight=False,
                                  soft_wrap=True)
                if show:
                    emit(it)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a live advisor is stopped: not an error.
    if args.plot is not None and points:
        title = (f"live advisor, policy {live.spec.label}: {len(points)} samples every "
                 f"{args.interval:g} s from {root}")
        write_text_atomic(args.plot, plot_session(list(points), title))
        if not args.quiet:
            err.print(f"{PROG}: wrote {args.plot}", markup=False, highlight=False,
                      soft_wrap=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input)."""
    return run_cli(PROG, build_parser(), _main, argv)
