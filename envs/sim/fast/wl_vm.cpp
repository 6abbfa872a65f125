// Ports of envs/sim/workloads/{hog,balloon,kdump}.py and the balloon helpers.
#include "workloads.hpp"

namespace ptfast {

// ------------------------------------------------------------------ helpers

std::vector<std::pair<i64, i64>> index_runs(const std::vector<i64>& idx) {
  std::vector<std::pair<i64, i64>> out;
  out.reserve(idx.size());  // one malloc, not one per doubling
  for (i64 i : idx) {
    if (!out.empty() && out.back().second == i)
      out.back().second = i + 1;
    else
      out.emplace_back(i, i + 1);
  }
  return out;
}

i64 discard_small(AddressSpace& mm, i64 start, i64 end) {
  if (end <= start) return 0;
  const i64 half = PTE_SPAN / 2;
  i64 pos = start;
  i64 cut = ((start + PTE_SPAN - 1) & ~(PTE_SPAN - 1)) + half;
  i64 calls = 0;
  while (cut + half <= end) {
    mm.madvise(pos, cut - pos, A_DONTNEED);
    calls++;
    pos = cut;
    cut += PTE_SPAN;
  }
  mm.madvise(pos, end - pos, A_DONTNEED);
  return calls + 1;
}

namespace {

// ---------------------------------------------------------------------- hog

class Hog : public Workload {
 public:
  int variant = 0;  // 0 write, 1 zeropage, 2 retouch
  i64 size_gib, tables_per_tick, stride_kib, retouch_per_tick, retouch_scan_per_tick;
  i64 size = 0, stride = 0, unit = 0, units = 0;
  bool write = false;
  i64 swept = 0, sweeps = 0, high = 0, expected = 0, missing = 0, probe = 0, probed = 0,
      retouched = 0;

  explicit Hog(const Params& c) {
    const std::string& v = c.gets("variant");
    variant = v == "write" ? 0 : v == "zeropage" ? 1 : 2;
    size_gib = c.geti("size_gib");
    tables_per_tick = c.geti("tables_per_tick");
    stride_kib = c.geti("stride_kib");
    retouch_per_tick = c.geti("retouch_per_tick");
    retouch_scan_per_tick = c.geti("retouch_scan_per_tick");
  }

  void start() override {
    proc = spawn();
    size = size_gib * GiB;
    mmap_anon(*proc->mm, BASE, size, RW, true);
    stride = stride_kib * KiB;
    unit = std::max(stride, PTE_SPAN);
    units = size / unit;
    write = variant == 0;
  }

  void step(i64 tick) override {
    Process* p = proc;
    if (!p->runnable(tick)) return;
    AddressSpace& mm = *p->mm;
    if (variant == 2) {
      i64 lost = expected - (i64)mm.pte.size();
      if (lost > 0) {
        if (missing == 0) probe = 0;
        probed = 0;
        missing += lost;
      }
      if (missing > 0) retouch();
    }
    i64 mean = tables_per_tick;
    i64 n = std::min({rng.poisson((double)mean), 2 * mean, units - swept});
    if (n > 0) {
      mm.touch(BASE + swept * unit, n * unit, write, stride);
      swept += n;
      high = std::max(high, swept);
    }
    if (swept >= units) {
      swept = 0;
      sweeps++;
    }
    expected = (i64)mm.pte.size();
  }

  void retouch() {
    AddressSpace& mm = *proc->mm;
    i64 want = std::min(retouch_per_tick, missing);
    i64 scan = std::min(retouch_scan_per_tick, high - probed);
    std::vector<i64> found;
    i64 u = probe;
    for (i64 k = 0; k < scan; k++) {
      if (u >= high) u = 0;
      bool miss = !mm.pte.count((BASE + u * unit) >> PTE_SHIFT);
      u++;
      probed++;
      if (miss) {
        found.push_back(u - 1);
        if ((i64)found.size() >= want) break;
      }
    }
    probe = u;
    size_t i = 0;
    while (i < found.size()) {
      size_t j = i + 1;
      while (j < found.size() && found[j] == found[j - 1] + 1) j++;
      mm.touch(BASE + found[i] * unit, (i64)(j - i) * unit, false, stride);
      i = j;
    }
    retouched += (i64)found.size();
    missing -= (i64)found.size();
    if (probed >= high) missing = 0;
  }

