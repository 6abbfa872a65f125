"""Scenarios where state matters (issue 14): the tenants' daily cycle and bursts that
build up (``machine.TenantConfig``), and the ``phased`` family, whose tables turn from
cold to hot and back.  Each test checks what the docstrings promise, on the reference."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from ptreclaim.envs.sim.config import ConfigError, build
from ptreclaim.envs.sim.machine import Machine, MachineConfig, TenantConfig
from ptreclaim.envs.sim.pagetable import TableClass
from ptreclaim.envs.sim.reclaim import DEPTHS
from ptreclaim.envs.sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from ptreclaim.envs.sim.workloads.phased import Phased, PhasedConfig

# -- tenants -----------------------------------------------------------------------------


def _tenant_trace(tenants: TenantConfig, ticks: int, seed: int = 0) -> list[float]:
    m = Machine(MachineConfig(ram_mib=1024, tenants=tenants), np.random.default_rng(seed))
    out = []
    for _ in range(ticks):
        m.step_tenants()
        out.append(m.tenant_pages / m.normal_pages)
    return out


def test_defaults_draw_as_before() -> None:
    """The new knobs at their defaults leave the walk exactly as it was: same draws,
    same values (the pre-change formula, written out here)."""
    t = TenantConfig(burst_prob=0.05)
    m = Machine(MachineConfig(ram_mib=1024, tenants=t), np.random.default_rng(3))
    rng = np.random.default_rng(3)
    z = m.normal_pages
    pages, left = float(t.base_fraction * z), 0
    for _ in range(500):
        m.step_tenants()
        base = t.base_fraction * z
        if left > 0:
            left -= 1
            base += t.burst_fraction * z
        elif rng.random() < t.burst_prob:
            left = t.burst_ticks
        pages += t.reversion * (base - pages) + rng.normal(0.0, t.volatility * z)
        pages = min(max(pages, 0.0), float(z))
        assert m.tenant_pages == pages


def test_diurnal_cycle_follows_the_sine() -> None:
    """Without noise the demand reverts to base + amplitude x sin(...): it peaks a
    quarter period after phase 0, bottoms out three quarters in, and repeats."""
    t = TenantConfig(base_fraction=0.5, volatility=0.0, reversion=1.0, burst_prob=0.0,
                     diurnal_amplitude=0.2, diurnal_period_ticks=200, diurnal_phase=0.0)
    trace = _tenant_trace(t, 400)
    assert trace[50] == pytest.approx(0.7, abs=1e-3)  # tick 50 reverts to mean_fraction(50)
    assert trace[150] == pytest.approx(0.3, abs=1e-3)
    assert trace[250] == pytest.approx(0.7, abs=1e-3)
    assert t.mean_fraction(50) == pytest.approx(0.7)
    # The phase shifts the cycle: a quarter period starts at the peak.
    shifted = TenantConfig(base_fraction=0.5, diurnal_amplitude=0.2,
                           diurnal_period_ticks=200, diurnal_phase=0.25)
    assert shifted.mean_fraction(0) == pytest.approx(0.7)
    assert Machine(MachineConfig(tenants=shifted), np.random.default_rng(0)).tenant_pages \
        == pytest.approx(0.7 * MachineConfig().normal_pages)


def test_burst_ramps_up() -> None:
    """A burst with a ramp adds burst_fraction x (ticks into the burst / ramp) until the
    ramp ends, then the whole burst_fraction; without a ramp it comes at once."""
    common: dict[str, Any] = {"base_fraction": 0.4, "volatility": 0.0, "reversion": 1.0,
                              "burst_prob": 1.0, "burst_fraction": 0.3, "burst_ticks": 50}
    ramped = _tenant_trace(TenantConfig(**common, burst_ramp_ticks=20), 60)
    step = _tenant_trace(TenantConfig(**common), 60)
    # Tick 0 draws the burst; ticks 1..50 are in it.
    assert ramped[0] == step[0] == pytest.approx(0.4)
    for k in range(1, 51):
        assert ramped[k] == pytest.approx(0.4 + 0.3 * min(1.0, k / 20)), k
        assert step[k] == pytest.approx(0.7)
    assert ramped[51] == pytest.approx(0.4)  # over, and the next one is drawn


@pytest.mark.parametrize("bad,match", [
    ({"diurnal_amplitude": 0.6}, r"diurnal_amplitude: 0\.6 is out of range"),
    ({"diurnal_amplitude": 0.3, "base_fraction": 0.2}, r"must not exceed"),
    ({"diurnal_period_ticks": 1}, r"diurnal_period_ticks: 1 is out of range"),
    ({"diurnal_phase": 1.5}, r"diurnal_phase"),
    ({"burst_ramp_ticks": -1}, r"burst_ramp_ticks"),
])
def test_tenant_config_errors(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(TenantConfig, bad, "tenants")


# -- the phased family -------------------------------------------------------------------

#: A small job: 64 slots, cold phases of 30 ticks (+-20 %), hot phases of 10 that sweep
#: half of the set 12 slots a tick (the sweep wraps inside the window every third tick).
SMALL = {"region_gib": 4, "tables": 64, "pages_per_slot": 4, "load_tables_per_tick": 16,
         "cold_ticks": 30, "cold_spread": 0.2, "hot_ticks": 10, "hot_fraction": 0.5,
         "hot_tables_per_tick": 12}


def _sim(params: dict[str, Any], ticks: int = 400, seed: int = 0,
         machine: MachineConfig | None = None) -> tuple[Simulation, Phased]:
    sc = ScenarioConfig(name="phased", machine=machine or MachineConfig(ram_mib=4096),
                        workloads=(WorkloadSpec("phased", params),), ticks=ticks, jitter=0.0)
    sim = Simulation(sc, np.random.default_rng(seed))
    w = sim.workloads[0]
    assert isinstance(w, Phased)
    return sim, w


@pytest.mark.parametrize("backing,cls", [("file", TableClass.FILE), ("zero", TableClass.ZERO)])
def test_load_builds_the_working_set(backing: str, cls: TableClass) -> None:
    """The load phase reads every working-set slot once: one PTE table each, all of the
    backing's class, pages_per_slot entries each; then the job goes cold."""
    sim, w = _sim({**SMALL, "backing": backing})
    for _ in range(4):
        sim.step()
    assert w.phase == "cold"
    mm = w.proc.mm
    slots = {w.slot_of(i) for i in range(64)}
    assert set(mm.pte) == slots
    assert mm.class_count(cls) == 64
    for s in slots:
        assert sum(e != 0 for e in mm.pte[s].entries) == 4
    assert mm.rss_pages == (256 if backing == "file" else 0)


