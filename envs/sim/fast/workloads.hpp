// Helpers shared by the compiled workloads (ports of helpers in envs/sim/workloads/).
#pragma once

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <vector>

#include "sim.hpp"

namespace ptfast {

// workloads.base.BASE: every process maps its memory from here.
constexpr i64 BASE = i64{16} << 40;
constexpr i64 KiB = i64{1} << 10;
constexpr i64 MiB = i64{1} << 20;
constexpr i64 GiB = i64{1} << 30;
constexpr int RW = (int)(VM_READ | VM_WRITE);

// Python's round() on a float: half to even (the default rounding mode).
inline i64 py_round(double x) { return (i64)std::nearbyint(x); }

// Python's -(-a // b) for b > 0: ceiling division of a non-negative or negative a.
inline i64 ceil_div(i64 a, i64 b) {
  i64 q = a / b, r = a % b;
  if (r != 0 && ((r > 0) == (b > 0))) q++;
  return q;
}

// Python's a // b (floor division).
inline i64 floor_div(i64 a, i64 b) {
  i64 q = a / b, r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) q--;
  return q;
}

// `hits[np.sort(np.unique(hits, return_index=True)[1])][:k]`: the first k distinct values
// in order of first appearance.
inline std::vector<i64> first_distinct(const std::vector<i64>& hits, i64 k) {
  std::vector<i64> out;
  out.reserve((size_t)std::max<i64>(0, std::min<i64>(k, (i64)hits.size())));  // one malloc
  if (hits.size() <= 256) {  // small: a linear search beats hashing
    for (i64 h : hits) {
      if ((i64)out.size() >= k) break;
      if (std::find(out.begin(), out.end(), h) == out.end()) out.push_back(h);
    }
    return out;
  }
  std::unordered_set<i64> seen;
  for (i64 h : hits) {
    if ((i64)out.size() >= k) break;
    if (seen.insert(h).second) out.push_back(h);
  }
  return out;
}

// workloads.base.pick: up to k distinct random indices i in [0, n) where ok(i), sorted.
template <class Ok>
std::vector<i64> pick(Rng& rng, i64 n, const Ok& ok, i64 k) {
  if (k <= 0 || n == 0) return {};
  std::vector<i64> draws((size_t)(4 * k + 8));
  rng.integers(0, n, (i64)draws.size(), draws.data());
  size_t m = 0;
  for (i64 d : draws)
    if (ok(d)) draws[m++] = d;
  draws.resize(m);
  std::vector<i64> chosen = first_distinct(draws, k);
  if ((i64)chosen.size() < k) {
    std::vector<i64> cand;
    for (i64 i = 0; i < n; i++)
      if (ok(i)) cand.push_back(i);
    if (cand.empty()) return {};
    chosen = rng.choice_noreplace(cand, std::min<i64>(k, (i64)cand.size()));
  }
  std::sort(chosen.begin(), chosen.end());
  return chosen;
}

// pick over a flag per index.
inline std::vector<i64> pick(Rng& rng, const std::vector<uint8_t>& ok, i64 k) {
  return pick(rng, (i64)ok.size(), [&ok](i64 i) { return ok[(size_t)i] != 0; }, k);
}

// workloads.balloon.index_runs: runs [first, last + 1) of consecutive sorted values.
std::vector<std::pair<i64, i64>> index_runs(const std::vector<i64>& idx);

// workloads.balloon.discard_small: DONTNEED of [start, end) as 4 KiB discards do it.
i64 discard_small(AddressSpace& mm, i64 start, i64 end);

// mmap of private anonymous memory with the Python defaults (prot rw).
inline int mmap_anon(AddressSpace& mm, i64 addr, i64 length, i64 prot = RW,
                     bool noreserve = false, bool fixed = false) {
  return mm.mmap(addr, length, 0, false, prot, nullptr, 0, noreserve, fixed, false);
}

}  // namespace ptfast
