"""Tables, files and plots of an evaluation (see :mod:`ptreclaim.agents.evaluate`).

Everything here is a pure function of the results: the same results give the
same bytes (CSV and JSON floats are written with ``repr``, which round-trips;
PNGs carry no timestamp), so two runs of the same command can be compared
file by file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..envs.pagetable_env import COST_TERMS
from .stats import paired_difference_ci

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .results import EpisodeResult, PolicySummary

MIB = 1 << 20
PAGE = 4096

#: What each cost term measures (for tables and the report).
TERM_TEXT = {
    "pt_hold": "reclaimable page tables held, priced by the zone's pressure (MiB x hold price)",
    "alloc_failures": "ticks with a failed unmovable allocation",
    "reclaim_cpu": "reclaim CPU (scan, locks, TLB flush)",
    "app_stall": "application stall (locks, re-faults, failures)",
    "harm": "sane processes killed or throttled",
}
_FIXED_COLORS = {"none": "#7f7f7f", "on_zap": "#1f77b4", "soft_hard": "#2ca02c",
                 "periodic_scan": "#bcbd22", "oracle": "#000000"}
_OTHER_COLORS = ("#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_TERM_COLORS = ("#9ecae1", "#d62728", "#fdae6b", "#9467bd", "#000000")


def policy_colors(labels: Sequence[str]) -> dict[str, str]:
    """A stable colour per policy: the built-ins keep theirs across reports."""
    out: dict[str, str] = {}
    k = 0
    for lab in labels:
        if lab in _FIXED_COLORS:
            out[lab] = _FIXED_COLORS[lab]
        else:
            out[lab] = _OTHER_COLORS[k % len(_OTHER_COLORS)]
            k += 1
    return out


# ------------------------------------------------------------------ numbers

def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if round(x, digits) == 0:
        x = 0.0  # no "-0.00"
    return f"{x:,.{digits}f}"


def _ci(point: float | None, lo: float | None, hi: float | None, digits: int = 2) -> str:
    if point is None or (isinstance(point, float) and math.isnan(point)):
        return "-"
    return f"{_num(point, digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _jsonable(x: Any) -> Any:
    """Plain data with NaN/inf as null (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def summary_columns(baseline: str) -> list[str]:
    """Header of the summary tables."""
    return ["policy", "mean cost [95% CI]", "IQM cost", "normalised score [95% CI]",
            f"P(better than {baseline}) [95% CI]", "failure ticks/ep", "of them unwarned",
            "OOM kills/ep"]


def summary_row(s: PolicySummary) -> list[str]:
    """One row of a summary table (plain text)."""
    return [s.policy, _ci(s.mean_cost, s.ci_low, s.ci_high), _num(s.iqm_cost),
            _ci(s.normalized, s.norm_ci_low, s.norm_ci_high),
            _ci(s.prob_improvement, s.poi_ci_low, s.poi_ci_high),
            _num(s.failure_ticks, 1),
            _num(s.unwarned_failure_ticks, 1),
            _num(s.oom_kills, 2)]


def terms_row(s: PolicySummary) -> list[str]:
    """Weighted mean cost terms of one policy, then the total."""
    terms = s.weighted_terms or s.terms
    return [s.policy, *[_num(terms.get(k, float("nan"))) for k in COST_TERMS],
            _num(s.mean_cost)]


# ------------------------------------------------------------------ files

def results_csv(results: Sequence[EpisodeResult]) -> str:
    """``results.csv``: one row per policy x scenario x episode, every term."""
    rows = [r.row() for r in results]
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def results_json(results: Sequence[EpisodeResult]) -> str:
    """``results.json``: the same rows as the CSV, as a JSON list."""
    return json.dumps(_jsonable([r.row() for r in results]), indent=1) + "\n"


def summary_json(overall: Sequence[PolicySummary],
                 per_scenario: Mapping[str, Sequence[PolicySummary]],
                 meta: Mapping[str, Any]) -> str:
    """``summary.json``: the evaluation's settings and every statistic."""
    data = {"meta": meta,
            "overall": [dataclasses.asdict(s) for s in overall],
            "per_scenario": {k: [dataclasses.asdict(s) for s in v]
                             for k, v in per_scenario.items()}}
    return json.dumps(_jsonable(data), indent=1) + "\n"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]],
             numeric: bool = True) -> str:
    """A Markdown table (the project's one table formatter): the first
    column left-aligned, the others right-aligned when ``numeric``; ``|`` in
    a cell is escaped."""
    right = ["---" if i == 0 or not numeric else "--:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(right) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(overall: Sequence[PolicySummary],
                    per_scenario: Mapping[str, Sequence[PolicySummary]],
                    meta: Mapping[str, Any]) -> str:
    """``report.md``: settings, summary tables, cost breakdown, plots, and how
    to read them."""
    baseline = str(meta.get("baseline", "on_zap"))
    scen = list(per_scenario)
    env = meta.get("env", {})
    weights = env.get("reward", {}) if isinstance(env, Mapping) else {}
    lines = [
        f"# Evaluation on `{meta.get('suite', '?')}`",
        "",
        f"{len(scen)} scenario(s) x {meta.get('episodes')} seeded episodes (base seed "
        f"{meta.get('seed')}); every policy ran on the same episodes. Costs are per "
        "episode (minus the return): lower is better. Intervals are 95 % stratified "
        f"bootstrap CIs ({meta.get('bootstrap')} resamples within each scenario).",
        "",
        "## Policies",
        "",
        md_table(["label", "kind", "from"],
                  [[p["label"], p["kind"], f"`{p.get('path') or p.get('source', '')}`"]
                   for p in meta.get("policies", [])], numeric=False),
        "",
        "## All scenarios",
        "",
        md_table(summary_columns(baseline), [summary_row(s) for s in overall]),
        "",
        "![scores](scores.png)",
        "",
    ]
    paired = meta.get("paired", {})
    if paired:
        lines += [
            f"## Paired against `{baseline}`",
            "",
            f"Mean of (`{baseline}`'s cost - the policy's cost) on the same episodes, with "
            "its 95 % CI (resampling episodes within each scenario): above zero, the policy "
            f"is better than `{baseline}`.",
            "",
            md_table(["policy", f"{baseline} - policy", "95% CI", "verdict"],
                     [[name, _num(m), f"[{_num(lo)}, {_num(hi)}]",
                       "better" if lo > 0 else "worse" if hi < 0 else "not distinguishable"]
                      for name, (m, lo, hi) in paired.items()]),
            "",
        ]
    lines += [
        "## Cost breakdown (weighted mean per episode, all scenarios)",
        "",
        md_table(["policy", *COST_TERMS, "total"], [terms_row(s) for s in overall]),
        "",
        "![cost terms](cost_terms.png)",
        "",
    ]
    for name, rows in per_scenario.items():
        lines += [f"## Scenario `{name}`", "",
                  md_table(summary_columns(baseline), [summary_row(s) for s in rows]), "",
                  md_table(["policy", *COST_TERMS, "total"], [terms_row(s) for s in rows]),
                  ""]
    tl = meta.get("timeline", {})
    lines += [
        "## One episode, every policy",
        "",
        f"Scenario `{tl.get('scenario')}`, episode {tl.get('episode')} (seed {tl.get('seed')}):"
        " page-table memory, free unmovable (normal-zone) memory against its watermarks, "
        "memory pressure, tables freed by reclaim passes, and allocation failures.",
        "",
        "![timeline](timeline.png)",
        "",
        "## How to read this",
        "",
        "- **mean cost**: the weighted sum of the cost terms per episode, averaged over "
        "episodes and scenarios; its CI comes from resampling episodes within each "
        "scenario.",
        "- **IQM cost**: the mean of the middle 50 % of episodes, robust to a few "
        "outliers.",
        "- **normalised score**: `(none - policy) / (none - oracle)` on each scenario's "
        "mean costs, then averaged: 0 is no reclaim (`none`, a kernel before 6.14), 1 is "
        "the oracle bound (it knows each table's next use). Above 1 beats the oracle on "
        "this simulator's costs; below 0 is worse than no reclaim. Scenarios where "
        "`none` and `oracle` cost the same are left out.",
        f"- **P(better than {baseline})**: the share of episodes where the policy cost less "
        f"than `{baseline}` on the same seed (ties count half). 0.5 is a coin toss; a CI "
        "that excludes 0.5 is a consistent difference.",
        "- **failure ticks/ep, OOM kills/ep**: ticks with a failed unmovable allocation "
        "and OOM kills per episode; **of them unwarned**: the failure ticks of decisions "
        "made while free memory stood at or above the high watermark, where the hold "
        "price is 0 and holding tables costs nothing: a burst outran one decision, and "
        "only tables freed before any pressure (or knowledge of the future) avoid those.",
        "- **cost terms** (weights " + ", ".join(
            f"{k} {weights.get(k)}" for k in COST_TERMS) + "): " + "; ".join(
            f"`{k}`: {TERM_TEXT[k]}" for k in COST_TERMS) + ".",
        "",
        "Files: `results.csv` / `results.json` (one row per policy x scenario x episode; "
        "`term_*` raw, `cost_*` weighted), `summary.json` (every statistic), `config.yaml` "
        "(settings, env, seeds), `command.txt`.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------ terminal

def rich_tables(overall: Sequence[PolicySummary],
                per_scenario: Mapping[str, Sequence[PolicySummary]],
                meta: Mapping[str, Any]) -> list[Table]:
    """The summary, per-scenario and cost-breakdown tables for the terminal."""
    from rich.table import Table

    baseline = str(meta.get("baseline", "on_zap"))
    title = (f"{meta.get('suite')}: {len(per_scenario)} scenarios x {meta.get('episodes')} "
             f"episodes, seed {meta.get('seed')} (cost: lower is better; 95 % CIs)")
    out = []
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(summary_columns(baseline)):
        t.add_column(col, justify="left" if i == 0 else "right")
    best = min((s.mean_cost for s in overall if s.policy != "oracle"), default=None)
    for s in overall:
        row = summary_row(s)
        if s.mean_cost == best:
            row[0] = f"[bold]{row[0]}[/bold]"
        t.add_row(*row)
    out.append(t)
    scen = Table(title="per scenario: mean cost (normalised score)", title_justify="left")
    scen.add_column("policy")
    for name in per_scenario:
        scen.add_column(name, justify="right")
    for s in overall:
        cells = []
        for rows in per_scenario.values():
            r = next((x for x in rows if x.policy == s.policy), None)
            cells.append("-" if r is None else
                         f"{_num(r.mean_cost)} ({_num(r.normalized)})")
        scen.add_row(s.policy, *cells)
    out.append(scen)
    terms = Table(title="cost breakdown (weighted mean per episode, all scenarios)",
                  title_justify="left")
    for i, col in enumerate(["policy", *COST_TERMS, "total"]):
        terms.add_column(col, justify="left" if i == 0 else "right")
    for s in overall:
        terms.add_row(*terms_row(s))
    out.append(terms)
    return out


def progress_display(label: str, console: Console, *, transient: bool,
                     status_field: str | None = None, bar_width: int = 40) -> Progress:
    """The project's rich progress bar: ``label``, the bar, done/total,
    elapsed and remaining time, then (with ``status_field``) the task's field
    of that name, e.g. the best result so far."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns: list[ProgressColumn] = [TextColumn(label), BarColumn(bar_width=bar_width),
                                     MofNCompleteColumn(), TimeElapsedColumn()]
    if status_field is not None:
        columns.append(TextColumn("<"))
    columns.append(TimeRemainingColumn())
    if status_field is not None:
        columns.append(TextColumn(f"{{task.fields[{status_field}]}}"))
    return Progress(*columns, console=console, transient=transient)


def render_text(overall: Sequence[PolicySummary],
                per_scenario: Mapping[str, Sequence[PolicySummary]],
                meta: Mapping[str, Any], width: int = 130) -> str:
    """The terminal tables as plain text."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, color_system=None,
                      force_terminal=False, legacy_windows=False)
    for table in rich_tables(overall, per_scenario, meta):
        console.print(table)
    return buf.getvalue()


