"""What a training run reports: its ``report.md``, tables and plots, and the
aggregate of a multi-seed experiment."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...envs.configio import load_json, write_text_atomic
from ...envs.pagetable_env import COST_TERMS, EnvConfig
from ...envs.sim.config import ConfigError
from ..report import md_table, png, pyplot
from ..results import EpisodeResult, PolicySummary
from ..runs import RunFolder
from ..stats import (
    gain_share,
    mean_unwarned,
    paired_difference_ci,
    pooled_difference,
    stratified_bootstrap,
    summarize,
)
from .config import ExperimentConfig
from .runconfig import RunConfig

if TYPE_CHECKING:
    from rich.console import Console


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def print_tables(console: Console, summaries: Sequence[PolicySummary],
                 paired: Mapping[tuple[str, str], tuple[float, float, float]],
                 title: str) -> None:
    """The rich table of the final comparison, and the paired differences."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("policy", "mean cost", "95% CI", "IQM", "score", "P(< none)"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for s in summaries:
        t.add_row(s.policy, f"{s.mean_cost:.2f}", f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
                  f"{s.iqm_cost:.2f}", _fmt(s.normalized), _fmt(s.prob_improvement))
    console.print(t)
    if paired:
        p = Table(title="paired difference: heuristic cost - learned cost (> 0: learned better)",
                  title_justify="left")
        for col in ("learned", "vs", "mean", "95% CI", "better?"):
            p.add_column(col, justify="left" if col in ("learned", "vs") else "right")
        for (pol, other), (m, lo, hi) in paired.items():
            verdict = "yes" if lo > 0 else ("no (worse)" if hi < 0 else "not sure")
            p.add_row(pol, other, f"{m:.2f}", f"[{lo:.2f}, {hi:.2f}]", verdict)
        console.print(p)




def summary_rows(summaries: Sequence[PolicySummary]) -> list[list[str]]:
    """The rows of :data:`SUMMARY_HEADER`."""
    return [[s.policy, f"{s.mean_cost:.2f}", f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
             f"{s.iqm_cost:.2f}", _fmt(s.normalized), _fmt(s.prob_improvement)]
            for s in summaries]


SUMMARY_HEADER = ("policy", "mean cost", "95% CI", "IQM", "score", "P(< none)")


