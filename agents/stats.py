"""Statistics that hold up: bootstrap confidence intervals over seeded episodes.

Stratified bootstrap confidence intervals over episodes (resampling within
each scenario, as rliable does over tasks), the interquartile mean, the
normalised score ``(policy - none) / (oracle - none)`` (per scenario, then
aggregated), the probability of improvement over a baseline and paired
differences on the same episodes.

rliable itself is not used: its install pulls arch, statsmodels, pandas and
seaborn for what is here ~40 lines of numpy (the same percentile bootstrap,
resampling within each scenario, and the same 25 % trimmed IQM).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..envs.pagetable_env import COST_TERMS
from .results import EpisodeResult, PolicySummary


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50 % (rliable's aggregate)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        return float("nan")
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return float(v[lo:hi].mean()) if hi > lo else float(v.mean())


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    s = np.sort(samples, axis=1)
    n = s.shape[1]
    lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
    return s[:, lo:hi].mean(axis=1) if hi > lo else s.mean(axis=1)


def stratified_bootstrap(groups: Sequence[Sequence[float]],
                         statistic: Callable[[Any], Any] = np.mean,
                         n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``statistic`` over the pooled
    values, resampling with replacement within each group (scenario).

    ``np.mean`` and :func:`iqm` are vectorised; any other statistic is
    applied to each resample in turn.
    """
    arrays = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not arrays:
        return float("nan"), float("nan"), float("nan")
    pooled = np.concatenate(arrays)
    point = float(statistic(pooled))
    rng = np.random.default_rng(seed)
    samples = np.concatenate([a[rng.integers(0, len(a), (n_boot, len(a)))] for a in arrays],
                             axis=1)
    if statistic is np.mean:
        stats = samples.mean(axis=1)
    elif statistic is iqm:
        stats = _iqm_rows(samples)
    else:
        stats = np.array([statistic(row) for row in samples], dtype=float)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return point, float(lo), float(hi)



def _by_scenario(results: Iterable[EpisodeResult], policy: str) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.policy == policy:
            groups.setdefault(r.scenario, []).append(r.cost)
    return groups


def normalized_scores(results: Sequence[EpisodeResult], baseline: str = "none",
                      oracle: str = "oracle") -> dict[str, dict[str, list[float]]]:
    """Per policy, per scenario: each episode's ``(none - cost) / (none - oracle)``
    with ``none`` and ``oracle`` the scenario's mean costs of those policies.

    Scenarios where the two means are equal (nothing to win) are left out.
    """
    refs: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.policy in (baseline, oracle):
            refs.setdefault(r.scenario, {}).setdefault(r.policy, []).append(r.cost)
    scale: dict[str, tuple[float, float]] = {}
    for scen, d in refs.items():
        if baseline in d and oracle in d:
            b, o = float(np.mean(d[baseline])), float(np.mean(d[oracle]))
            if b != o:
                scale[scen] = (b, b - o)
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r.scenario in scale:
            b, span = scale[r.scenario]
            out.setdefault(r.policy, {}).setdefault(r.scenario, []).append((b - r.cost) / span)
    return out


def summarize(results: Sequence[EpisodeResult], baseline: str = "none",
              oracle: str = "oracle", n_boot: int = 2000, seed: int = 0, *,
              improvement_over: str | None = None,
              scenario: str | None = None) -> list[PolicySummary]:
    """One summary per policy, in first-seen order.

    ``baseline`` and ``oracle`` define the normalised score;
    ``improvement_over`` (default ``baseline``) the probability of improvement;
    ``scenario`` restricts everything to one scenario.
    """
    if scenario is not None:
        results = [r for r in results if r.scenario == scenario]
    poi_base = baseline if improvement_over is None else improvement_over
    names = list(dict.fromkeys(r.policy for r in results))
    norm = normalized_scores(results, baseline, oracle)
    out = []
    for n in names:
        groups = _by_scenario(results, n)
        mean, lo, hi = stratified_bootstrap(list(groups.values()), n_boot=n_boot, seed=seed)
        _, ilo, ihi = stratified_bootstrap(list(groups.values()), iqm, n_boot=n_boot, seed=seed)
        costs = [c for g in groups.values() for c in g]
        s = PolicySummary(n, len(costs), mean, lo, hi, iqm(costs), scenario=scenario or "all",
                          iqm_ci_low=ilo, iqm_ci_high=ihi)
        if n in norm:
            ngroups = list(norm[n].values())
            s.normalized, s.norm_ci_low, s.norm_ci_high = stratified_bootstrap(
                ngroups, n_boot=n_boot, seed=seed)
            s.iqm_normalized = iqm([v for g in ngroups for v in g])
        if n != poi_base and any(r.policy == poi_base for r in results):
            indicator = _improvement_indicators(results, n, poi_base)
            if indicator:
                s.improvement_over = poi_base
                s.prob_improvement, s.poi_ci_low, s.poi_ci_high = stratified_bootstrap(
                    list(indicator.values()), n_boot=n_boot, seed=seed)
        rows = [r for r in results if r.policy == n]
        s.terms = {k: float(np.mean([r.cost_terms[k] for r in rows])) for k in COST_TERMS}
        if all(r.weighted_terms for r in rows):
            s.weighted_terms = {k: float(np.mean([r.weighted_terms[k] for r in rows]))
                                for k in COST_TERMS}
        s.failure_ticks = float(np.mean([r.failure_ticks for r in rows]))
        s.oom_kills = float(np.mean([r.oom_kills for r in rows]))
        s.unwarned_failure_ticks = mean_unwarned(rows)
        out.append(s)
    return out


