"""Cost constants of page-table reclaim, each with its source, and the arithmetic that prices it.

A reclaimer that frees PTE tables pays for scanning them, for the locks that keep page-table
walkers out (``mmap_lock`` in write mode, or the PMD/PTE split locks), for the file rmap lock
of file-backed tables, and for a TLB flush with IPIs to the other CPUs the process runs on.
The process pays later: every zapped zero-page or page-cache entry it touches again is a minor
fault, every freed table it touches again is re-allocated, and in a userfaultfd region every
re-fault is a round trip to user space.  Page-table allocations that miss the min watermark
stall in direct reclaim and end in OOM kills.

:class:`CostModel` holds those prices in microseconds.  Every field names its source in a
comment and in :data:`SOURCES` (a test checks that they agree): a kernel code path, a
mailing-list measurement, an explicit policy, or a measurement on the reference machine (Linux
6.18 KVM guest, 2 vCPUs of an AMD EPYC Zen 4) whose program and output are in ``docs/costs.md``.
The methods are pure arithmetic so that the reclaimer can call them on every decision tick.

This module uses the standard library only (the simulator must not import gymnasium or yaml).
"""

from __future__ import annotations

import difflib
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

#: Entries in one PTE table (x86-64, 4 KiB pages).  Freeing a table must flush the TLB (and
#: the paging-structure caches) for the 2 MiB it maps: 512 pages, far above the flush ceiling.
PTRS_PER_PTE = 512

#: The two ways of keeping page-table walkers out while a table is ripped out.
LOCKS: tuple[str, ...] = ("mmap_write", "pmd_lock")

