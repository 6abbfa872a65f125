"""What slows the env inside PPO's loop: the same env steps after different work between them.

The batched env's compiled steps cost more inside PPO's rollout than in a bare loop of the
same steps (``bench_env.py --parts``).  This runs the bare batched loop (4 envs, the default
training suite, seeded random actions, after 300 vector steps of warm-up) several times from
the same state, each time doing something else before every vector step, and reports the
CPU µs per env step of the steps alone:

- ``plain``: nothing;
- ``forward``: a forward pass of an untrained PPO policy on the last observations (what
  PPO's rollout does; its actions are not used, so the steps are the same);
- ``write N MiB``: adding 1 to every byte of an N MiB buffer (evicts data only);
- ``python loop``: 2,000 additions in the interpreter (runs other code, touches no data).

If ``forward`` costs what the writes cost and the Python loop costs nothing, the env pays
for re-reading its own data, not for its code or branch history.  Variants are interleaved
over ``--rounds`` rounds; medians.  Reproduce: ``.venv/bin/python
benchmarks/bench_interference.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
from collections.abc import Callable

import numpy as np
from bench_env import WARMUP, batched_venv, policy_forward, random_actions, steps_after, warmed

import ptreclaim  # noqa: F401  (registers the env ids, pins torch's numerics)
from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_suite


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500, help="measured vector steps per run")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    first = batched_venv(train, 4, 0)
    first.reset()
    actions = random_actions(first, WARMUP + args.steps, 0)
    buffers = {n: np.ones(n << 20, np.uint8) for n in (1, 2, 4, 16)}

    def write(n: int) -> Callable[[np.ndarray], None]:
        def run(obs: np.ndarray) -> None:
            buffers[n] += 1
        return run

    def python_loop(obs: np.ndarray) -> None:
        x = 0
        for i in range(2000):
            x += i

    variants: dict[str, Callable[[np.ndarray], None] | None] = {
        "plain": None, "forward": policy_forward(first, 0),
        **{f"write {n} MiB": write(n) for n in buffers}, "python loop": python_loop}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, before in variants.items():
            v = batched_venv(train, 4, 0)
            obs = warmed(v, actions[:WARMUP])
            times[name].append(steps_after(v, obs, actions[WARMUP:], before))
    base = statistics.median(times["plain"])
    print(f"CPU µs per env step, median of {args.rounds} rounds ({args.steps} vector steps of "
          f"4 envs each):")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:12s} {med:6.1f}  ({med / base:.2f}x plain; rounds "
              f"{', '.join(f'{t:.1f}' for t in ts)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
