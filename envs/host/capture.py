"""Capture page-table traces from live processes, and check their replay.

What ``scripts/capture_trace.py`` (:mod:`ptreclaim.cli.capture_trace`) runs:

* ``record -o OUT.npz [--pid PID | -- COMMAND...]``: every ``--interval-ms``
  reads the process's ``VmPTE``/``VmRSS`` (``/proc/PID/status``), its maps
  (stored when they change) and its per-2 MiB-block page presence
  (``PAGEMAP_SCAN``, :mod:`ptreclaim.envs.host.procfs`), and with ``--syscalls``
  (the default when ``strace`` is installed) the memory syscalls through
  ``strace -f --seccomp-bpf``.  Its own CPU use is measured and the interval
  stretched to stay under ``--max-cpu-share``.
* ``check TRACE``: replays the trace on the page-table model
  (:func:`ptreclaim.envs.sim.workloads.trace.replay`) and prints model vs
  recorded VmPTE per sample with a summary; writes a PNG.
* ``info TRACE``: summary statistics of a trace.

All three print one line and exit 2 on bad input (a missing program, a
damaged trace), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..sim.config import ConfigError
from ..sim.fileio import write_text_atomic
from ..sim.trace import (
    PERM_R,
    PERM_S,
    PERM_W,
    PERM_X,
    SYSCALLS,
    USER_TOP,
    Trace,
    TraceWriter,
    read_trace,
)
from ..sim.workloads.trace import FidelityReport, replay
from . import procfs

PROG = "capture_trace.py"
#: The fidelity goal of a replay: within 2 % and within a few tables of VmPTE.
GOAL_REL = 0.02
GOAL_TABLES = 3


# ---------------------------------------------------------------- recording


def _perm_bits(perms: str) -> int:
    bits = 0
    for ch, bit in (("r", PERM_R), ("w", PERM_W), ("x", PERM_X), ("s", PERM_S)):
        if ch in perms:
            bits |= bit
    return bits


def _maps_rows(maps: list[procfs.MapEntry]) -> list[tuple[int, int, int, int, int, str]]:
    # [vsyscall] (0xffffffffff600000) is no user VMA and does not fit an int64; the
    # trace keeps what its reader accepts.
    return [(m.start, m.end, m.offset, m.inode, _perm_bits(m.perms), m.path) for m in maps
            if m.end <= USER_TOP]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RecordOptions:
    """What :func:`record` does (the ``record`` subcommand's options)."""

    interval_ms: float = 100.0
    max_cpu_share: float = 0.05
    syscalls: bool = True
    method: str = "auto"
    duration_s: float = 0.0  # 0: until the process exits
    max_interval_ms: float = 5000.0
    quiet: bool = False


class _Strace:
    """strace -f on a command or a PID, writing its log to a temporary file."""

    TRACE = ",".join(SYSCALLS)

    def __init__(self, exe: str, log: Path) -> None:
        self.exe = exe
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        # -X raw: numbers for flags/prot/advice; -y: fd paths; -T: durations;
        # --seccomp-bpf: untraced syscalls do not stop the tracee at all.
        return [self.exe, "-f", "--seccomp-bpf", "-qq", "-ttt", "-T", "-X", "raw", "-y",
                "-e", f"trace={self.TRACE}", "-e", "signal=none", "-o", str(self.log)]

    def start_command(self, command: list[str]) -> int:
        self.proc = subprocess.Popen([*self.argv(), "--", *command], stdin=subprocess.DEVNULL)
        return self._child_pid()

    def attach(self, pid: int) -> None:
        argv = [a for a in self.argv() if a != "--seccomp-bpf"]  # needs a command
        self.proc = subprocess.Popen([*argv, "-p", str(pid)], stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # strace attaches asynchronously; give it a moment

    def _child_pid(self) -> int:
        """The traced command's PID, once it has exec'd (not strace's fork)."""
        assert self.proc is not None
        me = self.proc.pid
        strace_exe = os.readlink(f"/proc/{me}/exe")
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError("strace exited before the command started; "
                                  "check the command (and that strace works here)")
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
                if kids and os.readlink(f"/proc/{kids[0]}/exe") != strace_exe:
                    return int(kids[0])
            time.sleep(0.0005)
        raise ConfigError("the command did not start under strace within 10 s")

    def cpu(self) -> float:
        return _cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # strace detaches cleanly on SIGINT
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def record(command: Sequence[str] | None, pid: int | None, opts: RecordOptions) -> Trace:
    """Capture a trace of ``command`` (started here) or of running ``pid``."""
    from rich.console import Console

    console = Console(stderr=True, quiet=opts.quiet)
    strace_exe = shutil.which("strace") if opts.syscalls else None
    if opts.syscalls and strace_exe is None:
        raise ConfigError("--syscalls needs strace, which is not installed; install it "
                          "(apt-get install strace) or pass --no-syscalls")
    tmpdir = Path(tempfile.mkdtemp(prefix="ptreclaim-capture-"))
    log = tmpdir / "strace.log"
    tracer = _Strace(strace_exe, log) if strace_exe else None
    child: subprocess.Popen[bytes] | None = None
    clock0 = (time.time(), time.monotonic())
    t0 = time.monotonic()
    try:
        try:
            if command:
                if tracer is not None:
                    target = tracer.start_command(list(command))
                else:
                    child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL)
                    target = child.pid
            else:
                assert pid is not None
                target = pid
                _check_readable(target)
                if tracer is not None:
                    tracer.attach(target)
            writer, stats = _sample_loop(target, t0, opts, tracer, console,
                                         attached=not command)
        finally:
            # A command we started ends with the capture (--duration, an error);
            # an attached process is only detached from.
            if child is not None and child.poll() is None:
                child.terminate()
            if tracer is not None:
                if command and tracer.proc is not None and tracer.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(target, signal.SIGTERM)
                tracer.stop()
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=10)
        clock1 = (time.time(), time.monotonic())
        offset = ((clock0[0] - clock0[1]) + (clock1[0] - clock1[1])) / 2
        nsys = 0
        if tracer is not None and log.exists():
            nsys = parse_strace(log.read_text(encoding="utf-8", errors="replace"), writer,
                                offset_s=offset, t0=t0)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if writer.samples == 0:
        raise ConfigError("the process exited before the first sample; nothing recorded")
    meta = {
        "command": list(command) if command else None,
        "pid": target,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "thp_enabled": _thp_mode(),
        "interval_ms": opts.interval_ms,
        "final_interval_ms": stats["interval_ms"],
        "method": stats["method"],
        "syscalls": tracer is not None,
        "syscall_tool": f"strace {_strace_version(strace_exe)}" if strace_exe else None,
        "clock": "CLOCK_MONOTONIC, ms since capture start; strace wall-clock stamps "
                 "converted with the measured CLOCK_REALTIME - CLOCK_MONOTONIC offset",
        "realtime_minus_monotonic_s": [clock0[0] - clock0[1], clock1[0] - clock1[1]],
        "sampler_cpu_share": stats["sampler_share"],
        "strace_cpu_share": stats["strace_share"],
        "sample_cost_ms_median": stats["sample_ms"],
        "raced_samples": stats["raced"],
        "stretched": stats["stretched"],
        "interrupted": stats["interrupted"],
        "syscall_count": nsys,
    }
    return writer.finish(**meta)


