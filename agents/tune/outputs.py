"""What a study writes: trials, plots, importances, the best parameters and
the report, rewritten atomically after every trial; and the progress line.

``--out`` (default ``runs/tune/<target>``) holds ``trials.csv``,
``history.png``, ``importances.png`` (PED-ANOVA, from 2 complete trials
on), ``report.md``, ``command.txt`` and the best parameters: ``best.yaml`` +
``best.json`` (a thresholds file, for ``soft_hard`` and ``periodic_scan``), ``best_params.yaml``
(``heuristic:NAME:best_params.yaml``), or ``best_hyperparams.yaml`` (an algo
YAML: ``--set algo_config=...`` in ``train.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import __version__
from ...envs.configio import dump_yaml, write_text_atomic, write_yaml_atomic
from ...envs.sim.config import to_dict
from ..export import THRESHOLDS_SCHEMA_VERSION, rule_params
from ..heuristics import RULES, make_heuristic
from ..report import md_table, png, progress_display, pyplot
from .objectives import Objective
from .storage import first_line

if TYPE_CHECKING:
    import optuna


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE trials."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the lowest cost (the first, on a tie)."""
    done = complete_trials(study)
    if not done:
        return None
    return min(done, key=lambda t: (float(t.value if t.value is not None else math.inf),
                                    t.number))


def default_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial that ran the default parameters, if any."""
    return next((t for t in complete_trials(study) if t.user_attrs.get("default")), None)


def trials_csv(study: optuna.Study) -> str:
    """One row per trial (what ``study.trials_dataframe()`` holds, without
    needing pandas): number, state, value, SE, times, params, rule values."""
    import csv

    trials = study.get_trials(deepcopy=False)
    pnames = sorted({k for t in trials for k in t.params})
    rnames = sorted({k for t in trials for k in (t.user_attrs.get("params") or {})})
    header = ["number", "state", "value", "stderr", "default", "datetime_start",
              "datetime_complete", "duration_s", "last_step",
              *[f"params_{k}" for k in pnames], *[f"rule_{k}" for k in rnames]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for t in sorted(trials, key=lambda t: t.number):
        dur = ((t.datetime_complete - t.datetime_start).total_seconds()
               if t.datetime_complete and t.datetime_start else "")
        rule = t.user_attrs.get("params") or {}
        w.writerow([t.number, t.state.name, "" if t.value is None else repr(t.value),
                    _cell(t.user_attrs.get("stderr")), int(bool(t.user_attrs.get("default"))),
                    t.datetime_start.isoformat() if t.datetime_start else "",
                    t.datetime_complete.isoformat() if t.datetime_complete else "",
                    dur, t.last_step if t.last_step is not None else "",
                    *[_cell(t.params.get(k)) for k in pnames],
                    *[_cell(rule.get(k)) for k in rnames]])
    return buf.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _savefig(fig: Any, path: Path) -> None:
    write_text_atomic(path, png(fig, dpi=110))


def plot_history(study: optuna.Study, path: Path, title: str) -> None:
    """Each complete trial's cost with its SE, the best so far, the default."""
    plt = pyplot()
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if done:
        x = [t.number for t in done]
        y = [float(t.value) for t in done]  # type: ignore[arg-type]
        se = [float(t.user_attrs.get("stderr") or 0.0) for t in done]
        ax.errorbar(x, y, yerr=se, fmt="o", ms=4, color="tab:blue", alpha=0.7,
                    elinewidth=0.8, label="trial (mean cost ± SE over seeds)")
        ax.step(x, np.minimum.accumulate(y), where="post", color="tab:red", label="best so far")
        d = default_trial(study)
        if d is not None and d.value is not None:
            ax.axhline(float(d.value), color="grey", ls="--", lw=1,
                       label=f"default (trial {d.number})")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        ax.plot([t.number for t in pruned],
                [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", color="grey", label="pruned (last report)")
    ax.set_xlabel("trial")
    ax.set_ylabel("mean episode cost (lower is better)")
    values = [float(t.value) for t in done]  # type: ignore[arg-type]
    # A log axis only pays off over an order of magnitude (bad trials dwarf good ones).
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)


def param_importances(study: optuna.Study) -> dict[str, float] | str:
    """PED-ANOVA importances of the search-space parameters, or why not.

    PED-ANOVA, not Optuna's default fANOVA: that one needs scikit-learn,
    which ptreclaim does not depend on.
    """
    import optuna

    done = complete_trials(study)
    if len(done) < 2:
        return f"needs at least 2 complete trials (has {len(done)})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as exc:  # too few distinct values, a one-point space, ...
        return f"could not be computed ({type(exc).__name__}: {first_line(exc)})"
    return {k: float(v) for k, v in imp.items()}


def plot_importances(imp: Mapping[str, float], path: Path, title: str) -> None:
    """Horizontal bars, most important on top."""
    plt = pyplot()

    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(names) + 1.4))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    _savefig(fig, path)


