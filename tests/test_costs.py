"""Cost model: every constant has a source, validation, and the shape of each price."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.sim.costs import (
    DEFAULT_COSTS,
    LOCKS,
    PTRS_PER_PTE,
    SOURCES,
    CostModel,
)

FIELDS = [f.name for f in dataclasses.fields(CostModel)]
FLOAT_FIELDS = [name for name in FIELDS if name != "tlb_single_page_flush_ceiling"]

# A pass over a process with a thousand tables that frees a few dozen of them, some
# file-backed, and flushes their spans on this CPU and one other.
PASS = {"scanned": 1000, "freed": 40, "freed_file": 10, "flushed_pages": 40 * PTRS_PER_PTE,
        "remote_cpus": 1}


def test_every_field_has_a_source_and_every_source_a_field() -> None:
    assert set(SOURCES) == set(FIELDS)
    for name, source in SOURCES.items():
        assert source.strip(), name
        assert "\n" not in source, f"{name}: a source is one line"


def test_every_source_names_a_figure() -> None:
    # A source without any number cannot say which figure the constant came from.
    for name, source in SOURCES.items():
        assert any(ch.isdigit() for ch in source), name


def test_defaults_validate() -> None:
    assert CostModel() == DEFAULT_COSTS
    for name in FLOAT_FIELDS:
        value = getattr(DEFAULT_COSTS, name)
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, name
    assert DEFAULT_COSTS.tlb_single_page_flush_ceiling == 33


def test_model_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_COSTS.ipi_us = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "1", True])
def test_bad_value_names_the_field(name: str, bad: object) -> None:
    kwargs: dict[str, Any] = {name: bad}
    with pytest.raises(ValueError) as err:
        CostModel(**kwargs)
    message = str(err.value)
    assert name in message and ">= 0" in message
    assert "\n" not in message


def test_ceiling_must_be_a_whole_number_of_pages() -> None:
    with pytest.raises(ValueError, match=r"tlb_single_page_flush_ceiling.*integer"):
        CostModel(tlb_single_page_flush_ceiling=33.5)  # type: ignore[arg-type]
    assert CostModel(tlb_single_page_flush_ceiling=0).tlb_single_page_flush_ceiling == 0


def test_ints_are_stored_as_floats() -> None:
    model = CostModel(ipi_us=2)
    assert isinstance(model.ipi_us, float) and model == CostModel(ipi_us=2.0)


def test_from_mapping_rejects_unknown_keys_with_a_hint() -> None:
    assert CostModel.from_mapping({"ipi_us": 2.0}).ipi_us == 2.0
    assert CostModel.from_mapping({}) == DEFAULT_COSTS
    with pytest.raises(ValueError, match="did you mean 'ipi_us'"):
        CostModel.from_mapping({"ipi_usec": 2.0})
    with pytest.raises(ValueError, match="ipi_us"):
        CostModel.from_mapping({"ipi_us": -2.0})


def test_tlb_flush_switches_to_a_full_flush_above_the_ceiling() -> None:
    c = DEFAULT_COSTS
    ceiling = c.tlb_single_page_flush_ceiling
    assert c.tlb_flush_us(0, 0) == 0.0
    assert c.tlb_flush_us(1, 0) == pytest.approx(c.invlpg_us)
    assert c.tlb_flush_us(ceiling, 0) == pytest.approx(ceiling * c.invlpg_us)
    for pages in (ceiling + 1, PTRS_PER_PTE, 10**6):
        assert c.tlb_flush_us(pages, 0) == pytest.approx(c.full_flush_us)
    # Per-page flushing grows with the pages up to the ceiling, a full flush does not.
    assert c.tlb_flush_us(2, 0) > c.tlb_flush_us(1, 0)
    assert c.tlb_flush_us(10**6, 0) == c.tlb_flush_us(ceiling + 1, 0)
    # With a ceiling of 0 every flush is a full one (the kernel's debugfs knob allows it).
    assert CostModel(tlb_single_page_flush_ceiling=0).tlb_flush_us(1, 0) == pytest.approx(
        c.full_flush_us
    )


def test_tlb_flush_grows_with_remote_cpus() -> None:
    c = DEFAULT_COSTS
    for pages in (1, 1000):
        costs = [c.tlb_flush_us(pages, cpus) for cpus in range(5)]
        assert all(a < b for a, b in itertools.pairwise(costs))
        assert costs[3] - costs[2] == pytest.approx(c.ipi_us)


def test_mmap_write_stalls_the_whole_pass() -> None:
    c = DEFAULT_COSTS
    cpu = c.reclaim_pass_cpu_us(**PASS, lock="mmap_write")
    stall = c.reclaim_pass_stall_us(**PASS, lock="mmap_write")
    assert stall == pytest.approx(cpu)
    assert stall > PASS["scanned"] * c.scan_table_us + c.mmap_write_lock_us


def test_pmd_lock_stalls_far_less_for_the_same_pass() -> None:
    c = DEFAULT_COSTS
    mmap_stall = c.reclaim_pass_stall_us(**PASS, lock="mmap_write")
    pmd_stall = c.reclaim_pass_stall_us(**PASS, lock="pmd_lock")
    assert 0 < pmd_stall < mmap_stall / 10
    # Only freed tables block faults: a pass that frees nothing stalls nobody.
    idle = {**PASS, "freed": 0, "freed_file": 0}
    assert c.reclaim_pass_stall_us(**idle, lock="pmd_lock") == 0.0
    assert c.reclaim_pass_stall_us(**idle, lock="mmap_write") > 0.0


def test_pass_cpu_cost_adds_up() -> None:
    c = DEFAULT_COSTS
    common = (
        PASS["scanned"] * c.scan_table_us
        + PASS["freed"] * c.free_table_us
        + PASS["freed_file"] * c.rmap_lock_us
        + c.tlb_flush_us(PASS["flushed_pages"], PASS["remote_cpus"])
    )
    assert c.reclaim_pass_cpu_us(**PASS, lock="mmap_write") == pytest.approx(
        common + c.mmap_write_lock_us
    )
    # pmd_lock re-reads each table it frees under the locks: more CPU, fewer stalls.
    assert c.reclaim_pass_cpu_us(**PASS, lock="pmd_lock") == pytest.approx(
        common + PASS["freed"] * (c.pmd_lock_us + c.scan_table_us)
    )
    assert c.reclaim_pass_cpu_us(0, 0, 0, 0, 0, "mmap_write") == 0.0
    # File tables cost the rmap lock on top.
    file_pass = {**PASS, "freed_file": PASS["freed"]}
    for lock in LOCKS:
        assert c.reclaim_pass_cpu_us(**file_pass, lock=lock) > c.reclaim_pass_cpu_us(
            **PASS, lock=lock
        )


def test_pass_rejects_inconsistent_counts() -> None:
    c = DEFAULT_COSTS
    with pytest.raises(ValueError, match="lock"):
        c.reclaim_pass_cpu_us(**PASS, lock="page_table_lock")
    with pytest.raises(ValueError, match="freed"):
        c.reclaim_pass_cpu_us(1, 2, 0, 0, 0, "mmap_write")
    with pytest.raises(ValueError, match="freed_file"):
        c.reclaim_pass_stall_us(2, 1, 2, 0, 0, "pmd_lock")
    with pytest.raises(ValueError, match="scanned"):
        c.reclaim_pass_cpu_us(-1, 0, 0, 0, 0, "mmap_write")
    with pytest.raises(ValueError, match="remote_cpus"):
        c.reclaim_pass_stall_us(1, 1, 0, 0, -1, "pmd_lock")
    with pytest.raises(ValueError, match="pages"):
        c.tlb_flush_us(1.5, 0)  # type: ignore[arg-type]


def test_numpy_counts_are_accepted() -> None:
    c = DEFAULT_COSTS
    counts = {k: np.int64(v) for k, v in PASS.items()}
    assert c.reclaim_pass_cpu_us(**counts, lock="pmd_lock") == pytest.approx(
        c.reclaim_pass_cpu_us(**PASS, lock="pmd_lock")
    )


def test_uffd_refaults_cost_more_than_ordinary_ones() -> None:
    c = DEFAULT_COSTS
    for tables, entries in ((1, 1), (1, 512), (10, 100)):
        assert c.refault_us(tables, entries, uffd=True) > c.refault_us(tables, entries, uffd=False)
    assert c.refault_us(3, 7, uffd=False) == pytest.approx(
        3 * c.table_alloc_us + 7 * c.minor_fault_us
    )
    # An empty table has no entries: re-allocating it costs the same in a uffd region.
    assert c.refault_us(5, 0, uffd=True) == pytest.approx(c.refault_us(5, 0, uffd=False))
    assert c.refault_us(0, 0, uffd=True) == 0.0


def test_orders_of_magnitude() -> None:
    # The relations the reward relies on, whatever the exact figures: a stall costs more
    # than a fault, a kill more than anything a reclaim pass could cost.
    c = DEFAULT_COSTS
    assert c.invlpg_us < c.minor_fault_us < c.uffd_refault_us < c.alloc_failure_stall_us
    assert c.full_flush_us <= c.tlb_single_page_flush_ceiling * c.invlpg_us * 1.01
    big_pass = c.reclaim_pass_cpu_us(100_000, 100_000, 0, 10**6, 64, "mmap_write")
    assert c.oom_kill_harm_us > 10 * big_pass
