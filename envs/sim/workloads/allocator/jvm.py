"""The HotSpot G1 engine (see the package docstring)."""

from __future__ import annotations

import math

import numpy as np

from ...pagetable import PAGE, PTE_SHIFT, PTE_SPAN
from ...units import MiB
from ..base import BASE, pick
from .engine import Budget, _Engine, _Host, _runs


class _Jvm(_Engine):
    """HotSpot G1: regions committed with MAP_FIXED rw, uncommitted from the
    top with MAP_FIXED PROT_NONE (or DONTNEED + mprotect)."""

    def __init__(self, w: _Host) -> None:
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
        for r in pick(self.rng, self.used, k).tolist():
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