  std::unique_ptr<Workload> clone() const override { return std::make_unique<Hog>(*this); }
};

// ------------------------------------------------------------------ balloon

enum { GUEST = 0, BALLOONED = 1, REPORTED = 2 };
enum BPhase { B_FILL, B_REPORT, B_INFLATE, B_HOLD, B_DEFLATE, B_IDLE, B_DONE };

class Balloon : public Workload {
 public:
  i64 guest_mib, vcpus, fill_mib_per_tick, batch_kib, inflate_batches_per_tick,
      deflate_batches_per_tick, report_kib, report_chunks_per_tick, hold_ticks, idle_ticks,
      cycles;
  double balloon_fraction, report_fraction;
  i64 size = 0, unit = 0, per_chunk = 0, n_chunks = 0;
  std::vector<int8_t> state;
  std::vector<uint8_t> ok_;  // scratch: which units a pick may choose
  int phase = B_FILL;
  i64 cycle = 0, filled = 0, wait = 0, target = 0;

  explicit Balloon(const Params& c) {
    guest_mib = c.geti("guest_mib");
    vcpus = c.geti("vcpus");
    fill_mib_per_tick = c.geti("fill_mib_per_tick");
    batch_kib = c.geti("batch_kib");
    balloon_fraction = c.get("balloon_fraction");
    inflate_batches_per_tick = c.geti("inflate_batches_per_tick");
    deflate_batches_per_tick = c.geti("deflate_batches_per_tick");
    report_kib = c.geti("report_kib");
    report_fraction = c.get("report_fraction");
    report_chunks_per_tick = c.geti("report_chunks_per_tick");
    hold_ticks = c.geti("hold_ticks");
    idle_ticks = c.geti("idle_ticks");
    cycles = c.geti("cycles");
  }

  void start() override {
    proc = spawn("", vcpus);
    size = guest_mib * MiB;
    mmap_anon(*proc->mm, BASE, size);
    unit = batch_kib * KiB;
    state.assign((size_t)(size / unit), GUEST);
    per_chunk = report_kib * KiB / unit;
    n_chunks = size / (report_kib * KiB);
    phase = B_FILL;
  }

  void step(i64 tick) override {
    if (!proc->runnable(tick)) return;
    AddressSpace& mm = *proc->mm;
    switch (phase) {
      case B_FILL: {
        i64 n = std::min(fill_mib_per_tick * MiB, size - filled);
        mm.touch(BASE + filled, n, true);
        filled += n;
        if (filled >= size) begin_cycle();
        break;
      }
      case B_REPORT: report(mm); break;
      case B_INFLATE: inflate(mm); break;
      case B_HOLD:
        if (--wait <= 0) phase = B_DEFLATE;
        break;
      case B_DEFLATE: deflate(mm); break;
      case B_IDLE:
        if (--wait <= 0) begin_cycle();
        break;
      default: break;
    }
  }

  void begin_cycle() {
    if (cycles && cycle >= cycles) {
      phase = B_DONE;
      return;
    }
    phase = B_REPORT;
    target = py_round(report_fraction * (double)n_chunks);
  }

  void report(AddressSpace& mm) {
    i64 k = std::min(report_chunks_per_tick, target);
    std::vector<uint8_t> free((size_t)n_chunks);
    for (i64 ch = 0; ch < n_chunks; ch++) {
      int8_t mx = 0;
      for (i64 u = ch * per_chunk; u < (ch + 1) * per_chunk; u++) mx = std::max(mx, state[(size_t)u]);
      free[(size_t)ch] = mx == GUEST;
    }
    std::vector<i64> chosen = pick(rng, free, k);
    i64 chunk_bytes = report_kib * KiB;
    for (i64 ch : chosen) {
      mm.madvise(BASE + ch * chunk_bytes, chunk_bytes, A_DONTNEED);
      for (i64 u = ch * per_chunk; u < (ch + 1) * per_chunk; u++) state[(size_t)u] = REPORTED;
    }
    target -= (i64)chosen.size();
    if (target <= 0 || (i64)chosen.size() < k) {
      phase = B_INFLATE;
      i64 ballooned = 0;
      for (int8_t s : state) ballooned += s == BALLOONED;
      target = std::max<i64>(0, py_round(balloon_fraction * (double)state.size()) - ballooned);
    }
  }

  void inflate(AddressSpace& mm) {
    i64 k = std::min(inflate_batches_per_tick, target);
    const size_t n = state.size();
    const int8_t* st = state.data();
    ok_.resize(n);
    uint8_t* ok = ok_.data();
    for (size_t i = 0; i < n; i++) ok[i] = st[i] == GUEST;
    std::vector<i64> chosen = pick(rng, ok_, k);
    for (i64 c : chosen) state[(size_t)c] = BALLOONED;
    for (auto [a, b] : index_runs(chosen)) discard_small(mm, BASE + a * unit, BASE + b * unit);
    target -= (i64)chosen.size();
    if (target <= 0 || (i64)chosen.size() < k) {
      phase = B_HOLD;
      wait = hold_ticks;
    }
  }

