// Ports of envs/sim/workloads/{uffd,shared_file,virtio_mem}.py.
//
// The Python modules are the reference (they say *why*); each method here names the Python
// method it ports and keeps its random draws, in the same order and under the same
// conditions.  Processes are held as indices into `procs` (not as extra pointers), so that
// Workload::remap re-points all of them after a clone.
#include <atomic>
#include <deque>
#include <string>

#include "workloads.hpp"

namespace ptfast {
namespace {

// ---------------------------------------------------------------------- uffd

// Identities of userfaultfd contexts (the Python `object()`): unique, non-zero.
// Atomic for step_batch's helper threads (ids are compared for equality only).
std::atomic<i64> g_uffd_ctx_ids{0};

enum UPhase { U_PRECOPY, U_DISCARD, U_POSTCOPY, U_DONE };

// uffd.UffdMigration.
class UffdMigration : public Workload {
 public:
  i64 guest_mib, vcpus, dirty_kib, zero_run_mib, stream_mib_per_tick, faults_per_tick,
      discard_slots_per_tick;
  double precopy_fraction, dirty_fraction, zero_fraction;
  i64 size = 0, n_slots = 0, precopy_end = 0, cursor = 0, ctx = 0;
  std::vector<uint8_t> zero;
  std::vector<i64> pending, dirty;
  int phase = U_PRECOPY;
  bool registered = false;

  explicit UffdMigration(const Params& c) {
    guest_mib = c.geti("guest_mib");
    vcpus = c.geti("vcpus");
    precopy_fraction = c.get("precopy_fraction");
    dirty_fraction = c.get("dirty_fraction");
    dirty_kib = c.geti("dirty_kib");
    zero_fraction = c.get("zero_fraction");
    zero_run_mib = c.geti("zero_run_mib");
    stream_mib_per_tick = c.geti("stream_mib_per_tick");
    faults_per_tick = c.geti("faults_per_tick");
    discard_slots_per_tick = c.geti("discard_slots_per_tick");
  }

  Process* proc() const { return procs[0]; }

  void start() override {
    Process* p = spawn("", vcpus);
    size = guest_mib * MiB;
    mmap_anon(*p->mm, BASE, size);
    n_slots = (size + PTE_SPAN - 1) >> PTE_SHIFT;
    zero_runs();
    precopy_end = py_round(precopy_fraction * (double)n_slots);
    phase = U_PRECOPY;
    registered = false;
    ctx = g_uffd_ctx_ids.fetch_add(1, std::memory_order_relaxed) + 1;
    cursor = 0;
    pending.clear();
    dirty.clear();
  }

  // _zero_runs
  void zero_runs() {
    const double z = zero_fraction;
    zero.assign((size_t)n_slots, 0);
    if (z <= 0.0 || z >= 1.0) {
      std::fill(zero.begin(), zero.end(), (uint8_t)(z >= 1.0));
      return;
    }
    const double mean_zero = std::max(1.0, (double)zero_run_mib / 2.0);
    const double mean_data = std::max(1.0, mean_zero * (1.0 - z) / z);
    i64 pos = 0;
    bool state = rng.random() < z;
    while (pos < n_slots) {
      i64 n = rng.geometric(1.0 / (state ? mean_zero : mean_data));
      i64 hi = std::min(pos + n, n_slots);
      std::fill(zero.begin() + pos, zero.begin() + hi, (uint8_t)state);
      pos += n;
      state = !state;
    }
  }

  void step(i64 tick) override {
    Process* p = proc();
    if (!p->runnable(tick)) return;
    AddressSpace& mm = *p->mm;
    const i64 per_tick = std::max<i64>(1, (stream_mib_per_tick * MiB) >> PTE_SHIFT);
    if (phase == U_PRECOPY) {
      i64 end = std::min(precopy_end, cursor + per_tick);
      deliver(mm, cursor, end, nullptr);
      cursor = end;
      if (cursor >= precopy_end) begin_discard();
    } else if (phase == U_DISCARD) {
      discard(mm);
    } else if (phase == U_POSTCOPY) {
      demand_faults(mm);
      i64 lo = std::min<i64>(cursor, (i64)pending.size());
      i64 hi = std::min<i64>(cursor + per_tick, (i64)pending.size());
      deliver(mm, lo, hi, pending.data());
      cursor += hi - lo;
      if (cursor >= (i64)pending.size()) {
        mm.register_uffd(BASE, BASE + size, 0);  // UFFDIO_UNREGISTER
        registered = false;
        phase = U_DONE;
      }
    }
  }

