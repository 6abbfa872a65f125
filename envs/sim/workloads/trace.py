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
2. For each later sample ``k``, in time order (``t_ms[k]``: the sample began
   and read ``VmPTE``; ``t_after_ms[k]``: it read ``VmPTE`` again after its
   page walk; a syscall is dated by its completion):

   a. the syscalls dated after sample ``k-1``'s read window and up to
      ``t_ms[k]`` are applied to the model as the kernel got them
      (mmap/munmap/madvise/mremap/brk/mprotect, with the kernel's return
      value for placement), so VMAs change and ``MADV_DONTNEED`` zaps and
      reclaims tables exactly by the model's rules;
   b. the model's VMAs are reconciled with the sample's maps (stack growth
      and anything the syscall log lacks) -- except the ranges that a logged
      ``mmap``/``munmap``/``mremap``/``brk``/``mprotect`` dated after
      ``t_ms[k]`` and before the next sample changes: such a call may have
      been under way while the maps were read (``munmap`` and a ``brk``
      shrink drop the VMA first and free the tables last), and the log
      applies it when it completes;
   c. each block whose pages changed, or that a syscall zapped, is synced
      with the sample: pages that appeared in the trace (or that a modelled
      zap took while the kernel still shows them) are faulted in -- the
      first appearance of a page in a block faults its table -- and pages
      that left the trace without a modelled zap are dropped without freeing
      tables (as lazy-free reclaim or swap-out would);
   d. the syscalls dated inside the sample's read window
      (``t_ms[k]``, ``t_after_ms[k]``] are applied: the second ``VmPTE``
      read saw them, the page walk may not have.  Their zaps are judged
      against the next sample's pages (pages it still shows were faulted
      again), and pages that had no VMA at c are retried after them.

   The fidelity report compares the model's range over the sample (after c,
   after d) with the kernel's (the two reads), so a syscall counts where the
   kernel's reads saw it, not one sample late.  strace dates a call's end
   when it gets to it, which can be milliseconds late on a busy machine, so
   a version-1 trace (no ``t_after_ms``: its window is empty and d never
   runs) also skips the exception in b and trusts the maps, as before: its
   ``churn_glibc_trim`` has a ``brk`` shrink dated 5 ms after the sample
   whose freed tables the first read already saw.  Evidence (``check`` on
   the trace as recorded, then with its windows dropped):
   ``numpy_jemalloc_decay`` 394/394 samples within the goal (max 3 tables)
   against 392/394 (max 10: ``DONTNEED`` calls dated 1-2 ms into a sample
   that both reads or the second saw); three more numpy re-recordings
   390/390, 354/354, 394/394 against 390/390, 353/354, 391/394; two glibc
   ``malloc_trim`` re-recordings max 4 and 5 tables against 104 and 200
   without b's exception (a 230 MiB ``brk`` shrink dated 20 and 78 ms after
   the sample, the VMA already gone from its maps, its tables still in both
   reads).  Read windows there last 6-10 ms (median; numpy) to 26-41 ms
   (churn, whose walks are long) and hold 7 % (numpy) to 32 % (churn) of
   the syscalls.

   What is faulted depends on the trace and the VMAs only, so
   :func:`compile_trace` turns a trace into a fixed list of model
   operations once, and every replay runs that list.
