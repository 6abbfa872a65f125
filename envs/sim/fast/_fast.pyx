# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Python bindings of the compiled simulator core (see ``envs/sim/fast/``).

``FastAddressSpace`` mirrors :class:`ptreclaim.envs.sim.pagetable.AddressSpace`'s
system-call API, so that op scripts replay on either (``replay.ScriptMachine(fast=True)``)
and the differential tests can compare the two models op by op.
"""

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
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
    cdef cppclass SlotMap[T]:
        size_t size()
        size_t count(i64 slot)
        T* find(i64 slot)
        void slots_in(i64 lo, i64 hi, vector[i64]& out)

    cdef cppclass SlotSet:
        size_t size()
        cbool empty()
        cbool count(i64 i)
        void slots_in(i64 lo, i64 hi, vector[i64]& out)

    cdef cppclass PageBits:
        uint64_t w[8]

    cdef cppclass BackingFile:
        int kind
        i64 size
        cbool anon
        SlotMap[PageBits] cache
        SlotSet huge
    ctypedef shared_ptr[BackingFile] FileRef

    cdef cppclass Vma:
        i64 start, end, flags, pgoff
        FileRef file
        i64 anon_vma
        i64 uffd

    cdef cppclass PteTable:
        void unpack(uint8_t* out) const
        uint8_t huge
        uint8_t cls
        uint8_t young
        int rss
        int age

    cdef cppclass Stats:
        i64 pte_allocated, pte_freed, upper_allocated, upper_freed, pte_reclaimed_on_zap
        i64 faults, refault_tables, refault_entries
        i64 refault_empty, refault_zero, refault_file

    cdef cppclass IndexSet:
        size_t size()
        vector[i64] all()

    cdef cppclass AddressSpace:
        cbool pt_reclaim
        cbool thp_disabled
        int thp_sysfs
        vector[Vma*] vmas
        SlotMap[PteTable] pte
        IndexSet pmd, pud
        Stats stats
        i64 cls_count[4]
        i64 rss_pages
        SlotMap[i64] reclaimed
        SlotMap[PageBits] kept
        i64 kept_pages
        i64 table_version
        i64 uffd_vmas
        i64 class_version
        SlotSet file_thp
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
        i64 scan_young(i64 slot)
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

    @property
    def cache(self) -> dict:
        """chunk -> one byte per page, 1 = cached (a copy of ``BackingFile.cache``)."""
        return _file_cache(self.ref.get())

    @property
    def huge(self) -> set:
        """Chunks held by one PMD-sized folio (a copy of ``BackingFile.huge``)."""
        return set(_slot_set(self.ref.get().huge))


cdef list _slot_set(const SlotSet& s):
    cdef vector[i64] out
    s.slots_in(-(1 << 62), 1 << 62, out)
    return list(out)


cdef bytearray _page_bytes(const PageBits* bits):
    """512 pages as one byte each, 1 where ``bits`` has the page (the reference's form:
    ``BackingFile.cache``; read as a little-endian int, an ``AddressSpace.kept`` mask)."""
    cdef bytearray pages = bytearray(512)
    cdef int k
    for k in range(512):
        if (bits.w[k >> 6] >> (k & 63)) & 1:
            pages[k] = 1
    return pages


cdef dict _file_cache(BackingFile* f):
    """The page cache of ``f`` as ``pagetable.BackingFile.cache`` holds it."""
    cdef vector[i64] chunks
    cdef dict out = {}
    f.cache.slots_in(-(1 << 62), 1 << 62, chunks)
    for chunk in chunks:
        out[chunk] = _page_bytes(f.cache.find(chunk))
    return out


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


cdef bytes _entries(const PteTable& t):
    """A table's 512 entries, a byte each (tables keep them in 4 bits)."""
    cdef uint8_t out[512]
    t.unpack(out)
    return bytes(out[:512])


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
    def kept_pages(self) -> int:
        return self.mm().kept_pages

    @property
    def table_version(self) -> int:
        return self.mm().table_version

    @property
    def class_version(self) -> int:
        return self.mm().class_version

    @property
    def n_pte(self) -> int:
        return self.mm().pte.size()

    @property
    def file_thp(self) -> set:
        """Slots PMD-mapping a file THP (a copy of ``AddressSpace.file_thp``, R24)."""
        return set(_slot_set(self.mm().file_thp))

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
                "refault_tables": s.refault_tables, "refault_entries": s.refault_entries,
                "refault_empty": s.refault_empty, "refault_zero": s.refault_zero,
                "refault_file": s.refault_file}

    def state(self) -> dict:
        """The whole model state in canonical form (see ``fast.canonical_state``)."""
        cdef AddressSpace* m = self.mm()
        cdef Vma* v
        cdef list tables = []
        cdef vector[i64] slots
        cdef PteTable* t
        cdef list files = []
        cdef set seen = set()
        cdef BackingFile* f
        m.pte.slots_in(-(1 << 62), 1 << 62, slots)
        for slot in slots:
            t = m.pte.find(slot)
            tables.append((slot, _entries(t[0]), t.huge, t.cls, t.rss, bool(t.young), t.age))
        # The VMAs' files in order of first appearance (how canonical_state numbers them).
        for v in m.vmas:
            f = v.file.get()
            if f == NULL or <size_t>f in seen:
                continue
            seen.add(<size_t>f)
            files.append(("file" if f.kind == 0 else "shmem", f.size,
                          sorted((c, bytes(p)) for c, p in _file_cache(f).items()),
                          _slot_set(f.huge)))
        return {
            "vmas": [(v.start, v.end, v.flags, v.pgoff,
                      None if v.file.get() == NULL else <size_t>v.file.get(),
                      v.anon_vma or None, v.uffd or None) for v in m.vmas],
            "pte": tables,
            "pmd": list(m.pmd.all()),
            "pud": list(m.pud.all()),
            "stats": self.stats(),
            "class_counts": self.class_counts(),
            "rss_pages": m.rss_pages,
            "reclaimed": self._reclaimed(),
            "kept": self._kept(),
            "kept_pages": m.kept_pages,
            "table_version": m.table_version,
            "class_version": m.class_version,
            "uffd_vmas": m.uffd_vmas,
            "file_thp": _slot_set(m.file_thp),
            "files": files,
        }

    cdef list _kept(self):
        cdef vector[i64] slots
        cdef AddressSpace* m = self.mm()
        m.kept.slots_in(-(1 << 62), 1 << 62, slots)
        return [(s, int.from_bytes(_page_bytes(m.kept.find(s)), "little")) for s in slots]

    cdef list _reclaimed(self):
        cdef vector[i64] slots
        cdef AddressSpace* m = self.mm()
        m.reclaimed.slots_in(-(1 << 62), 1 << 62, slots)
        return [(s, m.reclaimed.find(s)[0] >> 2, m.reclaimed.find(s)[0] & 3) for s in slots]

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

    def scan_young(self, i64 slot) -> int:
        return self.mm().scan_young(slot)