#: Field name -> one-line source with the figure it came from.  ``docs/costs.md`` (ptcost.c,
#: run 2) holds the measurements marked "measured here".
SOURCES: dict[str, str] = {
    "minor_fault_us": (
        "measured here (ptcost.c §1): read fault mapping the shared zero page into an existing "
        "table, 0.63 us/fault (0.61-0.81 over 3 runs); page-cache faults 0.25-0.29 us/page with "
        "fault-around; mm/memory.c do_anonymous_page, do_read_fault"
    ),
    "table_alloc_us": (
        "measured here (ptcost.c §2): a read fault whose PTE table was reclaimed costs 1.39 us "
        "vs 0.63 us with the table present, so 0.76 us (0.53-0.83 over 3 runs); "
        "mm/memory.c __pte_alloc -> pte_alloc_one (zeroed page) + pmd_install"
    ),
    "scan_table_us": (
        "measured here (ptcost.c §4): the kernel's MADV_DONTNEED walk of an empty table it cannot "
        "free (one guard marker), 64 MiB of tables > L3: 0.59 us/table (0.58-0.59 over 3 runs); "
        "mm/memory.c zap_pte_range"
    ),
    "free_table_us": (
        "measured here (ptcost.c §5): DONTNEED walk + free of an empty table minus the walk "
        "alone, -0.02 to 0.09 us in 7 runs, below the method's resolution: 0.1 us upper bound; "
        "mm/pt_reclaim.c try_get_and_clear_pmd + free_pte (RCU table free)"
    ),
    "invlpg_us": (
        "arch/x86/mm/tlb.c comment on tlb_single_page_flush_ceiling: 'Each single flush is about "
        "100 ns' (commit a5102476a24b, Dave Hansen 2014); Ingo Molnar measured INVLPG at 260 "
        "cycles (LKML, June 2015)"
    ),
    "tlb_single_page_flush_ceiling": (
        "arch/x86/mm/tlb.c: tlb_single_page_flush_ceiling = 33; flush_tlb_mm_range flushes the "
        "whole TLB when a range has more than 33 pages"
    ),
    "full_flush_us": (
        "break-even implied by the ceiling: 33 x 0.1 us = 3.3 us ('caps the maximum overhead at "
        "about 3,000 ns', arch/x86/mm/tlb.c); the CR3 write itself is ~96 cycles (Molnar, LKML "
        "June 2015), the rest is refilling the TLB"
    ),
    "ipi_us": (
        "measured here (ptcost.c §6): DONTNEED of one page with a sibling thread on the other "
        "CPU, median 9.25 us vs 0.93 us alone, 19917 TLB IPIs in 20000 calls: 8.3 us per IPI "
        "round trip in this KVM guest (bare metal is quoted at ~1-3 us); arch/x86/mm/tlb.c "
        "flush_tlb_multi"
    ),
    "rmap_lock_us": (
        "measured here (ptcost.c §7): uncontended cmpxchg lock + release of one cache line, "
        "0.023 us (0.02-0.05 over 3 runs), the fast path of taking and dropping "
        "mapping->i_mmap_rwsem (kernel/locking/rwsem.c), as khugepaged's retract_page_tables "
        "does before it removes a file table: 0.02 us"
    ),
    "young_clear_us": (
        "measured here (ptcost.c §7): one uncontended cmpxchg lock + release of a cache "
        "line, 0.023 us, the cost of pmdp_test_and_clear_young (one locked bit clear of a "
        "PMD entry); x86 clears the accessed bit without a TLB flush "
        "(arch/x86/mm/pgtable.c ptep_clear_flush_young: 'clearing the accessed bit without "
        "a TLB flush doesn't cause data corruption'): 0.02 us"
    ),
    "mmap_write_lock_us": (
        "measured here (ptcost.c §8): a VMA flag change under mmap_write_lock while a sibling "
        "faults in that VMA, mean 11.3 us (median 0.57, means 11-34 over 3 runs) vs 0.58 alone "
        "and 0.18 for a bare syscall: 11 us; vma_start_write waits for per-VMA-lock readers"
    ),
    "pmd_lock_us": (
        "measured here (ptcost.c §7): two uncontended lock + release pairs at 0.023 us, for the "
        "PMD split lock and the PTE table lock that mm/pt_reclaim.c try_to_free_pte takes: "
        "0.05 us"
    ),
    "uffd_refault_us": (
        "measured here (ptcost.c §9): userfaultfd MISSING fault resolved with UFFDIO_COPY by a "
        "handler thread on the other CPU, 53.8 us/fault (50.7-63.6 over 3 runs; 7.4-8.0 us with "
        "the handler on the same CPU); fs/userfaultfd.c handle_userfault"
    ),
    "alloc_failure_stall_us": (
        "mm/vmscan.c reclaim_throttle: VMSCAN_THROTTLE_NOPROGRESS sleeps 1 jiffy = 4 ms at this "
        "kernel's CONFIG_HZ=250 (ISOLATED HZ/50 = 20 ms, WRITEBACK HZ/10 = 100 ms); "
        "mm/page_alloc.c retries up to MAX_RECLAIM_RETRIES = 16 before OOM"
    ),
    "refcount_fault_us": (
        "[PATCH v3 00/15] Free user PTE page table pages (Qi Zheng, 2021, message-id "
        "20211110105428.32458-1-zhengqi.arch@bytedance.com): page faults 0.64-1.17 % slower "
        "with the per-table refcount (multi-fault benchmark, 1-16 threads); 1.17 % of "
        "minor_fault_us 0.63 us = 0.0074 us per fault"
    ),
    "syscall_us": (
        "measured here (ptcost.c §8): getppid, a bare system call, 0.180 us; the entry and "
        "exit of a madvise call that finds nothing to do"
    ),
    "oom_kill_harm_us": (
        "policy, not a measurement: one OOM kill is priced as 10 s of lost work, 2500 "
        "allocation stalls and far above any reclaim pass, so no policy trades kills for "
        "cheaper reclaim"
    ),
}


