"""Kernel designs for page-table reclaim, as options of the model.

The page-table model follows Linux 6.18, whose only reclaim of PTE tables is the on-zap rule
of ``CONFIG_PT_RECLAIM`` (6.14+; ``pt_reclaim: false`` is a kernel before it).  This module
adds the designs that were proposed instead or on top, so that the same seeded workloads and
the same real traces can run under each (``scripts/whatif.py``).  A scenario picks one with
``mechanism.design``; with none (the default) nothing here runs and every result is the
model's as before.  :data:`DESIGNS` gives each design's source and the size of its kernel
change.

* ``none``: a kernel before 6.14: only munmap and exit free PTE tables.
* ``on_zap``: 6.14+ as measured: a ``MADV_DONTNEED`` that covers a whole aligned 2 MiB frees
  its empty table (RULES R6-R9).
* ``refcount``: Qi Zheng's 2021 series: every PTE table counts its non-none entries, and
  the zap that clears the last one frees the table, whatever the zap was (a ``MADV_DONTNEED``
  of any length, munmap of part of a slot, ``PAGEOUT``, punch, truncate, ``GUARD_REMOVE``).
  The model frees, after each zap, every table it touched that is left empty (a slot that no
  VMA overlaps any more is left to munmap's ``free_pgtables``, which frees it anyway).
* ``madvise``: ``MADV_RECLAIM_PGTABLES``, the seed's "easiest solution": the application
  asks, for a range, that the PTE tables holding nothing be freed.  The allocator and balloon
  workloads issue it at their purge points; a replayed trace (a recorded program has no such
  call) issues it over each recorded ``MADV_DONTNEED`` range, as an allocator patched to
  follow every purge with it would (``advice_traces``).
* ``scan_*``: an asynchronous scanner (a kernel thread, khugepaged-like) that wakes every
  ``scanner.interval_ticks`` and examines ``scanner.budget`` tables of each process from a
  per-process cursor, freeing the empty (and, with ``depth`` 1, zero-page-only) ones.  Four
  variants: it takes ``mmap_lock`` for write (``scan_mmap_write``: the process's faults wait
  for the whole pass) or only the PMD and PTE locks of each table it frees
  (``scan_pmd_lock``); and it reads every table (no suffix) or first test-and-clears the
  PMD's young bit and reads only tables idle for ``scanner.min_idle`` rounds (``_young``:
  hot tables cost a bit clear, not a 512-entry read, and are not freed to be re-faulted).
* ``limits``: automatic per-process soft and hard limits: above ``limits.soft_mib`` of page
  tables a process's empty and zero tables are reclaimed while the normal zone is below its
  low watermark (where kswapd wakes); above ``limits.hard_mib`` its table allocations fail
  and it is throttled or killed (``machine.hard_limit_action``).

Every design but ``none`` builds on 6.14's on-zap rule, which is why a scenario with
``pt_reclaim: false`` may only choose ``none``.  Costs are the :class:`~.costs.CostModel`'s:
scans, frees, locks and TLB flushes as :mod:`.reclaim` charges them, the refcount's tax on
every fault (``refcount_fault_us``) and a system call per advice (``syscall_us``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, get_args

import numpy as np

from .config import ConfigError, check_ranges, ranged
from .costs import PTRS_PER_PTE
from .pagetable import PTE_SHIFT, PTE_SPAN, TableClass
from .reclaim import DEPTHS, PassResult, _scan_order
from .units import MiB

if TYPE_CHECKING:
    from .costs import CostModel
    from .machine import Machine
    from .pagetable import AddressSpace
    from .process import Process

DesignName = Literal["none", "on_zap", "refcount", "madvise", "scan_mmap_write",
                     "scan_pmd_lock", "scan_mmap_write_young", "scan_pmd_lock_young", "limits"]
#: Every design, in the order tables and plots list them.
DESIGN_NAMES: tuple[str, ...] = get_args(DesignName)
#: Designs that run code of this module (the others are the model's own two kernels).
ACTIVE = frozenset(DESIGN_NAMES) - {"none", "on_zap"}
_EMPTY = frozenset({TableClass.EMPTY})
_EMPTY_ZERO = frozenset({TableClass.EMPTY, TableClass.ZERO})


@dataclass(frozen=True)
class Design:
    """One design: where it comes from and how much kernel it changes.

    ``files``/``added``/``removed`` are the diffstat of the patch series named in
    ``source`` (``estimate``: no patch exists, the figures are an estimate explained in
    ``change``)."""

    name: str
    title: str
    kernel: str
    source: str
    files: int
    added: int
    removed: int
    estimate: bool
    change: str


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("none", "no reclaim", "Linux < 6.14",
           "mm/memory.c free_pgtables: only munmap and exit free PTE tables", 0, 0, 0, False,
           "the baseline: nothing to add"),
    Design("on_zap", "on-zap reclaim (CONFIG_PT_RECLAIM)", "Linux 6.14+ (measured on 6.18)",
           "Qi Zheng, [PATCH v4 00/11] synchronously scan and reclaim empty user PTE pages, "
           "cover.1733305182.git.zhengqi.arch@bytedance.com; commit 6375e95f381e 'mm: pgtable: "
           "reclaim empty PTE page in madvise(MADV_DONTNEED)'", 17, 397, 132, False,
           "new mm/pt_reclaim.c (71 lines), zap_pte_range reworked in mm/memory.c, x86 page "
           "tables freed by RCU"),
    Design("refcount", "free on last zap (per-table refcount)",
           "proposed for next-20211108, not merged",
           "Qi Zheng, [PATCH v3 00/15] Free user PTE page table pages, "
           "20211110105428.32458-1-zhengqi.arch@bytedance.com", 41, 1186, 340, False,
           "every page-table walker takes a reference (pte_try_get/pte_put), across mm/, "
           "fs/proc, fs/userfaultfd and kernel/events; new mm/pte_ref.c"),
    Design("madvise", "MADV_RECLAIM_PGTABLES (application-triggered)",
           "proposed, no patch posted",
           "D. Hildenbrand, LSF/MM/BPF 2022 topic 'page table reclaim' (the seed), and in "
           "reply to cover.1718267194.git.zhengqi.arch@bytedance.com (June 2024): 'start with "
           "a madvise(MADV_PT_RECLAIM) that will synchronously try to reclaim page tables'",
           3, 60, 0, True,
           "estimate: an advice number (include/uapi), a case in mm/madvise.c and a page walk "
           "calling 6.14's try_to_free_pte (mm/pt_reclaim.c), about 60 lines"),
    Design("scan_mmap_write", "async scanner, mmap_lock for write",
           "RFC, not merged (based on 5.19)",
           "Qi Zheng, [RFC PATCH 0/7] Try to free empty and zero user PTE page table pages, "
           "20220825101037.96517-1-zhengqi.arch@bytedance.com (empty and zero tables under "
           "mmap_write_lock)", 12, 319, 4, False,
           "per-table counts of mapped and zero entries (mm/pte_ref.c, 234 lines) and a "
           "reclaim path that takes mmap_lock for write"),
    Design("scan_pmd_lock", "async scanner, PMD/PTE locks only",
           "RFC (June 2024), not merged",
           "Qi Zheng, [RFC PATCH 0/3] asynchronously scan and free empty user PTE pages, "
           "cover.1718267194.git.zhengqi.arch@bytedance.com (patch 3/3; 100 ms, 256 MiB a "
           "scan); locking as khugepaged's retract_page_tables since 1d65b771bc08 (6.5)",
           8, 220, 2, False,
           "patch 3/3 alone (1/3 and 2/3 prepare helpers): new mm/freept.c (180 lines), a "
           "task_work scan under mmap_lock for read, the PMD and PTE locks around each free, "
           "tables freed by RCU (pte_free_defer)"),
    Design("scan_mmap_write_young", "async scanner, mmap_lock for write, PMD young bits",
           "RFC + MGLRU's young-bit walk",
           "the scan_mmap_write series plus MGLRU's walk_pmd_range (mm/vmscan.c) and "
           "'mm: x86: add CONFIG_ARCH_HAS_NONLEAF_PMD_YOUNG' (Yu Zhao, Linux 6.1)",
           13, 339, 4, True,
           "estimate: scan_mmap_write plus about 20 lines to test-and-clear the PMD accessed "
           "bit (pmdp_test_and_clear_young exists on x86) and skip young tables"),
    Design("scan_pmd_lock_young", "async scanner, PMD/PTE locks, PMD young bits",
           "RFC + MGLRU's young-bit walk",
           "the scan_pmd_lock series plus MGLRU's walk_pmd_range (mm/vmscan.c) and "
           "'mm: x86: add CONFIG_ARCH_HAS_NONLEAF_PMD_YOUNG' (Yu Zhao, Linux 6.1)",
           9, 240, 2, True,
           "estimate: scan_pmd_lock plus about 20 lines to test-and-clear the PMD accessed "
           "bit and skip young tables"),
    Design("limits", "automatic per-process soft/hard limits", "proposed, no patch posted",
           "D. Hildenbrand, LSF/MM/BPF 2022 topic 'page table reclaim' (the seed): 'How to "
           "set an adequate soft/hard limit?'", 12, 370, 2, True,
           "estimate: scan_pmd_lock's scanner driven by a per-mm soft limit under pressure, "
           "plus a knob (prctl or memcg) and a check in __pte_alloc: about 150 lines more"),
)}


@dataclass(frozen=True)
class ScannerConfig:
    """The asynchronous scanner of the ``scan_*`` designs."""

    #: Ticks between wake-ups: 1 = 100 ms, the RFC's MM_PGTABLE_SCAN_DELAY.
    interval_ticks: int = ranged(1, 1, 10**6)
    #: Tables examined per process per wake-up: 128 = the RFC's 256 MiB per scan when
    #: every slot of it has a table.
    budget: int = ranged(128, 1, 10**9)
    #: 0: empty tables only (the 2024 RFC); 1: also zero-page-only ones (the 2022 RFC, the
    #: seed's third question); 2: also page-cache ones.
    depth: int = ranged(1, 0, len(DEPTHS) - 1)
    #: ``_young`` variants: scan rounds a table must have been idle (young bit found clear)
    #: before the scanner reads it.
    min_idle: int = ranged(2, 1, 10**6)

    def __post_init__(self) -> None:
        check_ranges(self, "mechanism.scanner.")


@dataclass(frozen=True)
class LimitsConfig:
    """The per-process limits of the ``limits`` design."""

    #: Page tables above which a process's tables are reclaimed under pressure: 8 MiB is
    #: 2048 tables, what 4 GiB of touched memory needs.
    soft_mib: float = ranged(8.0, 0.0, 1e9)
    #: Page tables above which a process's table allocations fail: 64 MiB maps 32 GiB.
    hard_mib: float = ranged(64.0, 0.0, 1e9, lo_open=True)
    #: Classes reclaimed above the soft limit (see ``ScannerConfig.depth``).
    depth: int = ranged(1, 0, len(DEPTHS) - 1)
    #: Tables examined per process over its soft limit per tick.
    budget: int = ranged(1024, 1, 10**9)
    #: Reclaim above the soft limit only while the normal zone is below its low watermark.
    pressure_only: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, "mechanism.limits.")
        if self.soft_mib > self.hard_mib:
            raise ConfigError(f"mechanism.limits.soft_mib ({self.soft_mib:g}) must not exceed "
                              f"hard_mib ({self.hard_mib:g})")


@dataclass(frozen=True)
class MechanismConfig:
    """A scenario's kernel design (``mechanism:`` in its YAML); no design: the model as is."""

    design: DesignName | None = None
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: ``madvise``: a replayed trace issues the advice over each MADV_DONTNEED it replays.
    advice_traces: bool = True

    @property
    def active(self) -> bool:
        """Whether the design runs code of this module (not the model's own two kernels)."""
        return self.design in ACTIVE

    def check(self, pt_reclaim: bool) -> None:
        """Raise :class:`ConfigError` when the design and ``pt_reclaim`` disagree."""
        if self.design is None or pt_reclaim == (self.design != "none"):
            return
        if pt_reclaim:
            raise ConfigError("mechanism.design 'none' is a kernel before 6.14: add "
                              "'pt_reclaim: false' to the scenario")
        raise ConfigError(f"pt_reclaim: false (a kernel before 6.14) contradicts "
                          f"mechanism.design {self.design!r}, which builds on 6.14's on-zap "
                          f"reclaim; remove 'pt_reclaim: false' or choose design 'none'")


