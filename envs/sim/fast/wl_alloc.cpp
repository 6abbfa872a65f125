// Port of envs/sim/workloads/allocator.py: the four allocator engines (jemalloc, glibc, v8,
// jvm) and the fill/churn/free/idle phase machine of Allocator.  The Python module is the
// reference and says *why* each allocator behaves as it does; this file keeps its order of
// system calls and random draws exactly (the differential tests in tests/test_fast_alloc.py
// compare every tick record and every address space).  Each function names the Python one
// it ports.
#include <deque>
#include <set>

#include "workloads.hpp"

namespace ptfast {
namespace {

// glibc: M_TRIM_THRESHOLD and M_TOP_PAD (in pages) and HEAP_MAX_SIZE (in slots).
constexpr i64 TRIM_PAGES = 32;
constexpr i64 PAD_PAGES = 32;
constexpr i64 HEAP_SLOTS = 32;

enum Variant { V_JEMALLOC, V_GLIBC, V_V8, V_JVM };
enum Phase { P_FILL, P_CHURN, P_FREE, P_IDLE, P_DONE };

// allocator.AllocatorConfig (after jitter).
struct Config {
  int variant = V_JEMALLOC;
  i64 heap_mib, fill_ticks, churn_ticks, free_ticks, idle_ticks, cycles;
  double churn_fraction, keep_fraction;
  i64 extent_kib, tables_per_tick, calls_per_tick, threads, decay_ticks, arenas, trim_every,
      page_kib, spread_gib;
  bool uncommit_remap = true;
  i64 initial_mib;
  double max_free_ratio;

  i64 cycle_ticks() const { return fill_ticks + churn_ticks + free_ticks + idle_ticks; }
};

// allocator.Budget.
struct Budget {
  i64 tables, calls;
};

// allocator._sample: k distinct random integers in [0, n) (all of them when k >= n).
std::vector<i64> sample(Rng& rng, i64 n, i64 k) {
  std::vector<i64> out;
  if (k <= 0 || n <= 0) return out;
  if (k >= n) {
    out.resize((size_t)n);
    for (i64 i = 0; i < n; i++) out[(size_t)i] = i;
    return out;
  }
  if (4 * k < n) {
    std::vector<i64> draws((size_t)(2 * k + 8));
    rng.integers(0, n, (i64)draws.size(), draws.data());
    out = first_distinct(draws, k);
    if ((i64)out.size() == k) return out;
  }
  out = rng.permutation(n);
  out.resize((size_t)k);
  return out;
}

// ------------------------------------------------------------------ engines

// allocator._Engine.  The workload binds its generator and its process's address space
// before every call (a clone re-targets both, so the engine keeps no pointer of its own).
class Engine {
 public:
  Config c;
  Rng* rng = nullptr;
  AddressSpace* mm = nullptr;
  i64 tick = 0;
  i64 ext;  // pages per unit of frees

  explicit Engine(const Config& cfg) : c(cfg), ext(cfg.extent_kib / 4) {}
  virtual ~Engine() = default;
  virtual std::unique_ptr<Engine> clone() const = 0;
  virtual i64 live() const = 0;
  virtual void start() {}
  virtual void alloc(i64 pages, Budget& b) = 0;
  virtual void free_some(i64 pages, Budget& b) = 0;
  virtual void flush(double keep) = 0;
  virtual void housekeep(Budget&) {}
};

// allocator._SlotEngine: heaps as arrays of 2 MiB slots with live pages [0, live) and
// resident pages [0, res) each.
class SlotEngine : public Engine {
 public:
  std::vector<int32_t> live_a, res_a;
  i64 total_live = 0;

  SlotEngine(const Config& cfg, i64 nslots)
      : Engine(cfg), live_a((size_t)nslots, 0), res_a((size_t)nslots, 0) {}

  i64 live() const override { return total_live; }
  i64 nslots() const { return (i64)live_a.size(); }
  static i64 addr(i64 slot) { return BASE + (slot << PTE_SHIFT); }

  bool write(i64 s, i64 lo, i64 hi, Budget& b) {
    if (b.calls <= 0) return false;
    bool fresh = !mm->pte.count((BASE >> PTE_SHIFT) + s);
    if (fresh && b.tables <= 0) return false;
    mm->touch(addr(s) + lo * PAGE, (hi - lo) * PAGE, true);
    b.calls -= 1;
    b.tables -= (i64)fresh;
    return true;
  }

