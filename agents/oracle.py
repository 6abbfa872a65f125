"""The offline oracle: a privileged bound that knows each table's next use.

What it is a bound on
---------------------
The oracle sees the episode's future: at reset it copies the simulation
(same state, same random streams) and runs the copy to the end without any
out-of-line reclaim, recording at which ticks every process touches every
2 MiB slot, the normal zone's free pages at every tick and every process's
page-table size.  At each decision (tick ``now``) it then:

1. **prices holding** with the env's own price (``features.hold_price``) at every
   future tick it can see: the recorded free pages, shifted by what separates the
   present from the recorded future now (``free_now - free_recorded(now)``: the
   tables it freed so far, the kills it avoided), so that
   ``P(a, b) = sum over ticks a..b-1 of hold_price(free(t) + shift)``; from the
   recorded future's first failed unmovable allocation on, the price is 1 (there the
   recording, which failed allocations the present may serve, stops describing
   the present: it is read pessimistically);
2. **frees, in every process, exactly the tables worth freeing** (empty,
   zero-page-only or reconstructable; never pinned, never under userfaultfd):
   those whose holding until their next use ``u`` costs more than freeing them now
   and re-faulting them then::

       hold  = w_pt_hold * (4 KiB in MiB) * P(now, u) / decision_ticks
       evict = w_reclaim_cpu * cpu_ms + w_app_stall * (stall_ms + refault_ms)

   where ``cpu`` and ``stall`` are one more table's share of a pass
   (``costs.CostModel.reclaim_pass_cpu_us`` / ``..._stall_us`` under the scenario's
   lock, with the process's remote CPUs) and ``refault`` is
   ``costs.CostModel.refault_us`` for the entries the table maps (nothing when it is
   never used again).  A process's pass runs only when the tables' summed gain pays
   for its fixed price (the lock, the TLB flush and its IPIs);
3. **frees everything that is not used within the next decision step when
   failures are imminent**: free memory under the low watermark now, or under the
   min watermark within the next step of the shifted future (a failed unmovable
   allocation stalls every process and leads to the OOM killer, which no re-fault
   costs);
4. **caps processes that are not sane** (privileged: it reads ``sane``), once, at
   their size after the pass, when the recorded future shows them growing past it
   and the cap costs less than serving the growth: under ``hard_limit_action: kill``
   the process dies at its first table over the cap (no harm: it is not sane), which
   always pays; under ``throttle`` the cap costs ``tick_ms`` of stall every
   ``throttle_ticks`` ticks from its first excess to the end, against freeing every
   table it would add.

It goes straight to those tables: it pays for examining only what it frees, never
for searching, and clears no young bit.

Assumptions, so that the bound is read correctly
------------------------------------------------
* The future recorded without reclaim is the future with reclaim.  This
  holds for every workload whose ops depend only on its own random stream
  and the tick (all shipped families except the ``retouch`` hog, which reacts
  to losing its tables, and except where OOM kills or hard-limit throttling
  change who runs).  Where it does not hold the oracle is merely very good.
  When the recorded future has lost a process that is still alive (the OOM killer
  took it there; reclaim saved it here), the future is recorded again from the
  present, so its free memory and touches describe the processes that do run.
* The price of holding is the recorded future's, shifted by today's difference:
  tables freed later by the oracle itself, and re-faults, are not foreseen, so it
  may free a little early; freeing one table does not lower the price it uses for
  the next (greedy per table).
* Costs are the simulator's own cost model, so the bound is on this
  simulator's reward, not on a real kernel.
* It is greedy per decision (no plan over the whole episode), so it is a strong
  reference for the normalised score ``(policy - none) / (oracle - none)``, not a
  proof of optimality; a learned policy may beat it on some episodes, which the
  reports show as scores above 1.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..envs.features import SUSPECT_MIN_BYTES, hold_prices
from ..envs.pagetable_env import PageTableReclaimEnv
from ..envs.sim.pagetable import ENTRIES, PAGE, TableClass
from ..envs.sim.process import Process
from ..envs.sim.reclaim import DEPTHS
from .heuristics import Policy

_FULL = DEPTHS[2]
_CANDIDATES = (TableClass.EMPTY, TableClass.ZERO, TableClass.FILE)
_MIB = 1 << 20


#: A (slot, tick) pair as one sortable integer: slot << _TICK_BITS | tick.
_TICK_BITS = 32


@dataclass
class _Future:
    """What the oracle recorded of the episode without out-of-line reclaim."""

    touches: dict[str, dict[int, list[int]]]  # process name -> slot -> ticks it is accessed
    free: np.ndarray  # normal-zone free pages at the end of each tick
    failed: np.ndarray  # ticks with a failed unmovable allocation
    #: pid -> (tick of the process's first recorded pt size, its pt bytes per tick)
    pt: dict[int, tuple[int, list[int]]]
    ticks: int
    #: process name -> its touches as sorted ``slot << _TICK_BITS | tick`` keys (made when
    #: first asked for: :meth:`next_use`)
    keys: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def next_use(self, name: str, slots: np.ndarray, now: int) -> np.ndarray:
        """Ticks from ``now`` to each slot's first recorded access at or after ``now``
        (float64; inf when it is never accessed again): for every slot at once what
        ``bisect_left(touches[name][slot], now)`` finds."""
        keys = self.keys.get(name)
        if keys is None:
            trace = self.touches.get(name, {})
            counts = np.fromiter(map(len, trace.values()), np.int64, len(trace))
            ticks = np.fromiter(itertools.chain.from_iterable(trace.values()), np.int64,
                                int(counts.sum()))
            owners = np.repeat(np.fromiter(trace.keys(), np.int64, len(trace)), counts)
            # Slots (address >> 21 < 2**26) and ticks fit their fields of the key.
            assert not len(ticks) or (ticks.min() >= 0 and ticks.max() < 1 << _TICK_BITS
                                      and owners.min() >= 0 and owners.max() < 1 << 31)
            keys = np.sort((owners << _TICK_BITS) + ticks)
            self.keys[name] = keys
        until = np.full(len(slots), math.inf)
        if not len(keys):
            return until
        at = np.searchsorted(keys, (slots << _TICK_BITS) + now)
        found = np.minimum(at, len(keys) - 1)
        hit = (at < len(keys)) & ((keys[found] >> _TICK_BITS) == slots)
        until[hit] = (keys[found[hit]] & ((1 << _TICK_BITS) - 1)) - now
        return until


class OracleBound(Policy):
    """``oracle``: privileged; needs :meth:`bind` to the env it acts in."""

    name: ClassVar[str] = "oracle"
    privileged: ClassVar[bool] = True

    def __init__(self, reference: bool = False) -> None:
        self.env: PageTableReclaimEnv | None = None
        self._future: _Future | None = None
        self._sim_id = -1
        self._owner: object | None = None
        #: Choose tables with :func:`_choose_reference` (one table at a time, the readable
        #: form) instead of :func:`_choose`: the tests compare the two.
        self.reference = reference

    def bind(self, env: Any) -> None:
        """Attach to the (unwrapped) env whose simulation it may read."""
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        # A new simulation may reuse a freed one's id(): never trust an old future.
        self._future = None
        self._sim_id = -1

    def _ensure_future(self) -> _Future:
        env = self.env
        assert env is not None and env.sim is not None
        sim = env.sim
        fut = self._future
        if id(sim) == self._sim_id and self._owner is sim and fut is not None \
                and not self._diverged(fut, sim):
            return fut
        future = copy.deepcopy(sim)
        future.record_touches()
        first = future.tick_no
        # A process's history has one entry per tick it is alive, from the tick it was
        # spawned: a process alive now was born len(history) ticks ago.
        born = {p.pid: first - len(p.history) for p in future.procs if p.alive}
        free = np.full(future.scenario.ticks, float(sim.machine.normal_free))
        failed = np.zeros(future.scenario.ticks, dtype=bool)
        while future.tick_no < future.scenario.ticks:
            rec = future.step()
            free[rec.tick] = rec.normal_free_pages
            failed[rec.tick] = rec.failure
            for p in future.procs:
                born.setdefault(p.pid, rec.tick)
        assert future.touch_trace is not None
        pt = {p.pid: (born[p.pid], p.history) for p in future.procs if p.pid in born}
        self._future = _Future(future.touch_trace, free, failed, pt, future.scenario.ticks)
        self._sim_id = id(sim)
        self._owner = sim  # keeps the id from being reused while cached
        return self._future

    @staticmethod
    def _diverged(fut: _Future, sim: Any) -> bool:
        """Whether a process alive now had died by now in the recorded future (the OOM
        killer took it there, the oracle's reclaim saved it here): that future's free
        memory and touches no longer describe this one, so it is recorded again from
        now."""
        now = sim.tick_no
        for p in sim.alive:
            born, sizes = fut.pt.get(p.pid, (now, []))
            if born < now and born + len(sizes) < now:
                return True
        return False

    def act(self, obs: np.ndarray) -> np.ndarray:
        env = self.env
        if env is None or env.sim is None:
            raise RuntimeError("the oracle is privileged: call bind(env) before predict()")
        fut = self._ensure_future()
        sim = env.sim
        cfg = env.config
        w = cfg.reward
        costs = sim.costs
        wm = sim.machine.wmark
        now = sim.tick_no
        step = cfg.decision_ticks
        # The recorded future, shifted to today's free memory, priced tick by tick.
        shift = sim.machine.normal_free - fut.free[now - 1] if now > 0 else 0.0
        free = fut.free[now:] + shift
        price = hold_prices(free, wm.min, wm.high)
        # From the recorded future's first failed allocation on, its allocations and
        # stalls no longer follow this one: holding is priced at its maximum there.
        failing = np.flatnonzero(fut.failed[now:])
        if len(failing):
            price[failing[0]:] = 1.0
        cum = np.concatenate([[0.0], np.cumsum(price)])  # cum[k]: ticks now..now+k-1
        per_tick = w.pt_hold * (PAGE / _MIB) / step
        pressure = (sim.machine.normal_free < wm.low
                    or bool((free[:step] < wm.min).any()))
        lock = sim.scenario.reclaim.lock
        choose = _choose_reference if self.reference else _choose
        passes: dict[int, tuple[float, float, float]] = {}  # by remote CPUs
        for p in sim.alive:
            remote = min(p.cpus, sim.machine.config.cpus) - 1
            if remote not in passes:
                passes[remote] = _pass_prices(costs, lock, remote, w)
            fixed, marginal, file_extra = passes[remote]
            chosen, gain = choose(p, fut, now, _Prices(cum, per_tick, marginal, file_extra),
                                  step if pressure else None, costs, w.app_stall)
            # Judged on its size before the pass, capped at its size after (as the env's
            # hard flag caps the target after its pass).
            cap = self._worth_capping(p, fut, now, marginal)
            if chosen and gain > fixed:
                sim.reclaim_exact(p, sorted(chosen), _FULL)
            if cap:
                sim.set_hard_limit(p, p.pt_bytes)
        return np.zeros(len(env.action_space.nvec), dtype=np.int64)

    def _worth_capping(self, p: Process, fut: _Future, now: int, marginal: float) -> bool:
        """Whether to cap the insane process ``p`` at its present size (see the module
        docstring, point 4)."""
        if p.sane or not p.alive or p.pt_hard_limit_bytes is not None \
                or p.pt_bytes < SUSPECT_MIN_BYTES or p.pid not in fut.pt:
            return False
        born, sizes = fut.pt[p.pid]
        i = now - 1 - born
        if not 0 <= i < len(sizes) - 1:
            return False
        later = np.asarray(sizes[i + 1:], dtype=np.int64) - sizes[i]
        grows = np.flatnonzero(later > 0)
        if not len(grows):
            return False
        env = self.env
        assert env is not None and env.sim is not None
        machine = env.sim.machine.config
        if machine.hard_limit_action == "kill":
            return True
        first = now + int(grows[0])
        periods = math.ceil((fut.ticks - first) / machine.throttle_ticks)
        throttle = periods * machine.tick_ms * env.config.reward.app_stall
        serve = int(later.max()) // PAGE * marginal
        return throttle < serve


@dataclass(frozen=True)
class _Prices:
    """What a decision's choice of tables needs to price them: ``cum[k]``, the summed hold
    price of ticks now..now+k-1; the hold cost per table and price unit; one more freed
    table's share of a pass, and a file table's extra (:func:`_pass_prices`)."""

    cum: np.ndarray
    per_tick: float
    marginal: float
    file_extra: float


def _refault(p: Process, slot: int, costs: Any, app_stall: float) -> float:
    """The weighted cost of re-faulting the table at ``slot`` once: the entries it maps."""
    t = p.mm.pte[slot]
    zapped = ENTRIES - t.entries.count(0) if not t.huge else ENTRIES
    return app_stall * costs.refault_us(1, zapped, uffd=False) / 1000.0


def _choose_reference(p: Process, fut: _Future, now: int, prices: _Prices,
                      pressed: int | None, costs: Any, app_stall: float
                      ) -> tuple[list[int], float]:
    """The tables of ``p`` worth freeing now (module docstring, points 2 and 3) and their
    summed gain, one table at a time in each class set's order: the reference that
    :func:`_choose` computes for whole classes at once.  ``pressed``: the decision step
    when failures are imminent (every table unused within it goes), else None."""
    trace = fut.touches.get(p.name, {})
    cum = prices.cum
    chosen: list[int] = []
    gain = 0.0
    for cls in _CANDIDATES:
        evict0 = prices.marginal + (prices.file_extra if cls == TableClass.FILE else 0.0)
        for slot in p.mm.tables_in_class(cls):
            if p.mm.slot_is_uffd(slot):
                continue
            ticks = trace.get(slot, ())
            k = bisect.bisect_left(ticks, now)
            until = ticks[k] - now if k < len(ticks) else math.inf
            if pressed is not None and until > pressed:
                chosen.append(slot)
                gain = math.inf
                continue
            held = cum[-1] if math.isinf(until) else cum[min(int(until), len(cum) - 1)]
            hold = prices.per_tick * held
            if hold <= evict0:
                continue
            refault = 0.0 if math.isinf(until) else _refault(p, slot, costs, app_stall)
            if hold > evict0 + refault:
                chosen.append(slot)
                gain += hold - evict0 - refault
    return chosen, gain


def _choose(p: Process, fut: _Future, now: int, prices: _Prices, pressed: int | None,
            costs: Any, app_stall: float) -> tuple[list[int], float]:
    """:func:`_choose_reference`'s tables and gain, the same numbers: each class's next
    uses and hold costs are computed for all its tables at once (NumPy: the same IEEE
    operations per element), and only the tables that could be chosen -- unused within
    the step under pressure, or held at a cost above a pass's share -- are then taken one
    at a time in the class set's order, as the reference does (the userfaultfd check, the
    re-fault cost and the sum of the gains), so the sum adds the same numbers in the same
    order.  The userfaultfd check skips a table and does nothing else, so checking only
    those tables changes nothing.  The reference's loop over every table was most of the
    oracle's time, which was 30x a heuristic's per decision (docs/performance.md)."""
    cum = prices.cum
    chosen: list[int] = []
    gain = 0.0
    for cls in _CANDIDATES:
        evict0 = prices.marginal + (prices.file_extra if cls == TableClass.FILE else 0.0)
        members = p.mm.tables_in_class(cls)
        if not members:
            continue
        slots = np.fromiter(members, np.int64, len(members))  # the set's own order
        until = fut.next_use(p.name, slots, now)
        never = np.isinf(until)
        at = np.minimum(np.where(never, 0, until), len(cum) - 1).astype(np.int64)
        hold = prices.per_tick * np.where(never, cum[-1], cum[at])
        forced = until > pressed if pressed is not None else np.zeros(len(slots), bool)
        for i in np.flatnonzero(forced | (hold > evict0)).tolist():
            slot = int(slots[i])
            if p.mm.slot_is_uffd(slot):
                continue
            if forced[i]:
                chosen.append(slot)
                gain = math.inf
                continue
            h = float(hold[i])
            refault = 0.0 if never[i] else _refault(p, slot, costs, app_stall)
            if h > evict0 + refault:
                chosen.append(slot)
                gain += h - evict0 - refault
    return chosen, gain


def _pass_prices(costs: Any, lock: str, remote: int, w: Any) -> tuple[float, float, float]:
    """A pass's weighted prices in reward units: its fixed part (lock, TLB flush and
    IPIs), one more freed table's part, and the extra of a file table (rmap lock);
    from the cost model's own pass prices (``CostModel.reclaim_pass_cpu_us`` and
    ``..._stall_us``), so that they follow every constant and the lock mode."""

    def price(n: int, files: int) -> float:
        flushed = n * ENTRIES
        cpu = costs.reclaim_pass_cpu_us(n, n, files, flushed, remote, lock)
        stall = costs.reclaim_pass_stall_us(n, n, files, flushed, remote, lock)
        return (w.reclaim_cpu * cpu + w.app_stall * stall) / 1000.0

    one, two = price(1, 0), price(2, 0)
    marginal = two - one
    return one - marginal, marginal, price(1, 1) - one
