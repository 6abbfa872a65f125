"""Kernel designs as options of the model (envs/sim/mechanisms.py) and scripts/whatif.py."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptreclaim.cli import whatif as cli
from ptreclaim.envs.configio import load_scenario, scenario_from_data
from ptreclaim.envs.kernel.oracle import OracleError, parse_output
from ptreclaim.envs.kernel.zapcheck import ZapAnswer
from ptreclaim.envs.sim.config import ConfigError, build
from ptreclaim.envs.sim.fast.simulation import supports
from ptreclaim.envs.sim.machine import MachineConfig
from ptreclaim.envs.sim.mechanisms import (
    ACTIVE,
    DESIGN_NAMES,
    DESIGNS,
    MechanismConfig,
    madvise_reclaim_pgtables,
    refcount_frees,
)
from ptreclaim.envs.sim.pagetable import PAGE, PTE_SHIFT, PTE_SPAN, AddressSpace, TableClass
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from ptreclaim.envs.sim.workloads.base import BASE
from ptreclaim.envs.sim.workloads.trace import resolve_trace
from ptreclaim.envs.whatif import (
    markdown_table,
    plot_input,
    resolve_input,
    run_design,
    trace_scenario,
    with_design,
)

MiB = 1 << 20
SCENARIOS = Path(__file__).resolve().parents[1] / "configs" / "scenarios"


def _records(scenario: ScenarioConfig, seed: int = 0) -> list[tuple[Any, ...]]:
    sim = Simulation(scenario, np.random.default_rng(seed))
    return [dataclasses.astuple(r) for r in sim.run()]


def _short(name: str, ticks: int) -> ScenarioConfig:
    return dataclasses.replace(load_scenario(SCENARIOS / f"{name}.yaml"), ticks=ticks)


def _sim(design: str, workloads: tuple[WorkloadSpec, ...] = (), **mech: Any) -> Simulation:
    scen = ScenarioConfig(machine=MachineConfig(ram_mib=1024, cpus=4), workloads=workloads,
                          ticks=10, jitter=0.0)
    scen = dataclasses.replace(scen, mechanism=build(MechanismConfig, mech, "mechanism"))
    return Simulation(with_design(scen, design), np.random.default_rng(0))


# -- the model's own two kernels are unchanged ---------------------------------

@pytest.mark.parametrize("name", ["redis_jemalloc", "balloon_host_hog", "postcopy_uffd"])
def test_the_model_kernels_by_design_name_give_the_same_records(name: str) -> None:
    """``on_zap`` and ``none`` are the model's 6.14+ and pre-6.14 kernels: choosing them
    by design changes no record (the default, no design, is the model as before)."""
    scen = _short(name, 150)
    assert _records(with_design(scen, "on_zap")) == _records(scen)
    old = dataclasses.replace(scen, pt_reclaim=False)
    assert _records(with_design(scen, "none")) == _records(old)


def test_only_the_designs_with_code_leave_the_compiled_core() -> None:
    scen = _short("redis_jemalloc", 10)
    for design in DESIGN_NAMES:
        reason = supports(with_design(scen, design))
        if design in ACTIVE:
            assert reason is not None and design in reason and "\n" not in reason
        else:
            assert reason is None, design


# -- configuration ------------------------------------------------------------------

@pytest.mark.parametrize(("data", "match"), [
    ({"mechanism": {"design": "refcont"}}, r"did you mean 'refcount'"),
    ({"mechanism": {"desing": "refcount"}}, r"unknown key 'desing' \(did you mean 'design'"),
    ({"mechanism": {"design": "none"}}, r"add 'pt_reclaim: false'"),
    ({"pt_reclaim": False, "mechanism": {"design": "scan_pmd_lock"}},
     r"contradicts mechanism.design 'scan_pmd_lock'"),
    ({"mechanism": {"limits": {"soft_mib": 80, "hard_mib": 64}}}, r"must not exceed"),
    ({"mechanism": {"scanner": {"depth": 3}}}, r"scanner.depth: 3 is out of range"),
    ({"mechanism": {"scanner": {"interval_ticks": 0}}}, r"interval_ticks: 0 is out of range"),
])
def test_bad_mechanism_configs_are_one_line(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        scenario_from_data({"name": "x", **data}, "x.yaml")
    assert "\n" not in str(err.value)


def test_a_yaml_design_runs() -> None:
    scen = scenario_from_data({"name": "x", "ticks": 5, "mechanism": {
        "design": "scan_pmd_lock_young", "scanner": {"budget": 7, "min_idle": 3}}}, "x.yaml")
    assert scen.mechanism.active and scen.mechanism.scanner.budget == 7
    Simulation(scen, np.random.default_rng(0)).run()


def test_every_design_names_its_source_and_kernel_change() -> None:
    assert list(DESIGNS) == list(DESIGN_NAMES)
    for d in DESIGNS.values():
        assert d.title and d.kernel and d.source and d.change
        if d.name != "none":
            assert d.files > 0 and d.added > 0
        if d.estimate:
            assert d.change.startswith("estimate")


# -- refcount: free on the last zap ---------------------------------------------------

def _process(sim: Simulation) -> Any:
    return sim.spawn("p", "test", cpus=2)


def test_refcount_frees_what_many_small_zaps_empty() -> None:
    sim = _sim("refcount")
    p = _process(sim)
    mm = p.mm
    mm.mmap(BASE, 8 * MiB)
    mm.touch(BASE, 8 * MiB, True, 64 << 10)
    slot = BASE >> PTE_SHIFT
    mm.madvise(BASE, MiB, "DONTNEED")
    assert slot in mm.pte  # a page at 1 MiB is left
    mm.madvise(BASE + MiB, MiB, "DONTNEED")
    assert slot not in mm.pte and mm.stats.pte_reclaimed_on_zap == 0
    assert sim.mechanism.stats.freed == 1 and p.stall_us > 0
    # A zero-page entry is not none: a read keeps the table.
    mm.touch(BASE + 2 * MiB, 2 * MiB, False, PAGE)
    mm.madvise(BASE + 2 * MiB, MiB, "DONTNEED")
    assert slot + 1 in mm.pte
    # The table comes back on the next touch: a re-fault.
    mm.touch(BASE, PAGE, True)
    assert mm.stats.refault_tables == 1
    records = sim.mechanism.tick()
    assert sum(r.freed for r in records) == 1 and sim.mechanism.stats.cpu_us > 0


def test_refcount_leaves_unmapped_slots_to_munmap_and_frees_partly_unmapped_ones() -> None:
    sim = _sim("refcount")
    mm = _process(sim).mm
    mm.mmap(BASE, 4 * MiB)
    mm.touch(BASE, 4 * MiB, True, MiB)
    freed = mm.stats.pte_freed
    mm.madvise(BASE, MiB, "DONTNEED")  # slot 0 keeps its page at 1 MiB
    mm.munmap(BASE + MiB, MiB)  # its last page goes; [0, 1M) still mapped
    assert (BASE >> PTE_SHIFT) not in mm.pte and sim.mechanism.stats.freed == 1
    mm.munmap(BASE + 2 * MiB, 2 * MiB)  # the whole slot: free_pgtables, as in every design
    assert sim.mechanism.stats.freed == 1 and mm.stats.pte_freed == freed + 2
    mm.check_invariants()


def test_refcount_frees_exactly_the_empty_tables_under_a_vma() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 6 * MiB)
    mm.touch(BASE, 6 * MiB, True, MiB)
    mm.madvise(BASE + MiB, PAGE, "DONTNEED")
    mm.madvise(BASE + 2 * MiB, 2 * PAGE, "DONTNEED")  # slot 1 keeps [3M]
    slots = sorted(mm.pte)
    mm.madvise(BASE, PAGE, "DONTNEED")  # slot 0 now empty, not freed (kernel as measured)
    assert refcount_frees(mm, slots) == [BASE >> PTE_SHIFT]


def test_a_forked_address_space_keeps_the_design() -> None:
    sim = _sim("refcount")
    mm = _process(sim).mm
    assert mm.fork().zap_listener == mm.zap_listener


# -- MADV_RECLAIM_PGTABLES ----------------------------------------------------------

def test_the_advice_frees_empty_tables_it_overlaps_and_zero_ones_it_covers() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 8 * MiB)
    mm.touch(BASE, 2 * MiB, True, PAGE)
    mm.madvise(BASE, 2 * MiB - PAGE, "DONTNEED")
    mm.madvise(BASE + 2 * MiB - PAGE, PAGE, "DONTNEED")  # slot 0: empty, kept (R7)
    mm.touch(BASE + 2 * MiB, 4 * MiB, False, PAGE)  # slots 1, 2: zero-page tables
    mm.touch(BASE + 6 * MiB, PAGE, True)  # slot 3: pinned
    s0 = BASE >> PTE_SHIFT
    examined, freed = madvise_reclaim_pgtables(mm, BASE + MiB, 2 * MiB + MiB)
    # slot 0 is empty (partly covered: freed), slot 1 zero and covered whole (freed).
    assert examined == 2 and freed == [1, 1, 0]
    examined, freed = madvise_reclaim_pgtables(mm, BASE + 4 * MiB + PAGE, 4 * MiB)
    assert (examined, freed) == (2, [0, 0, 0])  # slot 2 zero, partly covered; slot 3 pinned
    assert s0 not in mm.pte and s0 + 1 not in mm.pte and {s0 + 2, s0 + 3} <= set(mm.pte)
    mm.touch(BASE + 2 * MiB, 2 * MiB, False, PAGE)
    assert mm.stats.refault_tables == 1 and mm.stats.refault_entries == 512


def test_the_allocator_issues_the_advice_only_under_the_madvise_design() -> None:
    scen = _short("redis_jemalloc", 450)
    on_zap = Simulation(with_design(scen, "on_zap"), np.random.default_rng(0))
    on_zap.run()
    mad = Simulation(with_design(scen, "madvise"), np.random.default_rng(0))
    mad.run()
    assert on_zap.mechanism.stats.advice_calls == 0
    assert mad.mechanism.stats.advice_calls > 0 and mad.mechanism.stats.freed > 0
    assert mad.history[-1].pt_pages < on_zap.history[-1].pt_pages


def test_a_trace_issues_the_advice_after_each_dontneed() -> None:
    scen = trace_scenario("redis_jemalloc", ticks=200)
    runs = {d: run_design(scen, d) for d in ("on_zap", "madvise", "refcount")}
    assert runs["on_zap"]["summary"]["advice_calls"] == 0
    mad = runs["madvise"]["summary"]
    assert mad["advice_calls"] > 0 and mad["freed_design"] > 0
    assert mad["left_empty"] < runs["on_zap"]["summary"]["left_empty"]
    assert runs["refcount"]["summary"]["left_empty"] < runs["on_zap"]["summary"]["left_empty"]


# -- scanners and limits -------------------------------------------------------------

def _hog(variant: str = "zeropage", size_gib: int = 8) -> tuple[WorkloadSpec, ...]:
    return (WorkloadSpec("hog", {"variant": variant, "size_gib": size_gib,
                                 "tables_per_tick": 64}),)


@pytest.mark.parametrize("lock", ["mmap_write", "pmd_lock"])
def test_the_scanner_locks_as_its_variant_says(lock: str) -> None:
    sim = _sim(f"scan_{lock}", _hog())
    sim.run(6)
    st = sim.mechanism.stats
    assert st.freed > 0 and st.young_cleared == 0
    if lock == "mmap_write":
        assert st.lock_us == pytest.approx(st.cpu_us)
    else:  # the PMD and PTE locks, a re-read and the free, per freed table
        c = sim.costs
        per_table = c.pmd_lock_us + c.scan_table_us + c.free_table_us
        assert st.lock_us == pytest.approx(st.freed * per_table) and st.lock_us < st.cpu_us


def test_young_bits_keep_the_scanner_off_hot_tables() -> None:
    """A table touched since the last scan is skipped unread and never freed."""
    for design, hot_freed in (("scan_pmd_lock", True), ("scan_pmd_lock_young", False)):
        sim = _sim(design, scanner={"budget": 1000, "min_idle": 2, "depth": 1})
        mm = _process(sim).mm
        mm.mmap(BASE, 64 * MiB)
        mm.touch(BASE, 64 * MiB, False, 2 * MiB)  # 32 zero-page tables
        hot = BASE >> PTE_SHIFT
        freed_hot = False
        for _ in range(6):
            mm.touch(BASE, PAGE, False)  # the first one is read every tick
            sim.mechanism.tick()
            freed_hot |= mm.stats.refault_tables > 0
        assert freed_hot == hot_freed, design
        st = sim.mechanism.stats
        assert st.freed >= 31
        if design.endswith("_young"):
            assert hot in mm.pte
            assert st.young_cleared > st.examined  # the hot table costs a bit clear only


def test_limits_cap_a_hog_and_reclaim_only_under_pressure() -> None:
    sim = _sim("limits", _hog("write", 64), limits={"soft_mib": 0.5, "hard_mib": 1.0})
    sim.run(10)
    hog = sim.procs[0]
    assert hog.pt_hard_limit_bytes == MiB and hog.throttled_until > 0
    assert any("throttled" in msg for _, msg in sim.events)
    quiet = _sim("limits", _hog("zeropage"), limits={"soft_mib": 0.0, "hard_mib": 1000.0})
    quiet.run(5)
    assert quiet.mechanism.stats.freed == 0  # plenty of free memory: nothing reclaimed
    eager = _sim("limits", _hog("zeropage"), limits={"soft_mib": 0.0, "hard_mib": 1000.0,
                                                     "pressure_only": False})
    eager.run(5)
    assert eager.mechanism.stats.freed > 0


# -- what-if runs ---------------------------------------------------------------------

def test_a_run_is_deterministic_and_its_workloads_the_same_in_every_design() -> None:
    scen = _short("balloon_host_hog", 60)
    a = run_design(scen, "scan_pmd_lock", seed=3)
    b = run_design(scen, "scan_pmd_lock", seed=3)
    assert a == b
    configs = {}
    for design in ("on_zap", "refcount", "limits"):
        sim = Simulation(with_design(scen, design), np.random.default_rng(3))
        configs[design] = [w.config for w in sim.workloads]
    assert configs["on_zap"] == configs["refcount"] == configs["limits"]


def test_inputs_resolve_to_scenarios_and_traces() -> None:
    inp = resolve_input(str(SCENARIOS / "redis_jemalloc.yaml"), ticks=7)
    assert (inp.kind, inp.label, inp.scenario.ticks) == ("scenario", "redis_jemalloc", 7)
    tr = resolve_input("churn_glibc_trim")
    assert tr.kind == "trace" and tr.label == "trace_churn_glibc_trim"
    length = resolve_trace("churn_glibc_trim").duration_ms
    assert tr.scenario.ticks == math.ceil(length * 1.5 / 100)  # + 50 %, 100 ms ticks
    with pytest.raises(ConfigError, match="not a shipped trace"):
        resolve_input("no_such_trace")


def test_tables_and_plots() -> None:
    scen = trace_scenario("churn_glibc_trim", ticks=40)
    runs = [run_design(scen, d) for d in ("none", "on_zap", "refcount", "scan_mmap_write")]
    table = markdown_table(runs)
    assert table.count("\n") == 6 and "`refcount`" in table and "41 files" in table
    png = plot_input(scen.name, runs, 100)
    assert png.startswith(b"\x89PNG")


# -- the kernel probe's output ---------------------------------------------------------

def test_zap_lines_belong_to_the_next_op() -> None:
    res = parse_output("0\tok\n#zap 0 0 1\n#zap 0 2048 0\n12\tok\n")
    assert res[0].zap == () and res[1].zap == ("0 0 1", "0 2048 0")
    with pytest.raises(OracleError, match="belong to no op"):
        parse_output("0\tok\n#zap 0 0 1\n")


def test_a_zap_answer_compares_none_ness_not_counts() -> None:
    same = ZapAnswer(0, "madvise 0 0 1M DONTNEED", 24, 24, {(0, 0): 16}, {(0, 0): 1},
                     (), ())
    assert same.ok and same.count_diffs == {(0, 0): (16, 1)}
    assert not dataclasses.replace(same, model_used={(0, 0): 0}).ok
    assert not dataclasses.replace(same, model_frees=((0, 0),)).ok


# -- the command line -----------------------------------------------------------------

def test_parse_mechanisms() -> None:
    assert cli.parse_mechanisms(["all"]) == list(DESIGN_NAMES)
    assert cli.parse_mechanisms(["limits,refcount", "none"]) == ["none", "refcount", "limits"]
    with pytest.raises(ConfigError, match=r"did you mean 'scan_pmd_lock'"):
        cli.parse_mechanisms(["scan_pmd_lok"])


@pytest.mark.parametrize("argv", [
    ["redis_jemalloc", "--mechanisms", "refcont"],
    ["redis_jemalloc", "--seed", "-1"],
    ["redis_jemalloc", "--jobs", "0"],
    ["redis_jemalloc", "--ticks", "0"],
    ["no_such_trace"],
    ["missing.yaml"],
    ["redis_jemalloc", "redis_jemalloc"],
])
def test_bad_input_is_one_line_and_status_2(argv: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("whatif.py: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "whatif.json").exists()


def test_the_command_writes_its_outputs_and_keeps_them(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out = tmp_path / "out"
    argv = ["churn_glibc_trim", str(SCENARIOS / "balloon_host_hog.yaml"), "--ticks", "25",
            "--mechanisms", "on_zap,refcount,madvise", "--jobs", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "trace_churn_glibc_trim" in capsys.readouterr().out
    data = json.loads((out / "whatif.json").read_text())
    assert [i["label"] for i in data["inputs"]] == ["trace_churn_glibc_trim", "balloon_host_hog"]
    assert [r["design"] for r in data["inputs"][1]["runs"]] == ["on_zap", "refcount", "madvise"]
    series = np.load(out / "series.npz")
    assert len(series["balloon_host_hog/madvise/vmpte_mib"]) == 25
    for name in ("whatif.md", "command.txt", "trace_churn_glibc_trim.png",
                 "balloon_host_hog.png"):
        assert (out / name).stat().st_size > 0
    # One worker or two: the same numbers.
    again = tmp_path / "again"
    assert cli.main([*argv[:-4], "--out", str(again), "-q"]) == 0
    assert json.loads((again / "whatif.json").read_text()) == data
    before = (out / "whatif.md").read_text()
    assert cli.main([*argv, "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "whatif.md").read_text() == before


def test_every_slot_a_design_frees_was_a_table() -> None:
    """Sanity of the accounting: a design's frees are tables that existed, so the on-zap
    and design counts together never exceed the tables ever allocated."""
    scen = _short("redis_jemalloc", 200)
    sim = Simulation(with_design(scen, "refcount"), np.random.default_rng(0))
    sim.run()
    allocated = sum(p.mm.stats.pte_allocated for p in sim.procs)
    on_zap = sum(p.mm.stats.pte_reclaimed_on_zap for p in sim.procs)
    assert 0 < sim.mechanism.stats.freed <= allocated - on_zap
    assert sim.mechanism.stats.freed_by_class[TableClass.EMPTY] == sim.mechanism.stats.freed
    assert PTE_SPAN == 1 << PTE_SHIFT
