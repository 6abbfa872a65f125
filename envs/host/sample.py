"""What the live advisor reads from ``/proc``: zones, pressure, processes.

Every reader is read-only (it opens files under ``/proc`` for reading only)
and takes ``root`` (``--proc-root``), so tests point it at fake proc trees.
Whatever cannot be read -- other users' mappings when unprivileged, a
kernel without PSI or ``PAGEMAP_SCAN``, a process that exits mid-read -- is
skipped and said once (:class:`Notes`).  How these signals become the
observation: :mod:`ptreclaim.envs.features`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..features import pt_ratio
from ..sim.config import ConfigError
from ..sim.machine import watermarks
from . import procfs

PAGE_KIB = 4
#: The raw-pagemap fallback (kernels before 6.7) reads 8 bytes per page of a
#: mapping: skip mappings above 4 GiB (8 MiB of pagemap each) to keep a sample short.
RAW_CAP_BYTES = 4 << 30


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
        notes.add("meminfo", f"{root}/meminfo: {os_reason(exc)}; page-table memory (pt_frac) is "
                  "summed from the processes' VmPTE instead")
    zone: UnmovableZone | None = None
    try:
        zone = unmovable_zone(parse_zoneinfo(_read_host_file(root / "zoneinfo")))
        if zone is None:
            notes.add("zoneinfo-empty", f"{root}/zoneinfo lists no zone for unmovable "
                      "allocations; using meminfo")
    except OSError as exc:
        notes.add("zoneinfo", f"{root}/zoneinfo: {os_reason(exc)}; the zone is all of RAM "
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
               f"no PSI ({os_reason(exc)}; a kernel without CONFIG_PSI)")
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
        notes.add("vmstat", f"{root}/vmstat: {os_reason(exc)}; fail_share is 0")
    pt = meminfo.get("PageTables") if meminfo else None
    return HostSample(zone, psi, pt, allocstall)


def os_reason(exc: OSError) -> str:
    """The reason an OS error gives, for a note or an error line."""
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
    def pt_bytes(self) -> int:
        """``VmPTE`` in bytes (a :class:`~ptreclaim.envs.features.Consumer`)."""
        return self.pte_kib * 1024

    @property
    def rss_bytes(self) -> int:
        """``VmRSS`` in bytes."""
        return self.rss_kib * 1024

    @property
    def ratio(self) -> float:
        """Page tables / (RSS + page tables), as the env's ``top*_pt_ratio``."""
        return pt_ratio(self.pte_kib, self.rss_kib)


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
        raise ConfigError(f"{root}: cannot list processes: {os_reason(exc)}; is --proc-root a "
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
            scan.unreadable.append((pid, os_reason(exc) if isinstance(exc, OSError) else str(exc)))
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
    :func:`~ptreclaim.envs.host.procfs.block_presence`; a process that is gone
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

