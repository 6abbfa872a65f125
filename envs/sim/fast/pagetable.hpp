// The compiled page-table model: a line-by-line port of envs/sim/pagetable.py.
//
// The Python AddressSpace is the reference (it is what scripts/kernel_check.py compares with
// the live kernel).  This port keeps its data model and its order of operations exactly, so
// that every op leaves the same VMAs, tables, entries, classes, RSS and counters; the
// differential tests (tests/test_fast_model.py) replay the kernel corpus and generated op
// scripts on both and compare the whole state after every op.  Each function names the
// Python method it ports; comments on *why* a rule holds live in the Python source.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "ptemap.hpp"

// The core's vector paths (byte_hist and chunk_bits in pagetable.cpp, next_with_room in
// wl_alloc.cpp) use SSE2 under PTFAST_SSE2 and have portable fallbacks, compiled where SSE2
// is missing or PTFAST_NO_SIMD is defined: tests/test_fast_simd.py builds both and compares.
#if defined(__SSE2__) && !defined(PTFAST_NO_SIMD)
#define PTFAST_SSE2 1
#include <emmintrin.h>
#endif

namespace ptfast {

using i64 = int64_t;

constexpr int PAGE_SHIFT = 12;
constexpr i64 PAGE = i64{1} << PAGE_SHIFT;
constexpr int PTE_SHIFT = 21;
constexpr int PMD_SHIFT = 30;
constexpr int PUD_SHIFT = 39;
constexpr i64 PTE_SPAN = i64{1} << PTE_SHIFT;
constexpr i64 PMD_SPAN = i64{1} << PMD_SHIFT;
constexpr i64 PUD_SPAN = i64{1} << PUD_SHIFT;
constexpr int ENTRIES = 512;
constexpr i64 TASK_SIZE = i64{1} << 47;
constexpr i64 FAULT_AROUND = i64{64} << 10;  // pagetable.FAULT_AROUND

enum Entry : uint8_t { E_NONE, E_ANON, E_ZERO, E_FILE, E_SWAP, E_GUARD, E_UFFD_WP };

constexpr i64 VM_READ = 0x1, VM_WRITE = 0x2, VM_EXEC = 0x4, VM_SHARED = 0x8,
              VM_ACCOUNT = 0x10, VM_NORESERVE = 0x20, VM_LOCKED = 0x40, VM_DONTCOPY = 0x80,
              VM_WIPEONFORK = 0x100, VM_HUGEPAGE = 0x200, VM_NOHUGEPAGE = 0x400,
              VM_SEQ_READ = 0x800, VM_RAND_READ = 0x1000, VM_MAYBE_GUARD = 0x2000,
              VM_UFFD_MISSING = 0x4000, VM_UFFD_WP = 0x8000;
constexpr i64 VM_PROT = VM_READ | VM_WRITE | VM_EXEC;
constexpr i64 MERGE_IGNORED = VM_MAYBE_GUARD;

enum Huge : uint8_t { HUGE_NONE, HUGE_ANON, HUGE_ZERO };
enum Cls : uint8_t { C_EMPTY, C_ZERO, C_FILE, C_PINNED };

// Errors as the Python model names them; 0 is success.
enum Err : int {
  OK = 0, ERR_EINVAL, ERR_ENOMEM, ERR_EEXIST, ERR_EFAULT, ERR_EACCES, ERR_SIGSEGV, ERR_SIGBUS,
  ERR_EBADF
};
const char* err_name(int err);

// madvise advices, in opscript.ADVICES order.
enum Advice : int {
  A_DONTNEED, A_DONTNEED_LOCKED, A_FREE, A_PAGEOUT, A_COLD, A_WILLNEED, A_REMOVE, A_COLLAPSE,
  A_HUGEPAGE, A_NOHUGEPAGE, A_POPULATE_READ, A_POPULATE_WRITE, A_DONTFORK, A_DOFORK,
  A_WIPEONFORK, A_KEEPONFORK, A_GUARD_INSTALL, A_GUARD_REMOVE, A_NORMAL, A_RANDOM,
  A_SEQUENTIAL, A_COUNT
};

class AddressSpace;

// The cached pages of one 2 MiB chunk of a shmem file: one bit per page (pagetable.py keeps
// one byte per page, 1 = cached).
struct PageBits {
  uint64_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  bool any() const { return (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0; }
  bool all() const {
    return (w[0] & w[1] & w[2] & w[3] & w[4] & w[5] & w[6] & w[7]) == ~uint64_t{0};
  }
  bool test(int k) const { return (w[k >> 6] >> (k & 63)) & 1; }
  // Bits set (a SWAR count: without -mpopcnt the builtin is a library call).
  static int count_word(uint64_t x) {
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (int)((x * 0x0101010101010101ull) >> 56);
  }
  int count() const {
    int n = 0;
    for (uint64_t x : w) n += count_word(x);
    return n;
  }
  // Bits [a, b) set to `on`.
  void assign(int a, int b, bool on);
};

struct BackingFile;
using FileRef = std::shared_ptr<BackingFile>;

// pagetable.BackingFile: a file or shmem object that mappings share.  A shmem file follows its
// page cache per 2 MiB chunk (R24): `cache` (chunks that hold a cached page) and `huge`
// (chunks held by one PMD-sized folio); both stay empty for regular files.
struct BackingFile {
  int kind = 0;  // 0: "file" (ext4-like), 1: "shmem"
  i64 size = 0;
  bool anon = false;
  std::set<AddressSpace*> mappers;
  SlotMap<PageBits> cache;
  SlotSet huge;