@dataclass
class RunInfo:
    """How this invocation was started (for provenance and the report)."""

    mode: str
    target: str
    study_name: str
    storage: str  # redacted
    sampler: str
    seed: int
    out: Path
    command: str
    objective: Objective
    suite_files: list[str] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    n_jobs: int = 1
    #: Wall time and trials of this invocation, once it has finished.
    finished: tuple[float, int] | None = None


def thresholds_record(study: optuna.Study, info: RunInfo) -> dict[str, Any] | None:
    """The best parameters of a heuristic a thresholds file can carry (``soft_hard``,
    ``periodic_scan``) as a thresholds file's plain data."""
    best = best_trial(study)
    if best is None or info.mode != "heuristic" or info.target not in RULES:
        return None
    d = default_trial(study)
    params = rule_params(make_heuristic(info.target, best.user_attrs["params"], "best trial"))
    obj = info.objective
    return {
        "schema_version": THRESHOLDS_SCHEMA_VERSION,
        "name": f"tuned_{info.target}",
        "description": (f"{info.target} parameters tuned with Optuna ({info.sampler}) on suite "
                        f"{obj.suite!r}: mean episode cost over {len(obj.scenarios)} scenarios "
                        f"x {obj.seeds} seeds x {obj.episodes} episode(s); best of "
                        f"{len(complete_trials(study))} complete trials"),
        "rule": {"kind": info.target, **params},
        "provenance": {
            "tool": "tune", "study_name": info.study_name, "storage": info.storage,
            "n_trials": len(complete_trials(study)), "best_trial": best.number,
            "sampler": info.sampler, "seed": info.seed, "suite": obj.suite,
            "suite_files": list(info.suite_files), "scenarios": list(obj.scenarios),
            "seeds": obj.seeds, "episodes": obj.episodes,
            "episode_seeds": obj.episode_seeds(), "env_config": dict(obj.env),
            "ptreclaim_version": __version__, "model_rules_version": obj.model_rules_version,
        },
        "score": {"objective": f"mean episode cost on {obj.suite} suite",
                  "value": float(best.value),  # type: ignore[arg-type]
                  "stderr": best.user_attrs.get("stderr"),
                  "default_value": None if d is None else d.value,
                  "default_stderr": None if d is None else d.user_attrs.get("stderr")},
    }


def write_thresholds_files(stem: Path, data: dict[str, Any]) -> list[Path]:
    """``<stem>.yaml`` and ``<stem>.json`` through the export module's writer
    (it checks that the record reads back to the same rule)."""
    from ..export import record_from_data, write_thresholds

    return write_thresholds(stem, record_from_data(data, f"{stem.name} (to be written)"))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3g}"
    return str(x)


def pm_text(t: optuna.trial.FrozenTrial | None) -> str:
    """A trial's mean cost ± its SE ("-" without a value)."""
    if t is None or t.value is None:
        return "-"
    return f"{float(t.value):.3f} ± {_fmt(t.user_attrs.get('stderr'))}"


