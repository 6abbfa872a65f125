// Port of envs/sim/pagetable.py (see pagetable.hpp).  Function names follow the Python
// methods; the reasons for each kernel rule are documented there, not repeated here.
#include "pagetable.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace ptfast {

namespace {

struct Xlate {
  uint8_t t[256];
};

Xlate identity() {
  Xlate x;
  for (int i = 0; i < 256; i++) x.t[i] = (uint8_t)i;
  return x;
}

// pagetable._READ_ANON, _READ_FILE, _ZAP, _ZAP_ALL, _DROP_FILE, _DROP_GUARD.
const Xlate READ_ANON = [] { Xlate x = identity(); x.t[E_NONE] = E_ZERO; return x; }();
const Xlate READ_FILE = [] { Xlate x = identity(); x.t[E_NONE] = E_FILE; return x; }();
const Xlate ZAP = [] {
  Xlate x = identity();
  for (int i = 0; i < E_GUARD; i++) x.t[i] = E_NONE;
  return x;
}();
const Xlate ZAP_ALL = [] { Xlate x; std::memset(x.t, 0, sizeof x.t); return x; }();
const Xlate DROP_FILE = [] { Xlate x = identity(); x.t[E_FILE] = E_NONE; return x; }();
const Xlate DROP_GUARD = [] { Xlate x = identity(); x.t[E_GUARD] = E_NONE; return x; }();

inline i64 page_align(i64 n) { return (n + PAGE - 1) & ~(PAGE - 1); }

// pagetable._first_marker: index of the first guard or uffd-wp marker, or -1.
inline i64 first_marker(const PteTable& t, i64 start, i64 stop, i64 step) {
  i64 k = 0;
  for (i64 i = start; i < stop; i += step, k++) {
    const uint8_t x = t.get(i);
    if (x == E_GUARD || x == E_UFFD_WP) return k;
  }
  return -1;
}

// pagetable._extent (get_extent()).
inline i64 extent_of(i64 old_addr, i64 new_addr, i64 old_end, i64 size) {
  i64 extent = size - (old_addr & (size - 1));
  extent = std::min(extent, old_end - old_addr);
  return std::min(extent, size - (new_addr & (size - 1)));
}

// Atomic: envs stepped on step_batch's helper threads draw ids at once (ids are only
// compared for equality, so which env gets which id changes nothing).
std::atomic<i64> g_anon_vma_ids{0};

}  // namespace

i64 next_anon_vma_id() { return g_anon_vma_ids.fetch_add(1, std::memory_order_relaxed) + 1; }

const char* err_name(int err) {
  switch (err) {
    case OK: return "";
    case ERR_EINVAL: return "EINVAL";
    case ERR_ENOMEM: return "ENOMEM";
    case ERR_EEXIST: return "EEXIST";
    case ERR_EFAULT: return "EFAULT";
    case ERR_EACCES: return "EACCES";
    case ERR_SIGSEGV: return "SIGSEGV";
    case ERR_SIGBUS: return "SIGBUS";
    case ERR_EBADF: return "EBADF";
  }
  return "EUNKNOWN";
}

// ------------------------------------------------------------------ PteTable

namespace {
// Ranges longer than this are rewritten, then recounted whole (vectorised); shorter ones
// update the counts entry by entry.
constexpr i64 RECOUNT_AT = 48;

// Entries per kind bucket (none, anon, zero, file, other) of the bytes b[0:nb), two
// entries a byte.
inline void byte_hist(const uint8_t* b, i64 nb, int h[5]) {
  int c0 = 0, c1 = 0, c2 = 0, c3 = 0;
  i64 k = 0;
#ifdef PTFAST_SSE2
  // 16 bytes (32 entries) at a time; a table is 256 bytes, so byte lanes (<= 32) never
  // wrap.
  const __m128i z = _mm_setzero_si128(), k1 = _mm_set1_epi8(1), k2 = _mm_set1_epi8(2),
                k3 = _mm_set1_epi8(3), lo = _mm_set1_epi8(0x0F);
  __m128i a0 = z, a1 = z, a2 = z, a3 = z;
  for (; k + 16 <= nb; k += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k));
    for (const __m128i y : {_mm_and_si128(x, lo), _mm_and_si128(_mm_srli_epi16(x, 4), lo)}) {
      a0 = _mm_sub_epi8(a0, _mm_cmpeq_epi8(y, z));
      a1 = _mm_sub_epi8(a1, _mm_cmpeq_epi8(y, k1));
      a2 = _mm_sub_epi8(a2, _mm_cmpeq_epi8(y, k2));
      a3 = _mm_sub_epi8(a3, _mm_cmpeq_epi8(y, k3));
    }
  }
  auto hsum = [&](__m128i a) {
    __m128i t = _mm_sad_epu8(a, z);
    return _mm_cvtsi128_si32(t) + _mm_cvtsi128_si32(_mm_srli_si128(t, 8));
  };
  c0 = hsum(a0);
  c1 = hsum(a1);
  c2 = hsum(a2);
  c3 = hsum(a3);
#endif
  for (; k < nb; k++) {
    for (const int x : {b[k] & 0xF, b[k] >> 4}) {
      c0 += x == 0;
      c1 += x == 1;
      c2 += x == 2;
      c3 += x == 3;
    }
  }
  h[0] = c0;
  h[1] = c1;
  h[2] = c2;
  h[3] = c3;
  h[4] = (int)(2 * nb) - c0 - c1 - c2 - c3;
}
}  // namespace

void PteTable::hist(i64 i, i64 j, int h[5]) const {
  std::fill(h, h + 5, 0);
  if (i & 1) h[bucket(raw(i++))]++;
  if (i < j && (j & 1)) h[bucket(raw(--j))]++;
  if (i >= j) return;
  int m[5];
  byte_hist(e + (i >> 1), (j - i) >> 1, m);
  for (int b = 0; b < 5; b++) h[b] += m[b];
}

void PteTable::write(i64 i, i64 j, uint8_t v) {
  if (i & 1) put(i++, v);
  if (i < j && (j & 1)) put(--j, v);
  if (i < j) std::memset(e + (i >> 1), v * 0x11, (size_t)((j - i) >> 1));
}

int PteTable::replace(i64 i, i64 j, uint8_t from, uint8_t to) {
  int c = 0;
  if (i & 1) {
    if (raw(i) == from) put(i, to), c++;
    i++;
  }
  if (i < j && (j & 1)) {
    if (raw(j - 1) == from) put(j - 1, to), c++;
    j--;
  }
  for (i64 k = i >> 1; k < j >> 1; k++) {
    const uint8_t x = e[k];
    const bool l = (x & 0xF) == from, h = (x >> 4) == from;
    c += l + h;
    e[k] = (uint8_t)((l ? to : (x & 0xF)) | ((h ? to : (x >> 4)) << 4));
  }
  return c;
}

void PteTable::make_live(uint8_t want) const {
  for (uint8_t fresh = (uint8_t)(want & ~live); fresh; fresh &= (uint8_t)(fresh - 1))
    std::memset(e + (__builtin_ctz(fresh) << (CHUNK_SHIFT - 1)), rest * 0x11,
                1 << (CHUNK_SHIFT - 1));
  live |= want;
}

PteTable& PteTable::operator=(const PteTable& o) {
  if (this == &o) return *this;
  huge = o.huge;
  cls = o.cls;
  young = o.young;
  live = o.live;
  rss = o.rss;
  age = o.age;
  std::copy(o.n, o.n + 5, n);
  rest = o.rest;
  // A chunk that is not live is never read, so only the live ones are copied.
  for (uint8_t c = o.live; c; c &= (uint8_t)(c - 1)) {
    const int off = __builtin_ctz(c) << (CHUNK_SHIFT - 1);
    std::memcpy(e + off, o.e + off, 1 << (CHUNK_SHIFT - 1));
  }
  return *this;
}

void PteTable::set_rest(uint8_t v) {
  const int k = rest_entries();
  n[bucket(rest)] = (uint16_t)(n[bucket(rest)] - k);
  n[bucket(v)] = (uint16_t)(n[bucket(v)] + k);
  rest = v;
}

static_assert(E_FILE == 3, "chunk_bits compares nibbles with 0x3");
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "chunk_bits reads entry 0 as nibble 0");

#ifndef PTFAST_SSE2
namespace {
// Bits 4i of a word of 16 entries (nibble i: entry i) to bits i: 16 bits out.
inline uint64_t compress_nibble_bits(uint64_t z) {
  z = (z | (z >> 3)) & 0x0303030303030303ull;
  z = (z | (z >> 6)) & 0x000F000F000F000Full;
  z = (z | (z >> 12)) & 0x000000FF000000FFull;
  return (z | (z >> 24)) & 0xFFFFull;
}
// Bit 4i set where nibble i is not zero.
inline uint64_t nonzero_nibbles(uint64_t x) {
  return (x | (x >> 1) | (x >> 2) | (x >> 3)) & 0x1111111111111111ull;
}
}  // namespace
#endif

uint64_t PteTable::chunk_bits(int c, BitsOf which) const {
  const bool file = which == FILE_BITS;
  if (!((live >> c) & 1)) return (file ? rest == E_FILE : rest != E_NONE) ? ~uint64_t{0} : 0;
  const uint8_t* b = e + (c << (CHUNK_SHIFT - 1));
  uint64_t out = 0;
#ifdef PTFAST_SSE2
  // 16 bytes (32 entries) at a time: compare the low and the high nibbles of each byte,
  // interleave the two masks byte by byte (entry 2i is byte i's low nibble, 2i + 1 its high
  // one) and take one bit per byte.  Every file table a reclaim pass frees is read this way
  // (reclaim_table); docs/performance.md counts what it saved over the SWAR below.
  const __m128i lo = _mm_set1_epi8(0x0F), want = _mm_set1_epi8(file ? E_FILE : E_NONE);
  for (int h = 0; h < 2; h++) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * h));
    const __m128i ml = _mm_cmpeq_epi8(_mm_and_si128(x, lo), want);
    const __m128i mh = _mm_cmpeq_epi8(_mm_and_si128(_mm_srli_epi16(x, 4), lo), want);
    const uint64_t bits = (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_unpacklo_epi8(ml, mh)) |
                          (uint64_t)(uint32_t)_mm_movemask_epi8(_mm_unpackhi_epi8(ml, mh)) << 16;
    out |= (file ? bits : ~bits & 0xFFFFFFFFull) << (32 * h);
  }
