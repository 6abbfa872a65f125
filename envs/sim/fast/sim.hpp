// The compiled simulation: machine, processes, workloads, reclaim, costs and the env's
// decision step.  A port of envs/sim/{machine,process,costs,reclaim,simulator}.py,
// envs/sim/workloads/*.py and the observation/reward of envs/pagetable_env.py: the Python
// modules are the reference and say *why*; these files say *how fast*.
//
// Random numbers: every component draws from the numpy Generator the Python reference
// would use, through numpy's own C distribution functions (libnpyrandom), in the same order,
// so a seed gives the same trajectory bit for bit.  Generator.choice without replacement
// follows numpy's algorithm here (tests/test_fast_choice.py compares it with the
// Generator's); the rare Generator.permutation calls back into the Generator object itself
// (a hook set by the Cython module).
#pragma once

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pagetable.hpp"
#include "pool.hpp"

extern "C" {
#include "numpy/random/distributions.h"
}

namespace ptfast {

// ---------------------------------------------------------------- random numbers

// Python callback for a rare draw (set by _fast.pyx): permutation(n) writes n values.
extern void (*g_py_permutation)(void* gen, i64 n, i64* out);
// Draws made by Rng::choice_noreplace so far (a diagnostic, _fast.callback_counts);
// atomic, as step_batch's helper threads draw too (pool.hpp).
extern std::atomic<i64> g_n_choice;
inline i64 n_choice_draws() { return g_n_choice.load(std::memory_order_relaxed); }

struct Rng {
  bitgen_t* bg = nullptr;  // borrowed from a numpy Generator's bit generator
  void* gen = nullptr;     // the Generator (PyObject*), kept alive by the Python wrapper
  binomial_t binom{};

  double random() { return random_standard_uniform(bg); }
  // Generator.integers(lo, hi) (int64, hi exclusive).
  i64 integers(i64 lo, i64 hi) {
    uint64_t out;
    random_bounded_uint64_fill(bg, (uint64_t)lo, (uint64_t)(hi - 1 - lo), 1, false, &out);
    return (i64)out;
  }
  // Generator.integers(lo, hi, size=n).
  void integers(i64 lo, i64 hi, i64 n, i64* out) {
    random_bounded_uint64_fill(bg, (uint64_t)lo, (uint64_t)(hi - 1 - lo), n, false,
                               (uint64_t*)out);
  }
  i64 poisson(double lam) { return random_poisson(bg, lam); }
  double normal(double loc, double scale) { return random_normal(bg, loc, scale); }
  i64 binomial(i64 n, double p) { return random_binomial(bg, p, n, &binom); }
  i64 geometric(double p) { return random_geometric(bg, p); }
  // Generator.choice(cand, size=k, replace=False) for 0 <= k <= cand.size(): numpy's
  // uniform sample without replacement (p=None, shuffle=True), with its draws in its order.
  std::vector<i64> choice_noreplace(const std::vector<i64>& cand, i64 k);
  std::vector<i64> permutation(i64 n) {
    std::vector<i64> out((size_t)n);
    g_py_permutation(gen, n, out.data());
    return out;
  }
};

// ------------------------------------------------------------------------- costs

// costs.CostModel (values from the Python config; the sources are documented there).
struct Costs {
  double minor_fault_us, table_alloc_us, scan_table_us, free_table_us, invlpg_us;
  i64 tlb_single_page_flush_ceiling;
  double full_flush_us, ipi_us, rmap_lock_us, young_clear_us, mmap_write_lock_us,
      pmd_lock_us, uffd_refault_us, alloc_failure_stall_us, oom_kill_harm_us;

