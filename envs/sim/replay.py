"""Replay an op script on the page-table model.

The output matches the kernel oracle's: one VmPTE delta in KiB per op (for
``fork``, the child's), plus the failure of each op, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .opscript import BACKING_SIZE, SLOT_SIZE, Op, Script, slot_address
from .pagetable import PAGE_SHIFT, AddressSpace, BackingFile

_OP_ERROR_NAMES = {"madvise", "mmap", "munmap", "mprotect", "mremap", "mlock", "munlock",
                   "punch", "truncate", "touch"}


@dataclass(frozen=True)
class OpOutcome:
    """What one op did: the VmPTE delta (KiB), and its failure or None."""

    delta_kib: int
    failed: str | None = None
    maps: tuple[str, ...] = ()


class ScriptMachine:
    """One process replaying ops, with the oracle's backing-file conventions:
    a ``file`` and a ``shmem`` object per ID (``fd=ID2`` shares ID2's), and
    ``punch``/``truncate`` act on the object of the ID's latest file mapping."""

    #: The model it replays on: the reference's classes (the compiled core's in
    #: :class:`~ptreclaim.envs.sim.fast.check.FastScriptMachine`).
    address_space: ClassVar[Any] = AddressSpace
    backing_file: ClassVar[Any] = BackingFile

    def __init__(self, *, thp: bool = False, pt_reclaim: bool = True) -> None:
        self.mm: AddressSpace = self.address_space(pt_reclaim=pt_reclaim,
                                                   thp_disabled=not thp)
        self.files: dict[tuple[int, str], BackingFile] = {}
        self.last_file: dict[int, BackingFile] = {}
        self.baseline = self.mm.vm_pte_kib

    def _backing(self, ident: int, kind: str) -> BackingFile:
        key = (ident, kind)
        f = self.files.get(key)
        if f is None:
            f = self.files[key] = self.backing_file(kind, BACKING_SIZE)
        return f

    def apply(self, op: Op) -> OpOutcome:
        """Apply one op; return its outcome."""
        err = self._apply(op)
        maps: tuple[str, ...] = ()
        if op.name == "fork":
            child = self.mm.fork()
            delta = child.vm_pte_kib
            child.exit()
        else:
            delta = self.mm.vm_pte_kib - self.baseline
            if op.name == "maps":
                maps = self.maps()
        return OpOutcome(delta, f"{op.name}: {err}" if err else None, maps)

    def maps(self) -> tuple[str, ...]:
        """The script-slot VMAs as ``ID START_KIB END_KIB PERMS`` lines."""
        out = []
        for v in self.mm.vmas:
            ident = (v.start - slot_address(0)) // SLOT_SIZE
            base = slot_address(ident)
            out.append(f"{ident} {(v.start - base) >> 10} {(v.end - base) >> 10} {v.perms()}")
        return tuple(out)

    def _apply(self, op: Op) -> str | None:
        mm = self.mm
        n = op.name
        addr = slot_address(op.ident) + op.off
        if n == "mmap":
            kind = op.kind
            shared = op.share == "shared"
            file = None
            if kind != "anon":
                file = self._backing(op.fd if op.fd is not None else op.ident, kind)
                self.last_file[op.ident] = file
            prot = 1 if "ro" in op.flags else 3
            err = mm.mmap(addr, op.length, kind=kind, shared=shared, prot=prot, file=file,
                          foff=op.foff, noreserve="norsv" in op.flags, fixed="fixed" in op.flags,
                          populate="populate" in op.flags)
            if err:
                return err
            for advice in ("hugepage", "nohugepage"):
                if advice in op.flags:
                    err = mm.madvise(addr, op.length, advice.upper())
                    if err:
                        return err
            return None
        if n == "touch":
            return mm.touch(addr, op.length, op.write, op.stride)
        if n == "madvise":
            return mm.madvise(addr, op.length, op.advice)
        if n == "munmap":
            return mm.munmap(addr, op.length)
        if n == "mprotect":
            return mm.mprotect(addr, op.length, op.prot)
        if n == "mlock":
            return mm.mlock(addr, op.length)
        if n == "munlock":
            return mm.munlock(addr, op.length)
        if n == "mremap":
            dst = None if op.dst_ident is None else slot_address(op.dst_ident) + op.dst_off
            return mm.mremap(addr, op.length, op.new_length, dst, op.dontunmap)
        if n in ("punch", "truncate"):
            f = self.last_file.get(op.ident)
            if f is None:
                return "EBADF"
            if n == "punch":
                if op.off % 1 or op.length == 0:
                    return None
                mm.punch(f, op.off, op.length)
            else:
                mm.truncate(f, op.value)
            return None
        if n == "thp":
            mm.thp_disabled = not op.value
            return None
        return None  # fork (handled by apply), sleep, stat, nop, maps


def replay(script: Script, *, pt_reclaim: bool = True, check: bool = False) -> list[OpOutcome]:
    """Replay ``script`` on a fresh model process; one outcome per op.

    With ``check``, the model's invariants are asserted after every op.
    """
    machine = ScriptMachine(thp=script.thp, pt_reclaim=pt_reclaim)
    out = []
    for op in script.ops:
        out.append(machine.apply(op))
        if check:
            machine.mm.check_invariants()
    return out


__all__ = ["BACKING_SIZE", "PAGE_SHIFT", "OpOutcome", "ScriptMachine", "replay"]