#else
  for (int j = 0; j < 4; j++) {  // 4 words of 16 entries
    uint64_t x;
    std::memcpy(&x, b + 8 * j, 8);
    const uint64_t hit = file ? ~nonzero_nibbles(x ^ 0x3333333333333333ull) & 0x1111111111111111ull
                              : nonzero_nibbles(x);
    out |= compress_nibble_bits(hit) << (16 * j);
  }
#endif
  return out;
}

int PteTable::count(uint8_t v) const {
  if (v < 4) return n[v];
  // Chunks that are not live hold only `rest`.
  int c = rest == v ? rest_entries() : 0;
  for (int k = 0; k < 8; k++)
    if ((live >> k) & 1)
      for (int i = k << CHUNK_SHIFT; i < (k + 1) << CHUNK_SHIFT; i++) c += raw(i) == v;
  return c;
}

int PteTable::resident() const {
  if (huge) return huge == HUGE_ANON ? ENTRIES : 0;
  return n[E_ANON] + n[E_FILE];
}

void PteTable::recount() {
  int h[5];
  if (live == ALL_LIVE) {
    hist(0, ENTRIES, h);  // the whole table: one vectorised pass
    for (int b = 0; b < 5; b++) n[b] = (uint16_t)h[b];
    return;
  }
  std::fill(n, n + 5, uint16_t{0});
  for (int k = 0; k < 8; k++) {
    if ((live >> k) & 1) {
      hist(k << CHUNK_SHIFT, (k + 1) << CHUNK_SHIFT, h);
      for (int b = 0; b < 5; b++) n[b] = (uint16_t)(n[b] + h[b]);
    }
  }
  n[bucket(rest)] = (uint16_t)(n[bucket(rest)] + rest_entries());
}

void PteTable::set_range(i64 i, i64 j, i64 step, uint8_t v) {
  if (j <= i) return;
  if (step == 1 && i == 0 && j == ENTRIES) {
    fill(v);
    return;
  }
  if (step == 1 && covers_rest(i, j)) {
    set_rest(v);
    // Each live part lies in one live chunk, with a chunk not live elsewhere: it takes the
    // paths below.
    for_live_parts(i, j, [&](i64 a, i64 b) { set_range(a, b, 1, v); });
    return;
  }
  ready(i, j);
  if (step != 1 || j - i < RECOUNT_AT) {
    for (i64 k = i; k < j; k += step) set(k, v);
    return;
  }
  int h[5];
  hist(i, j, h);
  for (int b = 0; b < 5; b++) n[b] = (uint16_t)(n[b] - h[b]);
  n[bucket(v)] = (uint16_t)(n[bucket(v)] + (j - i));
  write(i, j, v);
}

void PteTable::replace_range(i64 i, i64 j, i64 step, uint8_t from, uint8_t to) {
  if (j <= i || from == to) return;
  int c = 0;
  if (step == 1 && covers_rest(i, j)) {
    if (rest == from) set_rest(to);
    for_live_parts(i, j, [&](i64 a, i64 b) { c += replace(a, b, from, to); });
  } else if (step == 1) {
    ready(i, j);
    c = replace(i, j, from, to);
  } else {
    ready(i, j);
    for (i64 k = i; k < j; k += step)
      if (raw(k) == from) {
        put(k, to);
        c++;
      }
  }
  n[bucket(from)] = (uint16_t)(n[bucket(from)] - c);
  n[bucket(to)] = (uint16_t)(n[bucket(to)] + c);
}

void PteTable::xlate_range(i64 i, i64 j, i64 step, const uint8_t* tab) {
  if (j <= i) return;
  if (step == 1 && covers_rest(i, j)) {
    rest = tab[rest];
    for_live_parts(i, j, [&](i64 a, i64 b) {
      for (i64 k = a; k < b; k++) put(k, tab[raw(k)]);
    });
    recount();
    return;
  }
  ready(i, j);
  if ((j - i) / step < RECOUNT_AT) {
    for (i64 k = i; k < j; k += step) set(k, tab[raw(k)]);
    return;
  }
  for (i64 k = i; k < j; k += step) put(k, tab[raw(k)]);
  recount();
}

void PteTable::fill(uint8_t v) {
  live = 0;  // every chunk reads as `rest`: nothing to write
  rest = v;
  std::fill(n, n + 5, uint16_t{0});
  n[bucket(v)] = ENTRIES;
}

void PteTable::copy_range(const PteTable& src, i64 i, i64 j) {
  if (j <= i) return;
  src.ready(i, j);
  ready(i, j);
  if (j - i < RECOUNT_AT) {
    for (i64 k = i; k < j; k++) set(k, src.raw(k));
    return;
  }
  if (i & 1) put(i, src.raw(i)), i++;
  if (i < j && (j & 1)) put(j - 1, src.raw(j - 1)), j--;
  if (i < j) std::memcpy(e + (i >> 1), src.e + (i >> 1), (size_t)((j - i) >> 1));
  recount();
}

void PteTable::census(uint8_t& cls_out, int32_t& rss_out) const {
  if (huge) {
    if (huge == HUGE_ANON) {
      cls_out = C_PINNED;
      rss_out = ENTRIES;
    } else {
      cls_out = C_ZERO;
      rss_out = 0;
    }
    return;
  }
  if (n[E_NONE] == ENTRIES) {
    cls_out = C_EMPTY;
    rss_out = 0;
    return;
  }
  int rest = ENTRIES - n[E_NONE] - n[E_ZERO] - n[E_FILE];
  if (rest) {
    cls_out = C_PINNED;
    rss_out = n[E_FILE] + n[E_ANON];
    return;
  }
  cls_out = n[E_FILE] ? C_FILE : C_ZERO;
  rss_out = n[E_FILE];
}

// ------------------------------------------------------------- BackingFile

void PageBits::assign(int a, int b, bool on) {
  for (int k = a; k < b;) {
    const int wi = k >> 6, lo = k & 63;
    const int hi = std::min(64, lo + (b - k));  // bits [lo, hi) of this word
    const uint64_t m = (hi == 64 ? ~uint64_t{0} : (uint64_t{1} << hi) - 1) & (~uint64_t{0} << lo);
    if (on)
      w[wi] |= m;
    else
      w[wi] &= ~m;
    k += hi - lo;
  }
}

FileRef BackingFile::copy() const {
  auto c = std::make_shared<BackingFile>();
  c->kind = kind;
  c->size = size;
  c->anon = anon;
  c->cache = cache;
  c->huge = huge;
  return c;
}

void BackingFile::cache_pages(i64 first, i64 step, i64 count) {
  if (kind != 1) return;
  while (count > 0) {
    const i64 chunk = first / ENTRIES, off = first % ENTRIES;  // first >= 0: divmod
    const i64 n = std::min(count, (ENTRIES - 1 - off) / step + 1);
    PageBits& pages = cache.emplace(chunk).first;
    if (step == 1)
      pages.assign((int)off, (int)(off + n), true);
    else
      for (i64 k = off; k <= off + (n - 1) * step; k += step) pages.w[k >> 6] |= uint64_t{1} << (k & 63);
    first += n * step;
    count -= n;
  }
}

void BackingFile::collapse(i64 chunk) {
  PageBits& pages = cache.emplace(chunk).first;
  std::fill(pages.w, pages.w + 8, ~uint64_t{0});
  huge.insert(chunk);
}

std::vector<i64> BackingFile::huge_split_by(i64 start, i64 end) const {
  std::vector<i64> out;
  if (end <= start) return out;
  for (i64 c : huge.indices_in(start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT))
    if (start > (c << PTE_SHIFT) || end < ((c + 1) << PTE_SHIFT)) out.push_back(c);
  return out;
}

void BackingFile::drop_pages(i64 start, i64 end) {
  if (end <= start) return;
  const i64 lo = start >> PTE_SHIFT, hi = (end - 1) >> PTE_SHIFT;
  for (i64 c : huge.indices_in(lo, hi)) huge.erase(c);
  const i64 first = (start + PAGE - 1) / PAGE;  // -(-start // PAGE), start >= 0
  const i64 last = end / PAGE;
  std::vector<i64> chunks;
  cache.slots_in(lo, hi, chunks);
  for (i64 chunk : chunks) {
    const i64 base = chunk * ENTRIES;
    const i64 a = std::max(first, base) - base;
    const i64 b = std::min(last, base + ENTRIES) - base;
    if (a >= b) continue;
    PageBits& pages = cache.at(chunk);
    pages.assign((int)a, (int)b, false);
    if (!pages.any()) cache.erase(chunk);
  }
}

// ------------------------------------------------------------- AddressSpace

AddressSpace::~AddressSpace() {
  for (Vma* v : vmas) {
    if (v->file) v->file->mappers.erase(this);
    delete v;
  }
  collect();
}

void AddressSpace::collect() {
  for (Vma* v : dead_) delete v;
  dead_.clear();
}

std::unique_ptr<AddressSpace> AddressSpace::clone(
    std::map<const BackingFile*, FileRef>& files) const {
  auto c = std::make_unique<AddressSpace>();
  c->pt_reclaim = pt_reclaim;
  c->thp_disabled = thp_disabled;
  c->thp_sysfs = thp_sysfs;
  for (const Vma* v : vmas) {
    Vma* n = new Vma(*v);
    if (v->file) {
      auto it = files.find(v->file.get());
      if (it == files.end()) it = files.emplace(v->file.get(), v->file->copy()).first;
      n->file = it->second;
      n->file->mappers.insert(c.get());
    }  // (sim.cpp's copy_file makes the same copies for files only workloads hold)
    c->vmas.push_back(n);
  }
  c->pte = pte;
  c->pmd = pmd;
  c->pud = pud;
  c->stats = stats;
  std::copy(cls_count, cls_count + 4, c->cls_count);
  c->rss_pages = rss_pages;
  c->reclaimed = reclaimed;
  c->kept = kept;
  c->kept_pages = kept_pages;
  c->table_version = table_version;
  c->uffd_vmas = uffd_vmas;
  c->class_version = class_version;
  c->huge_tables = huge_tables;
  c->file_thp = file_thp;
  std::copy(uffd_cache, uffd_cache + 4, c->uffd_cache);
  c->logging = logging;
  c->touch_log = touch_log;
  return c;
}

Vma* AddressSpace::find_vma(i64 addr) const {
  auto it = std::upper_bound(vmas.begin(), vmas.end(), addr,
                             [](i64 a, const Vma* v) { return a < v->start; });
  i64 i = (it - vmas.begin()) - 1;
  if (i >= 0 && vmas[i]->end > addr) return vmas[i];
  return nullptr;
}

