"""Scenarios: the shipped YAML files, determinism, conservation, config errors,
and data preservation under the most aggressive reclaim.

* Every ``configs/scenarios/*.yaml`` loads, round-trips through its resolved
  form and runs; the train and held-out suites load, are disjoint, cover every
  scenario, and no held-out scenario shares its machine or its workload list
  with a training one.
* Determinism: the same seed gives the same ``TickRecord`` sequence and the
  same per-process page-table histories bit for bit; another seed differs.
* Conservation at every tick: normal-zone usage = tenants + page-table pages +
  user pages spilled out of the movable zone (``Machine.account``), and
  page-table pages = the sum of ``mm.tables`` over live processes (dead ones
  hold none); a reclaim pass frees exactly the tables it reports.
* Errors: unknown keys, out-of-range values and unknown families are one line
  naming the file and the key, with a did-you-mean hint where one exists.
* Data preservation: each family (and variant) runs twice from one seed, once
  without reclaim and once with a pass over every table of every process with
  the deepest class after every tick; every access must leave the accessed pages with
  the same data class in both runs, and so must a final read of all memory
  (reclaim may change whether a table exists, never what a read returns:
  zero reads zero, file reads page cache, anon stays anon).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.configio import (
    load_scenario,
    load_suite,
    load_yaml,
    scenario_from_data,
    suite_paths,
    write_yaml_atomic,
)
from ptreclaim.envs.sim.config import ConfigError, build, to_dict
from ptreclaim.envs.sim.pagetable import (
    E_ANON,
    E_FILE,
    E_NONE,
    E_ZERO,
    HUGE_ANON,
    PAGE,
    PAGE_SHIFT,
    PTE_SHIFT,
    PTE_SPAN,
    VM_READ,
    AddressSpace,
    TableClass,
)
from ptreclaim.envs.sim.reclaim import DEPTHS
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, TickRecord
from ptreclaim.envs.sim.workloads import WORKLOADS
from ptreclaim.envs.simulate import policy_aggressive

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_DIR = ROOT / "configs" / "scenarios"
SUITE_DIR = ROOT / "configs" / "suites"
SCENARIOS = sorted(SCENARIO_DIR.glob("*.yaml"))

#: A machine so large that nothing ever fails: no OOM kill or throttle can make
#: two runs of one seed diverge.
ROOMY = {"ram_mib": 1 << 20, "movable_fraction": 0.5, "tenants": {"base_fraction": 0.05}}
#: A small machine under pressure: failures and OOM kills happen (conservation
#: must hold through them too).
TIGHT = {"ram_mib": 3072, "movable_fraction": 0.9,
         "tenants": {"base_fraction": 0.9, "burst_prob": 0.02, "burst_fraction": 0.05},
         "oom_failures": 5, "oom_window_ticks": 20}

#: Small, fast parameters per family case (every phase happens within ~100 ticks).
FAMILY_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "balloon": ("balloon", {"guest_mib": 256, "fill_mib_per_tick": 64, "hold_ticks": 10,
                            "idle_ticks": 5, "inflate_batches_per_tick": 16,
                            "deflate_batches_per_tick": 16}),
    "hog-write": ("hog", {"variant": "write", "size_gib": 4, "tables_per_tick": 48}),
    "hog-zeropage": ("hog", {"variant": "zeropage", "size_gib": 4, "tables_per_tick": 48}),
    "hog-retouch": ("hog", {"variant": "retouch", "size_gib": 4, "tables_per_tick": 48}),
    "hog-pmd-stride": ("hog", {"variant": "zeropage", "size_gib": 32, "stride_kib": 1 << 20,
                               "tables_per_tick": 2}),
    "kdump": ("kdump", {"guest_mib": 512, "warmup_mib_per_tick": 64, "dump_delay_ticks": 5,
                        "dump_mib_per_tick": 32}),
    "shared_file": ("shared_file", {"file_gib": 2, "readers": 3, "region_mib": 8,
                                    "pages_per_slot": 4, "write_fraction": 0.2,
                                    "punch_prob": 0.1, "restart_prob": 0.02}),
    "uffd": ("uffd", {"guest_mib": 512, "precopy_fraction": 0.3, "zero_fraction": 0.7,
                      "stream_mib_per_tick": 8, "faults_per_tick": 8, "zero_run_mib": 8}),
    "virtio_mem-anon": ("virtio_mem", {"backing": "anon", "region_mib": 512, "boot_mib": 64,
                                       "initial_plugged_mib": 256, "min_plugged_mib": 32,
                                       "max_plugged_mib": 512, "resize_period_ticks": 10}),
    "virtio_mem-shmem": ("virtio_mem", {"backing": "shmem", "region_mib": 512, "boot_mib": 64,
                                        "initial_plugged_mib": 256, "min_plugged_mib": 32,
                                        "max_plugged_mib": 512, "resize_period_ticks": 10}),
    "virtio_mem-file": ("virtio_mem", {"backing": "file", "punch_then_dontneed": False,
                                       "region_mib": 512, "boot_mib": 64,
                                       "initial_plugged_mib": 256, "min_plugged_mib": 32,
                                       "max_plugged_mib": 512, "resize_period_ticks": 10}),
    # Two cold/hot cycles in 110 ticks; the probe reads in the cold phases.
    "phased-file": ("phased", {"backing": "file", "region_gib": 1, "tables": 128,
                               "load_tables_per_tick": 32, "cold_ticks": 30, "hot_ticks": 10,
                               "hot_tables_per_tick": 24, "cold_tables_per_tick": 3}),
    "phased-zero": ("phased", {"backing": "zero", "region_gib": 1, "tables": 128,
                               "load_tables_per_tick": 32, "cold_ticks": 30, "hot_ticks": 10,
                               "hot_tables_per_tick": 24, "pages_per_slot": 8}),
}
_ALLOC = {"heap_mib": 64, "fill_ticks": 10, "churn_ticks": 30, "free_ticks": 15,
          "idle_ticks": 10, "churn_fraction": 0.05, "tables_per_tick": 65536, "decay_ticks": 5,
          "trim_every": 10, "spread_gib": 64, "initial_mib": 8}
for _variant in ("jemalloc", "glibc", "v8", "jvm"):
    FAMILY_CASES[f"allocator-{_variant}"] = ("allocator", {**_ALLOC, "variant": _variant})
FAMILY_CASES["allocator-jvm-dontneed"] = ("allocator", {**_ALLOC, "variant": "jvm",
                                                        "uncommit": "dontneed"})
# A family added later is still covered, with its default parameters.
for _family in WORKLOADS:
    if not any(f == _family for f, _ in FAMILY_CASES.values()):
        FAMILY_CASES[_family] = (_family, {})

#: Functions whose accesses exist only because reclaim took tables: a hog that
#: re-reads what it lost.  They are checked on their own (they must read zero).
REACTIVE = frozenset({"_retouch"})


def _scenario(workloads: list[dict[str, Any]], machine: dict[str, Any], *, ticks: int = 120,
              jitter: float = 0.0, name: str = "test") -> ScenarioConfig:
    return build(ScenarioConfig, {"name": name, "ticks": ticks, "jitter": jitter,
                                  "machine": machine, "workloads": workloads}, name)


def _mix(machine: dict[str, Any], jitter: float = 0.2) -> ScenarioConfig:
    """Every family at once, small, starting at staggered ticks."""
    seen: set[str] = set()
    workloads = []
    for i, (family, params) in enumerate(FAMILY_CASES.values()):
        if family in seen and family != "hog":
            continue
        seen.add(family)
        workloads.append({"family": family, "params": params, "start_tick": 3 * i})
    return _scenario(workloads, machine, jitter=jitter, name="mix")


# -- shipped scenarios and suites -----------------------------------------------

def test_scenarios_exist() -> None:
    assert len(SCENARIOS) >= 9


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_loads_and_runs(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert len(sc.description) > 80, "tell the scenario's story in its description"
    assert 600 <= sc.ticks <= 1500
    # At least two kinds of workload (a replayed trace counts as its own kind).
    assert len({(w.family, w.params.get("trace")) for w in sc.workloads}) >= 2
    assert any(w.start_tick > 0 for w in sc.workloads), "scenarios have phases"
    # The resolved form (the CLI's config.yaml) builds the same scenario again.
    assert build(ScenarioConfig, to_dict(sc), "resolved") == sc
    sim = Simulation(sc, np.random.default_rng(0))
    for _ in range(3):
        sim.step()
    assert sim.procs


def test_suites_split_the_scenarios() -> None:
    train = suite_paths(SUITE_DIR / "train.yaml")
    test = suite_paths(SUITE_DIR / "test.yaml")
    assert len(train) >= 6 and len(test) >= 3
    assert not set(train) & set(test)
    assert set(train) | set(test) == {p.resolve() for p in SCENARIOS}
    train_sc = load_suite(SUITE_DIR / "train.yaml")
    test_sc = load_suite(SUITE_DIR / "test.yaml")
    # The listed files first, then the generated scenarios (tests/test_scenariogen.py).
    assert [s.name for s in train_sc[:len(train)]] == [p.stem for p in train]
    assert all(s.name.startswith("gen") for s in train_sc[len(train):])
    for held in test_sc:
        for seen in train_sc:
            # Not just another seed: another machine and another workload list.
            assert held.machine != seen.machine, (held.name, seen.name)
            assert held.workloads != seen.workloads, (held.name, seen.name)


def test_suite_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("scenarioz: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"did you mean 'scenarios'"):
        suite_paths(bad)
    bad.write_text("scenarios: [missing.yaml]\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml: no such file"):
        load_suite(bad)


# -- determinism ---------------------------------------------------------------

def _trajectory(sc: ScenarioConfig, seed: int, ticks: int,
                policy: Callable[[Simulation], None] | None = None
                ) -> tuple[list[TickRecord], list[tuple[str, list[int]]], list[tuple[int, str]]]:
    sim = Simulation(sc, np.random.default_rng(seed))
    for _ in range(ticks):
        sim.step()
        if policy is not None:
            policy(sim)
    return sim.history, [(p.name, list(p.history)) for p in sim.procs], sim.events


@pytest.mark.parametrize("aggressive", [False, True], ids=["none", "aggressive"])
def test_determinism(aggressive: bool) -> None:
    sc = _mix(TIGHT)
    policy = policy_aggressive if aggressive else None
    a = _trajectory(sc, 7, 100, policy)
    b = _trajectory(sc, 7, 100, policy)
    assert a[0] == b[0]  # TickRecord dataclasses: every field, floats exactly
    assert a[1] == b[1]
    assert a[2] == b[2]
    c = _trajectory(sc, 8, 100, policy)
    assert c[0] != a[0]
    assert c[1] != a[1]


def test_determinism_shipped_scenario() -> None:
    sc = load_scenario(SCENARIO_DIR / "balloon_host_hog.yaml")
    a = _trajectory(sc, 3, 60)
    assert a == _trajectory(sc, 3, 60)
    assert a[0] != _trajectory(sc, 4, 60)[0]


def test_jitter_is_seeded() -> None:
    sc = _mix(ROOMY, jitter=0.3)
    configs = [[w.config for _, w in Simulation(sc, np.random.default_rng(s))._workloads]
               for s in (1, 1, 2)]
    assert configs[0] == configs[1]
    assert configs[0] != configs[2]


# -- conservation ----------------------------------------------------------------

def _check_tick(sim: Simulation, rec: TickRecord) -> None:
    m = sim.machine
    alive = sim.alive
    assert rec.pt_pages == sum(p.mm.tables for p in alive)
    kept = sum(p.mm.kept_pages for p in alive) if m.config.keep_reclaimed_cache else 0
    assert rec.user_pages == sum(p.mm.rss_pages for p in alive) + kept
    spill = max(0, rec.user_pages - m.movable_pages)
    assert m.normal_pages - rec.normal_free_pages == rec.tenant_pages + rec.pt_pages + spill
    assert rec.movable_free_pages == max(0, m.movable_pages - rec.user_pages)
    if not rec.oom_kill:  # an OOM kill re-accounts after the failure was seen
        assert rec.failure == (rec.normal_free_pages < m.wmark.min)
    for p in sim.procs:
        mm = p.mm
        assert mm.tables == len(mm.pte) + len(mm.pmd) + len(mm.pud)
        assert sum(mm.class_counts()) == len(mm.pte)
        if not p.alive:
            assert mm.tables == 0 and mm.rss_pages == 0
        elif p.history:
            assert p.history[-1] == p.pt_bytes


@pytest.mark.parametrize("aggressive,keep", [(False, False), (True, False), (True, True)],
                         ids=["none", "aggressive", "aggressive-keep-cache"])
def test_conservation_every_tick(aggressive: bool, keep: bool) -> None:
    sc = _mix(TIGHT)
    sc = dataclasses.replace(sc, machine=dataclasses.replace(sc.machine,
                                                             keep_reclaimed_cache=keep))
    sim = Simulation(sc, np.random.default_rng(11))
    freed = 0
    for _ in range(110):
        rec = sim.step()
        _check_tick(sim, rec)
        if aggressive:
            before = sum(p.mm.tables for p in sim.alive)
            budget = sum(len(p.mm.pte) for p in sim.alive)
            res = sim.reclaim(None, DEPTHS[-1], budget)
            after = sum(p.mm.tables for p in sim.alive)
            assert before - after == res.freed
            assert sum(res.freed_by_class.values()) == res.freed
            assert TableClass.PINNED not in res.freed_by_class
            assert res.scanned <= budget
            freed += res.freed
    hist = sim.history
    if aggressive:
        assert freed > 0
        assert sum(r.reclaim_freed for r in hist) == freed - res.freed  # last pass: next tick
        # The passes unmapped page cache: with keep_reclaimed_cache it stays counted.
        assert any(p.mm.kept_pages for p in sim.alive)
    else:
        # The tight machine exercises failures and the OOM path.
        assert any(r.failure for r in hist)
        assert any(r.oom_kill for r in hist)
    for p in sim.alive:
        p.mm.check_invariants()


def test_conservation_shipped_scenarios() -> None:
    for path in (SCENARIO_DIR / "virtio_mem_shmem.yaml", SCENARIO_DIR / "postcopy_uffd.yaml"):
        sim = Simulation(load_scenario(path), np.random.default_rng(0))
        for _ in range(60):
            _check_tick(sim, sim.step())


# -- errors ------------------------------------------------------------------------

_GOOD: dict[str, Any] = {"description": "x", "ticks": 600,
         "workloads": [{"family": "hog", "params": {"variant": "zeropage"}}]}


def _with(path: str, value: Any) -> dict[str, Any]:
    """``_GOOD`` with one key changed (``a.b.0.c`` addresses nested keys)."""
    data: dict[str, Any] = copy.deepcopy(_GOOD)
    keys = path.split(".")
    node: Any = data
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(("data", "expected"), [
    (_with("tickz", 5), r"scen\.yaml: unknown key 'tickz' \(did you mean 'ticks'\?\)"),
    (_with("machine.ram_mb", 5), r"scen\.yaml\.machine: unknown key 'ram_mb' \(did you mean "
                                 r"'ram_mib'\?\)"),
    (_with("machine.tenants.base_fracton", 0.5), r"did you mean 'base_fraction'"),
    (_with("workloads.0.start", 5), r"workloads\[0\]: unknown key 'start' \(did you mean "
                                    r"'start_tick'\?\)"),
    (_with("workloads.0.params.size_gb", 5), r"workloads\[0\]\.params: unknown key 'size_gb' "
                                             r"\(did you mean 'size_gib'\?\)"),
    (_with("workloads.0.family", "hogg"), r"'hogg' is unknown \(did you mean 'hog'\?\)"),
    (_with("machine.ram_mib", 1), r"scen\.yaml: machine\.ram_mib: 1 is out of range; "
                                  r"allowed \[64, "),
    (_with("workloads.0.params.tables_per_tick", 0), r"hog\.tables_per_tick: 0 is out of "
                                                     r"range; allowed \[1, 65536\]"),
    (_with("ticks", "ten"), r"scen\.yaml\.ticks: expected an integer, got 'ten'"),
    (_with("jitter", 2.0), r"jitter: 2\.0 is out of range; allowed \[0, 0\.9\]"),
    (_with("workloads.0.params.tables_per_tick", 60000),
     r"params\.tables_per_tick: jitter 0\.2 can scale 60000 to 72000"),
    (_with("machine.hard_limit_action", "kil"), r"'kil' is not one of 'throttle', 'kill' "
                                                r"\(did you mean 'kill'\?\)"),
    (_with("costs.ipi_uss", 1.0), r"costs: unknown key 'ipi_uss' \(did you mean 'ipi_us'\?\)"),
    (_with("machine.keep_reclaimed_cache", "maybe"),
     r"scen\.yaml\.machine\.keep_reclaimed_cache: expected true or false, got 'maybe'"),
], ids=["top", "machine", "tenants", "workload", "params", "family", "range", "param-range",
        "type", "jitter", "jitter-reach", "literal", "costs", "bool"])
def test_config_errors_are_one_line(tmp_path: Path, data: dict[str, Any], expected: str) -> None:
    path = tmp_path / "scen.yaml"
    write_yaml_atomic(path, data)
    with pytest.raises(ConfigError, match=expected) as info:
        load_scenario(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("scen.yaml")


def test_yaml_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("ticks: 600\nmachine:\n  ram_mib: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: YAML syntax error at line \d+, "
                                          r"column \d+") as info:
        load_yaml(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_scenario(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load_scenario(empty)
    assert scenario_from_data(_GOOD, "x", "named").name == "named"


def test_write_yaml_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.yaml"
    write_yaml_atomic(path, {"b": 1, "a": [1, 2]})
    assert load_yaml(path) == {"b": 1, "a": [1, 2]}
    assert path.read_text().startswith("b: 1")  # keys keep their order
    assert [p.name for p in path.parent.iterdir()] == ["out.yaml"]  # no temp file left


# -- data preservation ------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    """One ``touch`` and the data class of every page it accessed, after it."""

    write: bool
    start: int
    length: int
    stride: int
    err: str | None
    digest: bytes  # of the entry bytes (data classes) of the accessed pages
    zero: int
    file: int
    anon: int


def _accessed_classes(mm: AddressSpace, start: int, length: int, stride: int) -> bytes:
    """Entry state (E_ZERO, E_FILE, E_ANON...) of each page an access touched;
    a huge zero page reads as zero, an anon THP as anon."""
    out = bytearray()
    end = start + length
    addr = start
    if stride % PAGE:
        for a in range(start, end, stride):
            t = mm.pte.get(a >> PTE_SHIFT)
            if t is None:
                out.append(E_NONE)
            elif t.huge:
                out.append(E_ANON if t.huge == HUGE_ANON else E_ZERO)
            else:
                out.append(t.entries[(a & (PTE_SPAN - 1)) >> PAGE_SHIFT])
        return bytes(out)
    while addr < end:
        slot = addr >> PTE_SHIFT
        base = slot << PTE_SHIFT
        seg_end = min(end, base + PTE_SPAN)
        n = (seg_end - addr + stride - 1) // stride
        last = addr + (n - 1) * stride
        t = mm.pte.get(slot)
        if t is None:
            out += bytes([E_NONE]) * n
        elif t.huge:
            out += bytes([E_ANON if t.huge == HUGE_ANON else E_ZERO]) * n
        else:
            i0 = (addr - base) >> PAGE_SHIFT
            i1 = ((last - base) >> PAGE_SHIFT) + 1
            out += t.entries[i0:i1:stride >> PAGE_SHIFT]
        addr = last + stride
    return bytes(out)


class Recorder:
    """Wraps ``AddressSpace.touch`` (class-wide) to log every access, and
    ``reclaim_table`` to check that no table under userfaultfd is freed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log: list[Access] = []
        self.reactive: list[Access] = []
        self.uffd_scanned = 0  # candidate tables seen under a userfaultfd range
        self.uffd_freed = 0
        self.read_back: list[tuple[str, str | None, str]] = []
        touch = AddressSpace.touch
        reclaim_table = AddressSpace.reclaim_table
        rec = self

        def recorded_touch(mm: AddressSpace, start: int, length: int, write: bool,
                           stride: int = PAGE) -> str | None:
            err = touch(mm, start, length, write, stride)
            caller = sys._getframe(1).f_code.co_name
            if err is None:
                data = _accessed_classes(mm, start, length, stride)
                digest = hashlib.blake2b(data, digest_size=16).digest()
                counts = (data.count(E_ZERO), data.count(E_FILE), data.count(E_ANON))
            else:  # where a failed access stopped is not recorded: compare the error
                digest, counts = b"", (0, 0, 0)
            access = Access(write, start, length, stride, err, digest, *counts)
            (rec.reactive if caller in REACTIVE else rec.log).append(access)
            return err

        def checked_reclaim(mm: AddressSpace, slot: int, allowed: frozenset[TableClass]) -> int:
            t = mm.pte.get(slot)
            uffd = t is not None and t.cls != TableClass.PINNED and mm.slot_is_uffd(slot)
            z = reclaim_table(mm, slot, allowed)
            rec.uffd_scanned += uffd
            rec.uffd_freed += uffd and z >= 0
            return z

        monkeypatch.setattr(AddressSpace, "touch", recorded_touch)
        monkeypatch.setattr(AddressSpace, "reclaim_table", checked_reclaim)


