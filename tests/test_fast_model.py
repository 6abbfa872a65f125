"""The compiled page-table model is the reference model, op for op (issue 13).

Every op script of the kernel corpus and 500 generated ones (every family, a THP share,
both the 6.14+ on-zap reclaim and older kernels) replays on both models; after every op
the outcome (VmPTE delta, failure, maps) and the whole state -- VMAs with their flags,
files, anon_vmas and userfaultfd contexts, every table's entries, huge state, class and
RSS, the PMD/PUD tables, the file THP PMDs and every mapped file's shmem page cache and
huge chunks (R24), the counters and the reclaim bookkeeping -- must be identical.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.configio import load_scenario
from ptreclaim.envs.kernel import scriptgen
from ptreclaim.envs.sim.fast._fast import FastAddressSpace, FastBackingFile
from ptreclaim.envs.sim.fast.check import _fast_proc_state, canonical_state, replay_both
from ptreclaim.envs.sim.fast.simulation import FastSimulation
from ptreclaim.envs.sim.opscript import parse_file, parse_text
from ptreclaim.envs.sim.pagetable import AddressSpace, BackingFile, TableClass

ROOT = Path(__file__).resolve().parents[1]
KERNEL = sorted((ROOT / "tests" / "data" / "kernel").glob("*.script"))


@pytest.mark.parametrize("path", KERNEL, ids=[p.stem for p in KERNEL])
@pytest.mark.parametrize("pt_reclaim", [True, False])
def test_kernel_corpus_identical(path: Path, pt_reclaim: bool) -> None:
    n, problem = replay_both(parse_file(path), pt_reclaim=pt_reclaim)
    assert problem == "", f"{path.name}: {problem}"
    assert n > 0


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(5))
def test_generated_scripts_identical(chunk: int) -> None:
    """500 generated scripts (100 per chunk, 20 % with THP), on both kernels."""
    corpus = scriptgen.generate_corpus(9000 + chunk, 100, thp_share=0.2)
    ops = 0
    for name, text in corpus:
        script = parse_text(text, name)
        for pt_reclaim in (True, False):
            n, problem = replay_both(script, pt_reclaim=pt_reclaim)
            assert problem == "", f"{name} (pt_reclaim={pt_reclaim}): {problem}"
            ops += n
    assert ops > 1000


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(2))
def test_generated_scripts_identical_with_reclaim(chunk: int) -> None:
    """200 generated scripts with a reclaimer freeing random tables between ops: the
    page cache it unmaps (``kept``) moves, copies and leaves alike on both models through
    every op the scripts make (munmap, DONTNEED, PAGEOUT, mremap, fork, punch, COW, THP),
    and both models' invariants hold (a kept page is never mapped, always in a file VMA)."""
    corpus = scriptgen.generate_corpus(9100 + chunk, 100, thp_share=0.2)
    seen: dict[str, int] = {}
    kept_scripts = 0
    for k, (name, text) in enumerate(corpus):
        script = parse_text(text, name)
        one: dict[str, int] = {}
        _, problem = replay_both(script, reclaim_seed=chunk * 1000 + k, seen=one)
        assert problem == "", f"{name}: {problem}"
        kept_scripts += one.get("kept", 0) > 0
        for key, value in one.items():
            seen[key] = seen.get(key, 0) + value
    assert seen["reclaimed"] > 500 and kept_scripts > 20, (seen, kept_scripts)


def test_canonical_state_sees_a_difference() -> None:
    """The comparison is not vacuous: one differing entry makes the states differ."""
    ref, fast = AddressSpace(), FastAddressSpace()
    for mm in (ref, fast):
        assert mm.mmap(16 << 40, 4 << 20) is None
        assert mm.touch(16 << 40, 4 << 20, False) is None
    assert canonical_state(ref) == canonical_state(fast)
    assert fast.touch(16 << 40, 4096, True) is None
    assert canonical_state(ref) != canonical_state(fast)


