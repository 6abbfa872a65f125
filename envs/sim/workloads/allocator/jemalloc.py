"""The jemalloc 5 engine (see the package docstring)."""

from __future__ import annotations

from collections import deque

import numpy as np

from ...pagetable import ENTRIES, PAGE, PTE_SPAN
from ...units import MiB
from ..base import BASE
from .engine import Budget, _Host, _SlotEngine


class _Jemalloc(_SlotEngine):
    """jemalloc 5: one dense arena, lowest-address reuse, decay-driven purges."""

    def __init__(self, w: _Host) -> None:
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