# =========================================================================== simulation

cimport numpy as cnp
import numpy as np
from cpython.pycapsule cimport PyCapsule_GetPointer
from libcpp.pair cimport pair

cnp.import_array()

cdef extern from "numpy/random/bitgen.h":
    ctypedef struct bitgen_t:
        pass

cdef extern from "pool.hpp" namespace "ptfast":
    cdef cppclass StepPool:
        StepPool(int threads, int spin_us, void (*on_exit)())
        int threads()
        int64_t helper_steps()

cdef extern from "sim.hpp" namespace "ptfast":
    cdef cppclass Rng:
        bitgen_t* bg
        void* gen
        vector[i64] choice_noreplace(const vector[i64]& cand, i64 k)

    cdef cppclass Costs:
        double minor_fault_us, table_alloc_us, scan_table_us, free_table_us, invlpg_us
        i64 tlb_single_page_flush_ceiling
        double full_flush_us, ipi_us, rmap_lock_us, young_clear_us, mmap_write_lock_us
        double pmd_lock_us, uffd_refault_us, alloc_failure_stall_us, oom_kill_harm_us

    cdef cppclass MachineConfig:
        i64 normal_pages, movable_pages, cpus
        double tick_ms
        i64 wmin, wlow, whigh
        double base_fraction, volatility, reversion, burst_prob, burst_fraction
        i64 burst_ticks, oom_failures, oom_window_ticks
        i64 burst_ramp_ticks, diurnal_period_ticks
        double diurnal_amplitude, diurnal_phase
        cbool hard_limit_kill
        i64 throttle_ticks
        cbool keep_reclaimed_cache

    cdef cppclass Psi:
        double some_avg10, some_avg60, full_avg10, full_avg60

    cdef cppclass Machine:
        MachineConfig cfg
        Rng* rng
        double tenant_pages
        i64 burst_left
        Psi psi
        i64 normal_free, movable_free

    cdef cppclass Process:
        i64 pid
        string name, family
        unique_ptr[AddressSpace] mm
        cbool sane, alive, has_soft, has_hard
        i64 cpus, throttled_until, soft_limit, hard_limit, cursor
        double stall_us, refault_rate, growth_rate
        vector[i64] history
        i64 pt_bytes()
        i64 rss_bytes()
        i64 reclaimable_tables()
        cbool over_soft_limit()
        i64 badness()

    cdef cppclass PassResult:
        i64 scanned, freed, zapped_entries
        i64 freed_by_class[4]
        double cpu_us, stall_us
        vector[i64] targets
        i64 seen[3]
        i64 idle1[3]
        i64 idle4[3]

    cdef cppclass TickRecord:
        i64 tick, normal_free_pages, movable_free_pages, tenant_pages, pt_pages
        i64 reclaimable_tables, user_pages, deficit_pages
        cbool failure
        i64 oom_kill
        double psi_some_avg10, psi_full_avg10, stall_us
        i64 refault_tables, refault_entries, harm_events
        double reclaim_cpu_us
        i64 reclaim_freed, reclaim_scanned

    cdef cppclass Params:
        unordered_map[string, double] num
        unordered_map[string, string] str "str"

    cdef cppclass Workload:
        Simulation* sim
        Rng rng
        string name, family
        cbool sane
        vector[Process*] procs
        i64 start_tick, stop_tick

    cdef cppclass SimConfig:
        i64 ticks
        cbool pt_reclaim
        cbool mmap_write_lock

    cdef cppclass Simulation:
        SimConfig cfg
        Costs costs
        Machine machine
        Rng rng
        vector[unique_ptr[Process]] procs
        vector[unique_ptr[Workload]] workloads
        i64 tick_no
        vector[TickRecord] history
        vector[pair[i64, string]] events
        double refault_class_rate[3]
        cbool recording
        Process* spawn(const string& name, const string& family, cbool sane, i64 cpus)
        const TickRecord& step()
        PassResult reclaim(Process* target, unsigned classes, i64 budget, i64 min_idle)
        PassResult reclaim_exact(Process* p, const vector[i64]& slots, unsigned classes)
        void record_touches()
        vector[cmap[i64, vector[i64]]] touch_trace
        unique_ptr[Simulation] clone(const vector[Rng]& workload_rngs, const Rng& sim_rng)
        i64 pt_bytes()
        i64 index_of(const Process* p)

    cdef cppclass EnvConfig:
        i64 decision_ticks, max_steps
        vector[i64] budgets
        vector[i64] idle_levels
        cbool hard_limit_action, candidate_counts, burst_memory
        double w[5]

    cdef cppclass EnvCore:
        EnvConfig cfg
        Simulation* sim
        i64 steps, ticks_since_pass, refaults_since_pass, rec_lo, rec_hi
        cbool has_last
        PassResult last
        i64 info_failures, info_freed, info_reclaimable_last
        vector[i64] info_oom
        void attach(Simulation* s)
        void reset_ticks()
        double step(const i64* action, i64 n_action, float* obs, double* terms, cbool* truncated)
        void observe(float* obs)
        Process* target(i64 choice)
        cbool apply_action(const i64* a, i64 n)
        int n_obs()

    unique_ptr[Workload] make_workload "ptfast::make_workload"(const string& family, const Params& p) except +
    void release_thread_caches "ptfast::release_thread_caches"()
    void step_envs(StepPool& pool, EnvCore* const* envs, i64 n, const i64* actions, i64 k,
                   float* obs, i64 width, double* rewards, double* const* terms,
                   cbool* truncated) nogil