def pt_reclaim_of(design: str) -> bool:
    """The ``pt_reclaim`` a scenario needs for ``design``."""
    return design != "none"


def madvise_reclaim_pgtables(mm: AddressSpace, start: int, length: int
                             ) -> tuple[int, list[int]]:
    """``madvise(start, length, MADV_RECLAIM_PGTABLES)``, a proposed advice (in no kernel):
    free every PTE table the range overlaps that maps nothing (all entries none), and every
    table it covers whole that maps only the shared zero page (re-read as minor faults),
    unless a userfaultfd VMA covers it (as out-of-line reclaim, :meth:`AddressSpace.
    reclaim_table`).  Returns the tables examined and those freed by class (empty, zero,
    file)."""
    end = start + length
    freed = [0, 0, 0]
    slots = mm.table_slots_in(start, end) if length > 0 else []
    for slot in slots:
        base = slot << PTE_SHIFT
        cls = mm.pte[slot].cls
        if mm.reclaim_table(slot, _EMPTY_ZERO if start <= base and base + PTE_SPAN <= end
                            else _EMPTY) >= 0:
            freed[cls] += 1
    return len(slots), freed


def refcount_frees(mm: AddressSpace, slots: list[int]) -> list[int]:
    """The tables the refcount design frees after a zap that touched ``slots``: those left
    with every entry none (the count of non-none entries reached zero) that a VMA still
    overlaps (a slot no VMA overlaps is freed by munmap's free_pgtables in every design).
    Nothing is freed here."""
    out = []
    for slot in slots:
        t = mm.pte.get(slot)
        if t is not None and t.cls == TableClass.EMPTY:
            base = slot << PTE_SHIFT
            if mm.vmas_overlapping(base, base + PTE_SPAN):
                out.append(slot)
    return out


