"""Actors of the ``layout`` family (VMA-structure churn) and of the ops that fail on
purpose, which the ``mixed`` family adds."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import PAGE, PROTS, SLOT_SIZE, GiB, MiB

from .actor import _Actor, _sparse_stride
from .builder import _Builder
from .common import (
    _POPULATING_ADVICES,
    MAX_IDENT,
    TWO_M,
    _round_down,
    _round_up,
)


def _mlock_or_munlock(b: _Builder, ident: int, off: int, length: int, lock: bool) -> None:
    """mlock (``lock``) or munlock [off, off + length) of ``ident``."""
    if lock:
        b.mlock(ident, off, length)
    else:
        b.munlock(ident, off, length)


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
        kind = rng.weighted([("anon", 0.65), ("file", 0.2), ("shmem", 0.15)])
        share = "private" if kind == "anon" and rng.p(0.85) else rng.pick_str(["private", "shared"])
        size = _round_up(rng.lognormal_pages(16 * MiB, 1.5, 1) * PAGE)
        size = min(size, 4 * GiB) + rng.jitter(0.2, 4)
        size = max(PAGE, size)
        ext = b.extent(ident)
        off = (ext[1] if ext else 0) + rng.pick_int([0, TWO_M, GiB]) + max(0, rng.jitter(0.3))
        off = _round_up(off)
        if off + size > SLOT_SIZE:
            off = 0
        b.mmap(ident, kind, share, size, off, ro=rng.p(0.1), norsv=rng.p(0.3),
               foff=GiB * rng.randint(0, 3) if kind != "anon" and rng.p(0.3) else 0,
               hugepage=kind == "anon" and self.huge(0.3),
               populate=size <= 4 * MiB and rng.p(0.1))

    def _sparse_touch(self, ident: int) -> None:
        ext = self.b.extent(ident)
        if ext is None:
            return
        lo, hi = ext
        self.b.touch(ident, lo, hi - lo, self.rng.p(0.7), _sparse_stride(hi - lo, 128))

    def _range(self, ident: int, max_len: int | None = None) -> tuple[int, int] | None:
        ext = self.b.extent(ident)
        if ext is None:
            return None
        lo, hi = ext
        if self.rng.p(0.7):  # usually inside one existing segment
            segs = self.b.seg_list(ident)
            s = segs[int(self.rng.integers(len(segs)))]
            lo, hi = s.start, s.end
        return self.rng.sub_range(lo, hi, max_len)

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
        what = rng.weighted([
            ("mprotect", 0.14), ("mlock", 0.05), ("forkflag", 0.07), ("access", 0.07),
            ("guard", 0.06), ("fixed", 0.06), ("munmap", 0.07), ("grow", 0.05),
            ("shrink", 0.04), ("move", 0.12), ("dontneed", 0.1), ("touch", 0.1),
            ("fork", 0.05), ("new", 0.02)])
        if what == "mprotect":
            b.mprotect(ident, off, length, rng.pick_str(["r", "none", "rw", "rw", "rx"]))
        elif what == "mlock":
            _mlock_or_munlock(b, ident, off, min(length, 4 * MiB), rng.p(0.6))
        elif what == "forkflag":
            b.madvise(ident, off, length,
                      rng.pick_str(["DONTFORK", "DOFORK", "WIPEONFORK", "KEEPONFORK"]))
        elif what == "access":
            adv = ["HUGEPAGE", "NOHUGEPAGE", "RANDOM", "SEQUENTIAL", "NORMAL"]
            b.madvise(ident, off, length, rng.pick_str(adv))
        elif what == "guard":
            if rng.p(0.6):
                b.madvise(ident, off, min(length, PAGE * rng.randint(1, 16)), "GUARD_INSTALL")
            else:
                b.madvise(ident, off, length, "GUARD_REMOVE")
        elif what == "fixed":
            kind = rng.weighted([("anon", 0.8), ("file", 0.1), ("shmem", 0.1)])
            b.mmap(ident, kind, "private" if kind == "anon" else rng.pick_str(
                ["private", "shared"]), length, off, fixed=True, norsv=rng.p(0.3))
        elif what == "munmap":
            b.munmap(ident, off, length)
        elif what == "grow":
            seg = b.seg_list(ident)[-1]
            grow = _round_up(rng.lognormal_pages(4 * MiB, 1.2) * PAGE)
            if seg.end + grow <= SLOT_SIZE:
                start = seg.start if rng.p(0.7) else _round_down(
                    seg.start + (seg.end - seg.start) // 2)
                b.mremap(ident, start, seg.end - start, seg.end - start + grow)
        elif what == "shrink":
            seg = b.seg_list(ident)[int(rng.integers(len(b.seg_list(ident))))]
            old = seg.end - seg.start
            if old > PAGE:
                cut = _round_up(rng.randint(PAGE, old - PAGE))
                if rng.p(0.3):  # across the ends of the following VMAs
                    old = min(SLOT_SIZE - seg.start, old + _round_up(rng.randint(0, 64 * MiB)))
                b.mremap(ident, seg.start, old, cut)
        elif what == "move":
            self._move(ident, off, length)
        elif what == "dontneed":
            b.madvise(ident, off, length, rng.pick_str(["DONTNEED"] * 4 + ["DONTNEED_LOCKED"]))
        elif what == "touch":
            b.touch(ident, off, length, rng.p(0.6), _sparse_stride(length, 256))
        elif what == "fork":
            b.fork()
        else:
            self._new_mapping(ident)

    def _move(self, ident: int, off: int, length: int) -> None:
        rng = self.rng
        b = self.b
        style = rng.weighted([("aligned", 0.35), ("unaligned", 0.3), ("multi", 0.25),
                                ("gib", 0.1)])
        if style == "multi":  # from the first segment's start over several VMAs and gaps
            ext = b.extent(ident)
            assert ext is not None
            segs = b.seg_list(ident)
            s = segs[int(rng.integers(len(segs)))]
            off = s.start
            length = min(ext[1] - off, _round_up(rng.randint(PAGE, 256 * MiB)))
        elif style == "aligned":
            off = _round_down(off, TWO_M)
            length = max(TWO_M, _round_down(length, TWO_M))
        elif style == "gib":
            off = _round_down(off, GiB)
            length = GiB
        dst = self.ids[int(rng.integers(len(self.ids)))]
        dext = b.extent(dst)
        base = dext[1] if dext and rng.p(0.7) else 0
        doff = _round_up(base, TWO_M) + TWO_M * rng.randint(0, 8)
        if style == "unaligned" or (style == "multi" and rng.p(0.5)):
            doff += off % TWO_M if rng.p(0.3) else PAGE * rng.randint(1, 511)
        elif style == "gib":
            doff = _round_up(base, GiB) + GiB * rng.randint(0, 2)
        if dst == ident and doff < off + length and doff + length > off:
            ext = b.extent(ident)
            doff = _round_up(max(off + length, ext[1] if ext else 0), TWO_M)
        if doff + length > SLOT_SIZE or off + length > SLOT_SIZE:
            return
        b.mremap(ident, off, length, length, dst, doff, dontunmap=rng.p(0.2))


class _Chaos(_Actor):
    """Ops that fail (or partly fail) on purpose: touches of holes, PROT_NONE and guard
    pages, DONTNEED on mlocked ranges, mremap from a hole, madvise/mprotect/mlock over
    gaps, advice the VMA refuses (REMOVE on private, FREE on files, WIPEONFORK on
    shared), punch on an ID without a file, unaligned starts."""

    def step(self) -> None:
        rng = self.rng
        b = self.b
        ident = rng.randint(0, MAX_IDENT)
        ext = b.extent(ident)
        lo, hi = ext if ext is not None else (0, 64 * MiB)
        # around the mapped area, a bit beyond it on both sides
        lo2 = max(0, lo - rng.pick_int([0, PAGE, TWO_M]))
        hi2 = min(SLOT_SIZE, hi + rng.pick_int([0, PAGE, TWO_M, 64 * MiB]))
        off, length = rng.sub_range(lo2, hi2, 256 * MiB)
        what = rng.weighted([("touch", 0.2), ("dontneed", 0.1), ("advice", 0.15),
                               ("mprotect", 0.08), ("mlock", 0.08), ("mremap", 0.1),
                               ("punch", 0.04), ("unaligned", 0.05), ("munmap", 0.05),
                               ("mmap", 0.08), ("locked", 0.07)])
        if what == "touch":
            b.touch(ident, off, length, rng.p(0.5), _sparse_stride(length, 64))
        elif what == "dontneed":
            b.madvise(ident, off, length, "DONTNEED")
        elif what == "advice":
            adv = rng.pick_str(["REMOVE", "FREE", "WIPEONFORK", "PAGEOUT", "COLD",
                                  "POPULATE_READ", "POPULATE_WRITE", "GUARD_INSTALL",
                                  "GUARD_REMOVE", "DONTNEED_LOCKED", "COLLAPSE"])
            if adv in _POPULATING_ADVICES:
                length = min(length, 2 * MiB)
            b.madvise(ident, off, length, adv)
        elif what == "mprotect":
            b.mprotect(ident, off, length, rng.pick_str(list(PROTS)))
        elif what == "mlock":
            _mlock_or_munlock(b, ident, off, min(length, 2 * MiB), rng.p(0.5))
        elif what == "locked":  # DONTNEED on an mlocked range
            length = min(length, 2 * MiB)
            b.mlock(ident, off, length)
            b.madvise(ident, off, length, rng.pick_str(["DONTNEED", "DONTNEED_LOCKED"]))
        elif what == "mremap":
            src = lo2 + PAGE * rng.randint(0, 16) * int(rng.p(0.5))
            src = _round_down(src)
            dst = rng.randint(0, MAX_IDENT)
            doff = TWO_M * rng.randint(0, 64) + PAGE * rng.randint(0, 1)
            if src + length <= SLOT_SIZE and doff + length <= SLOT_SIZE:
                if rng.p(0.7):
                    b.mremap(ident, src, length, length, dst, doff, dontunmap=rng.p(0.2))
                else:
                    b.mremap(ident, src, length, length + TWO_M if rng.p(0.5) else PAGE)
        elif what == "punch":
            b.punch(ident, off, length)
        elif what == "unaligned":
            op = rng.pick_str(["madvise", "munmap", "mprotect"])
            if op == "madvise":
                b.madvise(ident, off + rng.randint(1, PAGE - 1), length, "DONTNEED")
            elif op == "munmap":
                b.munmap(ident, off + 512, length)
            else:
                b.mprotect(ident, off, length + rng.randint(1, 100), "rw")
        elif what == "munmap":
            b.munmap(ident, off, length)
        else:
            b.mmap(ident, "anon", "private", length, off, norsv=rng.p(0.5))