3. Allocators purge pages they dirtied: a ``MADV_DONTNEED`` that reaches a
   block with no table in the replay, and would not free that block's table
   (partial cover, or a VMA boundary inside: R6, R9), means the process wrote
   there after the last sample and the kernel kept the table; the replay
   writes the first purged page there before the call (counted as
   "purge-implied writes" in the fidelity report) -- except in the block
   where a range that began in an earlier block ends, when it covers at most
   :data:`UNWRITTEN_TAIL` (128 pages, 512 KiB) of it (counted as "tails").
   The tail of a purged range is the end of the allocator's last extent:
   size-class slack and, in jemalloc (``cache_oblivious``), a padding page,
   which the process never wrote.  numpy under jemalloc shows it plainly:
   its arrays of 8-48 MiB are large extents whose size class is a multiple
   of 2 MiB, plus the padding page, so a purge ends 1-6 pages into a block
   the array never reached, and the next sample holds no page there.
   Evidence, writes made with this rule / with a write at every such block
   / with none (samples within the goal):

   ======================== ================ ================ ==============
   trace                    this rule        every block      no writes
   ======================== ================ ================ ==============
   numpy_jemalloc_decay     6 w, 394/394     91 w, 142/394    393/394
   churn_jemalloc           8 w, 151/151     15 w, 151/151    151/151
   churn_glibc_trim         65 w, 155/155    65 w, 155/155    155/155
   redis_jemalloc           0 w, 295/295     0 w, 295/295     295/295
   ======================== ================ ================ ==============

   and on 20 re-recordings (``record.sh`` commands; not shipped): numpy
   (9 traces) 99-153 of about 400 samples within the goal with every block
   written, all but 3 samples with this rule; churn under jemalloc (6) needs
   the writes (100/148, 118/131 without any) and keeps most of them: 21-89
   writes, 13-39 tails, every sample within the goal but one (4 tables, also
   missed with every block written).  Replaying 8 jemalloc traces (numpy
   and churn) with one candidate write flipped at a time: of the writes into
   a range's tail block, 299 of those covering at most 128 pages raised the
   error and 1 lowered it; of those covering more, 40 lowered it and 3
   raised it (the rest changed nothing).  The wrong ones cover up to 86
   pages (one 131), the right ones 135 and more (one 30); a threshold of
   96-128 pages gave the least error on all 24 traces.
   A block whose next sample holds pages does not matter (the sync faults
   it anyway); one whose next sample holds none is exactly where the churn
   traces need the write, so that is no criterion.
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

__all__ = ["UNWRITTEN_TAIL", "FidelityReport", "TraceConfig", "TracePlayer", "TraceReplayer",
           "TraceWorkload", "compile_trace", "replay", "resolve_trace", "shipped_traces"]

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
#: A ``DONTNEED`` range's tail in its last 2 MiB block, up to this long,
#: implies no write (module docstring, point 3): a quarter of a block.
UNWRITTEN_TAIL = 128 * PAGE
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


_Action = tuple[str, int, int, MapsRow | None]