@dataclass
class MechanismStats:
    """What a design did, cumulative since the simulation began."""

    examined: int = 0  # tables whose entries were read
    young_cleared: int = 0  # PMD young bits test-and-cleared
    freed: int = 0  # tables freed by the design (on-zap reclaim not included)
    freed_by_class: list[int] = field(default_factory=lambda: [0, 0, 0])  # empty, zero, file
    advice_calls: int = 0
    cpu_us: float = 0.0  # kernel work of the design, in the process or in a kernel thread
    lock_us: float = 0.0  # time the design's locks kept the process's faults out


class _Sim(Protocol):
    """The part of :class:`~.simulator.Simulation` a design uses (the simulator imports
    this module, so it is described here, not imported)."""

    costs: CostModel
    machine: Machine
    tick_no: int

    @property
    def procs(self) -> list[Process]: ...


class Mechanism:
    """The design one simulation runs (inert when ``config.design`` is not active).

    :class:`~.simulator.Simulation` calls :meth:`attach` for every process it spawns and
    :meth:`tick` once a tick after the workloads' operations; workloads call
    :meth:`advise` at their purge points."""

    def __init__(self, sim: _Sim, config: MechanismConfig) -> None:
        self.sim = sim
        self.config = config
        self.design = config.design if config.active else None
        self.stats = MechanismStats()
        self._tick_work = PassResult()  # frees done inside the processes' own calls
        self._faults: dict[AddressSpace, int] = {}  # refcount: faults already taxed

    def attach(self, p: Process) -> None:
        """Set the design up for a new process."""
        d = self.design
        if d == "refcount":
            p.mm.zap_listener = self._refcount_zapped
        elif d == "madvise" and self.config.advice_traces and p.family == "trace":
            p.mm.zap_listener = self._advice_after_dontneed
        elif d == "limits":
            lim = self.config.limits
            p.pt_soft_limit_bytes = int(lim.soft_mib * MiB)
            p.pt_hard_limit_bytes = int(lim.hard_mib * MiB)

    def advise(self, mm: AddressSpace, start: int, length: int) -> None:
        """The process owning ``mm`` calls ``MADV_RECLAIM_PGTABLES`` on [start, start+length)
        (nothing happens unless the design is ``madvise``)."""
        if self.design != "madvise":
            return
        p = self._owner(mm)
        if p is None:
            return
        examined, freed = madvise_reclaim_pgtables(mm, start, length)
        self._charge_advice(p, examined, freed)

    def tick(self) -> list[PassResult]:
        """The design's work this tick (scans, limits, the refcount's fault tax) and what
        the processes' own calls did since the last tick, as passes for the tick record."""
        d = self.design
        if d is None:
            return []
        out: list[PassResult] = []
        if d.startswith("scan_"):
            sc = self.config.scanner
            if self.sim.tick_no % sc.interval_ticks == 0:
                lock = "pmd_lock" if "pmd_lock" in d else "mmap_write"
                idle = sc.min_idle if d.endswith("_young") else None
                out += [self._scan(p, sc.budget, DEPTHS[sc.depth], lock, idle)
                        for p in self._alive()]
        elif d == "limits":
            out += self._limits()
        elif d == "refcount":
            self._fault_tax()
        work, self._tick_work = self._tick_work, PassResult()
        if work.freed or work.scanned or work.cpu_us:
            out.append(work)
        return [r for r in out if r.scanned or r.freed or r.cpu_us]

    # -- the designs ---------------------------------------------------------

    def _refcount_zapped(self, mm: AddressSpace, slots: list[int], dontneed: bool) -> None:
        """The refcount reached zero: free every touched table left empty.  A slot no VMA
        overlaps is left to munmap's free_pgtables, which frees it in every design."""
        freed = sum(mm.reclaim_table(slot, _EMPTY) >= 0 for slot in refcount_frees(mm, slots))
        if freed:
            # Unhooked under the PMD lock, freed through the zap's own mmu_gather: no flush
            # of its own, no scan (the count says the table is empty).
            costs = self.sim.costs
            us = freed * (costs.pmd_lock_us + costs.free_table_us)
            self._record(self._owner(mm), 0, freed, [freed, 0, 0], us, us)

    def _advice_after_dontneed(self, mm: AddressSpace, slots: list[int],
                               dontneed: bool) -> None:
        """A replayed trace follows each MADV_DONTNEED with MADV_RECLAIM_PGTABLES over the
        same range: right after the zap its covered tables can only be empty, so the advice
        frees the empty ones among the tables it overlaps."""
        if not dontneed:
            return
        p = self._owner(mm)
        if p is None:
            return
        present = [s for s in slots if s in mm.pte]
        freed = sum(mm.reclaim_table(s, _EMPTY) >= 0 for s in present)
        self._charge_advice(p, len(present), [freed, 0, 0])

    def _charge_advice(self, p: Process, examined: int, by_class: list[int]) -> None:
        """One advice call: a system call, a walk of ``examined`` tables and, per freed
        table, the PMD and PTE locks and a re-read under them (as 6.14's try_to_free_pte),
        then one flush; the calling thread spends all of it."""
        costs = self.sim.costs
        remote = self._remote(p)
        freed = sum(by_class)
        flushed = freed * PTRS_PER_PTE
        cpu = costs.syscall_us + costs.reclaim_pass_cpu_us(examined, freed, 0, flushed, remote,
                                                           "pmd_lock")
        lock = costs.reclaim_pass_stall_us(examined, freed, 0, flushed, remote, "pmd_lock")
        p.stall_us += cpu
        self.stats.advice_calls += 1
        self._record(None, examined, freed, by_class, cpu, lock)

    def _fault_tax(self) -> None:
        """Every fault takes and drops a table reference (``refcount_fault_us``)."""
        us = self.sim.costs.refcount_fault_us
        for p in self._alive():
            faults = p.mm.stats.faults
            new = faults - self._faults.get(p.mm, 0)
            self._faults[p.mm] = faults
            if new > 0:
                p.stall_us += new * us
                self.stats.cpu_us += new * us
                self._tick_work.cpu_us += new * us

    def _limits(self) -> list[PassResult]:
        """Reclaim from every process over its soft limit (under pressure, by default)."""
        lim = self.config.limits
        m = self.sim.machine
        if lim.pressure_only and m.normal_free >= m.wmark.low:
            return []
        return [self._scan(p, lim.budget, DEPTHS[lim.depth], "pmd_lock", None)
                for p in self._alive() if p.over_soft_limit]

    def _scan(self, p: Process, budget: int, classes: frozenset[TableClass], lock: str,
              min_idle: int | None) -> PassResult:
        """One scanner pass over ``p``: up to ``budget`` tables from its cursor.  With
        ``min_idle`` the young bit of each is test-and-cleared first and only tables idle
        that many rounds are read; the others cost the bit clear alone."""
        res = PassResult()
        slots = _scan_order(p)
        n = min(budget, len(slots))
        if n == 0:
            return res
        i0 = int(np.searchsorted(slots, p.cursor))
        order = np.roll(slots, -i0)[:n].tolist()
        p.cursor = int(order[-1]) + 1
        mm = p.mm
        read = cleared = freed = freed_file = 0
        by_class = [0, 0, 0]
        for slot in order:
            t = mm.pte.get(slot)
            if t is None:
                continue
            if min_idle is not None:
                cleared += 1
                if mm.scan_young(slot) < min_idle:
                    continue
            read += 1
            cls = t.cls
            if mm.reclaim_table(slot, classes) >= 0:
                freed += 1
                freed_file += cls == TableClass.FILE
                by_class[cls] += 1
        costs = self.sim.costs
        remote = self._remote(p)
        flushed = freed * PTRS_PER_PTE
        cpu = costs.reclaim_pass_cpu_us(read, freed, freed_file, flushed, remote, lock, cleared)
        stall = costs.reclaim_pass_stall_us(read, freed, freed_file, flushed, remote, lock,
                                            cleared)
        p.stall_us += stall
        self.stats.young_cleared += cleared
        self._count(read, freed, by_class, cpu, stall)
        res.scanned, res.freed, res.cpu_us, res.stall_us = read, freed, cpu, stall
        res.freed_by_class = {TableClass(c): k for c, k in enumerate(by_class) if k}
        res.targets.append(p.pid)
        return res

    # -- bookkeeping ---------------------------------------------------------

    def _record(self, p: Process | None, examined: int, freed: int, by_class: list[int],
                cpu: float, lock: float) -> None:
        """Count work done inside a process's own call (charged to the tick record at the
        next :meth:`tick`); ``p``, when given, stalls for ``lock``."""
        if p is not None:
            p.stall_us += lock
        self._count(examined, freed, by_class, cpu, lock)
        w = self._tick_work
        w.scanned += examined
        w.freed += freed
        w.cpu_us += cpu
        w.stall_us += lock

    def _count(self, examined: int, freed: int, by_class: list[int], cpu: float,
               lock: float) -> None:
        s = self.stats
        s.examined += examined
        s.freed += freed
        s.cpu_us += cpu
        s.lock_us += lock
        for c in range(3):
            s.freed_by_class[c] += by_class[c]

    def _alive(self) -> list[Process]:
        return [p for p in self.sim.procs if p.alive]

    def _owner(self, mm: AddressSpace) -> Process | None:
        """The live process whose address space ``mm`` is."""
        return next((p for p in self.sim.procs if p.mm is mm and p.alive), None)

    def _remote(self, p: Process) -> int:
        """Other CPUs a TLB flush of ``p`` must reach with an IPI."""
        return min(p.cpus, self.sim.machine.config.cpus) - 1


__all__ = ["ACTIVE", "DESIGNS", "DESIGN_NAMES", "Design", "LimitsConfig", "Mechanism",
           "MechanismConfig", "MechanismStats", "ScannerConfig", "madvise_reclaim_pgtables",
           "pt_reclaim_of", "refcount_frees"]