cdef extern from "trace_program.hpp" namespace "ptfast":
    cdef cppclass TraceProgram:
        vector[i64] ops, offsets
        vector[uint8_t] key_shmem
        vector[double] t_ms
    void set_trace_program(Workload& w, shared_ptr[TraceProgram] prog) except +
    cbool has_workload "ptfast::has_workload"(const string& family)

    void (*g_py_permutation)(void* gen, i64 n, i64* out) noexcept nogil
    i64 n_choice_draws()


cdef i64 _n_permutation = 0


def callback_counts() -> tuple:
    """(choice, permutation) draws made so far: ``Generator.choice`` without replacement in
    the core (``Rng::choice_noreplace``), ``Generator.permutation`` through the Python
    Generator."""
    return (n_choice_draws(), _n_permutation)


def choice_noreplace(object gen, cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] cand,
                     i64 k) -> cnp.ndarray:
    """``gen.choice(cand, size=k, replace=False)`` as the core draws it (for the tests that
    compare the two)."""
    if not 0 <= k <= cand.shape[0]:
        raise ValueError(f"k must be in [0, {cand.shape[0]}]")
    cdef Rng r
    r.bg = _bitgen(gen)
    cdef i64* data = <i64*>cnp.PyArray_DATA(cand)
    cdef vector[i64] c
    c.assign(data, data + cand.shape[0])
    cdef vector[i64] got = r.choice_noreplace(c, k)
    out = np.empty(k, dtype=np.int64)
    if k:
        memcpy(cnp.PyArray_DATA(out), got.data(), k * sizeof(i64))
    return out


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx): its hash of the entropy
# into a pool of four 32-bit words, and of the pool into the words asked for.
cdef uint32_t _SS_INIT_A = 0x43b0d7e5
cdef uint32_t _SS_MULT_A = 0x931e8875
cdef uint32_t _SS_INIT_B = 0x8b51f9dd
cdef uint32_t _SS_MULT_B = 0x58f38ded
cdef uint32_t _SS_MIX_L = 0xca01f9dd
cdef uint32_t _SS_MIX_R = 0x4973f715


cdef inline uint32_t _ss_hashmix(uint32_t value, uint32_t* hash_const) noexcept:
    value ^= hash_const[0]
    hash_const[0] *= _SS_MULT_A
    value *= hash_const[0]
    return value ^ (value >> 16)


