"""Rule-by-rule tests of the page-table model (``envs/sim/pagetable.py``).

Each test pins one rule of ``shared/kernel/RULES.md`` (R1..R23, measured on Linux
6.18; R24, file THPs in the shmem page cache, is documented in the README's
page-table model section) so that a regression names the rule it broke.  The scripts are written
fresh (other offsets and sizes than the experiments in ``tests/data/kernel``);
every expected number is derived by hand from the rules, with the arithmetic in
a comment, and every script here was also replayed once on the live 6.18 kernel
with the oracle, which gave the same numbers.

Layout of the file:

1. VMA split and merge, directly on :class:`AddressSpace` (absolute addresses).
2. One test per rule R1..R24 on op scripts: the expected VmPTE delta (KiB) of
   every op is the first column of the table given to :func:`expect`.
3. Reclaim-class counters after every op of every script, against an
   independent brute-force recount, plus targeted class cases.
4. Scale: 100 TiB mappings cost what their populated tables cost.

Tables: ``PTE`` maps 2 MiB, ``PMD`` 1 GiB, ``PUD`` 512 GiB; 4 KiB each.  Each
script ID owns one 512 GiB slot, so its first table costs ``PTE + PMD + PUD = 12``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ptreclaim.envs.kernel.scriptgen import generate_corpus
from ptreclaim.envs.sim.opscript import Script, parse_file, parse_text
from ptreclaim.envs.sim.pagetable import (
    E_ANON,
    E_FILE,
    E_GUARD,
    E_NONE,
    E_SWAP,
    E_UFFD_WP,
    E_ZERO,
    ENTRIES,
    HUGE_ANON,
    HUGE_NONE,
    HUGE_ZERO,
    PAGE,
    PTE_SHIFT,
    VM_ACCOUNT,
    VM_DONTCOPY,
    VM_EXEC,
    VM_HUGEPAGE,
    VM_LOCKED,
    VM_MAYBE_GUARD,
    VM_NOHUGEPAGE,
    VM_NORESERVE,
    VM_RAND_READ,
    VM_READ,
    VM_SEQ_READ,
    VM_SHARED,
    VM_WIPEONFORK,
    VM_WRITE,
    AddressSpace,
    BackingFile,
    PteTable,
    TableClass,
)
from ptreclaim.envs.sim.replay import ScriptMachine, replay

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
#: Base of the direct AddressSpace tests: 16 TiB, 512 GiB aligned (a fresh PUD).
BASE = 16 * TiB
RW = VM_READ | VM_WRITE
R = VM_READ
#: Flags of a fresh private writable anon mapping.
ANON_RW = RW | VM_ACCOUNT

DATA = Path(__file__).resolve().parent / "data" / "kernel"
EXPERIMENTS = sorted(DATA.glob("*.script"))


# --------------------------------------------------------------------- helpers


def layout(mm: AddressSpace, base: int = BASE) -> list[tuple[int, int, int]]:
    """The VMAs as (start, end, flags), addresses relative to ``base``."""
    return [(v.start - base, v.end - base, v.flags) for v in mm.vmas]


def expect(table: str, *, thp: bool = False, pt_reclaim: bool = True) -> None:
    """Replay a script written as a table and check every op's outcome.

    Each non-blank line is ``EXPECTED OP...``: ``EXPECTED`` is the VmPTE delta
    in KiB after the op (for ``fork``: the child's), optionally ``/ERR`` when the
    op must fail with ``ERR`` (``16/EINVAL``, ``0/SIGSEGV``); every other op must
    succeed.  ``#`` comments are allowed.  Invariants are checked after each op.
    """
    want: list[tuple[int, str | None]] = []
    lines = ["# ptoracle-opts: -t"] if thp else []
    for raw in table.strip().splitlines():
        if not raw.split("#", 1)[0].strip():
            continue
        first, op = raw.strip().split(None, 1)
        delta, _, err = first.partition("/")
        want.append((int(delta), err or None))
        lines.append(op)
    script = parse_text("\n".join(lines) + "\n", "rule-table")
    assert len(script.ops) == len(want)
    got = [(o.delta_kib, o.failed.split(": ", 1)[1] if o.failed else None)
           for o in replay(script, pt_reclaim=pt_reclaim, check=True)]
    if got != want:
        rows = [f"{'':2}{w!s:>16} {g!s:>16}  {op.text}"
                + ("   <-- differs" if w != g else "")
                for op, w, g in zip(script.ops, want, got, strict=True)]
        pytest.fail("expected vs model (delta KiB, error):\n" + "\n".join(rows))


def deltas(text: str, *, pt_reclaim: bool = True) -> list[int]:
    """VmPTE deltas of a plain script (no expectation column)."""
    return [o.delta_kib for o in replay(parse_text(text), pt_reclaim=pt_reclaim, check=True)]


# ========================================================= 1. VMA split / merge


def test_vma_anon_mmap_pgoff_is_the_address() -> None:
    mm = AddressSpace()
    assert mm.mmap(BASE + 3 * MiB, MiB) is None
    assert mm.vmas[0].pgoff == (BASE + 3 * MiB) >> 12
    assert layout(mm) == [(3 * MiB, 4 * MiB, ANON_RW)]


def test_vma_mprotect_middle_splits_into_three_and_merges_back() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 8 * MiB)
    assert mm.mprotect(BASE + 2 * MiB, 2 * MiB, R) is None
    # Never faulted (no anon_vma): dropping PROT_WRITE also drops VM_ACCOUNT.
    assert layout(mm) == [(0, 2 * MiB, ANON_RW), (2 * MiB, 4 * MiB, R),
                          (4 * MiB, 8 * MiB, ANON_RW)]
    assert [v.pgoff for v in mm.vmas] == [(BASE >> 12) + k for k in (0, 512, 1024)]
    assert mm.mprotect(BASE + 2 * MiB, 2 * MiB, RW) is None  # regains VM_ACCOUNT
    assert layout(mm) == [(0, 8 * MiB, ANON_RW)]
    assert mm.vmas[0].pgoff == BASE >> 12


def test_vma_mprotect_keeps_account_once_faulted_and_merges_back() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 6 * MiB)
    mm.touch(BASE, 6 * MiB, write=True, stride=2 * MiB)
    mm.mprotect(BASE + 1 * MiB, 4 * KiB, R)
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, MiB + 4 * KiB, R | VM_ACCOUNT),
                          (MiB + 4 * KiB, 6 * MiB, ANON_RW)]
    assert len({id(v.anon_vma) for v in mm.vmas}) == 1  # split pieces share it
    mm.mprotect(BASE + 1 * MiB, 4 * KiB, RW)
    assert layout(mm) == [(0, 6 * MiB, ANON_RW)]


def test_vma_adjacent_anon_mmaps_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE + 1 * MiB, MiB)
    mm.mmap(BASE + 3 * MiB, MiB)
    assert len(mm.vmas) == 2
    mm.mmap(BASE + 2 * MiB, MiB)  # fills the gap: merges with both sides
    assert layout(mm) == [(MiB, 4 * MiB, ANON_RW)]
    mm.mmap(BASE, MiB)  # below: expands the VMA downwards
    assert layout(mm) == [(0, 4 * MiB, ANON_RW)]
    assert mm.vmas[0].pgoff == BASE >> 12


def test_vma_noreserve_and_normal_do_not_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, MiB)
    mm.mmap(BASE + MiB, MiB, noreserve=True)
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, 2 * MiB, RW | VM_NORESERVE)]
    mm.mmap(BASE + 2 * MiB, MiB, noreserve=True)  # two NORESERVE ones do merge
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, 3 * MiB, RW | VM_NORESERVE)]
    # mprotect never changes VM_NORESERVE: still no merge after a round trip.
    mm.mprotect(BASE, 3 * MiB, R)
    mm.mprotect(BASE, 3 * MiB, RW)
    assert [f for _, _, f in layout(mm)] == [ANON_RW, RW | VM_NORESERVE]


def test_vma_ro_to_rw_mprotect_gains_account_and_merges_e41() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, MiB)
    mm.mmap(BASE + MiB, MiB, prot=R)
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, 2 * MiB, R)]
    mm.mprotect(BASE + MiB, MiB, RW)
    assert layout(mm) == [(0, 2 * MiB, ANON_RW)]


def test_vma_rw_to_ro_of_unfaulted_drops_account_and_merges_with_ro() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, MiB)
    mm.mmap(BASE + MiB, MiB, prot=R)
    mm.mprotect(BASE, MiB, R)  # no anon_vma yet: VM_ACCOUNT is given back
    assert layout(mm) == [(0, 2 * MiB, R)]


def test_vma_different_anon_vmas_do_not_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB)
    mm.madvise(BASE + MiB, MiB, "RANDOM")
    # Each piece gets its own anon_vma (VM_RAND_READ makes them incompatible).
    mm.touch(BASE, 2 * MiB, write=True)
    a, b = mm.vmas
    assert a.anon_vma is not None and b.anon_vma is not None and a.anon_vma is not b.anon_vma
    mm.madvise(BASE + MiB, MiB, "NORMAL")
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, 2 * MiB, ANON_RW)]


def test_vma_one_anon_vma_and_none_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB)
    mm.madvise(BASE + MiB, MiB, "RANDOM")
    mm.touch(BASE, MiB, write=True)  # only the lower piece gets an anon_vma
    owner = mm.vmas[0].anon_vma
    assert owner is not None and mm.vmas[1].anon_vma is None
    mm.madvise(BASE + MiB, MiB, "NORMAL")
    assert layout(mm) == [(0, 2 * MiB, ANON_RW)]
    assert mm.vmas[0].anon_vma is owner
    # Same in the other direction: the upper piece owns it.
    mm2 = AddressSpace()
    mm2.mmap(BASE, 2 * MiB)
    mm2.madvise(BASE, MiB, "SEQUENTIAL")
    mm2.touch(BASE + MiB, 4 * KiB, write=True)
    owner = mm2.vmas[1].anon_vma
    mm2.madvise(BASE, MiB, "NORMAL")
    assert layout(mm2) == [(0, 2 * MiB, ANON_RW)]
    assert mm2.vmas[0].anon_vma is owner is not None


@pytest.mark.parametrize("first", ["lower", "upper"])
def test_vma_prot_only_neighbour_reuses_anon_vma_and_merges_back(first: str) -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB)
    mm.mprotect(BASE + MiB, MiB, RW | VM_EXEC)
    order = [BASE, BASE + MiB] if first == "lower" else [BASE + MiB, BASE]
    for a in order:
        mm.touch(a, MiB, write=True)
    mm.mprotect(BASE + MiB, MiB, RW)
    assert layout(mm) == [(0, 2 * MiB, ANON_RW)]


def test_vma_file_merges_only_with_contiguous_offsets_and_same_file() -> None:
    f = BackingFile("file", 64 * GiB)
    g = BackingFile("file", 64 * GiB)
    mm = AddressSpace()
    sh = RW | VM_SHARED
    mm.mmap(BASE, MiB, kind="file", shared=True, file=f, foff=2 * MiB)
    mm.mmap(BASE + MiB, MiB, kind="file", shared=True, file=f, foff=3 * MiB)
    assert layout(mm) == [(0, 2 * MiB, sh)]
    assert mm.vmas[0].pgoff == (2 * MiB) >> 12
    mm.mmap(BASE + 2 * MiB, MiB, kind="file", shared=True, file=f, foff=8 * MiB)  # gap in file
    mm.mmap(BASE + 3 * MiB, MiB, kind="file", shared=True, file=g, foff=9 * MiB)  # other file
    assert layout(mm) == [(0, 2 * MiB, sh), (2 * MiB, 3 * MiB, sh), (3 * MiB, 4 * MiB, sh)]
    # Private file mappings (writable: VM_ACCOUNT) merge the same way.
    mm.mmap(BASE + 8 * MiB, MiB, kind="file", file=f, foff=0)
    mm.mmap(BASE + 9 * MiB, MiB, kind="file", file=f, foff=MiB)
    assert layout(mm)[3:] == [(8 * MiB, 10 * MiB, ANON_RW)]
    # Private and shared views of one file never merge (VM_SHARED differs).
    mm.mmap(BASE + 10 * MiB, MiB, kind="file", shared=True, file=f, foff=2 * MiB)
    assert layout(mm)[3:] == [(8 * MiB, 10 * MiB, ANON_RW), (10 * MiB, 11 * MiB, sh)]
    # shmem objects follow the file rule.
    s = BackingFile("shmem", 64 * GiB)
    mm.mmap(BASE + 20 * MiB, MiB, kind="shmem", shared=True, file=s, foff=0)
    mm.mmap(BASE + 21 * MiB, MiB, kind="shmem", shared=True, file=s, foff=MiB)
    assert layout(mm)[-1] == (20 * MiB, 22 * MiB, sh)
    mm.check_invariants()


def test_vma_anon_shared_mappings_never_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, MiB, shared=True)
    mm.mmap(BASE + MiB, MiB, shared=True)  # each has its own shmem object
    assert layout(mm) == [(0, MiB, RW | VM_SHARED), (MiB, 2 * MiB, RW | VM_SHARED)]
    assert mm.vmas[0].file is not mm.vmas[1].file


@pytest.mark.parametrize(("advice", "flag", "undo", "undo_whole"), [
    ("HUGEPAGE", VM_HUGEPAGE, "HUGEPAGE", True),
    ("NOHUGEPAGE", VM_NOHUGEPAGE, "NOHUGEPAGE", True),
    ("RANDOM", VM_RAND_READ, "NORMAL", False),
    ("SEQUENTIAL", VM_SEQ_READ, "NORMAL", False),
    ("DONTFORK", VM_DONTCOPY, "DOFORK", False),
    ("WIPEONFORK", VM_WIPEONFORK, "KEEPONFORK", False),
])
def test_vma_flag_advice_splits_and_merges_back(advice: str, flag: int, undo: str,
                                                undo_whole: bool) -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB)
    assert mm.madvise(BASE + MiB, 4 * KiB, advice) is None
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, MiB + 4 * KiB, ANON_RW | flag),
                          (MiB + 4 * KiB, 4 * MiB, ANON_RW)]
    assert mm.tables == 0  # flag advice allocates nothing (R2)
    if undo_whole:  # there is no way back to "no flag": set it everywhere instead
        assert mm.madvise(BASE, 4 * MiB, undo) is None
        assert layout(mm) == [(0, 4 * MiB, ANON_RW | flag)]
    else:
        assert mm.madvise(BASE + MiB, 4 * KiB, undo) is None
        assert layout(mm) == [(0, 4 * MiB, ANON_RW)]


def test_vma_maybe_guard_is_whole_vma_sticky_and_never_blocks_a_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE + 2 * MiB, MiB)
    assert mm.madvise(BASE + 2 * MiB + 4 * KiB, 4 * KiB, "GUARD_INSTALL") is None
    assert layout(mm) == [(2 * MiB, 3 * MiB, ANON_RW | VM_MAYBE_GUARD)]  # no split (R19)
    mm.mmap(BASE + 3 * MiB, MiB)  # unguarded neighbour above merges
    mm.mmap(BASE + 1 * MiB, MiB)  # and below
    assert layout(mm) == [(MiB, 4 * MiB, ANON_RW | VM_MAYBE_GUARD)]
    mm.madvise(BASE + 2 * MiB + 4 * KiB, 4 * KiB, "GUARD_REMOVE")
    assert mm.vmas[0].flags & VM_MAYBE_GUARD  # sticky
    mm.mprotect(BASE + 3 * MiB, 4 * KiB, R)
    assert [f & VM_MAYBE_GUARD for _, _, f in layout(mm)] == [VM_MAYBE_GUARD] * 3
    mm.mprotect(BASE + 3 * MiB, 4 * KiB, RW)
    assert layout(mm) == [(MiB, 4 * MiB, ANON_RW | VM_MAYBE_GUARD)]
    # A guarded and an unguarded piece that differ in nothing else merge too.
    mm2 = AddressSpace()
    mm2.mmap(BASE, 2 * MiB)
    mm2.madvise(BASE + MiB, MiB, "RANDOM")
    mm2.madvise(BASE + MiB, 4 * KiB, "GUARD_INSTALL")
    assert [f & VM_MAYBE_GUARD for _, _, f in layout(mm2)] == [0, VM_MAYBE_GUARD]
    mm2.madvise(BASE + MiB, MiB, "NORMAL")
    assert layout(mm2) == [(0, 2 * MiB, ANON_RW | VM_MAYBE_GUARD)]


def test_vma_mremap_in_place_grow_merges_with_next() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, MiB)
    mm.mmap(BASE + 2 * MiB, MiB)  # pgoff contiguous with [0,1M) once that grows
    assert mm.mremap(BASE, MiB, 2 * MiB) is None
    assert layout(mm) == [(0, 3 * MiB, ANON_RW)]
    assert mm.tables == 0  # growth allocates nothing (R2)
    # No room: ENOMEM (no MREMAP_MAYMOVE), nothing changes.
    mm.mmap(BASE + 4 * MiB, MiB, prot=R)
    assert mm.mremap(BASE, 3 * MiB, 5 * MiB) == "ENOMEM"
    assert layout(mm) == [(0, 3 * MiB, ANON_RW), (4 * MiB, 5 * MiB, R)]


def test_vma_mremap_move_rebases_unfaulted_anon_pgoff_and_merges() -> None:
    mm = AddressSpace()
    mm.mmap(BASE + 4 * MiB, MiB)
    mm.mmap(BASE, MiB)
    assert mm.mremap(BASE, MiB, MiB, BASE + 5 * MiB) is None
    assert layout(mm) == [(4 * MiB, 6 * MiB, ANON_RW)]  # pgoff re-based -> merged
    assert mm.vmas[0].pgoff == (BASE + 4 * MiB) >> 12


def test_vma_mremap_move_keeps_faulted_pgoff_and_does_not_merge() -> None:
    mm = AddressSpace()
    mm.mmap(BASE + 4 * MiB, MiB)
    mm.mmap(BASE, MiB)
    mm.touch(BASE, 4 * KiB, write=True)
    assert mm.mremap(BASE, MiB, MiB, BASE + 5 * MiB) is None
    assert layout(mm) == [(4 * MiB, 5 * MiB, ANON_RW), (5 * MiB, 6 * MiB, ANON_RW)]
    assert mm.vmas[1].pgoff == BASE >> 12
    mm.check_invariants()


def test_vma_mlock_splits_and_munlock_merges_back() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB)
    assert mm.mlock(BASE + MiB, MiB) is None
    assert layout(mm) == [(0, MiB, ANON_RW), (MiB, 2 * MiB, ANON_RW | VM_LOCKED),
                          (2 * MiB, 4 * MiB, ANON_RW)]
    assert mm.munlock(BASE + MiB, MiB) is None
    assert layout(mm) == [(0, 4 * MiB, ANON_RW)]
    assert mm.tables == 3  # the populate of mlock stays (R3, R13): PTE + PMD + PUD


# ================================================================ 2. the rules


def test_r01_vmpte_counts_pte_pmd_pud_at_4k() -> None:
    expect("""
       0  mmap 0 anon private 3G
    6160  touch 0 0 3G write 2M    # 1536 PTE + 3 PMD + 1 PUD = 1540 tables x 4
    6160  mmap 1 anon private 4K 5G
    6172  touch 1 5G 4K read       # other 512 GiB slot: its own PTE + PMD + PUD
      12  munmap 0 0 3G            # all 1540 tables of ID 0
       0  munmap 1 5G 4K
    """)


def test_r02_allocation_is_lazy_and_top_down() -> None:
    expect("""
     0  mmap 0 anon private 6M
     0  mprotect 0 0 6M r
     0  mprotect 0 0 6M rw
     0  madvise 0 0 6M WILLNEED
     0  madvise 0 0 6M HUGEPAGE
     0  madvise 0 0 6M NORMAL
     0  mremap 0 0 6M 10M          # in-place growth
    12  touch 0 4K 4K read          # zero page: PTE + PMD + PUD
    12  touch 0 8K 2M-8K write      # the other 510 pages of that slot: free
    16  touch 0 9M 4K read          # new slot: one PTE table
    16  mmap 1 file shared 4M
    28  touch 1 3M 4K read          # every kind allocates the same way: +12 per new ID
    28  mmap 2 file private 4M
    40  touch 2 0 4K write
    40  mmap 3 shmem shared 4M
    52  touch 3 2M+4K 4K read
    52  mmap 4 anon shared 4M
    64  touch 4 1M 1M write
    64  mmap 5 shmem private 4M
    76  touch 5 0 4K read
    """)


def test_r03_populate_paths_allocate_like_faults() -> None:
    expect("""
     20  mmap 0 anon private 6M populate     # 3 PTE + PMD + PUD
     20  mmap 1 anon private 6M 1M
     44  madvise 1 1M 6M POPULATE_READ       # [1M,7M) touches 4 slots: 4 + 2 = 6 tables
     44  mmap 2 anon private 4M
     60  madvise 2 2M-4K 8K POPULATE_WRITE   # 8 KiB across a boundary: 2 PTE + 2
     60  mmap 3 anon private 4M ro
     76  mlock 3 0 4M                        # read-populate: 2 PTE + 2
     76  mmap 4 anon private 8M
     96  madvise 4 1M 5M GUARD_INSTALL       # markers on [1M,6M): slots 0,1,2 + 2
    112  mmap 5 file shared 4M populate      # 2 PTE + 2
    """)


def test_r04_a_failed_fault_allocates_no_pte_table() -> None:
    expect("""
     0          mmap 0 anon private 4M
     0          mprotect 0 0 4M none
     0/SIGSEGV  touch 0 0 4K read         # PROT_NONE
     0          mprotect 0 0 4M r
     0/SIGSEGV  touch 0 0 4K write        # write to read-only
     0/SIGSEGV  touch 0 8M 4K read        # no VMA (a hole)
     0          mmap 1 file shared 8M
     0          truncate 1 2M+4K
     8/SIGBUS   touch 1 6M 4K read        # past EOF: PUD + PMD allocated, no PTE
    12/SIGBUS   touch 1 2M 8K read        # page at 2M is inside EOF (+1 PTE), 2M+4K is not
    12          mmap 2 anon private 4M
    12          mprotect 2 2M 2M none
    24/SIGSEGV  touch 2 0 4M write 2M     # first access ok (+12), second hits PROT_NONE
    """)


def test_r04_write_past_eof_of_private_file_still_prepares_anon_vma() -> None:
    # The COW fault prepares the anon_vma before ->fault fails, so the VMA is
    # copied at fork (R18): the child gets the PUD + PMD the failed fault allocated.
    expect("""
    0          mmap 0 file private 4M 2M
    0          truncate 0 0
    8/SIGBUS   touch 0 2M 4K write
    8          fork
    """)


def test_r05_mprotect_write_on_mlocked_private_range_populates() -> None:
    expect("""
     0  mmap 0 file private 8M ro
    16  mlock 0 2M 4M                    # read-populate [2M,6M): 2 PTE + PMD + PUD
     8  madvise 0 2M 4M DONTNEED_LOCKED  # both slots fully covered
     8  mprotect 0 6M 2M rw              # not locked: nothing
    12  mprotect 0 2M 2M rw              # locked: write-faulted, one PTE table
    12  mmap 1 anon private 4M ro
    24  mlock 1 0 2M                     # PTE + PMD + PUD
    20  madvise 1 0 2M DONTNEED_LOCKED
    24  mprotect 1 0 4M rw               # only the locked [0,2M) is populated: +1 PTE
    """)


R06_SCRIPT = """
mmap 0 anon private 10M
touch 0 0 10M write 1M
madvise 0 8K 2M DONTNEED
madvise 0 3M 2M DONTNEED
madvise 0 1M 6M DONTNEED
madvise 0 8M 2M-4K DONTNEED
madvise 0 8M-4K 2M+4K DONTNEED
madvise 0 0 1M DONTNEED
"""


def test_r06_dontneed_frees_only_fully_covered_aligned_slots() -> None:
    assert deltas(R06_SCRIPT) == [
        0,
        28,  # 5 PTE + PMD + PUD = 7 tables
        28,  # [8K, 2M+8K): 2 MiB long, covers no slot
        28,  # [3M, 5M): spans [2M,4M) and [4M,6M), covers neither
        20,  # [1M, 7M): covers [2M,4M) and [4M,6M) -> 2 freed
        20,  # [8M, 10M-4K): one page short
        16,  # [8M-4K, 10M): covers [8M,10M)
        16,  # [0, 1M): half a slot
    ]


def test_r06_pre_614_kernel_frees_nothing_on_dontneed() -> None:
    # pt_reclaim=False models kernels before 6.14: only unmapping frees tables.
    assert deltas(R06_SCRIPT, pt_reclaim=False) == [0] + [28] * 7
    assert deltas("""
mmap 0 anon private 4M
touch 0 0 4M write
madvise 0 0 4M DONTNEED
munmap 0 0 4M
""", pt_reclaim=False) == [0, 16, 16, 0]


def test_r07_reclaim_is_decided_per_call() -> None:
    expect("""
     0  mmap 0 anon private 6M
    20  touch 0 0 6M write             # 3 PTE + 2
    20  madvise 0 2M 512K DONTNEED
    20  madvise 0 2M+512K 1M DONTNEED
    20  madvise 0 3M+512K 512K DONTNEED  # slot [2M,4M) now has 0 entries: still allocated
    16  madvise 0 2M 2M DONTNEED          # aligned cover frees the empty table
     8  madvise 0 0 6M DONTNEED           # and the two full ones
    """)


@pytest.mark.parametrize(("setup", "allocated"), [
    pytest.param("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write", 16, id="anon-full"),
    pytest.param("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write 1M", 16, id="anon-sparse"),
    pytest.param("mmap 0 anon private 4M 2M\ntouch 0 2M 4M read", 16, id="zero-page"),
    pytest.param("mmap 0 anon private 4M 2M\nmadvise 0 2M 4M POPULATE_WRITE\n"
                 "madvise 0 2M 4M FREE", 16, id="lazyfree"),
    pytest.param("mmap 0 file shared 4M 2M\ntouch 0 2M 2M read\ntouch 0 4M 2M write", 16,
                 id="file-shared"),
    pytest.param("mmap 0 file private 4M 2M\ntouch 0 2M 4M read\ntouch 0 2M 4M write 8K", 16,
                 id="file-private-cow-mix"),
    pytest.param("mmap 0 shmem shared 4M 2M\ntouch 0 2M 4M write 64K", 16, id="shmem"),
    pytest.param("mmap 0 shmem private 4M 2M\ntouch 0 2M 4M read\ntouch 0 4M 4K write", 16,
                 id="shmem-private"),
    pytest.param("mmap 0 anon shared 4M 2M\ntouch 0 2M 4M write", 16, id="anon-shared"),
    pytest.param("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write\nmadvise 0 2M 4M COLD\n"
                 "madvise 0 2M 4M PAGEOUT", 16, id="cold-pageout"),
])
def test_r08_what_the_table_holds_does_not_matter(setup: str, allocated: int) -> None:
    # [2M,6M) = slots 1 and 2: 2 PTE + PMD + PUD = 16; each aligned DONTNEED frees one.
    got = deltas(setup + "\nmadvise 0 2M 2M DONTNEED\nmadvise 0 4M 2M DONTNEED\n")
    assert got[-3:] == [allocated, allocated - 4, allocated - 8]


def test_r08_big_full_range_is_reclaimed_in_one_call() -> None:
    expect("""
      0  mmap 0 anon private 128M
    264  touch 0 0 128M write         # 64 full PTE tables + PMD + PUD
      8  madvise 0 0 128M DONTNEED     # all 64 freed (batch paths reclaim too)
    """)


def test_r09_dontneed_reclaims_per_vma_piece() -> None:
    expect("""
     0  mmap 0 anon private 4M
    16  touch 0 0 4M write
    16  mprotect 0 2M+4K 4K r          # 3 VMAs in slot [2M,4M)
    12  madvise 0 0 4M DONTNEED        # [0,2M) freed; [2M,4M) has 3 pieces: kept
    12  mprotect 0 2M+4K 4K rw         # merges back into one VMA
     8  madvise 0 2M 2M DONTNEED       # now freed
     8  mmap 1 anon private 2M 0
     8  mmap 1 anon private 2M 2M norsv  # boundary exactly on 2M: harmless
    24  touch 1 0 4M write 1M
    16  madvise 1 0 4M DONTNEED        # both freed
    16  mmap 2 anon private 3M 0
    16  mmap 2 anon private 1M 3M norsv  # boundary inside slot [2M,4M)
    32  touch 2 0 4M write 1M
    28  madvise 2 0 4M DONTNEED        # only [0,2M) freed
    28  mmap 3 file shared 1M 0
    28  mmap 3 file shared 1M 1M foff=4M   # not contiguous in the file: 2 VMAs
    40  touch 3 0 2M read
    40  madvise 3 0 2M DONTNEED
    40  mmap 4 anon private 2M
    52  touch 4 0 2M write
    52  madvise 4 512K 4K DONTFORK     # split
    52  madvise 4 0 2M DONTNEED
    52  madvise 4 512K 4K DOFORK       # merged again
    48  madvise 4 0 2M DONTNEED
    """)


def test_r09_hugepage_advice_splits_vmas_even_with_thp_disabled() -> None:
    # RULES caveat: MADV_HUGEPAGE sets VM_HUGEPAGE (so it splits) even under prctl.
    expect("""
     0  mmap 0 anon private 4M
     0  madvise 0 1M 2M HUGEPAGE       # 3 VMAs: [0,1M) [1M,3M) [3M,4M)
    16  touch 0 0 4M read              # zero pages: no anon_vma
    16  madvise 0 0 4M DONTNEED        # each slot has 2 VMAs: nothing freed
    16  madvise 0 0 4M HUGEPAGE        # one VMA again
     8  madvise 0 0 4M DONTNEED
    """)


def test_r09_prot_only_split_merges_back_after_both_pieces_faulted() -> None:
    expect("""
     0  mmap 0 anon private 2M
     0  mprotect 0 1M 1M rwx
    12  touch 0 0 2M write             # both pieces written (anon_vma shared in the kernel)
    12  mprotect 0 1M 1M rw            # kernel: one VMA again
     8  madvise 0 0 2M DONTNEED
    """)


def test_r10_guard_markers_block_reclaim() -> None:
    expect("""
     0          mmap 0 anon private 6M
    12          madvise 0 4M+8K 4K GUARD_INSTALL
    12/SIGSEGV  touch 0 4M 2M write        # two pages written, the third is the guard
    12          madvise 0 4M 2M DONTNEED   # the marker keeps the table
    12/SIGSEGV  touch 0 4M+8K 4K read      # and still faults
    12          madvise 0 0 6M DONTNEED
    12          madvise 0 4M 2M GUARD_REMOVE
    12          touch 0 4M+8K 4K read      # accessible again
     8          madvise 0 4M 2M DONTNEED   # now freed
    12          madvise 0 0 2M GUARD_INSTALL   # a whole table of markers
    12          madvise 0 0 2M DONTNEED
    12          madvise 0 0 2M GUARD_REMOVE    # markers gone, table stays (R13)
     8          madvise 0 0 2M DONTNEED
    """)


def test_r11_dontneed_on_locked_vma_fails_and_changes_nothing() -> None:
    expect("""
     0         mmap 0 anon private 4M
    16         mlock 0 0 4M
    16/EINVAL  madvise 0 0 4M DONTNEED
    12         madvise 0 2M 2M DONTNEED_LOCKED   # follows R6
     8         madvise 0 0 2M DONTNEED_LOCKED
     8         mmap 1 anon private 4M
    24         touch 1 0 4M write
    24         mlock 1 0 2M
    24/EINVAL  madvise 1 0 4M DONTNEED           # locked piece first: walk stops at once
    24         mmap 2 anon private 4M
    40         touch 2 0 4M write
    40         mlock 2 2M 2M
    36/EINVAL  madvise 2 0 4M DONTNEED           # unlocked [0,2M) done before the EINVAL
    """)
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB)
    mm.mlock(BASE, 4 * MiB)
    before = {s: bytes(t.entries) for s, t in mm.pte.items()}
    assert mm.madvise(BASE, 4 * MiB, "DONTNEED") == "EINVAL"
    assert {s: bytes(t.entries) for s, t in mm.pte.items()} == before  # no page zapped


def test_r12_dontneed_never_frees_pmd_or_pud_tables() -> None:
    expect("""
       0         mmap 0 anon private 1G+4M 1G-2M
    2072         touch 0 1G-2M 1G+4M write 2M  # 514 PTE + 3 PMD + PUD = 518 tables
      16         madvise 0 1G-2M 1G+4M DONTNEED  # all PTE freed; 3 PMD + PUD stay
      16/ENOMEM  madvise 0 0 4G DONTNEED         # holes around it: ENOMEM, still 16
       0         munmap 0 1G-2M 1G+4M
    """)


def test_r13_nothing_else_frees_tables_while_the_vma_lives() -> None:
    expect("""
     0  mmap 0 anon private 4M
    16  touch 0 0 4M write
    16  madvise 0 0 4M FREE
    16  madvise 0 0 4M PAGEOUT
    16  madvise 0 0 4M COLD
    16  mprotect 0 0 4M r
    16  mprotect 0 0 4M rw
    16  mlock 0 0 4M
    16  munlock 0 0 4M
    16  madvise 0 0 4M GUARD_REMOVE
    16  mmap 1 shmem shared 4M
    32  touch 1 0 4M write
    32  madvise 1 0 4M REMOVE
    32  punch 1 0 4M
    32  mmap 2 file shared 4M
    48  touch 2 0 4M read
    48  madvise 2 0 4M PAGEOUT
    48  truncate 2 0
    48  mmap 3 anon shared 4M
    64  touch 3 0 4M write
    64  madvise 3 0 4M REMOVE
    56  madvise 0 0 4M DONTNEED      # then an aligned DONTNEED frees each pair of tables
    48  madvise 1 0 4M DONTNEED
    40  madvise 2 0 4M DONTNEED      # past EOF: still zaps and frees
    32  madvise 3 0 4M DONTNEED
    """)


def test_r14_munmap_frees_by_floor_and_ceiling() -> None:
    expect("""
     0  mmap 0 anon private 12M
    32  touch 0 0 12M write 2M       # 6 PTE + PMD + PUD
    24  munmap 0 4M 4M               # [4M,8M): 2 whole slots, no VMA left there
    24  munmap 0 1M 2M               # [1M,3M): [0,1M) and [3M,4M) keep both tables
    20  munmap 0 0 1M                # slot 0 empty of VMAs now
    16  munmap 0 3M 1M
     0  munmap 0 8M 4M               # last VMA: 2 PTE + PMD + PUD
     0  mmap 1 anon private 4M
    16  touch 1 0 4M write
    16  mprotect 1 4M-4K 4K none     # a PROT_NONE page keeps its slot's table
    16  munmap 1 2M 2M-4K
    12  munmap 1 4M-4K 4K
     0  munmap 1 0 2M
     0  mmap 2 anon private 4K 100G  # never touched, same PUD range
     0  mmap 2 anon private 2M 1G
    12  touch 2 1G 2M write
     4  munmap 2 1G 2M               # PTE + PMD freed; the PUD is kept by the VMA at 100G
     0  munmap 2 100G 4K
     0  mmap 3 anon private 1G
    12  touch 3 0 4K write
    12  munmap 3 2M 1G-2M            # never-touched memory: frees nothing
    12  mmap 3 anon private 4K 1G-4K
     8  munmap 3 0 2M                # PTE freed; the PMD is kept by the VMA at 1G-4K
     0  munmap 3 1G-4K 4K
    """)


def test_r15_every_unmap_path_uses_floor_and_ceiling() -> None:
    expect("""
     0  mmap 0 anon private 6M
    20  touch 0 0 6M write 1M          # 3 PTE + 2
    16  mmap 0 anon private 2M 2M fixed  # MAP_FIXED over a whole slot frees its table
    16  mmap 0 file shared 1M 4M fixed   # half of [4M,6M): [5M,6M) keeps it
    12  mmap 0 anon private 2M 4M fixed  # [4M,6M) over 2 VMAs, no neighbour in the slot
     0  mmap 0 anon private 6M 0 fixed   # replaces everything: all 3 tables go
     0  mmap 1 anon private 2M 0
     0  mmap 1 anon private 4M 2M ro
    20  touch 1 0 6M read 1M
    12  mremap 1 1M 5M 512K             # shrink unmaps [1.5M,6M) across 2 VMAs
    12  maps                             # [0,1.5M) is left
     0  munmap 1 0 2M
     0  mmap 2 anon private 8M
    24  touch 2 0 8M write 2M
    16  mremap 2 0 8M 3M+4K             # [3M+4K,8M): [4M,6M) and [6M,8M) freed
    12  mremap 2 0 3M+4K 1M             # [1M,3M+4K): slot [2M,4M) freed
     0  munmap 2 0 1M
     0  mmap 3 anon private 4M 2M
    16  touch 3 2M 4M write
    20  mremap 3 2M 4M 4M 4 1M          # dst [1M,5M): 3 new PTE + PMD + PUD = +20,
                                        # source unmap: 2 PTE + PMD + PUD = -16
    """)
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB)
    mm.mmap(BASE + 2 * MiB, 4 * MiB, prot=R)
    assert mm.mremap(BASE + MiB, 5 * MiB, 512 * KiB) is None
    assert layout(mm) == [(0, MiB + 512 * KiB, ANON_RW)]


def test_r16_mremap_move_tables() -> None:
    expect("""
     0  mmap 0 anon private 4M 2M
    16  touch 0 2M 4M write 1M         # slots 1, 2 + PMD + PUD
    24  mremap 0 2M 2M 2M 1 6M         # aligned 2M: table moved whole; dst PMD + PUD
    28  mremap 0 4M 2M 2M 2 1M         # dst [1M,3M): 2 new PTE + PMD + PUD = +16,
                                       # source ID 0 now empty: PTE + PMD + PUD = -12
    28  mmap 3 anon private 4M
    40  touch 3 0 4K write             # PTE + PMD + PUD
    44  touch 3 2M 4K write
    60  mremap 3 1M 2M 2M 4 1M         # extent [1M,2M) holds no page but its source
                                       # table exists: a dst table per extent, so
                                       # 2 PTE + PMD + PUD; [0,1M) and [3M,4M) keep
                                       # both source tables
    60  mmap 5 anon private 4K 0       # keeps ID 5's PUD alive
    60  mmap 5 anon private 1G 1G
    76  touch 5 1G 1G write 512M       # 2 PTE + PMD + PUD
    80  mremap 5 1G 1G 1G 6 2G         # GiB-aligned: the PMD table moves whole; dst PUD +4
    80  mremap 6 2G 1G 1G 7 3G+2M      # 2M-aligned: 2 PTE moved whole into one dst PMD
                                       # (+PMD +PUD); ID 6 emptied (-PMD -PUD)
    """)


def test_r16_mremap_realignment_and_multi_vma_move() -> None:
    expect("""
     0         mmap 0 anon private 3M 512K
    16         touch 0 512K 3M write 512K   # slots 0, 1 + PMD + PUD
    16         mremap 0 512K 3M 3M 1 512K   # realigned: [0,2M) moved whole, [2M,3.5M) new
                                            # table: +8 (PMD,PUD) +4; source: -12
    16         mmap 2 anon private 4K 0     # a VMA below the start blocks realignment
    16         mmap 2 anon private 3M 512K
    32         touch 2 512K 3M write 512K
    44         mremap 2 512K 3M 3M 3 512K   # dst: 2 new PTE + PMD + PUD = +16;
                                            # source slot 1 freed (-4), slot 0 kept by [0,4K)
    44         mmap 4 anon private 1M 0
    44         mmap 4 anon private 1M 3M
    56         touch 4 0 1M write
    60         touch 4 3M 1M write
    60         mremap 4 0 4M 4M 5 0         # 2 VMAs + the gap: +16 at dst, -16 at source
    60/EFAULT  mremap 5 1M 3M 3M 6 0        # starts in the gap: EFAULT, nothing moves
    60         mmap 7 anon private 4M
    76         touch 7 0 4M write
    76         mremap 7 0 4M 4M 7 6M        # same ID: 2 tables moved whole, no new upper
    """)
    m = ScriptMachine()
    for op in parse_text("mmap 4 anon private 1M 0\nmmap 4 anon private 1M 3M\n"
                         "mremap 4 0 4M 4M 5 0\n").ops:
        m.apply(op)
    assert m.maps() == ("5 0 1024 rw-p", "5 3072 4096 rw-p")  # the gap is preserved


def test_r17_mremap_dontunmap() -> None:
    expect("""
     0  mmap 0 anon private 4M 2M
    16  touch 0 2M 4M write
    24  mremap 0 2M 4M 4M 1 2M dontunmap  # aligned: 2 tables moved; dst PMD + PUD
    16  fork                              # source lost its anon_vma: only dst copied
    28  touch 0 2M 4K read                # source refaults (zero page): +1 PTE
    16  fork                              # still not copied
    32  touch 0 4M 4K write               # a write gives it an anon_vma again: +1 PTE
    32  fork                              # 2 PTE + PMD + PUD per ID
    32  mmap 2 anon private 4M
    48  mlock 2 0 4M
    56  mremap 2 0 4M 4M 3 0 dontunmap    # VM_LOCKED cleared on the source ...
    56  madvise 2 0 4M DONTNEED           # ... so DONTNEED is allowed (no EINVAL)
    56  mmap 4 file shared 2M
    68  madvise 4 4K 4K GUARD_INSTALL     # VM_MAYBE_GUARD on the file VMA
    76  mremap 4 0 2M 2M 5 0 dontunmap    # table moved whole; dst PMD + PUD
    64  munmap 5 0 2M
    56  fork                              # ID0: 32, ID3: 16, ID4 (guard, no PTE): PMD+PUD
    """)
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB)
    mm.mlock(BASE, 2 * MiB)
    assert mm.mremap(BASE, 2 * MiB, 2 * MiB, BASE + 4 * MiB, dontunmap=True) is None
    src, dst = mm.vmas
    # The source keeps VM_ACCOUNT (stable fix "mm/mremap: correctly account old
    # mapping after MREMAP_DONTUNMAP remap"); only VM_LOCKED is cleared.
    assert src.flags == ANON_RW and src.anon_vma is None
    assert dst.flags == ANON_RW | VM_LOCKED and dst.anon_vma is not None


def test_r17_dontunmap_source_keeps_vm_account() -> None:
    """An accountable mapping placed next to a DONTUNMAP source merges with it, so a
    later move takes both as one VMA: the partial last table of the first part is
    moved whole instead of copied (kernel: +8, two VMAs would give +12)."""
    script = parse_text("""
mmap 5 anon private 8M+624K
touch 5 0 8M+624K write 128K
mremap 5 0 8M+624K 8M+624K 6 78M dontunmap
mmap 5 anon private 100M+836K 8M+624K
maps
mremap 5 0 109M+436K 109M+436K 7 116M dontunmap
""")
    out = replay(script, check=True)
    assert [o.delta_kib for o in out] == [0, 28, 40, 40, 40, 48]
    assert out[4].maps == ("5 0 112052 rw-p", "6 79872 88688 rw-p")


FORK_CASES = {
    # name: (setup for VMA [2M,6M) of ID 0, child's VmPTE).  Copied VMAs cost
    # 2 PTE + PMD + PUD = 16; not copied ones cost 0.
    "anon_untouched": ("mmap 0 anon private 4M 2M", 0),
    "anon_zero_page_only": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M read", 0),
    "anon_one_write": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M read\ntouch 0 5M 4K write",
                       16),
    "anon_populate_read": ("mmap 0 anon private 4M 2M\nmadvise 0 2M 4M POPULATE_READ", 0),
    "anon_populate_write": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M read\n"
                            "madvise 0 2M 4K POPULATE_WRITE", 16),
    "anon_mlock_rw": ("mmap 0 anon private 4M 2M\nmlock 0 2M 4M", 16),
    "anon_mlock_ro": ("mmap 0 anon private 4M 2M ro\nmlock 0 2M 4M", 0),
    "anon_map_populate": ("mmap 0 anon private 4M 2M populate", 16),
    "anon_dontfork": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write\n"
                      "madvise 0 2M 4M DONTFORK", 0),
    "anon_wipeonfork": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write\n"
                        "madvise 0 2M 4M WIPEONFORK", 0),
    "anon_dofork_again": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write\n"
                          "madvise 0 2M 4M DONTFORK\nmadvise 0 2M 4M DOFORK", 16),
    "anon_ro_after_write": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4K write\n"
                            "mprotect 0 2M 4M r", 12),  # one PTE + PMD + PUD
    "anon_all_reclaimed": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4M write\n"
                           "madvise 0 2M 4M DONTNEED", 8),  # PMD + PUD without PTE
    "anon_empty_table": ("mmap 0 anon private 4M 2M\ntouch 0 2M 4K write\n"
                         "touch 0 4M 4K write\nmadvise 0 2M 4K DONTNEED", 16),
    "anon_guard_untouched": ("mmap 0 anon private 4M 2M\nmadvise 0 4M+4K 4K GUARD_INSTALL",
                             12),  # the guard's PTE + PMD + PUD
    "anon_shared_write": ("mmap 0 anon shared 4M 2M\ntouch 0 2M 4M write", 0),
    "file_shared_write": ("mmap 0 file shared 4M 2M\ntouch 0 2M 4M write", 0),
    "file_shared_guard": ("mmap 0 file shared 4M 2M\ntouch 0 2M 4M read\n"
                          "madvise 0 2M 4K GUARD_INSTALL", 16),
    "file_private_read": ("mmap 0 file private 4M 2M\ntouch 0 2M 4M read", 0),
    "file_private_cow": ("mmap 0 file private 4M 2M\ntouch 0 2M 4M read\n"
                         "touch 0 2M 4K write", 16),
    "shmem_shared_write": ("mmap 0 shmem shared 4M 2M\ntouch 0 2M 4M write", 0),
    "shmem_shared_guard_removed": ("mmap 0 shmem shared 4M 2M\ntouch 0 2M 4M write\n"
                                   "madvise 0 2M 4K GUARD_INSTALL\n"
                                   "madvise 0 2M 4K GUARD_REMOVE", 16),  # sticky (R19)
    "shmem_private_read": ("mmap 0 shmem private 4M 2M\ntouch 0 2M 4M read", 0),
    "shmem_private_cow": ("mmap 0 shmem private 4M 2M\ntouch 0 2M 4M read\n"
                          "touch 0 4M 4K write", 16),
}


@pytest.mark.parametrize("name", sorted(FORK_CASES))
def test_r18_fork_copies_only_anon_vma_or_guarded_vmas(name: str) -> None:
    setup, child = FORK_CASES[name]
    assert deltas(setup + "\nfork\n")[-1] == child


def test_r18_fork_copies_every_table_intersecting_the_vma() -> None:
    expect("""
     0  mmap 0 anon private 6M 1M       # [1M,7M): slots 0..3
     0  fork
    24  touch 0 1M 6M read 1M           # 4 PTE + PMD + PUD, zero pages only
     0  fork
    24  touch 0 6M 4K write             # one write: the whole VMA becomes copyable
    24  fork
    16  madvise 0 1M 6M DONTNEED        # [2M,6M) freed; slots 0 and 3 partly covered
    16  fork                            # 2 (empty) PTE + PMD + PUD
    16  mmap 1 anon private 4K 3M       # an anon VMA in slot [2M,4M) of ID 1 ...
    16  mmap 1 file shared 1M 2M
    28  touch 1 2M 1M read              # ... sharing its table with a file VMA
    28  touch 1 3M 4K write
    28  fork                            # the file VMA is not copied, its table is:
                                        # ID 0: 16, ID 1: PTE + PMD + PUD = 12
    """)


def test_r19_guard_flag_is_whole_vma_sticky_and_copied_at_fork() -> None:
    expect("""
     0  mmap 0 anon private 1M 0
     0  mmap 0 anon private 1M 2M
    12  madvise 0 2M+4K 4K GUARD_INSTALL
    12  mmap 0 anon private 1M 1M        # fills the gap: all three merge
    12  madvise 0 2M+4K 4K GUARD_REMOVE
    12  mprotect 0 512K 4K r
    12  mprotect 0 512K 4K rw
    12  fork                             # still VM_MAYBE_GUARD: PTE + PMD + PUD copied
    12  mremap 0 0 3M 3M 1 0             # aligned move: the table moves, dst PMD + PUD,
                                         # source ID 0 emptied
    12  fork
    """)
    m = ScriptMachine()
    for op in parse_text("mmap 0 anon private 1M 0\nmmap 0 anon private 1M 2M\n"
                         "madvise 0 2M+4K 4K GUARD_INSTALL\nmmap 0 anon private 1M 1M\n"
                         "madvise 0 2M+4K 4K GUARD_REMOVE\n"
                         "mremap 0 0 3M 3M 1 0\n").ops:
        m.apply(op)
    assert m.maps() == ("1 0 3072 rw-p",)
    assert m.mm.vmas[0].flags & VM_MAYBE_GUARD  # survives moving the (removed) markers


def test_r20_thp_disabled_hugepage_and_collapse() -> None:
    expect("""
     0         mmap 0 anon private 4M hugepage
    16         touch 0 0 4M write           # 4 KiB pages: 2 PTE + PMD + PUD
    16/EINVAL  madvise 0 0 4M COLLAPSE
    12         madvise 0 0 2M DONTNEED      # ordinary R6
    12         madvise 0 2M 4K DONTNEED     # no THP to split
    """)
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB)
    mm.madvise(BASE, 4 * MiB, "HUGEPAGE")
    mm.touch(BASE, 4 * MiB, write=True)
    assert all(t.huge == HUGE_NONE for t in mm.pte.values())


def test_r21_thp_deposit_counts_like_a_pte_table() -> None:
    expect("""
     0  mmap 0 anon private 6M 2M hugepage
    12  touch 0 2M 4K write            # PMD-mapped THP: deposit + PMD + PUD
    16  touch 0 4M+4K 4K read          # huge zero page: +1 deposit
    20  touch 0 6M 4K write
    16  madvise 0 2M 2M DONTNEED       # zap_huge_pmd frees the deposit
    16  madvise 0 4M 8K DONTNEED       # partial: split, deposit becomes a PTE table
    12  madvise 0 4M 2M DONTNEED       # ordinary (empty) table: reclaimed
    12  mprotect 0 7M 4K r             # split the THP at 6M: count unchanged
    12  madvise 0 6M 2M DONTNEED       # slot now holds 3 VMAs: kept (R9)
    16  touch 0 2M 4K write            # a new THP
    16  fork                           # child: the deposit + split table + PMD + PUD
    24  mremap 0 2M 2M 2M 1 4M         # aligned move carries the deposit; dst PMD + PUD
    24  fork                           # ID0: PTE + PMD + PUD, ID1: deposit + PMD + PUD
    24  munmap 1 4M+4K 4K              # split; slot still used: kept
    12  munmap 1 4M 2M                 # ID 1 empty: PTE + PMD + PUD
    12  mmap 2 anon private 3M 1M hugepage
    28  touch 2 1M 3M write            # [1M,2M) small pages, [2M,4M) a THP: 2 + PMD + PUD
    24  madvise 2 2M 2M DONTNEED
    """, thp=True)


def _huge_anon_then_huge_zero(size: int) -> AddressSpace:
    """THP on, a MADV_HUGEPAGE mapping of ``size`` at BASE: a write fault in its first
    2 MiB (a huge anon page), a read fault in its second (the huge zero page)."""
    mm = AddressSpace(thp_disabled=False)
    mm.mmap(BASE, size)
    mm.madvise(BASE, size, "HUGEPAGE")
    mm.touch(BASE, 4 * KiB, write=True)
    mm.touch(BASE + 2 * MiB, 4 * KiB, write=False)
    return mm


def test_r21_thp_state_of_tables() -> None:
    mm = _huge_anon_then_huge_zero(6 * MiB)
    s = BASE >> PTE_SHIFT
    assert (mm.pte[s].huge, mm.pte[s + 1].huge) == (HUGE_ANON, HUGE_ZERO)
    mm.touch(BASE + 2 * MiB, 4 * KiB, write=True)  # wp fault on the huge zero page
    assert mm.pte[s + 1].huge == HUGE_ANON
    mm.madvise(BASE + 4 * KiB, 4 * KiB, "DONTNEED")  # split: 511 anon entries left
    assert mm.pte[s].huge == HUGE_NONE
    assert bytes(mm.pte[s].entries) == bytes([E_ANON, E_NONE]) + bytes([E_ANON]) * 510
    assert mm.tables == 4


@pytest.mark.parametrize(("split", "anon_pages"), [
    ("mprotect", 0), ("madvise", 0), ("mlock", 1)])
def test_r21_vma_split_inside_thp_splits_the_pmd(split: str, anon_pages: int) -> None:
    mm = AddressSpace(thp_disabled=False)
    mm.mmap(BASE, 2 * MiB)
    mm.madvise(BASE, 2 * MiB, "HUGEPAGE")
    mm.touch(BASE, 4 * KiB, write=False)  # huge zero page
    if split == "mprotect":
        mm.mprotect(BASE + MiB, 4 * KiB, R)
    elif split == "madvise":
        mm.madvise(BASE + MiB, 4 * KiB, "RANDOM")
    else:
        mm.mlock(BASE + MiB, 4 * KiB)  # write-populates the page at 1M only
    mm.touch(BASE, 4 * KiB, write=True)  # COW of one zero page
    mm.madvise(BASE, 4 * KiB, "DONTNEED")  # and drop it again
    t = mm.pte[BASE >> PTE_SHIFT]
    assert (t.huge, bytes(t.entries).count(E_ANON)) == (HUGE_NONE, anon_pages)
    assert mm.class_count(TableClass.ZERO) == (1 if anon_pages == 0 else 0)


def test_r22_collapse_with_thp_enabled() -> None:
    expect("""
     0         mmap 0 anon private 4M 2M
    16         touch 0 2M 4M write
    16         madvise 0 2M 4M COLLAPSE     # anon: tables become deposits
    12         madvise 0 2M 2M DONTNEED     # frees the THP and its deposit
    12         mmap 1 shmem shared 6M
    32         touch 1 0 6M write 1M        # 3 PTE + PMD + PUD
    24         madvise 1 0 4M COLLAPSE      # shmem: 2 tables freed (no deposit)
    20         madvise 1 0 6M DONTNEED      # the third one
    20         mmap 2 file private 4M ro
    36         touch 2 0 4M read
    36/EINVAL  madvise 2 0 4M COLLAPSE      # ext4 file: EINVAL
    36         mmap 3 anon private 4M
    52         touch 3 0 4M read
    52/EINVAL  madvise 3 0 2M COLLAPSE      # zero pages only, no anon_vma
    """, thp=True)


def test_r23_effects_are_synchronous_and_deterministic() -> None:
    # Nothing is deferred: replaying any prefix of a script ends where the full
    # replay was after that op, and a second replay gives the same numbers.
    text = (DATA / "E18_mremap_move.script").read_text()
    full = deltas(text)
    assert deltas(text) == full
    lines = [ln for ln in text.splitlines() if ln.split("#", 1)[0].strip()]
    for k in range(1, len(lines) + 1):
        assert deltas("\n".join(lines[:k]) + "\n")[-1] == full[k - 1]


# R24 (kept in the README's page-table model section; RULES.md stops at R23): a
# PMD-sized folio in the shmem page cache is mapped with a PMD and no PTE table.


def test_r24_fault_maps_a_huge_shmem_folio_with_a_pmd() -> None:
    expect("""
     0         mmap 0 shmem shared 6M 2M                   # file [0,6M) at [2M,8M)
    20         touch 0 2M 6M write 1M                      # 3 PTE + PMD + PUD
    12         madvise 0 2M 4M COLLAPSE                    # file [0,4M): 2 tables freed, 2 PMDs
    12         touch 0 2M 4M read 64K                      # the PMDs map every page
    12         madvise 0 4M 2M DONTNEED                    # unmapped; the folio stays huge
    12         touch 0 5M 4K write                         # a shared write maps the PMD again
    12         mmap 1 shmem shared 2M 4M fd=0 foff=2M      # aligned view of a huge folio
    20         touch 1 4M 4K read                          # PUD + PMD, no PTE table
    20         mmap 2 shmem shared 2M 6M fd=0 foff=2M+4K   # file offset not 2 MiB-aligned
    32         touch 2 6M 4K read                          # PTEs
    32         mmap 3 shmem private 4M 2M fd=0 foff=2M
    40         touch 3 3M 4K read                          # a private read maps the PMD too
    44         touch 3 3M 4K write                         # COW: PMD split, a table for the copy
    48         touch 3 4M 4K write                         # COW on an unmapped THP: a table
    48         mmap 4 shmem shared 2M 2M fd=0 nohugepage
    60         touch 4 2M 4K read                          # VM_NOHUGEPAGE: PTEs
    60         mmap 5 shmem shared 2M 2M fd=0
    60         thp off
    72         touch 5 2M 4K read                          # prctl(PR_SET_THP_DISABLE): PTEs
    """, thp=True)


def test_r24_collapse_of_shmem() -> None:
    expect("""
     0         mmap 0 shmem shared 8M 2M
    20         touch 0 2M 6M write 512K      # 3 PTE + PMD + PUD
    12         madvise 0 2M 4M DONTNEED      # 2 tables freed; the cache keeps the pages
    12         madvise 0 2M 2M COLLAPSE      # cached pages are enough: PMD-mapped
    12/EINVAL  madvise 0 8M 2M COLLAPSE      # nothing cached there: SCAN_TRUNCATED
     8         madvise 0 4M 4M COLLAPSE      # [4M,6M) from the cache, [6M,8M) frees its table
     8         mmap 1 shmem shared 4M 2M fd=0
    16         madvise 1 2M 4M COLLAPSE      # huge already, no table: PUD + PMD allocated
    16         mmap 2 shmem shared 4M 0
    28         touch 2 0 4K write
    24/EINVAL  madvise 2 0 4M COLLAPSE       # [0,2M) done, then [2M,4M) empty: stops
    24         touch 2 0 2M read             # PMD-mapped
    24         mmap 3 shmem private 4M 0
    40         touch 3 0 4M read 1M          # 2 PTE + PMD + PUD
    40         touch 3 2M 4K write           # a COW page in [2M,4M)
    36/EINVAL  madvise 3 0 4M COLLAPSE       # [0,2M) done, [2M,4M): SCAN_FAIL
    36         mmap 4 shmem shared 4M 0
    52         touch 4 0 4M write 1M
    52         madvise 4 2M+8K 4K GUARD_INSTALL
    48/EINVAL  madvise 4 0 4M COLLAPSE       # [0,2M) done, the marker: skipped
    48         mmap 5 shmem shared 2M+4K 1M
    64         touch 5 1M 2M+4K write
    64/EINVAL  madvise 5 1M 2M+4K COLLAPSE   # no aligned 2 MiB fits the VMA's end
    """, thp=True)


def test_r24_collapse_retracts_the_tables_of_other_mappings() -> None:
    # collapse_file() unmaps the old pages everywhere; retract_page_tables() frees the
    # table of every aligned mapping without anon_vma or VM_MAYBE_GUARD.
    expect("""
     0         mmap 0 shmem shared 2M 6M
    12         touch 0 6M 2M write 256K
    12         mmap 1 shmem shared 2M 2M fd=0              # aligned, shared
    24         touch 1 2M 4K read
    24         mmap 2 shmem private 2M 2M fd=0             # aligned, private, only read
    36         touch 2 2M 4K read
    36         mmap 3 shmem private 2M 2M fd=0             # written: anon_vma
    48         touch 3 3M 4K write
    48         mmap 4 shmem shared 2M 2M fd=0              # VM_MAYBE_GUARD (sticky)
    60         touch 4 2M 4K read
    60         madvise 4 3M 4K GUARD_INSTALL
    60         madvise 4 3M 4K GUARD_REMOVE
    60         mmap 5 shmem shared 2M 1M fd=0              # not 2 MiB-aligned
    72         touch 5 1M 4K read
    60         madvise 0 6M 2M COLLAPSE                    # ID0, ID1, ID2 lose their tables
    60         touch 1 2M 2M read 256K                     # PMD-mapped
    60         touch 2 2M 2M read 256K
    """, thp=True)


def test_r24_zaps_and_vma_splits_unmap_the_pmd() -> None:
    expect("""
     0         mmap 0 shmem shared 10M 2M
    28         touch 0 2M 10M write 1M       # 5 PTE + PMD + PUD
     8         madvise 0 2M 10M COLLAPSE
     8         madvise 0 3M 1M DONTNEED      # partial zap: unmapped, still huge
     8         touch 0 2M 4K read            # PMD again
     8         madvise 0 4M 2M DONTNEED
     8         touch 0 4M 4K read
     8         mprotect 0 6M+1M 4K r         # a VMA boundary inside [6M,8M)
    12         touch 0 6M 4K read            # PTEs
    12         mprotect 0 6M+1M 4K rw        # merged again
     8         madvise 0 6M 2M DONTNEED
     8         touch 0 6M 4K read            # PMD
     8         mprotect 0 8M 2M r            # the whole 2 MiB: the PMD stays
     8         touch 0 8M 4K read
     8         munmap 0 11M 1M               # partial munmap
    12         touch 0 10M 4K read           # PTEs
    12         mlock 0 2M 2M                 # the PMD maps it already
    12         madvise 0 2M 2M DONTNEED_LOCKED
    16         mlock 0 4M 1M                 # VMA split inside [4M,6M), then populated
    """, thp=True)


def test_r24_fork_copies_no_file_thp() -> None:
    expect("""
     0         mmap 0 shmem private 6M 2M
    20         touch 0 2M 6M read 1M
    12         madvise 0 2M 4M COLLAPSE
     0         fork                          # no anon_vma: not copied
    12         touch 0 7M 4K write           # anon_vma
    12         fork                          # PUD + PMD + the table of [6M,8M) only
    12         touch 0 2M 4M read 1M         # the parent's PMDs are still there
    12         mmap 1 shmem shared 4M 2M
    28         touch 1 2M 4M write 2M
    20         madvise 1 2M 4M COLLAPSE
    24         madvise 1 5M 4K GUARD_INSTALL # zaps one PMD; a table with a marker
    24         fork                          # 12 (ID0) + 12 (ID1: PUD + PMD + 1 PTE)
    """, thp=True)


def test_r24_mremap_moves_or_splits_the_pmd() -> None:
    expect("""
     0         mmap 0 shmem shared 10M 2M
    28         touch 0 2M 10M write 1M
     8         madvise 0 2M 10M COLLAPSE
    16         mremap 0 2M 2M 2M 1 2M        # aligned: the PMD moves; dst PUD + PMD
    16         mremap 0 4M 2M 2M 1 6M+8K     # unaligned: split, no destination table
    20         touch 1 6M+8K 4K read         # misaligned now: PTEs
    28         mremap 0 6M 1M 1M 2 0         # half a THP: split; dst PUD + PMD
    32         touch 2 0 4K read
    36         touch 0 7M 4K read            # [7M,8M) alone: PTEs
    36         mremap 0 8M 2M 2M 0 20M dontunmap
    36         touch 0 8M 4K read            # the source faults the PMD in again
    36         touch 0 20M 4K read
    36         madvise 0 10M 2M PAGEOUT      # unmapped, not split
    40         mremap 0 10M 2M 2M 3 2M       # nothing mapped: only the dst PUD
    44         touch 3 2M 4K read            # dst PMD table + the PMD
    """, thp=True)


def test_r24_file_ops_and_partial_cold_split_the_folio() -> None:
    expect("""
     0         mmap 0 shmem shared 14M 2M
    36         touch 0 2M 14M write 1M       # 7 PTE + PMD + PUD
     8         madvise 0 2M 14M COLLAPSE
     8         punch 0 1M 4K                 # splits the folio of [2M,4M)
     8         madvise 0 2M 2M DONTNEED
    12         touch 0 2M 4K read            # PTEs
    12         madvise 0 4M+4K 8K REMOVE     # splits
    16         touch 0 4M 4K read
    16         madvise 0 6M 2M REMOVE        # the whole folio goes
    20         touch 0 6M 4K write           # a small page: PTEs
    20         madvise 0 8M 1M COLD          # partial: splits
    20         madvise 0 8M 2M DONTNEED
    24         touch 0 8M 4K read
    24         madvise 0 10M 2M PAGEOUT      # whole: unmapped, not split
    24         touch 0 10M 4K read           # PMD
    24         madvise 0 12M 2M COLD         # whole: nothing
    24         madvise 0 12M 2M DONTNEED
    24         touch 0 12M 4K read           # PMD
    24         truncate 0 12M+4K             # splits the folio of [14M,16M)
    24         madvise 0 14M 2M DONTNEED
    28         touch 0 14M 4K read           # PTEs
    """, thp=True)


def test_r24_pte_mapped_folio_is_mapped_whole_and_split_when_partly_in_range() -> None:
    expect("""
     0         mmap 0 shmem shared 6M 2M
    20         touch 0 2M 6M write 1M
     8         madvise 0 2M 6M COLLAPSE
     8         madvise 0 2M 6M DONTNEED
     8         thp off
    12         touch 0 3M 4K read            # the whole folio by PTEs (fault-around)
    16         touch 0 4M 4K write           # the whole folio (finish_fault)
    16         thp on
    16         madvise 0 2M 2M COLD          # mapped whole inside the range: not split
    16         madvise 0 4M+4K 2M-4K COLD    # only part of it inside the range: split
     8         madvise 0 2M 4M DONTNEED
     8         touch 0 2M 4K read            # PMD
    12         touch 0 4M 4K read            # PTEs
    """, thp=True)


def test_r24_pmd_across_the_file_end() -> None:
    expect("""
     0         mmap 0 shmem shared 6M 2M
    20         touch 0 2M 6M write 1M
    20         truncate 0 3M+4K                # the end inside the folio of [4M,6M)
    16         madvise 0 4M 2M COLLAPSE
    16         touch 0 5M+512K 4K write        # inside the PMD: no fault
    16         madvise 0 4M 2M DONTNEED
    16/SIGBUS  touch 0 5M+128K 4K read         # window [5M+128K,...) past the end
    16         touch 0 5M+60K 4K read          # window [5M,5M+64K): maps the PMD
    16         madvise 0 4M 2M DONTNEED
    16/SIGBUS  touch 0 5M+8K 4K write          # a write fault past the end
    """, thp=True)


def test_r24_state_rss_and_classes() -> None:
    """What a file THP PMD is in the model: a slot in ``file_thp`` (no PTE table, no
    reclaim class, 512 pages of RSS), over a chunk in its file's ``huge`` set."""
    mm = AddressSpace(thp_disabled=False)
    f = BackingFile("shmem", GiB)
    slot = BASE >> PTE_SHIFT
    assert mm.mmap(BASE, 4 * MiB, kind="shmem", shared=True, file=f) is None
    assert mm.touch(BASE, 4 * MiB, write=True) is None
    assert (mm.rss_pages, mm.class_counts(), sorted(f.cache)) == (1024, (0, 0, 2, 0), [0, 1])
    assert mm.madvise(BASE, 2 * MiB, "COLLAPSE") is None
    assert mm.file_thp == {slot} and f.huge == {0} and slot not in mm.pte
    assert (mm.rss_pages, mm.class_counts(), mm.tables) == (1024, (0, 0, 1, 0), 3)
    assert mm.reclaim_table(slot, frozenset(TableClass)) == -1  # no table to reclaim
    assert mm.madvise(BASE + 4 * KiB, 4 * KiB, "DONTNEED") is None  # partial zap
    assert (mm.file_thp, mm.rss_pages, f.huge) == (set(), 512, {0})
    assert mm.touch(BASE + 8 * KiB, KiB, write=False) is None  # refault: PMD again
    assert (mm.file_thp, mm.rss_pages, mm.tables) == ({slot}, 1024, 3)
    mm.punch(f, 0, PAGE)  # splits the folio and unmaps it everywhere
    assert (mm.file_thp, f.huge, f.cache[0].count(1)) == (set(), set(), ENTRIES - 1)
    assert mm.touch(BASE + 8 * KiB, KiB, write=False) is None  # PTEs now, one page
    assert (mm.rss_pages, mm.class_counts()) == (512 + 1, (0, 0, 2, 0))
    mm.check_invariants()
    # A private mapping: a read maps the PMD, a COW write replaces it with a table.
    p = AddressSpace(thp_disabled=False)
    assert p.mmap(BASE + 2 * MiB, 2 * MiB, kind="shmem", file=f, foff=2 * MiB) is None
    f.collapse(1)
    assert p.touch(BASE + 2 * MiB, PAGE, write=False) is None
    assert (p.file_thp, p.rss_pages, p.tables) == ({slot + 1}, 512, 2)
    assert p.touch(BASE + 2 * MiB, PAGE, write=True) is None
    assert (p.file_thp, p.rss_pages, p.class_counts()) == (set(), 1, (0, 0, 0, 1))
    p.check_invariants()
    p.exit()
    mm.exit()
    assert mm.file_thp == set() and mm.rss_pages == 0


def test_r24_backing_file_page_cache() -> None:
    f = BackingFile("shmem", GiB)
    f.cache_pages(ENTRIES - 2, 3, 3)  # pages 510, 513, 516: across a chunk boundary
    assert {c: [i for i, b in enumerate(pg) if b] for c, pg in f.cache.items()} == {
        0: [510], 1: [1, 4]}
    f.collapse(2)
    assert f.huge == {2} and f.cache[2] == b"\x01" * ENTRIES
    assert f.huge_split_by(4 * MiB + PAGE, 4 * MiB + 2 * PAGE) == [2]  # part of it
    assert f.huge_split_by(4 * MiB, 6 * MiB) == []  # all of it: removed, not split
    f.drop_pages(4 * MiB + 100, 4 * MiB + 3 * PAGE)  # whole pages 1025 and 1026 only
    assert 2 not in f.huge and f.cache[2].count(0) == 2
    f.drop_pages(0, 4 * MiB)
    assert sorted(f.cache) == [2]  # chunks with no page left are dropped
    ext4 = BackingFile("file", GiB)
    ext4.cache_pages(0, 1, 10)  # ext4 readahead is not followed: nothing kept
    assert ext4.cache == {}


def test_madvise_over_a_hole_applies_to_mapped_parts_and_returns_enomem() -> None:
    expect("""
     0         mmap 0 anon private 2M 0
     0         mmap 0 anon private 2M 4M
    12         touch 0 0 2M write
    16         touch 0 4M 2M write
     8/ENOMEM  madvise 0 0 8M DONTNEED       # both mapped slots freed, then ENOMEM
     8/ENOMEM  madvise 0 0 8M DONTFORK       # flags set on both VMAs
     0         fork                          # so nothing is copied
    16/ENOMEM  madvise 0 1M 6M GUARD_INSTALL # markers in both VMAs: 2 PTE
    16/SIGSEGV touch 0 4M 4K read
    16/ENOMEM  mprotect 0 0 8M r             # [0,2M) changed before the hole
    16/ENOMEM  mlock 0 0 8M
    """)


# ===================================================== 3. reclaim-class counters

_PINNING = frozenset({E_ANON, E_SWAP, E_GUARD, E_UFFD_WP})


_BRUTE_CACHE: dict[tuple[int, bytes], TableClass] = {}


def brute_class(t: PteTable) -> TableClass:
    """A table's class from its entries, written independently of PteTable.classify
    (memoized on the table's content: most tables of a script look alike)."""
    key = (t.huge, bytes(t.entries))
    cls = _BRUTE_CACHE.get(key)
    if cls is None:
        cls = _BRUTE_CACHE[key] = _brute_class(*key)
    return cls


def _brute_class(huge: int, entries: bytes) -> TableClass:
    if huge == HUGE_ANON:
        return TableClass.PINNED
    if huge == HUGE_ZERO:
        return TableClass.ZERO
    assert len(entries) == ENTRIES
    kinds = set(entries)
    if kinds == {E_NONE}:
        return TableClass.EMPTY
    if kinds & _PINNING:
        return TableClass.PINNED
    if E_FILE in kinds:
        return TableClass.FILE
    assert kinds <= {E_NONE, E_ZERO}, kinds
    return TableClass.ZERO


def assert_classes(mm: AddressSpace, where: str = "") -> None:
    mm.check_invariants()
    want: dict[TableClass, set[int]] = {c: set() for c in TableClass}
    for slot, t in mm.pte.items():
        want[brute_class(t)].add(slot)
    got = {c: set(mm.tables_in_class(c)) for c in TableClass}
    assert got == want, where
    assert mm.class_counts() == tuple(len(want[c]) for c in TableClass), where
    assert all(mm.class_count(c) == len(want[c]) for c in TableClass), where


def _class_corpus() -> list[tuple[str, Script]]:
    out = [(p.stem, parse_file(p)) for p in EXPERIMENTS]
    out += [(n, parse_text(t, n)) for n, t in generate_corpus(8675309, 60)]
    out += [(f"thp-{n}", parse_text(t, n)) for n, t in
            generate_corpus(8675310, 12, ("allocator", "balloon", "hog", "file"),
                            thp_share=1.0)]
    return out


CLASS_CORPUS = _class_corpus()


def test_class_corpus_covers_every_class_and_thp() -> None:
    assert len(CLASS_CORPUS) == 53 + 60 + 12
    assert sum(s.thp for _, s in CLASS_CORPUS) >= 12 + 3 + 9  # E43-E48, E50-E52 are THP ones


@pytest.mark.parametrize("name_script", CLASS_CORPUS, ids=[n for n, _ in CLASS_CORPUS])
def test_class_counters_match_brute_force_after_every_op(
        name_script: tuple[str, Script]) -> None:
    name, script = name_script
    m = ScriptMachine(thp=script.thp)
    for op in script.ops:
        where = f"{name} line {op.lineno}: {op.text}"
        if op.name == "fork":
            child = m.mm.fork()
            assert_classes(child, "child of " + where)
            child.exit()
        m.apply(op)
        assert_classes(m.mm, where)


def test_class_counters_see_every_class_somewhere_in_the_corpus() -> None:
    seen: set[TableClass] = set()
    for _, script in CLASS_CORPUS[:60]:
        m = ScriptMachine(thp=script.thp)
        for op in script.ops:
            m.apply(op)
            seen |= {t.cls for t in m.mm.pte.values()}
    assert seen == set(TableClass)


def _slots(*addrs: int) -> set[int]:
    return {a >> PTE_SHIFT for a in addrs}


def test_class_small_dontneeds_leave_an_empty_table_r07() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB)
    mm.touch(BASE, 4 * MiB, write=True)
    assert mm.class_counts() == (0, 0, 0, 2)
    for off in range(0, 2 * MiB, 512 * KiB):
        mm.madvise(BASE + off, 512 * KiB, "DONTNEED")
    assert mm.class_counts() == (1, 0, 0, 1)
    assert mm.tables_in_class(TableClass.EMPTY) == _slots(BASE)
    assert mm.tables_in_class(TableClass.PINNED) == _slots(BASE + 2 * MiB)
    assert_classes(mm)


