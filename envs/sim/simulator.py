"""The simulation: a machine, processes driven by workloads, and reclaim.

One :meth:`Simulation.step` is one tick (``machine.tick_ms``): the tenants'
demand moves, every active workload emits its memory ops, the zones are
accounted, allocation failures stall tasks and may trigger the OOM killer,
per-process hard limits are enforced, and PSI is updated.  A policy calls
:meth:`Simulation.reclaim` between ticks.  Everything random comes from the
one ``numpy.random.Generator`` given at construction: the same seed gives the
same trajectory, bit for bit.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from .config import ConfigError, check_range, did_you_mean
from .costs import CostModel
from .machine import Machine, MachineConfig
from .mechanisms import Mechanism, MechanismConfig
from .pagetable import AddressSpace, TableClass
from .process import RATE_DECAY, TABLE_BYTES, Process
from .reclaim import PassResult, ReclaimConfig, reclaim_pass, reclaim_slots
from .seeding import default_rng
from .workloads import WORKLOADS
from .workloads.base import Workload

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload of a scenario: a family, its parameters, and its phase."""

    family: str
    params: dict[str, Any] = field(default_factory=dict)
    count: int = 1  # independent instances (each with its own processes)
    start_tick: int = 0
    stop_tick: int = 0  # 0: runs to the end
    jitter: float = -1.0  # < 0: the scenario's jitter

    def __post_init__(self) -> None:
        if self.family not in WORKLOADS:
            raise ConfigError(f"workload family {self.family!r} is unknown"
                              f"{did_you_mean(self.family, WORKLOADS)}; "
                              f"known: {', '.join(sorted(WORKLOADS))}")
        check_range(f"{self.family}.count", self.count, 1, 1000)
        check_range(f"{self.family}.start_tick", self.start_tick, 0, 10**9)
        check_range(f"{self.family}.stop_tick", self.stop_tick, 0, 10**9)
        if self.stop_tick and self.stop_tick <= self.start_tick:
            raise ConfigError(f"{self.family}: stop_tick ({self.stop_tick}) must come after "
                              f"start_tick ({self.start_tick}), or be 0 for never")
        check_range(f"{self.family}.jitter", self.jitter, -1.0, 0.9)


@dataclass(frozen=True)
class ScenarioConfig:
    """A machine and the workloads that run on it."""

    name: str = "scenario"
    description: str = ""
    machine: MachineConfig = field(default_factory=MachineConfig)
    workloads: tuple[WorkloadSpec, ...] = ()
    ticks: int = 600
    pt_reclaim: bool = True  # the 6.14+ on-zap reclaim (False: older kernels)
    jitter: float = 0.2  # seeded relative randomisation of workload parameters
    costs: CostModel = field(default_factory=CostModel)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    #: The kernel design (envs/sim/mechanisms.py); none chosen: the model as measured.
    mechanism: MechanismConfig = field(default_factory=MechanismConfig)

    def __post_init__(self) -> None:
        check_range("ticks", self.ticks, 1, 10**7)
        check_range("jitter", self.jitter, 0.0, 0.9)
        self.mechanism.check(self.pt_reclaim)


@dataclass
class TickRecord:
    """What happened in one tick (raw numbers; the env turns them into costs)."""

    tick: int
    normal_free_pages: int
    movable_free_pages: int
    tenant_pages: int
    pt_pages: int
    reclaimable_tables: int
    user_pages: int
    deficit_pages: int
    failure: bool
    oom_kill: str | None
    psi_some_avg10: float
    psi_full_avg10: float
    stall_us: float
    refault_tables: int
    refault_entries: int
    harm_events: int
    reclaim_cpu_us: float = 0.0
    reclaim_freed: int = 0
    reclaim_scanned: int = 0



def workload_instances(scenario: ScenarioConfig, rng: np.random.Generator
                       ) -> Iterator[tuple[WorkloadSpec, type[Workload], Any,
                                           np.random.Generator, str]]:
    """Each workload instance of ``scenario`` in order: its spec, class, jittered config,
    own generator and name.  Both simulators (this one and the compiled core's
    ``FastSimulation``) build their workloads from it, so they make the same draws from
    ``rng`` in the same order (lazily: one instance's draws, then the next's)."""
    for _, spec, cls, _, config, wrng, name in workload_builds(scenario, rng):
        yield spec, cls, config, wrng, name


