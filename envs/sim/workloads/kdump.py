"""kdump of a ballooned guest: one read of every page fills the host with
zeropage tables.

Source
------
* D. Hildenbrand, "[LSF/MM/BPF TOPIC] page table reclaim" (linux-mm, 2022):
  "A sane use case is a simple VM having a balloon inflated and triggering a
  memory dump like kdump: we'll populate the shared zeropage everywhere and
  have plenty of page tables we don't even care about."
* Linux ``Documentation/admin-guide/kdump/kdump.rst``: the capture kernel
  exposes the crashed kernel's memory as ``/proc/vmcore``; ``makedumpfile``
  or ``cp`` reads it once, front to back.  QEMU's ``dump-guest-memory``
  does the same from the host side.  Either way the host's VMM process sees
  one read of every guest page.
* Linux ``mm/memory.c`` ``do_anonymous_page``: a read fault on a
  never-written or discarded anonymous page maps the shared zeropage, and
  allocates the PTE table like any fault (R2).
* virtio-balloon (see :mod:`.balloon`): inflated pages were discarded one
  4 KiB page at a time, so their tables stayed (R7).

What it reproduces
------------------
Warm-up: the guest has written ``written_fraction`` of its RAM (chunk by
chunk); the balloon then took all but ``resident_fraction`` of the written
2 MiB slots back with 4 KiB discards (``mixed_fraction`` of the ballooned
slots keep ``keep_kib`` of guest data: scattered kernel allocations).  RSS
ends small, but every written slot keeps its (mostly empty) table.  After
``dump_delay_ticks`` the dump reads every page once at ``dump_mib_per_tick``:
every slot without guest data becomes a ZERO-class table, including the
never-written ones, which get new tables.  Nothing is read again; the VM
idles with page-table memory far above what its RSS needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import check_ranges, ranged
from ..pagetable import PAGE, PTE_SHIFT, PTE_SPAN, AddressSpace
from ..units import KiB, MiB
from .balloon import discard_small, start_guest
from .base import BASE, Workload


@dataclass(frozen=True)
class KdumpConfig:
    """Parameters of the dumped guest (sizes in MiB/KiB, rates per tick)."""

    #: Guest RAM: an overcommitted 8 GiB guest on the 4 GiB host.
    guest_mib: int = ranged(8192, 64, 1 << 20)
    #: vCPU threads of the VMM process.
    vcpus: int = ranged(2, 1, 1024)
    #: Share of guest RAM the guest wrote before the balloon inflated.
    written_fraction: float = ranged(0.8, 0.0, 1.0)
    #: Share of the written 2 MiB slots the guest still holds (not ballooned).
    resident_fraction: float = ranged(0.1, 0.0, 1.0)
    #: Share of the ballooned slots that keep ``keep_kib`` of guest data.
    mixed_fraction: float = ranged(0.1, 0.0, 1.0)
    #: Guest data left in a mixed slot.
    keep_kib: int = ranged(64, 4, 2044)
    #: Guest RAM written and ballooned per warm-up tick (32 tables).
    warmup_mib_per_tick: int = ranged(64, 2, 1 << 16)
    #: Ticks between the end of the warm-up and the dump.
    dump_delay_ticks: int = ranged(20, 0, 10**7)
    #: Dump read rate: 128 MiB per 100 ms tick (1.3 GB/s, 64 tables a tick).
    dump_mib_per_tick: int = ranged(128, 2, 1 << 16)

    def __post_init__(self) -> None:
        check_ranges(self, "kdump.")


class Kdump(Workload):
    """A ballooned guest that is dumped once, then idles.

    ``phase`` is one of ``warmup``, ``wait``, ``dump`` and ``idle``.
    """

    family: ClassVar[str] = "kdump"
    Config: ClassVar[type[KdumpConfig]] = KdumpConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = (
        "guest_mib", "resident_fraction", "dump_delay_ticks",
        "dump_mib_per_tick")

    config: KdumpConfig

    def start(self) -> None:
        c = self.config
        self.proc, self.size = start_guest(self, c.guest_mib, c.vcpus)
        self.phase = "warmup"
        self.pos = 0
        self.wait = 0

    def step(self, tick: int) -> None:
        if not self.proc.runnable(tick):
            return
        c = self.config
        mm = self.proc.mm
        if self.phase == "warmup":
            n = min(c.warmup_mib_per_tick * MiB, self.size - self.pos)
            if self.rng.random() < c.written_fraction:
                self._write_and_balloon(mm, BASE + self.pos, BASE + self.pos + n)
            self.pos += n
            if self.pos >= self.size:
                self.phase, self.wait, self.pos = "wait", c.dump_delay_ticks, 0
        elif self.phase == "wait":
            self.wait -= 1
            if self.wait < 0:
                self.phase = "dump"
        elif self.phase == "dump":
            n = min(c.dump_mib_per_tick * MiB, self.size - self.pos)
            mm.touch(BASE + self.pos, n, False, PAGE)
            self.pos += n
            if self.pos >= self.size:
                self.phase = "idle"

    def _write_and_balloon(self, mm: AddressSpace, start: int, end: int) -> None:
        """The guest wrote [start, end); the balloon took back all but the
        resident slots with 4 KiB discards (tables stay)."""
        c = self.config
        mm.touch(start, end - start, True, PAGE)
        first = start >> PTE_SHIFT
        n = ((end - 1) >> PTE_SHIFT) - first + 1
        resident = self.rng.random(n) < c.resident_fraction
        mixed = self.rng.random(n) < c.mixed_fraction
        keep = c.keep_kib * KiB
        run_a = run_b = -1
        for i in range(n):
            if resident[i]:
                continue
            base = (first + i) * PTE_SPAN
            a = max(start, base + (keep if mixed[i] else 0))
            b = min(end, base + PTE_SPAN)
            if a >= b:
                continue
            if a == run_b:
                run_b = b
                continue
            if run_b > run_a:
                discard_small(mm, run_a, run_b)
            run_a, run_b = a, b
        if run_b > run_a:
            discard_small(mm, run_a, run_b)