def test_class_read_touched_anon_is_zero_and_written_is_pinned() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 6 * MiB)
    mm.touch(BASE, 4 * MiB, write=False)
    assert mm.class_counts() == (0, 2, 0, 0)
    mm.touch(BASE + 2 * MiB + 8 * KiB, 4 * KiB, write=True)  # one anon page pins it
    assert mm.tables_in_class(TableClass.ZERO) == _slots(BASE)
    assert mm.tables_in_class(TableClass.PINNED) == _slots(BASE + 2 * MiB)
    mm.madvise(BASE + 2 * MiB + 8 * KiB, 4 * KiB, "DONTNEED")  # back to zero pages only
    assert mm.class_counts() == (0, 2, 0, 0)
    assert_classes(mm)


def test_class_read_touched_file_is_file() -> None:
    f = BackingFile("file", 64 * GiB)
    s = BackingFile("shmem", 64 * GiB)
    mm = AddressSpace()
    mm.mmap(BASE, 2 * MiB, kind="file", shared=True, file=f)
    mm.mmap(BASE + 2 * MiB, 2 * MiB, kind="file", file=f)
    mm.mmap(BASE + 4 * MiB, 2 * MiB, kind="shmem", shared=True, file=s)
    mm.touch(BASE, 6 * MiB, write=False, stride=64 * KiB)
    assert mm.class_counts() == (0, 0, 3, 0)
    mm.touch(BASE, 4 * KiB, write=True)  # MAP_SHARED write: still page cache
    assert mm.class_count(TableClass.FILE) == 3
    mm.touch(BASE + 2 * MiB, 4 * KiB, write=True)  # private COW: an anon page
    assert mm.tables_in_class(TableClass.PINNED) == _slots(BASE + 2 * MiB)
    assert mm.tables_in_class(TableClass.FILE) == _slots(BASE, BASE + 4 * MiB)
    assert_classes(mm)


