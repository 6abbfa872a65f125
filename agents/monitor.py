"""The live advisor: a policy judges this host in shadow mode, read-only.

Every ``--interval`` seconds it samples the host the way the env observes the
simulator -- unmovable-zone free memory against its watermarks
(``/proc/zoneinfo``), PSI (``/proc/pressure/memory``), page-table memory
(``/proc/meminfo``), and every process's ``VmPTE``/``VmRSS`` and mapping count
(``/proc/PID/status``, ``/proc/PID/maps``) -- builds the observation vector
the policy was made for (:data:`~ptreclaim.envs.pagetable_env.OBS_NAMES`,
same order and normalisation), and prints what the policy would do now:
the reclaim budget, the class depth, the target (global, or a process with
its PID and command line) and why.  It never acts::

    python scripts/monitor.py --policy thresholds.yaml            # live table
    python scripts/monitor.py --policy thresholds.yaml --once --json
    python scripts/monitor.py --policy runs/default__ppo__0__20250101-120000 --count 12

``--policy`` takes anything ``evaluate.py`` takes (an exported thresholds
``.yaml``/``.json``, ``heuristic:NAME[:params.yaml]``, a run folder, a model
``.zip``).  ``--scan-top K`` also walks the mappings of the top K page-table
consumers with ``PAGEMAP_SCAN`` (:mod:`ptreclaim.envs.procfs`) to estimate
how many of their PTE tables are empty.

How host signals map onto the observation (``docs/readme/monitor.md`` has
the table): the simulator's "normal zone" is every zone that can serve an
unmovable allocation (DMA, DMA32, Normal, less their CMA pages), summed;
``ZONE_MOVABLE`` and CMA count as movable.  PSI percentages become fractions.
Features a host cannot show to an advisor that never reclaims are set to
their neutral value and named once: ``refault_rate`` and ``last_yield``
(there is no pass to measure).  ``since_pass`` counts the time since the
policy last *advised* a pass (or since start), in simulator ticks, as if the
advice had been followed; ``fail_share`` is the share of the last 10 s (the
env's 100 ticks) of intervals in which the unmovable zones entered direct
reclaim (``allocstall_*`` in ``/proc/vmstat``), the host's nearest
equivalent of the simulator's failed unmovable allocation.

Strictly read-only: it opens files under ``/proc`` for reading only, writes
nothing but its own output (stdout, or the ``--json-out`` file it appends
to) and sends no signal (``tests/test_monitor.py`` runs it under strace and
under an audit hook to check).  Whatever it cannot read -- other users'
mappings when unprivileged, a kernel without PSI or ``PAGEMAP_SCAN``, a
process that exits mid-read -- it skips, says once, and carries on.  Bad
input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from ..envs import procfs
from ..envs.configio import OneLineParser, run_cli, write_text_atomic
from ..envs.pagetable_env import OBS_NAMES, TOP_K, EnvConfig
from ..envs.sim.config import ConfigError, build
from ..envs.sim.machine import MachineConfig, watermarks
from ..envs.sim.simulator import ScenarioConfig
from .evaluate import PolicySpec, build_policy, parse_policy
from .heuristics import HEURISTICS

if TYPE_CHECKING:
    from rich.console import RenderableType

PROG = "monitor.py"
PAGE_KIB = 4
#: The env's "most suspicious process" holds at least this much page-table memory
#: (PageTableReclaimEnv.most_suspicious).
SUSPECT_MIN_KIB = 1024
#: Seconds per simulator tick (``machine.tick_ms`` default): the time unit of
#: ``since_pass`` and ``fail_share``.
TICK_S = MachineConfig().tick_ms / 1000.0
#: The env's failure window is 100 ticks; here the same span of wall time.
FAIL_WINDOW_S = 100 * TICK_S
#: Class depths of the action, as an operator reads them (reclaim.DEPTHS).
DEPTH_NAMES = ("empty", "empty+zero", "empty+zero+file")
#: Features no host can show to an advisor that never reclaims: neutral value.
NEVER_LIVE = ("refault_rate", "last_yield")
#: The raw-pagemap fallback (kernels before 6.7) reads 8 bytes per page of a
#: mapping: skip mappings above 4 GiB (8 MiB of pagemap each) to keep a sample short.
RAW_CAP_BYTES = 4 << 30
PSI_NAMES = ("psi_some_avg10", "psi_some_avg60", "psi_full_avg10", "psi_full_avg60")


# ------------------------------------------------------------------ notes

class Notes:
    """Things the advisor could not do, each said once.

    :meth:`add` keeps the first message per key; :meth:`take` hands out the
    messages not yet reported (printed to stderr, or the ``notes`` of the next
    JSON line), so a degraded host is described once, not every interval.
    """

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self._pending: list[str] = []

    def add(self, key: str, message: str) -> None:
        """Record ``message`` under ``key`` unless that key was seen before."""
        if key not in self._seen:
            self._seen[key] = message
            self._pending.append(message)

    def take(self) -> list[str]:
        """The messages added since the last call."""
        out, self._pending = self._pending, []
        return out

    @property
    def all(self) -> list[str]:
        """Every message so far."""
        return list(self._seen.values())


# ------------------------------------------------------------------ host files

@dataclass(frozen=True)
class Zone:
    """One zone of ``/proc/zoneinfo`` (counts in 4 KiB pages)."""

    node: int
    name: str
    free: int
    min: int
    low: int
    high: int
    managed: int
    present: int
    cma: int = 0
    free_cma: int = 0

    @property
    def movable(self) -> bool:
        """ZONE_MOVABLE serves no unmovable allocation (the simulator's movable zone)."""
        return self.name == "Movable"


@dataclass(frozen=True)
class UnmovableZone:
    """What the simulator calls the normal zone: every page an unmovable
    allocation (a page table) may use, with summed watermarks."""

    pages: int
    free: int
    min: int
    low: int
    high: int
    zones: tuple[str, ...]
    source: str  # "zoneinfo", or "meminfo" (watermarks from the kernel's formula)


def parse_zoneinfo(text: str) -> list[Zone]:
    """The zones of ``/proc/zoneinfo`` text (free pages, min/low/high
    watermarks, managed/present pages, CMA pages and free CMA pages)."""
    zones: list[Zone] = []
    cur: dict[str, Any] | None = None

    def flush() -> None:
        if cur is not None and "free" in cur:
            zones.append(Zone(cur["node"], cur["name"], cur.get("free", 0), cur.get("min", 0),
                              cur.get("low", 0), cur.get("high", 0), cur.get("managed", 0),
                              cur.get("present", 0), cur.get("cma", 0),
                              cur.get("nr_free_cma", 0)))

    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "Node" and len(words) >= 4 and words[2] == "zone":
            flush()
            cur = {"node": int(words[1].rstrip(",")), "name": words[3]}
        elif cur is None:
            continue
        elif words[:2] == ["pages", "free"] and len(words) == 3:
            cur["free"] = int(words[2])
        elif "free" in cur and len(words) == 2 and words[1].isdigit() and words[0] in (
                "min", "low", "high", "managed", "present", "cma", "nr_free_cma"):
            # Only after "pages free": the first zone of a node is preceded by the node's
            # "per-node stats", whose counters are not the zone's.
            cur.setdefault(words[0], int(words[1]))
    flush()
    return zones


def unmovable_zone(zones: Sequence[Zone]) -> UnmovableZone | None:
    """Sum the zones that serve unmovable allocations (all but Movable and
    empty ones), less their CMA pages (CMA serves movable allocations only,
    and the kernel's watermark check for an unmovable allocation ignores
    free CMA pages)."""
    use = [z for z in zones if not z.movable and z.managed > 0]
    if not use:
        return None
    return UnmovableZone(
        pages=sum(z.managed - z.cma for z in use), free=sum(z.free - z.free_cma for z in use),
        min=sum(z.min for z in use), low=sum(z.low for z in use),
        high=sum(z.high for z in use),
        zones=tuple(f"{z.node}:{z.name}" for z in use), source="zoneinfo")


def parse_kv(text: str) -> dict[str, int]:
    """``Key: value [kB]`` lines (``/proc/meminfo``) or ``key value`` lines
    (``/proc/vmstat``) as ints; other lines are skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        words = line.replace(":", " ").split()
        if len(words) >= 2:
            with contextlib.suppress(ValueError):
                out[words[0]] = int(words[1])
    return out


def parse_psi(text: str) -> dict[str, float]:
    """``/proc/pressure/memory`` as fractions: ``some_avg10``, ``some_avg60``,
    ``full_avg10``, ``full_avg60`` (the kernel prints percentages)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] not in ("some", "full"):
            continue
        for item in words[1:]:
            key, _, value = item.partition("=")
            if key in ("avg10", "avg60"):
                with contextlib.suppress(ValueError):
                    out[f"{words[0]}_{key}"] = float(value) / 100.0
    return out


