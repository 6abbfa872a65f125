"""``FastSimulation``: the compiled core behind :class:`~..simulator.Simulation`'s API.

It is built exactly as the reference builds itself -- the same draws from the scenario's
generator for each workload's own generator and jittered config -- and then hands the
configs and the generators to the compiled core (``_fast.SimCore``), which draws from
those same generators through numpy's C distribution functions.  Everything a policy, the
env or a report reads (tick records, events, processes, the machine) is served from the
core; the differential tests (``tests/test_fast_sim.py``) compare all of it with the
reference tick by tick.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..config import ConfigError
from ..pagetable import PAGE, TableClass
from ..reclaim import PassResult
from ..simulator import ObjectCache, ScenarioConfig, TickRecord, base_config, workload_builds
from ..workloads import WORKLOADS
from ._fast import ADVICES, FastTraceProgram, SimCore, has_family

_TICK_FIELDS = tuple(f.name for f in dataclasses.fields(TickRecord))


#: False while the compiled core lags the reference (env v1's recency, rates and costs
#: are being ported): ``auto`` then runs the exact reference.
CORE_CURRENT = True


def supports(scenario: ScenarioConfig) -> str | None:
    """None when the compiled core can run ``scenario``, else why not (one line)."""
    if not CORE_CURRENT:
        return "the compiled core does not follow env v1 yet"
    if scenario.mechanism.active:
        return (f"mechanism.design {scenario.mechanism.design!r} has no compiled port "
                "(envs/sim/mechanisms.py runs on the exact backend)")
    for spec in scenario.workloads:
        if not has_family(spec.family):
            return f"workload family {spec.family!r} has no compiled port yet"
    return None


_TRACE_OPS = {"touch": 0, "madvise": 1, "munmap": 2, "mprotect": 3, "mremap": 4, "mmap": 5,
              "install": 6}
_SHM_ANON = -2  # trace_program.hpp TRACE_KEY_SHM_ANON
_ADVICE_INDEX = {name: i for i, name in enumerate(ADVICES)}


def _encode_program(trace_name: str) -> FastTraceProgram:
    """The compiled replay program of a trace in the core's encoding (cached per trace)."""
    from ..workloads.trace import compile_trace, resolve_trace

    trace = resolve_trace(trace_name)
    cached = trace.derived.get("fast_program")
    if cached is not None:
        return cached
    program = compile_trace(trace)
    keys: dict[str, int] = {}

    def key(k: str | None) -> int:
        if k is None:
            return -1
        if k == "shm-anon":
            return _SHM_ANON
        return keys.setdefault(k, len(keys))

    rows: list[list[int]] = []
    offsets = [0]
    for ops in program:
        for name, args in ops:
            row = [_TRACE_OPS[name]]
            if name == "touch":
                row += [args[0], args[1], int(args[2])]
            elif name == "madvise":
                row += [args[0], args[1], _ADVICE_INDEX[args[2]]]
            elif name in ("munmap", "mprotect"):
                row += list(args)
            elif name == "mremap":
                old, old_len, new_len, new_addr, dontunmap = args
                row += [old, old_len, new_len, int(new_addr is not None),
                        0 if new_addr is None else new_addr, int(dontunmap)]
            elif name == "mmap":
                addr, length, k, shared, prot, foff, noreserve, fixed, populate = args
                row += [addr, length, key(k), int(shared), prot, foff, int(noreserve),
                        int(fixed), int(populate)]
            else:  # install
                start, end, flags, pgoff, k, anon_vma = args
                row += [start, end, flags, pgoff, key(k), int(anon_vma)]
            rows.append(row + [0] * (10 - len(row)))
        offsets.append(len(rows))
    shm = tuple(p for p in ("/memfd:", "/dev/shm/", "/SYSV"))
    fast = FastTraceProgram(np.asarray(rows, dtype=np.int64).reshape(-1, 10),
                            np.asarray(offsets, dtype=np.int64),
                            [k.startswith(shm) for k in keys],
                            np.ascontiguousarray(trace.t_ms, dtype=np.float64))
    trace.derived["fast_program"] = fast
    return fast


