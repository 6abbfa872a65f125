"""Heuristics and the oracle behind the SB3 predict() interface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.agents.distill import collect
from ptreclaim.agents.evaluate import episode_seed, run_episode
from ptreclaim.agents.export import read_thresholds
from ptreclaim.agents.heuristics import (
    HEURISTICS,
    ConstantParams,
    NoReclaim,
    OnZap,
    PeriodicParams,
    PeriodicScan,
    SoftHard,
    SoftHardParams,
    TreeRule,
    action_text,
    canonical,
    check_action,
    make_heuristic,
    make_rule,
)
from ptreclaim.agents.oracle import OracleBound
from ptreclaim.envs.pagetable_env import OBS_NAMES, EnvConfig
from ptreclaim.envs.sim.config import ConfigError
from ptreclaim.envs.sim.machine import MachineConfig, TenantConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, WorkloadSpec

IDX = {n: i for i, n in enumerate(OBS_NAMES)}
HOG = ScenarioConfig(
    name="hog",
    machine=MachineConfig(ram_mib=512, tenants=TenantConfig(base_fraction=0.8, volatility=0.0)),
    workloads=(WorkloadSpec("hog", {"variant": "zeropage", "tables_per_tick": 24}),
               WorkloadSpec("kdump", {"guest_mib": 1024})),
    ticks=400, jitter=0.0)
CFG = EnvConfig(max_steps=40)


def obs(**values: float) -> np.ndarray:
    o = np.zeros(len(OBS_NAMES), dtype=np.float32)
    o[IDX["free_vs_wmark"]] = 1.0
    for k, v in values.items():
        o[IDX[k]] = v
    return o


def test_every_heuristic_predicts_like_sb3() -> None:
    for name in HEURISTICS:
        p = make_heuristic(name)
        a, state = p.predict(obs())
        assert a.shape == (5,) and state is None
        batch, _ = p.predict(np.stack([obs(), obs(pt_frac=0.5)]))
        assert batch.shape == (2, 5)


def test_none_runs_on_a_pre_614_kernel_and_on_zap_does_not() -> None:
    assert NoReclaim.kernel_pt_reclaim is False
    assert OnZap.kernel_pt_reclaim is True
    assert not NoReclaim().act(obs(pt_frac=1.0)).any()
    assert not OnZap().act(obs(pt_frac=1.0)).any()


def test_soft_hard_levels_and_triggers() -> None:
    p = SoftHard()
    assert p.act(obs(pt_frac=0.01)).tolist() == [0, 0, 0, 0, 0]
    # Over the soft limit: cold (idle >= 2 rounds) empty tables at the soft budget.
    assert p.act(obs(pt_frac=0.05)).tolist() == [2, 0, 2, 0, 0]
    # Pressure alone (the price of holding over its trigger) starts the soft level.
    assert p.act(obs(hold_price=0.6)).tolist() == [2, 0, 2, 0, 0]
    assert p.act(obs(hold_price=0.4)).tolist() == [0, 0, 0, 0, 0]
    # A suspect (tables >> RSS) is targeted even below the soft limit...
    assert p.act(obs(pt_frac=0.02, top1_pt_ratio=0.9, top1_pt_frac=0.02)).tolist() == [
        2, 0, 2, 1, 0]
    # ... unless a suspect alone may not start a pass.
    quiet = SoftHard(SoftHardParams(suspect_soft=False))
    assert quiet.act(obs(pt_frac=0.02, top1_pt_ratio=0.9, top1_pt_frac=0.02)).tolist() == [
        0, 0, 0, 0, 0]
    # PSI deepens the soft class.
    assert p.act(obs(pt_frac=0.05, psi_some_avg10=0.5)).tolist() == [2, 1, 2, 0, 0]
    # Over the hard limit, or below the min watermark: everything, full budget, any age.
    assert p.act(obs(pt_frac=0.2)).tolist() == [4, 2, 0, 0, 0]
    assert p.act(obs(pt_frac=0.0, free_vs_wmark=-0.1)).tolist() == [4, 2, 0, 0, 0]


def test_refaults_of_a_freed_class_raise_the_idle_requirement() -> None:
    p = SoftHard()
    assert p.act(obs(pt_frac=0.05, empty_refault=0.5)).tolist() == [2, 0, 3, 0, 0]
    # Zero-page tables re-fault, but the soft level frees only empty ones...
    assert p.act(obs(pt_frac=0.05, zero_refault=0.5)).tolist() == [2, 0, 2, 0, 0]
    # ... until PSI deepens it to zero-page tables too.
    assert p.act(obs(pt_frac=0.05, zero_refault=0.5, psi_some_avg10=0.5)).tolist() == [
        2, 1, 3, 0, 0]
    action, why = p.decide(obs(pt_frac=0.2, file_refault=0.9))
    assert action.tolist() == [4, 2, 1, 0, 0] and "file tables re-fault" in why


def test_target_is_chosen_among_the_top_consumers() -> None:
    two = {"top1_pt_frac": 0.05, "top1_pt_ratio": 0.6, "top1_growth": 0.1,
           "top2_pt_frac": 0.03, "top2_pt_ratio": 0.95, "top2_growth": 0.0,
           "top3_pt_frac": 0.02, "top3_pt_ratio": 0.7, "top3_growth": 0.4}
    by = {t: SoftHard(SoftHardParams(target_by=t)).act(obs(pt_frac=0.05, **two))[3]
          for t in ("ratio", "size", "growth")}
    assert by == {"ratio": 2, "size": 1, "growth": 3}
    # Too small to be a suspect: global.
    assert SoftHard().act(obs(pt_frac=0.05, top1_pt_ratio=0.9, top1_pt_frac=0.005))[3] == 0


def test_hard_limit_caps_a_growing_table_only_consumer_that_re_faults() -> None:
    p = SoftHard(SoftHardParams(use_hard_limit=True))
    hog = {"top1_pt_frac": 0.05, "top1_pt_ratio": 0.98, "top1_growth": 0.5,
           "top1_refault": 0.5}
    action, why = p.decide(obs(pt_frac=0.05, **hog))
    assert action.tolist() == [2, 0, 2, 1, 1] and "cap top-1" in why
    # No cap once limited, nor for a hog that does not come back for its tables.
    assert p.act(obs(pt_frac=0.05, **{**hog, "top1_limited": 1.0}))[4] == 0
    assert p.act(obs(pt_frac=0.05, **{**hog, "top1_refault": 0.0}))[4] == 0
    # The cap needs no pass: quiet, with a suspect that may not start one.
    calm = SoftHard(SoftHardParams(use_hard_limit=True, suspect_soft=False))
    assert calm.act(obs(pt_frac=0.01, **hog)).tolist() == [0, 0, 0, 1, 1]
    # Off by default.
    assert SoftHard().act(obs(pt_frac=0.05, **hog))[4] == 0


def test_soft_hard_params_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"soft_pt_frac .* must not exceed"):
        SoftHardParams(soft_pt_frac=0.5, hard_pt_frac=0.1)
    with pytest.raises(ConfigError, match="hard_depth"):
        SoftHardParams(hard_depth=3)
    # The levels are monotone: the hard one is never milder than the soft one.
    with pytest.raises(ConfigError, match=r"hard_budget \(2\) must be at least soft_budget \(3"):
        SoftHardParams(soft_budget=3, hard_budget=2)
    with pytest.raises(ConfigError, match=r"hard_depth \(0\) must be at least soft_depth \(1"):
        SoftHardParams(soft_depth=1, hard_depth=0)
    with pytest.raises(ConfigError, match=r"hard_idle \(3\) must be at most soft_idle \(2"):
        SoftHardParams(hard_idle=3)
    with pytest.raises(ConfigError, match=r"target_by.*'ratio'"):
        SoftHard.from_mapping({"target_by": "biggest"})
    with pytest.raises(ConfigError, match="did you mean 'soft_pt_frac'"):
        SoftHard.from_mapping({"soft_pt_fraq": 0.1})
    with pytest.raises(ConfigError, match=r"unknown heuristic 'soft_hrad'.*soft_hard"):
        make_heuristic("soft_hrad")
    assert make_heuristic("soft_hard", {"soft_budget": 3}).params.soft_budget == 3  # type: ignore[attr-defined]


def test_periodic_scan_fires_on_its_period_and_pressure() -> None:
    p = PeriodicScan()
    since = lambda ticks: float(np.log1p(ticks) / 10.0)  # noqa: E731
    assert p.act(obs(since_pass=since(50))).tolist() == [0, 0, 0, 0, 0]
    assert p.act(obs(since_pass=since(100))).tolist() == [2, 1, 1, 0, 0]
    gated = PeriodicScan(PeriodicParams(min_price=0.5))
    assert gated.act(obs(since_pass=since(100), hold_price=0.2)).tolist() == [0, 0, 0, 0, 0]
    assert gated.act(obs(since_pass=since(100), hold_price=0.7)).tolist() == [2, 1, 1, 0, 0]
    suspect = obs(since_pass=since(100), top2_pt_ratio=0.9, top2_pt_frac=0.05)
    assert p.act(suspect).tolist() == [2, 1, 1, 2, 0]


def test_constant_action_and_its_text() -> None:
    c = make_rule("constant", {"budget": 3, "depth": 2, "idle": 1, "target": 2, "hard": 1})
    assert c.act(obs()).tolist() == [3, 2, 1, 2, 1]
    assert ConstantParams.of([3, 2, 1, 2, 1]).action == [3, 2, 1, 2, 1]
    assert action_text([3, 2, 1, 2, 1]) == ("scan 4096 tables, empty+zero+file, idle >= 1 "
                                            "round, from the top-2 page-table consumer; cap "
                                            "the top-2 consumer's page tables")
    assert action_text([0, 2, 3, 1, 0]) == "no pass"
    with pytest.raises(ConfigError, match="v0 action"):
        check_action([3, 2, 0], "t.yaml.rule.tree.action")
    with pytest.raises(ConfigError, match="target"):
        make_rule("constant", {"target": 4}, "c.yaml.rule")


#: A thresholds file with a tree rule (as export_thresholds.py writes one);
#: ``RULE`` is the rule's body below ``kind: tree``.
TREE_FILE = """\
schema_version: 2
name: t
rule:
  kind: tree
