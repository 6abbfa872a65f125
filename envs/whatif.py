"""The kernel what-if: the same workloads and real traces under each reclaim design.

The core of ``scripts/whatif.py`` (:mod:`ptreclaim.cli.whatif`).  An *input* is a scenario
(a YAML file) or a captured trace (a shipped name or an ``.npz`` path), which runs alone on
a small host until half its length again after its end, the process staying alive
(``end: idle``), so what its last state holds stays visible.  :func:`run_design` runs one
input under one design of :mod:`.sim.mechanisms` from one seed -- every design of an input
sees the same seeded workloads, because the design draws nothing from the generator -- and
returns plain data: a summary and per-tick series.  :func:`markdown_table` and
:func:`plot_input` turn the runs of one input into a table and a PNG.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from .configio import load_scenario
from .sim.config import ConfigError, did_you_mean
from .sim.machine import MachineConfig
from .sim.mechanisms import DESIGN_NAMES, DESIGNS, DesignName, pt_reclaim_of
from .sim.process import TABLE_BYTES
from .sim.simulator import ScenarioConfig, Simulation, WorkloadSpec
from .sim.workloads.trace import resolve_trace

MIB = 1 << 20
#: A trace runs until its end plus this share of its length (idle, process alive).
TRACE_TAIL = 0.5
#: The host a trace runs on: 1 GiB, 90 % ZONE_MOVABLE, other tenants at the defaults.
TRACE_MACHINE = MachineConfig(ram_mib=1024, movable_fraction=0.9, cpus=4)


@dataclass(frozen=True)
class WhatIfInput:
    """One input: its label (also its plot's file name), what it is and its scenario."""

    label: str
    kind: str  # "scenario" or "trace"
    source: str
    scenario: ScenarioConfig


def trace_scenario(trace: str, ticks: int | None = None) -> ScenarioConfig:
    """A scenario that replays ``trace`` (a shipped name or a path) once, without jitter,
    and keeps the process idle for :data:`TRACE_TAIL` of the trace's length after it."""
    t = resolve_trace(trace)
    stem = Path(trace).stem if trace.endswith(".npz") else trace
    tick_ms = TRACE_MACHINE.tick_ms
    n = ticks if ticks is not None else math.ceil(t.duration_ms * (1 + TRACE_TAIL) / tick_ms)
    return ScenarioConfig(
        name=f"trace_{stem}", description=f"trace {trace} replayed once, then idle",
        machine=TRACE_MACHINE, ticks=n, jitter=0.0,
        workloads=(WorkloadSpec("trace", {"trace": trace, "end": "idle"}),))


def resolve_input(spec: str, ticks: int | None = None) -> WhatIfInput:
    """A YAML path is a scenario; anything else a trace (a shipped name or a ``.npz``).
    ``ticks`` overrides the length.  Bad input raises ``ConfigError`` (one line)."""
    if spec.endswith((".yaml", ".yml")):
        scen = load_scenario(spec)
        if ticks is not None:
            scen = dataclasses.replace(scen, ticks=ticks)
        return WhatIfInput(scen.name, "scenario", spec, scen)
    scen = trace_scenario(spec, ticks)
    return WhatIfInput(scen.name, "trace", spec, scen)


def with_design(scenario: ScenarioConfig, design: str) -> ScenarioConfig:
    """``scenario`` under ``design`` (its ``pt_reclaim`` set to what the design needs; the
    scenario's own scanner and limit parameters kept)."""
    if design not in DESIGN_NAMES:
        raise ConfigError(f"design {design!r} is unknown{did_you_mean(design, DESIGN_NAMES)}; "
                          f"choose from {', '.join(DESIGN_NAMES)}")
    mech = dataclasses.replace(scenario.mechanism, design=cast(DesignName, design))
    return dataclasses.replace(scenario, pt_reclaim=pt_reclaim_of(design), mechanism=mech)


def run_design(scenario: ScenarioConfig, design: str, seed: int = 0,
               on_tick: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``scenario`` under ``design`` from ``seed`` for its ticks; plain data back:
    ``summary`` (totals) and ``series`` (one value per tick)."""
    sim = Simulation(with_design(scenario, design), np.random.default_rng(seed))
    mech = sim.mechanism
    names = ("vmpte_mib", "empty", "zero", "file", "freed", "cpu_ms", "lock_ms", "refaults",
             "failure")
    series: dict[str, list[float]] = {k: [] for k in names}
    refaults = 0
    for t in range(scenario.ticks):
        rec = sim.step()
        classes = np.zeros(4, dtype=np.int64)
        for p in sim.procs:
            if p.alive:
                classes += p.mm.class_counts()
        refaults += rec.refault_tables
        on_zap = sum(p.mm.stats.pte_reclaimed_on_zap for p in sim.procs)
        row = (rec.pt_pages * TABLE_BYTES / MIB, *classes[:3].tolist(), on_zap + mech.stats.freed,
               mech.stats.cpu_us / 1e3, mech.stats.lock_us / 1e3, refaults, rec.failure)
        for k, v in zip(names, row, strict=True):
            series[k].append(float(v))
        if on_tick is not None:
            on_tick(t)
    return {"design": design, "seed": seed, "ticks": scenario.ticks,
            "summary": _summary(sim, series), "series": series}


def _summary(sim: Simulation, series: dict[str, list[float]]) -> dict[str, Any]:
    hist = sim.history
    st = sim.mechanism.stats
    vmpte = series["vmpte_mib"]
    on_zap = sum(p.mm.stats.pte_reclaimed_on_zap for p in sim.procs)
    held = [e + z + f for e, z, f in zip(series["empty"], series["zero"], series["file"],
                                         strict=True)]
    entries = sum(r.refault_entries for r in hist)
    tables = sum(r.refault_tables for r in hist)
    d = DESIGNS[sim.scenario.mechanism.design or "on_zap"]
    return {
        "vmpte_mean_mib": float(np.mean(vmpte)), "vmpte_peak_mib": max(vmpte),
        "vmpte_final_mib": vmpte[-1],
        "left_empty": int(series["empty"][-1]), "left_zero": int(series["zero"][-1]),
        "left_file": int(series["file"][-1]), "held_reclaimable_mean": float(np.mean(held)),
        "freed_on_zap": on_zap, "freed_design": st.freed,
        "freed_design_by_class": dict(zip(("empty", "zero", "file"), st.freed_by_class,
                                          strict=True)),
        "examined": st.examined, "young_cleared": st.young_cleared,
        "advice_calls": st.advice_calls,
        "cpu_ms": st.cpu_us / 1e3, "lock_ms": st.lock_us / 1e3,
        "refault_tables": tables, "refault_entries": entries,
        "refault_stall_ms": sim.costs.refault_us(tables, entries, uffd=False) / 1e3,
        "alloc_failure_ticks": sum(r.failure for r in hist),
        "oom_kills": sum(r.oom_kill is not None for r in hist),
        "harm_events": sum(r.harm_events for r in hist),
        "app_stall_s": sum(r.stall_us for r in hist) / 1e6,
        "processes": len(sim.procs),
        "kernel": {"files": d.files, "added": d.added, "removed": d.removed,
                   "estimate": d.estimate},
    }


# -- tables -------------------------------------------------------------------

#: (header, how a summary fills the cell) of the per-input table.
_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("VmPTE MiB mean / final", lambda s: f"{s['vmpte_mean_mib']:.2f} / {s['vmpte_final_mib']:.2f}"),
    ("left E / Z / F", lambda s: f"{s['left_empty']} / {s['left_zero']} / {s['left_file']}"),
    ("held E+Z+F mean", lambda s: f"{s['held_reclaimable_mean']:.0f}"),
    ("freed on-zap + design", lambda s: f"{s['freed_on_zap']} + {s['freed_design']}"),
    ("CPU ms", lambda s: f"{s['cpu_ms']:.2f}"),
    ("lock hold ms", lambda s: f"{s['lock_ms']:.2f}"),
    ("re-faults (stall ms)", lambda s: f"{s['refault_tables']} ({s['refault_stall_ms']:.2f})"),
    ("alloc-fail ticks / OOM", lambda s: f"{s['alloc_failure_ticks']} / {s['oom_kills']}"),
    ("kernel change", lambda s: _kernel_cell(s["kernel"])),
)


def _kernel_cell(k: dict[str, Any]) -> str:
    if not k["files"]:
        return "-"
    approx = "~" if k["estimate"] else ""
    return f"{approx}{k['files']} files, {approx}+{k['added']}/-{k['removed']}"


def markdown_table(runs: Sequence[dict[str, Any]]) -> str:
    """The runs of one input (one per design) as a Markdown table."""
    head = ["design", *(name for name, _ in _COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        s = r["summary"]
        lines.append("| " + " | ".join([f"`{r['design']}`", *(f(s) for _, f in _COLUMNS)])
                     + " |")
    return "\n".join(lines) + "\n"


def designs_table(designs: Sequence[str] = DESIGN_NAMES) -> str:
    """Where each design comes from and what it changes in the kernel, as Markdown."""
    lines = ["| design | what | kernel | source | change |", "|---|---|---|---|---|"]
    for name in designs:
        d = DESIGNS[name]
        change = _kernel_cell({"files": d.files, "added": d.added, "removed": d.removed,
                               "estimate": d.estimate})
        lines.append(f"| `{d.name}` | {d.title} | {d.kernel} | {d.source} | {change}: "
                     f"{d.change} |")
    return "\n".join(lines) + "\n"


# -- plots --------------------------------------------------------------------

def plot_input(label: str, runs: Sequence[dict[str, Any]], tick_ms: int, dpi: int = 80
               ) -> bytes:
    """One input's PNG: VmPTE over time per design, then per design the empty, zero and
    file tables held (mean over the run), the tables freed, CPU and lock hold, re-faults
    and allocation failures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = [r["design"] for r in runs]
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(DESIGN_NAMES)}
    fig = plt.figure(figsize=(11, 10))
    grid = fig.add_gridspec(3, 2, height_ratios=[2.2, 1.5, 1.5])
    ax = fig.add_subplot(grid[0, :])
    for r in runs:
        v = r["series"]["vmpte_mib"]
        ax.plot(np.arange(len(v)), v, lw=1.1, color=colors[r["design"]], label=r["design"],
                ls="--" if r["design"] in ("none", "on_zap") else "-")
    ax.set_ylabel("VmPTE, all processes (MiB)")
    ax.set_xlabel(f"tick ({tick_ms} ms)")
    ax.legend(fontsize=7, ncol=3, frameon=False)
    x = np.arange(len(runs))
    s = [r["summary"] for r in runs]

    def bars(pos: Any, title: str, parts: list[tuple[str, list[float], str]],
             stacked: bool, log: bool = False) -> None:
        axis = fig.add_subplot(pos)
        bottom = np.zeros(len(runs))
        width = 0.8 if stacked else 0.8 / len(parts)
        top = 0.0
        for i, (name, values, color) in enumerate(parts):
            off = 0.0 if stacked else (i - (len(parts) - 1) / 2) * width
            axis.bar(x + off, values, width, bottom=bottom if stacked else None, label=name,
                     color=color)
            top = max(top, float(np.max(bottom + np.asarray(values, dtype=float))))
            if stacked:
                bottom += np.asarray(values, dtype=float)
        axis.set_title(title, fontsize=9)
        axis.set_xticks(x, designs, rotation=35, ha="right", fontsize=7)
        if log:
            axis.set_yscale("symlog", linthresh=1.0)
        # Room above the tallest bar for the legend; an all-zero panel still gets an axis.
        axis.set_ylim(0, max(top, 1.0) * (8.0 if log else 1.3))
        axis.legend(fontsize=7, frameon=False, ncol=len(parts), loc="upper left")

    # Held over the run rather than left at its end: a run whose processes the OOM killer
    # took ends with nothing held.
    held = {c: [float(np.mean(r["series"][c])) for r in runs] for c in ("empty", "zero", "file")}
    bars(grid[1, 0], "empty / zero / file PTE tables held (mean over the run)", [
        ("empty", held["empty"], "tab:green"), ("zero", held["zero"], "tab:olive"),
        ("file", held["file"], "tab:cyan")], stacked=True)
    bars(grid[1, 1], "PTE tables freed", [
        ("on-zap (6.14 rule)", [q["freed_on_zap"] for q in s], "tab:gray"),
        ("by the design", [q["freed_design"] for q in s], "tab:blue")], stacked=True)
    bars(grid[2, 0], "design CPU and lock hold (ms, symlog)", [
        ("CPU", [q["cpu_ms"] for q in s], "tab:purple"),
        ("lock hold", [q["lock_ms"] for q in s], "tab:red")], stacked=False, log=True)
    bars(grid[2, 1], "re-faulted tables, allocation-failure ticks (symlog)", [
        ("re-faulted tables", [q["refault_tables"] for q in s], "tab:orange"),
        ("alloc-failure ticks", [q["alloc_failure_ticks"] for q in s], "tab:brown")],
        stacked=False, log=True)
    fig.suptitle(f"{label}: page-table reclaim designs", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


__all__ = ["TRACE_MACHINE", "TRACE_TAIL", "WhatIfInput", "designs_table",
           "markdown_table", "plot_input", "resolve_input", "run_design", "trace_scenario",
           "with_design"]
