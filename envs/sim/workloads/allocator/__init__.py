"""Memory allocators and managed runtimes: fill, churn and free a heap, four ways.

Source
------
* Measured here on redis 7 + jemalloc 5.3 (``shared/DESIGN.md``): of 15,871
  ``MADV_DONTNEED`` calls the median covered 44 KiB, 15,870 were under 2 MiB
  and none covered an aligned 2 MiB slot; after a fill/delete/flush cycle 405
  of 621 PTE tables were empty, RSS had fallen 98 % and VmPTE 0 %.  jemalloc
  purges dirty extents after ``dirty_decay_ms`` (10 s), extent by extent,
  lowest address first for reuse (``opt.retain``: it never unmaps).
* glibc malloc (``malloc/malloc.c``, ``malloc/arena.c``): the main arena grows
  and shrinks with brk (``systrim``); thread arenas live in 64 MiB heaps
  (``HEAP_MAX_SIZE``) reserved ``PROT_NONE`` and committed by ``mprotect``
  (``grow_heap``); ``heap_trim``/``shrink_heap`` give the top back with
  ``MADV_DONTNEED`` and delete empty heaps with munmap; top trimming starts at
  ``M_TRIM_THRESHOLD`` (128 KiB) and keeps ``M_TOP_PAD`` (128 KiB);
  ``malloc_trim(0)`` (``mtrim``) issues one ``MADV_DONTNEED`` per free chunk,
  so after a large free its calls cover whole 2 MiB slots: tables go (R6).
* V8 (Node.js, no pointer compression): every 256 KiB heap page is its own
  mapping at a random hint (``Heap::GetRandomMmapAddr`` -> 46-bit
  ``OS::GetRandomMmapAddr``; ``MemoryAllocator::AllocateAlignedMemory``), and a
  page freed by the GC is unmapped.  V8 confines the hint to 4 GiB on macOS
  only because the Darwin kernel leaked page-directory pages (crbug 700928);
  on Linux each page usually costs its own PTE and PMD table, which munmap
  frees again (R14).
* HotSpot G1 on Linux: the heap is reserved ``PROT_NONE``/``MAP_NORESERVE``;
  ``os::commit_memory`` maps regions ``MAP_FIXED`` read-write,
  ``os::uncommit_memory`` maps them back ``MAP_FIXED`` ``PROT_NONE``
  ``MAP_NORESERVE`` (R15: the replaced tables are freed, on any kernel).
  Region size = max heap / 2048, a power of two in [1, 32] MiB; after a full
  GC the heap shrinks from the top until at most ``MaxHeapFreeRatio`` (70 %)
  of it is free, never below ``InitialHeapSize`` (RAM/64).  ``uncommit:
  dontneed`` models runtimes that uncommit with ``MADV_DONTNEED`` +
  ``mprotect(PROT_NONE)`` instead: tables go only with 6.14+ on-zap reclaim.

What it reproduces
------------------
One process runs cycles of four phases, ``fill`` (the live heap ramps up to
``heap_mib``), ``churn`` (each tick ``churn_fraction`` of it is freed and
allocated again), ``free`` (a flush: all but ``keep_fraction`` of it is freed
at once; the allocator then gives memory back in its own way) and ``idle``.
Frees happen in units of ``extent_kib`` (an allocation and its neighbours),
so a slot keeps a table while any of its units survives.  Every variant does
at most ``tables_per_tick`` new tables and ``calls_per_tick`` system calls a
tick; what does not fit is done in the next ticks.

* ``jemalloc`` keeps the heap dense in one arena, refills holes lowest
  address first (dirty pages without a fault), and purges each slot's freed
  pages ``decay_ticks`` after they were freed with calls that never cover the
  whole slot.  After ``free`` its tables stay, empty.
* ``glibc`` spreads the heap over ``arenas`` arenas (the main brk heap and
  64 MiB thread heaps), trims tops automatically and calls
  ``malloc_trim(0)`` every ``trim_every`` ticks: whole free slots lose their
  tables (with ``pt_reclaim``; on older kernels they stay empty).
* ``v8`` maps ``page_kib`` pages at random addresses in ``spread_gib`` and
  unmaps freed ones: about two tables per page while live, none after.
* ``jvm`` commits and uncommits G1 regions (``uncommit: remap`` or
  ``dontneed``) and keeps ``initial_mib`` committed.

Modelling choice for the slot-based variants: inside each 2 MiB slot the live
pages are its lowest pages and the resident ones a prefix too, so one call
per slot and tick does what many small calls do; no modelled purge call ever
covers an aligned slot that the real calls would not have covered.

The package: :mod:`.config` (:class:`AllocatorConfig`), :mod:`.engine` (the interface
and the slot-based heap), one module per engine (:mod:`.jemalloc`, :mod:`.glibc`,
:mod:`.v8`, :mod:`.jvm`), and here the phase machine, :class:`Allocator` (defined in the
package itself: the workload registry takes the classes a family's module defines).
"""

