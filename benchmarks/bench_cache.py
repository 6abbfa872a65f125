"""Cache misses of the compiled env per step, counted by cachegrind: a measure that does not
move with the machine's load.

The batched env is memory-bound: inside PPO its steps cost ~1.3-1.5x what they cost in a bare
loop because the learner evicts the env's data (``bench_interference.py``), and on a shared
2-core VM the timing benchmarks move by tens of percent from run to run, too much to see a
change of a few percent in the core.  Cachegrind (valgrind) simulates the caches and counts
every miss, the same count on every run of the same build.  This runs the bare batched loop
(4 envs, the default training suite, seeded random actions, 300 vector steps of warm-up)
under ``valgrind --tool=cachegrind`` twice, with 0 and with ``--steps`` measured vector
steps, and reports the difference per env step: instructions, first-level data misses
(D1: 48 KiB, 12-way), instruction-fetch misses, and last-level misses with the last level
set to the 2 MiB per-core L2 of the reference machines (``--LL``), for the compiled core
(``ptfast::`` functions and the ``memset``/``memcpy`` they call) and for the whole
process, with the functions that miss most.  Two builds compare by running this in each
checkout.  ``--forward`` makes a PPO policy's forward pass before every measured vector
step, as training does, so the counts include what the learner evicts.

Reproduce: ``.venv/bin/python benchmarks/bench_cache.py`` (two valgrind runs side by side,
~5 min on 2 cores; needs ``valgrind``: ``apt-get install valgrind``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench_env import WARMUP, batched_venv, policy_forward, random_actions, steps_after, warmed

from ptreclaim.configs import CONFIG_DIR
from ptreclaim.envs.configio import load_suite

D1 = "49152,12,64"
LL = "2097152,16,64"
CORE_LIBC = ("__memset", "__memcpy", "__memmove")


def child(steps: int, forward: bool = False) -> None:
    """The measured program: warm the batched env up, then ``steps`` vector steps, each
    after a PPO policy's forward pass when ``forward`` (the policy is made in the run
    without steps too, so only the passes and the steps differ)."""
    train = load_suite(CONFIG_DIR / "suites" / "train.yaml")
    v = batched_venv(train, 4, 0)
    before = policy_forward(v, 0) if forward else None
    actions = random_actions(v, WARMUP + steps, 0)
    obs = warmed(v, actions[:WARMUP])
    if steps:
        steps_after(v, obs, actions[WARMUP:], before)


def per_function(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Event names and per-function totals of a cachegrind output file."""
    events: list[str] = []
    sums: dict[str, list[int]] = defaultdict(list)
    fn = ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = line[3:]
        elif line[:1].isdigit():
            vals = [int(x) for x in line.split()[1:]]
            vals += [0] * (len(events) - len(vals))
            cur = sums[fn]
            sums[fn] = vals if not cur else [a + b for a, b in zip(cur, vals, strict=True)]
    return events, dict(sums)


#: What ``--by`` orders the functions by: each an event's total (reads and writes).
ORDER_BY = {"ll": ("DLmr", "DLmw"), "d1": ("D1mr", "D1mw"), "ir": ("Ir",)}


def ranked(deltas: dict[str, list[int]], events: list[str], by: str, top: int) -> list[str]:
    """The ``top`` functions of ``deltas`` (per-function event counts in ``events``' order)
    with the highest ``by`` (a key of :data:`ORDER_BY`), highest first; ties by name."""
    cols = [events.index(e) for e in ORDER_BY[by]]
    return sorted(deltas, key=lambda f: (-sum(deltas[f][c] for c in cols), f))[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="measured vector steps (4 envs)")
    ap.add_argument("--top", type=int, default=12, help="functions listed")
    ap.add_argument("--by", choices=tuple(ORDER_BY), default="ll",
                    help="order the functions by last-level misses (default), first-level "
                         "misses or instructions")
    ap.add_argument("--forward", action="store_true",
                    help="a PPO policy's forward pass before every vector step, as in "
                         "training: the core's misses then include what the learner evicts")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        child(args.child, args.forward)
        return 0
    if args.steps < 1:
        ap.error(f"--steps {args.steps}: must be at least 1")
    if shutil.which("valgrind") is None:
        ap.error("valgrind not found on PATH; install it (apt-get install valgrind)")
    print(f"reproduce: {' '.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="bench_cache.") as tmp:
        outs = {n: Path(tmp) / f"cg.{n}" for n in (0, args.steps)}
        procs = [subprocess.Popen(
            ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--D1={D1}", f"--LL={LL}",
             f"--cachegrind-out-file={out}", sys.executable, __file__, "--child", str(n),
             *(["--forward"] if args.forward else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for n, out in outs.items()]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                print(f"bench_cache.py: a valgrind run failed:\n{err[-2000:]}", file=sys.stderr)
                return 1
        events, base = per_function(outs[0])
        _, run = per_function(outs[args.steps])
    ix = {e: i for i, e in enumerate(events)}
    env_steps = args.steps * 4
    zero = [0] * len(events)

    def delta(fn: str) -> list[int]:
        a, b = base.get(fn, zero), run.get(fn, zero)
        return [(y - x) for x, y in zip(a, b, strict=True)]

    def d1(v: list[int]) -> int:
        return v[ix["D1mr"]] + v[ix["D1mw"]]

    def ll(v: list[int]) -> int:
        return v[ix["DLmr"]] + v[ix["DLmw"]]

    fns = set(base) | set(run)
    core = [f for f in fns if f.startswith("ptfast::") or f.startswith(CORE_LIBC)]
    # memset/memcpy count with the core (it calls them for tables and buffers), but with
    # --forward torch calls them too, and cachegrind cannot tell callers apart: the
    # ptfast:: functions alone are the core's own share then.
    own = [f for f in core if f.startswith("ptfast::")]
    rows = {"compiled core (ptfast:: and its memset/memcpy)": core,
            "ptfast:: functions alone": own, "whole process": list(fns)}
    after = ", each after a PPO policy's forward pass" if args.forward else ""
    print(f"per env step, {args.steps} vector steps of 4 envs after {WARMUP} of warm-up"
          f"{after} (D1 {D1}, LL {LL}):")
    for label, group in rows.items():
        tot = [sum(col) for col in zip(*(delta(f) for f in group), strict=True)]
        print(f"  {label}: {tot[ix['Ir']] / env_steps:,.0f} instructions, "
              f"{d1(tot) / env_steps:,.0f} D1 misses, {ll(tot) / env_steps:,.0f} LL misses "
              f"({tot[ix['DLmw']] / env_steps:,.0f} of them writes); instruction fetches: "
              f"{tot[ix['I1mr']] / env_steps:,.0f} I1 misses, {tot[ix['ILmr']] / env_steps:,.0f}"
              f" LL misses")
    what = {"ll": "LL misses", "d1": "D1 misses", "ir": "instructions"}[args.by]
    print(f"functions with the most {what} per env step: instructions, LL misses "
          "(reads + writes, writes), D1 misses")
    deltas = {f: delta(f) for f in fns}
    for f in ranked(deltas, events, args.by, args.top):
        v = deltas[f]
        print(f"  {v[ix['Ir']] / env_steps:10,.0f} {ll(v) / env_steps:8,.1f} "
              f"{v[ix['DLmw']] / env_steps:8,.1f} {d1(v) / env_steps:8,.1f}  {f[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
