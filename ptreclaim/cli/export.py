"""``scripts/export_thresholds.py``: a trained run -> deployable thresholds.

Distils the run's learned policy into a soft/hard-limit rule
(:mod:`ptreclaim.agents.distill`), writes it as ``thresholds.yaml`` and
``thresholds.json`` (:mod:`ptreclaim.agents.export`), then evaluates the
written file (read back, like an operator would) next to the learned policy,
the tuned heuristic (if any), the default heuristics and the oracle bound on
the run's held-out scenarios, and records the scores and the share of the
learned gain the rule keeps: ``(none - export) / (none - learned)``, and, with a
tuned heuristic, the share of the learned gain over it: ``(tuned - export) /
(tuned - learned)``.  ``best_constant`` (``tune.py constant``) joins the comparison
when its file exists.  When the run's experiment names an unseen suite
(``eval.unseen_suite``), the same policies but the oracle (no bound there) are scored on
it too, into ``export_eval_unseen/`` and the file's ``evaluation.unseen``
(``--no-unseen`` skips it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..agents import interrupts
from ..agents.distill import DistillConfig, DistillResult, distill
from ..agents.evaluate import run_evaluation
from ..agents.export import (
    ThresholdsRecord,
    read_thresholds,
    rule_params,
    sha256_file,
    write_thresholds,
)
from ..agents.heuristics import ACTION_COMPONENTS, TreeRule
from ..agents.loading import (
    PolicySpec,
    baseline_rule,
    build_policy,
    heuristic_spec,
    oracle_spec,
    parse_policy,
)
from ..agents.stats import gain_share, gain_share_ci, paired_difference_ci
from ..agents.training.config import load_scenarios
from ..agents.training.runconfig import read_run_config
from ..envs.configio import write_text_atomic
from ..envs.sim.config import ConfigError, check_range, to_dict
from ..envs.sim.pagetable import MODEL_RULES_VERSION
from .common import (
    OneLineParser,
    add_model_flags,
    claim_out_dir,
    command_text,
    progress_bar,
    run_cli,
)

PROG = "export_thresholds.py"
#: The label of the ``--tuned`` file in the evaluation: ``tuned_<its rule kind>``.
TUNED_PREFIX = "tuned_"
#: Where ``scripts/tune.py heuristic soft_hard`` leaves its best rule by default.
DEFAULT_TUNED = Path("runs/tune/soft_hard/best.yaml")
#: Where ``scripts/tune.py constant`` leaves the best constant action by default.
DEFAULT_CONSTANT = Path("runs/tune/constant/best.yaml")


def _default_rule(study: Path, exp: Any, label: str, flag: str) -> Path | None:
    """The rule to compare with when no flag names one: the rule file the run itself met
    under ``label`` among its baselines (``eval.baselines``: for the default experiment
    its copy of the shipped tuned rule), so the export meets the rule its run's report
    scored; else a study's own result in this folder (``study``), if it has one; else
    none.  A study that is here but not used, or used for want of the run's own rule,
    gets a note: a study left in ``runs/tune`` by another model's session must not
    replace the run's rule silently.  ``flag`` is the option that names a file."""
    missing = None
    for entry in exp.eval.baselines:
        split = baseline_rule(entry)
        if split is None or split[0] != label or split[1].startswith("heuristic:"):
            continue
        rule = split[1]
        if Path(rule).is_file():
            if study.is_file() and Path(rule).resolve() != study.resolve():
                print(f"{PROG}: note: comparing with the run's {label} baseline {rule}, "
                      f"not with the study in {study} (pass {flag} {study} for that)",
                      file=sys.stderr)
            return Path(rule)
        missing = rule
    # A run moved from another machine: say so rather than compare silently otherwise.
    gone = f"the run's {label} baseline {missing} is not here; " if missing else ""
    if study.is_file():
        print(f"{PROG}: note: {gone}comparing with the study in {study} as {label}, which "
              f"the run did not meet ({flag} names another file)", file=sys.stderr)
        return study
    if missing:
        print(f"{PROG}: note: {gone}the export is not compared with it (name a file with "
              f"{flag})", file=sys.stderr)
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/export_thresholds.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Distil a trained run's policy into soft/hard-limit thresholds (DAgger), write "
        "thresholds.yaml/.json, and evaluate them next to the learned policy, the tuned "
        "heuristic and the oracle on the run's held-out scenarios, then on its unseen "
        "suite, if it names one."))
    p.add_argument("run", help="a run folder written by scripts/train.py (one seed)")
    p.add_argument("--out", help="output folder (default: the run folder)")
    p.add_argument("--best", action="store_true", help="distil best_model.zip, not model.zip")
    add_model_flags(p, best=False)
    p.add_argument("--iterations", type=int, default=DistillConfig.iterations,
                   help="DAgger rounds (default %(default)s)")
    p.add_argument("--episodes", type=int, default=DistillConfig.episodes,
                   help="collection episodes per training scenario per round "
                        "(default %(default)s)")
    p.add_argument("--eval-episodes", type=int,
                   help="evaluation episodes per held-out scenario (default: the run's "
                        "eval.final_episodes)")
    p.add_argument("--tuned", help="a tuned thresholds file to compare with (default: the "
                                   "run's own tuned_soft_hard baseline, the rule its report "
                                   f"scored; else {DEFAULT_TUNED} if it exists)")
    p.add_argument("--constant", help="the best_constant thresholds file to compare with "
                                      "(default: the run's own best_constant baseline; else "
                                      f"{DEFAULT_CONSTANT} if it exists)")
    p.add_argument("--no-eval", action="store_true",
                   help="write the rule without evaluating it (no scores in the file)")
    p.add_argument("--no-oracle", action="store_true", help="leave the oracle bound out")
    p.add_argument("--no-unseen", action="store_true",
                   help="skip the evaluation on the run's unseen suite (eval.unseen_suite)")
    p.add_argument("--jobs", type=int, default=1, help="evaluation processes (default 1)")
    p.add_argument("--seed", type=int, default=DistillConfig.seed,
                   help="base seed of the collection episodes (default %(default)s)")
    p.add_argument("--tree-depth", type=int, default=3,
                   help="also distil a decision tree of this depth into thresholds_tree.yaml/"
                        ".json (0: no tree; default %(default)s)")
    p.add_argument("--name", help="the rule's name (default: distilled_<run folder>)")
    p.add_argument("-q", "--quiet", action="store_true", help="no tables, no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    checks = (("--iterations", args.iterations, 1, 100), ("--episodes", args.episodes, 1, 1000),
              ("--jobs", args.jobs, 1, 1024), ("--seed", args.seed, 0, 2**31 - 1),
              ("--tree-depth", args.tree_depth, 0, 12))
    for flag, value, lo, hi in checks:
        check_range(flag, value, lo, hi)
    if args.eval_episodes is not None:
        check_range("--eval-episodes", args.eval_episodes, 1, 100_000)


