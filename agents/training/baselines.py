"""The baselines of a run's final comparison, computed once and cached.

Every seed of an experiment (and every later run of the same evaluation)
meets the same fixed rules and the oracle bound on the same seeded
episodes; they are deterministic, so their results are cached in
``runs/.baseline_cache/`` under a key of everything that decides them.

A baseline is named as ``eval.baselines`` names it
(:func:`~ptreclaim.agents.loading.baseline_spec`): ``oracle``, a built-in heuristic with its
defaults, or ``LABEL=RULE`` with RULE a rule file (the default experiment adds the shipped
tuned rules and ``best_constant`` this way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ... import __version__
from ...envs.configio import load_json, write_text_atomic
from ...envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ...envs.sim.config import ConfigError, to_dict
from ...envs.sim.simulator import ScenarioConfig
from ..loading import PolicySpec, baseline_spec, build_policy, oracle_spec
from ..results import EpisodeResult
from ..rollout import run_policies

Tick = Callable[[], None]


#: Sources of the compiled simulator core that runs the episodes (``_fast.cpp`` is
#: generated from ``_fast.pyx``, which is hashed itself).
CORE_SOURCES = ("*.pyx", "*.cpp", "*.hpp")


def fingerprinted_files() -> list[Path]:
    """The files whose contents decide a baseline's episodes: the env and simulator
    (Python, and the compiled core's sources and build flags, ``setup.py``, where the
    checkout has them: the env runs on the core), the heuristics, the oracle and the
    episode runner."""
    envs_dir = Path(str(sys.modules[PageTableReclaimEnv.__module__].__file__)).resolve().parent
    agents_dir = Path(__file__).resolve().parent.parent
    core = sorted(p for pattern in CORE_SOURCES for p in envs_dir.rglob(pattern)
                  if p.name != "_fast.cpp")
    build = [p for p in (envs_dir.parent / "setup.py",) if p.is_file()]
    return [*sorted(envs_dir.rglob("*.py")), *core, *build,
            agents_dir / "heuristics.py", agents_dir / "oracle.py", agents_dir / "rollout.py"]


def _code_fingerprint() -> str:
    """Hash of :func:`fingerprinted_files`: a change to any of them invalidates cached
    results.  (The compiled core's sources joined it: before, a change to the core
    alone reused results the old core had computed.)"""
    h = hashlib.sha256()
    for f in fingerprinted_files():
        h.update(f.name.encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()


def _spec(entry: str) -> PolicySpec:
    """The policy spec of one baseline entry (``oracle`` or an ``eval.baselines`` entry)."""
    return oracle_spec() if entry == "oracle" else baseline_spec(entry)


def run_with_ticks(policies: Mapping[str, Any], scenarios: Sequence[ScenarioConfig],
                   episodes: int, seed: int, env_config: EnvConfig,
                   tick: Tick | None = None) -> list[EpisodeResult]:
    """:func:`~ptreclaim.agents.rollout.run_policies`, calling ``tick()`` after
    each episode (a progress bar, or a check for a stop request)."""
    return run_policies(policies, scenarios, episodes, seed, env_config,
                        None if tick is None else lambda _done, _total: tick())


def run_baselines(specs: Sequence[PolicySpec], scenarios: Sequence[ScenarioConfig],
                  episodes: int, seed: int, env_config: EnvConfig, tick: Tick | None = None,
                  jobs: int = 1) -> list[EpisodeResult]:
    """The baselines ``specs`` (:func:`_spec` of ``eval.baselines`` entries and
    ``oracle``) on the seeded episodes, labelled by their specs, in (policy, scenario,
    episode) order, in ``jobs`` processes
    (:func:`~ptreclaim.agents.evaluate.evaluate_specs`: the results are the same for
    any ``jobs``).

    A daemonic process (a seed of a multi-seed run is one) may not start
    processes: it runs the episodes itself; its sibling seeds split the
    baselines through the cache's locks instead.
    """
    if not specs:
        return []
    if jobs <= 1 or multiprocessing.current_process().daemon:
        return run_with_ticks({s.label: build_policy(s, env_config, scenarios[0]) for s in specs},
                              scenarios, episodes, seed, env_config, tick)
    from ..evaluate import evaluate_specs

    results, _ = evaluate_specs(specs, scenarios, episodes, seed, env_config, jobs=jobs,
                                progress=None if tick is None else lambda _d, _t: tick(),
                                timeline_scenario=None)
    return results


def baseline_results(names: Sequence[str], scenarios: Sequence[ScenarioConfig], episodes: int,
                     seed: int, env_config: EnvConfig, cache_dir: Path | None,
                     tick: Callable[[], None] | None = None, jobs: int = 1
                     ) -> list[EpisodeResult]:
    """The baselines' results on the seeded episodes, in ``names`` order,
    computed in ``jobs`` processes (:func:`run_baselines`).

    Each baseline's results are cached (``cache_dir``) under a key of
    everything that decides them (scenarios, env config, seeds, episodes, the
    code's fingerprint), so every seed of an experiment, and every later run
    of the same evaluation, reuses them: the policies are deterministic.  One
    file lock per baseline lets parallel seeds split the work.  A seed of a multi-seed
    run (a daemonic process) takes the baselines nobody is computing one at a time, the
    oracle first, releasing each once stored; a process that may start workers takes all
    of them at once and runs them together, so its ``jobs`` processes share the slow
    oracle's episodes.  Then each waits for the rest, one at a time.
    """
    # Each entry read once (a rule file is parsed here, not again to run it).
    specs = {name: _spec(name) for name in names}
    if cache_dir is None:
        return run_baselines(list(specs.values()), scenarios, episodes, seed, env_config, tick,
                             jobs)
    common = {"scenarios": [to_dict(s) for s in scenarios], "episodes": episodes,
              "seed": seed, "env": to_dict(env_config), "code": _code_fingerprint(),
              "version": __version__}
    cache_dir.mkdir(parents=True, exist_ok=True)

    # A rule is keyed by what it is (its kind and parameters), not by its file: an edited
    # rule file is a new baseline.
    stems: dict[str, Path] = {}
    for name, spec in specs.items():
        what = {"policy": spec.label, "kind": spec.kind, "name": spec.name,
                "params": dict(spec.params or {})}
        key = hashlib.sha256(json.dumps({**common, **what}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:20]
        stems[name] = cache_dir / f"{spec.label}-{key}"

    got: dict[str, list[EpisodeResult]] = {}
    if multiprocessing.current_process().daemon:
        # A seed of a multi-seed run (which plays its episodes itself, run_baselines):
        # take the free locks one at a time, the oracle first, and let each go once its
        # results are stored, so the seeds split the baselines and the slow oracle does
        # not keep the others waiting on one core while another is idle.
        for name in sorted(stems, key=lambda n: specs[n].kind != "oracle"):
            with stems[name].with_suffix(".lock").open("a") as lock:
                if not _try_lock(lock):
                    continue  # another seed is computing it: take the next one
                try:
                    got[name] = _cached_or_run(stems[name], specs[name], scenarios, episodes,
                                               seed, env_config, tick, jobs)
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    else:
        # Take every free lock at once (never waiting, so no lock order to keep), read
        # what is cached and compute the rest in one batch: the ``jobs`` processes then
        # share the slow oracle's episodes with the rest.
        with contextlib.ExitStack() as held:
            todo: list[str] = []
            for name, stem in stems.items():
                lock = held.enter_context(stem.with_suffix(".lock").open("a"))
                if not _try_lock(lock):
                    continue  # another seed is computing it: take the next one
                held.callback(fcntl.flock, lock.fileno(), fcntl.LOCK_UN)
                got[name] = _cached(stem.with_suffix(".json"))
                if not got[name]:
                    todo.append(name)
            fresh = run_baselines([specs[n] for n in todo], scenarios, episodes, seed,
                                  env_config, tick, jobs)
            for name in todo:
                got[name] = [r for r in fresh if r.policy == specs[name].label]
                _store(stems[name].with_suffix(".json"), got[name])
    # Then wait for the ones others were computing, one lock at a time.
    for name, stem in stems.items():
        if name in got:
            continue
        with stem.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                # Run here only if whoever held the lock died before writing the results.
                got[name] = _cached_or_run(stem, specs[name], scenarios, episodes, seed,
                                           env_config, tick, jobs)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return [r for name in names for r in got[name]]


def _try_lock(lock: IO[str]) -> bool:
    """Take ``lock``'s file lock without waiting: False when another process holds it."""
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _cached_or_run(stem: Path, spec: PolicySpec, scenarios: Sequence[ScenarioConfig],
                   episodes: int, seed: int, env_config: EnvConfig, tick: Tick | None,
                   jobs: int) -> list[EpisodeResult]:
    """One baseline's cached results, or its episodes run and stored now (the caller
    holds its lock)."""
    got = _cached(stem.with_suffix(".json"))
    if not got:
        got = run_baselines([spec], scenarios, episodes, seed, env_config, tick, jobs)
        _store(stem.with_suffix(".json"), got)
    return got


def _store(path: Path, results: Sequence[EpisodeResult]) -> None:
    """Write ``results`` where :func:`_cached` reads them (atomically)."""
    write_text_atomic(path, json.dumps([dataclasses.asdict(r) for r in results]))


def _cached(path: Path) -> list[EpisodeResult]:
    """Results stored by :func:`baseline_results`, or [] when absent/unreadable."""
    try:
        return [EpisodeResult(**r) for r in load_json(path)]
    except (ConfigError, OSError, ValueError, TypeError):
        return []

