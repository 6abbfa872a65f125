"""Gymnasium adapter over the page-table reclaim simulator."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from . import features
from .features import BURST_NAMES, CANDIDATE_NAMES, FAIL_WINDOW_TICKS, OBS_NAMES, Signals
from .sim.config import ConfigError, check_range, check_ranges, quote, ranged
from .sim.pagetable import PAGE, TableClass
from .sim.process import Process
from .sim.reclaim import DEPTHS, PassResult
from .sim.seeding import default_rng
from .sim.simulator import ScenarioConfig, Simulation, TickRecord

#: Scan budgets (PTE tables per pass) of the default action space.
DEFAULT_BUDGETS = (0, 64, 512, 4096, 1 << 30)
#: The largest scan budget a config may give (``EnvConfig.budgets``).
MAX_BUDGET = 1 << 40
#: Decisions per episode (``EnvConfig.max_steps`` defaults to it).
DEFAULT_MAX_STEPS = 120

COST_TERMS = ("pt_hold", "alloc_failures", "reclaim_cpu", "app_stall", "harm")
MIB = 1 << 20
#: Idle ages (scan rounds with the PMD young bit found clear) a pass may require of a
#: table before freeing it: the ``min_idle`` action component.
DEFAULT_IDLE_LEVELS = (0, 1, 2, 4)


def cost_terms(recs: Sequence[TickRecord], ticks_per_step: int, wmark_min: float,
               wmark_high: float) -> dict[str, float]:
    """The named cost terms of the ticks ``recs`` (raw units, see
    :class:`RewardWeights`): ``pt_hold`` is the reclaimable page-table MiB held, priced
    tick by tick by :func:`~ptreclaim.envs.features.hold_price` and averaged over
    ``ticks_per_step`` ticks; the others are summed.  The env charges each step with
    it; a ``simulate.py`` run is priced with it too, so the two agree."""
    hold = 0.0
    for r in recs:
        price = features.hold_price(r.normal_free_pages, wmark_min, wmark_high)
        hold += r.reclaimable_tables * PAGE / MIB * price
    return {
        "pt_hold": hold / ticks_per_step,
        "alloc_failures": float(sum(r.failure for r in recs)),
        "reclaim_cpu": sum(r.reclaim_cpu_us for r in recs) / 1000.0,
        "app_stall": sum(r.stall_us for r in recs) / 1000.0,
        "harm": float(sum(r.harm_events for r in recs)),
    }


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the named cost terms (reward = minus their weighted sum), all in one
    unit: 0.02 per millisecond of work lost (so a step's reward is in units of 50 ms).

    * ``app_stall`` (ms the processes' own faults and allocations were blocked) and
      ``reclaim_cpu`` (ms of CPU the reclaimer took from the machine): 0.02 each, one
      lost millisecond each.
    * ``alloc_failures`` (ticks in which an unmovable allocation missed the min
      watermark): 1.0 = 50 ms.  The allocating tasks' stalls are charged in
      ``app_stall`` already; this is the risk the tick adds on top, since
      ``machine.oom_failures`` such ticks end in an OOM kill.
    * ``harm`` (sane processes killed or throttled: one event per kill and per
      throttle window of ``machine.throttle_ticks``): 200 = 10 s of lost work, the
      policy price of an OOM kill (``costs.CostModel.oom_kill_harm_us``).
    * ``pt_hold`` (reclaimable page-table MiB held, priced by the zone's pressure):
      0.02 = 1 ms per MiB per second held at the min watermark, nothing at or above
      high.  Policy, not a measurement: the memory held is memory the unmovable zone
      lacks only when it is short, and then it costs the others the direct-reclaim
      work of finding it elsewhere; a MiB of tables is 256 pages of that work.
    """

    pt_hold: float = 0.02
    alloc_failures: float = 1.0
    reclaim_cpu: float = 0.02
    app_stall: float = 0.02
    harm: float = 200.0

    def __post_init__(self) -> None:
        for name in COST_TERMS:
            check_range(f"reward.{name}", getattr(self, name), 0.0, 1e6)


