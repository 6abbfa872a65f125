"""The baselines of a run's final comparison, computed once and cached.

Every seed of an experiment (and every later run of the same evaluation)
meets the same fixed heuristics and the oracle bound on the same seeded
episodes; they are deterministic, so their results are cached in
``runs/.baseline_cache/`` under a key of everything that decides them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ... import __version__
from ...envs.configio import load_json, write_text_atomic
from ...envs.pagetable_env import EnvConfig, PageTableReclaimEnv
from ...envs.sim.config import ConfigError, to_dict
from ...envs.sim.simulator import ScenarioConfig
from ..heuristics import make_heuristic
from ..results import EpisodeResult
from ..rollout import run_policies

Tick = Callable[[], None]


def _code_fingerprint() -> str:
    """Hash of the code that decides a baseline's episodes (env, simulator,
    heuristics, oracle, episode runner): a change invalidates cached results."""
    h = hashlib.sha256()
    envs_dir = Path(str(sys.modules[PageTableReclaimEnv.__module__].__file__)).resolve().parent
    agents_dir = Path(__file__).resolve().parent.parent
    files = [*sorted(envs_dir.rglob("*.py")),
             agents_dir / "heuristics.py", agents_dir / "oracle.py", agents_dir / "rollout.py"]
    for f in files:
        h.update(f.name.encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()


def _make_baseline(name: str) -> Any:
    if name == "oracle":
        from ..oracle import OracleBound

        return OracleBound()
    return make_heuristic(name)


def run_with_ticks(policies: Mapping[str, Any], scenarios: Sequence[ScenarioConfig],
                   episodes: int, seed: int, env_config: EnvConfig,
                   tick: Tick | None = None) -> list[EpisodeResult]:
    """:func:`~ptreclaim.agents.rollout.run_policies`, calling ``tick()`` after
    each episode (a progress bar, or a check for a stop request)."""
    return run_policies(policies, scenarios, episodes, seed, env_config,
                        None if tick is None else lambda _done, _total: tick())


def baseline_results(names: Sequence[str], scenarios: Sequence[ScenarioConfig], episodes: int,
                     seed: int, env_config: EnvConfig, cache_dir: Path | None,
                     tick: Callable[[], None] | None = None) -> list[EpisodeResult]:
    """The baselines' results on the seeded episodes, in ``names`` order.

    Each baseline's results are cached (``cache_dir``) under a key of
    everything that decides them (scenarios, env config, seeds, episodes, the
    code's fingerprint), so every seed of an experiment, and every later run
    of the same evaluation, reuses them: the policies are deterministic.  One
    file lock per baseline lets parallel seeds split the work: each takes the
    baselines nobody is computing, then waits for the rest.
    """
    if cache_dir is None:
        return run_with_ticks({n: _make_baseline(n) for n in names}, scenarios, episodes,
                            seed, env_config, tick)
    common = {"scenarios": [to_dict(s) for s in scenarios], "episodes": episodes,
              "seed": seed, "env": to_dict(env_config), "code": _code_fingerprint(),
              "version": __version__}
    cache_dir.mkdir(parents=True, exist_ok=True)
    got: dict[str, list[EpisodeResult]] = {}
    for blocking in (False, True):
        for name in names:
            if name in got:
                continue
            key = hashlib.sha256(json.dumps({**common, "policy": name},
                                            sort_keys=True).encode()).hexdigest()[:20]
            path = cache_dir / f"{name}-{key}.json"
            with (cache_dir / f"{name}-{key}.lock").open("a") as lock:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    continue  # another seed is computing it: take the next one
                try:
                    got[name] = _cached(path)
                    if not got[name]:
                        got[name] = run_with_ticks({name: _make_baseline(name)}, scenarios,
                                                 episodes, seed, env_config, tick)
                        write_text_atomic(path, json.dumps(
                            [dataclasses.asdict(r) for r in got[name]]))
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return [r for name in names for r in got[name]]


def _cached(path: Path) -> list[EpisodeResult]:
    """Results stored by :func:`baseline_results`, or [] when absent/unreadable."""
    try:
        return [EpisodeResult(**r) for r in load_json(path)]
    except (ConfigError, OSError, ValueError, TypeError):
        return []