  // The first slot of [s, hi) with room (live pages < ENTRIES), or hi.  A filled heap is
  // mostly full slots, and fill_holes passed over them one by one: 6 % of the core's
  // instructions per env step (benchmarks/bench_cache.py --by ir).  SSE2 tests 4 at once.
  i64 next_with_room(i64 s, i64 hi) const {
    const int32_t* a = live_a.data();
#ifdef PTFAST_SSE2  // pagetable.hpp
    const __m128i full = _mm_set1_epi32(ENTRIES - 1);
    for (; s + 4 <= hi; s += 4) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + s));
      const int is_full = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(v, full)));
      if (is_full != 0xF) return s + __builtin_ctz(~is_full & 0xF);
    }
#endif
    while (s < hi && a[s] >= ENTRIES) s++;
    return s;
  }

  // The candidates are the slots of [lo, hi) with room, at most 4 * calls_per_tick of them;
  // the loop changes only the slot it is at, so finding them on the way is the same as
  // Python's flatnonzero up front.
  i64 fill_holes(i64 lo, i64 hi, i64 pages, Budget& b, i64 last_cap = ENTRIES) {
    if (pages <= 0 || hi <= lo) return 0;
    i64 placed = 0;
    i64 n_cand = 0;
    const i64 max_cand = 4 * c.calls_per_tick;
    for (i64 s = next_with_room(lo, hi); s < hi && n_cand < max_cand;
         s = next_with_room(s + 1, hi)) {
      n_cand++;
      i64 cap = s == hi - 1 ? last_cap : ENTRIES;
      i64 k = std::min(cap - (i64)live_a[(size_t)s], pages - placed);
      if (k <= 0) continue;
      i64 new_live = (i64)live_a[(size_t)s] + k;
      if (new_live > res_a[(size_t)s]) {
        if (!write(s, res_a[(size_t)s], new_live, b)) break;
        res_a[(size_t)s] = (int32_t)new_live;
      }
      live_a[(size_t)s] = (int32_t)new_live;
      placed += k;
      if (placed >= pages) break;
    }
    total_live += placed;
    return placed;
  }

  i64 extend(i64 first, i64 limit, i64 pages, Budget& b) {
    i64 n = std::min({ceil_div(pages, ENTRIES), b.tables, limit - first});
    if (n <= 0 || b.calls <= 0) return 0;
    i64 placed = std::min(pages, n * ENTRIES);
    mm->touch(addr(first), placed * PAGE, true);
    b.calls -= 1;
    b.tables -= n;
    i64 full = placed / ENTRIES, rest = placed % ENTRIES;
    for (i64 s = first; s < first + full; s++) {
      live_a[(size_t)s] = ENTRIES;
      res_a[(size_t)s] = ENTRIES;
    }
    if (rest) {
      live_a[(size_t)(first + full)] = (int32_t)rest;
      res_a[(size_t)(first + full)] = (int32_t)rest;
    }
    total_live += placed;
    return placed;
  }

  std::vector<i64> free_scattered(i64 lo, i64 hi, i64 pages, Budget& b) {
    i64 m = std::max<i64>(1, floor_div(b.calls, 4));
    const int32_t* live = live_a.data() + lo;
    std::vector<i64> slots = pick(*rng, hi - lo, [live](i64 i) { return live[i] > 0; }, m);
    std::vector<i64> hit;
    if (slots.empty()) return hit;
    i64 per = ceil_div(pages, (i64)slots.size());
    per = ceil_div(per, ext) * ext;
    for (i64 s : slots) {
      s += lo;
      i64 k = std::min({(i64)live_a[(size_t)s], per, pages});
      if (k <= 0) break;
      live_a[(size_t)s] -= (int32_t)k;
      pages -= k;
      total_live -= k;
      hit.push_back(s);
    }
    return hit;
  }

  // One binomial draw per slot of [lo, hi), in order (Generator.binomial on the array of
  // units; a slot with no units draws nothing there either).
  std::vector<i64> flush_range(i64 lo, i64 hi, double keep) {
    std::vector<i64> lost;
    i64 before = 0, after = 0;
    for (i64 s = lo; s < hi; s++) {
      i64 live = live_a[(size_t)s];
      i64 units = ceil_div(live, ext);
      i64 kept = rng->binomial(units, keep);
      i64 nw = std::min(live, kept * ext);
      before += live;
      after += nw;
      if (nw < live) lost.push_back(s);
      live_a[(size_t)s] = (int32_t)nw;
    }
    total_live -= before - after;
    return lost;
  }
};