@dataclass(frozen=True)
class HostSample:
    """Host-wide signals of one interval (``None``: could not be read)."""

    zone: UnmovableZone
    psi: dict[str, float] | None
    pt_kib: int | None  # meminfo PageTables
    allocstall: int | None  # direct-reclaim entries of the unmovable zones (vmstat)


def _read_host_file(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_host(root: Path, notes: Notes) -> HostSample:
    """Read the host-wide files under ``root`` (``/proc``); what is missing
    is noted once and left ``None``.  Raises :class:`ConfigError` when there
    is neither ``zoneinfo`` nor ``meminfo`` (not a proc filesystem)."""
    meminfo: dict[str, int] | None = None
    try:
        meminfo = parse_kv(_read_host_file(root / "meminfo"))
    except OSError as exc:
        notes.add("meminfo", f"{root}/meminfo: {_why(exc)}; page-table memory (pt_frac) is "
                  "summed from the processes' VmPTE instead")
    zone: UnmovableZone | None = None
    try:
        zone = unmovable_zone(parse_zoneinfo(_read_host_file(root / "zoneinfo")))
        if zone is None:
            notes.add("zoneinfo-empty", f"{root}/zoneinfo lists no zone for unmovable "
                      "allocations; using meminfo")
    except OSError as exc:
        notes.add("zoneinfo", f"{root}/zoneinfo: {_why(exc)}; the zone is all of RAM "
                  "(meminfo) with watermarks from the kernel's default formula")
    if zone is None:
        if not meminfo or "MemTotal" not in meminfo or "MemFree" not in meminfo:
            raise ConfigError(f"{root}: neither zoneinfo nor meminfo can be read; is "
                              "--proc-root a proc filesystem?")
        pages = meminfo["MemTotal"] // PAGE_KIB
        wm = watermarks(pages, 10)
        zone = UnmovableZone(pages, meminfo["MemFree"] // PAGE_KIB, wm.min, wm.low, wm.high,
                             ("all",), "meminfo")
    psi: dict[str, float] | None = None
    try:
        psi = parse_psi(_read_host_file(root / "pressure" / "memory"))
    except OSError as exc:
        why = ("PSI is disabled (psi=0 on the kernel command line)"
               if exc.errno == errno.EOPNOTSUPP else
               f"no PSI ({_why(exc)}; a kernel without CONFIG_PSI)")
        notes.add("psi", f"{root}/pressure/memory: {why}; the psi_* features are 0")
    if psi is not None and any(f"full_{k}" not in psi for k in ("avg10", "avg60")):
        notes.add("psi-full", f"{root}/pressure/memory has no 'full' line; psi_full_* are 0")
    allocstall: int | None = None
    try:
        vm = parse_kv(_read_host_file(root / "vmstat"))
        stalls = [v for k, v in vm.items()
                  if k.startswith("allocstall_") and k != "allocstall_movable"]
        allocstall = sum(stalls) if stalls else None
        if not stalls:
            notes.add("allocstall", f"{root}/vmstat has no allocstall_* counters; "
                      "fail_share is 0")
    except OSError as exc:
        notes.add("vmstat", f"{root}/vmstat: {_why(exc)}; fail_share is 0")
    pt = meminfo.get("PageTables") if meminfo else None
    return HostSample(zone, psi, pt, allocstall)


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


# ------------------------------------------------------------------ processes

@dataclass(frozen=True)
class ProcSample:
    """One process's page-table accounting (KiB)."""

    pid: int
    pte_kib: int
    rss_kib: int
    maps: int | None  # mapping count (None: /proc/PID/maps not readable)

    @property
    def ratio(self) -> float:
        """Page tables / (RSS + page tables), as the env's ``top*_pt_ratio``."""
        return self.pte_kib / (self.rss_kib + self.pte_kib or 1)


@dataclass
class ProcScan:
    """Every process of one interval, and what could not be read."""

    procs: list[ProcSample]
    vanished: int = 0  # exited between the listing and the read: skipped silently
    unreadable: list[tuple[int, str]] = field(default_factory=list)  # (pid, why): status
    maps_denied: list[int] = field(default_factory=list)  # pids: status readable, maps not


def list_pids(root: Path) -> list[int]:
    """The numeric entries of ``root`` (thread-group leaders), ascending."""
    try:
        with os.scandir(root) as it:
            return sorted(int(e.name) for e in it if e.name.isdigit())
    except OSError as exc:
        raise ConfigError(f"{root}: cannot list processes: {_why(exc)}; is --proc-root a "
                          "readable proc filesystem?") from None


def sample_processes(root: Path, want_maps: bool = True) -> ProcScan:
    """``VmPTE``, ``VmRSS`` and the mapping count of every process with an
    address space (kernel threads and zombies have none and are left out)."""
    scan = ProcScan([])
    for pid in list_pids(root):
        try:
            status = procfs.read_status(pid, root)
        except procfs.ProcessGone:
            scan.vanished += 1
            continue
        except (OSError, ValueError) as exc:
            scan.unreadable.append((pid, _why(exc) if isinstance(exc, OSError) else str(exc)))
            continue
        if "VmPTE" not in status:
            continue
        maps: int | None = None
        if want_maps:
            try:
                maps = len(procfs.read_maps(pid, root))
            except procfs.ProcessGone:
                scan.vanished += 1
                continue
            except (OSError, ValueError):
                scan.maps_denied.append(pid)
        scan.procs.append(ProcSample(pid, status["VmPTE"], status.get("VmRSS", 0), maps))
    return scan


def top_consumers(procs: Sequence[ProcSample], k: int) -> list[ProcSample]:
    """The ``k`` largest page-table holders (ties: lower pid first), as the env
    ranks its ``top1..top3``."""
    return sorted(procs, key=lambda p: (-p.pte_kib, p.pid))[:k]


def most_suspicious(procs: Sequence[ProcSample]) -> ProcSample | None:
    """The env's target for ``target = 1``: the largest page-table-to-RSS
    ratio among processes with at least 1 MiB of page tables."""
    cands = [p for p in procs if p.pte_kib >= SUSPECT_MIN_KIB]
    if not cands:
        return None
    return max(cands, key=lambda p: (p.ratio, -p.pid))


def read_comm(root: Path, pid: int) -> str:
    """``/proc/PID/comm`` ("?" when the process is gone or unreadable)."""
    try:
        return _read_host_file(root / str(pid) / "comm").strip() or "?"
    except OSError:
        return "?"


def read_cmdline(root: Path, pid: int) -> str:
    """``/proc/PID/cmdline`` with spaces for NULs ("" when empty or unreadable)."""
    try:
        with open(root / str(pid) / "cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    # Arguments may hold newlines or escapes; one printable line, as ps shows it.
    return "".join(c if c.isprintable() else " " for c in text)


# ------------------------------------------------------------------ empty-table scan

@dataclass(frozen=True)
class ScanResult:
    """A ``PAGEMAP_SCAN`` estimate for one process."""

    pid: int
    empty_tables: int
    blocks_with_pages: int
    method: str


def scan_empty_tables(root: Path, procs: Sequence[ProcSample], notes: Notes
                      ) -> dict[int, ScanResult]:
    """Estimate the empty PTE tables of ``procs`` with
    :func:`~ptreclaim.envs.procfs.block_presence`; a process that is gone
    is skipped, one that cannot be read is noted once."""
    out: dict[int, ScanResult] = {}
    for p in procs:
        try:
            maps = procfs.read_maps(p.pid, root)
            presence = procfs.block_presence(p.pid, maps, raw_cap_bytes=RAW_CAP_BYTES,
                                             root=root)
            # VmPTE after the walk, so tables freed meanwhile are not counted as empty.
            status = procfs.read_status(p.pid, root)
        except procfs.ProcessGone:
            continue
        except procfs.PagemapUnavailable as exc:
            notes.add("scan-unavailable", f"--scan-top: {exc}; empty tables are not estimated "
                      "for such processes")
            continue
        except PermissionError:
            notes.add("scan-denied", f"--scan-top: /proc/{p.pid}/maps: permission denied "
                      "(reading another process's mappings needs root, or the same user "
                      "with ptrace access); empty tables are not estimated for such processes")
            continue
        except (OSError, ValueError) as exc:
            notes.add(f"scan-error-{type(exc).__name__}",
                      f"--scan-top: pagemap scan failed ({exc}); skipping such processes")
            continue
        if presence.method != "pagemap_scan":
            notes.add("scan-fallback", "--scan-top: PAGEMAP_SCAN is not supported by this "
                      "kernel (needs Linux >= 6.7); read the raw pagemap instead (slower, "
                      "blind to THP)")
        if presence.skipped_bytes:
            notes.add("scan-skipped", "--scan-top: the raw pagemap fallback skipped very large "
                      "mappings; their tables count as empty")
        out[p.pid] = ScanResult(p.pid, procfs.estimate_empty_tables(status, presence),
                                presence.blocks, presence.method)
    return out


# ------------------------------------------------------------------ observation

class LiveState:
    """What the observation needs from earlier intervals: recent direct-reclaim
    activity (``fail_share``) and when a pass was last advised (``since_pass``)."""

    def __init__(self, interval_s: float, now: float) -> None:
        self.window: deque[int] = deque(maxlen=max(1, round(FAIL_WINDOW_S / interval_s)))
        self.last_allocstall: int | None = None
        self.last_advised = now

    def fail_share(self, allocstall: int | None) -> float:
        """Share of the recent intervals in which the unmovable zones entered
        direct reclaim (the first interval has no previous count: 0)."""
        if allocstall is not None:
            prev = self.last_allocstall
            self.window.append(int(prev is not None and allocstall > prev))
            self.last_allocstall = allocstall
        return sum(self.window) / len(self.window) if self.window else 0.0

    def since_pass(self, now: float) -> float:
        """``since_pass`` as the env computes it, in simulator ticks since the
        last advised pass (or since the advisor started)."""
        return _clip(math.log1p(max(0.0, now - self.last_advised) / TICK_S) / 10.0)


def observe(host: HostSample, procs: Sequence[ProcSample], state: LiveState,
            now: float) -> tuple[np.ndarray, list[str]]:
    """The env's observation (:data:`OBS_NAMES`) of this host, and the names
    of the features set to their neutral value because the host lacks them."""
    z = host.zone
    pages = max(z.pages, 1)
    pt_kib = host.pt_kib if host.pt_kib is not None else sum(p.pte_kib for p in procs)
    psi = host.psi or {}
    values: dict[str, float] = {
        "free_vs_wmark": _clip((z.free - z.min) / max(z.high - z.min, 1) / 4.0),
        "free_frac": _clip(z.free / pages),
        "psi_some_avg10": psi.get("some_avg10", 0.0), "psi_some_avg60": psi.get("some_avg60", 0.0),
        "psi_full_avg10": psi.get("full_avg10", 0.0), "psi_full_avg60": psi.get("full_avg60", 0.0),
        "pt_frac": _clip(pt_kib / PAGE_KIB / pages),
        "refault_rate": 0.0, "last_yield": 0.0,
        "fail_share": state.fail_share(host.allocstall),
        "since_pass": state.since_pass(now),
    }
    top = top_consumers(procs, TOP_K)
    for i in range(TOP_K):
        p = top[i] if i < len(top) else None
        values[f"top{i + 1}_pt_frac"] = _clip(p.pte_kib / PAGE_KIB / pages) if p else 0.0
        values[f"top{i + 1}_pt_ratio"] = p.ratio if p else 0.0
    missing = list(NEVER_LIVE)
    missing += [n for n in PSI_NAMES if n.removeprefix("psi_") not in psi]
    if host.allocstall is None:
        missing.append("fail_share")
    obs = np.asarray([values[n] for n in OBS_NAMES], dtype=np.float32)
    return obs, [n for n in OBS_NAMES if n in missing]


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


# ------------------------------------------------------------------ policy

@dataclass
class LivePolicy:
    """A policy from any spec ``evaluate.py`` accepts, with what decoding its
    actions needs (the budgets of the env it was made for)."""

    spec: PolicySpec
    policy: Any
    budgets: tuple[int, ...]

    @property
    def explains(self) -> bool:
        """True for rules that give their own reason: ``decide(obs) -> (action,
        reason)``, as the soft/hard rule and the distilled tree do."""
        return callable(getattr(self.policy, "decide", None))


def load_policy(arg: str, *, best: bool = False, trust_model: bool = False,
                runs_root: str = "runs") -> LivePolicy:
    """Parse and build ``arg`` like ``evaluate.py`` does; a model gets the env
    config of its run (its budgets, and a throwaway env to check its spaces)
    and its VecNormalize statistics (``evaluate.load_model_policy``)."""
    spec = parse_policy(arg, best=best, trust_model=trust_model, runs_root=runs_root)
    env = (build(EnvConfig, spec.env, f"{spec.label}: config.yaml.env")
           if spec.env is not None else EnvConfig())
    if env.candidate_counts:
        raise ConfigError(f"{spec.label}: trained with env.candidate_counts (exact per-class "
                          "table counts), which a live host cannot provide cheaply; use a "
                          "policy trained without them")
    policy = build_policy(spec, env, ScenarioConfig())
    return LivePolicy(spec, policy, tuple(env.budgets))


def default_policy_arg(notes: Notes) -> str:
    """``./thresholds.yaml`` (or ``.json``) when present, else the soft/hard
    heuristic with its default thresholds (noted)."""
    for name in ("thresholds.yaml", "thresholds.json"):
        if Path(name).is_file():
            return name
    notes.add("default-policy", "no --policy and no ./thresholds.yaml: using "
              "heuristic:soft_hard with its default thresholds")
    return "heuristic:soft_hard"


@dataclass(frozen=True)
class Advice:
    """What the policy would do now."""

    action: tuple[int, ...]
    budget_tables: int  # 0: no pass
    depth: str
    target: str  # "none", "global" or "process"
    pid: int | None
    comm: str
    cmdline: str
    hard_limit: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": list(self.action),
                             "reclaim": self.target != "none",
                             "budget_tables": "all" if self.budget_tables >= 1 << 30
                             else self.budget_tables,
                             "depth": self.depth, "target": self.target}
        if self.pid is not None:
            d.update(pid=self.pid, comm=self.comm, cmdline=self.cmdline)
        d["hard_limit"] = self.hard_limit
        d["reason"] = self.reason
        return d

    def summary(self) -> str:
        """One line: what and from whom."""
        if self.target == "none":
            return "no reclaim"
        budget = "all" if self.budget_tables >= 1 << 30 else str(self.budget_tables)
        who = ("globally (largest waste first)" if self.target == "global" else
               f"from PID {self.pid} ({self.comm})")
        cap = f"; cap PID {self.pid}'s page tables at their size" if self.hard_limit else ""
        return f"reclaim up to {budget} PTE tables of class {self.depth} {who}{cap}"


def _doc_reason(policy: Any) -> str:
    doc = (type(policy).__doc__ or type(policy).__name__).strip()
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    return first.split(". ")[0].rstrip(".")


def _learned_reason(policy: Any, obs: np.ndarray, k: int = 3) -> str:
    """"learned policy" and the features furthest from its training data
    (VecNormalize z-scores), or the largest raw ones without statistics."""
    norm = getattr(policy, "normalize", None)
    if norm is not None:
        z = np.asarray(norm(obs), dtype=np.float64).ravel()
        order = np.argsort(-np.abs(z), kind="stable")[:k]
        items = ", ".join(f"{OBS_NAMES[i]} {obs[i]:.4g} (z {z[i]:+.1f})" for i in order)
        return f"learned policy; signals furthest from its training data: {items}"
    order = np.argsort(-np.abs(obs.astype(np.float64)), kind="stable")[:k]
    items = ", ".join(f"{OBS_NAMES[i]} {obs[i]:.4g}" for i in order)
    return f"learned policy; largest signals: {items}"


def advise(live: LivePolicy, obs: np.ndarray, procs: Sequence[ProcSample],
           root: Path) -> Advice:
    """Run the policy on ``obs`` and decode its action as the env would apply
    it (``PageTableReclaimEnv.apply_action``)."""
    suspect = most_suspicious(procs)
    if live.explains:
        action, reason = live.policy.decide(obs)
        top = top_consumers(procs, 1)
        if suspect is not None and top and top[0].pid != suspect.pid and int(
                np.asarray(action).ravel()[2]) == 1:
            # The rule judges the largest holder; the env's target is the largest ratio.
            reason += (f"; the target is PID {suspect.pid}, the largest tables/(RSS+tables) "
                       f"({suspect.ratio:.2f}) among holders of >= 1 MiB")
    else:
        action, _ = live.policy.predict(obs, deterministic=True)
        reason = (_learned_reason(live.policy, obs) if live.spec.kind == "model" else
                  _doc_reason(live.policy))
        if live.spec.kind != "model" and not reason.startswith(f"{live.spec.name}:"):
            reason = f"{live.spec.name}: {reason}"
    a = tuple(int(x) for x in np.asarray(action, dtype=np.int64).ravel())
    budget = live.budgets[a[0]]
    depth = DEPTH_NAMES[a[1]]
    hard = len(a) > 3 and a[3] == 1 and suspect is not None
    target = "none"
    if budget > 0:
        target = "global" if a[2] == 0 else "process"
        if a[2] == 1 and suspect is None:
            # The env runs no pass when its target does not exist.
            target = "none"
            reason += "; but no process holds >= 1 MiB of page tables, so no pass"
    who = suspect if (target == "process" or hard) else None
    return Advice(a, budget if target != "none" else 0, depth, target,
                  who.pid if who else None, read_comm(root, who.pid) if who else "",
                  read_cmdline(root, who.pid) if who else "", hard, reason)


# ------------------------------------------------------------------ one interval

@dataclass
class Interval:
    """One sample: signals, observation, advice and what it cost."""

    index: int
    host: HostSample
    scan: ProcScan
    obs: np.ndarray
    unavailable: list[str]
    advice: Advice
    empty: dict[int, ScanResult]
    top: list[ProcSample]
    comms: dict[int, str]
    cpu_ms: float
    wall_ms: float
    time: str

    def record(self, policy: str, notes: list[str]) -> dict[str, Any]:
        """The JSON line of this interval."""
        z = self.host.zone
        top = []
        for p in self.top:
            row: dict[str, Any] = {"pid": p.pid, "comm": self.comms.get(p.pid, "?"),
                                   "vmpte_kib": p.pte_kib, "vmrss_kib": p.rss_kib,
                                   "ratio": p.ratio, "maps": p.maps}
            if p.pid in self.empty:
                row["empty_tables_est"] = self.empty[p.pid].empty_tables
            top.append(row)
        return {
            "time": self.time, "interval": self.index, "policy": policy,
            "advice": self.advice.as_dict(),
            "obs": {n: float(v) for n, v in zip(OBS_NAMES, self.obs, strict=True)},
            "unavailable": self.unavailable,
            "host": {"zone_pages": z.pages, "free_pages": z.free,
                     "wmark_min_low_high": [z.min, z.low, z.high], "zones": list(z.zones),
                     "page_tables_kib": self.host.pt_kib, "psi": self.host.psi},
            "processes": len(self.scan.procs), "vanished": self.scan.vanished,
            "unreadable": len(self.scan.unreadable), "maps_unreadable": len(self.scan.maps_denied),
            "top": top, "notes": notes,
            "sample_cpu_ms": round(self.cpu_ms, 3), "sample_wall_ms": round(self.wall_ms, 3),
        }


class Advisor:
    """Samples the host and asks the policy, one interval at a time."""

    def __init__(self, live: LivePolicy, root: Path, notes: Notes, interval_s: float,
                 top_rows: int = 10, scan_top: int = 0, want_maps: bool = True) -> None:
        self.live = live
        self.root = root
        self.notes = notes
        self.top_rows = top_rows
        self.scan_top = scan_top
        self.want_maps = want_maps
        self.state = LiveState(interval_s, time.monotonic())
        self.index = 0

    def sample(self) -> Interval:
        """Take one sample and decide."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        now = time.monotonic()
        host = read_host(self.root, self.notes)
        scan = sample_processes(self.root, self.want_maps)
        self._note_scan(scan)
        obs, missing = observe(host, scan.procs, self.state, now)
        if missing:
            self.notes.add("unavailable", "not available live (neutral value): "
                           + ", ".join(missing))
        advice = advise(self.live, obs, scan.procs, self.root)
        if advice.target != "none":
            # Shadow mode: as if the advised pass had run (since_pass restarts).
            self.state.last_advised = now
        top = top_consumers(scan.procs, max(self.top_rows, self.scan_top))
        empty = (scan_empty_tables(self.root, top[:self.scan_top], self.notes)
                 if self.scan_top else {})
        comms = {p.pid: read_comm(self.root, p.pid) for p in top[:self.top_rows]}
        cpu = (time.process_time() - cpu0) * 1000.0
        wall = (time.perf_counter() - wall0) * 1000.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        it = Interval(self.index, host, scan, obs, missing, advice, empty,
                      top[:self.top_rows], comms, cpu, wall, stamp)
        self.index += 1
        return it

    def _note_scan(self, scan: ProcScan) -> None:
        if scan.unreadable:
            pid, why = scan.unreadable[0]
            self.notes.add("unreadable-status", f"could not read /proc/PID/status of "
                           f"{len(scan.unreadable)} process(es) (e.g. {pid}: {why}); they are "
                           "left out (counted as 'unreadable')")
        if scan.maps_denied:
            self.notes.add("maps-denied", f"could not read /proc/PID/maps of "
                           f"{len(scan.maps_denied)} process(es) (e.g. {scan.maps_denied[0]}: "
                           "reading another process's mappings needs ptrace read access -- "
                           "the same user, or CAP_SYS_PTRACE for a process with more "
                           "capabilities); their mapping count is unknown")


# ------------------------------------------------------------------ output

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
                                  f"{_why(exc)}; choose another file") from None

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
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax_psi.plot(t, [100 * p.psi_some_avg10 for p in points], color="tab:purple", lw=1.0,
                label="some avg10")
    ax_psi.plot(t, [100 * p.psi_full_avg10 for p in points], color="tab:brown", lw=1.0,
                label="full avg10")
    ax_psi.set_ylabel("PSI memory (%)")
    ax_psi.set_ylim(bottom=0)
    ax_psi.legend(loc="upper left", fontsize=7, frameon=False)
    ax_psi.set_xlabel("seconds since the first sample")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


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
                   help="stop after N samples (default: run until Ctrl-C)")
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
    p.add_argument("--best", action="store_true",
                   help="run folders: use best_model.zip (with best_vecnormalize.pkl)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow models from outside runs/ (model zips hold pickles, which can "
                        "run code when loaded)")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="at the end (after --count samples or Ctrl-C) write a PNG timeline "
                        "of the session: page-table signals with the advised passes, free "
                        "memory, PSI")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no table (with --json-out: only the file is written)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not 0.05 <= args.interval <= 86400:
        raise ConfigError(f"--interval: {args.interval:g} is out of range; allowed "
                          "[0.05, 86400] seconds")
    if args.count < 0:
        raise ConfigError(f"--count: {args.count} is negative; use 0 (run until Ctrl-C) or N")
    if not 1 <= args.top <= 1000:
        raise ConfigError(f"--top: {args.top} is out of range; allowed [1, 1000]")
    if not 0 <= args.scan_top <= 256:
        raise ConfigError(f"--scan-top: {args.scan_top} is out of range; allowed [0, 256]")
    root = Path(args.proc_root)
    if not root.is_dir():
        raise ConfigError(f"--proc-root {root}: not a folder; point it at a mounted procfs")
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".png":
            raise ConfigError(f"--plot {plot}: the plot is a PNG; name it *.png")
        if not plot.resolve().parent.is_dir():
            raise ConfigError(f"--plot {plot}: no folder {plot.parent}; create it first")


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
