"""Distil a learned policy into a deployable soft/hard-limit rule (DAgger).

An operator cannot run a neural network in the kernel; what they deploy is
the handful of thresholds of :class:`~.heuristics.SoftHard`.  This module
fits those thresholds to a learned policy's decisions:

1. *collect*: run episodes on the training scenarios driven by the teacher
   (round 0) or by the current student (later rounds), and record every
   observation it meets together with the teacher's (deterministic) action
   there: DAgger's answer to the student visiting states the teacher never
   showed it;
2. *fit*: choose the rule's thresholds that agree best with the teacher on
   all states gathered so far (below);
3. repeat (every round runs the same training episodes); finally keep the
   student with the lowest cost on those episodes, the goal being cost
   rather than imitation (a rule can agree with the teacher on most states
   and still skip the passes that matter), with its on-policy agreement (on
   the states it visits itself) as the tie-breaker and as a report.

Fitting.  The rule splits states into three regions, *hard* (page tables
over the hard limit or free memory under the trigger), *soft* (over the soft
limit, or a suspect process over the per-process limits) and *quiet* (no
pass), and acts with one budget/class per region (the soft class one deeper
when PSI is over its trigger) on the suspect or globally.  Given the six
continuous thresholds the best budgets and classes are the teacher's most
common choices in each region, so the search is over the thresholds only:
coordinate descent over candidate values taken from the data's quantiles
(rounded to 3 significant digits so the rule reads well), from two starts
(the default rule and "always reclaim").  The loss is the Hamming distance
between the actions after canonicalisation: an action with budget 0 does
nothing, whatever its class and target, so it counts as ``[0, 0, 0]``.

With a tree depth, the student is instead a depth-limited decision tree over
the named observation features (scikit-learn's CART on the same DAgger data),
rendered as if/else rules: more freedom than the soft/hard shape, still
readable and cheap to evaluate in a kernel or a daemon.

Everything is deterministic for a given seed; the data are small (thousands
of states), so a fit takes well under a second.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..envs.pagetable_env import OBS_NAMES, EnvConfig, PageTableReclaimEnv
from ..envs.sim.config import ConfigError, check_range
from ..envs.sim.simulator import ScenarioConfig
from .heuristics import Policy, SoftHard, SoftHardParams, TreeRule

_IDX = {name: i for i, name in enumerate(OBS_NAMES)}
#: The continuous thresholds searched, in coordinate-descent order.
THRESHOLDS = ("hard_pt_frac", "soft_pt_frac", "proc_ratio", "proc_pt_frac", "psi_trigger",
              "free_trigger")
#: Feature each threshold compares with (``free_trigger`` fires below it).
_FEATURE = {"hard_pt_frac": "pt_frac", "soft_pt_frac": "pt_frac",
            "proc_ratio": "top1_pt_ratio", "proc_pt_frac": "top1_pt_frac",
            "psi_trigger": "psi_some_avg10", "free_trigger": "free_vs_wmark"}
#: Values that switch a trigger off (the feature never passes them).
_NEVER = {"hard_pt_frac": 1.0, "soft_pt_frac": 1.0, "proc_ratio": 1.0, "proc_pt_frac": 1.0,
          "psi_trigger": 1.0, "free_trigger": -1.0}
_ALWAYS = {"hard_pt_frac": 0.0, "soft_pt_frac": 0.0, "proc_ratio": 0.0, "proc_pt_frac": 0.0,
           "psi_trigger": 0.0, "free_trigger": 1.0}


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill`.

    ``iterations``: DAgger rounds (round 0 is driven by the teacher);
    ``episodes``: episodes per training scenario per round; ``seed``: base of
    the collection episodes' seeds (kept apart from evaluation seeds);
    ``quantiles``: candidate thresholds per feature.
    """

    iterations: int = 4
    episodes: int = 2
    seed: int = 7_000
    quantiles: int = 40
    sweeps: int = 8

    def __post_init__(self) -> None:
        check_range("iterations", self.iterations, 1, 100)
        check_range("episodes", self.episodes, 1, 1000)
        check_range("seed", self.seed, 0, 2**31 - 1)
        check_range("quantiles", self.quantiles, 2, 1000)
        check_range("sweeps", self.sweeps, 1, 100)


@dataclass
class Dataset:
    """States (raw observations) and the teacher's actions there."""

    obs: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return len(self.obs)

    def extend(self, other: Dataset) -> Dataset:
        if not len(self):
            return other
        return Dataset(np.concatenate([self.obs, other.obs]),
                       np.concatenate([self.actions, other.actions]))


