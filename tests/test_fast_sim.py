"""The compiled simulation is the reference simulation, tick for tick (issue 13).

Every shipped scenario, three seeds each, runs on both with the same seeded reclaim
passes between ticks: every tick record, every pass result and every event is identical,
and every process's whole address space is compared every 20 ticks.  The offline
oracle's look into the future (a deep copy that records touches) is identical too, and
the compiled core keeps no Python object per page table (the garbage collector never
walks tables).
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import numpy as np
import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.sim.fast.check import compare_simulations
from ptreclaim.envs.sim.fast.simulation import FastSimulation, supports
from ptreclaim.envs.sim.machine import MachineConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec

SCENARIOS = sorted((CONFIG_DIR / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_runs_compiled(path: Path) -> None:
    assert supports(load_scenario(path)) is None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenarios_identical(path: Path, seed: int) -> None:
    scenario = load_scenario(path)
    assert compare_simulations(scenario, seed, state_every=20) == ""


def test_a_difference_is_reported() -> None:
    """The harness is not vacuous: a different seed on one side shows at once."""
    scenario = load_scenario(CONFIG_DIR / "scenarios" / "balloon_host_hog.yaml")
    ref = Simulation(scenario, np.random.default_rng(0))
    fast = FastSimulation(scenario, np.random.default_rng(1))
    records = [(ref.step(), fast.step()) for _ in range(30)]
    assert any(a != b for a, b in records)


def test_oracle_future_is_identical() -> None:
    """A deep copy runs the original's future, and records the same touches as the
    reference's deep copy (what the offline oracle reads)."""
    scenario = load_scenario(CONFIG_DIR / "scenarios" / "heldout_real_traces.yaml")
    ref = Simulation(scenario, np.random.default_rng(5))
    fast = FastSimulation(scenario, np.random.default_rng(5))
    for _ in range(150):
        ref.step()
        fast.step()
    ref_future, fast_future = copy.deepcopy(ref), copy.deepcopy(fast)
    ref_future.record_touches()
    fast_future.record_touches()
    for _ in range(200):
        assert ref_future.step() == fast_future.step()
    assert fast_future.touch_trace == ref_future.touch_trace
    assert fast_future.touch_trace  # something was recorded
    for _ in range(200):  # the original is untouched by its copy
        assert ref.step() == fast.step()


def test_no_python_object_per_table() -> None:
    """Tens of thousands of tables add no object for the garbage collector to walk."""
    scenario = ScenarioConfig(
        name="hog", machine=MachineConfig(ram_mib=16384), ticks=400, jitter=0.0,
        workloads=(WorkloadSpec("hog", {"variant": "zeropage", "size_gib": 256,
                                        "tables_per_tick": 256}),))
    sim = FastSimulation(scenario, np.random.default_rng(0))
    sim.core.run(10)
    gc.collect()
    before = len(gc.get_objects())
    sim.core.run(300)
    gc.collect()
    tables = sim.alive[0].mm.tables
    assert tables > 50_000
    assert len(gc.get_objects()) - before < 100
