"""Procedural scenarios (domain randomisation): a seed gives a list of scenarios with
randomised machines, tenants, workload mixes, sizes and phases.

Why
---
Hand-written scenarios are few, and an agent trained on a few learns them, not the
problem (Tobin et al., "Domain randomization for transferring deep neural networks
from simulation to the real world", IROS 2017; Cobbe et al., "Quantifying
generalization in reinforcement learning", ICML 2019: procedurally generated levels
are what let a policy generalise to unseen ones).  Every draw here stays inside what
the families' docstrings ground in real systems; the generator only combines them.

What a spec controls
--------------------
:class:`GeneratorSpec` (the ``generate:`` mapping of a suite file) names a seed, a
count, the families that may appear and two lists of family sets:

* ``exclude``: no scenario holds every family of one of these sets (a combination
  held out of training);
* ``require``: every scenario holds every family of at least one of these sets (a
  suite of held-out families or combinations).

Scenario ``i`` of a spec depends only on ``(seed, i)``: a longer list keeps the
shorter one's scenarios, and the same spec gives the same scenarios on every machine.

What is drawn
-------------
* **Machine**: RAM 2-16 GiB, 75-93 % of it movable, 4-64 CPUs, the hard limit's
  action, a pre-6.14 kernel (15 %) and reclaim under the PMD lock (30 %).
* **Workloads**: 2-5 (at least two families), each with sizes scaled to the machine
  (``_SAMPLERS``); the first starts at tick 0, later ones at random ticks (a hog always
  arrives late: it is the attack), and some stop before the end.
* **Tenants**: volatility, bursts (half of them ramped), a daily cycle in half of the
  scenarios, and a base share of the normal zone set from a rough estimate of what
  the workloads hold at their peak (:func:`footprint`: tables, the reclaimable share
  of them, resident pages), so that most scenarios have pressure without reclaim and
  few are hopeless (:func:`_tenants`); the machine grows until the workloads'
  resident memory fits its movable zone.  The estimate is deliberately rough; the
  share of generated scenarios with failures without reclaim, and of those the
  aggressive diagnostic saves, is measured in ``docs/scenarios.md``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ConfigError, build, check_range, did_you_mean
from .machine import MachineConfig, TenantConfig, watermarks
from .simulator import ScenarioConfig
from .workloads.trace import resolve_trace, shipped_traces

Rng = np.random.Generator
Params = dict[str, Any]

#: Tick range of generated scenarios (the hand-written ones run 600-1200 ticks).
TICKS = (600, 1200)


# -- per-family samplers ------------------------------------------------------------------
#
# Each returns the family's params for a machine of ``ram`` MiB; the values stay far
# enough inside every range that the scenario's jitter (at most 0.25) cannot leave it.


def _balloon(rng: Rng, ram: int) -> Params:
    # 512 MiB up to half the host's RAM, at most 4 GiB.
    return {"guest_mib": int(rng.integers(2, min(16, max(2, ram // 512)) + 1)) * 256,
            "balloon_fraction": round(float(rng.uniform(0.3, 0.7)), 3),
            "report_fraction": round(float(rng.uniform(0.1, 0.4)), 3),
            "report_kib": int(rng.choice([2048, 4096])),
            "hold_ticks": int(rng.integers(50, 201)),
            "idle_ticks": int(rng.integers(20, 101))}


def _virtio_mem(rng: Rng, ram: int) -> Params:
    region = int(rng.choice([2048, 4096, 8192]))
    top = min(region, max(1024, ram // 2))
    return {"backing": str(rng.choice(["anon", "shmem", "file"])),
            "punch_then_dontneed": bool(rng.random() < 0.3),
            "region_mib": region, "boot_mib": region // 8,
            "initial_plugged_mib": top // 2, "min_plugged_mib": top // 4,
            "max_plugged_mib": top,
            "resize_period_ticks": int(rng.integers(80, 241))}


def _kdump(rng: Rng, ram: int) -> Params:
    return {"guest_mib": int(rng.integers(2, 13)) * 1024,
            "resident_fraction": round(float(rng.uniform(0.05, 0.2)), 3),
            "dump_delay_ticks": int(rng.integers(10, 301)),
            "dump_mib_per_tick": int(rng.choice([64, 96, 128]))}


def _uffd(rng: Rng, ram: int) -> Params:
    # 1 GiB up to the host's RAM, at most 4 GiB.
    return {"guest_mib": int(rng.integers(4, min(16, ram // 256) + 1)) * 256,
            "precopy_fraction": round(float(rng.uniform(0.2, 0.7)), 3),
            "zero_fraction": round(float(rng.uniform(0.2, 0.6)), 3),
            "faults_per_tick": int(rng.integers(4, 33))}


_HEAP_MIB = {"jemalloc": (512, 8192), "glibc": (128, 1024), "v8": (64, 256),
             "jvm": (256, 2048)}


def _allocator(rng: Rng, ram: int) -> Params:
    variant = str(rng.choice(list(_HEAP_MIB)))
    lo, hi = _HEAP_MIB[variant]
    heap = int(rng.integers(lo // 64, min(hi, max(lo, ram)) // 64 + 1)) * 64
    params: Params = {"variant": variant, "heap_mib": heap,
                      "fill_ticks": int(rng.integers(60, 151)),
                      "churn_ticks": int(rng.integers(100, 301)),
                      "free_ticks": int(rng.integers(40, 121)),
                      "idle_ticks": int(rng.integers(40, 201)),
                      "churn_fraction": round(float(rng.uniform(0.005, 0.03)), 4)}
    if variant == "jvm":
        params["uncommit"] = str(rng.choice(["remap", "dontneed"]))
        params["initial_mib"] = min(heap, 128)
    return params


def _hog(rng: Rng, ram: int) -> Params:
    # Pinned tables (write) cannot be reclaimed, only limited: rarer than the others.
    variant = str(rng.choice(["zeropage", "retouch", "write"], p=[0.45, 0.4, 0.15]))
    return {"variant": variant, "size_gib": int(rng.choice([64, 128, 256, 512])),
            "tables_per_tick": int(rng.integers(8, 41))}


def _shared_file(rng: Rng, ram: int) -> Params:
    return {"file_gib": int(rng.choice([8, 16, 32, 64, 96])),
            "readers": int(rng.integers(2, 7)),
            "region_mib": int(rng.choice([8, 16, 32])),
            "pages_per_slot": int(rng.choice([1, 2, 4, 8])),
            "punch_prob": round(float(rng.uniform(0.0, 0.02)), 4),
            "restart_prob": round(float(rng.uniform(0.0, 0.004)), 5)}


def _phased(rng: Rng, ram: int) -> Params:
    region = int(rng.choice([32, 64, 128, 256]))
    # Room for +25 % jitter of ``tables`` inside the region.
    tables = int(rng.integers(1000, min(8000, region * 512 * 3 // 4) + 1))
    return {"backing": str(rng.choice(["file", "zero"])), "region_gib": region,
            "tables": tables, "pages_per_slot": int(rng.choice([1, 2, 4, 8])),
            "load_tables_per_tick": int(rng.integers(100, 401)),
            "cold_ticks": int(rng.integers(60, 321)),
            "cold_spread": round(float(rng.uniform(0.0, 0.4)), 3),
            "hot_ticks": int(rng.integers(20, 81)),
            "hot_fraction": round(float(rng.uniform(0.2, 0.9)), 3),
            "hot_tables_per_tick": int(rng.integers(100, 401)),
            "cold_tables_per_tick": 0 if rng.random() < 0.5 else int(rng.integers(1, 9))}


def _trace(rng: Rng, ram: int) -> Params:
    return {"trace": str(rng.choice(shipped_traces())),
            "speed": round(float(rng.uniform(0.5, 2.0)), 3),
            "end": str(rng.choice(["loop", "idle"], p=[0.7, 0.3]))}


#: The families the generator can draw, and how.
_SAMPLERS: dict[str, Callable[[Rng, int], Params]] = {
    "allocator": _allocator, "balloon": _balloon, "hog": _hog, "kdump": _kdump,
    "phased": _phased, "shared_file": _shared_file, "trace": _trace, "uffd": _uffd,
    "virtio_mem": _virtio_mem}
FAMILIES: tuple[str, ...] = tuple(sorted(_SAMPLERS))


@dataclass(frozen=True)
class Footprint:
    """A rough peak of what one workload holds, in pages: PTE tables (one per 2 MiB
    it touches), the share of them reclaim can free, and resident user pages.  Used
    only to size the machine and the tenants' headroom, never reported."""

    tables: int
    reclaimable: float
    rss: int