def _outside(action: _Action, leave: list[tuple[int, int]]) -> list[_Action]:
    """The parts of a reconcile action's range [a, b) outside the sorted
    ranges ``leave``."""
    act, a, b, w = action
    out: list[_Action] = []
    pos = a
    for lo, hi in leave:
        if hi <= pos:
            continue
        if lo >= b:
            break
        if lo > pos:
            out.append((act, pos, lo, w))
        pos = max(pos, hi)
        if pos >= b:
            return out
    out.append((act, pos, b, w))
    return out


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
        #: Pages present in the trace that still had no VMA in the model when
        #: their sample was done (counted again for every sample they wait).
        self.unplaced = 0
        #: Syscalls the model refused (an errno) although the kernel accepted them.
        self.refused = 0
        self._sorted_keys: list[int] | None = None
        #: Per block, the pages the current step's syscalls zapped in the model.
        self._zaps: dict[int, np.ndarray] = {}
        #: Zaps of the syscalls inside the last sample's read window, judged
        #: against the next sample's pages (the walk may have predated them).
        self._late_zaps: dict[int, np.ndarray] = {}
        #: ``VmPTE`` of the model when the current sample's pages were synced,
        #: before the syscalls of its read window (module docstring, point 2).
        self.walk_kib = 0
        #: Syscalls applied inside a sample's read window.
        self.in_window = 0
        #: Per block, trace pages that could not be faulted yet (no VMA): retried.
        self.pending: dict[int, np.ndarray] = {}
        if record:
            self.program = [[] for _ in range(trace.samples)]
        self._now = 0  # the sample whose operations are being emitted
        #: See :meth:`_touch_before_purge`; ``implied`` counts those writes,
        #: ``tails`` the range tails it left unwritten.
        self.purge_implies_touch = purge_implies_touch
        self.implied = 0
        self.tails = 0

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
        self._window(0)

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
        """Sample ``k``: the syscalls between the previous sample's read window
        and this sample, its maps, its pages, then the syscalls inside its read
        window (see the module docstring, point 2)."""
        tr = self.trace
        self._now = k
        self._zaps, self._late_zaps = self._late_zaps, {}
        for i in tr.syscalls_between(float(tr.t_after_ms[k - 1]), float(tr.t_ms[k])):
            self._syscall(i)
        snap = tr.maps_index(k)
        if snap != self.snapshot:
            self.snapshot = snap
            self._reconcile(tr.maps(snap), self._in_flight(k))
        old: dict[int, BlockState | None] = {}
        for block, st in tr.changes(k):
            old[block] = self.target.get(block)
            self._set_target(block, st)
        dirty = set(old) | set(self._zaps) | set(self.pending)
        for block in sorted(dirty):
            self._sync(block, old[block] if block in old else self.target.get(block),
                       self._zaps.get(block))
        self._window(k)
        self.sample = k

    def _window(self, k: int) -> None:
        """Apply the syscalls dated inside sample ``k``'s read window (after
        ``VmPTE`` was read, before it was read again): the second read saw
        them, the page walk may not have.  So they come after the sample's
        pages, their zaps are judged against the next sample's pages, and
        pages that had no VMA yet are retried once they have run."""
        self.walk_kib = self.mm.vm_pte_kib
        tr = self.trace
        calls = tr.syscalls_between(float(tr.t_ms[k]), float(tr.t_after_ms[k]))
        if calls:
            self._zaps = {}
            for i in calls:
                self._syscall(i)
            self.in_window += len(calls)
            self._late_zaps, self._zaps = self._zaps, {}
            for block in sorted(self.pending):
                self._sync(block, self.target.get(block), None)
        # Counted once a sample is done: a page the window's syscalls placed is no miss.
        self.unplaced += sum(int(m.sum()) for m in self.pending.values())

    def _target_blocks(self, lo: int, hi: int) -> list[int]:
        """Blocks ``lo..hi`` that hold pages in the trace (the targets)."""
        if hi - lo < 4096:
            return [b for b in range(lo, hi + 1) if b in self.target]
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.target)
        keys = self._sorted_keys
        return keys[int(np.searchsorted(keys, lo)):int(np.searchsorted(keys, hi, side="right"))]

    def _in_flight(self, k: int) -> list[tuple[int, int]]:
        """Address ranges whose mappings the syscalls dated after sample
        ``k`` began and before the next sample change.  One of them may have
        been under way while the sample read the maps (``munmap`` and a
        ``brk`` shrink drop the VMA first and free the tables last), so the
        reconcile leaves those ranges to the log.  A version-1 trace did not
        record its read windows, so this is off for it: there a syscall dated
        just after a sample may have completed before it (strace stamps a
        syscall's end when it gets to it), and the maps are trusted as before."""
        tr = self.trace
        if not tr.has_read_windows:
            return []
        t1 = float(tr.t_ms[k + 1]) if k + 1 < tr.samples else np.inf
        out: list[tuple[int, int]] = []
        brk = self.brk
        for i in tr.syscalls_between(float(tr.t_ms[k]), t1):
            ret = int(tr["sys_ret"][i])
            op = SYSCALLS[int(tr["sys_op"][i])]
            if -4096 < ret < 0 or op == "madvise":  # failed, or maps nothing
                continue
            a = [int(x) for x in tr["sys_args"][i]]
            if op == "mmap":
                out.append((ret, ret + a[1]))
            elif op in ("munmap", "mprotect"):
                out.append((a[0], a[0] + a[1]))
            elif op == "mremap":
                out += [(a[0], a[0] + a[1]), (ret, ret + a[2])]
            elif op == "brk" and brk is not None:
                out.append((min(ret, brk) & ~(PAGE - 1), (max(ret, brk) + PAGE - 1) & ~(PAGE - 1)))
                brk = ret
        return sorted((lo, hi) for lo, hi in out if hi > lo)

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
        for b in self._target_blocks(start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT):
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
        such blocks before the call -- except in the block where a range that
        began in an earlier block ends, when it covers at most
        :data:`UNWRITTEN_TAIL` bytes of it: that tail is the end of the
        allocator's last extent (size-class slack and padding page), which the
        process did not write (the evidence is in the module docstring, point
        3; ``tails`` counts them).  Decided on the replay's own address space,
        so the result is part of the compiled program."""
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
            if hi == end and start < base and end - base <= UNWRITTEN_TAIL:
                self.tails += 1
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

    def _reconcile(self, rows: list[MapsRow], leave: list[tuple[int, int]]) -> None:
        """Make the model's mapped ranges, protections and backings equal the
        snapshot's (VMA boundaries inside equal ranges are left alone), except
        inside the sorted ranges ``leave`` (see :meth:`_in_flight`)."""
        want = [(r.start, r.end, r) for r in rows if r.end <= TASK_SIZE]
        have = [(v.start, v.end, v) for v in self.mm.vmas]
        cuts = sorted({x for s, e, _ in want for x in (s, e)} | {x for s, e, _ in have
                                                                 for x in (s, e)})
        actions: list[_Action] = []
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
        for act, a, b, w in (piece for action in actions
                             for piece in _outside(action, leave)):
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
    sample lies between the two.  The model's value during the sample lies
    between its value when the sample's pages were synced (``model_walk_kib``)
    and its value after the syscalls dated inside the sample's read window
    (``model_kib``; the two are equal for a version-1 trace, which recorded
    no read window).  ``error_tables`` compares ``model_kib`` with the value
    read before the walk; ``window_error_tables`` is the distance between the
    two ranges (0 when they overlap), which is what the fidelity goal judges.
    """

    t_ms: np.ndarray
    recorded_kib: np.ndarray  # VmPTE read before the page walk
    recorded_after_kib: np.ndarray  # VmPTE read after it
    model_kib: np.ndarray  # after the sample; includes the constant baseline
    baseline_tables: int
    notes: dict[int, str] = field(default_factory=dict)
    unplaced_pages: int = 0
    refused_syscalls: int = 0
    purge_implied_writes: int = 0
    #: ``DONTNEED`` range tails that implied no write (module docstring, point 3).
    purge_tails_unwritten: int = 0
    #: Syscalls dated inside a sample's read window (module docstring, point 2).
    window_syscalls: int = 0
    #: The model when each sample's pages were synced (with the baseline).
    model_walk_kib: np.ndarray | None = None

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
        walk = self.model_kib if self.model_walk_kib is None else self.model_walk_kib
        m_lo = np.minimum(walk, self.model_kib)
        m_hi = np.maximum(walk, self.model_kib)
        return (np.where(m_hi < lo, m_hi - lo, 0) + np.where(m_lo > hi, m_lo - hi, 0)) // 4

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
    walk = np.zeros(n, dtype=np.int64)
    unplaced = np.zeros(n, dtype=np.int64)
    implied = np.zeros(n, dtype=np.int64)
    for k in range(n):
        r.advance_to(k)
        model[k], walk[k], unplaced[k], implied[k] = mm.vm_pte_kib, r.walk_kib, r.unplaced, \
            r.implied
    rec = trace.vm_pte_kib.astype(np.int64)
    after = trace["vm_pte_after_kib"].astype(np.int64)
    report = FidelityReport(trace.t_ms.copy(), rec, after, model, 0, {}, r.unplaced, r.refused,
                            r.implied, r.tails, r.in_window, walk)
    # Tables the first sample cannot show: the distance from the model to the
    # kernel's range at sample 0 (0 when the two overlap), carried as a constant.
    base_kib = -4 * int(report.window_error_tables[0])
    report.baseline_tables = base_kib // 4
    report.model_kib = model + base_kib
    report.model_walk_kib = walk + base_kib
    err = report.window_error_tables
    t = trace.t_ms
    for k in range(1, n):
        why = []
        if after[k] != rec[k]:
            why.append(f"raced: VmPTE {rec[k]}->{after[k]} kB during the sample")
        if unplaced[k] != unplaced[k - 1]:
            why.append(f"{unplaced[k] - unplaced[k - 1]} present pages outside model VMAs")
        if err[k] != err[k - 1]:
            nsys = len(trace.syscalls_between(float(t[k - 1]), float(trace.t_after_ms[k])))
            more = f", {implied[k] - implied[k - 1]} purge-implied writes" if (
                implied[k] != implied[k - 1]) else ""
            why.append(f"error {err[k - 1]:+d} -> {err[k]:+d} tables over the "
                       f"{t[k] - t[k - 1]:.0f} ms gap ({nsys} syscalls{more}): faults and "
                       "zaps between samples are not seen")
            if not trace.has_syscalls:
                why.append("no syscall log: DONTNEED reclaim and munmap are only inferred "
                           "from maps and presence")
        if why:
            report.notes[k] = "; ".join(why)
    return report


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
