"""The allocator family's parameters (:class:`AllocatorConfig`) and size units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...config import ConfigError, check_ranges, ranged
from ...pagetable import TASK_SIZE
from ...units import GiB, MiB
from ..base import BASE

AllocVariant = Literal["jemalloc", "glibc", "v8", "jvm"]
_VARIANTS = ("jemalloc", "glibc", "v8", "jvm")


@dataclass(frozen=True)
class AllocatorConfig:
    """Parameters of one allocator-driven process."""

    #: ``jemalloc``, ``glibc``, ``v8`` or ``jvm`` (see the package docstring).
    variant: AllocVariant = "jemalloc"
    #: Live heap at the end of ``fill`` (1 GiB: about the measured redis, 621
    #: tables; ~2 tables per 256 KiB page for ``v8``: ~8k tables).
    heap_mib: int = ranged(1024, 8, 1 << 20)
    #: Phase lengths in ticks (100 ms each).
    fill_ticks: int = ranged(100, 1, 10**7)
    churn_ticks: int = ranged(300, 0, 10**7)
    free_ticks: int = ranged(100, 1, 10**7)
    idle_ticks: int = ranged(100, 0, 10**7)
    #: Cycles to run (0: forever); after the last one the process idles.
    cycles: int = ranged(0, 0, 10**6)
    #: Share of the live heap freed and allocated again per ``churn`` tick.
    churn_fraction: float = ranged(0.01, 0.0, 0.5)
    #: Share of the live heap that survives ``free`` (redis flush: RSS -98 %).
    keep_fraction: float = ranged(0.02, 0.0, 1.0)
    #: Unit of frees: with 96 KiB and 2 % kept, 65 % of full slots keep no
    #: unit, as 405 of 621 tables were empty in the measurement.
    extent_kib: int = ranged(96, 4, 2048)
    #: Most new PTE tables the process makes per tick (64 = 128 MiB of dense heap).
    tables_per_tick: int = ranged(64, 4, 65536)
    #: Most mmap/munmap/mprotect/madvise/touch calls per tick.
    calls_per_tick: int = ranged(32, 4, 65536)
    #: Threads: a TLB flush of its mm sends IPIs to the other CPUs.
    threads: int = ranged(4, 1, 4096)
    #: jemalloc: ticks a freed page stays dirty before it is purged (dirty_decay_ms 10 s).
    decay_ticks: int = ranged(100, 0, 10**6)
    #: glibc: arenas (the main brk arena plus thread arenas).
    arenas: int = ranged(4, 1, 1024)
    #: glibc: ticks between malloc_trim(0) calls (0: never; only tops are trimmed).
    trim_every: int = ranged(50, 0, 10**7)
    #: v8: heap page size (V8's regular pages are 256 KiB).
    page_kib: int = ranged(256, 4, 2048)
    #: v8: range of the random mmap hints (64 TiB = 46 bits; 4 = a 4 GiB cage).
    spread_gib: int = ranged(65536, 1, (TASK_SIZE - BASE) // GiB)
    #: jvm: how free regions are uncommitted.
    uncommit: Literal["remap", "dontneed"] = "remap"
    #: jvm: InitialHeapSize, the committed floor (RAM/64 on the 4 GiB machine;
    #: at most the heap).
    initial_mib: int = ranged(64, 0, 1 << 20)
    #: jvm: MaxHeapFreeRatio; the heap shrinks until at most this share is free.
    max_free_ratio: float = ranged(0.7, 0.0, 0.95)

    def __post_init__(self) -> None:
        if self.variant not in _VARIANTS:
            raise ConfigError(f"allocator.variant: {self.variant!r} is not one of "
                              + ", ".join(map(repr, _VARIANTS)))
        check_ranges(self, "allocator.")
        if self.extent_kib % 4:
            raise ConfigError(f"allocator.extent_kib: {self.extent_kib} is not a whole "
                              "number of 4 KiB pages")
        if self.page_kib & (self.page_kib - 1):
            raise ConfigError(f"allocator.page_kib: {self.page_kib} is not a power of two "
                              "(4 to 2048)")
        if self.spread_gib * GiB < 2 * self.heap_mib * MiB:
            raise ConfigError(f"allocator.spread_gib: {self.spread_gib} GiB is too small "
                              f"for a {self.heap_mib} MiB heap (needs twice the heap)")
        if self.uncommit not in ("remap", "dontneed"):
            raise ConfigError(f"allocator.uncommit: {self.uncommit!r} is not one of "
                              "'remap', 'dontneed'")
        # A slot-heap must fit in the address space above BASE with room to spare.
        if 8 * self.heap_mib * MiB > TASK_SIZE - BASE:
            raise ConfigError(f"allocator.heap_mib: {self.heap_mib} does not fit the "
                              "address space")

    def cycle_ticks(self) -> int:
        """Length of one fill/churn/free/idle cycle."""
        return self.fill_ticks + self.churn_ticks + self.free_ticks + self.idle_ticks
