// gort/time.hpp: timer, after_func, ticker, after. Order, exactly-once, stop and reset.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "gort/gort.hpp"
#include "gort/time.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

TEST_CASE("timer: 100,000 after_func timers all fire exactly once", "[timer]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const long n = 100'000 / test_scale();
  const auto r = gort::run(with_procs(procs), [&] {
    std::vector<std::atomic<int>> fired(static_cast<std::size_t>(n));
    std::vector<gort::timer> ts;
    ts.reserve(static_cast<std::size_t>(n));
    gort::wait_group wg;
    wg.add(static_cast<int>(n));
    for (long i = 0; i < n; ++i)
      ts.push_back(gort::after_func(std::chrono::microseconds(i % 5000), [&fired, &wg, i] {
        fired[static_cast<std::size_t>(i)].fetch_add(1);
        wg.done();
      }));
    wg.wait();
    long once = 0;
    for (auto& f : fired) once += f.load() == 1;
    return once;
  });
  CHECK(r == n);
}

TEST_CASE("timer: stopped timers never fire; destroying an armed timer stops it", "[timer]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  gort::run(with_procs(procs), [] {
    const int n = 2000;
    std::vector<std::atomic<int>> fired(n);
    std::vector<gort::timer> ts;
    std::vector<bool> stopped(n, false);
    gort::wait_group wg;
    wg.add(n);  // before arming: a fire may come at once
    for (int i = 0; i < n; ++i)
      ts.push_back(gort::after_func(std::chrono::microseconds(100 + (i % 200) * 50), [&, i] {
        fired[static_cast<std::size_t>(i)].fetch_add(1);
        wg.done();
      }));
    for (int i = 0; i < n; i += 2) {
      stopped[static_cast<std::size_t>(i)] = ts[static_cast<std::size_t>(i)].stop();
      if (stopped[static_cast<std::size_t>(i)]) wg.done();  // will never run
    }
    wg.wait();  // every timer that was not stopped in time has run
    gort::sleep_for(20ms);  // past every deadline: a wrongly surviving fire would show now
    int bad = 0;
    for (int i = 0; i < n; ++i)
      bad += fired[static_cast<std::size_t>(i)].load() != (stopped[static_cast<std::size_t>(i)] ? 0 : 1);
    CHECK(bad == 0);
    CHECK(std::count(stopped.begin(), stopped.end(), true) > 0);

    std::atomic<int> hits{0};
    {
      auto t = gort::after_func(5ms, [&] { ++hits; });
    }  // destroyed while armed
    gort::timer keep(10ms);
    keep.c().recv();
    gort::sleep_for(5ms);
    CHECK(hits == 0);
  });
}

TEST_CASE("timer: channel timers fire in deadline order, never early", "[timer]") {
  no_procs_env env;
  // One P: one heap, so fires happen one after another in heap order.
  gort::run(with_procs(1), [] {
    std::mt19937 rng(42);
    const int n = 200;
    struct arm {
      steady::time_point lo, hi;  // the true deadline lies between (arming takes a while)
      int i;
    };
    std::vector<arm> dl;
    std::vector<std::unique_ptr<gort::timer>> ts;
    std::vector<int> slot(n);
    for (int i = 0; i < n; ++i) slot[static_cast<std::size_t>(i)] = i;
    std::shuffle(slot.begin(), slot.end(), rng);
    for (int i = 0; i < n; ++i) {
      // Deadlines 150 us apart, armed in random order.
      auto d = std::chrono::microseconds(1000 + slot[static_cast<std::size_t>(i)] * 150);
      const auto before = steady::now();
      ts.push_back(std::make_unique<gort::timer>(d));
      dl.push_back({before + d, steady::now() + d, i});
    }
    std::sort(dl.begin(), dl.end(), [](const arm& a, const arm& b) { return a.lo < b.lo; });
    std::vector<steady::time_point> got(static_cast<std::size_t>(n));
    int early = 0;
    for (auto& a : dl) {
      auto v = ts[static_cast<std::size_t>(a.i)]->c().recv();
      REQUIRE(v);
      if (*v < a.lo) ++early;
      got[static_cast<std::size_t>(a.i)] = *v;
    }
    CHECK(early == 0);
    // Any timer whose deadline was surely earlier than another's fired no later. (Under load
    // arming can stall past the 150 us gap, so only surely-ordered pairs are compared.)
    int disorder = 0, pairs = 0;
    for (auto& a : dl)
      for (auto& b : dl)
        if (a.hi < b.lo) {
          ++pairs;
          if (got[static_cast<std::size_t>(a.i)] > got[static_cast<std::size_t>(b.i)]) ++disorder;
        }
    CHECK(disorder == 0);
    CHECK(pairs > n * (n - 1) / 4);  // most pairs were comparable
  });
}

TEST_CASE("timer: fires race receivers parking on the timer's channel; after() delivers once", "[timer]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int gs = 50;
  const int per = static_cast<int>(200 / test_scale()) + 5;
  std::atomic<long> received{0}, extra{0}, early{0};
  gort::run(with_procs(procs), [&] {
    gort::wait_group wg;
    wg.add(gs);
    for (int k = 0; k < gs; ++k)
      gort::go([&, k] {
        std::mt19937 rng(static_cast<unsigned>(k));
        for (int i = 0; i < per; ++i) {
          // Deadlines of 0..40 us: the fire often lands while the receiver is parking.
          const auto d = std::chrono::microseconds(rng() % 40);
          const auto t0 = steady::now();
          if (i % 2) {
            gort::timer t(d);
            auto v = t.c().recv();
            if (v && *v >= t0 + d) ++received;
            else ++early;
            if (t.c().try_recv()) ++extra;
          } else {
            auto ch = gort::after(d);
            auto v = ch.recv();
            if (v && *v >= t0 + d) ++received;
            else ++early;
            if (ch.try_recv()) ++extra;
          }
        }
        wg.done();
      });
    // The same from a plain OS thread.
    std::thread th([&] {
      for (int i = 0; i < per; ++i) {
        const auto t0 = steady::now();
        auto ch = gort::after(std::chrono::microseconds(i % 30));
        auto v = ch.recv();
        if (v && *v >= t0 + std::chrono::microseconds(i % 30)) ++received;
        else ++early;
      }
    });
    wg.wait();
    th.join();
  });
  CHECK(received == static_cast<long>(gs + 1) * per);
  CHECK(early == 0);
  CHECK(extra == 0);
}

