"""virtio-balloon: a VM whose host process gives guest memory back page by page.

Source
------
* virtio spec v1.2, section 5.5 (traditional memory balloon device; free page
  reporting, ``VIRTIO_BALLOON_F_REPORTING``).
* Linux ``drivers/virtio/virtio_balloon.c``: the guest inflates in requests
  of at most ``VIRTIO_BALLOON_ARRAY_PFNS_MAX`` = 256 page frames (1 MiB) of
  single 4 KiB pages taken from its buddy allocator.
* Linux ``mm/page_reporting.c``: free page reporting hands the host free
  blocks of at least ``page_reporting_order`` (default ``pageblock_order``:
  order 9 = 2 MiB on x86-64; order 10 = 4 MiB blocks qualify too), up to
  ``PAGE_REPORTING_CAPACITY`` = 32 blocks per report, every 2 s.
* QEMU ``hw/virtio/virtio-balloon.c``: ``balloon_inflate_page`` discards
  each inflated 4 KiB page with its own ``ram_block_discard_range``
  (``MADV_DONTNEED`` on private anonymous guest RAM); a free page report is
  discarded range by range, each range one aligned 2/4 MiB block.  Nothing
  happens on the host at deflation: the guest simply uses the pages again,
  which faults them back in.
* D. Hildenbrand, "[LSF/MM/BPF TOPIC] page table reclaim" (linux-mm, 2022):
  hypervisors that implement ballooning are the first example of processes
  that keep page tables for memory they gave back.

What it reproduces
------------------
One process (the VMM) maps the guest RAM as one private anonymous mapping
and writes it once at start (the guest booted and used its memory).  Then
it cycles through

* **report**: the guest frees ``report_fraction`` of its RAM and reports it
  in aligned ``report_kib`` blocks; each is one ``MADV_DONTNEED`` covering
  whole 2 MiB slots, so on 6.14+ (``pt_reclaim``) the tables go with it
  (R6), on older kernels they stay empty (R13/R14);
* **inflate**: the balloon grows to ``balloon_fraction`` of guest RAM in
  scattered ``batch_kib`` requests.  Per-page discards never cover a whole
  2 MiB slot, so every table stays even when all its pages are gone (R7):
  RSS falls, page-table memory does not;
* **hold**: the balloon stays inflated for ``hold_ticks``;
* **deflate**: the guest takes the ballooned and reported memory back and
  writes it again (tables are re-allocated where they were freed);
* **idle** for ``idle_ticks``, then the next cycle.

The 4 KiB discards are issued as :func:`discard_small` calls: the same pages
are zapped and no call covers a whole aligned 2 MiB slot, which is exactly
what the kernel sees from many one-page ``MADV_DONTNEED`` calls, at one call
per slot instead of 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..config import ConfigError, check_ranges, ranged
from ..pagetable import PAGE, PTE_SPAN, AddressSpace
from ..units import KiB, MiB
from .base import BASE, Workload, pick

if TYPE_CHECKING:
    from ..process import Process

_HALF = PTE_SPAN // 2

# Per-unit guest states.
GUEST, BALLOONED, REPORTED = 0, 1, 2


def start_guest(w: Workload, guest_mib: int, vcpus: int) -> tuple[Process, int]:
    """Start ``w``'s VMM: a process of ``vcpus`` threads with ``guest_mib`` of guest RAM
    (private anonymous) mapped at :data:`BASE`; its process and the RAM size in bytes."""
    proc = w.spawn(cpus=vcpus)
    size = guest_mib * MiB
    proc.mm.mmap(BASE, size)
    return proc, size


def discard_small(mm: AddressSpace, start: int, end: int) -> int:
    """``MADV_DONTNEED`` of [start, end) as a run of small (4 KiB) discards does it.

    The pages zapped are the same, but no single call covers a whole aligned
    2 MiB slot, so no PTE table is freed (R6, R7), whatever the kernel.  It
    issues one call per whole slot inside the range plus one, cutting each
    whole slot in its middle.  Returns the number of calls.
    """
    if end <= start:
        return 0
    pos = start
    cut = ((start + PTE_SPAN - 1) & ~(PTE_SPAN - 1)) + _HALF
    calls = 0
    while cut + _HALF <= end:  # the slot [cut - half, cut + half) lies inside
        mm.madvise(pos, cut - pos, "DONTNEED")
        calls += 1
        pos = cut
        cut += PTE_SPAN
    mm.madvise(pos, end - pos, "DONTNEED")
    return calls + 1


def index_runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``[first, last + 1)`` of consecutive values in a sorted int array."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate(([0], breaks))]
    ends = idx[np.concatenate((breaks - 1, [len(idx) - 1]))] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@dataclass(frozen=True)
class BalloonConfig:
    """Parameters of one ballooned VM (sizes in MiB/KiB, rates per tick)."""

    #: Guest RAM, one private anonymous mapping (a 2 GiB guest on the 4 GiB host).
    guest_mib: int = ranged(2048, 64, 1 << 20)
    #: vCPU threads: a TLB flush of the VMM's mm sends IPIs to them.
    vcpus: int = ranged(4, 1, 1024)
    #: Guest RAM written per tick at start (128 MiB = 64 tables a tick).
    fill_mib_per_tick: int = ranged(128, 2, 1 << 16)
    #: One inflate request: 256 PFNs = 1 MiB (VIRTIO_BALLOON_ARRAY_PFNS_MAX),
    #: taken as contiguous 4 KiB pages of a split buddy block.
    batch_kib: int = ranged(1024, 4, 1024)
    #: Balloon size reached by each inflation, as a share of guest RAM.
    balloon_fraction: float = ranged(0.5, 0.0, 0.95)
    #: Inflate requests per tick (16 x 1 MiB = 160 MiB/s at 100 ms ticks).
    inflate_batches_per_tick: int = ranged(16, 1, 4096)
    #: Deflate: balloon/reported units the guest takes back and writes per tick.
    deflate_batches_per_tick: int = ranged(16, 1, 4096)
    #: Free page reporting block: 2048 (order 9, pageblock) or 4096 (order 10).
    report_kib: int = 2048
    #: Guest RAM freed by the guest and reported per cycle.
    report_fraction: float = ranged(0.25, 0.0, 0.95)
    #: Reported blocks per tick (one report holds up to 32).
    report_chunks_per_tick: int = ranged(8, 1, 1024)
    #: Ticks the balloon stays inflated before it deflates.
    hold_ticks: int = ranged(100, 0, 10**7)
    #: Ticks between a deflation and the next cycle.
    idle_ticks: int = ranged(50, 0, 10**7)
    #: Cycles to run (0: forever).
    cycles: int = ranged(0, 0, 10**6)

    def __post_init__(self) -> None:
        check_ranges(self, "balloon.")
        if self.batch_kib & (self.batch_kib - 1):
            raise ConfigError(f"balloon.batch_kib: {self.batch_kib} must be a power of two "
                              "(4 to 1024)")
        if self.guest_mib * 1024 // self.batch_kib > 1 << 22:
            raise ConfigError(f"balloon.batch_kib: {self.batch_kib} KiB batches cut "
                              f"{self.guest_mib} MiB into more than 4 Mi units; raise it")
        if self.report_kib not in (2048, 4096):
            raise ConfigError(f"balloon.report_kib: {self.report_kib} is not 2048 or 4096 "
                              "(order-9 or order-10 blocks)")


class Balloon(Workload):
    """A VM with a virtio-balloon: fill, then report / inflate / hold / deflate cycles.

    ``phase`` is one of ``fill``, ``report``, ``inflate``, ``hold``,
    ``deflate``, ``idle`` and ``done``; ``cycle`` counts finished cycles.
    """

    family: ClassVar[str] = "balloon"
    Config: ClassVar[type[BalloonConfig]] = BalloonConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = (
        "guest_mib", "balloon_fraction", "report_fraction", "inflate_batches_per_tick",
        "deflate_batches_per_tick", "hold_ticks", "idle_ticks")

    config: BalloonConfig

    def start(self) -> None:
        c = self.config
        self.proc, self.size = start_guest(self, c.guest_mib, c.vcpus)
        self.unit = c.batch_kib * KiB
        self.state = np.zeros(self.size // self.unit, dtype=np.int8)
        self.per_chunk = c.report_kib * KiB // self.unit
        self.n_chunks = self.size // (c.report_kib * KiB)
        self.phase = "fill"
        self.cycle = 0
        self.filled = 0
        self.wait = 0
        self.target = 0

    # -- phases --------------------------------------------------------------

    def step(self, tick: int) -> None:
        if not self.proc.runnable(tick):
            return
        mm = self.proc.mm
        c = self.config
        if self.phase == "fill":
            n = min(c.fill_mib_per_tick * MiB, self.size - self.filled)
            mm.touch(BASE + self.filled, n, True)
            self.filled += n
            if self.filled >= self.size:
                self._begin_cycle()
        elif self.phase == "report":
            self._report(mm)
        elif self.phase == "inflate":
            self._inflate(mm)
        elif self.phase == "hold":
            self.wait -= 1
            if self.wait <= 0:
                self.phase = "deflate"
        elif self.phase == "deflate":
            self._deflate(mm)
        elif self.phase == "idle":
            self.wait -= 1
            if self.wait <= 0:
                self._begin_cycle()

    def _begin_cycle(self) -> None:
        c = self.config
        if c.cycles and self.cycle >= c.cycles:
            self.phase = "done"
            return
        self.phase = "report"
        self.target = round(c.report_fraction * self.n_chunks)

    def _report(self, mm: AddressSpace) -> None:
        """The guest reports free aligned blocks; each is one DONTNEED."""
        c = self.config
        k = min(c.report_chunks_per_tick, self.target)
        chunks = self.state[:self.n_chunks * self.per_chunk].reshape(self.n_chunks, -1)
        free = chunks.max(axis=1) == GUEST
        chosen = pick(self.rng, free, k)
        chunk_bytes = c.report_kib * KiB
        for ch in chosen.tolist():
            mm.madvise(BASE + ch * chunk_bytes, chunk_bytes, "DONTNEED")
            self.reclaim_pgtables(mm, BASE + ch * chunk_bytes, chunk_bytes)
            chunks[ch] = REPORTED
        self.target -= len(chosen)
        if self.target <= 0 or len(chosen) < k:
            self.phase = "inflate"
            self.target = max(0, round(c.balloon_fraction * len(self.state))
                              - int(np.count_nonzero(self.state == BALLOONED)))

    def _inflate(self, mm: AddressSpace) -> None:
        """Scattered balloon requests: 4 KiB discards, tables stay."""
        k = min(self.config.inflate_batches_per_tick, self.target)
        chosen = pick(self.rng, self.state == GUEST, k)
        self.state[chosen] = BALLOONED
        for a, b in index_runs(chosen):
            discard_small(mm, BASE + a * self.unit, BASE + b * self.unit)
            self.reclaim_pgtables(mm, BASE + a * self.unit, (b - a) * self.unit)
        self.target -= len(chosen)
        if self.target <= 0 or len(chosen) < k:
            self.phase = "hold"
            self.wait = self.config.hold_ticks

    def _deflate(self, mm: AddressSpace) -> None:
        """The guest takes pages back and writes them (re-faulting tables)."""
        chosen = pick(self.rng, self.state != GUEST, self.config.deflate_batches_per_tick)
        self.state[chosen] = GUEST
        for a, b in index_runs(chosen):
            mm.touch(BASE + a * self.unit, (b - a) * self.unit, True, PAGE)
        if len(chosen) < self.config.deflate_batches_per_tick:
            self.cycle += 1
            self.phase = "idle"
            self.wait = self.config.idle_ticks