def _with_progress(total: int, show: bool,
                   work: Callable[[Callable[[], None] | None], Any]) -> Any:
    with progress_bar("distilling: episodes", total, show) as update:
        if update is None:
            return work(None)
        done = [0]
        bar = update

        def tick() -> None:
            done[0] += 1
            bar(done[0])

        return work(tick)


def _summary_entry(s: Any) -> dict[str, Any]:
    entry = {"mean_cost": round(s.mean_cost, 4), "ci_low": round(s.ci_low, 4),
             "ci_high": round(s.ci_high, 4), "episodes": s.episodes}
    if s.normalized is not None:
        entry["normalized_score"] = round(s.normalized, 4)
    return entry


def _components(agreement: Sequence[float]) -> str:
    """Per-component agreement, named: ``budget 0.950, depth 0.900, ...``."""
    return ", ".join(f"{n} {a:.3f}" for n, a in zip(ACTION_COMPONENTS, agreement, strict=True))


def _over_tuned(results: Sequence[Any], by: dict[str, Any], label: str, learned: str,
                tuned: str) -> dict[str, Any]:
    """The share of the learned gain *over the tuned heuristic* the export keeps,
    ``(tuned - export) / (tuned - learned)``, with its 95 % CI (none without a tuned
    file; None when the learned policy does not beat it)."""
    if tuned not in by:
        return {}
    share = gain_share(by[tuned].mean_cost, by[label].mean_cost, by[learned].mean_cost)
    lo, hi = gain_share_ci(results, label, learned, base=tuned)
    return {"gain_share_over_tuned": None if share is None else round(share, 4),
            "gain_share_over_tuned_ci": _rounded(lo, hi)}


