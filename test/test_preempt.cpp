// Preemption: Gs that never call into the runtime are stopped at the end of their time slice
// (asynchronously, by signal), the interrupted code is never disturbed (it resumes on its own
// thread, whatever it was doing), and no_preempt / async_preempt = false really turn it off.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <gort/gort.hpp>
#include <pthread.h>

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
#include "probes.hpp"
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


}  // namespace

TEST_CASE("procs=1: a G spinning without calls is preempted and another G sets its flag", "[preempt]") {
  clean_env env;
  const int rounds = static_cast<int>(std::max<long>(3, 20 / test_scale()));
  for (int r = 0; r < rounds; ++r) {
    std::atomic<bool> flag{false};
    std::uint64_t before = gort::rt::sched.npreempted.load();
    gort::run(cfg(1, 1ms), [&] {
      spin_until_preempted(flag);  // the setter runs only if the spinner is stopped
    });
    REQUIRE(flag.load());
    // It was the signal: the spinner held the only P and had to be stopped.
    REQUIRE(gort::rt::sched.npreempted.load() > before);
  }
}

// sysmon counts a slice from the later of its previous look and the P's own stamp (tick_ns),
// and sleeps long while the stamps are fresh (sysmon.cpp, Cadence). Right after a burst of
// switching the stamp is microseconds old, so a G that then spins keeps its whole slice: a
// sysmon that counted from its look alone, at the long cadence, would cut it short by up to
// half a slice.
TEST_CASE("a G that spins right after a burst of switching keeps its whole slice", "[preempt]") {
  clean_env env;
  constexpr auto slice = 20ms;
  const auto ran = gort::run(cfg(1, slice), [] {
    std::vector<std::chrono::steady_clock::duration> out;
    for (int round = 0; round < 5; ++round) {
      // Long enough for sysmon to back off to its long cap (about 11 ms of quiet looks).
      const auto until = std::chrono::steady_clock::now() + 30ms;
      gort::wait_group wg;
      wg.add(2);
      for (int k = 0; k < 2; ++k)
        gort::go([&wg, until] {
          while (std::chrono::steady_clock::now() < until)
            for (int i = 0; i < 256; ++i) gort::yield();
          wg.done();
        });
      wg.wait();
      std::atomic<bool> flag{false};
      std::atomic<std::int64_t> stopped{0};
      gort::go([&] {  // runs once the spinner below is preempted: procs = 1
        stopped.store(std::chrono::steady_clock::now().time_since_epoch().count());
        flag.store(true);
      });
      const auto t0 = std::chrono::steady_clock::now();
      SPIN(flag);
      out.push_back(std::chrono::steady_clock::duration(stopped.load()) - t0.time_since_epoch());
    }
    return out;
  });
  REQUIRE(ran.size() == 5);
  for (auto d : ran) {
    INFO("the spinner ran " << (std::chrono::duration<double, std::milli>(d).count()) << " ms");
    CHECK(d >= slice - 2ms);
    CHECK(d < slice + 200ms);  // late only by sysmon's wake-up and the signal (loose: sanitizers)
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

namespace {

thread_local long tl_counter = 0;

// No gort call in here: only an asynchronous preemption can stop this G, and it must not move
// it. The compiler may (and at -O2 does) keep &tl_counter in a register across the loop.
__attribute__((noinline)) void round(std::atomic<long>& bad) {
  asm volatile("" ::: "memory");
  const pthread_t self = pthread_self();
  const long start = tl_counter;
  for (long k = 0; k < 2'000'000 / test_scale(); ++k) {
    tl_counter = tl_counter + 1;
    asm volatile("" ::: "memory");
  }
  if (tl_counter - start != 2'000'000 / test_scale() || !pthread_equal(self, pthread_self()))
    bad.fetch_add(1);
}

}  // namespace

TEST_CASE("a preempted G resumes on the thread it was interrupted on, its thread_locals intact",
          "[preempt]") {
  clean_env env;
  constexpr int ngs = 6, rounds = 4;
  std::atomic<long> bad{0}, loops{0};
  std::uint64_t before = gort::rt::sched.npreempted.load();
  gort::run(cfg(2, 200us), [&] {
    gort::wait_group wg;
    for (int i = 0; i < ngs; ++i) {
      wg.add(1);
      gort::go([&] {
        for (int r = 0; r < rounds; ++r) {
          // The voluntary yield below may move this G to another thread, and the compiler may
          // keep a thread_local's address across it (README, "thread_local and Gs"): each
          // round gets the address afresh, through a function the compiler cannot see into.
          round(bad);
          loops.fetch_add(1);
          gort::yield();
        }
        wg.done();
      });
    }
    wg.wait();
  });
  REQUIRE(bad.load() == 0);
  REQUIRE(loops.load() == ngs * rounds);
  REQUIRE(gort::rt::sched.npreempted.load() > before);
}

namespace {

// One round of everything that must survive being interrupted anywhere: allocation, string
// building, a std::mutex, thread_locals, stdio, exceptions. Returns a checksum of its results,
// which depends only on `seed`.
thread_local unsigned long tl_ops = 0;

unsigned long mixed_round(unsigned seed, std::mutex& mu, long& shared, std::FILE* devnull) {
  std::mt19937 rng(seed);
  unsigned long sum = 0;
  for (int i = 0; i < 50; ++i) {
    const std::size_t n = 1 + rng() % 4096;
    auto* p = static_cast<unsigned char*>(std::malloc(n));
    std::memset(p, static_cast<int>(i & 0xff), n);
    sum += p[n - 1] + n;
    std::free(p);

    std::string s;
    for (int k = 0; k < 20; ++k) s += std::to_string(rng() % 1000);
    sum += s.size();

    {
#if defined(__SANITIZE_THREAD__)
      // TSan runs signal handlers only where the thread leaves one of its interceptors, and
      // withholds them from a thread waiting in pthread_mutex_lock. So under TSan the signal
      // lands right after a lock is taken, and the Ms that then wait for that lock can never
      // be stopped to free their Ps: nothing would run the holder. Natively the signal
      // interrupts the waiters' futex and the hand-off chain reaches the holder (preempt.cpp).
      // docs/api.md "Preemption" tells TSan users the same.
      gort::no_preempt np;
#endif
      std::lock_guard<std::mutex> l(mu);
      ++shared;
    }

    const unsigned long before = tl_ops;
    for (int k = 0; k < 100; ++k) tl_ops = tl_ops + 1;
    if (tl_ops - before != 100) throw std::logic_error("thread_local counter lost updates");

    std::fprintf(devnull, "%d %s\n", i, s.c_str());

    try {
      if (rng() % 3 == 0) throw std::runtime_error(std::to_string(i));
      sum += 1;
    } catch (const std::runtime_error& e) {
      sum += static_cast<unsigned long>(std::stoi(e.what()));
    }
  }
  return sum;
}

}  // namespace

TEST_CASE("aggressive preemption (100us slices) never breaks libc, libstdc++ or the runtime",
          "[preempt]") {
  clean_env env;
  std::FILE* devnull = std::fopen("/dev/null", "w");
  REQUIRE(devnull);
  const auto duration = std::chrono::milliseconds(std::max<long>(1000, 5000 / test_scale()));
  constexpr int ngs = 16;
  std::mutex mu;
  long shared = 0;
  std::atomic<long> rounds{0}, wrong{0};
  std::vector<std::string> errors;
  std::mutex errors_mu;
  std::uint64_t before = gort::rt::sched.npreempted.load();
  gort::run(cfg(2, 100us), [&] {
    const auto end = std::chrono::steady_clock::now() + duration;
    // The expected checksum of each seed, computed once on the main G.
    std::vector<unsigned long> expect(64);
    std::mutex ref_mu;
    long ref_shared = 0;
    for (unsigned s = 0; s < expect.size(); ++s) expect[s] = mixed_round(s, ref_mu, ref_shared, devnull);
    gort::wait_group wg;
    for (int i = 0; i < ngs; ++i) {
      wg.add(1);
      gort::go([&, i] {
        try {
          for (unsigned r = static_cast<unsigned>(i); std::chrono::steady_clock::now() < end; ++r) {
            if (mixed_round(r % 64, mu, shared, devnull) != expect[r % 64]) wrong.fetch_add(1);
            rounds.fetch_add(1);
          }
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> l(errors_mu);
          errors.push_back(e.what());
        }
        wg.done();
      });
    }
    wg.wait();
  });
  std::fclose(devnull);
  INFO("rounds " << rounds.load() << ", preemptions " << gort::rt::sched.npreempted.load() - before);
  REQUIRE(errors.empty());
  REQUIRE(wrong.load() == 0);
  REQUIRE(shared == rounds.load() * 50);
  REQUIRE(rounds.load() > ngs);
  REQUIRE(gort::rt::sched.npreempted.load() > before);
}

namespace {

// procs=1: a spinner holds the only P for `window`, checking whether a G queued behind it got
// to run meanwhile. With `point`, the spinner calls gort::preempt_point() in its loop.
// The spinner may legitimately be preempted before its window opens (its slice is inherited
// through runnext, and under TSan the set-up alone can outlast 1 ms); such a trial says
// nothing about the window and is run again.
bool other_ran_during_window(gort::config c, bool guard, bool point, std::chrono::milliseconds window) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    std::atomic<bool> ran{false};
    bool ran_before = false;
    bool ran_in_window = true;
    gort::run(c, [&] {
      gort::wait_group wg;
      wg.add(2);
      gort::go([&] {
        gort::go([&] {
          ran = true;
          wg.done();
        });
        auto spin = [&] {
          const auto end = std::chrono::steady_clock::now() + window;
          ran_before = ran.load();
          while (std::chrono::steady_clock::now() < end && !ran.load(std::memory_order_relaxed))
            if (point) gort::preempt_point();
        };
        if (guard) {
          gort::no_preempt np;
          spin();
        } else {
          spin();
        }
        ran_in_window = ran.load();
        wg.done();  // and leaves the P, so the other G surely runs now
      });
      wg.wait();
    });
    REQUIRE(ran.load());
    if (!ran_before) return ran_in_window;
  }
  FAIL("the queued G ran before the spinner's window opened in every attempt");
  return false;
}

}  // namespace

