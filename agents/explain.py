"""What a policy does: its actions per scenario, and the features its decisions follow.

A trained model is opaque; two questions make it readable (``scripts/explain.py``):

* **Which actions, where.**  The policy runs deterministic, seeded episodes of each
  scenario (the episodes :func:`~ptreclaim.agents.rollout.run_policies` would run); for
  every action component (budget, class depth, idle requirement, target, hard limit) the
  share of decisions that chose each value is counted per scenario.
* **Which features.**  Permutation sensitivity over the observations those episodes
  visited: for each feature, its column is shuffled across the visited states (the other
  features kept), the policy decides again on every state, and the share of decisions
  whose action changes is the feature's sensitivity.  A feature the policy ignores scores
  0; one it follows everywhere scores near 1 - (share of states where the shuffled value
  happens to give the same action).  Shuffling keeps each feature's distribution, so the
  policy is never asked about values it could not meet; it does break correlations
  between features, which is what makes the score attributable to one feature.  Recurrent
  policies are asked state by state without their memory (a sensitivity of the
  observation mapping only).

Everything is seeded: the same policy, suite, episodes and seed give the same numbers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..envs.configio import write_text_atomic
from ..envs.features import TOP_K
from ..envs.pagetable_env import EnvConfig, obs_names
from ..envs.sim.reclaim import DEPTHS
from ..envs.sim.simulator import ScenarioConfig
from .heuristics import ACTION_COMPONENTS
from .loading import PolicySpec, build_policy
from .report import md_table, png, pyplot
from .rollout import episode_seed, run_episode

#: Files ``explain.py`` writes into its output folder.
OUTPUT_FILES = ("explain.json", "explain.png", "report.md", "command.txt")
#: Features shown in the plot and the report (the rest are in explain.json).
TOP_FEATURES = 15


@dataclasses.dataclass
class Explanation:
    """What :func:`explain` found (plain data, written as ``explain.json``)."""

    policy: str
    scenarios: list[str]
    episodes: int
    seed: int
    #: ``shares[scenario][component]`` = share of decisions choosing each value.
    shares: dict[str, dict[str, list[float]]]
    #: Decisions per scenario.
    decisions: dict[str, int]
    #: Feature name -> share of decisions whose action changes when it is shuffled.
    sensitivity: dict[str, float]
    #: Cost per scenario (mean episode cost), to put the actions next to their result.
    cost: dict[str, float]

    def top_features(self, n: int = TOP_FEATURES) -> list[tuple[str, float]]:
        return sorted(self.sensitivity.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def value_labels(env_config: EnvConfig) -> dict[str, list[str]]:
    """Readable names of each action component's values."""
    depth_names = ["empty", "+zero", "+file"][:len(DEPTHS)]
    return {
        "budget": [("none" if b == 0 else "all" if b >= 1 << 30 else str(b))
                   for b in env_config.budgets],
        "depth": depth_names,
        "idle": [f">={n}" for n in env_config.idle_levels],
        "target": ["global", *(f"top{i}" for i in range(1, TOP_K + 1))],
        "hard": ["no", "cap"],
    }


def _predict_all(policy: Any, states: np.ndarray) -> np.ndarray:
    """The deterministic action of ``policy`` for each row of ``states``."""
    out = [np.asarray(policy.predict(s, deterministic=True)[0]).ravel() for s in states]
    return np.stack(out).astype(np.int64)


def explain(spec: PolicySpec, scenarios: Sequence[ScenarioConfig], env_config: EnvConfig,
            episodes: int, seed: int,
            progress: Callable[[int, int], None] | None = None) -> Explanation:
    """Run ``spec`` on ``episodes`` seeded episodes of each scenario and measure
    its action shares and its feature sensitivity (see the module docstring)."""
    labels = value_labels(env_config)
    components = [c for c in ACTION_COMPONENTS
                  if c != "hard" or env_config.hard_limit_action]
    names = obs_names(env_config)
    shares: dict[str, dict[str, list[float]]] = {}
    decisions: dict[str, int] = {}
    cost: dict[str, float] = {}
    states: list[np.ndarray] = []
    total = len(scenarios) * episodes
    policy: Any = None
    for i, scenario in enumerate(scenarios):
        policy = build_policy(spec, env_config, scenario)
        counts = {c: np.zeros(len(labels[c]), dtype=np.int64) for c in components}
        costs = []
        for k in range(episodes):
            timeline: list[dict[str, Any]] = []
            result = run_episode(policy, scenario, episode_seed(seed, i, k), env_config,
                                 spec.label, i, k, timeline=timeline, observations=states)
            costs.append(result.cost)
            for rec in timeline[1:]:
                for c, v in zip(components, rec["action"], strict=False):
                    counts[c][v] += 1
            if progress is not None:
                progress(i * episodes + k + 1, total)
        n = int(next(iter(counts.values())).sum())
        decisions[scenario.name] = n
        shares[scenario.name] = {c: (counts[c] / max(n, 1)).tolist() for c in components}
        cost[scenario.name] = float(np.mean(costs))
    x = np.stack(states)
    base = _predict_all(policy, x)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E45]))
    sensitivity = {}
    for j, name in enumerate(names):
        shuffled = x.copy()
        shuffled[:, j] = rng.permutation(x[:, j])
        changed = (_predict_all(policy, shuffled) != base).any(axis=1)
        sensitivity[name] = float(changed.mean())
    return Explanation(spec.label, [s.name for s in scenarios], episodes, seed, shares,
                       decisions, sensitivity, cost)