def _evaluate_exports(args: argparse.Namespace, specs: Sequence[PolicySpec], scenarios: Any,
                      suite: str, folder: Path, episodes: int, oracle: bool, exp: Any,
                      command: str, exports: Sequence[tuple[str, Path, ThresholdsRecord]],
                      learned: str, tuned_label: str) -> dict[str, dict[str, Any]]:
    """Every policy of ``specs`` on ``scenarios`` (the same episodes, seeds from the run's
    ``eval.seed``), the report in ``folder``; per export, what goes into its file's
    ``evaluation``: the scores, the share of the learned gain it keeps over no reclaim and
    over the tuned heuristic (with 95 % CIs), and its cost minus the learned policy's."""
    total = len(specs) * len(scenarios) * episodes
    with progress_bar("episodes", total, not args.quiet) as update:
        results, overall = run_evaluation(
            specs, scenarios, exp.env, folder, suite=suite, suite_files=[],
            episodes=episodes, seed=exp.eval.seed, jobs=args.jobs, baseline="soft_hard",
            oracle=oracle, command=command, quiet=args.quiet,
            progress=None if update is None else lambda done, _total: update(done))
    by = {s.policy: s for s in overall}
    out: dict[str, dict[str, Any]] = {}
    for label, _stem, _record in exports:
        share = gain_share(by["none"].mean_cost, by[label].mean_cost, by[learned].mean_cost)
        # (the export's cost - the learned policy's) on the same episodes.
        diff = paired_difference_ci(results, learned, label)
        out[label] = {
            "scenarios": [s.name for s in scenarios], "episodes": episodes,
            "seed": exp.eval.seed, "env": to_dict(exp.env), "label": label,
            "policies": {lab: _summary_entry(s) for lab, s in by.items()},
            "gain_share": None if share is None else round(share, 4),
            "gain_share_ci": _rounded(*gain_share_ci(results, label, learned)),
            **_over_tuned(results, by, label, learned, tuned_label),
            "export_minus_learned_cost": [round(d, 4) for d in diff],
            "report": str((folder / "report.md").resolve()),
        }
    return out


def _kept_text(ev: dict[str, Any], tuned_label: str) -> str:
    """One line: the share of the learned gain an export keeps (over no reclaim, and over
    the tuned heuristic when there is one)."""
    share, (lo, hi) = ev["gain_share"], ev["gain_share_ci"]
    kept = ("n/a (the learned policy gained nothing)" if share is None else
            f"{share:.1%} (95 % CI {_pct(lo)} .. {_pct(hi)})")
    text = f"keeps {kept} of the learned gain over no reclaim"
    if tuned_label in ev["policies"]:
        over = ev.get("gain_share_over_tuned")
        text += ("; over the tuned heuristic: n/a (the learned policy does not beat it)"
                 if over is None else f"; {over:.1%} of its gain over the tuned heuristic")
    return text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _rounded(*values: float) -> list[float | None]:
    """``values`` to 4 decimals, NaN (no bootstrap sample had a gain) as None: the
    YAML and JSON files must read back alike."""
    return [None if math.isnan(v) else round(v, 4) for v in values]


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_args(args)
    written: list[Path] = []
    try:
        return _export(args, argv, written)
    except interrupts.Interrupted as exc:
        kept = (f"{', '.join(str(p) for p in written)} (written before the evaluation, "
                "without scores)" if written else "nothing")
        raise exc.explain(what=f"the export of {args.run}", kept=kept,
                          resume="the same command (it distils again)") from None


