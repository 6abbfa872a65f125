// The PTE tables of one address space, stored the way the hardware finds them.
//
// A slot (address >> 21) splits into a PMD index (slot >> 9) and an entry within that PMD
// table (slot & 511), exactly as a page walk does.  Each PMD index with tables has a node
// holding 512 table pointers and a 512-bit presence map; tables themselves live in a pool of
// fixed blocks of 64 (references stay valid as it grows) with a free list.  Lookups cost a
// node lookup (cached for the last PMD touched) and an array index; walking a range visits
// only the PMD nodes in it and the set bits of their maps, in ascending slot order -- what
// the Python model's sorted-dict walks give, with memory locality.
//
// Why blocks: a PteTable was ~530 bytes, so the deque this pool was before held one table
// per node and every new table was a malloc (and every address space's end a free per
// table); the profile of the batched env put ~7 % of its time in that.  Blocks make a new
// table a pointer bump, and tables made one after the other (a fault over a range) sit
// next to each other in memory, which the reclaim scan's walk in slot order reads.  A
// PTE table's entries live in a second block beside its header's (PoolBytes), so the
// scan, which reads headers only, finds two of them per cache line.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

namespace ptfast {

// A temporary vector for one call, borrowed from a member buffer instead of allocated: the
// buffer is moved out (and cleared) on entry and moved back on exit, so a nested borrow of
// the same buffer gets an empty vector of its own and nothing is shared.  The range walks
// (zap, the reclaim pass, the list of live processes) built such a list per call or per
// tick; the batched env made ~160 mallocs per env step, most of them these.  A buffer
// grown past `keep` elements is freed rather than kept, so one huge walk does not pin it.
template <class T>
class Borrowed {
 public:
  explicit Borrowed(std::vector<T>& home, size_t keep = 4096)
      : home_(home), keep_(keep), v(std::move(home)) {
    v.clear();
  }
  ~Borrowed() {
    if (v.capacity() <= keep_) home_ = std::move(v);
  }
  Borrowed(const Borrowed&) = delete;
  Borrowed& operator=(const Borrowed&) = delete;

 private:
  std::vector<T>& home_;
  size_t keep_;

 public:
  std::vector<T> v;
};

// std::stable_sort without its temporary buffer (a malloc per call) for the few elements
// the hot callers sort (the live processes, each tick): insertion sort is stable, and a
// stable sort's result is the same permutation for any strict weak order.
template <class T, class Less>
void stable_sort_small(std::vector<T>& v, Less less) {
  if (v.size() > 32) {
    std::stable_sort(v.begin(), v.end(), less);
    return;
  }
  for (size_t i = 1; i < v.size(); i++) {
    T x = v[i];
    size_t j = i;
    for (; j > 0 && less(x, v[j - 1]); j--) v[j] = v[j - 1];
    v[j] = x;
  }
}

// Bytes the pool keeps beside each element, outside it: Table::POOL_BYTES if the type
// declares it (a PTE table's entries, pagetable.hpp), else none.  Such an element is made
// as Table(pointer to its bytes), and its bytes stay with it while it is reused.
template <class T, class = void>
struct PoolBytes : std::integral_constant<size_t, 0> {};
template <class T>
struct PoolBytes<T, std::void_t<decltype(T::POOL_BYTES)>>
    : std::integral_constant<size_t, T::POOL_BYTES> {};

// Return a recycled pool element to its default state (PteTable resets in place).
template <class T>
inline void reset_value(T& v) {
  v = T();
}

template <class Table>
class SlotMap {
 public:
  using i64 = int64_t;

  SlotMap() = default;
  SlotMap(const SlotMap& o) { *this = o; }
  SlotMap& operator=(const SlotMap& o) {
    if (this == &o) return *this;
    clear();
    o.for_each([&](i64 slot, const Table& t) { emplace(slot).first = t; });
    return *this;
  }

  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  size_t count(i64 slot) const { return find(slot) != nullptr; }

  Table* find(i64 slot) const {
    Node* node = node_of(slot >> 9);
    return node && node->has((int)(slot & 511)) ? node->ptr[slot & 511] : nullptr;
  }

  Table& at(i64 slot) const { return *find(slot); }

