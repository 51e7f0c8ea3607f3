// Holding Gs for preemption wherever they are, inside malloc included: sysmon and the hand-off
// paths never create a thread or allocate (mfactory.cpp does that), so a G stopped with the
// allocator's lock held never wedges the runtime; the parked reserve refills.
//
// The process allocates with glibc's malloc (test/meson.build puts libc ahead of libmimalloc,
// as in a program linked against libgort.so only), with one arena (mallopt(M_ARENA_MAX, 1)
// before main, before any thread exists): every thread then shares the main arena's lock, as
// glibc makes threads do once they outnumber its arenas, so a G stopped inside malloc holds
// the lock every other allocation in the process needs, thread creation's included. The
// runtime's own allocations go to mimalloc.
#include <catch2/catch_test_macros.hpp>
#include <gort/gort.hpp>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "child.hpp"
#include "probes.hpp"
#include "gort_build_config.h"
#include "sched.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

[[maybe_unused]] const int one_arena = mallopt(M_ARENA_MAX, 1);

struct hold_result {
  long done = 0;
  std::uint64_t preempted = 0;
};

// gs Gs each run `iters` rounds of allocating and freeing blocks too large for glibc's
// per-thread cache (so every call takes the arena lock), with no runtime call in between: each
// is stopped by the preemption signal wherever it is, often inside malloc or free.
hold_result malloc_loops(unsigned procs, int gs, long iters) {
  gort::config c;
  c.procs = procs;
  c.time_slice = 200us;
  std::atomic<long> done{0};
  const std::uint64_t before = gort::rt::sched.npreempted.load();
  gort::run(c, [&] {
    gort::wait_group wg;
    wg.add(gs);
    for (int k = 0; k < gs; ++k) {
      gort::go([&, k] {
        void* keep[8] = {};
        std::uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<unsigned>(k + 1);
        for (long i = 0; i < iters; ++i) {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          const std::size_t slot = x % 8;
          std::free(keep[slot]);
          keep[slot] = std::malloc(2048 + x % 30000);
          static_cast<char*>(keep[slot])[0] = 1;
        }
        for (void* p : keep) std::free(p);
        done.fetch_add(1);
        wg.done();
      });
    }
    wg.wait();
  });
  return {done.load(), gort::rt::sched.npreempted.load() - before};
}

}  // namespace

// Before the reserve and the M factory, sysmon created the M to hand a held G's P to (new m,
// std::thread) and blocked on the arena lock that G held: no hand-off, retake or preemption
// ever again (the first procs = 1 child hung until its alarm in every try).
TEST_CASE("Gs held for preemption inside malloc never wedge the runtime", "[hold]") {
  clean_env env;
  const long iters = 1'000'000 / test_scale();
  for (unsigned procs : {1u, 2u}) {
    for (int round = 0; round < 3; ++round) {
      INFO("procs " << procs << " round " << round);
      const child_result r = run_in_child(
          [&] {
            const hold_result h = malloc_loops(procs, 16, iters / 4);
            std::printf("done %ld held %llu\n", h.done, static_cast<unsigned long long>(h.preempted));
            std::fflush(stdout);
            if (h.done != 16) std::_Exit(10);
            if (h.preempted == 0) std::_Exit(11);
          },
          60);
      INFO(r.out);
      CHECK_FALSE(r.died_by(SIGALRM));
      REQUIRE(r.exited(0));
    }
  }
}


// Every hold takes a parked M; the reserve is refilled (by the M that ran the held G's P, which
// parks again once it hands the P back, and by the M factory), so a long series of holds never
// runs short and reuses a bounded set of threads.
TEST_CASE("holds in a row each find a parked M, and the threads are reused", "[hold]") {
  clean_env env;
  gort::config c;
  c.procs = 1;
  c.time_slice = 1ms;
  const int rounds = static_cast<int>(std::max<long>(10, 200 / test_scale()));
  const std::uint64_t before = gort::rt::sched.npreempted.load();
  int done = 0;
  std::size_t ms = 0;
  gort::run(c, [&] {
    for (int i = 0; i < rounds; ++i) {
      // On one P the setter runs only once the spinner is held (probes.hpp).
      std::atomic<bool> flag{false};
      spin_until_preempted(flag);
      ++done;
    }
    gort::rt::spin_guard l(gort::rt::sched.lock);
    ms = gort::rt::sched.ms.size() - gort::rt::sched.extra_spares;
  });
  REQUIRE(done == rounds);
  REQUIRE(gort::rt::sched.npreempted.load() - before >= static_cast<std::uint64_t>(rounds));
  // The first M, the spare, and the one the factory adds when a hold takes the spare.
  INFO("Ms: " << ms);
  REQUIRE(ms <= 4);
}