  // A copy of everything but the mappers (clones for the offline oracle re-add their own).
  FileRef copy() const;
  // BackingFile.cache_pages / collapse / huge_split_by / drop_pages.
  void cache_pages(i64 first, i64 step, i64 count);
  void collapse(i64 chunk);
  std::vector<i64> huge_split_by(i64 start, i64 end) const;
  void drop_pages(i64 start, i64 end);
};

// pagetable.Vma.  Identity matters (the Python code compares VMAs with `is`), so VMAs live
// on the heap and the address space keeps pointers.
struct Vma {
  i64 start, end, flags, pgoff;
  FileRef file;
  i64 anon_vma = 0;  // identity of an AnonVma; 0 is None
  i64 uffd = 0;      // identity of a userfaultfd context; 0 is None
  bool anonymous() const { return !file; }
  i64 file_offset(i64 addr) const { return (pgoff << PAGE_SHIFT) + (addr - start); }
};

// pagetable.PteTable, with the class and RSS the Python model keeps per table, and the
// number of entries of each kind (kept as entries change, so the class is known without
// recounting 512 entries after every change).
//
// An entry is one of seven kinds (Entry), so it is kept in 4 bits: entry k is the low
// nibble of byte k/2 when k is even, the high one when k is odd, and the 512 entries take
// 256 bytes.  The env makes and frees hundreds of tables per step and the reclaim scan and
// the faults walk thousands; with a byte per entry a table was 536 bytes and its entries
// most of the lines the core touched (docs/performance.md).
//
// The entries are kept in 8 chunks of 64 (32 bytes, half a cache line each), and a chunk
// is written only when first used: `live` has bit c set when entries [64c, 64c + 64) hold
// their values, and every entry of a chunk not live reads as `rest` (E_NONE in a new
// table).  Making a table used to write all its entry bytes (a fresh pool slot, or a
// recycled one zeroed), whatever the faults then touched: cachegrind
// (benchmarks/bench_cache.py) put over half of the core's last-level misses in that
// zeroing.  Writing one value over whole chunks that are not live (a fill, a whole-table
// DONTNEED or read fault over a file folio) changes `rest` and writes no byte, when every
// chunk not live is covered.
// Every access goes through ready() (make a range's chunks live, writing `rest` into those
// that were not), unpack() (all of them, a byte each) or get() (read one entry without
// making it live); the counts n[] always count a chunk that is not live as 64 entries of
// `rest`.
//
// The entries are not inside the table: a table is its 32-byte header and a pointer to its
// 256 bytes, which the table map's pool keeps in a block of their own (ptemap.hpp,
// PoolBytes).  The reclaim scan reads the headers of hundreds of tables per step and no
// entry, so two headers share a cache line where a table with its entries inline took
// four and a half lines, its header straddling two of them for a quarter of the tables.
struct alignas(32) PteTable {
  uint8_t huge = HUGE_NONE;
  uint8_t cls = C_EMPTY;
  uint8_t young = 1;  // the PMD entry's accessed bit (pagetable.PteTable.young)
  mutable uint8_t live = 0;  // chunks of 64 entries whose nibbles are valid (see above)
  int32_t rss = 0;
  int32_t age = 0;    // scan rounds idle (pagetable.PteTable.age)
  // Entries per kind: none, anon, zero, file, and the rest (swap entries and markers).
  uint16_t n[5] = {ENTRIES, 0, 0, 0, 0};
  uint8_t rest = E_NONE;  // what every entry of a chunk that is not live holds
  // Two entries per byte (see above); ENTRIES / 2 bytes owned by whoever made the table
  // (the pool of its table map, or an OwnedPteTable), never by the table itself.
  uint8_t* e = nullptr;
  static constexpr size_t POOL_BYTES = ENTRIES / 2;  // what the pool keeps per table
  // No entry written: every chunk starts not live.
  explicit PteTable(uint8_t* entries) : e(entries) {}
  PteTable(const PteTable&) = delete;
  // The header and the live chunks' entries, into this table's own entries.
  PteTable& operator=(const PteTable& o);