@dataclass(frozen=True)
class EnvConfig:
    """Parameters of :class:`PageTableReclaimEnv`."""

    decision_ticks: int = ranged(10, 1, 10_000)
    max_steps: int = ranged(DEFAULT_MAX_STEPS, 1, 10**7)
    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    #: The ``min_idle`` choices (scan rounds a table must have been idle to be freed).
    idle_levels: tuple[int, ...] = DEFAULT_IDLE_LEVELS
    #: The action's last component: cap the target's page tables at their current size.
    hard_limit_action: bool = True
    candidate_counts: bool = False  # privileged per-class counts (ablations only)
    #: Append the burst memory (``features.BURST_NAMES``; an ablation, not in env v1).
    burst_memory: bool = False
    reward: RewardWeights = field(default_factory=RewardWeights)
    #: Simulator implementation: ``fast`` (the compiled core), ``exact`` (the Python
    #: reference), or ``auto`` (``fast`` when it has every workload family the scenario
    #: uses).  Both give identical trajectories (tests/test_fast_env.py).
    backend: Literal["auto", "fast", "exact"] = "auto"

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "fast", "exact"):
            raise ConfigError(f"env.backend: {self.backend!r} is not one of 'auto', 'fast', "
                              "'exact'")
        check_ranges(self, "env.")
        if not self.budgets or self.budgets[0] != 0 or list(self.budgets) != sorted(self.budgets):
            raise ConfigError("env.budgets must be ascending and start with 0 (no reclaim)")
        # The compiled core holds a budget in 64 bits; no address space has 2^40 PTE tables
        # (a 57-bit one: 2^56 / 2 MiB = 2^35), so larger is a typo (the default "all" is 2^30).
        if any(isinstance(b, bool) or not isinstance(b, int) or b > MAX_BUDGET
               for b in self.budgets):
            raise ConfigError(f"env.budgets: {quote(list(self.budgets))} must be whole numbers "
                              f"of tables, each at most 2^40 ({MAX_BUDGET}); 2^30 is 'every "
                              "table' already")
        if (not self.idle_levels or self.idle_levels[0] != 0
                or list(self.idle_levels) != sorted(set(self.idle_levels))
                or self.idle_levels[-1] > 1000):
            raise ConfigError("env.idle_levels must be distinct, ascending, start with 0 "
                              "(no idle requirement) and stay <= 1000 scan rounds")


def obs_names(config: EnvConfig) -> list[str]:
    """The observation's components under ``config``, in order: :data:`OBS_NAMES`, then
    the ablations' extras it turns on."""
    return [*OBS_NAMES, *(CANDIDATE_NAMES if config.candidate_counts else ()),
            *(BURST_NAMES if config.burst_memory else ())]