def scan_everything(sim: Simulation) -> None:
    """The most aggressive reclaim: every process, every table, deepest class,
    every tick (the global pass of the CLI's ``aggressive`` policy skips
    processes with nothing reclaimable; this one scans pinned and userfaultfd
    tables too, so the model has to refuse them itself)."""
    for p in sim.alive:
        if p.mm.pte:
            sim.reclaim(p, DEPTHS[-1], len(p.mm.pte))


def _replay(family: str, params: dict[str, Any], aggressive: bool,
            monkeypatch: pytest.MonkeyPatch, ticks: int = 110) -> tuple[Recorder, Simulation]:
    sc = _scenario([{"family": family, "params": params}], ROOMY, ticks=ticks)
    with monkeypatch.context() as mp:
        rec = Recorder(mp)
        sim = Simulation(sc, np.random.default_rng(2024))
        for _ in range(ticks):
            sim.step()
            if aggressive:
                scan_everything(sim)
    rec.read_back = _read_back(sim)
    return rec, sim


def _read_back(sim: Simulation) -> list[tuple[str, str | None, str]]:
    """Read every page of every readable VMA of every live process once more and
    digest the data class each page shows: what any later read would see."""
    out = []
    for p in sim.alive:
        for v in list(p.mm.vmas):
            if not v.flags & VM_READ:
                continue
            err = p.mm.touch(v.start, v.end - v.start, False)
            data = _accessed_classes(p.mm, v.start, v.end - v.start, PAGE)
            digest = hashlib.blake2b(data, digest_size=16).hexdigest()
            out.append((f"{p.name} {v.start:#x} zero={data.count(E_ZERO)} "
                        f"file={data.count(E_FILE)} anon={data.count(E_ANON)}", err, digest))
    return out


