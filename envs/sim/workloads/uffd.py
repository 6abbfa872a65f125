"""userfaultfd: the destination of a post-copy live migration.

Source
------
* Linux ``Documentation/admin-guide/mm/userfaultfd.rst``: a range registered
  with ``UFFDIO_REGISTER`` (``MODE_MISSING``) reports faults on missing pages
  to a handler thread, which resolves them with ``UFFDIO_COPY`` (a page of
  data) or ``UFFDIO_ZEROPAGE`` (maps the shared zeropage); both allocate
  page tables like a fault.  A table under a registered VMA cannot be
  rebuilt by a plain fault: dropping it would turn the next access into a
  userfault, so it is not reconstructable (the reclaimer refuses it).
* QEMU ``docs/devel/migration/postcopy.rst`` and ``migration/postcopy-ram.c``:
  precopy sends RAM in address order; at the switch the source sends a
  discard bitmap of pages dirtied since they were sent and the destination
  discards them (``ram_discard_range``), then registers all guest RAM
  (``POSTCOPY_LISTEN``) and runs the guest (``POSTCOPY_RUN``); a background
  stream sends the remaining pages while guest faults request pages on
  demand; when all pages arrived, the destination unregisters.  Zero pages
  arrive as a flag: in precopy ``ram_handle_zero`` reads the page to check it
  is zero (a read fault: zeropage), in postcopy ``UFFDIO_ZEROPAGE`` maps it.
* M. Hines, U. Deshpande, K. Gopalan, "Post-copy live migration of virtual
  machines", ACM SIGOPS OSR 43(3), 2009.

What it reproduces
------------------
The VMM maps guest RAM (private anonymous).  **precopy**: pages arrive in
address order at ``stream_mib_per_tick`` up to ``precopy_fraction`` of RAM
(data is written, zero runs are read).  **discard**: ``dirty_fraction`` of
the precopied 2 MiB slots had ``dirty_kib`` re-dirtied on the source; each
run is discarded (tables stay: no run covers a slot).  **postcopy**: all
guest RAM is registered; the stream delivers the dirtied and the unsent
slots while ``faults_per_tick`` guest faults place single pages anywhere in
the missing memory.  **done**: migration complete (after
``(1 - precopy_fraction) x guest_mib / stream_mib_per_tick`` ticks of
postcopy, plus the dirtied slots), the range is unregistered and its ZERO
tables become reclaimable.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..config import check_ranges, ranged
from ..pagetable import PAGE, PTE_SHIFT, PTE_SPAN, AddressSpace
from ..units import KiB, MiB
from .balloon import index_runs, start_guest
from .base import BASE, Workload


@dataclass(frozen=True)
class UffdConfig:
    """Parameters of one migration destination (sizes in MiB/KiB, rates per tick)."""

    #: Guest RAM, one private anonymous mapping.
    guest_mib: int = ranged(2048, 64, 1 << 20)
    #: vCPU threads of the VMM process.
    vcpus: int = ranged(4, 1, 1024)
    #: Share of guest RAM (from the bottom) sent by precopy before the switch.
    precopy_fraction: float = ranged(0.5, 0.0, 1.0)
    #: Share of the precopied 2 MiB slots re-dirtied on the source before the switch.
    dirty_fraction: float = ranged(0.2, 0.0, 1.0)
    #: Dirty run per dirtied slot, discarded at the switch (below 2048: tables stay).
    dirty_kib: int = ranged(256, 4, 2044)
    #: Share of guest RAM that is zero on the source.
    zero_fraction: float = ranged(0.4, 0.0, 1.0)
    #: Mean length of a zero region (zero and data alternate in runs).
    zero_run_mib: int = ranged(64, 2, 1 << 20)
    #: Migration stream: QEMU's default max-bandwidth, 128 MiB/s, is 12.8 MiB per
    #: 100 ms tick; rounded up to whole 2 MiB slots.
    stream_mib_per_tick: int = ranged(16, 2, 1 << 16)
    #: Guest page faults during postcopy, each a single 4 KiB page placed on demand.
    faults_per_tick: int = ranged(16, 0, 4096)
    #: Dirtied slots discarded per tick at the switch.
    discard_slots_per_tick: int = ranged(64, 1, 1 << 16)

    def __post_init__(self) -> None:
        check_ranges(self, "uffd.")


class UffdMigration(Workload):
    """Post-copy migration destination: precopy, discard, registered postcopy, done.

    ``phase`` is one of ``precopy``, ``discard``, ``postcopy`` and ``done``;
    ``registered`` tells whether guest RAM is registered with userfaultfd.
    """

    family: ClassVar[str] = "uffd"
    Config: ClassVar[type[UffdConfig]] = UffdConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = (
        "guest_mib", "precopy_fraction", "zero_fraction", "stream_mib_per_tick",
        "faults_per_tick")

    config: UffdConfig

    def start(self) -> None:
        c = self.config
        self.proc, self.size = start_guest(self, c.guest_mib, c.vcpus)
        self.n_slots = (self.size + PTE_SPAN - 1) >> PTE_SHIFT
        self.zero = self._zero_runs()
        self.precopy_end = round(c.precopy_fraction * self.n_slots)
        self.phase = "precopy"
        self.registered = False
        self.ctx = object()  # the userfaultfd context (identity only)
        self.cursor = 0
        self.pending = np.empty(0, dtype=np.int64)
        self.dirty = np.empty(0, dtype=np.int64)

    def _zero_runs(self) -> np.ndarray:
        """Per-slot zero mask: alternating zero and data runs with geometric
        lengths, zero runs of mean ``zero_run_mib`` and the configured share."""
        c = self.config
        z = c.zero_fraction
        zero = np.zeros(self.n_slots, dtype=bool)
        if z <= 0.0 or z >= 1.0:
            zero[:] = z >= 1.0
            return zero
        mean_zero = max(1.0, c.zero_run_mib / 2)
        mean_data = max(1.0, mean_zero * (1.0 - z) / z)
        pos = 0
        state = bool(self.rng.random() < z)
        while pos < self.n_slots:
            n = int(self.rng.geometric(1.0 / (mean_zero if state else mean_data)))
            zero[pos:pos + n] = state
            pos += n
            state = not state
        return zero

    # -- the tick -------------------------------------------------------------

    def step(self, tick: int) -> None:
        if not self.proc.runnable(tick):
            return
        c = self.config
        mm = self.proc.mm
        per_tick = max(1, (c.stream_mib_per_tick * MiB) >> PTE_SHIFT)
        if self.phase == "precopy":
            end = min(self.precopy_end, self.cursor + per_tick)
            self._deliver(mm, np.arange(self.cursor, end))
            self.cursor = end
            if self.cursor >= self.precopy_end:
                self._begin_discard()
        elif self.phase == "discard":
            self._discard(mm)
        elif self.phase == "postcopy":
            self._demand_faults(mm)
            batch = self.pending[self.cursor:self.cursor + per_tick]
            self._deliver(mm, batch)
            self.cursor += len(batch)
            if self.cursor >= len(self.pending):
                mm.register_uffd(BASE, BASE + self.size, None)  # UFFDIO_UNREGISTER
                self.registered = False
                self.phase = "done"

    def _deliver(self, mm: AddressSpace, slots: np.ndarray) -> None:
        """The stream places whole slots: data is written (UFFDIO_COPY or a
        plain copy), zero runs are read (zeropage)."""
        for a, b in index_runs(slots):
            z = self.zero[a:b]
            cuts = np.flatnonzero(z[1:] != z[:-1]) + 1
            edges = [a, *(a + cuts).tolist(), b]
            for s, e in itertools.pairwise(edges):
                start = BASE + (s << PTE_SHIFT)
                length = min(e << PTE_SHIFT, self.size) - (s << PTE_SHIFT)
                mm.touch(start, length, not bool(self.zero[s]), PAGE)

    def _begin_discard(self) -> None:
        c = self.config
        dirty = np.flatnonzero(self.rng.random(self.precopy_end) < c.dirty_fraction)
        self.dirty = dirty
        self.zero[dirty] = False  # the guest wrote them on the source
        self.pending = np.concatenate((dirty, np.arange(self.precopy_end, self.n_slots)))
        self.cursor = 0
        self.phase = "discard"

    def _discard(self, mm: AddressSpace) -> None:
        """Discard the re-dirtied run of each dirty slot (one call each)."""
        c = self.config
        batch = self.dirty[self.cursor:self.cursor + c.discard_slots_per_tick]
        run = c.dirty_kib * KiB
        offs = self.rng.integers(0, (PTE_SPAN - run) // PAGE + 1, size=len(batch)) * PAGE
        for slot, off in zip(batch.tolist(), offs.tolist(), strict=True):
            a = BASE + (slot << PTE_SHIFT) + off
            if a < BASE + self.size:
                mm.madvise(a, min(run, BASE + self.size - a), "DONTNEED")
        self.cursor += len(batch)
        if self.cursor >= len(self.dirty):
            mm.register_uffd(BASE, BASE + self.size, self.ctx)  # POSTCOPY_LISTEN
            self.registered = True
            self.cursor = 0
            self.phase = "postcopy"

    def _demand_faults(self, mm: AddressSpace) -> None:
        """Guest vCPUs fault on missing pages; each is placed on its own."""
        left = self.pending[self.cursor:]
        k = min(self.config.faults_per_tick, len(left))
        if k == 0:
            return
        slots = left[self.rng.integers(0, len(left), size=k)]
        pages = self.rng.integers(0, PTE_SPAN // PAGE, size=k)
        for slot, page in zip(slots.tolist(), pages.tolist(), strict=True):
            a = BASE + (slot << PTE_SHIFT) + page * PAGE
            if a < BASE + self.size:
                mm.touch(a, PAGE, not bool(self.zero[slot]), PAGE)
