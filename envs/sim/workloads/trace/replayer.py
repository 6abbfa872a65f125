"""The replayer: a trace's samples and syscalls turned into model operations, by the
rules of the package docstring ("How a trace drives the model")."""

from __future__ import annotations

import itertools

import numpy as np

from ...opscript import ADVICES
from ...pagetable import (
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
)
from ...trace import PERM_S, SYSCALLS, BlockState, MapsRow, Trace
from .ops import Op, _apply, _Files

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
#: implies no write (package docstring, point 3): a quarter of a block.
UNWRITTEN_TAIL = 128 * PAGE


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
        #: before the syscalls of its read window (package docstring, point 2).
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
        window (see the package docstring, point 2)."""
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
        process did not write (the evidence is in the package docstring, point
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