  static constexpr int CHUNK_SHIFT = 6;  // 64 entries per chunk
  static constexpr uint8_t ALL_LIVE = 0xFF;
  // Make the chunks that hold entries [i, j) live (0 <= i < j <= ENTRIES).
  void ready(i64 i, i64 j) const {
    const int c0 = (int)(i >> CHUNK_SHIFT), c1 = (int)((j - 1) >> CHUNK_SHIFT);
    const uint8_t want = (uint8_t)((0xFFu << c0) & (0xFFu >> (7 - c1)));
    if ((live & want) != want) make_live(want);
  }
  // The 512 entries, a byte each, into out[0..512).
  void unpack(uint8_t* out) const {
    for (i64 k = 0; k < ENTRIES; k++) out[k] = get(k);
  }
  // Entry k, without making its chunk live.
  uint8_t get(i64 k) const { return (live >> (k >> CHUNK_SHIFT)) & 1 ? raw(k) : rest; }

  static int bucket(uint8_t v) { return v < 4 ? v : 4; }
  int count(uint8_t v) const;
  int resident() const;
  void census(uint8_t& cls_out, int32_t& rss_out) const;
  void recount();
  void set(i64 k, uint8_t v) {
    ready(k, k + 1);
    n[bucket(raw(k))]--;
    put(k, v);
    n[bucket(v)]++;
  }
  // e[k] = v for k in range(i, j, step).
  void set_range(i64 i, i64 j, i64 step, uint8_t v);
  // Bit k of the result: entry 64c + k is page cache (FILE_BITS) or anything but none
  // (PRESENT_BITS): one word per chunk of 64 entries (two SSE2 compares per 16 bytes).
  enum BitsOf { FILE_BITS, PRESENT_BITS };
  uint64_t chunk_bits(int c, BitsOf which) const;
  // e[k] = tab[e[k]] for k in range(i, j, step).
  void xlate_range(i64 i, i64 j, i64 step, const uint8_t* tab);
  // e[k] = to where e[k] == from, for k in range(i, j, step): the translations that change
  // one kind only (read faults, dropping page cache or guard markers).
  void replace_range(i64 i, i64 j, i64 step, uint8_t from, uint8_t to);
  void fill(uint8_t v);
  // e[i:j] = src.e[i:j]
  void copy_range(const PteTable& src, i64 i, i64 j);

