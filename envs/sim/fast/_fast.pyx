# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Python bindings of the compiled simulator core (see ``envs/sim/fast/``).

``FastAddressSpace`` mirrors :class:`ptreclaim.envs.sim.pagetable.AddressSpace`'s
system-call API, so that op scripts replay on either (``replay.ScriptMachine(fast=True)``)
and the differential tests can compare the two models op by op.
"""

from libc.stdint cimport int64_t, uint8_t
from libcpp cimport bool as cbool
from libcpp.memory cimport shared_ptr, unique_ptr, make_shared
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.map cimport map as cmap
from libcpp.set cimport set as cset
from libcpp.unordered_map cimport unordered_map
from libcpp.utility cimport move

ctypedef int64_t i64

cdef extern from "pagetable.hpp" namespace "ptfast":
    cdef cppclass BackingFile:
        int kind
        i64 size
        cbool anon
    ctypedef shared_ptr[BackingFile] FileRef

    cdef cppclass Vma:
        i64 start, end, flags, pgoff
        FileRef file
        i64 anon_vma
        i64 uffd

    cdef cppclass PteTable:
        uint8_t e[512]
        uint8_t huge
        uint8_t cls
        int rss

    cdef cppclass Stats:
        i64 pte_allocated, pte_freed, upper_allocated, upper_freed, pte_reclaimed_on_zap
        i64 faults, refault_tables, refault_entries

    cdef cppclass AddressSpace:
        cbool pt_reclaim
        cbool thp_disabled
        int thp_sysfs
        vector[Vma*] vmas
        cmap[i64, PteTable] pte
        cset[i64] pmd, pud
        Stats stats
        i64 cls_count[4]
        i64 rss_pages
        unordered_map[i64, i64] reclaimed
        i64 table_version
        i64 uffd_vmas
        i64 class_version
        cbool logging
        cset[i64] touch_log
        i64 tables()
        i64 vm_pte_kib()
        Vma* find_vma(i64 addr)
        cbool any_vma_overlapping(i64 start, i64 end)
        cbool slot_is_uffd(i64 slot)
        i64 uffd_unreclaimable()
        int mmap(i64 addr, i64 length, int kind, cbool shared, i64 prot, FileRef file, i64 foff,
                 cbool noreserve, cbool fixed, cbool populate)
        int munmap(i64 start, i64 length)
        int mprotect(i64 start, i64 length, i64 prot)
        int mlock(i64 start, i64 length)
        int munlock(i64 start, i64 length)
        int madvise(i64 start, i64 length, int advice)
        int touch(i64 start, i64 length, cbool write, i64 stride)
        int mremap(i64 addr, i64 old_len, i64 new_len, cbool has_new_addr, i64 new_addr,
                   cbool dontunmap)
        int register_uffd(i64 start, i64 end, i64 ctx)
        unique_ptr[AddressSpace] fork()
        void exit()
        i64 reclaim_table(i64 slot, unsigned allowed_mask)
        string check_invariants()

    const char* err_name(int err)
    void AS_punch "ptfast::AddressSpace::punch"(BackingFile& file, i64 foff, i64 length)
    void AS_truncate "ptfast::AddressSpace::truncate"(BackingFile& file, i64 size)


#: opscript.ADVICES, in the order of the C++ ``Advice`` enum.
ADVICES = (
    "DONTNEED", "DONTNEED_LOCKED", "FREE", "PAGEOUT", "COLD", "WILLNEED", "REMOVE",
    "COLLAPSE", "HUGEPAGE", "NOHUGEPAGE", "POPULATE_READ", "POPULATE_WRITE",
    "DONTFORK", "DOFORK", "WIPEONFORK", "KEEPONFORK", "GUARD_INSTALL", "GUARD_REMOVE",
    "NORMAL", "RANDOM", "SEQUENTIAL",
)
cdef dict _ADVICE = {name: i for i, name in enumerate(ADVICES)}
cdef dict _KINDS = {"anon": 0, "file": 1, "shmem": 2}
cdef dict _FILE_KINDS = {"file": 0, "shmem": 1}
cdef dict _SYSFS = {"never": 0, "madvise": 1, "always": 2}


cdef inline object _err(int code):
    if code == 0:
        return None
    return err_name(code).decode()


cdef class FastBackingFile:
    """A file or shmem object shared by mappings (``pagetable.BackingFile``)."""

    cdef FileRef ref

    def __cinit__(self, str kind, i64 size, bint anon=False):
        if kind not in _FILE_KINDS:
            raise ValueError(f"kind must be 'file' or 'shmem', got {kind!r}")
        self.ref = make_shared[BackingFile]()
        self.ref.get().kind = _FILE_KINDS[kind]
        self.ref.get().size = size
        self.ref.get().anon = anon

    @property
    def kind(self) -> str:
        return "file" if self.ref.get().kind == 0 else "shmem"

    @property
    def size(self) -> int:
        return self.ref.get().size

    @property
    def anon(self) -> bool:
        return self.ref.get().anon


cdef class FastVma:
    """A read-only view of one VMA."""

    cdef readonly i64 start, end, flags, pgoff, anon_vma, uffd
    cdef readonly object file_key  # identity of the backing object (or None)

    def perms(self) -> str:
        f = self.flags
        return (("r" if f & 1 else "-") + ("w" if f & 2 else "-") + ("x" if f & 4 else "-")
                + ("s" if f & 8 else "p"))

    @property
    def anonymous(self) -> bool:
        return self.file_key is None


cdef FastVma _vma_view(Vma* v):
    cdef FastVma out = FastVma.__new__(FastVma)
    out.start = v.start
    out.end = v.end
    out.flags = v.flags
    out.pgoff = v.pgoff
    out.anon_vma = v.anon_vma
    out.uffd = v.uffd
    out.file_key = None if v.file.get() == NULL else <size_t>v.file.get()
    return out


cdef unsigned _class_mask(object allowed):
    cdef unsigned m = 0
    for c in allowed:
        m |= 1u << int(c)
    return m


cdef class FastAddressSpace:
    """The compiled page-table model with the system-call API of
    :class:`~ptreclaim.envs.sim.pagetable.AddressSpace` (errors as the same strings)."""

    cdef unique_ptr[AddressSpace] own

    def __cinit__(self, bint pt_reclaim=True, bint thp_disabled=True, str thp_sysfs="madvise",
                  bint _empty=False):
        if _empty:
            return
        self.own.reset(new AddressSpace())
        self.own.get().pt_reclaim = pt_reclaim
        self.own.get().thp_disabled = thp_disabled
        self.own.get().thp_sysfs = _SYSFS[thp_sysfs]

    cdef AddressSpace* mm(self):
        return self.own.get()

    # -- configuration
    @property
    def thp_disabled(self) -> bool:
        return self.mm().thp_disabled

    @thp_disabled.setter
    def thp_disabled(self, bint value) -> None:
        self.mm().thp_disabled = value

    @property
    def pt_reclaim(self) -> bool:
        return self.mm().pt_reclaim

    # -- queries
    @property
    def tables(self) -> int:
        return self.mm().tables()

    @property
    def vm_pte_kib(self) -> int:
        return self.mm().vm_pte_kib()

    @property
    def rss_pages(self) -> int:
        return self.mm().rss_pages

    @property
    def table_version(self) -> int:
        return self.mm().table_version

    @property
    def class_version(self) -> int:
        return self.mm().class_version

    @property
    def n_pte(self) -> int:
        return self.mm().pte.size()

    def class_counts(self) -> tuple:
        cdef AddressSpace* m = self.mm()
        return (m.cls_count[0], m.cls_count[1], m.cls_count[2], m.cls_count[3])

    def class_count(self, cls) -> int:
        return self.mm().cls_count[int(cls)]

    @property
    def vmas(self) -> list:
        cdef Vma* v
        return [_vma_view(v) for v in self.mm().vmas]

    def find_vma(self, i64 addr):
        cdef Vma* v = self.mm().find_vma(addr)
        return None if v == NULL else _vma_view(v)

    def has_table(self, i64 slot) -> bool:
        return self.mm().pte.count(slot) > 0

    def slot_is_uffd(self, i64 slot) -> bool:
        return self.mm().slot_is_uffd(slot)

    def uffd_unreclaimable(self) -> int:
        return self.mm().uffd_unreclaimable()

    def check_invariants(self) -> None:
        cdef string msg = self.mm().check_invariants()
        assert msg.size() == 0, msg.decode()

    def stats(self) -> dict:
        cdef Stats* s = &self.mm().stats
        return {"pte_allocated": s.pte_allocated, "pte_freed": s.pte_freed,
                "upper_allocated": s.upper_allocated, "upper_freed": s.upper_freed,
                "pte_reclaimed_on_zap": s.pte_reclaimed_on_zap, "faults": s.faults,
                "refault_tables": s.refault_tables, "refault_entries": s.refault_entries}

    def state(self) -> dict:
        """The whole model state in canonical form (see ``fast.canonical_state``)."""
        cdef AddressSpace* m = self.mm()
        cdef Vma* v
        cdef list tables = []
        cdef uint8_t* e
        for item in m.pte:
            e = item.second.e
            tables.append((item.first, bytes(e[:512]), item.second.huge, item.second.cls,
                           item.second.rss))
        return {
            "vmas": [(v.start, v.end, v.flags, v.pgoff,
                      None if v.file.get() == NULL else <size_t>v.file.get(),
                      v.anon_vma or None, v.uffd or None) for v in m.vmas],
            "pte": tables,
            "pmd": sorted(m.pmd),
            "pud": sorted(m.pud),
            "stats": self.stats(),
            "class_counts": self.class_counts(),
            "rss_pages": m.rss_pages,
            "reclaimed": sorted(dict(m.reclaimed).items()),
            "table_version": m.table_version,
            "class_version": m.class_version,
            "uffd_vmas": m.uffd_vmas,
        }

    # -- system calls
    def mmap(self, i64 addr, i64 length, *, str kind="anon", bint shared=False, i64 prot=3,
             FastBackingFile file=None, i64 foff=0, bint noreserve=False, bint fixed=False,
             bint populate=False):
        cdef FileRef ref
        if kind not in _KINDS:
            raise ValueError(f"unknown mapping kind {kind!r}")
        if kind != "anon" and file is None and not (length <= 0 or addr % 4096 or foff % 4096):
            raise ValueError(f"a {kind} mapping needs a backing file")
        if file is not None:
            ref = file.ref
        return _err(self.mm().mmap(addr, length, 0 if kind == "anon" else 1, shared, prot, ref,
                                   foff, noreserve, fixed, populate))

    def munmap(self, i64 start, i64 length):
        return _err(self.mm().munmap(start, length))

    def mprotect(self, i64 start, i64 length, i64 prot):
        return _err(self.mm().mprotect(start, length, prot))

    def mlock(self, i64 start, i64 length):
        return _err(self.mm().mlock(start, length))

    def munlock(self, i64 start, i64 length):
        return _err(self.mm().munlock(start, length))

    def madvise(self, i64 start, i64 length, str advice):
        return _err(self.mm().madvise(start, length, _ADVICE.get(advice, -1)))

    def touch(self, i64 start, i64 length, bint write, i64 stride=4096):
        return _err(self.mm().touch(start, length, write, stride))

    def mremap(self, i64 addr, i64 old_len, i64 new_len, new_addr=None, bint dontunmap=False):
        cdef bint has = new_addr is not None
        cdef i64 dst = new_addr if has else 0
        return _err(self.mm().mremap(addr, old_len, new_len, has, dst, dontunmap))

    def register_uffd(self, i64 start, i64 end, ctx):
        return _err(self.mm().register_uffd(start, end, 0 if ctx is None else int(ctx)))

    def punch(self, FastBackingFile file, i64 foff, i64 length) -> None:
        AS_punch(file.ref.get()[0], foff, length)

    def truncate(self, FastBackingFile file, i64 size) -> None:
        AS_truncate(file.ref.get()[0], size)

    def fork(self) -> FastAddressSpace:
        cdef FastAddressSpace child = FastAddressSpace(_empty=True)
        child.own = move(self.mm().fork())
        return child

    def exit(self) -> None:
        self.mm().exit()

    def reclaim_table(self, i64 slot, allowed) -> int:
        return self.mm().reclaim_table(slot, _class_mask(allowed))