cdef inline uint32_t _ss_mix(uint32_t x, uint32_t y) noexcept:
    cdef uint32_t r = _SS_MIX_L * x - _SS_MIX_R * y
    return r ^ (r >> 16)


def seed_state(object entropy, Py_ssize_t n_words, bint wide) -> cnp.ndarray:
    """``numpy.random.SeedSequence(entropy).generate_state(n_words, dtype)`` for an integer
    ``entropy`` in [0, 2**64) and no spawn key, ``dtype`` uint64 if ``wide`` else uint32:
    the same words, without SeedSequence's Python-level work (~8.8 µs of the ~9.4 µs that
    ``numpy.random.default_rng(seed)`` takes here; ``envs/sim/seeding.py``)."""
    if n_words < 0:
        raise ValueError(f"n_words must be >= 0, got {n_words}")
    cdef uint64_t e = entropy  # OverflowError outside [0, 2**64)
    # The entropy as little-endian 32-bit words (0 is one word), then the pool.
    cdef uint32_t ent[2]
    cdef int n_ent = 0
    if e == 0:
        ent[0] = 0
        n_ent = 1
    while e:
        ent[n_ent] = <uint32_t>e
        n_ent += 1
        e >>= 32
    cdef uint32_t hash_const = _SS_INIT_A
    cdef uint32_t pool[4]
    cdef int i, j
    for i in range(4):
        pool[i] = _ss_hashmix(ent[i] if i < n_ent else 0, &hash_const)
    for i in range(4):
        for j in range(4):
            if i != j:
                pool[j] = _ss_mix(pool[j], _ss_hashmix(pool[i], &hash_const))
    # (Two entropy words at most: none is left over the pool's four.)
    out = np.empty(n_words, dtype=np.uint64 if wide else np.uint32)
    cdef uint32_t* w32 = <uint32_t*>cnp.PyArray_DATA(out)
    cdef uint64_t* w64 = <uint64_t*>cnp.PyArray_DATA(out)
    cdef Py_ssize_t n32 = 2 * n_words if wide else n_words
    cdef Py_ssize_t k
    cdef uint32_t d, lo = 0
    hash_const = _SS_INIT_B
    for k in range(n32):
        d = pool[k % 4] ^ hash_const
        hash_const *= _SS_MULT_B
        d *= hash_const
        d ^= d >> 16
        if not wide:
            w32[k] = d
        elif k % 2 == 0:
            lo = d
        else:  # numpy pairs the 32-bit words little-endian, whatever the machine
            w64[k // 2] = (<uint64_t>d << 32) | lo
    return out


cdef void _py_permutation(void* gen, i64 n, i64* out) noexcept with gil:
    # with gil: step_batch's helper threads call it without the GIL.
    global _n_permutation
    _n_permutation += 1
    res = np.ascontiguousarray((<object>gen).permutation(n), dtype=np.int64)
    memcpy(out, cnp.PyArray_DATA(res), n * sizeof(i64))


g_py_permutation = _py_permutation


cdef class FastTraceProgram:
    """A compiled trace-replay program (``trace.compile_trace``) in the core's encoding:
    ``ops`` (n, 10) int64 rows of opcode and arguments, ``offsets`` (samples + 1),
    ``key_shmem`` per file key, ``t_ms`` the sample times."""

    cdef shared_ptr[TraceProgram] prog

    def __cinit__(self, cnp.ndarray[cnp.int64_t, ndim=2, mode="c"] ops,
                  cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] offsets, list key_shmem,
                  cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] t_ms):
        if ops.shape[1] != 10:
            raise ValueError("ops must have 10 columns")
        self.prog = make_shared[TraceProgram]()
        cdef TraceProgram* p = self.prog.get()
        cdef i64 i
        cdef i64* data = <i64*>cnp.PyArray_DATA(ops)
        p.ops.assign(data, data + ops.shape[0] * 10)
        cdef i64* off = <i64*>cnp.PyArray_DATA(offsets)
        p.offsets.assign(off, off + offsets.shape[0])
        for flag in key_shmem:
            p.key_shmem.push_back(1 if flag else 0)
        cdef double* tm = <double*>cnp.PyArray_DATA(t_ms)
        p.t_ms.assign(tm, tm + t_ms.shape[0])

    def __deepcopy__(self, memo: dict) -> FastTraceProgram:
        # Immutable once built: copies of a trace (the oracle deep-copies simulations,
        # traces included) share it.
        return self

    def __copy__(self) -> FastTraceProgram:
        return self


def has_family(str family) -> bool:
    """Whether the compiled core has a port of workload family ``family``."""
    return has_workload(family.encode())


cdef bitgen_t* _bitgen(object gen) except NULL:
    capsule = gen.bit_generator.capsule
    return <bitgen_t*>PyCapsule_GetPointer(capsule, b"BitGenerator")