@dataclass(frozen=True)
class Round:
    """One DAgger round: who drove, what was gathered, how well the fit agrees."""

    index: int
    driver: str
    states: int
    total_states: int
    agreement_all: float  # the fitted student vs the teacher, all states so far
    onpolicy_agreement: float  # this round's student vs the teacher on the states it visits
    student: Policy
    onpolicy_components: tuple[float, ...] = ()
    cost: float = float("nan")  # this round's student: mean episode cost on those episodes


@dataclass(frozen=True)
class DistillResult:
    """The chosen rule and the record of how it was found."""

    student: Policy
    rounds: tuple[Round, ...]
    chosen_round: int
    agreement: float  # on-policy agreement of the chosen rule
    component_agreement: tuple[float, ...]  # per action component, on its own states
    states: int
    cost: float = float("nan")  # the chosen rule's mean cost on the collection episodes
    teacher_cost: float = float("nan")  # the teacher's, on the same episodes

    def summary(self) -> dict[str, Any]:
        """Plain data for the export's provenance."""
        return {"method": "DAgger", "student": self.student.name, "rounds": len(self.rounds),
                "chosen_round": self.chosen_round,
                "states": self.states, "onpolicy_agreement": round(self.agreement, 4),
                "train_cost": round(self.cost, 4),
                "teacher_train_cost": round(self.teacher_cost, 4),
                "component_agreement": [round(a, 4) for a in self.component_agreement],
                "per_round": [{"driver": r.driver, "states": r.states,
                               "fit_agreement": round(r.agreement_all, 4),
                               "onpolicy_agreement": round(r.onpolicy_agreement, 4),
                               "train_cost": round(r.cost, 4)}
                              for r in self.rounds]}


def canonical(actions: np.ndarray) -> np.ndarray:
    """Actions with budget 0 (no pass) written as ``[0, 0, 0]`` (class, target
    and hard-limit flag of a pass that does not happen do not matter)."""
    a = np.array(actions, dtype=np.int64, copy=True).reshape(len(actions), -1)[:, :3]
    a[a[:, 0] == 0] = 0
    return a


def collect(driver: Any, teacher: Any, scenarios: Sequence[ScenarioConfig],
            env_config: EnvConfig, episodes: int, seed: int,
            tick: Callable[[], None] | None = None) -> tuple[Dataset, np.ndarray, float]:
    """Run ``driver`` for ``episodes`` episodes on every scenario, and label
    every observation it meets with the teacher's action.

    Returns the labelled states, the driver's own (canonical) actions and its
    mean episode cost (minus the return) on these episodes.
    """
    obs_rows: list[np.ndarray] = []
    own: list[np.ndarray] = []
    costs: list[float] = []
    for i, scen in enumerate(scenarios):
        env = PageTableReclaimEnv([scen], env_config)
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + 1000 * i + k)
            ret = 0.0
            while True:
                action, _ = driver.predict(obs, deterministic=True)
                obs_rows.append(np.asarray(obs, dtype=np.float32))
                own.append(np.asarray(action, dtype=np.int64).ravel())
                obs, reward, terminated, truncated, _ = env.step(action)
                ret += float(reward)
                if terminated or truncated:
                    break
            costs.append(-ret)
            if tick is not None:
                tick()
    x = np.stack(obs_rows)
    labels, _ = teacher.predict(x, deterministic=True)
    labels = np.asarray(labels, dtype=np.int64).reshape(len(x), -1)
    return Dataset(x, labels), canonical(np.stack(own)), float(np.mean(costs))


# ------------------------------------------------------------------ fitting