  // The table at `slot`, created (default-constructed) if absent; second: created.
  std::pair<Table&, bool> emplace(i64 slot) {
    i64 pi = slot >> 9;
    Node* node = node_of(pi);
    if (!node) {
      std::unique_ptr<Node> owned = take_node();
      node = owned.get();
      nodes_.emplace(pi, std::move(owned));
      cache_key_ = pi;
      cache_ = node;
    }
    int e = (int)(slot & 511);
    if (node->has(e)) return {*node->ptr[e], false};
    Table* t;
    if (!free_.empty()) {
      t = free_.back();
      free_.pop_back();
      reset_value(*t);
    } else {
      if (fresh_ == BLOCK) new_block();
      // Constructed (value-initialised) when handed out, not the whole block at once: the
      // fault that asked for it writes the same lines next, while they are in the cache.
      if constexpr (EXTRA > 0)
        t = new (&blocks_.back()[fresh_]) Table(stores_.back()->bytes + fresh_ * EXTRA);
      else
        t = new (&blocks_.back()[fresh_]) Table();
      fresh_++;
    }
    node->ptr[e] = t;
    node->bits[e >> 6] |= uint64_t{1} << (e & 63);
    node->count++;
    n_++;
    return {*t, true};
  }

  void erase(i64 slot) {
    i64 pi = slot >> 9;
    Node* node = node_of(pi);
    if (!node) return;
    int e = (int)(slot & 511);
    if (!node->has(e)) return;
    free_.push_back(node->ptr[e]);
    node->bits[e >> 6] &= ~(uint64_t{1} << (e & 63));
    n_--;
    if (--node->count == 0) {
      auto it = nodes_.find(pi);
      give_node(std::move(it->second));
      nodes_.erase(it);
      cache_key_ = INT64_MIN;
      cache_ = nullptr;
    }
  }

  // Its nodes and pool blocks go to this thread's spares (up to their bounds), for the
  // maps of the next episode.
  ~SlotMap() { clear(); }

  void clear() {
    for (auto& kv : nodes_) {  // each node back to empty, for the pool
      // A full pool takes no more: the rest are freed with nodes_, not emptied first.
      if (spare_nodes().size() >= SPARE_NODES) break;
      Node& node = *kv.second;
      for (int w = 0; w < 8; w++) node.bits[w] = 0;
      node.count = 0;
      give_node(std::move(kv.second));
    }
    nodes_.clear();
    auto& spare = spare_blocks();
    // A block and its store are pushed one after the other (new_block): if the second
    // push failed, the last block has no store, and it is freed, not kept.
    const size_t whole = EXTRA > 0 ? std::min(blocks_.size(), stores_.size()) : blocks_.size();
    for (size_t b = 0; b < whole && spare.size() < SPARE_BLOCKS; b++) {
      spare.emplace_back();
      spare.back().raw = std::move(blocks_[b]);
      if constexpr (EXTRA > 0) spare.back().store = std::move(stores_[b]);
    }
    blocks_.clear();
    stores_.clear();
    free_.clear();
    fresh_ = BLOCK;
    n_ = 0;
    cache_key_ = INT64_MIN;
    cache_ = nullptr;
  }

  // Ascending slots in [lo, hi].
  void slots_in(i64 lo, i64 hi, std::vector<i64>& out) const {
    if (hi < lo) return;
    const i64 plo = lo >> 9, phi = hi >> 9;
    for (auto it = nodes_.lower_bound(plo); it != nodes_.end() && it->first <= phi; ++it) {
      const i64 base = it->first << 9;
      const Node& node = *it->second;
      const int e_lo = it->first == plo ? (int)(lo & 511) : 0;
      const int e_hi = it->first == phi ? (int)(hi & 511) : 511;
      for (int w = e_lo >> 6; w <= (e_hi >> 6); w++) {
        uint64_t bits = node.bits[w];
        if (w == (e_lo >> 6)) bits &= ~uint64_t{0} << (e_lo & 63);
        if (w == (e_hi >> 6) && (e_hi & 63) != 63) bits &= (uint64_t{1} << ((e_hi & 63) + 1)) - 1;
        while (bits) {
          int b = __builtin_ctzll(bits);
          bits &= bits - 1;
          out.push_back(base + (w << 6) + b);
        }
      }
    }
  }

