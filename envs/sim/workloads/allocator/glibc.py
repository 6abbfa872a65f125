"""The glibc malloc engine (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...pagetable import ENTRIES, PAGE, PTE_SHIFT, PTE_SPAN, VM_READ, VM_WRITE
from ...units import MiB
from ..base import BASE
from .engine import Budget, _Host, _SlotEngine

_RW = VM_READ | VM_WRITE
#: glibc: M_TRIM_THRESHOLD and M_TOP_PAD defaults (128 KiB each), in pages.
_TRIM_PAGES = 32
_PAD_PAGES = 32
#: glibc thread heap: HEAP_MAX_SIZE = 2 * DEFAULT_MMAP_THRESHOLD_MAX = 64 MiB = 32 slots.
_HEAP_SLOTS = 32


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

    def __init__(self, w: _Host) -> None:
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
                self.w.reclaim_pgtables(self.mm, self.addr(s) + first * PAGE,
                                        (end - first) * PAGE)
                b.calls -= 1
                self.trim_calls += 1
                res[s] = min(int(res[s]), first)
                res[s + 1:t] = 0
            self.trim_cursor.pop(0)
        self.trim_cursor = None