def paired_text(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> str:
    """Mean of a - b over the seeds' means (same episodes) ± its SE."""
    xa, xb = a.user_attrs.get("seed_costs"), b.user_attrs.get("seed_costs")
    if not xa or not xb or len(xa) != len(xb):
        return "-"
    diff = np.asarray(xa, dtype=float) - np.asarray(xb, dtype=float)
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return f"{float(diff.mean()):.3f} ± {_fmt(se)}"


def report_md(study: optuna.Study, info: RunInfo, imp: Mapping[str, float] | str,
              files: Sequence[str]) -> str:
    """The study's report: default vs tuned, parameters, top trials, plots."""
    from optuna.trial import TrialState

    obj = info.objective
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    best = best_trial(study)
    d = default_trial(study)
    lines = [f"# Tuning {info.target} ({info.mode})", ""]
    lines += [f"Study `{info.study_name}` in `{info.storage}`: {len(trials)} trials "
              f"({count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
              f"{count[TrialState.FAIL]} failed, {count[TrialState.RUNNING]} running, "
              f"{count[TrialState.WAITING]} waiting); sampler {info.sampler}, seed {info.seed}.",
              ""]
    per = f"{len(obj.scenarios)} scenarios x {obj.seeds} seeds x {obj.episodes} episode(s)"
    if info.mode == "heuristic":
        lines += [f"Objective: mean episode cost (lower is better) over suite `{obj.suite}`: "
                  f"{per} = {len(obj.scenarios) * obj.seeds * obj.episodes} episodes per "
                  "trial, the same episodes for every trial (seed s runs "
                  f"`episode_seed({obj.episode_seed} + s, scenario, episode)`, i.e. "
                  f"`evaluate.py --suite {obj.suite} --seed {obj.episode_seed}+s`). ± is the "
                  "standard error over the seeds' means.", ""]
    else:
        a = obj.agent
        lines += [f"Objective: mean episode cost of the final model over "
                  f"{len(a.get('train_seeds', []))} training seed(s) x {per} validation "
                  f"episodes of suite `{obj.suite}` (seeds from {obj.episode_seed}; training "
                  f"draws its own episodes); {a.get('timesteps')} steps per training seed, "
                  f"evaluated every {a.get('eval_freq')} steps for the pruner "
                  f"({a.get('pruner')}). ± is the standard error over (training seed, "
                  "episode seed) means."
                  + (f" Every training starts from the warm start: "
                     f"`{a['warm_start'].get('teacher')}` plays "
                     f"{a['warm_start'].get('steps')} decisions and the policy clones it "
                     "for `pretrain.epochs` epochs (searched)." if a.get("warm_start") else ""),
                  ""]
    rows = [["default", str(d.number) if d else "-", pm_text(d)],
            ["tuned (best)", str(best.number) if best else "-", pm_text(best)]]
    if best is not None and d is not None:
        rows.append(["default - tuned (paired, same episodes)", "", paired_text(d, best)])
    lines += [md_table(["", "trial", "mean cost ± SE"], rows), "",
              "The best of many trials scored on the same episodes is optimistic (the "
              "winner's curse): judge it on held-out episodes, e.g. "
              + (f"`python scripts/evaluate.py {info.out}/best.yaml --jobs 2`."
                 if info.mode == "heuristic" and info.target in RULES else
                 f"`python scripts/evaluate.py heuristic:{info.target}:"
                 f"{info.out}/best_params.yaml`." if info.mode == "heuristic" else
                 f"`python scripts/train.py --algo {info.target} --set "
                 f"algo_config={info.out}/best_hyperparams.yaml"
                 f"{_experiment_sets(best) if best else ''}`."), ""]
    if best is not None:
        lines += ["## Best parameters", ""]
        if info.mode == "heuristic":
            tuned = best.user_attrs.get("params") or {}
            dflt = d.user_attrs.get("params") if d else {}
            lines.append(md_table(["parameter", "default", "tuned"],
                                  [[k, _fmt((dflt or {}).get(k), 4), _fmt(v, 4)]
                                   for k, v in tuned.items()]))
        else:
            hp = dict(best.user_attrs.get("hyperparams") or {})
            dflt = dict((d.user_attrs.get("hyperparams") if d else None) or {})
            for row, trial in ((hp, best), (dflt, d)):
                clip = _clip(trial) if trial else None
                if clip is not None:
                    row["normalize.clip_reward"] = clip
                epochs = _pretrain_epochs(trial) if trial else None
                if epochs is not None:
                    row["pretrain.epochs"] = epochs
            lines.append(md_table(["hyperparameter", "default", "tuned"],
                                  [[k, _fmt(dflt.get(k), 4), _fmt(v, 4)]
                                   for k, v in hp.items()]))
        lines.append("")
        sb = best.user_attrs.get("scenario_costs") or {}
        sd = (d.user_attrs.get("scenario_costs") if d else None) or {}
        if sb:
            lines += ["## Per scenario (mean cost)", "",
                      md_table(["scenario", "default", "tuned"],
                               [[k, _fmt(sd.get(k)), _fmt(v)] for k, v in sb.items()])]
            lines.append("")
    done = sorted(complete_trials(study), key=lambda t: (float(t.value or 0.0), t.number))
    if done:
        lines += ["## Top trials", "", md_table(
            ["trial", "mean cost ± SE", "seconds"],
            [[f"{t.number}{' (default)' if t.user_attrs.get('default') else ''}", pm_text(t),
              _fmt(t.user_attrs.get("seconds"), 1)] for t in done[:10]])]
        lines.append("")
    lines += ["## Plots", "", "![optimisation history](history.png)", ""]
    if isinstance(imp, str):
        lines += [f"Parameter importances: skipped, {imp}.", ""]
    else:
        lines += ["![parameter importances (PED-ANOVA)](importances.png)", ""]
    lines += ["## Files", "", ", ".join(f"`{f}`" for f in files), "",
              "## Command and versions", ""]
    if info.finished is not None:
        lines += [f"The last invocation ran {info.finished[1]} trials in "
                  f"{info.finished[0]:.0f} s wall time (--jobs {info.n_jobs}).", ""]
    lines += ["```", info.command, "```", "",
              "```json", json.dumps(info.versions, indent=1), "```", ""]
    return "\n".join(lines)


def write_outputs(study: optuna.Study, info: RunInfo) -> list[str]:
    """Write every output file from the study's current state (atomically);
    returns the names written.  Safe to call from several workers at once."""
    out = info.out
    files = ["trials.csv", "history.png"]
    write_text_atomic(out / "trials.csv", trials_csv(study))
    plot_history(study, out / "history.png", f"study {info.study_name}: {info.mode} "
                 f"{info.target} on suite {info.objective.suite}")
    imp = param_importances(study)
    if not isinstance(imp, str):
        plot_importances(imp, out / "importances.png",
                         f"{info.study_name}: parameter importances")
        files.append("importances.png")
    best = best_trial(study)
    if best is not None:
        if info.mode == "heuristic":
            # Every field of the params dataclass, not only the searched ones.
            policy = make_heuristic(info.target, best.user_attrs.get("params") or {})
            params = to_dict(getattr(policy, "params", None)) or {}
            write_yaml_atomic(out / "best_params.yaml", params)
            files.append("best_params.yaml")
            record = thresholds_record(study, info)
            if record is not None:
                write_thresholds_files(out / "best", record)
                files += ["best.yaml", "best.json"]
        else:
            hp = best.user_attrs.get("hyperparams") or {}
            text = (f"# Best {info.target} hyperparameters of study {info.study_name!r} (trial "
                    f"{best.number}, mean cost {float(best.value or 0.0):.3f}).\n"
                    f"# Use: python scripts/train.py --algo {info.target} --set "
                    f"algo_config={out / 'best_hyperparams.yaml'}{_experiment_sets(best)}\n")
            write_text_atomic(out / "best_hyperparams.yaml", text + dump_yaml(
                {"default": dict(hp)}))
            files.append("best_hyperparams.yaml")
    files += ["report.md", "command.txt"]
    write_text_atomic(out / "report.md", report_md(study, info, imp, files))
    return files


def _clip(trial: optuna.trial.FrozenTrial) -> float | None:
    """The trial's reward clip (``normalize.clip_reward``), None for a trial that predates
    the parameter."""
    clip = (trial.user_attrs.get("normalize") or {}).get("clip_reward")
    return None if clip is None else float(clip)


def _pretrain_epochs(trial: optuna.trial.FrozenTrial) -> int | None:
    """The warm start's behaviour-cloning epochs of a warm-started trial, else None."""
    epochs = (trial.user_attrs.get("pretrain") or {}).get("epochs")
    return None if epochs is None else int(epochs)


def _experiment_sets(trial: optuna.trial.FrozenTrial) -> str:
    """The ``--set`` of the trial's experiment settings, which the algo YAML cannot carry
    (they are not constructor arguments): its reward clip ("" for a trial that predates
    it) and, for a warm-started trial, its behaviour-cloning epochs."""
    clip = _clip(trial)
    epochs = _pretrain_epochs(trial)
    return ("" if clip is None else f" --set normalize.clip_reward={clip:g}") + (
        "" if epochs is None else f" --set pretrain.epochs={epochs}")


# ---------------------------------------------------------------- progress


class Progress:
    """A rich progress bar of trials with the best so far; one line per
    finished trial above it (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int | None, quiet: bool, label: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.live = not quiet and self.console.is_terminal
        self.total = total
        self.label = label
        self.done = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = progress_display(f"[bold]{self.label}[/]", self.console,
                                         transient=False, status_field="best", bar_width=24)
            self._bar.__enter__()
            self._task = self._bar.add_task("trials", total=self.total, best="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def trial(self, study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        """Show one finished trial and the best so far."""
        self.done += 1
        best = best_trial(study)
        from optuna.trial import TrialState

        if t.state == TrialState.COMPLETE and t.value is not None:
            state = f"{float(t.value):.3f} ± {_fmt(t.user_attrs.get('stderr'))}"
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            state = f"pruned at step {step} ({t.intermediate_values[step]:.3f})"
        else:
            state = t.state.name.lower()
        tag = " (default)" if t.user_attrs.get("default") else ""
        best_s = (f"best {float(best.value):.3f} (trial {best.number})"  # type: ignore[arg-type]
                  if best is not None else "")
        line = (f"trial {t.number:>4}{tag}: {state} [{_fmt(t.user_attrs.get('seconds'), 1)} s]"
                f"  {best_s}")
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, best=best_s)
            self._bar.console.print(line, highlight=False, markup=False)
        elif not self.quiet:
            self.console.print(line, highlight=False, markup=False)
            with contextlib.suppress(OSError, ValueError):
                self.console.file.flush()