RULE"""
NODE = """\
    feature: hold_price
    above: 0.4
    then: {action: [3, 2, 1, 0, 0]}
    else: {action: [0, 0, 0, 0, 0]}"""
ROOT = Path(__file__).resolve().parents[1]


def _tree_file(path: Path, rule: str) -> Path:
    path.write_text(TREE_FILE.replace("RULE", "".join(f"  {line}\n"
                                                      for line in rule.splitlines())))
    return path


@pytest.mark.parametrize(("rule", "want"), [
    # A feature that is no string: it was hashed for the lookup (TypeError).
    ("tree:\n" + NODE.replace("hold_price", "[hold_price]"),
     r"t\.yaml\.rule\.tree\.feature: expected a feature name \(a string"),
    ("tree:\n" + NODE.replace("hold_price", "{a: 1}"), r"rule\.tree\.feature: .* got \{'a': 1\}"),
    ("tree:\n" + NODE.replace("hold_price", "7"), r"rule\.tree\.feature: .* got 7"),
    ("tree:\n" + NODE.replace("hold_price", "hold_prise"),
     r"rule\.tree\.feature: 'hold_prise' is not an observation feature \(did you mean"),
    # Keys that are no strings next to string keys: they were sorted (TypeError).
    ("tree:\n    1: 2\n" + NODE, r"rule\.tree: unknown key 1; a node holds feature, above"),
    ("tree:\n    ~: 2\n" + NODE, r"rule\.tree: unknown key None; a node holds"),
    ("tree:\n" + NODE.replace("[3, 2, 1, 0, 0]}", "[3, 2, 1, 0, 0], 1: 2}"),
     r"rule\.tree\.then: unknown key 1; a leaf holds only 'action'"),
    ("tree: {action: [0, 0, 0, 0, 0]}\n1: 2",
     r"rule: unknown key 1; a tree rule holds exactly one key, 'tree'"),
    ("tree:\n" + NODE.replace("0.4", ".nan"), r"rule\.tree\.above: expected a finite number"),
    ("tree:\n" + NODE.replace("0.4", "-.inf"), r"rule\.tree\.above: expected a finite number"),
    ("tree:\n" + NODE.replace("0.4", "'0.4'"), r"rule\.tree\.above: expected a finite number"),
    ("tree:\n" + NODE.replace("0.4", "true"), r"rule\.tree\.above: expected a finite number"),
    ("tree:\n" + NODE.replace("[0, 0, 0, 0, 0]", "[0, 0, 0.5, 0, 0]"),
     r"rule\.tree\.else\.action: .* is not \[budget"),
    ("tree:\n" + NODE.replace("then: {action: [3, 2, 1, 0, 0]}", "then: [3, 2, 1, 0, 0]"),
     r"rule\.tree\.then: expected a node"),
], ids=["feature_list", "feature_mapping", "feature_int", "feature_typo", "node_int_key",
        "node_null_key", "leaf_int_key", "rule_int_key", "above_nan", "above_inf",
        "above_string", "above_bool", "action_float", "then_list"])
def test_bad_tree_rule_file_is_one_clear_error(rule: str, want: str, tmp_path: Path) -> None:
    path = _tree_file(tmp_path / "t.yaml", rule)
    with pytest.raises(ConfigError, match=want) as err:
        read_thresholds(path)
    assert "\n" not in str(err.value)


def test_tree_rule_threshold_of_any_size_is_one_clear_error(tmp_path: Path) -> None:
    """The file readers refuse integers of 400 digits; a tree built in Python
    may hold one, and the finiteness check must not overflow converting it."""
    leaf = {"action": [0, 0, 0, 0, 0]}
    node = {"feature": "hold_price", "above": 10 ** 400, "then": leaf, "else": leaf}
    with pytest.raises(ConfigError, match=r"t\.json\.rule\.tree\.above: expected a finite "
                                          r"number, got <an integer of about 401 digits>"):
        make_rule("tree", {"tree": node}, "t.json.rule")
    with pytest.raises(ConfigError, match=r"rule\.tree\.else: expected a node"):
        make_rule("tree", {"tree": {**node, "above": 1, "else": None}}, "t.json.rule")
    # The good file reads back, and a valid tree still decides.
    good = read_thresholds(_tree_file(tmp_path / "good.yaml", "tree:\n" + NODE))
    rule = make_rule(good.kind, good.params)
    assert isinstance(rule, TreeRule)
    assert rule.act(obs(hold_price=0.5)).tolist() == [3, 2, 1, 0, 0]
    assert rule.act(obs(hold_price=0.1)).tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("rule", ["tree:\n" + NODE.replace("hold_price", "[hold_price]"),
                                  "tree:\n    1: 2\n" + NODE], ids=["feature_list", "int_key"])
def test_bad_tree_rule_file_exits_2_in_one_line(rule: str, tmp_path: Path) -> None:
    path = _tree_file(tmp_path / "bad.yaml", rule)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"),
                        str(ROOT / "configs" / "scenarios" / "mixed_cloud.yaml"),
                        "--policy", str(path), "--ticks", "5"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert p.stderr.startswith("simulate.py: error: bad.yaml.rule.tree")


def test_canonical_actions_zero_what_does_nothing() -> None:
    got = canonical(np.array([[0, 2, 3, 1, 0], [0, 2, 3, 1, 1], [3, 1, 2, 0, 1]]))
    assert got.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1], [3, 1, 2, 0, 0]]
    # Four components (an env without the hard-limit action): the flag is 0.
    assert canonical(np.array([[3, 1, 2, 2]])).tolist() == [[3, 1, 2, 2, 0]]


def test_oracle_needs_binding_and_beats_the_kernel_and_the_rules() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        OracleBound().predict(obs())
    seed = episode_seed(0, 0, 0)
    none = run_episode(NoReclaim(), HOG, seed, CFG, "none")
    oracle = run_episode(OracleBound(), HOG, seed, CFG, "oracle")
    soft = run_episode(SoftHard(), HOG, seed, CFG, "soft_hard")
    assert oracle.cost < soft.cost < none.cost
    assert oracle.cost_terms["alloc_failures"] == 0 < none.cost_terms["alloc_failures"]


def test_oracle_is_deterministic() -> None:
    seed = episode_seed(0, 0, 1)
    a = run_episode(OracleBound(), HOG, seed, CFG, "oracle")
    b = run_episode(OracleBound(), HOG, seed, CFG, "oracle")
    assert a == b


def test_global_reclaim_takes_from_processes_over_their_soft_limit_first() -> None:
    from ptreclaim.envs.sim.reclaim import DEPTHS
    from ptreclaim.envs.sim.simulator import Simulation

    scen = ScenarioConfig(
        name="two", machine=MachineConfig(ram_mib=2048),
        workloads=(WorkloadSpec("hog", {"variant": "zeropage", "tables_per_tick": 32}),
                   WorkloadSpec("kdump", {"guest_mib": 512, "dump_delay_ticks": 1})),
        ticks=200, jitter=0.0)
    sim = Simulation(scen, np.random.default_rng(0))
    sim.run(120)
    small = min(sim.alive, key=lambda p: p.reclaimable_tables)
    big = max(sim.alive, key=lambda p: p.reclaimable_tables)
    assert small is not big and small.reclaimable_tables > 0
    # Without limits the largest waster goes first; over its soft limit the other does.
    sim.set_soft_limit(small, 0)
    before = small.reclaimable_tables
    res = sim.reclaim(None, DEPTHS[2], small.mm.tables)
    assert res.targets[0] == small.pid
    assert small.reclaimable_tables < before


class _Counter:
    """A policy with memory: its budget index is the number of decisions so far
    in the episode (capped), so it acts right only if its state is carried."""

    def predict(self, obs: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[np.ndarray, Any]:
        n = 0 if state is None or bool(np.asarray(episode_start).ravel()[0]) else int(state)
        return np.array([min(n, 4), 0, 0, 0, 0]), n + 1


def test_a_recurrent_policy_gets_its_state_back_in_episodes_and_distillation() -> None:
    timeline: list[dict[str, Any]] = []
    run_episode(_Counter(), HOG, episode_seed(0, 0, 0), EnvConfig(max_steps=8), "counter",
                timeline=timeline)
    assert [r["action"][0] for r in timeline[1:]] == [0, 1, 2, 3, 4, 4, 4, 4]
    data, own, _ = collect(_Counter(), _Counter(), [HOG], EnvConfig(max_steps=6), 2, 0)
    assert data.actions[:, 0].tolist() == [0, 1, 2, 3, 4, 4] * 2
    assert own[:, 0].tolist() == [0, 1, 2, 3, 4, 4] * 2


def test_hold_prices_is_hold_price_elementwise() -> None:
    from ptreclaim.envs.features import hold_price, hold_prices

    rng = np.random.default_rng(0)
    for wmin, whigh in ((1000, 5000), (300, 300), (300, 299), (0, 1)):
        free = np.concatenate([rng.uniform(-10 * whigh - 10, 10 * whigh + 10, 500),
                               [wmin, whigh, wmin - 1, whigh + 1, 0.0, (wmin + whigh) / 2]])
        want = np.array([hold_price(f, wmin, whigh) for f in free])
        assert np.array_equal(hold_prices(free, wmin, whigh), want)
        assert hold_prices(free, wmin, whigh).view(np.int64).tolist() == want.view(
            np.int64).tolist()  # bit for bit, the sign of zero included


def test_the_oracle_chooses_the_reference_s_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle's vectorised choice of tables (_choose) gives the reference's tables in the
    reference's order and the same summed gain, bit for bit, at every decision of episodes
    that reach every path: failures imminent (every table unused within the step goes),
    tables held at a cost above a pass's share with and without a next use (a re-fault
    priced or not), and userfaultfd-registered tables (skipped)."""
    import math

    from ptreclaim.agents import oracle as oracle_mod
    from ptreclaim.configs import CONFIG_DIR
    from ptreclaim.envs.configio import load_scenario

    seen = {"calls": 0, "forced": 0, "chosen": 0, "refaults": 0, "uffd": 0}
    choose, reference, refault = (oracle_mod._choose, oracle_mod._choose_reference,
                                  oracle_mod._refault)

    def counted_refault(*args: Any) -> float:
        seen["refaults"] += 1
        return refault(*args)

    def both(p: Any, fut: Any, now: int, prices: Any, pressed: int | None, costs: Any,
             app_stall: float) -> tuple[list[int], float]:
        got = choose(p, fut, now, prices, pressed, costs, app_stall)
        want = reference(p, fut, now, prices, pressed, costs, app_stall)
        assert got[0] == want[0]
        assert got[1] == want[1] and np.float64(got[1]).tobytes() == np.float64(
            want[1]).tobytes()
        seen["calls"] += 1
        seen["forced"] += math.isinf(want[1])
        seen["chosen"] += len(want[0])
        seen["uffd"] += sum(p.mm.slot_is_uffd(s) for c in (0, 1, 2)
                            for s in p.mm.tables_in_class(c))
        return got

    monkeypatch.setattr(oracle_mod, "_choose", both)
    monkeypatch.setattr(oracle_mod, "_refault", counted_refault)
    config = EnvConfig(max_steps=50)
    for name, seeds in (("balloon_host_hog", (0, 1)), ("postcopy_uffd", (0,)),
                        ("shared_sparse_file", (0,)), ("redis_jemalloc", (2,)),
                        ("kdump_database", (0,))):
        scenario = load_scenario(CONFIG_DIR / "scenarios" / f"{name}.yaml")
        for seed in seeds:
            run_episode(OracleBound(), scenario, seed, config, "oracle")
    # Failures imminent (the oracle cannot keep up with this hog: pressure at every step).
    for tables, base in ((64, 0.9), (200, 0.9)):
        hog = ScenarioConfig(
            name="hog", machine=MachineConfig(ram_mib=512, tenants=TenantConfig(
                base_fraction=base, volatility=0.0)),
            workloads=(WorkloadSpec("hog", {"variant": "zeropage", "tables_per_tick": tables}),
                       WorkloadSpec("kdump", {"guest_mib": 1024})),
            ticks=400, jitter=0.0)
        run_episode(OracleBound(), hog, episode_seed(0, 0, 0), CFG, "oracle")
    assert seen["calls"] > 200 and seen["chosen"] > 1000, seen
    assert seen["forced"] > 0 and seen["refaults"] > 0 and seen["uffd"] > 0, seen


@pytest.mark.parametrize("name", ["balloon_host_hog", "postcopy_uffd", "ramp_batch_hog"])
def test_the_oracle_plays_the_reference_s_episodes(name: str) -> None:
    from ptreclaim.configs import CONFIG_DIR
    from ptreclaim.envs.configio import load_scenario

    scenario = load_scenario(CONFIG_DIR / "scenarios" / f"{name}.yaml")
    config = EnvConfig(max_steps=60)
    fast = run_episode(OracleBound(), scenario, 3, config, "oracle")
    assert fast == run_episode(OracleBound(reference=True), scenario, 3, config, "oracle")