def test_class_zero_and_file_entries_in_one_table_is_file() -> None:
    f = BackingFile("file", 64 * GiB)
    mm = AddressSpace()
    mm.mmap(BASE, MiB)
    mm.mmap(BASE + MiB, MiB, kind="file", file=f, prot=R)
    mm.touch(BASE, 2 * MiB, write=False)
    assert mm.class_counts() == (0, 0, 1, 0)
    assert_classes(mm)


def _shared_file_mapping(kind: str, write: bool,
                         prot: int = RW) -> tuple[BackingFile, AddressSpace]:
    """A 64 GiB ``kind`` file, its first 4 MiB mapped MAP_SHARED at BASE and touched
    (written with ``write``): two PTE tables of page-cache entries."""
    f = BackingFile(kind, 64 * GiB)
    mm = AddressSpace()
    mm.mmap(BASE, 4 * MiB, kind=kind, shared=True, file=f, prot=prot)
    mm.touch(BASE, 4 * MiB, write=write)
    return f, mm


def test_class_guard_marker_pins_and_remove_empties() -> None:
    _, mm = _shared_file_mapping("file", write=False)
    mm.madvise(BASE + 3 * MiB, 4 * KiB, "GUARD_INSTALL")
    assert mm.tables_in_class(TableClass.PINNED) == _slots(BASE + 2 * MiB)
    assert mm.tables_in_class(TableClass.FILE) == _slots(BASE)
    mm2 = AddressSpace()
    mm2.mmap(BASE, 2 * MiB)
    mm2.madvise(BASE + 4 * KiB, 4 * KiB, "GUARD_INSTALL")  # markers only
    assert mm2.class_counts() == (0, 0, 0, 1)
    mm2.madvise(BASE, 2 * MiB, "GUARD_REMOVE")
    assert mm2.class_counts() == (1, 0, 0, 0)
    assert_classes(mm)
    assert_classes(mm2)