  // f(slot, table) for the first `limit` tables at slots >= lo, ascending; returns how
  // many.  The walk reads each node's pointers as it visits the node, so a caller that
  // keeps the tables needs no lookup per slot afterwards (a table stays where it is until
  // it is erased and a later emplace reuses it).
  template <class F>
  size_t walk_from(i64 lo, size_t limit, F f) const {
    size_t got = 0;
    const i64 plo = lo >> 9;
    for (auto it = nodes_.lower_bound(plo); it != nodes_.end() && got < limit; ++it) {
      const i64 base = it->first << 9;
      const Node& node = *it->second;
      const int e_lo = it->first == plo ? (int)(lo & 511) : 0;
      for (int w = e_lo >> 6; w < 8 && got < limit; w++) {
        uint64_t bits = node.bits[w];
        if (w == (e_lo >> 6)) bits &= ~uint64_t{0} << (e_lo & 63);
        for (; bits && got < limit; bits &= bits - 1, got++) {
          const int e = (w << 6) + __builtin_ctzll(bits);
          f(base + e, node.ptr[e]);
        }
      }
    }
    return got;
  }

  // f(slot, table) for every table, ascending.
  template <class F>
  void for_each(F f) const {
    for (const auto& kv : nodes_) {
      i64 base = kv.first << 9;
      const Node& node = *kv.second;
      for (int w = 0; w < 8; w++) {
        uint64_t bits = node.bits[w];
        while (bits) {
          int b = __builtin_ctzll(bits);
          bits &= bits - 1;
          int e = (w << 6) + b;
          f(base + e, static_cast<const Table&>(*node.ptr[e]));
        }
      }
    }
  }

  // Frees this thread's spare empty nodes and pool blocks (a helper thread of step_batch,
  // before it ends: its spares would otherwise be lost with it, pool.hpp).
  static void release_spares() {
    auto& pool = spare_nodes();
    pool.clear();
    pool.shrink_to_fit();
    auto& blocks = spare_blocks();
    blocks.clear();
    blocks.shrink_to_fit();
  }

 private:
  // A node's pointers are valid only where its presence bit is set: a new node writes its
  // bits and count, not 512 null pointers (4 KiB, 64 cache lines, most of them never used
  // by a sparse PMD range; cachegrind put them among the core's most-missed writes).
  struct Node {
    Table* ptr[512];  // not initialised: read only under a set bit
    uint64_t bits[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int count = 0;
    bool has(int e) const { return (bits[e >> 6] >> (e & 63)) & 1; }
  };
  static constexpr int BLOCK = 64;  // tables per pool block

  // Empty nodes, kept for reuse by every map of this type on this thread.  A new node is
  // a malloc of 4 KiB (its pointers are not written: see Node); the batched env made
  // several per env step: address spaces that empty a GiB of address space and fault it
  // again (a sweeping hog, a reclaim pass over a sparse mapping), processes that start and
  // exit (docs/performance.md).  An empty node has no bit set, so it is reused as it is.
  // The pool is never freed: a map may be destroyed after the thread's destructors have
  // run (at the interpreter's exit).  Since destroyed maps give their nodes too (an env
  // reset destroys a whole simulation), 64 spares were too few: the rest were freed and
  // the next episode allocated them again; 1,024 keep ~4 MiB per map type (4,168-byte
  // nodes).
  static constexpr size_t SPARE_NODES = 1024;
  static std::vector<std::unique_ptr<Node>>& spare_nodes() {
    static thread_local auto* pool = reserved<std::unique_ptr<Node>>(SPARE_NODES);
    return *pool;
  }
  // A pool's vector with room for its bound: giving a spare back (from clear(), and so
  // from the destructor) never allocates.
  template <class T>
  static std::vector<T>* reserved(size_t n) {
    auto* v = new std::vector<T>();
    v->reserve(n);
    return v;
  }
  static std::unique_ptr<Node> take_node() {
    auto& pool = spare_nodes();
    if (pool.empty()) return std::unique_ptr<Node>(new Node);  // default-init: no zeroing
    std::unique_ptr<Node> node = std::move(pool.back());
    pool.pop_back();
    return node;
  }
  static void give_node(std::unique_ptr<Node> node) {
    auto& pool = spare_nodes();
    if (pool.size() < SPARE_NODES) pool.push_back(std::move(node));
  }

  Node* node_of(i64 pi) const {
    if (pi == cache_key_) return cache_;
    auto it = nodes_.find(pi);
    if (it == nodes_.end()) return nullptr;
    cache_key_ = pi;
    cache_ = it->second.get();
    return cache_;
  }

  std::map<i64, std::unique_ptr<Node>> nodes_;
  // Storage for one element; elements are trivially destructible, so a block is freed
  // without destroying them.
  struct alignas(Table) Raw {
    unsigned char bytes[sizeof(Table)];
  };
  static_assert(std::is_trivially_destructible<Table>::value, "pool blocks skip destructors");
  std::vector<std::unique_ptr<Raw[]>> blocks_;
  // Each block's elements' outside bytes (PoolBytes), uninitialised, on cache lines of
  // their own.
  static constexpr size_t EXTRA = PoolBytes<Table>::value;
  struct alignas(64) Store {
    unsigned char bytes[BLOCK * (EXTRA ? EXTRA : 1)];
  };
  std::vector<std::unique_ptr<Store>> stores_;

