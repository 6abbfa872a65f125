"""``scripts/simulate.py``: run one scenario for N ticks, print a summary, plot a timeline.

::

    python scripts/simulate.py configs/scenarios/hypervisor_balloon.yaml \\
        --ticks 800 --policy none --seed 0 --out runs/simulate/demo

The run folder (default: a new folder under ``runs/simulate/``) receives the
resolved scenario (``config.yaml``), the command line (``command.txt``), the
summary as text and JSON (``summary.txt``, ``summary.json``) and a PNG
timeline (``timeline.png``): page-table bytes (total and the top processes),
normal-zone free memory against its min/low/high watermarks, PSI some/full
avg10, and allocation failures and OOM kills as markers
(:mod:`ptreclaim.envs.simulate`).  Every file is written atomically and an
existing file is never overwritten without ``--force``.

Bad input (a missing or malformed scenario, an unknown key, a value out of
range, an unknown policy, a negative tick count, an existing output file)
prints one line on stderr naming the problem and the fix, and exits with
status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..agents.loading import build_policy, oracle_spec, parse_policy
from ..agents.rollout import policy_driver
from ..agents.runs import stamp, unique_path
from ..envs.configio import dump_yaml, load_scenario, write_text_atomic
from ..envs.pagetable_env import EnvConfig
from ..envs.sim.config import ConfigError, check_range, did_you_mean, to_dict
from ..envs.sim.simulator import ScenarioConfig
from ..envs.simulate import (
    DIAGNOSTICS,
    RunResult,
    plot_timeline,
    render_summary,
    run_driven,
    summarize,
    summary_tables,
)
from .common import (
    OneLineParser,
    add_model_flags,
    add_output_flags,
    claim_out_dir,
    command_text,
    progress_bar,
    run_cli,
)

PROG = "simulate.py"
#: Files a run writes into its output folder.
OUTPUT_FILES = ("config.yaml", "command.txt", "summary.json", "summary.txt", "timeline.png")
#: Longest allowed run (matches ``ScenarioConfig.ticks``).
MAX_TICKS = 10**7
#: Shortcuts for the fixed heuristics of ``ptreclaim.agents`` (``heuristic:NAME``).
AGENT_SHORTCUTS = ("on_zap", "soft_hard", "periodic_scan", "oracle")

__all__ = ["OUTPUT_FILES", "build_parser", "main", "plot_timeline", "run", "summarize"]


def run(scenario: ScenarioConfig, ticks: int | None = None, policy: str = "none", seed: int = 0,
        on_tick: Callable[[int], None] | None = None, trust_model: bool = False) -> RunResult:
    """Run ``scenario`` for ``ticks`` ticks (default: the scenario's) under a
    ``policy`` from ``seed``: ``none`` (no reclaim on a pre-6.14 kernel),
    the diagnostic ``aggressive``, a heuristic name (``on_zap``, ``soft_hard``,
    ``periodic_scan``), ``oracle``, or any spec ``evaluate.py`` accepts
    (``heuristic:NAME[:params.yaml]``, a run folder, a model .zip, a
    thresholds file).

    ``on_tick(t)`` is called after each tick (for progress bars).
    """
    n = scenario.ticks if ticks is None else ticks
    if policy in DIAGNOSTICS:
        driver = DIAGNOSTICS[policy]
        if policy == "none":
            scenario = dataclasses.replace(scenario, pt_reclaim=False)
    else:
        if policy == "oracle":
            spec = oracle_spec()
        elif policy in AGENT_SHORTCUTS:
            spec = parse_policy(f"heuristic:{policy}")
        else:
            spec = parse_policy(policy, trust_model=trust_model)
        env_config = EnvConfig()
        driver, scenario = policy_driver(build_policy(spec, env_config, scenario), scenario,
                                         env_config)
    return run_driven(scenario, n, driver, policy, seed, on_tick)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/simulate.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Run a scenario for N ticks; print a summary table and write a PNG timeline of page "
        "tables, free memory, pressure and failures."))
    p.add_argument("scenario", help="scenario YAML file (configs/scenarios/*.yaml)")
    p.add_argument("--ticks", type=int, default=None, metavar="N",
                   help="ticks to run (default: the scenario's 'ticks')")
    p.add_argument("--policy", default="none", metavar="POLICY",
                   help="none: never reclaim, pre-6.14 kernel (default); on_zap, soft_hard, "
                        "periodic_scan, oracle; heuristic:NAME[:params.yaml]; a run folder, "
                        "model .zip or thresholds file; aggressive: a diagnostic that frees "
                        "every reclaimable table after every tick")
    add_model_flags(p, best=False)
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    add_output_flags(p, "runs/simulate/")
    return p


def _default_out(scenario: ScenarioConfig, policy: str, seed: int) -> Path:
    label = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(policy).stem or policy)
    return unique_path(Path("runs") / "simulate" / f"{scenario.name}__{label}__{seed}__{stamp()}",
                       first=1)


def _progress_run(scenario: ScenarioConfig, args: argparse.Namespace, ticks: int) -> RunResult:
    show = not args.quiet and ticks >= 100
    with progress_bar(f"simulating {scenario.name}", ticks, show) as update:
        if update is None:
            return run(scenario, ticks, args.policy, args.seed, trust_model=args.trust_model)
        bar = update

        def tick(t: int) -> None:
            if t % 10 == 9 or t == ticks - 1:
                bar(t + 1)

        return run(scenario, ticks, args.policy, args.seed, on_tick=tick,
                   trust_model=args.trust_model)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    known = (*DIAGNOSTICS, *AGENT_SHORTCUTS)
    # A bare name is a path too when such a file or folder exists ("runs" a level up
    # needs no "./"); otherwise it was meant as one of the known names.
    looks_like_path = any(c in args.policy for c in "/.:") or os.path.exists(args.policy)
    if args.policy not in known and not looks_like_path:
        raise ConfigError(f"--policy {args.policy!r} is unknown"
                          f"{did_you_mean(args.policy, known)}; "
                          f"choose one of: {', '.join(known)}, heuristic:NAME[:params.yaml], "
                          "a run folder, a model .zip or a thresholds file")
    if args.ticks is not None:
        check_range("--ticks", args.ticks, 1, MAX_TICKS)
    check_range("--seed", args.seed, 0, 2**63 - 1)
    scenario = load_scenario(args.scenario)
    ticks = scenario.ticks if args.ticks is None else args.ticks
    out = Path(args.out) if args.out else _default_out(scenario, args.policy, args.seed)
    with claim_out_dir(out, OUTPUT_FILES, args.force):
        res = _progress_run(scenario, args, ticks)
        summary = summarize(res)
        text = render_summary(summary)
        write_text_atomic(out / "config.yaml", dump_yaml(to_dict(scenario)))
        write_text_atomic(out / "command.txt", command_text(PROG, argv))
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "summary.txt", text)
        write_text_atomic(out / "timeline.png", plot_timeline(res))
    if not args.quiet:
        from rich.console import Console

        console = Console(width=None if sys.stdout.isatty() else 130)
        for table in summary_tables(summary, max_rows=15):
            console.print(table)
        console.print(f"wrote {out}/: {', '.join(OUTPUT_FILES)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130/143: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
