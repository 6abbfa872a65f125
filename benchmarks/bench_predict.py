"""What playing a trained policy costs per decision: SB3's ``predict`` against the fast path.

Validation during training (every ``eval.freq`` steps, 2 episodes of every training
scenario), the final evaluation, export's distillation and the agent trials of tuning play a
model one decision at a time, through ``ObsNormalizedPolicy.predict``.  For a PPO or A2C
policy with categorical actions it takes ``DeterministicActorCritic``'s path: the same
tensor operations as SB3's ``predict(deterministic=True)`` without the call's overhead
(``agents/loading.py``).  This measures both paths on the default experiment's policy (its
network and ``VecNormalize``, trained for one update so the statistics are not the
identity), in CPU time, the two alternating over ``--rounds`` rounds (medians):

- ``predict``: one call per recorded observation of the training suite;
- ``validation``: ``run_policies`` as the training callback runs it, on the first
  ``--scenarios`` training scenarios x 2 episodes, per decision (the env's step included).

Both paths must give the same actions and the same episodes; a difference ends the run
with an error.  Reproduce: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python
benchmarks/bench_predict.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
from bench_env import _default_setup, default_ppo_model
from rich.console import Console
from rich.table import Table

import ptreclaim  # noqa: F401  (registers the env ids, pins torch's numerics)


def trained_policies(seed: int) -> tuple[Any, Any, list[Any], Any]:
    """The default experiment's PPO after one update on its training env: the fast path,
    SB3's path (the same model), the training scenarios and the env config."""
    from ptreclaim.agents.loading import as_policy

    exp = _default_setup()[0]
    model = default_ppo_model(null=False, seed=seed)
    model.learn(model.n_steps * model.n_envs)
    venv = model.get_env()
    fast = as_policy(model, venv, exp.env, "fast")
    slow = as_policy(model, venv, exp.env, "sb3")
    if fast._mode is None:
        raise SystemExit("bench_predict.py: error: the default experiment's policy has no "
                         "fast path (DeterministicActorCritic.of returned None)")
    slow._mode = None
    return fast, slow, _default_setup()[3], exp.env


def recorded_observations(scenarios: list[Any], env_config: Any, n: int, seed: int
                          ) -> list[np.ndarray]:
    """``n`` observations of the training suite under seeded random actions."""
    from ptreclaim.envs.pagetable_env import PageTableReclaimEnv

    env = PageTableReclaimEnv(scenarios, env_config)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both paths, alternating")
    ap.add_argument("--observations", type=int, default=2000,
                    help="recorded observations per predict measure")
    ap.add_argument("--scenarios", type=int, default=20,
                    help="training scenarios of the validation measure (x 2 episodes)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for flag, value in (("--rounds", args.rounds), ("--observations", args.observations),
                        ("--scenarios", args.scenarios)):
        if value < 1:
            ap.error(f"{flag} {value}: must be at least 1")
    import torch

    from ptreclaim.agents.rollout import run_policies

    torch.set_num_threads(1)
    console = Console(width=max(Console().width, 110))
    console.print(f"python {platform.python_version()}, {platform.platform()}, "
                  f"{os.cpu_count()} CPUs; reproduce: {' '.join([sys.executable, *sys.argv])}")
    fast, slow, train, env_config = trained_policies(args.seed)
    observations = recorded_observations(train, env_config, args.observations, args.seed)
    scenarios = train[:args.scenarios]
    times: dict[tuple[str, str], list[float]] = {}
    episodes: dict[str, Any] = {}
    for r in range(args.rounds):
        order = (("fast", fast), ("sb3", slow)) if r % 2 else (("sb3", slow), ("fast", fast))
        actions: dict[str, list[np.ndarray]] = {}
        for name, policy in order:
            t0 = time.process_time()
            actions[name] = [policy.predict(o)[0] for o in observations]
            times.setdefault(("predict", name), []).append(
                (time.process_time() - t0) / len(observations) * 1e6)
            t0 = time.process_time()
            res = run_policies({"policy": policy}, scenarios, 2, args.seed + 1, env_config)
            steps = sum(e.steps for e in res)
            times.setdefault(("validation", name), []).append(
                (time.process_time() - t0) / steps * 1e6)
            episodes[name] = res
        if not all(np.array_equal(a, b) for a, b in zip(actions["fast"], actions["sb3"],
                                                          strict=True)):
            raise SystemExit("bench_predict.py: error: the fast path's actions differ from "
                             "SB3's predict")
        if episodes["fast"] != episodes["sb3"]:
            raise SystemExit("bench_predict.py: error: the fast path's episodes differ from "
                             "SB3's predict")
    table = Table(title=f"CPU µs per decision, median of {args.rounds} rounds \\[range] "
                        "(the same actions and episodes on both paths: checked)")
    for col in ("measure", "SB3 predict", "fast path", "fast / SB3"):
        table.add_column(col, justify="left" if col == "measure" else "right", no_wrap=True)
    for measure in ("predict", "validation"):
        sb3, fst = times[(measure, "sb3")], times[(measure, "fast")]
        ratios = [f / s for f, s in zip(fst, sb3, strict=True)]
        table.add_row(f"predict, {len(observations)} calls" if measure == "predict" else
                      f"validation, {len(scenarios)} scenarios x 2 episodes",
                      f"{statistics.median(sb3):.0f} [{min(sb3):.0f}, {max(sb3):.0f}]",
                      f"{statistics.median(fst):.0f} [{min(fst):.0f}, {max(fst):.0f}]",
                      f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, "
                      f"{max(ratios):.2f}]")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