 private:
  // Entry k of a live chunk, and its write.
  uint8_t raw(i64 k) const { return (uint8_t)((e[k >> 1] >> ((k & 1) << 2)) & 0xF); }
  void put(i64 k, uint8_t v) {
    const int s = (int)((k & 1) << 2);
    e[k >> 1] = (uint8_t)((e[k >> 1] & ~(0xF << s)) | (v << s));
  }
  // Write `rest` into the chunks of `want` that are not live, then mark them live.
  void make_live(uint8_t want) const;
  // Whether every chunk that is not live lies wholly inside [i, j), and there is one: then
  // a write over [i, j) changes those chunks through `rest` alone.  A range shorter than a
  // chunk never does, and most writes are (single entries, fault-around windows).
  bool covers_rest(i64 i, i64 j) const {
    if (j - i < (1 << CHUNK_SHIFT) || live == ALL_LIVE) return false;
    const int c0 = (int)((i + (1 << CHUNK_SHIFT) - 1) >> CHUNK_SHIFT);
    const int c1 = (int)(j >> CHUNK_SHIFT);
    const uint8_t inside = (uint8_t)((0xFFu << c0) & (0xFFu >> (8 - c1)));
    return (uint8_t)(~live & ~inside) == 0;
  }
  // The parts of [i, j) in live chunks, in order: f(a, b) for each.
  template <class F>
  void for_live_parts(i64 i, i64 j, F f) const {
    for (i64 c = i >> CHUNK_SHIFT; c <= (j - 1) >> CHUNK_SHIFT; c++)
      if ((live >> c) & 1)
        f(std::max(i, c << CHUNK_SHIFT), std::min(j, (c + 1) << CHUNK_SHIFT));
  }
  // rest = v for every chunk that is not live, with the counts.
  void set_rest(uint8_t v);
  // Entries in the chunks that are not live (each of them holds `rest`).
  int rest_entries() const { return (8 - __builtin_popcount(live)) << CHUNK_SHIFT; }
  // Per-kind counts of entries [i, j) of live chunks; e[k] = v over [i, j); e[k] = to
  // where e[k] == from over [i, j) (how many changed).
  void hist(i64 i, i64 j, int h[5]) const;
  void write(i64 i, i64 j, uint8_t v);
  int replace(i64 i, i64 j, uint8_t from, uint8_t to);
};

static_assert(sizeof(PteTable) == 32, "a table's header is half a cache line");

// A table outside any table map, with entries of its own: a table moved from one slot to
// another (mremap), a recount to check against.
struct OwnedPteTable {
  uint8_t bytes[PteTable::POOL_BYTES];
  PteTable t{bytes};
  OwnedPteTable() = default;
  OwnedPteTable(const OwnedPteTable&) = delete;
  explicit OwnedPteTable(const PteTable& o) { t = o; }
};

template <>
inline void reset_value<PteTable>(PteTable& t) {
  t.live = 0;  // the entries read as E_NONE again; no byte of them is written
  t.rest = E_NONE;
  t.huge = HUGE_NONE;
  t.cls = C_EMPTY;
  t.young = 1;
  t.age = 0;
  t.rss = 0;
  t.n[0] = ENTRIES;
  t.n[1] = t.n[2] = t.n[3] = t.n[4] = 0;
}

struct Stats {
  i64 pte_allocated = 0, pte_freed = 0, upper_allocated = 0, upper_freed = 0,
      pte_reclaimed_on_zap = 0, faults = 0, refault_tables = 0, refault_entries = 0,
      refault_empty = 0, refault_zero = 0, refault_file = 0;
};

// The flag change of one madvise advice (pagetable._FLAG_ADVICE).
struct FlagChange {
  i64 set = 0, clear = 0;
  bool forbid_file_or_shared = false;  // WIPEONFORK
};

i64 next_anon_vma_id();

class AddressSpace {
 public:
  bool pt_reclaim = true;
  bool thp_disabled = true;
  int thp_sysfs = 1;  // 0 never, 1 madvise, 2 always
  std::vector<Vma*> vmas;
  SlotMap<PteTable> pte;
  IndexSet pmd, pud;
  Stats stats;
  i64 cls_count[4] = {0, 0, 0, 0};
  i64 rss_pages = 0;
  // Slots freed by an out-of-line reclaimer -> zapped entries * 4 + the table's class.
  SlotMap<i64> reclaimed;
  // Page-cache pages a reclaimer unmapped that stay cached, per slot, and their count
  // (pagetable.AddressSpace.kept / kept_pages).
  SlotMap<PageBits> kept;
  i64 kept_pages = 0;
  i64 table_version = 0;
  i64 uffd_vmas = 0;
  i64 class_version = 0;
  i64 huge_tables = 0;  // tables that are a PMD-mapped THP's deposit (THP paths skip when 0)
  // Slots PMD-mapping a PMD-sized folio of the shmem page cache (R24); the file THP paths
  // skip when it is empty.
  SlotSet file_thp;
  i64 uffd_cache[4] = {-1, -1, -1, 0};
  bool logging = false;
  std::set<i64> touch_log;

