"""The builder: emits op lines and keeps the conservative address-space model.

The model (VMAs as segments, their protection, locks, guard markers, backing files and
their sizes) decides for each op whether it surely succeeds on the kernel; ops it cannot
vouch for end with ``mayfail`` (see the package docstring).  :func:`page_cost` checks a
finished script against the touch budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ptreclaim.envs.sim.opscript import BACKING_SIZE, PAGE, PROTS, SLOT_SIZE, KiB, MiB, Script

from .common import (
    _FLAG_ADVICES,
    _LOCK_REFUSED,
    _POPULATING_ADVICES,
    ACCOUNT_LIMIT,
    DEFAULT_N_OPS,
    DIRTY_CACHE_BUDGET,
    MAX_IDENT,
    PAGE_CACHE_BUDGET,
    READAHEAD,
    TOUCH_BUDGET,
    TWO_M,
    WORK_BUDGET,
    Draws,
    _fmt,
    _round_up,
)


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
        self.rng = Draws.of(rng)
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
        bits = PROTS[prot]
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