def test_class_pageout_of_clean_file_table_is_empty() -> None:
    _, mm = _shared_file_mapping("file", write=False, prot=R)
    assert mm.class_counts() == (0, 0, 2, 0)
    assert mm.madvise(BASE, 2 * MiB, "PAGEOUT") is None
    assert mm.class_counts() == (1, 0, 1, 0)
    assert mm.tables_in_class(TableClass.EMPTY) == _slots(BASE)
    assert mm.tables == 4  # R13: the table itself stays
    assert_classes(mm)


def test_class_punch_and_truncate_empty_file_tables() -> None:
    f, mm = _shared_file_mapping("shmem", write=True)
    mm.punch(f, 0, 2 * MiB)
    assert mm.class_counts() == (1, 0, 1, 0)
    mm.truncate(f, 0)
    assert mm.class_counts() == (2, 0, 0, 0)
    assert_classes(mm)


def test_class_thp_anon_is_pinned_and_huge_zero_is_zero() -> None:
    mm = _huge_anon_then_huge_zero(4 * MiB)
    assert mm.tables_in_class(TableClass.PINNED) == _slots(BASE)
    assert mm.tables_in_class(TableClass.ZERO) == _slots(BASE + 2 * MiB)
    mm.madvise(BASE + 2 * MiB, 8 * KiB, "DONTNEED")  # split: 510 zero entries left
    assert mm.tables_in_class(TableClass.ZERO) == _slots(BASE + 2 * MiB)
    assert_classes(mm)


