"""The actor of the ``hog`` family: a sparse page-table hog."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import PAGE, SLOT_SIZE, GiB

from .actor import _Actor
from .common import (
    TWO_M,
    _round_down,
    _round_up,
)


class _Hog(_Actor):
    """A sparse page-table hog: huge norsv mappings, one write (or a read: zeropage
    variant) every 2 MiB -- or every 1 GiB to hog PMD tables -- over part of them,
    re-touching after its tables were reclaimed, with occasional DONTNEEDs and forks."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        self.write = rng.p(0.6)
        self.regions: list[tuple[int, int, int]] = []
        for ident in self.ids[:rng.randint(1, len(self.ids))]:
            size = rng.pick_int([16 * GiB, 64 * GiB, 128 * GiB, 256 * GiB, 448 * GiB,
                                   511 * GiB])
            off = rng.pick_int([0, 0, TWO_M, GiB]) + max(0, rng.jitter(0.3, 16))
            size = min(size, SLOT_SIZE - off)
            kind = rng.pick_str(["anon"] * 5 + ["shmem"]) if size <= 64 * GiB else "anon"
            self.b.mmap(ident, kind, "private", size, off, norsv=True,
                        hugepage=kind == "anon" and self.huge(0.3), note="hog region")
            self.regions.append((ident, off, size))
        self.touched: list[tuple[int, int, int, int]] = []
        # a pass costs at most this many accesses, so that re-touches fit as well
        self.pass_cap = max(64, self.b.budget // rng.randint(8, 16))

    def _hog(self) -> None:
        rng = self.rng
        ident, lo, size = self.regions[int(rng.integers(len(self.regions)))]
        stride = rng.pick_int([TWO_M] * 8 + [GiB, TWO_M + PAGE])
        n = rng.randint(self.pass_cap // 4, self.pass_cap)
        length = min(size, stride * n)
        align = GiB if rng.p(0.5) else TWO_M
        off = lo + _round_down(rng.randint(0, max(0, size - length)), align)
        off = max(lo, off + rng.jitter(0.2, 4))
        length = _round_up(min(length, lo + size - off))
        write = self.write if rng.p(0.9) else not self.write
        if self.b.touch(ident, off, length, write, stride, note="hog"):
            self.touched.append((ident, off, length, stride))
        else:
            self._cheap()

    def _cheap(self) -> None:
        """What a hog does once it has used its touch budget."""
        rng = self.rng
        b = self.b
        what = rng.weighted([("dontneed", 0.6), ("fork", 0.2), ("mprotect", 0.15),
                               ("munmap", 0.05)])
        ident, lo, size = self.regions[int(rng.integers(len(self.regions)))]
        if what == "dontneed":
            off, length = rng.sub_range(lo, lo + size, 64 * GiB)
            b.madvise(ident, off, length, "DONTNEED")
        elif what == "fork":
            b.fork(note="fork copies every table of a written hog")
        elif what == "mprotect":
            off, length = rng.sub_range(lo, lo + size)
            b.mprotect(ident, off, length, rng.pick_str(["r", "rw", "rw"]))
        else:
            off, length = rng.sub_range(lo, lo + size, 64 * GiB)
            b.munmap(ident, off, length)

    def step(self) -> None:
        rng = self.rng
        b = self.b
        what = rng.weighted([("hog", 0.25), ("reclaim", 0.2), ("retouch", 0.2),
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