// allocator._Jemalloc.
class Jemalloc : public SlotEngine {
 public:
  i64 frontier = 0;
  std::deque<std::pair<i64, i64>> queue;  // (slot, tick it became dirty)
  std::vector<uint8_t> queued;
  i64 purge_calls = 0;

  static i64 slots_for(const Config& cfg) {
    return 2 * ceil_div(cfg.heap_mib * MiB, PTE_SPAN) + 32;
  }
  explicit Jemalloc(const Config& cfg)
      : SlotEngine(cfg, slots_for(cfg)), queued((size_t)slots_for(cfg), 0) {}
  std::unique_ptr<Engine> clone() const override { return std::make_unique<Jemalloc>(*this); }

  void start() override { mmap_anon(*mm, BASE, nslots() * PTE_SPAN); }

  void alloc(i64 pages, Budget& b) override {
    i64 placed = fill_holes(0, frontier, pages, b);
    i64 placed2 = extend(frontier, nslots(), pages - placed, b);
    frontier += ceil_div(placed2, ENTRIES);
  }

  void dirty(const std::vector<i64>& slots) {
    for (i64 s : slots) {
      if (!queued[(size_t)s] && res_a[(size_t)s] > live_a[(size_t)s]) {
        queued[(size_t)s] = 1;
        queue.emplace_back(s, tick);
      }
    }
  }

  void free_some(i64 pages, Budget& b) override {
    dirty(free_scattered(0, frontier, pages, b));
  }
  void flush(double keep) override { dirty(flush_range(0, frontier, keep)); }

  void housekeep(Budget& b) override {
    while (!queue.empty() && b.calls > 0 && tick - queue.front().second >= c.decay_ticks) {
      i64 s = queue.front().first;
      queue.pop_front();
      queued[(size_t)s] = 0;
      i64 lo = live_a[(size_t)s], hi = res_a[(size_t)s];
      if (hi <= lo) continue;
      i64 a = addr(s);
      if (lo == 0 && hi == ENTRIES) {
        const i64 half = ENTRIES / 2;
        mm->madvise(a, half * PAGE, A_DONTNEED);
        mm->madvise(a + half * PAGE, half * PAGE, A_DONTNEED);
        b.calls -= 2;
        purge_calls += 2;
      } else {
        mm->madvise(a + lo * PAGE, (hi - lo) * PAGE, A_DONTNEED);
        b.calls -= 1;
        purge_calls += 1;
      }
      res_a[(size_t)s] = (int32_t)lo;
    }
  }
};

// allocator._GHeap.
struct GHeap {
  i64 idx, arena, lo, max_slots;
  bool brk;
  i64 top = 0, size = 0, rw = 0;
  bool alive = true;
};

// allocator._Glibc.
class Glibc : public SlotEngine {
 public:
  i64 main_slots, max_heaps;
  std::vector<GHeap> heaps;
  std::vector<std::vector<i64>> arena_heaps;
  std::deque<i64> free_places;
  i64 next_arena = 0;
  bool trimming = false;  // trim_cursor is not None
  std::deque<i64> trim_cursor;
  i64 trims = 0, trim_calls = 0;
  std::vector<i64> at_place;  // thread-heap place -> heap index (-1: none)
  std::set<i64> dirty;

  static i64 main_for(const Config& cfg) {
    i64 heap_slots = ceil_div(cfg.heap_mib * MiB, PTE_SPAN);
    return ceil_div(2 * heap_slots, HEAP_SLOTS) * HEAP_SLOTS + HEAP_SLOTS;
  }
  static i64 heaps_for(const Config& cfg) {
    i64 heap_slots = ceil_div(cfg.heap_mib * MiB, PTE_SPAN);
    return 2 * (heap_slots / HEAP_SLOTS + 1) + 2 * cfg.arenas;
  }
  explicit Glibc(const Config& cfg)
      : SlotEngine(cfg, main_for(cfg) + heaps_for(cfg) * HEAP_SLOTS),
        main_slots(main_for(cfg)),
        max_heaps(heaps_for(cfg)),
        arena_heaps((size_t)cfg.arenas),
        at_place((size_t)heaps_for(cfg), -1) {
    for (i64 k = 0; k < max_heaps; k++) free_places.push_back(k);
  }
  std::unique_ptr<Engine> clone() const override { return std::make_unique<Glibc>(*this); }

