"""A periodic job over a sparse mapped index: long cold phases, then hot phases
that re-read part of it.  Its page tables turn from cold to hot and back.

Source
------
* Periodic work on memory-mapped data is the common case, not the exception:
  the Prometheus TSDB keeps its chunks in files it ``mmap``\\s and reads them
  when rule evaluation (``evaluation_interval``, default 1 min), queries or the
  two-hourly compaction come (Prometheus docs, "Storage"); Lucene/Elasticsearch
  search an ``MMapDirectory`` index whose query load follows the day; LMDB
  readers, cron and systemd-timer batch jobs (reports, backups, ``updatedb``)
  wake up, walk part of a big mapping and sleep again.  Between two runs the
  page cache and the page tables stay: nothing unmaps them.
* A datacenter's load follows the day (Verma et al., "Large-scale cluster
  management at Google with Borg", EuroSys 2015; Tirmazi et al., "Borg: the
  Next Generation", EuroSys 2020): the same index is hot in the day's peak and
  cold at night.
* Sparse reads cost a PTE table per 2 MiB they land in (``shared/kernel/RULES.md``
  R2); the tables of a read-only file mapping hold only page-cache entries
  (R8/R9: FILE class, reconstructable), those of never-written anonymous memory
  only the shared zero page (``do_anonymous_page``: ZERO class).  A reclaimed
  table comes back on the next access: a table allocation and a minor fault per
  entry (``filemap_map_pages`` maps the cached pages again; a read of a hole maps
  the zero page again).
* Which tables a reclaimer should take is the MGLRU question: x86 sets the
  accessed bit on non-leaf PMD entries (``CONFIG_ARCH_HAS_NONLEAF_PMD_YOUNG``) and
  MGLRU's page-table walk skips PTE tables whose PMD entry is old
  (``mm/vmscan.c`` ``walk_pmd_range``).  Here that bit is right during a cold
  phase and wrong one period later: the idle tables are the ones the next hot
  phase reads again.

The real periods are minutes to hours; a scenario lasts one or two simulated
minutes, so the phases here are compressed to seconds.  What a policy must
learn from them (tables idle for a while come back, and when) does not depend
on the real length.

What it reproduces
------------------
One process (``threads`` threads: TLB-flush IPIs) maps ``region_gib`` with
``MAP_NORESERVE``: a sparse index file mapped read-only and ``MAP_SHARED``
(``backing: file``: FILE-class tables), or never-written anonymous memory it
only reads (``backing: zero``: ZERO-class tables).  Its working set is
``tables`` 2 MiB slots spread evenly over the mapping (slot ``i`` at
``i * spacing``), ``pages_per_slot`` pages read in each.

1. **load**: the job opens the index and reads the whole working set once,
   ``load_tables_per_tick`` slots a tick: ``tables`` PTE tables.
2. **cold**: for ``cold_ticks`` ticks (each cold phase lasts ``cold_ticks`` times
   ``U(1 - cold_spread, 1 + cold_spread)``, rounded) the job sleeps; with
   ``cold_tables_per_tick > 0`` a background probe (a health check, a
   monitoring scrape) reads that many consecutive slots from a random one.
3. **hot**: for ``hot_ticks`` ticks the job re-reads a window of
   ``hot_fraction`` of the working set that starts at a random slot (wrapping),
   ``hot_tables_per_tick`` slots a tick, sweeping the window again and again.
   Then cold again, and so on; ``cycles`` counts the hot phases begun.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from ..config import ConfigError, check_ranges, ranged
from ..pagetable import PAGE, PTE_SPAN, TASK_SIZE, VM_READ, BackingFile
from ..units import GiB
from .base import BASE, Workload

PhasedBacking = Literal["file", "zero"]


@dataclass(frozen=True)
class PhasedConfig:
    """Parameters of one periodic job (sizes in GiB and 2 MiB slots, rates per tick)."""

    #: ``file`` (a read-only MAP_SHARED index: FILE-class tables) or ``zero`` (reads of
    #: never-written anonymous memory: ZERO-class tables).
    backing: PhasedBacking = "file"
    #: The sparse mapping: a 64 GiB index (32768 slots).
    region_gib: int = ranged(64, 1, (TASK_SIZE - BASE) // GiB)
    #: Working-set slots, one PTE table each: 2048 tables (8 MiB of page tables, one
    #: table per 32 MiB of the default index), about what one reader of the
    #: shared_file family reaches in a minute.
    tables: int = ranged(2048, 1, 1 << 22)
    #: Pages read in each working-set slot (a B-tree path, a chunk header and its data).
    pages_per_slot: int = ranged(2, 1, 512)
    #: Slots read per tick while loading: 256 (the whole default set in 8 ticks).
    load_tables_per_tick: int = ranged(256, 1, 1 << 20)
    #: Mean ticks of a cold phase: 200 (20 s at 100 ms ticks; see the module's note on
    #: compressed time).
    cold_ticks: int = ranged(200, 1, 10**7)
    #: A cold phase lasts ``cold_ticks`` times U(1 - spread, 1 + spread): timers drift,
    #: and load that follows the day is quasi-periodic, not a metronome.
    cold_spread: float = ranged(0.25, 0.0, 0.9)
    #: Ticks of a hot phase: 60 (6 s).
    hot_ticks: int = ranged(60, 1, 10**7)
    #: Share of the working set a hot phase re-reads (today's segments, the queried
    #: part of the index).
    hot_fraction: float = ranged(0.5, 0.0, 1.0, lo_open=True)
    #: Slots re-read per hot tick: 128 sweep the default hot window (1024 slots) in
    #: 8 ticks, so every hot table is touched about once a second.
    hot_tables_per_tick: int = ranged(128, 1, 1 << 20)
    #: Consecutive slots a background probe reads per cold tick (0: none).
    cold_tables_per_tick: int = ranged(0, 0, 1 << 20)
    #: Threads of the process (TLB-flush IPIs on reclaim).
    threads: int = ranged(4, 1, 1024)

    def __post_init__(self) -> None:
        if self.backing not in ("file", "zero"):
            raise ConfigError(f"phased.backing: {self.backing!r} is not one of 'file', 'zero'")
        check_ranges(self, "phased.")
        if self.tables * PTE_SPAN > self.region_gib * GiB:
            raise ConfigError(f"phased.tables: {self.tables} slots of 2 MiB do not fit in "
                              f"phased.region_gib = {self.region_gib}; lower tables or "
                              "raise region_gib")
        if 512 % self.pages_per_slot:
            raise ConfigError(f"phased.pages_per_slot: {self.pages_per_slot} must divide 512 "
                              "(an even stride inside each 2 MiB slot)")


class Phased(Workload):
    """A periodic job over a sparse mapped index (see the module docstring).

    ``phase`` is ``load``, ``cold`` or ``hot``; ``left`` the ticks left in a cold or
    hot phase; ``hot_start``/``hot_n`` the working-set slots of the current (or
    last) hot window; ``cycles`` the hot phases begun.
    """

    family: ClassVar[str] = "phased"
    Config: ClassVar[type[PhasedConfig]] = PhasedConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ("tables", "cold_ticks", "hot_ticks")

    config: PhasedConfig

    def start(self) -> None:
        c = self.config
        self.proc = self.spawn(cpus=c.threads)
        size = c.region_gib * GiB
        # Whole 2 MiB slots between two working-set slots: one table per slot read.
        self.spacing = size // c.tables // PTE_SPAN * PTE_SPAN
        self.page_stride = PTE_SPAN // c.pages_per_slot
        if c.backing == "file":
            index = BackingFile("file", size)
            self.proc.mm.mmap(BASE, size, kind="file", shared=True, prot=VM_READ, file=index,
                              noreserve=True)
        else:
            self.proc.mm.mmap(BASE, size, noreserve=True)
        self.phase = "load"
        self.pos = 0  # slots loaded so far
        self.left = 0
        self.hot_start = 0
        self.hot_n = max(1, round(c.hot_fraction * c.tables))
        self.cursor = 0  # next slot of the hot window, relative to its start
        self.cycles = 0

    def step(self, tick: int) -> None:
        if not self.proc.runnable(tick):
            return
        c = self.config
        if self.phase == "load":
            n = min(c.load_tables_per_tick, c.tables - self.pos)
            self._read(self.pos, n)
            self.pos += n
            if self.pos >= c.tables:
                self._begin_cold()
        elif self.phase == "cold":
            if c.cold_tables_per_tick:
                first = int(self.rng.integers(c.tables))
                self._read_wrapped(first, min(c.cold_tables_per_tick, c.tables))
            self.left -= 1
            if self.left <= 0:
                self._begin_hot()
        else:
            m = min(c.hot_tables_per_tick, self.hot_n)
            a = min(m, self.hot_n - self.cursor)
            self._read_wrapped(self.hot_start + self.cursor, a)
            if m > a:
                self._read_wrapped(self.hot_start, m - a)
            self.cursor = (self.cursor + m) % self.hot_n
            self.left -= 1
            if self.left <= 0:
                self._begin_cold()

    def _begin_cold(self) -> None:
        c = self.config
        self.phase = "cold"
        factor = 1.0
        if c.cold_spread > 0:
            factor = 1.0 - c.cold_spread + 2.0 * c.cold_spread * float(self.rng.random())
        self.left = max(1, round(c.cold_ticks * factor))

    def _begin_hot(self) -> None:
        self.phase = "hot"
        self.hot_start = int(self.rng.integers(self.config.tables))
        self.cursor = 0
        self.left = self.config.hot_ticks
        self.cycles += 1

    def _read_wrapped(self, first: int, n: int) -> None:
        """Read ``n`` consecutive working-set slots from ``first`` (both taken modulo
        the working set, which wraps)."""
        tables = self.config.tables
        first %= tables
        a = min(n, tables - first)
        self._read(first, a)
        if n > a:
            self._read(0, n - a)

    def _read(self, first: int, n: int) -> None:
        """Read ``pages_per_slot`` pages of working-set slots ``first .. first + n - 1``:
        one strided touch per page offset (one access per slot each)."""
        mm = self.proc.mm
        start = BASE + first * self.spacing
        length = (n - 1) * self.spacing + PAGE
        for j in range(self.config.pages_per_slot):
            mm.touch(start + j * self.page_stride, length, False, self.spacing)

    def slot_of(self, i: int) -> int:
        """The PTE slot (address >> 21) of working-set slot ``i``."""
        return (BASE + i * self.spacing) // PTE_SPAN


__all__ = ["Phased", "PhasedConfig"]
