"""The live advisor: a policy judges this host in shadow mode, read-only.

Every interval it samples the host (:mod:`ptreclaim.envs.host.sample`:
unmovable-zone free memory against its watermarks, PSI, page-table memory,
every process's ``VmPTE``/``VmRSS`` and mapping count), builds the
observation the policy was made for with the env's own builder
(:func:`ptreclaim.envs.features.observation`; its module docstring has the
table of how each host signal maps onto a feature), and says what the policy
would do now: the reclaim budget, the class depth, the target (global, or a
process with its PID and command line) and why.  It never acts.  The command
line is ``scripts/monitor.py`` (:mod:`ptreclaim.cli.monitor`).

Features a host cannot show to an advisor that never reclaims are set to
their neutral value and named once (:data:`NEVER_LIVE`): ``refault_rate``,
``last_yield`` and the per-process and per-class re-fault rates (there is no pass
to measure), and what the scanner saw (``CLS_seen``, ``CLS_idle1``, ``CLS_idle4``:
no scanner test-and-clears the PMD young bits here).  ``topN_growth`` is the
growth of the process's ``VmPTE`` between samples, in tables per simulator tick,
averaged like the env's (``process.RATE_DECAY`` per tick; a shrink counts as no
growth); on the first sample there is no earlier one, and it is named missing
once.  ``topN_limited`` is 0: the advisor sets no limit.  ``since_pass`` counts
the time since the policy last *advised* a pass (or since start), in simulator
ticks, as if the advice had been followed; ``fail_share`` is the share of the
last 10 s (the env's 100 ticks) of intervals in which the unmovable zones entered
direct reclaim, the host's nearest equivalent of a failed unmovable allocation.
The target of an action is the N-th of :func:`~ptreclaim.envs.features.top_consumers`,
as in the env.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..envs import features
from ..envs.features import FAIL_WINDOW_TICKS, OBS_NAMES, SCAN_CLASSES, TOP_K, Signals
from ..envs.host.sample import (
    PAGE_KIB,
    HostSample,
    Notes,
    ProcSample,
    ProcScan,
    ScanResult,
    read_cmdline,
    read_comm,
    read_host,
    sample_processes,
    scan_empty_tables,
)
from ..envs.pagetable_env import EnvConfig
from ..envs.sim.config import ConfigError, build
from ..envs.sim.machine import MachineConfig
from ..envs.sim.process import RATE_DECAY
from ..envs.sim.simulator import ScenarioConfig
from .heuristics import DEPTH_TEXT
from .loading import PolicySpec, build_policy, parse_policy

#: Seconds per simulator tick (``machine.tick_ms`` default): the time unit of
#: ``since_pass`` and ``fail_share``.
TICK_S = MachineConfig().tick_ms / 1000.0
#: The env's failure window, here as the same span of wall time.
FAIL_WINDOW_S = FAIL_WINDOW_TICKS * TICK_S
#: Class depths of the action, as an operator reads them (reclaim.DEPTHS).
DEPTH_NAMES = DEPTH_TEXT
#: Features no host can show to an advisor that never reclaims (no pass to measure, no
#: scanner clearing young bits): neutral value.
NEVER_LIVE = ("refault_rate", "last_yield",
              *(f"top{i}_refault" for i in range(1, TOP_K + 1)),
              *(f"{c}_{f}" for c in SCAN_CLASSES for f in ("seen", "idle1", "idle4")),
              *(f"{c}_refault" for c in SCAN_CLASSES))
GROWTH_NAMES = tuple(f"top{i}_growth" for i in range(1, TOP_K + 1))
PSI_NAMES = ("psi_some_avg10", "psi_some_avg60", "psi_full_avg10", "psi_full_avg60")
_PAGE_KIB_TABLE = 4  # one PTE table is one 4 KiB page of VmPTE


@dataclass(frozen=True)
class LiveConsumer:
    """A sampled process as the observation sees it, with its page-table growth
    (:class:`~ptreclaim.envs.features.Consumer` and its optional ``growth_rate``)."""

    sample: ProcSample
    growth_rate: float  # new PTE tables per simulator tick, averaged

    @property
    def pid(self) -> int:
        return self.sample.pid

    @property
    def pt_bytes(self) -> int:
        return self.sample.pt_bytes

    @property
    def rss_bytes(self) -> int:
        return self.sample.rss_bytes


class LiveState:
    """What the observation needs from earlier intervals: recent direct-reclaim
    activity (``fail_share``) and when a pass was last advised (``since_pass``)."""

    def __init__(self, interval_s: float, now: float) -> None:
        self.window: deque[int] = deque(maxlen=max(1, round(FAIL_WINDOW_S / interval_s)))
        self.last_allocstall: int | None = None
        self.last_advised = now
        #: pid -> (VmPTE KiB, time) of the previous sample, and the averaged growth.
        self.last_pte: dict[int, tuple[int, float]] = {}
        self.growth: dict[int, float] = {}
        self.sampled = False

    def consumers(self, procs: Sequence[ProcSample], now: float) -> list[LiveConsumer]:
        """``procs`` with their page-table growth since the previous sample, in tables
        per simulator tick, averaged as the env averages it (``RATE_DECAY`` per tick);
        a process seen for the first time has grown by nothing yet."""
        out = []
        growth: dict[int, float] = {}
        pte: dict[int, tuple[int, float]] = {}
        for p in procs:
            rate = 0.0
            prev = self.last_pte.get(p.pid)
            if prev is not None and now > prev[1]:
                ticks = (now - prev[1]) / TICK_S
                new = max(0, p.pte_kib - prev[0]) / _PAGE_KIB_TABLE / ticks
                keep = RATE_DECAY ** ticks
                rate = self.growth.get(p.pid, 0.0) * keep + new * (1.0 - keep)
            growth[p.pid] = rate
            pte[p.pid] = (p.pte_kib, now)
            out.append(LiveConsumer(p, rate))
        self.growth, self.last_pte = growth, pte
        return out

    def fail_share(self, allocstall: int | None) -> float:
        """Share of the recent intervals in which the unmovable zones entered
        direct reclaim (the first interval has no previous count: 0)."""
        if allocstall is not None:
            prev = self.last_allocstall
            self.window.append(int(prev is not None and allocstall > prev))
            self.last_allocstall = allocstall
        return sum(self.window) / len(self.window) if self.window else 0.0

    def ticks_since(self, now: float) -> float:
        """Simulator ticks since the last advised pass (or since the start)."""
        return max(0.0, now - self.last_advised) / TICK_S


def observe(host: HostSample, procs: Sequence[ProcSample], state: LiveState,
            now: float) -> tuple[np.ndarray, list[str]]:
    """The env's observation (:data:`OBS_NAMES`) of this host, and the names
    of the features set to their neutral value because the host lacks them."""
    z = host.zone
    pt_pages = (host.pt_kib if host.pt_kib is not None else sum(p.pte_kib for p in procs)) \
        / PAGE_KIB
    psi = host.psi or {}
    first = not state.sampled
    state.sampled = True
    obs = features.observation(Signals(
        zone_pages=max(z.pages, 1), free_pages=z.free, wmark_min=z.min, wmark_high=z.high,
        psi_some_avg10=psi.get("some_avg10", 0.0), psi_some_avg60=psi.get("some_avg60", 0.0),
        psi_full_avg10=psi.get("full_avg10", 0.0), psi_full_avg60=psi.get("full_avg60", 0.0),
        pt_pages=pt_pages, top=features.top_consumers(state.consumers(procs, now)),
        # NEVER_LIVE: no pass to measure, no scanner (scan=None, no class re-faults).
        refault_tables=0.0, last_yield=0.0,
        fail_share=state.fail_share(host.allocstall),
        ticks_since_pass=state.ticks_since(now)))
    missing = list(NEVER_LIVE) + (list(GROWTH_NAMES) if first else [])
    missing += [n for n in PSI_NAMES if n.removeprefix("psi_") not in psi]
    if host.allocstall is None:
        missing.append("fail_share")
    return obs, [n for n in OBS_NAMES if n in missing]


@dataclass
class LivePolicy:
    """A policy from any spec ``evaluate.py`` accepts, with what decoding its
    actions needs (the budgets of the env it was made for)."""

    spec: PolicySpec
    policy: Any
    budgets: tuple[int, ...]
    idle_levels: tuple[int, ...] = EnvConfig().idle_levels
    #: A recurrent model's state, carried from one interval to the next (None: start).
    state: Any = None

    @property
    def explains(self) -> bool:
        """True for rules that give their own reason: ``decide(obs) -> (action,
        reason)``, as the soft/hard rule and the distilled tree do."""
        return callable(getattr(self.policy, "decide", None))


def load_policy(arg: str, *, best: bool = False, trust_model: bool = False) -> LivePolicy:
    """Parse and build ``arg`` like ``evaluate.py`` does; a model gets the env
    config of its run (its budgets, and a throwaway env to check its spaces)
    and its VecNormalize statistics (:func:`~ptreclaim.agents.loading.load_model_policy`)."""
    spec = parse_policy(arg, best=best, trust_model=trust_model)
    env = (build(EnvConfig, spec.env, f"{spec.label}: config.yaml.env")
           if spec.env is not None else EnvConfig())
    if env.candidate_counts:
        raise ConfigError(f"{spec.label}: trained with env.candidate_counts (exact per-class "
                          "table counts), which a live host cannot provide cheaply; use a "
                          "policy trained without them")
    if env.burst_memory:
        raise ConfigError(f"{spec.label}: trained with env.burst_memory (an ablation the "
                          "live advisor does not sample); use a policy trained without it")
    policy = build_policy(spec, env, ScenarioConfig())
    return LivePolicy(spec, policy, tuple(env.budgets), tuple(env.idle_levels))


def default_policy_arg(notes: Notes) -> str:
    """``./thresholds.yaml`` (or ``.json``) when present, else the soft/hard
    heuristic with its default thresholds (noted)."""
    for name in ("thresholds.yaml", "thresholds.json"):
        if Path(name).is_file():
            return name
    notes.add("default-policy", "no --policy and no ./thresholds.yaml: using "
              "heuristic:soft_hard with its default thresholds")
    return "heuristic:soft_hard"


@dataclass(frozen=True)
class Advice:
    """What the policy would do now."""

    action: tuple[int, ...]
    budget_tables: int  # 0: no pass
    depth: str
    target: str  # "none", "global" or "process"
    pid: int | None
    comm: str
    cmdline: str
    hard_limit: bool
    reason: str
    min_idle: int = 0  # scan rounds a table must have been idle

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"action": list(self.action),
                             "reclaim": self.target != "none",
                             "budget_tables": "all" if self.budget_tables >= 1 << 30
                             else self.budget_tables,
                             "depth": self.depth, "min_idle_rounds": self.min_idle,
                             "target": self.target}
        if self.pid is not None:
            d.update(pid=self.pid, comm=self.comm, cmdline=self.cmdline)
        d["hard_limit"] = self.hard_limit
        d["reason"] = self.reason
        return d

    def summary(self) -> str:
        """One line: what and from whom."""
        cap = f"; cap PID {self.pid}'s page tables at their size" if self.hard_limit else ""
        if self.target == "none":
            return "no reclaim" + cap
        budget = "all" if self.budget_tables >= 1 << 30 else str(self.budget_tables)
        who = ("globally (largest waste first)" if self.target == "global" else
               f"from PID {self.pid} ({self.comm})")
        idle = (f" idle >= {self.min_idle} scan round{'s' if self.min_idle != 1 else ''}"
                if self.min_idle else "")
        return f"reclaim up to {budget} PTE tables of class {self.depth}{idle} {who}{cap}"


def _doc_reason(policy: Any) -> str:
    doc = (type(policy).__doc__ or type(policy).__name__).strip()
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "")
    return first.split(". ")[0].rstrip(".")


def _learned_reason(policy: Any, obs: np.ndarray, k: int = 3) -> str:
    """"learned policy" and the features furthest from its training data
    (VecNormalize z-scores), or the largest raw ones without statistics."""
    norm = getattr(policy, "normalize", None)
    if norm is not None:
        z = np.asarray(norm(obs), dtype=np.float64).ravel()
        order = np.argsort(-np.abs(z), kind="stable")[:k]
        items = ", ".join(f"{OBS_NAMES[i]} {obs[i]:.4g} (z {z[i]:+.1f})" for i in order)
        return f"learned policy; signals furthest from its training data: {items}"
    order = np.argsort(-np.abs(obs.astype(np.float64)), kind="stable")[:k]
    items = ", ".join(f"{OBS_NAMES[i]} {obs[i]:.4g}" for i in order)
    return f"learned policy; largest signals: {items}"


def advise(live: LivePolicy, obs: np.ndarray, procs: Sequence[ProcSample],
           root: Path) -> Advice:
    """Run the policy on ``obs`` and decode its action as the env would apply
    it (``PageTableReclaimEnv.apply_action``): the target ``N`` is the N-th largest
    page-table holder (:func:`~ptreclaim.envs.features.top_consumers`)."""
    if live.explains:
        action, reason = live.policy.decide(obs)
    else:
        start = np.asarray([live.state is None])
        action, live.state = live.policy.predict(obs, state=live.state, episode_start=start,
                                                 deterministic=True)
        reason = (_learned_reason(live.policy, obs) if live.spec.kind == "model" else
                  _doc_reason(live.policy))
        if live.spec.kind != "model" and not reason.startswith(f"{live.spec.name}:"):
            reason = f"{live.spec.name}: {reason}"
    a = tuple(int(x) for x in np.asarray(action, dtype=np.int64).ravel())
    # A model trained without the hard-limit component acts with four.
    budget, depth, idle, choice, cap = (*a, 0, 0, 0, 0)[:5]
    top = features.top_consumers(procs)
    chosen = top[choice - 1] if 0 < choice <= len(top) else None
    hard = cap == 1 and chosen is not None
    target = "none"
    tables = live.budgets[budget]
    if tables > 0:
        target = "global" if choice == 0 else "process"
        if choice > 0 and chosen is None:
            # The env runs no pass when its target does not exist.
            target = "none"
            reason += (f"; but fewer than {choice} processes hold page tables, so no pass")
    who = chosen if (target == "process" or hard) else None
    return Advice(a, tables if target != "none" else 0, DEPTH_NAMES[depth], target,
                  who.pid if who else None, read_comm(root, who.pid) if who else "",
                  read_cmdline(root, who.pid) if who else "", hard, reason,
                  live.idle_levels[idle] if idle < len(live.idle_levels) else idle)


# ------------------------------------------------------------------ one interval

@dataclass
class Interval:
    """One sample: signals, observation, advice and what it cost."""

    index: int
    host: HostSample
    scan: ProcScan
    obs: np.ndarray
    unavailable: list[str]
    advice: Advice
    empty: dict[int, ScanResult]
    top: list[ProcSample]
    comms: dict[int, str]
    cpu_ms: float
    wall_ms: float
    time: str

    def record(self, policy: str, notes: list[str]) -> dict[str, Any]:
        """The JSON line of this interval."""
        z = self.host.zone
        top = []
        for p in self.top:
            row: dict[str, Any] = {"pid": p.pid, "comm": self.comms.get(p.pid, "?"),
                                   "vmpte_kib": p.pte_kib, "vmrss_kib": p.rss_kib,
                                   "ratio": p.ratio, "maps": p.maps}
            if p.pid in self.empty:
                row["empty_tables_est"] = self.empty[p.pid].empty_tables
            top.append(row)
        return {
            "time": self.time, "interval": self.index, "policy": policy,
            "advice": self.advice.as_dict(),
            "obs": {n: float(v) for n, v in zip(OBS_NAMES, self.obs, strict=True)},
            "unavailable": self.unavailable,
            "host": {"zone_pages": z.pages, "free_pages": z.free,
                     "wmark_min_low_high": [z.min, z.low, z.high], "zones": list(z.zones),
                     "page_tables_kib": self.host.pt_kib, "psi": self.host.psi},
            "processes": len(self.scan.procs), "vanished": self.scan.vanished,
            "unreadable": len(self.scan.unreadable), "maps_unreadable": len(self.scan.maps_denied),
            "top": top, "notes": notes,
            "sample_cpu_ms": round(self.cpu_ms, 3), "sample_wall_ms": round(self.wall_ms, 3),
        }


@dataclass
class Advisor:
    """Samples the host and asks the policy, one interval at a time."""

    live: LivePolicy
    root: Path
    notes: Notes
    interval_s: float
    top_rows: int = 10
    scan_top: int = 0
    want_maps: bool = True
    index: int = 0

    def __post_init__(self) -> None:
        self.state = LiveState(self.interval_s, time.monotonic())

    def sample(self) -> Interval:
        """Take one sample and decide."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        now = time.monotonic()
        host = read_host(self.root, self.notes)
        scan = sample_processes(self.root, self.want_maps)
        self._note_scan(scan)
        obs, missing = observe(host, scan.procs, self.state, now)
        if missing:
            self.notes.add("unavailable", "not available live (neutral value): "
                           + ", ".join(missing))
        advice = advise(self.live, obs, scan.procs, self.root)
        if advice.target != "none":
            # Shadow mode: as if the advised pass had run (since_pass restarts).
            self.state.last_advised = now
        top = features.top_consumers(scan.procs, max(self.top_rows, self.scan_top))
        empty = (scan_empty_tables(self.root, top[:self.scan_top], self.notes)
                 if self.scan_top else {})
        comms = {p.pid: read_comm(self.root, p.pid) for p in top[:self.top_rows]}
        cpu = (time.process_time() - cpu0) * 1000.0
        wall = (time.perf_counter() - wall0) * 1000.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        it = Interval(self.index, host, scan, obs, missing, advice, empty,
                      top[:self.top_rows], comms, cpu, wall, stamp)
        self.index += 1
        return it

    def _note_scan(self, scan: ProcScan) -> None:
        if scan.unreadable:
            pid, why = scan.unreadable[0]
            self.notes.add("unreadable-status", f"could not read /proc/PID/status of "
                           f"{len(scan.unreadable)} process(es) (e.g. {pid}: {why}); they are "
                           "left out (counted as 'unreadable')")
        if scan.maps_denied:
            self.notes.add("maps-denied", f"could not read /proc/PID/maps of "
                           f"{len(scan.maps_denied)} process(es) (e.g. {scan.maps_denied[0]}: "
                           "reading another process's mappings needs ptrace read access -- "
                           "the same user, or CAP_SYS_PTRACE for a process with more "
                           "capabilities); their mapping count is unknown")