  void start() override {
    heaps.push_back(GHeap{0, 0, 0, main_slots, true});
    arena_heaps[0].push_back(0);
    for (i64 a = 1; a < c.arenas; a++) new_heap(a);
  }

  // _new_heap: false when no place is left (Python returns None).
  bool new_heap(i64 arena) {
    if (free_places.empty()) return false;
    i64 k = free_places.front();
    free_places.pop_front();
    GHeap h{(i64)heaps.size(), arena, main_slots + k * HEAP_SLOTS, HEAP_SLOTS, false};
    mmap_anon(*mm, addr(h.lo), HEAP_SLOTS * PTE_SPAN, 0, true);
    at_place[(size_t)k] = h.idx;
    heaps.push_back(h);
    arena_heaps[(size_t)arena].push_back(h.idx);
    return true;
  }

  void alloc(i64 pages, Budget& b) override {
    const i64 arenas = c.arenas;
    i64 share = ceil_div(pages, arenas);
    for (i64 k = 0; k < arenas; k++) {
      i64 a = next_arena;
      next_arena = (a + 1) % arenas;
      alloc_arena(a, std::min(share, pages), b);
      pages -= share;
      if (pages <= 0 || b.calls <= 0) break;
    }
  }

  void alloc_arena(i64 arena, i64 pages, Budget& b) {
    // fill_holes never changes the chain, so indexing it while looping is safe.
    const std::vector<i64>& chain = arena_heaps[(size_t)arena];
    for (size_t j = 0; j < chain.size(); j++) {
      const GHeap& h = heaps[(size_t)chain[j]];
      i64 rem = h.top % ENTRIES;
      pages -= fill_holes(h.lo, h.lo + ceil_div(h.top, ENTRIES), pages, b,
                          rem ? rem : ENTRIES);
      if (pages <= 0) return;
    }
    while (pages > 0 && b.calls > 1) {
      i64 hi = arena_heaps[(size_t)arena].back();
      if (heaps[(size_t)hi].top >= heaps[(size_t)hi].max_slots * ENTRIES) {
        if (!new_heap(arena)) return;
        b.calls -= 1;
        continue;
      }
      i64 placed = grow_top(heaps[(size_t)hi], pages, b);
      if (placed == 0) return;
      pages -= placed;
    }
  }

  i64 grow_top(GHeap& h, i64 pages, Budget& b) {
    i64 first_new = ceil_div(h.top, ENTRIES);
    i64 limit = std::min((first_new + std::max<i64>(b.tables, 0)) * ENTRIES,
                         h.max_slots * ENTRIES);
    i64 new_top = std::min(h.top + pages, limit);
    if (new_top <= h.top) return 0;
    i64 a = addr(h.lo);
    if (new_top > h.size) {
      i64 size = std::min(new_top + PAD_PAGES, h.max_slots * ENTRIES);
      if (h.brk) {
        mmap_anon(*mm, a + h.size * PAGE, (size - h.size) * PAGE);  // brk grows
        b.calls -= 1;
      } else if (size > h.rw) {
        mm->mprotect(a + h.rw * PAGE, (size - h.rw) * PAGE, RW);
        h.rw = size;
        b.calls -= 1;
      }
      h.size = size;
    }
    i64 s0 = h.top / ENTRIES, s1 = ceil_div(new_top, ENTRIES);
    i64 first = (BASE >> PTE_SHIFT) + h.lo;
    i64 missing = 0;
    for (i64 s = s0; s < s1; s++) missing += !mm->pte.count(first + s);
    b.tables -= missing;
    mm->touch(a + h.top * PAGE, (new_top - h.top) * PAGE, true);
    b.calls -= 1;
    for (i64 s = s0; s < s1; s++) {
      i64 lo = std::max(h.top, s * ENTRIES) - s * ENTRIES;
      i64 hi = std::min(new_top, (s + 1) * ENTRIES) - s * ENTRIES;
      size_t g = (size_t)(h.lo + s);
      live_a[g] += (int32_t)(hi - lo);
      res_a[g] = (int32_t)std::max<i64>(res_a[g], hi);
    }
    i64 placed = new_top - h.top;
    total_live += placed;
    h.top = new_top;
    return placed;
  }