  // _deliver of the slots slots[lo:hi] (or of lo..hi-1 when slots is null): whole slots,
  // data written, zero runs read.
  void deliver(AddressSpace& mm, i64 lo, i64 hi, const i64* slots) {
    i64 i = lo;
    while (i < hi) {
      // index_runs: a run of consecutive slot numbers [a, b).
      i64 a = slots ? slots[i] : i;
      i64 b = a + 1;
      i++;
      while (i < hi && (slots ? slots[i] : i) == b) {
        b++;
        i++;
      }
      // The edges where zero[] changes inside the run cut it into touches.
      i64 s = a;
      for (i64 e = a + 1; e <= b; e++) {
        if (e < b && zero[(size_t)e] == zero[(size_t)(e - 1)]) continue;
        i64 start = BASE + (s << PTE_SHIFT);
        i64 length = std::min(e << PTE_SHIFT, size) - (s << PTE_SHIFT);
        mm.touch(start, length, !zero[(size_t)s], PAGE);
        s = e;
      }
    }
  }

  // _begin_discard
  void begin_discard() {
    dirty.clear();
    for (i64 i = 0; i < precopy_end; i++)
      if (rng.random() < dirty_fraction) dirty.push_back(i);
    for (i64 d : dirty) zero[(size_t)d] = 0;  // the guest wrote them on the source
    pending = dirty;
    for (i64 s = precopy_end; s < n_slots; s++) pending.push_back(s);
    cursor = 0;
    phase = U_DISCARD;
  }

  // _discard
  void discard(AddressSpace& mm) {
    i64 lo = std::min<i64>(cursor, (i64)dirty.size());
    i64 hi = std::min<i64>(cursor + discard_slots_per_tick, (i64)dirty.size());
    i64 n = hi - lo;
    const i64 run = dirty_kib * KiB;
    std::vector<i64> offs((size_t)n);
    if (n > 0) rng.integers(0, (PTE_SPAN - run) / PAGE + 1, n, offs.data());
    for (i64 k = 0; k < n; k++) {
      i64 a = BASE + (dirty[(size_t)(lo + k)] << PTE_SHIFT) + offs[(size_t)k] * PAGE;
      if (a < BASE + size) mm.madvise(a, std::min(run, BASE + size - a), A_DONTNEED);
    }
    cursor += n;
    if (cursor >= (i64)dirty.size()) {
      mm.register_uffd(BASE, BASE + size, ctx);  // POSTCOPY_LISTEN
      registered = true;
      cursor = 0;
      phase = U_POSTCOPY;
    }
  }

  // _demand_faults
  void demand_faults(AddressSpace& mm) {
    i64 first = std::min<i64>(cursor, (i64)pending.size());
    i64 n_left = (i64)pending.size() - first;
    i64 k = std::min(faults_per_tick, n_left);
    if (k == 0) return;
    std::vector<i64> idx((size_t)k), pages((size_t)k);
    rng.integers(0, n_left, k, idx.data());
    rng.integers(0, PTE_SPAN / PAGE, k, pages.data());
    for (i64 j = 0; j < k; j++) {
      i64 slot = pending[(size_t)(first + idx[(size_t)j])];
      i64 a = BASE + (slot << PTE_SHIFT) + pages[(size_t)j] * PAGE;
      if (a < BASE + size) mm.touch(a, PAGE, !zero[(size_t)slot], PAGE);
    }
  }

  std::unique_ptr<Workload> clone() const override {
    // The context id is copied: in the copy it names the copy's context (the VMAs' clones
    // carry the same id), as deepcopy keeps the workload's and the VMAs' `object()` one.
    return std::make_unique<UffdMigration>(*this);
  }
};

// --------------------------------------------------------------- shared_file

// shared_file.SharedFile.
class SharedFile : public Workload {
 public:
  i64 file_gib, n_readers, regions_per_tick, region_mib, pages_per_slot;
  double write_fraction, punch_prob, restart_prob;
  i64 size = 0, region = 0, n_regions = 0, stride = 0;
  FileRef file;
  std::vector<size_t> readers;  // indices into procs
  i64 restarts = 0, punches = 0, serial = 0;

  explicit SharedFile(const Params& c) {
    file_gib = c.geti("file_gib");
    n_readers = c.geti("readers");
    regions_per_tick = c.geti("regions_per_tick");
    region_mib = c.geti("region_mib");
    pages_per_slot = c.geti("pages_per_slot");
    write_fraction = c.get("write_fraction");
    punch_prob = c.get("punch_prob");
    restart_prob = c.get("restart_prob");
  }

  void start() override {
    size = file_gib * GiB;
    file = std::make_shared<BackingFile>();
    file->kind = 0;  // "file"
    file->size = size;
    region = region_mib * MiB;
    n_regions = size / region;
    stride = PTE_SPAN / pages_per_slot;
    readers.clear();
    restarts = punches = serial = 0;
    for (i64 k = 0; k < n_readers; k++) readers.push_back(new_reader());
  }

  Process* first_live() const {
    for (size_t r : readers)
      if (procs[r]->alive) return procs[r];
    return nullptr;
  }

