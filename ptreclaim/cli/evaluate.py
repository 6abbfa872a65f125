"""``scripts/evaluate.py``: evaluate policies on the same seeded episodes.

::

    python scripts/evaluate.py runs/default__ppo__0__20250101-120000 \\
        heuristic:soft_hard tuned=heuristic:soft_hard:my_params.yaml \\
        --suite configs/suites/test.yaml --episodes 10 --jobs 2

evaluates any mix of policies (a run folder, a ``model.zip``, an exported
thresholds file, ``heuristic:NAME[:params.yaml]``; ``LABEL=SPEC`` names one),
always together with ``none`` (the normalisation baseline), the
``--baseline`` heuristic (default ``on_zap``) and, unless ``--no-oracle``,
the oracle bound; then prints tables and writes ``report.md``, ``results.csv``,
``results.json``, ``summary.json`` and PNG plots to ``--out``
(:func:`ptreclaim.agents.evaluate.run_evaluation`).  Bad input prints one
line on stderr and exits with status 2; an interrupt writes nothing and
exits with 130 or 143.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..agents.evaluate import (
    OUTPUT_FILES,
    env_config_for,
    policy_specs,
    run_evaluation,
    suite_scenarios,
)
from ..agents.heuristics import HEURISTICS
from ..agents.runs import stamp, unique_path
from ..envs.sim.config import ConfigError, check_range, did_you_mean
from .common import (
    OneLineParser,
    add_model_flags,
    add_output_flags,
    claim_out_dir,
    command_text,
    display_path,
    progress_bar,
    run_cli,
)

PROG = "evaluate.py"
DEFAULT_SUITE = "test"


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/evaluate.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Evaluate policies on the same seeded episodes of a suite: trained runs, model zips, "
        "exported thresholds and heuristics, always next to 'none' (no reclaim, the "
        "normalisation baseline), the --baseline heuristic and the oracle bound. Prints "
        "tables; writes report.md, results.csv/json, summary.json and PNG plots."))
    p.add_argument("policies", nargs="*", metavar="POLICY",
                   help="[LABEL=]SPEC, SPEC one of: a run folder runs/<exp>__<algo>__<seed>__<time>"
                        "/ (model.zip, or best_model.zip with --best, with its VecNormalize "
                        "stats); a model .zip; a thresholds .yaml/.json (rule: {kind: soft_hard,"
                        " ...}); heuristic:NAME or heuristic:NAME:params.yaml (NAME: "
                        f"{', '.join(HEURISTICS)}). Default: every heuristic")
    p.add_argument("--suite", default=None, metavar="FILE",
                   help="suite of scenarios: a suite or scenario YAML, or the name of a shipped "
                        "one (configs/suites/NAME.yaml, configs/scenarios/NAME.yaml); default "
                        f"{DEFAULT_SUITE!r}: the held-out scenarios")
    p.add_argument("--episodes", type=int, default=10, metavar="N",
                   help="seeded episodes per scenario (default 10)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the episodes (default 0)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="parallel processes (default 1; results do not depend on it)")
    add_model_flags(p)
    p.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                   help="include the oracle bound (default on; needed for normalised scores)")
    p.add_argument("--baseline", default="on_zap", metavar="NAME",
                   help="policy for the probability of improvement: a label or a heuristic "
                        "name, added if missing (default on_zap)")
    p.add_argument("--env", default=None, metavar="FILE",
                   help="env settings YAML (EnvConfig keys, an 'env:' section, or a run's "
                        "config.yaml); "
                        "default: the evaluated run's, else the defaults")
    p.add_argument("--timeline-scenario", default=None, metavar="NAME",
                   help="scenario whose episode 0 is plotted as a timeline (default: the first)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="bootstrap resamples for the confidence intervals (default 2000)")
    add_output_flags(p, "runs/eval/")
    return p



def _check_args(args: argparse.Namespace) -> None:
    check_range("--episodes", args.episodes, 1, 100_000)
    check_range("--seed", args.seed, 0, 2**63 - 1)
    check_range("--jobs", args.jobs, 1, 1024)
    check_range("--bootstrap", args.bootstrap, 100, 1_000_000)



def _default_out(suite: str) -> Path:
    return unique_path(Path("runs") / "eval" / f"{Path(suite).stem}__{stamp()}", first=1)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_args(args)
    suite = args.suite or DEFAULT_SUITE
    specs = policy_specs(args.policies, best=args.best, trust_model=args.trust_model,
                         baseline=args.baseline, oracle=args.oracle)
    scenarios, suite_files = suite_scenarios(suite)
    names = [s.name for s in scenarios]
    tl_index = 0
    if args.timeline_scenario is not None:
        if args.timeline_scenario not in names:
            raise ConfigError(f"--timeline-scenario {args.timeline_scenario!r} is not in the "
                              f"suite{did_you_mean(args.timeline_scenario, names)}; "
                              f"scenarios: {', '.join(names)}")
        tl_index = names.index(args.timeline_scenario)
    env_config = env_config_for(args.env, specs)
    out = Path(args.out) if args.out else _default_out(suite)
    total = len(specs) * len(scenarios) * args.episodes
    show = not args.quiet
    with claim_out_dir(out, OUTPUT_FILES, args.force), \
            progress_bar("episodes", total, show) as update:
        run_evaluation(specs, scenarios, env_config, out, suite=str(suite),
                       suite_files=[display_path(p) for p in suite_files],
                       episodes=args.episodes, seed=args.seed, jobs=args.jobs,
                       bootstrap=args.bootstrap, baseline=args.baseline, oracle=args.oracle,
                       timeline_index=tl_index, command=command_text(PROG, argv),
                       quiet=args.quiet,
                       progress=None if update is None else lambda done, _total: update(done))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130/143: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