def plot(ex: Explanation, env_config: EnvConfig) -> bytes:
    """One PNG: per action component, the share of each value per scenario
    (stacked bars), and the features the decisions are most sensitive to."""
    plt = pyplot()
    labels = value_labels(env_config)
    components = list(next(iter(ex.shares.values())))
    fig = plt.figure(figsize=(3.2 * len(components), 8.5))
    grid = fig.add_gridspec(2, len(components), height_ratios=[1.1, 1.0])
    ys = np.arange(len(ex.scenarios))
    for col, comp in enumerate(components):
        ax = fig.add_subplot(grid[0, col])
        left = np.zeros(len(ex.scenarios))
        cmap = plt.get_cmap("viridis", len(labels[comp]))
        for v, name in enumerate(labels[comp]):
            widths = np.array([ex.shares[s][comp][v] for s in ex.scenarios])
            ax.barh(ys, widths, left=left, color=cmap(v), label=name)
            left += widths
        ax.set_title(comp)
        ax.set_xlim(0, 1)
        ax.set_yticks(ys, ex.scenarios if col == 0 else [""] * len(ys), fontsize=7)
        ax.invert_yaxis()
        ax.legend(fontsize=6, loc="lower center", bbox_to_anchor=(0.5, -0.32), ncol=3,
                  frameon=False)
    ax = fig.add_subplot(grid[1, :])
    top = ex.top_features()
    ax.barh([n for n, _ in top], [v for _, v in top], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("share of decisions that change when the feature is shuffled")
    ax.set_xlim(0, 1)
    ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"{ex.policy}: actions per scenario ({ex.episodes} episodes each, seeds from "
                 f"{ex.seed}) and the features it follows")
    fig.tight_layout()
    return png(fig, dpi=110)


def report(ex: Explanation, env_config: EnvConfig) -> str:
    """``report.md``: the most chosen value of each component per scenario,
    and the feature sensitivities."""
    labels = value_labels(env_config)
    components = list(next(iter(ex.shares.values())))
    rows = []
    for s in ex.scenarios:
        cells = [s, f"{ex.cost[s]:.2f}"]
        for c in components:
            sh = ex.shares[s][c]
            v = int(np.argmax(sh))
            cells.append(f"{labels[c][v]} ({sh[v]:.0%})")
        rows.append(cells)
    lines = [f"# What {ex.policy} does", "",
             f"{ex.episodes} deterministic episodes per scenario, seeds from {ex.seed} "
             "(`agents/explain.py`). Most chosen value of each action component (its share "
             "of the decisions):", "",
             md_table(["scenario", "mean cost", *components], rows, numeric=False), "",
             "Features by sensitivity (share of decisions whose action changes when the "
             "feature is shuffled across the visited states):", "",
             md_table(["feature", "sensitivity"],
                      [[n, f"{v:.3f}"] for n, v in ex.top_features(len(ex.sensitivity))]),
             "", "![actions and features](explain.png)", ""]
    return "\n".join(lines)


def write(ex: Explanation, env_config: EnvConfig, out: Path, command: str) -> list[Path]:
    """Write :data:`OUTPUT_FILES` into ``out`` (atomically, each)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"explain.json": (json.dumps(dataclasses.asdict(ex), indent=1) + "\n").encode(),
             "explain.png": plot(ex, env_config),
             "report.md": report(ex, env_config).encode(),
             "command.txt": command.encode()}
    for name, data in files.items():
        write_text_atomic(out / name, data)
    return [out / n for n in files]