i64 AddressSpace::first_ending_after(i64 addr) const {
  auto it = std::upper_bound(vmas.begin(), vmas.end(), addr,
                             [](i64 a, const Vma* v) { return a < v->start; });
  i64 i = (it - vmas.begin()) - 1;
  if (i >= 0 && vmas[i]->end > addr) return i;
  return i + 1;
}

std::vector<Vma*> AddressSpace::vmas_overlapping(i64 start, i64 end) const {
  std::vector<Vma*> out;
  for (i64 i = first_ending_after(start); i < (i64)vmas.size() && vmas[i]->start < end; i++)
    out.push_back(vmas[i]);
  return out;
}

bool AddressSpace::any_vma_overlapping(i64 start, i64 end) const {
  i64 i = first_ending_after(start);
  return i < (i64)vmas.size() && vmas[i]->start < end;
}

bool AddressSpace::slot_is_uffd(i64 slot) const {
  if (!uffd_vmas) return false;
  i64 a = slot << PTE_SHIFT;
  for (i64 i = first_ending_after(a); i < (i64)vmas.size() && vmas[i]->start < a + PTE_SPAN;
       i++)
    if (vmas[i]->uffd) return true;
  return false;
}

i64 AddressSpace::uffd_unreclaimable() {
  if (!uffd_vmas) return 0;
  if (uffd_cache[0] == table_version && uffd_cache[1] == class_version &&
      uffd_cache[2] == (i64)vmas.size())
    return uffd_cache[3];
  // VMAs are sorted and disjoint, so their slots come in ascending order and two VMAs
  // can share only a boundary slot: counting each slot above the last one counted counts
  // the distinct slots the reference's set holds.
  i64 seen = 0, last = INT64_MIN;
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  for (const Vma* v : vmas) {
    if (!v->uffd) continue;
    slots.clear();
    pte_slots_in(v->start, v->end, slots);
    for (i64 sl : slots)
      if (sl > last && pte.at(sl).cls != C_PINNED) {
        seen++;
        last = sl;
      }
  }
  uffd_cache[0] = table_version;
  uffd_cache[1] = class_version;
  uffd_cache[2] = (i64)vmas.size();
  uffd_cache[3] = seen;
  return uffd_cache[3];
}

std::string AddressSpace::check_invariants() const {
  i64 prev_end = -1;
  for (const Vma* v : vmas) {
    if (!(v->start < v->end && v->start % PAGE == 0 && v->end % PAGE == 0)) return "bad VMA";
    if (v->start < prev_end) return "VMAs overlap or are unsorted";
    prev_end = v->end;
  }
  i64 counts[4] = {0, 0, 0, 0};
  i64 rss = 0, huge = 0;
  std::string problem;
  pte.for_each([&](i64 slot, const PteTable& t) {
    if (!problem.empty()) return;
    uint8_t c;
    int32_t r;
    t.census(c, r);
    OwnedPteTable own(t);
    PteTable& fresh = own.t;
    fresh.recount();
    if (c != t.cls)
      problem = "class out of date";
    else if (r != t.rss || t.resident() != t.rss)
      problem = "rss out of date";
    else if (!std::equal(fresh.n, fresh.n + 5, t.n))
      problem = "entry counts out of date";
    else if (!pmd.count(slot >> (PMD_SHIFT - PTE_SHIFT)))
      problem = "PTE table without PMD";
    counts[t.cls]++;
    rss += t.rss;
    huge += t.huge != 0;
  });
  if (!problem.empty()) return problem;
  for (int k = 0; k < 4; k++)
    if (counts[k] != cls_count[k]) return "class counts out of date";
  if (rss + ENTRIES * (i64)file_thp.size() != rss_pages) return "rss_pages out of date";
  if (huge != huge_tables) return "huge_tables out of date";
  i64 kept_count = 0;
  kept.for_each([&](i64 slot, const PageBits& m) {
    if (!problem.empty()) return;
    kept_count += m.count();
    const PteTable* t = pte.find(slot);
    if (!m.any())
      problem = "an empty kept mask";
    else if (file_thp.count(slot))
      problem = "kept pages under a file THP PMD";
    else if (t && t->huge)
      problem = "kept pages under a THP";
    else if (t)
      for (int k = 0; k < ENTRIES && problem.empty(); k++)
        if (m.test(k) && t->get(k) != E_NONE) problem = "a kept page is also mapped";
    for (i64 a : kept_in(slot << PTE_SHIFT, (slot + 1) << PTE_SHIFT)) {
      const Vma* v = find_vma(a);
      if (problem.empty() && (!v || !v->file)) problem = "a kept page outside a file mapping";
    }
  });
  if (!problem.empty()) return problem;
  if (kept_count != kept_pages) return "kept_pages out of date";
  file_thp.for_each([&](i64 slot) {
    if (!problem.empty()) return;
    const i64 base = slot << PTE_SHIFT;
    const Vma* mapping = find_vma(base);
    if (pte.count(slot))
      problem = "a file THP PMD and a PTE table in one slot";
    else if (!pmd.count(slot >> (PMD_SHIFT - PTE_SHIFT)))
      problem = "file THP without PMD table";
    else if (!mapping || !mapping->file)
      problem = "file THP PMD without a file mapping";
    else if (mapping->end < base + PTE_SPAN)
      problem = "file THP PMD-mapped past its VMA";
    else if (mapping->file_offset(base) % PTE_SPAN)
      problem = "file THP PMD-mapped unaligned";
    else if (!mapping->file->huge.count(mapping->file_offset(base) >> PTE_SHIFT))
      problem = "folio not huge";
  });
  if (!problem.empty()) return problem;
  std::set<const BackingFile*> files;
  for (const Vma* v : vmas)
    if (v->file) files.insert(v->file.get());
  for (const BackingFile* f : files) {
    f->huge.for_each([&](i64 chunk) {
      const PageBits* pages = f->cache.find(chunk);
      if (problem.empty() && (!pages || !pages->all())) problem = "a huge chunk not all cached";
    });
    f->cache.for_each([&](i64, const PageBits& pages) {
      if (problem.empty() && !pages.any()) problem = "an empty chunk in the page cache";
    });
    if (!problem.empty()) return problem;
  }
  for (i64 p : pmd.all())
    if (!pud.count(p >> (PUD_SHIFT - PMD_SHIFT))) return "PMD table without PUD";
  return "";
}

// ------------------------------------------------------- table bookkeeping

void AddressSpace::ensure_upper(i64 addr) {
  if (pud.insert(addr >> PUD_SHIFT)) stats.upper_allocated++;
  if (pmd.insert(addr >> PMD_SHIFT)) stats.upper_allocated++;
}

PteTable& AddressSpace::ensure_pte(i64 slot) {
  if (PteTable* found = pte.find(slot)) return *found;
  ensure_upper(slot << PTE_SHIFT);
  PteTable& t = pte.emplace(slot).first;
  cls_count[C_EMPTY]++;
  stats.pte_allocated++;
  table_version++;
  if (const i64* r = reclaimed.find(slot)) {
    const i64 zapped = *r >> 2, cls = *r & 3;
    stats.refault_tables++;
    stats.refault_entries += zapped;
    if (cls == C_EMPTY)
      stats.refault_empty++;
    else if (cls == C_ZERO)
      stats.refault_zero++;
    else
      stats.refault_file++;
    reclaimed.erase(slot);
  }
  return t;
}

void AddressSpace::kept_set(i64 slot, PageBits& m, const PageBits& now) {
  // Callers only set bits or only clear them: the count moves by the bits that differ.
  int changed = 0, set = 0;
  for (int c = 0; c < 8; c++) {
    changed += PageBits::count_word(m.w[c] ^ now.w[c]);
    set += (now.w[c] & ~m.w[c]) != 0;
  }
  if (!changed) return;
  kept_pages += set ? changed : -changed;
  if (now.any())
    m = now;
  else
    kept.erase(slot);  // m dangles from here
}

void AddressSpace::kept_mapped(i64 slot, PageBits& m, const PteTable& t) {
  PageBits now;  // a THP maps every page
  if (!t.huge) {
    if (t.n[E_NONE] == ENTRIES) return;  // maps nothing
    now = m;
    for (int c = 0; c < 8; c++)
      if (now.w[c]) now.w[c] &= ~t.chunk_bits(c, PteTable::PRESENT_BITS);
  }
  kept_set(slot, m, now);
}

void AddressSpace::kept_or(i64 slot, const PageBits& bits, int count) {
  if (!bits.any()) return;
  PageBits* m = kept.find(slot);
  if (!m) m = &kept.emplace(slot).first;
  if (count >= 0) {  // the caller knows the bits are new and how many (see the header)
    for (int c = 0; c < 8; c++) m->w[c] |= bits.w[c];
    kept_pages += count;
    return;
  }
  PageBits now = *m;
  for (int c = 0; c < 8; c++) now.w[c] |= bits.w[c];
  kept_set(slot, *m, now);
}

std::vector<i64> AddressSpace::kept_in(i64 start, i64 end) const {
  std::vector<i64> pages;
  if (kept.size() == 0 || end <= start) return pages;
  std::vector<i64> slots;
  kept.slots_in(start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT, slots);
  for (i64 slot : slots) {
    const PageBits* m = kept.find(slot);
    const i64 base = slot << PTE_SHIFT;
    for (int k = 0; k < ENTRIES; k++) {
      const i64 a = base + (i64)k * PAGE;
      if (m->test(k) && start <= a && a < end) pages.push_back(a);
    }
  }
  return pages;
}

void AddressSpace::kept_add(const std::vector<i64>& pages) {
  for (i64 a : pages) {
    const int k = (int)((a >> PAGE_SHIFT) & (ENTRIES - 1));
    PageBits page;
    page.assign(k, k + 1, true);
    kept_or(a >> PTE_SHIFT, page);
  }
}

void AddressSpace::kept_drop(i64 start, i64 end) {
  if (kept.size() == 0 || end <= start) return;
  Borrowed<i64> scratch(slot_scratch_);  // returned before the caller borrows it
  std::vector<i64>& slots = scratch.v;
  kept.slots_in(start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT, slots);
  for (i64 slot : slots) {
    const i64 base = slot << PTE_SHIFT;
    const int i = (int)((std::max(start, base) - base) >> PAGE_SHIFT);
    const int j = (int)((std::min(end, base + PTE_SPAN) - base + PAGE - 1) >> PAGE_SHIFT);
    PageBits* m = kept.find(slot);
    PageBits now = *m;
    now.assign(i, j, false);
    kept_set(slot, *m, now);
  }
}