def _class_mask(classes: frozenset[TableClass]) -> int:
    m = 0
    for c in classes:
        m |= 1 << int(c)
    return m


def _split_config(config: Any) -> tuple[dict[str, float], dict[str, str]]:
    """A workload config dataclass as numeric and text fields."""
    num: dict[str, float] = {}
    text: dict[str, str] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            num[f.name] = float(value)
        elif isinstance(value, (int, float)):
            num[f.name] = value
        elif isinstance(value, str):
            text[f.name] = value
        else:
            raise ConfigError(f"{type(config).__name__}.{f.name}: the compiled core cannot "
                              f"take a {type(value).__name__} field")
    return num, text


@dataclasses.dataclass(frozen=True)
class _TableView:
    """One PTE table as the offline oracle reads it (entries and huge state)."""

    entries: bytes
    huge: int


# The views below hold the SimCore and a process index, never the FastSimulation or the
# object that owns them: without reference cycles a finished episode's simulation (and its
# compiled state, megabytes of page tables) is freed the moment the env drops it, and the
# next episode reuses that memory.  With cycles it waited for a full garbage collection
# (rare during training), so each episode grew the heap into fresh pages instead.


class _PteView:
    """``mm.pte[slot]`` of a compiled process."""

    def __init__(self, core: SimCore, index: int) -> None:
        self._core = core
        self._index = index

    def __getitem__(self, slot: int) -> _TableView:
        entries, huge = self._core.table(self._index, slot)
        return _TableView(entries, huge)


class _MmView:
    """What callers read of a compiled process's address space."""

    def __init__(self, core: SimCore, index: int) -> None:
        self._core = core
        self._index = index
        self.pte = _PteView(core, index)

    def _numbers(self) -> tuple[int, ...]:
        return self._core.proc_numbers(self._index)

    def tables_in_class(self, cls: TableClass) -> set[int]:
        return self._core.tables_in_class(self._index, int(cls))

    def slot_is_uffd(self, slot: int) -> bool:
        return bool(self._core.slot_is_uffd(self._index, slot))

    @property
    def tables(self) -> int:
        return int(self._numbers()[0])

    @property
    def vm_pte_kib(self) -> int:
        return 4 * self.tables

    @property
    def rss_pages(self) -> int:
        return int(self._numbers()[1])

    def class_counts(self) -> tuple[int, int, int, int]:
        n = self._numbers()
        return (n[5], n[6], n[7], n[8])

    def class_count(self, cls: TableClass) -> int:
        return int(self._numbers()[5 + int(cls)])


class FastProcess:
    """A live view of one compiled process (:class:`~..process.Process`'s read API)."""

    def __init__(self, sim: FastSimulation, index: int) -> None:
        self._core = sim.core
        self.index = index
        pid, name, family, sane, cpus, _, _ = sim.core.proc_info(index)
        self.pid: int = pid
        self.name: str = name
        self.family: str = family
        self.sane: bool = sane
        self.cpus: int = cpus
        self.mm = _MmView(sim.core, index)

    def _numbers(self) -> tuple[int, ...]:
        return self._core.proc_numbers(self.index)

    @property
    def alive(self) -> bool:
        return bool(self._core.proc_info(self.index)[5])

    @property
    def throttled_until(self) -> int:
        return int(self._core.proc_info(self.index)[6])

    @property
    def pt_bytes(self) -> int:
        return int(self._numbers()[2])

    @property
    def rss_bytes(self) -> int:
        return int(self._numbers()[3])

    @property
    def reclaimable_tables(self) -> int:
        return int(self._numbers()[4])

    @property
    def pt_soft_limit_bytes(self) -> int | None:
        return self._core.proc_limits(self.index)[0]

    @property
    def pt_hard_limit_bytes(self) -> int | None:
        return self._core.proc_limits(self.index)[1]

    @property
    def over_soft_limit(self) -> bool:
        soft = self.pt_soft_limit_bytes
        return soft is not None and self.pt_bytes > soft

    @property
    def history(self) -> list[int]:
        return self._core.proc_history(self.index)

    @property
    def stall_us(self) -> float:
        return float(self._core.proc_stall(self.index))

    @property
    def growth_rate(self) -> float:
        return float(self._core.proc_rates(self.index)[0])

    @property
    def refault_rate(self) -> float:
        return float(self._core.proc_rates(self.index)[1])

    def class_count(self, cls: TableClass) -> int:
        return self.mm.class_count(cls)

    def runnable(self, tick: int) -> bool:
        return self.alive and tick >= self.throttled_until

    def badness(self) -> int:
        n = self._numbers()
        return int(n[1] + n[0])


