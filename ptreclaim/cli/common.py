"""What every command line shares: the parser, the way errors and interrupts
end a command, the progress bar and the checks of output paths.

The project's rule for bad input: one line on stderr naming the problem and
the fix, ``<tool>: error: <what>; <how to fix>``, exit status 2, never a
traceback, nothing written before is lost.  :class:`OneLineParser` applies it
to usage errors, :func:`run_cli` to
:class:`~ptreclaim.envs.sim.config.ConfigError` raised anywhere below; both
keep the line one line of at most :data:`MAX_LINE` characters whatever the
message holds.  A SIGINT or SIGTERM ends a command with one line (what was
interrupted, what was kept, how to resume) and exit status 130 or 143
(:mod:`ptreclaim.agents.interrupts`).

Outputs are checked before any work starts: :func:`check_writable` for a
file, :func:`claim_out_dir` for an output folder, which it also claims for
this process (a second process writing there is refused) and which is never a
training run's folder, ``--force`` or not.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from ..agents.interrupts import Interrupted, stop_signals
from ..agents.runs import FolderClaim, claim_folder, is_training_folder
from ..configs import CONFIG_DIR
from ..envs.sim.config import QUOTE_CHARS, ConfigError, quote

__all__ = [
    "OneLineParser",
    "add_model_flags",
    "add_output_flags",
    "check_out_dir",
    "check_writable",
    "claim_out_dir",
    "command_text",
    "display_path",
    "one_line",
    "progress_bar",
    "run_cli",
]


#: The longest error line a command prints: a longer message (a library's,
#: quoting a huge value) is cut in the middle, keeping the fix at its end.
MAX_LINE = 400


def one_line(text: str) -> str:
    """``text`` as one line of at most :data:`MAX_LINE` characters."""
    flat = re.sub(r"\s*[\r\n]+\s*", " ", text.strip())
    if len(flat) <= MAX_LINE:
        return flat
    return f"{flat[:MAX_LINE - 130]} [...] {flat[-120:]}"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit status 2), not
    the usage dump: ``<tool>: error: <what>; see --help``, ``<tool>`` being
    the program name (of the main parser, for a subcommand's)."""

    @property
    def tool(self) -> str:
        """The program name errors start with (``capture_trace.py``, not
        ``capture_trace.py record``)."""
        return self.prog.split()[0]

    def error(self, message: str) -> NoReturn:
        # argparse quotes a bad value whole ("invalid int value: '999...'").
        message = _QUOTED.sub(lambda m: quote(m.group(1)), message)
        self.exit(2, one_line(f"{self.tool}: error: {message}; see --help") + "\n")


_QUOTED = re.compile(rf"'([^']{{{QUOTE_CHARS},}})'")


def add_model_flags(parser: argparse.ArgumentParser, *, best: bool = True) -> None:
    """``--best`` (run folders: the best model, not the final one) and
    ``--trust-model``: the flags of every command that loads trained models."""
    if best:
        parser.add_argument("--best", action="store_true",
                            help="run folders: use best_model.zip (with best_vecnormalize.pkl)")
    parser.add_argument("--trust-model", action="store_true",
                        help="load model and statistics files this machine's ptreclaim did not "
                             "write (they hold pickles, which can run code when loaded; see "
                             "docs/trust.md)")


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

    Bad input (:class:`ConfigError`) is one line on stderr,
    ``<prog>: error: <message>``, and exit status 2; SIGINT or SIGTERM is one
    line (:meth:`Interrupted.line`) and 130 or 143; a closed pipe is quiet;
    never a traceback for these.  With ``signals`` false the handler installs
    its own signal handling (training stops at the next step instead of where
    the signal lands).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    guard: contextlib.AbstractContextManager[None] = (
        stop_signals("raise") if signals else contextlib.nullcontext())
    try:
        with guard:
            return handler(args, args_list)
    except ConfigError as exc:
        print(one_line(f"{prog}: error: {exc}"), file=sys.stderr)
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
    """Progress of long work on stderr.

    Yields ``update(completed)``, or None when ``show`` is false (``--quiet``):
    callers pass it on as an optional callback.  On a terminal a transient rich
    bar; otherwise (a log file, CI, ``nohup``) one plain line each time another
    tenth of ``total`` is done, so a long run in a log still says how far it is.
    """
    if not show:
        yield None
        return
    if not sys.stderr.isatty():
        yield _progress_lines(description, total)
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


