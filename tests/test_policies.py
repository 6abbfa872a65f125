"""Heuristics and the oracle behind the SB3 predict() interface."""

from __future__ import annotations

import numpy as np
import pytest

from ptreclaim.agents.evaluate import episode_seed, run_episode
from ptreclaim.agents.heuristics import (
    HEURISTICS,
    NoReclaim,
    OnZap,
    PeriodicScan,
    SoftHard,
    SoftHardParams,
    make_heuristic,
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
        assert a.shape == (3,) and state is None
        batch, _ = p.predict(np.stack([obs(), obs(pt_frac=0.5)]))
        assert batch.shape == (2, 3)


def test_none_runs_on_a_pre_614_kernel_and_on_zap_does_not() -> None:
    assert NoReclaim.kernel_pt_reclaim is False
    assert OnZap.kernel_pt_reclaim is True
    assert not NoReclaim().act(obs(pt_frac=1.0)).any()
    assert not OnZap().act(obs(pt_frac=1.0)).any()


def test_soft_hard_thresholds() -> None:
    p = SoftHard()
    assert p.act(obs(pt_frac=0.01)).tolist() == [0, 0, 0]
    # Over the soft limit: empty tables at the soft budget, globally.
    assert p.act(obs(pt_frac=0.05)).tolist() == [2, 0, 0]
    # A suspect (tables >> RSS) is targeted even below the soft limit.
    assert p.act(obs(pt_frac=0.02, top1_pt_ratio=0.9, top1_pt_frac=0.02)).tolist() == [2, 0, 1]
    # PSI deepens the class.
    assert p.act(obs(pt_frac=0.05, psi_some_avg10=0.5)).tolist() == [2, 1, 0]
    # Over the hard limit, or below the min watermark: everything, full budget.
    assert p.act(obs(pt_frac=0.2)).tolist() == [4, 2, 0]
    assert p.act(obs(pt_frac=0.0, free_vs_wmark=-0.1)).tolist() == [4, 2, 0]
    hl = SoftHard(SoftHardParams(use_hard_limit=True))
    assert hl.act(obs(pt_frac=0.2, top1_pt_ratio=0.9, top1_pt_frac=0.05)).tolist() == [4, 2, 1, 1]


def test_soft_hard_params_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"soft_pt_frac .* must not exceed"):
        SoftHardParams(soft_pt_frac=0.5, hard_pt_frac=0.1)
    with pytest.raises(ConfigError, match="hard_depth"):
        SoftHardParams(hard_depth=3)
    with pytest.raises(ConfigError, match="did you mean 'soft_pt_frac'"):
        SoftHard.from_mapping({"soft_pt_fraq": 0.1})
    with pytest.raises(ConfigError, match=r"unknown heuristic 'soft_hrad'.*soft_hard"):
        make_heuristic("soft_hrad")
    assert make_heuristic("soft_hard", {"soft_budget": 3}).params.soft_budget == 3  # type: ignore[attr-defined]


def test_periodic_scan_fires_on_its_period() -> None:
    p = PeriodicScan()
    since = lambda ticks: float(np.log1p(ticks) / 10.0)  # noqa: E731
    assert p.act(obs(since_pass=since(50))).tolist() == [0, 0, 0]
    assert p.act(obs(since_pass=since(100))).tolist() == [2, 1, 0]


def test_oracle_needs_binding_and_beats_the_kernel() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        OracleBound().predict(obs())
    seed = episode_seed(0, 0, 0)
    none = run_episode(NoReclaim(), HOG, seed, CFG, "none")
    oracle = run_episode(OracleBound(), HOG, seed, CFG, "oracle")
    soft = run_episode(SoftHard(), HOG, seed, CFG, "soft_hard")
    assert oracle.cost < soft.cost < none.cost
    assert oracle.cost_terms["pt_waste"] < soft.cost_terms["pt_waste"]


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
