"""``best_constant``: the best fixed action on the training suite, by enumeration.

A learned policy must beat the best thing a policy can do without looking: one
action, the same at every decision.  The action space is small (480 actions by
default: 5 budgets x 3 class depths x 4 idle levels x 4 targets x 2 hard-limit
flags), so every action is scored, none is sampled.  Many actions behave alike
(a pass with budget 0 has no class or idle requirement; the hard-limit flag of
the global target does nothing; a target without a pass or a limit acts on
nobody: :func:`~ptreclaim.agents.distill.canonical`), so each behaviour is run
once and its score shared by the actions that have it (340 of 480 by default).

Every action runs on the same episodes (common random numbers), exactly those of
``tune.py heuristic`` with the same ``--episode-seed``: each scenario x ``seeds``
seeds x ``episodes`` episodes, episode ``k`` of scenario ``i`` under seed ``s``
seeded with ``episode_seed(episode_seed + s, i, k)``.  The score is the mean
episode cost; its standard error is over the seeds' means
(:func:`~ptreclaim.agents.tune.objectives.score`).  Episodes run in one
:class:`~ptreclaim.agents.rollout.WorkerPool`.

Outputs (``--out``, default ``runs/tune/constant``): ``best.yaml``/``best.json``
(a thresholds file with rule kind ``constant``: ``evaluate.py
best_constant=runs/tune/constant/best.yaml``), ``actions.csv`` (every action with
its score), ``report.md`` and ``command.txt``.
"""

from __future__ import annotations

import csv
import io
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import __version__
from ...envs.configio import write_text_atomic
from ...envs.pagetable_env import EnvConfig
from ...envs.sim.config import to_dict
from ...envs.sim.pagetable import MODEL_RULES_VERSION
from ...envs.sim.simulator import ScenarioConfig
from ..export import THRESHOLDS_SCHEMA_VERSION, ThresholdsRecord, write_thresholds
from ..heuristics import (
    ACTION_COMPONENTS,
    ACTION_HIGHS,
    Constant,
    ConstantParams,
    action_text,
    canonical,
)
from ..modelpolicy import env_nvec
from ..report import md_table
from ..results import EpisodeResult
from ..rollout import WorkerPool, episode_seed, run_episode
from .objectives import Score, score

#: Files ``tune.py constant`` writes into its output folder.
OUTPUT_FILES = ("best.yaml", "best.json", "actions.csv", "report.md", "command.txt")


def action_space(env_config: EnvConfig) -> tuple[int, ...]:
    """The sizes of the components enumerated: the env's action space, cut to what
    the fixed policies express (the default budgets, depths, idle levels, targets);
    without ``hard_limit_action`` the hard-limit component is left out."""
    nvec = env_nvec(env_config)
    return tuple(min(int(n), hi + 1) for n, hi in zip(nvec, ACTION_HIGHS, strict=False))


def action_classes(nvec: Sequence[int]) -> dict[tuple[int, ...], list[tuple[int, ...]]]:
    """Every action of ``MultiDiscrete(nvec)`` grouped by what it does: the canonical
    five-component action -> the actions that behave like it, in enumeration order."""
    groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for a in itertools.product(*(range(n) for n in nvec)):
        key = tuple(int(v) for v in canonical(np.asarray([a]))[0])
        groups.setdefault(key, []).append(tuple(a))
    return groups


@dataclass(frozen=True)
class ActionScore:
    """One behaviour's score and the actions that share it."""

    action: tuple[int, ...]  # canonical, five components
    members: tuple[tuple[int, ...], ...]
    score: Score


#: An episode to run: (canonical action, scenario index, seed base, episode).
Task = tuple[tuple[int, ...], int, int, int]
_Context = tuple[list[ScenarioConfig], EnvConfig]


def _context(scenarios: list[ScenarioConfig], env_config: EnvConfig) -> _Context:
    return scenarios, env_config


def _run(ctx: _Context, task: Task) -> EpisodeResult:
    scenarios, env_config = ctx
    action, i, base, k = task
    policy = Constant(ConstantParams(*action))
    return run_episode(policy, scenarios[i], episode_seed(base, i, k), env_config, "constant",
                       i, k)


