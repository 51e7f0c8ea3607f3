// A G asleep in the kernel outside gort::blocking (runtime/kernel_wait.cpp): a plain read(), a
// poll() that returns EINTR, a contended std::mutex. Its P goes on to the Gs behind it without
// a time slice's wait and without the G being requeued as runnable; back in its own code it
// takes a P again, at its next runtime call or, computing without one, on sysmon's signal.
#include <catch2/catch_test_macros.hpp>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "child.hpp"
#include "gort/gort.hpp"
#include "san.hpp"
#include "sched.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using gort::rt::sched;

namespace {

#if GORT_TSAN
// TSan holds back a signal to a thread inside its read() interceptor until the call returns:
// the handler cannot look at a thread asleep in read() there (docs/api.md, Preemption).
constexpr bool read_unsignalled = true;
#else
constexpr bool read_unsignalled = false;
#endif

struct pipe_fds {
  int r = -1, w = -1;
  pipe_fds() {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    r = fds[0];
    w = fds[1];
  }
  ~pipe_fds() {
    close(r);
    close(w);
  }
};

// One byte from fd with a plain read(), retried on EINTR (gort's signal may interrupt it);
// the byte, or '?' if the read failed.
char read_byte(int fd) {
  char c = 0;
  ssize_t n;
  do n = read(fd, &c, 1);
  while (n < 0 && errno == EINTR);
  return n == 1 ? c : '?';
}

gort::config one_proc() {
  gort::config c = with_procs(1);
  c.detect_deadlock = false;  // the reader's release comes from a plain thread's write
  return c;
}

// `n` Gs yield `each` times; returns when all are done.
void yielders(int n, int each, std::atomic<long>& total) {
  gort::wait_group wg;
  wg.add(n);
  for (int i = 0; i < n; ++i)
    gort::go([&] {
      for (int k = 0; k < each; ++k) {
        total.fetch_add(1, std::memory_order_relaxed);
        gort::yield();
      }
      wg.done();
    });
  wg.wait();
}

}  // namespace