def test_phases_alternate() -> None:
    """Cold phases last cold_ticks x U(0.8, 1.2) and touch nothing; hot phases last
    hot_ticks and touch only their window, each slot of it every hot_n / rate ticks."""
    sim, w = _sim(SMALL, ticks=600, seed=4)
    sim.record_touches()
    phases = []
    for _ in range(600):
        sim.step()
        phases.append((w.phase, w.hot_start))
    trace = sim.touch_trace
    assert trace is not None
    touched_at: dict[int, list[int]] = {}
    for slot, ticks in trace[w.proc.name].items():
        for t in ticks:
            touched_at.setdefault(t, []).append(slot)
    runs: list[tuple[str, int, int]] = []  # (phase, first tick, length)
    for t, (ph, _) in enumerate(phases):
        if runs and runs[-1][0] == ph:
            runs[-1] = (ph, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((ph, t, 1))
    # The phase a tick ran in is the phase before its step's transition.
    assert w.cycles >= 10
    for ph, _, n in runs[1:-1]:
        if ph == "cold":
            assert 24 <= n <= 36, n
        elif ph == "hot":
            assert n == 10
    index = {w.slot_of(i): i for i in range(64)}
    for ph, first, n in runs[1:-1]:
        ticks = range(first + 1, first + n + 1)  # the ticks run in this phase
        touched = [s for t in ticks for s in touched_at.get(t, [])]
        if ph == "cold":
            assert not touched
        elif ph == "hot":
            start = phases[first][1]
            window = {(start + k) % 64 for k in range(32)}
            assert {index[s] for s in touched} == window
            assert len(touched) == 10 * 12


def test_hot_phase_refaults_what_reclaim_took() -> None:
    """Everything reclaimed in a cold phase stays gone until the next hot phase, which
    re-faults exactly its window (pages_per_slot entries a table); the rest stays gone."""
    sim, w = _sim({**SMALL, "cold_spread": 0.0}, seed=1)
    sim.step()
    while w.phase != "cold":
        sim.step()
    p = w.proc
    result = sim.reclaim(p, DEPTHS[2], 10_000)
    assert result.freed == 64
    cold_left = w.left
    for _ in range(cold_left - 1):
        sim.step()
    assert p.mm.stats.refault_tables == 0 and w.phase == "cold"
    for _ in range(11):  # the last cold tick (it turns hot), then the 10 hot ones
        sim.step()
    assert w.phase == "cold"  # the hot phase is over
    assert p.mm.stats.refault_tables == 32
    assert p.mm.stats.refault_entries == 32 * 4
    assert {w.slot_of((w.hot_start + k) % 64) for k in range(32)} == set(p.mm.pte)


def test_probe_and_wrapping_windows() -> None:
    """A background probe reads cold_tables_per_tick consecutive slots a cold tick, from
    a random one, wrapping at the end of the set; a hot window wraps too, and a rate
    above its size reads the whole window once a tick."""
    params = {**SMALL, "cold_tables_per_tick": 5, "hot_fraction": 1.0,
              "hot_tables_per_tick": 100}
    sim, w = _sim(params, ticks=200, seed=2)
    sim.step()  # starts the job (its first load tick)
    sim.record_touches()
    wrapped = False
    hot_ticks = 0
    for _ in range(199):
        before = w.phase
        n_before = len(sim.history)
        sim.step()
        trace = sim.touch_trace
        assert trace is not None
        index = {w.slot_of(i): i for i in range(64)}
        now = sorted(index[s] for s, ts in trace.get(w.proc.name, {}).items()
                     if n_before in ts)
        if before == "cold" and now:
            assert len(now) == 5
            wrapped |= now[0] == 0 and now[-1] == 63
        if before == "hot":
            assert now == list(range(64))
            hot_ticks += 1
    assert hot_ticks >= 10
    assert wrapped


@pytest.mark.parametrize("bad,match", [
    ({"tables": 4096, "region_gib": 4}, r"do not fit"),
    ({"pages_per_slot": 3}, r"must divide 512"),
    ({"hot_fraction": 0.0}, r"hot_fraction: 0\.0 is out of range; allowed \(0, 1\]"),
    ({"backing": "shmem"}, r"'shmem' is not one of 'file', 'zero'"),
    ({"cold_spread": 0.95}, r"cold_spread"),
])
def test_phased_config_errors(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(PhasedConfig, bad, "phased")


def test_backing_checked_without_the_loader() -> None:
    """A config built in code (no YAML loader's Literal check) is checked too."""
    with pytest.raises(ConfigError, match=r"phased\.backing: 'shmem' is not one of"):
        PhasedConfig(backing="shmem")  # type: ignore[arg-type]


def test_defaults_are_sane() -> None:
    """The defaults: 2048 tables of the 64 GiB file, one table per 32 MiB, the set
    loaded in 8 ticks, half of it swept in 8 hot ticks."""
    c = PhasedConfig()
    assert c.region_gib * 1024 // c.tables == 32
    assert math.ceil(c.tables / c.load_tables_per_tick) == 8
    assert c.hot_fraction * c.tables / c.hot_tables_per_tick == 8