class _Fitter:
    """The loss of a threshold setting on one dataset, with the region
    actions chosen optimally (the teacher's modes)."""

    def __init__(self, data: Dataset, budgets: int) -> None:
        y = canonical(data.actions)
        self.b, self.d, self.t = y[:, 0], y[:, 1], y[:, 2]
        self.nb = budgets
        x = data.obs
        self.f = {name: x[:, _IDX[name]].astype(np.float64) for name in set(_FEATURE.values())}

    def masks(self, th: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray]:
        f = self.f
        suspect = (f["top1_pt_ratio"] > th["proc_ratio"]) & (f["top1_pt_frac"] > th["proc_pt_frac"])
        hard = (f["pt_frac"] > th["hard_pt_frac"]) | (f["free_vs_wmark"] < th["free_trigger"])
        soft = ~hard & ((f["pt_frac"] > th["soft_pt_frac"]) | suspect)
        bump = f["psi_some_avg10"] > th["psi_trigger"]
        return suspect, hard, soft, bump

    def solve(self, th: dict[str, float]) -> tuple[int, dict[str, int]]:
        """The least mismatch count over budgets/classes, and those choices."""
        suspect, hard, soft, bump = self.masks(th)
        quiet = ~hard & ~soft
        s = suspect.astype(np.int64)
        # Quiet states: the rule does nothing.
        loss = int(np.count_nonzero(self.b[quiet]) + np.count_nonzero(self.d[quiet])
                   + np.count_nonzero(self.t[quiet]))
        best_h = self._region(hard, s, None)
        best_s = self._region(soft, s, bump)
        return loss + best_h[0] + best_s[0], {
            "hard_budget": best_h[1], "hard_depth": best_h[2],
            "soft_budget": best_s[1], "soft_depth": best_s[2]}

    def _region(self, m: np.ndarray, s: np.ndarray, bump: np.ndarray | None
                ) -> tuple[int, int, int]:
        b, d, t, sm = self.b[m], self.d[m], self.t[m], s[m]
        n = len(b)
        if n == 0:
            return 0, 0, 0
        bcount = np.bincount(b, minlength=self.nb)
        idle = int(np.count_nonzero(d) + np.count_nonzero(t))  # mismatches of [0, 0, 0]
        best = (n - int(bcount[0]) + idle, 0, 0)
        tmiss = int(np.count_nonzero(t != sm))
        bmp = None if bump is None else bump[m].astype(np.int64)
        for depth in range(3):
            pred = np.full(n, depth) if bmp is None else np.minimum(2, depth + bmp)
            dmiss = int(np.count_nonzero(d != pred))
            for budget in range(1, self.nb):
                loss = n - int(bcount[budget]) + dmiss + tmiss
                if loss < best[0]:
                    best = (loss, budget, depth)
        return best


def _candidates(values: np.ndarray, name: str, q: int) -> list[float]:
    qs = np.quantile(values, np.linspace(0.0, 1.0, q)) if len(values) else np.array([])
    out = {_NEVER[name], _ALWAYS[name]}
    lo, hi = (-1.0, 1.0) if name == "free_trigger" else (0.0, 1.0)
    for v in qs:
        v = float(v)
        if v != 0.0:
            v = float(f"{v:.3g}")
        out.add(min(hi, max(lo, v)))
    return sorted(out)


def fit_rule(data: Dataset, budgets: int, quantiles: int = 40, sweeps: int = 8,
             base: SoftHardParams | None = None) -> tuple[SoftHardParams, float]:
    """The :class:`SoftHardParams` that agree best with the teacher on
    ``data`` (see the module docstring), and that agreement (share of action
    components that match)."""
    if not len(data):
        raise ConfigError("no states to fit the rule to")
    fitter = _Fitter(data, budgets)
    cands = {name: _candidates(fitter.f[_FEATURE[name]], name, quantiles) for name in THRESHOLDS}
    default = base or SoftHardParams()
    starts = [{n: float(getattr(default, n)) for n in THRESHOLDS},
              {**{n: float(getattr(default, n)) for n in THRESHOLDS},
               "soft_pt_frac": 0.0, "free_trigger": -1.0}]
    best_loss, best_th, best_ints = math.inf, starts[0], {}
    for start in starts:
        th = dict(start)
        loss, ints = fitter.solve(th)
        for _ in range(sweeps):
            improved = False
            for name in THRESHOLDS:
                for v in cands[name]:
                    if v == th[name]:
                        continue
                    if name == "soft_pt_frac" and v > th["hard_pt_frac"]:
                        continue
                    if name == "hard_pt_frac" and v < th["soft_pt_frac"]:
                        continue
                    trial = {**th, name: v}
                    tl, ti = fitter.solve(trial)
                    if tl < loss:
                        loss, ints, th, improved = tl, ti, trial, True
            if not improved:
                break
        if loss < best_loss:
            best_loss, best_th, best_ints = loss, th, ints
    fields: dict[str, Any] = {**best_th, **best_ints, "use_hard_limit": False}
    params = dataclasses.replace(default, **fields)
    return params, 1.0 - best_loss / (3 * len(data))


