// Port of envs/sim/workloads/phased.py: a periodic job over a sparse mapped index.
#include "workloads.hpp"

namespace ptfast {
namespace {

enum PPhase { P_LOAD, P_COLD, P_HOT };

class Phased : public Workload {
 public:
  bool file_backed = true;
  i64 region_gib, tables, pages_per_slot, load_tables_per_tick, cold_ticks, hot_ticks,
      hot_tables_per_tick, cold_tables_per_tick, threads;
  double cold_spread, hot_fraction;
  i64 spacing = 0, page_stride = 0;
  int phase = P_LOAD;
  i64 pos = 0, left = 0, hot_start = 0, hot_n = 1, cursor = 0, cycles = 0;

  explicit Phased(const Params& c) {
    file_backed = c.gets("backing") == "file";
    region_gib = c.geti("region_gib");
    tables = c.geti("tables");
    pages_per_slot = c.geti("pages_per_slot");
    load_tables_per_tick = c.geti("load_tables_per_tick");
    cold_ticks = c.geti("cold_ticks");
    cold_spread = c.get("cold_spread");
    hot_ticks = c.geti("hot_ticks");
    hot_fraction = c.get("hot_fraction");
    hot_tables_per_tick = c.geti("hot_tables_per_tick");
    cold_tables_per_tick = c.geti("cold_tables_per_tick");
    threads = c.geti("threads");
  }

  void start() override {
    proc = spawn("", threads);
    i64 size = region_gib * GiB;
    spacing = size / tables / PTE_SPAN * PTE_SPAN;
    page_stride = PTE_SPAN / pages_per_slot;
    if (file_backed) {
      auto index = std::make_shared<BackingFile>();
      index->kind = 0;  // "file"
      index->size = size;
      proc->mm->mmap(BASE, size, 1, true, VM_READ, index, 0, true, false, false);
    } else {
      mmap_anon(*proc->mm, BASE, size, RW, true);
    }
    phase = P_LOAD;
    pos = left = hot_start = cursor = cycles = 0;
    hot_n = std::max<i64>(1, py_round(hot_fraction * (double)tables));
  }

  void step(i64 tick) override {
    if (!proc->runnable(tick)) return;
    if (phase == P_LOAD) {
      i64 n = std::min(load_tables_per_tick, tables - pos);
      read(pos, n);
      pos += n;
      if (pos >= tables) begin_cold();
    } else if (phase == P_COLD) {
      if (cold_tables_per_tick) {
        i64 first = rng.integers(0, tables);
        read_wrapped(first, std::min(cold_tables_per_tick, tables));
      }
      if (--left <= 0) begin_hot();
    } else {
      i64 m = std::min(hot_tables_per_tick, hot_n);
      i64 a = std::min(m, hot_n - cursor);
      read_wrapped(hot_start + cursor, a);
      if (m > a) read_wrapped(hot_start, m - a);
      cursor = (cursor + m) % hot_n;
      if (--left <= 0) begin_cold();
    }
  }

  void begin_cold() {
    phase = P_COLD;
    double factor = 1.0;
    if (cold_spread > 0) factor = 1.0 - cold_spread + 2.0 * cold_spread * rng.random();
    left = std::max<i64>(1, py_round((double)cold_ticks * factor));
  }

  void begin_hot() {
    phase = P_HOT;
    hot_start = rng.integers(0, tables);
    cursor = 0;
    left = hot_ticks;
    cycles++;
  }

  void read_wrapped(i64 first, i64 n) {
    first %= tables;
    i64 a = std::min(n, tables - first);
    read(first, a);
    if (n > a) read(0, n - a);
  }

  void read(i64 first, i64 n) {
    AddressSpace& mm = *proc->mm;
    i64 start = BASE + first * spacing;
    i64 length = (n - 1) * spacing + PAGE;
    for (i64 j = 0; j < pages_per_slot; j++)
      mm.touch(start + j * page_stride, length, false, spacing);
  }

  std::unique_ptr<Workload> clone() const override { return std::make_unique<Phased>(*this); }
};

RegisterWorkload reg_phased("phased", [](const Params& c) { return std::make_unique<Phased>(c); });

}  // namespace
}  // namespace ptfast
