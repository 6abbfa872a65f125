"""Signatures of the application workload families: ``allocator`` (jemalloc,
glibc, v8, jvm), ``hog`` (write, zeropage, retouch) and ``shared_file``.

Each test runs one family alone in a :class:`Simulation` (jitter off, so the
parameters are the ones written here) and checks what makes the family what
it is for page-table reclaim: which tables it leaves, of which class, and how
that depends on the kernel's on-zap reclaim (``pt_reclaim``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.sim import reclaim
from ptreclaim.envs.sim.config import ConfigError
from ptreclaim.envs.sim.pagetable import PAGE, TableClass
from ptreclaim.envs.sim.process import Process
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from ptreclaim.envs.sim.workloads import WORKLOADS
from ptreclaim.envs.sim.workloads.allocator import Allocator
from ptreclaim.envs.sim.workloads.hog import Hog
from ptreclaim.envs.sim.workloads.shared_file import SharedFile

#: Short allocator cycles: fill 20, churn 20, free 60, one cycle.
SHORT = {"heap_mib": 256, "fill_ticks": 20, "churn_ticks": 20, "free_ticks": 60,
         "idle_ticks": 0, "cycles": 1, "decay_ticks": 10, "trim_every": 10}


def make(family: str, params: dict[str, Any], seed: int = 0, pt_reclaim: bool = True,
         ticks: int = 600) -> Simulation:
    spec = WorkloadSpec(family, params)
    scenario = ScenarioConfig(workloads=(spec,), ticks=ticks, jitter=0.0, pt_reclaim=pt_reclaim)
    return Simulation(scenario, np.random.default_rng(seed))


def pte_tables(p: Process) -> int:
    return len(p.mm.pte)


def run_allocator(variant: str, pt_reclaim: bool = True, **extra: Any
                  ) -> tuple[Simulation, Process, int, int]:
    """Run one short cycle; return (sim, proc, peak PTE tables, peak RSS pages)."""
    sim = make("allocator", {**SHORT, "variant": variant, **extra}, pt_reclaim=pt_reclaim)
    peak_t = peak_rss = 0
    for _ in range(110):
        sim.step()
        p = sim.procs[0]
        peak_t = max(peak_t, pte_tables(p))
        peak_rss = max(peak_rss, p.mm.rss_pages)
    w = sim._workloads[0][1]
    assert isinstance(w, Allocator) and w.phase == "done"
    p.mm.check_invariants()
    return sim, sim.procs[0], peak_t, peak_rss


def test_families_registered() -> None:
    assert WORKLOADS["allocator"] is Allocator and Allocator.sane
    assert WORKLOADS["hog"] is Hog and not Hog.sane
    assert WORKLOADS["shared_file"] is SharedFile and SharedFile.sane


# -- allocator -----------------------------------------------------------------


def test_jemalloc_free_leaves_empty_tables() -> None:
    """The redis/jemalloc measurement: RSS falls ~98 %, VmPTE does not, and
    most tables are left empty, even with 6.14+ on-zap reclaim."""
    sim, p, peak_t, peak_rss = run_allocator("jemalloc", pt_reclaim=True)
    empty, zero, file, _ = p.mm.class_counts()
    assert peak_t >= 128  # 256 MiB of dense heap
    assert p.mm.rss_pages < 0.05 * peak_rss
    assert pte_tables(p) >= 0.98 * peak_t  # VmPTE barely falls
    assert empty > 0.5 * pte_tables(p)  # most tables empty (measured: 405 of 621)
    assert zero == file == 0
    assert p.mm.stats.pte_reclaimed_on_zap == 0  # no purge covered an aligned slot
    # A reclaimer of EMPTY tables gets them without zapping anything.
    r = sim.reclaim(p, reclaim.DEPTHS[0], 10**6)
    assert r.freed == empty and r.zapped_entries == 0


def test_glibc_trim_frees_tables_only_with_pt_reclaim() -> None:
    _, p, peak_t, peak_rss = run_allocator("glibc", pt_reclaim=True)
    assert p.mm.rss_pages < 0.1 * peak_rss
    assert pte_tables(p) < 0.6 * peak_t  # malloc_trim's big DONTNEEDs took tables
    assert p.mm.stats.pte_reclaimed_on_zap > 0.3 * peak_t
    _, q, peak_q, _ = run_allocator("glibc", pt_reclaim=False)
    # Same calls on an older kernel: the tables stay, empty.
    assert pte_tables(q) > 0.9 * peak_q
    assert q.class_count(TableClass.EMPTY) > 0.3 * peak_q


def test_v8_pages_cost_tables_and_munmap_frees_them() -> None:
    _, p, peak_t, peak_rss = run_allocator("v8", heap_mib=64)
    pages = 64 * 4  # 256 KiB pages
    # Random 46-bit hints: about a PTE and a PMD table per heap page.
    assert peak_rss >= 0.95 * pages * 64
    assert peak_t >= 0.95 * pages
    assert len(p.mm.pmd) < 0.2 * pages  # after the free phase the PMD tables went too
    assert pte_tables(p) < 0.1 * peak_t  # whole pages were unmapped
    assert p.mm.stats.pte_reclaimed_on_zap == 0


@pytest.mark.parametrize(("uncommit", "pt_reclaim", "freed"), [
    ("remap", False, True), ("dontneed", True, True), ("dontneed", False, False)])
def test_jvm_uncommit(uncommit: str, pt_reclaim: bool, freed: bool) -> None:
    """MAP_FIXED PROT_NONE frees the tables on any kernel; DONTNEED only with
    on-zap reclaim (else they stay, empty)."""
    _, p, peak_t, peak_rss = run_allocator("jvm", pt_reclaim=pt_reclaim, uncommit=uncommit,
                                           initial_mib=16)
    assert p.mm.rss_pages < 0.2 * peak_rss
    if freed:
        assert pte_tables(p) < 0.3 * peak_t
    else:
        assert pte_tables(p) == peak_t
        assert p.class_count(TableClass.EMPTY) > 0.6 * peak_t


def test_allocator_respects_budgets() -> None:
    sim = make("allocator", {"variant": "jemalloc", "heap_mib": 2048, "tables_per_tick": 16})
    last = 0
    for _ in range(20):
        sim.step()
        now = pte_tables(sim.procs[0])
        assert now - last <= 16
        last = now


# -- hog -----------------------------------------------------------------------


def test_zeropage_hog_is_page_tables_only() -> None:
    sim = make("hog", {"variant": "zeropage"})
    sim.run(50)
    p = sim.procs[0]
    assert pte_tables(p) > 2000
    assert p.mm.rss_pages == 0
    assert p.pt_bytes > 1000 * max(p.rss_bytes, PAGE)
    assert p.class_count(TableClass.ZERO) == pte_tables(p)


def test_write_hog_one_table_per_page() -> None:
    sim = make("hog", {"variant": "write"})
    sim.run(50)
    p = sim.procs[0]
    assert p.mm.rss_pages == pte_tables(p) > 2000  # one 4 KiB page per PTE table
    assert 1.0 <= p.pt_bytes / p.rss_bytes < 1.01
    assert p.class_count(TableClass.PINNED) == pte_tables(p)
    # Pinned: no reclaim class can take them.
    assert sim.reclaim(p, reclaim.DEPTHS[2], 10**6).freed == 0


def test_hog_rate_and_wrap() -> None:
    sim = make("hog", {"variant": "write", "size_gib": 1, "tables_per_tick": 64})
    sim.run(60)
    w = sim._workloads[0][1]
    assert isinstance(w, Hog)
    assert pte_tables(sim.procs[0]) == 512  # the whole GiB, then it wrapped
    assert w.sweeps >= 1


def test_retouch_hog_regrows_reclaimed_tables() -> None:
    """After a full-depth reclaim the retouch hog re-reads what it lost; the
    zeropage hog has moved on and does not."""
    for variant in ("retouch", "zeropage"):
        sim = make("hog", {"variant": variant}, seed=3)
        sim.run(60)
        p = sim.procs[0]
        before = pte_tables(p)
        r = sim.reclaim(p, reclaim.DEPTHS[2], 10**9)
        assert r.freed == before and pte_tables(p) == 0
        sim.run(45)
        w = sim._workloads[0][1]
        assert isinstance(w, Hog)
        if variant == "retouch":
            assert w.retouched == before
            assert pte_tables(p) == w.swept  # everything swept is back
            assert p.mm.stats.refault_tables == before
        else:
            assert pte_tables(p) == w.swept - before
            assert p.mm.stats.refault_tables == 0


# -- shared_file ---------------------------------------------------------------


def test_shared_file_tables_are_file_class_and_shared() -> None:
    sim = make("shared_file", {"readers": 4, "restart_prob": 0.0, "punch_prob": 0.0})
    sim.run(80)
    w = sim._workloads[0][1]
    assert isinstance(w, SharedFile)
    readers = [p for p in sim.procs if p.alive]
    assert len(readers) == 4
    assert {p.mm for p in readers} == w.file.mappers
    slots = []
    for p in readers:
        assert pte_tables(p) > 500
        assert p.class_count(TableClass.FILE) == pte_tables(p)
        slots.append(set(p.mm.pte))
    # Each reader pays its own tables for the same file slots.
    assert len(slots[0] & slots[1]) > 0.03 * len(slots[0])
    r = sim.reclaim(readers[0], reclaim.DEPTHS[2], 10**6)
    assert r.freed_by_class == {TableClass.FILE: len(slots[0])}
    assert sim.reclaim(readers[1], reclaim.DEPTHS[1], 10**6).freed == 0  # needs depth 2


def test_shared_file_punch_leaves_empty_tables() -> None:
    sim = make("shared_file", {"readers": 3, "punch_prob": 1.0, "restart_prob": 0.0,
                               "file_gib": 4})
    sim.run(60)
    w = sim._workloads[0][1]
    assert isinstance(w, SharedFile) and w.punches == 60
    for p in sim.procs:  # fallocate(PUNCH_HOLE) zapped every mapping, tables stay
        assert p.class_count(TableClass.EMPTY) > 0
        p.mm.check_invariants()


def test_shared_file_restarted_readers_start_without_tables() -> None:
    sim = make("shared_file", {"readers": 3, "restart_prob": 0.05, "file_gib": 4})
    w = sim._workloads[0][1]
    assert isinstance(w, SharedFile)
    sim.step()  # the three first readers start
    r0 = w.restarts
    seen: set[int] = set()
    for _ in range(60):
        before = {p.pid for p in sim.procs}
        sim.step()
        for p in sim.procs:
            if p.pid not in before and p.pid not in seen:
                seen.add(p.pid)
                # A fork copies no table of a MAP_SHARED file mapping (R18):
                # whatever it has now it faulted in this tick.
                assert pte_tables(p) <= 16
    assert w.restarts - r0 == len(seen) > 0
    assert len([p for p in sim.procs if p.alive]) == 3
    assert len(sim.procs) == 3 + w.restarts


# -- determinism and config ---------------------------------------------------


CASES = [("allocator", {**SHORT, "variant": v}) for v in ("jemalloc", "glibc", "v8", "jvm")] + [
    ("hog", {"variant": v, "size_gib": 4}) for v in ("write", "zeropage", "retouch")] + [
    ("shared_file", {"file_gib": 4, "restart_prob": 0.05})]


@pytest.mark.parametrize(("family", "params"), CASES, ids=[f"{f}-{p.get('variant', '')}"
                                                            for f, p in CASES])
def test_same_seed_same_page_tables(family: str, params: dict[str, Any]) -> None:
    def trace(seed: int) -> list[list[int]]:
        sim = make(family, params, seed=seed)
        sim.run(80)
        if family == "hog":  # exercise the retouch path too
            sim.reclaim(sim.procs[0], reclaim.DEPTHS[2], 300)
            sim.run(10)
        return [p.history for p in sim.procs]

    a, b = trace(7), trace(7)
    assert a == b
    assert any(any(h) for h in a)


@pytest.mark.parametrize(("family", "params", "key"), [
    ("allocator", {"variant": "tcmalloc"}, "variant"),
    ("allocator", {"heap_mib": 0}, "allocator.heap_mib"),
    ("allocator", {"keep_fraction": 1.5}, "allocator.keep_fraction"),
    ("allocator", {"extent_kib": 6}, "allocator.extent_kib"),
    ("allocator", {"page_kib": 100}, "allocator.page_kib"),
    ("allocator", {"uncommit": "madvise"}, "uncommit"),
    ("allocator", {"heap_sise": 10}, "heap_sise"),
    ("hog", {"variant": "read"}, "variant"),
    ("hog", {"stride_kib": 1000}, "hog.stride_kib"),
    ("hog", {"tables_per_tick": 0}, "hog.tables_per_tick"),
    ("hog", {"size_gib": 10**9}, "hog.size_gib"),
    ("shared_file", {"readers": 0}, "shared_file.readers"),
    ("shared_file", {"region_mib": 3}, "shared_file.region_mib"),
    ("shared_file", {"pages_per_slot": 3}, "shared_file.pages_per_slot"),
    ("shared_file", {"write_fraction": -0.1}, "shared_file.write_fraction"),
])
def test_invalid_params_name_the_key(family: str, params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make(family, params)


@pytest.mark.parametrize("family", ["allocator", "hog", "shared_file"])
def test_defaults_survive_jitter(family: str) -> None:
    cls = WORKLOADS[family]
    for seed in range(20):
        cls.make_config({}, "test", 0.5, np.random.default_rng(seed))