def test_reclaim_table_and_errors_match() -> None:
    ref, fast = AddressSpace(), FastAddressSpace()
    for mm in (ref, fast):
        mm.mmap(16 << 40, 8 << 20)
        mm.touch(16 << 40, 8 << 20, False, 2 << 20)
    slot = (16 << 40) >> 21
    allowed = frozenset({TableClass.EMPTY, TableClass.ZERO})
    assert ref.reclaim_table(slot, allowed) == fast.reclaim_table(slot, allowed) == 1
    assert ref.touch(16 << 40, 4096, False) == fast.touch(16 << 40, 4096, False) is None
    assert canonical_state(ref) == canonical_state(fast)
    assert ref.munmap(3, 4096) == fast.munmap(3, 4096) == "EINVAL"
    assert ref.madvise(0, 4096, "DONTNEED") == fast.madvise(0, 4096, "DONTNEED") == "ENOMEM"


def test_clone_copies_file_state() -> None:
    """The offline oracle's copy (SimCore.clone: AddressSpace::clone and copy_file) keeps
    every file's shmem page cache (R24), files shared by several processes stay shared,
    and the copy runs the same future."""
    scenario = load_scenario(ROOT / "configs" / "scenarios" / "virtio_mem_shmem.yaml")
    sim = FastSimulation(scenario, np.random.default_rng(3))
    for _ in range(160):  # the shared_file readers start at tick 150
        sim.step()
    twin = copy.deepcopy(sim)

    def states(s: FastSimulation) -> list[dict[str, Any]]:
        return [_fast_proc_state(s, i) for i in range(len(s.procs))]

    def file_keys(s: FastSimulation) -> list[tuple[int, Any]]:
        """(process, file identity) of every VMA."""
        return [(i, v[4]) for i in range(len(s.procs)) for v in s.core.proc_state(i)["vmas"]]

    before = states(sim)
    assert any(f[2] for st in before for f in st["files"]), "no cached shmem page to copy"
    assert states(twin) == before
    # One copy per file: the copy's file of each VMA, across all processes, is a function
    # of the original's (and the copies are distinct from the originals).
    keys, twin_keys = file_keys(sim), file_keys(twin)
    pairs = {(a[1], b[1]) for a, b in zip(keys, twin_keys, strict=True) if a[1] is not None}
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}) > 1
    assert {a for a, _ in pairs}.isdisjoint({b for _, b in pairs})
    procs_of: dict[Any, set[int]] = {}
    for i, key in keys:
        procs_of.setdefault(key, set()).add(i)
    assert any(len(p) > 1 for k, p in procs_of.items() if k is not None), \
        "no file is mapped by two processes: sharing is not tested"
    for _ in range(40):
        assert twin.step() == sim.step()
        assert states(twin) == states(sim)


def test_file_thp_views_match() -> None:
    """FastAddressSpace.file_thp and FastBackingFile.cache/huge read what the reference
    holds (R24): a collapsed chunk mapped by a PMD, and a partly cached one."""
    base = 1 << 40
    views = []
    models: list[tuple[Any, Any]] = [
        (AddressSpace(thp_disabled=False), BackingFile("shmem", 64 << 20)),
        (FastAddressSpace(thp_disabled=False), FastBackingFile("shmem", 64 << 20))]
    for mm, f in models:
        assert mm.mmap(base, 8 << 20, kind="shmem", shared=True, file=f) is None
        assert mm.touch(base + (2 << 20) + 4096, 3 * 4096, False, 8192) is None
        assert mm.madvise(base, 2 << 20, "COLLAPSE") == "EINVAL"  # chunk 0: nothing cached
        assert mm.madvise(base + (2 << 20), 2 << 20, "COLLAPSE") is None
        views.append((sorted(mm.file_thp), {c: bytes(p) for c, p in f.cache.items()},
                      sorted(f.huge)))
    assert views[0] == views[1]
    assert views[0][0] == [(base >> 21) + 1] and views[0][2] == [1]


