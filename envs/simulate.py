"""Run one scenario tick by tick: per-process facts, a summary and a timeline.

The core of ``scripts/simulate.py`` (:mod:`ptreclaim.cli.simulate`): a
*driver* is called after every tick and may act on the simulation;
:func:`run_driven` runs a scenario for N ticks under one, keeping what the
simulator does not (when each process appeared and died, its peak RSS and
its tables by class at its page-table peak).  :func:`summarize` turns a run
into plain data (``summary.json``), :func:`render_summary` into text tables,
:func:`plot_timeline` into a PNG.

The drivers here are diagnostics, not heuristics (those are policies in
``ptreclaim.agents``, driven through the env's observation and action by
:func:`ptreclaim.agents.rollout.policy_driver`): ``none`` never reclaims;
``aggressive`` runs a global reclaim pass of the deepest class (empty + zero
+ reconstructable) with an unlimited budget after every tick, the most any
reclaimer could do, which is what the data-preservation tests replay.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .pagetable_env import COST_TERMS, EnvConfig, cost_terms
from .sim.machine import PAGE_KIB
from .sim.pagetable import PAGE
from .sim.process import Process
from .sim.reclaim import DEPTHS
from .sim.simulator import ScenarioConfig, Simulation, TickRecord

if TYPE_CHECKING:
    from rich.table import Table

#: Processes plotted individually (largest peak page-table bytes first).
TOP_PLOTTED = 5
MIB = 1 << 20

Driver = Callable[[Simulation], None]


def policy_none(sim: Simulation) -> None:
    """Never reclaim, on a kernel before 6.14 (the caller switches the
    scenario's ``pt_reclaim`` off for it, as evaluation does for the ``none``
    policy)."""


def policy_aggressive(sim: Simulation) -> None:
    """Diagnostic, not a heuristic: after every tick, one global pass that
    frees every reclaimable table (empty, zero and reconstructable; pinned
    and userfaultfd-covered tables are never freed) with an unlimited budget.

    It bounds what reclaim can do and, in the tests, shows that reclaim never
    changes what a later read sees.
    """
    budget = sum(len(p.mm.pte) for p in sim.alive)
    if budget:
        sim.reclaim(None, DEPTHS[-1], budget)


#: The diagnostic drivers by name.
DIAGNOSTICS: dict[str, Driver] = {"none": policy_none, "aggressive": policy_aggressive}


@dataclass
class RunResult:
    """A finished (or interrupted) run and the extra per-process facts the
    simulator does not keep (first and last tick, peak RSS)."""

    scenario: ScenarioConfig
    sim: Simulation
    policy: str
    seed: int
    ticks: int
    wall_s: float = 0.0
    first_tick: dict[int, int] = field(default_factory=dict)  # pid -> tick it appeared
    end_tick: dict[int, int] = field(default_factory=dict)  # pid -> tick it died
    peak_rss_pages: dict[int, int] = field(default_factory=dict)
    #: pid -> PTE tables by class (empty, zero, file, pinned) when its page
    #: tables peaked (a dead process holds none at the end).
    peak_classes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)

    @property
    def history(self) -> list[TickRecord]:
        return self.sim.history



def run_driven(scenario: ScenarioConfig, ticks: int, driver: Driver, policy: str, seed: int = 0,
               on_tick: Callable[[int], None] | None = None) -> RunResult:
    """Run ``scenario`` for ``ticks`` ticks from ``seed``, calling ``driver``
    after each tick (``policy`` names it in the result) and ``on_tick(t)``
    after that (for progress bars)."""
    sim = Simulation(scenario, np.random.default_rng(seed))
    res = RunResult(scenario, sim, policy, seed, ticks)
    seen = 0
    peak_pt: dict[int, int] = {}
    t0 = time.perf_counter()
    for t in range(ticks):
        sim.step()
        procs = sim.procs
        for p in procs[seen:]:
            res.first_tick[p.pid] = t
        seen = len(procs)
        peak = res.peak_rss_pages
        for p in procs:
            if p.alive:
                rss = p.mm.rss_pages
                if rss > peak.get(p.pid, 0):
                    peak[p.pid] = rss
                pt = p.pt_bytes
                if pt >= peak_pt.get(p.pid, 0):
                    peak_pt[p.pid] = pt
                    res.peak_classes[p.pid] = p.mm.class_counts()
            elif p.pid not in res.end_tick:
                res.end_tick[p.pid] = t
        driver(sim)
        if on_tick is not None:
            on_tick(t)
    # Processes that died in their first tick never had their RSS sampled.
    for p in sim.procs:
        res.peak_rss_pages.setdefault(p.pid, 0)
    res.wall_s = time.perf_counter() - t0
    return res


# -- summary ------------------------------------------------------------------

def _exit_reason(sim: Simulation, p: Process) -> str:
    tag = f"(pid {p.pid}) exits: "
    for _, msg in reversed(sim.events):
        if tag in msg:
            reason = msg.split(tag, 1)[1]
            if reason.startswith("OOM"):
                return "OOM-killed"
            if "hard limit" in reason:
                return "limit-killed"
            return "exited"
    return "exited"



def episode_cost_terms(hist: Sequence[TickRecord], wmark_min: float,
                       wmark_high: float) -> dict[str, float]:
    """The env's named cost terms summed over a run, with default decision
    ticks and reward weights (so a simulate.py run and an evaluated episode of
    the same length price alike), plus their weighted sum."""
    cfg = EnvConfig()
    terms = cost_terms(hist, cfg.decision_ticks, wmark_min, wmark_high)
    terms["weighted_cost"] = sum(getattr(cfg.reward, k) * terms[k] for k in COST_TERMS)
    return terms


def summarize(res: RunResult) -> dict[str, Any]:
    """The run's summary as plain data (``summary.json``): totals and one
    record per process."""
    sim = res.sim
    hist = sim.history
    m = sim.machine
    tick_s = m.tick_s
    procs = []
    for p in sim.procs:
        e, z, f, pinned = p.mm.class_counts()
        status = "alive" if p.alive else _exit_reason(sim, p)
        procs.append({
            "pid": p.pid, "name": p.name, "family": p.family,
            "kind": "sane" if p.sane else "malicious",
            "status": status,
            "start_tick": res.first_tick.get(p.pid, 0),
            "end_tick": res.end_tick.get(p.pid),
            "final_pt_bytes": p.pt_bytes,
            "peak_pt_bytes": max(p.history, default=0),
            "final_rss_bytes": p.rss_bytes,
            "peak_rss_bytes": res.peak_rss_pages.get(p.pid, 0) * PAGE,
            "tables": {"empty": e, "zero": z, "file": f, "pinned": pinned,
                       "upper": len(p.mm.pmd) + len(p.mm.pud)},
            "tables_at_peak": dict(zip(("empty", "zero", "file", "pinned"),
                                       res.peak_classes.get(p.pid, (0, 0, 0, 0)), strict=True)),
        })
    fail = [r.tick for r in hist if r.failure]
    ooms = [(r.tick, r.oom_kill) for r in hist if r.oom_kill]
    pt = [r.pt_pages for r in hist]
    free = [r.normal_free_pages for r in hist]
    wm = m.wmark
    totals = {
        "scenario": res.scenario.name, "policy": res.policy, "seed": res.seed,
        "ticks": len(hist), "tick_ms": m.config.tick_ms,
        "wall_s": round(res.wall_s, 3),
        "us_per_tick": round(1e6 * res.wall_s / max(1, len(hist)), 1),
        "processes": len(sim.procs),
        "alloc_failure_ticks": len(fail),
        "first_failure_tick": fail[0] if fail else None,
        "oom_kills": len(ooms),
        "oom_victims": [f"{name}@{t}" for t, name in ooms],
        "harm_events": sum(r.harm_events for r in hist),
        "stall_s": sum(r.stall_us for r in hist) / 1e6,
        "reclaim_cpu_ms": sum(r.reclaim_cpu_us for r in hist) / 1e3,
        "reclaim_scanned_tables": sum(r.reclaim_scanned for r in hist),
        "reclaim_freed_tables": sum(r.reclaim_freed for r in hist),
        "refault_tables": sum(r.refault_tables for r in hist),
        "refault_entries": sum(r.refault_entries for r in hist),
        "psi_some_avg10_peak": max((r.psi_some_avg10 for r in hist), default=0.0),
        "psi_full_avg10_peak": max((r.psi_full_avg10 for r in hist), default=0.0),
        "pt_bytes_peak": max(pt, default=0) * PAGE,
        "pt_bytes_final": pt[-1] * PAGE if pt else 0,
        "normal_zone_bytes": m.normal_pages * PAGE,
        "normal_free_min_bytes": min(free, default=0) * PAGE,
        "ticks_below_low_wmark": sum(x < wm.low for x in free),
        "cost_terms": episode_cost_terms(hist, wm.min, wm.high),
        "watermark_bytes": {"min": wm.min * PAGE, "low": wm.low * PAGE, "high": wm.high * PAGE},
        "run_seconds_simulated": len(hist) * tick_s,
    }
    return {"totals": totals, "processes": procs}


def _mib(b: float) -> str:
    return f"{b / MIB:,.1f}"


def summary_tables(summary: dict[str, Any], max_rows: int = 30) -> tuple[Table, Table]:
    from rich.table import Table

    procs = sorted(summary["processes"], key=lambda q: (-q["peak_pt_bytes"], q["pid"]))
    pt = Table(title="processes (MiB; E/Z/F/P: empty/zero/file/pinned PTE tables at the peak)",
               title_justify="left")
    pt.add_column("name", no_wrap=True)
    for col in ("family", "kind", "status"):
        pt.add_column(col, overflow="fold")
    for col in ("PT final/peak", "RSS final/peak", "E/Z/F/P at peak"):
        pt.add_column(col, justify="right")
    for q in procs[:max_rows]:
        c = q["tables_at_peak"]
        status = q["status"]
        if q["end_tick"] is not None:
            status = f"{status}@{q['end_tick']}"
        pt.add_row(q["name"], q["family"],
                   q["kind"] if q["kind"] == "sane" else f"[red]{q['kind']}[/red]", status,
                   f"{_mib(q['final_pt_bytes'])}/{_mib(q['peak_pt_bytes'])}",
                   f"{_mib(q['final_rss_bytes'])}/{_mib(q['peak_rss_bytes'])}",
                   f"{c['empty']}/{c['zero']}/{c['file']}/{c['pinned']}")
    if len(procs) > max_rows:
        pt.add_row(f"... {len(procs) - max_rows} more", *[""] * 6)
    t = summary["totals"]
    wm = t["watermark_bytes"]
    title = (f"totals: {t['scenario']}, policy {t['policy']}, seed {t['seed']}, "
             f"{t['ticks']} ticks of {t['tick_ms']} ms")
    tot = Table(title=title, title_justify="left", min_width=len(title))
    tot.add_column("measure")
    tot.add_column("value", justify="right")
    rows = [
        ("allocation-failure ticks", f"{t['alloc_failure_ticks']}"
         + (f" (first at tick {t['first_failure_tick']})" if t["alloc_failure_ticks"] else "")),
        ("OOM kills", f"{t['oom_kills']}"
         + (f" ({', '.join(t['oom_victims'][:4])}{', ...' if t['oom_kills'] > 4 else ''})"
            if t["oom_kills"] else "")),
        ("harm events (sane processes hurt)", str(t["harm_events"])),
        ("application stall", f"{t['stall_s']:.3f} s"),
        ("reclaim CPU", f"{t['reclaim_cpu_ms']:.3f} ms"),
        ("reclaim scanned / freed tables",
         f"{t['reclaim_scanned_tables']:,} / {t['reclaim_freed_tables']:,}"),
        ("refaulted tables / entries", f"{t['refault_tables']:,} / {t['refault_entries']:,}"),
        ("PSI some / full avg10 peak",
         f"{t['psi_some_avg10_peak']:.3f} / {t['psi_full_avg10_peak']:.3f}"),
        ("page tables peak / final", f"{_mib(t['pt_bytes_peak'])} / "
                                     f"{_mib(t['pt_bytes_final'])} MiB"),
        ("normal zone size / lowest free", f"{_mib(t['normal_zone_bytes'])} / "
                                          f"{_mib(t['normal_free_min_bytes'])} MiB"),
        ("watermarks min / low / high",
         f"{_mib(wm['min'])} / {_mib(wm['low'])} / {_mib(wm['high'])} MiB"),
        ("ticks below the low watermark", str(t["ticks_below_low_wmark"])),
        ("processes", str(t["processes"])),
        ("wall time", f"{t['wall_s']:.2f} s ({t['us_per_tick']:.0f} µs/tick)"),
    ]
    terms = t["cost_terms"]
    rows.append(("cost terms (env reward units)",
                 ", ".join(f"{k} {v:,.2f}" for k, v in terms.items() if k != "weighted_cost")))
    rows.append(("weighted cost (default reward weights)", f"{terms['weighted_cost']:,.2f}"))
    for k, v in rows:
        tot.add_row(k, v)
    return pt, tot


def render_summary(summary: dict[str, Any], width: int = 130, max_rows: int = 1000) -> str:
    """The summary tables as plain text (what ``summary.txt`` holds)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, color_system=None,
                      force_terminal=False, legacy_windows=False)
    for table in summary_tables(summary, max_rows):
        console.print(table)
    return buf.getvalue()


