// The deadlock report: it appears when no G can ever run again, and never otherwise.
#include <catch2/catch_test_macros.hpp>
#include <gort/chan.hpp>
#include <gort/gort.hpp>
#include <gort/sync.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include "child.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;

namespace {

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// Runs body as the main G of a fresh runtime in a child; returns what happened.
template <class F>
child_result in_child(unsigned procs, F body) {
  return run_in_child([=] { gort::run(with_procs(procs), body); }, 60);
}

}  // namespace

TEST_CASE("a real deadlock is reported, one line per waiting G, then abort", "[deadlock]") {
  clean_env env;
  for (unsigned procs : {1u, 2u}) {
    auto r = in_child(procs, [] {
      gort::wait_group never;  // nobody will call done()
      never.add(1);
      gort::wait_group also;
      also.add(1);
      auto t = gort::spawn([&] { also.wait(); });
      never.wait();
    });
    INFO(r.out);
    REQUIRE(r.died_by(SIGABRT));
    REQUIRE(has(r.out, "gort: all goroutines are asleep - deadlock!\n"));
    REQUIRE(has(r.out, "  G 1 [wait_group]: the main G\n"));
    REQUIRE(has(r.out, " [wait_group]: created by G 1 at "));
  }
}

TEST_CASE("Gs stuck on channels, select and a mutex are reported with what they wait on",
          "[deadlock]") {
  clean_env env;
  auto r = in_child(2, [] {
    gort::chan<int> in, out(1);
    gort::mutex mu;
    mu.lock();  // held by the main G, which then waits on a channel nobody sends on
    gort::go([&] { in.send(1); });           // unbuffered, no receiver
    gort::go([&] { (void)out.recv(); });     // empty, never closed
    gort::go([&] {
      gort::chan<int> a, b;
      gort::select(gort::on_recv(a, [](std::optional<int>) {}), gort::on_recv(b, [](std::optional<int>) {}));
    });
    gort::go([&] { mu.lock(); });
    gort::chan<int> never;
    (void)never.recv();
  });
  INFO(r.out);
  REQUIRE(r.died_by(SIGABRT));
  REQUIRE(has(r.out, "gort: all goroutines are asleep - deadlock!\n"));
  REQUIRE(has(r.out, "  G 1 [chan receive]: the main G\n"));
  REQUIRE(has(r.out, " [chan send]: created by G 1 at "));
  REQUIRE(has(r.out, " [chan receive]: created by G 1 at "));
  REQUIRE(has(r.out, " [select]: created by G 1 at "));
  REQUIRE(has(r.out, " [mutex]: created by G 1 at "));
}

TEST_CASE("no report for a G waiting on a channel that a foreign thread will feed",
          "[deadlock]") {
  clean_env env;
  auto r = in_child(2, [] {
    gort::chan<int> ch;
    std::thread t([ch]() mutable {
      std::this_thread::sleep_for(300ms);
      ch.send(42);
    });
    const auto v = ch.recv();
    t.join();
    if (v != 42) std::abort();
  });
  INFO(r.out);
  REQUIRE(r.exited(0));
}

TEST_CASE("a thread that existed before run() feeds a G: fine with detection turned off",
          "[deadlock]") {
  clean_env env;
  auto r = run_in_child([] {
    // Pre-existing threads are not counted (docs/api.md "Deadlock report"): the documented
    // remedy is to turn detection off.
    setenv("GORT_DEADLOCK", "0", 1);
    gort::chan<int> ch;
    std::thread t([ch]() mutable {
      std::this_thread::sleep_for(300ms);
      ch.send(7);
    });
    int v = gort::run(with_procs(2), [&] { return ch.recv().value_or(-1); });
    t.join();
    if (v != 7) std::abort();
  }, 60);
  INFO(r.out);
  REQUIRE(r.exited(0));
}

TEST_CASE("a join that can never complete is a deadlock too", "[deadlock]") {
  clean_env env;
  auto r = in_child(2, [] {
    gort::wait_group never;
    never.add(1);
    auto t = gort::spawn([&] { never.wait(); });
    t.join();
  });
  INFO(r.out);
  REQUIRE(r.died_by(SIGABRT));
  REQUIRE(has(r.out, "  G 1 [join]: the main G\n"));
  REQUIRE(has(r.out, " [wait_group]: created by G 1 at "));
}

TEST_CASE("no report while a timer, a blocking call or a foreign thread can still wake a G",
          "[deadlock]") {
  clean_env env;
  // Each body leaves every G waiting for ~300 ms (far longer than the detector's 10 ms
  // double-check), with one way out that the detector must respect.
  auto timer = in_child(1, [] {
    gort::wait_group wg;
    wg.add(1);
    gort::go([&] {
      gort::sleep_for(300ms);
      wg.done();
    });
    wg.wait();
  });
  INFO(timer.out);
  REQUIRE(timer.exited(0));

  auto blocked = in_child(2, [] {
    gort::wait_group wg;
    wg.add(1);
    gort::go([&] {
      gort::blocking([] { usleep(300'000); });
      wg.done();
    });
    wg.wait();
  });
  INFO(blocked.out);
  REQUIRE(blocked.exited(0));

  auto foreign = in_child(2, [] {
    gort::wait_group wg;
    wg.add(1);
    std::thread t([&] {
      std::this_thread::sleep_for(300ms);
      wg.done();  // a plain thread wakes the main G
    });
    wg.wait();
    t.join();
  });
  INFO(foreign.out);
  REQUIRE(foreign.exited(0));
}

TEST_CASE("Gs still waiting when main returns are abandoned, not reported", "[deadlock]") {
  clean_env env;
  auto r = in_child(2, [] {
    gort::wait_group never;
    never.add(1);
    for (int i = 0; i < 10; ++i) gort::go([&] { never.wait(); });
    gort::sleep_for(50ms);  // let them all park
  });
  INFO(r.out);
  REQUIRE(r.exited(0));
  REQUIRE_FALSE(has(r.out, "deadlock"));
}

TEST_CASE("the detector can be turned off", "[deadlock]") {
  clean_env env;
  auto r = run_in_child([] {
    setenv("GORT_DEADLOCK", "0", 1);
    gort::run(with_procs(1), [] {
      gort::wait_group never;
      never.add(1);
      never.wait();
    });
  }, 2);
  REQUIRE(r.died_by(SIGALRM));  // hangs, as asked, until the test's alarm
  REQUIRE_FALSE(has(r.out, "deadlock"));
}