# ------------------------------------------------------------------ plots

def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any, dpi: int, tight: bool = False) -> bytes:
    """``fig`` as PNG bytes (then closed); ``tight`` crops to what is drawn."""
    plt = pyplot()
    buf = io.BytesIO()
    # No "Software" key: the PNG is then the same whatever matplotlib wrote it.
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None},
                bbox_inches="tight" if tight else None)
    plt.close(fig)
    return buf.getvalue()


def _panels(overall: Sequence[PolicySummary],
            per_scenario: Mapping[str, Sequence[PolicySummary]]
            ) -> list[tuple[str, Sequence[PolicySummary]]]:
    panels: list[tuple[str, Sequence[PolicySummary]]] = list(per_scenario.items())
    if len(per_scenario) > 1:
        panels.append(("all scenarios", overall))
    return panels


def _panel_grid(plt: Any, n: int, n_labels: int, pad: float) -> tuple[Any, Any, np.ndarray]:
    """Up to 4 panels a row sharing one policy axis (``pad`` inches per row
    for titles and labels), and the policies' y positions, first on top."""
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1.2, 0.32 * n_labels
                                                    * nrows + pad * nrows),
                             sharey=True, squeeze=False)
    return fig, axes, np.arange(n_labels)[::-1]


def plot_scores(overall: Sequence[PolicySummary],
                per_scenario: Mapping[str, Sequence[PolicySummary]],
                dpi: int = 80) -> bytes:
    """``scores.png``: per scenario (and over all), each policy's normalised
    score with its 95 % CI; the mean cost when there is no oracle."""
    plt = pyplot()
    panels = _panels(overall, per_scenario)
    labels = [s.policy for s in overall]
    colors = policy_colors(labels)
    normalised = any(s.normalized is not None for s in overall)
    n = len(panels)
    fig, axes, y = _panel_grid(plt, n, len(labels), 1.3)
    for ax, (name, rows) in zip(axes.flat, panels, strict=False):
        by = {s.policy: s for s in rows}
        for yi, lab in zip(y, labels, strict=True):
            s = by.get(lab)
            if s is None:
                continue
            if normalised:
                pt, lo, hi = s.normalized, s.norm_ci_low, s.norm_ci_high
            else:
                pt, lo, hi = s.mean_cost, s.ci_low, s.ci_high
            if pt is None or not math.isfinite(pt):
                continue
            lo = pt if lo is None else lo
            hi = pt if hi is None else hi
            ax.errorbar([pt], [yi], xerr=[[pt - lo], [hi - pt]], fmt="o", ms=4,
                        color=colors[lab], ecolor=colors[lab], elinewidth=2, capsize=3)
        if normalised:
            ax.axvline(0.0, color="#7f7f7f", lw=0.8, ls=":")
            ax.axvline(1.0, color="#000000", lw=0.8, ls=":")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", lw=0.3, alpha=0.5)
        ax.set_xlabel("normalised score (0 none, 1 oracle)" if normalised else
                      "mean cost per episode", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes[0][0].set_yticks(y, labels, fontsize=7)
    fig.suptitle("scores with 95 % bootstrap CIs (higher is better)" if normalised else
                 "mean cost with 95 % bootstrap CIs (lower is better)", fontsize=9)
    fig.tight_layout()
    return png(fig, dpi)


def plot_cost_terms(overall: Sequence[PolicySummary],
                    per_scenario: Mapping[str, Sequence[PolicySummary]],
                    dpi: int = 80) -> bytes:
    """``cost_terms.png``: per scenario (and over all), stacked bars of each
    policy's weighted mean cost terms per episode."""
    plt = pyplot()
    panels = _panels(overall, per_scenario)
    labels = [s.policy for s in overall]
    n = len(panels)
    fig, axes, y = _panel_grid(plt, n, len(labels), 1.6)
    for ax, (name, rows) in zip(axes.flat, panels, strict=False):
        by = {s.policy: s for s in rows}
        left = np.zeros(len(labels))
        for k, color in zip(COST_TERMS, _TERM_COLORS, strict=True):
            vals = np.array([(by[lab].weighted_terms or by[lab].terms).get(k, 0.0)
                             if lab in by else 0.0 for lab in labels])
            ax.barh(y, vals, left=left, color=color, height=0.7, label=k)
            left += vals
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("weighted cost per episode", fontsize=7)
        ax.grid(axis="x", lw=0.3, alpha=0.5)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes[0][0].set_yticks(y, labels, fontsize=7)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(COST_TERMS), fontsize=7,
               frameon=False)
    fig.suptitle("cost breakdown (lower is better)", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return png(fig, dpi)


def plot_timelines(timelines: Mapping[str, Sequence[Mapping[str, Any]]], title: str,
                   dpi: int = 80) -> bytes:
    """``timeline.png``: one episode of every policy on the same seed: page
    tables, free unmovable memory vs watermarks, PSI, tables freed by reclaim
    (dots where a pass scanned), cumulative allocation-failure ticks (crosses
    at OOM kills)."""
    plt = pyplot()
    colors = policy_colors(list(timelines))
    # Policies that act alike draw the same line: dashes keep the lower ones visible.
    styles = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)))
    fig, axes = plt.subplots(5, 1, figsize=(9, 9), sharex=True,
                             gridspec_kw={"height_ratios": [2.2, 2.0, 1.3, 1.3, 1.5]})
    ax_pt, ax_free, ax_psi, ax_rec, ax_fail = axes
    first = True
    for i, (lab, tl) in enumerate(timelines.items()):
        if not tl:
            continue
        c = colors[lab]
        ls = styles[i % len(styles)]
        x = np.array([r["tick"] for r in tl])
        ax_pt.plot(x, np.array([r["pt_bytes"] for r in tl]) / MIB, color=c, lw=1.1, ls=ls,
                   label=lab)
        ax_free.plot(x, np.array([r["normal_free_pages"] for r in tl]) * PAGE / MIB, color=c,
                     lw=1.0, ls=ls)
        if first:
            for key, wc in (("wmark_min", "tab:red"), ("wmark_low", "tab:orange"),
                            ("wmark_high", "tab:green")):
                ax_free.plot(x, np.array([r[key] for r in tl]) * PAGE / MIB, color=wc, lw=0.8,
                             ls=":", label=key.replace("wmark_", "") + " watermark")
            first = False
        ax_psi.plot(x, [r["psi_some_avg10"] for r in tl], color=c, lw=1.0, ls=ls)
        freed = np.array([r["reclaim_freed"] for r in tl])
        ax_rec.plot(x, freed, color=c, lw=0.9, ls=ls, drawstyle="steps-post")
        passes = [(t, f) for t, f, r in zip(x, freed, tl, strict=True) if r["reclaim_scanned"]]
        if passes:
            ax_rec.scatter([t for t, _ in passes], [f for _, f in passes], s=6, color=c)
        fails = np.cumsum([r["failures"] for r in tl])
        ax_fail.plot(x, fails, color=c, lw=1.1, ls=ls)
        kills = [(t, f) for t, f, r in zip(x, fails, tl, strict=True) if r["oom_kills"]]
        if kills:
            ax_fail.scatter([t for t, _ in kills], [f for _, f in kills], marker="x", s=30,
                            color=c)
    ax_pt.set_ylabel("page tables\n(MiB)", fontsize=8)
    ax_pt.legend(loc="upper left", fontsize=7, ncol=3, frameon=False)
    ax_free.set_ylabel("normal-zone free\n(MiB; < 0: unmet)", fontsize=8)
    ax_free.legend(loc="lower left", fontsize=7, ncol=3, frameon=False)
    ax_psi.set_ylabel("PSI some\navg10", fontsize=8)
    ax_psi.set_ylim(bottom=0)
    ax_rec.set_ylabel("tables freed\nby reclaim", fontsize=8)
    ax_rec.set_yscale("symlog", linthresh=10)
    ax_rec.set_ylim(bottom=0)
    ax_fail.set_ylabel("failure ticks\n(cumulative; x OOM)", fontsize=8)
    ax_fail.set_xlabel("tick", fontsize=8)
    ax: Axes
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(lw=0.3, alpha=0.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png(fig, dpi)


def render_all(results: Sequence[EpisodeResult], overall: Sequence[PolicySummary],
               per_scenario: Mapping[str, Sequence[PolicySummary]],
               timelines: Mapping[str, Sequence[Mapping[str, Any]]],
               meta: Mapping[str, Any]) -> dict[str, str | bytes]:
    """Every report file by name (``report.md``, ``results.csv``,
    ``results.json``, ``summary.json``, ``scores.png``, ``cost_terms.png``,
    ``timeline.png``)."""
    tl = meta.get("timeline", {})
    title = (f"{tl.get('scenario')}: episode {tl.get('episode')} (seed {tl.get('seed')}), "
             "every policy")
    baseline = str(meta.get("baseline", "on_zap"))
    labels = [s.policy for s in overall]
    if baseline in labels:
        n_boot = int(meta.get("bootstrap") or 2000)
        meta = {**meta, "paired": {
            name: paired_difference_ci(results, name, baseline, n_boot=n_boot)
            for name in labels if name not in (baseline, "oracle")}}
    return {
        "report.md": markdown_report(overall, per_scenario, meta),
        "results.csv": results_csv(results),
        "results.json": results_json(results),
        "summary.json": summary_json(overall, per_scenario, meta),
        "scores.png": plot_scores(overall, per_scenario),
        "cost_terms.png": plot_cost_terms(overall, per_scenario),
        "timeline.png": plot_timelines(timelines, title),
    }