@dataclasses.dataclass
class _MachineState:
    """The part of :class:`~..machine.Machine` that changes tick by tick."""

    normal_free: int
    movable_free: int
    tenant_pages: float
    psi_some_avg10: float
    psi_some_avg60: float
    psi_full_avg10: float
    psi_full_avg60: float


class _Psi:
    def __init__(self, core: SimCore) -> None:
        self._core = core

    @property
    def some_avg10(self) -> float:
        return float(self._core.machine_state()[3])

    @property
    def some_avg60(self) -> float:
        return float(self._core.machine_state()[4])

    @property
    def full_avg10(self) -> float:
        return float(self._core.machine_state()[5])

    @property
    def full_avg60(self) -> float:
        return float(self._core.machine_state()[6])


@dataclasses.dataclass(frozen=True)
class _Static:
    """What a compiled simulation of a scenario is configured with before any draw: a
    function of the (frozen) scenario alone, so it is made once per scenario
    (:data:`_STATIC`) rather than at every env reset."""

    #: The static part of the machine (config, zone sizes, watermarks, the tenants' demand
    #: at tick 0) as a reference Machine has it; building one draws nothing.
    machine: Any
    #: ``SimCore.configure``'s machine parameters and costs.
    params: dict[str, Any]
    costs: dict[str, Any]
    #: Per workload spec (by position): its unjittered config as numeric and text fields,
    #: and whether the jitter fields are plain numbers (then a jittered config's split is
    #: this one with those fields replaced).
    splits: list[tuple[Any, dict[str, float], dict[str, str], bool] | None]


def _make_static(scenario: ScenarioConfig) -> _Static:
    from ..machine import Machine

    m = Machine(scenario.machine, np.random.default_rng(0))
    mc = scenario.machine
    params = {
        "normal_pages": m.normal_pages, "movable_pages": m.movable_pages,
        "cpus": mc.cpus, "tick_ms": float(mc.tick_ms), "wmin": m.wmark.min,
        "wlow": m.wmark.low, "whigh": m.wmark.high,
        "base_fraction": mc.tenants.base_fraction, "volatility": mc.tenants.volatility,
        "reversion": mc.tenants.reversion, "burst_prob": mc.tenants.burst_prob,
        "burst_fraction": mc.tenants.burst_fraction,
        "burst_ticks": mc.tenants.burst_ticks,
        "burst_ramp_ticks": mc.tenants.burst_ramp_ticks,
        "diurnal_amplitude": mc.tenants.diurnal_amplitude,
        "diurnal_period_ticks": mc.tenants.diurnal_period_ticks,
        "diurnal_phase": mc.tenants.diurnal_phase, "oom_failures": mc.oom_failures,
        "oom_window_ticks": mc.oom_window_ticks,
        "hard_limit_kill": mc.hard_limit_action == "kill",
        "throttle_ticks": mc.throttle_ticks, "tenant_pages": m.tenant_pages,
        "keep_reclaimed_cache": mc.keep_reclaimed_cache}
    return _Static(m, params, dataclasses.asdict(scenario.costs),
                   [None] * len(scenario.workloads))


_STATIC: ObjectCache[ScenarioConfig, _Static] = ObjectCache(_make_static)