  double tlb_flush_us(i64 pages, i64 remote_cpus) const {
    if (pages == 0) return 0.0;
    double local = pages > tlb_single_page_flush_ceiling ? full_flush_us
                                                         : (double)pages * invlpg_us;
    return local + (double)remote_cpus * ipi_us;
  }
  double reclaim_pass_cpu_us(i64 scanned, i64 freed, i64 freed_file, i64 flushed, i64 remote,
                             bool mmap_write, i64 young_cleared) const {
    double cost = (double)scanned * scan_table_us + (double)freed * free_table_us +
                  (double)freed_file * rmap_lock_us + tlb_flush_us(flushed, remote) +
                  (double)young_cleared * young_clear_us;
    if (mmap_write) {
      if (scanned) cost += mmap_write_lock_us;
    } else {
      cost += (double)freed * (pmd_lock_us + scan_table_us);
    }
    return cost;
  }
  double reclaim_pass_stall_us(i64 scanned, i64 freed, i64 freed_file, i64 flushed,
                               i64 remote, bool mmap_write, i64 young_cleared) const {
    if (mmap_write)
      return reclaim_pass_cpu_us(scanned, freed, freed_file, flushed, remote, true,
                                 young_cleared);
    return (double)freed * (pmd_lock_us + scan_table_us + free_table_us);
  }
  double refault_us(i64 tables, i64 entries, bool uffd) const {
    double per_entry = uffd ? uffd_refault_us : minor_fault_us;
    return (double)tables * table_alloc_us + (double)entries * per_entry;
  }
};

// ----------------------------------------------------------------------- machine

struct MachineConfig {
  i64 normal_pages, movable_pages;
  i64 cpus;
  double tick_ms;
  i64 wmin, wlow, whigh;
  double base_fraction, volatility, reversion, burst_prob, burst_fraction;
  i64 burst_ticks;
  // TenantConfig's non-stationary demand: bursts that ramp up, the daily cycle.
  i64 burst_ramp_ticks;
  double diurnal_amplitude;
  i64 diurnal_period_ticks;
  double diurnal_phase;
  i64 oom_failures, oom_window_ticks;
  bool hard_limit_kill;
  i64 throttle_ticks;
  bool keep_reclaimed_cache;  // MachineConfig.keep_reclaimed_cache
};

struct Psi {
  double some_avg10 = 0, some_avg60 = 0, full_avg10 = 0, full_avg60 = 0;
  void update(double some, double full, double tick_s);
};

// machine.Machine.
struct Machine {
  MachineConfig cfg{};
  Rng* rng = nullptr;
  double tenant_pages = 0;
  i64 burst_left = 0;
  i64 tenant_tick = 0;  // Machine._tick: the daily cycle's clock
  Psi psi;
  i64 normal_free = 0, movable_free = 0;
  std::deque<i64> fail_ticks;

  double tick_s() const { return cfg.tick_ms / 1000.0; }
  double mean_fraction(i64 tick) const;  // TenantConfig.mean_fraction
  void step_tenants();
  i64 account(i64 pt_pages, i64 user_pages);
  bool record_failure_tick(i64 tick);
};

// --------------------------------------------------------------------- processes

// process.Process.
struct Process {
  i64 pid = 0;
  std::string name, family;
  std::unique_ptr<AddressSpace> mm;
  bool sane = true;
  i64 cpus = 1;
  bool alive = true;
  i64 throttled_until = -1;
  bool has_soft = false, has_hard = false;
  i64 soft_limit = 0, hard_limit = 0;
  i64 cursor = 0;
  double stall_us = 0;
  i64 last_refault_tables = 0, last_refault_entries = 0;
  i64 last_pte_allocated = 0;
  i64 last_refault_class[3] = {0, 0, 0};
  double refault_rate = 0, growth_rate = 0;  // process.Process's averaged rates
  std::vector<i64> history;

