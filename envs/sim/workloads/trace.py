"""Replay of captured page-table traces of real processes.

Source
------
Traces recorded on this machine with ``scripts/capture_trace.py record``
(:mod:`ptreclaim.envs.host.capture`; format in :mod:`ptreclaim.envs.sim.trace`):
the process's maps, its per-2 MiB-block page presence (``PAGEMAP_SCAN``)
and its memory syscalls (strace), on one clock.  The shipped ones live in
``data/traces/`` (installed as the ``ptreclaim.data`` package).

How a trace drives the model
----------------------------
1. The first sample's maps become the initial VMAs (as the kernel split
   them: every private anonymous VMA gets its own anon_vma so neighbours the
   kernel kept apart stay apart), and its present pages are faulted in.
2. For each later sample, in time order: the syscalls that completed since
   the previous sample are applied to the model as the kernel got them
   (mmap/munmap/madvise/mremap/brk/mprotect, with the kernel's return value
   for placement), so VMAs change and ``MADV_DONTNEED`` zaps and reclaims
   tables exactly by the model's rules; then the model's VMAs are reconciled
   with the sample's maps (stack growth and anything the syscall log lacks);
   then each block whose pages changed, or that a syscall zapped, is synced
   with the sample: pages that appeared in the trace (or that a modelled zap
   took while the kernel still shows them) are faulted in -- the first
   appearance of a page in a block faults its table -- and pages that left
   the trace without a modelled zap are dropped without freeing tables (as
   lazy-free reclaim or swap-out would).  What is faulted depends on the
   trace and the VMAs only, so :func:`compile_trace` turns a trace into a
   fixed list of model operations once, and every replay runs that list.
3. Allocators purge pages they dirtied: a ``MADV_DONTNEED`` that reaches a
   block with no table in the replay, and would not free that block's table
   (partial cover, or a VMA boundary inside: R6, R9), means the process wrote
   there after the last sample and the kernel kept the table; the replay
   writes the first purged page there before the call (counted as
   "purge-implied writes" in the fidelity report).
4. What the first sample cannot show -- tables emptied before capture began
   -- is the difference between the recorded and the modelled VmPTE at
   sample 0, carried as a constant ``baseline_tables``.

What sampling cannot see: pages faulted *and* dropped between two samples
(a table the kernel keeps that the model never allocated), and the order of
faults relative to syscalls within one interval.  The fidelity report
(:func:`replay`) names these per sample instead of hiding them.

The workload family ``trace`` replays one trace as one process, with
``speed`` (trace time per simulated time), ``offset_s`` (skip the start) and
``end`` (exit, stay idle, or loop with a fresh process), so several replays
compose into a scenario.  A replayed process that the OOM killer takes stays
dead; one throttled by a hard limit catches up when it runs again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..config import ConfigError, check_range
from ..opscript import ADVICES
from ..pagetable import (
    ENTRIES,
    PAGE,
    PAGE_SHIFT,
    PTE_SHIFT,
    PTE_SPAN,
    TASK_SIZE,
    VM_ACCOUNT,
    VM_PROT,
    VM_SHARED,
    VM_WRITE,
    AddressSpace,
    AnonVma,
    BackingFile,
    Vma,
)
from ..trace import PERM_S, SYSCALLS, BlockState, MapsRow, Trace, TraceError, read_trace
from .base import Workload

__all__ = ["FidelityReport", "TraceConfig", "TracePlayer", "TraceReplayer", "TraceWorkload",
           "compile_trace", "replay", "resolve_trace", "shipped_traces"]

# Linux mmap/mremap flag and madvise advice numbers (uapi mman-common.h).
MAP_SHARED = 0x01
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MREMAP_DONTUNMAP = 4
_ADVICE_NUMBERS = {
    0: "NORMAL", 1: "RANDOM", 2: "SEQUENTIAL", 3: "WILLNEED", 4: "DONTNEED", 8: "FREE",
    9: "REMOVE", 10: "DONTFORK", 11: "DOFORK", 14: "HUGEPAGE", 15: "NOHUGEPAGE",
    18: "WIPEONFORK", 19: "KEEPONFORK", 20: "COLD", 21: "PAGEOUT", 22: "POPULATE_READ",
    23: "POPULATE_WRITE", 24: "DONTNEED_LOCKED", 25: "COLLAPSE", 102: "GUARD_INSTALL",
    103: "GUARD_REMOVE",
}
assert set(_ADVICE_NUMBERS.values()) <= set(ADVICES)
#: Advice that zaps pages (their blocks must be re-synced with the trace).
_ZAPPING = frozenset({"DONTNEED", "DONTNEED_LOCKED", "REMOVE", "PAGEOUT"})
#: A stand-in size for files of file mappings: the trace does not know their
#: sizes, and a mapping past EOF would fault SIGBUS in the model.
_FILE_SIZE = 1 << 46

_TRACE_CACHE: dict[str, Trace] = {}


def shipped_traces() -> list[str]:
    """Names of the traces shipped in ``ptreclaim.data/traces``."""
    try:
        root = resources.files("ptreclaim.data").joinpath("traces")
        return sorted(p.name[:-4] for p in root.iterdir() if p.name.endswith(".npz"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []


def resolve_trace(name: str) -> Trace:
    """Load a trace by shipped name (``redis_jemalloc``) or by path (cached:
    traces are read-only once loaded)."""
    cached = _TRACE_CACHE.get(name)
    if cached is not None:
        return cached
    if name.endswith(".npz") or "/" in name:
        trace = read_trace(name)
    else:
        if name not in shipped_traces():
            known = ", ".join(shipped_traces()) or "none installed"
            raise TraceError(f"trace {name!r} is not a shipped trace (known: {known}); "
                             "give a shipped name or a path to a .npz trace")
        root = resources.files("ptreclaim.data").joinpath("traces").joinpath(f"{name}.npz")
        with resources.as_file(root) as path:
            trace = read_trace(Path(path))
    _TRACE_CACHE[name] = trace
    return trace


# ------------------------------------------------------------------ replayer


class _Files:
    """Backing files of one replayed process, by key (a path)."""

    def __init__(self) -> None:
        self.by_key: dict[str, BackingFile] = {}
        self.keys: dict[int, str] = {}  # id(BackingFile) -> key

    def get(self, key: str) -> BackingFile:
        f = self.by_key.get(key)
        if f is None:
            kind = "shmem" if key.startswith(("/memfd:", "/dev/shm/", "/SYSV")) else "file"
            f = self.by_key[key] = BackingFile(kind, _FILE_SIZE)
            self.keys[id(f)] = key
        return f

    def key_of(self, v: Vma) -> str | None:
        if v.file is None:
            return None
        if v.file.anon:
            return "shm-anon"
        return self.keys.get(id(v.file), "?")


#: One model operation of a replay: a name and plain-data arguments (files by key).
Op = tuple[str, tuple[Any, ...]]


def _apply(mm: AddressSpace, files: _Files, name: str, args: tuple[Any, ...]) -> str | None:
    """Apply one replay operation to ``mm`` (see :func:`compile_trace`)."""
    if name == "touch":
        return mm.touch(*args)
    if name == "madvise":
        return mm.madvise(*args)
    if name == "munmap":
        return mm.munmap(*args)
    if name == "mprotect":
        return mm.mprotect(*args)
    if name == "mremap":
        old, old_len, new_len, new_addr, dontunmap = args
        return mm.mremap(old, old_len, new_len, new_addr, dontunmap)
    if name == "mmap":
        addr, length, key, shared, prot, foff, noreserve, fixed, populate = args
        file = files.get(key) if key is not None else None
        return mm.mmap(addr, length, kind="anon" if file is None else file.kind, shared=shared,
                       prot=prot, file=file, foff=foff, noreserve=noreserve, fixed=fixed,
                       populate=populate)
    if name == "install":  # a VMA exactly as the kernel has it (no merging)
        start, end, flags, pgoff, key, anon_vma = args
        if key == "shm-anon":
            file = BackingFile("shmem", end - start, anon=True)
        else:
            file = files.get(key) if key is not None else None
        if file is not None:
            file.mappers.add(mm)
        mm.vmas.append(Vma(start, end, flags, pgoff, file, AnonVma() if anon_vma else None))
        return None
    raise ValueError(f"unknown replay operation {name!r}")


def _key_of_row(row: MapsRow) -> str | None:
    """Backing identity of a maps row: None (private anon), "shm-anon" or a path."""
    if row.inode == 0:
        return "shm-anon" if row.shared else None
    return row.path


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs of True in a boolean array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


class TraceReplayer:
    """Drives one :class:`AddressSpace` with a trace, sample by sample."""

    def __init__(self, trace: Trace, mm: AddressSpace, record: bool = False,
                 purge_implies_touch: bool = True) -> None:
        self.trace = trace
        self.mm = mm
        self.files = _Files()
        #: With ``record=True``: the model operations of each sample, in order.
        self.program: list[list[Op]] | None = None
        self.target: dict[int, BlockState] = {}
        self.sample = -1
        self.snapshot = -1
        self.brk: int | None = None
        #: Pages present in the trace that the model had no VMA for.
        self.unplaced = 0
        #: Syscalls the model refused (an errno) although the kernel accepted them.
        self.refused = 0
        self._sorted_keys: list[int] | None = None
        #: Per block, the pages the current step's syscalls zapped in the model.
        self._zaps: dict[int, np.ndarray] = {}
        #: Per block, trace pages that could not be faulted yet (no VMA): retried.
        self.pending: dict[int, np.ndarray] = {}
        if record:
            self.program = [[] for _ in range(trace.samples)]
        self._now = 0  # the sample whose operations are being emitted
        #: See :meth:`_touch_before_purge`; ``implied`` counts those writes.
        self.purge_implies_touch = purge_implies_touch
        self.implied = 0

    def _do(self, name: str, *args: object) -> str | None:
        if self.program is not None:
            self.program[self._now].append((name, args))
        return _apply(self.mm, self.files, name, args)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Build the first sample's VMAs and fault in its pages."""
        self.snapshot = 0
        for row in self.trace.maps(0):
            if row.end > TASK_SIZE:
                continue  # [vsyscall] lies outside the user address space
            self._install(row)
            if row.path == "[heap]":
                self.brk = row.end
        self.sample = 0
        for block, st in self.trace.changes(0):
            self._set_target(block, st)
        for block in sorted(self.target):
            self._sync(block, None, None)

    def _install(self, row: MapsRow) -> None:
        """Insert a VMA exactly as the kernel has it (no merging): every private
        VMA gets its own anon_vma, so the model keeps apart what the kernel did."""
        key = _key_of_row(row)
        flags = row.perms & VM_PROT
        if row.shared:
            flags |= VM_SHARED
        if key is None and flags & VM_WRITE and not flags & VM_SHARED:
            flags |= VM_ACCOUNT
        pgoff = (row.offset if key is not None else row.start) >> PAGE_SHIFT
        self._do("install", row.start, row.end, flags, pgoff, key, not row.shared)

    def advance_to(self, sample: int) -> None:
        """Apply every sample up to and including ``sample``."""
        last = min(sample, self.trace.samples - 1)
        if self.sample < 0:
            self.start()
        while self.sample < last:
            self._step(self.sample + 1)

    # -- one sample ------------------------------------------------------

    def _step(self, k: int) -> None:
        tr = self.trace
        t = tr.t_ms
        self._now = k
        self._zaps = {}
        for i in tr.syscalls_between(float(t[k - 1]), float(t[k])):
            self._syscall(i)
        snap = tr.maps_index(k)
        if snap != self.snapshot:
            self.snapshot = snap
            self._reconcile(tr.maps(snap))
        old: dict[int, BlockState | None] = {}
        for block, st in tr.changes(k):
            old[block] = self.target.get(block)
            self._set_target(block, st)
        dirty = set(old) | set(self._zaps) | set(self.pending)
        for block in sorted(dirty):
            self._sync(block, old[block] if block in old else self.target.get(block),
                       self._zaps.get(block))
        self.sample = k

    def _set_target(self, block: int, st: BlockState) -> None:
        if st.present or st.swapped:
            if block not in self.target:
                self._sorted_keys = None
            self.target[block] = st
        elif self.target.pop(block, None) is not None:
            self._sorted_keys = None

    def _zapped(self, start: int, end: int) -> None:
        """Note that the model zapped [start, end): pages the trace still shows
        there were faulted again by the process (or never left)."""
        lo, hi = start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        if hi - lo < 4096:
            blocks = [b for b in range(lo, hi + 1) if b in self.target]
        else:
            if self._sorted_keys is None:
                self._sorted_keys = sorted(self.target)
            keys = self._sorted_keys
            i = int(np.searchsorted(keys, lo))
            j = int(np.searchsorted(keys, hi, side="right"))
            blocks = keys[i:j]
        for b in blocks:
            mask = self._zaps.get(b)
            if mask is None:
                mask = self._zaps[b] = np.zeros(ENTRIES, dtype=bool)
            base = b << PTE_SHIFT
            i0 = (max(start, base) - base) >> PAGE_SHIFT
            i1 = (min(end, base + PTE_SPAN) - base + PAGE - 1) >> PAGE_SHIFT
            mask[i0:i1] = True

    def _syscall(self, i: int) -> None:
        tr = self.trace
        ret = int(tr["sys_ret"][i])
        if ret < 0 and ret > -4096:
            return  # failed in the kernel: no effect we model
        op = SYSCALLS[int(tr["sys_op"][i])]
        a = [int(x) for x in tr["sys_args"][i]]
        err: str | None = None
        if op == "mmap":
            length = a[1]
            anon = bool(a[3] & MAP_ANONYMOUS) or a[4] < 0
            key = None if anon else (tr.syscall_path(i) or f"fd:{a[4]}")
            self._zapped(ret, ret + max(length, 1))
            err = self._do("mmap", ret, length, key, bool(a[3] & MAP_SHARED), a[2] & VM_PROT,
                           a[5] if not anon else 0, bool(a[3] & MAP_NORESERVE), True,
                           bool(a[3] & MAP_POPULATE))
        elif op == "munmap":
            self._zapped(a[0], a[0] + max(a[1], 1))
            err = self._do("munmap", a[0], a[1])
        elif op == "madvise":
            advice = _ADVICE_NUMBERS.get(a[2])
            if advice is None:
                return  # MERGEABLE, DONTDUMP...: no page-table effect in the model
            if advice in _ZAPPING:
                self._zapped(a[0], a[0] + max(a[1], 1))
            if advice in ("DONTNEED", "DONTNEED_LOCKED") and self.purge_implies_touch:
                self._touch_before_purge(a[0], a[0] + a[1])
            err = self._do("madvise", a[0], a[1], advice)
        elif op == "mprotect":
            err = self._do("mprotect", a[0], a[1], a[2] & VM_PROT)
        elif op == "mremap":
            old, old_len, new_len = a[0], a[1], a[2]
            self._zapped(old, old + max(old_len, 1))
            self._zapped(ret, ret + max(new_len, 1))
            err = self._do("mremap", old, old_len, new_len, None if ret == old else ret,
                           bool(a[3] & MREMAP_DONTUNMAP) and ret != old)
        elif op == "brk":
            err = self._brk(ret)
        if err:
            self.refused += 1

    def _touch_before_purge(self, start: int, end: int) -> None:
        """An allocator purges pages it dirtied: where a ``DONTNEED`` reaches
        a 2 MiB block that has no table in the model and whose table the call
        would not free (it covers the block only partly, or a VMA boundary
        splits the block: R6, R9), the process wrote there after the last
        sample and the kernel keeps the table.  Write the first purged page of
        such blocks before the call.  Decided on the replay's own address
        space, so the result is part of the compiled program."""
        if end <= start:
            return
        mm = self.mm
        candidates = {start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT}
        for vma in mm.vmas_overlapping(start, end):
            for edge in (vma.start, vma.end):
                if start < edge < end and edge % PTE_SPAN:
                    candidates.add(edge >> PTE_SHIFT)
        for b in sorted(candidates):
            if b in mm.pte:
                continue
            base = b << PTE_SHIFT
            lo, hi = max(start, base), min(end, base + PTE_SPAN)
            whole = mm.find_vma(base)
            if lo == base and hi == base + PTE_SPAN and whole is not None and \
                    whole.end >= base + PTE_SPAN:
                continue  # one VMA, whole slot: the call frees the table anyway
            v = mm.find_vma(lo)
            if v is None or v.file is not None or v.flags & VM_SHARED or \
                    not v.flags & VM_WRITE:
                continue
            self._do("touch", lo, PAGE, True)
            self.implied += 1

    def _brk(self, new: int) -> str | None:
        old, self.brk = self.brk, new
        if old is None or new == old:
            return None
        lo, hi = (old + PAGE - 1) & ~(PAGE - 1), (new + PAGE - 1) & ~(PAGE - 1)
        if hi > lo:
            if self.mm.vmas_overlapping(lo, hi):
                return None  # a maps snapshot read during the call already had it
            # do_brk_flags: private anon rw that merges into [heap].
            return self._do("mmap", lo, hi - lo, None, False, 3, 0, False, False, False)
        if hi < lo:
            self._zapped(hi, lo)
            return self._do("munmap", hi, lo - hi)
        return None

    def _reconcile(self, rows: list[MapsRow]) -> None:
        """Make the model's mapped ranges, protections and backings equal the
        snapshot's (VMA boundaries inside equal ranges are left alone)."""
        want = [(r.start, r.end, r) for r in rows if r.end <= TASK_SIZE]
        have = [(v.start, v.end, v) for v in self.mm.vmas]
        cuts = sorted({x for s, e, _ in want for x in (s, e)} | {x for s, e, _ in have
                                                                 for x in (s, e)})
        actions: list[tuple[str, int, int, MapsRow | None]] = []
        wi = hi_ = 0
        for a, b in itertools.pairwise(cuts):
            while wi < len(want) and want[wi][1] <= a:
                wi += 1
            while hi_ < len(have) and have[hi_][1] <= a:
                hi_ += 1
            w = want[wi][2] if wi < len(want) and want[wi][0] <= a else None
            h = have[hi_][2] if hi_ < len(have) and have[hi_][0] <= a else None
            if w is None and h is None:
                continue
            if w is None:
                act = "unmap"
            elif h is None or _key_of_row(w) != self.files.key_of(h) or (
                    bool(w.perms & PERM_S) != bool(h.flags & VM_SHARED)):
                act = "map"
            elif (w.perms & VM_PROT) != (h.flags & VM_PROT):
                act = "protect"
            else:
                continue
            if actions and actions[-1][0] == act and actions[-1][2] == a and (
                    act == "unmap" or actions[-1][3] is w):
                actions[-1] = (act, actions[-1][1], b, w)
            else:
                actions.append((act, a, b, w))
        for act, a, b, w in actions:
            if act == "unmap":
                self._zapped(a, b)
                self._do("munmap", a, b - a)
            elif act == "protect":
                assert w is not None
                self._do("mprotect", a, b - a, w.perms & VM_PROT)
            else:
                assert w is not None
                self._zapped(a, b)
                key = _key_of_row(w)
                fkey = key if key not in (None, "shm-anon") else None
                self._do("mmap", a, b - a, fkey, w.shared, w.perms & VM_PROT,
                         (w.offset + (a - w.start)) if fkey is not None else 0, False, True,
                         False)

    # -- pages -------------------------------------------------------------

    def _sync(self, block: int, old: BlockState | None, zapped: np.ndarray | None) -> None:
        """Bring one block from its previous trace state ``old`` to the current
        one: fault the pages that appeared (or that the model zapped while the
        kernel shows them), drop the ones that left without a modelled zap.

        What is faulted depends on the trace alone, never on the model's
        current entries, so a reclaimer freeing tables behind the replay's
        back does not change what the replayed process accesses.
        """
        st = self.target.get(block)
        want = _bits(st)
        had = _bits(old)
        touch = want & ~had
        if zapped is not None:
            touch |= want & zapped
        pending = self.pending.pop(block, None)
        if pending is not None:
            touch |= pending & want
        base = block << PTE_SHIFT
        if st is not None:
            missed = np.zeros(ENTRIES, dtype=bool)
            for i, j in _runs(touch):
                self._fault(base + (i << PAGE_SHIFT), (j - i) << PAGE_SHIFT, st, missed, i)
            if missed.any():
                self.pending[block] = missed
        drop = had & ~want
        if zapped is not None:
            drop &= ~zapped
        for i, j in _runs(drop):
            a, n = base + (i << PAGE_SHIFT), (j - i) << PAGE_SHIFT
            if n == PTE_SPAN:  # a whole-slot DONTNEED would free the table: split it
                self._do("madvise", a, PTE_SPAN - PAGE, "DONTNEED")
                self._do("madvise", a + PTE_SPAN - PAGE, PAGE, "DONTNEED")
            else:
                self._do("madvise", a, n, "DONTNEED")

    def _fault(self, start: int, length: int, st: BlockState, missed: np.ndarray,
               first: int) -> None:
        """Fault [start, start+length) of one block (page ``first`` onwards);
        pages with no accessible VMA in the model go into ``missed``."""
        end = start + length
        pos = start
        while pos < end:
            v = self.mm.find_vma(pos)
            if v is None or not v.flags & VM_PROT:
                later = self.mm.vmas_overlapping(pos, end) if v is None else []
                stop = later[0].start if later else (end if v is None else min(v.end, end))
                i = first + ((pos - start) >> PAGE_SHIFT)
                missed[i:i + ((stop - pos) >> PAGE_SHIFT)] = True
                self.unplaced += (stop - pos) >> PAGE_SHIFT
                pos = stop
                continue
            piece = min(v.end, end) - pos
            if v.file is None:
                write = not (st.zero >= st.present > 0)  # only zero pages: read faults
            else:
                write = not v.flags & VM_SHARED and st.file == 0
            if not v.flags & VM_WRITE:
                write = False
            self._do("touch", pos, piece, write)
            pos += piece