def _workload_fields(static: _Static, index: int, cls: Any, base: Any, config: Any
                     ) -> tuple[dict[str, float], dict[str, str]]:
    """``_split_config(config)`` for the workload spec at ``index``, whose unjittered
    config is ``base``: the split of ``base`` (made once) with the jitter fields, the only
    ones jitter changes, read from ``config``."""
    split = static.splits[index]
    if split is None or split[0] is not base:
        num, text = _split_config(base)
        plain = all(type(num.get(n)) in (int, float) and type(getattr(base, n)) is not bool
                    for n in cls.jitter_fields)
        split = static.splits[index] = (base, num, text, plain)
    _, num, text, plain = split
    if config is base:
        return dict(num), text
    if not plain:
        return _split_config(config)
    num = dict(num)
    for n in cls.jitter_fields:
        num[n] = getattr(config, n)
    return num, text


def prepare(scenario: ScenarioConfig) -> None:
    """Make now what every :class:`FastSimulation` of ``scenario`` reuses: the static
    machine and cost parameters and each workload spec's unjittered config and its fields.
    Otherwise the first episode of each scenario makes them, and a training suite has
    many scenarios (137), each drawn once in a while.  Nothing is drawn; a scenario the
    core cannot run, or whose config does not build, is left to the reset that builds it
    (which raises as it always did)."""
    if supports(scenario) is not None:
        return
    static = _STATIC(scenario)
    for i, spec in enumerate(scenario.workloads):
        try:
            base = base_config(spec, f"{scenario.name}.workloads[{i}].params")
        except ConfigError:
            return
        _workload_fields(static, i, WORKLOADS[spec.family], base, base)


class FastMachine:
    """:class:`~..machine.Machine`'s read API over the compiled core."""

    def __init__(self, sim: FastSimulation) -> None:
        self._core = sim.core
        ref = _STATIC(sim.scenario).machine
        self.config = ref.config
        self.normal_pages = ref.normal_pages
        self.movable_pages = ref.movable_pages
        self.wmark = ref.wmark
        self.psi = _Psi(sim.core)
        self._initial_tenants = ref.tenant_pages

    def _state(self) -> tuple[Any, ...]:
        return self._core.machine_state()

    @property
    def tick_s(self) -> float:
        return self.config.tick_ms / 1000.0

    @property
    def normal_free(self) -> int:
        return int(self._state()[0])

    @property
    def movable_free(self) -> int:
        return int(self._state()[1])

    @property
    def tenant_pages(self) -> float:
        return float(self._state()[2])


