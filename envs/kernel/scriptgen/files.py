"""The actor of the ``file`` family: programs on files and shared memory."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import BACKING_SIZE, PAGE, GiB, KiB, MiB

from .actor import _Actor
from .common import (
    _POPULATING_ADVICES,
    TWO_M,
    _round_down,
    _round_up,
)


class _FileUser(_Actor):
    """A program on files and shared memory: one of a database mapping a big sparse
    file, a postgres-like shared buffer pool with forked backends, ZGC-like multi-mapped
    memfd (fd= views, punch to uncommit), ELF-like private file mappings with COW, or a
    log file written, truncated and grown again."""

    n_ids = 3

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.mode = rng.pick_str(["db", "pgshm", "zgc", "elf", "log"])
        a = self.ids[0]
        self.maps: list[tuple[int, int, int]] = []  # (ident, off, len)
        if self.mode == "db":
            self.size = rng.pow2(1 * GiB, 64 * GiB)
            ro = rng.p(0.5)
            b.mmap(a, "file", "shared", self.size, rng.pick_int([0, TWO_M, GiB]), ro=ro,
                   norsv=True, note="database file")
            self.ro = ro
            self.maps.append((a, b.seg_list(a)[0].start, self.size))
            if len(self.ids) > 1 and rng.p(0.5):  # a second view of a part, other offset
                foff = GiB * rng.randint(0, max(0, self.size // GiB - 1))
                b.mmap(self.ids[1], "file", "shared", min(self.size, GiB), TWO_M * 3,
                       fd=a, foff=foff, note="second view (same file)")
                self.maps.append((self.ids[1], TWO_M * 3, min(self.size, GiB)))
        elif self.mode == "pgshm":
            self.size = rng.pow2(128 * MiB, 2 * GiB)
            kind = rng.pick_str(["anon", "shmem"])
            b.mmap(a, kind, "shared", self.size, note="shared buffers")
            self.maps.append((a, 0, self.size))
            self.ro = False
        elif self.mode == "zgc":
            self.size = rng.pow2(256 * MiB, 4 * GiB)
            for k, ident in enumerate(self.ids):
                b.mmap(ident, "shmem", "shared", self.size, 4 * GiB * rng.randint(0, 4),
                       fd=None if k == 0 else a, norsv=True,
                       note="heap view" if k == 0 else "heap view (same memfd)")
                self.maps.append((ident, b.seg_list(ident)[-1].start, self.size))
            self.ro = False
        elif self.mode == "elf":
            text = _round_up(rng.lognormal_pages(2 * MiB, 1.0, 16) * PAGE)
            data = _round_up(rng.lognormal_pages(256 * KiB, 1.0, 4) * PAGE)
            base = TWO_M * rng.randint(0, 100)
            b.mmap(a, "file", "private", text, base, ro=True, note="text")
            b.mmap(a, "file", "private", data, base + text, foff=text, note="data (COW)")
            b.mmap(a, "anon", "private", 4 * PAGE + PAGE * rng.randint(0, 64),
                   base + text + data, note="bss")
            self.maps += [(a, base, text), (a, base + text, data)]
            self.size = text + data
            self.ro = True
        else:
            self.size = rng.pow2(16 * MiB, 1 * GiB)
            b.mmap(a, "file", "shared", self.size, TWO_M * rng.randint(0, 8),
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
        what = rng.weighted(table)
        if what == "read":
            off, length = rng.sub_range(lo, lo + size, 64 * MiB)
            self.touch_run(ident, off, length, False, rng.pick_int([16, 64, 256]))
        elif what == "write":
            off, length = rng.sub_range(lo, lo + size, 16 * MiB)
            self.touch_run(ident, off, length, True, rng.pick_int([16, 64, 128]))
        elif what in ("dontneed", "pageout", "cold", "remove", "willneed", "populate"):
            advice = {"dontneed": "DONTNEED", "pageout": "PAGEOUT", "cold": "COLD",
                      "remove": "REMOVE", "willneed": "WILLNEED",
                      "populate": "POPULATE_READ"}[what]
            cap = 4 * MiB if advice in _POPULATING_ADVICES else (16 * MiB if advice == "PAGEOUT"
                                                                  else None)
            off, length = rng.sub_range(lo, lo + size, cap)
            b.madvise(ident, off, length, advice)
        elif what == "punch":
            seg = b.seg_at(ident, lo)
            base = seg.foff - (lo - seg.start) if seg is not None and seg.obj else 0
            off, length = rng.sub_range(lo, lo + size, 256 * MiB)
            b.punch(ident, max(0, base + off - lo), length)
        elif what == "truncate":
            if self.mode in ("log", "db", "elf") and rng.p(0.7):
                new = rng.pick_int([0, _round_down(self.size // 2), self.size + PAGE,
                                      self.size - 5 * PAGE, BACKING_SIZE])
                b.truncate(a, max(0, new), note="truncate")
                if rng.p(0.6):  # a reader that did not notice: SIGBUS past EOF
                    off, length = rng.sub_range(lo, lo + size, 4 * MiB)
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
