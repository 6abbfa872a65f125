"""virtio-mem: a VM whose memory is hot(un)plugged in aligned device blocks.

Source
------
* virtio spec v1.2, section 5.15 (memory device): the device exposes a
  region cut into ``block_size`` blocks (a power of two); the driver plugs
  and unplugs block ranges (``VIRTIO_MEM_REQ_PLUG``/``UNPLUG`` with an
  address and a block count) to reach the size the host requests.
* D. Hildenbrand, M. Schulz, "virtio-mem: Paravirtualized Memory
  Hot(Un)Plug", VEE 2021; Linux ``drivers/virtio/virtio_mem.c``: in
  sub-block mode the guest plugs into the lowest partly plugged Linux memory
  blocks (128 MiB) first and unplugs from the last memory block first,
  skipping sub-blocks it cannot offline at the moment (unmovable pages).
* QEMU ``hw/virtio/virtio-mem.c``: default block size is the THP size,
  2 MiB on x86-64 (1 MiB minimum, often configured up to 128 MiB); an
  unplug request discards its range with one ``ram_block_discard_range``.
* QEMU ``system/physmem.c`` ``ram_block_discard_range``: private anonymous
  RAM gets ``MADV_DONTNEED``; shared anonymous RAM (``share=on`` without an
  fd) gets ``MADV_REMOVE``; fd-backed RAM (``memory-backend-file``/memfd)
  gets ``fallocate(PUNCH_HOLE)``, which QEMU follows with ``MADV_DONTNEED``
  on its own mapping when the RAM uses base pages (``punch_then_dontneed:
  true``).  Without it the model sees what every *other* process that maps
  the same file sees (a vhost-user backend, for example): only the punch.

What it reproduces
------------------
The VMM process maps ``boot_mib`` of ordinary guest RAM (written at start)
and the virtio-mem device region of ``region_mib``.  Every
``resize_period_ticks`` the host requests a new plugged size, uniform in
[``min_plugged_mib``, ``max_plugged_mib``]; the guest plugs (lowest blocks
first) or unplugs (highest first) at ``rate_mib_per_tick`` and writes newly
plugged blocks at ``touch_mib_per_tick``.  Unplugged ranges are aligned to
the block size, so with ``backing: anon`` the discard frees their tables on
6.14+ (R6); with ``shmem`` (``MADV_REMOVE``) or ``file`` (punch only) the
tables stay, empty, until the next aligned DONTNEED or munmap (R13).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from ..config import ConfigError, check_range, check_ranges, ranged
from ..pagetable import PAGE, PMD_SPAN, AddressSpace, BackingFile
from ..units import MiB
from .balloon import index_runs
from .base import BASE, Workload


@dataclass(frozen=True)
class VirtioMemConfig:
    """Parameters of one VM with a virtio-mem device (sizes in MiB, rates per tick)."""

    #: Size of the device region (the most that can be plugged).
    region_mib: int = 4096
    #: Device block size: a power of two, 2 to 128 MiB (QEMU default: THP size).
    block_mib: int = ranged(2, 2, 128)
    #: Ordinary (boot) guest RAM, private anonymous, written at start.
    boot_mib: int = ranged(512, 0, 1 << 20)
    #: Backing of the device region: private ``anon``, shared anonymous
    #: ``shmem`` (discarded with MADV_REMOVE) or a shared ``file`` (punched).
    backing: Literal["anon", "shmem", "file"] = "anon"
    #: With ``backing: file``, follow the punch with MADV_DONTNEED, as QEMU does on
    #: its own mapping of base-page RAM (then the tables go on 6.14+).
    punch_then_dontneed: bool = False
    #: Plugged size requested by the host at start.
    initial_plugged_mib: int = 512
    #: Range of the plugged sizes the host requests later.
    min_plugged_mib: int = 256
    max_plugged_mib: int = 1024
    #: Ticks between two resize requests of the host.
    resize_period_ticks: int = ranged(150, 1, 10**7)
    #: Plug/unplug speed (32 blocks of 2 MiB a tick).
    rate_mib_per_tick: int = ranged(64, 1, 1 << 16)
    #: How fast the guest writes newly plugged memory.
    touch_mib_per_tick: int = ranged(64, 1, 1 << 16)
    #: Chance that the guest cannot unplug a given block right now (busy pages).
    unplug_busy_prob: float = ranged(0.1, 0.0, 0.95)
    #: Boot RAM written per tick at start.
    boot_fill_mib_per_tick: int = ranged(128, 2, 1 << 16)
    #: vCPU threads of the VMM process.
    vcpus: int = ranged(4, 1, 1024)

    def __post_init__(self) -> None:
        check_ranges(self, "virtio_mem.")
        if self.block_mib & (self.block_mib - 1):
            raise ConfigError(f"virtio_mem.block_mib: {self.block_mib} must be a power of two "
                              "(2 to 128)")
        check_range("virtio_mem.region_mib", self.region_mib, self.block_mib, 1 << 20)
        check_range("virtio_mem.min_plugged_mib", self.min_plugged_mib, 0, self.region_mib)
        check_range("virtio_mem.max_plugged_mib", self.max_plugged_mib, self.min_plugged_mib,
                    self.region_mib)
        check_range("virtio_mem.initial_plugged_mib", self.initial_plugged_mib, 0,
                    self.region_mib)


class VirtioMem(Workload):
    """A VM that plugs and unplugs virtio-mem blocks as the host resizes it.

    ``phase`` is ``boot`` then ``run``; ``plugged`` is the per-block state
    and ``requested`` the host's current request in blocks.
    """

    family: ClassVar[str] = "virtio_mem"
    Config: ClassVar[type[VirtioMemConfig]] = VirtioMemConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = (
        "resize_period_ticks", "rate_mib_per_tick", "touch_mib_per_tick", "unplug_busy_prob")

    config: VirtioMemConfig

    def start(self) -> None:
        c = self.config
        self.proc = self.spawn(cpus=c.vcpus)
        mm = self.proc.mm
        self.boot = c.boot_mib * MiB
        self.block = c.block_mib * MiB
        n_blocks = c.region_mib // c.block_mib
        # The device region lies above boot RAM, aligned like QEMU's device memory.
        self.region = BASE + ((self.boot + PMD_SPAN - 1) // PMD_SPAN) * PMD_SPAN
        size = n_blocks * self.block
        self.file: BackingFile | None = None
        if self.boot:
            mm.mmap(BASE, self.boot)
        if c.backing == "anon":
            mm.mmap(self.region, size)
        elif c.backing == "shmem":
            mm.mmap(self.region, size, kind="anon", shared=True)
        else:
            self.file = BackingFile("file", size)
            mm.mmap(self.region, size, kind="file", shared=True, file=self.file)
        self.plugged = np.zeros(n_blocks, dtype=bool)
        self.n_plugged = 0
        self.requested = self._blocks(c.initial_plugged_mib)
        self.queue: deque[int] = deque()  # plugged blocks the guest has not written yet
        self.head_done = 0  # bytes of the queue's first block already written
        self.filled = 0
        self.phase = "boot" if self.boot else "run"
        self.next_resize = -1

    def _blocks(self, mib: int) -> int:
        return min(len(self.plugged), mib // self.config.block_mib)

    # -- the tick -------------------------------------------------------------

    def step(self, tick: int) -> None:
        if not self.proc.runnable(tick):
            return
        c = self.config
        mm = self.proc.mm
        if self.phase == "boot":
            n = min(c.boot_fill_mib_per_tick * MiB, self.boot - self.filled)
            mm.touch(BASE + self.filled, n, True, PAGE)
            self.filled += n
            if self.filled >= self.boot:
                self.phase = "run"
            return
        if self.next_resize < 0:
            self.next_resize = tick + c.resize_period_ticks
        elif tick >= self.next_resize:
            mib = int(self.rng.integers(c.min_plugged_mib, c.max_plugged_mib + 1))
            self.requested = self._blocks(mib)
            self.next_resize = tick + c.resize_period_ticks
        rate = max(1, c.rate_mib_per_tick // c.block_mib)
        diff = self.requested - self.n_plugged
        if diff > 0:
            self._plug(min(diff, rate))
        elif diff < 0:
            self._unplug(mm, min(-diff, rate))
        self._touch(mm)

    def _plug(self, k: int) -> None:
        """Plug the ``k`` lowest unplugged blocks (the guest fills partly
        plugged memory blocks first)."""
        chosen = np.flatnonzero(~self.plugged)[:k]
        self.plugged[chosen] = True
        self.n_plugged += len(chosen)
        self.queue.extend(chosen.tolist())

    def _unplug(self, mm: AddressSpace, k: int) -> None:
        """Unplug up to ``k`` of the highest plugged blocks, skipping busy ones;
        each contiguous range is one request and one discard."""
        cand = np.flatnonzero(self.plugged)[::-1][:4 * k + 8]
        free = self.rng.random(len(cand)) >= self.config.unplug_busy_prob
        chosen = np.sort(cand[free][:k])
        self.plugged[chosen] = False
        self.n_plugged -= len(chosen)
        for a, b in index_runs(chosen):
            self._discard(mm, a * self.block, (b - a) * self.block)

    def _discard(self, mm: AddressSpace, off: int, length: int) -> None:
        """QEMU's ram_block_discard_range for the device region's backing."""
        backing = self.config.backing
        if backing == "anon":
            mm.madvise(self.region + off, length, "DONTNEED")
        elif backing == "shmem":
            mm.madvise(self.region + off, length, "REMOVE")
        else:
            assert self.file is not None
            mm.punch(self.file, off, length)
            if self.config.punch_then_dontneed:
                mm.madvise(self.region + off, length, "DONTNEED")

    def _touch(self, mm: AddressSpace) -> None:
        """The guest writes newly plugged blocks, ``touch_mib_per_tick`` a tick."""
        budget = self.config.touch_mib_per_tick * MiB
        ranges: list[list[int]] = []
        while budget > 0 and self.queue:
            blk = self.queue[0]
            if not self.plugged[blk]:
                self.queue.popleft()
                self.head_done = 0
                continue
            a = self.region + blk * self.block + self.head_done
            n = min(budget, self.block - self.head_done)
            budget -= n
            if ranges and ranges[-1][1] == a:
                ranges[-1][1] = a + n
            else:
                ranges.append([a, a + n])
            self.head_done += n
            if self.head_done >= self.block:
                self.queue.popleft()
                self.head_done = 0
        for a, b in ranges:
            mm.touch(a, b - a, True, PAGE)