  i64 heap_of(i64 slot) const {
    if (slot < main_slots) return 0;
    return at_place[(size_t)((slot - main_slots) / HEAP_SLOTS)];
  }

  void free_some(i64 pages, Budget& b) override {
    for (i64 s : free_scattered(0, nslots(), pages, b)) dirty.insert(heap_of(s));
  }

  void flush(double keep) override {
    flush_range(0, nslots(), keep);
    for (const GHeap& h : heaps)
      if (h.alive) dirty.insert(h.idx);
  }

  void housekeep(Budget& b) override {
    // Python walks sorted(self.dirty); trim_top never adds to the set.
    for (auto it = dirty.begin(); it != dirty.end();) {
      if (b.calls <= 0) break;
      i64 i = *it;
      it = dirty.erase(it);
      if (heaps[(size_t)i].alive) trim_top(heaps[(size_t)i], b);
    }
    const i64 every = c.trim_every;
    if (every && tick % every == every - 1 && !trimming) {
      trim_cursor.clear();
      for (const GHeap& h : heaps)
        if (h.alive) trim_cursor.push_back(h.idx);
      trimming = true;
      trims += 1;
    }
    if (trimming) malloc_trim(b);
  }

  void trim_top(GHeap& h, Budget& b) {
    i64 top_slots = ceil_div(h.top, ENTRIES);
    i64 last = -1;
    for (i64 s = top_slots - 1; s >= 0; s--)
      if (live_a[(size_t)(h.lo + s)] != 0) {
        last = s;
        break;
      }
    h.top = last >= 0 ? last * ENTRIES + live_a[(size_t)(h.lo + last)] : 0;
    std::vector<i64>& chain = arena_heaps[(size_t)h.arena];
    i64 a = addr(h.lo);
    if (h.top == 0 && !h.brk && chain.size() > 1 && chain.back() == h.idx) {
      mm->munmap(a, h.max_slots * PTE_SPAN);  // heap_trim: delete_heap
      b.calls -= 1;
      i64 sum = 0;
      for (i64 s = h.lo; s < h.lo + h.max_slots; s++) {
        sum += live_a[(size_t)s];
        live_a[(size_t)s] = 0;
        res_a[(size_t)s] = 0;
      }
      total_live -= sum;
      h.alive = false;
      chain.pop_back();
      i64 place = (h.lo - main_slots) / HEAP_SLOTS;
      at_place[(size_t)place] = -1;
      free_places.push_back(place);
      return;
    }
    if (h.size - h.top < TRIM_PAGES + PAD_PAGES) return;
    i64 keep = h.top + PAD_PAGES;
    if (h.brk)
      mm->munmap(a + keep * PAGE, (h.size - keep) * PAGE);  // sbrk(-n)
    else
      mm->madvise(a + keep * PAGE, (h.size - keep) * PAGE, A_DONTNEED);
    b.calls -= 1;
    clip(h, keep);
    h.size = keep;
  }

  void clip(const GHeap& h, i64 keep) {
    i64 g = h.lo + keep / ENTRIES;
    if (keep % ENTRIES) {
      res_a[(size_t)g] = (int32_t)std::min<i64>(res_a[(size_t)g], keep % ENTRIES);
      g += 1;
    }
    for (i64 s = g; s < h.lo + h.max_slots; s++) res_a[(size_t)s] = 0;
  }

  // A free chunk runs from a slot's live end over the following slots that hold nothing
  // live, up to the next live page (or the top); chunk starts are found on the way (the
  // loop changes only resident counts, never live ones).
  void malloc_trim(Budget& b) {
    while (!trim_cursor.empty()) {
      GHeap& h = heaps[(size_t)trim_cursor.front()];
      if (!h.alive) {
        trim_cursor.pop_front();
        continue;
      }
      const i64 lo = h.lo, hi = h.lo + ceil_div(h.top, ENTRIES);
      i64 s = lo;
      while (true) {
        i64 t = s + 1;
        while (t < hi && live_a[(size_t)t] <= 0) t++;
        if (t > hi) t = hi;  // s == lo == hi: an empty heap
        i64 first = (i64)live_a[(size_t)s] + 1;  // the chunk header's page stays
        i64 end = t < hi ? (t - s) * ENTRIES : h.top - (s - lo) * ENTRIES;
        bool skip = first >= end;
        if (!skip && res_a[(size_t)s] <= first) {
          skip = true;
          for (i64 u = s + 1; u < t; u++)
            if (res_a[(size_t)u] != 0) {
              skip = false;
              break;
            }
        }
        if (!skip) {
          if (b.calls <= 0) return;
          mm->madvise(addr(s) + first * PAGE, (end - first) * PAGE, A_DONTNEED);
          b.calls -= 1;
          trim_calls += 1;
          res_a[(size_t)s] = (int32_t)std::min<i64>(res_a[(size_t)s], first);
          for (i64 u = s + 1; u < t; u++) res_a[(size_t)u] = 0;
        }
        if (t >= hi) break;
        s = t;
      }
      trim_cursor.pop_front();
    }
    trimming = false;
  }
};