  AddressSpace() = default;
  AddressSpace(const AddressSpace&) = delete;
  AddressSpace& operator=(const AddressSpace&) = delete;
  ~AddressSpace();
  // A deep copy for the offline oracle's look into the future (copy.deepcopy of the Python
  // object graph): files are copied through `files` so that shared files stay shared.
  std::unique_ptr<AddressSpace> clone(std::map<const BackingFile*, FileRef>& files) const;

  // ---- queries
  i64 tables() const { return (i64)pte.size() + (i64)pmd.size() + (i64)pud.size(); }
  i64 vm_pte_kib() const { return 4 * tables(); }
  Vma* find_vma(i64 addr) const;
  std::vector<Vma*> vmas_overlapping(i64 start, i64 end) const;
  bool any_vma_overlapping(i64 start, i64 end) const;
  bool slot_is_uffd(i64 slot) const;
  i64 uffd_unreclaimable();

  // ---- syscalls (0 on success, else an Err)
  int mmap(i64 addr, i64 length, int kind, bool shared, i64 prot, FileRef file, i64 foff,
           bool noreserve, bool fixed, bool populate);
  int munmap(i64 start, i64 length);
  int mprotect(i64 start, i64 length, i64 prot);
  int mlock(i64 start, i64 length) { return lock(start, length, true); }
  int munlock(i64 start, i64 length) { return lock(start, length, false); }
  int madvise(i64 start, i64 length, int advice);
  int touch(i64 start, i64 length, bool write, i64 stride = PAGE);
  int mremap(i64 addr, i64 old_len, i64 new_len, bool has_new_addr, i64 new_addr,
             bool dontunmap);
  int register_uffd(i64 start, i64 end, i64 ctx);
  // Append a VMA exactly as given, without merging (the trace replay's "install": the
  // kernel's own VMAs of a captured process, appended in address order).
  void install_vma(i64 start, i64 end, i64 flags, i64 pgoff, FileRef file, bool new_anon_vma);
  std::unique_ptr<AddressSpace> fork();
  void exit();
  i64 reclaim_table(i64 slot, unsigned allowed_mask);
  // The same for the table `t` at `slot` that the caller has already found.
  i64 reclaim_table(i64 slot, PteTable& t, unsigned allowed_mask);
  // pagetable.AddressSpace.scan_young: test-and-clear the young bit; the age after it.
  i64 scan_young(i64 slot) { return scan_young(pte.at(slot)); }
  static i64 scan_young(PteTable& t) {
    if (t.young) {
      t.young = 0;
      t.age = 0;
    } else {
      t.age++;
    }
    return t.age;
  }

  // ---- file operations (pagetable.AddressSpace.punch / truncate)
  static void punch(BackingFile& file, i64 foff, i64 length);
  static void truncate(BackingFile& file, i64 size);

  // Invariant check (pagetable.AddressSpace.check_invariants); returns "" or a message.
  std::string check_invariants() const;

 private:
  std::vector<Vma*> dead_;  // VMAs removed by the current call, freed at its end
  std::vector<i64> slot_scratch_;  // the range walks' slot lists (Borrowed)

