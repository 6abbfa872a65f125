"""Distil a learned policy into a deployable soft/hard-limit rule (DAgger).

An operator cannot run a neural network in the kernel; what they deploy is
the handful of thresholds of :class:`~.heuristics.SoftHard`.  This module
fits those thresholds to a learned policy's decisions:

1. *collect*: run episodes on the training scenarios driven by the teacher
   (round 0) or by the current student (later rounds), and record every
   observation it meets together with the teacher's (deterministic) action
   there: DAgger's answer to the student visiting states the teacher never
   showed it;
2. *fit*: choose the rule's parameters that agree best with the teacher on
   all states gathered so far (below);
3. repeat (every round runs the same training episodes); finally keep the
   student with the lowest cost on those episodes, the goal being cost
   rather than imitation (a rule can agree with the teacher on most states
   and still skip the passes that matter), with its on-policy agreement (on
   the states it visits itself) as the tie-breaker and as a report.

Fitting.  The v1 rule splits states into three regions, *hard* (page tables
over the hard limit or free memory under the trigger), *soft* (over the soft
limit, the hold price over its trigger, or a suspect) and *quiet* (no pass),
and acts with one budget / class depth / idle requirement per level (the soft
class one deeper when PSI is over its trigger, the idle requirement one higher
when the classes freed re-fault), on a target chosen among the top consumers,
with a hard-limit flag (:class:`~.heuristics.SoftHardParams`).  Given the
continuous thresholds and the categorical knobs (``target_by``, ``suspect_soft``,
``use_hard_limit``), the best level actions are found exactly: the mismatches of
each level's (budget, depth, idle) are counted for every value, then the best
*monotone* pair of levels is taken (the hard level scans at least as much, at
least as deep, requiring at most the soft level's idle age).  The search is over
the thresholds and knobs only: coordinate descent over candidate values taken
from the data's quantiles (rounded to 3 significant digits so the rule reads
well), from three starts (the default rule, "always reclaim", and the limits with
every other trigger off), then refined between each threshold's coarse neighbours.  The loss is the
Hamming distance between the actions after canonicalisation (:func:`canonical`:
the parts of an action that do nothing do not count).

With a tree depth, the student is instead a depth-limited decision tree over
the named observation features (scikit-learn's CART on the same DAgger data)
with five-component leaves, rendered as if/else rules: more freedom than the
soft/hard shape, still readable and cheap to evaluate in a kernel or a daemon.

Everything is deterministic for a given seed; the data are small (thousands
of states), so a fit takes seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..envs.features import TOP_K
from ..envs.pagetable_env import OBS_NAMES, EnvConfig, PageTableReclaimEnv
from ..envs.sim.config import ConfigError, check_ranges, ranged
from ..envs.sim.simulator import ScenarioConfig
from .heuristics import (
    ACTION_COMPONENTS,
    ACTION_HIGHS,
    Policy,
    SoftHard,
    SoftHardParams,
    TreeRule,
    canonical,
)
from .rollout import LOCKSTEP, fit_action, plays_in_lockstep

_IDX = {name: i for i, name in enumerate(OBS_NAMES)}
_NC = len(ACTION_COMPONENTS)
#: The continuous thresholds searched, in coordinate-descent order, each with the
#: features its candidate values are drawn from.
THRESHOLDS: dict[str, tuple[str, ...]] = {
    "hard_pt_frac": ("pt_frac",), "soft_pt_frac": ("pt_frac",),
    "soft_price": ("hold_price",), "free_trigger": ("free_vs_wmark",),
    "psi_trigger": ("psi_some_avg10",),
    "refault_trigger": ("empty_refault", "zero_refault", "file_refault"),
    "proc_ratio": tuple(f"top{i}_pt_ratio" for i in range(1, TOP_K + 1)),
    "proc_pt_frac": tuple(f"top{i}_pt_frac" for i in range(1, TOP_K + 1)),
    "limit_ratio": tuple(f"top{i}_pt_ratio" for i in range(1, TOP_K + 1)),
    "limit_growth": tuple(f"top{i}_growth" for i in range(1, TOP_K + 1)),
    "limit_refault": tuple(f"top{i}_refault" for i in range(1, TOP_K + 1)),
}
#: The categorical knobs searched, with their values.
CHOICES: dict[str, tuple[Any, ...]] = {"target_by": ("ratio", "growth", "size"),
                                       "suspect_soft": (True, False),
                                       "use_hard_limit": (False, True)}
#: Values that switch a trigger off (the feature never passes them) or on (always).
_NEVER = {**dict.fromkeys(THRESHOLDS, 1.0), "free_trigger": -1.0}
_ALWAYS = {**dict.fromkeys(THRESHOLDS, 0.0), "free_trigger": 1.0}
#: The level actions the fit chooses (not searched: solved exactly per setting).
LEVEL_INTS = tuple(f"{lv}_{c}" for lv in ("soft", "hard") for c in ("budget", "depth", "idle"))


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :func:`distill`.

    ``iterations``: DAgger rounds (round 0 is driven by the teacher);
    ``episodes``: episodes per training scenario per round; ``seed``: base of
    the collection episodes' seeds (kept apart from evaluation seeds);
    ``quantiles``: candidate thresholds per feature.
    """

    iterations: int = ranged(4, 1, 100)
    episodes: int = ranged(2, 1, 1000)
    seed: int = ranged(7_000, 0, 2**31 - 1)
    quantiles: int = ranged(40, 2, 1000)
    sweeps: int = ranged(8, 1, 100)

    def __post_init__(self) -> None:
        check_ranges(self, "")


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