// allocator._V8.
class V8 : public Engine {
 public:
  i64 page, pp, n_places;
  std::vector<i64> pages;  // addresses of mapped heap pages
  std::vector<i64> dead;   // freed by the GC, not yet unmapped
  i64 n_live = 0;

  explicit V8(const Config& cfg)
      : Engine(cfg),
        page(cfg.page_kib * KiB),
        pp(cfg.page_kib * KiB / PAGE),
        n_places(cfg.spread_gib * GiB / (cfg.page_kib * KiB)) {}
  std::unique_ptr<Engine> clone() const override { return std::make_unique<V8>(*this); }

  i64 live() const override { return n_live * pp; }

  void alloc(i64 npages, Budget& b) override {
    i64 n = ceil_div(npages, pp);
    i64 reuse = std::min<i64>(n, (i64)dead.size());
    for (i64 k = 0; k < reuse; k++) {
      pages.push_back(dead.back());
      dead.pop_back();
    }
    n_live += reuse;
    n -= reuse;
    while (n > 0 && b.calls >= 2 && b.tables >= 2) {
      i64 a = 0;
      bool found = false;
      for (int k = 0; k < 16; k++) {
        a = BASE + rng->integers(0, n_places) * page;
        if (!mm->any_vma_overlapping(a, a + page)) {
          found = true;
          break;
        }
      }
      if (!found) return;  // the range is crowded: try again next tick
      i64 before = mm->tables();
      mmap_anon(*mm, a, page, RW, true);
      mm->touch(a, page, true);
      b.calls -= 2;
      b.tables -= mm->tables() - before;
      pages.push_back(a);
      n_live += 1;
      n -= 1;
    }
  }

  void kill(i64 k) {
    std::vector<i64> idx = sample(*rng, (i64)pages.size(), k);
    std::sort(idx.begin(), idx.end(), [](i64 x, i64 y) { return x > y; });
    for (i64 i : idx) {
      dead.push_back(pages[(size_t)i]);
      pages[(size_t)i] = pages.back();
      pages.pop_back();
      n_live -= 1;
    }
  }

  void free_some(i64 npages, Budget&) override { kill(ceil_div(npages, pp)); }
  void flush(double keep) override {
    kill((i64)pages.size() - rng->binomial((i64)pages.size(), keep));
  }

  void housekeep(Budget& b) override {
    while (!dead.empty() && b.calls > 0) {
      i64 a = dead.back();
      dead.pop_back();
      mm->munmap(a, page);
      b.calls -= 1;
    }
  }
};

// allocator._Jvm.
class Jvm : public Engine {
 public:
  i64 region, rp, n, initial;
  std::vector<uint8_t> committed, used;
  i64 uncommits = 0;
  // committed.sum() and used.sum(), kept up to date at every change (Python recounts).
  i64 n_committed = 0, n_used = 0;

  static i64 region_for(const Config& cfg) {
    i64 q = cfg.heap_mib * MiB / 2048;
    i64 bits = q > 0 ? 64 - __builtin_clzll((unsigned long long)q) : 0;  // int.bit_length
    return i64{1} << std::max<i64>(20, std::min<i64>(25, bits - 1));
  }
  explicit Jvm(const Config& cfg) : Engine(cfg), region(region_for(cfg)) {
    rp = region / PAGE;
    n = cfg.heap_mib * MiB / region;
    committed.assign((size_t)n, 0);
    used.assign((size_t)n, 0);
    initial = std::min(n, ceil_div(cfg.initial_mib * MiB, region));
  }
  std::unique_ptr<Engine> clone() const override { return std::make_unique<Jvm>(*this); }

  i64 live() const override { return n_used * rp; }
  i64 addr(i64 r) const { return BASE + r * region; }
  // numpy clips slice bounds to the array.
  i64 clamp(i64 r) const { return std::min(std::max<i64>(r, 0), n); }