  i64 pt_bytes() const { return mm->tables() * PAGE; }
  i64 rss_bytes() const { return mm->rss_pages * PAGE; }
  i64 reclaimable_tables() const {
    return mm->cls_count[C_EMPTY] + mm->cls_count[C_ZERO] + mm->cls_count[C_FILE] -
           mm->uffd_unreclaimable();
  }
  bool over_soft_limit() const { return has_soft && pt_bytes() > soft_limit; }
  bool runnable(i64 tick) const { return alive && tick >= throttled_until; }
  i64 badness() const { return mm->rss_pages + mm->tables(); }
};

struct PassResult {
  i64 scanned = 0, freed = 0, zapped_entries = 0;
  i64 freed_by_class[4] = {0, 0, 0, 0};
  double cpu_us = 0, stall_us = 0;
  std::vector<i64> targets;
  i64 seen[3] = {0, 0, 0}, idle1[3] = {0, 0, 0}, idle4[3] = {0, 0, 0};
};

struct TickRecord {
  i64 tick, normal_free_pages, movable_free_pages, tenant_pages, pt_pages, reclaimable_tables,
      user_pages, deficit_pages;
  bool failure;
  i64 oom_kill;  // index into Simulation::procs, or -1
  double psi_some_avg10, psi_full_avg10, stall_us;
  i64 refault_tables, refault_entries, harm_events;
  double reclaim_cpu_us;
  i64 reclaim_freed, reclaim_scanned;
};

// ---------------------------------------------------------------------- workloads

// A workload's (jittered) config as the Python dataclass holds it.
struct Params {
  std::unordered_map<std::string, double> num;
  std::unordered_map<std::string, std::string> str;
  double get(const std::string& k) const;
  i64 geti(const std::string& k) const { return (i64)get(k); }
  const std::string& gets(const std::string& k) const;
};

class Simulation;

// workloads.base.Workload.
class Workload {
 public:
  Simulation* sim = nullptr;
  Rng rng;
  std::string name, family;
  bool sane = true;
  std::vector<Process*> procs;
  // The process a single-process workload drives (its latest one); re-pointed by remap.
  Process* proc = nullptr;
  i64 start_tick = 0, stop_tick = 0;

  virtual ~Workload() = default;
  virtual void start() = 0;
  virtual void step(i64 tick) = 0;
  virtual void stop();
  // A copy for the oracle's future (pointers re-targeted by the caller's maps).
  virtual std::unique_ptr<Workload> clone() const = 0;
  // Re-point process pointers after a clone (old index -> new process).
  void remap(const std::vector<Process*>& by_index, const Simulation& old);
  // Re-point backing files the workload holds after a clone: `files` maps each original
  // file to its copy (copy_file adds a copy for one no address space maps any more).
  virtual void remap_files(std::map<const BackingFile*, FileRef>& files) { (void)files; }

 protected:
  Process* spawn(const std::string& suffix = "", i64 cpus = 1);
};

// The clone of `f` in a Simulation::clone's file map (created on first use).
FileRef copy_file(std::map<const BackingFile*, FileRef>& files, const FileRef& f);

using WorkloadFactory = std::function<std::unique_ptr<Workload>(const Params&)>;
// Registered factories by family name (each workload file registers its own).
std::map<std::string, WorkloadFactory>& workload_registry();
std::unique_ptr<Workload> make_workload(const std::string& family, const Params& p);
bool has_workload(const std::string& family);
struct RegisterWorkload {
  RegisterWorkload(const std::string& family, WorkloadFactory f) {
    workload_registry()[family] = std::move(f);
  }
};

// ---------------------------------------------------------------------- simulation

struct SimConfig {
  i64 ticks = 600;
  bool pt_reclaim = true;
  bool mmap_write_lock = true;  // ReclaimConfig.lock
};

// simulator.Simulation.
class Simulation {
 public:
  SimConfig cfg;
  Costs costs{};
  Machine machine;
  Rng rng;  // the scenario's generator (the machine draws from it)
  std::vector<std::unique_ptr<Process>> procs;
  std::vector<std::unique_ptr<Workload>> workloads;
  i64 tick_no = 0;
  std::vector<TickRecord> history;
  std::vector<std::pair<i64, std::string>> events;
  i64 next_pid = 100;
  std::vector<PassResult> pending;
  i64 harm = 0;
  double refault_class_rate[3] = {0, 0, 0};
  bool recording = false;
  // process index -> slot -> ticks it was touched (simulator.touch_trace)
  std::vector<std::map<i64, std::vector<i64>>> touch_trace;

  Process* spawn(const std::string& name, const std::string& family, bool sane, i64 cpus);
  void exit_process(Process* p, const std::string& reason);
  // The live processes into `out` (cleared first), in process order.
  void alive_into(std::vector<Process*>& out) const;
  i64 index_of(const Process* p) const;
  const TickRecord& step();
  PassResult reclaim(Process* target, unsigned classes, i64 budget, i64 min_idle = 0);
  PassResult reclaim_exact(Process* p, const std::vector<i64>& slots, unsigned classes);
  void record_touches();
  i64 pt_bytes() const;
  std::unique_ptr<Simulation> clone(const std::vector<Rng>& workload_rngs,
                                    const Rng& sim_rng) const;