void AddressSpace::reclass(i64 slot, PteTable& t) {
  if (kept.size()) {
    if (PageBits* m = kept.find(slot)) kept_mapped(slot, *m, t);
  }
  uint8_t c;
  int32_t rss;
  t.census(c, rss);
  if (c != t.cls) {
    cls_count[t.cls]--;
    cls_count[c]++;
    t.cls = c;
    class_version++;
  }
  rss_pages += rss - t.rss;
  t.rss = rss;
}

void AddressSpace::free_pte(i64 slot, const PteTable& t) {
  if (t.huge) huge_tables--;
  cls_count[t.cls]--;
  rss_pages -= t.rss;
  table_version++;
  pte.erase(slot);
  stats.pte_freed++;
}

void AddressSpace::free_pte_quiet(i64 slot, OwnedPteTable& out) {
  const PteTable& t = out.t = pte.at(slot);
  pte.erase(slot);
  if (t.huge) huge_tables--;
  cls_count[t.cls]--;
  rss_pages -= t.rss;
  table_version++;
}

void AddressSpace::adopt_pte(i64 slot, const PteTable& t) {
  pte.emplace(slot).first = t;
  if (t.huge) huge_tables++;
  cls_count[t.cls]++;
  rss_pages += t.rss;
  table_version++;
  if (kept.size()) {
    if (PageBits* m = kept.find(slot)) kept_mapped(slot, *m, t);
  }
}

void AddressSpace::pte_slots_in(i64 start, i64 end, std::vector<i64>& out) const {
  i64 lo = start >> PTE_SHIFT;
  i64 hi = (end - 1) >> PTE_SHIFT;
  pte.slots_in(lo, hi, out);
}

void AddressSpace::update_entries(i64 start, i64 end, const uint8_t* table) {
  if (table[E_FILE] != E_FILE) kept_drop(start, end);
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  pte_slots_in(start, end, slots);
  for (i64 slot : slots) {
    PteTable& t = pte.at(slot);
    i64 base = slot << PTE_SHIFT;
    i64 a = std::max(start, base);
    i64 b = std::min(end, base + PTE_SPAN);
    if (t.huge) {
      if (a == base && b == base + PTE_SPAN) continue;
      split_huge(slot, t);
    }
    i64 i = (a - base) >> PAGE_SHIFT, j = (b - base + PAGE - 1) >> PAGE_SHIFT;
    t.xlate_range(i, j, 1, table);
    reclass(slot, t);
  }
}

void AddressSpace::split_huge(i64 slot, PteTable& t) {
  t.fill(t.huge == HUGE_ANON ? uint8_t{E_ANON} : uint8_t{E_ZERO});
  t.huge = HUGE_NONE;
  huge_tables--;
  reclass(slot, t);
}

void AddressSpace::split_huge_partial(i64 start, i64 end) {
  if (!huge_tables) return;
  for (i64 addr : {start, end}) {
    if (addr % PTE_SPAN) {
      PteTable* t = pte.find(addr >> PTE_SHIFT);
      if (t && t->huge) split_huge(addr >> PTE_SHIFT, *t);
    }
  }
}

void AddressSpace::unmap_file_thp(i64 start, i64 end) {
  if (file_thp.empty() || end <= start) return;
  for (i64 slot : file_thp.indices_in(start >> PTE_SHIFT, (end - 1) >> PTE_SHIFT)) {
    file_thp.erase(slot);
    rss_pages -= ENTRIES;
  }
}

void AddressSpace::zap(i64 start, i64 end, bool reclaim, bool drop_markers) {
  kept_drop(start, end);
  unmap_file_thp(start, end);
  split_huge_partial(start, end);
  const uint8_t* table = drop_markers ? ZAP_ALL.t : ZAP.t;
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  pte_slots_in(start, end, slots);
  for (i64 slot : slots) {
    PteTable& t = pte.at(slot);
    i64 base = slot << PTE_SHIFT;
    i64 a = std::max(start, base), b = std::min(end, base + PTE_SPAN);
    bool full = a == base && b == base + PTE_SPAN;
    if (t.huge) {
      free_pte(slot);
      continue;
    }
    i64 i = (a - base) >> PAGE_SHIFT, j = (b - base) >> PAGE_SHIFT;
    if (drop_markers || t.n[4] == 0)
      t.set_range(i, j, 1, E_NONE);  // nothing survives a zap: only 0..3 are present
    else
      t.xlate_range(i, j, 1, table);
    if (reclaim && full && pt_reclaim) {
      if (t.n[E_NONE] == ENTRIES) {
        free_pte(slot);
        stats.pte_reclaimed_on_zap++;
        continue;
      }
    }
    reclass(slot, t);
  }
}

void AddressSpace::free_pgtables(i64 start, i64 end) {
  i64 i = first_ending_after(start);
  i64 floor = i > 0 ? vmas[i - 1]->end : 0;
  i64 ceiling = i < (i64)vmas.size() ? vmas[i]->start : TASK_SIZE;
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  pte_slots_in(start, end, slots);
  for (i64 slot : slots)
    if ((slot << PTE_SHIFT) >= floor && ((slot + 1) << PTE_SHIFT) <= ceiling) free_pte(slot);
  for (int level = 0; level < 2; level++) {
    int shift = level == 0 ? PMD_SHIFT : PUD_SHIFT;
    IndexSet& tables = level == 0 ? pmd : pud;
    for (i64 idx : tables.indices_in(start >> shift, (end - 1) >> shift)) {
      if ((idx << shift) >= floor && ((idx + 1) << shift) <= ceiling) {
        tables.erase(idx);
        stats.upper_freed++;
      }
    }
  }
}

// ------------------------------------------------------------ VMA plumbing

i64 AddressSpace::insert(Vma* v) {
  auto it = std::lower_bound(vmas.begin(), vmas.end(), v->start,
                             [](const Vma* w, i64 a) { return w->start < a; });
  i64 i = it - vmas.begin();
  vmas.insert(it, v);
  return i;
}

i64 AddressSpace::index_of(const Vma* v) const {
  for (i64 i = 0; i < (i64)vmas.size(); i++)
    if (vmas[i] == v) return i;
  return -1;
}

void AddressSpace::anon_vma_prepare(Vma* v) {
  if (v->anon_vma) return;
  i64 i = index_of(v);
  for (int side = 0; side < 2; side++) {
    i64 j = side == 0 ? i + 1 : i - 1;
    if (j < 0 || j >= (i64)vmas.size()) continue;
    Vma* n = vmas[j];
    const Vma* lo = side == 0 ? v : n;
    const Vma* hi = side == 0 ? n : v;
    if (n->anon_vma && lo->end == hi->start && lo->file == hi->file &&
        !((lo->flags ^ hi->flags) & ~VM_PROT) && lo->uffd == hi->uffd &&
        hi->pgoff == lo->pgoff + ((hi->start - lo->start) >> PAGE_SHIFT)) {
      v->anon_vma = n->anon_vma;
      return;
    }
  }
  v->anon_vma = next_anon_vma_id();
}

void AddressSpace::split(i64 i, i64 addr) {
  if (addr % PTE_SPAN) {
    if (huge_tables) {
      PteTable* t = pte.find(addr >> PTE_SHIFT);
      if (t && t->huge) split_huge(addr >> PTE_SHIFT, *t);
    }
    unmap_file_thp(addr, addr + PAGE);
  }
  Vma* v = vmas[i];
  Vma* upper = new Vma(*v);
  upper->start = addr;
  upper->pgoff = v->pgoff + ((addr - v->start) >> PAGE_SHIFT);
  v->end = addr;
  vmas.insert(vmas.begin() + i + 1, upper);
}

i64 AddressSpace::isolate(i64 i, i64 start, i64 end) {
  if (vmas[i]->start < start) {
    split(i, start);
    i++;
  }
  if (vmas[i]->end > end) split(i, end);
  return i;
}

bool AddressSpace::can_merge(const Vma* a, const Vma* b) {
  return a->end == b->start && (a->flags & ~MERGE_IGNORED) == (b->flags & ~MERGE_IGNORED) &&
         a->file == b->file && a->uffd == b->uffd &&
         a->pgoff + ((a->end - a->start) >> PAGE_SHIFT) == b->pgoff &&
         (!a->anon_vma || !b->anon_vma || a->anon_vma == b->anon_vma);
}

bool AddressSpace::merge_at(i64 i) {
  if (i < 0 || i + 1 >= (i64)vmas.size()) return false;
  Vma* a = vmas[i];
  Vma* b = vmas[i + 1];
  if (!can_merge(a, b)) return false;
  a->end = b->end;
  if (!a->anon_vma) a->anon_vma = b->anon_vma;
  a->flags |= b->flags & VM_MAYBE_GUARD;
  vmas.erase(vmas.begin() + i + 1);
  retire(b);
  return true;
}

i64 AddressSpace::merge_around(i64 i) {
  if (merge_at(i - 1)) i--;
  merge_at(i);
  return i;
}

void AddressSpace::carve(i64 start, i64 end, i64& i_out, i64& j_out) {
  i64 i = first_ending_after(start);
  if (i < (i64)vmas.size() && vmas[i]->start < start) {
    split(i, start);
    i++;
  }
  i64 j = i;
  while (j < (i64)vmas.size() && vmas[j]->start < end) {
    if (vmas[j]->end > end) split(j, end);
    j++;
  }
  i_out = i;
  j_out = j;
}

// Calls piece(i, a, b) for each piece [a, b) of [start, end) that VMA vmas[i] covers, in
// address order (piece may split or merge vmas[i]: the next VMA is looked up again).  The
// first error piece returns ends the walk and is returned; otherwise ENOMEM if a hole
// lies in the range (pieces past it are still visited, as the kernel's madvise and
// mprotect loops do), OK if none does.  The loop of pagetable._modify and pagetable._walk
// (madvise_walk_vmas), written once for modify and walk.
template <class Piece>
int AddressSpace::for_each_piece(i64 start, i64 end, Piece&& piece) {
  int unmapped = OK;
  i64 pos = start;
  while (pos < end) {
    i64 i = first_ending_after(pos);
    if (i >= (i64)vmas.size() || vmas[i]->start >= end) return ERR_ENOMEM;
    if (vmas[i]->start > pos) {
      unmapped = ERR_ENOMEM;
      pos = vmas[i]->start;
    }
    i64 piece_end = std::min(vmas[i]->end, end);
    int err = piece(i, pos, piece_end);
    if (err) return err;
    pos = piece_end;
  }
  return unmapped;
}