def collect(driver: Any, teacher: Any, scenarios: Sequence[ScenarioConfig],
            env_config: EnvConfig, episodes: int, seed: int,
            tick: Callable[[], None] | None = None,
            lockstep: int = LOCKSTEP) -> tuple[Dataset, np.ndarray, float]:
    """Run ``driver`` for ``episodes`` episodes on every scenario, and label
    every observation it meets with the teacher's action.

    Both are asked step by step, in the episode's order, with their own recurrent
    state (``predict(obs, state, episode_start)``): a teacher with memory (an LSTM
    policy) labels each state with what it would do there after the episode so far.
    Returns the labelled states, the driver's own (canonical) actions and its
    mean episode cost (minus the return) on these episodes.

    A teacher that decides for many observations in one call
    (:func:`~ptreclaim.agents.rollout.plays_in_lockstep`: a PPO or A2C model, which has no
    memory) labels up to ``lockstep`` episodes at once when the driver is the teacher
    itself or a rule (stateless): the same data, in the same order, bit for bit.
    """
    if lockstep > 1 and plays_in_lockstep(teacher) and (driver is teacher
                                                        or isinstance(driver, Policy)):
        return _collect_lockstep(driver, teacher, scenarios, env_config, episodes, seed,
                                 tick, lockstep)
    obs_rows: list[np.ndarray] = []
    own: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    costs: list[float] = []
    for i, scen in enumerate(scenarios):
        env = PageTableReclaimEnv([scen], env_config)
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + 1000 * i + k)
            ret = 0.0
            dstate = tstate = None
            start = np.ones((1,), dtype=bool)
            while True:
                action, dstate = driver.predict(obs, state=dstate, episode_start=start,
                                                deterministic=True)
                label, tstate = teacher.predict(obs, state=tstate, episode_start=start,
                                                deterministic=True)
                start = np.zeros((1,), dtype=bool)
                obs_rows.append(np.asarray(obs, dtype=np.float32))
                own.append(np.asarray(action, dtype=np.int64).ravel())
                labels.append(np.asarray(label, dtype=np.int64).ravel())
                obs, reward, terminated, truncated, _ = env.step(fit_action(action, env))
                ret += float(reward)
                if terminated or truncated:
                    break
            costs.append(-ret)
            if tick is not None:
                tick()
    return (Dataset(np.stack(obs_rows), np.stack(labels)), canonical(np.stack(own)),
            float(np.mean(costs)))


