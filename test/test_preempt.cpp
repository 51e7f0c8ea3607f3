// Preemption: Gs that never call into the runtime are stopped at the end of their time slice
// (asynchronously, by signal), the interrupted code is never disturbed (it resumes on its own
// thread, whatever it was doing), and no_preempt / async_preempt = false really turn it off.
#include <catch2/catch_test_macros.hpp>
#include <gort/gort.hpp>
#include <pthread.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "sched.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

gort::config cfg(unsigned procs, std::chrono::nanoseconds slice = 10ms, bool async = true) {
  gort::config c;
  c.procs = procs;
  c.time_slice = slice;
  c.async_preempt = async;
  return c;
}

// Keeps the environment from overriding what a test configures.
struct clean_env {
  no_procs_env procs;
  clean_env() {
    for (const char* v : {"GORT_TIME_SLICE", "GORT_ASYNC_PREEMPT", "GORT_SYSMON", "GORT_MAX_THREADS"})
      unsetenv(v);
  }
};

// A loop with no calls at all: nothing in it can yield cooperatively.
void spin_until(const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_relaxed)) {
  }
}

#if defined(__SANITIZE_THREAD__)
// TSan defers asynchronous signals until the thread next enters its runtime (an intercepted
// call), and a loop of plain atomic loads never does: under TSan a call-free spinner cannot be
// interrupted by anyone's signal. The spinners there make one opaque call per iteration, which
// is what lets TSan deliver the signal; the preemption they see is still the asynchronous one
// (the call is not a gort call).
__attribute__((noinline)) void opaque() { asm volatile("" ::: "memory"); }
void spin_until_tsan(const std::atomic<bool>& flag) {
  while (!flag.load(std::memory_order_relaxed)) opaque();
}
#define SPIN spin_until_tsan
#else
#define SPIN spin_until
#endif

}  // namespace

TEST_CASE("procs=1: a G spinning without calls is preempted and another G sets its flag", "[preempt]") {
  clean_env env;
  const int rounds = static_cast<int>(std::max<long>(3, 20 / test_scale()));
  for (int r = 0; r < rounds; ++r) {
    std::atomic<bool> flag{false};
    std::uint64_t before = gort::rt::sched.npreempted.load();
    gort::run(cfg(1, 1ms), [&] {
      gort::wait_group wg;
      wg.add(2);
      gort::go([&] {
        // The setter is queued behind this G on the only P: it runs only if we are stopped.
        gort::go([&] {
          flag.store(true, std::memory_order_relaxed);
          wg.done();
        });
        SPIN(flag);
        wg.done();
      });
      wg.wait();
    });
    REQUIRE(flag.load());
    // It was the signal: the spinner held the only P and had to be stopped.
    REQUIRE(gort::rt::sched.npreempted.load() > before);
  }
}

TEST_CASE("procs=2: four spinners and one setter; every spinner finishes", "[preempt]") {
  clean_env env;
  std::atomic<bool> flag{false};
  std::atomic<int> finished{0};
  gort::run(cfg(2, 1ms), [&] {
    gort::wait_group wg;
    for (int i = 0; i < 4; ++i) {
      wg.add(1);
      gort::go([&, i] {
        if (i == 3) gort::go([&] { flag.store(true, std::memory_order_relaxed); });
        SPIN(flag);
        finished.fetch_add(1);
        wg.done();
      });
    }
    wg.wait();
  });
  REQUIRE(finished.load() == 4);
}

TEST_CASE("a preempted G resumes on the thread it was interrupted on, its thread_locals intact",
          "[preempt]") {
  clean_env env;
  static thread_local long tl_counter = 0;
  std::atomic<bool> stop{false};
  std::atomic<long> bad{0}, loops{0};
  std::uint64_t before = gort::rt::sched.npreempted.load();
  gort::run(cfg(2, 200us), [&] {
    gort::wait_group wg;
    for (int i = 0; i < 6; ++i) {
      wg.add(1);
      gort::go([&] {
        while (!stop.load(std::memory_order_relaxed)) {
          // No gort call in here: only an asynchronous preemption can stop this G, and it must
          // not move it. The compiler may keep &tl_counter in a register across the loop.
          const pthread_t self = pthread_self();
          const long start = tl_counter;
          for (long k = 0; k < 2'000'000 / test_scale(); ++k) {
            tl_counter = tl_counter + 1;
            asm volatile("" ::: "memory");
          }
          if (tl_counter - start != 2'000'000 / test_scale() || !pthread_equal(self, pthread_self()))
            bad.fetch_add(1);
          loops.fetch_add(1);
          gort::yield();  // a voluntary switch may move us: fine, the next round re-reads
        }
        wg.done();
      });
    }
    gort::sleep_for(std::chrono::milliseconds(1500 / test_scale() + 100));
    stop = true;
    wg.wait();
  });
  REQUIRE(bad.load() == 0);
  REQUIRE(loops.load() > 6);
  REQUIRE(gort::rt::sched.npreempted.load() > before);
}