def _bits(st: BlockState | None) -> np.ndarray:
    if st is None:
        return np.zeros(ENTRIES, dtype=bool)
    return np.unpackbits(np.frombuffer(st.bits, dtype=np.uint8)).astype(bool)


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


# ------------------------------------------------------------------ fidelity


@dataclass
class FidelityReport:
    """Model vs recorded VmPTE at every sample of a replayed trace.

    A sample reads ``VmPTE`` before and after its page walk; when the process
    changed its tables in between (``raced``), the kernel's value during the
    sample lies between the two.  ``error_tables`` compares the model with
    the value read before the walk; ``window_error_tables`` with the window
    [before, after] (0 inside it), which is what the fidelity goal judges.
    """

    t_ms: np.ndarray
    recorded_kib: np.ndarray  # VmPTE read before the page walk
    recorded_after_kib: np.ndarray  # VmPTE read after it
    model_kib: np.ndarray  # includes the constant baseline
    baseline_tables: int
    notes: dict[int, str] = field(default_factory=dict)
    unplaced_pages: int = 0
    refused_syscalls: int = 0
    purge_implied_writes: int = 0

    @property
    def samples(self) -> int:
        return int(self.t_ms.size)

    @property
    def raced(self) -> np.ndarray:
        return self.recorded_after_kib != self.recorded_kib

    @property
    def error_tables(self) -> np.ndarray:
        return (self.model_kib - self.recorded_kib) // 4

    @property
    def window_error_tables(self) -> np.ndarray:
        lo = np.minimum(self.recorded_kib, self.recorded_after_kib)
        hi = np.maximum(self.recorded_kib, self.recorded_after_kib)
        m = self.model_kib
        return (np.where(m < lo, m - lo, 0) + np.where(m > hi, m - hi, 0)) // 4

    @property
    def rel_error(self) -> np.ndarray:
        """Window error relative to the recorded VmPTE."""
        return 4 * self.window_error_tables / np.maximum(self.recorded_kib, 1)

    def within_goal(self, rel: float, tables: int) -> np.ndarray:
        """Samples whose window error is within ``rel`` of VmPTE and within
        ``tables`` tables, except that an error of at most ``tables`` tables
        passes when VmPTE is too small for ``rel`` to allow a whole table."""
        err = np.abs(self.window_error_tables)
        small = self.recorded_kib * rel < 4 * tables
        return (err <= tables) & ((np.abs(self.rel_error) <= rel) | small)

    def summary(self, rel: float, tables: int) -> dict[str, int | float | bool]:
        ok = self.within_goal(rel, tables)
        err = self.window_error_tables
        raw = self.error_tables
        return {
            "max_abs_tables": int(np.abs(err).max()) if err.size else 0,
            "max_rel": float(np.abs(self.rel_error).max()) if err.size else 0.0,
            "max_abs_tables_before": int(np.abs(raw).max()) if raw.size else 0,
            "final_tables": int(err[-1]) if err.size else 0,
            "raced_samples": int(self.raced.sum()),
            "within_goal": int(ok.sum()),
            "all_within_goal": bool(ok.all()),
        }