TEST_CASE("a G asleep in a plain read() lets the Gs behind it run, and is not held", "[kernel]") {
  if (read_unsignalled) SKIP("TSan holds signals back from a thread blocked in read()");
  clean_env env;
  const int rounds = 5;
  for (int round = 0; round < rounds; ++round) {
    pipe_fds p;
    const auto found0 = sched.nkernel_found.load();
    const auto held0 = sched.npreempted.load();
    long total_seen = 0;
    char got = 0;
    gort::run(one_proc(), [&] {
      std::atomic<bool> reading{false};
      gort::wait_group rd;
      rd.add(1);
      gort::go([&] {
        reading.store(true);
        got = read_byte(p.r);
        rd.done();
      });
      while (!reading.load()) gort::yield();
      // The reader runs on the only P; these can run only once it has let the P go.
      std::atomic<long> total{0};
      yielders(4, 20'000 / static_cast<int>(test_scale()), total);
      total_seen = total.load();
      // The reader is still in its call, and was never stopped for overstaying its slice.
      CHECK(got == 0);
      CHECK(sched.npreempted.load() == held0);
      REQUIRE(write(p.w, "x", 1) == 1);
      rd.wait();
    });
    CHECK(got == 'x');
    CHECK(total_seen == 4 * (20'000 / test_scale()));
    CHECK(sched.nkernel_found.load() > found0);
  }
}

TEST_CASE("a G back from the kernel computing without runtime calls gets a P again", "[kernel]") {
  if (read_unsignalled) SKIP("TSan holds signals back from a thread blocked in read()");
  clean_env env;
  for (int round = 0; round < 5; ++round) {
    pipe_fds p;
    bool rejoined = false;
    gort::run(one_proc(), [&] {
      std::atomic<bool> reading{false};
      gort::wait_group wg;
      wg.add(1);
      gort::go([&] {
        reading.store(true);
        (void)read_byte(p.r);
        // Back in its own code with no P. No runtime call here: only sysmon's signal can give
        // it one, which clears the state. The deadline only bounds the test.
        const auto give_up = std::chrono::steady_clock::now() + 20s;
        while (sched.nkernel.load(std::memory_order_relaxed) != 0 && std::chrono::steady_clock::now() < give_up) {
        }
        rejoined = sched.nkernel.load() == 0;
        wg.done();
      });
      while (!reading.load()) gort::yield();
      // Let the P go to us: wait until the reader has been found asleep.
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      while (sched.nkernel.load() == 0 && std::chrono::steady_clock::now() < give_up) gort::yield();
      REQUIRE(sched.nkernel.load() == 1);
      REQUIRE(write(p.w, "x", 1) == 1);
      wg.wait();
    });
    CHECK(rejoined);
  }
}

TEST_CASE("a poll() interrupted with EINTR and retried loses its P the same way", "[kernel]") {
  clean_env env;
  pipe_fds p;
  const auto found0 = sched.nkernel_found.load();
  int polled = 0;
  long total_seen = 0;
  gort::run(one_proc(), [&] {
    std::atomic<bool> polling{false};
    gort::wait_group wg;
    wg.add(1);
    gort::go([&] {
      polling.store(true);
      pollfd fd{p.r, POLLIN, 0};
      int n;
      do n = poll(&fd, 1, -1);
      while (n < 0 && errno == EINTR);
      polled = n;
      wg.done();
    });
    while (!polling.load()) gort::yield();
    std::atomic<long> total{0};
    yielders(4, 10'000 / static_cast<int>(test_scale()), total);
    total_seen = total.load();
    REQUIRE(write(p.w, "x", 1) == 1);
    wg.wait();
  });
  CHECK(polled == 1);
  CHECK(total_seen == 4 * (10'000 / test_scale()));
  CHECK(sched.nkernel_found.load() > found0);
}

// Gs taking turns on a std::mutex with busy critical sections, on one P and with far fewer
// threads allowed than Gs: the waiters sleep in the kernel on the mutex's futex; each loses its
// P so the holder (and the rest) can go on, until the thread limit; from there a P retaken goes
// to an M that waits to run its own G (one back from the kernel holding the mutex, say), which
// needs no new thread. Every section is counted exactly once.
TEST_CASE("Gs convoying on a std::mutex complete with few threads", "[kernel]") {
  clean_env env;
  const int gs = 40;
  const int each = 20 / static_cast<int>(test_scale()) + 1;
  for (unsigned procs : {1u, 2u}) {
    std::mutex mu;
    long inside = 0, sections = 0, overlap = 0;
    gort::config c = with_procs(procs);
    c.max_threads = 12;
    gort::run(c, [&] {
      gort::wait_group wg;
      wg.add(gs);
      for (int i = 0; i < gs; ++i)
        gort::go([&] {
          for (int k = 0; k < each; ++k) {
            std::lock_guard<std::mutex> l(mu);
            if (inside++ != 0) ++overlap;
            const auto until = std::chrono::steady_clock::now() + 100us;
            while (std::chrono::steady_clock::now() < until) {
            }
            ++sections;
            --inside;
          }
          wg.done();
        });
      wg.wait();
    });
    CHECK(sections == gs * each);
    CHECK(overlap == 0);
  }
}

// Shutdown treats an M whose G sleeps in a plain call like one inside gort::blocking: run()
// does not wait for it. The call returns later; the G's own code runs on (nothing can stop a
// thread coming out of the kernel) until its next gort call, where its thread stops for good
// without touching the runtime, which may be running again by then.
TEST_CASE("run() returns while a G sleeps in a plain read(); its next gort call is its last", "[kernel]") {
  if (read_unsignalled) SKIP("TSan holds signals back from a thread blocked in read()");
  auto r = run_in_child([] {
    const long iters = 4;
    static int fds[iters][2];
    static std::atomic<int> came_back{0}, went_past{0};
    for (long i = 0; i < iters; ++i) {
      if (pipe(fds[i]) != 0) std::abort();
      const int rd = fds[i][0];
      gort::config c = with_procs(1);
      c.detect_deadlock = false;
      gort::run(c, [rd] {
        const auto found = sched.nkernel_found.load();
        gort::go([rd] {
          (void)read_byte(rd);
          came_back.fetch_add(1);
          gort::yield();
          went_past.fetch_add(1);  // never: the yield above is where its thread stops
        });
        // Main runs once the reader has lost the only P.
        const auto give_up = std::chrono::steady_clock::now() + 20s;
        while (sched.nkernel_found.load() == found && std::chrono::steady_clock::now() < give_up) gort::yield();
        if (sched.nkernel_found.load() == found) std::abort();
      });
    }
    const int v = gort::run(with_procs(2), [] {
      for (long i = 0; i < iters; ++i)
        if (write(fds[i][1], "x", 1) != 1) std::abort();
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      while (came_back.load() < iters && std::chrono::steady_clock::now() < give_up) gort::sleep_for(1ms);
      return gort::spawn([] { return 9; }).join();
    });
    std::printf("came back %d, went past %d, last run %d\n", came_back.load(), went_past.load(), v);
  }, 60);
  INFO(r.out);
  REQUIRE(r.exited(0));
  CHECK(r.out.find("came back 4, went past 0, last run 9") != std::string::npos);
}
