"""What every allocator engine shares: the per-tick budget, the engine interface and
the slot-based heap of the jemalloc and glibc engines (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ...pagetable import ENTRIES, PAGE, PTE_SHIFT
from ..base import BASE, pick
from .config import AllocatorConfig

if TYPE_CHECKING:
    from ...pagetable import AddressSpace
    from ...process import Process


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


class _Host(Protocol):
    """What an engine uses of its workload, :class:`Allocator` (the package imports
    the engines, so the class is described here, not imported)."""

    config: AllocatorConfig
    rng: np.random.Generator
    proc: Process

    def reclaim_pgtables(self, mm: AddressSpace, start: int, length: int) -> None: ...


class _Engine:
    """One allocator's mechanics; the workload decides how much to allocate
    and free each tick (in pages), the engine how."""

    def __init__(self, w: _Host) -> None:
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
    [0, res) of each slot (see the package docstring)."""

    def __init__(self, w: _Host, nslots: int) -> None:
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
        slots = pick(self.rng, live[lo:hi] > 0, m).tolist()
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