def test_class_tables_in_class_returns_exact_slot_indices() -> None:
    f = BackingFile("file", 64 * GiB)
    mm = AddressSpace()
    mm.mmap(BASE, 8 * MiB)
    mm.mmap(BASE + GiB, 2 * MiB, kind="file", shared=True, file=f)
    mm.touch(BASE, 2 * MiB, write=True)              # slot 0: pinned
    mm.touch(BASE + 2 * MiB, 2 * MiB, write=False)   # slot 1: zero
    mm.touch(BASE + 4 * MiB, 4 * KiB, write=True)
    mm.madvise(BASE + 4 * MiB, 4 * KiB, "DONTNEED")  # slot 2: empty
    mm.touch(BASE + GiB, 4 * KiB, write=False)       # slot 512: file
    first = BASE >> PTE_SHIFT
    assert mm.tables_in_class(TableClass.PINNED) == {first}
    assert mm.tables_in_class(TableClass.ZERO) == {first + 1}
    assert mm.tables_in_class(TableClass.EMPTY) == {first + 2}
    assert mm.tables_in_class(TableClass.FILE) == {first + 512}
    assert set(mm.pte) == {first, first + 1, first + 2, first + 512}
    assert mm.class_counts() == (1, 1, 1, 1)
    mm.munmap(BASE + GiB, 2 * MiB)  # freeing a table removes it from its class
    assert mm.tables_in_class(TableClass.FILE) == set()
    mm.madvise(BASE, 4 * MiB, "DONTNEED")
    assert mm.tables_in_class(TableClass.EMPTY) == {first + 2}
    assert mm.class_counts() == (1, 0, 0, 0)
    assert_classes(mm)