def _unreadable(pid: int, exc: OSError, attached: bool = True) -> str:
    """What a permission error on process ``pid``'s /proc files means, and what to do."""
    what = exc.filename or f"/proc/{pid}"
    return (f"{what}: permission denied (process {pid} belongs to another user or runs "
            "a setuid program, or this container withholds ptrace rights over it); run as "
            "that user or as root with CAP_SYS_PTRACE"
            + (", or record a command instead (-- COMMAND)" if attached else ""))


def _check_readable(pid: int) -> None:
    """Before a capture of running ``pid``: it exists, has memory of its own,
    and its status, maps and pagemap can be read.  :class:`ConfigError` (one
    line, naming the file and the fix) otherwise."""
    try:
        status = procfs.read_status(pid)
        if "VmPTE" not in status:
            raise ConfigError(f"--pid {pid}: has no memory of its own (a kernel thread or a "
                              "zombie); choose a user process")
        procfs.read_maps(pid)
        os.close(os.open(f"/proc/{pid}/pagemap", os.O_RDONLY))
    except procfs.ProcessGone:
        raise ConfigError(f"--pid {pid}: no such process") from None
    except FileNotFoundError:
        raise ConfigError(f"--pid {pid}: no such process") from None
    except PermissionError as exc:
        raise ConfigError(f"--pid {pid}: {_unreadable(pid, exc)}") from None


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    m = re.search(r"\[(\w+)\]", text)
    return m.group(1) if m else "unknown"


