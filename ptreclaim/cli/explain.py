"""``scripts/explain.py``: what a policy does, per scenario, and which features it follows.

::

    python scripts/explain.py runs/default__ppo__0__20250101-120000 --suite test --episodes 3

runs the policy (a run folder, a model zip, a thresholds file or ``heuristic:NAME``) on
seeded episodes of each scenario and writes ``explain.png`` (the share of each value of
every action component per scenario, and the features its decisions are most sensitive
to), ``explain.json``, ``report.md`` and ``command.txt`` to ``--out``
(:mod:`ptreclaim.agents.explain`).  Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..agents.evaluate import env_config_for, suite_scenarios
from ..agents.explain import OUTPUT_FILES, explain, write
from ..agents.loading import parse_policy
from ..agents.runs import stamp, unique_path
from ..envs.sim.config import check_range
from .common import (
    OneLineParser,
    add_model_flags,
    add_output_flags,
    claim_out_dir,
    command_text,
    progress_bar,
    run_cli,
)

PROG = "explain.py"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/explain.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Show what a policy does: the share of each action value per scenario and the "
        "features its decisions are most sensitive to (permutation sensitivity). Writes "
        "explain.png, explain.json and report.md."))
    p.add_argument("policy", metavar="POLICY",
                   help="[LABEL=]SPEC as evaluate.py takes it: a run folder, a model .zip, a "
                        "thresholds .yaml/.json, or heuristic:NAME[:params.yaml]")
    p.add_argument("--suite", default="test", metavar="FILE",
                   help="suite or scenario (name or YAML); default 'test': the held-out scenarios")
    p.add_argument("--episodes", type=int, default=3, metavar="N",
                   help="seeded episodes per scenario (default 3)")
    p.add_argument("--seed", type=int, default=1000,
                   help="base seed of the episodes (default 1000, the final evaluation's)")
    p.add_argument("--env", default=None, metavar="FILE",
                   help="env settings YAML (default: the run's, else the defaults)")
    add_model_flags(p)
    add_output_flags(p, "runs/explain/")
    return p


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    check_range("--episodes", args.episodes, 1, 10_000)
    check_range("--seed", args.seed, 0, 2**63 - 1)
    spec = parse_policy(args.policy, best=args.best, trust_model=args.trust_model)
    scenarios, _ = suite_scenarios(args.suite)
    env_config = env_config_for(args.env, [spec])
    out = Path(args.out) if args.out else unique_path(
        Path("runs") / "explain" / f"{spec.label}__{stamp()}", first=1)
    show = not args.quiet
    with claim_out_dir(out, OUTPUT_FILES, args.force), \
            progress_bar("episodes", len(scenarios) * args.episodes, show) as update:
        ex = explain(spec, scenarios, env_config, args.episodes, args.seed,
                     progress=None if update is None else lambda done, _total: update(done))
        written = write(ex, env_config, out, command_text(PROG, argv))
    if not args.quiet:
        top = ", ".join(f"{n} {v:.2f}" for n, v in ex.top_features(5))
        print(f"{spec.label}: most sensitive to {top}")
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 2 bad input)."""
    return run_cli(PROG, build_parser(), _main, argv)