cdef class SimCore:
    """One compiled :class:`~ptreclaim.envs.sim.simulator.Simulation` (built by
    :class:`ptreclaim.envs.sim.fast.simulation.FastSimulation`)."""

    cdef unique_ptr[Simulation] own
    cdef list _gens  # the numpy Generators whose bit generators the core borrows
    cdef public list proc_names

    def __cinit__(self):
        self.own.reset(new Simulation())
        self._gens = []
        self.proc_names = []

    cdef Simulation* s(self):
        return self.own.get()

    def configure(self, dict machine, dict costs, i64 ticks, bint pt_reclaim,
                  bint mmap_write_lock, object rng) -> None:
        cdef Simulation* s = self.s()
        cdef MachineConfig* m = &s.machine.cfg
        s.cfg.ticks = ticks
        s.cfg.pt_reclaim = pt_reclaim
        s.cfg.mmap_write_lock = mmap_write_lock
        m.normal_pages = machine["normal_pages"]
        m.movable_pages = machine["movable_pages"]
        m.cpus = machine["cpus"]
        m.tick_ms = machine["tick_ms"]
        m.wmin, m.wlow, m.whigh = machine["wmin"], machine["wlow"], machine["whigh"]
        m.base_fraction = machine["base_fraction"]
        m.volatility = machine["volatility"]
        m.reversion = machine["reversion"]
        m.burst_prob = machine["burst_prob"]
        m.burst_fraction = machine["burst_fraction"]
        m.burst_ticks = machine["burst_ticks"]
        m.burst_ramp_ticks = machine["burst_ramp_ticks"]
        m.diurnal_amplitude = machine["diurnal_amplitude"]
        m.diurnal_period_ticks = machine["diurnal_period_ticks"]
        m.diurnal_phase = machine["diurnal_phase"]
        m.oom_failures = machine["oom_failures"]
        m.oom_window_ticks = machine["oom_window_ticks"]
        m.hard_limit_kill = machine["hard_limit_kill"]
        m.throttle_ticks = machine["throttle_ticks"]
        m.keep_reclaimed_cache = machine["keep_reclaimed_cache"]
        s.machine.tenant_pages = machine["tenant_pages"]
        s.machine.normal_free = m.normal_pages
        s.machine.movable_free = m.movable_pages
        s.rng.bg = _bitgen(rng)
        s.rng.gen = <void*>rng
        self._gens.append(rng)
        s.machine.rng = &s.rng
        c = &s.costs
        c.minor_fault_us = costs["minor_fault_us"]
        c.table_alloc_us = costs["table_alloc_us"]
        c.scan_table_us = costs["scan_table_us"]
        c.free_table_us = costs["free_table_us"]
        c.invlpg_us = costs["invlpg_us"]
        c.tlb_single_page_flush_ceiling = costs["tlb_single_page_flush_ceiling"]
        c.full_flush_us = costs["full_flush_us"]
        c.ipi_us = costs["ipi_us"]
        c.rmap_lock_us = costs["rmap_lock_us"]
        c.young_clear_us = costs["young_clear_us"]
        c.mmap_write_lock_us = costs["mmap_write_lock_us"]
        c.pmd_lock_us = costs["pmd_lock_us"]
        c.uffd_refault_us = costs["uffd_refault_us"]
        c.alloc_failure_stall_us = costs["alloc_failure_stall_us"]
        c.oom_kill_harm_us = costs["oom_kill_harm_us"]

    def add_workload(self, str family, dict num, dict text, object rng, str name, bint sane,
                     i64 start_tick, i64 stop_tick, FastTraceProgram program=None) -> None:
        cdef Params p
        for k, v in num.items():
            p.num[k.encode()] = v
        for k, v in text.items():
            p.str[k.encode()] = v.encode()
        cdef unique_ptr[Workload] w = make_workload(family.encode(), p)
        w.get().sim = self.s()
        w.get().rng.bg = _bitgen(rng)
        w.get().rng.gen = <void*>rng
        self._gens.append(rng)
        w.get().name = name.encode()
        w.get().family = family.encode()
        w.get().sane = sane
        w.get().start_tick = start_tick
        w.get().stop_tick = stop_tick
        if program is not None:
            set_trace_program(w.get()[0], program.prog)
        self.s().workloads.push_back(move(w))

    # -- the tick
    def step(self) -> int:
        """Advance one tick; returns the index of its record."""
        self.s().step()
        return self.s().history.size() - 1

    def run(self, i64 ticks) -> None:
        cdef i64 k
        for k in range(ticks):
            self.s().step()

    @property
    def tick_no(self) -> int:
        return self.s().tick_no

    @property
    def n_records(self) -> int:
        return self.s().history.size()

    def record(self, i64 i) -> tuple:
        """Fields of tick record ``i`` in ``TickRecord`` order (oom_kill as a process index)."""
        cdef TickRecord* r = &self.s().history[i]
        return (r.tick, r.normal_free_pages, r.movable_free_pages, r.tenant_pages, r.pt_pages,
                r.reclaimable_tables, r.user_pages, r.deficit_pages, r.failure,
                None if r.oom_kill < 0 else r.oom_kill, r.psi_some_avg10, r.psi_full_avg10,
                r.stall_us, r.refault_tables, r.refault_entries, r.harm_events,
                r.reclaim_cpu_us, r.reclaim_freed, r.reclaim_scanned)

    def events_since(self, i64 i) -> list:
        cdef list out = []
        cdef i64 k
        for k in range(i, self.s().events.size()):
            out.append((self.s().events[k].first, self.s().events[k].second.decode()))
        return out

    @property
    def n_events(self) -> int:
        return self.s().events.size()

    # -- machine
    def machine_state(self) -> tuple:
        cdef Machine* m = &self.s().machine
        return (m.normal_free, m.movable_free, m.tenant_pages, m.psi.some_avg10,
                m.psi.some_avg60, m.psi.full_avg10, m.psi.full_avg60, m.burst_left)

    # -- processes
    @property
    def n_procs(self) -> int:
        return self.s().procs.size()

    def proc_info(self, i64 i) -> tuple:
        """(pid, name, family, sane, cpus, alive, throttled_until)."""
        cdef Process* p = self.s().procs[i].get()
        return (p.pid, p.name.decode(), p.family.decode(), p.sane, p.cpus, p.alive,
                p.throttled_until)

    def proc_numbers(self, i64 i) -> tuple:
        """(tables, rss_pages, pt_bytes, rss_bytes, reclaimable_tables, class counts...)."""
        cdef Process* p = self.s().procs[i].get()
        cdef AddressSpace* mm = p.mm.get()
        return (mm.tables(), mm.rss_pages, p.pt_bytes(), p.rss_bytes(), p.reclaimable_tables(),
                mm.cls_count[0], mm.cls_count[1], mm.cls_count[2], mm.cls_count[3])

    def proc_limits(self, i64 i) -> tuple:
        cdef Process* p = self.s().procs[i].get()
        return (p.soft_limit if p.has_soft else None, p.hard_limit if p.has_hard else None)

    def set_limit(self, i64 i, bint hard, object limit) -> None:
        cdef Process* p = self.s().procs[i].get()
        if hard:
            p.has_hard = limit is not None
            p.hard_limit = 0 if limit is None else limit
        else:
            p.has_soft = limit is not None
            p.soft_limit = 0 if limit is None else limit

    def proc_history(self, i64 i) -> list:
        return list(self.s().procs[i].get().history)

    def proc_stall(self, i64 i) -> float:
        return self.s().procs[i].get().stall_us

    def proc_rates(self, i64 i) -> tuple:
        """(growth_rate, refault_rate) of process ``i`` (``process.Process``)."""
        cdef Process* p = self.s().procs[i].get()
        return (p.growth_rate, p.refault_rate)

    @property
    def refault_class_rate(self) -> list:
        cdef Simulation* s = self.s()
        return [s.refault_class_rate[0], s.refault_class_rate[1], s.refault_class_rate[2]]

    def proc_state(self, i64 i) -> dict:
        """The process's address space in canonical form (``check.canonical_state``)."""
        cdef FastAddressSpace view = FastAddressSpace(_empty=True)
        cdef Process* p = self.s().procs[i].get()
        # Borrow the address space for the call only; release it before returning.
        view.own.reset(p.mm.get())
        try:
            return view.state()
        finally:
            view.own.release()

    # -- reclaim
    def reclaim(self, object target, unsigned classes, i64 budget, i64 min_idle=0) -> tuple:
        cdef Process* t = NULL
        if target is not None:
            t = self.s().procs[<i64>target].get()
        cdef PassResult r = self.s().reclaim(t, classes, budget, min_idle)
        return _pass_tuple(r)

    def reclaim_exact(self, i64 proc, list slots, unsigned classes) -> tuple:
        cdef vector[i64] v = slots
        cdef PassResult r = self.s().reclaim_exact(self.s().procs[proc].get(), v, classes)
        return _pass_tuple(r)

    def pt_bytes(self) -> int:
        return self.s().pt_bytes()

    # -- the offline oracle's look into the future
    def clone(self) -> SimCore:
        """A deep copy (``copy.deepcopy`` of the reference): same state, and generators
        that are copies of this core's, so the copy draws what this one would."""
        import copy
        cdef SimCore c = SimCore.__new__(SimCore)
        cdef vector[Rng] wrngs
        cdef Rng r
        gens = [copy.deepcopy(g) for g in self._gens]
        c._gens = gens
        c.proc_names = list(self.proc_names)
        r.bg = _bitgen(gens[0])
        r.gen = <void*>gens[0]
        cdef Rng sim_rng = r
        for g in gens[1:]:
            r.bg = _bitgen(g)
            r.gen = <void*>g
            wrngs.push_back(r)
        c.own = move(self.s().clone(wrngs, sim_rng))
        return c

    def record_touches(self) -> None:
        self.s().record_touches()

    def touch_trace(self) -> list:
        """Per process index: {slot: [ticks it was touched]}."""
        cdef list out = []
        cdef size_t i
        for i in range(self.s().touch_trace.size()):
            out.append({kv.first: list(kv.second) for kv in self.s().touch_trace[i]})
        return out

    def tables_in_class(self, i64 proc, int cls) -> set:
        cdef AddressSpace* mm = self.s().procs[proc].get().mm.get()
        cdef vector[i64] slots
        cdef set out = set()
        mm.pte.slots_in(-(1 << 62), 1 << 62, slots)
        for slot in slots:
            if mm.pte.find(slot).cls == cls:
                out.add(slot)
        return out

    def slot_is_uffd(self, i64 proc, i64 slot) -> bool:
        return self.s().procs[proc].get().mm.get().slot_is_uffd(slot)

    def table(self, i64 proc, i64 slot) -> tuple:
        """(entries as bytes, huge) of one PTE table."""
        cdef PteTable* t = self.s().procs[proc].get().mm.get().pte.find(slot)
        if t == NULL:
            raise KeyError(slot)
        return _entries(t[0]), t.huge