# ===================================================================== 4. scale


@pytest.mark.timeout(20)
def test_scale_100_tib_costs_only_its_populated_tables() -> None:
    mm = AddressSpace()
    size = 100 * TiB  # [16 TiB, 116 TiB): below the 128 TiB of 4-level paging
    assert mm.mmap(BASE, size) is None
    assert mm.tables == 0
    pages = [BASE, BASE + 50 * TiB + 6 * MiB, BASE + size - PAGE]
    for a in pages:
        assert mm.touch(a, PAGE, write=True) is None
    # 3 PTE tables, and each page lies in its own GiB and its own 512 GiB.
    assert set(mm.pte) == _slots(*pages)
    assert (len(mm.pte), len(mm.pmd), len(mm.pud)) == (3, 3, 3)
    child = mm.fork()
    assert child.tables == 9
    child.exit()
    assert mm.madvise(BASE, size, "DONTNEED") is None
    assert (len(mm.pte), len(mm.pmd), len(mm.pud)) == (0, 3, 3)  # R12
    assert mm.touch(BASE, size, write=False, stride=25 * TiB) is None
    # 4 accesses at 0, 25, 50, 75 TiB: 4 PTE; 2 new PMD + 2 new PUD (25, 75 TiB).
    assert (len(mm.pte), len(mm.pmd), len(mm.pud)) == (4, 5, 5)
    assert mm.mprotect(BASE, size, R) is None
    assert mm.munmap(BASE, size) is None
    assert mm.tables == 0 and mm.vmas == []
    mm.check_invariants()


