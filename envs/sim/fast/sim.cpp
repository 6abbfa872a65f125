// Port of the machine, the tick, reclaim and the env's decision step (see sim.hpp).
#include "sim.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ptfast {

constexpr double RATE_DECAY = 0.9;  // process.RATE_DECAY

std::atomic<i64> g_n_choice{0};

namespace {

// The smallest all-ones bit mask >= v (numpy's _gen_mask).
uint64_t ones_mask(uint64_t v) {
  v |= v >> 1;
  v |= v >> 2;
  v |= v >> 4;
  v |= v >> 8;
  v |= v >> 16;
  v |= v >> 32;
  return v;
}

// Fisher-Yates steps i = n - 1 down to `first`, each swapping data[i] with a uniform
// data[j], j in [0, i] (numpy's _shuffle_int).
void shuffle_from(bitgen_t* bg, i64 n, i64 first, i64* data) {
  for (i64 i = n - 1; i >= first; i--) {
    const i64 j = (i64)random_bounded_uint64(bg, 0, (uint64_t)i, 0, false);
    std::swap(data[j], data[i]);
  }
}

}  // namespace

// numpy's Generator.choice without replacement and without p (numpy/random/_generator.pyx),
// which used to be called back into: a large sample of a large population (over 10,000,
// sample over 1/50 of it) is the tail of a partial shuffle of every index; otherwise
// Floyd's algorithm draws index j's value in [0, j] for j = n - k .. n - 1 (taking j itself
// when the value was drawn before, found in an open-addressed set of the next power of two
// at or above 1.2 k), then shuffles the k indices.  The sample is cand at those indices.
std::vector<i64> Rng::choice_noreplace(const std::vector<i64>& cand, i64 k) {
  g_n_choice.fetch_add(1, std::memory_order_relaxed);
  const i64 n = (i64)cand.size();
  std::vector<i64> idx;
  if (n > 10000 && k > n / 50) {
    std::vector<i64> all((size_t)n);
    for (i64 i = 0; i < n; i++) all[(size_t)i] = i;
    shuffle_from(bg, n, std::max<i64>(n - k, 1), all.data());
    idx.assign(all.end() - k, all.end());
  } else {
    idx.resize((size_t)k);
    const uint64_t mask = ones_mask((uint64_t)(1.2 * (double)k));
    constexpr uint64_t EMPTY = ~uint64_t{0};
    std::vector<uint64_t> seen((size_t)mask + 1, EMPTY);
    for (i64 j = n - k; j < n; j++) {
      const uint64_t val = random_bounded_uint64(bg, 0, (uint64_t)j, 0, false);
      uint64_t loc = val & mask;
      while (seen[loc] != EMPTY && seen[loc] != val) loc = (loc + 1) & mask;
      if (seen[loc] == EMPTY) {
        seen[loc] = val;
        idx[(size_t)(j - n + k)] = (i64)val;
      } else {
        loc = (uint64_t)j & mask;
        while (seen[loc] != EMPTY) loc = (loc + 1) & mask;
        seen[loc] = (uint64_t)j;
        idx[(size_t)(j - n + k)] = j;
      }
    }
    shuffle_from(bg, k, 1, idx.data());
  }
  for (i64& v : idx) v = cand[(size_t)v];
  return idx;
}
void (*g_py_permutation)(void* gen, i64 n, i64* out) = nullptr;

// ------------------------------------------------------------------ machine

void Psi::update(double some, double full, double tick_s) {
  double e10 = std::exp(-tick_s / 10.0);
  double e60 = std::exp(-tick_s / 60.0);
  some_avg10 = some_avg10 * e10 + some * (1 - e10);
  some_avg60 = some_avg60 * e60 + some * (1 - e60);
  full_avg10 = full_avg10 * e10 + full * (1 - e10);
  full_avg60 = full_avg60 * e60 + full * (1 - e60);
}

double Machine::mean_fraction(i64 tick) const {
  if (cfg.diurnal_amplitude == 0.0) return cfg.base_fraction;
  double angle = 2.0 * M_PI * ((double)tick / (double)cfg.diurnal_period_ticks +
                               cfg.diurnal_phase);
  return cfg.base_fraction + cfg.diurnal_amplitude * std::sin(angle);
}

