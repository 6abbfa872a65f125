"""Fixed reclaim policies behind SB3's ``predict`` interface.

Every policy maps an observation of :class:`~ptreclaim.envs.pagetable_env.
PageTableReclaimEnv` to an action ``[budget index, class depth, target]`` (plus
an optional hard-limit flag) and exposes ``predict(obs, state=None,
episode_start=None, deterministic=True) -> (action, state)`` like a
stable-baselines3 model, so one evaluator serves learned and fixed policies.
They read the simulator only through the observation.

``kernel_pt_reclaim`` says which kernel the policy stands for: ``none`` is the
kernel before 6.14 (no on-zap reclaim; evaluation runs it with the
simulator's ``pt_reclaim`` switched off), every other policy runs on 6.14+.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..envs.pagetable_env import DEFAULT_BUDGETS, OBS_NAMES
from ..envs.sim.config import ConfigError, build, check_range

_IDX = {name: i for i, name in enumerate(OBS_NAMES)}


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


def _action(budget_idx: int, depth: int, target: int, hard: int | None = None) -> np.ndarray:
    a = [budget_idx, depth, target] + ([] if hard is None else [hard])
    return np.asarray(a, dtype=np.int64)


class NoReclaim(Policy):
    """``none``: never reclaims, on a kernel before 6.14 (DONTNEED frees nothing)."""

    name = "none"
    kernel_pt_reclaim = False

    def act(self, obs: np.ndarray) -> np.ndarray:
        return _action(0, 0, 0)


class OnZap(Policy):
    """``on_zap``: the 6.14+ kernel as it is: only MADV_DONTNEED's own reclaim."""

    name = "on_zap"

    def act(self, obs: np.ndarray) -> np.ndarray:
        return _action(0, 0, 0)


@dataclass(frozen=True)
class SoftHardParams:
    """Thresholds of :class:`SoftHard` (fractions are of the normal zone).

    Defaults and why:

    * ``soft_pt_frac`` 0.04: page tables above 4 % of the unmovable zone are
      already several times a typical host's (a few MiB per GiB of RSS), so
      empty tables are worth a cheap scan.
    * ``hard_pt_frac`` 0.10: at 10 % page tables crowd out other tenants'
      unmovable allocations; reclaim every class at full budget.
    * ``proc_ratio`` 0.5: a process whose page tables exceed its resident
      memory (page tables / (RSS + page tables) > 0.5) maps almost nothing
      with its tables: the signature of a table hog or of a dumped balloon.
    * ``proc_pt_frac`` 0.01: ignore small processes (1 % of the zone).
    * ``psi_trigger`` 0.10: PSI some avg10 above 10 % means tasks already
      stall on memory; escalate one class deeper.
    * ``free_trigger`` 0.0: below the min watermark (``free_vs_wmark`` < 0)
      act as over the hard limit.
    * budgets are indices into the env's budgets (default 0, 64, 512, 4096,
      all): soft = 512 tables per decision, hard = all.
    """

    soft_pt_frac: float = 0.04
    hard_pt_frac: float = 0.10
    proc_ratio: float = 0.5
    proc_pt_frac: float = 0.01
    psi_trigger: float = 0.10
    free_trigger: float = 0.0
    soft_budget: int = 2
    hard_budget: int = 4
    soft_depth: int = 0
    hard_depth: int = 2
    use_hard_limit: bool = False

    def __post_init__(self) -> None:
        check_range("soft_pt_frac", self.soft_pt_frac, 0.0, 1.0)
        check_range("hard_pt_frac", self.hard_pt_frac, 0.0, 1.0)
        if self.soft_pt_frac > self.hard_pt_frac:
            raise ConfigError(f"soft_pt_frac ({self.soft_pt_frac}) must not exceed "
                              f"hard_pt_frac ({self.hard_pt_frac})")
        check_range("proc_ratio", self.proc_ratio, 0.0, 1.0)
        check_range("proc_pt_frac", self.proc_pt_frac, 0.0, 1.0)
        check_range("psi_trigger", self.psi_trigger, 0.0, 1.0)
        check_range("free_trigger", self.free_trigger, -1.0, 1.0)
        n = len(DEFAULT_BUDGETS) - 1
        check_range("soft_budget", self.soft_budget, 0, n)
        check_range("hard_budget", self.hard_budget, 0, n)
        check_range("soft_depth", self.soft_depth, 0, 2)
        check_range("hard_depth", self.hard_depth, 0, 2)


