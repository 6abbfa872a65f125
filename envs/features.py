"""The observation: the one definition shared by the env and the live advisor.

A policy sees the same vector whether it runs in the simulator
(:class:`~ptreclaim.envs.pagetable_env.PageTableReclaimEnv`) or judges a live
host (:mod:`ptreclaim.agents.advisor`).  Both fill in a :class:`Signals`
record from their own sources and call :func:`observation`; only the
mapping from a source onto :class:`Signals` differs:

==============  ========================================  ========================================
feature         simulator                                 live host
==============  ========================================  ========================================
free_vs_wmark   normal-zone free pages vs min/high        unmovable zones (``/proc/zoneinfo``:
                watermarks                                DMA, DMA32, Normal less CMA), summed
free_frac       normal-zone free / zone pages             the same zones
psi_*           simulated PSI some/full avg10/avg60       ``/proc/pressure/memory`` (% / 100)
pt_frac         page-table pages / zone pages             ``PageTables`` of ``/proc/meminfo``
topN_pt_frac    the N-th largest holder's tables / zone   ``VmPTE`` of ``/proc/PID/status``
topN_pt_ratio   its tables / (RSS + tables)               ``VmPTE / (VmRSS + VmPTE)``
refault_rate    tables re-faulted since the last pass     0: an advisor that never reclaims
last_yield      freed / scanned of the last pass          0: no pass to measure
fail_share      ticks with a failed unmovable allocation  intervals with direct reclaim of the
                among the last ``FAIL_WINDOW_TICKS``      unmovable zones (``allocstall_*`` of
                                                          ``/proc/vmstat``) in as much wall time
since_pass      ticks since the last pass                 time since the last *advised* pass,
                                                          in simulator ticks
hold_price      pressure price of holding a reclaimable   the same formula on the unmovable
                table (:func:`hold_price`)                zones' free pages and watermarks
topN_growth     the process's new PTE tables per tick     ``VmPTE`` growth between samples
                (averaged over ~1 s)
topN_refault    its tables re-faulted after reclaim per   0: an advisor that never reclaims
                tick (averaged)
topN_limited    1 when a page-table hard limit is set     0: the advisor sets no limit
CLS_seen        candidates of class CLS the last pass     0: no scanner runs on the host
                scanned (log-scaled)
CLS_idle1/4     share of them idle >= 1 / >= 4 scan       0: as above
                rounds (PMD young bit found clear)
CLS_refault     tables of class CLS re-faulted per tick   0: an advisor that never reclaims
                after reclaim freed them (averaged)
==============  ========================================  ========================================

Which process a ``target = N`` action reclaims from is part of the same contract (the
env acts on it, the advisor names it): the N-th of :func:`top_consumers`.  Pure Python
and numpy: no gymnasium, so the advisor stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from .sim.pagetable import PAGE

#: Names of the observation features, in order (heuristics and distillation
#: address them by name).
#: Reclaimable classes the scanner reports on, in order.
SCAN_CLASSES: tuple[str, ...] = ("empty", "zero", "file")
#: Page-table consumers observed individually (``top1`` .. ``top3``).
TOP_K = 3

OBS_NAMES: tuple[str, ...] = (
    "free_vs_wmark",  # (free - min) / (high - min) / 4, clipped to [-1, 1]
    "free_frac",  # normal-zone free pages / zone pages
    "psi_some_avg10", "psi_some_avg60", "psi_full_avg10", "psi_full_avg60",
    "pt_frac",  # page-table pages / normal-zone pages
    "hold_price",  # pressure price of holding a reclaimable table, 0..1 (hold_price())
    # Per top-k consumer: page tables / zone; page tables / (RSS + page tables);
    # log1p(new tables per tick) / 5; log1p(10 x re-faulted tables per tick) / 5; 0/1.
    *(f"top{i + 1}_{f}" for i in range(TOP_K)
      for f in ("pt_frac", "pt_ratio", "growth", "refault", "limited")),
    "refault_rate",  # log1p(tables re-faulted since the last pass) / 10
    "last_yield",  # freed / scanned in the last pass
    "fail_share",  # share of the last 100 ticks with an allocation failure
    "since_pass",  # log1p(ticks since the last pass) / 10
    # What the last pass's scanner saw, per class: log1p(candidates scanned) / 10, and
    # the shares of them idle for >= 1 and >= 4 scan rounds.
    *(f"{c}_{f}" for c in SCAN_CLASSES for f in ("seen", "idle1", "idle4")),
    # Per class: log1p(10 x tables re-faulted per tick after reclaim freed them) / 5.
    *(f"{c}_refault" for c in SCAN_CLASSES),
)
#: The privileged per-class table shares appended with ``candidate_counts``
#: (ablations only: finding them costs a scan).
CANDIDATE_NAMES: tuple[str, ...] = ("empty_share", "zero_share", "file_share")
#: The burst memory appended with ``burst_memory`` (an ablation, not in the default env):
#: the largest fall of free normal-zone memory from one observation to the next, as a
#: share of the zone, remembered with PSI's longest decay (``BURST_DECAY_S``).
BURST_NAMES: tuple[str, ...] = ("burst_drop",)
#: The burst memory decays as ``exp(-t / 300 s)``: the period of PSI's ``avg300``, the
#: longest memory ``/proc/pressure/memory`` keeps (kernel/sched/psi.c, ``EXP_300s``).
BURST_DECAY_S = 300.0
#: ``fail_share`` is the share of this many recent ticks with an allocation failure.
FAIL_WINDOW_TICKS = 100
#: A process is a reclaim target (``target = 1``) only with at least this much
#: page-table memory: below it, a pass would free too little to pay for itself.
SUSPECT_MIN_BYTES = 1 << 20


class Consumer(Protocol):
    """A process as the observation sees it (a simulated
    :class:`~ptreclaim.envs.sim.process.Process`, or a sampled host process)."""

    @property
    def pid(self) -> int: ...

    @property
    def pt_bytes(self) -> int:
        """Page-table bytes (``VmPTE``)."""

    @property
    def rss_bytes(self) -> int:
        """Resident bytes (``VmRSS``)."""


#: Optional per-consumer signals (a sampled host process may lack them: 0 then):
#: ``growth_rate`` (new PTE tables per tick), ``refault_rate`` (tables re-faulted per
#: tick after reclaim), ``pt_hard_limit_bytes`` (None when no limit is set).
OPTIONAL_CONSUMER_FIELDS = ("growth_rate", "refault_rate", "pt_hard_limit_bytes")

C = TypeVar("C", bound=Consumer)


@dataclass(frozen=True)
class Signals:
    """What the observation is computed from, in pages and ticks.

    ``zone_*`` and ``wmark_*`` describe the memory an unmovable allocation may
    use; ``top`` holds the largest page-table consumers, largest first
    (:func:`top_consumers`); ``candidates`` the per-class shares of
    ``candidate_counts`` (None: not observed).
    """

    zone_pages: float
    free_pages: float
    wmark_min: float
    wmark_high: float
    psi_some_avg10: float
    psi_some_avg60: float
    psi_full_avg10: float
    psi_full_avg60: float
    pt_pages: float
    top: Sequence[Consumer]
    refault_tables: float
    last_yield: float
    fail_share: float
    ticks_since_pass: float
    candidates: tuple[float, float, float] | None = None
    #: The last pass's scan, per class (empty, zero, file): candidates seen, of them idle
    #: >= 1 and >= 4 scan rounds.  None: no pass yet (or no scanner).
    scan: tuple[Sequence[int], Sequence[int], Sequence[int]] | None = None
    #: Tables re-faulted per tick after reclaim freed them, by class (averaged).
    refault_by_class: Sequence[float] = (0.0, 0.0, 0.0)
    #: ``burst_memory``'s value (:func:`burst_drop`); None: not observed.
    burst: float | None = None


def clip(x: float) -> float:
    """``x`` clipped to the observation's range [-1, 1]."""
    return max(-1.0, min(1.0, x))


