"""A trace compiled once into a fixed program of model operations, and the player
that runs such a program on an address space (what every replay in a simulation does)."""

from __future__ import annotations

from ...pagetable import AddressSpace
from ...trace import Trace
from .ops import Op, _apply, _Files
from .replayer import TraceReplayer


class _ScratchSpace(AddressSpace):
    """The address space a trace is compiled on.  It belongs to no process, so
    its accesses are no process's: the methods are bound here, and code that
    instruments :class:`AddressSpace` afterwards (a test recording every
    access of every process) does not see the compilation."""

    touch = AddressSpace.touch
    madvise = AddressSpace.madvise
    reclaim_table = AddressSpace.reclaim_table


def compile_trace(trace: Trace) -> list[list[Op]]:
    """The model operations that replay ``trace``, per sample (cached).

    What a replay does depends on the trace and the VMAs alone, never on
    which tables exist (see :meth:`TraceReplayer._sync`), so one replay on a
    scratch address space yields a program that every replay of the trace
    (in any simulation, under any reclaim) runs as is.
    """
    program: list[list[Op]] | None = trace.derived.get("replay_program")
    if program is None:
        r = TraceReplayer(trace, _ScratchSpace(), record=True)
        r.advance_to(trace.samples - 1)
        assert r.program is not None
        program = trace.derived["replay_program"] = r.program
    return program


class TracePlayer:
    """Runs a compiled trace program on one address space, sample by sample."""

    def __init__(self, program: list[list[Op]], mm: AddressSpace) -> None:
        self.program = program
        self.mm = mm
        self.files = _Files()
        self.sample = -1

    def advance_to(self, sample: int) -> None:
        """Apply every sample up to and including ``sample``."""
        last = min(sample, len(self.program) - 1)
        while self.sample < last:
            self.sample += 1
            for name, args in self.program[self.sample]:
                _apply(self.mm, self.files, name, args)