class SoftHard(Policy):
    """``soft_hard``: the seed's soft/hard limits on page-table memory.

    Over the hard limit (or below the min watermark): reclaim ``hard_depth``
    classes at ``hard_budget`` (globally, or from the suspect when one stands
    out), optionally capping the suspect with a hard limit.  Over the soft
    limit: reclaim ``soft_depth`` classes at ``soft_budget`` — from a suspicious
    process first when one exceeds the per-process limits, else globally.
    PSI above its trigger deepens the class by one.
    """

    name = "soft_hard"

    def __init__(self, params: SoftHardParams | None = None) -> None:
        self.params = params or SoftHardParams()

    @classmethod
    def from_mapping(cls, data: Any, where: str = "soft_hard") -> SoftHard:
        return cls(build(SoftHardParams, data, where))

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.decide(obs)[0]

    def decide(self, obs: np.ndarray) -> tuple[np.ndarray, str]:
        """The action and the reason for it (which threshold or signal fired),
        in words an operator reads (the live advisor prints it)."""
        p = self.params
        pt = float(obs[_IDX["pt_frac"]])
        ratio = float(obs[_IDX["top1_pt_ratio"]])
        top = float(obs[_IDX["top1_pt_frac"]])
        suspect = ratio > p.proc_ratio and top > p.proc_pt_frac
        psi = float(obs[_IDX["psi_some_avg10"]])
        bump = int(psi > p.psi_trigger)
        free = float(obs[_IDX["free_vs_wmark"]])
        hard = None if not p.use_hard_limit else 0
        who = (f"; top process over the per-process limit (tables/(RSS+tables) {ratio:.2f} > "
               f"{p.proc_ratio:g} and {top:.4f} > {p.proc_pt_frac:g} of the zone)"
               if suspect else "")
        if pt > p.hard_pt_frac or free < p.free_trigger:
            if p.use_hard_limit and suspect:
                hard = 1
            why = (f"page tables {pt:.4f} of the zone > hard limit {p.hard_pt_frac:g}"
                   if pt > p.hard_pt_frac else
                   f"free vs watermark {free:.3f} < trigger {p.free_trigger:g}")
            return _action(p.hard_budget, p.hard_depth, int(suspect), hard), why + who
        if pt > p.soft_pt_frac or suspect:
            depth = min(2, p.soft_depth + bump)
            why = (f"page tables {pt:.4f} of the zone > soft limit {p.soft_pt_frac:g}"
                   if pt > p.soft_pt_frac else "under the soft limit")
            if bump:
                why += f"; PSI some avg10 {psi:.3f} > {p.psi_trigger:g} deepens the class"
            return _action(p.soft_budget, depth, int(suspect), hard), why + who
        return (_action(0, 0, 0, hard),
                f"page tables {pt:.4f} of the zone <= soft limit {p.soft_pt_frac:g} and no "
                "process over the per-process limit")


@dataclass(frozen=True)
class PeriodicParams:
    """``periodic_scan``: every ``every_ticks`` ticks, scan ``budget`` (an index
    into the env's budgets) of class depth ``depth``, globally."""

    every_ticks: int = 100
    budget: int = 2
    depth: int = 1

    def __post_init__(self) -> None:
        check_range("every_ticks", self.every_ticks, 1, 10**7)
        check_range("budget", self.budget, 0, len(DEFAULT_BUDGETS) - 1)
        check_range("depth", self.depth, 0, 2)


class PeriodicScan(Policy):
    """``periodic_scan``: khugepaged-like, a fixed budget at a fixed period,
    regardless of pressure (the period is read back from ``since_pass``)."""

    name = "periodic_scan"

    def __init__(self, params: PeriodicParams | None = None) -> None:
        self.params = params or PeriodicParams()

    @classmethod
    def from_mapping(cls, data: Any, where: str = "periodic_scan") -> PeriodicScan:
        return cls(build(PeriodicParams, data, where))

    def act(self, obs: np.ndarray) -> np.ndarray:
        ticks = math.expm1(float(obs[_IDX["since_pass"]]) * 10.0)
        if ticks + 0.5 >= self.params.every_ticks:
            return _action(self.params.budget, self.params.depth, 0)
        return _action(0, 0, 0)