 private:
  i64 enforce_hard_limits(i64 t);
  void record_touch_log(i64 t);
  i64 reclaim_process(Process* p, unsigned classes, i64 budget, PassResult& result,
                      i64 min_idle);
  // `tables`: the tables at `order`'s slots, as the walk that listed them found them, or
  // null: each looked up as it comes (reclaim_exact's list may repeat or miss a slot).
  void free_scanned(Process* p, const std::vector<i64>& order,
                    const std::vector<PteTable*>* tables, unsigned classes, PassResult& result,
                    i64 min_idle, bool scan);
  // Buffers the tick and the reclaim pass borrow (Borrowed) instead of allocating lists.
  std::vector<Process*> live_scratch_, order_scratch_;
  std::vector<i64> slot_scratch_;
  std::vector<PteTable*> table_scratch_;
};

// -------------------------------------------------------------- the env's step

// pagetable_env.EnvConfig and the observation/reward of PageTableReclaimEnv (v1).
struct EnvConfig {
  i64 decision_ticks = 10;
  i64 max_steps = 120;
  std::vector<i64> budgets;
  std::vector<i64> idle_levels;
  bool hard_limit_action = true;
  bool candidate_counts = false;
  bool burst_memory = false;  // features.BURST_NAMES (an ablation)
  double w[5] = {0, 0, 0, 0, 0};  // pt_hold, alloc_failures, reclaim_cpu, app_stall, harm
};

constexpr int N_TERMS = 5;
constexpr int TOP_K = 3;
constexpr int N_OBS = 39;  // features.OBS_NAMES
constexpr double BURST_DECAY_S = 300.0;  // features.BURST_DECAY_S

class EnvCore {
 public:
  EnvConfig cfg;
  Simulation* sim = nullptr;
  i64 steps = 0;
  bool has_last = false;
  PassResult last;
  i64 ticks_since_pass = 0, refaults_since_pass = 0;
  std::deque<int> fail_window;
  double burst = 0.0;       // features.burst_drop's memory
  bool burst_primed = false;  // an observation since attach (prev_free holds its free)
  i64 prev_free = 0;          // free normal-zone pages at the last observation
  i64 rec_lo = 0, rec_hi = 0;  // history indices of the ticks of the last step
  // Aggregates of the last step's ticks for the env's info dict.
  i64 info_failures = 0, info_freed = 0, info_reclaimable_last = 0;
  std::vector<i64> info_oom;  // process indices killed by the OOM killer

  void attach(Simulation* s);
  void reset_ticks();  // the decision_ticks after reset
  void collect_info();
  // One decision: apply the action, run the ticks; fills obs and terms, returns reward.
  double step(const i64* action, i64 n_action, float* obs, double* terms, bool* truncated);
  void observe(float* obs);
  // features.top_consumers: the largest page-table holders, largest first (ties: pid).
  // Into `top` (cleared first).
  void top_consumers(std::vector<Process*>& top) const;
  Process* target(i64 choice) const;
  bool apply_action(const i64* a, i64 n);
  int n_obs() const { return N_OBS + (cfg.candidate_counts ? 3 : 0) + (cfg.burst_memory ? 1 : 0); }

 private:
  mutable std::vector<Process*> top_scratch_;  // top_consumers' list (Borrowed)
};

// What a thread of the core keeps for itself (the page-table maps' spare empty nodes and
// pool blocks), freed: a step_batch helper calls it before it ends (StepPool's exit hook).
inline void release_thread_caches() {
  SlotMap<PteTable>::release_spares();
  SlotMap<PageBits>::release_spares();
  SlotMap<i64>::release_spares();
}

// The batched vector env's step (_fast.step_batch): envs[i]->step(actions + i*k, ...) for
// every i, writing obs row i, rewards[i] and truncated[i], on the caller and `pool`'s
// helpers.  Each env touches only its own simulation and rows, so the results are the
// same for any number of threads.
void step_envs(StepPool& pool, EnvCore* const* envs, i64 n, const i64* actions, i64 k,
               float* obs, i64 width, double* rewards, double* const* terms, bool* truncated);

}  // namespace ptfast
