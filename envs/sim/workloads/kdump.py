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

from ..config import check_range
from ..pagetable import PAGE, PTE_SHIFT, PTE_SPAN, AddressSpace
from .balloon import discard_small
from .base import BASE, Workload

MiB = 1 << 20
KiB = 1 << 10


@dataclass(frozen=True)
class KdumpConfig:
    """Parameters of the dumped guest (sizes in MiB/KiB, rates per tick)."""

    #: Guest RAM: an overcommitted 8 GiB guest on the 4 GiB host.
    guest_mib: int = 8192
    #: vCPU threads of the VMM process.
    vcpus: int = 2
    #: Share of guest RAM the guest wrote before the balloon inflated.
    written_fraction: float = 0.8
    #: Share of the written 2 MiB slots the guest still holds (not ballooned).
    resident_fraction: float = 0.1
    #: Share of the ballooned slots that keep ``keep_kib`` of guest data.
    mixed_fraction: float = 0.1
    #: Guest data left in a mixed slot.
    keep_kib: int = 64
    #: Guest RAM written and ballooned per warm-up tick (32 tables).
    warmup_mib_per_tick: int = 64
    #: Ticks between the end of the warm-up and the dump.
    dump_delay_ticks: int = 20
    #: Dump read rate: 128 MiB per 100 ms tick (1.3 GB/s, 64 tables a tick).
    dump_mib_per_tick: int = 128

    def __post_init__(self) -> None:
        check_range("kdump.guest_mib", self.guest_mib, 64, 1 << 20)
        check_range("kdump.vcpus", self.vcpus, 1, 1024)
        check_range("kdump.written_fraction", self.written_fraction, 0.0, 1.0)
        check_range("kdump.resident_fraction", self.resident_fraction, 0.0, 1.0)
        check_range("kdump.mixed_fraction", self.mixed_fraction, 0.0, 1.0)
        check_range("kdump.keep_kib", self.keep_kib, 4, 2044)
        check_range("kdump.warmup_mib_per_tick", self.warmup_mib_per_tick, 2, 1 << 16)
        check_range("kdump.dump_delay_ticks", self.dump_delay_ticks, 0, 10**7)
        check_range("kdump.dump_mib_per_tick", self.dump_mib_per_tick, 2, 1 << 16)


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
        self.proc = self.spawn(cpus=c.vcpus)
        self.size = c.guest_mib * MiB
        self.proc.mm.mmap(BASE, self.size)
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

