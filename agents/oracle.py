"""The offline oracle: a privileged bound that knows each table's next use.

What it is a bound on
---------------------
The oracle sees the episode's future: at reset it copies the simulation
(same state, same random streams) and runs the copy to the end without any
out-of-line reclaim, recording at which ticks every process touches every
2 MiB slot.  At each decision it then frees, in every process, exactly the
tables (empty, zero-page-only or reconstructable; never pinned, never under
userfaultfd) for which holding them until their next use costs more than
freeing them now and re-faulting them then:

    hold  = w_pt_waste * (4 KiB in MiB) * ticks_until_next_use / decision_ticks
    evict = w_reclaim_cpu * free_cpu_ms + w_app_stall * (free_stall_ms + refault_ms)

and, when the normal zone is below its low watermark (allocation failures
are imminent and cost far more than any re-fault), every candidate that is
not used again within the next decision step.  It goes straight to those
tables: it pays for examining only what it frees, never for searching.

Assumptions, so that the bound is read correctly
------------------------------------------------
* The future recorded without reclaim is the future with reclaim.  This
  holds for every workload whose ops depend only on its own random stream
  and the tick (all shipped families except the ``retouch`` hog, which reacts
  to losing its tables, and except where OOM kills or hard-limit throttling
  change who runs).  Where it does not hold the oracle is merely very good.
* Costs are the simulator's own cost model, so the bound is on this
  simulator's reward, not on a real kernel.
* It is greedy per decision (no lookahead over the zone's pressure beyond the
  low-watermark rule), so it is a strong reference for the normalised score
  ``(policy - none) / (oracle - none)``, not a proof of optimality; a learned
  policy may beat it on some episodes, which the reports show as scores
  above 1.
"""

from __future__ import annotations

import bisect
import copy
import math
from typing import Any, ClassVar

import numpy as np

from ..envs.pagetable_env import PageTableReclaimEnv
from ..envs.sim.pagetable import ENTRIES, TableClass
from ..envs.sim.reclaim import DEPTHS
from .heuristics import Policy

_FULL = DEPTHS[2]
_CANDIDATES = (TableClass.EMPTY, TableClass.ZERO, TableClass.FILE)


class OracleBound(Policy):
    """``oracle``: privileged; needs :meth:`bind` to the env it acts in."""

    name: ClassVar[str] = "oracle"
    privileged: ClassVar[bool] = True

    def __init__(self) -> None:
        self.env: PageTableReclaimEnv | None = None
        self._trace: dict[str, dict[int, list[int]]] = {}
        self._sim_id = -1
        self._owner: object | None = None

    def bind(self, env: Any) -> None:
        """Attach to the (unwrapped) env whose simulation it may read."""
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        # A new simulation may reuse a freed one's id(): never trust an old future.
        self._trace = {}
        self._sim_id = -1

    def _ensure_future(self) -> None:
        env = self.env
        assert env is not None and env.sim is not None
        if id(env.sim) == self._sim_id and self._owner is env.sim:
            return
        future = copy.deepcopy(env.sim)
        future.record_touches()
        while future.tick_no < future.scenario.ticks:
            future.step()
        assert future.touch_trace is not None
        self._trace = future.touch_trace
        self._sim_id = id(env.sim)
        self._owner = env.sim  # keeps the id from being reused while cached

    def act(self, obs: np.ndarray) -> np.ndarray:
        env = self.env
        if env is None or env.sim is None:
            raise RuntimeError("the oracle is privileged: call bind(env) before predict()")
        self._ensure_future()
        sim = env.sim
        cfg = env.config
        w = cfg.reward
        costs = sim.costs
        now = sim.tick_no
        step = cfg.decision_ticks
        pressure = sim.machine.normal_free < sim.machine.wmark.low
        # Per-table price of freeing now (CPU and the process's stall), in ms.
        free_cpu = (costs.scan_table_us + costs.free_table_us) / 1000.0
        for p in sim.alive:
            trace = self._trace.get(p.name, {})
            chosen: list[int] = []
            for cls in _CANDIDATES:
                for slot in p.mm.tables_in_class(cls):
                    if p.mm.slot_is_uffd(slot):
                        continue
                    ticks = trace.get(slot, ())
                    k = bisect.bisect_left(ticks, now)
                    nxt = ticks[k] if k < len(ticks) else math.inf
                    until = nxt - now
                    if pressure and until > step:
                        chosen.append(slot)
                        continue
                    t = p.mm.pte[slot]
                    zapped = ENTRIES - t.entries.count(0) if not t.huge else ENTRIES
                    refault = (0.0 if math.isinf(until)
                               else costs.refault_us(1, zapped, uffd=False) / 1000.0)
                    hold = w.pt_waste * (4096 / (1 << 20)) * min(until, 1e9) / step
                    evict = w.reclaim_cpu * free_cpu + w.app_stall * (free_cpu + refault)
                    if hold > evict:
                        chosen.append(slot)
            if chosen:
                sim.reclaim_exact(p, sorted(chosen), _FULL)
        return np.zeros(len(env.action_space.nvec), dtype=np.int64)
