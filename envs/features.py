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
==============  ========================================  ========================================

Which process a ``target = 1`` action reclaims from is part of the same
contract (the env acts on it, the advisor names it): :func:`most_suspicious`.
Pure Python and numpy: no gymnasium, so the advisor stays light.
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
OBS_NAMES: tuple[str, ...] = (
    "free_vs_wmark",  # (free - min) / (high - min) / 4, clipped to [-1, 1]
    "free_frac",  # normal-zone free pages / zone pages
    "psi_some_avg10", "psi_some_avg60", "psi_full_avg10", "psi_full_avg60",
    "pt_frac",  # page-table pages / normal-zone pages
    "top1_pt_frac", "top1_pt_ratio",  # page tables / zone; page tables / (RSS + page tables)
    "top2_pt_frac", "top2_pt_ratio",
    "top3_pt_frac", "top3_pt_ratio",
    "refault_rate",  # log1p(tables re-faulted since the last pass) / 10
    "last_yield",  # freed / scanned in the last pass
    "fail_share",  # share of the last 100 ticks with an allocation failure
    "since_pass",  # log1p(ticks since the last pass) / 10
)
#: The privileged per-class table shares appended with ``candidate_counts``
#: (ablations only: finding them costs a scan).
CANDIDATE_NAMES: tuple[str, ...] = ("empty_share", "zero_share", "file_share")
#: Page-table consumers observed individually (``top1`` .. ``top3``).
TOP_K = 3
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


def clip(x: float) -> float:
    """``x`` clipped to the observation's range [-1, 1]."""
    return max(-1.0, min(1.0, x))


def pt_ratio(pt_bytes: float, rss_bytes: float) -> float:
    """Page tables / (RSS + page tables): near 1 for a process whose page
    tables map almost nothing (a table hog), near 0 for an ordinary one."""
    return pt_bytes / (rss_bytes + pt_bytes or 1)


def top_consumers(procs: Iterable[C], k: int = TOP_K) -> list[C]:
    """The ``k`` largest page-table holders (ties: lower pid first)."""
    return sorted(procs, key=lambda p: (-p.pt_bytes, p.pid))[:k]


def most_suspicious(procs: Iterable[C]) -> C | None:
    """The target of ``target = 1``: the largest page-table-to-RSS ratio among
    processes holding at least :data:`SUSPECT_MIN_BYTES` of page tables (what
    ``/proc/PID/status`` shows); None when no process qualifies."""
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
    ]
    for i in range(TOP_K):
        if i < len(s.top):
            p = s.top[i]
            obs += [clip(p.pt_bytes / PAGE / zone), pt_ratio(p.pt_bytes, p.rss_bytes)]
        else:
            obs += [0.0, 0.0]
    obs += [
        clip(math.log1p(s.refault_tables) / 10.0),
        s.last_yield,
        s.fail_share,
        clip(math.log1p(s.ticks_since_pass) / 10.0),
    ]
    if s.candidates is not None:
        obs += list(s.candidates)
    return np.asarray(obs, dtype=np.float32)
