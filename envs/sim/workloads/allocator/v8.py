"""The V8 engine (see the package docstring)."""

from __future__ import annotations

from ...pagetable import PAGE
from ...units import GiB, KiB
from ..base import BASE
from .engine import Budget, _Engine, _Host, _sample


class _V8(_Engine):
    """V8: one mapping per heap page at a random address; freed pages unmapped."""

    def __init__(self, w: _Host) -> None:
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