def _export(args: argparse.Namespace, argv: Sequence[str], written: list[Path]) -> int:
    run = Path(args.run)
    cfg = read_run_config(run)
    exp = cfg.experiment
    learned_spec = parse_policy(str(run), best=args.best, trust_model=args.trust_model)
    learned_spec = dataclasses.replace(learned_spec, label=exp.algo + ("_best" if args.best
                                                                      else ""))
    out = Path(args.out) if args.out else run
    # A re-export replaces the run's thresholds files on purpose: nothing to protect;
    # export writes only files of its own into a training run's folder.
    with claim_out_dir(out, (), force=True, training_ok=True):
        return _export_into(args, argv, written, run, cfg, learned_spec, out)


def _export_into(args: argparse.Namespace, argv: Sequence[str], written: list[Path], run: Path,
                 cfg: Any, learned_spec: PolicySpec, out: Path) -> int:
    exp = cfg.experiment
    tuned_path = (Path(args.tuned) if args.tuned
                  else _default_rule(DEFAULT_TUNED, exp, "tuned_soft_hard", "--tuned"))
    tuned: ThresholdsRecord | None = read_thresholds(tuned_path) if tuned_path else None
    constant_path = (Path(args.constant) if args.constant
                     else _default_rule(DEFAULT_CONSTANT, exp, "best_constant",
                                   "--constant"))
    if constant_path is not None:
        read_thresholds(constant_path)  # a bad file stops the export before the work
    train, held_out = cfg.scenarios.train, cfg.scenarios.eval
    if not held_out:
        raise ConfigError(f"{run}: the run records no held-out scenarios to score the export on")
    # The experiment's unseen suite (families and combinations its training suite holds
    # out), loaded now: a suite file that is not on this machine stops the export before
    # the work, not after the held-out evaluation.
    unseen_scen: list[Any] = []
    if exp.eval.unseen_suite and not args.no_unseen and not args.no_eval:
        try:
            unseen_scen = load_scenarios(exp.eval.unseen_suite, "eval.unseen_suite")
        except ConfigError as exc:
            raise ConfigError(f"{run}: eval.unseen_suite: {exc}; or pass --no-unseen") from None
    teacher = build_policy(learned_spec, exp.env, train[0])
    dcfg = DistillConfig(iterations=args.iterations, episodes=args.episodes, seed=args.seed)
    show = not args.quiet
    say: Callable[[str], None] = (lambda _m: None) if args.quiet else (
        lambda m: print(m, file=sys.stderr))
    model_file = Path(learned_spec.path)
    common: dict[str, Any] = {
        "tool": PROG, "run": str(run.resolve()), "model_file": model_file.name,
        "model_sha256": sha256_file(model_file),
        "config_sha256": sha256_file(run / "config.yaml"),
        "vecnormalize_sha256": (sha256_file(learned_spec.vecnormalize)
                                if learned_spec.vecnormalize else None),
        "algo": exp.algo, "seed": cfg.seed, "timesteps": exp.timesteps,
        "env": to_dict(exp.env), "model_rules_version": MODEL_RULES_VERSION,
        "ptreclaim_version": __version__,
    }
    name = args.name or f"distilled_{run.resolve().name}"
    exports: list[tuple[str, Path, ThresholdsRecord]] = []
    for label, depth in [("export", 0)] + ([("export_tree", args.tree_depth)]
                                           if args.tree_depth else []):
        t0 = time.perf_counter()
        total = (dcfg.iterations + 1) * dcfg.episodes * len(train)

        def work(tick: Callable[[], None] | None, d: int = depth) -> DistillResult:
            return distill(teacher, train, exp.env, dcfg, tick, say, tree_depth=d)

        result: DistillResult = _with_progress(total, show, work)
        say(f"{label}: distilled in {time.perf_counter() - t0:.1f} s; kept round "
            f"{result.chosen_round}: {result.cost:.2f} per training episode (the learned "
            f"policy: {result.teacher_cost:.2f}); it agrees with the learned policy on "
            f"{result.agreement:.3f} of action components on the states it visits "
            f"({_components(result.component_agreement)})")
        shape = (f"a depth-{depth} decision tree" if depth else "soft/hard page-table limits")
        record = ThresholdsRecord(
            result.student.name, rule_params(result.student),
            name + ("_tree" if depth else ""),
            f"{shape[0].upper()}{shape[1:]} distilled from the {exp.algo} policy of run "
            f"{run.resolve().name} by DAgger ({result.states} states).",
            {**common, "distillation": {**to_dict(dcfg), "tree_depth": depth,
                                        **result.summary()}})
        stem = out / ("thresholds_tree" if depth else "thresholds")
        written += write_thresholds(stem, record)
        if isinstance(result.student, TreeRule):
            write_text_atomic(out / "thresholds_tree.txt", result.student.render() + "\n")
        exports.append((label, stem, record))
    if args.no_eval:
        say(f"wrote {', '.join(f'{stem}.yaml/.json' for _, stem, _ in exports)} "
            "(not evaluated: --no-eval)")
        return 0
    specs: list[PolicySpec] = [heuristic_spec("none"), learned_spec]
    specs += [parse_policy(f"{label}={stem}.yaml") for label, stem, _ in exports]
    # Labelled by what it is (a tuned periodic_scan is not a tuned soft_hard).
    tuned_label = f"{TUNED_PREFIX}{tuned.kind}" if tuned is not None else ""
    if tuned is not None and tuned_path is not None:
        specs.append(parse_policy(f"{tuned_label}={tuned_path}"))
    if constant_path is not None:
        specs.append(parse_policy(f"best_constant={constant_path}"))
    specs += [heuristic_spec("on_zap"), heuristic_spec("soft_hard")]
    if not args.no_oracle:
        specs.append(oracle_spec())
    command = command_text(PROG, argv)
    learned = learned_spec.label
    episodes = args.eval_episodes or exp.eval.final_episodes
    held = _evaluate_exports(args, specs, held_out, "run's held-out scenarios",
                             out / "export_eval", episodes, not args.no_oracle, exp, command,
                             exports, learned, tuned_label)
    unseen: dict[str, dict[str, Any]] = {}
    if unseen_scen:
        # The same policies but the oracle, which is no bound there.
        unseen = _evaluate_exports(args, [s for s in specs if s.kind != "oracle"], unseen_scen,
                                   f"unseen suite {Path(exp.eval.unseen_suite).stem}",
                                   out / "export_eval_unseen", exp.eval.unseen_episodes, False,
                                   exp, command, exports, learned, tuned_label)
    for label, stem, record in exports:
        evaluation = {**held[label], **({"unseen": unseen[label]} if unseen else {})}
        record = dataclasses.replace(
            record, score={"suite": "held-out", **evaluation["policies"][label]},
            evaluation=evaluation)
        paths = write_thresholds(stem, record)
        if not args.quiet:
            for where, ev in (("held-out", held[label]), ("unseen", unseen.get(label))):
                if ev is not None:
                    print(f"{label}, {where}: {_kept_text(ev, tuned_label)}")
            print(f"{label}: wrote {', '.join(str(p) for p in paths)}")
    write_text_atomic(out / "export_command.txt", command)
    if not args.quiet:
        print(f"evaluation report: {out / 'export_eval' / 'report.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130/143: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