def replay(trace: Trace, purge_implies_touch: bool = True) -> FidelityReport:
    """Replay ``trace`` on a fresh address space; VmPTE at every sample."""
    mm = AddressSpace(pt_reclaim=True, thp_disabled=True)
    r = TraceReplayer(trace, mm, purge_implies_touch=purge_implies_touch)
    n = trace.samples
    model = np.zeros(n, dtype=np.int64)
    notes: dict[int, str] = {}
    r.start()
    model[0] = mm.vm_pte_kib
    rec = trace.vm_pte_kib
    after = trace["vm_pte_after_kib"]
    # Tables the first sample cannot show: the distance from the model to the
    # window [before, after] of sample 0 (0 when the model lies inside it).
    lo0, hi0 = min(rec[0], after[0]), max(rec[0], after[0])
    base_kib = int(lo0 - model[0] if model[0] < lo0 else hi0 - model[0] if model[0] > hi0 else 0)
    last_unplaced = r.unplaced
    last_implied = r.implied
    last_err = 0
    for k in range(1, n):
        r.advance_to(k)
        model[k] = mm.vm_pte_kib
        m = model[k] + base_kib
        lo, hi = min(rec[k], after[k]), max(rec[k], after[k])
        err = int(m - lo if m < lo else m - hi if m > hi else 0) // 4
        why = []
        if after[k] != rec[k]:
            why.append(f"raced: VmPTE {rec[k]}->{after[k]} kB during the sample")
        if r.unplaced != last_unplaced:
            why.append(f"{r.unplaced - last_unplaced} present pages outside model VMAs")
            last_unplaced = r.unplaced
        if err != last_err:
            gap = trace.t_ms[k] - trace.t_ms[k - 1]
            nsys = len(trace.syscalls_between(float(trace.t_ms[k - 1]), float(trace.t_ms[k])))
            implied = f", {r.implied - last_implied} purge-implied writes" if (
                r.implied != last_implied) else ""
            why.append(f"error {last_err:+d} -> {err:+d} tables over the {gap:.0f} ms gap "
                       f"({nsys} syscalls{implied}): faults and zaps between samples are not "
                       "seen")
            if not trace.has_syscalls:
                why.append("no syscall log: DONTNEED reclaim and munmap are only inferred "
                           "from maps and presence")
            last_err = err
        last_implied = r.implied
        if why:
            notes[k] = "; ".join(why)
    baseline = base_kib // 4
    return FidelityReport(trace.t_ms.copy(), rec.astype(np.int64), after.astype(np.int64),
                          model + 4 * baseline, baseline, notes, r.unplaced, r.refused,
                          r.implied)


