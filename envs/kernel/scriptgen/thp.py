"""THP-only ops (scripts with ``# ptoracle-opts: -t``): COLLAPSE of anon and shmem,
what a program then does to the collapsed range, THP switched off and on."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import PAGE, PROTS, SLOT_SIZE, MiB

from .builder import _Builder, _Seg
from .common import (
    TWO_M,
    _round_up,
)


def _thp_step(b: _Builder) -> None:
    """THP-only ops: COLLAPSE of an anon 2 MiB slot, COLLAPSE of shmem followed by what a
    program then does to the collapsed range (:func:`_collapse_refault`), or switching
    THP off and on."""
    rng = b.rng
    if rng.p(0.3):
        b.thp_switch(False)
        if rng.p(0.7):
            b.thp_switch(True)
        return
    # shmem: memfd/tmpfs segments and anon shared memory (a shmem object too)
    shmem = [(i, s) for i, lst in b.segs.items() for s in lst
             if s.obj is not None and s.kind != "file"
             and _round_up(s.start, TWO_M) + TWO_M <= s.end]
    if shmem and rng.p(0.8):
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
    lo = first + TWO_M * rng.randint(0, min(blocks, 16) - 1)
    length = TWO_M * (2 if lo + 2 * TWO_M <= s.end and rng.p(0.3) else 1)
    hi = lo + length
    write = s.share == "shared" and bool(s.prot & 2) and rng.p(0.7)
    if rng.p(0.85):
        b.touch(ident, lo, length, write, rng.pick_int([PAGE, 16 * PAGE, 64 * PAGE, MiB]),
                note="fill the page cache")
    b.madvise(ident, lo, length, "COLLAPSE", note="shmem THP")
    page = lo + PAGE * rng.randint(0, length // PAGE - 1)
    what = rng.weighted(_REFAULT_AFTER)
    if what == "dontneed":
        if rng.p(0.5):
            b.madvise(ident, lo, length, "DONTNEED")
        else:
            off, n = rng.sub_range(lo, hi, TWO_M)
            b.madvise(ident, off, n, "DONTNEED")
    elif what == "mprotect":
        names = {bits: name for name, bits in PROTS.items()}
        b.mprotect(ident, page, PAGE, "r")
        b.touch(ident, lo, length, False, 64 * PAGE)
        b.mprotect(ident, page, PAGE, names.get(s.prot, "rw"))
    elif what == "cold":
        advice = rng.pick_str(["COLD", "PAGEOUT"])
        if rng.p(0.5):
            b.madvise(ident, lo, length, advice)
        else:
            off, n = rng.sub_range(lo, hi, TWO_M)
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
        dst = _round_up(ext[1] if ext else hi, TWO_M) + rng.pick_int([0, 0, PAGE, MiB])
        if dst + length <= SLOT_SIZE:
            b.mremap(ident, lo, length, length, ident, dst)
            lo, hi = dst, dst + length
    elif what == "thp_off":
        b.thp_switch(False)
        b.madvise(ident, lo, length, "DONTNEED")
        b.touch(ident, lo, hi - lo, write, 64 * PAGE)
        b.thp_switch(True)
    if hi > lo:
        b.touch(ident, lo, hi - lo, write and rng.p(0.5), rng.pick_int([PAGE, 64 * PAGE]),
                note="refault")