def _collect_lockstep(driver: Any, teacher: Any, scenarios: Sequence[ScenarioConfig],
                      env_config: EnvConfig, episodes: int, seed: int,
                      tick: Callable[[], None] | None,
                      width: int) -> tuple[Dataset, np.ndarray, float]:
    """:func:`collect` with ``width`` episodes played together: one ``predict_rows`` call
    labels a decision of each (and is the driver's action when the driver is the
    teacher); a rule driver decides row by row as it would alone."""
    jobs = [(i, k) for i in range(len(scenarios)) for k in range(episodes)]
    obs_rows: list[np.ndarray] = []
    own: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    costs: list[float] = []
    for lo in range(0, len(jobs), width):
        chunk = jobs[lo:lo + width]
        envs: list[PageTableReclaimEnv | None] = [PageTableReclaimEnv([scenarios[i]], env_config)
                                                  for i, _ in chunk]
        obs = [env.reset(seed=seed + 1000 * i + k)[0]  # type: ignore[union-attr]
               for env, (i, k) in zip(envs, chunk, strict=True)]
        seen: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in chunk]
        ret = [0.0] * len(chunk)
        live = list(range(len(chunk)))
        while live:
            rows = np.stack([obs[j] for j in live])
            taught = teacher.predict_rows(rows)
            first = np.array([not seen[j] for j in live])
            for n, j in enumerate(live):
                env = envs[j]
                assert env is not None
                if driver is teacher:
                    action = taught[n]
                else:
                    action, _ = driver.predict(obs[j], state=None, episode_start=first[n:n + 1],
                                               deterministic=True)
                seen[j].append((np.asarray(obs[j], dtype=np.float32),
                                np.asarray(action, dtype=np.int64).ravel(),
                                np.asarray(taught[n], dtype=np.int64).ravel()))
                obs[j], reward, terminated, truncated, _ = env.step(fit_action(action, env))
                ret[j] += float(reward)
                if terminated or truncated:
                    envs[j] = None  # its simulation goes now, not with the chunk
                    if tick is not None:
                        tick()
            live = [j for j in live if envs[j] is not None]
        for steps, r in zip(seen, ret, strict=True):
            obs_rows += [o for o, _, _ in steps]
            own += [a for _, a, _ in steps]
            labels += [t for _, _, t in steps]
            costs.append(-r)
    return (Dataset(np.stack(obs_rows), np.stack(labels)), canonical(np.stack(own)),
            float(np.mean(costs)))


# ------------------------------------------------------------------ fitting