def _first_difference(a: list[Access], b: list[Access]) -> Iterator[str]:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            yield f"access #{i}: without reclaim {x}, with reclaim {y}"
            return
    if len(a) != len(b):
        yield f"{len(a)} accesses without reclaim, {len(b)} with"


_TOTALS: dict[str, int] = {"freed": 0, "refault_entries": 0, "refault_tables": 0}


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_data_preservation(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    family, params = FAMILY_CASES[case]
    base, sim0 = _replay(family, params, False, monkeypatch)
    rec, sim = _replay(family, params, True, monkeypatch)
    assert not any(r.failure or r.oom_kill for r in sim0.history + sim.history)
    assert base.log, f"{case}: the workload made no access"
    assert not base.reactive
    diff = list(_first_difference(base.log, rec.log))
    assert not diff, f"{case}: reclaim changed what an access sees: {diff[0]}"
    # Re-reads by a hog that fights reclaim read zero pages, as the first read did.
    for a in rec.reactive:
        assert a.err is None and a.write is False and a.file == a.anon == 0, a
    assert rec.uffd_freed == 0, f"{case}: a table under a userfaultfd range was freed"
    if family == "uffd":
        assert rec.uffd_scanned > 0, "reclaim never met a table under userfaultfd"
    # Whatever the workload wrote or read, a final read of all its memory agrees.
    assert base.read_back, f"{case}: nothing to read back"
    assert base.read_back == rec.read_back, f"{case}: a final read differs after reclaim"
    hist = sim.history
    _TOTALS["freed"] += sum(r.reclaim_freed for r in hist)
    _TOTALS["refault_entries"] += sum(r.refault_entries for r in hist)
    _TOTALS["refault_tables"] += sum(r.refault_tables for r in hist)


def test_data_preservation_was_exercised() -> None:
    """Runs after the cases above (file order): reclaim freed tables and the
    workloads touched reclaimed tables and entries again."""
    if _TOTALS["freed"] == 0:
        pytest.skip("run together with test_data_preservation")
    assert _TOTALS["refault_tables"] > 0
    assert _TOTALS["refault_entries"] > 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_a_plain_open_s_mode_and_leaves_the_umask(
        tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file gets 0666 less the umask, as open() gives it; a replaced file keeps its
    mode, even bits the umask would take; the process umask is never changed, not even
    for a moment (a thread creating a file meanwhile would get the wrong mode)."""
    import os

    from ptreclaim.envs.sim.fileio import write_text_atomic

    old = os.umask(umask)
    real_umask = os.umask

    def no_umask(mask: int) -> int:
        raise AssertionError(f"os.umask({mask:#o}) called while writing")

    monkeypatch.setattr(os, "umask", no_umask)
    try:
        new = tmp_path / "new.txt"
        write_text_atomic(new, "a")
        assert new.stat().st_mode & 0o7777 == 0o666 & ~umask
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        kept.chmod(0o664)
        write_text_atomic(kept, b"b")
        assert kept.stat().st_mode & 0o7777 == 0o664 and kept.read_bytes() == b"b"
    finally:
        monkeypatch.undo()
        assert real_umask(old) == umask  # what the writes left in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt", "new.txt"]


def test_atomic_write_replaces_a_symlink_and_cleans_up_after_a_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink where the file goes is replaced, not written through (a crafted folder
    cannot aim a write elsewhere); a write that fails leaves neither a temporary file
    nor an open descriptor, and the old file as it was; a replaced file keeps its
    set-group-ID bit (for a non-root writer, whose write clears it, below)."""
    import os

    from ptreclaim.envs.sim import fileio

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep")
    link = tmp_path / "report.md"
    link.symlink_to(elsewhere)
    fileio.write_text_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert elsewhere.read_text() == "keep"

    sgid = tmp_path / "sgid.txt"
    sgid.write_text("old")
    sgid.chmod(0o2755)
    fileio.write_text_atomic(sgid, "new")
    assert sgid.stat().st_mode & 0o7777 == 0o2755

    fds = len(os.listdir("/proc/self/fd"))

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", broken_fsync)
    for _ in range(3):
        with pytest.raises(OSError, match="No space"):
            fileio.write_text_atomic(sgid, "lost")
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert sgid.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "report.md",
                                                          "sgid.txt"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run a write as another user")
def test_atomic_write_keeps_set_id_bits_for_a_non_root_writer() -> None:
    """A non-root process's write clears a file's set-user/group-ID bits; the writer sets
    the old mode after writing, so a replaced file keeps them."""
    import tempfile

    # Not under pytest's tmp_path: its folders are private to root.
    folder = Path(tempfile.mkdtemp(prefix="ptreclaim-setid-"))
    folder.chmod(0o777)
    try:
        _write_as_nobody(folder)
    finally:
        shutil.rmtree(folder)


def _write_as_nobody(folder: Path) -> None:
    target = folder / "tool.sh"
    target.write_text("old")
    nobody = 65534
    os.chown(target, nobody, nobody)
    target.chmod(0o6755)
    code = ("from ptreclaim.envs.sim.fileio import write_text_atomic; "
            f"write_text_atomic({str(target)!r}, 'new')")
    subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
                    sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o7777 == 0o6755
