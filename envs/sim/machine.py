"""The machine: a zone for unmovable allocations, a movable zone, watermarks,
other tenants' unmovable demand, allocation failures, OOM kills and PSI.

Page tables are unmovable: every table any process holds is charged to the
normal zone (``ZONE_NORMAL``), which is all that unmovable allocations may
use.  User pages go to the movable zone (``ZONE_MOVABLE``/CMA) first and spill
into the normal zone only when it is full.  Watermarks follow the kernel's
formulas (``mm/page_alloc.c``: ``min_free_kbytes = sqrt(16 * lowmem_kbytes)``
clamped to [128 KiB, 256 MiB]; ``low = min + max(min / 4, zone *
watermark_scale_factor / 10000)``; ``high = low + the same step``).

An unmovable allocation that would take the normal zone below its min
watermark fails (``alloc_failures``); each tick with failures stalls the
allocating tasks (direct reclaim and compaction), which shows in the
PSI-like ``some``/``full`` averages, and after ``oom_failures`` failing ticks
within ``oom_window_ticks`` the OOM killer kills the process with the largest
badness (RSS plus page tables, as ``oom_badness()`` counts them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .config import ConfigError, check_ranges, ranged

PAGE_KIB = 4


@dataclass(frozen=True)
class TenantConfig:
    """Other tenants' unmovable demand (slab, network buffers, kernel stacks):
    a mean-reverting random walk around ``base_fraction`` of the normal zone,
    with occasional bursts, optionally a daily cycle and bursts that build up.

    Non-stationary demand (both off by default, so older scenarios keep their draws):

    * **Diurnal demand**: the mean the walk reverts to follows
      ``base_fraction + diurnal_amplitude * sin(2 pi (tick / diurnal_period_ticks +
      diurnal_phase))``.  Unmovable kernel memory tracks load: socket buffers and the
      dentry/inode and skbuff slabs grow with connections and requests, and a
      datacenter's load follows the day (Google's Borg traces show a daily cycle of
      usage: Verma et al., "Large-scale cluster management at Google with Borg",
      EuroSys 2015, and Tirmazi et al., "Borg: the Next Generation", EuroSys 2020;
      Linux ``net/ipv4/tcp_mem``: TCP buffer memory is unmovable and grows with
      traffic).  An episode lasts one or two simulated minutes, so a scenario's
      "day" is compressed to ``diurnal_period_ticks``: what the policy must learn is
      that pressure moves with a cycle and comes back, not the cycle's real length.
    * **Bursts that build up**: with ``burst_ramp_ticks > 0`` a burst's extra demand
      grows linearly over that many ticks instead of arriving at once (then holds
      until the burst ends), as a backlog, a growing connection count or a slab
      that fills under a leak does (e.g. the dentry cache under a negative-lookup
      storm, or an ``skbuff`` backlog behind a slow consumer): pressure that a
      policy can see coming and act on early.
    """

    base_fraction: float = ranged(0.82, 0.0, 0.99)
    #: Std of the per-tick change, as a fraction of the zone.
    volatility: float = ranged(0.004, 0.0, 0.2)
    #: Share of the distance to the base closed per tick.
    reversion: float = ranged(0.05, 0.0, 1.0)
    #: Chance per tick that a burst starts.
    burst_prob: float = ranged(0.004, 0.0, 1.0)
    #: Extra demand during a burst, fraction of the zone.
    burst_fraction: float = ranged(0.06, 0.0, 0.99)
    burst_ticks: int = ranged(40, 1, 1_000_000)
    #: Ticks over which a burst's extra demand ramps up linearly (0: at once).
    burst_ramp_ticks: int = ranged(0, 0, 1_000_000)
    #: Half the peak-to-trough swing of the daily cycle, as a fraction of the zone
    #: (0: no cycle).
    diurnal_amplitude: float = ranged(0.0, 0.0, 0.5)
    #: Length of one (compressed) day in ticks.
    diurnal_period_ticks: int = ranged(600, 2, 10**7)
    #: Where in its cycle tick 0 falls, as a fraction of the period (0.25: at the peak).
    diurnal_phase: float = ranged(0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        check_ranges(self, "tenants.")
        if self.diurnal_amplitude > self.base_fraction:
            raise ConfigError(f"tenants.diurnal_amplitude ({self.diurnal_amplitude:g}) must "
                              f"not exceed tenants.base_fraction ({self.base_fraction:g}): "
                              "the daily trough would ask for negative memory")

    def mean_fraction(self, tick: int) -> float:
        """The share of the zone the tenants' demand reverts to at ``tick``
        (``base_fraction`` plus the daily cycle; bursts come on top)."""
        if self.diurnal_amplitude == 0.0:
            return self.base_fraction
        angle = 2.0 * math.pi * (tick / self.diurnal_period_ticks + self.diurnal_phase)
        return self.base_fraction + self.diurnal_amplitude * math.sin(angle)


@dataclass(frozen=True)
class MachineConfig:
    """Sizes and policies of the simulated machine."""

    ram_mib: int = ranged(4096, 64, 1 << 24)
    #: Share of RAM in ZONE_MOVABLE/CMA (virtio-mem hosts: 80 %+).
    movable_fraction: float = ranged(0.8, 0.0, 0.95)
    cpus: int = ranged(8, 1, 4096)
    tick_ms: int = ranged(100, 1, 60_000)
    #: ``vm.watermark_scale_factor``, in 1/10000 of the zone.
    watermark_scale_factor: int = ranged(10, 1, 3000)
    #: 0: the kernel's default formula.
    min_free_kbytes: int = ranged(0, 0, 1 << 22)
    tenants: TenantConfig = field(default_factory=TenantConfig)
    #: Failing ticks within the window that trigger an OOM kill.
    oom_failures: int = ranged(30, 1, 1_000_000)
    oom_window_ticks: int = ranged(100, 1, 1_000_000)
    hard_limit_action: Literal["throttle", "kill"] = "throttle"
    #: How long a process over its hard limit has its faults blocked.
    throttle_ticks: int = ranged(10, 1, 1_000_000)
    #: Count the page cache that a reclaim pass unmapped as resident memory until the
    #: process maps it again, zaps it or exits (a move or a fork carries it along): the
    #: kernel keeps those pages cached, and a freed PTE table releases one table page,
    #: not its pages.  False is the rule before
    #: December 2026, which dropped them from the accounting with the table
    #: (docs/simulator.md, "Page cache that reclaim unmaps").
    keep_reclaimed_cache: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, "machine.")
        if self.oom_failures > self.oom_window_ticks:
            raise ConfigError("machine.oom_failures must not exceed machine.oom_window_ticks "
                              f"({self.oom_failures} > {self.oom_window_ticks})")

    @property
    def normal_pages(self) -> int:
        return int(self.ram_mib * 256 * (1.0 - self.movable_fraction))

    @property
    def movable_pages(self) -> int:
        return self.ram_mib * 256 - self.normal_pages


@dataclass(frozen=True)
class Watermarks:
    """Per-zone watermarks in pages."""

    min: int
    low: int
    high: int


def watermarks(zone_pages: int, scale_factor: int, min_free_kbytes: int = 0) -> Watermarks:
    """The kernel's watermarks for a zone of ``zone_pages`` pages
    (``__setup_per_zone_wmarks``; all unmovable memory is in this zone)."""
    if min_free_kbytes <= 0:
        min_free_kbytes = math.isqrt(zone_pages * PAGE_KIB * 16)
        min_free_kbytes = min(max(min_free_kbytes, 128), 262144)
    wmin = min_free_kbytes // PAGE_KIB
    step = max(wmin // 4, zone_pages * scale_factor // 10000)
    return Watermarks(wmin, wmin + step, wmin + 2 * step)


@dataclass
class Psi:
    """PSI-like pressure: the share of time some (or all) tasks stalled on
    memory, averaged like ``/proc/pressure/memory`` (exponential decay over 10 s
    and 60 s windows)."""

    some_avg10: float = 0.0
    some_avg60: float = 0.0
    full_avg10: float = 0.0
    full_avg60: float = 0.0

    def update(self, some: float, full: float, tick_s: float) -> None:
        e10 = math.exp(-tick_s / 10.0)
        e60 = math.exp(-tick_s / 60.0)
        self.some_avg10 = self.some_avg10 * e10 + some * (1 - e10)
        self.some_avg60 = self.some_avg60 * e60 + some * (1 - e60)
        self.full_avg10 = self.full_avg10 * e10 + full * (1 - e10)
        self.full_avg60 = self.full_avg60 * e60 + full * (1 - e60)


class Machine:
    """Zone accounting and the tenants' demand process (seeded by ``rng``)."""

    def __init__(self, config: MachineConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        self.normal_pages = config.normal_pages
        self.movable_pages = config.movable_pages
        self.wmark = watermarks(self.normal_pages, config.watermark_scale_factor,
                                config.min_free_kbytes)
        t = config.tenants
        self.tenant_pages = float(t.mean_fraction(0) * self.normal_pages)
        self._burst_left = 0
        self._tick = 0  # ticks of tenant demand so far (the daily cycle's clock)
        self.psi = Psi()
        self.normal_free = self.normal_pages
        self.movable_free = self.movable_pages
        self._fail_ticks: list[int] = []

    @property
    def tick_s(self) -> float:
        return self.config.tick_ms / 1000.0

    def step_tenants(self) -> None:
        """Advance the tenants' unmovable demand by one tick."""
        t = self.config.tenants
        z = self.normal_pages
        base = t.mean_fraction(self._tick) * z
        self._tick += 1
        if self._burst_left > 0:
            # Ticks of this burst so far, this one included: 1 .. burst_ticks.
            into = t.burst_ticks - self._burst_left + 1
            self._burst_left -= 1
            ramp = 1.0 if into >= t.burst_ramp_ticks else into / t.burst_ramp_ticks
            base += ramp * t.burst_fraction * z
        elif self.rng.random() < t.burst_prob:
            self._burst_left = t.burst_ticks
        noise = self.rng.normal(0.0, t.volatility * z)
        self.tenant_pages += t.reversion * (base - self.tenant_pages) + noise
        self.tenant_pages = min(max(self.tenant_pages, 0.0), float(z))

    def account(self, pt_pages: int, user_pages: int) -> int:
        """Recompute free memory for ``pt_pages`` page tables and ``user_pages``
        resident user pages; return the unmet unmovable demand in pages
        (positive when the normal zone would fall below its min watermark)."""
        spill = max(0, user_pages - self.movable_pages)
        self.movable_free = max(0, self.movable_pages - user_pages)
        used = int(self.tenant_pages) + pt_pages + spill
        self.normal_free = self.normal_pages - used
        return max(0, self.wmark.min - self.normal_free)

    def record_failure_tick(self, tick: int) -> bool:
        """Note a tick with allocation failures; True when the OOM killer fires."""
        self._fail_ticks.append(tick)
        horizon = tick - self.config.oom_window_ticks
        while self._fail_ticks and self._fail_ticks[0] <= horizon:
            self._fail_ticks.pop(0)
        if len(self._fail_ticks) >= self.config.oom_failures:
            self._fail_ticks.clear()
            return True
        return False