int AddressSpace::modify(i64 start, i64 end, const FlagChange& change) {
  return for_each_piece(start, end, [&](i64 i, i64 a, i64 b) -> int {
    Vma* v = vmas[i];
    if (change.forbid_file_or_shared && (v->file || (v->flags & VM_SHARED))) return ERR_EINVAL;
    i64 nw = (v->flags & ~change.clear) | change.set;
    if (nw != v->flags) {
      i = isolate(i, a, b);
      vmas[i]->flags = nw;
      merge_around(i);
    }
    return OK;
  });
}

// --------------------------------------------------------------- faulting

bool AddressSpace::thp_allowed(const Vma* v) const {
  if (thp_disabled || thp_sysfs == 0 || !v->anonymous()) return false;
  if (v->flags & VM_NOHUGEPAGE) return false;
  return thp_sysfs == 2 || (v->flags & VM_HUGEPAGE);
}

bool AddressSpace::file_folio_fits(const Vma* v, i64 base) {
  if (!v->file || v->file->huge.empty() || base < v->start || base + PTE_SPAN > v->end)
    return false;
  const i64 foff = v->file_offset(base);
  return foff % PTE_SPAN == 0 && v->file->huge.count(foff >> PTE_SHIFT);
}

void AddressSpace::map_file_thp(i64 slot) {
  ensure_upper(slot << PTE_SHIFT);
  file_thp.insert(slot);
  rss_pages += ENTRIES;
  if (PageBits* m = kept.find(slot)) kept_set(slot, *m, PageBits{});
}

int AddressSpace::fault_range(Vma* v, i64 start, i64 end, i64 stride, bool write, i64 first,
                              i64& next) {
  i64 addr = first;
  next = addr;
  if ((write && !(v->flags & VM_WRITE)) || (!write && !(v->flags & VM_READ)))
    return ERR_SIGSEGV;
  i64 limit = end;
  int eof_error = OK;
  i64 eof = end;
  if (v->file) {
    eof = v->start + std::max<i64>(0, page_align(v->file->size) - (v->pgoff << PAGE_SHIFT));
    if (eof < limit) {
      limit = std::max(eof, start);
      eof_error = ERR_SIGBUS;
    }
  }
  int target;
  const Xlate* xlate;
  if (write) {
    target = !(v->flags & VM_SHARED) ? E_ANON : E_FILE;
    xlate = nullptr;
  } else {
    xlate = v->anonymous() ? &READ_ANON : &READ_FILE;
    target = -1;
  }
  const bool page_stride = stride % PAGE == 0;
  const bool cow = write && !(v->flags & VM_SHARED);
  // shmem allocates the page of every successful fault in its cache.
  BackingFile* cache = v->file && v->file->kind == 1 ? v->file.get() : nullptr;
  std::vector<i64> pages;
  while (addr < limit) {
    i64 slot = addr >> PTE_SHIFT;
    i64 base = slot << PTE_SHIFT;
    if (logging) touch_log.insert(slot);
    i64 seg_end = std::min(limit, base + PTE_SPAN);
    i64 n, last, i0 = 0, i1 = 0, istep = 1;
    if (page_stride) {
      n = (seg_end - addr + stride - 1) / stride;
      last = addr + (n - 1) * stride;
      i0 = (addr - base) >> PAGE_SHIFT;
      i1 = ((last - base) >> PAGE_SHIFT) + 1;
      istep = stride >> PAGE_SHIFT;
    } else {
      pages.clear();
      n = 0;
      for (i64 a = addr; a < seg_end; a += stride, n++) pages.push_back((a - base) >> PAGE_SHIFT);
      std::sort(pages.begin(), pages.end());
      pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
      last = addr + (n - 1) * stride;
    }
    PteTable* t = pte.find(slot);
    if (t) t->young = 1;  // the walk sets the PMD entry's accessed bit
    if (!t && thp_allowed(v) && base >= v->start && base + PTE_SPAN <= v->end) {
      t = &ensure_pte(slot);
      t->huge = write ? HUGE_ANON : HUGE_ZERO;
      huge_tables++;
      if (!v->anon_vma) anon_vma_prepare(v);
      reclass(slot, *t);
      stats.faults += 1;
      addr = last + stride;
      continue;
    }
    if (t && t->huge) {
      if (write && t->huge == HUGE_ZERO) {
        t->huge = HUGE_ANON;
        reclass(slot, *t);
      }
      if (write && !v->anon_vma) anon_vma_prepare(v);
      addr = last + stride;
      continue;
    }
    const bool fits = v->file && file_folio_fits(v, base);
    if (!t && v->file) {
      if (file_thp.count(slot)) {
        if (!cow) {
          addr = last + stride;
          continue;
        }
        unmap_file_thp(base, base + PAGE);
      } else if (fits && !cow && !thp_disabled && !(v->flags & VM_NOHUGEPAGE)) {
        map_file_thp(slot);
        stats.faults += 1;
        addr = last + stride;
        continue;
      }
    }
    if (!t) t = &ensure_pte(slot);  // found above, or made now
    const bool whole = fits && !cow && (!write || t->n[E_NONE] == ENTRIES);
    const i64 fpage = v->pgoff + ((base - v->start) >> PAGE_SHIFT);
    if (page_stride) {
      // Markers are among the "other" entries: a table without any has none to find.
      i64 g = t->n[4] ? first_marker(*t, i0, i1, istep) : -1;
      if (g >= 0) {
        i64 stop = i0 + g * istep;
        if (g) {
          if (write)
            t->set_range(i0, stop, istep, (uint8_t)target);
          else
            t->replace_range(i0, stop, istep, E_NONE, xlate->t[E_NONE]);
          if (target == E_ANON && !v->anon_vma) anon_vma_prepare(v);
          if (cache) cache->cache_pages(fpage + i0, istep, g);
          if (whole) t->replace_range(0, ENTRIES, 1, E_NONE, E_FILE);
        }
        reclass(slot, *t);
        next = base + (stop << PAGE_SHIFT);
        return ERR_SIGSEGV;
      }
      if (write)
        t->set_range(i0, i1, istep, (uint8_t)target);
      else
        t->replace_range(i0, i1, istep, E_NONE, xlate->t[E_NONE]);
      if (target == E_ANON && !v->anon_vma) anon_vma_prepare(v);
      if (cache) cache->cache_pages(fpage + i0, istep, (i1 - i0 + istep - 1) / istep);
    } else {
      for (size_t k = 0; k < pages.size(); k++) {
        const i64 p = pages[k];
        const uint8_t x = t->get(p);
        if (x == E_GUARD || x == E_UFFD_WP) {
          if (whole && k) t->replace_range(0, ENTRIES, 1, E_NONE, E_FILE);
          reclass(slot, *t);
          next = base + (p << PAGE_SHIFT);
          return ERR_SIGSEGV;
        }
        t->set(p, xlate ? xlate->t[x] : (uint8_t)target);
        if (target == E_ANON && !v->anon_vma) anon_vma_prepare(v);
        if (cache) cache->cache_pages(fpage + p, 1, 1);
      }
    }
    if (whole) t->replace_range(0, ENTRIES, 1, E_NONE, E_FILE);
    reclass(slot, *t);
    stats.faults += n;
    addr = last + stride;
  }
  if (eof_error && addr < end) addr = past_eof_file_thp(v, addr, end, stride, write, eof);
  next = addr;
  if (eof_error && addr < end) {
    ensure_upper(addr);
    if (write && !(v->flags & VM_SHARED) && !v->anon_vma) anon_vma_prepare(v);
    return eof_error;
  }
  return OK;
}

i64 AddressSpace::past_eof_file_thp(const Vma* v, i64 addr, i64 end, i64 stride, bool write,
                                    i64 eof) {
  const i64 slot = addr >> PTE_SHIFT;
  const i64 base = slot << PTE_SHIFT;
  if (!file_thp.count(slot)) {
    const i64 window = std::max(addr & ~(FAULT_AROUND - 1), v->start);
    if (write || window >= eof || pte.count(slot) || thp_disabled ||
        (v->flags & VM_NOHUGEPAGE) || !file_folio_fits(v, base))
      return addr;
    map_file_thp(slot);
    stats.faults += 1;
  }
  const i64 nxt = std::min(end, base + PTE_SPAN);
  return addr + (nxt - addr + stride - 1) / stride * stride;
}

int AddressSpace::touch(i64 start, i64 length, bool write, i64 stride) {
  i64 end = start + length;
  i64 addr = start;
  int err = OK;
  while (addr < end) {
    Vma* v = find_vma(addr);
    if (!v) {
      err = ERR_SIGSEGV;
      break;
    }
    err = fault_range(v, v->start, std::min(v->end, end), stride, write, addr, addr);
    if (err) break;
  }
  collect();
  return err;
}

// mode: 0 mlock, 1 read, 2 write (pagetable._populate).
int AddressSpace::populate(i64 start, i64 end, int mode) {
  i64 pos = start;
  while (pos < end) {
    Vma* v = find_vma(pos);
    if (!v) {
      i64 i = first_ending_after(pos);
      if (mode == 0 && i < (i64)vmas.size() && vmas[i]->start < end) {
        pos = vmas[i]->start;
        continue;
      }
      return mode != 0 ? ERR_ENOMEM : OK;
    }
    i64 piece_end = std::min(v->end, end);
    bool write;
    if (mode == 0) {
      if (!(v->flags & VM_PROT)) return ERR_ENOMEM;
      write = (v->flags & (VM_WRITE | VM_SHARED)) == VM_WRITE;
      if (!write && !(v->flags & VM_READ)) return ERR_ENOMEM;
    } else {
      write = mode == 2;
      if (!(v->flags & VM_PROT) || (write && !(v->flags & VM_WRITE)))
        return !(v->flags & VM_PROT) ? ERR_EINVAL : ERR_EFAULT;
    }
    i64 next;
    int err = fault_range(v, pos, piece_end, PAGE, write, pos, next);
    if (err) return mode != 0 ? ERR_EFAULT : ERR_ENOMEM;
    pos = piece_end;
  }
  return OK;
}

// -------------------------------------------------------------- syscalls