def test_reclaimed_page_cache_stays_counted_until_the_process_ends_its_mapping() -> None:
    """``AddressSpace.kept`` (docs/simulator.md, "Page cache that reclaim unmaps"): the
    page-cache pages a reclaimer unmapped stay counted until the process maps them again
    or zaps or exits their range (a move carries them along); both models keep the same
    pages."""
    base, mib = 16 << 40, 1 << 20
    allowed = frozenset({TableClass.EMPTY, TableClass.ZERO, TableClass.FILE})
    models: list[tuple[Any, Any]] = [(AddressSpace(), BackingFile("file", 64 << 20)),
                                     (FastAddressSpace(), FastBackingFile("file", 64 << 20))]
    seen = []
    for mm, f in models:
        assert mm.mmap(base, 16 * mib, kind="file", shared=True, file=f) is None
        assert mm.touch(base, 16 * mib, False, 64 << 10) is None  # 32 faults per table
        mapped = mm.rss_pages
        slots = [(base >> 21) + k for k in range(8)]
        per_table = mapped // 8
        assert mapped and mapped % 8 == 0 and mm.kept_pages == 0
        steps = []
        for slot in slots:
            assert mm.reclaim_table(slot, allowed) > 0
        # Unmapped, not evicted: every page is still there, now counted as kept.
        assert mm.rss_pages == 0 and mm.kept_pages == mapped
        steps.append(canonical_state(mm))
        # Mapping the same pages again moves them back to RSS, one page each.
        assert mm.touch(base, 4 * mib, False, 64 << 10) is None  # tables 0 and 1
        assert mm.rss_pages == 2 * per_table and mm.kept_pages == mapped - 2 * per_table
        steps.append(canonical_state(mm))
        # DONTNEED of a table's 2 MiB or of part of one and munmap end their count.
        assert mm.madvise(base + 4 * mib, 2 * mib, "DONTNEED") is None
        assert mm.kept_pages == mapped - 3 * per_table
        assert mm.madvise(base + 6 * mib, mib, "DONTNEED") is None
        assert mm.kept_pages == mapped - 3 * per_table - per_table // 2
        assert mm.munmap(base + 8 * mib, 2 * mib) is None
        assert mm.kept_pages == mapped - 4 * per_table - per_table // 2
        steps.append(canonical_state(mm))
        assert mm.mremap(base + 10 * mib, 2 * mib, 2 * mib, base + 64 * mib) is None
        assert mm.kept_pages == mapped - 4 * per_table - per_table // 2  # moved along
        # A punch of the file drops the cache: its kept pages go too.
        mm.punch(f, 12 * mib, 2 * mib)
        assert mm.kept_pages == mapped - 5 * per_table - per_table // 2
        assert mm.kept_pages == 2 * per_table + per_table // 2  # half of 3, 5 (moved), 7
        mm.check_invariants()
        steps.append(canonical_state(mm))
        mm.exit()
        assert mm.kept_pages == 0
        seen.append(steps)
    assert seen[0] == seen[1]


def test_kept_page_cache_moves_and_forks_with_its_range() -> None:
    """A move (mremap) carries kept pages to the new address and a fork copies those of a
    VMA whose tables it copies (one with an anon_vma), as they would their entries; both
    models alike."""
    base, mib = 16 << 40, 1 << 20
    allowed = frozenset({TableClass.EMPTY, TableClass.ZERO, TableClass.FILE})
    states = []
    for mm, f in ((AddressSpace(), BackingFile("file", 64 << 20)),
                  (FastAddressSpace(), FastBackingFile("file", 64 << 20))):
        # A private file mapping: reads map page cache; one write gives it an anon_vma.
        assert mm.mmap(base, 8 * mib, kind="file", shared=False, file=f) is None
        assert mm.touch(base, 6 * mib, False, 64 << 10) is None
        assert mm.touch(base + 6 * mib, 4096, True) is None
        assert mm.reclaim_table(base >> 21, allowed) > 0
        assert mm.reclaim_table((base >> 21) + 1, allowed) > 0
        kept = mm.kept_pages
        assert kept == 64
        assert mm.mremap(base, 8 * mib, 8 * mib, base + 64 * mib) is None
        assert mm.kept_pages == kept  # moved, not dropped
        mm.check_invariants()
        child = mm.fork()
        assert child.kept_pages == kept
        child.check_invariants()
        assert child.touch(base + 64 * mib, 4096, False) is None  # maps one kept page again
        assert child.kept_pages == kept - 1 and mm.kept_pages == kept
        states.append((canonical_state(mm), canonical_state(child)))
        child.exit()
        mm.exit()
    assert states[0] == states[1]
