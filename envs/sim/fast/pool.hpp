// Helper threads for the batched vector env: step_batch runs its envs' decisions on the
// calling thread and on these helpers at once (with the GIL released).  The envs share
// no state, so who steps which env changes nothing in any result; only the global id
// counters (anon_vma and userfaultfd ids, compared for equality only) are shared, and
// they are atomic.
//
// Why a pool of its own and not OpenMP or SB3's SubprocVecEnv: a decision takes ~30 us,
// which is less than a process round trip (SubprocVecEnv is slower than one process on
// 2 cores) and less than an idle thread's wake-up in a VM.  The helpers therefore spin
// for a while after each batch (the learner's forward pass between two batches is far
// shorter), then sleep on a condition variable, so a pool costs no CPU while the learner
// trains.  Items are claimed from one atomic counter, so a helper that wakes late only
// leaves more envs to the caller; the batch then waits for it to check in, so it is never
// slower than on the caller alone by more than one wake-up (the caller yields its core
// while it waits, for a helper the scheduler has not run yet).  A helper that cannot be
// started (a thread limit) leaves its share to the others.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PTFAST_RELAX() _mm_pause()
#else
#define PTFAST_RELAX() std::this_thread::yield()
#endif

namespace ptfast {

// How many forks this process's line has gone through: a pthread_atfork handler adds one
// in every child.  A pool compares it with the count it started at, so a forked child (no
// helper threads, the parent's State copied) always knows it is one.  Comparing process ids
// does not: a grandchild forked after the grandparent died may get the grandparent's
// recycled pid, and would then wait for helpers it does not have.  Registered at the first
// call, which start() makes before any helper exists.
inline uint64_t fork_generation() {
  static std::atomic<uint64_t> forks{0};
  static const int registered =
      pthread_atfork(nullptr, nullptr, [] { forks.fetch_add(1, std::memory_order_relaxed); });
  (void)registered;
  return forks.load(std::memory_order_relaxed);
}

class StepPool {
 public:
  // `threads` counts the caller: 1 means no helper.  `spin_us`: how long an idle helper
  // polls before it sleeps.  `on_exit`: what a helper runs before it ends (frees what it
  // kept for itself), or null.
  StepPool(int threads, int spin_us, void (*on_exit)() = nullptr)
      : threads_(threads < 1 ? 1 : threads), spin_us_(spin_us), on_exit_(on_exit) {}
  ~StepPool() { stop(); }
  StepPool(const StepPool&) = delete;
  StepPool& operator=(const StepPool&) = delete;

  int threads() const { return threads_; }
  // Envs stepped by helpers so far (a diagnostic: the tests check the helpers work).
  int64_t helper_steps() const { return state_ == nullptr ? 0 : state_->helper_steps.load(); }

  // f(i) for every i in [0, n), on the caller and the helpers; returns when all are done.
  void run(int64_t n, const std::function<void(int64_t)>& f) {
    if (threads_ <= 1 || n < 2) {
      for (int64_t i = 0; i < n; i++) f(i);
      return;
    }
    State& s = start();
    if (s.helpers.empty()) {  // none could be started
      for (int64_t i = 0; i < n; i++) f(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(s.mu);
      s.job = &f;
      s.n = n;
      s.next.store(0, std::memory_order_relaxed);
      s.active.store((int)s.helpers.size(), std::memory_order_relaxed);
      s.gen.fetch_add(1, std::memory_order_release);
    }
    s.cv.notify_all();
    drain(s, f, n);
    // A helper that wakes late finds nothing left, but the next batch must wait for it.
    // Poll briefly, then yield: with more threads than free cores the helper may be
    // waiting for this very core.
    for (int polls = 0; s.active.load(std::memory_order_acquire) != 0; polls++) {
      if (polls < 4096)
        PTFAST_RELAX();
      else
        std::this_thread::yield();
    }
  }

 private:
  // Everything the helpers share with the caller.  On the heap, so that a forked child
  // (which has the parent's memory but none of its threads, and maybe a mutex a helper
  // held at the fork) starts a fresh one and leaves the copy alone.
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<uint64_t> gen{0};
    std::atomic<int64_t> next{0};
    std::atomic<int> active{0};
    std::atomic<int64_t> helper_steps{0};
    const std::function<void(int64_t)>* job = nullptr;
    int64_t n = 0;
    bool quit = false;
    std::vector<std::thread> helpers;
  };

  // Items until none is left; how many this thread took.
  static int64_t drain(State& s, const std::function<void(int64_t)>& f, int64_t n) {
    int64_t took = 0;
    for (int64_t i; (i = s.next.fetch_add(1, std::memory_order_relaxed)) < n; took++) f(i);
    return took;
  }

  // The helpers, started on first use, and again in a forked child.
  State& start() {
    const uint64_t forks = fork_generation();
    if (state_ != nullptr && forks == forks_) return *state_;
    // In a forked child the parent's State is left as it is (destroying its std::thread
    // objects, which name no thread here, would abort): a few hundred bytes.
    forks_ = forks;
    state_ = new State();
    State* s = state_;
    const int spin_us = spin_us_;
    void (*on_exit)() = on_exit_;
    try {
      for (int t = 1; t < threads_; t++)
        s->helpers.emplace_back([s, spin_us, on_exit] { loop(*s, spin_us, on_exit); });
    } catch (const std::exception&) {
      // No more threads (a process or container limit): the ones started do the work.
    }
    return *state_;
  }

  void stop() {
    if (state_ == nullptr || fork_generation() != forks_) return;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->quit = true;
      state_->gen.fetch_add(1, std::memory_order_release);
    }
    state_->cv.notify_all();
    for (auto& t : state_->helpers) t.join();
    delete state_;
    state_ = nullptr;
  }

  // A helper: wait for a new batch (poll, then sleep), take envs until none is left.
  // It starts at generation 0, before the first batch (start() runs before run() bumps it).
  static void loop(State& s, int spin_us, void (*on_exit)()) {
    uint64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
      int polls = 0;
      while (s.gen.load(std::memory_order_acquire) == seen) {
        PTFAST_RELAX();
        if (++polls % 64 == 0 && std::chrono::steady_clock::now() >= until) {
          std::unique_lock<std::mutex> lock(s.mu);
          s.cv.wait(lock, [&] { return s.gen.load(std::memory_order_acquire) != seen; });
          break;
        }
      }
      const std::function<void(int64_t)>* f;
      int64_t n;
      {
        std::lock_guard<std::mutex> lock(s.mu);
        seen = s.gen.load(std::memory_order_acquire);
        if (s.quit) {
          if (on_exit != nullptr) on_exit();
          return;
        }
        f = s.job;
        n = s.n;
      }
      s.helper_steps.fetch_add(drain(s, *f, n), std::memory_order_relaxed);
      s.active.fetch_sub(1, std::memory_order_release);
    }
  }

  const int threads_;
  const int spin_us_;
  void (*const on_exit_)();
  State* state_ = nullptr;
  uint64_t forks_ = 0;  // fork_generation() when state_ was made
};

}  // namespace ptfast
