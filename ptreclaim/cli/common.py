"""What every command line shares: the parser, the way errors and interrupts
end a command, the progress bar and the checks of output paths.

The project's rule for bad input: one line on stderr naming the problem and
the fix, exit status 2, never a traceback, nothing written before is lost.
:class:`OneLineParser` applies it to usage errors, :func:`run_cli` to
:class:`~ptreclaim.envs.sim.config.ConfigError` raised anywhere below.  A
SIGINT or SIGTERM ends a command with one line (what was interrupted, what
was kept, how to resume) and exit status 130 or 143
(:mod:`ptreclaim.agents.interrupts`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..agents.interrupts import Interrupted, stop_signals
from ..configs import CONFIG_DIR
from ..envs.sim.config import ConfigError

__all__ = [
    "OneLineParser",
    "add_model_flags",
    "add_output_flags",
    "check_out_dir",
    "command_text",
    "display_path",
    "progress_bar",
    "run_cli",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), not
    the usage dump.

    Every error of the command (usage and bad input, see :func:`run_cli`)
    starts with ``error_prefix`` (default: the program name).
    """

    def __init__(self, *args: Any, error_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix or self.prog

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.error_prefix}: {message}; see --help\n")


def add_model_flags(parser: argparse.ArgumentParser, *, best: bool = True) -> None:
    """``--best`` (run folders: the best model, not the final one) and
    ``--trust-model``: the flags of every command that loads trained models."""
    if best:
        parser.add_argument("--best", action="store_true",
                            help="run folders: use best_model.zip (with best_vecnormalize.pkl)")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow models from outside runs/ (model zips hold pickles, which "
                             "can run code when loaded)")


def add_output_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """``--out`` (default: a new folder under ``default``), ``--force`` and
    ``-q``: the flags of every command that writes a report folder."""
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"output folder (default: a new folder under {default})")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no tables on stdout (files are still written)")


def run_cli(prog: str, parser: argparse.ArgumentParser,
            handler: Callable[[argparse.Namespace, list[str]], int],
            argv: Sequence[str] | None = None, *, signals: bool = True) -> int:
    """Run a command-line entry point the project's way.

    Bad input (:class:`ConfigError`) is one line on stderr and exit status 2;
    SIGINT or SIGTERM is one line (:meth:`Interrupted.line`) and 130 or 143;
    a closed pipe is quiet; never a traceback for these.  With ``signals``
    false the handler installs its own signal handling (training stops at the
    next step instead of where the signal lands).
    """
    prefix = getattr(parser, "error_prefix", prog)
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    guard: contextlib.AbstractContextManager[None] = (
        stop_signals("raise") if signals else contextlib.nullcontext())
    try:
        with guard:
            return handler(args, args_list)
    except ConfigError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{prog}: {exc.line()}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


@contextlib.contextmanager
def progress_bar(description: str, total: int, show: bool = True
                 ) -> Iterator[Callable[[int], None] | None]:
    """A transient rich progress bar on stderr for long work.

    Yields ``update(completed)``, or None when ``show`` is false (not a
    terminal, ``--quiet``): callers pass it on as an optional callback.
    """
    if not show:
        yield None
        return
    from rich.console import Console

    # Here, not at the top: the report module imports the env (and gymnasium),
    # which commands such as kernel_check.py and capture_trace.py never need.
    from ..agents.report import progress_display

    with progress_display("{task.description}", Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(completed: int) -> None:
            bar.update(task, completed=completed)

        yield update


def check_out_dir(out: Path, files: Sequence[str], force: bool, *,
                  writable: bool = False) -> None:
    """Refuse an ``--out`` that is a file, or that already holds one of
    ``files`` unless ``force``: a command never overwrites earlier results
    by surprise.  With ``writable`` the folder is created now and a probe
    file written and removed, so that hours of work are not lost at the end
    to a folder that cannot be written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder; choose another --out")
    if writable:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}); "
                              "choose another --out") from None
    if force:
        return
    existing = [n for n in files if (out / n).exists()]
    if existing:
        raise ConfigError(f"--out {out}: {existing[0]} already exists; pass --force to "
                          "overwrite or choose another --out")


def command_text(prog: str, argv: Sequence[str]) -> str:
    """``command.txt`` of an output folder: the command line, then the folder
    it ran in."""
    cmd = " ".join(shlex.quote(a) for a in [prog, *argv])
    return f"{cmd}\n# cwd: {os.getcwd()}\n"


def display_path(path: Path) -> str:
    """``path`` relative to the working folder or the shipped configs
    (``configs/...``), if under one; else as given."""
    for base, prefix in ((Path.cwd(), ""), (CONFIG_DIR, "configs/")):
        with contextlib.suppress(ValueError):
            return prefix + str(path.resolve().relative_to(base.resolve()))
    return str(path)
