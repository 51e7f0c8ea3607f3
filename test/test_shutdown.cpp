// Shutdown with Gs that have not reached the runtime: Gs stopped by the preemption signal run
// on to their next runtime call, so no lock they hold outlives run(); a G that never gets there
// is named and abandoned after the cut-off; an M inside gort::blocking does not hold run() up,
// and when its call returns it stops without touching the runtime, which may be running again.
// Each case runs in a child process with an alarm: what fails here is a hang.
#include <catch2/catch_test_macros.hpp>
#include <gort/gort.hpp>
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "boot.hpp"
#include "child.hpp"
#include "probes.hpp"
#include "sched.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// One P and a short slice: the looper is preempted every 200 us, and main runs only while the
// looper is held or queued, so main returns with the looper held (most runs) or just resumed.
gort::config preempting() {
  gort::config c = with_procs(1);
  c.time_slice = 200us;
  return c;
}

// The child printed "done" and exited 0, with no sanitizer report and no gort: line (every
// looper got to its runtime call in time).
void require_done_cleanly(const child_result& r) {
  INFO(r.out);
  REQUIRE(r.exited(0));
  CHECK(!has(r.out, "Sanitizer"));
  REQUIRE(has(r.out, "done "));
  REQUIRE(!has(r.out, "gort:"));
}

// Returns once `n` more Gs have been stopped by the preemption signal.
void await_preemptions(std::uint64_t n) {
  const std::uint64_t base = gort::rt::sched.npreempted.load();
  while (gort::rt::sched.npreempted.load() < base + n) gort::yield();
}