cdef tuple _pass_tuple(PassResult& r):
    return (r.scanned, r.freed, [r.freed_by_class[0], r.freed_by_class[1],
            r.freed_by_class[2], r.freed_by_class[3]], r.zapped_entries, r.cpu_us,
            r.stall_us, list(r.targets), [r.seen[0], r.seen[1], r.seen[2]],
            [r.idle1[0], r.idle1[1], r.idle1[2]], [r.idle4[0], r.idle4[1], r.idle4[2]])


cdef class EnvStep:
    """The env's decision step on a :class:`SimCore` (``PageTableReclaimEnv`` with the
    compiled backend): apply an action, run the ticks, observe, price."""

    cdef EnvCore core
    cdef SimCore simcore
    cdef public cnp.ndarray terms

    def __cinit__(self, dict cfg):
        self.core.cfg.decision_ticks = cfg["decision_ticks"]
        self.core.cfg.max_steps = cfg["max_steps"]
        self.core.cfg.budgets = cfg["budgets"]
        self.core.cfg.idle_levels = cfg["idle_levels"]
        self.core.cfg.hard_limit_action = cfg["hard_limit_action"]
        self.core.cfg.candidate_counts = cfg["candidate_counts"]
        self.core.cfg.burst_memory = cfg["burst_memory"]
        for k, w in enumerate(cfg["weights"]):
            self.core.cfg.w[k] = w
        self.terms = np.zeros(5, dtype=np.float64)

    def attach(self, SimCore sim) -> None:
        self.simcore = sim
        self.core.attach(sim.s())

    def reset_ticks(self, cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] obs) -> None:
        self.core.reset_ticks()
        self.core.observe(<float*>cnp.PyArray_DATA(obs))

    def observe(self, cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] obs) -> None:
        self.core.observe(<float*>cnp.PyArray_DATA(obs))

    def observe_range(self, i64 lo, i64 hi, cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] obs) -> None:
        """Observe after the ticks whose records are history[lo:hi] (drivers that step the
        simulation themselves)."""
        self.core.rec_lo = lo
        self.core.rec_hi = hi
        self.core.observe(<float*>cnp.PyArray_DATA(obs))

    def apply_action(self, cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] action) -> bool:
        """Carry out one action now; True when it ran a reclaim pass."""
        return self.core.apply_action(<const i64*>cnp.PyArray_DATA(action), action.shape[0])

    def last_pass(self) -> tuple:
        return _pass_tuple(self.core.last)

    def step(self, cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] action,
             cnp.ndarray[cnp.float32_t, ndim=1, mode="c"] obs) -> tuple:
        cdef cbool truncated = False
        cdef double reward = self.core.step(<const i64*>cnp.PyArray_DATA(action), action.shape[0],
                                            <float*>cnp.PyArray_DATA(obs),
                                            <double*>cnp.PyArray_DATA(self.terms), &truncated)
        return reward, truncated

    def info(self) -> tuple:
        """(failures, reclaim_freed, reclaimable_tables of the last tick, OOM victims'
        process indices) over the ticks of the last step."""
        return (self.core.info_failures, self.core.info_freed, self.core.info_reclaimable_last,
                list(self.core.info_oom))

    @property
    def record_range(self) -> tuple:
        return (self.core.rec_lo, self.core.rec_hi)

    @property
    def n_obs(self) -> int:
        return self.core.n_obs()

    def target(self, i64 choice):
        """The process index of the action's target component (``PageTableReclaimEnv
        .target``), or None."""
        cdef Process* p = self.core.target(choice)
        return None if p == NULL else self.simcore.s().index_of(p)


