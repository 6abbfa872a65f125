"""A malicious page-table hog: almost nothing but page tables.

Source
------
* D. Hildenbrand, "[LSF/MM/BPF TOPIC] page table reclaim" (linux-mm, 22 Feb
  2022): "it's easy to have a process that almost exclusively consumes page
  tables only" -- map a huge sparse range and touch one byte every 2 MiB.
* ``shared/kernel/RULES.md`` R1/R2 (measured on Linux 6.18): the first fault
  in a 2 MiB slot allocates its 4 KiB PTE table (plus PMD/PUD tables), read
  or write alike; writing one byte every 2 MiB over 2 GiB costs 4108 KiB of
  VmPTE for 4 MiB of RSS.  A read of never-written anonymous memory maps the
  shared zero page: no RSS at all, the same tables.
* ``MAP_NORESERVE`` (mmap(2)): the mapping is not charged to overcommit, so
  hundreds of GiB map at once on a 4 GiB machine.

What it reproduces
------------------
One process maps ``size_gib`` of private anonymous ``MAP_NORESERVE`` memory
and sweeps it, ``tables_per_tick`` new PTE tables a tick on average (Poisson,
capped at twice the mean), one access every ``stride_kib``; at the end it
wraps around and sweeps again (the classic ``for (;;) for (p = base; p < end;
p += 2 MiB) *p = 1;`` loop).  Variants:

* ``write``: writes.  Each table holds one anonymous page: one PTE table per
  4 KiB of RSS (plus its PMD/PUD share).  The tables are PINNED (anon), so
  no class of reclaim can take them: only limits or the OOM killer can.
* ``zeropage``: reads.  Each table holds one zero-page entry (ZERO class):
  page tables and no RSS.  Reclaim of ZERO tables frees them, and this hog
  has moved on by then and does not come back until it wraps.
* ``retouch``: reads like ``zeropage``, and fights back.  It watches its own
  VmPTE (``/proc/self/status``): when its PTE-table count dropped since its
  last step, tables were reclaimed behind its back.  It then probes its swept
  range (``mincore`` on one page per table, ``retouch_scan_per_tick`` tables
  a tick) from the lowest address, where a khugepaged-style reclaim cursor
  starts, and re-reads every missing one (``retouch_per_tick`` a tick) until
  it found as many as it lost.

Each tick is one ``touch`` call for the sweep (a strided access, so its cost
is the tables it makes) plus, for ``retouch``, a few re-touch calls of
contiguous runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..config import ConfigError, check_ranges, ranged
from ..pagetable import PTE_SHIFT, PTE_SPAN, TASK_SIZE
from ..units import GiB, KiB
from .base import BASE, Workload

HogVariant = Literal["write", "zeropage", "retouch"]


@dataclass(frozen=True)
class HogConfig:
    """Parameters of one page-table hog."""

    #: ``write`` (pinned tables, 1 page each), ``zeropage`` (reads: no RSS) or
    #: ``retouch`` (reads, and re-reads what reclaim took).
    variant: HogVariant = "write"
    #: The MAP_NORESERVE mapping: 256 GiB is 131072 PTE tables (512 MiB of page
    #: tables, more than the default machine's whole normal zone).
    size_gib: int = ranged(256, 1, (TASK_SIZE - BASE) // GiB)
    #: Mean new PTE tables per tick: 64 a tick (640/s at 100 ms ticks) fill the
    #: ~150 MiB the default machine's tenants leave free in about 600 ticks,
    #: less during a tenant burst.
    tables_per_tick: int = ranged(64, 1, 65536)
    #: Distance between two accesses: 2048 (one per PTE table) by default;
    #: 1048576 (1 GiB) also costs a PMD table per access; smaller strides must
    #: divide 2 MiB (several accesses per table, more RSS for ``write``).
    stride_kib: int = ranged(2048, 4, 1 << 20)
    #: ``retouch``: most missing tables it re-reads per tick (twice its growth
    #: rate: a reclaim of 4096 tables is undone in 32 ticks).
    retouch_per_tick: int = ranged(128, 1, 1 << 20)
    #: ``retouch``: most tables it probes per tick while looking for missing ones.
    retouch_scan_per_tick: int = ranged(1024, 1, 1 << 22)

    def __post_init__(self) -> None:
        if self.variant not in ("write", "zeropage", "retouch"):
            raise ConfigError(f"hog.variant: {self.variant!r} is not one of 'write', "
                              "'zeropage', 'retouch'")
        check_ranges(self, "hog.")
        if self.stride_kib % 4 or (self.stride_kib < 2048 and 2048 % self.stride_kib):
            raise ConfigError(f"hog.stride_kib: {self.stride_kib} must be a multiple of 4 "
                              "that divides 2048, or at least 2048")
        if self.stride_kib * KiB > self.size_gib * GiB:
            raise ConfigError(f"hog.stride_kib: {self.stride_kib} KiB is larger than the "
                              f"mapping (hog.size_gib = {self.size_gib})")


class Hog(Workload):
    """A sparse page-table hog (see the module docstring).

    ``swept`` is the number of units (accesses; one PTE table each) touched
    so far in the current sweep, ``sweeps`` the number of finished sweeps,
    ``retouched`` the number of tables the ``retouch`` variant re-grew.
    """

    family: ClassVar[str] = "hog"
    Config: ClassVar[type[HogConfig]] = HogConfig
    sane: ClassVar[bool] = False
    jitter_fields: ClassVar[tuple[str, ...]] = ("size_gib", "tables_per_tick")

    config: HogConfig

    def start(self) -> None:
        c = self.config
        self.proc = self.spawn()
        self.size = c.size_gib * GiB
        self.proc.mm.mmap(BASE, self.size, noreserve=True)
        self.stride = c.stride_kib * KiB
        # One unit = one PTE table's worth of the sweep: a slot for small strides,
        # one access for strides of 2 MiB and more.
        self.unit = max(self.stride, PTE_SPAN)
        self.units = self.size // self.unit
        self.write = c.variant == "write"
        self.swept = 0
        self.sweeps = 0
        self.high = 0  # units swept at least once (the range a retouch probes)
        self.expected = 0  # PTE tables after our last step
        self.missing = 0  # tables lost to reclaim and not found again yet
        self.probe = 0  # next unit the retouch probe looks at
        self.probed = 0  # units probed since the loss was noticed (one lap at most)
        self.retouched = 0

    def step(self, tick: int) -> None:
        p = self.proc
        if not p.runnable(tick):
            return
        mm = p.mm
        c = self.config
        if c.variant == "retouch":
            lost = self.expected - len(mm.pte)
            if lost > 0:
                if self.missing == 0:
                    self.probe = 0  # a reclaim cursor starts at the lowest address
                self.probed = 0
                self.missing += lost
            if self.missing > 0:
                self._retouch()
        mean = c.tables_per_tick
        n = min(int(self.rng.poisson(mean)), 2 * mean, self.units - self.swept)
        if n > 0:
            mm.touch(BASE + self.swept * self.unit, n * self.unit, self.write, self.stride)
            self.swept += n
            self.high = max(self.high, self.swept)
        if self.swept >= self.units:
            self.swept = 0
            self.sweeps += 1
        self.expected = len(mm.pte)

    def _unit_slot(self, u: int) -> int:
        return (BASE + u * self.unit) >> PTE_SHIFT

    def _retouch(self) -> None:
        """Probe the swept range for missing tables and re-read them."""
        c = self.config
        mm = self.proc.mm
        pte = mm.pte
        want = min(c.retouch_per_tick, self.missing)
        scan = min(c.retouch_scan_per_tick, self.high - self.probed)
        found: list[int] = []
        u = self.probe
        for _ in range(scan):
            if u >= self.high:
                u = 0
            missing = self._unit_slot(u) not in pte
            u += 1
            self.probed += 1
            if missing:
                found.append(u - 1)
                if len(found) >= want:
                    break
        self.probe = u
        # Re-read each run of consecutive missing units with one strided touch.
        i = 0
        while i < len(found):
            j = i + 1
            while j < len(found) and found[j] == found[j - 1] + 1:
                j += 1
            mm.touch(BASE + found[i] * self.unit, (j - i) * self.unit, False, self.stride)
            i = j
        self.retouched += len(found)
        self.missing -= len(found)
        if self.probed >= self.high:
            self.missing = 0  # a whole lap: whatever is still missing is not ours to find


__all__ = ["Hog", "HogConfig"]
