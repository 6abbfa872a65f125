"""The compiled ``allocator`` family (``envs/sim/fast/wl_alloc.cpp``) against the reference.

``envs/sim/workloads/allocator.py`` is the reference; the port must leave every tick
record, every reclaim pass, every event and every process's whole address space identical
(:func:`~ptreclaim.envs.sim.fast.check.compare_simulations`, which also runs seeded random
reclaim passes between ticks, so tables disappear under the allocators' feet).

The synthetic scenarios are chosen to drive the reference's branches: each variant on both
kernels (``pt_reclaim``) and both reclaim locks; jvm's two ``uncommit`` modes; ``cycles``
(the ``done`` phase); ``keep_fraction`` 0 and 1; the smallest ``tables_per_tick`` and
``calls_per_tick``; glibc arenas that outgrow one 64 MiB heap (new heaps, deleted heaps, a
``malloc_trim`` cursor that meets a deleted heap); a jvm heap that is not a whole number of
regions and one whose regions are larger than a tick's table budget; memory pressure with
OOM kills; start and stop ticks; hard limits that throttle or kill.  The shipped scenarios
all mix in families that have no port yet, so their allocator/hog/balloon/kdump workloads
run here on their own.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.sim.fast.check import _fast_proc_state, canonical_state, compare_simulations
from ptreclaim.envs.sim.fast.simulation import FastSimulation
from ptreclaim.envs.sim.machine import MachineConfig
from ptreclaim.envs.sim.reclaim import ReclaimConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec

#: Short phases: a cycle is 40 ticks, so a 160-tick run sees four of them.
_PHASES = {"fill_ticks": 8, "churn_ticks": 20, "free_ticks": 6, "idle_ticks": 6}
#: The smallest budgets the config accepts.
_TINY = {"tables_per_tick": 4, "calls_per_tick": 4}
#: Families with a compiled port (the shipped scenarios are cut down to these).
_PORTED = frozenset({"allocator", "hog", "balloon", "kdump"})


def _alloc(start_tick: int = 0, stop_tick: int = 0, **params: Any) -> WorkloadSpec:
    return WorkloadSpec("allocator", params={**_PHASES, **params}, start_tick=start_tick,
                        stop_tick=stop_tick)


def _scenario(*specs: WorkloadSpec, ticks: int = 160, pt_reclaim: bool = True,
              lock: str = "mmap_write", jitter: float = 0.2,
              machine: MachineConfig | None = None) -> ScenarioConfig:
    return ScenarioConfig(name="alloc_test", workloads=specs, ticks=ticks,
                          pt_reclaim=pt_reclaim, jitter=jitter,
                          reclaim=ReclaimConfig(lock=lock),  # type: ignore[arg-type]
                          machine=machine or MachineConfig())


#: A small box: 512 MiB of movable memory, so a large heap spills into the normal zone;
#: ten failing ticks in twenty trigger the OOM killer.
_SMALL_BOX = MachineConfig(ram_mib=1024, movable_fraction=0.5, oom_failures=10,
                           oom_window_ticks=20)
_BIG_BOX = MachineConfig(ram_mib=16384)

# name -> (scenario, seeds, extra compare_simulations arguments)
CASES: dict[str, tuple[ScenarioConfig, tuple[int, ...], dict[str, int]]] = {
    # -- jemalloc
    "jemalloc": (_scenario(_alloc(variant="jemalloc", heap_mib=48, decay_ticks=3,
                                  churn_fraction=0.2)), (0, 1, 2), {}),
    "jemalloc_old_kernel_pmd_lock": (
        _scenario(_alloc(variant="jemalloc", heap_mib=40, decay_ticks=0), pt_reclaim=False,
                  lock="pmd_lock"), (3, 4), {}),
    "jemalloc_keep_0_and_1": (
        _scenario(_alloc(variant="jemalloc", heap_mib=32, keep_fraction=0.0, decay_ticks=2),
                  _alloc(variant="jemalloc", heap_mib=32, keep_fraction=1.0, decay_ticks=2,
                         extent_kib=2048)), (5, 6), {}),
    "jemalloc_tiny": (_scenario(_alloc(variant="jemalloc", heap_mib=64, decay_ticks=4,
                                       churn_fraction=0.4, **_TINY)), (7, 8), {}),
    # Whole heap in one tick after purged, reclaimed slots: the table budget runs out
    # while refilling holes.
    "jemalloc_refill_reclaimed": (
        _scenario(_alloc(variant="jemalloc", heap_mib=32, keep_fraction=0.0, decay_ticks=0,
                         tables_per_tick=4, calls_per_tick=64, fill_ticks=1)),
        (8, 9), {"reclaim_every": 2}),
    # -- glibc
    "glibc": (_scenario(_alloc(variant="glibc", heap_mib=160, arenas=3, trim_every=5,
                               churn_fraction=0.3, extent_kib=512)), (0, 1, 2), {}),
    "glibc_old_kernel_pmd_lock": (
        _scenario(_alloc(variant="glibc", heap_mib=96, arenas=2, trim_every=3),
                  pt_reclaim=False, lock="pmd_lock"), (3, 4), {}),
    "glibc_brk_only_keep_0_and_1": (
        _scenario(_alloc(variant="glibc", heap_mib=24, arenas=1, trim_every=0,
                         keep_fraction=0.0),
                  _alloc(variant="glibc", heap_mib=24, arenas=2, keep_fraction=1.0,
                         trim_every=4)), (5, 6), {}),
    "glibc_tiny": (_scenario(_alloc(variant="glibc", heap_mib=80, arenas=4, trim_every=2,
                                    churn_fraction=0.4, **_TINY)), (7,), {}),
    "glibc_many_heaps": (
        _scenario(_alloc(variant="glibc", heap_mib=256, arenas=2, trim_every=3,
                         keep_fraction=0.0, churn_fraction=0.2)), (9, 10), {}),
    "glibc_tiny_tables": (
        _scenario(_alloc(variant="glibc", heap_mib=96, arenas=2, tables_per_tick=4,
                         calls_per_tick=64, keep_fraction=0.7)), (10,), {}),
    "glibc_tiny_calls": (
        _scenario(_alloc(variant="glibc", heap_mib=256, arenas=2, tables_per_tick=64,
                         calls_per_tick=4, trim_every=2, keep_fraction=0.0)), (11,), {}),
    # Seeds 2 and 4 trim a top that ends exactly on a slot boundary.
    "glibc_top_on_slot_boundary": (
        _scenario(_alloc(variant="glibc", heap_mib=64, arenas=2, trim_every=5,
                         keep_fraction=0.9, extent_kib=128, churn_fraction=0.2)), (2, 4), {}),
    # Seed 0: malloc_trim runs out of calls and finds a heap deleted before it resumes.
    "glibc_trim_cursor_meets_deleted_heap": (
        _scenario(_alloc(variant="glibc", heap_mib=256, arenas=3, tables_per_tick=64,
                         calls_per_tick=4, trim_every=1, keep_fraction=0.0,
                         churn_fraction=0.2)), (0,), {}),
    # -- v8
    "v8": (_scenario(_alloc(variant="v8", heap_mib=24, spread_gib=1, churn_fraction=0.2)),
           (0, 1, 2), {}),
    "v8_old_kernel_pmd_lock_keep_0_and_1": (
        _scenario(_alloc(variant="v8", heap_mib=16, page_kib=2048, spread_gib=4,
                         keep_fraction=0.0),
                  _alloc(variant="v8", heap_mib=16, page_kib=64, spread_gib=1,
                         keep_fraction=1.0),
                  pt_reclaim=False, lock="pmd_lock"), (3,), {}),
    "v8_tiny": (_scenario(_alloc(variant="v8", heap_mib=16, page_kib=128, churn_fraction=0.4,
                                 **_TINY)), (4, 5), {}),
    # -- jvm
    "jvm_remap": (_scenario(_alloc(variant="jvm", heap_mib=96, initial_mib=8,
                                   churn_fraction=0.3)), (0, 1, 2), {}),
    "jvm_dontneed": (_scenario(_alloc(variant="jvm", uncommit="dontneed", heap_mib=96,
                                      initial_mib=0, max_free_ratio=0.0,
                                      churn_fraction=0.3)), (0, 1, 2), {}),
    "jvm_old_kernel_pmd_lock_keep_0_and_1": (
        _scenario(_alloc(variant="jvm", uncommit="dontneed", heap_mib=64, keep_fraction=0.0,
                         initial_mib=200),
                  _alloc(variant="jvm", heap_mib=64, keep_fraction=1.0),
                  pt_reclaim=False, lock="pmd_lock"), (3,), {}),
    "jvm_tiny": (
        _scenario(_alloc(variant="jvm", heap_mib=128, max_free_ratio=0.0, churn_fraction=0.4,
                         **_TINY),
                  _alloc(variant="jvm", uncommit="dontneed", heap_mib=128, max_free_ratio=0.0,
                         churn_fraction=0.4, **_TINY)), (4,), {}),
    "jvm_tiny_calls": (
        _scenario(_alloc(variant="jvm", heap_mib=96, initial_mib=0, max_free_ratio=0.0,
                         churn_fraction=0.2, tables_per_tick=64, calls_per_tick=4),
                  _alloc(variant="jvm", uncommit="dontneed", heap_mib=96, initial_mib=0,
                         max_free_ratio=0.0, churn_fraction=0.2, tables_per_tick=64,
                         calls_per_tick=4)), (14,), {}),
    # 8 MiB regions (a 16 GiB heap) and 32 MiB regions (64 GiB): the table budget takes
    # part of a region run, or none of it.
    "jvm_large_regions": (
        _scenario(_alloc(variant="jvm", heap_mib=16384, initial_mib=64, **_TINY),
                  _alloc(variant="jvm", heap_mib=65536, **_TINY), ticks=40, jitter=0.0),
        (5,), {}),
    # 4097 MiB is not a whole number of 2 MiB regions: the heap never reaches heap_mib, so
    # the allocator asks for regions when none is free.
    "jvm_heap_not_whole_regions": (
        _scenario(_alloc(variant="jvm", heap_mib=4097, fill_ticks=5, tables_per_tick=1024,
                         churn_fraction=0.0),
                  _alloc(variant="jemalloc", heap_mib=16, churn_fraction=0.0),
                  ticks=30, jitter=0.0, machine=_BIG_BOX), (12,), {"state_every": 5}),
    # -- all variants
    "cycles_start_stop": (
        _scenario(_alloc(variant="jemalloc", heap_mib=16, cycles=1),
                  _alloc(variant="glibc", heap_mib=16, cycles=2, start_tick=5, stop_tick=90),
                  _alloc(variant="v8", heap_mib=16, cycles=1, spread_gib=1, start_tick=3),
                  _alloc(variant="jvm", heap_mib=16, cycles=1, stop_tick=50), ticks=120),
        (6, 7), {}),
    "pressure_oom_kills": (
        _scenario(_alloc(variant="jemalloc", heap_mib=700, churn_fraction=0.05),
                  _alloc(variant="glibc", heap_mib=64), _alloc(variant="v8", heap_mib=32),
                  _alloc(variant="jvm", heap_mib=64),
                  WorkloadSpec("hog", params={"variant": "zeropage", "size_gib": 64}),
                  ticks=80, machine=_SMALL_BOX), (7, 8), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_allocator_matches_reference(name: str) -> None:
    scenario, seeds, kwargs = CASES[name]
    for seed in seeds:
        assert compare_simulations(scenario, seed, **kwargs) == "", f"seed {seed}"


def test_pressure_case_kills() -> None:
    """The pressure case really OOM-kills allocators (so a dead allocator's skipped steps
    are compared too)."""
    scenario, seeds, _ = CASES["pressure_oom_kills"]
    for seed in seeds:
        sim = FastSimulation(scenario, np.random.default_rng(seed))
        sim.run()
        assert any("OOM killer" in text and "allocator" in text for _, text in sim.events)


def _compare_with_hard_limits(scenario: ScenarioConfig, seed: int, at: int,
                              share: float) -> tuple[str, list[tuple[int, str]]]:
    """Both models side by side; at tick ``at`` every process gets a page-table hard limit
    of ``share`` of its page tables then.  ("" or the first difference, the events.)"""
    ref = Simulation(scenario, np.random.default_rng(seed))
    fast = FastSimulation(scenario, np.random.default_rng(seed))
    for t in range(scenario.ticks):
        if t == at:
            for p, q in zip(ref.procs, fast.procs, strict=True):
                limit = int(p.pt_bytes * share)
                ref.set_hard_limit(p, limit)
                fast.set_hard_limit(q, limit)
        a, b = ref.step(), fast.step()
        if a != b:
            return f"tick {t}: record {b} != reference {a}", []
        for i, p in enumerate(ref.procs):
            if canonical_state(p.mm) != _fast_proc_state(fast, i):
                return f"tick {t}: process {p.name} differs", []
    if ref.events != fast.events:
        return "events differ", []
    return "", fast.events


@pytest.mark.parametrize("action", ["throttle", "kill"])
def test_allocator_hard_limits(action: str) -> None:
    """A throttled allocator skips ticks (its phases run on); one over its limit with
    ``kill`` dies.  On the old kernel jemalloc keeps its tables after a flush of
    everything, so it stays over the limit and, throttled from tick 33 on, runs one tick in
    ten: it misses the one-tick fills at ticks 40, 80 and 120 and churns a heap with
    nothing live."""
    machine = MachineConfig(hard_limit_action=action)  # type: ignore[arg-type]
    scenario = _scenario(
        _alloc(variant="jemalloc", heap_mib=48, fill_ticks=1, churn_fraction=0.1,
               keep_fraction=0.0),
        _alloc(variant="glibc", heap_mib=48, arenas=2, fill_ticks=1, trim_every=3,
               keep_fraction=0.0),
        _alloc(variant="v8", heap_mib=16, spread_gib=1),
        _alloc(variant="jvm", heap_mib=48, uncommit="dontneed"),
        ticks=140, pt_reclaim=False, machine=machine)
    for seed in (0, 1):
        problem, events = _compare_with_hard_limits(scenario, seed, at=33, share=0.5)
        assert problem == "", f"seed {seed}: {problem}"
        word = "throttled" if action == "throttle" else "exits: over its page-table hard limit"
        assert any(word in text for _, text in events)


def _random_scenario(r: random.Random) -> ScenarioConfig:
    """One to three allocators with parameters drawn across their ranges (plus, sometimes,
    a hog and a small box): combinations the hand-made cases above do not make."""
    specs = []
    for _ in range(r.randint(1, 3)):
        start = r.choice([0, 0, 3])
        specs.append(_alloc(
            start_tick=start, stop_tick=r.choice([0, 0, start + 50]),
            variant=r.choice(["jemalloc", "glibc", "v8", "jvm"]),
            heap_mib=r.choice([10, 24, 96, 200]), fill_ticks=r.randint(1, 12),
            churn_ticks=r.randint(0, 30), free_ticks=r.randint(1, 8), idle_ticks=r.randint(0, 8),
            cycles=r.choice([0, 0, 1, 2]), churn_fraction=r.choice([0.0, 0.01, 0.1, 0.4]),
            keep_fraction=r.choice([0.0, 0.02, 0.3, 0.9, 1.0]),
            extent_kib=r.choice([4, 96, 128, 2048]), tables_per_tick=r.choice([4, 5, 16, 64, 300]),
            calls_per_tick=r.choice([4, 5, 8, 32, 200]), threads=r.choice([1, 4, 16]),
            decay_ticks=r.choice([0, 1, 3, 10]), arenas=r.choice([1, 2, 3, 8]),
            trim_every=r.choice([0, 1, 2, 7]), page_kib=r.choice([4, 64, 256, 2048]),
            spread_gib=r.choice([1, 2, 64, 65536]), uncommit=r.choice(["remap", "dontneed"]),
            initial_mib=r.choice([0, 8, 64, 1000]), max_free_ratio=r.choice([0.0, 0.3, 0.7, 0.95])))
    if r.random() < 0.3:
        specs.append(WorkloadSpec("hog", params={"variant": r.choice(["write", "retouch"]),
                                                 "size_gib": 32}))
    return _scenario(*specs, ticks=80, pt_reclaim=r.random() < 0.5,
                     lock=r.choice(["mmap_write", "pmd_lock"]), jitter=r.choice([0.0, 0.2]),
                     machine=r.choice([MachineConfig(), _SMALL_BOX]))


def test_random_allocator_configs() -> None:
    """Thirty-two seeded random configurations (jitter cannot take these out of range)."""
    r = random.Random(13)
    for k in range(32):
        scenario = _random_scenario(r)
        seed = r.randint(0, 10**6)
        problem = compare_simulations(scenario, seed, reclaim_every=r.choice([1, 3, 7]))
        assert problem == "", f"configuration {k} ({scenario.workloads}), seed {seed}: {problem}"


_SHIPPED = {
    # stem: ticks compared (a prefix where the full run takes too long for CI)
    "redis_jemalloc": 360,
    "mixed_cloud": 300,
    "heldout_migration_pmd_hog": 300,
    "heldout_old_kernel_retouch": 300,
    "kdump_database": 200,
    "heldout_kdump_virtio_file": 200,
    "shared_sparse_file": 0,
}


@pytest.mark.parametrize("stem", sorted(_SHIPPED))
def test_shipped_scenarios_ported_part(stem: str) -> None:
    """The shipped scenarios with their allocators, cut down to the ported families."""
    scenario = load_scenario(CONFIG_DIR / "scenarios" / f"{stem}.yaml")
    kept = tuple(w for w in scenario.workloads if w.family in _PORTED)
    assert any(w.family == "allocator" for w in kept)
    scenario = dataclasses.replace(scenario, workloads=kept)
    ticks = _SHIPPED[stem] or None
    assert compare_simulations(scenario, 0, ticks, state_every=3) == ""