def _strace_version(exe: str | None) -> str:
    if exe is None:
        return ""
    out = subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version\s+(\S+)", out)
    return m.group(1) if m else "?"


def _sample_loop(target: int, t0: float, opts: RecordOptions, tracer: _Strace | None,
                 console: Any, attached: bool = False) -> tuple[TraceWriter, dict[str, Any]]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    writer = TraceWriter({})
    interval = opts.interval_ms / 1000.0
    cpu0 = time.process_time()
    strace0 = tracer.cpu() if tracer else 0.0
    wall0 = time.monotonic()
    window = (cpu0, wall0)
    costs: list[float] = []
    raced = 0
    stretched: list[str] = []
    method = opts.method
    next_t = time.monotonic()
    # Ctrl-C ends the capture between two samples and keeps what was recorded.
    stop: list[bool] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.append(True))
    with Progress(SpinnerColumn(), TextColumn("[bold]recording pid {task.fields[pid]}"),
                  TextColumn("{task.completed} samples"), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False,
                  auto_refresh=False) as bar:
        task = bar.add_task("rec", total=None, pid=target, info="")
        while not stop:
            now = time.monotonic()
            if opts.duration_s and now - t0 >= opts.duration_s:
                break
            if now < next_t:
                time.sleep(next_t - now)
                if stop:
                    break
            c0 = time.process_time()
            t_sample = time.monotonic()
            try:
                st = procfs.read_status(target)
                if "VmPTE" not in st:
                    break  # a zombie: the mm is gone
                maps = procfs.read_maps(target)
                pres = procfs.block_presence(target, maps, method=method, bitmap=True)
                # Stamped before the second read: a syscall strace dates before
                # this had completed when VmPTE was read again.
                t_walked = time.monotonic()
                after = procfs.read_status(target)
            except procfs.ProcessGone:
                break
            except procfs.PagemapUnavailable as exc:
                if writer.samples == 0:
                    raise ConfigError(str(exc)) from None
                console.print(f"stopped: {exc}; keeping the {writer.samples} samples "
                              "recorded", style="yellow", markup=False)
                break
            except PermissionError as exc:
                # The process changed hands (a setuid exec): keep what was recorded.
                if writer.samples == 0:
                    raise ConfigError(_unreadable(target, exc, attached)) from None
                console.print(f"stopped: {exc.filename or f'/proc/{target}'} became "
                              f"unreadable (permission denied); keeping the {writer.samples} "
                              "samples recorded", style="yellow", markup=False)
                break
            method = pres.method  # auto resolves once
            if after.get("VmPTE") is None:
                break
            if after["VmPTE"] != st["VmPTE"]:
                raced += 1
            writer.add_maps(_maps_rows(maps))
            assert pres.bits is not None
            writer.add_sample((t_sample - t0) * 1000.0, st["VmPTE"], after["VmPTE"],
                              st.get("VmRSS", 0), pres.block, pres.present, pres.swapped,
                              pres.zero, pres.file, pres.huge, pres.bits,
                              t_after_ms=(t_walked - t0) * 1000.0)
            costs.append(time.process_time() - c0)
            next_t = t_sample + interval
            # Overhead control over ~1 s windows: our CPU / wall time.
            wall = time.monotonic()
            if wall - window[1] >= 1.0:
                share = (time.process_time() - window[0]) / (wall - window[1])
                window = (time.process_time(), wall)
                if share > opts.max_cpu_share and interval * 1000 < opts.max_interval_ms:
                    new = min(opts.max_interval_ms / 1000, interval * max(1.5, share
                                                                       / opts.max_cpu_share))
                    msg = (f"sampler CPU share {share:.1%} > {opts.max_cpu_share:.0%}: "
                           f"interval {interval * 1000:.0f} -> {new * 1000:.0f} ms")
                    console.print(f"[yellow]{PROG}: {msg}")
                    stretched.append(f"t={t_sample - t0:.1f}s {msg}")
                    interval = new
                elif share < opts.max_cpu_share / 3 and interval > opts.interval_ms / 1000:
                    # Cheap again (the process shrank or calmed down): come back.
                    interval = max(opts.interval_ms / 1000, interval / 1.5)
            bar.update(task, advance=1, info=f"VmPTE {st['VmPTE']} kB, {pres.blocks} blocks",
                       refresh=not opts.quiet and writer.samples % 10 == 0)
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
    if stop:
        console.print(f"{PROG}: interrupted: the capture stops here and keeps "
                      f"{writer.samples} samples")
    wall = max(1e-9, time.monotonic() - wall0)
    stats = {
        "interrupted": bool(stop),
        "interval_ms": interval * 1000.0,
        "method": method,
        "sampler_share": (time.process_time() - cpu0) / wall,
        "strace_share": ((tracer.cpu() if tracer else 0.0) - strace0) / wall,
        "sample_ms": float(np.median(costs) * 1000.0) if costs else 0.0,
        "raced": raced,
        "stretched": stretched,
    }
    console.print(f"{PROG}: {writer.samples} samples in {wall:.1f} s; sampler CPU "
                  f"{stats['sampler_share']:.2%} of wall time (limit "
                  f"{opts.max_cpu_share:.0%}), strace {stats['strace_share']:.2%}; "
                  f"median sample {stats['sample_ms']:.2f} ms CPU; method {method}")
    return writer, stats