  // Pool blocks of maps that were cleared or destroyed, kept for reuse by every map of this
  // type on this thread, as the spare nodes are.  Every env reset destroys an episode's
  // simulation and builds the next one, whose first ticks make thousands of tables again:
  // without the spares, each block of 64 was a malloc (an aligned one, of 16 KiB for the
  // PTE tables' entries) and a free, in glibc's slower paths for chunks that size; perf put
  // malloc and free at ~7 % of the bare batched loop's time (docs/performance.md).  A block holds
  // no constructed element: an element is constructed when handed out (emplace), and an
  // entry chunk is read only once written (PteTable's `live`), so a reused block is as good
  // as a new one.  The bounds keep a thread's spares at ~35 MiB at most: 18 MiB of PTE
  // table blocks, 4 of page-bit blocks, 0.5 of slot blocks and 3 x 4 of nodes.  The main
  // thread keeps them for the process's life, a step_batch helper until it stops.
  struct SpareBlock {
    std::unique_ptr<Raw[]> raw;
    std::unique_ptr<Store> store;  // null when EXTRA is 0
  };
  static constexpr size_t SPARE_BLOCKS = 1024;
  static std::vector<SpareBlock>& spare_blocks() {
    static thread_local auto* pool = reserved<SpareBlock>(SPARE_BLOCKS);
    return *pool;
  }
  void new_block() {
    auto& spare = spare_blocks();
    if (!spare.empty()) {
      blocks_.push_back(std::move(spare.back().raw));
      if constexpr (EXTRA > 0) stores_.push_back(std::move(spare.back().store));
      spare.pop_back();
    } else {
      blocks_.emplace_back(new Raw[BLOCK]);  // raw memory: nothing written yet
      if constexpr (EXTRA > 0) stores_.emplace_back(new Store);
    }
    fresh_ = 0;
  }
  std::vector<Table*> free_;  // erased tables, reused first
  int fresh_ = BLOCK;         // tables of the last block never handed out start here
  size_t n_ = 0;
  mutable i64 cache_key_ = INT64_MIN;
  mutable Node* cache_ = nullptr;
};

}  // namespace ptfast

namespace ptfast {

// A sparse set of slots (or of any 64-bit indices) in the two-level layout of SlotMap, without
// the tables: a node per 512 indices holding a 512-bit presence map.  For sets that are
// usually empty or small (a file's huge chunks, an address space's file THP PMDs): empty() is
// one compare, membership a node lookup (cached for the last node) and a bit test, and
// walking a range visits only its nodes' set bits, ascending.
class SlotSet {
 public:
  using i64 = int64_t;