def enumerate_actions(scenarios: Sequence[ScenarioConfig], env_config: EnvConfig,
                      seed_bases: Sequence[int], episodes: int, jobs: int,
                      progress: Callable[[int, int], None] | None = None
                      ) -> list[ActionScore]:
    """Score every behaviour of the action space on the same episodes; best first
    (ties: the lower action)."""
    groups = action_classes(action_space(env_config))
    tasks: list[tuple[Task, int]] = [((action, i, base, k), s)
                                     for action in groups
                                     for s, base in enumerate(seed_bases)
                                     for i in range(len(scenarios)) for k in range(episodes)]

    def on_result(_index: int, _result: EpisodeResult, done: int) -> None:
        if progress is not None:
            progress(done, len(tasks))

    with WorkerPool(min(jobs, len(tasks)), _context, (list(scenarios), env_config), _run) as pool:
        results = pool.map([t for t, _ in tasks], on_result)
    per: dict[tuple[int, ...], tuple[list[EpisodeResult], list[int]]] = {}
    for (task, s), res in zip(tasks, results, strict=True):
        rs, gs = per.setdefault(task[0], ([], []))
        rs.append(res)
        gs.append(s)
    out = [ActionScore(a, tuple(groups[a]), score(*per[a])) for a in groups]
    return sorted(out, key=lambda r: (r.score.mean, r.action))


def _text(action: Sequence[int], env_config: EnvConfig) -> str:
    """An action in words, with the env's own budgets and idle levels."""
    return action_text(action, env_config.budgets, env_config.idle_levels)


def _row(r: ActionScore, env_config: EnvConfig) -> list[str]:
    return [_text(r.action, env_config), f"{r.score.mean:.3f}",
            "-" if np.isnan(r.score.stderr) else f"{r.score.stderr:.3f}", str(len(r.members))]


@dataclass(frozen=True)
class ConstantRun:
    """What one enumeration ran on, for the outputs."""

    suite: str
    suite_files: list[str]
    scenarios: list[str]
    seed_bases: list[int]
    episodes: int
    env_config: EnvConfig
    jobs: int
    seconds: float
    command: str
    out: Path


def best_record(scores: Sequence[ActionScore], run: ConstantRun) -> ThresholdsRecord:
    """The best action as a thresholds record (rule kind ``constant``)."""
    best = scores[0]
    params = dict(zip(ACTION_COMPONENTS, best.action, strict=True))
    n_actions = sum(len(r.members) for r in scores)
    none = next((r for r in scores if not any(r.action)), None)
    return ThresholdsRecord(
        "constant", params, "best_constant",
        (f"The best fixed action on suite {run.suite!r}: {_text(best.action, run.env_config)}. "
         "Found by "
         f"enumerating all {n_actions} actions ({len(scores)} distinct behaviours) on "
         f"{len(run.scenarios)} scenarios x {len(run.seed_bases)} seeds x {run.episodes} "
         "episode(s), the same episodes for every action."),
        {"tool": "tune.py constant", "suite": run.suite, "suite_files": run.suite_files,
         "scenarios": run.scenarios, "seeds": len(run.seed_bases), "episodes": run.episodes,
         "episode_seeds": run.seed_bases, "env_config": to_dict(run.env_config),
         "actions": n_actions, "distinct_actions": len(scores),
         "episodes_run": len(scores) * len(run.scenarios) * len(run.seed_bases) * run.episodes,
         "seconds": round(run.seconds, 1), "jobs": run.jobs,
         "ptreclaim_version": __version__, "model_rules_version": MODEL_RULES_VERSION},
        {"objective": f"mean episode cost on {run.suite} suite", "value": best.score.mean,
         "stderr": None if np.isnan(best.score.stderr) else best.score.stderr,
         "scenario_costs": best.score.scenario_means,
         "runner_up": None if len(scores) < 2 else {
             "action": list(scores[1].action), "value": scores[1].score.mean},
         "no_pass_value": None if none is None else none.score.mean},
        schema_version=THRESHOLDS_SCHEMA_VERSION)