def actions_in_space(cnp.ndarray[cnp.int64_t, ndim=2, mode="c"] actions,
                     cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] nvec) -> bool:
    """True when every row of ``actions`` lies in ``MultiDiscrete(nvec)`` (one call for the
    batched vector env's check, which was six NumPy calls per step)."""
    cdef i64 n = actions.shape[0], k = actions.shape[1], i, j
    if k != nvec.shape[0]:
        return False
    cdef const i64* a = <const i64*>cnp.PyArray_DATA(actions)
    cdef const i64* hi = <const i64*>cnp.PyArray_DATA(nvec)
    for i in range(n):
        for j in range(k):
            if a[i * k + j] < 0 or a[i * k + j] >= hi[j]:
                return False
    return True


cdef class StepThreads:
    """Threads for :func:`step_batch`: the caller and ``threads - 1`` helper threads
    (``pool.hpp``).  A helper polls for ``spin_us`` microseconds after each batch, then
    sleeps; it is started on first use and stopped when this object is freed."""

    cdef unique_ptr[StepPool] pool
    cdef cbool busy  # a step_batch is running on these threads (checked under the GIL)

    def __cinit__(self, int threads, int spin_us=2000):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if spin_us < 0:
            raise ValueError(f"spin_us must be at least 0, got {spin_us}")
        self.pool.reset(new StepPool(threads, spin_us, release_thread_caches))

    @property
    def threads(self) -> int:
        return self.pool.get().threads()

    @property
    def helper_steps(self) -> int:
        """Env steps the helper threads have taken so far (the rest were the caller's)."""
        return self.pool.get().helper_steps()