def workload_builds(scenario: ScenarioConfig, rng: np.random.Generator
                    ) -> Iterator[tuple[int, WorkloadSpec, type[Workload], Any, Any,
                                        np.random.Generator, str]]:
    """:func:`workload_instances` with the spec's index in the scenario and its unjittered
    config (spec index, spec, class, unjittered config, jittered config, generator, name).
    The unjittered config of a spec is built once (:func:`base_config`); only the jitter
    draws and the jittered config's checks are made per instance."""
    for i, spec in enumerate(scenario.workloads):
        cls = WORKLOADS[spec.family]
        jitter = scenario.jitter if spec.jitter < 0 else spec.jitter
        where = f"{scenario.name}.workloads[{i}].params"
        for k in range(spec.count):
            # numpy's default_rng, bit for bit, at a quarter of the cost (seeding.py)
            wrng = default_rng(rng.integers(0, 2**63))
            if k == 0:  # after the first draw, where a config that fails failed before
                base = base_config(spec, where)
            config = cls.jitter_config(base, where, jitter, wrng)
            yield i, spec, cls, base, config, wrng, f"{spec.family}{i}" + (
                f".{k}" if spec.count > 1 else "")


class ObjectCache(Generic[_K, _V]):
    """A value computed once per object and kept while the object lives, found by identity
    (the object need not be hashable: a frozen spec holds a dict)."""

    def __init__(self, make: Callable[..., _V]) -> None:
        self._make = make
        self._entries: dict[int, tuple[weakref.ref[_K], _V]] = {}

    def __call__(self, obj: _K, *args: Any) -> _V:
        """The value for ``obj``: ``make(obj, *args)`` the first time."""
        key = id(obj)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is obj:
            return entry[1]
        value = self._make(obj, *args)
        entries = self._entries

        def gone(_: weakref.ref[_K]) -> None:
            # The entry goes when the object does, before its id can be reused.
            entries.pop(key, None)

        entries[key] = (weakref.ref(obj, gone), value)
        return value

    def forget(self, obj: _K) -> None:
        """Drop the value of ``obj`` (the next call makes it again)."""
        self._entries.pop(id(obj), None)


def _build_base(spec: WorkloadSpec, where: str) -> tuple[dict[str, Any], Any]:
    return copy.deepcopy(spec.params), WORKLOADS[spec.family].base_config(spec.params, where)


_BASE_CONFIGS: ObjectCache[WorkloadSpec, tuple[dict[str, Any], Any]] = ObjectCache(_build_base)


def base_config(spec: WorkloadSpec, where: str) -> Any:
    """``WORKLOADS[spec.family].base_config(spec.params, where)``, built once per spec:
    every env reset builds its scenario's workloads, and building a config from params
    (converting and validating every field) cost more than the rest of a reset's Python.
    It is built again if the spec's params no longer equal what it was built from (a
    frozen spec's dict can still be changed in place).  A config is frozen and holds only
    numbers and strings, so instances and episodes can share it; one that fails to build
    is not cached (the error is raised again, naming ``where``)."""
    params, config = _BASE_CONFIGS(spec, where)
    if params != spec.params:
        _BASE_CONFIGS.forget(spec)
        params, config = _BASE_CONFIGS(spec, where)
    return config