from __future__ import annotations

from typing import ClassVar

from ...pagetable import PAGE
from ...units import MiB
from ..base import Workload
from .config import AllocatorConfig
from .config import AllocVariant as AllocVariant
from .engine import Budget, _Engine
from .glibc import _Glibc
from .jemalloc import _Jemalloc
from .jvm import _Jvm
from .v8 import _V8

PHASES = ("fill", "churn", "free", "idle", "done")


_ENGINES: dict[str, type[_Engine]] = {
    "jemalloc": _Jemalloc, "glibc": _Glibc, "v8": _V8, "jvm": _Jvm}


class Allocator(Workload):
    """A heap that fills, churns and frees (see the module docstring).

    ``phase`` is the current phase (one of :data:`PHASES`), ``cycle`` the
    number of the current cycle, and ``engine`` the variant's mechanics
    (``engine.live`` is the live heap in pages).
    """

    family: ClassVar[str] = "allocator"
    Config: ClassVar[type[AllocatorConfig]] = AllocatorConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ("heap_mib", "churn_fraction", "churn_ticks",
                                                "idle_ticks")

    config: AllocatorConfig

    def start(self) -> None:
        c = self.config
        self.proc = self.spawn(cpus=c.threads)
        self.engine = _ENGINES[c.variant](self)
        self.engine.start()
        self.heap_pages = c.heap_mib * MiB // PAGE
        self.t0: int | None = None
        self.phase = "fill"
        self.cycle = 0
        self.flushed = -1  # the last cycle whose free phase began

    def _phase(self, t: int) -> tuple[str, int, int]:
        """(phase, cycle, ticks into the phase) at ``t`` ticks after start."""
        c = self.config
        n = c.cycle_ticks()
        cycle, r = divmod(t, n)
        if c.cycles and cycle >= c.cycles:
            return "done", cycle, 0
        for name, length in (("fill", c.fill_ticks), ("churn", c.churn_ticks),
                             ("free", c.free_ticks)):
            if r < length:
                return name, cycle, r
            r -= length
        return "idle", cycle, r

    def step(self, tick: int) -> None:
        p = self.proc
        if not p.runnable(tick):
            return
        if self.t0 is None:
            self.t0 = tick
        c = self.config
        e = self.engine
        e.tick = tick
        self.phase, self.cycle, r = self._phase(tick - self.t0)
        b = Budget(c.tables_per_tick, c.calls_per_tick)
        if self.phase == "fill":
            target = self.heap_pages * (r + 1) // c.fill_ticks
            if target > e.live:
                e.alloc(target - e.live, b)
        elif self.phase == "churn":
            n = int(self.rng.poisson(c.churn_fraction * e.live))
            e.free_some(n, b)
            if self.heap_pages > e.live:
                e.alloc(self.heap_pages - e.live, b)
        elif self.phase == "free" and self.flushed < self.cycle:
            e.flush(c.keep_fraction)
            self.flushed = self.cycle
        e.housekeep(b)


__all__ = ["PHASES", "Allocator", "AllocatorConfig", "Budget"]
