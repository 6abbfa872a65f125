"""Several processes reading one big sparse file through MAP_SHARED mappings.

Source
------
* mmap-based stores whose readers are separate processes: LMDB (every
  reader process maps the whole data file ``MAP_SHARED``; a lookup walks a
  B-tree: a few 4 KiB pages), the Prometheus TSDB and Lucene/Elasticsearch
  (``MMapDirectory``) index files, PostgreSQL-style forked backends.  Page
  cache is shared, page tables are not: each process that touches a 2 MiB
  slot of the file pays its own 4 KiB PTE table.
* ``shared/kernel/RULES.md``: R2 (a read fault on a file allocates the
  table like any fault), R8/R9 (such tables hold only page-cache entries:
  reconstructable, FILE class), R13 (``fallocate(PUNCH_HOLE)`` zaps the
  pages in every mapping and leaves the tables, now empty), R18 (fork copies
  no table of a ``MAP_SHARED`` file mapping: a forked reader starts with
  none).
* D. Hildenbrand, "[LSF/MM/BPF TOPIC] page table reclaim" (linux-mm, 2022):
  reclaiming such tables "is more problematic when having sparse files
  mapped into multiple processes" -- it needs the file's rmap lock
  (``i_mmap_rwsem``), which the reclaimer charges for FILE-class tables.

What it reproduces
------------------
One sparse ``file_gib`` file (a :class:`~..pagetable.BackingFile`), mapped
``MAP_SHARED`` over its whole length by ``readers`` processes.  Every tick,
every reader serves ``regions_per_tick`` requests; a request reads (or, for
``write_fraction`` of them, writes) ``pages_per_slot`` pages in each 2 MiB
slot of a random ``region_mib`` region of the file -- one strided ``touch``
call per request.  Its PTE tables grow as its coverage of the file does
(``1 - exp(-requests x region / file)``), and are FILE class throughout.

* With ``punch_prob`` per tick the database frees a random region of the file
  with ``fallocate(PUNCH_HOLE)``: the pages go from every reader, their
  tables stay, EMPTY.
* With ``restart_prob`` per reader and tick a reader exits (its tables are
  freed) and is replaced by a fresh fork of the first live reader (a
  connection-per-process server replacing a backend), which starts without
  tables and faults its own back in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..config import ConfigError, check_ranges, ranged
from ..pagetable import PAGE, PTE_SPAN, TASK_SIZE, BackingFile
from ..process import Process
from ..units import GiB, MiB
from .base import BASE, Workload


@dataclass(frozen=True)
class SharedFileConfig:
    """Parameters of one shared sparse file and its reader processes."""

    #: Size of the sparse file (64 GiB: 32768 PTE slots per full mapping).
    file_gib: int = ranged(64, 1, (TASK_SIZE - BASE) // GiB)
    #: Processes that map the whole file MAP_SHARED.
    readers: int = ranged(4, 1, 256)
    #: Requests per reader per tick.
    regions_per_tick: int = ranged(1, 1, 64)
    #: Bytes of the file one request touches (32 MiB = 16 slots): 4 readers x
    #: 16 slots = 64 new tables a tick while coverage is low; about 18k tables
    #: (72 MiB) after 300 ticks.
    region_mib: int = ranged(32, 2, 4096)
    #: Pages read in each 2 MiB slot of a request (a B-tree path, a chunk header).
    pages_per_slot: int = ranged(4, 1, 512)
    #: Share of requests that write (dirty shared page cache; still FILE class).
    write_fraction: float = ranged(0.1, 0.0, 1.0)
    #: Chance per tick that the database punches a hole of one region.
    punch_prob: float = ranged(0.01, 0.0, 1.0)
    #: Chance per reader and tick that it exits and a fresh fork replaces it.
    restart_prob: float = ranged(0.002, 0.0, 0.5)

    def __post_init__(self) -> None:
        check_ranges(self, "shared_file.")
        if self.region_mib % 2:
            raise ConfigError(f"shared_file.region_mib: {self.region_mib} must be even "
                              "(whole 2 MiB slots)")
        if self.region_mib > self.file_gib * 1024:
            raise ConfigError(f"shared_file.region_mib: {self.region_mib} MiB is larger "
                              f"than the file (shared_file.file_gib = {self.file_gib})")
        if 512 % self.pages_per_slot:
            raise ConfigError(f"shared_file.pages_per_slot: {self.pages_per_slot} must "
                              "divide 512 (an even stride inside each 2 MiB slot)")


class SharedFile(Workload):
    """Readers of one sparse file mapped MAP_SHARED (see the module docstring).

    ``readers`` holds the current reader processes (replaced ones drop
    out), ``file`` the shared :class:`BackingFile`; ``restarts`` and
    ``punches`` count those events.
    """

    family: ClassVar[str] = "shared_file"
    Config: ClassVar[type[SharedFileConfig]] = SharedFileConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ("file_gib", "write_fraction")

    config: SharedFileConfig

    def start(self) -> None:
        c = self.config
        self.size = c.file_gib * GiB
        self.file = BackingFile("file", self.size)
        self.region = c.region_mib * MiB
        self.n_regions = self.size // self.region
        self.stride = PTE_SPAN // c.pages_per_slot
        self.readers: list[Process] = []
        self.restarts = 0
        self.punches = 0
        self._serial = 0
        for _ in range(c.readers):
            self.readers.append(self._new_reader())

    def _new_reader(self) -> Process:
        """A reader: a fork of a live reader (no tables copied: R18), or the
        first process, which maps the file itself."""
        parent = next((r for r in self.readers if r.alive), None)
        p = self.spawn(f".r{self._serial}")
        self._serial += 1
        if parent is not None:
            p.mm = parent.mm.fork()
        else:
            p.mm.mmap(BASE, self.size, kind="file", shared=True, file=self.file,
                      noreserve=True)
        return p

    def step(self, tick: int) -> None:
        c = self.config
        rng = self.rng
        if c.restart_prob > 0:
            for i, r in enumerate(self.readers):
                if r.alive and rng.random() < c.restart_prob:
                    self.sim.exit_process(r, "reader restarted")
                    self.readers[i] = self._new_reader()
                    self.restarts += 1
        for r in self.readers:
            if not r.runnable(tick):
                continue
            for _ in range(c.regions_per_tick):
                k = int(rng.integers(self.n_regions))
                write = bool(rng.random() < c.write_fraction)
                # A random page inside each slot's stride window: not always page 0.
                off = int(rng.integers(self.stride // PAGE)) * PAGE
                r.mm.touch(BASE + k * self.region + off, self.region - off, write,
                           self.stride)
        if c.punch_prob > 0 and rng.random() < c.punch_prob:
            live = next((r for r in self.readers if r.alive), None)
            if live is not None:
                k = int(rng.integers(self.n_regions))
                live.mm.punch(self.file, k * self.region, self.region)
                self.punches += 1

    def expected_coverage(self, requests: int) -> float:
        """Share of the file's slots one reader has touched after ``requests``
        uniformly random requests (for tests and calibration)."""
        return 1.0 - math.exp(-requests / self.n_regions)


__all__ = ["SharedFile", "SharedFileConfig"]