def step_batch(list steps, cnp.ndarray[cnp.int64_t, ndim=2, mode="c"] actions,
               cnp.ndarray[cnp.float32_t, ndim=2, mode="c"] obs,
               cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] rewards,
               cnp.ndarray[cnp.uint8_t, ndim=1, mode="c"] truncated,
               cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] ep_return,
               cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] ep_len,
               StepThreads threads=None) -> int:
    """One decision in each of several compiled envs, in one call (the batched vector
    env): row i of ``actions`` goes to ``steps[i]``; observations, rewards and truncation
    flags are written to row/element i, the reward is added to ``ep_return[i]`` and
    ``ep_len[i]`` counts the step (``Monitor``'s episode record).  Actions must already be
    inside the space (:func:`actions_in_space`).  The envs run on ``threads``
    (:class:`StepThreads`; None or one thread: on the caller alone, in turn, as before
    there were threads; more: with the GIL released); the results are the same for any
    number of threads.  Returns how many envs' episodes ended."""
    cdef i64 n = len(steps), i, ended = 0
    if actions.shape[0] != n or obs.shape[0] != n or rewards.shape[0] != n \
            or truncated.shape[0] != n or ep_return.shape[0] != n or ep_len.shape[0] != n:
        raise ValueError(f"step_batch: every array needs one row per env ({n})")
    if actions.shape[1] < 4:
        raise ValueError(f"step_batch: an action has at least 4 components, got "
                         f"{actions.shape[1]}")
    for i in range(n):
        if not isinstance(steps[i], EnvStep):
            raise TypeError(f"step_batch: steps[{i}] is not an EnvStep")
        if (<EnvStep>steps[i]).core.n_obs() != obs.shape[1]:
            raise ValueError(f"step_batch: obs rows hold {obs.shape[1]} values, env {i} "
                             f"observes {(<EnvStep>steps[i]).core.n_obs()}")
    if len({id(s) for s in steps}) != n:
        raise ValueError("step_batch: an env is listed twice (its steps would race)")
    cdef EnvStep st
    cdef cbool tr
    cdef vector[EnvCore*] cores
    cdef vector[double*] terms
    cdef i64 k = actions.shape[1]
    cdef i64 width = obs.shape[1]
    cdef const i64* a = <const i64*>cnp.PyArray_DATA(actions)
    cdef float* o = <float*>cnp.PyArray_DATA(obs)
    cdef double* r = <double*>cnp.PyArray_DATA(rewards)
    cdef unsigned char* t = <unsigned char*>cnp.PyArray_DATA(truncated)
    cdef double* ret = <double*>cnp.PyArray_DATA(ep_return)
    cdef i64* length = <i64*>cnp.PyArray_DATA(ep_len)
    cdef StepPool* pool
    if threads is None or threads.pool.get().threads() == 1:
        # One thread: the envs in turn, the GIL held (no pool, no release).
        for i in range(n):
            st = <EnvStep>steps[i]
            tr = False
            r[i] = st.core.step(a + i * k, k, o + i * width,
                                <double*>cnp.PyArray_DATA(st.terms), &tr)
            t[i] = tr
    else:
        cores.resize(n)
        terms.resize(n)
        for i in range(n):
            st = <EnvStep>steps[i]
            cores[i] = &st.core
            terms[i] = <double*>cnp.PyArray_DATA(st.terms)
        if threads.busy:
            raise RuntimeError("step_batch: these StepThreads are stepping another batch "
                               "(one StepThreads per vector env, used by one thread)")
        pool = threads.pool.get()
        threads.busy = True
        try:
            with nogil:
                step_envs(pool[0], cores.data(), n, a, k, o, width, r, terms.data(),
                          <cbool*>t)
        finally:
            threads.busy = False
    for i in range(n):
        ended += t[i]
        ret[i] += r[i]
        length[i] += 1
    return ended