int AddressSpace::mmap(i64 addr, i64 length, int kind, bool shared, i64 prot, FileRef file,
                       i64 foff, bool noreserve, bool fixed, bool populate_) {
  if (length <= 0 || addr % PAGE || foff % PAGE) return ERR_EINVAL;
  length = page_align(length);
  i64 end = addr + length;
  if (end > TASK_SIZE) return ERR_ENOMEM;
  if (any_vma_overlapping(addr, end)) {
    if (!fixed) return ERR_EEXIST;
    unmap(addr, end);
  }
  i64 flags = prot;
  if (kind == 0 && shared) {  // anon shared: its own shmem object
    file = std::make_shared<BackingFile>();
    file->kind = 1;
    file->size = length;
    file->anon = true;
    foff = 0;
  } else if (kind == 0) {
    file = nullptr;
    foff = addr;
  }
  if (shared) flags |= VM_SHARED;
  if (noreserve)
    flags |= VM_NORESERVE;
  else if (!shared && (prot & VM_WRITE))
    flags |= VM_ACCOUNT;
  Vma* v = new Vma{addr, end, flags, foff >> PAGE_SHIFT, file};
  if (file) file->mappers.insert(this);
  i64 i = insert(v);
  merge_around(i);
  if (populate_) populate(addr, end, 0);
  collect();
  return OK;
}

void AddressSpace::unmap(i64 start, i64 end) {
  i64 i, j;
  carve(start, end, i, j);
  if (i >= j) return;
  std::vector<Vma*> removed(vmas.begin() + i, vmas.begin() + j);
  vmas.erase(vmas.begin() + i, vmas.begin() + j);
  for (Vma* v : removed) zap(v->start, v->end, false, true);
  free_pgtables(removed.front()->start, removed.back()->end);
  for (Vma* v : removed) retire(v);
}

int AddressSpace::munmap(i64 start, i64 length) {
  if (start % PAGE || length <= 0) return ERR_EINVAL;
  i64 end = start + page_align(length);
  if (end > TASK_SIZE) return ERR_EINVAL;
  unmap(start, end);
  collect();
  return OK;
}

// kind 0: mprotect(prot); 1: mlock; 2: munlock (pagetable._change_contiguous with the
// callers' new_flags and after functions).
int AddressSpace::change_contiguous(i64 start, i64 end, int kind, i64 prot) {
  if (!find_vma(start)) return ERR_ENOMEM;
  i64 pos = start;
  while (pos < end) {
    Vma* v = find_vma(pos);
    if (!v) return ERR_ENOMEM;
    i64 piece_end = std::min(v->end, end);
    i64 old = v->flags;
    i64 nw;
    if (kind == 0) {
      nw = (old & ~VM_PROT) | prot;
      if (prot & VM_WRITE) {
        if (!(old & (VM_ACCOUNT | VM_WRITE | VM_SHARED | VM_NORESERVE))) nw |= VM_ACCOUNT;
      } else if ((old & VM_ACCOUNT) && v->anonymous() && !v->anon_vma) {
        nw &= ~VM_ACCOUNT;
      }
    } else if (kind == 1) {
      nw = v->flags | VM_LOCKED;
    } else {
      nw = v->flags & ~VM_LOCKED;
    }
    if (nw != old) {
      Vma* piece = vmas[isolate(index_of(v), pos, piece_end)];
      piece->flags = nw;
      if (kind == 0 && (old & (VM_WRITE | VM_SHARED | VM_LOCKED)) == VM_LOCKED &&
          (piece->flags & VM_WRITE)) {
        i64 next;
        fault_range(piece, pos, piece_end, PAGE, true, pos, next);
      }
      merge_around(index_of(piece));
    }
    pos = piece_end;
  }
  return OK;
}

int AddressSpace::mprotect(i64 start, i64 length, i64 prot) {
  if (start % PAGE) return ERR_EINVAL;
  if (length == 0) return OK;
  i64 end = start + page_align(length);
  int err = change_contiguous(start, end, 0, prot);
  collect();
  return err;
}

int AddressSpace::lock(i64 start, i64 length, bool on) {
  i64 end = page_align(start + length);
  start &= ~(PAGE - 1);
  if (end <= start) return OK;
  int err = change_contiguous(start, end, on ? 1 : 2, 0);
  if (err || !on) {
    collect();
    return err;
  }
  err = populate(start, end, 0);
  collect();
  return err;
}

static const FlagChange FLAG_ADVICE[] = {
    /* DONTFORK   */ {VM_DONTCOPY, 0, false},
    /* DOFORK     */ {0, VM_DONTCOPY, false},
    /* WIPEONFORK */ {VM_WIPEONFORK, 0, true},
    /* KEEPONFORK */ {0, VM_WIPEONFORK, false},
    /* HUGEPAGE   */ {VM_HUGEPAGE, VM_NOHUGEPAGE, false},
    /* NOHUGEPAGE */ {VM_NOHUGEPAGE, VM_HUGEPAGE, false},
    /* RANDOM     */ {VM_RAND_READ, VM_SEQ_READ, false},
    /* SEQUENTIAL */ {VM_SEQ_READ, VM_RAND_READ, false},
    /* NORMAL     */ {0, VM_SEQ_READ | VM_RAND_READ, false},
};

static int flag_advice_index(int advice) {
  switch (advice) {
    case A_DONTFORK: return 0;
    case A_DOFORK: return 1;
    case A_WIPEONFORK: return 2;
    case A_KEEPONFORK: return 3;
    case A_HUGEPAGE: return 4;
    case A_NOHUGEPAGE: return 5;
    case A_RANDOM: return 6;
    case A_SEQUENTIAL: return 7;
    case A_NORMAL: return 8;
  }
  return -1;
}

int AddressSpace::madvise(i64 start, i64 length, int advice) {
  if (start % PAGE) return ERR_EINVAL;
  if (length == 0) return OK;
  i64 end = start + page_align(length);
  if (end > TASK_SIZE) return ERR_EINVAL;
  int err;
  int fi = flag_advice_index(advice);
  if (advice == A_POPULATE_READ || advice == A_POPULATE_WRITE)
    err = populate(start, end, advice == A_POPULATE_READ ? 1 : 2);
  else if (fi >= 0)
    err = modify(start, end, FLAG_ADVICE[fi]);
  else if (advice < 0 || advice >= A_COUNT)
    err = ERR_EINVAL;
  else
    err = walk(start, end, advice);
  collect();
  return err;
}

int AddressSpace::walk(i64 start, i64 end, int advice) {
  return for_each_piece(start, end,
                        [&](i64 i, i64 a, i64 b) -> int { return visit(vmas[i], a, b, advice); });
}

int AddressSpace::visit(Vma* v, i64 a, i64 b, int advice) {
  switch (advice) {
    case A_DONTNEED:
      if (v->flags & VM_LOCKED) return ERR_EINVAL;
      zap(a, b, true);
      return OK;
    case A_DONTNEED_LOCKED:
      zap(a, b, true);
      return OK;
    case A_FREE:
      if ((v->flags & VM_LOCKED) || !v->anonymous()) return ERR_EINVAL;
      return OK;
    case A_PAGEOUT:
      if (v->flags & VM_LOCKED) return ERR_EINVAL;
      if (v->file && v->file->kind == 0) update_entries(a, b, DROP_FILE.t);
      cold_file_thp(v, a, b, true);
      return OK;
    case A_COLD:
      if (v->flags & VM_LOCKED) return ERR_EINVAL;
      cold_file_thp(v, a, b, false);
      return OK;
    case A_WILLNEED:
      return OK;
    case A_REMOVE:
      if ((v->flags & VM_LOCKED) || !v->file) return ERR_EINVAL;
      if (!(v->flags & VM_SHARED)) return ERR_EACCES;
      punch(*v->file, v->file_offset(a), b - a);
      return OK;
    case A_GUARD_INSTALL:
      return guard_install(v, a, b);
    case A_GUARD_REMOVE:
      update_entries(a, b, DROP_GUARD.t);
      return OK;
    case A_COLLAPSE:
      return collapse(v, a, b);
  }
  return ERR_EINVAL;
}

// pagetable._cold_file_thp.
void AddressSpace::cold_file_thp(Vma* v, i64 a, i64 b, bool pageout) {
  if (!v->file || v->file->huge.empty()) return;
  // Keep the file alive and its identity fixed while folios are unmapped everywhere.
  FileRef f = v->file;
  std::vector<i64> whole, split;
  const i64 lo = a >> PTE_SHIFT, hi = (b - 1) >> PTE_SHIFT;
  for (i64 slot : file_thp.indices_in(lo, hi)) {
    const bool covered = a <= (slot << PTE_SHIFT) && ((slot + 1) << PTE_SHIFT) <= b;
    (covered ? whole : split).push_back(v->file_offset(slot << PTE_SHIFT) >> PTE_SHIFT);
  }
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  pte_slots_in(a, b, slots);
  for (i64 slot : slots) {
    const PteTable& t = pte.at(slot);
    if (!t.n[E_FILE]) continue;  // no file entry: no folio hit
    const i64 base = slot << PTE_SHIFT;
    const i64 i = (std::max(a, base) - base) >> PAGE_SHIFT;
    const i64 j = (std::min(b, base + PTE_SPAN) - base) >> PAGE_SHIFT;
    const i64 first = v->pgoff + ((base - v->start) >> PAGE_SHIFT);
    // The huge chunks of the file entries in [i, j): consecutive pages, so at most two.
    i64 hit[2];
    int nhit = 0;
    for (i64 k = i; k < j; k++) {
      if (t.get(k) != E_FILE) continue;
      const i64 chunk = (first + k) / ENTRIES;  // first + k >= 0: floor division
      if (f->huge.count(chunk)) hit[nhit++] = chunk;
      k = (chunk + 1) * ENTRIES - first - 1;  // the rest of this chunk adds nothing
    }
    if (!nhit) continue;
    std::vector<i64>& into =
        (j - i == ENTRIES && file_folio_fits(v, base) && t.n[E_FILE] == ENTRIES) ? whole : split;
    into.insert(into.end(), hit, hit + nhit);
  }
  std::sort(split.begin(), split.end());
  split.erase(std::unique(split.begin(), split.end()), split.end());
  for (i64 chunk : split) {
    f->huge.erase(chunk);
    unmap_folio(*f, chunk);
  }
  if (pageout) {
    std::sort(whole.begin(), whole.end());
    whole.erase(std::unique(whole.begin(), whole.end()), whole.end());
    for (i64 chunk : whole)
      if (!std::binary_search(split.begin(), split.end(), chunk)) unmap_folio(*f, chunk);
  }
}

// pagetable._unmap_folio.
void AddressSpace::unmap_folio(BackingFile& file, i64 chunk) {
  const i64 start = chunk << PTE_SHIFT;
  std::vector<AddressSpace*> mms(file.mappers.begin(), file.mappers.end());
  for (AddressSpace* mm : mms) mm->zap_file_range(file, start, start + PTE_SPAN, false);
}

