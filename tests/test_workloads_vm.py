"""The VM workload families (balloon, virtio_mem, kdump, uffd): each one's
page-table signature, determinism and config validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.sim import reclaim
from ptreclaim.envs.sim.config import ConfigError
from ptreclaim.envs.sim.pagetable import ENTRIES, PAGE, PTE_SPAN, AddressSpace, TableClass
from ptreclaim.envs.sim.process import TABLE_BYTES, Process
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from ptreclaim.envs.sim.workloads import WORKLOADS
from ptreclaim.envs.sim.workloads.balloon import discard_small, index_runs
from ptreclaim.envs.sim.workloads.base import BASE, Workload

MiB = 1 << 20
FAMILIES = ("balloon", "virtio_mem", "kdump", "uffd")
#: Small but complete configurations, so that every test runs in well under a second.
SMALL: dict[str, dict[str, Any]] = {
    "balloon": {"guest_mib": 512, "hold_ticks": 5, "idle_ticks": 5},
    "virtio_mem": {"region_mib": 1024, "boot_mib": 64, "initial_plugged_mib": 512,
                   "min_plugged_mib": 64, "max_plugged_mib": 768, "resize_period_ticks": 30},
    "kdump": {"guest_mib": 2048, "dump_delay_ticks": 5},
    "uffd": {"guest_mib": 512},
}


def make(family: str, params: dict[str, Any], seed: int = 0, *, pt_reclaim: bool = True,
         jitter: float = 0.0) -> tuple[Simulation, Any]:
    """A simulation running one instance of ``family``, and that instance,
    after the first tick (which starts it)."""
    scenario = ScenarioConfig(workloads=(WorkloadSpec(family, params),), jitter=jitter,
                              pt_reclaim=pt_reclaim)
    sim = Simulation(scenario, np.random.default_rng(seed))
    sim.step()
    return sim, sim._workloads[0][1]


def run_until(sim: Simulation, w: Any, phase: str, limit: int = 2000) -> None:
    """Step until the workload enters ``phase``."""
    for _ in range(limit):
        sim.step()
        if w.phase == phase:
            return
    raise AssertionError(f"{w.family} never reached phase {phase!r} (now {w.phase!r})")


def proc(w: Workload) -> Process:
    assert len(w.procs) == 1
    return w.procs[0]


def test_families_registered_and_sane() -> None:
    for family in FAMILIES:
        assert family in WORKLOADS
        assert WORKLOADS[family].sane


def test_discard_small_keeps_tables() -> None:
    """Many small discards never free a table; one aligned DONTNEED does (R6, R7)."""
    mm = AddressSpace(pt_reclaim=True)
    mm.mmap(BASE, 8 * MiB)
    mm.touch(BASE, 8 * MiB, True)
    assert mm.class_counts() == (0, 0, 0, 4)
    assert discard_small(mm, BASE, BASE + 8 * MiB) == 5
    assert mm.rss_pages == 0 and mm.class_counts() == (4, 0, 0, 0)
    mm.touch(BASE, 8 * MiB, True)
    discard_small(mm, BASE + PAGE, BASE + 6 * MiB + PAGE)  # unaligned run
    assert mm.class_counts() == (2, 0, 0, 2) and mm.rss_pages == 1 + (ENTRIES - 1)
    mm.madvise(BASE, 8 * MiB, "DONTNEED")
    assert len(mm.pte) == 0
    mm.check_invariants()


def test_index_runs() -> None:
    assert index_runs(np.array([1, 2, 3, 7, 9, 10])) == [(1, 4), (7, 8), (9, 11)]
    assert index_runs(np.array([], dtype=np.int64)) == []


@pytest.mark.parametrize("pt_reclaim", [True, False])
def test_balloon_signature(pt_reclaim: bool) -> None:
    """Reporting aligned blocks frees tables only on 6.14+; scattered 4 KiB
    inflation keeps every table while RSS falls."""
    sim, w = make("balloon", SMALL["balloon"], pt_reclaim=pt_reclaim)
    p = proc(w)
    run_until(sim, w, "report")
    slots = w.size // PTE_SPAN
    tables0, rss0 = p.mm.tables, p.mm.rss_pages
    assert p.mm.class_counts() == (0, 0, 0, slots)
    assert rss0 == w.size // PAGE
    run_until(sim, w, "inflate")
    reported_slots = int(np.count_nonzero(w.state == 2)) * w.unit // PTE_SPAN
    assert reported_slots >= 0.2 * slots
    if pt_reclaim:
        assert p.mm.tables == tables0 - reported_slots
        assert p.mm.class_count(TableClass.EMPTY) == 0
    else:
        assert p.mm.tables == tables0
        assert p.mm.class_count(TableClass.EMPTY) == reported_slots
    tables1, rss1 = p.mm.tables, p.mm.rss_pages
    run_until(sim, w, "hold")
    ballooned = int(np.count_nonzero(w.state == 1))
    assert ballooned >= 0.45 * len(w.state)
    assert p.mm.tables == tables1  # not one table freed by inflation
    assert p.mm.rss_pages == rss1 - ballooned * w.unit // PAGE
    assert p.mm.rss_pages < 0.3 * rss0
    run_until(sim, w, "idle")  # deflated: everything written again
    assert p.mm.rss_pages == rss0 and p.mm.tables == tables0
    p.mm.check_invariants()


def _resized_to_128_mib(**params: Any) -> tuple[Any, Process, int, list[int]]:
    """A small virtio_mem VM that the host resizes to 128 MiB (64 blocks), 120 ticks: the
    workload, its process, the peak table count and the EMPTY tables after each tick."""
    sim, w = make("virtio_mem", {**SMALL["virtio_mem"], "min_plugged_mib": 128,
                                 "max_plugged_mib": 128, **params})
    p = proc(w)
    peak = 0
    empty = []
    for _ in range(120):
        sim.step()
        peak = max(peak, p.mm.tables)
        empty.append(p.mm.class_count(TableClass.EMPTY))
    return w, p, peak, empty


def test_virtio_mem_anon_frees_tables_on_unplug() -> None:
    w, p, peak, empty = _resized_to_128_mib()
    assert set(empty) == {0}
    assert w.n_plugged == 64 and w.requested == 64
    boot_slots = 64 * MiB // PTE_SPAN
    # Boot RAM + plugged blocks + PMD/PUD tables: the unplugged blocks took theirs along.
    assert p.mm.class_count(TableClass.PINNED) == boot_slots + 64
    assert p.mm.tables < 0.4 * peak


@pytest.mark.parametrize("backing", ["shmem", "file"])
def test_virtio_mem_shared_backing_leaves_empty_tables(backing: str) -> None:
    w, p, peak, _ = _resized_to_128_mib(backing=backing)
    assert w.n_plugged == 64
    assert p.mm.tables == peak  # REMOVE / punch hole: tables stay (R13)
    assert p.mm.class_count(TableClass.EMPTY) == 256 - 64
    assert p.mm.class_count(TableClass.FILE) == 64  # shared pages are page cache
    p.mm.check_invariants()


def test_virtio_mem_punch_then_dontneed_frees() -> None:
    params = {**SMALL["virtio_mem"], "min_plugged_mib": 128, "max_plugged_mib": 128,
              "backing": "file", "punch_then_dontneed": True}
    sim, w = make("virtio_mem", params)
    sim.run(120)
    assert proc(w).mm.class_count(TableClass.EMPTY) == 0


def test_kdump_signature() -> None:
    """After the dump: ZERO tables everywhere, page tables far beyond RSS."""
    sim, w = make("kdump", SMALL["kdump"])
    p = proc(w)
    run_until(sim, w, "dump")
    slots = w.size // PTE_SPAN
    empty, zero, _, pinned = p.mm.class_counts()
    assert zero == 0 and empty > pinned  # the balloon left empty tables behind
    run_until(sim, w, "idle")
    empty, zero, _, pinned = p.mm.class_counts()
    assert empty == 0 and zero + pinned == slots  # every page was read
    assert zero >= 0.7 * slots
    needed = -(-p.mm.rss_pages // ENTRIES)  # PTE tables that would map the RSS densely
    assert p.pt_bytes > 5 * needed * TABLE_BYTES
    history = len(p.history)
    sim.run(20)  # idle: never read again
    assert p.history[history:] == [p.pt_bytes] * 20
    p.mm.check_invariants()


def test_uffd_tables_not_reclaimable_while_registered() -> None:
    sim, w = make("uffd", SMALL["uffd"])
    p = proc(w)
    run_until(sim, w, "postcopy")
    registered_ticks = 0
    while w.phase == "postcopy":
        assert w.registered
        before = p.mm.tables
        result = sim.reclaim(None, reclaim.DEPTHS[2], 10**9)
        assert result.freed == 0 and p.mm.tables == before
        registered_ticks += 1
        sim.step()
    assert registered_ticks >= 5
    assert w.phase == "done" and not w.registered
    zero = p.mm.class_count(TableClass.ZERO)
    assert zero > 0
    result = sim.reclaim(None, reclaim.DEPTHS[2], 10**9)
    assert result.freed == zero and p.mm.class_count(TableClass.ZERO) == 0
    p.mm.check_invariants()


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_page_table_bytes(family: str) -> None:
    """Same seed (with jitter on): identical per-tick page-table bytes."""
    runs = []
    for _ in range(2):
        sim, w = make(family, SMALL[family], seed=7, jitter=0.2)
        sim.run(150)
        runs.append(proc(w).history)
    assert runs[0] == runs[1]
    assert max(runs[0]) > 0


@pytest.mark.parametrize(("family", "params", "key"), [
    ("balloon", {"balloon_fraction": 1.5}, "balloon_fraction"),
    ("balloon", {"batch_kib": 3}, "batch_kib"),
    ("balloon", {"report_kib": 1024}, "report_kib"),
    ("balloon", {"guest_mb": 1024}, "guest_mb"),
    ("virtio_mem", {"block_mib": 3}, "block_mib"),
    ("virtio_mem", {"backing": "nfs"}, "backing"),
    ("virtio_mem", {"min_plugged_mib": 512, "max_plugged_mib": 256}, "max_plugged_mib"),
    ("kdump", {"resident_fraction": -0.1}, "resident_fraction"),
    ("kdump", {"dump_mib_per_tick": 0}, "dump_mib_per_tick"),
    ("uffd", {"dirty_kib": 4096}, "dirty_kib"),
    ("uffd", {"precopy_fraction": "half"}, "precopy_fraction"),
])
def test_invalid_params_name_the_key(family: str, params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make(family, params)