def _progress_lines(description: str, total: int) -> Callable[[int], None]:
    """``update(completed)`` printing ``description: done/total (p %), s`` on stderr
    at every tenth of ``total`` (each tenth once, however the updates arrive)."""
    start, shown = time.monotonic(), [0]

    def update(completed: int) -> None:
        tenth = completed * 10 // max(1, total)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{description}: {completed}/{total} ({100 * completed // max(1, total)} %),"
                  f" {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    return update


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Create and remove a file in ``folder``: the one sure test that it can
    be written (permissions, a read-only mount, a full disk of inodes)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ptreclaim-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"{flag} {target}: cannot write in {folder} ({exc.strerror or exc}); "
                          f"choose another {flag}") from None


def check_writable(path: str | os.PathLike[str], flag: str, *, force: bool = True,
                   folder: bool = False) -> None:
    """Check, before any work starts, that the output ``path`` (a file, or a
    folder with ``folder``) can be written, and create nothing: it must not
    be a folder (a file, with ``folder``), nor an existing file unless
    ``force``, and the nearest folder that exists on its way must take a new
    file.  :class:`ConfigError` naming ``flag`` otherwise."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ConfigError(f"{flag} {p}: exists and is not a folder; choose another {flag}")
        if not folder and p.is_dir():
            raise ConfigError(f"{flag} {p}: is a folder; name a file")
        if not folder and not force:
            raise ConfigError(f"{flag} {p}: exists; pass --force to overwrite it or choose "
                              f"another {flag}")
    base = p if folder and p.is_dir() else _nearest_existing(p if folder else p.parent)
    if not base.is_dir():
        raise ConfigError(f"{flag} {p}: {base} is not a folder; choose another {flag}")
    _probe(base, flag, p)


def check_out_dir(out: Path, files: Sequence[str], force: bool, *, flag: str = "--out",
                  training_ok: bool = False) -> None:
    """Refuse an output folder that is a file, that cannot be written, that
    is a training run's folder (unless ``training_ok``: export writes its
    files next to the model), or that already holds one of ``files`` unless
    ``force``: a command never overwrites earlier results by surprise.
    Creates nothing."""
    if not training_ok and is_training_folder(out):
        raise ConfigError(f"{flag} {out}: a training run's folder; other commands never write "
                          f"into one, not even with --force; choose another {flag}")
    check_writable(out, flag, folder=True)
    if force:
        return
    existing = [n for n in files if (out / n).exists()]
    if existing:
        raise ConfigError(f"{flag} {out}: {existing[0]} already exists; pass --force to "
                          f"overwrite or choose another {flag}")


@contextlib.contextmanager
def claim_out_dir(out: Path, files: Sequence[str], force: bool, *, flag: str = "--out",
                  training_ok: bool = False) -> Iterator[FolderClaim]:
    """Check the output folder (:func:`check_out_dir`), create it and claim
    it for this process while the ``with`` block runs: a second process
    claiming the same folder is refused at once, and the check of ``files``
    is made again under the claim, so two commands started together never
    both write there.  A folder this call created is removed again if the
    block leaves it empty (bad input found late, an interrupt)."""
    check_out_dir(out, files, force, flag=flag, training_ok=training_ok)
    missing: list[Path] = []
    p = out.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {out}: cannot create the folder ({exc.strerror or exc}); "
                          f"choose another {flag}") from None
    try:
        with claim_folder(out, "another process is writing there now; wait for it to end "
                               f"or choose another {flag}") as claim:
            check_out_dir(out, files, force, flag=flag, training_ok=training_ok)
            yield claim
    finally:
        for d in missing:  # deepest first; stops at the first that is not empty
            try:
                os.rmdir(d)
            except OSError:
                break


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
