"""Out-of-line page-table reclaim and what it costs.

A pass scans up to ``budget`` PTE tables of its target process(es) from a
per-process cursor (khugepaged-style: it resumes where the last pass
stopped and wraps around).  For each table it test-and-clears the young bit
of the PMD entry pointing to it (x86 sets that bit on non-leaf entries; MGLRU
reads it to skip cold PTE tables), which gives the table's idle age in scan
rounds, and frees it when it has been idle for at least ``min_idle`` rounds
and its class is allowed: ``EMPTY``; ``ZERO`` (its zeropage entries are zapped and re-fault as
minor faults); ``FILE`` (page-cache entries, re-faulted from the page cache;
the file's rmap lock is taken).  It never frees a pinned table (anon pages,
swap entries, markers) nor one under a userfaultfd-registered VMA.

With no target the pass is global: processes over their page-table soft
limit first, then largest waste first (decreasing reclaimable tables).  Costs come from
:class:`~ptreclaim.envs.sim.costs.CostModel`: CPU for scanning and freeing,
the rmap lock, a TLB flush with IPIs per process, and the stall of the
process's own faults, which depends on the locking mechanism (``mmap_write``
blocks them for the whole pass, ``pmd_lock`` only per freed table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from .costs import PTRS_PER_PTE
from .pagetable import TableClass

if TYPE_CHECKING:
    from .costs import CostModel
    from .machine import Machine
    from .process import Process

#: Class depth: what a pass may free, from the least to the most aggressive.
DEPTHS: tuple[frozenset[TableClass], ...] = (
    frozenset({TableClass.EMPTY}),
    frozenset({TableClass.EMPTY, TableClass.ZERO}),
    frozenset({TableClass.EMPTY, TableClass.ZERO, TableClass.FILE}),
)


@dataclass(frozen=True)
class ReclaimConfig:
    """How the reclaimer locks: ``mmap_write`` (the process's faults stall for
    the whole pass) or ``pmd_lock`` (fine-grained, per table)."""

    lock: Literal["mmap_write", "pmd_lock"] = "mmap_write"


class _Scenario(Protocol):
    @property
    def reclaim(self) -> ReclaimConfig: ...


class Simulation(Protocol):
    """The part of :class:`ptreclaim.envs.sim.simulator.Simulation` a pass
    uses; the simulator imports this module, so it is typed here, not imported."""

    costs: CostModel
    machine: Machine

    @property
    def scenario(self) -> _Scenario: ...

    @property
    def alive(self) -> list[Process]: ...


@dataclass
class PassResult:
    """What one reclaim pass did and cost."""

    scanned: int = 0
    freed: int = 0
    freed_by_class: dict[TableClass, int] = field(default_factory=dict)
    zapped_entries: int = 0
    cpu_us: float = 0.0
    stall_us: float = 0.0
    targets: list[int] = field(default_factory=list)  # pids scanned
    #: What the scanner saw of the candidates (empty, zero, file tables not under a
    #: userfaultfd VMA), per class: how many, and how many had been idle at least 1
    #: and at least 4 scan rounds (their young bit found clear that many times running).
    seen: list[int] = field(default_factory=lambda: [0, 0, 0])
    idle1: list[int] = field(default_factory=lambda: [0, 0, 0])
    idle4: list[int] = field(default_factory=lambda: [0, 0, 0])


def _scan_order(p: Process) -> np.ndarray:
    """The process's PTE-table slots, ascending; cached until a table appears
    or disappears."""
    cache = p.scan_cache
    if cache is not None and cache[0] == p.mm.table_version:
        return cache[1]
    arr = np.fromiter(p.mm.pte.keys(), dtype=np.int64, count=len(p.mm.pte))
    arr.sort()
    p.scan_cache = (p.mm.table_version, arr)
    return arr


def _reclaim_process(sim: Simulation, p: Process, classes: frozenset[TableClass],
                     budget: int, result: PassResult, min_idle: int) -> int:
    """Scan up to ``budget`` tables of ``p`` from its cursor; return the number scanned."""
    slots = _scan_order(p)
    n = min(budget, len(slots))
    if n == 0:
        return 0
    i0 = int(np.searchsorted(slots, p.cursor))
    order = np.roll(slots, -i0)[:n].tolist()
    _free_scanned(sim, p, order, classes, result, min_idle)
    p.cursor = int(order[-1]) + 1
    return n


def reclaim_slots(sim: Simulation, p: Process, slots: list[int],
                  classes: frozenset[TableClass]) -> PassResult:
    """Free exactly ``slots`` of ``p`` when their class allows (no search)."""
    result = PassResult()
    if slots and p.alive:
        _free_scanned(sim, p, slots, classes - {TableClass.PINNED}, result, 0, scan=False)
    return result


def _free_scanned(sim: Simulation, p: Process, order: list[int],
                  classes: frozenset[TableClass], result: PassResult, min_idle: int,
                  scan: bool = True) -> None:
    """Examine ``order`` (slots of ``p``): test-and-clear each table's young bit (with
    ``scan``; the oracle's exact frees go straight to their tables), free the allowed
    ones idle for at least ``min_idle`` scan rounds, charge costs."""
    n = len(order)
    freed = freed_file = zapped = cleared = 0
    mm = p.mm
    for slot in order:
        t = mm.pte.get(slot)
        if t is None:
            continue
        cls = t.cls
        if scan:
            age = mm.scan_young(slot)
            cleared += 1
            if cls != TableClass.PINNED and not mm.slot_is_uffd(slot):
                result.seen[cls] += 1
                result.idle1[cls] += age >= 1
                result.idle4[cls] += age >= 4
            if age < min_idle:
                continue
        z = mm.reclaim_table(slot, classes)
        if z >= 0:
            freed += 1
            zapped += z
            freed_file += cls == TableClass.FILE
            result.freed_by_class[cls] = result.freed_by_class.get(cls, 0) + 1
    costs = sim.costs
    lock = sim.scenario.reclaim.lock
    remote = min(p.cpus, sim.machine.config.cpus) - 1
    # Freeing a table flushes the whole 2 MiB it mapped (a full flush past the
    # single-page ceiling), batched per process by the mmu_gather.
    flushed = freed * PTRS_PER_PTE
    cpu = costs.reclaim_pass_cpu_us(n, freed, freed_file, flushed, remote, lock, cleared)
    stall = costs.reclaim_pass_stall_us(n, freed, freed_file, flushed, remote, lock, cleared)
    p.stall_us += stall
    result.scanned += n
    result.freed += freed
    result.zapped_entries += zapped
    result.cpu_us += cpu
    result.stall_us += stall
    result.targets.append(p.pid)


def reclaim_pass(sim: Simulation, target: Process | None, classes: frozenset[TableClass],
                 budget: int, min_idle: int = 0) -> PassResult:
    """One reclaim pass over ``target`` (or, with None, over every process,
    largest waste first) scanning at most ``budget`` tables in all, freeing only
    tables idle for at least ``min_idle`` scan rounds."""
    result = PassResult()
    if budget <= 0 or not classes:
        return result
    classes = classes - {TableClass.PINNED}
    if target is not None:
        procs = [target] if target.alive else []
    else:
        # Processes over their page-table soft limit go first, then largest waste.
        procs = sorted(sim.alive, key=lambda q: (not q.over_soft_limit, -q.reclaimable_tables,
                                                 q.pid))
    remaining = budget
    for p in procs:
        if remaining <= 0:
            break
        if target is None and p.reclaimable_tables == 0:
            break
        remaining -= _reclaim_process(sim, p, classes, remaining, result, min_idle)
    return result