class FastSimulation:
    """A running scenario on the compiled core, with :class:`~..simulator.Simulation`'s API."""

    def __init__(self, scenario: ScenarioConfig, rng: np.random.Generator) -> None:
        reason = supports(scenario)
        if reason is not None:
            raise ConfigError(f"scenario {scenario.name!r}: {reason}; use the exact backend")
        self.scenario = scenario
        self.rng = rng
        self.costs = scenario.costs
        self.core = SimCore()
        self.machine = FastMachine(self)
        static = _STATIC(scenario)
        self.core.configure(static.params, static.costs, scenario.ticks, scenario.pt_reclaim,
                            scenario.reclaim.lock == "mmap_write", rng)
        # Exactly Simulation.__init__'s draws, in its order.
        for i, spec, cls, base, config, wrng, name in workload_builds(scenario, rng):
            num, text = _workload_fields(static, i, cls, base, config)
            program = _encode_program(config.trace) if spec.family == "trace" else None
            self.core.add_workload(spec.family, num, text, wrng, name, cls.sane,
                                   spec.start_tick, spec.stop_tick, program)
        self._procs: list[FastProcess] = []
        self._history: list[TickRecord] = []
        self._events: list[tuple[int, str]] = []

    # -- processes ------------------------------------------------------------

    @property
    def procs(self) -> list[FastProcess]:
        n = self.core.n_procs
        while len(self._procs) < n:
            self._procs.append(FastProcess(self, len(self._procs)))
        return self._procs

    @property
    def alive(self) -> list[FastProcess]:
        return [p for p in self.procs if p.alive]

    # -- the tick -------------------------------------------------------------

    @property
    def tick_no(self) -> int:
        return int(self.core.tick_no)

    def _record(self, i: int) -> TickRecord:
        values = list(self.core.record(i))
        victim = values[9]
        if victim is not None:
            values[9] = self.procs[victim].name
        return TickRecord(**dict(zip(_TICK_FIELDS, values, strict=True)))

    @property
    def history(self) -> list[TickRecord]:
        n = self.core.n_records
        while len(self._history) < n:
            self._history.append(self._record(len(self._history)))
        return self._history

    @property
    def events(self) -> list[tuple[int, str]]:
        n = self.core.n_events
        if len(self._events) < n:
            self._events.extend(self.core.events_since(len(self._events)))
        return self._events

    def step(self) -> TickRecord:
        """Advance one tick and return its record."""
        self.core.step()
        return self.history[-1]

    def run(self, ticks: int | None = None) -> list[TickRecord]:
        self.core.run(self.scenario.ticks if ticks is None else ticks)
        return self.history

    # -- reclaim --------------------------------------------------------------

    def _pass(self, raw: tuple[Any, ...]) -> PassResult:
        scanned, freed, by_class, zapped, cpu, stall, targets, seen, idle1, idle4 = raw
        return PassResult(scanned=scanned, freed=freed,
                          freed_by_class={TableClass(c): n for c, n in enumerate(by_class) if n},
                          zapped_entries=zapped, cpu_us=cpu, stall_us=stall, targets=targets,
                          seen=seen, idle1=idle1, idle4=idle4)

    def reclaim(self, target: FastProcess | None, classes: frozenset[TableClass],
                budget: int, min_idle: int = 0) -> PassResult:
        """One reclaim pass now (see :func:`..reclaim.reclaim_pass`)."""
        idx = None if target is None else target.index
        return self._pass(self.core.reclaim(idx, _class_mask(classes), budget, min_idle))

    @property
    def refault_class_rate(self) -> list[float]:
        return self.core.refault_class_rate

    def reclaim_exact(self, p: FastProcess, slots: list[int],
                      classes: frozenset[TableClass]) -> PassResult:
        return self._pass(self.core.reclaim_exact(p.index, list(slots), _class_mask(classes)))

    # -- the offline oracle --------------------------------------------------

    def __deepcopy__(self, memo: dict[int, Any]) -> FastSimulation:
        """A copy that runs the same future (``copy.deepcopy`` of the reference)."""
        c = FastSimulation.__new__(FastSimulation)
        c.scenario = self.scenario
        c.costs = self.costs
        c.core = self.core.clone()
        c.rng = self.rng  # unused by the core after construction
        c.machine = FastMachine(c)
        c._procs = []
        c._history = list(self._history)
        c._events = list(self._events)
        return c

    def record_touches(self) -> None:
        """Start recording which PTE slots each process accesses, per tick."""
        self.core.record_touches()

    @property
    def touch_trace(self) -> dict[str, dict[int, list[int]]] | None:
        """Process name -> slot -> ticks it was accessed (as the reference keeps it)."""
        out: dict[str, dict[int, list[int]]] = {}
        for i, per_slot in enumerate(self.core.touch_trace()):
            if not per_slot:
                continue
            name = self.procs[i].name
            if name not in out:
                # Each list is in tick order already (the core appends each tick's slots).
                out[name] = per_slot
                continue
            merged = out[name]
            for slot, ticks in per_slot.items():
                # Processes sharing a name share the reference's lists: merge by tick.
                merged[slot] = sorted(merged.get(slot, []) + ticks)
        return out

    def set_hard_limit(self, p: FastProcess, limit_bytes: int | None) -> None:
        self.core.set_limit(p.index, True, limit_bytes)

    def set_soft_limit(self, p: FastProcess, limit_bytes: int | None) -> None:
        self.core.set_limit(p.index, False, limit_bytes)

    def pt_bytes(self) -> int:
        return int(self.core.pt_bytes())


__all__ = ["PAGE", "FastProcess", "FastSimulation", "prepare", "supports"]
