"""Seeded generator of realistic op scripts (format: ``shared/kernel/OPSCRIPT.md``).

The scripts imitate what real programs do to their page tables -- allocators purging
memory, hypervisors ballooning guest RAM, virtio-mem plugging blocks, page-table hogs,
kdump reading a ballooned guest, file/shmem users and VMA-layout churn -- so that the
page-table model can be checked against the live-kernel oracle on many more cases than
the hand-written experiments, and so that workloads can be sampled from the same mix.

Every script is a pure function of the ``numpy.random.Generator`` it is given:
:func:`generate_corpus` gives each script its own child generator (spawned from one
``SeedSequence``), so the same seed yields the same corpus byte for byte.

While generating, a small conservative model of the address space (VMAs as segments,
their protection, locks, guard markers, backing files and their sizes) decides for each
op whether it surely succeeds on the kernel.  Any op it cannot vouch for -- including
the ones made to fail on purpose -- ends with ``mayfail``.  The model never merges
segments and splits them at every op boundary, so its segments are always a refinement
of the kernel's VMAs: "inside one segment" implies "inside one VMA".

Families (:data:`FAMILIES`, one line each from :func:`family_doc`): ``allocator``
(jemalloc, glibc malloc, an mmap/munmap runtime, a JVM heap), ``balloon``,
``virtio_mem``, ``hog``, ``kdump``, ``file``, ``layout`` and ``mixed`` (all of them in one
process plus ops that fail on purpose).  THP scripts (``# ptoracle-opts: -t``) are an
option, off by default.

Cost bound: each script touches at most :data:`TOUCH_BUDGET` pages in total (touch
accesses plus populate-like ops, see :func:`page_cost`), fills at most
:data:`PAGE_CACHE_BUDGET` of ext4 page cache, and stays within an estimated
:data:`WORK_BUDGET` of kernel time, so it replays on the kernel in well under a second
even when it maps hundreds of GiB (``norsv``: untouched memory is free).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ptreclaim.envs.sim.opscript import PAGE, SLOT_SIZE, GiB, KiB, MiB, Script

#: Upper bound on touched pages per script (touch accesses + populate-like ops).
TOUCH_BUDGET = 20_000
#: Highest script ID the generator uses (IDs 0..15, each with its own 512 GiB slot).
MAX_IDENT = 15
#: Default number of op lines per script.
DEFAULT_N_OPS = 64
#: Size of every ``file``/``shmem`` backing object the oracle creates (sparse).
BACKING_SIZE = 64 * GiB
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

_PROTS = {"none": 0, "r": 1, "rw": 3, "rx": 5, "rwx": 7}
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


def _p(rng: np.random.Generator, prob: float) -> bool:
    return bool(rng.random() < prob)


def _pick_int(rng: np.random.Generator, seq: Sequence[int]) -> int:
    return int(seq[int(rng.integers(len(seq)))])


def _pick_str(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return str(seq[int(rng.integers(len(seq)))])


def _weighted(rng: np.random.Generator, table: Sequence[tuple[str, float]]) -> str:
    total = sum(w for _, w in table)
    x = rng.random() * total
    for name, w in table:
        x -= w
        if x < 0:
            return name
    return table[-1][0]


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive; hi < lo gives lo)."""
    if hi <= lo:
        return lo
    return int(rng.integers(lo, hi + 1))