TEST_CASE("no_preempt and async_preempt = false really turn asynchronous preemption off",
          "[preempt]") {
  clean_env env;
  const auto window = 300ms;
  // Control: with preemption on, the queued G runs within the window (slices are 1 ms).
  CHECK(other_ran_during_window(cfg(1, 1ms), false, false, window));
  // Off for the whole runtime: it cannot run until the spinner lets go...
  CHECK_FALSE(other_ran_during_window(cfg(1, 1ms, false), false, false, window));
  // ...unless the spinner offers preempt_point(), which honours the slice.
  CHECK(other_ran_during_window(cfg(1, 1ms, false), false, true, window));
  // Off for a region: neither the signal nor preempt_point() stops it there.
  CHECK_FALSE(other_ran_during_window(cfg(1, 1ms), true, false, window));
  CHECK_FALSE(other_ran_during_window(cfg(1, 1ms), true, true, window));
  // The environment switch does what the config does.
  setenv("GORT_ASYNC_PREEMPT", "0", 1);
  CHECK_FALSE(other_ran_during_window(cfg(1, 1ms), false, false, window));
  unsetenv("GORT_ASYNC_PREEMPT");
}

TEST_CASE("an idle runtime uses no CPU: sysmon and the Ms sleep", "[preempt]") {
  clean_env env;
  std::chrono::nanoseconds used{0};
  gort::run(cfg(2), [&] {
    // Let the start-up settle (Ms spin briefly before parking), then measure one second in
    // which the only thing pending is this G's own timer.
    gort::sleep_for(50ms);
    const auto start = process_cpu_time();
    gort::sleep_for(1s);
    used = process_cpu_time() - start;
  });
  INFO("CPU used over 1 s idle: " << used.count() / 1000 << " us");
  REQUIRE(used < 10ms);  // < 1% of one CPU
}