@pytest.mark.timeout(20)
def test_scale_huge_partial_unmap_and_move() -> None:
    mm = AddressSpace()
    mm.mmap(BASE, 40 * TiB)
    pages = [BASE, BASE + 20 * TiB + 2 * MiB, BASE + 40 * TiB - PAGE]
    for a in pages:
        mm.touch(a, PAGE, write=True)
    assert mm.tables == 9
    # Move 40 TiB by 50 TiB: GiB-aligned on both sides, so the PMD tables move
    # whole; 3 dst PUD are allocated and the 3 emptied source PUD freed.
    assert mm.mremap(BASE, 40 * TiB, 40 * TiB, BASE + 50 * TiB) is None
    assert set(mm.pte) == _slots(*(a + 50 * TiB for a in pages))
    assert (len(mm.pte), len(mm.pmd), len(mm.pud)) == (3, 3, 3)
    # Unmap all but the first 4 KiB: the first table, its PMD and PUD stay.
    new = BASE + 50 * TiB
    assert mm.munmap(new + PAGE, 40 * TiB - PAGE) is None
    assert set(mm.pte) == _slots(new)
    assert mm.tables == 3
    mm.check_invariants()


@pytest.mark.timeout(20)
def test_scale_script_level_100_tib_over_many_ids() -> None:
    # 200 IDs x 512 GiB = 100 TiB of norsv mappings, 3 pages touched.
    lines = [f"mmap {i} anon private 512G norsv" for i in range(200)]
    lines += ["touch 0 0 4K write", "touch 100 1G 4K write", "touch 199 512G-4K 4K read"]
    lines += [f"madvise {i} 0 512G DONTNEED" for i in range(200)]
    lines += [f"munmap {i} 0 512G" for i in range(200)]
    got = deltas("\n".join(lines) + "\n")
    assert got[199] == 0
    assert got[200:203] == [12, 24, 36]  # each page: PTE + PMD + PUD in its own ID
    assert got[402] == 24  # after all DONTNEEDs: 3 PMD + 3 PUD (R12)
    assert got[-1] == 0