class Simulation:
    """A running scenario."""

    def __init__(self, scenario: ScenarioConfig, rng: np.random.Generator) -> None:
        self.scenario = scenario
        self.rng = rng
        self.costs = scenario.costs
        self.machine = Machine(scenario.machine, rng)
        self.procs: list[Process] = []
        self.tick_no = 0
        self.history: list[TickRecord] = []
        self.events: list[tuple[int, str]] = []
        self._next_pid = 100
        self._pending_reclaim: list[PassResult] = []
        self._harm = 0
        #: Tables re-faulted per tick after reclaim freed them, by the class they had
        #: (empty, zero, file), averaged like the processes' rates (``RATE_DECAY``).
        self.refault_class_rate = [0.0, 0.0, 0.0]
        #: With ``record_touches()``: process name -> slot -> ticks it was accessed.
        self.touch_trace: dict[str, dict[int, list[int]]] | None = None
        self.mechanism = Mechanism(self, scenario.mechanism)
        self._workloads: list[tuple[WorkloadSpec, Workload]] = []
        for spec, cls, config, wrng, name in workload_instances(scenario, rng):
            self._workloads.append((spec, cls(config, self, wrng, name)))

    # -- processes ------------------------------------------------------------

    def spawn(self, name: str, family: str, *, sane: bool = True, cpus: int = 1) -> Process:
        """Start a process with an empty address space."""
        mm = AddressSpace(pt_reclaim=self.scenario.pt_reclaim)
        p = Process(self._next_pid, name, family, mm, sane=sane, cpus=cpus)
        self._next_pid += 1
        self.procs.append(p)
        self.mechanism.attach(p)
        return p

    def exit_process(self, p: Process, reason: str) -> None:
        """The process exits (or is killed): exit_mmap frees every table."""
        p.mm.exit()
        p.alive = False
        self.events.append((self.tick_no, f"{p.name} (pid {p.pid}) exits: {reason}"))

    @property
    def workloads(self) -> list[Workload]:
        """The workload instances, in scenario order."""
        return [w for _, w in self._workloads]

    @property
    def alive(self) -> list[Process]:
        return [p for p in self.procs if p.alive]

    # -- the tick ------------------------------------------------------------

    def step(self) -> TickRecord:
        """Advance one tick and return its record."""
        t = self.tick_no
        m = self.machine
        m.step_tenants()
        for p in self.procs:
            p.stall_us = 0.0
        for spec, w in self._workloads:
            if t == spec.start_tick:
                w.start()
                if self.touch_trace is not None:
                    for p in w.procs:
                        p.mm.touch_log = set()
            if spec.stop_tick and t == spec.stop_tick:
                w.stop()
            if t >= spec.start_tick and (not spec.stop_tick or t < spec.stop_tick):
                w.step(t)
        self._pending_reclaim.extend(self.mechanism.tick())
        alive = self.alive
        if self.touch_trace is not None:
            self._record_touches(t)
        # Refaults of tables that reclaim took away stall the faulting process.
        refault_tables = refault_entries = 0
        class_refaults = [0, 0, 0]
        for p in alive:
            s = p.mm.stats
            dt = s.refault_tables - p.last_refault_tables
            de = s.refault_entries - p.last_refault_entries
            if dt or de:
                # Reclaim never frees a table under a userfaultfd VMA.
                p.stall_us += self.costs.refault_us(dt, de, uffd=False)
                refault_tables += dt
                refault_entries += de
            p.last_refault_tables, p.last_refault_entries = s.refault_tables, s.refault_entries
            p.refault_rate = p.refault_rate * RATE_DECAY + dt * (1.0 - RATE_DECAY)
            da = s.pte_allocated - p.last_pte_allocated
            p.last_pte_allocated = s.pte_allocated
            p.growth_rate = p.growth_rate * RATE_DECAY + da * (1.0 - RATE_DECAY)
            by_class = (s.refault_empty, s.refault_zero, s.refault_file)
            for c in range(3):
                class_refaults[c] += by_class[c] - p.last_refault_class[c]
                p.last_refault_class[c] = by_class[c]
        for c in range(3):
            self.refault_class_rate[c] = (self.refault_class_rate[c] * RATE_DECAY
                                          + class_refaults[c] * (1.0 - RATE_DECAY))
        pt_pages = sum(p.mm.tables for p in alive)
        user_pages = self._user_pages(alive)
        deficit = m.account(pt_pages, user_pages)
        oom_victim: str | None = None
        harm = 0
        if deficit > 0:
            # Tasks allocating unmovable memory enter direct reclaim/compaction.
            for p in alive:
                p.stall_us += self.costs.alloc_failure_stall_us
            if m.record_failure_tick(t) and alive:
                victim = max(alive, key=lambda q: (q.badness(), -q.pid))
                oom_victim = victim.name
                harm += int(victim.sane)
                self.exit_process(victim, "OOM killer (largest RSS + page tables)")
                alive = self.alive
                pt_pages = sum(p.mm.tables for p in alive)
                user_pages = self._user_pages(alive)
                m.account(pt_pages, user_pages)
        harm += self._enforce_hard_limits(t)
        tick_us = m.config.tick_ms * 1000.0
        stalls = [min(p.stall_us, tick_us) for p in self.alive]
        some = max(stalls, default=0.0) / tick_us
        full = min(stalls, default=0.0) / tick_us
        m.psi.update(some, full, m.tick_s)
        for p in self.procs:
            if p.alive:
                p.history.append(p.pt_bytes)
        passes, self._pending_reclaim = self._pending_reclaim, []
        rec = TickRecord(
            tick=t, normal_free_pages=m.normal_free, movable_free_pages=m.movable_free,
            tenant_pages=int(m.tenant_pages), pt_pages=pt_pages,
            reclaimable_tables=sum(p.reclaimable_tables for p in self.alive),
            user_pages=user_pages, deficit_pages=deficit, failure=deficit > 0,
            oom_kill=oom_victim, psi_some_avg10=m.psi.some_avg10,
            psi_full_avg10=m.psi.full_avg10, stall_us=sum(stalls),
            refault_tables=refault_tables, refault_entries=refault_entries,
            harm_events=harm + self._harm,
            reclaim_cpu_us=sum(r.cpu_us for r in passes),
            reclaim_freed=sum(r.freed for r in passes),
            reclaim_scanned=sum(r.scanned for r in passes))
        self._harm = 0
        self.history.append(rec)
        self.tick_no += 1
        return rec

    def _user_pages(self, alive: list[Process]) -> int:
        """Resident user pages of the live processes: what they map (RSS), and with
        ``machine.keep_reclaimed_cache`` the page cache that reclaim unmapped from them
        and that stays cached (``AddressSpace.kept_pages``)."""
        if self.machine.config.keep_reclaimed_cache:
            return sum(p.mm.rss_pages + p.mm.kept_pages for p in alive)
        return sum(p.mm.rss_pages for p in alive)

    def _enforce_hard_limits(self, t: int) -> int:
        """A process over its page-table hard limit has its table allocations
        fail: it is throttled (faults blocked) or killed, as configured.

        Harm to a sane process is one event per kill and one per throttle window
        (``machine.throttle_ticks``), the unit ``RewardWeights.harm`` prices; the
        ticks it spends blocked are charged as its stall (``app_stall``), not as
        more harm events (counting every tick made a second of throttling cost
        ten OOM kills)."""
        harm = 0
        cfg = self.machine.config
        for p in self.alive:
            limit = p.pt_hard_limit_bytes
            if limit is None or p.pt_bytes <= limit:
                continue
            if cfg.hard_limit_action == "kill":
                harm += int(p.sane)
                self.exit_process(p, "over its page-table hard limit")
            elif p.throttled_until <= t:
                harm += int(p.sane)
                p.throttled_until = t + cfg.throttle_ticks
                p.stall_us += cfg.tick_ms * 1000.0
                self.events.append((t, f"{p.name} throttled: over its page-table hard limit"))
        return harm

    # -- reclaim --------------------------------------------------------------

    def reclaim(self, target: Process | None, classes: frozenset[TableClass],
                budget: int, min_idle: int = 0) -> PassResult:
        """Run one reclaim pass now (see :func:`reclaim.reclaim_pass`); its
        costs are charged to the next tick's record."""
        result = reclaim_pass(self, target, classes, budget, min_idle)
        self._pending_reclaim.append(result)
        return result

    def reclaim_exact(self, p: Process, slots: list[int],
                      classes: frozenset[TableClass]) -> PassResult:
        """Free exactly ``slots`` of ``p`` (privileged: no search; the offline
        oracle uses it).  Charged like a pass that scanned only these."""
        result = reclaim_slots(self, p, slots, classes)
        self._pending_reclaim.append(result)
        return result

    def record_touches(self) -> None:
        """Start recording which PTE slots each process accesses, per tick."""
        self.touch_trace = {}
        for p in self.procs:
            p.mm.touch_log = set()

    def _record_touches(self, t: int) -> None:
        assert self.touch_trace is not None
        for p in self.procs:
            log = p.mm.touch_log
            if log:
                per_slot = self.touch_trace.setdefault(p.name, {})
                for slot in log:
                    per_slot.setdefault(slot, []).append(t)
                log.clear()

    def set_hard_limit(self, p: Process, limit_bytes: int | None) -> None:
        """Set (or clear) a process's page-table hard limit."""
        p.pt_hard_limit_bytes = limit_bytes

    def set_soft_limit(self, p: Process, limit_bytes: int | None) -> None:
        """Set (or clear) a process's page-table soft limit (reclaim order)."""
        p.pt_soft_limit_bytes = limit_bytes

    # -- summaries -----------------------------------------------------------

    def pt_bytes(self) -> int:
        return sum(p.pt_bytes for p in self.alive)

    def run(self, ticks: int | None = None) -> list[TickRecord]:
        """Run ``ticks`` ticks (default: the scenario's) with no reclaim policy."""
        for _ in range(self.scenario.ticks if ticks is None else ticks):
            self.step()
        return self.history


__all__ = ["TABLE_BYTES", "ScenarioConfig", "Simulation", "TickRecord", "WorkloadSpec"]
