"""The result types of evaluation: one episode, and a policy's summary.

Plain dataclasses with no behaviour beyond their own fields, so that every
module that produces or reads results (rollouts, statistics, reports,
training, tuning) depends on this one and not on each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpisodeResult:
    """One evaluated episode.

    ``cost_terms`` are the raw per-episode sums of ``info["cost_terms"]``
    (MiB held, failure ticks, ms, events); ``weighted_terms`` the same times
    their reward weights, which add up to :attr:`cost`.

    ``unwarned_failure_ticks`` counts the failure ticks of the decisions that began
    with the normal zone's free memory at or above its high watermark: there holding a
    table is priced at nothing (the hold price is 0), so a policy that waits for free
    memory to fall could not have freed tables for them in time (a burst came within
    one decision).  None in results written before it was recorded.
    """

    policy: str
    scenario: str
    episode: int
    seed: int
    reward: float  # minus the total weighted cost
    cost_terms: dict[str, float]
    steps: int
    failure_ticks: int
    oom_kills: int
    peak_pt_bytes: int
    weighted_terms: dict[str, float] = field(default_factory=dict)
    unwarned_failure_ticks: int | None = None

    @property
    def cost(self) -> float:
        return -self.reward

    def row(self) -> dict[str, Any]:
        """A flat record for CSV/JSON: ``term_*`` raw, ``cost_*`` weighted."""
        d = {k: v for k, v in dataclasses.asdict(self).items()
             if k not in ("cost_terms", "weighted_terms")}
        d["cost"] = self.cost
        d.update({f"term_{k}": v for k, v in self.cost_terms.items()})
        d.update({f"cost_{k}": v for k, v in self.weighted_terms.items()})
        return d


@dataclass
class PolicySummary:
    """Aggregates of one policy over all scenarios, or over one (``scenario``).

    Costs: lower is better.  ``normalized`` is the mean normalised score
    ``(none - policy) / (none - oracle)`` on each scenario's mean costs of
    ``none`` and ``oracle`` (1 = as good as the oracle, 0 = as bad as no
    reclaim), ``prob_improvement`` P(cost < ``improvement_over``'s on the same
    episode).  ``terms`` are raw mean cost terms per episode, ``weighted_terms``
    the weighted ones (they add up to ``mean_cost``).
    """

    policy: str
    episodes: int
    mean_cost: float
    ci_low: float
    ci_high: float
    iqm_cost: float
    normalized: float | None = None
    prob_improvement: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    scenario: str = "all"
    iqm_ci_low: float = float("nan")
    iqm_ci_high: float = float("nan")
    norm_ci_low: float | None = None
    norm_ci_high: float | None = None
    iqm_normalized: float | None = None
    improvement_over: str | None = None
    poi_ci_low: float | None = None
    poi_ci_high: float | None = None
    weighted_terms: dict[str, float] = field(default_factory=dict)
    failure_ticks: float = 0.0
    oom_kills: float = 0.0
    #: Mean of :attr:`EpisodeResult.unwarned_failure_ticks`; None when a result lacks it.
    unwarned_failure_ticks: float | None = None