void Machine::step_tenants() {
  const double z = (double)cfg.normal_pages;
  double base = mean_fraction(tenant_tick) * z;
  tenant_tick++;
  if (burst_left > 0) {
    i64 into = cfg.burst_ticks - burst_left + 1;
    burst_left -= 1;
    double ramp = into >= cfg.burst_ramp_ticks
                      ? 1.0
                      : (double)into / (double)cfg.burst_ramp_ticks;
    base += ramp * cfg.burst_fraction * z;
  } else if (rng->random() < cfg.burst_prob) {
    burst_left = cfg.burst_ticks;
  }
  double noise = rng->normal(0.0, cfg.volatility * z);
  tenant_pages += cfg.reversion * (base - tenant_pages) + noise;
  tenant_pages = std::min(std::max(tenant_pages, 0.0), z);
}

i64 Machine::account(i64 pt_pages, i64 user_pages) {
  i64 spill = std::max<i64>(0, user_pages - cfg.movable_pages);
  movable_free = std::max<i64>(0, cfg.movable_pages - user_pages);
  i64 used = (i64)tenant_pages + pt_pages + spill;
  normal_free = cfg.normal_pages - used;
  return std::max<i64>(0, cfg.wmin - normal_free);
}

bool Machine::record_failure_tick(i64 tick) {
  fail_ticks.push_back(tick);
  i64 horizon = tick - cfg.oom_window_ticks;
  while (!fail_ticks.empty() && fail_ticks.front() <= horizon) fail_ticks.pop_front();
  if ((i64)fail_ticks.size() >= cfg.oom_failures) {
    fail_ticks.clear();
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- workloads

double Params::get(const std::string& k) const {
  auto it = num.find(k);
  if (it == num.end()) throw std::runtime_error("workload config has no numeric field " + k);
  return it->second;
}

const std::string& Params::gets(const std::string& k) const {
  auto it = str.find(k);
  if (it == str.end()) throw std::runtime_error("workload config has no text field " + k);
  return it->second;
}

std::map<std::string, WorkloadFactory>& workload_registry() {
  static std::map<std::string, WorkloadFactory> reg;
  return reg;
}

void Workload::stop() {
  for (Process* p : procs)
    if (p->alive) sim->exit_process(p, "workload ended");
}

Process* Workload::spawn(const std::string& suffix, i64 cpus) {
  Process* p = sim->spawn(name + suffix, family, sane, cpus);
  procs.push_back(p);
  return p;
}

FileRef copy_file(std::map<const BackingFile*, FileRef>& files, const FileRef& f) {
  if (!f) return f;
  auto it = files.find(f.get());
  if (it != files.end()) return it->second;
  FileRef c = f->copy();  // with its page cache (R24), without its mappers
  files.emplace(f.get(), c);
  return c;
}

void Workload::remap(const std::vector<Process*>& by_index, const Simulation& old) {
  for (Process*& p : procs) p = by_index[(size_t)old.index_of(p)];
  if (proc) proc = by_index[(size_t)old.index_of(proc)];
}

// --------------------------------------------------------------- simulation

Process* Simulation::spawn(const std::string& name, const std::string& family, bool sane,
                           i64 cpus) {
  auto p = std::make_unique<Process>();
  p->mm = std::make_unique<AddressSpace>();
  p->mm->pt_reclaim = cfg.pt_reclaim;
  p->pid = next_pid++;
  p->name = name;
  p->family = family;
  p->sane = sane;
  p->cpus = cpus;
  procs.push_back(std::move(p));
  return procs.back().get();
}

void Simulation::exit_process(Process* p, const std::string& reason) {
  p->mm->exit();
  p->alive = false;
  events.emplace_back(tick_no,
                      p->name + " (pid " + std::to_string(p->pid) + ") exits: " + reason);
}

void Simulation::alive_into(std::vector<Process*>& out) const {
  out.clear();
  for (const auto& p : procs)
    if (p->alive) out.push_back(p.get());
}

i64 Simulation::index_of(const Process* p) const {
  for (size_t i = 0; i < procs.size(); i++)
    if (procs[i].get() == p) return (i64)i;
  return -1;
}

i64 Simulation::pt_bytes() const {
  i64 n = 0;
  for (const auto& p : procs)
    if (p->alive) n += p->pt_bytes();
  return n;
}

const TickRecord& Simulation::step() {
  const i64 t = tick_no;
  Machine& m = machine;
  m.step_tenants();
  for (auto& p : procs) p->stall_us = 0.0;
  for (auto& w : workloads) {
    if (t == w->start_tick) {
      w->start();
      if (recording)
        for (Process* p : w->procs) {
          p->mm->logging = true;
          p->mm->touch_log.clear();
        }
    }
    if (w->stop_tick && t == w->stop_tick) w->stop();
    if (t >= w->start_tick && (!w->stop_tick || t < w->stop_tick)) w->step(t);
  }
  Borrowed<Process*> live_buf(live_scratch_);
  std::vector<Process*>& live = live_buf.v;
  alive_into(live);
  if (recording) record_touch_log(t);
  i64 refault_tables = 0, refault_entries = 0;
  i64 class_refaults[3] = {0, 0, 0};
  for (Process* p : live) {
    const Stats& s = p->mm->stats;
    i64 dt = s.refault_tables - p->last_refault_tables;
    i64 de = s.refault_entries - p->last_refault_entries;
    if (dt || de) {
      p->stall_us += costs.refault_us(dt, de, false);
      refault_tables += dt;
      refault_entries += de;
    }
    p->last_refault_tables = s.refault_tables;
    p->last_refault_entries = s.refault_entries;
    p->refault_rate = p->refault_rate * RATE_DECAY + (double)dt * (1.0 - RATE_DECAY);
    i64 da = s.pte_allocated - p->last_pte_allocated;
    p->last_pte_allocated = s.pte_allocated;
    p->growth_rate = p->growth_rate * RATE_DECAY + (double)da * (1.0 - RATE_DECAY);
    const i64 by_class[3] = {s.refault_empty, s.refault_zero, s.refault_file};
    for (int c = 0; c < 3; c++) {
      class_refaults[c] += by_class[c] - p->last_refault_class[c];
      p->last_refault_class[c] = by_class[c];
    }
  }
  for (int c = 0; c < 3; c++)
    refault_class_rate[c] =
        refault_class_rate[c] * RATE_DECAY + (double)class_refaults[c] * (1.0 - RATE_DECAY);
  // The live processes' tables and user pages (simulator.Simulation._user_pages).
  i64 pt_pages = 0, user_pages = 0;
  auto account_live = [&]() {
    pt_pages = user_pages = 0;
    for (Process* p : live) {
      pt_pages += p->mm->tables();
      user_pages += p->mm->rss_pages + (m.cfg.keep_reclaimed_cache ? p->mm->kept_pages : 0);
    }
    return m.account(pt_pages, user_pages);
  };
  i64 deficit = account_live();
  i64 oom_victim = -1;
  i64 h = 0;
  if (deficit > 0) {
    for (Process* p : live) p->stall_us += costs.alloc_failure_stall_us;
    if (m.record_failure_tick(t) && !live.empty()) {
      Process* victim = live[0];
      for (Process* q : live) {
        i64 bq = q->badness(), bv = victim->badness();
        if (bq > bv || (bq == bv && q->pid < victim->pid)) victim = q;
      }
      oom_victim = index_of(victim);
      h += victim->sane ? 1 : 0;
      exit_process(victim, "OOM killer (largest RSS + page tables)");
      alive_into(live);
      account_live();
    }
  }
  h += enforce_hard_limits(t);
  const double tick_us = m.cfg.tick_ms * 1000.0;
  double stall_sum = 0.0, smax = 0.0, smin = 0.0;
  bool first = true;
  for (const auto& p : procs) {
    if (!p->alive) continue;
    double s = std::min(p->stall_us, tick_us);
    stall_sum += s;
    if (first) {
      smax = smin = s;
      first = false;
    } else {
      if (s > smax) smax = s;
      if (s < smin) smin = s;
    }
  }
  m.psi.update(smax / tick_us, smin / tick_us, m.tick_s());
  for (auto& p : procs)
    if (p->alive) p->history.push_back(p->pt_bytes());
  TickRecord rec{};
  rec.tick = t;
  rec.normal_free_pages = m.normal_free;
  rec.movable_free_pages = m.movable_free;
  rec.tenant_pages = (i64)m.tenant_pages;
  rec.pt_pages = pt_pages;
  i64 reclaimable = 0;
  for (const auto& p : procs)
    if (p->alive) reclaimable += p->reclaimable_tables();
  rec.reclaimable_tables = reclaimable;
  rec.user_pages = user_pages;
  rec.deficit_pages = deficit;
  rec.failure = deficit > 0;
  rec.oom_kill = oom_victim;
  rec.psi_some_avg10 = m.psi.some_avg10;
  rec.psi_full_avg10 = m.psi.full_avg10;
  rec.stall_us = stall_sum;
  rec.refault_tables = refault_tables;
  rec.refault_entries = refault_entries;
  rec.harm_events = h + harm;
  double cpu = 0.0;
  i64 freed = 0, scanned = 0;
  for (const PassResult& r : pending) {
    cpu += r.cpu_us;
    freed += r.freed;
    scanned += r.scanned;
  }
  rec.reclaim_cpu_us = cpu;
  rec.reclaim_freed = freed;
  rec.reclaim_scanned = scanned;
  pending.clear();
  harm = 0;
  history.push_back(rec);
  tick_no++;
  return history.back();
}

i64 Simulation::enforce_hard_limits(i64 t) {
  i64 h = 0;
  // Over procs, not a list of the live ones: only p itself exits in the loop body, so
  // this visits the processes alive at the start, as the reference's loop over `alive`.
  for (const auto& up : procs) {
    Process* p = up.get();
    if (!p->alive || !p->has_hard || p->pt_bytes() <= p->hard_limit) continue;
    // One harm event per kill and per throttle window (simulator.py _enforce_hard_limits).
    if (machine.cfg.hard_limit_kill) {
      h += p->sane ? 1 : 0;
      exit_process(p, "over its page-table hard limit");
    } else if (p->throttled_until <= t) {
      h += p->sane ? 1 : 0;
      p->throttled_until = t + machine.cfg.throttle_ticks;
      p->stall_us += machine.cfg.tick_ms * 1000.0;
      events.emplace_back(t, p->name + " throttled: over its page-table hard limit");
    }
  }
  return h;
}

void Simulation::record_touches() {
  recording = true;
  touch_trace.assign(procs.size(), {});
  for (auto& p : procs) {
    p->mm->logging = true;
    p->mm->touch_log.clear();
  }
}

void Simulation::record_touch_log(i64 t) {
  if (touch_trace.size() < procs.size()) touch_trace.resize(procs.size());
  for (size_t i = 0; i < procs.size(); i++) {
    auto& log = procs[i]->mm->touch_log;
    if (log.empty()) continue;
    for (i64 slot : log) touch_trace[i][slot].push_back(t);
    log.clear();
  }
}

// ------------------------------------------------------------------ reclaim

namespace {
constexpr unsigned PINNED_BIT = 1u << C_PINNED;
}

void Simulation::free_scanned(Process* p, const std::vector<i64>& order,
                              const std::vector<PteTable*>* tables, unsigned classes,
                              PassResult& result, i64 min_idle, bool scan) {
  i64 n = (i64)order.size();
  i64 freed = 0, freed_file = 0, zapped = 0, cleared = 0;
  AddressSpace& mm = *p->mm;
  // The scan reads a few header bytes of each table, one cache miss per table; asking for
  // the table PREFETCH slots ahead overlaps those misses (a prefetch only reads, so a slot
  // freed in between is harmless).
  constexpr i64 PREFETCH = 8;
  for (i64 k = 0; k < n; k++) {
    const i64 slot = order[(size_t)k];
    PteTable* t;
    if (tables) {
      // Found by the walk that listed the slots: every slot is distinct and only its own
      // step below frees a table, so each is still where the walk found it.
      if (k + PREFETCH < n) __builtin_prefetch(&(*tables)[(size_t)(k + PREFETCH)]->cls);
      t = (*tables)[(size_t)k];
    } else {
      if (k + PREFETCH < n)
        if (const PteTable* ahead = mm.pte.find(order[(size_t)(k + PREFETCH)]))
          __builtin_prefetch(&ahead->cls);
      t = mm.pte.find(slot);
      if (!t) continue;
    }
    uint8_t cls = t->cls;
    if (scan) {
      i64 age = AddressSpace::scan_young(*t);
      cleared++;
      if (cls != C_PINNED && !mm.slot_is_uffd(slot)) {
        result.seen[cls]++;
        result.idle1[cls] += age >= 1;
        result.idle4[cls] += age >= 4;
      }
      if (age < min_idle) continue;
    }
    i64 z = mm.reclaim_table(slot, *t, classes);
    if (z >= 0) {
      freed++;
      zapped += z;
      freed_file += cls == C_FILE;
      result.freed_by_class[cls]++;
    }
  }
  const bool mw = cfg.mmap_write_lock;
  i64 remote = std::min(p->cpus, machine.cfg.cpus) - 1;
  i64 flushed = freed * ENTRIES;
  double cpu = costs.reclaim_pass_cpu_us(n, freed, freed_file, flushed, remote, mw, cleared);
  double stall =
      costs.reclaim_pass_stall_us(n, freed, freed_file, flushed, remote, mw, cleared);
  p->stall_us += stall;
  result.scanned += n;
  result.freed += freed;
  result.zapped_entries += zapped;
  result.cpu_us += cpu;
  result.stall_us += stall;
  result.targets.push_back(p->pid);
}

i64 Simulation::reclaim_process(Process* p, unsigned classes, i64 budget, PassResult& result,
                                i64 min_idle) {
  AddressSpace& mm = *p->mm;
  const i64 n = std::min<i64>(budget, (i64)mm.pte.size());
  if (n == 0) return 0;
  // The n slots from the cursor on in ascending order, wrapping around to the lowest
  // (reclaim.py's `slots[(i0 + k) % len(slots)]` with i0 the first slot >= cursor), read
  // straight from the table map: a pass costs its budget, not a list of every table.
  Borrowed<i64> order_buf(slot_scratch_);
  Borrowed<PteTable*> tables_buf(table_scratch_);
  std::vector<i64>& order = order_buf.v;
  std::vector<PteTable*>& tables = tables_buf.v;
  order.reserve((size_t)n);
  tables.reserve((size_t)n);
  auto keep = [&](i64 slot, PteTable* t) {
    order.push_back(slot);
    tables.push_back(t);
  };
  const size_t ahead = mm.pte.walk_from(p->cursor, (size_t)n, keep);
  if ((i64)ahead < n) mm.pte.walk_from(0, (size_t)n - ahead, keep);
  free_scanned(p, order, &tables, classes, result, min_idle, true);
  p->cursor = order.back() + 1;
  return n;
}

PassResult Simulation::reclaim(Process* target, unsigned classes, i64 budget, i64 min_idle) {
  PassResult result;
  if (budget > 0 && classes) {
    classes &= ~PINNED_BIT;
    Borrowed<Process*> order_buf(order_scratch_);
    std::vector<Process*>& order = order_buf.v;
    if (target) {
      if (target->alive) order.push_back(target);
    } else {
      alive_into(order);
      stable_sort_small(order, [](const Process* a, const Process* b) {
        bool sa = !a->over_soft_limit(), sb = !b->over_soft_limit();
        if (sa != sb) return sa < sb;
        i64 ra = a->reclaimable_tables(), rb = b->reclaimable_tables();
        if (ra != rb) return ra > rb;
        return a->pid < b->pid;
      });
    }
    i64 remaining = budget;
    for (Process* p : order) {
      if (remaining <= 0) break;
      if (!target && p->reclaimable_tables() == 0) break;
      remaining -= reclaim_process(p, classes, remaining, result, min_idle);
    }
  }
  pending.push_back(result);
  return result;
}

PassResult Simulation::reclaim_exact(Process* p, const std::vector<i64>& slots,
                                     unsigned classes) {
  PassResult result;
  if (!slots.empty() && p->alive)
    free_scanned(p, slots, nullptr, classes & ~PINNED_BIT, result, 0, false);
  pending.push_back(result);
  return result;
}

// -------------------------------------------------------------------- clone

std::unique_ptr<Simulation> Simulation::clone(const std::vector<Rng>& workload_rngs,
                                              const Rng& sim_rng) const {
  auto c = std::make_unique<Simulation>();
  c->cfg = cfg;
  c->costs = costs;
  c->machine = machine;
  c->rng = sim_rng;
  c->machine.rng = &c->rng;
  std::map<const BackingFile*, FileRef> files;
  std::vector<Process*> by_index;
  for (const auto& p : procs) {
    auto q = std::make_unique<Process>();
    q->pid = p->pid;
    q->name = p->name;
    q->family = p->family;
    q->mm = p->mm->clone(files);
    q->sane = p->sane;
    q->cpus = p->cpus;
    q->alive = p->alive;
    q->throttled_until = p->throttled_until;
    q->has_soft = p->has_soft;
    q->has_hard = p->has_hard;
    q->soft_limit = p->soft_limit;
    q->hard_limit = p->hard_limit;
    q->cursor = p->cursor;
    q->stall_us = p->stall_us;
    q->last_refault_tables = p->last_refault_tables;
    q->last_refault_entries = p->last_refault_entries;
    q->last_pte_allocated = p->last_pte_allocated;
    std::copy(p->last_refault_class, p->last_refault_class + 3, q->last_refault_class);
    q->refault_rate = p->refault_rate;
    q->growth_rate = p->growth_rate;
    q->history = p->history;
    by_index.push_back(q.get());
    c->procs.push_back(std::move(q));
  }
  for (size_t i = 0; i < workloads.size(); i++) {
    auto w = workloads[i]->clone();
    w->sim = c.get();
    w->rng = workload_rngs[i];
    w->remap(by_index, *this);
    w->remap_files(files);
    c->workloads.push_back(std::move(w));
  }
  c->tick_no = tick_no;
  c->history = history;
  c->events = events;
  c->next_pid = next_pid;
  c->pending = pending;
  c->harm = harm;
  std::copy(refault_class_rate, refault_class_rate + 3, c->refault_class_rate);
  c->recording = recording;
  c->touch_trace = touch_trace;
  return c;
}

// ----------------------------------------------------------------- env step

namespace {
inline double clip(double x) { return std::max(-1.0, std::min(1.0, x)); }
// features.hold_price
inline double hold_price(double free, double wmin, double whigh) {
  double span = std::max(whigh - wmin, 1.0);
  return std::max(0.0, std::min(1.0, (whigh - free) / span));
}
// features._log_rate
inline double log_rate(double x) { return clip(std::log1p(std::max(x, 0.0)) / 5.0); }
const unsigned DEPTHS[3] = {1u << C_EMPTY, (1u << C_EMPTY) | (1u << C_ZERO),
                            (1u << C_EMPTY) | (1u << C_ZERO) | (1u << C_FILE)};
}  // namespace

void EnvCore::attach(Simulation* s) {
  sim = s;
  steps = 0;
  has_last = false;
  ticks_since_pass = 0;
  refaults_since_pass = 0;
  fail_window.clear();
  burst = 0.0;
  burst_primed = false;
  rec_lo = rec_hi = (i64)s->history.size();
}

void EnvCore::reset_ticks() {
  rec_lo = (i64)sim->history.size();
  for (i64 k = 0; k < cfg.decision_ticks; k++) sim->step();
  rec_hi = (i64)sim->history.size();
  collect_info();
}

void EnvCore::collect_info() {
  info_failures = info_freed = 0;
  info_oom.clear();
  for (i64 i = rec_lo; i < rec_hi; i++) {
    const TickRecord& r = sim->history[(size_t)i];
    info_failures += r.failure;
    info_freed += r.reclaim_freed;
    if (r.oom_kill >= 0) info_oom.push_back(r.oom_kill);
  }
  info_reclaimable_last = rec_hi > rec_lo ? sim->history[(size_t)(rec_hi - 1)].reclaimable_tables : 0;
}

void EnvCore::top_consumers(std::vector<Process*>& top) const {
  sim->alive_into(top);
  stable_sort_small(top, [](const Process* a, const Process* b) {
    i64 ta = a->pt_bytes(), tb = b->pt_bytes();
    if (ta != tb) return ta > tb;
    return a->pid < b->pid;
  });
  if (top.size() > (size_t)TOP_K) top.resize(TOP_K);
}

Process* EnvCore::target(i64 choice) const {
  if (choice <= 0) return nullptr;
  Borrowed<Process*> top_buf(top_scratch_);
  std::vector<Process*>& top = top_buf.v;
  top_consumers(top);
  return choice <= (i64)top.size() ? top[(size_t)(choice - 1)] : nullptr;
}

bool EnvCore::apply_action(const i64* a, i64 n) {
  i64 budget = cfg.budgets[(size_t)a[0]];
  unsigned classes = DEPTHS[a[1]];
  i64 min_idle = cfg.idle_levels[(size_t)a[2]];
  Process* t = target(a[3]);
  bool passed = false;
  if (budget > 0 && (a[3] == 0 || t)) {
    last = sim->reclaim(t, classes, budget, min_idle);
    has_last = true;
    ticks_since_pass = 0;
    refaults_since_pass = 0;
    passed = true;
  }
  if (cfg.hard_limit_action && n > 4 && a[4] == 1 && t) {
    t->has_hard = true;
    t->hard_limit = t->pt_bytes();
  }
  return passed;
}

double EnvCore::step(const i64* action, i64 n_action, float* obs, double* terms,
                     bool* truncated) {
  apply_action(action, n_action);
  rec_lo = (i64)sim->history.size();
  for (i64 k = 0; k < cfg.decision_ticks; k++) {
    if (sim->tick_no >= sim->cfg.ticks) break;
    sim->step();
  }
  rec_hi = (i64)sim->history.size();
  steps++;
  i64 n = rec_hi - rec_lo;
  i64 fails = 0, harm = 0;
  double hold = 0.0, cpu = 0.0, stall = 0.0;
  collect_info();
  const MachineConfig& mc = sim->machine.cfg;
  for (i64 i = rec_lo; i < rec_hi; i++) {
    const TickRecord& r = sim->history[(size_t)i];
    double price = hold_price((double)r.normal_free_pages, (double)mc.wmin, (double)mc.whigh);
    hold += (double)(r.reclaimable_tables * 4096) / (double)(1 << 20) * price;
    fails += r.failure;
    cpu += r.reclaim_cpu_us;
    stall += r.stall_us;
    harm += r.harm_events;
  }
  terms[0] = hold / (double)std::max<i64>(n, 1);
  terms[1] = (double)fails;
  terms[2] = cpu / 1000.0;
  terms[3] = stall / 1000.0;
  terms[4] = (double)harm;
  double acc = 0.0;
  for (int k = 0; k < N_TERMS; k++) acc += cfg.w[k] * terms[k];
  *truncated = steps >= cfg.max_steps || sim->tick_no >= sim->cfg.ticks;
  observe(obs);
  return -acc;
}

void step_envs(StepPool& pool, EnvCore* const* envs, i64 n, const i64* actions, i64 k,
               float* obs, i64 width, double* rewards, double* const* terms, bool* truncated) {
  pool.run(n, [&](i64 i) {
    bool tr = false;
    rewards[i] = envs[i]->step(actions + i * k, k, obs + i * width, terms[i], &tr);
    truncated[i] = tr;
  });
}

void EnvCore::observe(float* obs) {
  Simulation& s = *sim;
  const Machine& m = s.machine;
  const double zone = (double)m.cfg.normal_pages;
  for (i64 i = rec_lo; i < rec_hi; i++) {
    const TickRecord& r = s.history[(size_t)i];
    fail_window.push_back((int)r.failure);
    refaults_since_pass += r.refault_tables;
  }
  while (fail_window.size() > 100) fail_window.pop_front();
  ticks_since_pass += rec_hi - rec_lo;
  i64 pt_pages = 0;
  for (const auto& p : s.procs)
    if (p->alive) pt_pages += p->mm->tables();
  Borrowed<Process*> top_buf(top_scratch_);
  std::vector<Process*>& top = top_buf.v;
  top_consumers(top);
  int k = 0;
  obs[k++] = (float)clip((double)(m.normal_free - m.cfg.wmin) /
                         (double)std::max<i64>(m.cfg.whigh - m.cfg.wmin, 1) / 4.0);
  obs[k++] = (float)clip((double)m.normal_free / zone);
  obs[k++] = (float)m.psi.some_avg10;
  obs[k++] = (float)m.psi.some_avg60;
  obs[k++] = (float)m.psi.full_avg10;
  obs[k++] = (float)m.psi.full_avg60;
  obs[k++] = (float)clip((double)pt_pages / zone);
  obs[k++] = (float)hold_price((double)m.normal_free, (double)m.cfg.wmin, (double)m.cfg.whigh);
  for (int i = 0; i < TOP_K; i++) {
    if (i < (int)top.size()) {
      Process* p = top[(size_t)i];
      i64 denom = p->rss_bytes() + p->pt_bytes();
      if (denom == 0) denom = 1;
      obs[k++] = (float)clip((double)p->pt_bytes() / (double)PAGE / zone);
      obs[k++] = (float)((double)p->pt_bytes() / (double)denom);
      obs[k++] = (float)log_rate(p->growth_rate);
      obs[k++] = (float)log_rate(10.0 * p->refault_rate);
      obs[k++] = p->has_hard ? 1.0f : 0.0f;
    } else {
      for (int j = 0; j < 5; j++) obs[k++] = 0.0f;
    }
  }
  obs[k++] = (float)clip(std::log1p((double)refaults_since_pass) / 10.0);
  obs[k++] = (has_last && last.scanned) ? (float)((double)last.freed / (double)last.scanned)
                                        : 0.0f;
  i64 fails = 0;
  for (int f : fail_window) fails += f;
  obs[k++] = (float)((double)fails / (double)std::max<size_t>(fail_window.size(), 1));
  obs[k++] = (float)clip(std::log1p((double)ticks_since_pass) / 10.0);
  for (int c = 0; c < 3; c++) {
    if (!has_last || !last.seen[c]) {
      obs[k++] = 0.0f;
      obs[k++] = 0.0f;
      obs[k++] = 0.0f;
    } else {
      double seen = (double)last.seen[c];
      obs[k++] = (float)clip(std::log1p(seen) / 10.0);
      obs[k++] = (float)((double)last.idle1[c] / seen);
      obs[k++] = (float)((double)last.idle4[c] / seen);
    }
  }
  for (int c = 0; c < 3; c++) obs[k++] = (float)log_rate(10.0 * s.refault_class_rate[c]);
  if (cfg.candidate_counts) {
    double total = (double)std::max<i64>(pt_pages, 1);
    for (int cls = C_EMPTY; cls <= C_FILE; cls++) {
      i64 c = 0;
      for (const auto& p : s.procs)
        if (p->alive) c += p->mm->cls_count[cls];
      obs[k++] = (float)((double)c / total);
    }
  }
  if (cfg.burst_memory) {  // features.burst_drop
    double fall = burst_primed ? std::max((double)(prev_free - m.normal_free), 0.0) / zone : 0.0;
    double decay = std::exp(-((double)(rec_hi - rec_lo) * m.tick_s()) / BURST_DECAY_S);
    burst_primed = true;
    burst = std::max(burst * decay, fall);
    prev_free = m.normal_free;
    obs[k++] = (float)clip(burst);
  }
}

}  // namespace ptfast

namespace ptfast {
std::unique_ptr<Workload> make_workload(const std::string& family, const Params& p) {
  auto it = workload_registry().find(family);
  if (it == workload_registry().end())
    throw std::runtime_error("the compiled core has no workload family " + family);
  return it->second(p);
}
bool has_workload(const std::string& family) { return workload_registry().count(family) > 0; }
}  // namespace ptfast