int AddressSpace::guard_install(Vma* v, i64 a, i64 b) {
  if (v->flags & VM_LOCKED) return ERR_EINVAL;
  v->flags |= VM_MAYBE_GUARD;
  if (v->anonymous() && !v->anon_vma) anon_vma_prepare(v);
  split_huge_partial(a, b);
  zap(a, b, false);
  for (i64 slot = a >> PTE_SHIFT; slot <= ((b - 1) >> PTE_SHIFT); slot++) {
    PteTable& t = ensure_pte(slot);
    i64 base = slot << PTE_SHIFT;
    i64 i = (std::max(a, base) - base) >> PAGE_SHIFT;
    i64 j = (std::min(b, base + PTE_SPAN) - base) >> PAGE_SHIFT;
    t.set_range(i, j, 1, E_GUARD);
    reclass(slot, t);
  }
  return OK;
}

int AddressSpace::collapse(Vma* v, i64 lo, i64 hi) {
  if (thp_disabled) return ERR_EINVAL;
  if ((v->file && v->file->kind == 0) || (v->flags & VM_NOHUGEPAGE)) return ERR_EINVAL;
  if (((v->end - PTE_SPAN) & ~(PTE_SPAN - 1)) < v->start) return ERR_EINVAL;
  if (v->file && ((v->start >> PAGE_SHIFT) - v->pgoff) % ENTRIES) return ERR_EINVAL;
  int err = OK;
  for (i64 slot = (lo + PTE_SPAN - 1) >> PTE_SHIFT; slot < (hi >> PTE_SHIFT); slot++) {
    if (!v->anonymous()) {
      const int result = collapse_file(v, slot);
      if (result == 2) return ERR_EINVAL;
      if (result == 1) err = ERR_EINVAL;
      continue;
    }
    PteTable* t = pte.find(slot);
    if (t && t->huge) continue;
    if (!t || !v->anon_vma || (t->n[4] && first_marker(*t, 0, ENTRIES, 1) >= 0)) {
      err = ERR_EINVAL;
      continue;
    }
    t->fill(E_NONE);
    t->huge = HUGE_ANON;
    huge_tables++;
    reclass(slot, *t);
  }
  return err;
}

// pagetable._collapse_file: 0 "ok", 1 "skip", 2 "stop".
int AddressSpace::collapse_file(Vma* v, i64 slot) {
  FileRef f = v->file;
  const i64 chunk = v->file_offset(slot << PTE_SHIFT) >> PTE_SHIFT;
  if (!f->huge.count(chunk)) {
    if (!f->cache.count(chunk)) return 2;
    f->collapse(chunk);
    unmap_folio(*f, chunk);
    std::vector<AddressSpace*> mms(f->mappers.begin(), f->mappers.end());
    for (AddressSpace* mm : mms) mm->retract_page_tables(*f, chunk);
  }
  if (file_thp.count(slot)) return 0;
  if (const PteTable* t = pte.find(slot)) {
    // Step 1: every mapped PTE must map the folio; the first entry that does not decides.
    if (t->n[E_ANON] || t->n[E_ZERO] || t->n[4]) {
      for (int k = 0; k < ENTRIES; k++) {
        const uint8_t e = t->get(k);
        if (e == E_SWAP || e == E_GUARD || e == E_UFFD_WP) return 1;
        if (e != E_NONE && e != E_FILE) return 2;
      }
    }
    free_pte(slot);
  }
  map_file_thp(slot);
  return 0;
}

// pagetable._retract_page_tables.
void AddressSpace::retract_page_tables(const BackingFile& file, i64 chunk) {
  const i64 page = chunk * ENTRIES;
  for (const Vma* v : vmas) {
    const i64 pages = (v->end - v->start) >> PAGE_SHIFT;
    if (v->file.get() != &file || !(v->pgoff <= page && page < v->pgoff + pages)) continue;
    const i64 addr = v->start + ((page - v->pgoff) << PAGE_SHIFT);
    if (addr % PTE_SPAN || addr + PTE_SPAN > v->end || v->anon_vma ||
        (v->flags & (VM_MAYBE_GUARD | VM_UFFD_WP)))
      continue;
    if (pte.count(addr >> PTE_SHIFT)) free_pte(addr >> PTE_SHIFT);
  }
}

void AddressSpace::punch(BackingFile& file, i64 foff, i64 length) {
  drop_file_range(file, foff, foff + length, foff, false);
}

void AddressSpace::truncate(BackingFile& file, i64 size) {
  i64 old = file.size;
  file.size = size;
  if (size < old)
    drop_file_range(file, size, std::max(old, size) + TASK_SIZE, page_align(size), true);
}

// pagetable._drop_file_range.
void AddressSpace::drop_file_range(BackingFile& file, i64 start, i64 end, i64 unmap_start,
                                   bool even_cows) {
  const std::vector<i64> split = file.huge_split_by(start, end);
  std::vector<AddressSpace*> mms(file.mappers.begin(), file.mappers.end());
  for (AddressSpace* mm : mms) {
    mm->zap_file_range(file, unmap_start, end, even_cows);
    mm->collect();
  }
  for (i64 chunk : split) unmap_folio(file, chunk);
  file.drop_pages(start, end);
}

void AddressSpace::zap_file_range(BackingFile& file, i64 fstart, i64 fend, bool even_cows) {
  std::vector<Vma*> snapshot = vmas;
  for (Vma* v : snapshot) {
    if (v->file.get() != &file) continue;
    i64 vstart = v->pgoff << PAGE_SHIFT;
    i64 a = std::max(fstart, vstart);
    i64 b = std::min(fend, vstart + (v->end - v->start));
    if (a >= b) continue;
    i64 addr_a = v->start + (a - vstart);
    i64 addr_b = v->start + (b - vstart);
    if (even_cows || (v->flags & VM_SHARED)) {
      zap(addr_a, addr_b, false);
    } else {
      unmap_file_thp(addr_a, addr_b);
      update_entries(addr_a, addr_b, DROP_FILE.t);
    }
  }
}

// ------------------------------------------------------------------ mremap

int AddressSpace::mremap(i64 addr, i64 old_len, i64 new_len, bool has_new_addr, i64 new_addr,
                         bool dontunmap) {
  old_len = page_align(old_len);
  new_len = page_align(new_len);
  int err;
  if (addr % PAGE || new_len == 0 || new_len > TASK_SIZE) {
    err = ERR_EINVAL;
  } else if (!has_new_addr) {
    err = dontunmap ? ERR_EINVAL : mremap_in_place(addr, old_len, new_len);
  } else if (new_addr % PAGE || new_addr > TASK_SIZE - new_len) {
    err = ERR_EINVAL;
  } else if (dontunmap && old_len != new_len) {
    err = ERR_EINVAL;
  } else if (addr + old_len > new_addr && new_addr + new_len > addr) {
    err = ERR_EINVAL;
  } else if (old_len == new_len) {
    err = remap_move(addr, old_len, new_addr, dontunmap);
  } else {
    Vma* v = find_vma(addr);
    if (!v)
      err = ERR_EFAULT;
    else if (old_len == 0 && !(v->flags & VM_SHARED))
      err = ERR_EINVAL;
    else if (std::min(old_len, new_len) > v->end - addr)
      err = ERR_EFAULT;
    else
      err = mremap_to(addr, old_len, new_len, new_addr, dontunmap);
  }
  collect();
  return err;
}

int AddressSpace::mremap_in_place(i64 addr, i64 old_len, i64 new_len) {
  Vma* v = find_vma(addr);
  if (!v) return ERR_EFAULT;
  if (new_len == old_len) return OK;
  if (new_len < old_len) {
    unmap(addr + new_len, addr + old_len);
    return OK;
  }
  if (old_len == 0 && !(v->flags & VM_SHARED)) return ERR_EINVAL;
  if (old_len > v->end - addr) return ERR_EFAULT;
  i64 delta = new_len - old_len;
  if (v->end - addr != old_len || v->end + delta > TASK_SIZE ||
      any_vma_overlapping(v->end, v->end + delta))
    return ERR_ENOMEM;
  i64 old_end = v->end;
  v->end += delta;
  merge_around(index_of(v));
  if (v->flags & VM_LOCKED) populate(old_end, old_end + delta, 0);
  return OK;
}

int AddressSpace::remap_move(i64 start, i64 length, i64 new_addr, bool dontunmap) {
  i64 end = start + length;
  i64 target = new_addr;
  i64 last_end = 0;
  bool seen = false;
  i64 pos = start;
  while (pos < end) {
    i64 i = first_ending_after(pos);
    if (i >= (i64)vmas.size() || vmas[i]->start >= end) break;
    Vma* v = vmas[i];
    if (!seen && start < v->start) return ERR_EFAULT;
    i64 a = std::max(v->start, start);
    i64 n = std::min(end, v->end) - a;
    i64 offset = seen ? v->start - last_end : 0;
    last_end = v->end;
    if (v->uffd && (seen || v->end < end)) return ERR_EFAULT;
    i64 dst = target + offset;
    int err = mremap_to(a, n, n, dst, dontunmap);
    if (err) return err;
    seen = true;
    target = dst + n;
    pos = a + n;
  }
  return seen ? OK : ERR_EFAULT;
}

int AddressSpace::mremap_to(i64 addr, i64 old_len, i64 new_len, i64 new_addr, bool dontunmap) {
  unmap(new_addr, new_addr + new_len);
  Vma* v = find_vma(addr);
  if (!v) return ERR_EFAULT;
  if (new_len < old_len) {
    unmap(addr + new_len, addr + old_len);
    v = find_vma(addr);
    if (!v) return ERR_EFAULT;
    old_len = new_len;
  }
  i64 pgoff = v->pgoff + ((addr - v->start) >> PAGE_SHIFT);
  if (v->anonymous() && !v->anon_vma) pgoff = new_addr >> PAGE_SHIFT;
  Vma* nw = new Vma(*v);
  nw->start = new_addr;
  nw->end = new_addr + new_len;
  nw->pgoff = pgoff;
  if (nw->file) nw->file->mappers.insert(this);
  i64 ni = insert(nw);
  ni = merge_around(ni);
  nw = vmas[ni];
  v = find_vma(addr);
  move_page_tables(v, nw, addr, new_addr, old_len);
  if (dontunmap) {
    v->flags &= ~VM_LOCKED;  // R17: the source keeps VM_ACCOUNT
    if (addr == v->start && addr + old_len == v->end && nw != v) v->anon_vma = 0;
  } else {
    unmap(addr, addr + old_len);
  }
  if (new_len > old_len && (nw->flags & VM_LOCKED))
    populate(new_addr + old_len, new_addr + new_len, 0);
  return OK;
}

