"""Seeded evaluation of any policy, with statistics that hold up.

Every policy (an SB3 model, a heuristic, exported thresholds, the oracle) is
run on the same seeded episodes of the same scenarios
(:mod:`ptreclaim.agents.rollout`); a result is one row per policy x scenario
x episode with every cost term (:class:`~ptreclaim.agents.results.EpisodeResult`).
The statistics (:mod:`ptreclaim.agents.stats`) and the report folder
(:mod:`ptreclaim.agents.report`) come from those rows.  The command line is
``scripts/evaluate.py`` (:mod:`ptreclaim.cli.evaluate`); ``export_thresholds.py``
writes its evaluation through :func:`run_evaluation` too.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..envs.configio import dump_yaml, load_yaml, resolve_suite, write_text_atomic
from ..envs.pagetable_env import EnvConfig
from ..envs.sim.config import ConfigError, build, did_you_mean, to_dict
from ..envs.sim.simulator import ScenarioConfig
from . import interrupts, report
from .heuristics import HEURISTICS
from .loading import PolicySpec, build_policy, heuristic_spec, oracle_spec, parse_policy
from .results import EpisodeResult, PolicySummary
from .rollout import WorkerPool, episode_seed, plays_in_lockstep, run_episode, run_lockstep
from .stats import summarize, summarize_by_scenario

#: Files an evaluation writes into its output folder.
OUTPUT_FILES = ("report.md", "results.csv", "results.json", "summary.json", "scores.png",
                "cost_terms.png", "timeline.png", "config.yaml", "command.txt")


# ------------------------------------------------------------ episodes of specs

@dataclass
class _Context:
    policies: dict[str, Any]
    scenarios: list[ScenarioConfig]
    env_config: EnvConfig
    seed: int


#: Episodes of one policy to run: (policy label, [(index, scenario index, episode, want
#: timeline)]).  A model's come in chunks (:data:`MODEL_CHUNK`), played in lockstep where
#: the model can; every other policy's one at a time.
Task = tuple[str, list[tuple[int, int, int, bool]]]
Done = list[tuple[int, EpisodeResult, list[dict[str, Any]] | None]]

#: Episodes of a model per task: enough that deciding for all of them in one call
#: (``predict_rows``) saves most of a decision's network overhead, few enough that the
#: worker processes still share the work evenly.
MODEL_CHUNK = 16


def _make_context(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                  env_config: EnvConfig, seed: int) -> _Context:
    policies = {s.label: build_policy(s, env_config, scenarios[0]) for s in specs}
    return _Context(policies, list(scenarios), env_config, seed)


def _run_task(ctx: _Context, task: Task) -> Done:
    label, episodes = task
    policy = ctx.policies[label]
    out: Done = []
    lockstep = plays_in_lockstep(policy)
    together = [(j, i, k) for j, i, k, want in episodes if lockstep and not want]
    alone = [(j, i, k, want) for j, i, k, want in episodes if not (lockstep and not want)]
    if together:
        results = run_lockstep(policy, label, ctx.scenarios, [(i, k) for _, i, k in together],
                               ctx.seed, ctx.env_config)
        out += [(j, res, None) for (j, _, _), res in zip(together, results, strict=True)]
    for j, i, k, want in alone:
        timeline: list[dict[str, Any]] | None = [] if want else None
        res = run_episode(policy, ctx.scenarios[i], episode_seed(ctx.seed, i, k),
                          ctx.env_config, label, i, k, timeline=timeline)
        out.append((j, res, timeline))
    return out


def evaluate_specs(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                   episodes: int, seed: int, env_config: EnvConfig, jobs: int = 1,
                   progress: Callable[[int, int], None] | None = None,
                   timeline_scenario: int | None = 0,
                   ) -> tuple[list[EpisodeResult], dict[str, list[dict[str, Any]]]]:
    """Every spec'd policy on every scenario for ``episodes`` seeded episodes,
    in ``jobs`` processes (:class:`~ptreclaim.agents.rollout.WorkerPool`; the
    results are the same for any ``jobs``).

    Returns the results in (policy, scenario, episode) order and, per policy,
    the timeline of episode 0 of scenario ``timeline_scenario``.
    """
    if not scenarios:
        raise ConfigError("no scenarios to evaluate on")
    labels = [s.label for s in specs]
    tasks: list[Task] = []
    n = 0
    for spec in specs:
        chunk = MODEL_CHUNK if spec.kind == "model" else 1
        eps = []
        for i in range(len(scenarios)):
            for k in range(episodes):
                eps.append((n, i, k, i == timeline_scenario and k == 0))
                n += 1
        tasks += [(spec.label, eps[lo:lo + chunk]) for lo in range(0, len(eps), chunk)]
    # Interleave policies so that the slow ones (the oracle) spread over workers.
    order = sorted(tasks, key=lambda t: (t[1][0][1], t[1][0][2], labels.index(t[0])))
    ended = 0

    def on_result(_index: int, out: Done, _done: int) -> None:
        nonlocal ended
        for _ in out:  # one call per episode, as callers that count calls expect
            ended += 1
            if progress is not None:
                progress(ended, n)

    pool_jobs = min(jobs, len(tasks))
    with WorkerPool(pool_jobs, _make_context, (list(specs), list(scenarios), env_config, seed),
                    _run_task) as pool:
        outs = pool.map(tasks if pool_jobs <= 1 else order, on_result)
    results: list[EpisodeResult | None] = [None] * n
    timelines: dict[str, list[dict[str, Any]]] = {}
    for j, res, tl in (episode for out in outs for episode in out):
        results[j] = res
        if tl is not None:
            timelines[res.policy] = tl
    done = [r for r in results if r is not None]
    assert len(done) == n
    return done, {label: timelines[label] for label in labels if label in timelines}


# ------------------------------------------------------------ what to evaluate

def suite_scenarios(suite: str) -> tuple[list[ScenarioConfig], list[Path]]:
    """The scenarios of a suite argument (a suite or scenario name or YAML) and their
    files, checked: at least one, and distinct names (names label the results)."""
    scenarios, files = resolve_suite(suite)
    if not scenarios:
        raise ConfigError(f"--suite {suite}: the suite lists no scenarios")
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"--suite {suite}: two scenarios share a name; names label the "
                          "results")
    return scenarios, files


def load_env_file(path: str | os.PathLike[str]) -> EnvConfig:
    """Env settings from a YAML file: a mapping of :class:`EnvConfig` fields,
    or a file with an ``env:`` section (an experiment) or an
    ``experiment.env`` one (a run's ``config.yaml``)."""
    data = load_yaml(path)
    where = Path(path).name
    if isinstance(data, Mapping) and isinstance(data.get("experiment"), Mapping) \
            and isinstance(data["experiment"].get("env"), Mapping):
        data, where = data["experiment"]["env"], f"{where}.experiment.env"
    elif isinstance(data, Mapping) and isinstance(data.get("env"), Mapping):
        data, where = data["env"], f"{where}.env"
    return build(EnvConfig, data, where)


def env_config_for(path: str | None, specs: Sequence[PolicySpec]) -> EnvConfig:
    """The env settings of an evaluation: from ``path`` (``--env``), else the
    ones every evaluated model was trained with (they must agree), else the
    defaults."""
    if path is not None:
        return load_env_file(path)
    envs = [(s, s.env) for s in specs if s.env is not None]
    if not envs:
        return EnvConfig()
    first_spec, first = envs[0]
    config = build(EnvConfig, first, f"{first_spec.label}: config.yaml.env")
    for s, e in envs[1:]:
        other = build(EnvConfig, e, f"{s.label}: config.yaml.env")
        if other != config:
            diff = next(f.name for f in dataclasses.fields(EnvConfig)
                        if getattr(other, f.name) != getattr(config, f.name))
            raise ConfigError(f"{first_spec.label} and {s.label} were trained with different env "
                              f"settings ({diff}); evaluate them separately or pass --env")
    return config


def policy_specs(policies: Sequence[str], *, best: bool, trust_model: bool, baseline: str,
                 oracle: bool) -> list[PolicySpec]:
    """The specs of an evaluation: ``none`` (the normalisation baseline) first,
    the ``baseline`` heuristic if not given, the ``policies`` (default: every
    heuristic) and the oracle bound when ``oracle``."""
    given = [parse_policy(a, best=best, trust_model=trust_model)
             for a in (policies or [f"heuristic:{h}" for h in HEURISTICS])]
    labels = [s.label for s in given]
    for lab in labels:
        if labels.count(lab) > 1:
            raise ConfigError(f"two policies are labelled {lab!r}; name them apart with "
                              "LABEL=SPEC")
        if lab == "oracle":
            raise ConfigError("the label 'oracle' is reserved for the oracle bound (--oracle); "
                              "choose another with LABEL=SPEC")
    specs: list[PolicySpec] = []
    by_label = {s.label: s for s in given}
    none = by_label.pop("none", None)
    if none is not None and (none.kind != "heuristic" or none.name != "none"):
        raise ConfigError("the label 'none' is reserved for the no-reclaim baseline; choose "
                          "another with LABEL=SPEC")
    specs.append(heuristic_spec("none"))
    if baseline not in by_label and baseline != "none":
        if baseline in HEURISTICS:
            specs.append(heuristic_spec(baseline))
        else:
            known = [*by_label, "none", *HEURISTICS]
            raise ConfigError(f"--baseline {baseline!r} is neither an evaluated policy nor a "
                              f"heuristic{did_you_mean(baseline, known)}; known: "
                              f"{', '.join(dict.fromkeys(known))}")
    specs += [s for s in given if s.label != "none"]
    if oracle:
        specs.append(oracle_spec())
    return specs


# ------------------------------------------------------------ the report folder

def run_evaluation(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                   env_config: EnvConfig, out: Path, *, suite: str, suite_files: Sequence[str],
                   episodes: int, seed: int, jobs: int = 1, bootstrap: int = 2000,
                   baseline: str = "on_zap", oracle: bool = True, timeline_index: int = 0,
                   command: str = "", quiet: bool = False,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[list[EpisodeResult], list[PolicySummary]]:
    """Evaluate ``specs`` on ``scenarios`` and write the full report folder
    ``out`` (what ``evaluate.py`` writes; also used by ``export_thresholds.py``).

    Every policy is loaded first, so that a bad model fails before any work.
    The folder is written only once every episode is done, all files
    together (an interrupt never leaves half a report); ``command`` is the
    text of ``command.txt``.  Returns the episode results and the pooled
    summaries.
    """
    names = [s.name for s in scenarios]
    for s in specs:
        build_policy(s, env_config, scenarios[0])
    t0 = time.perf_counter()
    try:
        results, timelines = evaluate_specs(specs, scenarios, episodes, seed, env_config, jobs,
                                            progress, timeline_index)
    except interrupts.Interrupted as exc:
        raise exc.explain(
            what=f"the evaluation ({len(specs)} policies x {len(scenarios)} scenarios x "
                 f"{episodes} episodes)",
            kept=f"nothing ({out}/ is written only once every episode is done)",
            resume="the same command (it starts over)") from None
    wall = time.perf_counter() - t0
    ref = "oracle" if oracle else ""
    overall = summarize(results, "none", ref, bootstrap, seed, improvement_over=baseline)
    per_scen = summarize_by_scenario(results, "none", ref, bootstrap, seed,
                                     improvement_over=baseline)
    meta = {
        "suite": suite, "suite_files": list(suite_files),
        "scenarios": names, "episodes": episodes, "seed": seed,
        "seeds": {n: [episode_seed(seed, i, k) for k in range(episodes)]
                  for i, n in enumerate(names)},
        "baseline": baseline, "normalisation": {"zero": "none", "one": ref or None},
        "bootstrap": bootstrap,
        "timeline": {"scenario": names[timeline_index], "episode": 0,
                     "seed": episode_seed(seed, timeline_index, 0)},
        "env": to_dict(env_config), "policies": [s.describe() for s in specs],
    }
    files = report.render_all(results, overall, per_scen, timelines, meta)
    files["command.txt"] = command
    files["config.yaml"] = dump_yaml(meta)
    with interrupts.deferred():
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUT_FILES:
            write_text_atomic(out / name, files[name])
    try:
        interrupts.check()
    except interrupts.Interrupted as exc:
        raise exc.explain(what="the evaluation after its last episode",
                          kept=f"the whole report in {out}/",
                          resume="nothing to resume (the evaluation is complete)") from None
    if not quiet:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 130)
        for table in report.rich_tables(overall, per_scen, meta):
            console.print(table)
        console.print(f"{len(results)} episodes in {wall:.1f} s; wrote {out}/: "
                      f"{', '.join(OUTPUT_FILES)}")
    return results, overall