TEST_CASE("after_func: each f runs in its own G; a blocking f delays no other", "[timer]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int n = 300;
  gort::run(with_procs(procs), [&] {
    gort::chan<int> gate;  // unbuffered: the blocking fs wait here until every other f ran
    std::atomic<int> others{0};
    std::vector<std::uint64_t> ids(static_cast<std::size_t>(n));
    std::vector<gort::timer> ts;
    gort::wait_group wg;
    wg.add(n);
    for (int i = 0; i < n; ++i)
      ts.push_back(gort::after_func(std::chrono::microseconds(i * 10), [&, i] {
        ids[static_cast<std::size_t>(i)] = gort::detail::current_g_id();
        if (i % 100 == 0) {
          (void)gate.recv();  // parks this G until released below
        } else {
          ++others;
        }
        wg.done();
      }));
    // Every non-blocking f runs although three fs sit parked (in three Gs) the whole time.
    while (others.load() < n - 3) gort::sleep_for(1ms);
    for (int k = 0; k < 3; ++k) gate.send(k);
    wg.wait();
    std::sort(ids.begin(), ids.end());
    CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end());  // n distinct Gs
    CHECK(ids.front() != 0);
  });
}

TEST_CASE("timer: a timer channel closed through c() drops its value; stop() after fire", "[timer]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    gort::timer t(30ms);  // long enough to be closed first even on a slow, loaded machine
    t.c().close();
    gort::sleep_for(100ms);  // the fire found the channel closed: nothing delivered, no crash
    CHECK_FALSE(t.c().recv());
    CHECK_FALSE(t.stop());
  });
}

TEST_CASE("timer: reset moves the deadline; stop/reset results; OS thread use", "[timer]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    gort::timer t(10s);
    auto t0 = steady::now();
    CHECK(t.reset(10ms));  // was pending
    auto got = t.c().recv();
    REQUIRE(got);
    CHECK(*got - t0 >= 10ms);
    CHECK(*got - t0 < 5s);
    CHECK_FALSE(t.stop());  // already fired
    CHECK_FALSE(t.reset(1ms));
    CHECK(t.c().recv());
    // Moving the deadline later: nothing arrives at the old one.
    CHECK_FALSE(t.reset(1s));  // it had fired
    CHECK(t.reset(30ms));     // pending
    t0 = steady::now();
    got = t.c().recv();
    CHECK(*got - t0 >= 25ms);

    std::atomic<int> ran{0};
    std::thread th([&] {
      gort::timer tt(2ms);
      tt.c().recv();
      auto h = gort::after_func(1ms, [&] { ++ran; });
      std::this_thread::sleep_for(50ms);
      (void)h;
    });
    th.join();
    CHECK(ran == 1);
  });
}

TEST_CASE("ticker: ticks on its grid, monotonic, stop ends them; after() delivers once", "[timer]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    const auto period = 5ms;
    const auto t0 = steady::now();
    gort::ticker tk(period);
    steady::time_point prev = t0;
    for (int k = 0; k < 10; ++k) {
      auto got = tk.c().recv();
      REQUIRE(got);
      CHECK(*got > prev);
      CHECK(*got >= t0 + (k + 1) * period);  // never ahead of its grid
      prev = *got;
    }
    // A window of 100 ms: ticks delivered = between 1 and the grid's count (+1 buffered).
    const auto w0 = steady::now();
    int ticks = 0;
    while (steady::now() - w0 < 100ms)
      if (tk.c().recv_for(10ms)) ++ticks;
    CHECK(ticks >= 1);
    CHECK(ticks <= 22);
    tk.stop();
    CHECK_FALSE(tk.c().recv_for(20ms));

    auto a0 = steady::now();
    auto ch = gort::after(3ms);
    auto v = ch.recv();
    REQUIRE(v);
    CHECK(*v - a0 >= 3ms);
    CHECK_THROWS_AS(gort::ticker(0ms), std::invalid_argument);
  });
}

// One idle M sleeps until the earliest timer of any P. When a G on another P arms an earlier
// timer just as that M publishes itself as the sleeper, the arming pokes it; a poke lost there
// leaves the short timer waiting behind the long one (seen as the receive below timing out).
TEST_CASE("timer: a short timer armed as an M goes to sleep on a long one is not lost", "[timer][wake]") {
  no_procs_env env;
  auto procs = GENERATE(1u, 2u);
  const long rounds = 2000 / test_scale();
  const auto lost = gort::run(with_procs(procs), [rounds] {
    long missed = 0;
    for (long i = 0; i < rounds; ++i) {
      gort::chan<long> c;
      gort::go([c, i] {
        gort::sleep_for(std::chrono::microseconds(i % 200));
        c.send(i);
      });
      const auto v = c.recv_for(2s);  // the long deadline: parks this G, its M goes idle
      if (v != std::optional<long>(i)) ++missed;
    }
    return missed;
  });
  CHECK(lost == 0);
}