def pt_ratio(pt_bytes: float, rss_bytes: float) -> float:
    """Page tables / (RSS + page tables): near 1 for a process whose page
    tables map almost nothing (a table hog), near 0 for an ordinary one."""
    return pt_bytes / (rss_bytes + pt_bytes or 1)


def hold_price(free_pages: float, wmark_min: float, wmark_high: float) -> float:
    """What holding reclaimable page tables costs now, from 0 to 1.

    Nothing at or above the high watermark, where kswapd sleeps and every allocation is
    served at once (``mm/vmscan.c``: kswapd reclaims a node until it is balanced at its
    high watermark); rising linearly to 1 at the min watermark, below which unmovable
    allocations enter direct reclaim and fail (``mm/page_alloc.c``: ``__zone_watermark_ok``
    against ``WMARK_MIN``); 1 below it.  The seed: "there is no need to reclaim if we're
    not under memory pressure"."""
    span = max(wmark_high - wmark_min, 1)
    return max(0.0, min(1.0, (wmark_high - free_pages) / span))


def hold_prices(free_pages: np.ndarray, wmark_min: float, wmark_high: float) -> np.ndarray:
    """:func:`hold_price` of every element of ``free_pages`` (float64), the same numbers: the
    same IEEE operations in the same order, elementwise (``tests/test_policies.py``)."""
    span = max(wmark_high - wmark_min, 1)
    return np.maximum(0.0, np.minimum(1.0, (wmark_high - free_pages) / span))


