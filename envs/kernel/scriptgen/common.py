"""Budgets, limits and the small seeded draws of the op-script generator.

Every draw is a method of :class:`Draws`, the script's generator, and reads nothing
else, so a script stays a pure function of its generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ptreclaim.envs.sim.opscript import PAGE, GiB, KiB, MiB

#: Upper bound on touched pages per script (touch accesses + populate-like ops).
TOUCH_BUDGET = 20_000
#: Highest script ID the generator uses (IDs 0..15, each with its own 512 GiB slot).
MAX_IDENT = 15
#: Default number of op lines per script.
DEFAULT_N_OPS = 64
#: Estimated kernel time per script, in rough microseconds (see ``_Builder``): touches
#: and populates are shortened and forks skipped once it is used up.
WORK_BUDGET = 150_000
#: ext4 page cache a script may fill.  A fault on a ``file`` mapping reads around
#: itself (``read_ahead_kb`` of the oracle machine's disk: 8 MiB), so sparse touches
#: of files are charged by the page cache they fill, not by the pages they touch.
PAGE_CACHE_BUDGET = 256 * MiB
READAHEAD = 8 * MiB
#: Of that, what may be dirtied through shared file mappings (writeback is what makes
#: replay times vary).
DIRTY_CACHE_BUDGET = 64 * MiB
#: Accountable (private writable or shared anon, not ``norsv``) mappings larger than
#: this may be refused by overcommit accounting, so such ops get ``mayfail``.
ACCOUNT_LIMIT = 8 * GiB

TWO_M = 2 * MiB

#: Advices that change VMA flags and therefore may split VMAs.
_FLAG_ADVICES = frozenset({
    "DONTFORK", "DOFORK", "WIPEONFORK", "KEEPONFORK", "HUGEPAGE", "NOHUGEPAGE",
    "RANDOM", "SEQUENTIAL", "NORMAL",
})
#: Advices that fault pages in (counted against the touch budget).
_POPULATING_ADVICES = frozenset({
    "POPULATE_READ", "POPULATE_WRITE", "GUARD_INSTALL", "WILLNEED", "COLLAPSE",
})
#: Advices refused on VM_LOCKED VMAs.
_LOCK_REFUSED = frozenset({"DONTNEED", "FREE", "PAGEOUT", "COLD", "REMOVE", "GUARD_INSTALL"})


# ---------------------------------------------------------------------------------------
# small helpers


def _round_up(x: int, to: int = PAGE) -> int:
    return -(-x // to) * to


def _round_down(x: int, to: int = PAGE) -> int:
    return x // to * to


def _compound(n: int) -> str:
    """``n`` as a sum of G/M/K terms (``1G+2M+8K``), plain bytes for a remainder."""
    if n == 0:
        return "0"
    parts = []
    for unit, suffix in ((GiB, "G"), (MiB, "M"), (KiB, "K")):
        q, n = divmod(n, unit)
        if q:
            parts.append(f"{q}{suffix}")
    if n:
        parts.append(str(n))
    return "+".join(parts)


def _fmt(n: int) -> str:
    """A readable op-script number: ``2M``, ``1G+4K`` or ``2M-8K`` (parser arithmetic)."""
    best = _compound(n)
    for unit in (GiB, MiB):
        up = _round_up(n, unit)
        d = up - n
        if 0 < d <= unit // 8 and n > 0:  # only just below a boundary: 2M-4K, 1G-2M
            tail = _compound(d)
            if "+" not in tail:
                alt = f"{_compound(up)}-{tail}"
                if len(alt) <= len(best):
                    best = alt
    return best


class Draws(np.random.Generator):
    """The script's generator with the generator's own draws as methods.

    It shares the bit generator of the ``numpy.random.Generator`` it wraps (:meth:`of`),
    so a script stays a pure function of the generator it is given."""

    @classmethod
    def of(cls, rng: np.random.Generator) -> Draws:
        """``rng`` itself if it is a :class:`Draws`, else one drawing from its bit
        generator (the same stream)."""
        return rng if isinstance(rng, Draws) else cls(rng.bit_generator)

    def p(self, prob: float) -> bool:
        """True with probability ``prob``."""
        return bool(self.random() < prob)

    def pick_int(self, seq: Sequence[int]) -> int:
        """One element of ``seq``, uniformly."""
        return int(seq[int(self.integers(len(seq)))])

    def pick_str(self, seq: Sequence[str]) -> str:
        """One element of ``seq``, uniformly."""
        return str(seq[int(self.integers(len(seq)))])

    def weighted(self, table: Sequence[tuple[str, float]]) -> str:
        """The name of one ``(name, weight)`` row, drawn by weight."""
        total = sum(w for _, w in table)
        x = self.random() * total
        for name, w in table:
            x -= w
            if x < 0:
                return name
        return table[-1][0]

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive; hi < lo gives lo)."""
        if hi <= lo:
            return lo
        return int(self.integers(lo, hi + 1))

    def pow2(self, lo: int, hi: int) -> int:
        """A power of two between lo and hi (both powers of two), uniform in the exponent."""
        a, b = lo.bit_length() - 1, hi.bit_length() - 1
        return 1 << self.randint(a, b)

    def lognormal_pages(self, median: int, sigma: float, lo: int = 1,
                        hi: int = 1 << 30) -> int:
        """A page count from a log-normal distribution with the given median (bytes)."""
        val = median * math.exp(sigma * float(self.standard_normal()))
        return max(lo, min(hi, round(val / PAGE)))

    def jitter(self, prob: float = 0.15, pages: int = 8) -> int:
        """Mostly 0; sometimes a few pages either way (boundaries are what the rules test)."""
        if not self.p(prob):
            return 0
        k = self.randint(1, pages)
        return k * PAGE if self.p(0.5) else -k * PAGE

    def point(self, lo: int, hi: int) -> int:
        """A page-aligned point in [lo, hi]: often 2 MiB aligned, sometimes a few pages off."""
        lo, hi = _round_up(lo), _round_down(hi)
        if hi <= lo:
            return lo
        style = self.random()
        if style < 0.1:  # a PMD-table boundary
            a, b = _round_up(lo, GiB), _round_down(hi, GiB)
            if a <= b:
                return a + GiB * self.randint(0, (b - a) // GiB)
        if style < 0.85:
            a, b = _round_up(lo, TWO_M), _round_down(hi, TWO_M)
            if a <= b:
                x = a + TWO_M * self.randint(0, (b - a) // TWO_M)
                if style >= 0.65:  # near a PTE-table boundary, a few pages off
                    x += self.jitter(1.0, 8)
                return min(max(x, lo), hi)
        return lo + PAGE * self.randint(0, (hi - lo) // PAGE)

    def sub_range(self, lo: int, hi: int, max_len: int | None = None) -> tuple[int, int]:
        """A page-aligned sub-range (off, len) of [lo, hi), len >= 1 page."""
        lo, hi = _round_up(lo), _round_down(hi)
        if hi - lo <= PAGE:
            return lo, PAGE
        a = self.point(lo, hi - PAGE)
        top = hi if max_len is None else min(hi, a + max(PAGE, max_len))
        b = self.point(a + PAGE, top)
        if b <= a:
            b = a + PAGE
        return a, b - a
