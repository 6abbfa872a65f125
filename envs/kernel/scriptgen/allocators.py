"""Actors of the ``allocator`` family: jemalloc, glibc malloc, an mmap/munmap
runtime and a JVM heap."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import PAGE, SLOT_SIZE, GiB, KiB, MiB

from .actor import _Actor
from .common import (
    TWO_M,
    _round_down,
    _round_up,
)


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
            size = rng.pow2(256 * MiB, 64 * GiB)
            norsv = size > 4 * GiB or rng.p(0.6)
            off = rng.pick_int([0, 0, TWO_M * rng.randint(1, 64), GiB * rng.randint(1, 8)])
            off = max(0, off + rng.jitter(0.15, 16))
            self.b.mmap(ident, "anon", "private", size, off, norsv=norsv, hugepage=self.huge(0.3),
                        note="arena")
            self.arenas.append({"id": ident, "lo": off, "hi": off + size, "cur": off})

    def _alloc(self) -> None:
        rng = self.rng
        a = self.arenas[int(rng.integers(len(self.arenas)))]
        pages = rng.lognormal_pages(160 * KiB, 1.2, 1, 2048)
        length = pages * PAGE
        if self.dirty and rng.p(0.3):  # reuse a purged hole near old extents
            _, o, ln = self.dirty[int(rng.integers(len(self.dirty)))]
            off = max(a["lo"], o + ln + PAGE * rng.randint(0, 64))
        elif a["cur"] > a["lo"] and rng.p(0.5):
            off = a["lo"] + PAGE * rng.randint(0, (a["cur"] - a["lo"]) // PAGE)
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
        plen = min(length, rng.lognormal_pages(48 * KiB, 0.8) * PAGE)
        poff = off + PAGE * rng.randint(0, (length - plen) // PAGE)
        advice = "FREE" if rng.p(0.15) else "DONTNEED"
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
        off, length = rng.sub_range(a["lo"], min(hi, a["hi"]), 512 * MiB)
        self.b.madvise(a["id"], off, length, "DONTNEED", note="large purge")
        self.dirty = [d for d in self.dirty
                      if not (d[0] == a["id"] and d[1] >= off and d[1] + d[2] <= off + length)]

    def _reset(self) -> None:
        """An arena is reset: all of it is purged at once."""
        a = self.arenas[int(self.rng.integers(len(self.arenas)))]
        self.b.madvise(a["id"], a["lo"], a["hi"] - a["lo"], "DONTNEED", note="arena reset")
        self.dirty = [d for d in self.dirty if d[0] != a["id"]]
        a["cur"] = a["lo"]

    def _thp_advice(self) -> None:
        rng = self.rng
        a = self.arenas[int(rng.integers(len(self.arenas)))]
        off, length = rng.sub_range(a["lo"], a["hi"], 64 * MiB)
        self.b.madvise(a["id"], off, length, rng.pick_str(["HUGEPAGE", "NOHUGEPAGE"]))

    def _retouch(self) -> None:
        rng = self.rng
        if not self.dirty:
            return self._alloc()
        ident, off, length = self.dirty[int(rng.integers(len(self.dirty)))]
        self.touch_run(ident, off, length, rng.p(0.7), 64)
        return None

    def step(self) -> None:
        self.act([("alloc", 0.36, self._alloc), ("purge", 0.46, self._purge_small),
                  ("muzzy", 0.05, self._purge_muzzy), ("large", 0.02, self._purge_large),
                  ("fork", 0.03, lambda: self.b.fork(note="bgsave")),
                  ("reset", 0.005, self._reset),
                  ("thp", 0.03 if self.b.thp else 0.0, self._thp_advice),
                  ("retouch", 0.04, self._retouch)])


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
        self.brk_lo = TWO_M * rng.randint(0, 64) + PAGE * rng.randint(1, 511)
        self.brk_hi = self.brk_lo + _round_up(132 * KiB)
        self.brk_top = self.brk_lo  # end of the used part
        b.mmap(self.heap_id, "anon", "private", self.brk_hi - self.brk_lo, self.brk_lo,
               hugepage=self.huge(0.3), note="brk heap")
        # Thread arenas: 64 MiB heaps, 64 MiB aligned, PROT_NONE until used.
        self.heaps: list[list[int]] = []
        for k in range(rng.randint(1, 3)):
            lo = 64 * MiB * (k * 2 + rng.randint(0, 1))
            b.mmap(self.arena_id, "anon", "private", 64 * MiB, lo, norsv=True)
            b.mprotect(self.arena_id, lo, 64 * MiB, "none", note="reserve")
            size = _round_up(132 * KiB)
            b.mprotect(self.arena_id, lo, size, "rw")
            self.heaps.append([lo, size])
        self.chunks: list[tuple[int, int]] = []
        self.chunk_top = 256 * GiB  # mmap'd chunks are placed top-down, adjacent

    def _brk_alloc(self) -> None:
        rng = self.rng
        length = rng.lognormal_pages(512 * KiB, 1.3, 1, 16384) * PAGE
        if rng.p(0.3) and self.brk_top - self.brk_lo > length:  # reuse freed chunks
            off = self.brk_lo + PAGE * rng.randint(0, (self.brk_top - self.brk_lo - length)
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
        if rng.p(0.6) and self.brk_top - self.brk_lo > TWO_M:
            ident, lo, hi = self.heap_id, self.brk_lo, self.brk_top
        else:
            h = self.heaps[int(rng.integers(len(self.heaps)))]
            ident, lo, hi = self.arena_id, h[0], h[0] + h[1]
        if hi - lo <= 2 * PAGE:
            return
        length = min(hi - lo - PAGE, rng.lognormal_pages(8 * MiB, 1.0, 64) * PAGE)
        if rng.p(0.6) and hi - lo > 2 * TWO_M:  # free chunks spanning whole 2 MiB slots
            off = _round_up(lo + PAGE, TWO_M)
            off += TWO_M * rng.randint(0, max(0, (hi - off) // TWO_M - 1))
            length = max(TWO_M, _round_down(min(length, hi - off), TWO_M))
        else:
            off = lo + PAGE * rng.randint(1, max(1, (hi - lo - length) // PAGE))
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
        if rng.p(0.6) and size < 64 * MiB:  # grow_heap
            new = min(64 * MiB, _round_up(size + rng.lognormal_pages(1 * MiB, 1.0) * PAGE))
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
        if self.chunks and rng.p(0.45):
            off, length = self.chunks.pop(int(rng.integers(len(self.chunks))))
            b.munmap(self.chunk_id, off, length, note="free mmap'd chunk")
            return
        if self.chunks and rng.p(0.2):  # realloc: grow in place when the space is free
            i = int(rng.integers(len(self.chunks)))
            off, length = self.chunks[i]
            grow = _round_up(rng.lognormal_pages(256 * KiB, 1.0) * PAGE)
            b.mremap(self.chunk_id, off, length, length + grow, note="realloc")
            if b.seg_at(self.chunk_id, off) is not None:
                self.chunks[i] = (off, length + grow)
            return
        length = _round_up(rng.lognormal_pages(512 * KiB, 1.2, 33, 16384) * PAGE + PAGE)
        self.chunk_top -= length
        b.mmap(self.chunk_id, "anon", "private", length, self.chunk_top, note="malloc > 128K")
        self.touch_run(self.chunk_id, self.chunk_top, length, True, 32)
        self.chunks.append((self.chunk_top, length))

    def step(self) -> None:
        self.act([("brk", 0.3, self._brk_alloc), ("trim", 0.16, self._trim),
                  ("shrink", 0.05, self._brk_shrink), ("arena", 0.2, self._arena),
                  ("chunk", 0.25, self._chunk), ("fork", 0.04, self.b.fork)])


class _MunmapRuntime(_Actor):
    """A runtime that gets memory by mmap and returns it by munmap: over-sized mmap then
    trimming head and tail to align big chunks, partial unmaps, holes re-mapped, realloc
    by in-place grow or move, and a scavenger releasing 64 KiB..2 MiB with DONTNEED."""

    n_ids = 2

    def setup(self) -> None:
        self.cur = {i: TWO_M * self.rng.randint(0, 512) for i in self.ids}
        self.live: list[tuple[int, int, int]] = []
        self.holes: list[tuple[int, int, int]] = []

    def _map(self) -> None:
        rng = self.rng
        b = self.b
        ident = self.ids[int(rng.integers(len(self.ids)))]
        if self.holes and rng.p(0.25):
            ident, off, length = self.holes.pop(int(rng.integers(len(self.holes))))
            b.mmap(ident, "anon", "private", length, off, note="reuse hole")
        else:
            length = rng.pick_int([64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 64 * MiB])
            length += rng.jitter(0.2, 4) if length > 64 * KiB else 0
            off = self.cur[ident] + PAGE * rng.randint(0, 16) * int(rng.p(0.3))
            if length >= TWO_M and rng.p(0.6):
                # aligned allocation: map size + align, unmap the misaligned head and tail
                align = TWO_M if length < 64 * MiB else 64 * MiB
                big = length + align
                b.mmap(ident, "anon", "private", big, off, norsv=rng.p(0.5))
                start = _round_up(off, align)
                if start > off:
                    b.munmap(ident, off, start - off, note="trim head")
                if off + big > start + length:
                    b.munmap(ident, start + length, off + big - start - length,
                             note="trim tail")
                off, self.cur[ident] = start, off + big
            else:
                b.mmap(ident, "anon", "private", length, off, norsv=rng.p(0.3))
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
        if rng.p(0.3) and length > 8 * PAGE:  # give back the tail only
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
        grow = _round_up(rng.pick_int([64 * KiB, 1 * MiB, TWO_M, 8 * MiB]))
        if b.is_free(ident, off + length, off + length + grow) and rng.p(0.6) and \
                off + length + grow <= SLOT_SIZE:
            b.mremap(ident, off, length, length + grow, note="realloc in place")
            self.live[i] = (ident, off, length + grow)
        else:
            dst = self.ids[int(rng.integers(len(self.ids)))]
            doff = self.cur[dst] + (rng.pick_int([0, TWO_M]) if rng.p(0.5) else
                                    PAGE * rng.randint(1, 511))
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
        unit = rng.pick_int([64 * KiB, 64 * KiB, 256 * KiB, TWO_M])
        if length < unit:
            unit = _round_down(length) or PAGE
        poff = off + unit * rng.randint(0, (length - unit) // unit)
        self.b.madvise(ident, poff, unit, "DONTNEED", note="scavenge")
        return None

    def _retouch(self) -> None:
        if not self.live:  # nothing to touch again: the runtime forks instead
            self.b.fork()
            return
        ident, off, length = self.live[int(self.rng.integers(len(self.live)))]
        self.touch_run(ident, off, length, self.rng.p(0.6), 64)

    def step(self) -> None:
        self.act([("map", 0.35, self._map), ("free", 0.3, self._free),
                  ("realloc", 0.1, self._realloc), ("scavenge", 0.15, self._scavenge),
                  ("retouch", 0.07, self._retouch), ("fork", 0.03, self.b.fork)])


class _Jvm(_Actor):
    """JVM-like heap: a huge norsv reservation made PROT_NONE, regions committed with
    MAP_FIXED (or mprotect rw), uncommitted by MAP_FIXED norsv re-mapping + PROT_NONE or
    DONTNEED + PROT_NONE; code cache made rwx; thread stacks with PROT_NONE guards."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.heap, self.code, self.stacks = self.ids
        self.size = rng.pow2(1 * GiB, 32 * GiB)
        self.region = max(MiB, min(32 * MiB, rng.pow2(1 << 20, 1 << 25)))
        self.base = rng.pick_int([0, GiB, 32 * GiB])
        b.mmap(self.heap, "anon", "private", self.size, self.base, norsv=True, note="reserve")
        b.mprotect(self.heap, self.base, self.size, "none")
        nreg = self.size // self.region
        self.committed = [False] * nreg
        init = rng.randint(2, min(nreg, 64))
        self._commit(0, init)
        if self.huge(0.6):
            b.madvise(self.heap, self.base, self.size, "HUGEPAGE", note="UseTransparentHugePages")
        if rng.p(0.25):
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
        for _ in range(rng.randint(1, 3)):
            self._thread_start()

    def _commit(self, first: int, count: int) -> None:
        rng = self.rng
        off = self.base + first * self.region
        length = count * self.region
        if rng.p(0.6):
            self.b.mmap(self.heap, "anon", "private", length, off, fixed=True, note="commit")
        else:
            self.b.mprotect(self.heap, off, length, "rw", note="commit")
        for i in range(first, first + count):
            self.committed[i] = True

    def _uncommit(self, first: int, count: int) -> None:
        rng = self.rng
        off = self.base + first * self.region
        length = count * self.region
        if rng.p(0.6):
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
        limit = self.rng.randint(1, 16)
        while (first + count < len(self.committed) and self.committed[first + count] == want
               and count < limit):
            count += 1
        return first, count

    def _thread_start(self) -> None:
        rng = self.rng
        b = self.b
        size = rng.pick_int([256 * KiB, 512 * KiB, 1 * MiB, 8 * MiB]) + PAGE
        off = self.stack_cur
        self.stack_cur += size + PAGE * rng.randint(0, 4) * int(rng.p(0.5))
        b.mmap(self.stacks, "anon", "private", size, off, norsv=rng.p(0.5), note="stack")
        guard = PAGE * rng.pick_int([1, 1, 4, 5])
        b.mprotect(self.stacks, off, guard, "none", note="guard pages")
        self.touch_run(self.stacks, off + size - 4 * PAGE * rng.randint(1, 8),
                       4 * PAGE * rng.randint(1, 8), True, 64)
        self.threads.append(off)
        self._sizes[off] = size

    def step(self) -> None:
        rng = self.rng
        b = self.b
        what = rng.weighted([("alloc", 0.36), ("gc", 0.12), ("uncommit", 0.12),
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
                sub = min(length, rng.lognormal_pages(512 * KiB, 1.2) * PAGE)
                o = off + PAGE * rng.randint(0, (length - sub) // PAGE)
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
            if self.threads and rng.p(0.4):
                off = self.threads.pop(int(rng.integers(len(self.threads))))
                b.munmap(self.stacks, off, self._sizes[off], note="thread exit")
            elif self.stack_cur < 100 * GiB:
                self._thread_start()
        elif what == "code":
            if self.code_top < self.code_size and rng.p(0.5):
                grow = min(self.code_size - self.code_top, 64 * KiB * rng.randint(1, 40))
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