def run_report(run: RunFolder, cfg: RunConfig, summaries: Sequence[PolicySummary],
               paired: Mapping[tuple[str, str], tuple[float, float, float]],
               results: Sequence[EpisodeResult], state: Mapping[str, Any]) -> str:
    """``report.md`` of one run."""
    exp = cfg.experiment
    w = exp.env.reward
    names = list(dict.fromkeys(r.policy for r in results))
    scen_names = list(dict.fromkeys(r.scenario for r in results))
    lines = [f"# {run.name}", "",
             f"{exp.algo} on `{exp.env_id}`, seed {cfg.seed}, {state.get('num_timesteps')} "
             f"steps in {float(state.get('train_seconds', 0.0)):.0f} s of training "
             f"({float(state.get('fps', 0.0)):.0f} steps/s, {exp.n_envs} envs, {exp.vec_env}); "
             f"final evaluation on the held-out suite {float(state.get('eval_seconds', 0.0)):.0f} s"
             f" (+ {float(state.get('curve_seconds', 0.0)):.0f} s of baselines for the learning "
             "curve).",
             f"Trained on: {', '.join(s.name for s in cfg.scenarios.train)}.",
             f"Held out: {', '.join(s.name for s in cfg.scenarios.eval)}, "
             f"{exp.eval.final_episodes} seeded episodes each (seeds from {exp.eval.seed}), "
             "the same episodes for every policy.", "",
             "Cost = minus the episode reward (lower is better); CI: 95 % stratified "
             "bootstrap over episodes; score = (policy - none) / (oracle - none) "
             "(1 = as good as the privileged oracle bound, 0 = no better than never "
             "reclaiming on an old kernel); P(< none): probability of a lower cost than "
             "`none` on the same episode. "
             f"`{exp.algo}` is the final model, `{exp.algo}_best` the best one on the "
             "training-time validation episodes ("
             + ("training scenarios with their own seeds: the held-out scenarios play no part "
                "in choosing it" if exp.eval.select_on == "train" else
                "other seeds of the held-out scenarios") + ").", "",
             "## Results", "", md_table(SUMMARY_HEADER, summary_rows(summaries)), "",
             "## Learned vs each baseline (paired by episode)", "",
             "Mean of (baseline cost - learned cost) on the same episodes, 95 % CI; "
             "above zero: the learned policy is better.", ""]
    rows = []
    for (pol, other), (m, lo, hi) in paired.items():
        verdict = "better" if lo > 0 else ("worse" if hi < 0 else "inconclusive")
        rows.append([pol, other, f"{m:.2f}", f"[{lo:.2f}, {hi:.2f}]", verdict])
    lines += [md_table(("learned", "baseline", "mean diff", "95% CI", "verdict"), rows), "",
              "## Mean cost per scenario", ""]
    rows = []
    for n in names:
        rows.append([n] + [f"{np.mean([r.cost for r in results if r.policy == n and r.scenario == s]):.2f}"  # noqa: E501
                           for s in scen_names])
    lines += [md_table(["policy", *scen_names], rows), "",
              "## Weighted cost terms (mean per episode)", "",
              "weight x term: " + ", ".join(f"{k} x {getattr(w, k):g}" for k in COST_TERMS), ""]
    rows = [[s.policy] + [f"{getattr(w, k) * s.terms[k]:.2f}" for k in COST_TERMS]
            for s in summaries]
    lines += [md_table(["policy", *COST_TERMS], rows), "",
              "Raw terms (units: see RewardWeights):", ""]
    rows = [[s.policy] + [f"{s.terms[k]:.1f}" for k in COST_TERMS] for s in summaries]
    lines += [md_table(["policy", *COST_TERMS], rows), "",
              "## Plots", "",
              *(["![learning curve](learning_curve.png)", ""]
                if (run / "learning_curve.png").is_file() else []),
              "![cost terms](cost_terms.png)", "",
              "## Reproduce", "", "```", _read_text(run / "command.txt").strip(), "```", ""]
    return "\n".join(lines)


