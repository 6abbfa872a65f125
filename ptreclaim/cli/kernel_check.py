"""``scripts/kernel_check.py``: replay op scripts on the model, on the live kernel, or both.

``simulate SCRIPT`` prints the model's VmPTE delta (KiB) after each op, one
number per line, exactly as the ``.expected`` files hold them; ``kernel SCRIPT``
prints what the running kernel reports; ``compare SCRIPT...`` runs both and
prints a per-op diff and a summary (:mod:`ptreclaim.envs.kernel.check`), with
exit status 0 only when every op matches (same number, and both failed or
both succeeded).  ``--generated N`` adds N scripts from the seeded generator (``--families``
picks the families, ``--thp`` makes every one a THP script).
Exit status 2 means the input was bad or the kernel cannot serve; the reason
is printed on one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..envs.kernel.check import compare_script, diff_lines, load_scripts
from ..envs.kernel.oracle import OracleError, OracleUnavailable, kernel_status, run_script
from ..envs.sim.config import ConfigError, check_range
from ..envs.sim.opscript import OpScriptError, Script, parse_file, read_expected
from ..envs.sim.replay import replay
from .common import OneLineParser, run_cli

PROG = "kernel_check.py"
#: ``compare --generated``: at most this many scripts (a bound, so a typo cannot run
#: for days).
MAX_GENERATED = 100_000
#: ``compare --seed``: the generator's ``numpy.random.SeedSequence`` takes any integer >= 0;
#: the bound only keeps a typo's thousand digits out of the scripts' names.
MAX_SEED = 2**63 - 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    script = parse_file(args.script)
    for o in replay(script, pt_reclaim=not args.no_pt_reclaim):
        print(o.delta_kib)
    return 0


def _cmd_kernel(args: argparse.Namespace) -> int:
    script = parse_file(args.script)
    for r in run_script(script):
        print(r.delta_kib)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    ok, why = kernel_status()
    if not ok:
        raise OracleUnavailable(why)
    scripts = load_scripts(args.scripts, args.generated, args.seed, args.families, args.thp)
    if not scripts:
        raise OpScriptError("no scripts given: name SCRIPT files or use --generated N")
    failed = 0
    total_ops = 0
    for script in _progress(scripts, quiet=args.quiet):
        d = compare_script(script, run_script(script), replay(script))
        total_ops += d.ops
        if d.ok:
            if not args.quiet:
                print(f"ok       {d.name} ({d.ops} ops)")
            continue
        failed += 1
        lines: list[str] = []
        diff_lines(script, d, lines)
        print("\n".join(lines))
    print(f"{len(scripts) - failed} of {len(scripts)} scripts match the kernel op by op "
          f"({total_ops} ops); {failed} differ")
    return 0 if failed == 0 else 1


def _cmd_expected(args: argparse.Namespace) -> int:
    """Compare the model with recorded ``.expected`` files (no kernel needed)."""
    failed = 0
    for path in args.scripts:
        script = parse_file(path)
        expected = read_expected(_expected_path(path))
        got = [o.delta_kib for o in replay(script)]
        if got != expected:
            failed += 1
            print(f"MISMATCH {path}: model {got} vs expected {expected}")
        elif not args.quiet:
            print(f"ok       {path}")
    print(f"{len(args.scripts) - failed} of {len(args.scripts)} scripts match their .expected")
    return 0 if failed == 0 else 1


def _expected_path(script: str) -> Path:
    """The ``.expected`` file of ``script``: beside it, same stem.  Refused
    in one line, with the fix, when it is missing."""
    path = Path(script).with_suffix(".expected")
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{script}: its expected deltas {path} do not exist; record them "
                          f"with `kernel_check.py kernel {script} > {path}` (on a kernel "
                          "that serves as the oracle) or name a script that has them")
    return path


def _progress(items: list[Script], quiet: bool) -> list[Script]:
    """Show a progress bar on a terminal for long runs (rich), else nothing."""
    if quiet or not sys.stderr.isatty() or len(items) < 20:
        return items
    from rich.progress import track

    return list(track(items, description="replaying", transient=True))


def _families(text: str) -> tuple[str, ...]:
    """``--families``: comma-separated names from scriptgen.FAMILIES."""
    from ..envs.kernel.scriptgen import FAMILIES

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        what = f"unknown family {unknown[0]!r}" if unknown else "no family named"
        raise argparse.ArgumentTypeError(f"{what}; choose from {','.join(FAMILIES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``scripts/kernel_check.py``."""
    p = OneLineParser(prog=PROG,
                      description="Check the page-table model against the running Linux "
                                  "kernel.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    s = sub.add_parser("simulate", help="print the model's VmPTE delta (KiB) after each op")
    s.add_argument("script")
    s.add_argument("--no-pt-reclaim", action="store_true",
                   help="model a kernel before 6.14 (MADV_DONTNEED frees no table)")
    s.set_defaults(func=_cmd_simulate)
    k = sub.add_parser("kernel", help="replay on the running kernel and print its deltas")
    k.add_argument("script")
    k.set_defaults(func=_cmd_kernel)
    c = sub.add_parser("compare", help="replay on both and diff op by op")
    c.add_argument("scripts", nargs="*")
    c.add_argument("--generated", type=int, default=0, metavar="N",
                   help=f"also compare N scripts from the seeded generator (0-{MAX_GENERATED})")
    c.add_argument("--seed", type=int, default=0,
                   help="generator seed, an integer >= 0 (default 0)")
    c.add_argument("--families", type=_families, default=None, metavar="A,B",
                   help="generate only these families (default: all; see scriptgen.FAMILIES)")
    c.add_argument("--thp", action="store_true",
                   help="make every generated script a THP one (# ptoracle-opts: -t), "
                        "with the THP ops of its family and shmem collapse-then-refault")
    c.add_argument("-q", "--quiet", action="store_true", help="print only mismatches")
    c.set_defaults(func=_cmd_compare)
    e = sub.add_parser("expected", help="compare the model with recorded .expected files")
    e.add_argument("scripts", nargs="+")
    e.add_argument("-q", "--quiet", action="store_true")
    e.set_defaults(func=_cmd_expected)
    return p


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.cmd == "compare":  # before the kernel is asked anything
        check_range("--generated", args.generated, 0, MAX_GENERATED)
        check_range("--seed", args.seed, 0, MAX_SEED)
    try:
        return int(args.func(args))
    except (OpScriptError, OracleUnavailable, OracleError) as exc:
        kind = "kernel cannot serve as the oracle" if isinstance(exc, OracleUnavailable) else ""
        raise ConfigError(f"{kind + ': ' if kind else ''}{exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input or no kernel)."""
    return run_cli(PROG, build_parser(), _run, argv)