  // _new_reader: a fork of the first live reader (no tables copied: R18), or a process
  // that maps the file itself.
  size_t new_reader() {
    Process* parent = first_live();
    Process* p = spawn(".r" + std::to_string(serial));
    serial++;
    if (parent)
      p->mm = parent->mm->fork();  // the spawned (empty) address space goes
    else
      p->mm->mmap(BASE, size, 1, true, RW, file, 0, true, false, false);
    return procs.size() - 1;
  }

  void step(i64 tick) override {
    if (restart_prob > 0) {
      for (size_t i = 0; i < readers.size(); i++) {
        Process* r = procs[readers[i]];
        if (r->alive && rng.random() < restart_prob) {
          sim->exit_process(r, "reader restarted");
          readers[i] = new_reader();
          restarts++;
        }
      }
    }
    const i64 window = stride / PAGE;
    for (size_t ri : readers) {
      Process* r = procs[ri];
      if (!r->runnable(tick)) continue;
      for (i64 q = 0; q < regions_per_tick; q++) {
        i64 k = rng.integers(0, n_regions);
        bool write = rng.random() < write_fraction;
        // A random page inside each slot's stride window: not always page 0.
        i64 off = rng.integers(0, window) * PAGE;
        r->mm->touch(BASE + k * region + off, region - off, write, stride);
      }
    }
    if (punch_prob > 0 && rng.random() < punch_prob) {
      if (first_live()) {
        i64 k = rng.integers(0, n_regions);
        AddressSpace::punch(*file, k * region, region);
        punches++;
      }
    }
  }

  void remap_files(std::map<const BackingFile*, FileRef>& files) override {
    file = copy_file(files, file);
  }

  std::unique_ptr<Workload> clone() const override {
    // `file` still names the original here; Simulation::clone rebinds it to the copy its
    // processes' mappings share (remap_files).
    return std::make_unique<SharedFile>(*this);
  }
};

// ---------------------------------------------------------------- virtio_mem

enum VBacking { V_ANON, V_SHMEM, V_FILE };

// virtio_mem.VirtioMem.
class VirtioMem : public Workload {
 public:
  i64 region_mib, block_mib, boot_mib, initial_plugged_mib, min_plugged_mib, max_plugged_mib,
      resize_period_ticks, rate_mib_per_tick, touch_mib_per_tick, boot_fill_mib_per_tick,
      vcpus;
  int backing = V_ANON;
  bool punch_then_dontneed = false;
  double unplug_busy_prob;
  i64 boot = 0, block = 0, region = 0;
  FileRef file;
  std::vector<uint8_t> plugged;
  i64 n_plugged = 0, requested = 0, head_done = 0, filled = 0, next_resize = -1;
  std::deque<i64> queue;  // plugged blocks the guest has not written yet
  bool booting = false;   // phase "boot" (else "run")

  explicit VirtioMem(const Params& c) {
    region_mib = c.geti("region_mib");
    block_mib = c.geti("block_mib");
    boot_mib = c.geti("boot_mib");
    const std::string& b = c.gets("backing");
    backing = b == "anon" ? V_ANON : b == "shmem" ? V_SHMEM : V_FILE;
    punch_then_dontneed = c.get("punch_then_dontneed") != 0.0;
    initial_plugged_mib = c.geti("initial_plugged_mib");
    min_plugged_mib = c.geti("min_plugged_mib");
    max_plugged_mib = c.geti("max_plugged_mib");
    resize_period_ticks = c.geti("resize_period_ticks");
    rate_mib_per_tick = c.geti("rate_mib_per_tick");
    touch_mib_per_tick = c.geti("touch_mib_per_tick");
    unplug_busy_prob = c.get("unplug_busy_prob");
    boot_fill_mib_per_tick = c.geti("boot_fill_mib_per_tick");
    vcpus = c.geti("vcpus");
  }

  Process* proc() const { return procs[0]; }

  void start() override {
    Process* p = spawn("", vcpus);
    AddressSpace& mm = *p->mm;
    boot = boot_mib * MiB;
    block = block_mib * MiB;
    i64 n_blocks = region_mib / block_mib;
    // The device region lies above boot RAM, aligned like QEMU's device memory.
    region = BASE + ((boot + PMD_SPAN - 1) / PMD_SPAN) * PMD_SPAN;
    i64 sz = n_blocks * block;
    file = nullptr;
    if (boot) mmap_anon(mm, BASE, boot);
    if (backing == V_ANON) {
      mmap_anon(mm, region, sz);
    } else if (backing == V_SHMEM) {
      mm.mmap(region, sz, 0, true, RW, nullptr, 0, false, false, false);
    } else {
      file = std::make_shared<BackingFile>();
      file->kind = 0;  // "file"
      file->size = sz;
      mm.mmap(region, sz, 1, true, RW, file, 0, false, false, false);
    }
    plugged.assign((size_t)n_blocks, 0);
    n_plugged = 0;
    requested = blocks(initial_plugged_mib);
    queue.clear();
    head_done = 0;
    filled = 0;
    booting = boot != 0;
    next_resize = -1;
  }