  void collect();
  void retire(Vma* v) { dead_.push_back(v); }
  i64 first_ending_after(i64 addr) const;
  void ensure_upper(i64 addr);
  PteTable& ensure_pte(i64 slot);
  void reclass(i64 slot, PteTable& t);
  // pagetable.AddressSpace._kept_mapped / _kept_set / _kept_drop.
  void kept_mapped(i64 slot, PageBits& m, const PteTable& t);
  void kept_set(i64 slot, PageBits& m, const PageBits& now);
  // pagetable.AddressSpace._kept_or.  `count` >= 0: the caller knows that no bit of
  // `bits` is kept yet and that `count` of them are set (a freed table's page cache), so
  // nothing is counted again.
  void kept_or(i64 slot, const PageBits& bits, int count = -1);
  void kept_drop(i64 start, i64 end);
  std::vector<i64> kept_in(i64 start, i64 end) const;
  void kept_add(const std::vector<i64>& pages);
  void free_pte(i64 slot) { free_pte(slot, pte.at(slot)); }
  void free_pte(i64 slot, const PteTable& t);
  void free_pte_quiet(i64 slot, OwnedPteTable& out);
  // `t` must not be a table of this map (give it an OwnedPteTable's): emplace may hand
  // out the very table erased just before, reset, and `t` would then have lost its
  // contents before they are copied.
  void adopt_pte(i64 slot, const PteTable& t);
  void pte_slots_in(i64 start, i64 end, std::vector<i64>& out) const;
  void update_entries(i64 start, i64 end, const uint8_t* table);
  void split_huge(i64 slot, PteTable& t);
  void split_huge_partial(i64 start, i64 end);
  void unmap_file_thp(i64 start, i64 end);
  void zap(i64 start, i64 end, bool reclaim, bool drop_markers = false);
  void free_pgtables(i64 start, i64 end);
  i64 insert(Vma* v);
  void anon_vma_prepare(Vma* v);
  i64 index_of(const Vma* v) const;
  void split(i64 i, i64 addr);
  i64 isolate(i64 i, i64 start, i64 end);
  static bool can_merge(const Vma* a, const Vma* b);
  bool merge_at(i64 i);
  i64 merge_around(i64 i);
  void carve(i64 start, i64 end, i64& i_out, i64& j_out);
  template <class Piece>
  int for_each_piece(i64 start, i64 end, Piece&& piece);
  int modify(i64 start, i64 end, const FlagChange& change);
  bool thp_allowed(const Vma* v) const;
  static bool file_folio_fits(const Vma* v, i64 base);
  void map_file_thp(i64 slot);
  int fault_range(Vma* v, i64 start, i64 end, i64 stride, bool write, i64 first,
                  i64& next);
  i64 past_eof_file_thp(const Vma* v, i64 addr, i64 end, i64 stride, bool write, i64 eof);
  int populate(i64 start, i64 end, int mode);
  void unmap(i64 start, i64 end);
  int change_contiguous(i64 start, i64 end, int kind, i64 prot);
  int lock(i64 start, i64 length, bool on);
  int walk(i64 start, i64 end, int advice);
  int visit(Vma* v, i64 a, i64 b, int advice);
  int guard_install(Vma* v, i64 a, i64 b);
  void cold_file_thp(Vma* v, i64 a, i64 b, bool pageout);
  static void unmap_folio(BackingFile& file, i64 chunk);
  int collapse(Vma* v, i64 lo, i64 hi);
  int collapse_file(Vma* v, i64 slot);
  void retract_page_tables(const BackingFile& file, i64 chunk);
  static void drop_file_range(BackingFile& file, i64 start, i64 end, i64 unmap_start,
                              bool even_cows);
  void zap_file_range(BackingFile& file, i64 fstart, i64 fend, bool even_cows);
  int mremap_in_place(i64 addr, i64 old_len, i64 new_len);
  int remap_move(i64 start, i64 length, i64 new_addr, bool dontunmap);
  int mremap_to(i64 addr, i64 old_len, i64 new_len, i64 new_addr, bool dontunmap);
  void move_page_tables(Vma* old, Vma* nw, i64 old_addr, i64 new_addr, i64 length);
  void move_file_thp(i64 oslot, i64 new_addr, i64 extent);
  void move_pmd_table(i64 old_addr, i64 new_addr);
};

}  // namespace ptfast
