"""Fixed reclaim policies behind SB3's ``predict`` interface.

Every policy maps an observation of :class:`~ptreclaim.envs.pagetable_env.
PageTableReclaimEnv` (v1) to an action ``[budget index, class depth, min_idle index,
target, hard limit]`` and exposes ``predict(obs, state=None, episode_start=None,
deterministic=True) -> (action, state)`` like a stable-baselines3 model, so one
evaluator serves learned and fixed policies.  They read the simulator only through
the observation, and may use every signal the agent sees (a win that comes from
withholding a signal from the rules does not count).

``kernel_pt_reclaim`` says which kernel the policy stands for: ``none`` is the
kernel before 6.14 (no on-zap reclaim; evaluation runs it with the
simulator's ``pt_reclaim`` switched off), every other policy runs on 6.14+.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from ..envs.features import TOP_K
from ..envs.pagetable_env import DEFAULT_BUDGETS, DEFAULT_IDLE_LEVELS, OBS_NAMES
from ..envs.sim.config import ConfigError, build, check_range, check_ranges, ranged
from ..envs.sim.reclaim import DEPTHS

_IDX = {name: i for i, name in enumerate(OBS_NAMES)}
#: The action's components, in order (``PageTableReclaimEnv`` v1).
ACTION_COMPONENTS = ("budget", "depth", "idle", "target", "hard")
#: Highest value of each component in the default action space.
ACTION_HIGHS = (len(DEFAULT_BUDGETS) - 1, len(DEPTHS) - 1, len(DEFAULT_IDLE_LEVELS) - 1,
                TOP_K, 1)
#: The scanner's classes, from the least to the most aggressive depth.
_CLASS_FEATURES = ("empty", "zero", "file")


class Policy:
    """Base class: a stateless, deterministic map from observation to action."""

    name: ClassVar[str] = ""
    kernel_pt_reclaim: ClassVar[bool] = True
    privileged: ClassVar[bool] = False

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for one observation."""
        raise NotImplementedError

    def predict(self, observation: np.ndarray, state: Any = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        """SB3-compatible: accepts one observation or a batch (vectorised env)."""
        obs = np.asarray(observation, dtype=np.float32)
        if obs.ndim == 1:
            return self.act(obs), state
        return np.stack([self.act(o) for o in obs]), state


P = TypeVar("P")
_PP = TypeVar("_PP", bound="ParamsPolicy[Any]")


class ParamsPolicy(Policy, Generic[P]):
    """A policy set by one frozen dataclass of parameters, :attr:`Params`, which a
    heuristic spec or a thresholds file builds from a mapping."""

    #: The parameters' dataclass (``P``); its defaults are the policy's default.
    Params: ClassVar[type[Any]]

    def __init__(self, params: P | None = None) -> None:
        self.params: P = self.Params() if params is None else params

    @classmethod
    def from_mapping(cls: type[_PP], data: Any, where: str | None = None) -> _PP:
        """The policy with parameters built from ``data``; errors name ``where``
        (default: the policy's name)."""
        return cls(build(cls.Params, data, where or cls.name))

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.decide(obs)[0]

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the reason for it, in words an operator reads."""
        raise NotImplementedError


def _action(budget: int = 0, depth: int = 0, idle: int = 0, target: int = 0,
            hard: int = 0) -> np.ndarray:
    return np.asarray([budget, depth, idle, target, hard], dtype=np.int64)


def check_action(action: Any, where: str) -> list[int]:
    """``action`` as five ints inside the default action space, or one clear
    :class:`ConfigError` naming ``where`` (a v0 three-component action included)."""
    bad = (not isinstance(action, (list, tuple)) or len(action) != len(ACTION_HIGHS)
           or not all(isinstance(v, int) and not isinstance(v, bool) for v in action))
    if bad or not all(0 <= v <= hi for v, hi in zip(action, ACTION_HIGHS, strict=True)):
        old = (" (a v0 action [budget, depth, target]; env v1 actions have five components)"
               if isinstance(action, (list, tuple)) and len(action) in (3, 4) else "")
        raise ConfigError(f"{where}: {action!r} is not [budget 0-{ACTION_HIGHS[0]}, depth "
                          f"0-{ACTION_HIGHS[1]}, idle 0-{ACTION_HIGHS[2]}, target "
                          f"0-{ACTION_HIGHS[3]}, hard 0-1]{old}")
    return [int(v) for v in action]


def canonical(actions: np.ndarray) -> np.ndarray:
    """Five-component actions with the parts that do nothing zeroed: a pass with budget
    0 has no class and no idle requirement; a hard-limit flag with the global target is
    a no-op, and a target without a pass or a limit acts on nobody.  Four-component
    actions (an env without the hard-limit action) get a 0 flag."""
    n = len(ACTION_COMPONENTS)
    a = np.array(actions, dtype=np.int64, copy=True).reshape(len(actions), -1)[:, :n]
    if a.shape[1] < n:
        a = np.concatenate([a, np.zeros((len(a), n - a.shape[1]), np.int64)], axis=1)
    nopass = a[:, 0] == 0
    a[nopass, 1:3] = 0
    a[a[:, 3] == 0, 4] = 0
    a[nopass & (a[:, 4] == 0), 3] = 0
    return a


class NoReclaim(Policy):
    """``none``: never reclaims, on a kernel before 6.14 (DONTNEED frees nothing)."""

    name = "none"
    kernel_pt_reclaim = False

    def act(self, obs: np.ndarray) -> np.ndarray:
        return _action()


class OnZap(Policy):
    """``on_zap``: the 6.14+ kernel as it is: only MADV_DONTNEED's own reclaim."""

    name = "on_zap"

    def act(self, obs: np.ndarray) -> np.ndarray:
        return _action()


# ------------------------------------------------------------------ whose tables

TargetBy = Literal["ratio", "growth", "size"]


@dataclass(frozen=True)
class TargetParams:
    """Whose tables: the knobs :class:`SoftHard` and :class:`PeriodicScan` share.

    A *suspect* is one of the top-k page-table consumers of the observation with
    ``topN_pt_frac > proc_pt_frac`` and ``topN_pt_ratio > proc_ratio``; the target is
    the suspect with the largest ``target_by`` signal (none: global).

    Defaults and why:

    * ``proc_ratio`` 0.5: a process whose page tables exceed its resident memory
      (page tables / (RSS + page tables) > 0.5) maps almost nothing with its tables:
      the signature of a table hog or of a dumped balloon.
    * ``proc_pt_frac`` 0.01: ignore small processes (1 % of the zone): a pass over
      them frees too little to pay for itself.
    * ``target_by`` ``ratio``: among suspects, the most table-heavy one (the seed's
      "page tables much larger than the memory they map"); ``growth`` picks the
      fastest-growing one (a hog still allocating), ``size`` the largest.
    * ``limit_ratio`` 0.9, ``limit_growth`` 0.2, ``limit_refault`` 0.2: the hard-limit
      rule caps the target's page tables at their size (the action's hard flag) when
      they are over 90 % of its memory, still grow by more than ~1.7 tables per tick
      (``topN_growth`` = log1p(tables per tick) / 5; 0.2 is e - 1) and re-fault what
      reclaim took from it at more than ~0.17 tables per tick (``topN_refault`` =
      log1p(10 x rate) / 5): a process that re-touches whatever is reclaimed (the
      ``retouch`` hog) is fed by reclaim, and only a limit stops it.  A hog that does
      not come back for its tables is cheaper to reclaim from than to cap, and a sane
      process rarely looks like this (a dumped balloon shrinks, a kdump's tables map
      the pages it reads).  A process already limited is never capped again.
    * ``use_hard_limit`` false: the rule is off by default because on the env as it is
      a cap costs more than it saves: a throttled process stalls a whole tick every
      ``machine.throttle_ticks`` ticks, charged as ``app_stall`` even for a hog
      (default rule 22.09 vs 15.80 without it, mean episode cost on the training suite,
      2 episodes per scenario, seed base 5000; the retouching hog of ``mixed_cloud``
      85.7 vs 41.7).  Where the machine kills instead of throttling, a cap is free for
      an insane process; tuning decides.
    """

    proc_ratio: float = ranged(0.5, 0.0, 1.0)
    proc_pt_frac: float = ranged(0.01, 0.0, 1.0)
    target_by: TargetBy = "ratio"
    use_hard_limit: bool = False
    limit_ratio: float = ranged(0.9, 0.0, 1.0)
    limit_growth: float = ranged(0.2, 0.0, 1.0)
    limit_refault: float = ranged(0.2, 0.0, 1.0)

    def __post_init__(self) -> None:
        # The subclasses' ranged fields too: check_ranges reads type(self).
        check_ranges(self, "")
        if self.target_by not in ("ratio", "growth", "size"):
            raise ConfigError(f"target_by: {self.target_by!r} is not one of 'ratio', "
                              "'growth', 'size'")


def _top(obs: np.ndarray, i: int, feature: str) -> float:
    return float(obs[_IDX[f"top{i}_{feature}"]])


def choose_target(obs: np.ndarray, p: TargetParams) -> tuple[int, str]:
    """The target component (0 global, N the N-th top consumer) and why, in words."""
    suspects = [i for i in range(1, TOP_K + 1)
                if _top(obs, i, "pt_frac") > p.proc_pt_frac and _top(obs, i, "pt_ratio")
                > p.proc_ratio]
    if not suspects:
        return 0, ""
    feature = {"ratio": "pt_ratio", "growth": "growth", "size": "pt_frac"}[p.target_by]
    best = max(suspects, key=lambda i: (_top(obs, i, feature), -i))
    return best, (f"top-{best} consumer is a suspect (tables/(RSS+tables) "
                  f"{_top(obs, best, 'pt_ratio'):.2f} > {p.proc_ratio:g}, "
                  f"{_top(obs, best, 'pt_frac'):.4f} > {p.proc_pt_frac:g} of the zone"
                  + (f"; largest {feature} of {len(suspects)} suspects" if len(suspects) > 1
                     else "") + ")")


def limit_target(obs: np.ndarray, target: int, p: TargetParams) -> tuple[int, str]:
    """The hard-limit flag for ``target`` (0/1) and why, in words."""
    if not p.use_hard_limit or target == 0 or _top(obs, target, "limited") > 0.5:
        return 0, ""
    ratio, growth = _top(obs, target, "pt_ratio"), _top(obs, target, "growth")
    refault = _top(obs, target, "refault")
    if ratio > p.limit_ratio and growth > p.limit_growth and refault > p.limit_refault:
        return 1, (f"; cap top-{target}'s page tables: tables/(RSS+tables) {ratio:.2f} > "
                   f"{p.limit_ratio:g}, growing ({growth:.2f} > {p.limit_growth:g}) and "
                   f"re-faulting what reclaim took ({refault:.2f} > {p.limit_refault:g})")
    return 0, ""


# ------------------------------------------------------------------ soft/hard limits

#: Budget, depth and idle fields of each level, and the direction "more aggressive" runs.
LEVEL_FIELDS = (("budget", +1), ("depth", +1), ("idle", -1))


@dataclass(frozen=True)
class SoftHardParams(TargetParams):
    """Thresholds of :class:`SoftHard` (fractions are of the normal zone; budgets,
    depths and idle requirements are indices into the env's budgets (0, 64, 512,
    4096, all), class depths (empty; +zero; +file) and idle levels (0, 1, 2, 4 scan
    rounds)).  Inherits the target and hard-limit knobs of :class:`TargetParams`.

    Defaults and why:

    * ``soft_pt_frac`` 0.04: page tables above 4 % of the unmovable zone are
      already several times a typical host's (a few MiB per GiB of RSS), so
      cold empty tables are worth a cheap scan.
    * ``hard_pt_frac`` 0.10: at 10 % page tables crowd out other tenants'
      unmovable allocations; reclaim every class at full budget.
    * ``soft_price`` 0.5: holding a table costs in proportion to ``hold_price``
      (0 at the high watermark, where kswapd sleeps; 1 at min, where unmovable
      allocations fail); halfway down, holding costs half its most and the min
      watermark is one fast allocation burst away, so a cheap soft pass is insurance
      (a policy choice, which tuning revisits).  1.0 turns the trigger off
      (``hold_price`` never exceeds 1).
    * ``free_trigger`` 0.0: below the min watermark (``free_vs_wmark`` < 0),
      unmovable allocations fail: act as over the hard limit.
    * ``psi_trigger`` 0.10: PSI some avg10 above 10 % means tasks already
      stall on memory; escalate the soft level one class deeper (never deeper
      than the hard level).
    * ``refault_trigger`` 0.3: when tables of a class the level frees come back
      faster than ~0.35 per tick (``CLS_refault`` = log1p(10 x rate) / 5), the pass
      frees tables still in use; require one more idle level.
    * ``suspect_soft`` true: a suspect alone (:class:`TargetParams`) starts the
      soft level on it, before it costs the zone anything (a hog grows without end).
    * soft level: ``soft_budget`` 2 (512 tables per decision), ``soft_depth`` 0
      (empty tables only: free to rebuild), ``soft_idle`` 2 (idle >= 2 scan rounds:
      with time to choose, free only cold tables, whose re-fault is unlikely);
    * hard level: ``hard_budget`` 4 (all), ``hard_depth`` 2 (every class),
      ``hard_idle`` 0 (anything: failures cost more than re-faults).

    The levels are monotone (checked): the hard level scans at least as many tables
    as the soft one, at least as deep, requiring at most its idle age.
    """

    soft_pt_frac: float = ranged(0.04, 0.0, 1.0)
    hard_pt_frac: float = ranged(0.10, 0.0, 1.0)
    soft_price: float = ranged(0.5, 0.0, 1.0)
    free_trigger: float = ranged(0.0, -1.0, 1.0)
    psi_trigger: float = ranged(0.10, 0.0, 1.0)
    refault_trigger: float = ranged(0.3, 0.0, 1.0)
    suspect_soft: bool = True
    soft_budget: int = 2
    hard_budget: int = 4
    soft_depth: int = 0
    hard_depth: int = 2
    soft_idle: int = 2
    hard_idle: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.soft_pt_frac > self.hard_pt_frac:
            raise ConfigError(f"soft_pt_frac ({self.soft_pt_frac}) must not exceed "
                              f"hard_pt_frac ({self.hard_pt_frac})")
        for name, hi in (("budget", ACTION_HIGHS[0]), ("depth", ACTION_HIGHS[1]),
                         ("idle", ACTION_HIGHS[2])):
            check_range(f"soft_{name}", getattr(self, f"soft_{name}"), 0, hi)
            check_range(f"hard_{name}", getattr(self, f"hard_{name}"), 0, hi)
        for name, sign in LEVEL_FIELDS:
            soft, hard = getattr(self, f"soft_{name}"), getattr(self, f"hard_{name}")
            if (hard - soft) * sign < 0:
                rel = "at least" if sign > 0 else "at most"
                raise ConfigError(f"hard_{name} ({hard}) must be {rel} soft_{name} ({soft}): "
                                  "the hard level is never milder than the soft one")


def _idle_for(obs: np.ndarray, idle: int, depth: int, trigger: float) -> tuple[int, str]:
    """``idle`` raised one level when a class the pass may free re-faults over ``trigger``."""
    worst = max(range(depth + 1), key=lambda c: float(obs[_IDX[f"{_CLASS_FEATURES[c]}_refault"]]))
    rate = float(obs[_IDX[f"{_CLASS_FEATURES[worst]}_refault"]])
    if rate > trigger and idle < ACTION_HIGHS[2]:
        return idle + 1, (f"; {_CLASS_FEATURES[worst]} tables re-fault ({rate:.2f} > "
                          f"{trigger:g}): one more idle round")
    return idle, ""


class SoftHard(ParamsPolicy[SoftHardParams]):
    """``soft_hard``: the seed's soft/hard limits on page-table memory, under pressure.

    Hard level (page tables over the hard limit, or free memory under the trigger):
    reclaim ``hard_depth`` classes at ``hard_budget``, idle >= ``hard_idle``.  Soft
    level (over the soft limit, ``hold_price`` over ``soft_price``, or a suspect):
    ``soft_depth`` at ``soft_budget``, idle >= ``soft_idle``; PSI over its trigger
    deepens the class.  Either level raises its idle requirement when the classes it
    frees re-fault.  The target is a suspect among the top consumers (or global), capped
    with a hard limit (when the rule is on) if it is table-only, still growing and
    re-faulting what reclaim took from it (:class:`TargetParams`).
    """

    name = "soft_hard"
    Params = SoftHardParams

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the reason for it (which threshold or signal fired),
        in words an operator reads (the live advisor prints it)."""
        p = self.params
        pt = float(obs[_IDX["pt_frac"]])
        price = float(obs[_IDX["hold_price"]])
        free = float(obs[_IDX["free_vs_wmark"]])
        psi = float(obs[_IDX["psi_some_avg10"]])
        target, who = choose_target(obs, p)
        hard, cap = limit_target(obs, target, p)
        who = f"; {who}" if who else ""
        if pt > p.hard_pt_frac or free < p.free_trigger:
            why = (f"page tables {pt:.4f} of the zone > hard limit {p.hard_pt_frac:g}"
                   if pt > p.hard_pt_frac else
                   f"free vs watermark {free:.3f} < trigger {p.free_trigger:g}")
            idle, more = _idle_for(obs, p.hard_idle, p.hard_depth, p.refault_trigger)
            return (_action(p.hard_budget, p.hard_depth, idle, target, hard),
                    why + more + who + cap)
        soft_why = [f"page tables {pt:.4f} of the zone > soft limit {p.soft_pt_frac:g}"
                    if pt > p.soft_pt_frac else "",
                    f"hold price {price:.2f} > {p.soft_price:g}" if price > p.soft_price else "",
                    "a suspect" if p.suspect_soft and target and not (
                        pt > p.soft_pt_frac or price > p.soft_price) else ""]
        if any(soft_why):
            why = " and ".join(w for w in soft_why if w)
            depth = p.soft_depth
            if psi > p.psi_trigger and depth < p.hard_depth:
                depth += 1
                why += f"; PSI some avg10 {psi:.3f} > {p.psi_trigger:g} deepens the class"
            idle, more = _idle_for(obs, p.soft_idle, depth, p.refault_trigger)
            return _action(p.soft_budget, depth, idle, target, hard), why + more + who + cap
        quiet = (f"page tables {pt:.4f} of the zone <= soft limit {p.soft_pt_frac:g}, hold "
                 f"price {price:.2f} <= {p.soft_price:g}"
                 + ("" if target and not p.suspect_soft else " and no suspect"))
        return _action(0, 0, 0, target if hard else 0, hard), quiet + cap


# ------------------------------------------------------------------ periodic scan

@dataclass(frozen=True)
class PeriodicParams(TargetParams):
    """``periodic_scan``: every ``every_ticks`` ticks, scan ``budget`` (an index
    into the env's budgets) of class depth ``depth``, freeing tables idle for at least
    idle level ``idle``, from the target of :class:`TargetParams` (or globally), when
    the pressure price of holding is at least ``min_price``.

    Defaults and why: ``every_ticks`` 100 (10 s, khugepaged's default
    ``scan_sleep_millisecs``), ``budget`` 2 (512 tables, khugepaged's
    ``pages_to_scan`` is 4096 pages = 8 PMD spans... of the same order), ``depth`` 1
    (empty and zero-page tables: no page cache to re-read), ``idle`` 1 (untouched since
    the last scan: a scanner that comes back every 10 s sees a table's recency for
    free), ``min_price`` 0.0 (scan whatever the pressure, like khugepaged; tuning may
    gate it on pressure)."""

    every_ticks: int = ranged(100, 1, 10**7)
    budget: int = ranged(2, 0, ACTION_HIGHS[0])
    depth: int = ranged(1, 0, ACTION_HIGHS[1])
    idle: int = ranged(1, 0, ACTION_HIGHS[2])
    min_price: float = ranged(0.0, 0.0, 1.0)


class PeriodicScan(ParamsPolicy[PeriodicParams]):
    """``periodic_scan``: khugepaged-like, a fixed budget at a fixed period,
    when the hold price reaches ``min_price`` (the period is read back from
    ``since_pass``)."""

    name = "periodic_scan"
    Params = PeriodicParams

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the reason for it, in words."""
        p = self.params
        ticks = math.expm1(float(obs[_IDX["since_pass"]]) * 10.0)
        price = float(obs[_IDX["hold_price"]])
        target, who = choose_target(obs, p)
        hard, cap = limit_target(obs, target, p)
        who = f"; {who}" if who else ""
        if ticks + 0.5 < p.every_ticks:
            return (_action(0, 0, 0, target if hard else 0, hard),
                    f"{ticks:.0f} ticks since the last pass < period {p.every_ticks}" + cap)
        if price < p.min_price:
            return (_action(0, 0, 0, target if hard else 0, hard),
                    f"period due, but hold price {price:.2f} < {p.min_price:g}" + cap)
        return (_action(p.budget, p.depth, p.idle, target, hard),
                f"period of {p.every_ticks} ticks due" + who + cap)


# ------------------------------------------------------------------ one fixed action

@dataclass(frozen=True)
class ConstantParams:
    """``constant``: the same action at every decision.  ``best_constant`` is the one
    ``scripts/tune.py constant`` finds by enumerating the action space on the training
    suite.  The defaults are "no pass", i.e. the 6.14 kernel as it is."""

    budget: int = 0
    depth: int = 0
    idle: int = 0
    target: int = 0
    hard: int = 0

    def __post_init__(self) -> None:
        for name, hi in zip(ACTION_COMPONENTS, ACTION_HIGHS, strict=True):
            check_range(name, getattr(self, name), 0, hi)

    @property
    def action(self) -> list[int]:
        """The action, component by component."""
        return [self.budget, self.depth, self.idle, self.target, self.hard]

    @classmethod
    def of(cls, action: Any) -> ConstantParams:
        """The parameters of a five-component action."""
        return cls(*check_action(list(np.asarray(action).ravel().tolist()), "action"))


class Constant(ParamsPolicy[ConstantParams]):
    """``constant``: one fixed action, whatever the observation."""

    name = "constant"
    Params = ConstantParams

    def __init__(self, params: ConstantParams | None = None) -> None:
        super().__init__(params)
        self._action = np.asarray(self.params.action, dtype=np.int64)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self._action.copy()

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the reason: it never changes."""
        return self.act(obs), "a constant action, whatever the signals"


#: Class depths as an operator reads them (``reclaim.DEPTHS``).
DEPTH_TEXT = ("empty", "empty+zero", "empty+zero+file")
_MAX_TREE_DEPTH = 12


def target_text(target: int) -> str:
    """The target component in words."""
    return "globally" if target == 0 else f"from the top-{target} page-table consumer"


def action_text(action: Any, budgets: tuple[int, ...] = DEFAULT_BUDGETS,
                idle_levels: tuple[int, ...] = DEFAULT_IDLE_LEVELS) -> str:
    """A v1 action in words, e.g. ``scan 512 tables, empty+zero, idle >= 2 rounds,
    from the top-1 page-table consumer; cap its page tables``."""
    a = [int(x) for x in np.asarray(action).ravel()]
    a += [0] * (len(ACTION_COMPONENTS) - len(a))
    cap = f"cap the top-{a[3]} consumer's page tables" if a[4] and a[3] else ""
    if a[0] == 0:
        return "no pass" + (f"; {cap}" if cap else "")
    budget = budgets[a[0]] if a[0] < len(budgets) else a[0]
    n = "all" if budget >= (1 << 30) else str(budget)
    idle = idle_levels[a[2]] if a[2] < len(idle_levels) else a[2]
    cold = f", idle >= {idle} round{'s' if idle != 1 else ''}" if idle else ""
    return (f"scan {n} tables, {DEPTH_TEXT[a[1]]}{cold}, {target_text(a[3])}"
            + (f"; {cap}" if cap else ""))


class TreeRule(Policy):
    """``tree``: a depth-limited decision tree over named observation features
    (what distillation exports next to the soft/hard rule), e.g.

    .. code-block:: yaml

        tree:
          feature: hold_price
          above: 0.4
          then: {action: [3, 2, 1, 0, 0]}
          else: {action: [0, 0, 0, 0, 0]}

    A node compares ``obs[feature] > above``; a leaf holds a v1 action ``[budget
    index, class depth, min_idle index, target, hard limit]``.
    """

    name = "tree"

    def __init__(self, tree: Any, where: str = "tree") -> None:
        self.tree = self._check(tree, where, 0)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "tree") -> TreeRule:
        if isinstance(data, dict):
            cls._string_keys(data, where, "a tree rule holds exactly one key, 'tree'")
        if not isinstance(data, dict) or set(data) != {"tree"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{where}: a tree rule holds exactly one key, 'tree' (a node "
                              f"{{feature, above, then, else}} or a leaf {{action}}); got {keys}")
        return cls(data["tree"], f"{where}.tree")

    @staticmethod
    def _string_keys(node: dict[Any, Any], where: str, holds: str) -> None:
        """One clear error for a key that is no string (YAML reads ``1:`` as an
        int), before the keys are sorted or compared."""
        from ..envs.sim.config import quote

        for key in node:
            if not isinstance(key, str):
                raise ConfigError(f"{where}: unknown key {quote(key)}; {holds}")

    @classmethod
    def _check(cls, node: Any, where: str, depth: int) -> dict[str, Any]:
        from ..envs.sim.config import did_you_mean, quote

        if depth > _MAX_TREE_DEPTH:
            raise ConfigError(f"{where}: the tree is deeper than {_MAX_TREE_DEPTH} levels")
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: expected a node {{feature, above, then, else}} or a "
                              f"leaf {{action: [budget, depth, idle, target, hard]}}, got "
                              f"{quote(node)}")
        leaf = "action" in node
        cls._string_keys(node, where, "a leaf holds only 'action'" if leaf else
                         "a node holds feature, above, then, else")
        if leaf:
            if set(node) != {"action"}:
                raise ConfigError(f"{where}: a leaf holds only 'action', got {sorted(node)}")
            return {"action": check_action(node["action"], f"{where}.action")}
        want = {"feature", "above", "then", "else"}
        if set(node) != want:
            extra = sorted(set(node) - want)
            hint = did_you_mean(str(extra[0]), sorted(want)) if extra else ""
            raise ConfigError(f"{where}: a node holds feature, above, then, else; got "
                              f"{sorted(node)}{hint}")
        feat = node["feature"]
        if not isinstance(feat, str):
            raise ConfigError(f"{where}.feature: expected a feature name (a string, e.g. "
                              f"hold_price), got {quote(feat)}")
        if feat not in _IDX:
            raise ConfigError(f"{where}.feature: {quote(feat)} is not an observation feature"
                              f"{did_you_mean(feat, OBS_NAMES)}")
        above = node["above"]
        try:
            finite = (not isinstance(above, bool) and isinstance(above, (int, float))
                      and math.isfinite(above))
        except OverflowError:  # an int of 400 digits does not convert to a float
            finite = False
        if not finite:
            raise ConfigError(f"{where}.above: expected a finite number, got {quote(above)}")
        return {"feature": feat, "above": float(above),
                "then": cls._check(node["then"], f"{where}.then", depth + 1),
                "else": cls._check(node["else"], f"{where}.else", depth + 1)}

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.decide(obs)[0]

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the path of conditions that led to it."""
        node, path = self.tree, []
        while "action" not in node:
            v = float(obs[_IDX[node["feature"]]])
            up = v > node["above"]
            path.append(f"{node['feature']} {v:.4g} {'>' if up else '<='} {node['above']:g}")
            node = node["then"] if up else node["else"]
        return _action(*node["action"]), " and ".join(path) or "the tree has one leaf"

    def render(self) -> str:
        """The tree as indented if/else rules an operator reads."""
        lines: list[str] = []

        def walk(node: dict[str, Any], indent: str) -> None:
            if "action" in node:
                lines.append(f"{indent}{action_text(node['action'])}")
                return
            lines.append(f"{indent}if {node['feature']} > {node['above']:g}:")
            walk(node["then"], indent + "    ")
            lines.append(f"{indent}else:")
            walk(node["else"], indent + "    ")

        walk(self.tree, "")
        return "\n".join(lines)


HEURISTICS: dict[str, type[Policy]] = {
    "none": NoReclaim,
    "on_zap": OnZap,
    "soft_hard": SoftHard,
    "periodic_scan": PeriodicScan,
}


def make_heuristic(name: str, params: Any = None, where: str | None = None) -> Policy:
    """A heuristic by name, with optional parameters (a mapping).

    ``where`` names the place the parameters came from (a file and key, e.g.
    ``thresholds.yaml.rule``); every error then starts with it."""
    from ..envs.sim.config import did_you_mean

    if name not in HEURISTICS:
        raise ConfigError(f"unknown heuristic {name!r}{did_you_mean(name, HEURISTICS)}; "
                          f"known: {', '.join(HEURISTICS)}")
    return _from_params(HEURISTICS[name], name, params, where)


def _from_params(cls: type[Policy], name: str, params: Any, where: str | None) -> Policy:
    if not params:
        return cls()
    from_mapping = getattr(cls, "from_mapping", None)
    if from_mapping is None:
        raise ConfigError(f"{where or name}: heuristic {name!r} takes no parameters")
    try:
        policy: Policy = from_mapping(dict(params), where or name)
    except ConfigError as exc:
        # Range checks in __post_init__ name the key but not the file.
        msg = str(exc)
        if where is None or msg.startswith(where.split(".")[0]):
            raise
        raise ConfigError(f"{where}: {msg}") from None
    return policy


#: Rule kinds a thresholds file may carry (``rule: {kind: ..., ...}``).
RULES: dict[str, type[Policy]] = {"soft_hard": SoftHard, "periodic_scan": PeriodicScan,
                                  "constant": Constant, "tree": TreeRule}


def make_rule(kind: str, params: Any, where: str | None = None) -> Policy:
    """The policy of a thresholds file's rule (``kind`` and its parameters)."""
    from ..envs.sim.config import did_you_mean

    if kind == "tree":
        return TreeRule.from_mapping(dict(params or {}), where or "tree")
    if kind not in RULES:
        raise ConfigError(f"{where or 'rule'}.kind: {kind!r} is not a known rule"
                          f"{did_you_mean(str(kind), RULES)}; known: {', '.join(RULES)}")
    return _from_params(RULES[kind], kind, params, where)
