// A compiled trace-replay program (trace.compile_trace's output, encoded as integers).
#pragma once

#include <memory>
#include <vector>

#include "sim.hpp"

namespace ptfast {

// One operation is TRACE_OP_WIDTH integers: the opcode, then its arguments (see
// envs/sim/fast/simulation.py, _encode_program, which writes them).
constexpr int TRACE_OP_WIDTH = 10;
enum TraceOp : int {
  TOP_TOUCH, TOP_MADVISE, TOP_MUNMAP, TOP_MPROTECT, TOP_MREMAP, TOP_MMAP, TOP_INSTALL
};
// The key of an install of a MAP_SHARED|MAP_ANONYMOUS VMA: a fresh shmem object each time.
constexpr long TRACE_KEY_SHM_ANON = -2;

struct TraceProgram {
  std::vector<i64> ops;       // n_ops * TRACE_OP_WIDTH
  std::vector<i64> offsets;   // samples + 1: ops of sample k are [offsets[k], offsets[k+1])
  std::vector<uint8_t> key_shmem;  // per file key: shmem (1) or file (0)
  std::vector<double> t_ms;   // sample times
  i64 samples() const { return (i64)offsets.size() - 1; }
};

void set_trace_program(Workload& w, std::shared_ptr<const TraceProgram> prog);

}  // namespace ptfast