# ------------------------------------------------------------------ workload


@dataclass(frozen=True)
class TraceConfig:
    """Parameters of one trace replay."""

    trace: str = "redis_jemalloc"  # a shipped trace name, or a path to a .npz trace
    speed: float = 1.0  # trace milliseconds per simulated millisecond
    offset_s: float = 0.0  # skip this much of the trace's start
    end: Literal["exit", "idle", "loop"] = "exit"  # at the trace's end

    def __post_init__(self) -> None:
        check_range("trace.speed", self.speed, 0.0, 1000.0, lo_open=True)
        check_range("trace.offset_s", self.offset_s, 0.0, 1e6)
        trace = resolve_trace(self.trace)
        if self.offset_s * 1000.0 >= trace.duration_ms:
            raise ConfigError(f"trace.offset_s: {self.offset_s} s is past the end of trace "
                              f"{self.trace!r} ({trace.duration_ms / 1000:.1f} s)")


class TraceWorkload(Workload):
    """One process that replays a captured trace (see the module docstring)."""

    family: ClassVar[str] = "trace"
    Config = TraceConfig
    sane: ClassVar[bool] = True
    jitter_fields: ClassVar[tuple[str, ...]] = ("speed",)

    def start(self) -> None:
        self.trace = resolve_trace(self.config.trace)
        self._begin(self.sim.tick_no)

    def _begin(self, tick: int) -> None:
        self.proc = self.spawn(f".{len(self.procs)}" if self.procs else "")
        self.replayer = TracePlayer(compile_trace(self.trace), self.proc.mm)
        self.t_first = self.config.offset_s * 1000.0
        first = int(np.searchsorted(self.trace.t_ms, self.t_first, side="right")) - 1
        self.replayer.advance_to(max(0, first))
        self.tick0 = tick
        self.done = False

    def step(self, tick: int) -> None:
        if self.done or not self.proc.runnable(tick):
            return  # a throttled process catches up when it runs again
        tick_ms = self.sim.machine.config.tick_ms
        t = self.t_first + (tick - self.tick0 + 1) * tick_ms * self.config.speed
        k = int(np.searchsorted(self.trace.t_ms, t, side="right")) - 1
        self.replayer.advance_to(k)
        if k >= self.trace.samples - 1:
            if self.config.end == "idle":
                self.done = True
            elif self.config.end == "exit":
                self.sim.exit_process(self.proc, "trace ended")
                self.done = True
            else:  # loop: the process exits and a fresh one starts the trace again
                self.sim.exit_process(self.proc, "trace ended (looping)")
                self._begin(tick + 1)