  void start() override {
    mmap_anon(*mm, BASE, n * region, 0, true);
    if (initial) commit(0, initial);
  }

  void commit(i64 r0, i64 r1) {
    mmap_anon(*mm, addr(r0), (r1 - r0) * region, RW, false, true);
    for (i64 r = r0; r < clamp(r1); r++) {
      n_committed += !committed[(size_t)r];
      committed[(size_t)r] = 1;
    }
  }

  i64 tables_of(i64 r0, i64 r1) const {
    i64 first = addr(r0) >> PTE_SHIFT;
    i64 last = (addr(r1) - 1) >> PTE_SHIFT;
    i64 k = 0;
    for (i64 s = first; s <= last; s++) k += !mm->pte.count(s);
    return k;
  }

  void alloc(i64 pages, Budget& b) override {
    i64 k = ceil_div(pages, rp);
    std::vector<i64> free;
    for (i64 r = 0; r < n && (i64)free.size() < k; r++)
      if (!used[(size_t)r]) free.push_back(r);
    if (free.empty()) return;
    for (auto [r0, r1] : index_runs(free)) {
      if (b.calls < 3) return;
      i64 need = tables_of(r0, r1);
      if (need > b.tables) {
        r1 = r0 + std::max<i64>(0, floor_div(b.tables * PTE_SPAN, region));
        if (r1 <= r0) return;
        need = tables_of(r0, r1);
      }
      std::vector<i64> unc;
      for (i64 r = r0; r < clamp(r1); r++)
        if (!committed[(size_t)r]) unc.push_back(r);
      for (auto [u0, u1] : index_runs(unc)) {
        commit(u0, u1);
        b.calls -= 1;
      }
      mm->touch(addr(r0), (r1 - r0) * region, true);
      b.calls -= 1;
      b.tables -= need;
      for (i64 r = r0; r < clamp(r1); r++) {
        n_used += !used[(size_t)r];
        used[(size_t)r] = 1;
      }
    }
  }

  void free_some(i64 pages, Budget&) override {
    i64 k = ceil_div(pages, rp);
    const uint8_t* u = used.data();
    for (i64 r : pick(*rng, n, [u](i64 i) { return u[i] != 0; }, k)) {
      n_used -= used[(size_t)r];
      used[(size_t)r] = 0;
    }
  }

  void flush(double keep) override {
    i64 survivors = ceil_div(rng->binomial(n_used * rp, keep), rp);
    std::fill(used.begin(), used.end(), uint8_t{0});
    i64 marked = 0;
    for (i64 r = 0; r < n && marked < survivors; r++)
      if (committed[(size_t)r]) {
        used[(size_t)r] = 1;
        marked++;
      }
    n_used = marked;
  }

  void housekeep(Budget& b) override {
    i64 target = std::max<i64>(
        initial, (i64)std::ceil((double)n_used / (1.0 - c.max_free_ratio)));
    i64 excess = n_committed - target;
    if (excess <= 0) return;
    // flatnonzero(committed & ~used)[::-1][:excess], then sorted: the top `excess` ones.
    std::vector<i64> cand;
    for (i64 r = n - 1; r >= 0 && (i64)cand.size() < excess; r--)
      if (committed[(size_t)r] && !used[(size_t)r]) cand.push_back(r);
    std::reverse(cand.begin(), cand.end());
    std::vector<std::pair<i64, i64>> runs = index_runs(cand);
    for (auto it = runs.rbegin(); it != runs.rend(); ++it) {
      auto [r0, r1] = *it;
      i64 cost = c.uncommit_remap ? 1 : 2;
      if (b.calls < cost) return;
      i64 a = addr(r0), len = (r1 - r0) * region;
      if (c.uncommit_remap) {
        mmap_anon(*mm, a, len, 0, true, true);
      } else {
        mm->madvise(a, len, A_DONTNEED);
        mm->mprotect(a, len, 0);
      }
      b.calls -= cost;
      for (i64 r = r0; r < r1; r++) {
        n_committed -= committed[(size_t)r];
        committed[(size_t)r] = 0;
      }
      uncommits += 1;
    }
  }
};

// ------------------------------------------------------------------ workload

// allocator.Allocator.
class Allocator : public Workload {
 public:
  Config c;
  std::unique_ptr<Engine> engine;
  i64 heap_pages = 0;
  bool has_t0 = false;
  i64 t0 = 0;
  int phase = P_FILL;
  i64 cycle = 0, flushed = -1;