def actions_csv(scores: Sequence[ActionScore], run: ConstantRun) -> str:
    """One row per action of the space (in enumeration order): its components, the
    behaviour it shares, its score."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*ACTION_COMPONENTS[:len(scores[0].members[0])], "behaviour", "rank",
                "mean_cost", "stderr", *[f"cost_{s}" for s in run.scenarios], "text"])
    rows = []
    for rank, r in enumerate(scores, 1):
        for a in r.members:
            rows.append((a, [*a, " ".join(map(str, r.action)), rank, repr(r.score.mean),
                             "" if np.isnan(r.score.stderr) else repr(r.score.stderr),
                             *[repr(r.score.scenario_means.get(s, float("nan")))
                               for s in run.scenarios], _text(r.action, run.env_config)]))
    for _, row in sorted(rows, key=lambda x: x[0]):
        w.writerow(row)
    return buf.getvalue()


def report_md(scores: Sequence[ActionScore], run: ConstantRun, top: int = 15) -> str:
    """The enumeration's report: the best actions, the worst, the no-pass action, timing."""
    n_ep = len(scores) * len(run.scenarios) * len(run.seed_bases) * run.episodes
    best = scores[0]
    header = ["rank", "action", "mean cost", "SE over seeds", "actions alike"]
    lines = ["# best_constant: the best fixed action", "",
             f"Every action of the space (`MultiDiscrete({list(action_space(run.env_config))})`,"
             f" {sum(len(r.members) for r in scores)} actions, {len(scores)} distinct "
             f"behaviours) on suite `{run.suite}`: {len(run.scenarios)} scenarios x "
             f"{len(run.seed_bases)} seeds x {run.episodes} episode(s), the same episodes "
             f"for every action (seed s runs `episode_seed({run.seed_bases[0]} + s, scenario, "
             "episode)`). The score is the mean episode cost (lower is better); SE is over "
             "the seeds' means.", "",
             f"**Best: {_text(best.action, run.env_config)}** (`{list(best.action)}`), "
             f"{best.score.mean:.3f}.", "",
             "The best of many actions scored on the same episodes is optimistic (the "
             "winner's curse): judge it on held-out episodes, e.g. `python scripts/evaluate.py "
             f"best_constant={run.out / 'best.yaml'}`.", "",
             "## Best actions", "",
             md_table(header, [[str(i), *_row(r, run.env_config)]
                                      for i, r in enumerate(scores[:top], 1)]), "",
             "## Per scenario (best action)", "",
             md_table(["scenario", "mean cost"],
                      [[k, f"{v:.3f}"] for k, v in best.score.scenario_means.items()]), "",
             "## Worst actions", "",
             md_table(header, [[str(len(scores) - j), *_row(r, run.env_config)]
                               for j, r in enumerate(reversed(scores[-5:]))]), ""]
    none = next((i for i, r in enumerate(scores, 1) if not any(r.action)), None)
    if none is not None:
        lines += [f"No pass at all ranks {none} of {len(scores)} "
                  f"({scores[none - 1].score.mean:.3f}).", ""]
    lines += ["## Timing", "",
              f"{n_ep} episodes in {run.seconds:.0f} s wall time with {run.jobs} worker "
              f"process(es): {n_ep / max(run.seconds, 1e-9):.1f} episodes/s.", "",
              "## Command", "", "```", run.command.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def write_outputs(out: Path, scores: Sequence[ActionScore], run: ConstantRun) -> list[Path]:
    """Write ``best.yaml``/``.json``, ``actions.csv``, ``report.md`` and ``command.txt``
    (each atomically); returns them."""
    paths = write_thresholds(out / "best", best_record(scores, run))
    for name, text in (("actions.csv", actions_csv(scores, run)),
                       ("report.md", report_md(scores, run)),
                       ("command.txt", run.command)):
        write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths


def summary_line(scores: Sequence[ActionScore], run: ConstantRun) -> str:
    """One line for the terminal: the best action and the time it took."""
    best = scores[0]
    se = "" if np.isnan(best.score.stderr) else f" ± {best.score.stderr:.3f}"
    n_ep = len(scores) * len(run.scenarios) * len(run.seed_bases) * run.episodes
    return (f"best_constant: {_text(best.action, run.env_config)} {list(best.action)}: mean cost "
            f"{best.score.mean:.3f}{se} on {run.suite} ({len(scores)} distinct actions, "
            f"{n_ep} episodes in {run.seconds:.0f} s)")


def run_constant(scenarios: Sequence[ScenarioConfig], env_config: EnvConfig, *, suite: str,
                 suite_files: Sequence[str], seeds: int, episodes: int, episode_seed_base: int,
                 jobs: int, out: Path, command: str,
                 progress: Callable[[int, int], None] | None = None
                 ) -> tuple[list[ActionScore], ConstantRun, list[Path]]:
    """Enumerate, then write the outputs; returns the scores, the run and the files."""
    bases = [episode_seed_base + s for s in range(seeds)]
    t0 = time.perf_counter()
    scores = enumerate_actions(scenarios, env_config, bases, episodes, jobs, progress)
    run = ConstantRun(suite, list(suite_files), [s.name for s in scenarios], bases, episodes,
                      env_config, jobs, time.perf_counter() - t0, command, out)
    return scores, run, write_outputs(out, scores, run)
