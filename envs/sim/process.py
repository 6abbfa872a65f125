"""A simulated process: an address space plus what the machine and the
reclaimer need to know about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .pagetable import PAGE, AddressSpace, TableClass

TABLE_BYTES = PAGE
#: Per-tick decay of the averaged rates: 0.9 per 100 ms tick, a time constant of ~1 s.
RATE_DECAY = 0.9


@dataclass(eq=False)
class Process:
    """One process.  ``sane`` is ground truth (a VM, a database) used only to
    price harm; policies never see it."""

    pid: int
    name: str
    family: str
    mm: AddressSpace
    sane: bool = True
    cpus: int = 1  # CPUs it runs on: a TLB flush sends IPIs to the others
    alive: bool = True
    throttled_until: int = -1
    pt_soft_limit_bytes: int | None = None
    pt_hard_limit_bytes: int | None = None
    #: Reclaim scan cursor (a PTE slot index), khugepaged-style.
    cursor: int = 0
    #: (table_version, sorted slot array) cached by the reclaimer's scan.
    scan_cache: tuple[int, Any] | None = None
    #: Stall of this process's own faults during the current tick (µs).
    stall_us: float = 0.0
    #: Counters at the end of the previous tick, to turn totals into rates.
    last_refault_tables: int = 0
    last_refault_entries: int = 0
    last_pte_allocated: int = 0
    last_refault_class: list[int] = field(default_factory=lambda: [0, 0, 0])
    #: Per-tick rates, exponentially averaged over about one second (``RATE_DECAY``):
    #: tables re-faulted after an out-of-line reclaim freed them, and PTE tables
    #: allocated (the process's page-table growth).  A kernel keeps such counters per
    #: mm cheaply (``mm->pgtables_bytes`` moves on every allocation).
    refault_rate: float = 0.0
    growth_rate: float = 0.0
    #: Per-tick history of page-table bytes (for plots and observations).
    history: list[int] = field(default_factory=list)

    @property
    def pt_bytes(self) -> int:
        """Page-table bytes (VmPTE)."""
        return self.mm.tables * TABLE_BYTES

    @property
    def rss_bytes(self) -> int:
        return self.mm.rss_pages * PAGE

    @property
    def reclaimable_tables(self) -> int:
        """PTE tables a full-depth reclaim could free: empty, zero and file
        tables, less those under a userfaultfd-registered VMA."""
        e, z, f, _ = self.mm.class_counts()
        return e + z + f - self.mm.uffd_unreclaimable()

    def class_count(self, cls: TableClass) -> int:
        return self.mm.class_count(cls)

    @property
    def over_soft_limit(self) -> bool:
        """Page tables above the soft limit: a global reclaim pass takes from
        this process first."""
        return self.pt_soft_limit_bytes is not None and self.pt_bytes > self.pt_soft_limit_bytes

    def runnable(self, tick: int) -> bool:
        """Alive and not throttled for exceeding its hard limit."""
        return self.alive and tick >= self.throttled_until

    def badness(self) -> int:
        """oom_badness(): RSS plus page-table pages (no swap here)."""
        return self.mm.rss_pages + self.mm.tables