def mean_unwarned(results: Sequence[EpisodeResult]) -> float | None:
    """Mean ``unwarned_failure_ticks`` per episode, or None when a result lacks it."""
    counts = [r.unwarned_failure_ticks for r in results]
    known = [c for c in counts if c is not None]
    return float(np.mean(known)) if known and len(known) == len(counts) else None


def summarize_by_scenario(results: Sequence[EpisodeResult], baseline: str = "none",
                          oracle: str = "oracle", n_boot: int = 2000, seed: int = 0, *,
                          improvement_over: str | None = None
                          ) -> dict[str, list[PolicySummary]]:
    """:func:`summarize` for each scenario, in first-seen order."""
    return {scen: summarize(results, baseline, oracle, n_boot, seed,
                            improvement_over=improvement_over, scenario=scen)
            for scen in dict.fromkeys(r.scenario for r in results)}


def _improvement_indicators(results: Sequence[EpisodeResult], policy: str,
                            baseline: str) -> dict[str, list[float]]:
    base = {(r.scenario, r.episode): r.cost for r in results if r.policy == baseline}
    groups: dict[str, list[float]] = {}
    for r in results:
        if r.policy == policy and (r.scenario, r.episode) in base:
            b = base[(r.scenario, r.episode)]
            groups.setdefault(r.scenario, []).append(
                1.0 if r.cost < b else 0.5 if r.cost == b else 0.0)
    return groups


def probability_of_improvement(results: Sequence[EpisodeResult], policy: str,
                               baseline: str) -> float:
    """P(policy's cost < baseline's cost) on the same episode, ties count half."""
    groups = _improvement_indicators(results, policy, baseline)
    values = [v for g in groups.values() for v in g]
    if not values:
        return float("nan")
    return float(np.mean(values))




def paired_difference_ci(results: Sequence[EpisodeResult], policy: str, other: str,
                         n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of (other's cost - policy's cost) on the same episodes, with a
    stratified bootstrap CI: above zero means ``policy`` is better."""
    return pooled_difference([results], policy, other, n_boot, seed)


def pooled_difference(per_seed: Sequence[Sequence[EpisodeResult]], policy: str, other: str,
                      n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """:func:`paired_difference_ci` pooled over several result sets (the
    seeds of a multi-seed experiment), pairing episodes within each set and
    resampling within each scenario."""
    groups: dict[str, list[float]] = {}
    for results in per_seed:
        base = {(r.scenario, r.episode): r.cost for r in results if r.policy == other}
        for r in results:
            if r.policy == policy and (r.scenario, r.episode) in base:
                groups.setdefault(r.scenario, []).append(base[(r.scenario, r.episode)] - r.cost)
    return stratified_bootstrap(list(groups.values()), n_boot=n_boot, seed=seed)


def gain_share(none: float, export: float, learned: float) -> float | None:
    """``(none - export) / (none - learned)``: the share of the learned
    policy's gain over no reclaim that the exported rule keeps (None when the
    learned policy gained nothing). The same share with other roles: the share
    of a baseline's gap to the oracle that the learned policy closes is
    ``gain_share(baseline, learned, oracle)`` (None when the baseline is no
    worse than the oracle: then there is no gap to close)."""
    if none - learned <= 0:
        return None
    return (none - export) / (none - learned)


def gain_share_ci(results: Sequence[EpisodeResult], export: str, learned: str,
                  n_boot: int = 2000, seed: int = 0, base: str = "none"
                  ) -> tuple[float, float]:
    """95 % CI of the gain share over ``base`` (default no reclaim; the tuned heuristic
    for the share of the learned gain *over it* that the export keeps), resampling
    episodes within each scenario (the three policies of an episode stay together)."""
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in results:
        by.setdefault((r.scenario, r.episode), {})[r.policy] = r.cost
    groups: dict[str, list[tuple[float, float, float]]] = {}
    for (scen, _), d in sorted(by.items()):
        if {base, export, learned} <= set(d):
            groups.setdefault(scen, []).append((d[base], d[export], d[learned]))
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(g) for g in groups.values()]
    shares = []
    for _ in range(n_boot):
        tot = np.zeros(3)
        for a in arrays:
            tot += a[rng.integers(0, len(a), len(a))].mean(axis=0)
        s = gain_share(*tot)
        if s is not None:
            shares.append(s)
    if not shares:
        return float("nan"), float("nan")
    lo, hi = np.percentile(shares, [2.5, 97.5])
    return float(lo), float(hi)