void AddressSpace::move_page_tables(Vma* old, Vma* nw, i64 old_addr, i64 new_addr,
                                    i64 length) {
  if (length == 0) return;
  i64 old_end = old_addr + length;
  // Kept pages move with the range, as their entries would have (move_ptes).
  std::vector<i64> kept_pages_moved = kept_in(old_addr, old_end);
  kept_drop(old_addr, old_end);
  const i64 moved_by = new_addr - old_addr;
  i64 align = old_addr & (PTE_SPAN - 1);
  if (align && length >= PTE_SPAN - align && align == (new_addr & (PTE_SPAN - 1)) &&
      old->start == old_addr && nw->start == new_addr &&
      !any_vma_overlapping(old_addr & ~(PTE_SPAN - 1), old_addr) &&
      !any_vma_overlapping(new_addr & ~(PTE_SPAN - 1), new_addr)) {
    old_addr &= ~(PTE_SPAN - 1);
    new_addr &= ~(PTE_SPAN - 1);
  }
  std::vector<i64> spans = pmd.indices_in(old_addr >> PMD_SHIFT, (old_end - 1) >> PMD_SHIFT);
  while (old_addr < old_end) {
    i64 extent = extent_of(old_addr, new_addr, old_end, PMD_SPAN);
    if (!pmd.count(old_addr >> PMD_SHIFT)) {
      auto k = std::upper_bound(spans.begin(), spans.end(), old_addr >> PMD_SHIFT);
      if (k == spans.end()) break;
      i64 skip = (*k << PMD_SHIFT) - old_addr;
      old_addr += skip;
      new_addr += skip;
      continue;
    }
    if (pud.insert(new_addr >> PUD_SHIFT)) stats.upper_allocated++;
    if (extent == PMD_SPAN && !pmd.count(new_addr >> PMD_SHIFT)) {
      move_pmd_table(old_addr, new_addr);
      old_addr += extent;
      new_addr += extent;
      continue;
    }
    extent = extent_of(old_addr, new_addr, old_end, PTE_SPAN);
    i64 oslot = old_addr >> PTE_SHIFT;
    PteTable* ot = pte.find(oslot);
    if (!ot) {
      if (file_thp.count(oslot)) move_file_thp(oslot, new_addr, extent);
      old_addr += extent;
      new_addr += extent;
      continue;
    }
    if (pmd.insert(new_addr >> PMD_SHIFT)) stats.upper_allocated++;
    i64 nslot = new_addr >> PTE_SHIFT;
    if (extent == PTE_SPAN && !pte.count(nslot)) {
      OwnedPteTable t;
      free_pte_quiet(oslot, t);
      adopt_pte(nslot, t.t);
    } else {
      if (ot->huge) split_huge(oslot, *ot);
      PteTable& dt = ensure_pte(nslot);
      PteTable& t = pte.at(oslot);
      i64 oi = (old_addr & (PTE_SPAN - 1)) >> PAGE_SHIFT;
      i64 ni = (new_addr & (PTE_SPAN - 1)) >> PAGE_SHIFT;
      i64 k = extent >> PAGE_SHIFT;
      uint8_t moved[ENTRIES];
      t.ready(oi, oi + k);
      for (i64 p = 0; p < k; p++) moved[p] = t.get(oi + p);
      for (i64 p = 0; p < k; p++)
        if (moved[p]) dt.set(ni + p, moved[p]);
      t.set_range(oi, oi + k, 1, E_NONE);
      reclass(oslot, t);
      reclass(nslot, dt);
    }
    old_addr += extent;
    new_addr += extent;
  }
  for (i64& a : kept_pages_moved) a += moved_by;
  kept_add(kept_pages_moved);
}

void AddressSpace::move_file_thp(i64 oslot, i64 new_addr, i64 extent) {
  if (pmd.insert(new_addr >> PMD_SHIFT)) stats.upper_allocated++;
  const i64 nslot = new_addr >> PTE_SHIFT;
  file_thp.erase(oslot);
  if (extent == PTE_SPAN && !pte.count(nslot) && !file_thp.count(nslot)) {
    file_thp.insert(nslot);
    if (PageBits* m = kept.find(nslot)) kept_set(nslot, *m, PageBits{});
  } else {
    rss_pages -= ENTRIES;
  }
}

void AddressSpace::move_pmd_table(i64 old_addr, i64 new_addr) {
  pmd.erase(old_addr >> PMD_SHIFT);
  pmd.insert(new_addr >> PMD_SHIFT);
  i64 shift = (new_addr - old_addr) >> PTE_SHIFT;
  Borrowed<i64> scratch(slot_scratch_);
  std::vector<i64>& slots = scratch.v;
  pte_slots_in(old_addr, old_addr + PMD_SPAN, slots);
  for (i64 slot : slots) {
    OwnedPteTable t;
    free_pte_quiet(slot, t);
    adopt_pte(slot + shift, t.t);
  }
  if (!file_thp.empty()) {
    const i64 lo = old_addr >> PTE_SHIFT;
    const std::vector<i64> moved = file_thp.indices_in(lo, lo + ENTRIES - 1);
    for (i64 slot : moved) file_thp.erase(slot);
    for (i64 slot : moved) file_thp.insert(slot + shift);
  }
}

// ------------------------------------------------------------ fork / exit

std::unique_ptr<AddressSpace> AddressSpace::fork() {
  auto child = std::make_unique<AddressSpace>();
  child->pt_reclaim = pt_reclaim;
  child->thp_disabled = thp_disabled;
  child->thp_sysfs = thp_sysfs;
  std::vector<i64> slots;
  for (const Vma* v : vmas) {
    if (v->flags & VM_DONTCOPY) continue;
    Vma* c = new Vma(*v);
    c->flags = v->flags & ~VM_LOCKED;
    c->uffd = 0;
    c->anon_vma = (v->anon_vma && !(v->flags & VM_WIPEONFORK)) ? next_anon_vma_id() : 0;
    child->vmas.push_back(c);
    if (c->file) c->file->mappers.insert(child.get());
    if ((v->flags & VM_WIPEONFORK) || !(v->anon_vma || (v->flags & VM_MAYBE_GUARD))) continue;
    // Kept pages go to the child as their entries would have (copy_page_range).
    child->kept_add(kept_in(v->start, v->end));
    for (i64 idx : pud.indices_in(v->start >> PUD_SHIFT, (v->end - 1) >> PUD_SHIFT))
      child->pud.insert(idx);
    for (i64 idx : pmd.indices_in(v->start >> PMD_SHIFT, (v->end - 1) >> PMD_SHIFT))
      child->pmd.insert(idx);
    slots.clear();
    pte_slots_in(v->start, v->end, slots);
    for (i64 slot : slots) {
      const PteTable& t = pte.at(slot);
      auto [ct, created] = child->pte.emplace(slot);
      if (created) child->cls_count[C_EMPTY]++;
      i64 base = slot << PTE_SHIFT;
      i64 i = (std::max(v->start, base) - base) >> PAGE_SHIFT;
      i64 j = (std::min(v->end, base + PTE_SPAN) - base) >> PAGE_SHIFT;
      ct.copy_range(t, i, j);
      if (ct.huge) child->huge_tables--;
      ct.huge = t.huge;
      if (ct.huge) child->huge_tables++;
      child->reclass(slot, ct);
    }
  }
  return child;
}

void AddressSpace::exit() {
  for (Vma* v : vmas) {
    if (v->file) v->file->mappers.erase(this);
    retire(v);
  }
  vmas.clear();
  stats.pte_freed += (i64)pte.size();
  stats.upper_freed += (i64)pmd.size() + (i64)pud.size();
  pte.clear();
  pmd.clear();
  pud.clear();
  file_thp.clear();
  std::fill(cls_count, cls_count + 4, i64{0});
  huge_tables = 0;
  rss_pages = 0;
  kept.clear();
  kept_pages = 0;
  table_version++;
  collect();
}

// ---------------------------------------------------------------- reclaim

i64 AddressSpace::reclaim_table(i64 slot, unsigned allowed_mask) {
  PteTable* found = pte.find(slot);
  return found ? reclaim_table(slot, *found, allowed_mask) : -1;
}

i64 AddressSpace::reclaim_table(i64 slot, PteTable& t, unsigned allowed_mask) {
  if (t.cls == C_PINNED || !(allowed_mask & (1u << t.cls)) || slot_is_uffd(slot)) return -1;
  i64 zapped = t.huge ? ENTRIES : ENTRIES - t.count(E_NONE);
  const i64 cls = t.cls;
  if (t.rss) {
    // The page cache stays (pagetable.AddressSpace.reclaim_table).  Its pages are mapped
    // here, so none of them is kept yet (check_invariants), and a table that is not a THP
    // has one entry per page: their number is n[E_FILE], not a count of bits.
    PageBits file;
    for (int c = 0; c < 8; c++) file.w[c] = t.chunk_bits(c, PteTable::FILE_BITS);
    kept_or(slot, file, t.huge ? -1 : t.n[E_FILE]);
  }
  free_pte(slot, t);
  reclaimed.emplace(slot).first = zapped * 4 + cls;
  return zapped;
}

void AddressSpace::install_vma(i64 start, i64 end, i64 flags, i64 pgoff, FileRef file,
                               bool new_anon_vma) {
  if (file) file->mappers.insert(this);
  Vma* v = new Vma{start, end, flags, pgoff, file};
  if (new_anon_vma) v->anon_vma = next_anon_vma_id();
  vmas.push_back(v);
}

int AddressSpace::register_uffd(i64 start, i64 end, i64 ctx) {
  if (start % PAGE || end % PAGE || end <= start || !find_vma(start)) return ERR_EINVAL;
  i64 i, j;
  carve(start, end, i, j);
  for (i64 k = i; k < j; k++) vmas[k]->uffd = ctx;
  for (i64 k = std::min<i64>(j, (i64)vmas.size() - 1) - 1; k > i - 2; k--)
    if (k >= 0) merge_at(k);
  uffd_vmas = 0;
  for (const Vma* v : vmas) uffd_vmas += v->uffd != 0;
  uffd_cache[0] = uffd_cache[1] = uffd_cache[2] = -1;
  uffd_cache[3] = 0;
  collect();
  return OK;
}

}  // namespace ptfast