# -- plot ---------------------------------------------------------------------

def plot_psi(ax: Any, t: Any, some: Sequence[float], full: Sequence[float], ylabel: str,
             ncol: int = 1) -> None:
    """The PSI panel of a timeline on the matplotlib axes ``ax``: memory pressure
    ``some`` and ``full`` (avg10) against ``t`` (the live monitor's panel too)."""
    ax.plot(t, some, color="tab:purple", lw=1.0, label="some avg10")
    ax.plot(t, full, color="tab:brown", lw=1.0, label="full avg10")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=7, ncol=ncol, frameon=False)


def plot_timeline(res: RunResult, title: str | None = None, dpi: int = 90) -> bytes:
    """The PNG timeline of a run (bytes): stacked panels sharing the tick axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = res.sim
    hist = sim.history
    m = sim.machine
    ticks = np.array([r.tick for r in hist])
    to_mib = PAGE_KIB / 1024.0
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2.2, 1.6, 1.2]})
    ax_pt, ax_free, ax_psi, ax_ev = axes

    ax_pt.plot(ticks, np.array([r.pt_pages for r in hist]) * to_mib, color="black", lw=1.6,
               label="all processes")
    top = sorted(sim.procs, key=lambda p: (-max(p.history, default=0), p.pid))[:TOP_PLOTTED]
    for p in top:
        if not p.history:
            continue
        t0 = res.first_tick.get(p.pid, 0)
        xs = np.arange(t0, t0 + len(p.history))
        style = "-" if p.sane else "--"
        label = f"{p.name} ({p.family}{'' if p.sane else ', malicious'})"
        ax_pt.plot(xs, np.array(p.history) / MIB, style, lw=1.0, label=label)
    ax_pt.set_ylabel("page tables (MiB)")
    ax_pt.legend(loc="upper left", fontsize=7, ncol=2, frameon=False)

    free = np.array([r.normal_free_pages for r in hist]) * to_mib
    ax_free.plot(ticks, free, color="tab:blue", lw=1.0, label="normal-zone free")
    for name, val, color in (("min", m.wmark.min, "tab:red"), ("low", m.wmark.low, "tab:orange"),
                             ("high", m.wmark.high, "tab:green")):
        ax_free.axhline(val * to_mib, color=color, lw=0.8, ls=":", label=f"{name} watermark")
    ax_free.set_ylabel("free (MiB)")
    ax_free.legend(loc="upper right", fontsize=7, ncol=4, frameon=False)

    plot_psi(ax_psi, ticks, [r.psi_some_avg10 for r in hist], [r.psi_full_avg10 for r in hist],
             "PSI memory", ncol=2)

    fails = [r.tick for r in hist if r.failure]
    ooms = [(r.tick, r.oom_kill) for r in hist if r.oom_kill]
    ax_ev.scatter(fails, [1.0] * len(fails), marker="|", s=60, color="tab:red",
                  label=f"allocation failure ({len(fails)} ticks)")
    ax_ev.scatter([t for t, _ in ooms], [0.0] * len(ooms), marker="X", s=50, color="black",
                  label=f"OOM kill ({len(ooms)})")
    for i, (t, name) in enumerate(ooms[:8]):
        ax_ev.annotate(str(name), (t, 0.0), xytext=(3, -10 + 9 * (i % 3)),
                       textcoords="offset points", fontsize=6)
    freed = [(r.tick, r.reclaim_freed) for r in hist if r.reclaim_freed]
    if freed:
        ax_ev.scatter([t for t, _ in freed], [0.5] * len(freed), marker=".", s=4,
                      color="tab:green", label=f"reclaim freed tables ({len(freed)} ticks)")
    ax_ev.set_yticks([0.0, 0.5, 1.0], ["OOM", "reclaim", "failure"], fontsize=7)
    ax_ev.set_ylim(-0.5, 1.6)
    ax_ev.legend(loc="upper left", fontsize=7, ncol=3, frameon=False)
    ax_ev.set_xlabel(f"tick ({m.config.tick_ms} ms)")
    if len(ticks):
        ax_ev.set_xlim(ticks[0], ticks[-1] + 1)

    fig.suptitle(title or f"{res.scenario.name}: policy {res.policy}, seed {res.seed}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


