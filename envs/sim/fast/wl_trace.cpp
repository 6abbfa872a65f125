// Port of the replay side of envs/sim/workloads/trace.py (TracePlayer, TraceWorkload).
// A trace is compiled into a fixed program of model operations once, in Python
// (trace.compile_trace); the compiled core runs that program (TraceProgram, built by
// _fast.pyx from the Python program) exactly as TracePlayer does.
#include <stdexcept>

#include "trace_program.hpp"
#include "workloads.hpp"

namespace ptfast {

namespace {

// trace._Files: the backing files of one replayed process, by key.
struct Files {
  std::map<i64, FileRef> by_key;
  FileRef get(const TraceProgram& prog, i64 key) {
    auto it = by_key.find(key);
    if (it != by_key.end()) return it->second;
    auto f = std::make_shared<BackingFile>();
    f->kind = prog.key_shmem[(size_t)key] ? 1 : 0;
    f->size = i64{1} << 46;  // trace._FILE_SIZE
    by_key.emplace(key, f);
    return f;
  }
};

// trace._apply for one encoded operation.
void apply_op(AddressSpace& mm, Files& files, const TraceProgram& prog, const i64* a) {
  switch (a[0]) {
    case TOP_TOUCH:
      mm.touch(a[1], a[2], a[3] != 0, PAGE);
      break;
    case TOP_MADVISE:
      mm.madvise(a[1], a[2], (int)a[3]);
      break;
    case TOP_MUNMAP:
      mm.munmap(a[1], a[2]);
      break;
    case TOP_MPROTECT:
      mm.mprotect(a[1], a[2], a[3]);
      break;
    case TOP_MREMAP:
      mm.mremap(a[1], a[2], a[3], a[4] != 0, a[5], a[6] != 0);
      break;
    case TOP_MMAP: {
      FileRef file = a[3] >= 0 ? files.get(prog, a[3]) : nullptr;
      mm.mmap(a[1], a[2], file ? 1 : 0, a[4] != 0, a[5], file, a[6], a[7] != 0, a[8] != 0,
              a[9] != 0);
      break;
    }
    case TOP_INSTALL: {
      FileRef file;
      if (a[5] == TRACE_KEY_SHM_ANON) {
        file = std::make_shared<BackingFile>();
        file->kind = 1;
        file->size = a[2] - a[1];
        file->anon = true;
      } else if (a[5] >= 0) {
        file = files.get(prog, a[5]);
      }
      mm.install_vma(a[1], a[2], a[3], a[4], file, a[6] != 0);
      break;
    }
  }
}

class TraceWorkload : public Workload {
 public:
  std::shared_ptr<const TraceProgram> prog;
  double speed, offset_s;
  int end_mode;  // 0 exit, 1 idle, 2 loop
  Files files;
  i64 sample = -1;
  double t_first = 0;
  i64 tick0 = 0;
  bool done = false;

  explicit TraceWorkload(const Params& c) {
    speed = c.get("speed");
    offset_s = c.get("offset_s");
    const std::string& e = c.gets("end");
    end_mode = e == "exit" ? 0 : e == "idle" ? 1 : 2;
  }

  // np.searchsorted(t_ms, t, side="right") - 1
  i64 sample_at(double t) const {
    const auto& tm = prog->t_ms;
    return (i64)(std::upper_bound(tm.begin(), tm.end(), t) - tm.begin()) - 1;
  }

  void advance_to(i64 target) {
    i64 last = std::min<i64>(target, prog->samples() - 1);
    AddressSpace& mm = *proc->mm;
    while (sample < last) {
      sample++;
      for (i64 k = prog->offsets[(size_t)sample]; k < prog->offsets[(size_t)sample + 1]; k++)
        apply_op(mm, files, *prog, &prog->ops[(size_t)(k * TRACE_OP_WIDTH)]);
    }
  }

  void begin(i64 tick) {
    proc = spawn(procs.empty() ? "" : "." + std::to_string(procs.size()));
    files = Files();
    sample = -1;
    t_first = offset_s * 1000.0;
    i64 first = sample_at(t_first);
    advance_to(std::max<i64>(0, first));
    tick0 = tick;
    done = false;
  }

  void start() override { begin(sim->tick_no); }

  void step(i64 tick) override {
    if (done || !proc->runnable(tick)) return;
    double tick_ms = sim->machine.cfg.tick_ms;
    double t = t_first + (double)(tick - tick0 + 1) * tick_ms * speed;
    i64 k = sample_at(t);
    advance_to(k);
    if (k >= prog->samples() - 1) {
      if (end_mode == 1) {
        done = true;
      } else if (end_mode == 0) {
        sim->exit_process(proc, "trace ended");
        done = true;
      } else {
        sim->exit_process(proc, "trace ended (looping)");
        begin(tick + 1);
      }
    }
  }

  std::unique_ptr<Workload> clone() const override {
    return std::make_unique<TraceWorkload>(*this);
  }

  void remap_files(std::map<const BackingFile*, FileRef>& map) override {
    for (auto& kv : files.by_key) kv.second = copy_file(map, kv.second);
  }
};

RegisterWorkload reg_trace("trace",
                           [](const Params& c) { return std::make_unique<TraceWorkload>(c); });

}  // namespace

void set_trace_program(Workload& w, std::shared_ptr<const TraceProgram> prog) {
  auto* t = dynamic_cast<TraceWorkload*>(&w);
  if (!t) throw std::runtime_error("not a trace workload");
  t->prog = std::move(prog);
}

}  // namespace ptfast