class _Fitter:
    """The loss of a rule setting on one dataset, with the level actions chosen
    optimally under the monotone constraint; vectorised :class:`SoftHard`."""

    def __init__(self, data: Dataset, budgets: int) -> None:
        self.y = canonical(data.actions)
        self.nb = min(budgets, ACTION_HIGHS[0] + 1)
        x = data.obs.astype(np.float64)
        self.f = {name: x[:, i] for name, i in _IDX.items()}
        f = self.f
        # Re-fault signal of the worst class a pass of each depth may free.
        r0 = f["empty_refault"]
        r1 = np.maximum(r0, f["zero_refault"])
        self.worst_refault = np.stack([r0, r1, np.maximum(r1, f["file_refault"])])

    def predict_parts(self, th: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Per state: the target, the hard flag, the hard and soft region masks and the
        PSI bump, as :class:`SoftHard` decides them."""
        f = self.f
        n = len(self.y)
        ratio = np.stack([f[f"top{i}_pt_ratio"] for i in range(1, TOP_K + 1)])
        frac = np.stack([f[f"top{i}_pt_frac"] for i in range(1, TOP_K + 1)])
        key = {"ratio": ratio, "growth": np.stack(
            [f[f"top{i}_growth"] for i in range(1, TOP_K + 1)]), "size": frac}[th["target_by"]]
        suspect = (frac > th["proc_pt_frac"]) & (ratio > th["proc_ratio"])
        # The first of the largest (heuristics.choose_target: ties go to the lower rank).
        best = np.argmax(np.where(suspect, key, -np.inf), axis=0)
        target = np.where(suspect.any(axis=0), best + 1, 0)
        hard = np.zeros(n, np.int64)
        if th["use_hard_limit"]:
            rows = np.arange(n)
            i = np.maximum(target - 1, 0)
            grow = np.stack([f[f"top{k}_growth"] for k in range(1, TOP_K + 1)])[i, rows]
            refault = np.stack([f[f"top{k}_refault"] for k in range(1, TOP_K + 1)])[i, rows]
            limited = np.stack([f[f"top{k}_limited"] for k in range(1, TOP_K + 1)])[i, rows]
            hard = ((target > 0) & (limited <= 0.5) & (ratio[i, rows] > th["limit_ratio"])
                    & (grow > th["limit_growth"]) & (refault > th["limit_refault"])
                    ).astype(np.int64)
        hard_m = (f["pt_frac"] > th["hard_pt_frac"]) | (f["free_vs_wmark"] < th["free_trigger"])
        soft_m = ~hard_m & ((f["pt_frac"] > th["soft_pt_frac"])
                            | (f["hold_price"] > th["soft_price"])
                            | ((target > 0) & bool(th["suspect_soft"])))
        bump = (f["psi_some_avg10"] > th["psi_trigger"]).astype(np.int64)
        return target, hard, hard_m, soft_m, bump

    def _level(self, m: np.ndarray, target: np.ndarray, hard: np.ndarray,
               bump: np.ndarray | None, trigger: float) -> np.ndarray:
        """Mismatches of the region ``m`` for every (budget, depth, idle, cap) of its
        level: ``cap`` is the hard level's depth, which bounds the PSI bump."""
        y = self.y[m]
        t, h = target[m], hard[m]
        bm = np.zeros(ACTION_HIGHS[0] + 1, np.int64)
        bm[:] = len(y) - np.bincount(y[:, 0], minlength=ACTION_HIGHS[0] + 1)[:ACTION_HIGHS[0] + 1]
        # A pass: target and flag as decided; no pass: the target only with the flag.
        th_pass = int(np.count_nonzero(y[:, 3] != t) + np.count_nonzero(y[:, 4] != h))
        th_none = int(np.count_nonzero(y[:, 3] != np.where(h > 0, t, 0))
                      + np.count_nonzero(y[:, 4] != h))
        z = int(np.count_nonzero(y[:, 1]) + np.count_nonzero(y[:, 2]))
        nd, ni = ACTION_HIGHS[1] + 1, ACTION_HIGHS[2] + 1
        out = np.zeros((ACTION_HIGHS[0] + 1, nd, ni, nd), np.int64)
        worst = self.worst_refault[:, m]
        b = None if bump is None else bump[m]
        for cap in range(nd) if b is not None else (0,):
            for d in range(nd):
                depth = np.full(len(y), d) if b is None else np.minimum(
                    max(cap, d), d + b)
                dmis = int(np.count_nonzero(y[:, 1] != depth))
                over = np.take_along_axis(worst, depth[None, :], axis=0)[0] > trigger
                for i in range(ni):
                    idle = np.where(over & (i < ni - 1), i + 1, i)
                    out[1:, d, i, cap] = dmis + int(np.count_nonzero(y[:, 2] != idle)) + th_pass
        out[1:] += bm[1:, None, None, None]
        out[0] = bm[0] + z + th_none
        return out

    def solve(self, th: dict[str, Any]) -> tuple[int, dict[str, int]]:
        """The least mismatch count over the level actions, and those actions."""
        target, hard, hard_m, soft_m, bump = self.predict_parts(th)
        quiet = ~hard_m & ~soft_m
        y = self.y[quiet]
        loss = int(np.count_nonzero(y[:, :3]) + np.count_nonzero(
            y[:, 3] != np.where(hard[quiet] > 0, target[quiet], 0))
            + np.count_nonzero(y[:, 4] != hard[quiet]))
        trig = float(th["refault_trigger"])
        lh = self._level(hard_m, target, hard, None, trig)[:, :, :, 0]
        ls = self._level(soft_m, target, hard, bump, trig)
        nb, nd, ni = self.nb, ACTION_HIGHS[1] + 1, ACTION_HIGHS[2] + 1
        best: tuple[int, tuple[int, ...]] = (2**62, ())
        # Every monotone pair: hard budget/depth >= soft's, hard idle <= soft's.
        for hb, hd, hi in itertools.product(range(nb), range(nd), range(ni)):
            sub = ls[:hb + 1, :hd + 1, hi:, hd]
            k = int(np.argmin(sub))
            total = int(lh[hb, hd, hi]) + int(sub.flat[k])
            if total < best[0]:
                sb, sd, si = np.unravel_index(k, sub.shape)
                best = (total, (int(sb), int(sd), int(si) + hi, hb, hd, hi))
        return loss + best[0], dict(zip(LEVEL_INTS, best[1], strict=True))


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


def _finer(values: np.ndarray, coarse: list[float], current: float, most: int = 16
           ) -> list[float]:
    """Candidates around ``current`` (up to its second coarse neighbours): each distinct
    data value there (at most ``most``, evenly spread) rounded down and up to 4 significant
    digits, so that a rule ``x > threshold`` can put the value on either side.  A split
    the teacher makes between two close data values may fall between two quantiles."""
    # Two neighbours each way: a coarse value is a rounded data value, which may sit on
    # the wrong side of the very value the split needs.
    below = sorted(c for c in coarse if c < current)[-2:]
    above = sorted(c for c in coarse if c > current)[:2]
    lo = below[0] if below else -math.inf
    hi = above[-1] if above else math.inf
    inside = np.unique(values[(values > lo) & (values < hi)])
    if len(inside) > most:
        inside = inside[np.linspace(0, len(inside) - 1, most).round().astype(int)]
    out: set[float] = set()
    for v in inside.tolist():
        if v == 0.0:
            out.add(0.0)
            continue
        step = 10.0 ** (math.floor(math.log10(abs(v))) - 3)
        out.update((float(f"{math.floor(v / step) * step:.4g}"),
                    float(f"{math.ceil(v / step) * step:.4g}")))
    return sorted(out)


def _descend(fitter: _Fitter, th: dict[str, Any], cands: dict[str, list[Any]], sweeps: int
             ) -> tuple[int, dict[str, Any], dict[str, int]]:
    """Coordinate descent from ``th`` over ``cands``: the loss, the setting, the levels."""
    loss, ints = fitter.solve(th)
    for _ in range(sweeps):
        improved = False
        for name, values in cands.items():
            for v in values:
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
    return loss, th, ints


def fit_rule(data: Dataset, budgets: int, quantiles: int = 40, sweeps: int = 8,
             base: SoftHardParams | None = None) -> tuple[SoftHardParams, float]:
    """The :class:`SoftHardParams` that agree best with the teacher on
    ``data`` (see the module docstring), and that agreement (share of action
    components that match).  A second descent refines each threshold between its
    coarse neighbours."""
    if not len(data):
        raise ConfigError("no states to fit the rule to")
    fitter = _Fitter(data, budgets)
    pooled = {name: np.concatenate([fitter.f[c] for c in cols])
              for name, cols in THRESHOLDS.items()}
    cands: dict[str, list[Any]] = {name: _candidates(v, name, quantiles)
                                   for name, v in pooled.items()}
    cands.update({k: list(v) for k, v in CHOICES.items()})
    default = base or SoftHardParams()
    first = {n: getattr(default, n) for n in cands}
    # The default rule, "always reclaim", and the limits alone (every other trigger off):
    # a trigger that only hurts the fit may hide the move of another one.
    starts = [first, {**first, "soft_pt_frac": 0.0, "free_trigger": -1.0},
              {**first, **{k: _NEVER[k] for k in ("soft_price", "free_trigger", "psi_trigger",
                                                   "refault_trigger")}}]
    best_loss, best_th, best_ints = math.inf, starts[0], {}
    for start in starts:
        loss, th, ints = _descend(fitter, dict(start), cands, sweeps)
        if loss:
            fine = {name: _finer(pooled[name], cands[name], th[name]) for name in THRESHOLDS}
            loss, th, ints = _descend(fitter, th, fine, min(sweeps, 2))
        if loss < best_loss:
            best_loss, best_th, best_ints = loss, th, ints
    fields: dict[str, Any] = {**best_th, **best_ints}
    params = dataclasses.replace(default, **fields)
    return params, 1.0 - best_loss / (_NC * len(data))


def agreement(pred: np.ndarray, teacher: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """Share of matching action components (canonical), overall and per component."""
    p, t = canonical(pred), canonical(teacher)
    per = tuple(float(np.mean(p[:, j] == t[:, j])) for j in range(_NC))
    return float(np.mean(per)), per


_DIMS = tuple(h + 1 for h in ACTION_HIGHS)


def _encode(actions: np.ndarray) -> np.ndarray:
    a = canonical(actions)
    return np.ravel_multi_index(tuple(a.T), _DIMS)


def fit_tree(data: Dataset, depth: int, seed: int = 0) -> tuple[TreeRule, float]:
    """A depth-limited decision tree (scikit-learn's CART) over the named
    observation features, predicting the teacher's canonical action, as a
    :class:`TreeRule` (thresholds rounded to 4 significant digits; subtrees
    whose leaves agree are merged), and its agreement on ``data``.  Only the
    features of :data:`OBS_NAMES` may split: a teacher trained with an ablation's
    extra observations (``candidate_counts``, ``burst_memory``) is distilled into a
    rule that reads what every host gives."""
    from sklearn.tree import DecisionTreeClassifier

    if not len(data):
        raise ConfigError("no states to fit the tree to")
    y = _encode(data.actions)
    clf = DecisionTreeClassifier(max_depth=depth, random_state=seed)
    clf.fit(data.obs[:, :len(OBS_NAMES)].astype(np.float32), y)
    t = clf.tree_

    def node(i: int) -> dict[str, Any]:
        if t.children_left[i] == t.children_right[i]:  # a leaf
            code = int(clf.classes_[int(np.argmax(t.value[i][0]))])
            return {"action": [int(v) for v in np.unravel_index(code, _DIMS)]}
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
    budgets = len(env_config.budgets)
    kind = "tree" if tree_depth > 0 else "soft_hard"

    def fit(data: Dataset) -> tuple[Policy, float]:
        if tree_depth > 0:
            return fit_tree(data, tree_depth, cfg.seed)
        params, agree = fit_rule(data, budgets, cfg.quantiles, cfg.sweeps)
        return SoftHard(params), agree

    data = Dataset(np.zeros((0, len(OBS_NAMES)), np.float32), np.zeros((0, _NC), np.int64))
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
