// Allocation failure around the scheduler's commit steps. This binary replaces the global
// operator new with one that fails on demand on the calling thread only, so a G can make the
// allocations of its own next runtime call fail. A park's commit (which arms the deadline or
// sleep timer after the switch, in a noexcept step) used to grow the P's timer heap there and
// so ended in std::terminate; now the room is reserved before the switch, where the failure
// is reported: a timed wait times out at once, a sleep throws std::bad_alloc.
#include <catch2/catch_test_macros.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <optional>

#include <gort/chan.hpp>
#include <gort/gort.hpp>
#include <gort/sync.hpp>

#include "child.hpp"

namespace {
thread_local bool fail_here = false;  // operator new fails on this thread while set
}  // namespace

void* operator new(std::size_t n) {
  if (fail_here) throw std::bad_alloc();
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

// Runs body as the main G of a one-P runtime in a child process; the child exits with body's
// value. A fresh runtime: P 0's timer heap has never grown, so the first timer needs memory.
template <class F>
child_result in_fresh_runtime(F body) {
  return run_in_child(
      [body] {
        const int code = gort::run(gort::config{.procs = 1}, body);
        std::fflush(nullptr);
        std::_Exit(code);
      },
      120);
}

}  // namespace

TEST_CASE("a timed channel receive with no memory for its timer times out at once") {
  const child_result r = in_fresh_runtime([] {
    gort::chan<int> ch;
    const auto t0 = clk::now();
    std::optional<int> v;
    fail_here = true;
    try {
      v = ch.recv_for(30s);
    } catch (const std::bad_alloc&) {
      fail_here = false;
      return 2;
    }
    fail_here = false;
    if (v) return 3;
    if (clk::now() - t0 > 10s) return 4;  // it waited for the deadline after all
    // The heap's accounting is intact: later timed waits and sleeps work.
    if (ch.recv_for(1ms)) return 5;
    const auto t1 = clk::now();
    gort::sleep_for(1ms);
    return clk::now() - t1 >= 1ms ? 0 : 6;
  });
  INFO("status " << r.status << ": " << r.out);
  CHECK(r.exited(0));
}

TEST_CASE("a timed mutex lock with no memory for its timer gives up at once") {
  const child_result r = in_fresh_runtime([] {
    gort::mutex mu;
    mu.lock();
    const auto t0 = clk::now();
    bool got = true;
    fail_here = true;
    try {
      got = mu.try_lock_for(30s);
    } catch (const std::bad_alloc&) {
      fail_here = false;
      return 2;
    }
    fail_here = false;
    if (got) return 3;
    if (clk::now() - t0 > 10s) return 4;
    mu.unlock();
    return mu.try_lock_for(1ms) ? 0 : 5;
  });
  INFO("status " << r.status << ": " << r.out);
  CHECK(r.exited(0));
}

TEST_CASE("a sleep with no memory for its timer throws std::bad_alloc") {
  const child_result r = in_fresh_runtime([] {
    fail_here = true;
    try {
      gort::sleep_for(1ms);
    } catch (const std::bad_alloc&) {
      fail_here = false;
      gort::sleep_for(1ms);  // and works once memory is back
      return 0;
    }
    fail_here = false;
    return 1;
  });
  INFO("status " << r.status << ": " << r.out);
  CHECK(r.exited(0));
}
