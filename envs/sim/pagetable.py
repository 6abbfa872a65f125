"""A process address space with a 4-level page-table hierarchy that follows Linux.

The model reproduces the kernel's page-table *allocation and freeing* rules as
measured on Linux 6.18 (``shared/kernel/RULES.md``; rule numbers are cited as
``R6`` etc. in comments): VMAs with kernel-like split and merge, lazy top-down
table allocation on faults and populate paths, the 6.14+ on-zap reclaim of PTE
tables by ``MADV_DONTNEED``, floor/ceiling freeing on every unmap path, mremap
moves (whole-table moves, per-extent allocation, realignment, DONTUNMAP), the
fork copy rules, THP deposits and collapse, and file THPs (R24): a PMD-sized
folio in the shmem page cache is mapped with one PMD and no PTE table.

Tables are kept sparsely, keyed by the address they map, so the cost of an op
grows with the tables it touches and never with the mapped size: mapping
128 TiB costs what mapping 1 GiB costs.  Only PTE tables carry entries (one byte
per entry); PMD and PUD tables are sets of indices.

Each PTE table also has a *class*, kept incrementally per address space so that
reclaim can ask for candidates without a scan:

* ``EMPTY``: every entry none;
* ``ZERO``: only none or shared-zeropage entries (or a huge zero page);
* ``FILE``: only none, zeropage or file page-cache entries, at least one file
  entry (reconstructable from the page cache);
* ``PINNED``: at least one anon page, swap entry or marker (or an anon THP).

System calls return ``None`` on success or the errno/signal name on failure
(``"EINVAL"``, ``"SIGSEGV"``...).  A failed call may have had partial effects,
exactly as in the kernel (for example madvise applies to every mapped VMA of
its range and then reports ``ENOMEM`` for the holes).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import IntEnum

#: The kernel rules this model implements (../shared/kernel/RULES.md R1-R23,
#: and R24, file THPs, documented in the README's page-table model section;
#: measured on Linux 6.18 with CONFIG_PT_RECLAIM=y).  Exports record it: bump
#: it whenever a rule is added or changed, since a rule tuned on one model may
#: not carry over to another.
MODEL_RULES_VERSION = "linux-6.18/R1-R24/1"

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
PTE_SHIFT = 21  # one PTE table maps 2 MiB
PMD_SHIFT = 30  # one PMD table maps 1 GiB
PUD_SHIFT = 39  # one PUD table maps 512 GiB
PTE_SPAN = 1 << PTE_SHIFT
PMD_SPAN = 1 << PMD_SHIFT
PUD_SPAN = 1 << PUD_SHIFT
ENTRIES = 512
TABLE_KIB = 4
TASK_SIZE = 1 << 47  # 128 TiB: 4-level paging
#: fault_around_bytes (mm/memory.c, default 64 KiB): a read fault maps the cached
#: pages of this aligned window around it (do_fault_around()).
FAULT_AROUND = 64 << 10

# PTE entry states (one byte each).
E_NONE, E_ANON, E_ZERO, E_FILE, E_SWAP, E_GUARD, E_UFFD_WP = range(7)
MARKERS = (E_GUARD, E_UFFD_WP)

# bytes.translate tables for bulk entry updates.
_IDENTITY = bytes(range(256))
_READ_ANON = bytes([E_ZERO]) + _IDENTITY[1:]  # none -> zeropage, others stay
_READ_FILE = bytes([E_FILE]) + _IDENTITY[1:]  # none -> page cache
_ZAP = bytes([E_NONE] * E_GUARD) + bytes([E_GUARD, E_UFFD_WP]) + _IDENTITY[7:]  # keeps markers
_ZAP_ALL = bytes(256)  # munmap drops markers too
_DROP_FILE = bytes([E_NONE, E_ANON, E_ZERO, E_NONE]) + _IDENTITY[4:]  # page cache unmapped
_DROP_GUARD = _IDENTITY[:E_GUARD] + bytes([E_NONE]) + _IDENTITY[E_GUARD + 1:]
# One byte per entry, 1 where the entry is page cache / anything but none: read as a
# little-endian int these are the page masks of ``AddressSpace.kept`` (bit 8k is page k).
_IS_FILE = bytes(1 if k == E_FILE else 0 for k in range(256))
_NOT_NONE = bytes([0]) + bytes([1]) * 255

# VMA flags.  Protection bits share the word, as in vm_flags.
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_ACCOUNT = 0x10
VM_NORESERVE = 0x20
VM_LOCKED = 0x40
VM_DONTCOPY = 0x80
VM_WIPEONFORK = 0x100
VM_HUGEPAGE = 0x200
VM_NOHUGEPAGE = 0x400
VM_SEQ_READ = 0x800
VM_RAND_READ = 0x1000
VM_MAYBE_GUARD = 0x2000  # sticky, never blocks a merge (R19)
VM_UFFD_MISSING = 0x4000
VM_UFFD_WP = 0x8000
VM_PROT = VM_READ | VM_WRITE | VM_EXEC
_MERGE_IGNORED = VM_MAYBE_GUARD

# Huge PMD state of a PTE-table slot (the table is the THP's deposit).
HUGE_NONE, HUGE_ANON, HUGE_ZERO = 0, 1, 2


#: ``AddressSpace.zap_listener``: (the address space, the zapped PTE slots, whether a
#: MADV_DONTNEED zapped them).
ZapListener = Callable[["AddressSpace", list[int], bool], None]


class TableClass(IntEnum):
    """Reclaim class of a PTE table (see the module docstring)."""

    EMPTY = 0
    ZERO = 1
    FILE = 2
    PINNED = 3


_CLASSES = tuple(TableClass)


class BackingFile:
    """A file or shmem object that mappings share (page cache lives here).

    For shmem the page cache is followed per 2 MiB-aligned *chunk* of the file
    (index ``file offset >> 21``): which of its 512 pages are cached, and which
    chunks one PMD-sized folio holds (R24).  ``MADV_COLLAPSE`` creates such a
    folio, a fault maps it with a PMD, and punch, truncate, ``REMOVE`` and a
    partial ``COLD``/``PAGEOUT`` split or drop it.  Regular files (``file``)
    keep no page-cache state: their readahead, and so their large folios, are
    not followed (see the README).
    """

    _ids = itertools.count(1)

    def __init__(self, kind: str, size: int, anon: bool = False) -> None:
        self.kind = kind  # "file" (ext4-like) or "shmem"
        self.size = size
        self.anon = anon  # MAP_SHARED|MAP_ANONYMOUS object
        self.ident = next(self._ids)
        # Address spaces that map this file; punch/truncate zap all of them.
        self.mappers: set[AddressSpace] = set()
        # shmem only: chunk -> one byte per page, 1 = cached.  A chunk is kept
        # only while it holds a page (collapse needs one: SCAN_TRUNCATED).
        self.cache: dict[int, bytearray] = {}
        # Chunks held by one PMD-sized folio (all 512 pages cached).
        self.huge: set[int] = set()

    def __repr__(self) -> str:
        return f"BackingFile({self.kind}#{self.ident}, size={self.size})"

    def cache_pages(self, first: int, step: int, count: int) -> None:
        """File pages ``first + k*step`` (k < count) enter the page cache: any
        successful fault on shmem (read or write, shared or private) allocates
        its page (shmem_fault)."""
        if self.kind != "shmem":
            return
        while count > 0:
            chunk, off = divmod(first, ENTRIES)
            n = min(count, (ENTRIES - 1 - off) // step + 1)
            pages = self.cache.get(chunk)
            if pages is None:
                pages = self.cache[chunk] = bytearray(ENTRIES)
            pages[off:off + (n - 1) * step + 1:step] = b"\x01" * n
            first += n * step
            count -= n

    def collapse(self, chunk: int) -> None:
        """collapse_file(): one PMD-sized folio now holds the chunk; the holes
        are filled with zeroed pages."""
        self.cache[chunk] = bytearray(b"\x01" * ENTRIES)
        self.huge.add(chunk)

    def huge_split_by(self, start: int, end: int) -> list[int]:
        """Huge chunks that the byte range [start, end) overlaps without
        covering them: punching or truncating there splits their folio
        (truncate_inode_partial_folio)."""
        if end <= start:
            return []
        lo, hi = start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        return [c for c in _indices_in(self.huge, lo, hi)
                if start > c << PTE_SHIFT or end < (c + 1) << PTE_SHIFT]

    def drop_pages(self, start: int, end: int) -> None:
        """Punch or truncate the byte range [start, end): the pages wholly inside
        it leave the cache, and every folio it touches stops being PMD-sized
        (removed when covered, split when not)."""
        if end <= start:
            return
        lo, hi = start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        self.huge.difference_update(_indices_in(self.huge, lo, hi))
        first = -(-start // PAGE)
        last = end // PAGE
        for chunk in _indices_in(self.cache.keys(), lo, hi):
            base = chunk * ENTRIES
            a = max(first, base) - base
            b = min(last, base + ENTRIES) - base
            if a >= b:
                continue
            pages = self.cache[chunk]
            pages[a:b] = bytes(b - a)
            if not any(pages):
                del self.cache[chunk]


class AnonVma:
    """Identity of an anon_vma (VMAs that share one may merge)."""

    __slots__ = ()


@dataclass(eq=False)
class Vma:
    """One virtual memory area [start, end)."""

    start: int
    end: int
    flags: int
    pgoff: int  # in pages
    file: BackingFile | None = None
    anon_vma: AnonVma | None = None
    uffd: object | None = None  # userfaultfd context (identity)

    @property
    def anonymous(self) -> bool:
        """vma_is_anonymous(): private anon memory (no file, no shmem object)."""
        return self.file is None

    def file_offset(self, addr: int) -> int:
        return (self.pgoff << PAGE_SHIFT) + (addr - self.start)

    def copy(self, **changes: object) -> Vma:
        v = Vma(self.start, self.end, self.flags, self.pgoff, self.file, self.anon_vma, self.uffd)
        for k, val in changes.items():
            setattr(v, k, val)
        return v

    def perms(self) -> str:
        return (("r" if self.flags & VM_READ else "-") + ("w" if self.flags & VM_WRITE else "-")
                + ("x" if self.flags & VM_EXEC else "-") + ("s" if self.flags & VM_SHARED else "p"))


class PteTable:
    """A PTE table: 512 one-byte entries, the huge-PMD state of its slot, and the
    accessed ("young") bit of the PMD entry that points to it.

    x86 sets the accessed bit of a non-leaf PMD entry whenever the hardware walks
    through it (``CONFIG_ARCH_HAS_NONLEAF_PMD_YOUNG``; MGLRU's page-table walk reads it
    to skip cold PTE tables, ``mm/vmscan.c`` ``walk_pmd_range``).  A table is young when
    it is created (``pmd_populate`` installs the entry with ``_PAGE_ACCESSED``) and
    whenever an access reaches its 2 MiB; a reclaim scanner test-and-clears the bit
    (:meth:`AddressSpace.scan_young`) and keeps ``age``, the scan rounds the table has
    been idle.  Neither changes any rule the kernel comparison sees.
    """

    __slots__ = ("age", "cls", "entries", "huge", "rss", "young")

    def __init__(self) -> None:
        self.entries = bytearray(ENTRIES)
        self.huge = HUGE_NONE
        self.cls = TableClass.EMPTY
        self.rss = 0  # resident pages mapped here (anon + page cache; not the zeropage)
        self.young = True
        self.age = 0  # scan rounds since a scanner last found it young

    def resident(self) -> int:
        """Pages this table maps that count in RSS."""
        if self.huge:
            return ENTRIES if self.huge == HUGE_ANON else 0
        return self.entries.count(E_ANON) + self.entries.count(E_FILE)

    def classify(self) -> TableClass:
        return self.census()[0]

    def census(self) -> tuple[TableClass, int]:
        """(class, resident pages) in one pass over the counts."""
        if self.huge:
            if self.huge == HUGE_ANON:
                return TableClass.PINNED, ENTRIES
            return TableClass.ZERO, 0
        e = self.entries
        n_none = e.count(E_NONE)
        if n_none == ENTRIES:
            return TableClass.EMPTY, 0
        n_file = e.count(E_FILE)
        n_zero = e.count(E_ZERO)
        rest = ENTRIES - n_none - n_zero - n_file
        if rest:
            return TableClass.PINNED, n_file + e.count(E_ANON)
        return (TableClass.FILE if n_file else TableClass.ZERO), n_file


@dataclass
class Stats:
    """Cumulative counters of table work, for cost accounting by callers."""

    pte_allocated: int = 0
    pte_freed: int = 0
    upper_allocated: int = 0
    upper_freed: int = 0
    pte_reclaimed_on_zap: int = 0
    faults: int = 0
    refault_tables: int = 0  # tables re-allocated after an out-of-line reclaim freed them
    refault_entries: int = 0  # zero/file entries that reclaim zapped and a refault restores
    # refault_tables by the class the table had when reclaim freed it.
    refault_empty: int = 0
    refault_zero: int = 0
    refault_file: int = 0


@dataclass
class AddressSpace:
    """A process's address space (an ``mm_struct``) and its page tables.

    Args:
        pt_reclaim: model ``CONFIG_PT_RECLAIM`` (Linux 6.14+): ``MADV_DONTNEED``
            frees a PTE table whose whole aligned 2 MiB it zaps.  ``False``
            models older kernels, where only unmapping frees tables.
        thp_disabled: ``prctl(PR_SET_THP_DISABLE)`` is in force.
        thp_sysfs: ``/sys/kernel/mm/transparent_hugepage/enabled``:
            ``always``, ``madvise`` or ``never``.

    Besides the PTE tables, ``file_thp`` holds the slots (address >> 21) that
    map a file THP with a PMD (R24): no PTE table, in no reclaim class, and
    512 pages of ``rss_pages`` each.
    """

    pt_reclaim: bool = True
    thp_disabled: bool = True
    thp_sysfs: str = "madvise"
    vmas: list[Vma] = field(default_factory=list)
    pte: dict[int, PteTable] = field(default_factory=dict)
    pmd: set[int] = field(default_factory=set)
    pud: set[int] = field(default_factory=set)
    stats: Stats = field(default_factory=Stats)

    def __post_init__(self) -> None:
        self._class_sets: tuple[set[int], ...] = tuple(set() for _ in _CLASSES)
        for slot, t in self.pte.items():
            self._class_sets[t.cls].add(slot)
        self.rss_pages = sum(t.rss for t in self.pte.values())
        # Slots PMD-mapping a PMD-sized folio of the shmem page cache (R24).
        self.file_thp: set[int] = set()
        # Slots freed by an out-of-line reclaimer -> (zero/file entries it zapped, the
        # table's class then): a refault restores them and is counted by class.
        self.reclaimed: dict[int, tuple[int, TableClass]] = {}
        # Page-cache pages that a reclaimer unmapped and that stay cached: slot -> the
        # pages as a mask (bit 8k: page k), and their count.  A page leaves when this
        # address space maps something at it again or zaps or exits its range, and a
        # move or a fork carries it along: what would have happened to its entry had
        # reclaim not taken it (docs/simulator.md, "Page cache that reclaim unmaps").
        self.kept: dict[int, int] = {}
        self.kept_pages = 0
        # Bumped whenever a PTE table appears or disappears (reclaim scan caches).
        self.table_version = 0
        # VMAs currently registered with userfaultfd (a fast path for reclaim).
        self.uffd_vmas = 0
        # Bumped when a table changes class (with table_version: cache keys).
        self.class_version = 0
        self._uffd_cache: tuple[int, int, int, int] = (-1, -1, -1, 0)
        # When a set, every PTE slot an access or populate reaches is added
        # (the offline oracle records the future this way).
        self.touch_log: set[int] | None = None
        # Alternative kernel designs (envs/sim/mechanisms.py) hook here: when set, it is
        # called after a zap with the PTE slots whose entries it cleared (some may be gone)
        # and whether the zap was a MADV_DONTNEED.  None (the kernel as measured) costs
        # one test per zap and changes nothing.
        self.zap_listener: ZapListener | None = None

    __hash__ = object.__hash__  # identity: address spaces live in BackingFile.mappers

    def __eq__(self, other: object) -> bool:
        return self is other

    # ------------------------------------------------------------------ queries

    @property
    def tables(self) -> int:
        """Number of page tables counted in VmPTE (PTE + PMD + PUD)."""
        return len(self.pte) + len(self.pmd) + len(self.pud)

    @property
    def vm_pte_kib(self) -> int:
        """``VmPTE`` of /proc/PID/status in KiB."""
        return TABLE_KIB * self.tables

    def class_count(self, cls: TableClass) -> int:
        """Number of PTE tables of reclaim class ``cls`` (O(1))."""
        return len(self._class_sets[cls])

    def class_counts(self) -> tuple[int, int, int, int]:
        """Counts of (empty, zero, file, pinned) PTE tables."""
        s = self._class_sets
        return (len(s[0]), len(s[1]), len(s[2]), len(s[3]))

    def tables_in_class(self, cls: TableClass) -> set[int]:
        """Slot indices (address >> 21) of the PTE tables of class ``cls``.

        The set is live; copy it before mutating the address space.
        """
        return self._class_sets[cls]

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA that contains ``addr`` (vma_lookup)."""
        i = bisect.bisect_right(self.vmas, addr, key=_vma_start) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return self.vmas[i]
        return None

    def vmas_overlapping(self, start: int, end: int) -> list[Vma]:
        """VMAs that intersect [start, end), in address order."""
        i = self._first_ending_after(start)
        out = []
        while i < len(self.vmas) and self.vmas[i].start < end:
            out.append(self.vmas[i])
            i += 1
        return out

    def slot_is_uffd(self, slot: int) -> bool:
        """Whether a VMA registered with userfaultfd overlaps PTE slot ``slot``."""
        if not self.uffd_vmas:
            return False
        a = slot << PTE_SHIFT
        return any(v.uffd is not None for v in self.vmas_overlapping(a, a + PTE_SPAN))

    def uffd_unreclaimable(self) -> int:
        """Empty/zero/file PTE tables that a userfaultfd-registered VMA covers
        (not reconstructable: reclaim refuses them)."""
        if not self.uffd_vmas:
            return 0
        key = (self.table_version, self.class_version, len(self.vmas))
        if self._uffd_cache[:3] == key:
            return self._uffd_cache[3]
        seen: set[int] = set()
        for v in self.vmas:
            if v.uffd is not None:
                seen.update(s for s in self._pte_slots_in(v.start, v.end)
                            if self.pte[s].cls != TableClass.PINNED)
        self._uffd_cache = (*key, len(seen))
        return len(seen)

    def check_invariants(self) -> None:
        """Assert the internal invariants (tests call this after every op)."""
        prev_end = -1
        for v in self.vmas:
            assert v.start < v.end and v.start % PAGE == 0 and v.end % PAGE == 0, v
            assert v.start >= prev_end, "VMAs overlap or are unsorted"
            prev_end = v.end
        for cls in _CLASSES:
            for slot in self._class_sets[cls]:
                assert self.pte[slot].cls == cls
        assert sum(len(s) for s in self._class_sets) == len(self.pte)
        assert self.rss_pages == (sum(t.resident() for t in self.pte.values())
                                  + ENTRIES * len(self.file_thp))
        assert self.kept_pages == sum(m.bit_count() for m in self.kept.values())
        for slot, m in self.kept.items():
            assert m and not m & ~_BYTE_ONES, hex(slot << PTE_SHIFT)
            assert slot not in self.file_thp, "kept pages under a file THP PMD"
            for addr in self._kept_in(slot << PTE_SHIFT, (slot + 1) << PTE_SHIFT):
                kv = self.find_vma(addr)
                assert kv is not None and kv.start <= addr and kv.file is not None, \
                    f"a kept page outside a file mapping: {addr:#x}"
            t = self.pte.get(slot)
            if t is not None:
                assert not t.huge, "kept pages under a THP"
                present = int.from_bytes(t.entries.translate(_NOT_NONE), "little")
                assert not m & present, "a kept page is also mapped"
        for slot in self.file_thp:
            base = slot << PTE_SHIFT
            mapping = self.find_vma(base)
            assert slot not in self.pte, "a file THP PMD and a PTE table in one slot"
            assert (slot >> (PMD_SHIFT - PTE_SHIFT)) in self.pmd, "file THP without PMD table"
            assert mapping is not None and mapping.file is not None, hex(base)
            assert mapping.end >= base + PTE_SPAN, "file THP PMD-mapped past its VMA"
            assert mapping.file_offset(base) % PTE_SPAN == 0, "file THP PMD-mapped unaligned"
            assert mapping.file_offset(base) >> PTE_SHIFT in mapping.file.huge, "folio not huge"
        for f in {v.file for v in self.vmas if v.file is not None}:
            for chunk in f.huge:
                assert f.cache.get(chunk, b"") == b"\x01" * ENTRIES, (f, chunk)
            assert all(any(pages) for pages in f.cache.values()), f
        for slot, t in self.pte.items():
            assert t.cls == t.classify(), (hex(slot << PTE_SHIFT), t.cls, t.classify())
            assert (slot >> (PMD_SHIFT - PTE_SHIFT)) in self.pmd, "PTE table without PMD"
        for p in self.pmd:
            assert (p >> (PUD_SHIFT - PMD_SHIFT)) in self.pud, "PMD table without PUD"

    # ------------------------------------------------------- table bookkeeping

    def _first_ending_after(self, addr: int) -> int:
        """Index of the first VMA with end > addr (find_vma)."""
        i = bisect.bisect_right(self.vmas, addr, key=_vma_start) - 1
        if i >= 0 and self.vmas[i].end > addr:
            return i
        return i + 1

    def _ensure_pud(self, addr: int) -> None:
        """Allocate the PUD table (512 GiB) covering ``addr`` if it is missing."""
        pud = addr >> PUD_SHIFT
        if pud not in self.pud:
            self.pud.add(pud)
            self.stats.upper_allocated += 1

    def _ensure_pmd(self, addr: int) -> None:
        """Allocate the PMD table (1 GiB) covering ``addr`` if it is missing."""
        pmd = addr >> PMD_SHIFT
        if pmd not in self.pmd:
            self.pmd.add(pmd)
            self.stats.upper_allocated += 1

    def _ensure_upper(self, addr: int) -> None:
        """Allocate the PUD and PMD tables above ``addr`` that are missing."""
        self._ensure_pud(addr)
        self._ensure_pmd(addr)

    def _ensure_pte(self, slot: int) -> PteTable:
        t = self.pte.get(slot)
        if t is None:
            self._ensure_upper(slot << PTE_SHIFT)
            t = PteTable()
            self.pte[slot] = t
            self._class_sets[TableClass.EMPTY].add(slot)
            self.stats.pte_allocated += 1
            self.table_version += 1
            freed = self.reclaimed.pop(slot, None)
            if freed is not None:
                zapped, cls = freed
                self.stats.refault_tables += 1
                self.stats.refault_entries += zapped
                if cls == TableClass.EMPTY:
                    self.stats.refault_empty += 1
                elif cls == TableClass.ZERO:
                    self.stats.refault_zero += 1
                else:
                    self.stats.refault_file += 1
        return t

    def _reclass(self, slot: int, t: PteTable) -> None:
        if self.kept and slot in self.kept:
            self._kept_mapped(slot, t)
        new, rss = t.census()
        if new != t.cls:
            self._class_sets[t.cls].discard(slot)
            self._class_sets[new].add(slot)
            t.cls = new
            self.class_version += 1
        self.rss_pages += rss - t.rss
        t.rss = rss

    def _kept_mapped(self, slot: int, t: PteTable) -> None:
        """The pages of ``kept[slot]`` that ``t`` maps again (or a THP covers) count
        through RSS from now on."""
        old = self.kept[slot]
        mapped = -1 if t.huge else int.from_bytes(t.entries.translate(_NOT_NONE), "little")
        self._kept_set(slot, old, old & ~mapped)

    def _kept_set(self, slot: int, old: int, new: int) -> None:
        if new == old:
            return
        self.kept_pages += new.bit_count() - old.bit_count()
        if new:
            self.kept[slot] = new
        else:
            del self.kept[slot]

    def _kept_in(self, start: int, end: int) -> list[int]:
        """The addresses of the kept pages in [start, end) (page-aligned), ascending: a
        move or a fork carries them on, as it would have carried their entries had they
        stayed mapped."""
        if not self.kept or end <= start:
            return []
        pages = []
        for slot in _indices_in(self.kept.keys(), start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT):
            m, base = self.kept[slot], slot << PTE_SHIFT
            pages += [a for k in range(ENTRIES) if m >> (8 * k) & 1
                      if start <= (a := base + k * PAGE) < end]
        return pages

    def _kept_or(self, slot: int, pages: int) -> None:
        """Keep these pages of ``slot`` (a mask: unmapped here, still cached)."""
        old = self.kept.get(slot, 0)
        self._kept_set(slot, old, old | pages)

    def _kept_add(self, pages: list[int]) -> None:
        """Keep the pages at these addresses (unmapped here, still cached)."""
        for addr in pages:
            self._kept_or(addr >> PTE_SHIFT, 1 << (8 * ((addr >> PAGE_SHIFT) & (ENTRIES - 1))))

    def _kept_drop(self, start: int, end: int) -> None:
        """This address space zaps or unmaps [start, end): the kept pages there go,
        as they would have gone had they stayed mapped."""
        if not self.kept or end <= start:
            return
        for slot in _indices_in(self.kept.keys(), start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT):
            base = slot << PTE_SHIFT
            i = (max(start, base) - base) >> PAGE_SHIFT
            j = (min(end, base + PTE_SPAN) - base + PAGE - 1) >> PAGE_SHIFT
            old = self.kept[slot]
            self._kept_set(slot, old, old & ~(_BYTE_ONES << (8 * i) & ((1 << (8 * j)) - 1)))

    def _free_pte(self, slot: int) -> None:
        self._free_pte_quiet(slot)
        self.stats.pte_freed += 1

    def _free_pte_quiet(self, slot: int) -> PteTable:
        t = self.pte.pop(slot)
        self._class_sets[t.cls].discard(slot)
        self.rss_pages -= t.rss
        self.table_version += 1
        return t

    def _adopt_pte(self, slot: int, t: PteTable) -> None:
        """Install an existing table object at ``slot`` (whole-table moves)."""
        self.pte[slot] = t
        self._class_sets[t.cls].add(slot)
        self.rss_pages += t.rss
        self.table_version += 1
        if self.kept and slot in self.kept:
            self._kept_mapped(slot, t)

    def _pte_slots_in(self, start: int, end: int) -> Iterator[int]:
        """Existing PTE-table slots that intersect [start, end), ascending.

        Iterates the smaller of the address range and the table dict, so a
        huge sparse range costs what its tables cost.
        """
        lo = start >> PTE_SHIFT
        hi = (end - 1) >> PTE_SHIFT
        if hi - lo + 1 <= len(self.pte):
            for s in range(lo, hi + 1):
                if s in self.pte:
                    yield s
        else:
            yield from sorted(s for s in self.pte if lo <= s <= hi)

    def _update_entries(self, start: int, end: int, table: bytes) -> None:
        """Translate the entries of every existing table in [start, end)."""
        if table[E_FILE] != E_FILE:
            self._kept_drop(start, end)
        slots = list(self._pte_slots_in(start, end))
        for slot in slots:
            t = self.pte[slot]
            base = slot << PTE_SHIFT
            a = max(start, base)
            b = min(end, base + PTE_SPAN)
            if t.huge:
                if a == base and b == base + PTE_SPAN:
                    continue  # a whole THP holds no file pages or markers
                self._split_huge(slot, t)
            i, j = (a - base) >> PAGE_SHIFT, (b - base + PAGE - 1) >> PAGE_SHIFT
            t.entries[i:j] = t.entries[i:j].translate(table)
            self._reclass(slot, t)
        if self.zap_listener is not None:
            self.zap_listener(self, slots, False)

    def _split_huge(self, slot: int, t: PteTable) -> None:
        """Split a PMD-mapped THP: its deposit becomes an ordinary PTE table (R21)."""
        t.entries[:] = bytes([E_ANON if t.huge == HUGE_ANON else E_ZERO]) * ENTRIES
        t.huge = HUGE_NONE
        self._reclass(slot, t)

    def _split_huge_partial(self, start: int, end: int) -> None:
        """Split the THPs that [start, end) covers only partly."""
        for addr in (start, end):
            if addr % PTE_SPAN:
                t = self.pte.get(addr >> PTE_SHIFT)
                if t is not None and t.huge:
                    self._split_huge(addr >> PTE_SHIFT, t)

    def _unmap_file_thp(self, start: int, end: int) -> None:
        """Clear the PMD mappings of file THPs that [start, end) overlaps, whole
        (zap_huge_pmd) or in part (__split_huge_pmd): a file THP has no deposit,
        so either way the slot is left with no PTE table (R24)."""
        if not self.file_thp or end <= start:
            return
        for slot in _indices_in(self.file_thp, start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT):
            self.file_thp.discard(slot)
            self.rss_pages -= ENTRIES

    def _zap(self, start: int, end: int, reclaim: bool, drop_markers: bool = False) -> None:
        """Zap entries of [start, end) (inside one VMA); with ``reclaim``, free
        the PTE tables whose whole aligned 2 MiB the range covers (R6-R8)."""
        self._kept_drop(start, end)
        self._unmap_file_thp(start, end)
        self._split_huge_partial(start, end)
        table = _ZAP_ALL if drop_markers else _ZAP
        slots = list(self._pte_slots_in(start, end))
        for slot in slots:
            t = self.pte[slot]
            base = slot << PTE_SHIFT
            a, b = max(start, base), min(end, base + PTE_SPAN)
            full = a == base and b == base + PTE_SPAN
            if t.huge:
                # zap_huge_pmd frees the deposit with the THP (R21).
                self._free_pte(slot)
                continue
            i, j = (a - base) >> PAGE_SHIFT, (b - base) >> PAGE_SHIFT
            t.entries[i:j] = t.entries[i:j].translate(table)
            if reclaim and full and self.pt_reclaim and not any(t.entries):
                self._free_pte(slot)
                self.stats.pte_reclaimed_on_zap += 1
                continue
            self._reclass(slot, t)
        if self.zap_listener is not None:
            self.zap_listener(self, slots, reclaim)

    def _free_pgtables(self, start: int, end: int) -> None:
        """free_pgtables() after [start, end) was unmapped (R14, R15).

        A PTE/PMD/PUD table whose span intersects the unmapped range is freed
        when no remaining VMA intersects its span (the floor/ceiling rule).
        """
        i = self._first_ending_after(start)
        floor = self.vmas[i - 1].end if i > 0 else 0
        ceiling = self.vmas[i].start if i < len(self.vmas) else TASK_SIZE
        for slot in list(self._pte_slots_in(start, end)):
            if (slot << PTE_SHIFT) >= floor and ((slot + 1) << PTE_SHIFT) <= ceiling:
                self._free_pte(slot)
        for shift, tables in ((PMD_SHIFT, self.pmd), (PUD_SHIFT, self.pud)):
            for idx in _indices_in(tables, start >> shift, (end - 1) >> shift):
                if (idx << shift) >= floor and ((idx + 1) << shift) <= ceiling:
                    tables.discard(idx)
                    self.stats.upper_freed += 1

    # ------------------------------------------------------------ VMA plumbing

    def _insert(self, v: Vma) -> int:
        i = bisect.bisect_left(self.vmas, v.start, key=_vma_start)
        self.vmas.insert(i, v)
        return i

    def _anon_vma_prepare(self, v: Vma) -> None:
        """anon_vma_prepare(): reuse a neighbour's anon_vma when the two could
        merge but for their protection (find_mergeable_anon_vma: next first,
        then prev), else create one."""
        if v.anon_vma is not None:
            return
        i = self.vmas.index(v)
        for j, (a, b) in ((i + 1, (v, None)), (i - 1, (None, v))):
            if not 0 <= j < len(self.vmas):
                continue
            n = self.vmas[j]
            lo, hi = (a, n) if a is not None else (n, b)
            assert lo is not None and hi is not None
            if (n.anon_vma is not None and lo.end == hi.start and lo.file is hi.file
                    and not (lo.flags ^ hi.flags) & ~VM_PROT and lo.uffd is hi.uffd
                    and hi.pgoff == lo.pgoff + ((hi.start - lo.start) >> PAGE_SHIFT)):
                v.anon_vma = n.anon_vma
                return
        v.anon_vma = AnonVma()

    def _split(self, i: int, addr: int) -> None:
        """Split vmas[i] at ``addr`` (strictly inside it); a THP straddling the
        new boundary is split too (vma_adjust_trans_huge): an anon one keeps
        its deposit as a PTE table, a file one is just unmapped (R24)."""
        if addr % PTE_SPAN:
            t = self.pte.get(addr >> PTE_SHIFT)
            if t is not None and t.huge:
                self._split_huge(addr >> PTE_SHIFT, t)
            self._unmap_file_thp(addr, addr + PAGE)
        v = self.vmas[i]
        upper = v.copy(start=addr, pgoff=v.pgoff + ((addr - v.start) >> PAGE_SHIFT))
        v.end = addr
        self.vmas.insert(i + 1, upper)

    def _isolate(self, i: int, start: int, end: int) -> int:
        """Split vmas[i] so that [start, end) (inside it) is a VMA of its own;
        return that VMA's index (vma_modify's split step)."""
        if self.vmas[i].start < start:
            self._split(i, start)
            i += 1
        if self.vmas[i].end > end:
            self._split(i, end)
        return i

    @staticmethod
    def _can_merge(a: Vma, b: Vma) -> bool:
        """is_mergeable_vma() + anon_vma compatibility + pgoff contiguity."""
        return (a.end == b.start
                and (a.flags & ~_MERGE_IGNORED) == (b.flags & ~_MERGE_IGNORED)
                and a.file is b.file and a.uffd is b.uffd
                and a.pgoff + ((a.end - a.start) >> PAGE_SHIFT) == b.pgoff
                and (a.anon_vma is None or b.anon_vma is None or a.anon_vma is b.anon_vma))

    def _merge_at(self, i: int) -> bool:
        """Merge vmas[i] with vmas[i+1] if they are compatible."""
        if i < 0 or i + 1 >= len(self.vmas):
            return False
        a, b = self.vmas[i], self.vmas[i + 1]
        if not self._can_merge(a, b):
            return False
        a.end = b.end
        a.anon_vma = a.anon_vma or b.anon_vma
        a.flags |= b.flags & VM_MAYBE_GUARD  # sticky flags survive merges
        del self.vmas[i + 1]
        return True

    def _merge_around(self, i: int) -> int:
        """Merge vmas[i] with its previous, then next neighbour; returns its index."""
        if self._merge_at(i - 1):
            i -= 1
        self._merge_at(i)
        return i

    def _carve(self, start: int, end: int) -> tuple[int, int]:
        """Split VMAs so that none straddles ``start`` or ``end``; return the
        index range [i, j) of the VMAs inside [start, end)."""
        i = self._first_ending_after(start)
        if i < len(self.vmas) and self.vmas[i].start < start:
            self._split(i, start)
            i += 1
        j = i
        while j < len(self.vmas) and self.vmas[j].start < end:
            if self.vmas[j].end > end:
                self._split(j, end)
            j += 1
        return i, j

    def _modify(self, start: int, end: int, change: Callable[[Vma], int | str | None],
                hole_error: bool = True) -> str | None:
        """Apply a flag change to every VMA piece in [start, end) with kernel
        split/merge (vma_modify_flags).  ``change`` returns the new flags, None
        to leave the VMA alone, or an errno string to stop.  Holes give ENOMEM
        after the mapped parts were changed (madvise_walk_vmas)."""
        error: str | None = None
        pos = start
        while pos < end:
            i = self._first_ending_after(pos)
            if i >= len(self.vmas) or self.vmas[i].start >= end:
                return "ENOMEM" if hole_error else error
            v = self.vmas[i]
            if v.start > pos:
                error = "ENOMEM" if hole_error else error
                pos = v.start
            piece_end = min(v.end, end)
            new = change(v)
            if isinstance(new, str):
                return new
            if new is not None and new != v.flags:
                i = self._isolate(i, pos, piece_end)
                self.vmas[i].flags = new
                self._merge_around(i)
            pos = piece_end
        return error

    # --------------------------------------------------------------- faulting

    def _thp_allowed(self, v: Vma) -> bool:
        if self.thp_disabled or self.thp_sysfs == "never" or not v.anonymous:
            return False
        if v.flags & VM_NOHUGEPAGE:
            return False
        return self.thp_sysfs == "always" or bool(v.flags & VM_HUGEPAGE)

    @staticmethod
    def _file_folio_fits(v: Vma, base: int) -> bool:
        """Whether the PTE slot at ``base`` of file VMA ``v`` maps exactly one
        PMD-sized folio of the page cache: the VMA covers the whole slot at a
        2 MiB-aligned file offset (thp_vma_suitable_order) and the chunk is
        huge (R24)."""
        if v.file is None or not v.file.huge or base < v.start or base + PTE_SPAN > v.end:
            return False
        foff = v.file_offset(base)
        return foff % PTE_SPAN == 0 and (foff >> PTE_SHIFT) in v.file.huge

    def _map_file_thp(self, slot: int) -> None:
        """do_set_pmd(): map a PMD-sized folio with one PMD (R24).  The fault
        path allocates the PUD and PMD tables as usual, but no PTE table; the
        512 pages count in RSS (RssShmem)."""
        self._ensure_upper(slot << PTE_SHIFT)
        self.file_thp.add(slot)
        self.rss_pages += ENTRIES
        if slot in self.kept:
            self._kept_set(slot, self.kept[slot], 0)

    def _fault_range(self, v: Vma, start: int, end: int, stride: int, write: bool,
                     first: int) -> tuple[int, str | None]:
        """Fault the accesses ``first + k*stride`` that fall in [start, end) of
        VMA ``v``; stop at the first failure.  Returns (next access, error)."""
        addr = first
        if (write and not v.flags & VM_WRITE) or (not write and not v.flags & VM_READ):
            return addr, "SIGSEGV"  # access_error(): nothing allocated (R4)
        limit = end
        eof_error = None
        eof = end
        if v.file is not None:
            eof = v.start + max(0, _page_align(v.file.size) - (v.pgoff << PAGE_SHIFT))
            if eof < limit:
                limit, eof_error = max(eof, start), "SIGBUS"
        if write:
            target = E_ANON if not v.flags & VM_SHARED else E_FILE
            xlate = None
        else:
            xlate = _READ_ANON if v.anonymous else _READ_FILE
            target = -1
        log = self.touch_log
        while addr < limit:
            slot = addr >> PTE_SHIFT
            base = slot << PTE_SHIFT
            if log is not None:
                log.add(slot)
            seg_end = min(limit, base + PTE_SPAN)
            if stride % PAGE == 0:
                n = (seg_end - addr + stride - 1) // stride
                last = addr + (n - 1) * stride
                idx = slice((addr - base) >> PAGE_SHIFT, ((last - base) >> PAGE_SHIFT) + 1,
                            stride >> PAGE_SHIFT)
            else:
                pages = sorted({(a - base) >> PAGE_SHIFT for a in range(addr, seg_end, stride)})
                n = len(range(addr, seg_end, stride))
                last = addr + (n - 1) * stride
                idx = None
            t = self.pte.get(slot)
            if t is not None:
                t.young = True  # the walk sets the PMD entry's accessed bit
            if t is None and self._thp_allowed(v) and base >= v.start and base + PTE_SPAN <= v.end:
                t = self._ensure_pte(slot)
                t.huge = HUGE_ANON if write else HUGE_ZERO
                if v.anon_vma is None:
                    self._anon_vma_prepare(v)  # the huge fault prepares it, read or write
                self._reclass(slot, t)
                self.stats.faults += 1
                addr = last + stride
                continue
            if t is not None and t.huge:
                if write and t.huge == HUGE_ZERO:
                    t.huge = HUGE_ANON  # wp fault on the huge zero page maps a THP
                    self._reclass(slot, t)
                if write and v.anon_vma is None:
                    self._anon_vma_prepare(v)
                addr = last + stride
                continue
            cow = write and not v.flags & VM_SHARED
            fits = v.file is not None and self._file_folio_fits(v, base)
            if t is None and v.file is not None:
                if slot in self.file_thp:
                    if not cow:
                        addr = last + stride  # the PMD maps every page already
                        continue
                    # wp_huge_pmd(): a COW fault splits the PMD (which unmaps a
                    # file THP), then do_cow_fault() needs a PTE table (R24).
                    self._unmap_file_thp(base, base + PAGE)
                elif (fits and not cow and not self.thp_disabled
                      and not v.flags & VM_NOHUGEPAGE):
                    # finish_fault()/filemap_map_pmd() -> do_set_pmd() (R24).
                    self._map_file_thp(slot)
                    self.stats.faults += 1
                    addr = last + stride
                    continue
            t = self._ensure_pte(slot)
            e = t.entries
            # A PMD-sized folio that fits this table is PTE-mapped whole once a
            # fault in the slot succeeds: by fault-around for a read (every none
            # entry: filemap_map_folio_range()), by finish_fault() for a shared
            # write into an all-none table.  A COW write maps its copy only.
            whole = fits and not cow and (not write or not any(e))
            # shmem allocates the page of every successful fault in its cache.
            cache = v.file if v.file is not None and v.file.kind == "shmem" else None
            fpage = v.pgoff + ((base - v.start) >> PAGE_SHIFT)
            if idx is not None:
                view = bytes(e[idx])
                g = _first_marker(view)
                if g >= 0:  # a guard marker: SIGSEGV at that page (R10)
                    stop = idx.start + g * idx.step
                    if g:
                        part = slice(idx.start, stop, idx.step)
                        e[part] = bytes([target]) * g if write else e[part].translate(xlate)
                        if target == E_ANON and v.anon_vma is None:
                            self._anon_vma_prepare(v)
                        if cache is not None:
                            cache.cache_pages(fpage + idx.start, idx.step, g)
                        if whole:
                            e[:] = e.translate(_READ_FILE)
                    self._reclass(slot, t)
                    return base + (stop << PAGE_SHIFT), "SIGSEGV"
                e[idx] = bytes([target]) * len(view) if write else view.translate(xlate)
                if target == E_ANON and v.anon_vma is None:
                    self._anon_vma_prepare(v)  # the first write fault prepares it (R18)
                if cache is not None:
                    cache.cache_pages(fpage + idx.start, idx.step, len(view))
            else:
                for k, p in enumerate(pages):
                    if e[p] in MARKERS:
                        if whole and k:
                            e[:] = e.translate(_READ_FILE)
                        self._reclass(slot, t)
                        return base + (p << PAGE_SHIFT), "SIGSEGV"
                    e[p] = xlate[e[p]] if xlate is not None else target
                    if target == E_ANON and v.anon_vma is None:
                        self._anon_vma_prepare(v)
                    if cache is not None:
                        cache.cache_pages(fpage + p, 1, 1)
            if whole:
                e[:] = e.translate(_READ_FILE)
            self._reclass(slot, t)
            self.stats.faults += n
            addr = last + stride
        if eof_error and addr < end:
            addr = self._past_eof_file_thp(v, addr, end, stride, write, eof)
        if eof_error and addr < end:
            self._ensure_upper(addr)  # the fault path allocated PUD/PMD first (R4)
            if write and not v.flags & VM_SHARED and v.anon_vma is None:
                self._anon_vma_prepare(v)  # do_cow_fault() prepares it before ->fault fails
            return addr, eof_error
        return addr, None

    def _past_eof_file_thp(self, v: Vma, addr: int, end: int, stride: int, write: bool,
                           eof: int) -> int:
        """shmem maps a PMD across i_size (R24): accesses past the file's end
        inside a file THP's PMD do not fault, and a read whose fault-around
        window starts before the end maps that PMD (filemap_map_pages() clips
        its window at i_size, filemap_map_pmd() does not).  Returns the first
        access left, which faults past the end (SIGBUS)."""
        slot = addr >> PTE_SHIFT
        base = slot << PTE_SHIFT
        if slot not in self.file_thp:
            window = max(addr & ~(FAULT_AROUND - 1), v.start)
            if (write or window >= eof or slot in self.pte or self.thp_disabled
                    or v.flags & VM_NOHUGEPAGE or not self._file_folio_fits(v, base)):
                return addr
            self._map_file_thp(slot)
            self.stats.faults += 1
        nxt = min(end, base + PTE_SPAN)
        return addr + -(-(nxt - addr) // stride) * stride

    def touch(self, start: int, length: int, write: bool, stride: int = PAGE) -> str | None:
        """Access one byte every ``stride`` bytes of [start, start+length) in
        order; the first SIGSEGV/SIGBUS stops it (R2, R4)."""
        end = start + length
        addr = start
        while addr < end:
            v = self.find_vma(addr)
            if v is None:
                return "SIGSEGV"
            addr, err = self._fault_range(v, v.start, min(v.end, end), stride, write, addr)
            if err:
                return err
        return None

    def _populate(self, start: int, end: int, mode: str) -> str | None:
        """Fault in [start, end) page by page: ``mode`` is ``"mlock"`` (write
        fault private writable memory, read the rest: R3), ``"read"`` or
        ``"write"`` (MADV_POPULATE_*).  Stops at the first failure."""
        pos = start
        while pos < end:
            v = self.find_vma(pos)
            if v is None:
                i = self._first_ending_after(pos)
                if mode == "mlock" and i < len(self.vmas) and self.vmas[i].start < end:
                    pos = self.vmas[i].start
                    continue
                return "ENOMEM" if mode != "mlock" else None
            piece_end = min(v.end, end)
            if mode == "mlock":
                if not v.flags & VM_PROT:
                    return "ENOMEM"
                write = (v.flags & (VM_WRITE | VM_SHARED)) == VM_WRITE
                if not write and not v.flags & VM_READ:
                    return "ENOMEM"
            else:
                write = mode == "write"
                if not v.flags & VM_PROT or (write and not v.flags & VM_WRITE):
                    return "EINVAL" if not v.flags & VM_PROT else "EFAULT"
            _, err = self._fault_range(v, pos, piece_end, PAGE, write, pos)
            if err:
                return "EFAULT" if mode != "mlock" else "ENOMEM"
            pos = piece_end
        return None

    # -------------------------------------------------------------- syscalls

    def mmap(self, addr: int, length: int, *, kind: str = "anon", shared: bool = False,
             prot: int = VM_READ | VM_WRITE, file: BackingFile | None = None, foff: int = 0,
             noreserve: bool = False, fixed: bool = False, populate: bool = False) -> str | None:
        """mmap at ``addr`` (MAP_FIXED_NOREPLACE, or MAP_FIXED with ``fixed``).

        ``kind`` is ``anon``, ``file`` or ``shmem``; file and shmem need
        ``file``; anon shared creates its own shmem object.
        """
        if length <= 0 or addr % PAGE or foff % PAGE:
            return "EINVAL"
        length = _page_align(length)
        end = addr + length
        if end > TASK_SIZE:
            return "ENOMEM"
        if self.vmas_overlapping(addr, end):
            if not fixed:
                return "EEXIST"
            self._unmap(addr, end)  # MAP_FIXED frees the replaced tables first (R15)
        flags = prot
        if kind == "anon" and shared:
            file = BackingFile("shmem", length, anon=True)
            foff = 0
        elif kind == "anon":
            file = None
            foff = addr
        elif file is None:
            raise ValueError(f"a {kind} mapping needs a backing file")
        if shared:
            flags |= VM_SHARED
        if noreserve:
            flags |= VM_NORESERVE
        elif not shared and prot & VM_WRITE:
            flags |= VM_ACCOUNT
        v = Vma(addr, end, flags, foff >> PAGE_SHIFT, file)
        if file is not None:
            file.mappers.add(self)
        i = self._insert(v)
        self._merge_around(i)
        if populate:
            self._populate(addr, end, "mlock")
        return None

    def _unmap(self, start: int, end: int) -> None:
        """Remove [start, end) from the VMA tree, zap it and free its tables."""
        i, j = self._carve(start, end)
        removed = self.vmas[i:j]
        if not removed:
            return
        del self.vmas[i:j]
        for v in removed:
            self._zap(v.start, v.end, reclaim=False, drop_markers=True)
        self._free_pgtables(removed[0].start, removed[-1].end)

    def munmap(self, start: int, length: int) -> str | None:
        """munmap: unmap and free tables by floor and ceiling (R14)."""
        if start % PAGE or length <= 0:
            return "EINVAL"
        end = start + _page_align(length)
        if end > TASK_SIZE:
            return "EINVAL"
        self._unmap(start, end)
        return None

    def mprotect(self, start: int, length: int, prot: int) -> str | None:
        """mprotect: split/merge VMAs; gains VM_ACCOUNT on private write; a
        locked private range that becomes writable is populated (R5)."""
        if start % PAGE:
            return "EINVAL"
        if length == 0:
            return None
        end = start + _page_align(length)

        def new_flags(v: Vma) -> int:
            old = v.flags
            new = (old & ~VM_PROT) | prot
            if prot & VM_WRITE:
                if not old & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE):
                    new |= VM_ACCOUNT
            elif old & VM_ACCOUNT and v.anonymous and v.anon_vma is None:
                new &= ~VM_ACCOUNT
            return new

        def populate_locked(piece: Vma, old: int, a: int, b: int) -> None:
            if (old & (VM_WRITE | VM_SHARED | VM_LOCKED)) == VM_LOCKED and piece.flags & VM_WRITE:
                self._fault_range(piece, a, b, PAGE, True, a)

        return self._change_contiguous(start, end, new_flags, populate_locked)

    def _change_contiguous(self, start: int, end: int, new_flags: Callable[[Vma], int],
                           after: Callable[[Vma, int, int, int], None] | None = None
                           ) -> str | None:
        """Change the flags of every VMA piece of [start, end), which must be
        mapped without holes (mprotect, mlock): a hole at the start changes
        nothing, a later one stops there; both give ENOMEM.  ``after(piece,
        old_flags, a, b)`` runs on each changed piece before it merges."""
        if self.find_vma(start) is None:
            return "ENOMEM"
        pos = start
        while pos < end:
            v = self.find_vma(pos)
            if v is None:
                return "ENOMEM"
            piece_end = min(v.end, end)
            old = v.flags
            new = new_flags(v)
            if new != old:
                piece = self.vmas[self._isolate(self.vmas.index(v), pos, piece_end)]
                piece.flags = new
                if after is not None:
                    after(piece, old, pos, piece_end)
                self._merge_around(self.vmas.index(piece))
            pos = piece_end
        return None

    def mlock(self, start: int, length: int) -> str | None:
        """mlock: set VM_LOCKED, then populate (R3)."""
        return self._lock(start, length, True)

    def munlock(self, start: int, length: int) -> str | None:
        """munlock: clear VM_LOCKED; tables stay (R13)."""
        return self._lock(start, length, False)

    def _lock(self, start: int, length: int, on: bool) -> str | None:
        end = _page_align(start + length)
        start &= ~(PAGE - 1)
        if end <= start:
            return None
        err = self._change_contiguous(
            start, end, lambda v: (v.flags | VM_LOCKED) if on else (v.flags & ~VM_LOCKED))
        if err or not on:
            return err
        return self._populate(start, end, "mlock")

    def madvise(self, start: int, length: int, advice: str) -> str | None:
        """madvise with ``advice`` a name from opscript.ADVICES."""
        if start % PAGE:
            return "EINVAL"
        if length == 0:
            return None
        end = start + _page_align(length)
        if end > TASK_SIZE:
            return "EINVAL"
        if advice in ("POPULATE_READ", "POPULATE_WRITE"):
            return self._populate(start, end, "read" if advice == "POPULATE_READ" else "write")
        if advice in _FLAG_ADVICE:
            return self._modify(start, end, _FLAG_ADVICE[advice])
        if advice == "GUARD_INSTALL":
            return self._walk(start, end, self._guard_install)
        if advice == "GUARD_REMOVE":
            return self._walk(start, end, self._guard_remove)
        if advice == "COLLAPSE":
            return self._walk(start, end, self._collapse)
        handler = {
            "DONTNEED": self._advise_dontneed,
            "DONTNEED_LOCKED": self._advise_dontneed_locked,
            "FREE": self._advise_free,
            "PAGEOUT": self._advise_pageout,
            "COLD": self._advise_cold,
            "WILLNEED": _advise_nothing,
            "REMOVE": self._advise_remove,
        }.get(advice)
        if handler is None:
            return "EINVAL"
        return self._walk(start, end, handler)

    def _walk(self, start: int, end: int,
              visit: Callable[[Vma, int, int], str | None]) -> str | None:
        """madvise_walk_vmas(): visit each VMA piece; holes give ENOMEM at the
        end, a visit error stops the walk."""
        unmapped = None
        pos = start
        while pos < end:
            i = self._first_ending_after(pos)
            if i >= len(self.vmas) or self.vmas[i].start >= end:
                return "ENOMEM"
            v = self.vmas[i]
            if v.start > pos:
                unmapped = "ENOMEM"
                pos = v.start
            piece_end = min(v.end, end)
            err = visit(v, pos, piece_end)
            if err:
                return err
            pos = piece_end
        return unmapped

    def _advise_dontneed(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED:
            return "EINVAL"  # R11
        self._zap(a, b, reclaim=True)
        return None

    def _advise_dontneed_locked(self, v: Vma, a: int, b: int) -> str | None:
        self._zap(a, b, reclaim=True)
        return None

    def _advise_free(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED or not v.anonymous:
            return "EINVAL"
        return None  # lazyfree pages stay mapped until memory pressure (R13)

    def _advise_pageout(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED:
            return "EINVAL"
        if v.file is not None and v.file.kind == "file":
            # Page cache is unmapped; anon (no swap here) and shmem stay (R13).
            self._update_entries(a, b, _DROP_FILE)
        self._cold_file_thp(v, a, b, pageout=True)
        return None

    def _advise_cold(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED:
            return "EINVAL"
        self._cold_file_thp(v, a, b, pageout=False)
        return None

    def _cold_file_thp(self, v: Vma, a: int, b: int, pageout: bool) -> None:
        """madvise_cold_or_pageout_pte_range() on the PMD-sized folios of
        [a, b) (R24).  A folio the range maps only in part -- a PMD it covers
        partly, or PTEs that map fewer than its 512 pages inside the range --
        is split (split_folio(), which unmaps it everywhere).  A folio mapped
        whole inside the range is not: ``PAGEOUT`` reclaims it, which unmaps
        it everywhere but keeps it in the page cache (no swap), and ``COLD``
        only deactivates it."""
        f = v.file
        if f is None or not f.huge:
            return
        whole: set[int] = set()
        split: set[int] = set()
        lo, hi = a >> PTE_SHIFT, (b - 1) >> PTE_SHIFT
        for slot in _indices_in(self.file_thp, lo, hi):
            covered = a <= slot << PTE_SHIFT and (slot + 1) << PTE_SHIFT <= b
            (whole if covered else split).add(v.file_offset(slot << PTE_SHIFT) >> PTE_SHIFT)
        for slot in list(self._pte_slots_in(a, b)):
            base = slot << PTE_SHIFT
            i = (max(a, base) - base) >> PAGE_SHIFT
            j = (min(b, base + PTE_SPAN) - base) >> PAGE_SHIFT
            entries = self.pte[slot].entries
            first = v.pgoff + ((base - v.start) >> PAGE_SHIFT)
            hit = {(first + k) // ENTRIES for k in range(i, j) if entries[k] == E_FILE} & f.huge
            if not hit:
                continue
            if (j - i == ENTRIES and self._file_folio_fits(v, base)
                    and entries.count(E_FILE) == ENTRIES):
                whole |= hit  # madvise_folio_pte_batch() covers the whole folio
            else:
                split |= hit
        for chunk in sorted(split):
            f.huge.discard(chunk)
            self._unmap_folio(f, chunk)
        if pageout:
            for chunk in sorted(whole - split):
                self._unmap_folio(f, chunk)  # shrink_folio_list(): try_to_unmap()

    @staticmethod
    def _unmap_folio(file: BackingFile, chunk: int) -> None:
        """try_to_unmap() of one folio of ``file``: every mapping of its pages,
        by PMD or PTE, in every address space (COW copies are not its pages)."""
        start = chunk << PTE_SHIFT
        for mm in list(file.mappers):
            mm._zap_file_range(file, start, start + PTE_SPAN, even_cows=False)

    def _advise_remove(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED or v.file is None:
            return "EINVAL"
        if not v.flags & VM_SHARED:
            return "EACCES"
        self.punch(v.file, v.file_offset(a), b - a)
        return None

    def _guard_install(self, v: Vma, a: int, b: int) -> str | None:
        if v.flags & VM_LOCKED:
            return "EINVAL"
        v.flags |= VM_MAYBE_GUARD  # whole VMA, no split (R19)
        if v.anonymous and v.anon_vma is None:
            # anon_vma_prepare(): observed through mremap merges (a moved guarded
            # VMA keeps its pgoff, so it does not merge at the destination).
            self._anon_vma_prepare(v)
        self._split_huge_partial(a, b)
        self._zap(a, b, reclaim=False)
        for slot in range(a >> PTE_SHIFT, ((b - 1) >> PTE_SHIFT) + 1):
            t = self._ensure_pte(slot)
            base = slot << PTE_SHIFT
            i = (max(a, base) - base) >> PAGE_SHIFT
            j = (min(b, base + PTE_SPAN) - base) >> PAGE_SHIFT
            t.entries[i:j] = bytes([E_GUARD]) * (j - i)
            self._reclass(slot, t)
        return None

    def _guard_remove(self, v: Vma, a: int, b: int) -> str | None:
        self._update_entries(a, b, _DROP_GUARD)
        return None

    def _collapse(self, v: Vma, lo: int, hi: int) -> str | None:
        """MADV_COLLAPSE (R20, R22, R24) on each aligned 2 MiB block inside a VMA.

        The VMA must be able to hold one aligned block at its end, at a 2 MiB-
        aligned file offset (thp_vma_allowable_order()); disabled THP,
        VM_NOHUGEPAGE or a regular file give EINVAL.  anon: the VMA needs an
        anon_vma and the block a PTE table without markers; the table then
        becomes the THP's deposit (count unchanged).  shmem: see
        :meth:`_collapse_file`.
        """
        if self.thp_disabled:  # prctl(PR_SET_THP_DISABLE); sysfs "never" does not stop it
            return "EINVAL"
        if (v.file is not None and v.file.kind == "file") or v.flags & VM_NOHUGEPAGE:
            return "EINVAL"
        if ((v.end - PTE_SPAN) & ~(PTE_SPAN - 1)) < v.start:
            return "EINVAL"  # thp_vma_suitable_order() at vm_end - 2 MiB: no room
        if v.file is not None and ((v.start >> PAGE_SHIFT) - v.pgoff) % ENTRIES:
            return "EINVAL"  # thp_vma_suitable_order(): file offset not 2 MiB-aligned
        err: str | None = None
        for slot in range((lo + PTE_SPAN - 1) >> PTE_SHIFT, hi >> PTE_SHIFT):
            t = self.pte.get(slot)
            if not v.anonymous:
                result = self._collapse_file(v, slot)
                if result == "stop":
                    return "EINVAL"
                if result == "skip":
                    err = "EINVAL"
                continue
            if t is not None and t.huge:
                continue  # already PMD-mapped (SCAN_PMD_MAPPED)
            # khugepaged's revalidation wants an anon_vma (SCAN_PAGE_ANON)
            # and a PTE table without markers to copy from.
            if t is None or v.anon_vma is None or _first_marker(bytes(t.entries)) >= 0:
                err = "EINVAL"
                continue
            t.entries[:] = bytes(ENTRIES)
            t.huge = HUGE_ANON
            self._reclass(slot, t)
        return err

    def _collapse_file(self, v: Vma, slot: int) -> str:
        """MADV_COLLAPSE of one aligned block of a shmem VMA (R22, R24):
        ``"ok"``, ``"skip"`` (failed, the walk goes on) or ``"stop"`` (failed,
        madvise_collapse() gives up).

        Unless the chunk is already huge (SCAN_PTE_MAPPED_HUGEPAGE), a chunk
        with no cached page stops the walk (SCAN_TRUNCATED); otherwise
        collapse_file() makes it huge, unmaps its old pages from every mapping
        and retract_page_tables() frees the PTE table of every aligned mapping
        of it that allows it, this one included.  Then
        try_collapse_pte_mapped_thp() maps it here with a
        PMD (set_huge_pmd() allocates missing PUD/PMD tables), freeing this
        slot's table unless it holds a marker (skip) or a page that is not the
        folio's, a COW copy (stop).
        """
        f = v.file
        assert f is not None
        chunk = v.file_offset(slot << PTE_SHIFT) >> PTE_SHIFT
        if chunk not in f.huge:
            if chunk not in f.cache:
                return "stop"
            f.collapse(chunk)
            self._unmap_folio(f, chunk)  # the old small folios, from every mapping
            for mm in list(f.mappers):
                mm._retract_page_tables(f, chunk)
        if slot in self.file_thp:
            return "ok"  # SCAN_PMD_MAPPED
        t = self.pte.get(slot)
        if t is not None:
            for e in t.entries:  # step 1: every mapped PTE must map the folio
                if e in (E_SWAP, *MARKERS):
                    return "skip"  # SCAN_PTE_NON_PRESENT (whitelisted)
                if e not in (E_NONE, E_FILE):
                    return "stop"  # SCAN_FAIL
            self._free_pte(slot)  # steps 2-4: clear the PTEs, free the table
        self._map_file_thp(slot)
        return "ok"

    def _retract_page_tables(self, file: BackingFile, chunk: int) -> None:
        """retract_page_tables() after collapse_file(): free the (empty) PTE
        table of every VMA mapping the chunk's first page at a 2 MiB-aligned
        address with the whole chunk inside it, unless the VMA has an anon_vma,
        VM_MAYBE_GUARD or uffd-wp (file_backed_vma_is_retractable()) (R24)."""
        page = chunk * ENTRIES
        for v in self.vmas:
            pages = (v.end - v.start) >> PAGE_SHIFT
            if v.file is not file or not v.pgoff <= page < v.pgoff + pages:
                continue
            addr = v.start + ((page - v.pgoff) << PAGE_SHIFT)
            if (addr % PTE_SPAN or addr + PTE_SPAN > v.end or v.anon_vma is not None
                    or v.flags & (VM_MAYBE_GUARD | VM_UFFD_WP)):
                continue
            if (addr >> PTE_SHIFT) in self.pte:
                self._free_pte(addr >> PTE_SHIFT)

    def punch(self, file: BackingFile, foff: int, length: int) -> None:
        """fallocate(PUNCH_HOLE) / MADV_REMOVE: unmap the range's page cache
        from every mapping of ``file``; tables stay (R13).  Its pages leave the
        cache, and a PMD-sized folio it touches is removed or split (R24)."""
        self._drop_file_range(file, foff, foff + length, foff, even_cows=False)

    def truncate(self, file: BackingFile, size: int) -> None:
        """ftruncate: pages past the new end are unmapped, COW copies too; tables
        stay.  They leave the cache; a folio across the new end is split (R24)."""
        old = file.size
        file.size = size
        if size < old:
            self._drop_file_range(file, size, max(old, size) + TASK_SIZE, _page_align(size),
                                  even_cows=True)

    def _drop_file_range(self, file: BackingFile, start: int, end: int, unmap_start: int,
                         even_cows: bool) -> None:
        """Punch or truncate bytes [start, end) of ``file``: unmap_mapping_range()
        from ``unmap_start``, then shmem_undo_range(), whose split of a PMD-sized
        folio the range covers only in part unmaps that folio everywhere."""
        split = file.huge_split_by(start, end)
        for mm in list(file.mappers):
            mm._zap_file_range(file, unmap_start, end, even_cows)
        for chunk in split:
            self._unmap_folio(file, chunk)
        file.drop_pages(start, end)

    def _zap_file_range(self, file: BackingFile, fstart: int, fend: int, even_cows: bool) -> None:
        for v in list(self.vmas):
            if v.file is not file:
                continue
            vstart = v.pgoff << PAGE_SHIFT
            a = max(fstart, vstart)
            b = min(fend, vstart + (v.end - v.start))
            if a >= b:
                continue
            addr_a = v.start + (a - vstart)
            addr_b = v.start + (b - vstart)
            if even_cows or v.flags & VM_SHARED:
                self._zap(addr_a, addr_b, reclaim=False)
            else:
                self._unmap_file_thp(addr_a, addr_b)
                self._update_entries(addr_a, addr_b, _DROP_FILE)

    def mremap(self, addr: int, old_len: int, new_len: int, new_addr: int | None = None,
               dontunmap: bool = False) -> str | None:
        """mremap: in place without ``new_addr``; else MREMAP_MAYMOVE|FIXED
        (plus DONTUNMAP) with the 6.17+ multi-VMA move (R15-R17)."""
        old_len = _page_align(old_len)
        new_len = _page_align(new_len)
        if addr % PAGE or new_len == 0 or new_len > TASK_SIZE:
            return "EINVAL"
        if new_addr is None:
            if dontunmap:
                return "EINVAL"
            return self._mremap_in_place(addr, old_len, new_len)
        if new_addr % PAGE or new_addr > TASK_SIZE - new_len:
            return "EINVAL"
        if dontunmap and old_len != new_len:
            return "EINVAL"
        if addr + old_len > new_addr and new_addr + new_len > addr:
            return "EINVAL"
        if old_len == new_len:
            return self._remap_move(addr, old_len, new_addr, dontunmap)
        v = self.find_vma(addr)
        if v is None:
            return "EFAULT"
        if old_len == 0 and not v.flags & VM_SHARED:
            return "EINVAL"
        if min(old_len, new_len) > v.end - addr:
            return "EFAULT"
        return self._mremap_to(addr, old_len, new_len, new_addr, dontunmap)

    def _mremap_in_place(self, addr: int, old_len: int, new_len: int) -> str | None:
        v = self.find_vma(addr)
        if v is None:
            return "EFAULT"
        if new_len == old_len:
            return None
        if new_len < old_len:  # shrink: may cross VMA ends (R15)
            self._unmap(addr + new_len, addr + old_len)
            return None
        if old_len == 0 and not v.flags & VM_SHARED:
            return "EINVAL"
        if old_len > v.end - addr:
            return "EFAULT"
        delta = new_len - old_len
        if (v.end - addr != old_len or v.end + delta > TASK_SIZE
                or self.vmas_overlapping(v.end, v.end + delta)):
            return "ENOMEM"  # no MREMAP_MAYMOVE
        old_end = v.end
        v.end += delta
        self._merge_around(self.vmas.index(v))  # vma_merge_extend()
        if v.flags & VM_LOCKED:
            self._populate(old_end, old_end + delta, "mlock")
        return None

    def _remap_move(self, start: int, length: int, new_addr: int, dontunmap: bool) -> str | None:
        """remap_move(): move every VMA of [start, start+length), keeping gaps."""
        end = start + length
        target = new_addr
        last_end = 0
        seen = False
        pos = start
        while pos < end:
            i = self._first_ending_after(pos)
            if i >= len(self.vmas) or self.vmas[i].start >= end:
                break
            v = self.vmas[i]
            if not seen and start < v.start:
                return "EFAULT"
            a = max(v.start, start)
            n = min(end, v.end) - a
            offset = v.start - last_end if seen else 0
            last_end = v.end
            if v.uffd is not None and (seen or v.end < end):
                return "EFAULT"
            dst = target + offset
            err = self._mremap_to(a, n, n, dst, dontunmap)
            if err:
                return err
            seen = True
            target = dst + n
            pos = a + n
        return None if seen else "EFAULT"

    def _mremap_to(self, addr: int, old_len: int, new_len: int, new_addr: int,
                   dontunmap: bool) -> str | None:
        """mremap_to() + move_vma() for one source VMA."""
        self._unmap(new_addr, new_addr + new_len)  # the destination goes first
        v = self.find_vma(addr)
        if v is None:
            return "EFAULT"
        if new_len < old_len:
            self._unmap(addr + new_len, addr + old_len)
            v = self.find_vma(addr)
            if v is None:
                return "EFAULT"
            old_len = new_len
        pgoff = v.pgoff + ((addr - v.start) >> PAGE_SHIFT)
        if v.anonymous and v.anon_vma is None:
            pgoff = new_addr >> PAGE_SHIFT  # copy_vma(): unfaulted anon re-bases pgoff
        new = v.copy(start=new_addr, end=new_addr + new_len, pgoff=pgoff)
        if new.file is not None:
            new.file.mappers.add(self)
        ni = self._insert(new)
        ni = self._merge_around(ni)
        new = self.vmas[ni]
        # The merge may have absorbed the source VMA: look it up again.
        found = self.find_vma(addr)
        assert found is not None
        v = found
        self._move_page_tables(v, new, addr, new_addr, old_len)
        if dontunmap:
            # R17, as amended by the stable fix "mm/mremap: correctly account old
            # mapping after MREMAP_DONTUNMAP remap" (in this 6.18): dontunmap_complete()
            # clears VM_LOCKED only; the source keeps VM_ACCOUNT (and so still merges
            # with a new accountable neighbour).
            v.flags &= ~VM_LOCKED
            if addr == v.start and addr + old_len == v.end and new is not v:
                v.anon_vma = None
        else:
            self._unmap(addr, addr + old_len)
        if new_len > old_len and new.flags & VM_LOCKED:
            self._populate(new_addr + old_len, new_addr + new_len, "mlock")
        return None

    def _move_page_tables(self, old: Vma, new: Vma, old_addr: int, new_addr: int,
                          length: int) -> None:
        """move_page_tables() (R16): whole PMD tables for 1 GiB extents, whole
        PTE tables for 2 MiB extents, otherwise a destination table per extent
        whose source table exists."""
        if length == 0:
            return
        old_end = old_addr + length
        # Kept pages move with the range, as their entries would have (move_ptes).
        kept = self._kept_in(old_addr, old_end)
        self._kept_drop(old_addr, old_end)
        moved_by = new_addr - old_addr
        self._move_page_table_extents(old, new, old_addr, new_addr, old_end)
        self._kept_add([a + moved_by for a in kept])

    def _move_page_table_extents(self, old: Vma, new: Vma, old_addr: int, new_addr: int,
                                 old_end: int) -> None:
        """The extents of :meth:`_move_page_tables`."""
        length = old_end - old_addr
        # try_realign_addr(PMD_MASK)
        align = old_addr & (PTE_SPAN - 1)
        if (align and length >= PTE_SPAN - align and align == new_addr & (PTE_SPAN - 1)
                and old.start == old_addr and new.start == new_addr
                and not self.vmas_overlapping(old_addr & ~(PTE_SPAN - 1), old_addr)
                and not self.vmas_overlapping(new_addr & ~(PTE_SPAN - 1), new_addr)):
            old_addr &= ~(PTE_SPAN - 1)
            new_addr &= ~(PTE_SPAN - 1)
        # Source 1 GiB spans with a PMD table; the walk jumps over the others
        # (it would only step through them), so a sparse move costs its tables.
        spans = _indices_in(self.pmd, old_addr >> PMD_SHIFT, (old_end - 1) >> PMD_SHIFT)
        while old_addr < old_end:
            extent = _extent(old_addr, new_addr, old_end, PMD_SPAN)
            if (old_addr >> PMD_SHIFT) not in self.pmd:
                k = bisect.bisect_right(spans, old_addr >> PMD_SHIFT)
                if k == len(spans):
                    break
                skip = (spans[k] << PMD_SHIFT) - old_addr
                old_addr += skip
                new_addr += skip
                continue
            self._ensure_pud(new_addr)
            if extent == PMD_SPAN and (new_addr >> PMD_SHIFT) not in self.pmd:
                self._move_pmd_table(old_addr, new_addr)
                old_addr += extent
                new_addr += extent
                continue
            extent = _extent(old_addr, new_addr, old_end, PTE_SPAN)
            oslot = old_addr >> PTE_SHIFT
            t = self.pte.get(oslot)
            if t is None:
                if oslot in self.file_thp:
                    self._move_file_thp(oslot, new_addr, extent)
                old_addr += extent
                new_addr += extent
                continue
            self._ensure_pmd(new_addr)
            nslot = new_addr >> PTE_SHIFT
            if extent == PTE_SPAN and nslot not in self.pte:
                self._free_pte_quiet(oslot)
                self._adopt_pte(nslot, t)
            else:
                if t.huge:
                    self._split_huge(oslot, t)
                dt = self._ensure_pte(nslot)
                oi = (old_addr & (PTE_SPAN - 1)) >> PAGE_SHIFT
                ni = (new_addr & (PTE_SPAN - 1)) >> PAGE_SHIFT
                k = extent >> PAGE_SHIFT
                moved = t.entries[oi:oi + k]
                for p in range(k):
                    if moved[p]:
                        dt.entries[ni + p] = moved[p]
                t.entries[oi:oi + k] = bytes(k)
                self._reclass(oslot, t)
                self._reclass(nslot, dt)
            old_addr += extent
            new_addr += extent

    def _move_file_thp(self, oslot: int, new_addr: int, extent: int) -> None:
        """move_page_tables() on a PMD-mapped file THP (R24): the destination
        PMD table is allocated (alloc_new_pmd()); a whole aligned 2 MiB extent
        moves the PMD (move_huge_pmd()), any other is split, which unmaps a
        file THP and allocates no destination PTE table."""
        self._ensure_pmd(new_addr)
        nslot = new_addr >> PTE_SHIFT
        self.file_thp.discard(oslot)
        if extent == PTE_SPAN and nslot not in self.pte and nslot not in self.file_thp:
            self.file_thp.add(nslot)
            if nslot in self.kept:
                self._kept_set(nslot, self.kept[nslot], 0)
        else:
            self.rss_pages -= ENTRIES

    def _move_pmd_table(self, old_addr: int, new_addr: int) -> None:
        """Move a whole PMD table (1 GiB) with the PTE tables and file THP
        PMDs under it."""
        self.pmd.discard(old_addr >> PMD_SHIFT)
        self.pmd.add(new_addr >> PMD_SHIFT)
        shift = (new_addr - old_addr) >> PTE_SHIFT
        for slot in list(self._pte_slots_in(old_addr, old_addr + PMD_SPAN)):
            t = self.pte[slot]
            self._free_pte_quiet(slot)
            self._adopt_pte(slot + shift, t)
        lo = old_addr >> PTE_SHIFT
        moved = _indices_in(self.file_thp, lo, lo + ENTRIES - 1)
        self.file_thp.difference_update(moved)
        self.file_thp.update(slot + shift for slot in moved)

    def fork(self) -> AddressSpace:
        """fork(): the child copies tables only for VMAs with an anon_vma or
        VM_MAYBE_GUARD that are not DONTFORK/WIPEONFORK; for those it
        allocates every table the parent has that intersects the VMA (R18)."""
        child = AddressSpace(pt_reclaim=self.pt_reclaim, thp_disabled=self.thp_disabled,
                             thp_sysfs=self.thp_sysfs)
        child.zap_listener = self.zap_listener
        for v in self.vmas:
            if v.flags & VM_DONTCOPY:
                continue
            c = v.copy(flags=v.flags & ~VM_LOCKED, uffd=None)
            if v.anon_vma is not None and not v.flags & VM_WIPEONFORK:
                c.anon_vma = AnonVma()
            else:
                c.anon_vma = None
            child.vmas.append(c)
            if c.file is not None:
                c.file.mappers.add(child)
            if v.flags & VM_WIPEONFORK or not (v.anon_vma is not None or v.flags & VM_MAYBE_GUARD):
                continue
            for shift, tables, ctables in ((PUD_SHIFT, self.pud, child.pud),
                                           (PMD_SHIFT, self.pmd, child.pmd)):
                ctables.update(_indices_in(tables, v.start >> shift, (v.end - 1) >> shift))
            # Kept pages go to the child as their entries would have (copy_page_range).
            child._kept_add(self._kept_in(v.start, v.end))
            for slot in self._pte_slots_in(v.start, v.end):
                t = self.pte[slot]
                ct = child.pte.get(slot)
                if ct is None:
                    ct = PteTable()
                    child.pte[slot] = ct
                    child._class_sets[ct.cls].add(slot)
                base = slot << PTE_SHIFT
                i = (max(v.start, base) - base) >> PAGE_SHIFT
                j = (min(v.end, base + PTE_SPAN) - base) >> PAGE_SHIFT
                ct.entries[i:j] = t.entries[i:j]
                ct.huge = t.huge
                child._reclass(slot, ct)
        return child

    def exit(self) -> None:
        """Tear the address space down (exit_mmap): every table is freed."""
        for v in self.vmas:
            if v.file is not None:
                v.file.mappers.discard(self)
        self.vmas.clear()
        self.stats.pte_freed += len(self.pte)
        self.stats.upper_freed += len(self.pmd) + len(self.pud)
        self.pte.clear()
        self.pmd.clear()
        self.pud.clear()
        self.file_thp.clear()
        for s in self._class_sets:
            s.clear()
        self.rss_pages = 0
        self.kept.clear()
        self.kept_pages = 0
        self.table_version += 1

    # ------------------------------------------------------------- reclaim

    def reclaim_table(self, slot: int, allowed: frozenset[TableClass]) -> int:
        """Free the PTE table at ``slot`` as an out-of-line reclaimer would.

        Only a table whose class is in ``allowed`` (never ``PINNED``) and that no
        userfaultfd-registered VMA covers is freed: its zero/file entries are
        zapped first, so a later access re-faults them (counted in
        ``stats.refault_*`` when the table comes back).  Returns the number of
        zapped entries, or -1 when the table was not freed.
        """
        t = self.pte.get(slot)
        if (t is None or t.cls == TableClass.PINNED or t.cls not in allowed
                or self.slot_is_uffd(slot)):
            return -1
        zapped = ENTRIES if t.huge else ENTRIES - t.entries.count(E_NONE)
        cls = t.cls
        if t.rss:
            # The page cache stays: its pages count as this process's until it maps,
            # zaps or unmaps them itself (a FILE table's RSS is its page-cache entries).
            self._kept_or(slot, int.from_bytes(t.entries.translate(_IS_FILE), "little"))
        self._free_pte(slot)
        self.reclaimed[slot] = (zapped, cls)
        return zapped

    def scan_young(self, slot: int) -> int:
        """A scanner's test-and-clear of the young bit of the table at ``slot``
        (``pmdp_test_and_clear_young``); returns the table's idle age in scan rounds
        after this scan: 0 when it was young, one more than before otherwise."""
        t = self.pte[slot]
        if t.young:
            t.young = False
            t.age = 0
        else:
            t.age += 1
        return t.age

    def register_uffd(self, start: int, end: int, ctx: object | None) -> str | None:
        """UFFDIO_REGISTER (``ctx``) or UNREGISTER (None) of [start, end): the
        VMAs are split at the boundaries and carry the context (which keeps
        VMAs of different contexts from merging)."""
        if start % PAGE or end % PAGE or end <= start or self.find_vma(start) is None:
            return "EINVAL"
        i, j = self._carve(start, end)
        for v in self.vmas[i:j]:
            v.uffd = ctx
        for k in range(min(j, len(self.vmas) - 1) - 1, i - 2, -1):
            if k >= 0:
                self._merge_at(k)
        self.uffd_vmas = sum(v.uffd is not None for v in self.vmas)
        self._uffd_cache = (-1, -1, -1, 0)
        return None

    def table_slots(self) -> list[int]:
        """All PTE-table slot indices, ascending."""
        return sorted(self.pte)

    def table_slots_in(self, start: int, end: int) -> list[int]:
        """The PTE-table slot indices that intersect [start, end), ascending."""
        return list(self._pte_slots_in(start, end))


def _vma_start(v: Vma) -> int:
    return v.start


#: A page mask with every page set (bit 8k for k < 512).
_BYTE_ONES = int.from_bytes(b"\x01" * ENTRIES, "little")


def _indices_in(tables: AbstractSet[int], lo: int, hi: int) -> list[int]:
    """Sorted members of ``tables`` in [lo, hi], walking whichever is smaller:
    the index range or the set (a huge sparse range costs its tables)."""
    if hi - lo + 1 <= len(tables):
        return [i for i in range(lo, hi + 1) if i in tables]
    return sorted(i for i in tables if lo <= i <= hi)


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def _first_marker(view: bytes) -> int:
    g = view.find(E_GUARD)
    u = view.find(E_UFFD_WP)
    if g < 0:
        return u
    return g if u < 0 else min(g, u)


def _extent(old_addr: int, new_addr: int, old_end: int, size: int) -> int:
    """get_extent(): bytes to the next ``size`` boundary of either side."""
    extent = size - (old_addr & (size - 1))
    extent = min(extent, old_end - old_addr)
    return min(extent, size - (new_addr & (size - 1)))


def _advise_nothing(v: Vma, a: int, b: int) -> str | None:
    return None


def _set(flag: int, clear: int = 0, forbid: Callable[[Vma], bool] | None = None
         ) -> Callable[[Vma], int | str | None]:
    def change(v: Vma) -> int | str | None:
        if forbid is not None and forbid(v):
            return "EINVAL"
        return (v.flags & ~clear) | flag
    return change


_FLAG_ADVICE: dict[str, Callable[[Vma], int | str | None]] = {
    "DONTFORK": _set(VM_DONTCOPY),
    "DOFORK": _set(0, VM_DONTCOPY),
    "WIPEONFORK": _set(VM_WIPEONFORK,
                       forbid=lambda v: v.file is not None or bool(v.flags & VM_SHARED)),
    "KEEPONFORK": _set(0, VM_WIPEONFORK),
    "HUGEPAGE": _set(VM_HUGEPAGE, VM_NOHUGEPAGE),
    "NOHUGEPAGE": _set(VM_NOHUGEPAGE, VM_HUGEPAGE),
    "RANDOM": _set(VM_RAND_READ, VM_SEQ_READ),
    "SEQUENTIAL": _set(VM_SEQ_READ, VM_RAND_READ),
    "NORMAL": _set(0, VM_SEQ_READ | VM_RAND_READ),
}