@dataclass(frozen=True)
class CostModel:
    """Prices of page-table reclaim, in microseconds unless the field name says otherwise.

    Every constant must be finite and >= 0; ``tlb_single_page_flush_ceiling`` is a whole
    number of pages.  Build one from a config mapping with :meth:`from_mapping`.
    """

    # Per re-faulted zero-page or page-cache entry.  Measured here: 0.63 us for a zero-page
    # read fault into an existing table (mm/memory.c do_anonymous_page).  Page-cache faults
    # map 16 pages at once (fault-around): 0.25-0.29 us per page, 4.0-4.6 us per fault.
    minor_fault_us: float = 0.63
    # Allocating, zeroing and installing one PTE table in a fault (mm/memory.c __pte_alloc).
    # Measured here: 1.39 us for a fault that re-allocates its table minus 0.63 us.
    table_alloc_us: float = 0.76
    # Reading the 512 entries of one table while scanning.  Measured here on the kernel's own
    # walk (zap_pte_range over cold, nearly empty tables): 0.59 us/table.
    scan_table_us: float = 0.59
    # Unhooking one empty table from its PMD and freeing it (mm/pt_reclaim.c free_pte).
    # Measured here as below 0.1 us; the upper bound is used.
    free_table_us: float = 0.1
    # One INVLPG: "Each single flush is about 100 ns" (arch/x86/mm/tlb.c).
    invlpg_us: float = 0.1
    # Above this many pages x86 flushes the whole TLB instead (arch/x86/mm/tlb.c: 33).
    tlb_single_page_flush_ceiling: int = 33
    # A full flush, at the break-even the ceiling implies: 33 x 0.1 us.  The CR3 write is ~96
    # cycles; the rest is the refill of the entries it threw away.
    full_flush_us: float = 3.3
    # One IPI round trip to a remote CPU that runs the process (flush_tlb_multi waits for all).
    # Measured here: 8.3 us in this KVM guest, where an IPI exits to the host; bare metal is
    # commonly quoted at 1-3 us, so a bare-metal machine config should override it.
    ipi_us: float = 8.3
    # i_mmap_rwsem taken and dropped, uncontended, for a file-backed table (keeps rmap walkers
    # out of the table).  Measured here as a cmpxchg lock + release: 0.02 us.
    rmap_lock_us: float = 0.02
    # Test-and-clear of the young bit of the PMD entry of each scanned table
    # (pmdp_test_and_clear_young): one locked bit clear, no TLB flush on x86.
    # Measured here as an uncontended cmpxchg on one cache line: 0.02 us.
    young_clear_us: float = 0.02
    # Taking mmap_lock for write on a process that is faulting: the writer waits for readers
    # and blocks new ones.  Measured here: mean 11 us (0.58 us when nobody faults).
    mmap_write_lock_us: float = 11.0
    # PMD split lock + PTE table lock, once each, per freed table (mm/pt_reclaim.c).
    # Measured here as two cmpxchg lock + release pairs: 0.05 us.
    pmd_lock_us: float = 0.05
    # A userfaultfd MISSING fault: to the handler thread and back (fs/userfaultfd.c), the
    # whole fault included.  Measured here: 54 us with the handler on the other CPU.
    uffd_refault_us: float = 54.0
    # One unmovable allocation below the min watermark: direct reclaim, then the no-progress
    # throttle of 1 jiffy (mm/vmscan.c reclaim_throttle; 4 ms at CONFIG_HZ=250).
    alloc_failure_stall_us: float = 4000.0
    # Taking and dropping the per-table refcount of Qi Zheng's 2021 series on every fault
    # (pte_try_get/pte_put): faults were 0.64-1.17 % slower; 1.17 % of minor_fault_us.
    refcount_fault_us: float = 0.0074
    # Entering and leaving one system call (an madvise that finds nothing to do): getppid,
    # measured here at 0.18 us.
    syscall_us: float = 0.18
    # Policy, not a measurement: an OOM kill costs 10 s of the victim's work, so that no
    # policy prefers kills to any amount of reclaim it could do instead.
    oom_kill_harm_us: float = 10_000_000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "tlb_single_page_flush_ceiling":
                # A page count: YAML gives an int; a float or bool here is a config mistake.
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(
                        f"CostModel.{f.name} must be an integer >= 0 (pages), got {value!r}"
                    )
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(
                    f"CostModel.{f.name} must be a finite number >= 0 (microseconds), "
                    f"got {value!r}"
                )
            # Store floats only, so that sums and equality do not depend on how YAML typed it.
            object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CostModel:
        """Build a model from a config mapping, rejecting unknown keys with a did-you-mean hint.

        Missing keys keep their defaults.  Raises ``ValueError`` (one line) for an unknown key
        or an out-of-range value.
        """
        known = [f.name for f in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown cost constant {key!r}{hint}")
        return cls(**dict(values))

    def tlb_flush_us(self, pages: int, remote_cpus: int) -> float:
        """Time to flush ``pages`` pages from the TLB of this CPU and of ``remote_cpus`` others.

        Up to ``tlb_single_page_flush_ceiling`` pages are flushed one INVLPG each; above it
        the whole TLB is flushed (its price includes the refill).  Each remote CPU in the
        process's ``mm_cpumask`` costs one IPI round trip, which covers its own flush; freeing
        tables also reaches CPUs in lazy-TLB mode.  No pages means no flush and no IPI.
        """
        pages = _count("pages", pages)
        remote_cpus = _count("remote_cpus", remote_cpus)
        if pages == 0:
            return 0.0
        if pages > self.tlb_single_page_flush_ceiling:
            local = self.full_flush_us
        else:
            local = pages * self.invlpg_us
        return local + remote_cpus * self.ipi_us

    def reclaim_pass_cpu_us(
        self,
        scanned: int,
        freed: int,
        freed_file: int,
        flushed_pages: int,
        remote_cpus: int,
        lock: str,
        young_cleared: int = 0,
    ) -> float:
        """CPU time the reclaimer spends on one pass over one process.

        ``scanned`` tables are read; ``freed`` of them are unhooked and freed, ``freed_file``
        of those are file-backed and need the file's rmap lock; ``flushed_pages`` pages are
        then flushed on this CPU and ``remote_cpus`` others.  A table frees a 2 MiB span, so a
        pass that frees any table flushes at least :data:`PTRS_PER_PTE` pages.

        Under ``"mmap_write"`` the pass takes ``mmap_lock`` for write once, if it scans
        anything.  Under ``"pmd_lock"`` it scans without blocking faults and, for each table
        it frees, takes the PMD and PTE locks and re-reads the table under them, because a
        fault may have filled it since the scan.  ``young_cleared`` young bits were
        test-and-cleared during the scan.
        """
        scanned, freed, freed_file, lock = _check_pass(scanned, freed, freed_file, lock)
        young_cleared = _count("young_cleared", young_cleared)
        cost = (
            scanned * self.scan_table_us
            + freed * self.free_table_us
            + freed_file * self.rmap_lock_us
            + self.tlb_flush_us(flushed_pages, remote_cpus)
            + young_cleared * self.young_clear_us
        )
        if lock == "mmap_write":
            if scanned:
                cost += self.mmap_write_lock_us
        else:
            cost += freed * (self.pmd_lock_us + self.scan_table_us)
        return cost

    def reclaim_pass_stall_us(
        self,
        scanned: int,
        freed: int,
        freed_file: int,
        flushed_pages: int,
        remote_cpus: int,
        lock: str,
        young_cleared: int = 0,
    ) -> float:
        """Time during which the process's own page faults are blocked by one pass.

        Under ``"mmap_write"`` that is the whole pass: its faults wait while the writer waits
        for readers, and until the lock is dropped after the flush.  Under ``"pmd_lock"`` only
        the lock hold of each freed table blocks (a fault that needs the table's PMD waits
        while it is re-read and unhooked); the scan, the rmap lock and the flush, which runs
        after the locks are dropped, block no fault.  Arguments as for
        :meth:`reclaim_pass_cpu_us`.
        """
        scanned, freed, freed_file, lock = _check_pass(scanned, freed, freed_file, lock)
        if lock == "mmap_write":
            return self.reclaim_pass_cpu_us(
                scanned, freed, freed_file, flushed_pages, remote_cpus, lock, young_cleared
            )
        _count("flushed_pages", flushed_pages)
        _count("remote_cpus", remote_cpus)
        return freed * (self.pmd_lock_us + self.scan_table_us + self.free_table_us)

    def refault_us(self, tables: int, entries: int, uffd: bool) -> float:
        """Time the process later spends re-faulting what a pass took away.

        ``tables`` freed tables it touches again are re-allocated (before anything else, even
        in a userfaultfd region); ``entries`` zapped zero-page or page-cache entries it
        touches again are minor faults, or with ``uffd`` user-space round trips, which
        include the fault itself.  An empty table has no entries to re-fault.
        """
        tables = _count("tables", tables)
        entries = _count("entries", entries)
        per_entry = self.uffd_refault_us if uffd else self.minor_fault_us
        return tables * self.table_alloc_us + entries * per_entry


def _count(name: str, value: int) -> int:
    """``value`` as a non-negative int (numpy integers welcome); ``ValueError`` otherwise."""
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return n


def _check_pass(scanned: int, freed: int, freed_file: int, lock: str) -> tuple[int, int, int, str]:
    """Validate the counts and the lock mode shared by the two pass prices."""
    scanned = _count("scanned", scanned)
    freed = _count("freed", freed)
    freed_file = _count("freed_file", freed_file)
    if freed > scanned:
        raise ValueError(f"freed ({freed}) cannot exceed scanned ({scanned})")
    if freed_file > freed:
        raise ValueError(f"freed_file ({freed_file}) cannot exceed freed ({freed})")
    if lock not in LOCKS:
        raise ValueError(f"lock must be one of {', '.join(LOCKS)}, got {lock!r}")
    return scanned, freed, freed_file, lock


#: The model every simulator component uses unless a config overrides it.
DEFAULT_COSTS = CostModel()