  void deflate(AddressSpace& mm) {
    const size_t n = state.size();
    const int8_t* st = state.data();
    ok_.resize(n);
    uint8_t* ok = ok_.data();
    for (size_t i = 0; i < n; i++) ok[i] = st[i] != GUEST;
    std::vector<i64> chosen = pick(rng, ok_, deflate_batches_per_tick);
    for (i64 c : chosen) state[(size_t)c] = GUEST;
    for (auto [a, b] : index_runs(chosen)) mm.touch(BASE + a * unit, (b - a) * unit, true, PAGE);
    if ((i64)chosen.size() < deflate_batches_per_tick) {
      cycle++;
      phase = B_IDLE;
      wait = idle_ticks;
    }
  }

  std::unique_ptr<Workload> clone() const override {
    return std::make_unique<Balloon>(*this);
  }
};

// -------------------------------------------------------------------- kdump

enum KPhase { K_WARMUP, K_WAIT, K_DUMP, K_IDLE };

class Kdump : public Workload {
 public:
  i64 guest_mib, vcpus, warmup_mib_per_tick, keep_kib, dump_delay_ticks, dump_mib_per_tick;
  double written_fraction, resident_fraction, mixed_fraction;
  i64 size = 0, pos = 0, wait = 0;
  int phase = K_WARMUP;

  explicit Kdump(const Params& c) {
    guest_mib = c.geti("guest_mib");
    vcpus = c.geti("vcpus");
    warmup_mib_per_tick = c.geti("warmup_mib_per_tick");
    written_fraction = c.get("written_fraction");
    resident_fraction = c.get("resident_fraction");
    mixed_fraction = c.get("mixed_fraction");
    keep_kib = c.geti("keep_kib");
    dump_delay_ticks = c.geti("dump_delay_ticks");
    dump_mib_per_tick = c.geti("dump_mib_per_tick");
  }

  void start() override {
    proc = spawn("", vcpus);
    size = guest_mib * MiB;
    mmap_anon(*proc->mm, BASE, size);
    phase = K_WARMUP;
    pos = 0;
    wait = 0;
  }

  void step(i64 tick) override {
    if (!proc->runnable(tick)) return;
    AddressSpace& mm = *proc->mm;
    if (phase == K_WARMUP) {
      i64 n = std::min(warmup_mib_per_tick * MiB, size - pos);
      if (rng.random() < written_fraction) write_and_balloon(mm, BASE + pos, BASE + pos + n);
      pos += n;
      if (pos >= size) {
        phase = K_WAIT;
        wait = dump_delay_ticks;
        pos = 0;
      }
    } else if (phase == K_WAIT) {
      if (--wait < 0) phase = K_DUMP;
    } else if (phase == K_DUMP) {
      i64 n = std::min(dump_mib_per_tick * MiB, size - pos);
      mm.touch(BASE + pos, n, false, PAGE);
      pos += n;
      if (pos >= size) phase = K_IDLE;
    }
  }

  void write_and_balloon(AddressSpace& mm, i64 start, i64 end) {
    mm.touch(start, end - start, true, PAGE);
    i64 first = start >> PTE_SHIFT;
    i64 n = ((end - 1) >> PTE_SHIFT) - first + 1;
    std::vector<uint8_t> resident((size_t)n), mixed((size_t)n);
    for (i64 i = 0; i < n; i++) resident[(size_t)i] = rng.random() < resident_fraction;
    for (i64 i = 0; i < n; i++) mixed[(size_t)i] = rng.random() < mixed_fraction;
    i64 keep = keep_kib * KiB;
    i64 run_a = -1, run_b = -1;
    for (i64 i = 0; i < n; i++) {
      if (resident[(size_t)i]) continue;
      i64 base = (first + i) * PTE_SPAN;
      i64 a = std::max(start, base + (mixed[(size_t)i] ? keep : 0));
      i64 b = std::min(end, base + PTE_SPAN);
      if (a >= b) continue;
      if (a == run_b) {
        run_b = b;
        continue;
      }
      if (run_b > run_a) discard_small(mm, run_a, run_b);
      run_a = a;
      run_b = b;
    }
    if (run_b > run_a) discard_small(mm, run_a, run_b);
  }

  std::unique_ptr<Workload> clone() const override { return std::make_unique<Kdump>(*this); }
};

RegisterWorkload reg_hog("hog", [](const Params& c) { return std::make_unique<Hog>(c); });
RegisterWorkload reg_balloon("balloon",
                             [](const Params& c) { return std::make_unique<Balloon>(c); });
RegisterWorkload reg_kdump("kdump", [](const Params& c) { return std::make_unique<Kdump>(c); });

}  // namespace
}  // namespace ptfast
