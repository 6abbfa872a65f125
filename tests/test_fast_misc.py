"""The compiled ports of the uffd, shared_file and virtio_mem workload families
(``envs/sim/fast/wl_misc.cpp``) against the Python reference: every tick record, every
reclaim pass, every event and every process's whole address space must be identical.

The synthetic scenarios are small, so that each runs in a fraction of a second, and are
chosen to take every branch of the three reference modules: every phase and variant, the
edge cases of the configs (a guest size that ends inside a 2 MiB slot, zero shares of 0
and 1, no precopy, no dirty slots, one reader that restarts alone, one-page stride
windows, equal min and max plug sizes, block sizes above the plug rate), both kernels,
both reclaim locks, hard limits that throttle and that kill, and OOM kills.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from ptreclaim.agents.loading import build_policy, parse_policy
from ptreclaim.agents.rollout import episode_seed, run_episode
from ptreclaim.envs.configio import load_scenario, load_suite
from ptreclaim.envs.pagetable_env import EnvConfig
from ptreclaim.envs.sim.fast.check import _fast_proc_state, canonical_state, compare_simulations
from ptreclaim.envs.sim.fast.simulation import FastSimulation
from ptreclaim.envs.sim.machine import MachineConfig, TenantConfig
from ptreclaim.envs.sim.reclaim import DEPTHS, ReclaimConfig
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec

ROOT = Path(__file__).resolve().parents[1]

#: A roomy machine: no allocation failures, the workloads run undisturbed.
ROOMY = MachineConfig(ram_mib=4096, movable_fraction=0.8, cpus=8)
#: A machine whose other tenants leave almost nothing of the normal zone: allocation
#: failures every tick, an OOM kill every few ticks.
TIGHT = MachineConfig(ram_mib=1024, movable_fraction=0.9, cpus=4, oom_failures=4,
                      oom_window_ticks=10,
                      tenants=TenantConfig(base_fraction=0.985, volatility=0.001))


Lock = Literal["mmap_write", "pmd_lock"]


def _scenario(name: str, *specs: WorkloadSpec, ticks: int = 80, pt_reclaim: bool = True,
              lock: Lock = "mmap_write", machine: MachineConfig = ROOMY,
              jitter: float = 0.2) -> ScenarioConfig:
    return ScenarioConfig(name=name, machine=machine, workloads=specs, ticks=ticks,
                          pt_reclaim=pt_reclaim, jitter=jitter,
                          reclaim=ReclaimConfig(lock=lock))


# -- the synthetic workloads ------------------------------------------------------------

#: uffd through all four phases in ~25 ticks; 129 MiB ends half-way into slot 64.
UFFD = {"guest_mib": 129, "precopy_fraction": 0.5, "dirty_fraction": 0.4, "dirty_kib": 512,
        "zero_fraction": 0.4, "zero_run_mib": 4, "stream_mib_per_tick": 8,
        "faults_per_tick": 24, "discard_slots_per_tick": 4}
#: Everything precopied, nearly all of it dirtied with 4 KiB runs: discards and demand
#: faults land past the end of the half slot 64 (the `a < BASE + size` checks).
UFFD_EDGE = {**UFFD, "precopy_fraction": 1.0, "dirty_fraction": 0.95, "dirty_kib": 4,
             "faults_per_tick": 64}
#: No precopy (nothing dirty: registered at once), all-zero guest, no demand faults.
UFFD_NO_PRECOPY = {**UFFD, "precopy_fraction": 0.0, "zero_fraction": 1.0,
                   "faults_per_tick": 0}
#: An all-data guest with nothing re-dirtied.
UFFD_ALL_DATA = {**UFFD, "zero_fraction": 0.0, "dirty_fraction": 0.0}

SHARED = {"file_gib": 1, "readers": 3, "regions_per_tick": 2, "region_mib": 4,
          "pages_per_slot": 4, "write_fraction": 0.5, "punch_prob": 0.3,
          "restart_prob": 0.05}
#: A lone reader: each restart maps the file afresh (no live parent to fork); every tick
#: punches; one page per slot (a one-page stride window: no draw for the offset).
SHARED_LONE = {**SHARED, "readers": 1, "restart_prob": 0.2, "punch_prob": 1.0,
               "pages_per_slot": 512}
SHARED_QUIET = {**SHARED, "punch_prob": 0.0, "restart_prob": 0.0, "write_fraction": 0.0}

VIRTIO = {"region_mib": 256, "block_mib": 2, "boot_mib": 64, "backing": "anon",
          "initial_plugged_mib": 128, "min_plugged_mib": 16, "max_plugged_mib": 256,
          "resize_period_ticks": 8, "rate_mib_per_tick": 32, "touch_mib_per_tick": 8,
          "unplug_busy_prob": 0.3, "boot_fill_mib_per_tick": 16}
#: No boot RAM (runs at once); 8 MiB blocks plugged one a tick (rate 4 MiB < a block).
VIRTIO_BIG_BLOCKS = {**VIRTIO, "backing": "shmem", "boot_mib": 0, "block_mib": 8,
                     "rate_mib_per_tick": 4}
#: A file-backed region; the host always asks for the same size (no draw).
VIRTIO_FILE = {**VIRTIO, "backing": "file", "min_plugged_mib": 64, "max_plugged_mib": 64}


def _virtio(backing: str, **extra: Any) -> dict[str, Any]:
    return {**VIRTIO, "backing": backing, **extra}


def _spec(family: str, params: dict[str, Any], **kw: Any) -> WorkloadSpec:
    return WorkloadSpec(family, params, **kw)


def _all_three(**kw: Any) -> tuple[WorkloadSpec, ...]:
    return (_spec("uffd", UFFD, count=2),
            _spec("shared_file", SHARED, start_tick=5),
            _spec("virtio_mem", _virtio("file", punch_then_dontneed=True), start_tick=3),
            _spec("virtio_mem", _virtio("shmem"), **kw))


SCENARIOS: dict[str, tuple[WorkloadSpec, ...]] = {
    "uffd": (_spec("uffd", UFFD, count=2), _spec("uffd", UFFD_EDGE, jitter=0.0)),
    "uffd_corners": (_spec("uffd", UFFD_NO_PRECOPY, jitter=0.0),
                     _spec("uffd", UFFD_ALL_DATA, jitter=0.0, start_tick=4),
                     _spec("uffd", UFFD, stop_tick=12)),
    "shared_file": (_spec("shared_file", SHARED),
                    _spec("shared_file", SHARED_LONE, start_tick=2)),
    "shared_file_quiet": (_spec("shared_file", SHARED_QUIET, stop_tick=40),),
    "virtio_mem": (_spec("virtio_mem", _virtio("anon")),
                   _spec("virtio_mem", _virtio("shmem"), start_tick=2),
                   _spec("virtio_mem", _virtio("file"), start_tick=4)),
    "virtio_mem_corners": (_spec("virtio_mem", VIRTIO_BIG_BLOCKS),
                           _spec("virtio_mem", VIRTIO_FILE),
                           _spec("virtio_mem", _virtio("file", punch_then_dontneed=True),
                                 stop_tick=50)),
    "all": _all_three(),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("pt_reclaim,lock", [(True, "mmap_write"), (False, "pmd_lock")])
def test_family_alone_and_together(name: str, pt_reclaim: bool, lock: Lock) -> None:
    scenario = _scenario(name, *SCENARIOS[name], pt_reclaim=pt_reclaim, lock=lock)
    for seed in (0, 1):
        assert compare_simulations(scenario, seed, reclaim_every=3) == ""


@pytest.mark.parametrize("pt_reclaim,lock", [(False, "mmap_write"), (True, "pmd_lock")])
def test_oom_kills(pt_reclaim: bool, lock: Lock) -> None:
    scenario = _scenario("oom", *_all_three(), pt_reclaim=pt_reclaim, lock=lock,
                         machine=TIGHT, ticks=60)
    ref = Simulation(scenario, np.random.default_rng(3))
    ref.run()
    # The scenario does what it is for: the OOM killer takes several processes.
    assert sum(r.oom_kill is not None for r in ref.history) >= 3
    for seed in (3, 4):
        assert compare_simulations(scenario, seed, reclaim_every=5) == ""


# -- hard limits ------------------------------------------------------------------------

def _compare_with_limits(scenario: ScenarioConfig, seed: int, limit_tick: int,
                         headroom: int) -> tuple[str, Simulation]:
    """compare_simulations' comparison, plus: from ``limit_tick`` on, every live process
    without a page-table hard limit gets one of its current page-table bytes plus
    ``headroom`` (on both simulations; restarted readers get theirs as they appear).
    Returns "" or the first difference, and the reference."""
    ref = Simulation(scenario, np.random.default_rng(seed))
    fast = FastSimulation(scenario, np.random.default_rng(seed))
    actions = np.random.default_rng(seed + 99)
    for t in range(scenario.ticks):
        if t >= limit_tick:
            for p, q in zip(ref.procs, fast.procs, strict=True):
                if p.alive and p.pt_hard_limit_bytes is None:
                    ref.set_hard_limit(p, p.pt_bytes + headroom)
                    fast.set_hard_limit(q, p.pt_bytes + headroom)
        if t % 4 == 0:
            depth = int(actions.integers(3))
            budget = int(actions.choice([64, 512, 4096]))
            a = ref.reclaim(None, DEPTHS[depth], budget)
            b = fast.reclaim(None, DEPTHS[depth], budget)
            if a != b:
                return f"tick {t}: reclaim pass {b} != reference {a}", ref
        ra, rb = ref.step(), fast.step()
        if ra != rb:
            return f"tick {t}: record {rb} != reference {ra}", ref
        if len(ref.procs) != len(fast.procs):
            return f"tick {t}: {len(fast.procs)} processes, reference {len(ref.procs)}", ref
        for i, p in enumerate(ref.procs):
            for attr in ("alive", "throttled_until", "stall_us", "history"):
                if getattr(p, attr) != getattr(fast.procs[i], attr):
                    return f"tick {t}: process {p.name}: {attr} differs", ref
            if canonical_state(p.mm) != _fast_proc_state(fast, i):
                return f"tick {t}: process {p.name}: address space differs", ref
    if ref.events != fast.events:
        return "events differ", ref
    return "", ref


@pytest.mark.parametrize("action", ["throttle", "kill"])
def test_hard_limits(action: Literal["throttle", "kill"]) -> None:
    machine = dataclasses.replace(ROOMY, hard_limit_action=action, throttle_ticks=3)
    scenario = _scenario("limits", *_all_three(), _spec("shared_file", SHARED_LONE),
                         machine=machine, ticks=50)
    for seed in (5, 6):
        problem, ref = _compare_with_limits(scenario, seed, limit_tick=8, headroom=16 * 4096)
        assert problem == ""
        reason = "throttled" if action == "throttle" else "over its page-table hard limit"
        hit = {name.split(" ")[0] for _, name in ref.events if reason in name}
        # Every family ran into its limit (readers by name prefix).
        assert {n.split(".")[0].rstrip("0123456789") for n in hit} >= {
            "uffd", "shared_file", "virtio_mem"}
        # Harm is one event per kill or throttle window of a sane process, not one per
        # tick over the limit (the roomy machine has no OOM kills to add).
        assert all(r.oom_kill is None for r in ref.history)
        sane = {p.name for p in ref.procs if p.sane}
        windows = sum(1 for _, msg in ref.events if reason in msg and msg.split(" ")[0] in sane)
        assert windows > 0 and sum(r.harm_events for r in ref.history) == windows


# -- the shipped scenarios --------------------------------------------------------------

@pytest.mark.parametrize("name,ticks", [("virtio_mem_shmem", 1000), ("postcopy_uffd", 1000)])
def test_shipped_scenarios(name: str, ticks: int) -> None:
    scenario = load_scenario(ROOT / "configs" / "scenarios" / f"{name}.yaml")
    for seed in (0, 1, 2):
        assert compare_simulations(scenario, seed, ticks, reclaim_every=7, state_every=25) == ""


# -- page cache that reclaim unmapped (MachineConfig.keep_reclaimed_cache) ----------------

@pytest.mark.parametrize("name", ["shared_file", "virtio_mem_corners", "all"])
def test_kept_page_cache_is_identical(name: str) -> None:
    """With ``keep_reclaimed_cache`` the pages that reclaim unmapped count in the machine's
    accounting; both cores keep the same pages (every process's ``kept``, compared with
    the rest of its state) and account them alike, on a machine tight enough to fail."""
    machine = dataclasses.replace(TIGHT, keep_reclaimed_cache=True)
    scenario = _scenario(name, *SCENARIOS[name], machine=machine)
    ref, kept = Simulation(scenario, np.random.default_rng(5)), 0
    for t in range(scenario.ticks):
        if t % 2 == 0:
            ref.reclaim(None, DEPTHS[2], 4096)
        rec = ref.step()
        pages = sum(p.mm.kept_pages for p in ref.alive)
        assert rec.user_pages == sum(p.mm.rss_pages for p in ref.alive) + pages
        kept = max(kept, pages)
    assert kept > 1000  # the comparison below sees kept pages
    for seed in (5, 6):
        assert compare_simulations(scenario, seed, reclaim_every=2) == ""


def test_kept_page_cache_changes_a_generated_scenario() -> None:
    """The training scenario where the accounting matters most (docs/simulator.md): under
    ``best_constant`` (every class, 4,096 tables, every decision) its user memory spills
    into the normal zone once the page cache that reclaim unmapped counts; the episode is
    the same on both backends either way."""
    suite = load_suite(ROOT / "configs" / "suites" / "train.yaml")
    idx = [s.name for s in suite].index("gen7_000")
    assert suite[idx].machine.keep_reclaimed_cache  # the default
    failures = []
    for keep in (False, True):
        sc = dataclasses.replace(suite[idx], machine=dataclasses.replace(
            suite[idx].machine, keep_reclaimed_cache=keep))
        results = []
        for backend in ("exact", "fast"):
            ec = EnvConfig(backend=backend)
            policy = build_policy(parse_policy(str(ROOT / "configs" / "rules"
                                                   / "best_constant.yaml")), ec, sc)
            results.append(run_episode(policy, sc, episode_seed(1000, idx, 0), ec, "bc", idx, 0))
        assert results[0] == results[1]
        failures.append(results[0].failure_ticks)
    assert failures[0] == 0 < failures[1]
