"""What playing a policy costs per decision: the fast paths against the per-call ones.

Validation during training (every ``eval.freq`` steps, 2 episodes of every training
scenario), the final evaluation, export's distillation and the agent trials of tuning play a
model one decision at a time, through ``ObsNormalizedPolicy.predict``.  For a PPO or A2C
policy with categorical actions it takes ``DeterministicActorCritic``'s path: the same
tensor operations as SB3's ``predict(deterministic=True)`` without the call's overhead
(``agents/modelpolicy.py``).  The learning curve, the held-out and the unseen evaluations also
play the oracle, which prices every table of every process at each decision: its
``_choose`` does so for whole table classes at once, its ``_choose_reference`` one table at
a time (``agents/oracle.py``).  This measures both forms of each, in CPU time, alternating
over ``--rounds`` rounds (medians [range]):

- ``predict``: the default experiment's policy (its network and ``VecNormalize``, trained
  for one update so the statistics are not the identity), one call per recorded
  observation of the training suite;
- ``validation``: ``run_policies`` on the first ``--scenarios`` training scenarios x 2
  episodes, per decision (the env's step included), the episodes one after the other;
- ``lockstep``: the same episodes as the training callback plays them, up to 64 at once with
  one ``predict_rows`` call per decision of them all (``agents/rollout.py``), against the
  fast path one episode at a time;
- ``oracle``: the oracle on the same episodes, per decision (its future's recording
  included).

Every form must give the same actions and the same episodes; a difference ends the run
with an error.  Reproduce: ``OPENBLAS_NUM_THREADS=1 .venv/bin/python
benchmarks/bench_policies.py``.
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
    from ptreclaim.agents.modelpolicy import as_policy

    exp, _, _, train = _default_setup()
    model = default_ppo_model(null=False, seed=seed)
    model.learn(model.n_steps * model.n_envs)
    venv = model.get_env()
    fast = as_policy(model, venv, exp.env, "fast")
    slow = as_policy(model, venv, exp.env, "sb3")
    if fast._mode is None:
        raise SystemExit("bench_policies.py: error: the default experiment's policy has no "
                         "fast path (DeterministicActorCritic.of returned None)")
    slow._mode = None
    return fast, slow, train, exp.env


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


class OneAtATime:
    """A policy without ``predict_rows``: ``run_policies`` plays its episodes one by one."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def predict(self, *args: Any, **kw: Any) -> Any:
        return self.policy.predict(*args, **kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4,
                    help="rounds of both forms, alternating which goes first")
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

    from ptreclaim.agents.oracle import OracleBound
    from ptreclaim.agents.rollout import run_policies

    torch.set_num_threads(1)
    console = Console(width=max(Console().width, 130))
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
            res = run_policies({"policy": OneAtATime(policy)}, scenarios, 2, args.seed + 1,
                               env_config)
            steps = sum(e.steps for e in res)
            times.setdefault(("validation", name), []).append(
                (time.process_time() - t0) / steps * 1e6)
            episodes[name] = res
            if name == "fast":  # the lockstep row's reference is the fast path alone
                times.setdefault(("lockstep", "sb3"), []).append(times[("validation", name)][-1])
                t0 = time.process_time()
                res = run_policies({"policy": policy}, scenarios, 2, args.seed + 1, env_config)
                times.setdefault(("lockstep", "fast"), []).append(
                    (time.process_time() - t0) / sum(e.steps for e in res) * 1e6)
                episodes["lockstep"] = res
            oracle = OracleBound(reference=name == "sb3")
            t0 = time.process_time()
            res = run_policies({"oracle": oracle}, scenarios, 2, args.seed + 1, env_config)
            times.setdefault(("oracle", name), []).append(
                (time.process_time() - t0) / sum(e.steps for e in res) * 1e6)
            episodes["oracle " + name] = res
        if not all(np.array_equal(a, b) for a, b in zip(actions["fast"], actions["sb3"],
                                                          strict=True)):
            raise SystemExit("bench_policies.py: error: the fast path's actions differ from "
                             "SB3's predict")
        if episodes["fast"] != episodes["sb3"]:
            raise SystemExit("bench_policies.py: error: the fast path's episodes differ from "
                             "SB3's predict")
        if episodes["lockstep"] != episodes["fast"]:
            raise SystemExit("bench_policies.py: error: the episodes played in lockstep "
                             "differ from the same episodes played one at a time")
        if episodes["oracle fast"] != episodes["oracle sb3"]:
            raise SystemExit("bench_policies.py: error: the oracle's episodes differ from "
                             "its reference's")
    table = Table(title=f"CPU µs per decision, median of {args.rounds} rounds \\[range] "
                        "(the same actions and episodes on both forms: checked)")
    for col in ("measure", "per call (reference)", "fast path", "fast / per call"):
        table.add_column(col, justify="left" if col == "measure" else "right", no_wrap=True)
    labels = {"predict": f"SB3 predict, {len(observations)} calls",
              "validation": f"validation, {len(scenarios)} scenarios x 2 episodes",
              "lockstep": "the same in lockstep (ref.: fast path alone)",
              "oracle": f"oracle, {len(scenarios)} scenarios x 2 episodes"}
    for measure, label in labels.items():
        sb3, fst = times[(measure, "sb3")], times[(measure, "fast")]
        ratios = [f / s for f, s in zip(fst, sb3, strict=True)]
        table.add_row(label,
                      f"{statistics.median(sb3):.0f} [{min(sb3):.0f}, {max(sb3):.0f}]",
                      f"{statistics.median(fst):.0f} [{min(fst):.0f}, {max(fst):.0f}]",
                      f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, "
                      f"{max(ratios):.2f}]")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
