"""Stopping cleanly on SIGINT and SIGTERM: one mechanism for every command.

An operator stops a job with Ctrl-C (SIGINT to the terminal's process group)
or with ``kill``, systemd or a scheduler (SIGTERM, often to the main process
only).  Either way a command must stop handing out work, stop its workers,
keep what is finished, print one line saying what was interrupted, what was
kept and how to resume, and exit with ``128 + signal`` (130 or 143).

:func:`stop_signals` installs the handler in the main process for the
duration of a command (:func:`ptreclaim.cli.common.run_cli` does it).  In
``raise`` mode the first signal raises :class:`Interrupted` (a
:class:`KeyboardInterrupt`, so ``except Exception`` never swallows it) where
the main thread is; :func:`deferred` holds it back across a section that must
not be cut (a library's bookkeeping, a set of files that belong together) and
:func:`immediate` lets it through again inside such a section.  In ``flag``
mode (training, which stops at the next step and saves a checkpoint) a signal
only sets :func:`stop_requested`; a second one exits at once.

Worker processes (:mod:`ptreclaim.agents.rollout`) never see these handlers:
they ignore SIGINT, leave SIGTERM fatal unless their task asks otherwise, and
ask the kernel for SIGTERM when their parent dies (:func:`die_with_parent`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Literal

#: ``prctl`` option: the signal a process gets when its parent exits (linux/prctl.h).
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command.

    Code that stops on it fills in :meth:`explain`: what was interrupted,
    what was kept and how to resume; :meth:`line` is the one line the
    command prints, :attr:`exit_status` its exit status.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum
        self.what = "the command"
        self.kept = "nothing"
        self.resume = "run the same command again"

    @property
    def exit_status(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum

    def explain(self, *, what: str | None = None, kept: str | None = None,
                resume: str | None = None) -> Interrupted:
        """Say what was interrupted, what was kept and how to resume (returns self)."""
        self.what = what or self.what
        self.kept = kept or self.kept
        self.resume = resume or self.resume
        return self

    def line(self) -> str:
        """``SIGTERM stopped <what>; kept <kept>; resume with: <resume>``."""
        return (f"{signal_name(self.signum)} stopped {self.what}; kept {self.kept}; "
                f"resume with: {self.resume}")


class _State:
    """The handler's state (signals are process-wide, so is this)."""

    def __init__(self) -> None:
        self.mode: Literal["raise", "flag"] | None = None
        self.reset()

    def reset(self) -> None:
        self.signum = 0  # the first signal received (0: none)
        self.count = 0
        self.raised = False
        self.deferred = 0  # nesting depth of deferred() minus immediate()


_STATE = _State()


def _handle(signum: int, frame: Any) -> None:
    st = _STATE
    st.count += 1
    if not st.signum:
        st.signum = signum
    if st.mode == "flag":
        if st.count > 1:
            # os.write: print is not reentrant if the signal lands inside one.
            os.write(2, b"\nsecond interrupt: exiting now (the last checkpoint stays)\n")
            os._exit(128 + signum)
        return
    if not st.raised and st.deferred <= 0:
        st.raised = True
        raise Interrupted(st.signum)


@contextlib.contextmanager
def stop_signals(mode: Literal["raise", "flag"] = "raise",
                 signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Handle ``signals`` (SIGINT and SIGTERM) in this (main) process for the block.

    ``raise``: the first signal raises :class:`Interrupted` (once; later ones
    only count).  ``flag``: signals set :func:`stop_requested`; the second
    one exits the process at once.  A worker passes ``signals=(SIGTERM,)``
    and leaves SIGINT ignored (its parent decides).  Outside the main thread,
    or nested in an active block, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or _STATE.mode is not None:
        yield
        return
    old = {s: signal.getsignal(s) for s in signals}
    _STATE.reset()
    _STATE.mode = mode
    for s in signals:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _STATE.mode = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal back inside the block (``raise`` mode): it is raised by
    the next :func:`immediate` or :func:`check`, not where it lands."""
    _STATE.deferred += 1
    try:
        yield
    finally:
        _STATE.deferred -= 1


@contextlib.contextmanager
def immediate() -> Iterator[None]:
    """Inside a :func:`deferred` block, let signals raise again; a signal
    held back so far is raised on entry."""
    _STATE.deferred -= 1
    try:
        check()
        yield
    finally:
        _STATE.deferred += 1


def check() -> None:
    """Raise :class:`Interrupted` now if a signal was held back (``raise`` mode)."""
    st = _STATE
    if st.mode == "raise" and st.signum and not st.raised and st.deferred <= 0:
        st.raised = True
        raise Interrupted(st.signum)


def stop_requested() -> int:
    """The first SIGINT/SIGTERM received under :func:`stop_signals` (0: none)."""
    return _STATE.signum


def request_stop(signum: int) -> None:
    """Act as if ``signum`` had arrived (``flag`` mode: the test hook of training)."""
    if not _STATE.signum:
        _STATE.signum = signum


def signals_received() -> int:
    """How many stop signals arrived (a second one asks to hurry)."""
    return _STATE.count


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``signum`` to this process when its parent exits
    (``prctl(PR_SET_PDEATHSIG)``), so that no worker outlives the command
    that started it, even one killed with SIGKILL.  If the parent
    ``parent_pid`` is already gone (it died before this ran) the signal is
    sent now.  Elsewhere than Linux this does nothing: workers then exit when
    their task pipe closes.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