class PageTableReclaimEnv(gym.Env[np.ndarray, np.ndarray]):
    """Decide when, which and whose Linux page tables to reclaim.

    ## Description
    A machine whose RAM is mostly ZONE_MOVABLE runs processes whose page
    tables (unmovable kernel memory) compete with other tenants' unmovable
    allocations.  Each step the agent chooses a reclaim pass (how many PTE
    tables to scan, which classes may be freed, and whose tables), then the
    simulator advances ``decision_ticks`` ticks of workloads.  The page-table
    model follows Linux 6.18's rules (checked against the live kernel).

    ## Action space
    ``MultiDiscrete([len(budgets), 3, len(idle_levels), 1 + TOP_K, 2])`` (without the
    last component when ``hard_limit_action`` is false):

    * scan budget index (0 = no pass; default budgets 0, 64, 512, 4096, all tables);
    * class depth (0: empty; 1: + zero-page-only; 2: + reconstructable from the page
      cache);
    * ``min_idle`` index: free only tables idle for at least that many scan rounds
      (default 0, 1, 2, 4); the scanner test-and-clears each scanned table's PMD young
      bit, so a table touched since the last scan is never idle;
    * target: 0 global (processes over their soft limit first, then largest waste), or
      1..3 the N-th largest page-table holder (as the observation lists them);
    * hard limit: 1 caps the target's page tables at their size after the pass (a
      process that then grows past it is throttled; no-op for the global target).

    ## Observation space
    ``Box(-1, 1, (39,), float32)`` (three more with ``candidate_counts``, one more with
    ``burst_memory``), every signal a kernel can compute cheaply (:mod:`ptreclaim.envs.features`,
    :data:`OBS_NAMES`): normal-zone free memory relative to its watermarks and to
    the zone, and the pressure price of holding tables; PSI some/full avg10/avg60;
    page-table bytes relative to the zone; for the top 3 page-table consumers their
    page-table share, page-table-to-(RSS+page-table) ratio, growth and re-fault rates
    and whether a hard limit is set; the re-fault rate since the last pass, the yield
    of the last pass, the share of recent ticks with allocation failures, time since
    the last pass; what the last pass's scanner saw per class (candidates, and the
    shares idle >= 1 and >= 4 rounds); re-fault rates by the class the tables had.
    ``candidate_counts`` appends the exact per-class table counts (empty, zero, file)
    relative to all tables: finding them costs a scan, so they are off by default.
    ``burst_memory`` appends ``burst_drop`` (:func:`~ptreclaim.envs.features.burst_drop`),
    an ablation: the largest fall of free memory between decisions, decayed over 300 s.

    ## Rewards
    Minus the weighted sum of the cost terms in ``info["cost_terms"]``: ``pt_hold``
    (reclaimable page-table MiB held, priced by the zone's pressure: nothing at or above
    the high watermark), ``alloc_failures``, ``reclaim_cpu`` (scan, young-bit clears,
    frees, locks, TLB flushes), ``app_stall`` (lock and re-fault stalls, allocation
    stalls) and ``harm`` (sane processes killed or throttled).  Weights:
    :class:`RewardWeights`, all in milliseconds of lost work.

    ## Starting state
    A scenario is drawn from the env's scenarios (``options={"scenario": i}``
    picks one) and built with a generator seeded from ``self.np_random``.

    ## Episode end
    Truncated after ``max_steps`` decisions or when the scenario's ticks run
    out; never terminated early (the machine keeps running).

    ## Arguments
    ``scenarios``: scenario configs (a list, or one); ``config``: :class:`EnvConfig`.

    ## Version history
    * v0: initial version.
    * v1: table recency (young bits, ``min_idle``), top-k targets and a hard limit on
      the target, per-process and per-class rates and the scanner's view in the
      observation, pressure-priced holding (``pt_waste`` became ``pt_hold``), weights
      in one unit; the trace replay no longer writes the unwritten tail of a purged
      range (December 2026).
    """

    metadata = {"render_modes": []}  # noqa: RUF012 (gymnasium reads a class attribute)

    def __init__(self, scenarios: ScenarioConfig | Sequence[ScenarioConfig],
                 config: EnvConfig | None = None) -> None:
        super().__init__()
        if isinstance(scenarios, ScenarioConfig):
            scenarios = [scenarios]
        if not scenarios:
            raise ConfigError("the env needs at least one scenario")
        self.scenarios = list(scenarios)
        self.config = config or EnvConfig()
        nvec = [len(self.config.budgets), len(DEPTHS), len(self.config.idle_levels),
                1 + features.TOP_K]
        if self.config.hard_limit_action:
            nvec.append(2)
        self.action_space: spaces.MultiDiscrete = spaces.MultiDiscrete(nvec)
        n_obs = len(obs_names(self.config))
        self.observation_space = spaces.Box(-1.0, 1.0, (n_obs,), np.float32)
        self._obs_shape: tuple[int, ...] = (n_obs,)
        # A Simulation, or the compiled core's FastSimulation (same API).
        self.sim: Any = None
        # The compiled env step (``backend`` fast) when ``sim`` runs on the compiled core.
        self._core: Any = None
        self._nvec = np.asarray(nvec, dtype=np.int64)
        self._weights = [getattr(self.config.reward, k) for k in COST_TERMS]
        self._steps = 0
        self._last_pass: PassResult | None = None
        self._ticks_since_pass = 0
        self._refaults_since_pass = 0
        self._fail_window: list[int] = []
        self._burst = 0.0
        self._prev_free: int | None = None
        self._journal: list[tuple[str, Any]] | None = None

    # -- pickling -------------------------------------------------------------

    def journal(self, what: str, action: np.ndarray | list[int]) -> None:
        """Record that ``action`` was stepped (``step``) or applied (``apply``) on the
        compiled core, for pickling.  A driver that steps the core itself (the batched
        vector env) records its actions here too, as lists already (one ``tolist()`` for
        the whole batch)."""
        if self._journal is not None:
            self._journal.append((what, action if isinstance(action, list) else
                                  action.tolist()))

    def __getstate__(self) -> dict[str, Any]:
        """The reference simulation pickles as it is; the compiled core does not
        serialise its state, so an env on it pickles its episode's journal (the
        generator state its reset drew from, then every action) and the copy
        replays it: the same seed and actions make the same state, bit for bit
        (``tests/test_env.py::test_env_pickles_and_resumes_identically``)."""
        state = self.__dict__.copy()
        if self._core is not None:
            if self._journal is None:
                raise TypeError("this env drives a compiled-core simulation attached from "
                                "outside (attach()); it cannot be pickled -- reset() it first "
                                "or use env backend 'exact'")
            state.update(sim=None, _core=None, _last_pass=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        journal = self._journal
        if self.sim is not None or not journal:
            return
        (_, (rng_state, options)), *calls = journal
        self.np_random.bit_generator.state = rng_state
        # reset(seed=None) leaves np_random as it is and draws from it as before.
        self.reset(options=options)
        for what, action in calls:
            (self.step if what == "step" else self.apply_action)(np.asarray(action, np.int64))

    # -- gymnasium API --------------------------------------------------------

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # What rebuilds this episode on the compiled core when the env is pickled.  A bit
        # generator's ``state`` is a new dict (of ints and strings) at every read, so it
        # needs no copy.
        journal: list[tuple[str, Any]] = [
            ("reset", (self.np_random.bit_generator.state, options))]
        options = options or {}
        if "scenario" in options:
            idx = int(options["scenario"])
            if not 0 <= idx < len(self.scenarios):
                raise ValueError(f"options['scenario'] must be in [0, {len(self.scenarios)})")
        else:
            idx = int(self.np_random.integers(len(self.scenarios)))
        scenario = self.scenarios[idx]
        rng = default_rng(int(self.np_random.integers(0, 2**63)))  # numpy's, cheaper
        self.attach(self._make_sim(scenario, rng))
        self._journal = journal
        # Let the workloads start before the first decision.
        if self._core is not None:
            obs = np.empty(self._obs_shape, dtype=np.float32)
            self._core.reset_ticks(obs)
            return obs, self._fast_info({})
        assert self.sim is not None
        recs = [self.sim.step() for _ in range(self.config.decision_ticks)]
        return self._observe(recs), self._info(recs, {}, scenario.name)

    def _make_sim(self, scenario: ScenarioConfig, rng: np.random.Generator) -> Any:
        """A simulation of ``scenario`` on the configured backend."""
        backend = self.config.backend
        if backend != "exact":
            from .sim.fast.simulation import FastSimulation, supports

            reason = supports(scenario)
            if reason is None:
                return FastSimulation(scenario, rng)
            if backend == "fast":
                raise ConfigError(f"env.backend is 'fast' but scenario {scenario.name!r} "
                                  f"cannot run on it: {reason}; use backend 'auto' or 'exact'")
        return Simulation(scenario, rng)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        sim = self.sim
        if sim is None:
            raise RuntimeError("call reset() before step()")
        if self._core is not None:
            obs = np.empty(self._obs_shape, dtype=np.float32)
            a = self._checked_action(action)
            self.journal("step", a)
            reward, truncated = self._core.step(a, obs)
            terms = dict(zip(COST_TERMS, self._core.terms.tolist(), strict=True))
            return obs, reward, False, truncated, self._fast_info(terms)
        self.apply_action(action)
        recs = []
        for _ in range(self.config.decision_ticks):
            if sim.tick_no >= sim.scenario.ticks:
                break
            recs.append(sim.step())
        self._steps += 1
        terms = self._cost_terms(recs)
        w = self.config.reward
        reward = -sum(getattr(w, k) * v for k, v in terms.items())
        truncated = self._steps >= self.config.max_steps or sim.tick_no >= sim.scenario.ticks
        obs = self._observe(recs)
        return obs, float(reward), False, truncated, self._info(recs, terms, sim.scenario.name)

    # -- helpers --------------------------------------------------------------

    def _checked_action(self, action: np.ndarray) -> np.ndarray:
        """``action`` as a contiguous int64 vector inside the action space."""
        a = np.ascontiguousarray(np.asarray(action).astype(np.int64).ravel())
        if a.shape != self._nvec.shape or (a < 0).any() or (a >= self._nvec).any():
            raise ValueError(f"action {np.asarray(action).tolist()} is outside "
                             f"MultiDiscrete({self._nvec.tolist()})")
        return a

    def _fast_info(self, terms: dict[str, float]) -> dict[str, Any]:
        """The info dict of :meth:`_info`, from the compiled step's aggregates."""
        sim = self.sim
        failures, freed, reclaimable, ooms = self._core.info()
        normal_free, _, _, psi_some10, *_ = sim.core.machine_state()
        wm = sim.machine.wmark
        return {
            "scenario": sim.scenario.name,
            "tick": sim.tick_no,
            "cost_terms": terms,
            "pt_bytes": sim.pt_bytes(),
            "normal_free_pages": normal_free,
            "watermarks": (wm.min, wm.low, wm.high),
            "psi_some_avg10": psi_some10,
            "failures": failures,
            "oom_kills": [sim.procs[i].name for i in ooms],
            "reclaim_freed": freed,
            "reclaimable_tables": reclaimable,
        }

    def apply_action(self, action: np.ndarray) -> PassResult | None:
        """Carry out one action on the simulation now (no ticks pass)."""
        sim = self.sim
        assert sim is not None
        if self._core is not None:
            a = self._checked_action(action)
            self.journal("apply", a)
            if not self._core.apply_action(a):
                return None
            self._last_pass = sim._pass(self._core.last_pass())
            return self._last_pass
        a = np.asarray(action).astype(np.int64).ravel()
        c = self.config
        budget = c.budgets[int(a[0])]
        classes = DEPTHS[int(a[1])]
        min_idle = c.idle_levels[int(a[2])]
        target = self.target(int(a[3]))
        result = None
        if budget > 0 and (a[3] == 0 or target is not None):
            result = self._last_pass = sim.reclaim(target, classes, budget, min_idle)
            self._ticks_since_pass = 0
            self._refaults_since_pass = 0
        if c.hard_limit_action and int(a[4]) == 1 and target is not None:
            sim.set_hard_limit(target, target.pt_bytes)
        return result

    def target(self, choice: int) -> Process | None:
        """The process of the action's target component: None for 0 (global) or when
        fewer than ``choice`` processes hold page tables; else the ``choice``-th largest
        holder (:func:`~ptreclaim.envs.features.top_consumers`)."""
        assert self.sim is not None
        if choice <= 0:
            return None
        if self._core is not None:
            i = self._core.target(choice)
            return None if i is None else self.sim.procs[i]
        top = features.top_consumers(self.sim.alive)
        return top[choice - 1] if choice <= len(top) else None

    def attach(self, sim: Simulation) -> None:
        """Drive an existing simulation (``simulate.py`` runs policies this way):
        observations and actions then act on ``sim``."""
        self.sim = sim
        # A simulation attached from outside cannot be rebuilt by replaying the
        # env's own calls (reset() starts a new journal after this).
        self._journal = None
        self._steps = 0
        self._last_pass = None
        self._ticks_since_pass = 0
        self._refaults_since_pass = 0
        self._fail_window = []
        self._burst = 0.0
        self._prev_free = None
        self._core = None
        core = getattr(sim, "core", None)
        if core is not None:
            from .sim.fast._fast import EnvStep

            self._core = EnvStep(self._step_config)
            self._core.attach(core)

    @functools.cached_property
    def _step_config(self) -> dict[str, Any]:
        """The compiled env step's configuration (each ``EnvStep`` reads it, keeps none)."""
        c = self.config
        return {"decision_ticks": c.decision_ticks, "max_steps": c.max_steps,
                "budgets": list(c.budgets), "idle_levels": list(c.idle_levels),
                "hard_limit_action": c.hard_limit_action,
                "candidate_counts": c.candidate_counts, "burst_memory": c.burst_memory,
                "weights": self._weights}

    def observe(self, recs: list[TickRecord]) -> np.ndarray:
        """The observation after the ticks ``recs`` (public for drivers)."""
        if self._core is not None:
            obs = np.empty(self._obs_shape, dtype=np.float32)
            lo = recs[0].tick if recs else self.sim.tick_no
            self._core.observe_range(lo, lo + len(recs), obs)
            return obs
        return self._observe(recs)

    def _cost_terms(self, recs: list[TickRecord]) -> dict[str, float]:
        assert self.sim is not None
        wm = self.sim.machine.wmark
        return cost_terms(recs, max(len(recs), 1), wm.min, wm.high)

    def _observe(self, recs: list[TickRecord]) -> np.ndarray:
        """Update what the observation tracks over time, then build it
        (:func:`~ptreclaim.envs.features.observation`)."""
        sim = self.sim
        assert sim is not None
        m = sim.machine
        for r in recs:
            self._fail_window.append(int(r.failure))
            self._refaults_since_pass += r.refault_tables
        self._fail_window = self._fail_window[-FAIL_WINDOW_TICKS:]
        self._ticks_since_pass += len(recs)
        pt_pages = sum(p.mm.tables for p in sim.alive)
        candidates = None
        if self.config.candidate_counts:
            total = max(pt_pages, 1)
            e, z, f = (sum(p.mm.class_count(cls) for p in sim.alive) / total
                       for cls in (TableClass.EMPTY, TableClass.ZERO, TableClass.FILE))
            candidates = (e, z, f)
        burst = None
        if self.config.burst_memory:
            burst = self._burst = features.burst_drop(
                self._burst, self._prev_free, m.normal_free, m.normal_pages, len(recs),
                m.tick_s)
            self._prev_free = m.normal_free
        last = self._last_pass
        return features.observation(Signals(
            zone_pages=m.normal_pages, free_pages=m.normal_free,
            wmark_min=m.wmark.min, wmark_high=m.wmark.high,
            psi_some_avg10=m.psi.some_avg10, psi_some_avg60=m.psi.some_avg60,
            psi_full_avg10=m.psi.full_avg10, psi_full_avg60=m.psi.full_avg60,
            pt_pages=pt_pages, top=features.top_consumers(sim.alive),
            refault_tables=self._refaults_since_pass,
            last_yield=(last.freed / last.scanned) if last and last.scanned else 0.0,
            fail_share=sum(self._fail_window) / max(len(self._fail_window), 1),
            ticks_since_pass=self._ticks_since_pass, candidates=candidates,
            scan=None if last is None else (last.seen, last.idle1, last.idle4),
            refault_by_class=sim.refault_class_rate, burst=burst))

    def _info(self, recs: list[TickRecord], terms: dict[str, float],
              scenario: str) -> dict[str, Any]:
        sim = self.sim
        assert sim is not None
        last = recs[-1] if recs else None
        return {
            "scenario": scenario,
            "tick": sim.tick_no,
            "cost_terms": terms,
            "pt_bytes": sim.pt_bytes(),
            "normal_free_pages": sim.machine.normal_free,
            "watermarks": (sim.machine.wmark.min, sim.machine.wmark.low, sim.machine.wmark.high),
            "psi_some_avg10": sim.machine.psi.some_avg10,
            "failures": sum(r.failure for r in recs),
            "oom_kills": [r.oom_kill for r in recs if r.oom_kill],
            "reclaim_freed": sum(r.reclaim_freed for r in recs),
            "reclaimable_tables": last.reclaimable_tables if last else 0,
        }
