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
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from ..config import ConfigError, check_range
from ..pagetable import ENTRIES, PAGE, PTE_SHIFT, PTE_SPAN, TASK_SIZE, VM_READ, VM_WRITE
from .base import BASE, Workload

if TYPE_CHECKING:
    from ..pagetable import AddressSpace

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
_RW = VM_READ | VM_WRITE
#: glibc: M_TRIM_THRESHOLD and M_TOP_PAD defaults (128 KiB each), in pages.
_TRIM_PAGES = 32
_PAD_PAGES = 32
#: glibc thread heap: HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 64 MiB = 32 slots.
_HEAP_SLOTS = 32

AllocVariant = Literal["jemalloc", "glibc", "v8", "jvm"]
_VARIANTS = ("jemalloc", "glibc", "v8", "jvm")
PHASES = ("fill", "churn", "free", "idle", "done")


@dataclass(frozen=True)
class AllocatorConfig:
    """Parameters of one allocator-driven process."""

    #: ``jemalloc``, ``glibc``, ``v8`` or ``jvm`` (see the module docstring).
    variant: AllocVariant = "jemalloc"
    #: Live heap at the end of ``fill`` (1 GiB: about the measured redis, 621
    #: tables; ~2 tables per 256 KiB page for ``v8``: ~8k tables).
    heap_mib: int = 1024
    #: Phase lengths in ticks (100 ms each).
    fill_ticks: int = 100
    churn_ticks: int = 300
    free_ticks: int = 100
    idle_ticks: int = 100
    #: Cycles to run (0: forever); after the last one the process idles.
    cycles: int = 0
    #: Share of the live heap freed and allocated again per ``churn`` tick.
    churn_fraction: float = 0.01
    #: Share of the live heap that survives ``free`` (redis flush: RSS -98 %).
    keep_fraction: float = 0.02
    #: Unit of frees: with 96 KiB and 2 % kept, 65 % of full slots keep no
    #: unit, as 405 of 621 tables were empty in the measurement.
    extent_kib: int = 96
    #: Most new PTE tables the process makes per tick (64 = 128 MiB of dense heap).
    tables_per_tick: int = 64
    #: Most mmap/munmap/mprotect/madvise/touch calls per tick.
    calls_per_tick: int = 32
    #: Threads: a TLB flush of its mm sends IPIs to the other CPUs.
    threads: int = 4
    #: jemalloc: ticks a freed page stays dirty before it is purged (dirty_decay_ms 10 s).
    decay_ticks: int = 100
    #: glibc: arenas (the main brk arena plus thread arenas).
    arenas: int = 4
    #: glibc: ticks between malloc_trim(0) calls (0: never; only tops are trimmed).
    trim_every: int = 50
    #: v8: heap page size (V8's regular pages are 256 KiB).
    page_kib: int = 256
    #: v8: range of the random mmap hints (64 TiB = 46 bits; 4 = a 4 GiB cage).
    spread_gib: int = 65536
    #: jvm: how free regions are uncommitted.
    uncommit: Literal["remap", "dontneed"] = "remap"
    #: jvm: InitialHeapSize, the committed floor (RAM/64 on the 4 GiB machine;
    #: at most the heap).
    initial_mib: int = 64
    #: jvm: MaxHeapFreeRatio; the heap shrinks until at most this share is free.
    max_free_ratio: float = 0.7

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ConfigError(f"allocator.variant: {self.variant!r} is not one of "
                              + ", ".join(map(repr, _VARIANTS)))
        check_range("allocator.heap_mib", self.heap_mib, 8, 1 << 20)
        check_range("allocator.fill_ticks", self.fill_ticks, 1, 10**7)
        check_range("allocator.churn_ticks", self.churn_ticks, 0, 10**7)
        check_range("allocator.free_ticks", self.free_ticks, 1, 10**7)
        check_range("allocator.idle_ticks", self.idle_ticks, 0, 10**7)
        check_range("allocator.cycles", self.cycles, 0, 10**6)
        check_range("allocator.churn_fraction", self.churn_fraction, 0.0, 0.5)
        check_range("allocator.keep_fraction", self.keep_fraction, 0.0, 1.0)
        check_range("allocator.extent_kib", self.extent_kib, 4, 2048)
        if self.extent_kib % 4:
            raise ConfigError(f"allocator.extent_kib: {self.extent_kib} is not a whole "
                              "number of 4 KiB pages")
        check_range("allocator.tables_per_tick", self.tables_per_tick, 4, 65536)
        check_range("allocator.calls_per_tick", self.calls_per_tick, 4, 65536)
        check_range("allocator.threads", self.threads, 1, 4096)
        check_range("allocator.decay_ticks", self.decay_ticks, 0, 10**6)
        check_range("allocator.arenas", self.arenas, 1, 1024)
        check_range("allocator.trim_every", self.trim_every, 0, 10**7)
        check_range("allocator.page_kib", self.page_kib, 4, 2048)
        if self.page_kib & (self.page_kib - 1):
            raise ConfigError(f"allocator.page_kib: {self.page_kib} is not a power of two "
                              "(4 to 2048)")
        check_range("allocator.spread_gib", self.spread_gib, 1, (TASK_SIZE - BASE) // GiB)
        if self.spread_gib * GiB < 2 * self.heap_mib * MiB:
            raise ConfigError(f"allocator.spread_gib: {self.spread_gib} GiB is too small "
                              f"for a {self.heap_mib} MiB heap (needs twice the heap)")
        if self.uncommit not in ("remap", "dontneed"):
            raise ConfigError(f"allocator.uncommit: {self.uncommit!r} is not one of "
                              "'remap', 'dontneed'")
        check_range("allocator.initial_mib", self.initial_mib, 0, 1 << 20)
        check_range("allocator.max_free_ratio", self.max_free_ratio, 0.0, 0.95)
        # A slot-heap must fit in the address space above BASE with room to spare.
        if 8 * self.heap_mib * MiB > TASK_SIZE - BASE:
            raise ConfigError(f"allocator.heap_mib: {self.heap_mib} does not fit the "
                              "address space")

    def cycle_ticks(self) -> int:
        """Length of one fill/churn/free/idle cycle."""
        return self.fill_ticks + self.churn_ticks + self.free_ticks + self.idle_ticks


@dataclass
class Budget:
    """What is left of this tick's new tables and system calls."""

    tables: int
    calls: int


def _runs(idx: list[int]) -> list[tuple[int, int]]:
    """Runs ``[first, last + 1)`` of consecutive values of a sorted list."""
    out: list[tuple[int, int]] = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _sample(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """``k`` distinct random integers in [0, n) (all of them when k >= n)."""
    if k <= 0 or n <= 0:
        return []
    if k >= n:
        return list(range(n))
    if 4 * k < n:
        draws = rng.integers(0, n, size=2 * k + 8)
        _, first = np.unique(draws, return_index=True)
        picked = draws[np.sort(first)][:k]
        if len(picked) == k:
            return [int(i) for i in picked]
    return [int(i) for i in rng.permutation(n)[:k]]


def _pick(rng: np.random.Generator, ok: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` distinct random indices where ``ok`` is true (rejection
    sampling first, a full scan only when candidates are rare)."""
    n = len(ok)
    if k <= 0 or n == 0:
        return []
    draws = rng.integers(0, n, size=4 * k + 8)
    hits = draws[ok[draws]]
    _, first = np.unique(hits, return_index=True)
    chosen = hits[np.sort(first)][:k]
    if len(chosen) < k:
        cand = np.flatnonzero(ok)
        if len(cand) == 0:
            return []
        chosen = rng.choice(cand, size=min(k, len(cand)), replace=False)
    return sorted(int(i) for i in chosen)


class _Engine:
    """One allocator's mechanics; the workload decides how much to allocate
    and free each tick (in pages), the engine how."""

    def __init__(self, w: Allocator) -> None:
        self.w = w
        self.c = w.config
        self.rng = w.rng
        self.mm: AddressSpace = w.proc.mm
        self.tick = 0
        self.ext = self.c.extent_kib // 4  # pages per unit of frees

    @property
    def live(self) -> int:
        """Live heap pages (what the application holds)."""
        raise NotImplementedError

    def start(self) -> None:
        """Initial mappings."""

    def alloc(self, pages: int, b: Budget) -> None:
        """Allocate (and write) about ``pages`` pages."""
        raise NotImplementedError

    def free_some(self, pages: int, b: Budget) -> None:
        """Free about ``pages`` scattered live pages (churn)."""
        raise NotImplementedError

    def flush(self, keep: float) -> None:
        """Free all but a ``keep`` share of the live heap at once."""
        raise NotImplementedError

    def housekeep(self, b: Budget) -> None:
        """Give memory back to the kernel the allocator's way."""


class _SlotEngine(_Engine):
    """Heaps as arrays of 2 MiB slots: live pages [0, live) and resident pages
    [0, res) of each slot (see the module docstring)."""

    def __init__(self, w: Allocator, nslots: int) -> None:
        super().__init__(w)
        self.live_a = np.zeros(nslots, dtype=np.int32)
        self.res_a = np.zeros(nslots, dtype=np.int32)
        self.total_live = 0

    @property
    def live(self) -> int:
        return self.total_live

    def addr(self, slot: int) -> int:
        return BASE + (slot << PTE_SHIFT)

    def write(self, s: int, lo: int, hi: int, b: Budget) -> bool:
        """Write pages [lo, hi) of slot ``s`` (one call); False when out of budget."""
        if b.calls <= 0:
            return False
        new = ((BASE >> PTE_SHIFT) + s) not in self.mm.pte
        if new and b.tables <= 0:
            return False
        self.mm.touch(self.addr(s) + lo * PAGE, (hi - lo) * PAGE, True)
        b.calls -= 1
        b.tables -= int(new)
        return True

    def fill_holes(self, lo: int, hi: int, pages: int, b: Budget,
                   last_cap: int = ENTRIES) -> int:
        """Allocate into slots [lo, hi) with free room, lowest first (the last
        slot holds at most ``last_cap`` pages); returns the pages placed."""
        if pages <= 0 or hi <= lo:
            return 0
        live, res = self.live_a, self.res_a
        placed = 0
        cand = np.flatnonzero(live[lo:hi] < ENTRIES)
        for s in (cand[: 4 * self.c.calls_per_tick] + lo).tolist():
            cap = last_cap if s == hi - 1 else ENTRIES
            k = min(cap - int(live[s]), pages - placed)
            if k <= 0:
                continue
            new_live = int(live[s]) + k
            if new_live > res[s]:  # beyond the dirty pages: fault them in
                if not self.write(s, int(res[s]), new_live, b):
                    break
                res[s] = new_live
            live[s] = new_live
            placed += k
            if placed >= pages:
                break
        self.total_live += placed
        return placed

    def extend(self, first: int, limit: int, pages: int, b: Budget) -> int:
        """Allocate fresh slots from ``first`` (all empty) up to ``limit`` with
        one touch call; returns the pages placed."""
        n = min(-(-pages // ENTRIES), b.tables, limit - first)
        if n <= 0 or b.calls <= 0:
            return 0
        placed = min(pages, n * ENTRIES)
        self.mm.touch(self.addr(first), placed * PAGE, True)
        b.calls -= 1
        b.tables -= n
        full, rest = divmod(placed, ENTRIES)
        self.live_a[first:first + full] = ENTRIES
        self.res_a[first:first + full] = ENTRIES
        if rest:
            self.live_a[first + full] = rest
            self.res_a[first + full] = rest
        self.total_live += placed
        return placed

    def free_scattered(self, lo: int, hi: int, pages: int, b: Budget) -> list[int]:
        """Free about ``pages`` pages in a few random live slots of [lo, hi);
        returns the slots that lost pages."""
        live = self.live_a
        m = max(1, b.calls // 4)
        slots = _pick(self.rng, live[lo:hi] > 0, m)
        if not slots:
            return []
        per = -(-pages // len(slots))
        per = -(-per // self.ext) * self.ext
        hit = []
        for s in slots:
            s += lo
            k = min(int(live[s]), per, pages)
            if k <= 0:
                break
            live[s] -= k
            pages -= k
            self.total_live -= k
            hit.append(s)
        return hit

    def flush_range(self, lo: int, hi: int, keep: float) -> np.ndarray:
        """Each unit of live memory in [lo, hi) survives with probability
        ``keep``; returns the slots that lost pages."""
        live = self.live_a[lo:hi]
        units = -(-live // self.ext)
        kept = self.rng.binomial(units, keep)
        new = np.minimum(live, kept * self.ext).astype(np.int32)
        lost = np.flatnonzero(new < live) + lo
        self.total_live -= int(live.sum() - new.sum())
        self.live_a[lo:hi] = new
        return lost


class _Jemalloc(_SlotEngine):
    """jemalloc 5: one dense arena, lowest-address reuse, decay-driven purges."""

    def __init__(self, w: Allocator) -> None:
        heap_slots = -(-w.config.heap_mib * MiB // PTE_SPAN)
        self.nslots = 2 * heap_slots + 32
        super().__init__(w, self.nslots)
        self.frontier = 0  # slots ever handed out
        self.queue: deque[tuple[int, int]] = deque()  # (slot, tick it became dirty)
        self.queued = np.zeros(self.nslots, dtype=bool)
        self.purge_calls = 0

    def start(self) -> None:
        # opt.retain: jemalloc maps address space ahead and never unmaps it.
        self.mm.mmap(BASE, self.nslots * PTE_SPAN)

    def alloc(self, pages: int, b: Budget) -> None:
        placed = self.fill_holes(0, self.frontier, pages, b)
        placed2 = self.extend(self.frontier, self.nslots, pages - placed, b)
        self.frontier += -(-placed2 // ENTRIES)

    def _dirty(self, slots: list[int] | np.ndarray) -> None:
        for s in slots:
            s = int(s)
            if not self.queued[s] and self.res_a[s] > self.live_a[s]:
                self.queued[s] = True
                self.queue.append((s, self.tick))

    def free_some(self, pages: int, b: Budget) -> None:
        self._dirty(self.free_scattered(0, self.frontier, pages, b))

    def flush(self, keep: float) -> None:
        self._dirty(self.flush_range(0, self.frontier, keep))

    def housekeep(self, b: Budget) -> None:
        """Purge slots whose dirty pages have decayed, oldest first."""
        q = self.queue
        live, res = self.live_a, self.res_a
        while q and b.calls > 0 and self.tick - q[0][1] >= self.c.decay_ticks:
            s, _ = q.popleft()
            self.queued[s] = False
            lo, hi = int(live[s]), int(res[s])
            if hi <= lo:
                continue
            a = self.addr(s)
            if lo == 0 and hi == ENTRIES:
                # A whole free slot is still many extents: no call covers it.
                half = ENTRIES // 2
                self.mm.madvise(a, half * PAGE, "DONTNEED")
                self.mm.madvise(a + half * PAGE, half * PAGE, "DONTNEED")
                b.calls -= 2
                self.purge_calls += 2
            else:
                self.mm.madvise(a + lo * PAGE, (hi - lo) * PAGE, "DONTNEED")
                b.calls -= 1
                self.purge_calls += 1
            self.w.reclaim_pgtables(self.mm, a + lo * PAGE, (hi - lo) * PAGE)
            res[s] = lo


@dataclass
class _GHeap:
    """A glibc heap: the main arena's brk heap or a 64 MiB thread heap (pages
    counted from its start)."""

    idx: int
    arena: int
    lo: int  # first slot index
    max_slots: int
    brk: bool
    top: int = 0  # end of the chunks in use: the top chunk starts here
    size: int = 0  # end of the top chunk (brk end, or heap->size)
    rw: int = 0  # thread heap: pages made read-write (mprotect_size)
    alive: bool = True


class _Glibc(_SlotEngine):
    """glibc malloc: a brk main arena plus thread arenas of 64 MiB heaps."""

    def __init__(self, w: Allocator) -> None:
        c = w.config
        heap_slots = -(-c.heap_mib * MiB // PTE_SPAN)
        self.main_slots = -(-2 * heap_slots // _HEAP_SLOTS) * _HEAP_SLOTS + _HEAP_SLOTS
        self.max_heaps = 2 * (heap_slots // _HEAP_SLOTS + 1) + 2 * c.arenas
        super().__init__(w, self.main_slots + self.max_heaps * _HEAP_SLOTS)
        self.heaps: list[_GHeap] = []
        self.arena_heaps: list[list[int]] = [[] for _ in range(c.arenas)]
        self.free_places = list(range(self.max_heaps))  # thread-heap places
        self.next_arena = 0
        self.trim_cursor: list[int] | None = None  # heaps malloc_trim still has to visit
        self.trims = 0
        self.trim_calls = 0
        self.at_place: dict[int, int] = {}  # thread-heap place -> heap index
        self.dirty: set[int] = set()  # heaps with frees since their top was last checked

    def start(self) -> None:
        self.heaps.append(_GHeap(0, 0, 0, self.main_slots, brk=True))
        self.arena_heaps[0].append(0)
        for a in range(1, self.c.arenas):
            self._new_heap(a)

    def _new_heap(self, arena: int) -> _GHeap | None:
        """new_heap(): a 64 MiB-aligned 64 MiB reservation, PROT_NONE."""
        if not self.free_places:
            return None
        k = self.free_places.pop(0)
        h = _GHeap(len(self.heaps), arena, self.main_slots + k * _HEAP_SLOTS, _HEAP_SLOTS,
                   brk=False)
        self.mm.mmap(self.addr(h.lo), _HEAP_SLOTS * PTE_SPAN, prot=0, noreserve=True)
        self.at_place[k] = h.idx
        self.heaps.append(h)
        self.arena_heaps[arena].append(h.idx)
        return h

    def alloc(self, pages: int, b: Budget) -> None:
        """Spread the allocation over the arenas (threads use their own)."""
        arenas = self.c.arenas
        share = -(-pages // arenas)
        for _ in range(arenas):
            a = self.next_arena
            self.next_arena = (a + 1) % arenas
            self._alloc_arena(a, min(share, pages), b)
            pages -= share
            if pages <= 0 or b.calls <= 0:
                break

    def _alloc_arena(self, arena: int, pages: int, b: Budget) -> None:
        """Free chunks below the tops first (bins), then the top chunk."""
        for i in self.arena_heaps[arena]:
            h = self.heaps[i]
            pages -= self.fill_holes(h.lo, h.lo + -(-h.top // ENTRIES), pages, b,
                                     last_cap=h.top % ENTRIES or ENTRIES)
            if pages <= 0:
                return
        while pages > 0 and b.calls > 1:
            h = self.heaps[self.arena_heaps[arena][-1]]
            if h.top >= h.max_slots * ENTRIES:
                if self._new_heap(arena) is None:
                    return
                b.calls -= 1
                continue
            placed = self._grow_top(h, pages, b)
            if placed == 0:
                return
            pages -= placed

    def _grow_top(self, h: _GHeap, pages: int, b: Budget) -> int:
        """Carve from the top chunk, extending the heap (sbrk, or grow_heap's
        mprotect) by the request plus M_TOP_PAD when it is too small; write it."""
        first_new = -(-h.top // ENTRIES)  # first slot this top has not reached
        limit = min((first_new + max(b.tables, 0)) * ENTRIES, h.max_slots * ENTRIES)
        new_top = min(h.top + pages, limit)
        if new_top <= h.top:
            return 0
        a = self.addr(h.lo)
        if new_top > h.size:
            size = min(new_top + _PAD_PAGES, h.max_slots * ENTRIES)
            if h.brk:
                self.mm.mmap(a + h.size * PAGE, (size - h.size) * PAGE)  # brk grows
                b.calls -= 1
            elif size > h.rw:
                self.mm.mprotect(a + h.rw * PAGE, (size - h.rw) * PAGE, _RW)
                h.rw = size
                b.calls -= 1
            h.size = size
        s0, s1 = h.top // ENTRIES, -(-new_top // ENTRIES)
        pte = self.mm.pte
        first = (BASE >> PTE_SHIFT) + h.lo
        b.tables -= sum(1 for s in range(s0, s1) if first + s not in pte)
        self.mm.touch(a + h.top * PAGE, (new_top - h.top) * PAGE, True)
        b.calls -= 1
        for s in range(s0, s1):
            lo = max(h.top, s * ENTRIES) - s * ENTRIES
            hi = min(new_top, (s + 1) * ENTRIES) - s * ENTRIES
            g = h.lo + s
            self.live_a[g] += hi - lo
            self.res_a[g] = max(int(self.res_a[g]), hi)
        placed = new_top - h.top
        self.total_live += placed
        h.top = new_top
        return placed

    def _heap_of(self, slot: int) -> int:
        if slot < self.main_slots:
            return 0
        return self.at_place[(slot - self.main_slots) // _HEAP_SLOTS]

    def free_some(self, pages: int, b: Budget) -> None:
        for s in self.free_scattered(0, len(self.live_a), pages, b):
            self.dirty.add(self._heap_of(s))

    def flush(self, keep: float) -> None:
        self.flush_range(0, len(self.live_a), keep)
        self.dirty.update(h.idx for h in self.heaps if h.alive)

    def housekeep(self, b: Budget) -> None:
        for i in sorted(self.dirty):
            if b.calls <= 0:
                break
            self.dirty.discard(i)
            if self.heaps[i].alive:
                self._trim_top(self.heaps[i], b)
        every = self.c.trim_every
        if every and self.tick % every == every - 1 and self.trim_cursor is None:
            self.trim_cursor = [h.idx for h in self.heaps if h.alive]
            self.trims += 1
        if self.trim_cursor is not None:
            self._malloc_trim(b)

    def _trim_top(self, h: _GHeap, b: Budget) -> None:
        """What free() does at the top: freed chunks merge into the top chunk;
        past M_TRIM_THRESHOLD (+ pad) systrim (brk) or heap_trim (thread heap)
        gives the excess back; an all-free last heap of an arena is deleted."""
        top_slots = -(-h.top // ENTRIES)
        used = np.flatnonzero(self.live_a[h.lo:h.lo + top_slots])
        if len(used):
            s = int(used[-1])
            h.top = s * ENTRIES + int(self.live_a[h.lo + s])
        else:
            h.top = 0
        chain = self.arena_heaps[h.arena]
        a = self.addr(h.lo)
        if h.top == 0 and not h.brk and len(chain) > 1 and chain[-1] == h.idx:
            self.mm.munmap(a, h.max_slots * PTE_SPAN)  # heap_trim: delete_heap
            b.calls -= 1
            self.total_live -= int(self.live_a[h.lo:h.lo + h.max_slots].sum())
            self.live_a[h.lo:h.lo + h.max_slots] = 0
            self.res_a[h.lo:h.lo + h.max_slots] = 0
            h.alive = False
            chain.pop()
            place = (h.lo - self.main_slots) // _HEAP_SLOTS
            del self.at_place[place]
            self.free_places.append(place)
            return
        if h.size - h.top < _TRIM_PAGES + _PAD_PAGES:
            return
        keep = h.top + _PAD_PAGES
        if h.brk:
            self.mm.munmap(a + keep * PAGE, (h.size - keep) * PAGE)  # sbrk(-n)
        else:
            self.mm.madvise(a + keep * PAGE, (h.size - keep) * PAGE, "DONTNEED")
            self.w.reclaim_pgtables(self.mm, a + keep * PAGE, (h.size - keep) * PAGE)
        b.calls -= 1
        self._clip(h, keep)
        h.size = keep

    def _clip(self, h: _GHeap, keep: int) -> None:
        """Resident pages of ``h`` at or above page ``keep`` are gone."""
        g = h.lo + keep // ENTRIES
        if keep % ENTRIES:
            self.res_a[g] = min(int(self.res_a[g]), keep % ENTRIES)
            g += 1
        self.res_a[g:h.lo + h.max_slots] = 0

    def _malloc_trim(self, b: Budget) -> None:
        """mtrim(): one MADV_DONTNEED per free chunk, over its whole pages after
        the chunk header's page, heap by heap (resumed next tick when the
        call budget runs out)."""
        assert self.trim_cursor is not None
        live, res = self.live_a, self.res_a
        while self.trim_cursor:
            h = self.heaps[self.trim_cursor[0]]
            if not h.alive:
                self.trim_cursor.pop(0)
                continue
            lo, hi = h.lo, h.lo + -(-h.top // ENTRIES)
            # A free chunk runs from a slot's live end over the following
            # slots that hold nothing live, up to the next live page (or top).
            starts = [lo, *(np.flatnonzero(live[lo + 1:hi] > 0) + lo + 1).tolist()]
            for i, s in enumerate(starts):
                t = starts[i + 1] if i + 1 < len(starts) else hi
                first = int(live[s]) + 1  # the chunk header's page stays
                end = (t - s) * ENTRIES if t < hi else h.top - (s - lo) * ENTRIES
                if first >= end or (res[s] <= first and not res[s + 1:t].any()):
                    continue  # nothing resident to give back
                if b.calls <= 0:
                    return
                self.mm.madvise(self.addr(s) + first * PAGE, (end - first) * PAGE, "DONTNEED")
                self.w.reclaim_pgtables(self.mm, self.addr(s) + first * PAGE, (end - first) * PAGE)
                b.calls -= 1
                self.trim_calls += 1
                res[s] = min(int(res[s]), first)
                res[s + 1:t] = 0
            self.trim_cursor.pop(0)
        self.trim_cursor = None


class _V8(_Engine):
    """V8: one mapping per heap page at a random address; freed pages unmapped."""

    def __init__(self, w: Allocator) -> None:
        super().__init__(w)
        self.page = self.c.page_kib * KiB
        self.pp = self.page // PAGE  # 4 KiB pages per heap page
        self.n_places = self.c.spread_gib * GiB // self.page
        self.pages: list[int] = []  # addresses of mapped heap pages
        self.dead: list[int] = []  # freed by the GC, not yet unmapped
        self.n_live = 0

    @property
    def live(self) -> int:
        return self.n_live * self.pp

    def alloc(self, pages: int, b: Budget) -> None:
        """New heap pages: freed pages the unmapper has not released yet are
        taken back first (V8's page pool: no system call, no new table), then
        fresh mappings at random hints."""
        n = -(-pages // self.pp)
        reuse = min(n, len(self.dead))
        for _ in range(reuse):
            self.pages.append(self.dead.pop())
        self.n_live += reuse
        n -= reuse
        mm = self.mm
        while n > 0 and b.calls >= 2 and b.tables >= 2:
            for _ in range(16):
                a = BASE + int(self.rng.integers(self.n_places)) * self.page
                if not mm.vmas_overlapping(a, a + self.page):
                    break
            else:
                return  # the range is crowded: try again next tick
            before = len(mm.pte) + len(mm.pmd) + len(mm.pud)
            mm.mmap(a, self.page, noreserve=True)
            mm.touch(a, self.page, True)
            b.calls -= 2
            b.tables -= len(mm.pte) + len(mm.pmd) + len(mm.pud) - before
            self.pages.append(a)
            self.n_live += 1
            n -= 1

    def _kill(self, k: int) -> None:
        """The GC frees ``k`` random live pages (unmapped in housekeeping)."""
        pages = self.pages
        for i in sorted(_sample(self.rng, len(pages), k), reverse=True):
            self.dead.append(pages[i])
            pages[i] = pages[-1]
            pages.pop()
            self.n_live -= 1

    def free_some(self, pages: int, b: Budget) -> None:
        self._kill(-(-pages // self.pp))

    def flush(self, keep: float) -> None:
        self._kill(len(self.pages) - int(self.rng.binomial(len(self.pages), keep)))

    def housekeep(self, b: Budget) -> None:
        """The unmapper releases freed pages: one munmap each."""
        while self.dead and b.calls > 0:
            a = self.dead.pop()
            self.mm.munmap(a, self.page)
            b.calls -= 1


class _Jvm(_Engine):
    """HotSpot G1: regions committed with MAP_FIXED rw, uncommitted from the
    top with MAP_FIXED PROT_NONE (or DONTNEED + mprotect)."""

    def __init__(self, w: Allocator) -> None:
        super().__init__(w)
        c = self.c
        heap = c.heap_mib * MiB
        region = 1 << max(20, min(25, (heap // 2048).bit_length() - 1))
        self.region = region
        self.rp = region // PAGE  # pages per region
        self.n = heap // region
        self.committed = np.zeros(self.n, dtype=bool)
        self.used = np.zeros(self.n, dtype=bool)  # regions holding live objects
        self.initial = min(self.n, -(-c.initial_mib * MiB // region))
        self.uncommits = 0

    @property
    def live(self) -> int:
        return int(self.used.sum()) * self.rp

    def addr(self, r: int) -> int:
        return BASE + r * self.region

    def start(self) -> None:
        self.mm.mmap(BASE, self.n * self.region, prot=0, noreserve=True)
        if self.initial:
            self._commit(0, self.initial)

    def _commit(self, r0: int, r1: int) -> None:
        self.mm.mmap(self.addr(r0), (r1 - r0) * self.region, fixed=True)
        self.committed[r0:r1] = True

    def _tables_of(self, r0: int, r1: int) -> int:
        first = (self.addr(r0)) >> PTE_SHIFT
        last = (self.addr(r1) - 1) >> PTE_SHIFT
        return sum(1 for s in range(first, last + 1) if s not in self.mm.pte)

    def alloc(self, pages: int, b: Budget) -> None:
        """New eden regions: free committed ones lowest first, then commit more."""
        k = -(-pages // self.rp)
        free = np.flatnonzero(~self.used)[:k]
        if len(free) == 0:
            return
        for r0, r1 in _runs(free.tolist()):
            if b.calls < 3:
                return
            need = self._tables_of(r0, r1)
            if need > b.tables:
                r1 = r0 + max(0, b.tables * PTE_SPAN // self.region)
                if r1 <= r0:
                    return
                need = self._tables_of(r0, r1)
            unc = np.flatnonzero(~self.committed[r0:r1])
            for u0, u1 in _runs((unc + r0).tolist()):
                self._commit(u0, u1)
                b.calls -= 1
            self.mm.touch(self.addr(r0), (r1 - r0) * self.region, True)
            b.calls -= 1
            b.tables -= need
            self.used[r0:r1] = True

    def free_some(self, pages: int, b: Budget) -> None:
        """A young GC: some regions are evacuated and become free (still resident)."""
        k = -(-pages // self.rp)
        for r in _pick(self.rng, self.used, k):
            self.used[r] = False

    def flush(self, keep: float) -> None:
        """A full GC compacts the survivors into the lowest regions."""
        n_used = int(self.used.sum())
        survivors = -(-int(self.rng.binomial(n_used * self.rp, keep)) // self.rp)
        committed = np.flatnonzero(self.committed)
        self.used[:] = False
        self.used[committed[:survivors]] = True

    def housekeep(self, b: Budget) -> None:
        """Shrink: uncommit free regions from the top while more than
        ``max_free_ratio`` of the committed heap is free."""
        n_committed = int(self.committed.sum())
        n_used = int(self.used.sum())
        target = max(self.initial, math.ceil(n_used / (1.0 - self.c.max_free_ratio)))
        excess = n_committed - target
        if excess <= 0:
            return
        cand = np.flatnonzero(self.committed & ~self.used)[::-1][:excess]
        for r0, r1 in reversed(_runs(sorted(cand.tolist()))):
            cost = 1 if self.c.uncommit == "remap" else 2
            if b.calls < cost:
                return
            a, n = self.addr(r0), (r1 - r0) * self.region
            if self.c.uncommit == "remap":
                self.mm.mmap(a, n, prot=0, noreserve=True, fixed=True)
            else:
                self.mm.madvise(a, n, "DONTNEED")
                self.w.reclaim_pgtables(self.mm, a, n)
                self.mm.mprotect(a, n, 0)
            b.calls -= cost
            self.committed[r0:r1] = False
            self.uncommits += 1


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