TEST_CASE("bad preemption settings are rejected with the value", "[preempt]") {
  clean_env env;
  gort::config c = cfg(1, 10us);
  REQUIRE_THROWS_WITH(gort::run(c, [] {}), "gort: time_slice = 10000 ns is too short (at least 100us)");
  setenv("GORT_TIME_SLICE", "10", 1);
  REQUIRE_THROWS_WITH(gort::run(cfg(1), [] {}),
                      "gort: GORT_TIME_SLICE='10' is not a duration such as 10ms, 500us or 1s");
  setenv("GORT_TIME_SLICE", "2ms", 1);
  long slice = 0;
  gort::run(cfg(1), [&] { slice = gort::rt::sched.time_slice_ns; });
  REQUIRE(slice == 2'000'000);
  unsetenv("GORT_TIME_SLICE");
  setenv("GORT_ASYNC_PREEMPT", "yes", 1);
  REQUIRE_THROWS_WITH(gort::run(cfg(1), [] {}), "gort: GORT_ASYNC_PREEMPT='yes' is not 0 or 1");
  unsetenv("GORT_ASYNC_PREEMPT");
  // The runtime is still usable after each refusal.
  int x = gort::run(cfg(1), [] { return 7; });
  REQUIRE(x == 7);
}

TEST_CASE("a G spinning forever does not hold up shutdown", "[preempt]") {
  clean_env env;
  for (unsigned procs : {1u, 2u}) {
    std::atomic<bool> never{false};
    std::atomic<int> started{0};
    gort::run(cfg(procs), [&] {
      for (unsigned i = 0; i < procs + 1; ++i)
        gort::go([&] {
          started.fetch_add(1);
          SPIN(never);
        });
      while (started.load() < static_cast<int>(procs + 1)) gort::sleep_for(1ms);
    });
    REQUIRE(started.load() == static_cast<int>(procs + 1));  // and run() returned
  }
}