def _read_text(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def _savefig(fig: Any, path: Path) -> None:
    write_text_atomic(path, png(fig, dpi=110, tight=True))


def plot_learning_curve(run: RunFolder, curve_base: Sequence[EpisodeResult], algo: str,
                        title: str) -> None:
    """Validation cost during training (``eval.select_on``), with each
    baseline's level on the same episodes."""
    path = run / "evaluations.npz"
    if not path.is_file():
        return
    plt = pyplot()

    with np.load(path) as d:
        ts = np.asarray(d["timesteps"])
        costs = -np.asarray(d["results"])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    mean, std = costs.mean(axis=1), costs.std(axis=1)
    ax.plot(ts, mean, marker="o", color="black", label=f"{algo} (mean over episodes)")
    ax.fill_between(ts, np.maximum(mean - std, 1e-3), mean + std, color="black", alpha=0.12)
    names = list(dict.fromkeys(r.policy for r in curve_base))
    colors = plt.get_cmap("tab10")
    for i, n in enumerate(names):
        level = float(np.mean([r.cost for r in curve_base if r.policy == n]))
        ax.axhline(level, ls="--" if n != "oracle" else ":", color=colors(i), label=f"{n}")
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation episode cost")
    levels = [r.cost for r in curve_base] + list(costs.ravel())
    if min(levels) > 0 and max(levels) / min(levels) > 10:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _savefig(fig, run / "learning_curve.png")


def plot_cost_terms(path: Path, summaries: Sequence[PolicySummary], env_config: EnvConfig
                    ) -> None:
    """Stacked weighted cost terms per policy (what the reward counts)."""
    plt = pyplot()

    w = env_config.reward
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(summaries))
    bottom = np.zeros(len(summaries))
    for k in COST_TERMS:
        vals = np.array([getattr(w, k) * s.terms[k] for s in summaries])
        ax.bar(x, vals, bottom=bottom, label=k)
        bottom += vals
    ax.set_xticks(x, [s.policy for s in summaries], rotation=20, fontsize=8)
    ax.set_ylabel("mean weighted cost per episode")
    ax.set_title("cost terms per policy (held-out episodes)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _savefig(fig, path)



def _load_results(run: Path, name: str = "eval_results.json") -> list[EpisodeResult]:
    path = run / name
    rows = load_json(path, f"a run's {name}")
    try:
        return [EpisodeResult(**r) for r in rows]
    except TypeError:
        raise ConfigError(f"{path}: not a list of episode results; the run folder is "
                          "damaged") from None



def multi_report(multi: RunFolder, runs: Mapping[int, Path], exp: ExperimentConfig,
                 console: Console | None, wall: float) -> str:
    """Per-seed and pooled results of a multi-seed experiment on the held-out suite, and on
    the unseen suite when the experiment names one (``eval.unseen_suite``: the final
    models and the baselines, ``unseen_results.json`` of the multi folder); also printed
    on ``console``, if given."""
    per_seed: dict[int, list[EpisodeResult]] = {}
    for seed, run in runs.items():
        if (run / "eval_results.json").is_file():
            per_seed[seed] = _load_results(run)
    algo = exp.algo
    lines = [f"# {multi.name}", "",
             f"{algo} on `{exp.env_id}`, seeds {', '.join(map(str, exp.seeds))}, "
             f"{exp.timesteps} steps each; wall time {wall:.0f} s for all seeds "
             "(training + final evaluation).", "",
             "Runs: " + ", ".join(f"[seed {s}]({r.name}/report.md)" for s, r in runs.items()), ""]
    if not per_seed:
        return "\n".join([*lines, "No seed finished.", ""])
    lines += _suite_block(multi.name, "held-out", per_seed, [algo, f"{algo}_best"], exp,
                          console, gaps=True)
    unseen = unseen_per_seed(multi, algo)
    if unseen:
        lines += [f"## Unseen scenarios (`{Path(exp.eval.unseen_suite).stem}`)", "",
                  "The final models and the baselines on the unseen suite "
                  f"({exp.eval.unseen_episodes} episodes per scenario, seeds from "
                  f"{exp.eval.seed}): scenarios of families and combinations the training "
                  "suite holds out.  The oracle is no bound there (a greedy rule with the "
                  "future in hand), so no gap to it is computed.", ""]
        lines += _suite_block(multi.name, "unseen", unseen, [algo], exp, console, gaps=False)
    elif exp.eval.unseen_suite:
        lines += ["The unseen suite was not evaluated (an interrupted or failed experiment): "
                  "`--resume` the multi-seed folder to evaluate it.", ""]
    plot_multi_curves(multi / "learning_curves.png", runs, algo)
    lines += ["![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


#: The results file of the unseen suite in a multi-seed folder.
UNSEEN_RESULTS = "unseen_results.json"


def unseen_label(seed: int) -> str:
    """How ``unseen_results.json`` labels seed ``seed``'s final model."""
    return f"seed{seed}"


def unseen_per_seed(multi: RunFolder, algo: str) -> dict[int, list[EpisodeResult]]:
    """The unseen suite's results per seed (the baselines' and that seed's final model's,
    labelled ``algo``), from the multi folder's ``unseen_results.json``; empty without it."""
    path = multi / UNSEEN_RESULTS
    if not path.is_file():
        return {}
    results = _load_results(path.parent, path.name)
    seeds = sorted({int(r.policy[4:]) for r in results
                    if re.fullmatch(r"seed\d+", r.policy)})
    models = {unseen_label(s) for s in seeds}
    base = [r for r in results if r.policy not in models]
    return {s: base + [dataclasses.replace(r, policy=algo) for r in results
                       if r.policy == unseen_label(s)] for s in seeds}


def _suite_block(name: str, suite: str, per_seed: Mapping[int, list[EpisodeResult]],
                 learned: list[str], exp: ExperimentConfig, console: Console | None,
                 gaps: bool) -> list[str]:
    """The per-seed and pooled tables of one suite, the verdict (and, with ``gaps``, the
    share of each baseline's gap to the oracle closed) as Markdown lines; on ``console``,
    the final model's summary and the same lines."""
    algo = exp.algo
    rivals = exp.eval.baseline_labels
    names = exp.eval.rival_labels
    nb = exp.eval.n_boot
    header = (["seed", "policy", "mean cost [95% CI]", "score", "failure ticks/ep (unwarned)"]
              + [f"vs {h}" for h in rivals])
    rows: list[list[str]] = []
    verdicts: dict[str, list[bool]] = {p: [] for p in learned}
    # (column, policy) -> mean cost, and (column, policy, baseline) -> paired difference,
    # for the screen's summary; column: the seed, or "pooled".
    costs: dict[tuple[str, str], float] = {}
    fails: dict[tuple[str, str], str] = {}
    diffs: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    for seed, results in per_seed.items():
        sums = {s.policy: s for s in summarize(results, n_boot=nb)}
        for pol in learned:
            if pol not in sums:
                continue
            s = sums[pol]
            fails[(str(seed), pol)] = _failures(s.failure_ticks, s.unwarned_failure_ticks)
            row = [str(seed), pol, _ci(s.mean_cost, s.ci_low, s.ci_high), _fmt(s.normalized),
                   fails[(str(seed), pol)]]
            costs[(str(seed), pol)] = s.mean_cost
            ok = True
            for h in rivals:
                m, lo, hi = paired_difference_ci(results, pol, h, n_boot=nb)
                diffs[(str(seed), pol, h)] = (m, lo, hi)
                row.append(_ci(m, lo, hi))
                ok = ok and lo > 0
            verdicts[pol].append(ok)
            rows.append(row)
    first = next(iter(per_seed.values()))
    base_sums = {s.policy: s for s in summarize(first, n_boot=nb)}
    title = "" if suite == "held-out" else f" ({suite})"
    lines = [f"## Per seed{title}", "",
             "Paired differences: baseline cost - learned cost on the same episodes "
             "(> 0: learned better), mean [95% CI]. Failure ticks: ticks with a failed "
             "unmovable allocation per episode; in brackets the unwarned ones, those of "
             "decisions taken while free memory stood at or above the high watermark, "
             "where the hold price is 0.", "", md_table(header, rows), ""]
    prow: list[list[str]] = []
    closed: dict[str, dict[str, float]] = {}
    for pol in learned:
        pooled = [r for res in per_seed.values() for r in res if r.policy == pol]
        if not pooled:
            continue
        groups: dict[str, list[float]] = {}
        for r in pooled:
            groups.setdefault(r.scenario, []).append(r.cost)
        m, lo, hi = stratified_bootstrap(list(groups.values()), n_boot=nb)
        none = base_sums.get("none")
        orac = base_sums.get("oracle")
        score = ((none.mean_cost - m) / (none.mean_cost - orac.mean_cost)
                 if none and orac and none.mean_cost != orac.mean_cost else None)
        fails[("pooled", pol)] = _failures(float(np.mean([r.failure_ticks for r in pooled])),
                                           mean_unwarned(pooled))
        row = ["pooled", pol, _ci(m, lo, hi), _fmt(score), fails[("pooled", pol)]]
        costs[("pooled", pol)] = m
        for h in rivals:
            diffs[("pooled", pol, h)] = pooled_difference(list(per_seed.values()), pol, h, nb)
            row.append(_ci(*diffs[("pooled", pol, h)]))
        prow.append(row)
        if gaps and orac is not None:
            # (baseline - learned) / (baseline - oracle), issue 14's "half the gap".
            closed[pol] = {h: g for h in rivals if h in base_sums
                           and (g := gain_share(base_sums[h].mean_cost, m, orac.mean_cost))
                           is not None}
    brow = [["-", n, _ci(s.mean_cost, s.ci_low, s.ci_high), _fmt(s.normalized),
             _failures(s.failure_ticks, s.unwarned_failure_ticks)]
            + [""] * (len(header) - 5) for n, s in base_sums.items() if n in names]
    lines += [f"## Pooled over seeds{title}", "",
              "Every seed's episodes together (the baselines are the same for every seed).",
              "", md_table(header, prow + brow), ""]
    where = "" if suite == "held-out" else f" on the {suite} suite"
    verdict_lines = [f"`{pol}` beats every baseline{where} (95 % CI of the paired difference "
                     f"above zero against each of {', '.join(rivals)}) on {sum(v)} of {len(v)} "
                     "seeds." for pol, v in verdicts.items() if v]
    verdict_lines += [f"`{pol}` closes, pooled, this share of each baseline's gap to the oracle, "
                      "(baseline - learned) / (baseline - oracle): "
                      + ", ".join(f"{h} {g:.2f}" for h, g in by.items()) + "."
                      for pol, by in closed.items() if by]
    lines += [f"- {v}" for v in verdict_lines] + [""]
    cols = [c for c in [*map(str, per_seed), "pooled"] if (c, algo) in costs]
    if console is not None and cols:
        from rich.table import Table

        # On screen, the final model against each baseline, a column per seed: the mean
        # paired difference and whether its 95 % CI is above zero (win), below (loss) or
        # across it (tie).  Seven baselines' CIs side by side do not fit a terminal;
        # report.md has them, and the best checkpoints.
        t = Table(title=f"{name}: the {suite} suite", title_justify="left",
                  caption=f"baseline cost - {algo} cost on the same episodes (> 0: learned "
                          "better); win / loss: its 95 % CI above / below zero",
                  caption_justify="left")
        t.add_column("", no_wrap=True)
        for col in cols:
            t.add_column(col if col == "pooled" else f"seed {col}", justify="right")
        t.add_row(f"{algo} mean cost", *[_fmt(costs[(c, algo)]) for c in cols])
        t.add_row("failure ticks/ep (unwarned)", *[fails[(c, algo)] for c in cols])
        for h in rivals:
            t.add_row(h, *[_verdict_cell(diffs[(c, algo, h)]) for c in cols])
        console.print(t)
        for v in verdict_lines:
            console.print(v.replace("`", ""), markup=False, highlight=False)
    return lines


def _failures(total: float, unwarned: float | None) -> str:
    """Failure ticks per episode, and in brackets those of decisions taken while free
    memory stood at or above the high watermark (``unwarned_failure_ticks``; "-" for
    results recorded before it was)."""
    return f"{total:.1f} ({'-' if unwarned is None else f'{unwarned:.1f}'})"


def _verdict_cell(diff: tuple[float, float, float]) -> str:
    """A paired difference on screen: its mean and win / loss / tie by its 95 % CI."""
    m, lo, hi = diff
    return f"{m:+.2f} " + ("win" if lo > 0 else "loss" if hi < 0 else "tie")


def plot_multi_curves(path: Path, runs: Mapping[int, Path], algo: str) -> None:
    """All seeds' validation curves on one plot."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lows: list[float] = []
    highs: list[float] = []
    for seed, run in runs.items():
        f = run / "evaluations.npz"
        if not f.is_file():
            continue
        with np.load(f) as d:
            cost = -np.asarray(d["results"]).mean(axis=1)
            ax.plot(d["timesteps"], cost, marker=".", label=f"{algo} seed {seed}")
            lows.append(float(cost.min()))
            highs.append(float(cost.max()))
    if not lows:
        plt.close(fig)
        return
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation episode cost (training-time evaluations)")
    # A log axis only pays off over an order of magnitude.
    if min(lows) > 0 and max(highs) / min(lows) > 10:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _savefig(fig, path)