def _log_rate(x: float) -> float:
    """A per-tick rate on the observation's scale: log1p(x) / 5, clipped."""
    return clip(math.log1p(max(x, 0.0)) / 5.0)


def top_consumers(procs: Iterable[C], k: int = TOP_K) -> list[C]:
    """The ``k`` largest page-table holders (ties: lower pid first)."""
    return sorted(procs, key=lambda p: (-p.pt_bytes, p.pid))[:k]


def most_suspicious(procs: Iterable[C]) -> C | None:
    """The largest page-table-to-RSS ratio among processes holding at least
    :data:`SUSPECT_MIN_BYTES` of page tables (what ``/proc/PID/status`` shows); None
    when no process qualifies.  The advisor names it; the heuristics pick their target
    among the top consumers by the same ratio."""
    cands = [p for p in procs if p.pt_bytes >= SUSPECT_MIN_BYTES]
    if not cands:
        return None
    return max(cands, key=lambda p: (pt_ratio(p.pt_bytes, p.rss_bytes), -p.pid))


def observation(s: Signals) -> np.ndarray:
    """The observation vector (:data:`OBS_NAMES`, then :data:`CANDIDATE_NAMES`
    when ``s.candidates`` is given), float32 in [-1, 1]."""
    zone = s.zone_pages
    obs = [
        clip((s.free_pages - s.wmark_min) / max(s.wmark_high - s.wmark_min, 1) / 4.0),
        clip(s.free_pages / zone),
        s.psi_some_avg10, s.psi_some_avg60, s.psi_full_avg10, s.psi_full_avg60,
        clip(s.pt_pages / zone),
        hold_price(s.free_pages, s.wmark_min, s.wmark_high),
    ]
    for i in range(TOP_K):
        if i < len(s.top):
            p = s.top[i]
            limit = getattr(p, "pt_hard_limit_bytes", None)
            obs += [clip(p.pt_bytes / PAGE / zone), pt_ratio(p.pt_bytes, p.rss_bytes),
                    _log_rate(getattr(p, "growth_rate", 0.0)),
                    _log_rate(10.0 * getattr(p, "refault_rate", 0.0)),
                    0.0 if limit is None else 1.0]
        else:
            obs += [0.0, 0.0, 0.0, 0.0, 0.0]
    obs += [
        clip(math.log1p(s.refault_tables) / 10.0),
        s.last_yield,
        s.fail_share,
        clip(math.log1p(s.ticks_since_pass) / 10.0),
    ]
    for c in range(len(SCAN_CLASSES)):
        if s.scan is None or not s.scan[0][c]:
            obs += [0.0, 0.0, 0.0]
        else:
            seen = s.scan[0][c]
            obs += [clip(math.log1p(seen) / 10.0), s.scan[1][c] / seen, s.scan[2][c] / seen]
    obs += [_log_rate(10.0 * r) for r in s.refault_by_class]
    if s.candidates is not None:
        obs += list(s.candidates)
    if s.burst is not None:
        obs.append(clip(s.burst))
    return np.asarray(obs, dtype=np.float32)


def burst_drop(memory: float, prev_free: float | None, free: float, zone: float, ticks: int,
               tick_s: float) -> float:
    """The burst memory after ``ticks`` ticks in which free normal-zone pages went from
    ``prev_free`` to ``free``: the fall as a share of the zone, or the memory decayed
    over those ticks (:data:`BURST_DECAY_S`), whichever is larger.  A burst that outruns
    one decision leaves its size here for minutes, so a policy may hold fewer tables
    while free memory is not more than such a burst above the watermarks.  With no
    earlier observation (``prev_free`` None: the first one of an episode, after the
    warm-up in which the tenants fill the zone from empty) there is no fall."""
    fall = 0.0 if prev_free is None else max(prev_free - free, 0.0) / zone
    return max(memory * math.exp(-(ticks * tick_s) / BURST_DECAY_S), fall)