# ---------------------------------------------------------------- strace log

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*?)\s*(?:<(\d+\.\d+)>)?$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")


def _split_args(text: str) -> list[str]:
    """Split an strace argument list at top-level commas (paths in <...>)."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "<[{(":
            depth += 1
        elif ch in ">]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur or out:
        out.append("".join(cur).strip())
    return out


def _int_arg(word: str) -> tuple[int, str | None]:
    """An strace argument as an int (NULL -> 0); an fd with -y gives its path."""
    path = None
    m = re.match(r"^(-?\d+)<(.*)>$", word)
    if m:
        return int(m.group(1)), m.group(2)
    if word == "NULL":
        return 0, None
    try:
        return int(word, 0), path
    except ValueError:
        return 0, None


def _ret_value(text: str) -> int | None:
    """``0x7f..`` -> int; ``-1 ENOMEM (...)`` -> -ENOMEM; ``?`` -> None."""
    words = text.split()
    if not words or words[0] == "?":
        return None
    try:
        value = int(words[0], 0)
    except ValueError:
        return None
    if value == -1 and len(words) > 1:
        code = getattr(errno, words[1], None)
        if isinstance(code, int):
            return -code
        m = re.match(r"\(errno (\d+)\)", " ".join(words[1:]))
        if m:
            return -int(m.group(1))
    return value


def parse_strace(text: str, writer: TraceWriter, *, offset_s: float, t0: float) -> int:
    """Parse an ``strace -f -ttt -T -X raw -y`` log into ``writer``'s syscalls;
    returns how many were added.  Wall-clock stamps become monotonic ms since
    ``t0`` with ``offset_s`` (CLOCK_REALTIME - CLOCK_MONOTONIC); a syscall's
    time is its completion (entry + duration).  Split lines of threads
    (``<unfinished ...>`` / ``<... resumed>``) are joined per thread; a call
    the process did not finish (``= ?``) is dropped."""
    pending: dict[int, tuple[float, str]] = {}
    n = 0
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m is None:
            continue
        tid, stamp, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        if rest.endswith("<unfinished ...>"):
            pending[tid] = (stamp, rest[: -len("<unfinished ...>")])
            continue
        r = _RESUMED.match(rest)
        if r is not None:
            start = pending.pop(tid, None)
            if start is None:
                continue
            stamp, rest = start[0], start[1] + r.group(2)
        c = _CALL.match(rest.strip())
        if c is None or c.group(1) not in SYSCALLS:
            continue
        ret = _ret_value(c.group(3))
        if ret is None:
            continue
        dur = float(c.group(4)) if c.group(4) else 0.0
        words = _split_args(c.group(2))
        parsed = [_int_arg(w) for w in words]
        args = tuple(v for v, _ in parsed)
        path = next((p for _, p in parsed if p), None) if c.group(1) == "mmap" else None
        t_ms = (stamp + dur - offset_s - t0) * 1000.0
        writer.add_syscall(t_ms, c.group(1), args, ret, tid, path)
        n += 1
    return n


# ---------------------------------------------------------------- check / info


def _plot(report: FidelityReport, rss_kib: np.ndarray, title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    t = report.t_ms / 1000.0
    ax.plot(t, report.recorded_kib, label="recorded VmPTE (kernel)", lw=2.0, color="black")
    ax.plot(t, report.model_kib, label="replayed VmPTE (model)", lw=1.2, ls="--", color="C1")
    ax.set_ylabel("VmPTE (KiB)")
    ax.set_title(title)
    rx = ax.twinx()
    rx.plot(t, rss_kib / 1024.0, color="C0", lw=0.8, alpha=0.5, label="VmRSS (recorded)")
    rx.set_ylabel("VmRSS (MiB)", color="C0")
    lines = ax.get_legend_handles_labels()
    more = rx.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best")
    ax.grid(alpha=0.3)
    bx.plot(t, report.error_tables, color="0.6", lw=0.8, label="vs VmPTE before the walk")
    bx.plot(t, report.window_error_tables, color="C3", lw=1.2,
            label="vs the sample's before..after window")
    bx.axhline(0, color="gray", lw=0.5)
    bx.legend(loc="best", fontsize="small")
    bx.set_ylabel("model - kernel\n(tables)")
    bx.set_xlabel("time (s)")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format="png")
    finally:
        plt.close(fig)
    # Atomic (the caller checked that the folder exists and may be written).
    write_text_atomic(png, buf.getvalue())


def check_trace(path: str | os.PathLike[str], png: Path | None = None, rows: int = 40,
                quiet: bool = False) -> FidelityReport:
    """Replay a trace and print the fidelity table and summary."""
    from rich.console import Console
    from rich.table import Table

    trace = read_trace(path)
    report = replay(trace)
    console = Console(quiet=quiet)
    table = Table(title=f"{Path(path).name}: model vs kernel VmPTE per sample")
    for col in ("sample", "t (s)", "kernel kB", "model kB", "error", "window error",
                "window %", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    n = report.samples
    # Every sample that misses the goal, then evenly spaced others, up to ``rows``.
    misses = list(np.flatnonzero(~report.within_goal(GOAL_REL, GOAL_TABLES)))
    show = sorted(set(misses[:rows]) | set(np.linspace(0, n - 1, min(n, rows)).astype(int)))
    # The sample where each standing error appeared, for misses with no note of their own.
    origin = np.zeros(n, dtype=np.int64)
    werr = report.window_error_tables
    for j in range(1, n):
        origin[j] = j if werr[j] != werr[j - 1] else origin[j - 1]
    for k in show:
        note = report.notes.get(int(k), "") if k in misses or report.raced[k] else ""
        if not note and k in misses:
            note = f"the error that appeared at sample {origin[k]} persists"
        kernel = str(report.recorded_kib[k])
        if report.raced[k]:
            kernel += f"..{report.recorded_after_kib[k]}"
        model = str(report.model_kib[k])
        if report.model_walk_kib is not None and report.model_walk_kib[k] != report.model_kib[k]:
            model = f"{report.model_walk_kib[k]}..{model}"  # syscalls inside the read window
        table.add_row(str(k), f"{report.t_ms[k] / 1000:.2f}", kernel, model,
                      f"{report.error_tables[k]:+d}",
                      f"{report.window_error_tables[k]:+d}",
                      f"{100 * report.rel_error[k]:+.2f}", note)
    if rows:
        console.print(table)
        console.print("errors in tables (model - kernel); 'window': against the VmPTE range "
                      "read before..after the sample's page walk (0 inside it)")
    s = report.summary(GOAL_REL, GOAL_TABLES)
    console.print(
        f"{Path(path).name}: {n} samples, {trace.syscall_count} syscalls; max |window error| "
        f"{s['max_abs_tables']} tables ({100 * s['max_rel']:.2f} %); max |error| against "
        f"VmPTE before the walk {s['max_abs_tables_before']} tables ({s['raced_samples']} "
        f"raced samples); final error {s['final_tables']:+d}; {s['within_goal']}/{n} samples "
        f"within the goal ({100 * GOAL_REL:g} % and {GOAL_TABLES} tables)"
        + ("" if s["all_within_goal"] else "; misses are explained in the note column"))
    if report.purge_implied_writes or report.purge_tails_unwritten:
        console.print(f"{report.purge_implied_writes} pages written before a DONTNEED reached "
                      "their table-less block (the allocator purges what it dirtied since the "
                      f"last sample); {report.purge_tails_unwritten} such blocks held only the "
                      "short tail of the purged range and were left unwritten")
    if report.window_syscalls:
        console.print(f"{report.window_syscalls} syscalls completed inside a sample's read "
                      "window: applied after its page walk, within the sample")
    if report.unplaced_pages or report.refused_syscalls:
        console.print(f"model diagnostics: {report.unplaced_pages} present pages had no VMA in "
                      f"the model when they appeared; the model refused "
                      f"{report.refused_syscalls} syscalls the kernel accepted")
    if report.baseline_tables:
        console.print(f"initial state: the kernel had {report.baseline_tables:+d} tables "
                      "the first sample cannot show (emptied before capture started); "
                      "carried as a constant")
    if png is not None:
        _plot(report, trace["vm_rss_kib"], f"{Path(path).name}: replay fidelity", png)
        console.print(f"wrote {png}")
    return report


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary statistics of a trace (printed by ``info``)."""
    trace = read_trace(path)
    pte = trace.vm_pte_kib
    rss = trace["vm_rss_kib"]
    ops = trace["sys_op"]
    counts = {name: int(np.count_nonzero(ops == i)) for i, name in enumerate(SYSCALLS)}
    madv = trace["sys_args"][ops == SYSCALLS.index("madvise")]
    dontneed = madv[madv[:, 2] == 4][:, 1] if madv.size else np.zeros(0, dtype=np.int64)
    blocks = trace.blocks_per_sample()
    last_blocks = trace.blocks_at(trace.samples - 1)
    size = Path(path).stat().st_size
    out = {
        "file": str(path), "version": trace.meta.get("version"), "bytes": size,
        "samples": trace.samples,
        "duration_s": round(trace.duration_ms / 1000.0, 2),
        "interval_ms": trace.meta.get("interval_ms"),
        "method": trace.meta.get("method"), "kernel": trace.meta.get("kernel"),
        "command": " ".join(trace.meta.get("command") or []),
        "vm_pte_kib": {"first": int(pte[0]), "max": int(pte.max()), "last": int(pte[-1])},
        "vm_rss_kib": {"first": int(rss[0]), "max": int(rss.max()), "last": int(rss[-1])},
        "blocks_with_pages": {"max": int(blocks.max()), "last": int(blocks[-1])},
        # As procfs.estimate_empty_tables: PTE tables less those over pages.
        "empty_tables_last": max(0, int(pte[-1]) // 4 - procfs.upper_tables(last_blocks)
                                 - int(last_blocks.size)),
        "pte_tables_last": int(pte[-1]) // 4 - procfs.upper_tables(last_blocks),
        "syscalls": counts,
        "dontneed_median_kib": (float(np.median(dontneed)) / 1024 if dontneed.size else None),
        "sampler_cpu_share": trace.meta.get("sampler_cpu_share"),
        "strace_cpu_share": trace.meta.get("strace_cpu_share"),
        "raced_samples": trace.meta.get("raced_samples"),
    }
    return out


__all__ = ["GOAL_REL", "GOAL_TABLES", "PROG", "RecordOptions", "check_trace", "info",
           "parse_strace", "record"]