#: Share of an allocator's tables that end up reclaimable (empty): jemalloc's purges
#: leave most tables empty (405 of 621 in the redis measurement, allocator.py);
#: glibc's trims free whole ranges (tables go with them); V8 and the JVM unmap or
#: re-map most of what they free.
_ALLOC_RECLAIMABLE = {"jemalloc": 0.65, "glibc": 0.2, "v8": 0.3, "jvm": 0.3}


def footprint(family: str, params: Mapping[str, Any], active_ticks: int) -> Footprint:
    """The :class:`Footprint` of one workload running ``active_ticks`` ticks."""
    mib = 256  # pages per MiB
    if family == "balloon":
        # Inflation discards 4 KiB pages: the balloon's tables stay, empty.
        g = int(params["guest_mib"])
        return Footprint(g // 2, float(params["balloon_fraction"]), g * mib)
    if family == "virtio_mem":
        top = int(params["max_plugged_mib"])
        # Anon unplug (DONTNEED of whole blocks) frees the tables; shmem/file leave them.
        share = 0.0 if params["backing"] == "anon" else 0.5
        return Footprint(top // 2, share, top * mib)
    if family == "kdump":
        g, resident = int(params["guest_mib"]), float(params["resident_fraction"])
        return Footprint(g // 2, 1.0 - resident, int(g * resident * mib))
    if family == "uffd":
        # Registered with userfaultfd for most of the episode: nothing reclaimable.
        g = int(params["guest_mib"])
        return Footprint(g // 2, 0.0, g * mib)
    if family == "allocator":
        heap, variant = int(params["heap_mib"]), str(params["variant"])
        # V8 maps 256 KiB pages at random addresses: ~2 tables a page (allocator.py).
        per_mib = 8.0 if variant == "v8" else 0.5
        return Footprint(int(heap * per_mib), _ALLOC_RECLAIMABLE[variant], heap * mib)
    if family == "hog":
        n = min(int(params["tables_per_tick"]) * active_ticks, int(params["size_gib"]) * 512)
        write = params["variant"] == "write"
        return Footprint(n, 0.0 if write else 1.0, n if write else 0)
    if family == "shared_file":
        # Each reader's coverage of the file: 1 - exp(-requests x region / file).
        slots = int(params["file_gib"]) * 512
        requests = active_ticks * int(params["region_mib"]) / (int(params["file_gib"]) * 1024)
        n = int(int(params["readers"]) * slots * (1.0 - math.exp(-requests)))
        return Footprint(n, 1.0, n * int(params["pages_per_slot"]))
    if family == "phased":
        n = int(params["tables"])
        rss = n * int(params["pages_per_slot"]) if params["backing"] == "file" else 0
        return Footprint(n, 1.0, rss)
    if family == "trace":
        # The captured process's own peaks (VmPTE and VmRSS of its samples).
        arrays = resolve_trace(str(params["trace"])).arrays
        return Footprint(int(np.max(arrays["vm_pte_kib"])) // 4, 0.5,
                         int(np.max(arrays["vm_rss_kib"])) // 4)
    raise ConfigError(f"no footprint for family {family!r}")


# -- the spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorSpec:
    """What to generate (the ``generate:`` mapping of a suite file)."""

    seed: int
    count: int
    #: Families that may appear (default: every family the generator knows).
    families: tuple[str, ...] = FAMILIES
    #: Family sets no scenario may hold all of (combinations held out).
    exclude: tuple[tuple[str, ...], ...] = ()
    #: Family sets of which every scenario holds at least one whole.
    require: tuple[tuple[str, ...], ...] = ()
    #: Name prefix: scenario ``i`` is ``{prefix}{seed}_{i:03d}``.
    prefix: str = "gen"
    min_workloads: int = 2
    max_workloads: int = 5

    def __post_init__(self) -> None:
        check_range("generate.seed", self.seed, 0, 2**63 - 1)
        check_range("generate.count", self.count, 1, 1000)
        check_range("generate.min_workloads", self.min_workloads, 2, 8)
        check_range("generate.max_workloads", self.max_workloads, self.min_workloads, 8)
        for f in self.families:
            _check_family(f, "generate.families")
        if len(set(self.families)) < 2:
            raise ConfigError("generate.families: name at least two families (a scenario "
                              "mixes at least two)")
        for key, sets in (("exclude", self.exclude), ("require", self.require)):
            for i, group in enumerate(sets):
                if not group:
                    raise ConfigError(f"generate.{key}[{i}]: an empty set of families")
                for f in group:
                    _check_family(f, f"generate.{key}[{i}]")
        for i, group in enumerate(self.require):
            if missing := set(group) - set(self.families):
                raise ConfigError(f"generate.require[{i}]: {', '.join(sorted(missing))} "
                                  "not in generate.families; add it there")
            if _holds_excluded(group, self.exclude):
                raise ConfigError(f"generate.require[{i}]: {list(group)} holds an excluded "
                                  "set; a scenario cannot both hold and avoid it")
            if len(set(group)) > self.max_workloads:
                raise ConfigError(f"generate.require[{i}]: more families than "
                                  f"generate.max_workloads ({self.max_workloads})")
        for group in self.require or ((),):
            if not _mixable(self.families, group, self.exclude):
                raise ConfigError("generate.exclude leaves fewer than two families to mix"
                                  + (f" with {list(group)}" if group else ""))


def _check_family(family: str, where: str) -> None:
    if family not in _SAMPLERS:
        raise ConfigError(f"{where}: family {family!r} is unknown"
                          f"{did_you_mean(family, _SAMPLERS)}; known: {', '.join(FAMILIES)}")


def _holds_excluded(families: Sequence[str], exclude: Sequence[Sequence[str]]) -> bool:
    have = set(families)
    return any(set(group) <= have for group in exclude)


def _mixable(families: Sequence[str], group: Sequence[str],
             exclude: Sequence[Sequence[str]]) -> bool:
    """Whether ``group`` (perhaps empty) can grow into a mix of two families."""
    if len(set(group)) >= 2:
        return True
    if group:
        return any(f not in group for f in _allowed(families, group, exclude))
    return any(_mixable(families, [f], exclude) for f in _allowed(families, [], exclude))


def _allowed(families: Sequence[str], chosen: Sequence[str],
             exclude: Sequence[Sequence[str]]) -> list[str]:
    """Families that may join ``chosen`` without completing an excluded set (one hog
    at most: two attackers are one attack)."""
    return [f for f in families if not _holds_excluded([*chosen, f], exclude)
            and not (f == "hog" and "hog" in chosen)]


# -- generation ---------------------------------------------------------------------------


def _pick_families(rng: Rng, spec: GeneratorSpec) -> list[str]:
    chosen: list[str] = []
    if spec.require:
        chosen += list(spec.require[int(rng.integers(len(spec.require)))])
    n = max(int(rng.integers(spec.min_workloads, spec.max_workloads + 1)), len(chosen))
    while len(chosen) < n or len(set(chosen)) < 2:
        pool = _allowed(spec.families, chosen, spec.exclude)
        if len(set(chosen)) < 2 and len(chosen) >= n:
            pool = [f for f in pool if f not in chosen]  # the mix needs a second family
        if not pool:
            break
        chosen.append(str(pool[int(rng.integers(len(pool)))]))
    return chosen


#: RAM sizes a generated machine may have (MiB).
_RAM = (2048, 3072, 4096, 6144, 8192, 12288, 16384)


def _machine(rng: Rng) -> dict[str, Any]:
    return {"ram_mib": int(rng.choice(_RAM)),
            "movable_fraction": round(float(rng.uniform(0.75, 0.93)), 3),
            "cpus": int(rng.choice([4, 8, 16, 24, 32, 64])),
            "hard_limit_action": "kill" if rng.random() < 0.2 else "throttle"}


def _fit_ram(machine: dict[str, Any], rss: int) -> None:
    """Grow the machine until the workloads' resident pages fit in 90 % of its movable
    zone (user pages spilling into the normal zone would drown the page tables' share)."""
    for ram in _RAM:
        if ram < machine["ram_mib"]:
            continue
        machine["ram_mib"] = ram
        if rss <= 0.9 * build(MachineConfig, machine, "machine").movable_pages:
            return


def _tenants(rng: Rng, machine: Mapping[str, Any], feet: Sequence[Footprint]
             ) -> dict[str, Any]:
    """Tenants whose swings (bursts, the daily cycle, noise) are a fraction of the
    workloads' reclaimable tables, and whose base leaves room above the high watermark
    for every pinned table and 40-80 % of the reclaimable ones: pressure without
    reclaim (more at the peaks of the cycle and in bursts), which freeing the
    reclaimable tables relieves even at the peak of the cycle, in a burst and at three
    standard deviations of noise (unless the estimate is off: see the module
    docstring)."""
    cfg = build(MachineConfig, machine, "machine")
    zone = cfg.normal_pages
    marks = watermarks(zone, cfg.watermark_scale_factor, cfg.min_free_kbytes)
    spill = max(0, sum(f.rss for f in feet) - cfg.movable_pages) / zone
    pinned = sum(f.tables * (1.0 - f.reclaimable) for f in feet) / zone
    reclaimable = sum(f.tables * f.reclaimable for f in feet) / zone
    reversion = TenantConfig().reversion
    noise = reclaimable * float(rng.uniform(0.03, 0.1))  # three standard deviations
    t: dict[str, Any] = {
        "volatility": round(noise / 3.0 * math.sqrt(1.0 - (1.0 - reversion) ** 2), 6),
        "burst_prob": round(float(rng.uniform(0.0, 0.006)), 4),
        "burst_fraction": round(reclaimable * float(rng.uniform(0.05, 0.25)), 5),
        "burst_ticks": int(rng.integers(20, 251))}
    if rng.random() < 0.5:
        t["burst_ramp_ticks"] = int(rng.integers(1, t["burst_ticks"] + 1))
    amplitude = 0.0
    if rng.random() < 0.5:
        amplitude = round(reclaimable * float(rng.uniform(0.05, 0.25)), 5)
        t["diurnal_amplitude"] = amplitude
        t["diurnal_period_ticks"] = int(rng.integers(300, 1201))
        t["diurnal_phase"] = round(float(rng.uniform(0.0, 1.0)), 3)
    share = float(rng.uniform(0.4, 0.8))
    pressure = 1.0 - marks.high / zone - spill - pinned - share * reclaimable
    saved = (1.0 - amplitude - t["burst_fraction"] - noise - marks.min / zone - spill
             - pinned)
    t["base_fraction"] = round(min(max(min(pressure, saved), 0.3), 0.99), 4)
    return t


def scenario_data(spec: GeneratorSpec, index: int) -> dict[str, Any]:
    """Scenario ``index`` of ``spec`` as plain data (a scenario file's mapping)."""
    rng = np.random.default_rng([spec.seed, index])
    ticks = int(rng.integers(TICKS[0] // 50, TICKS[1] // 50 + 1)) * 50
    machine = _machine(rng)
    workloads: list[dict[str, Any]] = []
    feet: list[Footprint] = []
    for k, family in enumerate(_pick_families(rng, spec)):
        params = _SAMPLERS[family](rng, machine["ram_mib"])
        w: dict[str, Any] = {"family": family, "params": params}
        if family == "hog":
            w["start_tick"] = int(ticks * rng.uniform(0.15, 0.5))
        elif k > 0 and rng.random() < 0.5:
            w["start_tick"] = int(ticks * rng.uniform(0.05, 0.6))
        start = w.get("start_tick", 0)
        if family != "hog" and k > 0 and rng.random() < 0.15:
            w["stop_tick"] = start + int(ticks * rng.uniform(0.3, 0.6))
            if w["stop_tick"] >= ticks:
                del w["stop_tick"]
        if family in ("allocator", "phased", "shared_file") and rng.random() < 0.2:
            w["count"] = 2
        foot = footprint(family, params, w.get("stop_tick", ticks) - start)
        feet += [foot] * w.get("count", 1)
        workloads.append(w)
    _fit_ram(machine, sum(f.rss for f in feet))
    machine["tenants"] = _tenants(rng, machine, feet)
    names = ", ".join(f"{w['family']}" + (f" from tick {w['start_tick']}"
                                          if w.get("start_tick") else "") for w in workloads)
    return {
        "name": f"{spec.prefix}{spec.seed}_{index:03d}",
        "description": (f"Generated (seed {spec.seed}, #{index}): {machine['ram_mib']} MiB, "
                        f"{machine['movable_fraction']:.0%} movable, {machine['cpus']} CPUs; "
                        f"{names}."),
        "ticks": ticks,
        "jitter": round(float(rng.uniform(0.1, 0.25)), 3),
        "pt_reclaim": bool(rng.random() >= 0.15),
        "machine": machine,
        "workloads": workloads,
        "reclaim": {"lock": "pmd_lock" if rng.random() < 0.3 else "mmap_write"},
    }


def generate(spec: GeneratorSpec) -> list[ScenarioConfig]:
    """The ``spec.count`` scenarios of ``spec``, built and validated (the loader of
    suite files validates the workloads' jitter too)."""
    return [build(ScenarioConfig, scenario_data(spec, i), f"generate[{i}]")
            for i in range(spec.count)]


def spec_from_data(data: Any, where: str) -> GeneratorSpec:
    """A :class:`GeneratorSpec` from a parsed ``generate:`` mapping (did-you-mean on
    unknown keys, one-line range errors)."""
    known = {f.name for f in dataclasses.fields(GeneratorSpec)}
    # Unknown keys first (build's did-you-mean): "cuont" is a typo, not a missing count.
    if isinstance(data, Mapping) and set(data) <= known:
        for key in ("seed", "count"):
            if key not in data:
                raise ConfigError(f"{where}: {key!r} is missing; give a seed and a count "
                                  "(e.g. generate: {seed: 7, count: 40})")
    return build(GeneratorSpec, data, where)


__all__ = ["FAMILIES", "TICKS", "Footprint", "GeneratorSpec", "footprint", "generate",
           "scenario_data", "spec_from_data"]