def _pow2(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A power of two between lo and hi (both powers of two), uniform in the exponent."""
    a, b = lo.bit_length() - 1, hi.bit_length() - 1
    return 1 << _randint(rng, a, b)


def _lognormal_pages(rng: np.random.Generator, median: int, sigma: float, lo: int = 1,
                     hi: int = 1 << 30) -> int:
    """A page count from a log-normal distribution with the given median (bytes)."""
    val = median * math.exp(sigma * float(rng.standard_normal()))
    return max(lo, min(hi, round(val / PAGE)))


def _jitter(rng: np.random.Generator, prob: float = 0.15, pages: int = 8) -> int:
    """Mostly 0; sometimes a few pages either way (boundaries are what the rules test)."""
    if not _p(rng, prob):
        return 0
    k = _randint(rng, 1, pages)
    return k * PAGE if _p(rng, 0.5) else -k * PAGE


def _point(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A page-aligned point in [lo, hi]: often 2 MiB aligned, sometimes a few pages off."""
    lo, hi = _round_up(lo), _round_down(hi)
    if hi <= lo:
        return lo
    style = rng.random()
    if style < 0.1:  # a PMD-table boundary
        a, b = _round_up(lo, GiB), _round_down(hi, GiB)
        if a <= b:
            return a + GiB * _randint(rng, 0, (b - a) // GiB)
    if style < 0.85:
        a, b = _round_up(lo, TWO_M), _round_down(hi, TWO_M)
        if a <= b:
            x = a + TWO_M * _randint(rng, 0, (b - a) // TWO_M)
            if style >= 0.65:  # near a PTE-table boundary, a few pages off
                x += _jitter(rng, 1.0, 8)
            return min(max(x, lo), hi)
    return lo + PAGE * _randint(rng, 0, (hi - lo) // PAGE)


def _sub_range(rng: np.random.Generator, lo: int, hi: int,
               max_len: int | None = None) -> tuple[int, int]:
    """A page-aligned sub-range (off, len) of [lo, hi), len >= 1 page."""
    lo, hi = _round_up(lo), _round_down(hi)
    if hi - lo <= PAGE:
        return lo, PAGE
    a = _point(rng, lo, hi - PAGE)
    top = hi if max_len is None else min(hi, a + max(PAGE, max_len))
    b = _point(rng, a + PAGE, top)
    if b <= a:
        b = a + PAGE
    return a, b - a


# ---------------------------------------------------------------------------------------
# the conservative address-space model


@dataclass
class _Seg:
    """A piece of one VMA (never merged, always split at op boundaries)."""

    start: int
    end: int
    kind: str
    share: str
    prot: int
    obj: tuple[int, str] | None  # backing object key; None for private anon
    foff: int
    norsv: bool = False
    locked: bool = False
    guards: bool = False  # may hold guard markers
    huge: bool = False  # MADV_HUGEPAGE (costs 2 MiB per written slot with THP on)
    unsure: bool = False  # an earlier op on it may or may not have happened

    def cut(self, at: int) -> _Seg:
        """Split at ``at``; ``self`` keeps the left part, the right part is returned."""
        right = replace(self, start=at, foff=self.foff + (at - self.start))
        self.end = at
        return right


@dataclass
class _Obj:
    """A backing object (a ``file``/``shmem`` backing file, or the shmem of anon shared)."""

    size: int
    unsure: bool = False


class _Builder:
    """Emits op lines and tracks what the kernel state surely is after each of them.

    Three budgets bound a script's cost: ``budget`` counts touched pages (checked by
    :func:`page_cost`); ``pcache`` the ext4 page cache its faults fill (each fault reads
    :data:`READAHEAD` around itself); ``work`` estimates kernel time in rough microseconds,
    calibrated on the oracle: ~2 per anon/shmem fault plus ~4 per new page table, ~0.1
    per KiB of page cache filled (0.4 when faults are 4 MiB or more apart, +0.2 when
    dirtied through a shared mapping), ~5 per
    page table a fork copies (``tables`` is an upper bound that never decreases), ~2.5
    per table a zap, unmap or mprotect walks, ~0.5 per KiB PAGEOUT writes back.
    """

    def __init__(self, rng: np.random.Generator, thp: bool, budget: int = TOUCH_BUDGET,
                 work: int = WORK_BUDGET) -> None:
        self.rng = rng
        self.thp = thp
        self.budget = budget
        self.work = work
        self.tables = 0
        self.pcache = PAGE_CACHE_BUDGET
        self.dirty_cache = 0
        self.lines: list[str] = []
        self.n_ops = 0
        self.segs: dict[int, list[_Seg]] = {}
        self.objs: dict[tuple[int, str], _Obj] = {}
        self.last_obj: dict[int, tuple[int, str]] = {}
        self._anon_shared = 0
        self.counts: dict[str, int] = {}
        self.target_ops = DEFAULT_N_OPS  # the script's intended length (actors pace by it)

    # -- output -------------------------------------------------------------------------

    def comment(self, text: str) -> None:
        """A comment line (no op)."""
        self.lines.append(f"# {text}")

    def _emit(self, words: Sequence[str], certain: bool, note: str = "") -> None:
        line = " ".join(words)
        if not certain:
            line += " mayfail"
        if note:
            line = f"{line:<44} # {note}"
        self.lines.append(line)
        self.n_ops += 1

    def text(self) -> str:
        """The script so far."""
        return "".join(line + "\n" for line in self.lines)

    # -- segment bookkeeping ------------------------------------------------------------

    def seg_list(self, ident: int) -> list[_Seg]:
        """The segments of ``ident`` (sorted, non-overlapping); do not modify."""
        return self.segs.setdefault(ident, [])

    def overlapping(self, ident: int, lo: int, hi: int) -> list[_Seg]:
        """Segments of ``ident`` that intersect [lo, hi)."""
        return [s for s in self.seg_list(ident) if s.start < hi and s.end > lo]

    def covered(self, ident: int, lo: int, hi: int) -> bool:
        """True when no page of [lo, hi) is a hole."""
        pos = lo
        for s in self.overlapping(ident, lo, hi):
            if s.start > pos:
                return False
            pos = max(pos, s.end)
        return pos >= hi

    def seg_at(self, ident: int, addr: int) -> _Seg | None:
        """The segment containing ``addr``, if any."""
        for s in self.seg_list(ident):
            if s.start <= addr < s.end:
                return s
        return None

    def is_free(self, ident: int, lo: int, hi: int) -> bool:
        """True when nothing (not even an unsure segment) intersects [lo, hi)."""
        return not self.overlapping(ident, lo, hi)

    def extent(self, ident: int) -> tuple[int, int] | None:
        """[first start, last end) of ``ident``'s segments, or None."""
        lst = self.seg_list(ident)
        return (lst[0].start, lst[-1].end) if lst else None

    def _carve(self, ident: int, lo: int, hi: int) -> list[_Seg]:
        """Split segments at lo and hi; return those inside [lo, hi)."""
        out: list[_Seg] = []
        new: list[_Seg] = []
        for s in self.seg_list(ident):
            if s.end <= lo or s.start >= hi:
                new.append(s)
                continue
            if s.start < lo:
                mid = s.cut(lo)
                new.append(s)
                s = mid
            if s.end > hi:
                tail = s.cut(hi)
                new += [s, tail]
            else:
                new.append(s)
            out.append(s)
        self.segs[ident] = new
        return out

    def _remove(self, ident: int, lo: int, hi: int) -> None:
        gone = {id(s) for s in self._carve(ident, lo, hi)}
        self.segs[ident] = [s for s in self.seg_list(ident) if id(s) not in gone]

    def _insert(self, ident: int, seg: _Seg) -> None:
        lst = self.seg_list(ident)
        lst.append(seg)
        lst.sort(key=lambda s: s.start)

    def _taint(self, ident: int, lo: int, hi: int) -> None:
        for s in self._carve(ident, lo, hi):
            s.unsure = True

    def _accessible(self, ident: int, lo: int, hi: int, need: int) -> bool:
        """Every page of [lo, hi) surely mapped, with prot ``need``, no guard, inside EOF."""
        if not self.covered(ident, lo, hi):
            return False
        for s in self.overlapping(ident, lo, hi):
            if s.unsure or s.guards or (s.prot & need) != need or s.prot == 0:
                return False
            if s.obj is not None:
                obj = self.objs[s.obj]
                last = min(hi, s.end) - 1
                if obj.unsure or s.foff + (last - s.start) >= _round_up(obj.size):
                    return False
        return True

    def _charge(self, pages: int, cache: int = 0) -> bool:
        """Take ``pages`` populated pages (``cache`` bytes of them ext4 page cache) from
        the budgets, or nothing if they do not fit."""
        tables = pages // 512 + 2
        work = 3 * pages + 4 * tables + cache // (10 * KiB)
        if pages > self.budget or work > self.work or cache > self.pcache:
            return False
        self.budget -= pages
        self.work -= work
        self.pcache -= cache
        self.tables += tables
        return True

    def _file_span(self, ident: int, lo: int, hi: int) -> int:
        """Page cache that populating [lo, hi) fills: its ext4-file part plus readahead."""
        span = sum(min(hi, s.end) - max(lo, s.start) for s in self.overlapping(ident, lo, hi)
                   if s.kind == "file")
        return span + READAHEAD if span else 0

    def _walk(self, length: int) -> None:
        """Account a zap/unmap/mprotect walk over ``length`` bytes (it visits tables)."""
        self.work -= int(2.5 * min(length // TWO_M + 2, self.tables))

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    # -- ops ----------------------------------------------------------------------------

    def mmap(self, ident: int, kind: str, share: str, size: int, off: int = 0, *,
             ro: bool = False, populate: bool = False, norsv: bool = False,
             fixed: bool = False, foff: int = 0, fd: int | None = None,
             hugepage: bool = False, nohugepage: bool = False, note: str = "") -> bool:
        """``mmap``; returns True (always emitted)."""
        assert 0 <= ident <= MAX_IDENT and off % PAGE == 0 and foff % PAGE == 0
        assert size > 0 and off + size <= SLOT_SIZE, (off, size)
        if self.thp and kind == "file":
            # With THP left on, ext4 maps its large page-cache folios with a PMD (no PTE
            # table) when readahead happened to build a 2 MiB folio -- which depends on
            # readahead state and free-memory fragmentation.  shmem (shmem_enabled=never)
            # keeps THP scripts reproducible.
            kind = "shmem"
        size_r = _round_up(size)
        if populate and not self._charge(size_r // PAGE,
                                         size_r + READAHEAD if kind == "file" else 0):
            populate = False
        words = ["mmap", str(ident), kind, share, _fmt(size)]
        if off:
            words.append(_fmt(off))
        flags = [name for name, on in (("ro", ro), ("populate", populate), ("norsv", norsv),
                                        ("fixed", fixed), ("hugepage", hugepage),
                                        ("nohugepage", nohugepage)) if on]
        words += flags
        if foff:
            words.append(f"foff={_fmt(foff)}")
        if fd is not None:
            words.append(f"fd={fd}")
        obj: tuple[int, str] | None = None
        if kind != "anon":
            obj = (ident if fd is None else fd, kind)
            self.objs.setdefault(obj, _Obj(BACKING_SIZE))
            self.last_obj[ident] = obj  # the oracle sets it even when mmap then fails
        elif share == "shared":
            self._anon_shared += 1
            obj = (-self._anon_shared, "anon")
            self.objs[obj] = _Obj(size_r)
        lo, hi = off, off + size_r
        clash = self.overlapping(ident, lo, hi)
        certain = fixed or not clash
        if not certain and any(not s.unsure for s in clash):
            self._emit(words, False, note)  # EEXIST for sure: nothing changes
            return True
        accountable = not norsv and ((share == "private" and not ro) or
                                     (kind == "anon" and share == "shared"))
        if accountable and size_r > ACCOUNT_LIMIT:
            certain = False
        seg = _Seg(lo, hi, kind, share, 1 if ro else 3, obj, foff, norsv=norsv,
                   huge=hugepage, unsure=not certain)
        self._remove(ident, lo, hi)
        self._insert(ident, seg)
        self._emit(words, certain, note)
        return True

    def touch(self, ident: int, off: int, length: int, write: bool, stride: int = PAGE,
              note: str = "") -> bool:
        """``touch``, shortened to fit the budget; False when nothing fits."""
        assert length > 0 and stride > 0 and off + length <= SLOT_SIZE
        per = 1
        if self.thp and write and any(s.huge and s.kind == "anon" and s.share == "private"
                                      for s in self.overlapping(ident, off, off + length)):
            per = max(1, min(stride, TWO_M) // PAGE)  # every written 2 MiB is a THP
        segs = self.overlapping(ident, off, off + length)
        on_file = any(s.kind == "file" for s in segs)
        shared_write = write and any(s.kind == "file" and s.share == "shared" for s in segs)
        n = -(-length // stride)
        while True:
            new_tables = min(n, length // TWO_M + 2)
            # an ext4 fault reads around itself: READAHEAD of page cache per fault
            cache = min(n * min(stride, READAHEAD), length + READAHEAD) if on_file else 0
            work = (n * (8.0 if write else 3.0) if on_file else n * 2.0) + 4.0 * new_tables
            rate = 0.4 if stride >= 4 * MiB else 0.1  # small folios when faults are sparse
            work += cache / KiB * (rate + (0.2 if shared_write else 0.0))
            if (n * per <= self.budget and work <= self.work and cache <= self.pcache
                    and (not shared_write or self.dirty_cache + cache <= DIRTY_CACHE_BUDGET)):
                break
            n = n * 3 // 4
            if n <= 0:
                return False
            length = _round_up((n - 1) * stride + 1 if stride > PAGE else n * PAGE)
        self.budget -= n * per
        self.work -= int(work)
        self.pcache -= cache
        self.tables += new_tables
        if shared_write:
            self.dirty_cache += cache
        certain = self._accessible(ident, off, off + length, 2 if write else 1)
        words = ["touch", str(ident), _fmt(off), _fmt(length), "write" if write else "read"]
        if stride != PAGE:
            words.append(_fmt(stride))
        self._emit(words, certain, note)
        return True

    def _advice_ok(self, ident: int, advice: str, segs: list[_Seg], lo: int, hi: int) -> bool:
        if advice in _LOCK_REFUSED and any(s.locked for s in segs):
            return False
        if advice in ("FREE", "WIPEONFORK"):
            return all(s.kind == "anon" and s.share == "private" for s in segs)
        if advice == "REMOVE":
            return all(s.share == "shared" and s.prot & 2 for s in segs)
        if advice == "COLLAPSE":
            return False  # THP off: EINVAL; on: may fail for many reasons
        if advice == "POPULATE_READ":
            return self._accessible(ident, lo, hi, 1)
        if advice == "POPULATE_WRITE":
            return self._accessible(ident, lo, hi, 2)
        return True

    def madvise(self, ident: int, off: int, length: int, advice: str, note: str = "") -> bool:
        """``madvise``; False when a populating advice does not fit the budget."""
        assert length > 0 and off + length <= SLOT_SIZE
        if advice in _POPULATING_ADVICES and not self._charge(
                -(-length // PAGE), self._file_span(ident, off, off + length)):
            return False
        self._count(advice)
        self._walk(length)
        if advice == "PAGEOUT":  # writes back dirty file pages: ~0.5 us per KiB
            self.work -= min(length, self.dirty_cache) // (2 * KiB)
        words = ["madvise", str(ident), _fmt(off), _fmt(length), advice]
        if off % PAGE:
            self._emit(words, False, note)  # EINVAL
            return True
        lo, hi = off, off + _round_up(length)
        segs = self.overlapping(ident, lo, hi)
        certain = (self.covered(ident, lo, hi) and not any(s.unsure for s in segs)
                   and self._advice_ok(ident, advice, segs, lo, hi))
        if advice in _FLAG_ADVICES or advice in ("GUARD_INSTALL", "GUARD_REMOVE"):
            for s in self._carve(ident, lo, hi):
                if advice == "HUGEPAGE":
                    s.huge = True
                elif advice == "NOHUGEPAGE" and certain:
                    s.huge = False
                elif advice == "GUARD_INSTALL":
                    s.guards = True
                elif advice == "GUARD_REMOVE" and certain:
                    s.guards = False
        self._emit(words, certain, note)
        return True

    def munmap(self, ident: int, off: int, length: int, note: str = "") -> bool:
        """``munmap`` (always succeeds for a page-aligned start)."""
        assert length > 0 and off + length <= SLOT_SIZE
        self._walk(length)
        words = ["munmap", str(ident), _fmt(off), _fmt(length)]
        if off % PAGE:
            self._emit(words, False, note)
            return True
        self._remove(ident, off, off + _round_up(length))
        self._emit(words, True, note)
        return True

    def mprotect(self, ident: int, off: int, length: int, prot: str, note: str = "") -> bool:
        """``mprotect``; False when the populate it implies does not fit the budget."""
        assert length > 0 and off + length <= SLOT_SIZE
        bits = _PROTS[prot]
        self._walk(length)
        words = ["mprotect", str(ident), _fmt(off), _fmt(length), prot]
        if off % PAGE:
            self._emit(words, False, note)
            return True
        lo, hi = off, off + _round_up(length)
        segs = self.overlapping(ident, lo, hi)
        # Rule 5: making an mlocked private read-only range writable populates it.
        pop = sum(min(hi, s.end) - max(lo, s.start) for s in segs
                  if bits & 2 and s.locked and s.share == "private" and not s.prot & 2)
        if not self._charge(pop // PAGE, self._file_span(ident, lo, hi) if pop else 0):
            return False
        charge = sum(min(hi, s.end) - max(lo, s.start) for s in segs
                     if bits & 2 and s.share == "private" and not s.norsv and not s.prot & 2)
        doubtful = (any(s.unsure for s in segs) or charge > ACCOUNT_LIMIT
                    or (bits & 4 and any(s.kind != "anon" for s in segs)))
        certain = self.covered(ident, lo, hi) and not doubtful
        prefix = self._prefix_end(ident, lo, hi)
        for s in self._carve(ident, lo, hi):
            if doubtful:
                s.unsure = True
            elif s.end <= prefix:  # a hole stops mprotect; what comes before is done
                s.prot = bits
        self._emit(words, certain, note)
        return True

    def _prefix_end(self, ident: int, lo: int, hi: int) -> int:
        """End of the hole-free run of segments starting at ``lo`` (``lo`` if a hole)."""
        pos = lo
        for s in self.overlapping(ident, lo, hi):
            if s.start > pos:
                break
            pos = max(pos, s.end)
        return min(pos, hi)

    def mlock(self, ident: int, off: int, length: int, note: str = "") -> bool:
        """``mlock`` (populates the range); False when it does not fit the budget."""
        assert off % PAGE == 0 and length > 0 and off + length <= SLOT_SIZE
        if not self._charge(-(-length // PAGE), self._file_span(ident, off, off + length)):
            return False
        lo, hi = off, off + _round_up(length)
        segs = self.overlapping(ident, lo, hi)
        doubtful = any(s.unsure for s in segs)
        certain = not doubtful and self._accessible(ident, lo, hi, 1)
        prefix = self._prefix_end(ident, lo, hi)
        for s in self._carve(ident, lo, hi):
            if doubtful:
                s.unsure = True
            elif s.end <= prefix:
                s.locked = True  # VM_LOCKED is set before populating, even if that fails
        self._emit(["mlock", str(ident), _fmt(off), _fmt(length)], certain, note)
        return True

    def munlock(self, ident: int, off: int, length: int, note: str = "") -> bool:
        """``munlock``."""
        assert off % PAGE == 0 and length > 0 and off + length <= SLOT_SIZE
        lo, hi = off, off + _round_up(length)
        segs = self.overlapping(ident, lo, hi)
        doubtful = any(s.unsure for s in segs)
        certain = self.covered(ident, lo, hi) and not doubtful
        prefix = self._prefix_end(ident, lo, hi)
        for s in self._carve(ident, lo, hi):
            if doubtful:
                s.unsure = True
            elif s.end <= prefix:
                s.locked = False
        self._emit(["munlock", str(ident), _fmt(off), _fmt(length)], certain, note)
        return True

    def mremap(self, ident: int, off: int, old: int, new: int, dst: int | None = None,
               dst_off: int = 0, dontunmap: bool = False, note: str = "") -> bool:
        """``mremap`` in place (dst None) or a move to slot(dst) + dst_off."""
        assert off % PAGE == 0 and old > 0 and new > 0 and off + max(old, new) <= SLOT_SIZE
        assert dst is None or (dst_off % PAGE == 0 and dst_off + new <= SLOT_SIZE)
        self._walk(max(old, new))
        words = ["mremap", str(ident), _fmt(off), _fmt(old), _fmt(new)]
        if dst is not None:
            words += [str(dst), _fmt(dst_off)]
        if dontunmap:
            words.append("dontunmap")
        old, new = _round_up(old), _round_up(new)
        lo, hi = off, off + old
        first = self.seg_at(ident, off)
        if dst is None:
            self._count("mremap_grow" if new > old else "mremap_shrink")
            if new < old:
                certain = first is not None and not first.unsure
                if certain:
                    self._remove(ident, off + new, off + old)
                else:
                    self._taint(ident, off + new, off + old)
            else:
                # A hole in the old range (EFAULT), a mapping in the way or the VMA going
                # on past the old range (ENOMEM: no MREMAP_MAYMOVE) fail for sure; a segment
                # boundary inside the old range does not (the VMAs may have merged).
                blocked = [s for s in self.overlapping(ident, hi, off + new) if not s.unsure]
                old_segs = self.overlapping(ident, lo, hi)
                if first is None or (not any(s.unsure for s in old_segs) and (
                        not self.covered(ident, lo, hi) or blocked or first.end > hi)):
                    self._emit(words, False, note)
                    return True
                certain = (not first.unsure and first.end == hi
                           and self.is_free(ident, hi, off + new))
                if certain and first is not None:
                    if first.locked and not self._charge((new - old) // PAGE):
                        return False
                    if not first.norsv and first.share == "private" and first.prot & 2 and \
                            new - old > ACCOUNT_LIMIT:
                        certain = False
                if certain and first is not None:
                    first.end = off + new
                else:
                    self._taint(ident, lo, hi)
                    if first is not None and self.is_free(ident, hi, off + new):
                        ext = replace(first, start=hi, end=off + new,
                                      foff=first.foff + (hi - first.start), unsure=True)
                        self._insert(ident, ext)
            self._emit(words, certain, note)
            return True
        # a move
        self._count("mremap_move_dontunmap" if dontunmap else "mremap_move")
        overlap = dst == ident and dst_off < hi and dst_off + new > lo
        if first is None or overlap or (dontunmap and new != old):
            self._emit(words, False, note)  # EFAULT / EINVAL for sure: nothing changes
            return True
        segs = self.overlapping(ident, lo, hi)
        single = first.end >= hi
        if not single:
            self._count("mremap_move_multi")
        certain = single and not any(s.unsure for s in segs)
        if certain and new > old and first.locked and not self._charge((new - old) // PAGE):
            return False
        src = self._carve(ident, lo, hi)
        shift = dst_off - off
        moved = [replace(s, start=s.start + shift, end=s.end + shift) for s in src]
        if single and new != old:
            moved[0].end = moved[0].start + new
        if certain:
            if dontunmap:
                for s in src:
                    s.locked = False  # rule 17
            else:
                self._remove(ident, lo, hi)
            self._remove(dst, dst_off, dst_off + new)
            for m in moved:
                self._insert(dst, m)
        else:
            for s in src:
                s.unsure = True
            before = self._carve(dst, dst_off, dst_off + new)
            self._remove(dst, dst_off, dst_off + new)
            for m in moved:
                m.unsure = True
                self._insert(dst, m)
            for s in before:  # what stays at dst if the move fails, where nothing lands
                for piece in self._gaps(s, moved):
                    piece.unsure = True
                    self._insert(dst, piece)
        self._emit(words, certain, note)
        return True

    @staticmethod
    def _gaps(seg: _Seg, cover: list[_Seg]) -> list[_Seg]:
        """The parts of ``seg`` not covered by any of ``cover``."""
        pieces = [seg]
        for c in cover:
            nxt = []
            for p in pieces:
                if c.end <= p.start or c.start >= p.end:
                    nxt.append(p)
                    continue
                if p.start < c.start:
                    nxt.append(replace(p, end=c.start))
                if p.end > c.end:
                    nxt.append(replace(p, start=c.end, foff=p.foff + (c.end - p.start)))
            pieces = nxt
        return pieces

    def punch(self, ident: int, foff: int, length: int, note: str = "") -> bool:
        """``punch`` on ID's latest backing file (EBADF if it never mapped one)."""
        assert length > 0
        self._emit(["punch", str(ident), _fmt(foff), _fmt(length)], ident in self.last_obj,
                   note)
        return True

    def truncate(self, ident: int, size: int, note: str = "") -> bool:
        """``truncate`` of ID's latest backing file."""
        certain = ident in self.last_obj
        if certain:
            self.objs[self.last_obj[ident]].size = size
        self._emit(["truncate", str(ident), _fmt(size)], certain, note)
        return True

    def fork(self, note: str = "") -> bool:
        """``fork`` (the number is the child's VmPTE); False when it would cost too much."""
        work = 3000 + 5 * self.tables
        if work > self.work:
            return False
        self.work -= work
        self._emit(["fork"], True, note)
        return True

    def thp_switch(self, on: bool) -> bool:
        """``thp on|off`` (only in THP scripts: prctl at run time)."""
        self._emit(["thp", "on" if on else "off"], True)
        return True


# ---------------------------------------------------------------------------------------
# actors: one simulated program (or program part) each, driving its own IDs


class _Actor:
    """A program that owns some IDs and emits a few ops per :meth:`step`."""

    n_ids = 1

    def __init__(self, b: _Builder, ids: list[int]) -> None:
        self.b = b
        self.rng = b.rng
        self.ids = ids

    def setup(self) -> None:
        """Initial mappings."""

    def step(self) -> None:
        """A few ops of steady-state behaviour."""

    # helpers shared by actors

    def huge(self, prob: float = 0.5) -> bool:
        """Whether to ask for THP on a new anon mapping (THP scripts only)."""
        return self.b.thp and _p(self.rng, prob)

    def touch_run(self, ident: int, off: int, length: int, write: bool = True,
                  max_accesses: int = 256) -> bool:
        """Touch [off, off+length) with the smallest power-of-two stride that keeps the
        number of accesses under ``max_accesses``."""
        return self.b.touch(ident, off, length, write, _sparse_stride(length, max_accesses))


def _sparse_stride(length: int, max_accesses: int) -> int:
    """The smallest power-of-two stride (>= 4 KiB) giving at most ``max_accesses``."""
    stride = PAGE
    while -(-length // stride) > max_accesses:
        stride *= 2
    return stride


class _Jemalloc(_Actor):
    """jemalloc-like arenas: runs of pages dirtied, purged by many small DONTNEEDs
    (median ~44 KiB, almost never an aligned 2 MiB), muzzy MADV_FREE, rare big purges."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        self.arenas: list[dict[str, int]] = []
        self.dirty: list[tuple[int, int, int]] = []  # (ident, off, len)
        self.muzzy: list[tuple[int, int, int]] = []
        for ident in self.ids:
            size = _pow2(rng, 256 * MiB, 64 * GiB)
            norsv = size > 4 * GiB or _p(rng, 0.6)
            off = _pick_int(rng, [0, 0, TWO_M * _randint(rng, 1, 64), GiB * _randint(rng, 1, 8)])
            off = max(0, off + _jitter(rng, 0.15, 16))
            self.b.mmap(ident, "anon", "private", size, off, norsv=norsv, hugepage=self.huge(0.3),
                        note="arena")
            self.arenas.append({"id": ident, "lo": off, "hi": off + size, "cur": off})

    def _alloc(self) -> None:
        rng = self.rng
        a = self.arenas[int(rng.integers(len(self.arenas)))]
        pages = _lognormal_pages(rng, 160 * KiB, 1.2, 1, 2048)
        length = pages * PAGE
        if self.dirty and _p(rng, 0.3):  # reuse a purged hole near old extents
            _, o, ln = self.dirty[int(rng.integers(len(self.dirty)))]
            off = max(a["lo"], o + ln + PAGE * _randint(rng, 0, 64))
        elif a["cur"] > a["lo"] and _p(rng, 0.5):
            off = a["lo"] + PAGE * _randint(rng, 0, (a["cur"] - a["lo"]) // PAGE)
        else:
            off = a["cur"]
        if off + length > a["hi"]:
            off = a["lo"]
        a["cur"] = max(a["cur"], off + length)
        if self.touch_run(a["id"], off, length, True, 128):
            self.dirty.append((a["id"], off, length))

    def _purge_small(self) -> None:
        rng = self.rng
        if not self.dirty:
            return self._alloc()
        # decay purges the oldest, biggest dirty extents first: best of three
        i = max((int(rng.integers(len(self.dirty))) for _ in range(3)),
                key=lambda k: self.dirty[k][2])
        ident, off, length = self.dirty[i]
        plen = min(length, _lognormal_pages(rng, 48 * KiB, 0.8) * PAGE)
        poff = off + PAGE * _randint(rng, 0, (length - plen) // PAGE)
        advice = "FREE" if _p(rng, 0.15) else "DONTNEED"
        self.b.madvise(ident, poff, plen, advice)
        rest = [(ident, off, poff - off), (ident, poff + plen, off + length - poff - plen)]
        self.dirty[i:i + 1] = [r for r in rest if r[2] > 0]
        if advice == "FREE":
            self.muzzy.append((ident, poff, plen))
        return None

    def _purge_muzzy(self) -> None:
        if not self.muzzy:
            return self._purge_small()
        ident, off, length = self.muzzy.pop(int(self.rng.integers(len(self.muzzy))))
        self.b.madvise(ident, off, length, "DONTNEED", note="muzzy -> clean")
        return None

    def _purge_large(self) -> None:
        rng = self.rng
        a = self.arenas[int(rng.integers(len(self.arenas)))]
        hi = max(a["cur"], a["lo"] + TWO_M)
        off, length = _sub_range(rng, a["lo"], min(hi, a["hi"]), 512 * MiB)
        self.b.madvise(a["id"], off, length, "DONTNEED", note="large purge")
        self.dirty = [d for d in self.dirty
                      if not (d[0] == a["id"] and d[1] >= off and d[1] + d[2] <= off + length)]

    def step(self) -> None:
        rng = self.rng
        what = _weighted(rng, [("alloc", 0.36), ("purge", 0.46), ("muzzy", 0.05),
                               ("large", 0.02), ("fork", 0.03), ("reset", 0.005),
                               ("thp", 0.03 if self.b.thp else 0.0), ("retouch", 0.04)])
        if what == "alloc":
            self._alloc()
        elif what == "purge":
            self._purge_small()
        elif what == "muzzy":
            self._purge_muzzy()
        elif what == "large":
            self._purge_large()
        elif what == "fork":
            self.b.fork(note="bgsave")
        elif what == "reset":
            a = self.arenas[int(rng.integers(len(self.arenas)))]
            self.b.madvise(a["id"], a["lo"], a["hi"] - a["lo"], "DONTNEED", note="arena reset")
            self.dirty = [d for d in self.dirty if d[0] != a["id"]]
            a["cur"] = a["lo"]
        elif what == "thp":
            a = self.arenas[int(rng.integers(len(self.arenas)))]
            off, length = _sub_range(rng, a["lo"], a["hi"], 64 * MiB)
            self.b.madvise(a["id"], off, length, _pick_str(rng, ["HUGEPAGE", "NOHUGEPAGE"]))
        else:
            if not self.dirty:
                return self._alloc()
            ident, off, length = self.dirty[int(rng.integers(len(self.dirty)))]
            self.touch_run(ident, off, length, _p(rng, 0.7), 64)
        return None


class _GlibcMalloc(_Actor):
    """glibc-like malloc: a brk heap grown/shrunk in place (mremap), 64 MiB thread heaps
    reserved PROT_NONE and committed by mprotect, malloc_trim = large, often 2 MiB
    aligned DONTNEEDs, mmap'd chunks for big blocks."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.heap_id, self.arena_id, self.chunk_id = self.ids
        # brk starts at a random page offset: almost never 2 MiB aligned.
        self.brk_lo = TWO_M * _randint(rng, 0, 64) + PAGE * _randint(rng, 1, 511)
        self.brk_hi = self.brk_lo + _round_up(132 * KiB)
        self.brk_top = self.brk_lo  # end of the used part
        b.mmap(self.heap_id, "anon", "private", self.brk_hi - self.brk_lo, self.brk_lo,
               hugepage=self.huge(0.3), note="brk heap")
        # Thread arenas: 64 MiB heaps, 64 MiB aligned, PROT_NONE until used.
        self.heaps: list[list[int]] = []
        for k in range(_randint(rng, 1, 3)):
            lo = 64 * MiB * (k * 2 + _randint(rng, 0, 1))
            b.mmap(self.arena_id, "anon", "private", 64 * MiB, lo, norsv=True)
            b.mprotect(self.arena_id, lo, 64 * MiB, "none", note="reserve")
            size = _round_up(132 * KiB)
            b.mprotect(self.arena_id, lo, size, "rw")
            self.heaps.append([lo, size])
        self.chunks: list[tuple[int, int]] = []
        self.chunk_top = 256 * GiB  # mmap'd chunks are placed top-down, adjacent

    def _brk_alloc(self) -> None:
        rng = self.rng
        length = _lognormal_pages(rng, 512 * KiB, 1.3, 1, 16384) * PAGE
        if _p(rng, 0.3) and self.brk_top - self.brk_lo > length:  # reuse freed chunks
            off = self.brk_lo + PAGE * _randint(rng, 0, (self.brk_top - self.brk_lo - length)
                                                // PAGE)
            self.touch_run(self.heap_id, off, length, True, 64)
            return
        if self.brk_top + length > self.brk_hi:  # sbrk: grow the heap VMA in place
            grow = _round_up(self.brk_top + length + 128 * KiB - self.brk_hi)
            if self.brk_hi + grow > 500 * GiB:
                return
            self.b.mremap(self.heap_id, self.brk_lo, self.brk_hi - self.brk_lo,
                          self.brk_hi - self.brk_lo + grow, note="sbrk")
            self.brk_hi += grow
        self.touch_run(self.heap_id, self.brk_top, length, True, 64)
        self.brk_top += length

    def _trim(self) -> None:
        rng = self.rng
        if _p(rng, 0.6) and self.brk_top - self.brk_lo > TWO_M:
            ident, lo, hi = self.heap_id, self.brk_lo, self.brk_top
        else:
            h = self.heaps[int(rng.integers(len(self.heaps)))]
            ident, lo, hi = self.arena_id, h[0], h[0] + h[1]
        if hi - lo <= 2 * PAGE:
            return
        length = min(hi - lo - PAGE, _lognormal_pages(rng, 8 * MiB, 1.0, 64) * PAGE)
        if _p(rng, 0.6) and hi - lo > 2 * TWO_M:  # free chunks spanning whole 2 MiB slots
            off = _round_up(lo + PAGE, TWO_M)
            off += TWO_M * _randint(rng, 0, max(0, (hi - off) // TWO_M - 1))
            length = max(TWO_M, _round_down(min(length, hi - off), TWO_M))
        else:
            off = lo + PAGE * _randint(rng, 1, max(1, (hi - lo - length) // PAGE))
        if off + length > hi:
            off, length = lo + PAGE, hi - lo - PAGE
        self.b.madvise(ident, off, length, "DONTNEED", note="malloc_trim")

    def _brk_shrink(self) -> None:
        rng = self.rng
        used = self.brk_top - self.brk_lo
        if used <= 2 * MiB:
            return self._brk_alloc()
        # free()s at the top of the heap, then systrim gives back all but top_pad
        self.brk_top = self.brk_lo + _round_up(int(used * rng.uniform(0.2, 0.9)))
        new = _round_up(self.brk_top - self.brk_lo + 128 * KiB)
        if new < self.brk_hi - self.brk_lo:
            self.b.mremap(self.heap_id, self.brk_lo, self.brk_hi - self.brk_lo, new,
                          note="systrim (sbrk < 0)")
            self.brk_hi = self.brk_lo + new
        return None

    def _arena(self) -> None:
        rng = self.rng
        h = self.heaps[int(rng.integers(len(self.heaps)))]
        lo, size = h
        if _p(rng, 0.6) and size < 64 * MiB:  # grow_heap
            new = min(64 * MiB, _round_up(size + _lognormal_pages(rng, 1 * MiB, 1.0) * PAGE))
            self.b.mprotect(self.arena_id, lo + size, new - size, "rw", note="grow_heap")
            h[1] = new
            self.touch_run(self.arena_id, lo + size, new - size, True, 64)
        elif size > 256 * KiB:  # shrink_heap
            new = _round_up(max(132 * KiB, int(size * rng.uniform(0.2, 0.8))))
            self.b.madvise(self.arena_id, lo + new, size - new, "DONTNEED", note="shrink_heap")
            h[1] = new
        else:
            self.touch_run(self.arena_id, lo, size, True, 32)

    def _chunk(self) -> None:
        rng = self.rng
        b = self.b
        if self.chunks and _p(rng, 0.45):
            off, length = self.chunks.pop(int(rng.integers(len(self.chunks))))
            b.munmap(self.chunk_id, off, length, note="free mmap'd chunk")
            return
        if self.chunks and _p(rng, 0.2):  # realloc: grow in place when the space is free
            i = int(rng.integers(len(self.chunks)))
            off, length = self.chunks[i]
            grow = _round_up(_lognormal_pages(rng, 256 * KiB, 1.0) * PAGE)
            b.mremap(self.chunk_id, off, length, length + grow, note="realloc")
            if b.seg_at(self.chunk_id, off) is not None:
                self.chunks[i] = (off, length + grow)
            return
        length = _round_up(_lognormal_pages(rng, 512 * KiB, 1.2, 33, 16384) * PAGE + PAGE)
        self.chunk_top -= length
        b.mmap(self.chunk_id, "anon", "private", length, self.chunk_top, note="malloc > 128K")
        self.touch_run(self.chunk_id, self.chunk_top, length, True, 32)
        self.chunks.append((self.chunk_top, length))

    def step(self) -> None:
        what = _weighted(self.rng, [("brk", 0.3), ("trim", 0.16), ("shrink", 0.05),
                                    ("arena", 0.2), ("chunk", 0.25), ("fork", 0.04)])
        if what == "brk":
            self._brk_alloc()
        elif what == "trim":
            self._trim()
        elif what == "shrink":
            self._brk_shrink()
        elif what == "arena":
            self._arena()
        elif what == "chunk":
            self._chunk()
        else:
            self.b.fork()


class _MunmapRuntime(_Actor):
    """A runtime that gets memory by mmap and returns it by munmap: over-sized mmap then
    trimming head and tail to align big chunks, partial unmaps, holes re-mapped, realloc
    by in-place grow or move, and a scavenger releasing 64 KiB..2 MiB with DONTNEED."""

    n_ids = 2

    def setup(self) -> None:
        self.cur = {i: TWO_M * _randint(self.rng, 0, 512) for i in self.ids}
        self.live: list[tuple[int, int, int]] = []
        self.holes: list[tuple[int, int, int]] = []

    def _map(self) -> None:
        rng = self.rng
        b = self.b
        ident = self.ids[int(rng.integers(len(self.ids)))]
        if self.holes and _p(rng, 0.25):
            ident, off, length = self.holes.pop(int(rng.integers(len(self.holes))))
            b.mmap(ident, "anon", "private", length, off, note="reuse hole")
        else:
            length = _pick_int(rng, [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 64 * MiB])
            length += _jitter(rng, 0.2, 4) if length > 64 * KiB else 0
            off = self.cur[ident] + PAGE * _randint(rng, 0, 16) * int(_p(rng, 0.3))
            if length >= TWO_M and _p(rng, 0.6):
                # aligned allocation: map size + align, unmap the misaligned head and tail
                align = TWO_M if length < 64 * MiB else 64 * MiB
                big = length + align
                b.mmap(ident, "anon", "private", big, off, norsv=_p(rng, 0.5))
                start = _round_up(off, align)
                if start > off:
                    b.munmap(ident, off, start - off, note="trim head")
                if off + big > start + length:
                    b.munmap(ident, start + length, off + big - start - length,
                             note="trim tail")
                off, self.cur[ident] = start, off + big
            else:
                b.mmap(ident, "anon", "private", length, off, norsv=_p(rng, 0.3))
                self.cur[ident] = off + length
            if self.cur[ident] > 400 * GiB:
                self.cur[ident] = 0
        self.touch_run(ident, off, length, True, 96)
        self.live.append((ident, off, length))

    def _free(self) -> None:
        rng = self.rng
        if not self.live:
            return self._map()
        i = int(rng.integers(len(self.live)))
        ident, off, length = self.live[i]
        if _p(rng, 0.3) and length > 8 * PAGE:  # give back the tail only
            keep = _round_up(int(length * rng.uniform(0.2, 0.9)))
            self.b.munmap(ident, off + keep, length - keep, note="shrink")
            self.live[i] = (ident, off, keep)
        else:
            self.b.munmap(ident, off, length, note="free")
            self.live.pop(i)
            self.holes.append((ident, off, length))
        return None

    def _realloc(self) -> None:
        rng = self.rng
        b = self.b
        if not self.live:
            return self._map()
        i = int(rng.integers(len(self.live)))
        ident, off, length = self.live[i]
        grow = _round_up(_pick_int(rng, [64 * KiB, 1 * MiB, TWO_M, 8 * MiB]))
        if b.is_free(ident, off + length, off + length + grow) and _p(rng, 0.6) and \
                off + length + grow <= SLOT_SIZE:
            b.mremap(ident, off, length, length + grow, note="realloc in place")
            self.live[i] = (ident, off, length + grow)
        else:
            dst = self.ids[int(rng.integers(len(self.ids)))]
            doff = self.cur[dst] + (_pick_int(rng, [0, TWO_M]) if _p(rng, 0.5) else
                                    PAGE * _randint(rng, 1, 511))
            if doff + length + grow > SLOT_SIZE:
                return None
            b.mremap(ident, off, length, length, dst, doff, note="realloc: move")
            b.mremap(dst, doff, length, length + grow, note="... and grow")
            self.cur[dst] = doff + length + grow
            self.live[i] = (dst, doff, length + grow)
            self.touch_run(dst, doff + length, grow, True, 32)
        return None

    def _scavenge(self) -> None:
        rng = self.rng
        if not self.live:
            return self._map()
        ident, off, length = self.live[int(rng.integers(len(self.live)))]
        unit = _pick_int(rng, [64 * KiB, 64 * KiB, 256 * KiB, TWO_M])
        if length < unit:
            unit = _round_down(length) or PAGE
        poff = off + unit * _randint(rng, 0, (length - unit) // unit)
        self.b.madvise(ident, poff, unit, "DONTNEED", note="scavenge")
        return None

    def step(self) -> None:
        what = _weighted(self.rng, [("map", 0.35), ("free", 0.3), ("realloc", 0.1),
                                    ("scavenge", 0.15), ("retouch", 0.07), ("fork", 0.03)])
        if what == "map":
            self._map()
        elif what == "free":
            self._free()
        elif what == "realloc":
            self._realloc()
        elif what == "scavenge":
            self._scavenge()
        elif what == "retouch" and self.live:
            ident, off, length = self.live[int(self.rng.integers(len(self.live)))]
            self.touch_run(ident, off, length, _p(self.rng, 0.6), 64)
        else:
            self.b.fork()


class _Jvm(_Actor):
    """JVM-like heap: a huge norsv reservation made PROT_NONE, regions committed with
    MAP_FIXED (or mprotect rw), uncommitted by MAP_FIXED norsv re-mapping + PROT_NONE or
    DONTNEED + PROT_NONE; code cache made rwx; thread stacks with PROT_NONE guards."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.heap, self.code, self.stacks = self.ids
        self.size = _pow2(rng, 1 * GiB, 32 * GiB)
        self.region = max(MiB, min(32 * MiB, _pow2(rng, 1 << 20, 1 << 25)))
        self.base = _pick_int(rng, [0, GiB, 32 * GiB])
        b.mmap(self.heap, "anon", "private", self.size, self.base, norsv=True, note="reserve")
        b.mprotect(self.heap, self.base, self.size, "none")
        nreg = self.size // self.region
        self.committed = [False] * nreg
        init = _randint(rng, 2, min(nreg, 64))
        self._commit(0, init)
        if self.huge(0.6):
            b.madvise(self.heap, self.base, self.size, "HUGEPAGE", note="UseTransparentHugePages")
        if _p(rng, 0.25):
            length = min(init * self.region, 16 * MiB)
            b.madvise(self.heap, self.base, length, "POPULATE_WRITE", note="AlwaysPreTouch")
        # code cache: reserved, a little committed rwx
        self.code_size = 240 * MiB
        b.mmap(self.code, "anon", "private", self.code_size, 0, norsv=True)
        b.mprotect(self.code, 0, self.code_size, "none")
        self.code_top = _round_up(2496 * KiB)
        b.mprotect(self.code, 0, self.code_top, "rwx")
        self.threads: list[int] = []
        self._sizes: dict[int, int] = {}
        self.stack_cur = 0
        for _ in range(_randint(rng, 1, 3)):
            self._thread_start()

    def _commit(self, first: int, count: int) -> None:
        rng = self.rng
        off = self.base + first * self.region
        length = count * self.region
        if _p(rng, 0.6):
            self.b.mmap(self.heap, "anon", "private", length, off, fixed=True, note="commit")
        else:
            self.b.mprotect(self.heap, off, length, "rw", note="commit")
        for i in range(first, first + count):
            self.committed[i] = True

    def _uncommit(self, first: int, count: int) -> None:
        rng = self.rng
        off = self.base + first * self.region
        length = count * self.region
        if _p(rng, 0.6):
            self.b.mmap(self.heap, "anon", "private", length, off, fixed=True, norsv=True,
                        note="uncommit")
        else:
            self.b.madvise(self.heap, off, length, "DONTNEED", note="uncommit")
        self.b.mprotect(self.heap, off, length, "none")
        for i in range(first, first + count):
            self.committed[i] = False

    def _run_of(self, want: bool) -> tuple[int, int] | None:
        idx = [i for i, c in enumerate(self.committed) if c == want]
        if not idx:
            return None
        first = idx[int(self.rng.integers(len(idx)))]
        count = 1
        limit = _randint(self.rng, 1, 16)
        while (first + count < len(self.committed) and self.committed[first + count] == want
               and count < limit):
            count += 1
        return first, count

    def _thread_start(self) -> None:
        rng = self.rng
        b = self.b
        size = _pick_int(rng, [256 * KiB, 512 * KiB, 1 * MiB, 8 * MiB]) + PAGE
        off = self.stack_cur
        self.stack_cur += size + PAGE * _randint(rng, 0, 4) * int(_p(rng, 0.5))
        b.mmap(self.stacks, "anon", "private", size, off, norsv=_p(rng, 0.5), note="stack")
        guard = PAGE * _pick_int(rng, [1, 1, 4, 5])
        b.mprotect(self.stacks, off, guard, "none", note="guard pages")
        self.touch_run(self.stacks, off + size - 4 * PAGE * _randint(rng, 1, 8),
                       4 * PAGE * _randint(rng, 1, 8), True, 64)
        self.threads.append(off)
        self._sizes[off] = size

    def step(self) -> None:
        rng = self.rng
        b = self.b
        what = _weighted(rng, [("alloc", 0.36), ("gc", 0.12), ("uncommit", 0.12),
                               ("commit", 0.12), ("thread", 0.1), ("code", 0.05),
                               ("fork", 0.03), ("stackdrop", 0.03)])
        if what == "alloc" or what == "gc":
            run = self._run_of(True)
            if run is None:
                return self._commit(0, 1)
            first, count = run
            off = self.base + first * self.region
            length = count * self.region
            if what == "gc":
                self.touch_run(self.heap, off, length, True, 512)
            else:
                sub = min(length, _lognormal_pages(rng, 512 * KiB, 1.2) * PAGE)
                o = off + PAGE * _randint(rng, 0, (length - sub) // PAGE)
                self.touch_run(self.heap, o, sub, True, 128)
        elif what == "uncommit":
            run = self._run_of(True)
            if run is not None:
                self._uncommit(*run)
        elif what == "commit":
            run = self._run_of(False)
            if run is not None:
                self._commit(*run)
                first, count = run
                self.touch_run(self.heap, self.base + first * self.region,
                               count * self.region, True, 64)
        elif what == "thread":
            if self.threads and _p(rng, 0.4):
                off = self.threads.pop(int(rng.integers(len(self.threads))))
                b.munmap(self.stacks, off, self._sizes[off], note="thread exit")
            elif self.stack_cur < 100 * GiB:
                self._thread_start()
        elif what == "code":
            if self.code_top < self.code_size and _p(rng, 0.5):
                grow = min(self.code_size - self.code_top, 64 * KiB * _randint(rng, 1, 40))
                b.mprotect(self.code, self.code_top, grow, "rwx")
                self.code_top += grow
            self.touch_run(self.code, 0, self.code_top, True, 32)
        elif what == "stackdrop" and self.threads:
            off = self.threads[int(rng.integers(len(self.threads)))]
            size = self._sizes[off]
            b.madvise(self.stacks, off + 5 * PAGE, size - 9 * PAGE, "DONTNEED",
                      note="shrink idle stack")
        else:
            b.fork()
        return None


class _Balloon(_Actor):
    """A hypervisor's guest RAM: boot touches, balloon inflation = DONTNEED of single
    4 KiB pages, free page reporting = aligned 2/4 MiB DONTNEEDs, deflation = the guest
    touches the pages again.  Memfd-backed guests punch the file as well (QEMU's
    ram_block_discard_range)."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.ram = self.ids[0]
        self.size = _pow2(rng, 1 * GiB, 64 * GiB)
        self.base = _pick_int(rng, [0, 0, GiB, TWO_M * _randint(rng, 1, 100)])
        self.shared = _p(rng, 0.25) and self.size <= 16 * GiB
        self.locked = False
        if self.shared:
            b.mmap(self.ram, "shmem", "shared", self.size, self.base, note="memfd guest RAM")
        else:
            b.mmap(self.ram, "anon", "private", self.size, self.base,
                   norsv=self.size > 4 * GiB or _p(rng, 0.5), hugepage=self.huge(0.7),
                   note="guest RAM")
        if len(self.ids) > 1 and _p(rng, 0.5):
            b.mmap(self.ids[1], "anon", "private", 16 * MiB, note="vga vram")
            self.touch_run(self.ids[1], 0, 16 * MiB, True, 64)
        # boot: the guest zeroes and uses a part of its memory
        part = min(self.size, _pow2(rng, 64 * MiB, 4 * GiB))
        self.touch_run(self.ram, self.base, part, True, _randint(rng, 512, 2048))
        self.inflated: list[int] = []
        if _p(rng, 0.05):
            length = min(self.size, 8 * MiB)
            b.mlock(self.ram, self.base, length, note="mem-lock=on")
            self.locked = True

    def _discard(self, off: int, length: int, note: str = "") -> None:
        if self.shared:
            self.b.punch(self.ram, off - self.base, length, note=note)
        self.b.madvise(self.ram, off, length, "DONTNEED", note=note if not self.shared else "")

    def _inflate(self) -> None:
        rng = self.rng
        # The guest's balloon driver hands out single pages, clustered within a few
        # 2 MiB blocks (buddy allocator), in increasing PFN order.
        blocks = self.size // TWO_M
        block = _randint(rng, 0, blocks - 1)
        count = _randint(rng, 3, 12)
        pages = sorted({_randint(rng, 0, 511) for _ in range(count)})
        if _p(rng, 0.3):  # a contiguous run
            start = _randint(rng, 0, 511 - count)
            pages = list(range(start, start + count))
        for i, pg in enumerate(pages):
            off = self.base + block * TWO_M + pg * PAGE
            self._discard(off, PAGE, "inflate" if i == 0 else "")
            self.inflated.append(off)

    def _report(self) -> None:
        rng = self.rng
        order = _pick_int(rng, [TWO_M, TWO_M, TWO_M, 4 * MiB])
        n = _randint(rng, 1, 6)
        blocks = self.size // order
        start = _randint(rng, 0, max(0, blocks - n))
        for i in range(n):
            k = start + i if _p(rng, 0.6) else _randint(rng, 0, blocks - 1)
            self._discard(self.base + k * order, order, "free page reporting" if i == 0 else "")

    def _deflate(self) -> None:
        rng = self.rng
        if not self.inflated:
            return self._report()
        n = min(len(self.inflated), _randint(rng, 1, 6))
        if _p(rng, 0.5):  # the guest reuses a whole block of returned pages
            off = _round_down(self.inflated[int(rng.integers(len(self.inflated)))], TWO_M)
            self.touch_run(self.ram, off, TWO_M, True, _pick_int(rng, [16, 64, 512]))
        else:
            for _ in range(n):
                off = self.inflated.pop(int(rng.integers(len(self.inflated))))
                self.b.touch(self.ram, off, PAGE, True, note="deflate")
        return None

    def step(self) -> None:
        rng = self.rng
        what = _weighted(rng, [("inflate", 0.34), ("report", 0.22), ("deflate", 0.2),
                               ("guest", 0.16), ("read", 0.04), ("fork", 0.03),
                               ("collapse", 0.02 if self.b.thp else 0.0)])
        if what == "inflate":
            self._inflate()
        elif what == "report":
            self._report()
        elif what == "deflate":
            self._deflate()
        elif what == "guest":
            off, length = _sub_range(rng, self.base, self.base + self.size, 64 * MiB)
            self.touch_run(self.ram, off, length, True, _randint(rng, 16, 512))
        elif what == "read":  # the guest reads reported (now zero) memory
            off, length = _sub_range(rng, self.base, self.base + self.size, 256 * MiB)
            self.touch_run(self.ram, off, length, False, 256)
        elif what == "collapse":
            off = self.base + TWO_M * _randint(rng, 0, self.size // TWO_M - 1)
            self.b.madvise(self.ram, off, TWO_M, "COLLAPSE")
        else:
            self.b.fork()
        return None


class _VirtioMem(_Actor):
    """virtio-mem: a big device region; blocks (2 MiB .. 128 MiB, aligned) are plugged
    (optionally preallocated with POPULATE_WRITE) and used by the guest, unplugged with
    DONTNEED (anon) or punch/REMOVE (memfd or file backed), and all unplugged at reset."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.dev = self.ids[0]
        self.kind = _weighted(rng, [("anon", 0.6), ("shmem", 0.25), ("file", 0.15)])
        # x86 guests default to the THP size (2 MiB); bigger blocks are configured
        self.block = TWO_M if _p(rng, 0.4) else _pow2(rng, 4 * MiB, 128 * MiB)
        if self.kind == "anon":
            self.size = _pow2(rng, 4 * GiB, 256 * GiB)
        else:
            self.size = _pow2(rng, 4 * GiB, 32 * GiB)
        self.base = _pick_int(rng, [0, GiB, 4 * GiB])
        if self.base + self.size > SLOT_SIZE:
            self.base = 0
        self.foff = _pick_int(rng, [0, 0, GiB]) if self.kind != "anon" else 0
        self.remove_mode = _p(rng, 0.4)
        self.prealloc = _p(rng, 0.3)
        if self.kind == "anon":
            b.mmap(self.dev, "anon", "private", self.size, self.base, norsv=True,
                   hugepage=self.huge(0.6), note=f"virtio-mem region, block {_fmt(self.block)}")
        else:
            b.mmap(self.dev, self.kind, "shared", self.size, self.base, norsv=True,
                   foff=self.foff, note=f"virtio-mem region ({self.kind}), block "
                   f"{_fmt(self.block)}")
        if len(self.ids) > 1:
            b.mmap(self.ids[1], "anon", "private", 1 * GiB, norsv=True, note="boot memory")
            self.touch_run(self.ids[1], 0, 1 * GiB, True, 256)
        self.plugged: set[int] = set()
        self.nblocks = self.size // self.block

    def _off(self, k: int) -> int:
        return self.base + k * self.block

    def _plug(self) -> None:
        rng = self.rng
        n = _randint(rng, 1, 4)
        k0 = _randint(rng, 0, self.nblocks - n)
        for k in range(k0, k0 + n):
            if k in self.plugged:
                continue
            self.plugged.add(k)
            off = self._off(k)
            if self.prealloc and self.block <= 8 * MiB and _p(rng, 0.7):
                self.b.madvise(self.dev, off, self.block, "POPULATE_WRITE", note="prealloc")
            self.touch_run(self.dev, off, self.block, True, _randint(rng, 4, 64))

    def _unplug_range(self, k0: int, n: int, note: str) -> None:
        b = self.b
        off, length = self._off(k0), n * self.block
        if self.kind == "anon":
            b.madvise(self.dev, off, length, "DONTNEED", note=note)
        elif self.remove_mode:
            b.madvise(self.dev, off, length, "REMOVE", note=note)
        else:
            b.punch(self.dev, self.foff + off - self.base, length, note=note)
            b.madvise(self.dev, off, length, "DONTNEED")
        for k in range(k0, k0 + n):
            self.plugged.discard(k)

    def step(self) -> None:
        rng = self.rng
        what = _weighted(rng, [("plug", 0.3), ("unplug", 0.3), ("use", 0.26), ("reset", 0.02),
                               ("fork", 0.03), ("read", 0.04), ("sub", 0.05)])
        if what == "plug" or (what in ("unplug", "use", "sub") and not self.plugged):
            self._plug()
        elif what == "unplug":
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            n = 1
            while k + n in self.plugged and n < 4 and _p(rng, 0.6):
                n += 1
            self._unplug_range(k, n, "unplug")
        elif what == "use":
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            off, length = _sub_range(rng, self._off(k), self._off(k) + self.block)
            self.touch_run(self.dev, off, length, _p(rng, 0.7), 64)
        elif what == "sub":  # the guest frees part of a plugged block (not aligned)
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            off, length = _sub_range(rng, self._off(k), self._off(k) + self.block, TWO_M)
            self.b.madvise(self.dev, off, length, "DONTNEED", note="partial discard")
        elif what == "reset":
            self._unplug_range(0, self.nblocks, "unplug all (reset)")
        elif what == "read":
            off, length = _sub_range(rng, self.base, self.base + self.size, 4 * GiB)
            self.touch_run(self.dev, off, length, False, 128)
        else:
            self.b.fork()


class _Hog(_Actor):
    """A sparse page-table hog: huge norsv mappings, one write (or a read: zeropage
    variant) every 2 MiB -- or every 1 GiB to hog PMD tables -- over part of them,
    re-touching after its tables were reclaimed, with occasional DONTNEEDs and forks."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        self.write = _p(rng, 0.6)
        self.regions: list[tuple[int, int, int]] = []
        for ident in self.ids[:_randint(rng, 1, len(self.ids))]:
            size = _pick_int(rng, [16 * GiB, 64 * GiB, 128 * GiB, 256 * GiB, 448 * GiB,
                                   511 * GiB])
            off = _pick_int(rng, [0, 0, TWO_M, GiB]) + max(0, _jitter(rng, 0.3, 16))
            size = min(size, SLOT_SIZE - off)
            kind = _pick_str(rng, ["anon"] * 5 + ["shmem"]) if size <= 64 * GiB else "anon"
            self.b.mmap(ident, kind, "private", size, off, norsv=True,
                        hugepage=kind == "anon" and self.huge(0.3), note="hog region")
            self.regions.append((ident, off, size))
        self.touched: list[tuple[int, int, int, int]] = []
        # a pass costs at most this many accesses, so that re-touches fit as well
        self.pass_cap = max(64, self.b.budget // _randint(rng, 8, 16))

    def _hog(self) -> None:
        rng = self.rng
        ident, lo, size = self.regions[int(rng.integers(len(self.regions)))]
        stride = _pick_int(rng, [TWO_M] * 8 + [GiB, TWO_M + PAGE])
        n = _randint(rng, self.pass_cap // 4, self.pass_cap)
        length = min(size, stride * n)
        align = GiB if _p(rng, 0.5) else TWO_M
        off = lo + _round_down(_randint(rng, 0, max(0, size - length)), align)
        off = max(lo, off + _jitter(rng, 0.2, 4))
        length = _round_up(min(length, lo + size - off))
        write = self.write if _p(rng, 0.9) else not self.write
        if self.b.touch(ident, off, length, write, stride, note="hog"):
            self.touched.append((ident, off, length, stride))
        else:
            self._cheap()

    def _cheap(self) -> None:
        """What a hog does once it has used its touch budget."""
        rng = self.rng
        b = self.b
        what = _weighted(rng, [("dontneed", 0.6), ("fork", 0.2), ("mprotect", 0.15),
                               ("munmap", 0.05)])
        ident, lo, size = self.regions[int(rng.integers(len(self.regions)))]
        if what == "dontneed":
            off, length = _sub_range(rng, lo, lo + size, 64 * GiB)
            b.madvise(ident, off, length, "DONTNEED")
        elif what == "fork":
            b.fork(note="fork copies every table of a written hog")
        elif what == "mprotect":
            off, length = _sub_range(rng, lo, lo + size)
            b.mprotect(ident, off, length, _pick_str(rng, ["r", "rw", "rw"]))
        else:
            off, length = _sub_range(rng, lo, lo + size, 64 * GiB)
            b.munmap(ident, off, length)

    def step(self) -> None:
        rng = self.rng
        b = self.b
        what = _weighted(rng, [("hog", 0.25), ("reclaim", 0.2), ("retouch", 0.2),
                               ("cheap", 0.3), ("remap", 0.02)])
        if what == "hog" or (what in ("reclaim", "retouch") and not self.touched):
            self._hog()
        elif what == "reclaim":  # a reclaimer (or the hog itself) frees aligned tables
            ident, off, length, _ = self.touched[int(rng.integers(len(self.touched)))]
            lo = _round_down(off, TWO_M)
            b.madvise(ident, lo, _round_up(off + length, TWO_M) - lo, "DONTNEED",
                      note="reclaim")
        elif what == "retouch":
            ident, off, length, stride = self.touched[int(rng.integers(len(self.touched)))]
            if not b.touch(ident, off, length, self.write, stride,
                           note="re-touch after reclaim"):
                self._cheap()
        elif what == "remap":  # drop everything and map again (fresh VMA, same place)
            ident, lo, size = self.regions[int(rng.integers(len(self.regions)))]
            b.mmap(ident, "anon", "private", size, lo, norsv=True, fixed=True)
        else:
            self._cheap()


class _Kdump(_Actor):
    """kdump of a ballooned guest: the guest used memory, much of it was DONTNEED'd
    (balloon, free page reporting), then the dump reads everything: zeropage tables
    everywhere; afterwards the host reclaims again."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.ram = self.ids[0]
        self.size = _pow2(rng, 2 * GiB, 32 * GiB)
        self.base = _pick_int(rng, [0, 0, GiB, 4 * MiB])
        b.mmap(self.ram, "anon", "private", self.size, self.base,
               norsv=self.size > 4 * GiB or _p(rng, 0.6), hugepage=self.huge(0.5),
               note="guest RAM")
        self.dump_pos = self.base
        self.dump_end = self.base + self.size
        self.stride = 0
        self.chunk = _pick_int(rng, [256 * MiB, 1 * GiB, 4 * GiB])
        # phases by share of the script: guest life, balloon, dump, aftermath
        self.ends = [int(self.b.target_ops * f) for f in (rng.uniform(0.1, 0.2),
                                                          rng.uniform(0.4, 0.55))]

    def _plan_dump(self) -> None:
        """Pick the dump's stride and extent so that it fits the remaining budget."""
        rng = self.rng
        left = int(self.b.budget * 0.85)
        stride = _pick_int(rng, [TWO_M, TWO_M, MiB, 512 * KiB, 64 * KiB])
        while self.size // stride > left and stride < TWO_M:
            stride *= 2
        self.stride = stride
        span = min(self.size, _round_down(max(stride, left * stride), TWO_M) or TWO_M)
        start = self.base + _round_down(_randint(rng, 0, self.size - span), GiB)
        self.dump_pos, self.dump_end = start, min(self.base + self.size, start + span)
        self.b.comment("crash: kdump reads the guest's memory")

    def step(self) -> None:
        rng = self.rng
        b = self.b
        hi = self.base + self.size
        if b.n_ops < self.ends[0]:  # guest life: use memory
            off, length = _sub_range(rng, self.base, hi, 256 * MiB)
            self.touch_run(self.ram, off, length, True, _randint(rng, 128, 512))
        elif b.n_ops < self.ends[1]:  # balloon / reporting: DONTNEED most of it
            style = _weighted(rng, [("big", 0.45), ("aligned", 0.35), ("pages", 0.2)])
            if style == "big":
                off, length = _sub_range(rng, self.base, hi)
                b.madvise(self.ram, off, length, "DONTNEED", note="balloon")
            elif style == "aligned":
                k = _randint(rng, 0, self.size // TWO_M - 8)
                b.madvise(self.ram, self.base + k * TWO_M, TWO_M * _randint(rng, 1, 8),
                          "DONTNEED", note="free page reporting")
            else:
                off = self.base + PAGE * _randint(rng, 0, self.size // PAGE - 1)
                b.madvise(self.ram, off, PAGE, "DONTNEED", note="balloon page")
        elif self.dump_pos < self.dump_end and b.budget > 16:  # the dump
            if not self.stride:
                self._plan_dump()
            length = min(self.chunk, self.dump_end - self.dump_pos)
            b.touch(self.ram, self.dump_pos, length, False, self.stride, note="dump")
            self.dump_pos += length
        else:  # after the dump
            what = _weighted(rng, [("fork", 0.15), ("dontneed", 0.45), ("reread", 0.15),
                                   ("munmap", 0.03), ("write", 0.15), ("report", 0.07)])
            if what == "fork":
                b.fork()
            elif what == "dontneed":
                off, length = _sub_range(rng, self.base, hi)
                b.madvise(self.ram, off, length, "DONTNEED")
            elif what == "report":
                k = _randint(rng, 0, self.size // TWO_M - 8)
                b.madvise(self.ram, self.base + k * TWO_M, TWO_M * _randint(rng, 1, 8),
                          "DONTNEED", note="free page reporting")
            elif what == "reread":
                off, length = _sub_range(rng, self.base, hi, 1 * GiB)
                b.touch(self.ram, off, length, False, max(self.stride, PAGE))
            elif what == "write":
                off, length = _sub_range(rng, self.base, hi, 64 * MiB)
                self.touch_run(self.ram, off, length, True, 32)
            else:
                off, length = _sub_range(rng, self.base, hi)
                b.munmap(self.ram, off, length)


class _FileUser(_Actor):
    """A program on files and shared memory: one of a database mapping a big sparse
    file, a postgres-like shared buffer pool with forked backends, ZGC-like multi-mapped
    memfd (fd= views, punch to uncommit), ELF-like private file mappings with COW, or a
    log file written, truncated and grown again."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.mode = _pick_str(rng, ["db", "pgshm", "zgc", "elf", "log"])
        a = self.ids[0]
        self.maps: list[tuple[int, int, int]] = []  # (ident, off, len)
        if self.mode == "db":
            self.size = _pow2(rng, 1 * GiB, 64 * GiB)
            ro = _p(rng, 0.5)
            b.mmap(a, "file", "shared", self.size, _pick_int(rng, [0, TWO_M, GiB]), ro=ro,
                   norsv=True, note="database file")
            self.ro = ro
            self.maps.append((a, b.seg_list(a)[0].start, self.size))
            if len(self.ids) > 1 and _p(rng, 0.5):  # a second view of a part, other offset
                foff = GiB * _randint(rng, 0, max(0, self.size // GiB - 1))
                b.mmap(self.ids[1], "file", "shared", min(self.size, GiB), TWO_M * 3,
                       fd=a, foff=foff, note="second view (same file)")
                self.maps.append((self.ids[1], TWO_M * 3, min(self.size, GiB)))
        elif self.mode == "pgshm":
            self.size = _pow2(rng, 128 * MiB, 2 * GiB)
            kind = _pick_str(rng, ["anon", "shmem"])
            b.mmap(a, kind, "shared", self.size, note="shared buffers")
            self.maps.append((a, 0, self.size))
            self.ro = False
        elif self.mode == "zgc":
            self.size = _pow2(rng, 256 * MiB, 4 * GiB)
            for k, ident in enumerate(self.ids):
                b.mmap(ident, "shmem", "shared", self.size, 4 * GiB * _randint(rng, 0, 4),
                       fd=None if k == 0 else a, norsv=True,
                       note="heap view" if k == 0 else "heap view (same memfd)")
                self.maps.append((ident, b.seg_list(ident)[-1].start, self.size))
            self.ro = False
        elif self.mode == "elf":
            text = _round_up(_lognormal_pages(rng, 2 * MiB, 1.0, 16) * PAGE)
            data = _round_up(_lognormal_pages(rng, 256 * KiB, 1.0, 4) * PAGE)
            base = TWO_M * _randint(rng, 0, 100)
            b.mmap(a, "file", "private", text, base, ro=True, note="text")
            b.mmap(a, "file", "private", data, base + text, foff=text, note="data (COW)")
            b.mmap(a, "anon", "private", 4 * PAGE + PAGE * _randint(rng, 0, 64),
                   base + text + data, note="bss")
            self.maps += [(a, base, text), (a, base + text, data)]
            self.size = text + data
            self.ro = True
        else:
            self.size = _pow2(rng, 16 * MiB, 1 * GiB)
            b.mmap(a, "file", "shared", self.size, TWO_M * _randint(rng, 0, 8),
                   note="log file")
            self.maps.append((a, b.seg_list(a)[0].start, self.size))
            self.ro = False

    def _view(self) -> tuple[int, int, int]:
        return self.maps[int(self.rng.integers(len(self.maps)))]

    def step(self) -> None:
        rng = self.rng
        b = self.b
        ident, lo, size = self._view()
        a = self.ids[0]
        table = [("read", 0.25), ("write", 0.2), ("dontneed", 0.12), ("pageout", 0.07),
                 ("cold", 0.03), ("remove", 0.05), ("punch", 0.07), ("truncate", 0.04),
                 ("fork", 0.07), ("willneed", 0.03), ("remap", 0.04), ("populate", 0.03)]
        what = _weighted(rng, table)
        if what == "read":
            off, length = _sub_range(rng, lo, lo + size, 64 * MiB)
            self.touch_run(ident, off, length, False, _pick_int(rng, [16, 64, 256]))
        elif what == "write":
            off, length = _sub_range(rng, lo, lo + size, 16 * MiB)
            self.touch_run(ident, off, length, True, _pick_int(rng, [16, 64, 128]))
        elif what in ("dontneed", "pageout", "cold", "remove", "willneed", "populate"):
            advice = {"dontneed": "DONTNEED", "pageout": "PAGEOUT", "cold": "COLD",
                      "remove": "REMOVE", "willneed": "WILLNEED",
                      "populate": "POPULATE_READ"}[what]
            cap = 4 * MiB if advice in _POPULATING_ADVICES else (16 * MiB if advice == "PAGEOUT"
                                                                  else None)
            off, length = _sub_range(rng, lo, lo + size, cap)
            b.madvise(ident, off, length, advice)
        elif what == "punch":
            seg = b.seg_at(ident, lo)
            base = seg.foff - (lo - seg.start) if seg is not None and seg.obj else 0
            off, length = _sub_range(rng, lo, lo + size, 256 * MiB)
            b.punch(ident, max(0, base + off - lo), length)
        elif what == "truncate":
            if self.mode in ("log", "db", "elf") and _p(rng, 0.7):
                new = _pick_int(rng, [0, _round_down(self.size // 2), self.size + PAGE,
                                      self.size - 5 * PAGE, BACKING_SIZE])
                b.truncate(a, max(0, new), note="truncate")
                if _p(rng, 0.6):  # a reader that did not notice: SIGBUS past EOF
                    off, length = _sub_range(rng, lo, lo + size, 4 * MiB)
                    self.touch_run(ident, off, length, False, 16)
            else:
                b.truncate(a, BACKING_SIZE, note="grow back")
        elif what == "remap":
            if self.mode == "elf":
                # dlclose + dlopen again at the same place
                for i, o, ln in self.maps:
                    b.munmap(i, o, ln)
                b.mmap(a, "file", "private", self.maps[0][2], self.maps[0][1], ro=True)
                b.mmap(a, "file", "private", self.maps[1][2], self.maps[1][1],
                       foff=self.maps[0][2])
            else:
                seg = b.seg_at(ident, lo)
                kind = seg.kind if seg is not None else "anon"
                share = seg.share if seg is not None else "shared"
                foff = seg.foff - (lo - seg.start) if seg is not None and kind != "anon" else 0
                fd = seg.obj[0] if seg is not None and seg.obj and kind != "anon" else None
                b.mmap(ident, kind, share, size, lo, fixed=True, norsv=True, foff=foff,
                       fd=fd if fd != ident else None, note="remap")
        else:
            b.fork(note="backend" if self.mode == "pgshm" else "")


class _Layout(_Actor):
    """VMA-structure churn: mprotect splits and merges, mlock/munlock, fork-flag and
    access-pattern advice (they split VMAs), guard regions, MAP_FIXED replacement,
    partial munmap, mremap grow/shrink in place and moves (aligned, unaligned, several
    VMAs with gaps, DONTUNMAP), with DONTNEEDs and forks in between."""

    n_ids = 4

    def setup(self) -> None:
        for ident in self.ids[:max(1, len(self.ids) - 1)]:
            self._new_mapping(ident)
            self._sparse_touch(ident)

    def _new_mapping(self, ident: int) -> None:
        rng = self.rng
        b = self.b
        kind = _weighted(rng, [("anon", 0.65), ("file", 0.2), ("shmem", 0.15)])
        share = "private" if kind == "anon" and _p(rng, 0.85) else _pick_str(
            rng, ["private", "shared"])
        size = _round_up(_lognormal_pages(rng, 16 * MiB, 1.5, 1) * PAGE)
        size = min(size, 4 * GiB) + _jitter(rng, 0.2, 4)
        size = max(PAGE, size)
        ext = b.extent(ident)
        off = (ext[1] if ext else 0) + _pick_int(rng, [0, TWO_M, GiB]) + max(0, _jitter(rng, 0.3))
        off = _round_up(off)
        if off + size > SLOT_SIZE:
            off = 0
        b.mmap(ident, kind, share, size, off, ro=_p(rng, 0.1), norsv=_p(rng, 0.3),
               foff=GiB * _randint(rng, 0, 3) if kind != "anon" and _p(rng, 0.3) else 0,
               hugepage=kind == "anon" and self.huge(0.3),
               populate=size <= 4 * MiB and _p(rng, 0.1))

    def _sparse_touch(self, ident: int) -> None:
        ext = self.b.extent(ident)
        if ext is None:
            return
        lo, hi = ext
        self.b.touch(ident, lo, hi - lo, _p(self.rng, 0.7), _sparse_stride(hi - lo, 128))

    def _range(self, ident: int, max_len: int | None = None) -> tuple[int, int] | None:
        ext = self.b.extent(ident)
        if ext is None:
            return None
        lo, hi = ext
        if _p(self.rng, 0.7):  # usually inside one existing segment
            segs = self.b.seg_list(ident)
            s = segs[int(self.rng.integers(len(segs)))]
            lo, hi = s.start, s.end
        return _sub_range(self.rng, lo, hi, max_len)

    def step(self) -> None:
        rng = self.rng
        b = self.b
        ident = self.ids[int(rng.integers(len(self.ids)))]
        if b.extent(ident) is None:
            self._new_mapping(ident)
            return
        r = self._range(ident)
        assert r is not None
        off, length = r
        what = _weighted(rng, [
            ("mprotect", 0.14), ("mlock", 0.05), ("forkflag", 0.07), ("access", 0.07),
            ("guard", 0.06), ("fixed", 0.06), ("munmap", 0.07), ("grow", 0.05),
            ("shrink", 0.04), ("move", 0.12), ("dontneed", 0.1), ("touch", 0.1),
            ("fork", 0.05), ("new", 0.02)])
        if what == "mprotect":
            b.mprotect(ident, off, length, _pick_str(rng, ["r", "none", "rw", "rw", "rx"]))
        elif what == "mlock":
            length = min(length, 4 * MiB)
            if _p(rng, 0.6):
                b.mlock(ident, off, length)
            else:
                b.munlock(ident, off, length)
        elif what == "forkflag":
            b.madvise(ident, off, length,
                      _pick_str(rng, ["DONTFORK", "DOFORK", "WIPEONFORK", "KEEPONFORK"]))
        elif what == "access":
            adv = ["HUGEPAGE", "NOHUGEPAGE", "RANDOM", "SEQUENTIAL", "NORMAL"]
            b.madvise(ident, off, length, _pick_str(rng, adv))
        elif what == "guard":
            if _p(rng, 0.6):
                b.madvise(ident, off, min(length, PAGE * _randint(rng, 1, 16)), "GUARD_INSTALL")
            else:
                b.madvise(ident, off, length, "GUARD_REMOVE")
        elif what == "fixed":
            kind = _weighted(rng, [("anon", 0.8), ("file", 0.1), ("shmem", 0.1)])
            b.mmap(ident, kind, "private" if kind == "anon" else _pick_str(
                rng, ["private", "shared"]), length, off, fixed=True, norsv=_p(rng, 0.3))
        elif what == "munmap":
            b.munmap(ident, off, length)
        elif what == "grow":
            seg = b.seg_list(ident)[-1]
            grow = _round_up(_lognormal_pages(rng, 4 * MiB, 1.2) * PAGE)
            if seg.end + grow <= SLOT_SIZE:
                start = seg.start if _p(rng, 0.7) else _round_down(
                    seg.start + (seg.end - seg.start) // 2)
                b.mremap(ident, start, seg.end - start, seg.end - start + grow)
        elif what == "shrink":
            seg = b.seg_list(ident)[int(rng.integers(len(b.seg_list(ident))))]
            old = seg.end - seg.start
            if old > PAGE:
                cut = _round_up(_randint(rng, PAGE, old - PAGE))
                if _p(rng, 0.3):  # across the ends of the following VMAs
                    old = min(SLOT_SIZE - seg.start, old + _round_up(_randint(rng, 0, 64 * MiB)))
                b.mremap(ident, seg.start, old, cut)
        elif what == "move":
            self._move(ident, off, length)
        elif what == "dontneed":
            b.madvise(ident, off, length, _pick_str(rng, ["DONTNEED"] * 4 + ["DONTNEED_LOCKED"]))
        elif what == "touch":
            b.touch(ident, off, length, _p(rng, 0.6), _sparse_stride(length, 256))
        elif what == "fork":
            b.fork()
        else:
            self._new_mapping(ident)

    def _move(self, ident: int, off: int, length: int) -> None:
        rng = self.rng
        b = self.b
        style = _weighted(rng, [("aligned", 0.35), ("unaligned", 0.3), ("multi", 0.25),
                                ("gib", 0.1)])
        if style == "multi":  # from the first segment's start over several VMAs and gaps
            ext = b.extent(ident)
            assert ext is not None
            segs = b.seg_list(ident)
            s = segs[int(rng.integers(len(segs)))]
            off = s.start
            length = min(ext[1] - off, _round_up(_randint(rng, PAGE, 256 * MiB)))
        elif style == "aligned":
            off = _round_down(off, TWO_M)
            length = max(TWO_M, _round_down(length, TWO_M))
        elif style == "gib":
            off = _round_down(off, GiB)
            length = GiB
        dst = self.ids[int(rng.integers(len(self.ids)))]
        dext = b.extent(dst)
        base = dext[1] if dext and _p(rng, 0.7) else 0
        doff = _round_up(base, TWO_M) + TWO_M * _randint(rng, 0, 8)
        if style == "unaligned" or (style == "multi" and _p(rng, 0.5)):
            doff += off % TWO_M if _p(rng, 0.3) else PAGE * _randint(rng, 1, 511)
        elif style == "gib":
            doff = _round_up(base, GiB) + GiB * _randint(rng, 0, 2)
        if dst == ident and doff < off + length and doff + length > off:
            ext = b.extent(ident)
            doff = _round_up(max(off + length, ext[1] if ext else 0), TWO_M)
        if doff + length > SLOT_SIZE or off + length > SLOT_SIZE:
            return
        b.mremap(ident, off, length, length, dst, doff, dontunmap=_p(rng, 0.2))


class _Chaos(_Actor):
    """Ops that fail (or partly fail) on purpose: touches of holes, PROT_NONE and guard
    pages, DONTNEED on mlocked ranges, mremap from a hole, madvise/mprotect/mlock over
    gaps, advice the VMA refuses (REMOVE on private, FREE on files, WIPEONFORK on
    shared), punch on an ID without a file, unaligned starts."""

    def step(self) -> None:
        rng = self.rng
        b = self.b
        ident = _randint(rng, 0, MAX_IDENT)
        ext = b.extent(ident)
        lo, hi = ext if ext is not None else (0, 64 * MiB)
        # around the mapped area, a bit beyond it on both sides
        lo2 = max(0, lo - _pick_int(rng, [0, PAGE, TWO_M]))
        hi2 = min(SLOT_SIZE, hi + _pick_int(rng, [0, PAGE, TWO_M, 64 * MiB]))
        off, length = _sub_range(rng, lo2, hi2, 256 * MiB)
        what = _weighted(rng, [("touch", 0.2), ("dontneed", 0.1), ("advice", 0.15),
                               ("mprotect", 0.08), ("mlock", 0.08), ("mremap", 0.1),
                               ("punch", 0.04), ("unaligned", 0.05), ("munmap", 0.05),
                               ("mmap", 0.08), ("locked", 0.07)])
        if what == "touch":
            b.touch(ident, off, length, _p(rng, 0.5), _sparse_stride(length, 64))
        elif what == "dontneed":
            b.madvise(ident, off, length, "DONTNEED")
        elif what == "advice":
            adv = _pick_str(rng, ["REMOVE", "FREE", "WIPEONFORK", "PAGEOUT", "COLD",
                                  "POPULATE_READ", "POPULATE_WRITE", "GUARD_INSTALL",
                                  "GUARD_REMOVE", "DONTNEED_LOCKED", "COLLAPSE"])
            if adv in _POPULATING_ADVICES:
                length = min(length, 2 * MiB)
            b.madvise(ident, off, length, adv)
        elif what == "mprotect":
            b.mprotect(ident, off, length, _pick_str(rng, list(_PROTS)))
        elif what == "mlock":
            length = min(length, 2 * MiB)
            if _p(rng, 0.5):
                b.mlock(ident, off, length)
            else:
                b.munlock(ident, off, length)
        elif what == "locked":  # DONTNEED on an mlocked range
            length = min(length, 2 * MiB)
            b.mlock(ident, off, length)
            b.madvise(ident, off, length, _pick_str(rng, ["DONTNEED", "DONTNEED_LOCKED"]))
        elif what == "mremap":
            src = lo2 + PAGE * _randint(rng, 0, 16) * int(_p(rng, 0.5))
            src = _round_down(src)
            dst = _randint(rng, 0, MAX_IDENT)
            doff = TWO_M * _randint(rng, 0, 64) + PAGE * _randint(rng, 0, 1)
            if src + length <= SLOT_SIZE and doff + length <= SLOT_SIZE:
                if _p(rng, 0.7):
                    b.mremap(ident, src, length, length, dst, doff, dontunmap=_p(rng, 0.2))
                else:
                    b.mremap(ident, src, length, length + TWO_M if _p(rng, 0.5) else PAGE)
        elif what == "punch":
            b.punch(ident, off, length)
        elif what == "unaligned":
            op = _pick_str(rng, ["madvise", "munmap", "mprotect"])
            if op == "madvise":
                b.madvise(ident, off + _randint(rng, 1, PAGE - 1), length, "DONTNEED")
            elif op == "munmap":
                b.munmap(ident, off + 512, length)
            else:
                b.mprotect(ident, off, length + _randint(rng, 1, 100), "rw")
        elif what == "munmap":
            b.munmap(ident, off, length)
        else:
            b.mmap(ident, "anon", "private", length, off, norsv=_p(rng, 0.5))


# ---------------------------------------------------------------------------------------
# families


@dataclass(frozen=True)
class _Family:
    doc: str
    actors: Callable[[np.random.Generator], list[type[_Actor]]]


def _pick_cls(rng: np.random.Generator, seq: Sequence[type[_Actor]]) -> type[_Actor]:
    return seq[int(rng.integers(len(seq)))]


_PROGRAMS: tuple[type[_Actor], ...] = (
    _Jemalloc, _GlibcMalloc, _MunmapRuntime, _Jvm, _Balloon, _VirtioMem, _Hog, _Kdump,
    _FileUser)


def _allocator_actors(rng: np.random.Generator) -> list[type[_Actor]]:
    return [_pick_cls(rng, [_Jemalloc, _Jemalloc, _GlibcMalloc, _MunmapRuntime, _Jvm])]


def _mixed_actors(rng: np.random.Generator) -> list[type[_Actor]]:
    programs = [_pick_cls(rng, _PROGRAMS) for _ in range(_randint(rng, 2, 3))]
    return [*programs, _Layout, _Chaos]


_FAMILY_TABLE: dict[str, _Family] = {
    "allocator": _Family(
        "jemalloc-like purging with many small DONTNEEDs, glibc malloc_trim/brk/thread "
        "heaps, an mmap/munmap-based runtime, and a JVM committing and uncommitting "
        "its heap (PROT_NONE, MAP_FIXED)", _allocator_actors),
    "balloon": _Family(
        "a hypervisor's guest RAM under virtio-balloon: 4 KiB DONTNEEDs (inflate), "
        "aligned 2/4 MiB DONTNEEDs (free page reporting), re-touch (deflate)",
        lambda rng: [_Balloon]),
    "virtio_mem": _Family(
        "virtio-mem plugging and unplugging aligned 2 MiB..128 MiB blocks of anon, "
        "memfd or file-backed device memory", lambda rng: [_VirtioMem]),
    "hog": _Family(
        "a sparse page-table hog: one access every 2 MiB (or 1 GiB) of a huge norsv "
        "mapping, re-touching after reclaim", lambda rng: [_Hog]),
    "kdump": _Family(
        "kdump reading a ballooned guest's RAM: zeropage tables over mostly "
        "DONTNEED'd memory", lambda rng: [_Kdump]),
    "file": _Family(
        "file and shmem users: a database's big sparse file, postgres shared buffers "
        "with forked backends, ZGC multi-mapped memfd, ELF-like COW mappings, logs "
        "truncated and re-grown",
        lambda rng: [_FileUser, _FileUser] if _p(rng, 0.5) else [_FileUser]),
    "layout": _Family(
        "VMA churn: splits, merges, locks, fork flags, guards, MAP_FIXED, partial "
        "munmap, mremap in place and moves", lambda rng: [_Layout]),
    "mixed": _Family(
        "a soup of all of the above in one process, plus ops that fail on purpose",
        _mixed_actors),
}

#: The script families, in a fixed order (``generate_corpus`` cycles through them).
FAMILIES: tuple[str, ...] = tuple(_FAMILY_TABLE)


def family_doc(family: str) -> str:
    """One line on what real behaviour ``family`` imitates."""
    return _FAMILY_TABLE[family].doc


def generate(family: str, rng: np.random.Generator, n_ops: int = DEFAULT_N_OPS, *,
             thp: bool = False) -> str:
    """Generate one op script of ``family`` (see :data:`FAMILIES`) with about ``n_ops`` ops.

    The text is a pure function of ``rng``'s state and the arguments.  With ``thp``
    (off by default) the script starts with ``# ptoracle-opts: -t`` and its programs ask
    for transparent huge pages (``hugepage``, ``HUGEPAGE``, ``COLLAPSE``, ``thp`` ops);
    THP scripts are timing-dependent on the kernel (khugepaged), so corpora keep them a
    small share; in them ``file`` mappings become ``shmem`` ones (ext4 would PMD-map its
    large folios, depending on readahead and fragmentation).  Every op the generator
    cannot prove to succeed ends with ``mayfail``.
    """
    if family not in _FAMILY_TABLE:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    if n_ops < 1:
        raise ValueError("n_ops must be positive")
    b = _Builder(rng, thp)
    b.target_ops = n_ops
    header = "# ptoracle-opts: -t" if thp else "# generated by ptreclaim.envs.sim.scriptgen"
    b.lines.append(header)
    b.comment(f"family {family}: {_FAMILY_TABLE[family].doc}")
    classes = _FAMILY_TABLE[family].actors(rng)
    actors: list[_Actor] = []
    next_id = 0
    for cls in classes:
        if cls is _Chaos:
            actors.append(cls(b, list(range(MAX_IDENT + 1))))
            continue
        want = cls.n_ids if family != "mixed" else max(1, min(cls.n_ids, 3))
        ids = [i for i in range(next_id, next_id + want) if i <= MAX_IDENT]
        if not ids:
            ids = [MAX_IDENT]
        next_id += len(ids)
        actors.append(cls(b, ids))
    for actor in actors:
        doc = (type(actor).__doc__ or "").split(":")[0].split(".")[0].split("\n")[0]
        b.comment(f"{type(actor).__name__.lstrip('_').lower()} on IDs "
                  f"{','.join(map(str, actor.ids)) if len(actor.ids) <= 4 else 'any'}: {doc}")
        actor.setup()
    # Forks at a few points of every script (the child's numbers depend on the state).
    forks = sorted(_randint(rng, max(1, n_ops // 4), n_ops - 1)
                   for _ in range(_randint(rng, 1, 2)))
    weights = [0.25 if isinstance(a, _Chaos) else 1.0 for a in actors]
    total = sum(weights)
    attempts = 0
    while b.n_ops < n_ops and attempts < 20 * n_ops:
        attempts += 1
        if forks and b.n_ops >= forks[0]:
            forks.pop(0)
            b.fork()
            continue
        if thp and _p(rng, 0.03):
            _thp_step(b)
            continue
        x = rng.random() * total
        for actor, w in zip(actors, weights, strict=True):
            x -= w
            if x < 0:
                actor.step()
                break
    return b.text()


def _thp_step(b: _Builder) -> None:
    """THP-only ops: COLLAPSE of an anon 2 MiB slot, COLLAPSE of shmem followed by what a
    program then does to the collapsed range (:func:`_collapse_refault`), or switching
    THP off and on."""
    rng = b.rng
    if _p(rng, 0.3):
        b.thp_switch(False)
        if _p(rng, 0.7):
            b.thp_switch(True)
        return
    # shmem: memfd/tmpfs segments and anon shared memory (a shmem object too)
    shmem = [(i, s) for i, lst in b.segs.items() for s in lst
             if s.obj is not None and s.kind != "file"
             and _round_up(s.start, TWO_M) + TWO_M <= s.end]
    if shmem and _p(rng, 0.8):
        ident, s = shmem[int(rng.integers(len(shmem)))]
        _collapse_refault(b, ident, s)
        return
    cands = [(i, s) for i, lst in b.segs.items() for s in lst
             if s.kind == "anon" and s.end - s.start >= TWO_M]
    if not cands:
        return
    ident, s = cands[int(rng.integers(len(cands)))]
    lo = _round_up(s.start, TWO_M)
    if lo + TWO_M <= s.end:
        b.madvise(ident, lo, TWO_M, "COLLAPSE")


_REFAULT_AFTER = (("refault", 0.2), ("dontneed", 0.14), ("mprotect", 0.12), ("cold", 0.12),
                  ("fork", 0.08), ("punch", 0.1), ("munmap", 0.08), ("mremap", 0.1),
                  ("thp_off", 0.06))


def _collapse_refault(b: _Builder, ident: int, s: _Seg) -> None:
    """A program collapses part of its shmem into a THP (MADV_COLLAPSE, after filling
    the page cache there most of the time), then touches it again -- right away, or
    after one of the ops that unmap or split the huge folio (a partial or whole
    DONTNEED, mprotect of a page, COLD/PAGEOUT, a fork, punching a page, a partial
    munmap, an aligned or unaligned mremap, THP switched off): the page-table model's
    rule for a PMD-sized folio in the page cache (R24)."""
    rng = b.rng
    first = _round_up(s.start, TWO_M)
    blocks = (s.end - first) // TWO_M
    lo = first + TWO_M * _randint(rng, 0, min(blocks, 16) - 1)
    length = TWO_M * (2 if lo + 2 * TWO_M <= s.end and _p(rng, 0.3) else 1)
    hi = lo + length
    write = s.share == "shared" and bool(s.prot & 2) and _p(rng, 0.7)
    if _p(rng, 0.85):
        b.touch(ident, lo, length, write, _pick_int(rng, [PAGE, 16 * PAGE, 64 * PAGE, MiB]),
                note="fill the page cache")
    b.madvise(ident, lo, length, "COLLAPSE", note="shmem THP")
    page = lo + PAGE * _randint(rng, 0, length // PAGE - 1)
    what = _weighted(rng, _REFAULT_AFTER)
    if what == "dontneed":
        if _p(rng, 0.5):
            b.madvise(ident, lo, length, "DONTNEED")
        else:
            off, n = _sub_range(rng, lo, hi, TWO_M)
            b.madvise(ident, off, n, "DONTNEED")
    elif what == "mprotect":
        names = {bits: name for name, bits in _PROTS.items()}
        b.mprotect(ident, page, PAGE, "r")
        b.touch(ident, lo, length, False, 64 * PAGE)
        b.mprotect(ident, page, PAGE, names.get(s.prot, "rw"))
    elif what == "cold":
        advice = _pick_str(rng, ["COLD", "PAGEOUT"])
        if _p(rng, 0.5):
            b.madvise(ident, lo, length, advice)
        else:
            off, n = _sub_range(rng, lo, hi, TWO_M)
            b.madvise(ident, off, n, advice)
    elif what == "fork":
        b.fork(note="the child maps no file THP")
    elif what == "punch":
        if b.last_obj.get(ident) == s.obj and s.obj is not None and s.obj[1] != "anon":
            b.punch(ident, s.foff + (page - s.start), PAGE)
        else:
            b.madvise(ident, page, PAGE, "REMOVE")
    elif what == "munmap":
        b.munmap(ident, page, PAGE)
        if page - lo >= hi - page - PAGE:
            hi = page
        else:
            lo = page + PAGE
    elif what == "mremap":
        ext = b.extent(ident)
        dst = _round_up(ext[1] if ext else hi, TWO_M) + _pick_int(rng, [0, 0, PAGE, MiB])
        if dst + length <= SLOT_SIZE:
            b.mremap(ident, lo, length, length, ident, dst)
            lo, hi = dst, dst + length
    elif what == "thp_off":
        b.thp_switch(False)
        b.madvise(ident, lo, length, "DONTNEED")
        b.touch(ident, lo, hi - lo, write, 64 * PAGE)
        b.thp_switch(True)
    if hi > lo:
        b.touch(ident, lo, hi - lo, write and _p(rng, 0.5), _pick_int(rng, [PAGE, 64 * PAGE]),
                note="refault")


def generate_corpus(seed: int, count: int, families: Sequence[str] | None = None, *,
                    n_ops: int = DEFAULT_N_OPS, thp_share: float = 0.0
                    ) -> list[tuple[str, str]]:
    """``count`` scripts as (name, text), cycling through ``families`` (default: all).

    Script ``i`` uses the ``i``-th child of ``numpy.random.SeedSequence(seed)``, so the
    corpus is identical byte for byte for the same arguments.  ``thp_share`` (default 0)
    is the probability that a script is a THP one (``-t``).
    """
    fams = tuple(families) if families is not None else FAMILIES
    for f in fams:
        if f not in _FAMILY_TABLE:
            raise ValueError(f"unknown family {f!r}; known: {', '.join(FAMILIES)}")
    if not fams:
        raise ValueError("families must not be empty")
    out = []
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(count)):
        rng = np.random.default_rng(child)
        family = fams[i % len(fams)]
        thp = bool(rng.random() < thp_share)
        out.append((f"{i:04d}_{family}", generate(family, rng, n_ops, thp=thp)))
    return out


def page_cost(script: Script) -> int:
    """Pages a script faults in at most: touch accesses plus populate-like ops
    (``populate`` mmaps, mlock, POPULATE_*, GUARD_INSTALL, WILLNEED, COLLAPSE)."""
    total = 0
    for op in script.ops:
        if op.name == "touch":
            total += -(-op.length // op.stride)
        elif ((op.name == "mmap" and "populate" in op.flags) or op.name == "mlock"
              or (op.name == "madvise" and op.advice in _POPULATING_ADVICES)):
            total += -(-op.length // PAGE)
    return total