#: Readable names of the action components' values (the env's default budgets).
_DEPTH_TEXT = ("empty", "empty+zero", "empty+zero+file")
_TARGET_TEXT = ("globally", "from the top suspect")
_MAX_TREE_DEPTH = 12


def action_text(action: Any) -> str:
    """An action in words, e.g. ``scan 512 tables, empty+zero, globally``."""
    a = [int(x) for x in np.asarray(action).ravel()]
    if a[0] == 0:
        return "no pass"
    budget = DEFAULT_BUDGETS[a[0]] if a[0] < len(DEFAULT_BUDGETS) else a[0]
    n = "all" if budget >= (1 << 30) else str(budget)
    return f"scan {n} tables, {_DEPTH_TEXT[a[1]]}, {_TARGET_TEXT[a[2]]}"


class TreeRule(Policy):
    """``tree``: a depth-limited decision tree over named observation features
    (what distillation exports next to the soft/hard rule), e.g.

    .. code-block:: yaml

        tree:
          feature: pt_frac
          above: 0.0123
          then: {action: [3, 2, 0]}
          else: {action: [0, 0, 0]}

    A node compares ``obs[feature] > above``; a leaf holds the action
    ``[budget index, class depth, target]``.
    """

    name = "tree"

    def __init__(self, tree: Any, where: str = "tree") -> None:
        self.tree = self._check(tree, where, 0)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "tree") -> TreeRule:
        if not isinstance(data, dict) or set(data) != {"tree"}:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ConfigError(f"{where}: a tree rule holds exactly one key, 'tree' (a node "
                              f"{{feature, above, then, else}} or a leaf {{action}}); got {keys}")
        return cls(data["tree"], f"{where}.tree")

    @classmethod
    def _check(cls, node: Any, where: str, depth: int) -> dict[str, Any]:
        from ..envs.sim.config import did_you_mean

        if depth > _MAX_TREE_DEPTH:
            raise ConfigError(f"{where}: the tree is deeper than {_MAX_TREE_DEPTH} levels")
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: expected a node {{feature, above, then, else}} or a "
                              f"leaf {{action: [budget, depth, target]}}, got {node!r}")
        if "action" in node:
            if set(node) != {"action"}:
                raise ConfigError(f"{where}: a leaf holds only 'action', got {sorted(node)}")
            act = node["action"]
            highs = (len(DEFAULT_BUDGETS) - 1, 2, 1)
            if (not isinstance(act, list) or len(act) != 3
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in act)
                    or not all(0 <= v <= hi for v, hi in zip(act, highs, strict=True))):
                raise ConfigError(f"{where}.action: {act!r} is not [budget 0-{highs[0]}, "
                                  "depth 0-2, target 0-1]")
            return {"action": list(act)}
        want = {"feature", "above", "then", "else"}
        if set(node) != want:
            extra = sorted(set(node) - want)
            hint = did_you_mean(str(extra[0]), sorted(want)) if extra else ""
            raise ConfigError(f"{where}: a node holds feature, above, then, else; got "
                              f"{sorted(node)}{hint}")
        feat = node["feature"]
        if feat not in _IDX:
            raise ConfigError(f"{where}.feature: {feat!r} is not an observation feature"
                              f"{did_you_mean(str(feat), OBS_NAMES)}")
        above = node["above"]
        if isinstance(above, bool) or not isinstance(above, (int, float)) or not math.isfinite(
                above):
            raise ConfigError(f"{where}.above: expected a finite number, got {above!r}")
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
    cls = HEURISTICS[name]
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
RULES: dict[str, type[Policy]] = {"soft_hard": SoftHard, "tree": TreeRule}


def make_rule(kind: str, params: Any, where: str | None = None) -> Policy:
    """The policy of a thresholds file's rule (``kind`` and its parameters)."""
    if kind == "tree":
        return TreeRule.from_mapping(dict(params or {}), where or "tree")
    return make_heuristic(kind, params, where)