  SlotSet() = default;
  SlotSet(const SlotSet& o) : nodes_(o.nodes_), n_(o.n_) {}
  SlotSet& operator=(const SlotSet& o) {
    nodes_ = o.nodes_;
    n_ = o.n_;
    drop_cache();
    return *this;
  }

  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  bool count(i64 i) const {
    if (n_ == 0) return false;
    const Node* node = node_of(i >> 9);
    return node && ((node->bits[(i & 511) >> 6] >> (i & 63)) & 1);
  }
  // True when i was not in the set.
  bool insert(i64 i) {
    Node* node = node_of(i >> 9);
    if (!node) {
      node = &nodes_[i >> 9];
      cache_key_ = i >> 9;
      cache_ = node;
    }
    uint64_t& w = node->bits[(i & 511) >> 6];
    const uint64_t m = uint64_t{1} << (i & 63);
    if (w & m) return false;
    w |= m;
    node->count++;
    n_++;
    return true;
  }
  // True when i was in the set.
  bool erase(i64 i) {
    if (n_ == 0) return false;
    Node* node = node_of(i >> 9);
    if (!node) return false;
    uint64_t& w = node->bits[(i & 511) >> 6];
    const uint64_t m = uint64_t{1} << (i & 63);
    if (!(w & m)) return false;
    w &= ~m;
    n_--;
    if (--node->count == 0) {
      nodes_.erase(i >> 9);
      drop_cache();
    }
    return true;
  }
  void clear() {
    nodes_.clear();
    n_ = 0;
    drop_cache();
  }
  // Ascending members in [lo, hi], appended to out.
  void slots_in(i64 lo, i64 hi, std::vector<i64>& out) const {
    if (hi < lo || n_ == 0) return;
    const i64 plo = lo >> 9, phi = hi >> 9;
    for (auto it = nodes_.lower_bound(plo); it != nodes_.end() && it->first <= phi; ++it) {
      const i64 base = it->first << 9;
      const int e_lo = it->first == plo ? (int)(lo & 511) : 0;
      const int e_hi = it->first == phi ? (int)(hi & 511) : 511;
      for (int w = e_lo >> 6; w <= (e_hi >> 6); w++) {
        uint64_t bits = it->second.bits[w];
        if (w == (e_lo >> 6)) bits &= ~uint64_t{0} << (e_lo & 63);
        if (w == (e_hi >> 6) && (e_hi & 63) != 63) bits &= (uint64_t{1} << ((e_hi & 63) + 1)) - 1;
        while (bits) {
          out.push_back(base + (w << 6) + __builtin_ctzll(bits));
          bits &= bits - 1;
        }
      }
    }
  }
  std::vector<i64> indices_in(i64 lo, i64 hi) const {
    std::vector<i64> out;
    slots_in(lo, hi, out);
    return out;
  }
  // f(index) for every member, ascending.
  template <class F>
  void for_each(F f) const {
    for (const auto& kv : nodes_)
      for (int w = 0; w < 8; w++)
        for (uint64_t bits = kv.second.bits[w]; bits; bits &= bits - 1)
          f((kv.first << 9) + (w << 6) + __builtin_ctzll(bits));
  }

 private:
  struct Node {
    uint64_t bits[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int count = 0;
  };

  Node* node_of(i64 pi) const {
    if (pi == cache_key_) return cache_;
    auto it = nodes_.find(pi);
    if (it == nodes_.end()) return nullptr;
    cache_key_ = pi;
    cache_ = const_cast<Node*>(&it->second);
    return cache_;
  }
  void drop_cache() {
    cache_key_ = INT64_MIN;
    cache_ = nullptr;
  }

  std::map<i64, Node> nodes_;
  size_t n_ = 0;
  mutable i64 cache_key_ = INT64_MIN;
  mutable Node* cache_ = nullptr;
};

// A set of non-negative indices (PMD and PUD table indices) as a bitmap: membership in
// O(1), ascending walks over a range in word steps.
class IndexSet {
 public:
  using i64 = int64_t;

  size_t size() const { return n_; }
  size_t count(i64 i) const {
    size_t w = (size_t)(i >> 6);
    return w < bits_.size() && ((bits_[w] >> (i & 63)) & 1);
  }
  // True when i was not in the set.  Small enough to inline, with the growth out of line.
  bool insert(i64 i) {
    size_t w = (size_t)(i >> 6);
    if (w >= bits_.size()) grow(w);
    uint64_t m = uint64_t{1} << (i & 63);
    if (bits_[w] & m) return false;
    bits_[w] |= m;
    n_++;
    return true;
  }
  void erase(i64 i) {
    size_t w = (size_t)(i >> 6);
    if (w >= bits_.size()) return;
    uint64_t m = uint64_t{1} << (i & 63);
    if (bits_[w] & m) {
      bits_[w] &= ~m;
      n_--;
    }
  }
  void clear() {
    bits_.clear();
    n_ = 0;
  }
  // Ascending members in [lo, hi].
  std::vector<i64> indices_in(i64 lo, i64 hi) const {
    std::vector<i64> out;
    if (lo < 0) lo = 0;
    if (hi < lo || bits_.empty()) return out;
    i64 last_word = std::min<i64>(hi >> 6, (i64)bits_.size() - 1);
    for (i64 w = lo >> 6; w <= last_word; w++) {
      uint64_t b = bits_[(size_t)w];
      if (w == (lo >> 6)) b &= ~uint64_t{0} << (lo & 63);
      if (w == (hi >> 6) && (hi & 63) != 63) b &= (uint64_t{1} << ((hi & 63) + 1)) - 1;
      while (b) {
        out.push_back((w << 6) + __builtin_ctzll(b));
        b &= b - 1;
      }
    }
    return out;
  }
  std::vector<i64> all() const { return indices_in(0, (i64)bits_.size() * 64 - 1); }

 private:
  __attribute__((noinline)) void grow(size_t w) { bits_.resize(w + 1, 0); }
  std::vector<uint64_t> bits_;
  size_t n_ = 0;
};

}  // namespace ptfast