  // _blocks
  i64 blocks(i64 mib) const { return std::min<i64>((i64)plugged.size(), mib / block_mib); }

  void step(i64 tick) override {
    Process* p = proc();
    if (!p->runnable(tick)) return;
    AddressSpace& mm = *p->mm;
    if (booting) {
      i64 n = std::min(boot_fill_mib_per_tick * MiB, boot - filled);
      mm.touch(BASE + filled, n, true, PAGE);
      filled += n;
      if (filled >= boot) booting = false;
      return;
    }
    if (next_resize < 0) {
      next_resize = tick + resize_period_ticks;
    } else if (tick >= next_resize) {
      i64 mib = rng.integers(min_plugged_mib, max_plugged_mib + 1);
      requested = blocks(mib);
      next_resize = tick + resize_period_ticks;
    }
    i64 rate = std::max<i64>(1, rate_mib_per_tick / block_mib);
    i64 diff = requested - n_plugged;
    if (diff > 0)
      plug(std::min(diff, rate));
    else if (diff < 0)
      unplug(mm, std::min(-diff, rate));
    touch(mm);
  }

  // _plug: the k lowest unplugged blocks.
  void plug(i64 k) {
    i64 n = (i64)plugged.size();
    for (i64 b = 0, got = 0; b < n && got < k; b++) {
      if (plugged[(size_t)b]) continue;
      plugged[(size_t)b] = 1;
      n_plugged++;
      queue.push_back(b);
      got++;
    }
  }

  // _unplug: up to k of the highest plugged blocks, skipping busy ones; each contiguous
  // range is one request and one discard.
  void unplug(AddressSpace& mm, i64 k) {
    std::vector<i64> cand;
    const i64 want = 4 * k + 8;
    for (i64 b = (i64)plugged.size() - 1; b >= 0 && (i64)cand.size() < want; b--)
      if (plugged[(size_t)b]) cand.push_back(b);
    std::vector<i64> chosen;
    for (i64 c : cand) {
      bool free = rng.random() >= unplug_busy_prob;  // one draw per candidate, in order
      if (free && (i64)chosen.size() < k) chosen.push_back(c);
    }
    std::sort(chosen.begin(), chosen.end());
    for (i64 c : chosen) plugged[(size_t)c] = 0;
    n_plugged -= (i64)chosen.size();
    for (auto [a, b] : index_runs(chosen)) discard(mm, a * block, (b - a) * block);
  }

  // _discard: QEMU's ram_block_discard_range for the device region's backing.
  void discard(AddressSpace& mm, i64 off, i64 length) {
    if (backing == V_ANON) {
      mm.madvise(region + off, length, A_DONTNEED);
    } else if (backing == V_SHMEM) {
      mm.madvise(region + off, length, A_REMOVE);
    } else {
      AddressSpace::punch(*file, off, length);
      if (punch_then_dontneed) mm.madvise(region + off, length, A_DONTNEED);
    }
  }

  // _touch: the guest writes newly plugged blocks, touch_mib_per_tick a tick.
  void touch(AddressSpace& mm) {
    i64 budget = touch_mib_per_tick * MiB;
    std::vector<std::pair<i64, i64>> ranges;
    while (budget > 0 && !queue.empty()) {
      i64 blk = queue.front();
      if (!plugged[(size_t)blk]) {
        queue.pop_front();
        head_done = 0;
        continue;
      }
      i64 a = region + blk * block + head_done;
      i64 n = std::min(budget, block - head_done);
      budget -= n;
      if (!ranges.empty() && ranges.back().second == a)
        ranges.back().second = a + n;
      else
        ranges.emplace_back(a, a + n);
      head_done += n;
      if (head_done >= block) {
        queue.pop_front();
        head_done = 0;
      }
    }
    for (auto [a, b] : ranges) mm.touch(a, b - a, true, PAGE);
  }

  void remap_files(std::map<const BackingFile*, FileRef>& files) override {
    file = copy_file(files, file);
  }

  std::unique_ptr<Workload> clone() const override {
    return std::make_unique<VirtioMem>(*this);
  }
};

RegisterWorkload reg_uffd("uffd",
                          [](const Params& c) { return std::make_unique<UffdMigration>(c); });
RegisterWorkload reg_shared_file(
    "shared_file", [](const Params& c) { return std::make_unique<SharedFile>(c); });
RegisterWorkload reg_virtio_mem("virtio_mem",
                                [](const Params& c) { return std::make_unique<VirtioMem>(c); });

}  // namespace
}  // namespace ptfast
