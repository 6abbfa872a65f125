"""Actors of the guest-memory families: ``balloon`` (virtio-balloon and free page
reporting), ``virtio_mem`` and ``kdump`` (a dump of a ballooned guest)."""

from __future__ import annotations

from ptreclaim.envs.sim.opscript import PAGE, SLOT_SIZE, GiB, KiB, MiB

from .actor import _Actor
from .common import TWO_M, _fmt, _round_down


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
        self.size = rng.pow2(1 * GiB, 64 * GiB)
        self.base = rng.pick_int([0, 0, GiB, TWO_M * rng.randint(1, 100)])
        self.shared = rng.p(0.25) and self.size <= 16 * GiB
        self.locked = False
        if self.shared:
            b.mmap(self.ram, "shmem", "shared", self.size, self.base, note="memfd guest RAM")
        else:
            b.mmap(self.ram, "anon", "private", self.size, self.base,
                   norsv=self.size > 4 * GiB or rng.p(0.5), hugepage=self.huge(0.7),
                   note="guest RAM")
        if len(self.ids) > 1 and rng.p(0.5):
            b.mmap(self.ids[1], "anon", "private", 16 * MiB, note="vga vram")
            self.touch_run(self.ids[1], 0, 16 * MiB, True, 64)
        # boot: the guest zeroes and uses a part of its memory
        part = min(self.size, rng.pow2(64 * MiB, 4 * GiB))
        self.touch_run(self.ram, self.base, part, True, rng.randint(512, 2048))
        self.inflated: list[int] = []
        if rng.p(0.05):
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
        block = rng.randint(0, blocks - 1)
        count = rng.randint(3, 12)
        pages = sorted({rng.randint(0, 511) for _ in range(count)})
        if rng.p(0.3):  # a contiguous run
            start = rng.randint(0, 511 - count)
            pages = list(range(start, start + count))
        for i, pg in enumerate(pages):
            off = self.base + block * TWO_M + pg * PAGE
            self._discard(off, PAGE, "inflate" if i == 0 else "")
            self.inflated.append(off)

    def _report(self) -> None:
        rng = self.rng
        order = rng.pick_int([TWO_M, TWO_M, TWO_M, 4 * MiB])
        n = rng.randint(1, 6)
        blocks = self.size // order
        start = rng.randint(0, max(0, blocks - n))
        for i in range(n):
            k = start + i if rng.p(0.6) else rng.randint(0, blocks - 1)
            self._discard(self.base + k * order, order, "free page reporting" if i == 0 else "")

    def _deflate(self) -> None:
        rng = self.rng
        if not self.inflated:
            return self._report()
        n = min(len(self.inflated), rng.randint(1, 6))
        if rng.p(0.5):  # the guest reuses a whole block of returned pages
            off = _round_down(self.inflated[int(rng.integers(len(self.inflated)))], TWO_M)
            self.touch_run(self.ram, off, TWO_M, True, rng.pick_int([16, 64, 512]))
        else:
            for _ in range(n):
                off = self.inflated.pop(int(rng.integers(len(self.inflated))))
                self.b.touch(self.ram, off, PAGE, True, note="deflate")
        return None

    def _guest_write(self) -> None:
        rng = self.rng
        off, length = rng.sub_range(self.base, self.base + self.size, 64 * MiB)
        self.touch_run(self.ram, off, length, True, rng.randint(16, 512))

    def _guest_read(self) -> None:
        """The guest reads reported (now zero) memory."""
        off, length = self.rng.sub_range(self.base, self.base + self.size, 256 * MiB)
        self.touch_run(self.ram, off, length, False, 256)

    def _collapse(self) -> None:
        off = self.base + TWO_M * self.rng.randint(0, self.size // TWO_M - 1)
        self.b.madvise(self.ram, off, TWO_M, "COLLAPSE")

    def step(self) -> None:
        self.act([("inflate", 0.34, self._inflate), ("report", 0.22, self._report),
                  ("deflate", 0.2, self._deflate), ("guest", 0.16, self._guest_write),
                  ("read", 0.04, self._guest_read), ("fork", 0.03, self.b.fork),
                  ("collapse", 0.02 if self.b.thp else 0.0, self._collapse)])


class _VirtioMem(_Actor):
    """virtio-mem: a big device region; blocks (2 MiB .. 128 MiB, aligned) are plugged
    (optionally preallocated with POPULATE_WRITE) and used by the guest, unplugged with
    DONTNEED (anon) or punch/REMOVE (memfd or file backed), and all unplugged at reset."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.dev = self.ids[0]
        self.kind = rng.weighted([("anon", 0.6), ("shmem", 0.25), ("file", 0.15)])
        # x86 guests default to the THP size (2 MiB); bigger blocks are configured
        self.block = TWO_M if rng.p(0.4) else rng.pow2(4 * MiB, 128 * MiB)
        if self.kind == "anon":
            self.size = rng.pow2(4 * GiB, 256 * GiB)
        else:
            self.size = rng.pow2(4 * GiB, 32 * GiB)
        self.base = rng.pick_int([0, GiB, 4 * GiB])
        if self.base + self.size > SLOT_SIZE:
            self.base = 0
        self.foff = rng.pick_int([0, 0, GiB]) if self.kind != "anon" else 0
        self.remove_mode = rng.p(0.4)
        self.prealloc = rng.p(0.3)
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
        n = rng.randint(1, 4)
        k0 = rng.randint(0, self.nblocks - n)
        for k in range(k0, k0 + n):
            if k in self.plugged:
                continue
            self.plugged.add(k)
            off = self._off(k)
            if self.prealloc and self.block <= 8 * MiB and rng.p(0.7):
                self.b.madvise(self.dev, off, self.block, "POPULATE_WRITE", note="prealloc")
            self.touch_run(self.dev, off, self.block, True, rng.randint(4, 64))

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
        what = rng.weighted([("plug", 0.3), ("unplug", 0.3), ("use", 0.26), ("reset", 0.02),
                               ("fork", 0.03), ("read", 0.04), ("sub", 0.05)])
        if what == "plug" or (what in ("unplug", "use", "sub") and not self.plugged):
            self._plug()
        elif what == "unplug":
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            n = 1
            while k + n in self.plugged and n < 4 and rng.p(0.6):
                n += 1
            self._unplug_range(k, n, "unplug")
        elif what == "use":
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            off, length = rng.sub_range(self._off(k), self._off(k) + self.block)
            self.touch_run(self.dev, off, length, rng.p(0.7), 64)
        elif what == "sub":  # the guest frees part of a plugged block (not aligned)
            k = sorted(self.plugged)[int(rng.integers(len(self.plugged)))]
            off, length = rng.sub_range(self._off(k), self._off(k) + self.block, TWO_M)
            self.b.madvise(self.dev, off, length, "DONTNEED", note="partial discard")
        elif what == "reset":
            self._unplug_range(0, self.nblocks, "unplug all (reset)")
        elif what == "read":
            off, length = rng.sub_range(self.base, self.base + self.size, 4 * GiB)
            self.touch_run(self.dev, off, length, False, 128)
        else:
            self.b.fork()


class _Kdump(_Actor):
    """kdump of a ballooned guest: the guest used memory, much of it was DONTNEED'd
    (balloon, free page reporting), then the dump reads everything: zeropage tables
    everywhere; afterwards the host reclaims again."""

    n_ids = 2

    def setup(self) -> None:
        rng = self.rng
        b = self.b
        self.ram = self.ids[0]
        self.size = rng.pow2(2 * GiB, 32 * GiB)
        self.base = rng.pick_int([0, 0, GiB, 4 * MiB])
        b.mmap(self.ram, "anon", "private", self.size, self.base,
               norsv=self.size > 4 * GiB or rng.p(0.6), hugepage=self.huge(0.5),
               note="guest RAM")
        self.dump_pos = self.base
        self.dump_end = self.base + self.size
        self.stride = 0
        self.chunk = rng.pick_int([256 * MiB, 1 * GiB, 4 * GiB])
        # phases by share of the script: guest life, balloon, dump, aftermath
        self.ends = [int(self.b.target_ops * f) for f in (rng.uniform(0.1, 0.2),
                                                          rng.uniform(0.4, 0.55))]

    def _plan_dump(self) -> None:
        """Pick the dump's stride and extent so that it fits the remaining budget."""
        rng = self.rng
        left = int(self.b.budget * 0.85)
        stride = rng.pick_int([TWO_M, TWO_M, MiB, 512 * KiB, 64 * KiB])
        while self.size // stride > left and stride < TWO_M:
            stride *= 2
        self.stride = stride
        span = min(self.size, _round_down(max(stride, left * stride), TWO_M) or TWO_M)
        start = self.base + _round_down(rng.randint(0, self.size - span), GiB)
        self.dump_pos, self.dump_end = start, min(self.base + self.size, start + span)
        self.b.comment("crash: kdump reads the guest's memory")

    def step(self) -> None:
        rng = self.rng
        b = self.b
        hi = self.base + self.size
        if b.n_ops < self.ends[0]:  # guest life: use memory
            off, length = rng.sub_range(self.base, hi, 256 * MiB)
            self.touch_run(self.ram, off, length, True, rng.randint(128, 512))
        elif b.n_ops < self.ends[1]:  # balloon / reporting: DONTNEED most of it
            style = rng.weighted([("big", 0.45), ("aligned", 0.35), ("pages", 0.2)])
            if style == "big":
                off, length = rng.sub_range(self.base, hi)
                b.madvise(self.ram, off, length, "DONTNEED", note="balloon")
            elif style == "aligned":
                k = rng.randint(0, self.size // TWO_M - 8)
                b.madvise(self.ram, self.base + k * TWO_M, TWO_M * rng.randint(1, 8),
                          "DONTNEED", note="free page reporting")
            else:
                off = self.base + PAGE * rng.randint(0, self.size // PAGE - 1)
                b.madvise(self.ram, off, PAGE, "DONTNEED", note="balloon page")
        elif self.dump_pos < self.dump_end and b.budget > 16:  # the dump
            if not self.stride:
                self._plan_dump()
            length = min(self.chunk, self.dump_end - self.dump_pos)
            b.touch(self.ram, self.dump_pos, length, False, self.stride, note="dump")
            self.dump_pos += length
        else:  # after the dump
            what = rng.weighted([("fork", 0.15), ("dontneed", 0.45), ("reread", 0.15),
                                   ("munmap", 0.03), ("write", 0.15), ("report", 0.07)])
            if what == "fork":
                b.fork()
            elif what == "dontneed":
                off, length = rng.sub_range(self.base, hi)
                b.madvise(self.ram, off, length, "DONTNEED")
            elif what == "report":
                k = rng.randint(0, self.size // TWO_M - 8)
                b.madvise(self.ram, self.base + k * TWO_M, TWO_M * rng.randint(1, 8),
                          "DONTNEED", note="free page reporting")
            elif what == "reread":
                off, length = rng.sub_range(self.base, hi, 1 * GiB)
                b.touch(self.ram, off, length, False, max(self.stride, PAGE))
            elif what == "write":
                off, length = rng.sub_range(self.base, hi, 64 * MiB)
                self.touch_run(self.ram, off, length, True, 32)
            else:
                off, length = rng.sub_range(self.base, hi)
                b.munmap(self.ram, off, length)
