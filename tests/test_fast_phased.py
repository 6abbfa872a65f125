"""The compiled port of the phased family (``envs/sim/fast/wl_phased.cpp``) and of the
tenants' daily cycle and ramped bursts (``Machine::step_tenants``) against the Python
reference: every tick record, every event and every process's whole address space must
be identical.

The synthetic scenarios take every branch of ``workloads/phased.py``: both backings, the
load, cold and hot phases, cold phases with and without spread and with and without a
background probe (wrapping at the end of the set), hot windows that wrap inside
themselves and at the end of the set, a rate above the window's size, jittered configs,
several instances, a process the OOM killer takes (its workload stops stepping), both
kernels and both reclaim locks.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.sim.fast import check
from ptreclaim.envs.sim.fast import simulation as fast_simulation
from ptreclaim.envs.sim.machine import MachineConfig, TenantConfig
from ptreclaim.envs.sim.reclaim import ReclaimConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec


def compare(scenario: ScenarioConfig, seed: int) -> str:
    """Both backends side by side, with seeded reclaim passes: "" or the first difference."""
    return check.compare_simulations(scenario, seed, state_every=1)


#: A roomy machine whose tenants follow a fast daily cycle and have ramped bursts.
DIURNAL = MachineConfig(ram_mib=4096, movable_fraction=0.8, cpus=8, tenants=TenantConfig(
    base_fraction=0.5, burst_prob=0.02, burst_fraction=0.2, burst_ticks=30,
    burst_ramp_ticks=12, diurnal_amplitude=0.2, diurnal_period_ticks=70, diurnal_phase=0.6))
#: Tenants take almost all of the normal zone: failures every tick, frequent OOM kills.
TIGHT = MachineConfig(ram_mib=1024, movable_fraction=0.9, cpus=4, oom_failures=4,
                      oom_window_ticks=10, tenants=TenantConfig(
                          base_fraction=0.95, volatility=0.001, diurnal_amplitude=0.04,
                          diurnal_period_ticks=40, burst_ramp_ticks=5))

#: 96 slots of a 2 GiB file, cold ~25 ticks (+-40 %), hot 8 ticks over a 35-slot window
#: at 10 slots a tick (the sweep wraps inside the window), a 7-slot probe.
FILE = {"backing": "file", "region_gib": 2, "tables": 96, "pages_per_slot": 2,
        "load_tables_per_tick": 40, "cold_ticks": 25, "cold_spread": 0.4, "hot_ticks": 8,
        "hot_fraction": 0.37, "hot_tables_per_tick": 10, "cold_tables_per_tick": 7}
#: Zero-page tables, cold phases of exactly 15 ticks, no probe, a window of the whole
#: set read at once each hot tick (the rate exceeds the window).
ZERO = {"backing": "zero", "region_gib": 1, "tables": 200, "pages_per_slot": 8,
        "load_tables_per_tick": 64, "cold_ticks": 15, "cold_spread": 0.0, "hot_ticks": 5,
        "hot_fraction": 1.0, "hot_tables_per_tick": 500}
#: Tables spaced one slot apart (a dense set), a probe longer than the set.
DENSE = {"backing": "file", "region_gib": 1, "tables": 512, "pages_per_slot": 1,
         "load_tables_per_tick": 100, "cold_ticks": 10, "cold_spread": 0.9, "hot_ticks": 3,
         "hot_fraction": 0.01, "hot_tables_per_tick": 2, "cold_tables_per_tick": 600}


def _scenario(name: str, *specs: WorkloadSpec, machine: MachineConfig = DIURNAL,
              ticks: int = 160, pt_reclaim: bool = True, lock: Any = "mmap_write",
              jitter: float = 0.2) -> ScenarioConfig:
    return ScenarioConfig(name=name, machine=machine, workloads=specs, ticks=ticks,
                          pt_reclaim=pt_reclaim, jitter=jitter, reclaim=ReclaimConfig(lock=lock))


SCENARIOS: dict[str, tuple[WorkloadSpec, ...]] = {
    "file": (WorkloadSpec("phased", FILE, count=2),),
    "zero": (WorkloadSpec("phased", ZERO, jitter=0.0),),
    "dense": (WorkloadSpec("phased", DENSE, start_tick=3, stop_tick=120, jitter=0.0),),
    "mixed": (WorkloadSpec("phased", FILE),
              WorkloadSpec("phased", ZERO, start_tick=10),
              WorkloadSpec("hog", {"variant": "zeropage", "size_gib": 8,
                                   "tables_per_tick": 16}, start_tick=20),
              WorkloadSpec("shared_file", {"file_gib": 1, "readers": 2, "region_mib": 8},
                           start_tick=5)),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("pt_reclaim,lock", [(True, "mmap_write"), (False, "pmd_lock")])
def test_phased_identical(name: str, pt_reclaim: bool, lock: str) -> None:
    scenario = _scenario(name, *SCENARIOS[name], pt_reclaim=pt_reclaim, lock=lock)
    for seed in (0, 1):
        assert compare(scenario, seed) == ""


def test_oom_kills_and_tight_tenants() -> None:
    """The OOM killer takes phased jobs (their workloads stop stepping) under tenants that
    cycle and ramp: both backends kill the same processes at the same ticks."""
    scenario = _scenario("oom", WorkloadSpec("phased", FILE, count=3),
                         WorkloadSpec("phased", ZERO, start_tick=4), machine=TIGHT, ticks=80)
    ref = Simulation(scenario, np.random.default_rng(3))
    ref.run()
    assert sum(r.oom_kill is not None for r in ref.history) >= 2
    for seed in (3, 4):
        assert compare(scenario, seed) == ""


def test_the_comparison_sees_the_tenant_knobs() -> None:
    """Not vacuous: the same scenario with another phase of the daily cycle on one side
    differs at the first tick."""
    scenario = _scenario("a", WorkloadSpec("phased", FILE))
    other = _scenario("a", WorkloadSpec("phased", FILE), machine=MachineConfig(
        ram_mib=4096, movable_fraction=0.8, cpus=8,
        tenants=TenantConfig(**{**DIURNAL.tenants.__dict__, "diurnal_phase": 0.1})))
    ref = Simulation(scenario, np.random.default_rng(0))
    fast = fast_simulation.FastSimulation(other, np.random.default_rng(0))
    assert ref.step().tenant_pages != fast.step().tenant_pages


def test_oracle_future_is_identical() -> None:
    """A deep copy taken mid-cycle (the offline oracle's look ahead) carries the daily
    cycle's clock, the ramp of a running burst and the job's phase: its future is the
    reference copy's, and the original's own future is untouched."""
    scenario = _scenario("future", *SCENARIOS["mixed"], ticks=200)
    ref = Simulation(scenario, np.random.default_rng(7))
    fast = fast_simulation.FastSimulation(scenario, np.random.default_rng(7))
    for _ in range(90):
        assert ref.step() == fast.step()
    ref_future, fast_future = copy.deepcopy(ref), copy.deepcopy(fast)
    for _ in range(60):
        assert ref_future.step() == fast_future.step()
    for _ in range(60):
        assert ref.step() == fast.step()