def agreement(pred: np.ndarray, teacher: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """Share of matching action components (canonical), overall and per component."""
    p, t = canonical(pred), canonical(teacher)
    per = tuple(float(np.mean(p[:, j] == t[:, j])) for j in range(3))
    return float(np.mean(per)), per


def _encode(actions: np.ndarray) -> np.ndarray:
    a = canonical(actions)
    return a[:, 0] * 6 + a[:, 1] * 2 + a[:, 2]


def fit_tree(data: Dataset, depth: int, seed: int = 0) -> tuple[TreeRule, float]:
    """A depth-limited decision tree (scikit-learn's CART) over the named
    observation features, predicting the teacher's canonical action, as a
    :class:`TreeRule` (thresholds rounded to 4 significant digits; subtrees
    whose leaves agree are merged), and its agreement on ``data``."""
    from sklearn.tree import DecisionTreeClassifier

    if not len(data):
        raise ConfigError("no states to fit the tree to")
    y = _encode(data.actions)
    clf = DecisionTreeClassifier(max_depth=depth, random_state=seed)
    clf.fit(data.obs.astype(np.float32), y)
    t = clf.tree_

    def node(i: int) -> dict[str, Any]:
        if t.children_left[i] == t.children_right[i]:  # a leaf
            code = int(clf.classes_[int(np.argmax(t.value[i][0]))])
            return {"action": [code // 6, (code // 2) % 3, code % 2]}
        left, right = node(int(t.children_left[i])), node(int(t.children_right[i]))
        if left == right:
            return left
        return {"feature": OBS_NAMES[int(t.feature[i])],
                "above": float(f"{float(t.threshold[i]):.4g}"), "then": right, "else": left}

    rule = TreeRule(node(0))
    pred = rule.predict(data.obs)[0]
    return rule, agreement(pred, data.actions)[0]


def distill(teacher: Any, scenarios: Sequence[ScenarioConfig], env_config: EnvConfig,
            config: DistillConfig | None = None,
            tick: Callable[[], None] | None = None,
            log: Callable[[str], None] | None = None, *,
            tree_depth: int = 0) -> DistillResult:
    """DAgger: distil ``teacher`` (anything with ``predict``) on ``scenarios``
    (the training scenarios) into a :class:`SoftHard` rule or, with
    ``tree_depth`` > 0, a :class:`TreeRule` of that depth."""
    cfg = config or DistillConfig()
    if env_config.hard_limit_action:
        raise ConfigError("distillation fits the default action space; the run was trained "
                          "with env.hard_limit_action: true, which the rule cannot express yet")
    budgets = len(env_config.budgets)
    kind = "tree" if tree_depth > 0 else "soft_hard"

    def fit(data: Dataset) -> tuple[Policy, float]:
        if tree_depth > 0:
            return fit_tree(data, tree_depth, cfg.seed)
        params, agree = fit_rule(data, budgets, cfg.quantiles, cfg.sweeps)
        return SoftHard(params), agree

    data = Dataset(np.zeros((0, len(OBS_NAMES)), np.float32), np.zeros((0, 3), np.int64))
    rounds: list[Round] = []
    driver: Any = teacher
    driver_name = "teacher"
    teacher_cost = float("nan")
    # Every round runs the same episodes (common random numbers), so the
    # students' costs compare with each other and with the teacher's.  One
    # more collection than fits: the last one measures the last student.
    for it in range(cfg.iterations + 1):
        new, own, cost = collect(driver, teacher, scenarios, env_config, cfg.episodes,
                                 cfg.seed, tick)
        onpolicy, per = agreement(own, new.actions)
        if it == 0:
            teacher_cost = cost
        else:
            rounds[-1] = dataclasses.replace(rounds[-1], onpolicy_agreement=onpolicy,
                                             onpolicy_components=per, cost=cost)
        if log is not None:
            log(f"{kind} round {it}: the {driver_name} costs {cost:.2f} per training episode "
                f"and agrees with the teacher on {onpolicy:.3f} of action components")
        if it == cfg.iterations:
            break
        data = data.extend(new)
        student, agree = fit(data)
        rounds.append(Round(it, driver_name, len(new), len(data), agree, float("nan"),
                            student))
        driver, driver_name = student, f"student {it}"
    # Keep the student that costs least on the training episodes (the goal is
    # cost, not imitation: a rule can agree often and still skip the passes
    # that matter); agreement breaks ties.
    best = min(range(len(rounds)), key=lambda i: (rounds[i].cost, -rounds[i].onpolicy_agreement,
                                                  i))
    chosen = rounds[best]
    return DistillResult(chosen.student, tuple(rounds), best, chosen.onpolicy_agreement,
                         chosen.onpolicy_components, len(data), chosen.cost, teacher_cost)