// Whether some M of the running runtime is inside a blocking call.
bool some_m_in_call() {
  gort::rt::spin_guard l(gort::rt::sched.lock);
  for (gort::rt::m* mp : gort::rt::sched.ms) {
    const std::uint64_t c = mp->call.load();
    if (c != 0 && !(c & 1)) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("a G stopped inside fprintf runs on out of it at shutdown: the FILE is free after run()",
          "[shutdown]") {
  auto r = run_in_child([] {
    std::FILE* f = std::fopen("/dev/null", "w");
    if (!f) std::abort();
    const long iters = 40 / test_scale() + 1;
    for (long i = 0; i < iters; ++i) {
      gort::run(preempting(), [f] {
        gort::go([f] {
          for (;;) {
            // Many library calls between runtime calls: the signal nearly always lands in one,
            // with the FILE's lock held.
            for (int k = 0; k < 200; ++k) std::fprintf(f, "%d %s %f\n", k, "a line of text", k * 0.5);
            gort::preempt_point();
          }
        });
        await_preemptions(3);
      });
      std::fprintf(f, "after run %ld\n", i);  // hangs if the looper kept the lock
    }
    std::fclose(f);
    std::printf("done %ld\n", iters);
  }, 120);
  require_done_cleanly(r);
}

TEST_CASE("a G stopped inside malloc runs on out of it at shutdown: run() returns", "[shutdown]") {
  auto r = run_in_child([] {
    // One arena: every thread's malloc and its exit take the lock the looper may hold.
    mallopt(M_ARENA_MAX, 1);
    const long iters = 40 / test_scale() + 1;
    for (long i = 0; i < iters; ++i) {
      gort::run(preempting(), [] {
        gort::go([] {
          for (;;) {
            for (int k = 0; k < 200; ++k) {
              void* volatile p = std::malloc(static_cast<std::size_t>(16 + 97 * k));
              std::free(p);
            }
            gort::preempt_point();
          }
        });
        await_preemptions(3);
      });
      void* volatile p = std::malloc(1000);  // hangs if the looper kept the arena's lock
      std::free(p);
    }
    std::printf("done %ld\n", iters);
  }, 120);
  require_done_cleanly(r);
}

TEST_CASE("a G that never reaches the runtime is named and abandoned at the cut-off", "[shutdown]") {
  auto r = run_in_child([] {
    std::atomic<std::uint64_t> id{0};
    std::atomic<bool> never{false};
    const auto t0 = std::chrono::steady_clock::now();
    gort::run(with_procs(2), [&] {
      gort::go([&] {
        id.store(gort::rt::getg()->id);
        SPIN(never);
      });
      while (id.load() == 0) gort::yield();
    });
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    std::printf("spinner %llu after %lld ms\n", static_cast<unsigned long long>(id.load()),
                static_cast<long long>(ms.count()));
    // The runtime works again.
    const int v = gort::run(with_procs(2), [] { return gort::spawn([] { return 7; }).join(); });
    std::printf("second run %d\n", v);
  }, 60);
  INFO(r.out);
  REQUIRE(r.exited(0));
  CHECK(!has(r.out, "Sanitizer"));  // no sanitizer report from the child
  const auto at = r.out.find("spinner ");
  REQUIRE(at != std::string::npos);
  const unsigned long long id = std::strtoull(r.out.c_str() + at + 8, nullptr, 10);
  REQUIRE(id > 1);
  REQUIRE(has(r.out, "gort: G " + std::to_string(id) + " (created by G 1 at "));
  REQUIRE(has(r.out, "did not reach a runtime call within 1000 ms of shutdown"));
  REQUIRE(has(r.out, "second run 7"));
}

TEST_CASE("run() returns while a G sits in gort::blocking; the call returns later, harmlessly",
          "[shutdown]") {
  auto r = run_in_child([] {
    const long iters = 10 / test_scale() + 1;
    int fds[64][2];
    for (long i = 0; i < iters; ++i) {
      if (pipe(fds[i]) != 0) std::abort();
      const int rd = fds[i][0];
      // Alternately with procs 1 and 2, and with the G's P retaken by sysmon or still in the
      // call's hands at shutdown (taken by shutdown then).
      gort::run(with_procs(1 + static_cast<unsigned>(i % 2)), [rd, i] {
        const std::uint64_t base = gort::rt::sched.nretaken.load();
        gort::go([rd] {
          char c;
          (void)gort::blocking([&] { return read(rd, &c, 1); });
          std::abort();  // never: the call returns only after this runtime has ended
        });
        while (!some_m_in_call()) gort::yield();
        // With one P, main runs only once sysmon has retaken it; with two, wait for that half
        // the time.
        if (i % 4 != 3)
          while (gort::rt::sched.nretaken.load() == base) gort::yield();
      });
      // Another run works meanwhile, and so does one with blocking calls of its own.
      const int v = gort::run(with_procs(2), [] {
        return gort::spawn([] { return gort::blocking([] { return 5; }); }).join();
      });
      if (v != 5) std::abort();
    }
    // Now every call returns, some while a runtime runs again: each M stops where it is.
    const std::uint64_t before = gort::rt::left_calls_returned();
    gort::run(with_procs(2), [&] {
      for (long i = 0; i < iters; ++i)
        if (write(fds[i][1], "x", 1) != 1) std::abort();
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      while (gort::rt::left_calls_returned() < before + static_cast<std::uint64_t>(iters) &&
             std::chrono::steady_clock::now() < give_up)
        gort::sleep_for(1ms);  // polling a counter with a bound, not synchronisation
    });
    std::printf("returned %llu of %ld\n",
                static_cast<unsigned long long>(gort::rt::left_calls_returned() - before), iters);
    const int v = gort::run(with_procs(2), [] { return gort::spawn([] { return 9; }).join(); });
    std::printf("last run %d\n", v);
  }, 60);
  INFO(r.out);
  REQUIRE(r.exited(0));
  CHECK(!has(r.out, "Sanitizer"));  // no sanitizer report from the child
  REQUIRE(has(r.out, "last run 9"));
  const auto at = r.out.find("returned ");
  REQUIRE(at != std::string::npos);
  unsigned long long got = 0;
  long want = -1;
  REQUIRE(std::sscanf(r.out.c_str() + at, "returned %llu of %ld", &got, &want) == 2);
  REQUIRE(static_cast<long>(got) == want);
}
