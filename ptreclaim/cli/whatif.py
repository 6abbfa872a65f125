"""``scripts/whatif.py``: the same workloads and real traces under every page-table reclaim design.

::

    python scripts/whatif.py configs/scenarios/redis_jemalloc.yaml redis_jemalloc \\
        --mechanisms all --seed 0 --jobs 2 --out runs/whatif/demo

Each input -- a scenario YAML, or a captured trace (a shipped name such as
``redis_jemalloc``, or a path to a ``.npz``), which runs alone on a small host and stays
idle for half its length after its end -- runs once under each design of ``--mechanisms``
(default ``all``: ``none``, ``on_zap``, ``refcount``, ``madvise``, the four ``scan_*``
variants and ``limits``; :mod:`ptreclaim.envs.sim.mechanisms`), from the same seed, so every
design sees the same workloads.  The runs use the exact (Python) simulator: the designs
have no compiled port.

The output folder (default: a new folder under ``runs/whatif/``) receives ``whatif.md``
(where each design comes from and how much kernel it changes, then one table per input:
VmPTE, the empty/zero/file tables left, tables freed, the design's CPU and lock hold,
re-faults, allocation failures), ``whatif.json`` (the same numbers as data),
``series.npz`` (per-tick series, keyed ``INPUT/DESIGN/NAME``), one ``INPUT.png`` per input
and ``command.txt``.  Every file is written atomically and none is overwritten without
``--force``.  Bad input (a missing scenario or trace, an unknown design, a bad number)
prints one line naming the problem and the fix and exits with status 2.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..agents.rollout import WorkerPool
from ..agents.runs import stamp, unique_path
from ..envs.configio import write_text_atomic
from ..envs.sim.config import ConfigError, did_you_mean
from ..envs.sim.mechanisms import DESIGN_NAMES
from ..envs.sim.simulator import ScenarioConfig
from ..envs.whatif import (
    WhatIfInput,
    designs_table,
    markdown_table,
    plot_input,
    resolve_input,
    run_design,
)
from .common import (
    OneLineParser,
    add_output_flags,
    check_out_dir,
    command_text,
    progress_bar,
    run_cli,
)

PROG = "whatif.py"
#: Files every run writes, besides one ``INPUT.png`` per input.
OUTPUT_FILES = ("whatif.md", "whatif.json", "series.npz", "command.txt")
MAX_TICKS = 10**7
MAX_JOBS = 64

Task = tuple[ScenarioConfig, str, int]

__all__ = ["OUTPUT_FILES", "build_parser", "main", "parse_mechanisms"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/whatif.py``."""
    p = OneLineParser(prog=PROG, description=(
        "Run scenarios and real traces under each page-table reclaim design (before 6.14, "
        "6.14 on-zap, refcount, MADV_RECLAIM_PGTABLES, four async scanners, per-process "
        "limits) and write a table and plots per input."))
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a scenario YAML (configs/scenarios/*.yaml), or a trace: a shipped "
                        "name (redis_jemalloc, churn_jemalloc, churn_glibc_trim, "
                        "numpy_jemalloc_decay) or a .npz path")
    p.add_argument("--mechanisms", nargs="+", default=["all"], metavar="DESIGN",
                   help=f"designs to run, space- or comma-separated, or 'all' (default): "
                        f"{', '.join(DESIGN_NAMES)}")
    p.add_argument("--seed", type=int, default=0, help="RNG seed of every run (default 0)")
    p.add_argument("--ticks", type=int, default=None, metavar="N",
                   help="ticks per run (default: the scenario's; a trace: its length + 50%%)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes (default 1)")
    add_output_flags(p, "runs/whatif/")
    return p


def parse_mechanisms(values: Sequence[str]) -> list[str]:
    """The designs named in ``values`` (names, comma lists or ``all``), in the canonical
    order; an unknown name raises :class:`ConfigError` with a did-you-mean hint."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    chosen: set[str] = set()
    for n in names:
        if n == "all":
            chosen.update(DESIGN_NAMES)
        elif n in DESIGN_NAMES:
            chosen.add(n)
        else:
            raise ConfigError(f"--mechanisms: {n!r} is not a design"
                              f"{did_you_mean(n, DESIGN_NAMES)}; choose from "
                              f"{', '.join(DESIGN_NAMES)} or all")
    if not chosen:
        raise ConfigError("--mechanisms: no design given; name one or more, or all")
    return [d for d in DESIGN_NAMES if d in chosen]


def _context() -> None:
    """Workers need no state: each task carries its scenario."""


def _run_task(context: None, task: Task) -> dict[str, Any]:
    scenario, design, seed = task
    return run_design(scenario, design, seed)


def _check_args(args: argparse.Namespace) -> None:
    if args.seed < 0:
        raise ConfigError(f"--seed: {args.seed} is out of range; use a seed >= 0")
    if args.ticks is not None and not 1 <= args.ticks <= MAX_TICKS:
        raise ConfigError(f"--ticks: {args.ticks} is out of range; allowed [1, {MAX_TICKS}]")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise ConfigError(f"--jobs: {args.jobs} is out of range; allowed [1, {MAX_JOBS}]")


def _inputs(specs: Sequence[str], ticks: int | None) -> list[WhatIfInput]:
    inputs: list[WhatIfInput] = []
    for spec in specs:
        inp = resolve_input(spec, ticks)
        if any(i.label == inp.label for i in inputs):
            raise ConfigError(f"{spec}: a second input named {inp.label!r}; give each input "
                              "once (scenario names and trace names must differ)")
        inputs.append(inp)
    return inputs


def _series_npz(inputs: Sequence[WhatIfInput], runs: dict[str, list[dict[str, Any]]]) -> bytes:
    arrays = {f"{i.label}/{r['design']}/{k}": np.asarray(v, dtype=np.float64)
              for i in inputs for r in runs[i.label] for k, v in r["series"].items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _report(command: str, seed: int, inputs: Sequence[WhatIfInput], designs: Sequence[str],
            runs: dict[str, list[dict[str, Any]]]) -> str:
    parts = [f"# Kernel what-if (seed {seed})\n", f"```\n{command.splitlines()[0]}\n```\n",
             "## Designs\n", designs_table(designs)]
    for i in inputs:
        sc = i.scenario
        parts += [f"\n## {i.label}\n",
                  f"{i.kind} `{i.source}`, {sc.ticks} ticks of {sc.machine.tick_ms} ms\n\n",
                  markdown_table(runs[i.label]), f"\n![{i.label}]({i.label}.png)\n"]
    return "".join(parts)


def _main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_args(args)
    designs = parse_mechanisms(args.mechanisms)
    inputs = _inputs(args.inputs, args.ticks)
    out = (Path(args.out) if args.out
           else unique_path(Path("runs") / "whatif" / f"whatif__{args.seed}__{stamp()}", first=1))
    files = [*OUTPUT_FILES, *(f"{i.label}.png" for i in inputs)]
    check_out_dir(out, files, args.force)
    tasks: list[Task] = [(i.scenario, d, args.seed) for i in inputs for d in designs]
    show = not args.quiet
    with progress_bar(f"what-if: {len(tasks)} runs", len(tasks), show) as update:
        def done(index: int, result: dict[str, Any], count: int) -> None:
            if update is not None:
                update(count)

        with WorkerPool(args.jobs, _context, (), _run_task) as pool:
            results = pool.map(tasks, on_result=done)
    runs: dict[str, list[dict[str, Any]]] = {i.label: [] for i in inputs}
    for (scenario, _, _), res in zip(tasks, results, strict=True):
        runs[scenario.name].append(res)
    command = command_text(PROG, argv)
    data = {"seed": args.seed, "designs": designs,
            "inputs": [{"label": i.label, "kind": i.kind, "source": i.source,
                        "ticks": i.scenario.ticks, "tick_ms": i.scenario.machine.tick_ms,
                        "runs": [{k: v for k, v in r.items() if k != "series"}
                                 for r in runs[i.label]]} for i in inputs]}
    report = _report(command, args.seed, inputs, designs, runs)
    for i in inputs:
        write_text_atomic(out / f"{i.label}.png",
                          plot_input(i.label, runs[i.label], i.scenario.machine.tick_ms))
    write_text_atomic(out / "series.npz", _series_npz(inputs, runs))
    write_text_atomic(out / "whatif.json", json.dumps(data, indent=1) + "\n")
    write_text_atomic(out / "command.txt", command)
    write_text_atomic(out / "whatif.md", report)
    if not args.quiet:
        for i in inputs:
            print(f"\n{i.label}\n{markdown_table(runs[i.label])}", end="")
        print(f"\nwrote {out}/: {', '.join(files)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, 130/143: interrupted)."""
    return run_cli(PROG, build_parser(), _main, argv)