  explicit Allocator(const Params& p) {
    const std::string& v = p.gets("variant");
    c.variant = v == "jemalloc" ? V_JEMALLOC : v == "glibc" ? V_GLIBC : v == "v8" ? V_V8 : V_JVM;
    c.heap_mib = p.geti("heap_mib");
    c.fill_ticks = p.geti("fill_ticks");
    c.churn_ticks = p.geti("churn_ticks");
    c.free_ticks = p.geti("free_ticks");
    c.idle_ticks = p.geti("idle_ticks");
    c.cycles = p.geti("cycles");
    c.churn_fraction = p.get("churn_fraction");
    c.keep_fraction = p.get("keep_fraction");
    c.extent_kib = p.geti("extent_kib");
    c.tables_per_tick = p.geti("tables_per_tick");
    c.calls_per_tick = p.geti("calls_per_tick");
    c.threads = p.geti("threads");
    c.decay_ticks = p.geti("decay_ticks");
    c.arenas = p.geti("arenas");
    c.trim_every = p.geti("trim_every");
    c.page_kib = p.geti("page_kib");
    c.spread_gib = p.geti("spread_gib");
    c.uncommit_remap = p.gets("uncommit") == "remap";
    c.initial_mib = p.geti("initial_mib");
    c.max_free_ratio = p.get("max_free_ratio");
  }
  Allocator(const Allocator& o)
      : Workload(o),
        c(o.c),
        engine(o.engine ? o.engine->clone() : nullptr),
        heap_pages(o.heap_pages),
        has_t0(o.has_t0),
        t0(o.t0),
        phase(o.phase),
        cycle(o.cycle),
        flushed(o.flushed) {}
  std::unique_ptr<Workload> clone() const override {
    return std::make_unique<Allocator>(*this);
  }

  void bind() {
    engine->rng = &rng;
    engine->mm = proc->mm.get();
  }

  void start() override {
    proc = spawn("", c.threads);
    switch (c.variant) {
      case V_JEMALLOC: engine = std::make_unique<Jemalloc>(c); break;
      case V_GLIBC: engine = std::make_unique<Glibc>(c); break;
      case V_V8: engine = std::make_unique<V8>(c); break;
      default: engine = std::make_unique<Jvm>(c); break;
    }
    bind();
    engine->start();
    heap_pages = c.heap_mib * MiB / PAGE;
    has_t0 = false;
    phase = P_FILL;
    cycle = 0;
    flushed = -1;
  }

  // Allocator._phase: (phase, cycle, ticks into the phase) at t ticks after start.
  void phase_at(i64 t, int& ph, i64& cyc, i64& r) const {
    i64 n = c.cycle_ticks();
    cyc = t / n;
    r = t % n;
    if (c.cycles && cyc >= c.cycles) {
      ph = P_DONE;
      r = 0;
      return;
    }
    const i64 lengths[3] = {c.fill_ticks, c.churn_ticks, c.free_ticks};
    for (int k = 0; k < 3; k++) {
      if (r < lengths[k]) {
        ph = k;
        return;
      }
      r -= lengths[k];
    }
    ph = P_IDLE;
  }

  void step(i64 tick) override {
    if (!proc->runnable(tick)) return;
    if (!has_t0) {
      has_t0 = true;
      t0 = tick;
    }
    bind();
    Engine& e = *engine;
    e.tick = tick;
    i64 r = 0;
    phase_at(tick - t0, phase, cycle, r);
    Budget b{c.tables_per_tick, c.calls_per_tick};
    if (phase == P_FILL) {
      i64 target = heap_pages * (r + 1) / c.fill_ticks;
      if (target > e.live()) e.alloc(target - e.live(), b);
    } else if (phase == P_CHURN) {
      i64 n = rng.poisson(c.churn_fraction * (double)e.live());
      e.free_some(n, b);
      if (heap_pages > e.live()) e.alloc(heap_pages - e.live(), b);
    } else if (phase == P_FREE && flushed < cycle) {
      e.flush(c.keep_fraction);
      flushed = cycle;
    }
    e.housekeep(b);
  }
};

RegisterWorkload reg_allocator("allocator",
                               [](const Params& p) { return std::make_unique<Allocator>(p); });

}  // namespace
}  // namespace ptfast
