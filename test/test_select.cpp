// select: ready cases, default, timeouts, uniform choice, close while parked, exactly-once
// delivery when selects race with each other, with timeouts and with plain operations.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gort/chan.hpp"
#include "gort/gort.hpp"
#include "expect.hpp"
#include "sched.hpp"
#include "probes.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;
using steady = std::chrono::steady_clock;

// Pearson's chi-square statistic of `counts` against the uniform distribution.
template <class Counts>
double chi2_uniform(const Counts& counts) {
  double total = 0;
  for (long c : counts) total += static_cast<double>(c);
  const double expect = total / static_cast<double>(std::size(counts));
  double chi2 = 0;
  for (long c : counts) chi2 += (static_cast<double>(c) - expect) * (static_cast<double>(c) - expect) / expect;
  return chi2;
}

TEST_CASE("select takes the ready case, default when none is, and returns its index", "[select]") {
  no_procs_env env;
  gort::run(with_procs(1), [] {
    gort::chan<int> a(1), b(1);
    int got = 0;
    b.send(7);
    auto i = gort::select(gort::on_recv(a, [&](std::optional<int>) { got = -1; }),
                          gort::on_recv(b, [&](std::optional<int> v) { got = *v; }));
    CHECK(i == 1);
    CHECK(got == 7);

    bool dflt = false;
    i = gort::select(gort::on_recv(a, [&](std::optional<int>) { got = -1; }),
                     gort::on_default([&] { dflt = true; }));
    CHECK(i == 1);
    CHECK(dflt);

    bool sent = false;
    i = gort::select(gort::on_default([] {}), gort::on_send(a, 5, [&] { sent = true; }));
    CHECK(i == 1);
    CHECK(sent);
    CHECK(a.recv() == 5);

    // A full channel: the send case is not ready, the receive of another is.
    a.send(1);
    b.send(2);
    int r = 0;
    i = gort::select(gort::on_send(a, 9, [&] { r = -1; }),
                     gort::on_recv(b, [&](std::optional<int> v) { r = *v; }));
    CHECK(i == 1);
    CHECK(r == 2);
    CHECK(a.recv() == 1);
    CHECK(a.try_recv() == std::nullopt);  // 9 was not sent

    // Closed channel: a receive case is ready, with nullopt.
    b.close();
    std::optional<int> seen = 3;
    i = gort::select(gort::on_recv(a, [&](std::optional<int>) {}),
                     gort::on_recv(b, [&](std::optional<int> v) { seen = v; }));
    CHECK(i == 1);
    CHECK(seen == std::nullopt);
    // A send case on a closed channel throws, as a plain send does.
    CHECK_THROWS_AS(gort::select(gort::on_send(b, 1, [] {}), gort::on_default([] {})),
                    gort::closed_channel);
  });
}

TEST_CASE("select timeouts: fire when nothing is ready, never when something is", "[select]") {
  no_procs_env env;
  auto procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [] {
    gort::chan<int> a, b;
    auto t0 = steady::now();
    bool fired = false;
    auto i = gort::select(gort::on_recv(a, [](std::optional<int>) {}),
                          gort::on_timeout(20ms, [&] { fired = true; }),
                          gort::on_recv(b, [](std::optional<int>) {}));
    CHECK(i == 1);
    CHECK(fired);
    CHECK(steady::now() - t0 >= 20ms);

    // Several timeouts: the earliest one is taken.
    t0 = steady::now();
    i = gort::select(gort::on_timeout(10s, [] {}), gort::on_recv(a, [](std::optional<int>) {}),
                     gort::on_timeout(5ms, [] {}));
    CHECK(i == 2);
    CHECK(steady::now() - t0 < 10s);

    // Only a timeout: a sleep.
    t0 = steady::now();
    CHECK(gort::select(gort::on_timeout(5ms, [] {})) == 0);
    CHECK(steady::now() - t0 >= 5ms);

    // A partner arriving before the deadline wins.
    gort::go([b] {
      gort::sleep_for(2ms);
      b.send(4);
    });
    int v = 0;
    i = gort::select(gort::on_recv(a, [](std::optional<int>) {}),
                     gort::on_recv(b, [&](std::optional<int> x) { v = *x; }),
                     gort::on_timeout(10s, [] {}));
    CHECK(i == 1);
    CHECK(v == 4);

    // A zero or negative timeout is "already due": like a default.
    gort::chan<int> ready(1);
    ready.send(1);
    i = gort::select(gort::on_recv(ready, [](std::optional<int>) {}), gort::on_timeout(0ms, [] {}));
    CHECK(i == 0);
    CHECK(gort::select(gort::on_recv(a, [](std::optional<int>) {}), gort::on_timeout(-1ms, [] {})) == 1);
  });
}

namespace {

// on_timeout(d) with a d too long for "now + d" to be represented never fires: beside a finite
// timeout, the finite one is taken (in either order); beside a receive, the select parks and
// stays parked until the value comes.
template <class D>
void too_long_timeout_never_fires(D d) {
  gort::chan<int> ch;
  auto t0 = steady::now();
  auto i = gort::select(gort::on_recv(ch, [](std::optional<int>) {}), gort::on_timeout(d, [] {}),
                        gort::on_timeout(20ms, [] {}));
  CHECK(i == 2);
  CHECK(steady::now() - t0 >= 20ms);
  t0 = steady::now();
  i = gort::select(gort::on_timeout(20ms, [] {}), gort::on_recv(ch, [](std::optional<int>) {}),
                   gort::on_timeout(d, [] {}));
  CHECK(i == 0);
  CHECK(steady::now() - t0 >= 20ms);

  gort::chan<int> out(1), hold;
  std::atomic<gort::rt::g*> gp{nullptr};
  std::atomic<bool> returned{false};
  gort::go([=, &gp, &returned] {
    gp.store(gort::rt::getg());
    int got = -1;
    const std::size_t k = gort::select(gort::on_recv(ch, [&](std::optional<int> v) { got = v.value_or(-2); }),
                                       gort::on_timeout(d, [&] { got = -3; }));
    returned.store(true);
    out.send(static_cast<int>(k) * 1000 + got);
    (void)hold.recv();  // keeps the G, whose descriptor was read, alive until the end
  });
  CHECK(parks_without_returning(gp, returned));
  gort::sleep_for(20ms);  // not synchronisation: a wrong but finite deadline would expire here
  CHECK_FALSE(returned.load());
  CHECK(ch.send_for(42, 5s));
  CHECK(out.recv() == 42);  // case 0, value 42
  hold.close();
}

}  // namespace

TEST_CASE("select: an on_timeout too long to represent never fires", "[select]") {
  no_procs_env env;
  const auto procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [] {
    too_long_timeout_never_fires(std::chrono::nanoseconds::max());
    too_long_timeout_never_fires(std::chrono::hours::max());
    too_long_timeout_never_fires(std::chrono::duration<double>(1e30));
  });
}

// Go's TestPseudoRandomSend: a select with two send cases on one channel, parked before the
// receiver comes. A receiver serves the node at the head of the channel's send queue, so the
// select must queue its cases in random order for both values to come out about equally often.
TEST_CASE("select: two parked send cases on one channel are served with equal probability", "[select][fairness]") {
  no_procs_env env;
  const auto procs = GENERATE(1u, 2u);
  const std::size_t cap = GENERATE(0u, 1u);
  const long rounds = std::max(200L, 4000 / test_scale());
  struct result {
    std::array<long, 2> n{};
    long other = 0;  // values that are neither 0 nor 1, or missing
    bool all_parked = true;
  };
  const result r = gort::run(with_procs(procs), [rounds, cap] {
    result out;
    gort::chan<int> ch(cap);
    std::atomic<gort::rt::g*> gp{nullptr};
    std::atomic<long> round{-1};
    gort::wait_group done;
    done.add(1);
    gort::go([&, ch] {
      gp.store(gort::rt::getg());
      for (long k = 0; k < rounds; ++k) {
        round.store(k);
        gort::select(gort::on_send(ch, 0, [] {}), gort::on_send(ch, 1, [] {}));
      }
      done.done();
    });
    auto take = [&] {
      const std::optional<int> v = ch.recv_for(10s);
      if (v && (*v == 0 || *v == 1)) ++out.n[static_cast<std::size_t>(*v)];
      else ++out.other;
    };
    // Buffered, round 0 fills the slot without waiting and every later round parks. The store
    // of `round` comes after the selecter's previous wake-up, so the status read after seeing
    // it is not left over from the round before.
    const auto give_up = steady::now() + 60s;
    for (long k = cap ? 1 : 0; k < rounds; ++k) {
      while (round.load() != k || gp.load()->status.load() != gort::rt::gstatus::waiting) {
        if (steady::now() >= give_up) break;
        gort::yield();
      }
      if (steady::now() >= give_up) {
        out.all_parked = false;
        return out;  // the selecter is abandoned
      }
      take();
    }
    if (cap) take();
    done.wait();
    return out;
  });
  const double chi2 = chi2_uniform(r.n);
  INFO("procs " << procs << " capacity " << cap << " rounds " << rounds << ": zeros " << r.n[0] << ", ones "
                << r.n[1] << ", chi2 " << chi2);
  CHECK(r.all_parked);
  CHECK(r.other == 0);
  CHECK(r.n[0] + r.n[1] == rounds);
  // 1 degree of freedom: P(chi2 > 33) is about 1e-8. With at least 200 rounds, a share outside
  // 30%..70% is at least 5.6 standard deviations from a fair half (also about 1e-8).
  CHECK(chi2 < 33.0);
  CHECK(r.n[0] >= rounds * 3 / 10);
  CHECK(r.n[1] >= rounds * 3 / 10);
}

TEST_CASE("select picks uniformly among ready cases (chi-squared)", "[select][fairness]") {
  no_procs_env env;
  auto procs = GENERATE(1u, 2u);
  auto counts = gort::run(with_procs(procs), [] {
    constexpr int k = 4;
    std::array<gort::chan<int>, k> ch{gort::chan<int>(1), gort::chan<int>(1), gort::chan<int>(1),
                                      gort::chan<int>(1)};
    for (auto& c : ch) c.send(0);
    std::array<long, k> n{};
    const long draws = 100000 / test_scale();
    for (long d = 0; d < draws; ++d) {
      // Every case is ready; the one taken is refilled so all stay ready.
      auto i = gort::select(gort::on_recv(ch[0], [](std::optional<int>) {}),
                            gort::on_recv(ch[1], [](std::optional<int>) {}),
                            gort::on_recv(ch[2], [](std::optional<int>) {}),
                            gort::on_recv(ch[3], [](std::optional<int>) {}));
      ++n[i];
      ch[i].send(0);
    }
    return n;
  });
  const double chi2 = chi2_uniform(counts);
  INFO("counts " << counts[0] << " " << counts[1] << " " << counts[2] << " " << counts[3]
                 << " chi2 " << chi2);
  // 3 degrees of freedom: P(chi2 > 40) is about 1e-8, so a fair select fails this test
  // essentially never, while a bias of a few percent fails it every time at 100,000 draws.
  CHECK(chi2 < 40.0);
}

TEST_CASE("select fairness also holds between a ready send and a ready receive", "[select][fairness]") {
  no_procs_env env;
  auto counts = gort::run(with_procs(1), [] {
    gort::chan<int> in(1), out(1);
    in.send(0);
    std::array<long, 2> n{};
    const long draws = 50000 / test_scale();
    for (long d = 0; d < draws; ++d) {
      auto i = gort::select(gort::on_recv(in, [](std::optional<int>) {}), gort::on_send(out, 1, [] {}));
      ++n[i];
      if (i == 0) in.send(0);
      else out.recv();
    }
    return n;
  });
  const double chi2 = chi2_uniform(counts);
  INFO("counts " << counts[0] << " " << counts[1] << " chi2 " << chi2);
  CHECK(chi2 < 33.0);  // 1 degree of freedom: P(chi2 > 33) is about 1e-8
}

TEST_CASE("close wakes a parked select with the right outcome", "[select][close]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  gort::run(with_procs(procs), [] {
    const int rounds = static_cast<int>(500 / test_scale()) + 1;
    for (int r = 0; r < rounds; ++r) {
      gort::chan<int> a, b, c;
      // Receive cases: the closed one is taken with nullopt.
      constexpr int n = 6;
      std::atomic<int> closed_a{0};
      gort::wait_group wg;
      wg.add(n);
      for (int g = 0; g < n; ++g)
        gort::go([&] {
          auto i = gort::select(gort::on_recv(b, [](std::optional<int>) {}),
                                gort::on_recv(a, [&](std::optional<int> v) {
                                  if (!v) closed_a.fetch_add(1);
                                }));
          EXPECT(i == 1);
          wg.done();
        });
      // Send cases: the closed one throws closed_channel.
      std::atomic<int> threw{0};
      wg.add(n);
      for (int g = 0; g < n; ++g)
        gort::go([&, g] {
          try {
            gort::select(gort::on_send(c, g, [] {}), gort::on_recv(b, [](std::optional<int>) {}));
          } catch (const gort::closed_channel& e) {
            EXPECT(std::string(e.what()).find("gort::select") == 0);
            threw.fetch_add(1);
          }
          wg.done();
        });
      if (r % 2) gort::sleep_for(50us);  // usually parked by now; sometimes not yet
      a.close();
      c.close();
      wg.wait();
      REQUIRE(closed_a.load() == n);
      REQUIRE(threw.load() == n);
      // b never had anything: every stale node on it was taken back by its owner.
      int x = 1;
      REQUIRE_FALSE(b.try_send(x));
    }
  });
}

TEST_CASE("close from a plain OS thread wakes Gs parked in select", "[select][close][thread]") {
  no_procs_env env;
  expect_none en;
  gort::chan<int> a, b;
  std::atomic<int> woke{0};
  std::thread closer;
  gort::run(with_procs(2), [&] {
    constexpr int n = 8;
    gort::wait_group wg;
    wg.add(n);
    for (int g = 0; g < n; ++g)
      gort::go([&] {
        gort::select(gort::on_recv(a, [&](std::optional<int> v) {
                       if (!v) woke.fetch_add(1);
                     }),
                     gort::on_recv(b, [](std::optional<int>) {}));
        wg.done();
      });
    closer = std::thread([a] {
      std::this_thread::sleep_for(5ms);
      a.close();
    });
    wg.wait();
  });
  closer.join();
  CHECK(woke.load() == 8);
}

namespace {

// Producers select-send to whichever of k channels takes the value first; consumers
// select-receive from all of them, some with short timeouts (stale nodes, lost claims). Every
// value must arrive exactly once.
void select_exchange(unsigned procs, std::size_t cap, bool with_timeouts) {
  gort::run(with_procs(procs), [cap, with_timeouts] {
    constexpr int k = 3, np = 4, nc = 4;
    const long per = 200000 / test_scale() / np;
    std::vector<gort::chan<long>> ch;
    for (int i = 0; i < k; ++i) ch.emplace_back(cap);
    std::vector<std::vector<long>> got(nc);
    gort::wait_group prod, cons;
    prod.add(np);
    cons.add(nc);
    for (int p = 0; p < np; ++p)
      gort::go([&, p] {
        for (long i = 0; i < per; ++i) {
          const long v = p * per + i;
          if (with_timeouts && i % 3 == 0) {
            // Retry with a timeout until it goes: a case not taken must not send.
            while (gort::select(gort::on_send(ch[0], v, [] {}), gort::on_send(ch[1], v, [] {}),
                                gort::on_send(ch[2], v, [] {}),
                                gort::on_timeout(std::chrono::microseconds(1 + i % 5), [] {})) == 3) {
            }
          } else {
            gort::select(gort::on_send(ch[0], v, [] {}), gort::on_send(ch[1], v, [] {}),
                         gort::on_send(ch[2], v, [] {}));
          }
        }
        prod.done();
      });
    for (int c = 0; c < nc; ++c)
      gort::go([&, c] {
        int open = k;
        std::array<bool, k> live{true, true, true};
        auto& mine = got[c];
        long spins = 0;
        while (open > 0) {
          auto take = [&](int j) {
            return [&, j](std::optional<long> v) {
              if (v) mine.push_back(*v);
              else if (live[j]) {
                live[j] = false;
                --open;
              }
            };
          };
          if (with_timeouts && (++spins % 2) == 0) {
            gort::select(gort::on_recv(ch[0], take(0)), gort::on_recv(ch[1], take(1)),
                         gort::on_recv(ch[2], take(2)),
                         gort::on_timeout(std::chrono::microseconds(spins % 4), [] {}));
          } else {
            gort::select(gort::on_recv(ch[0], take(0)), gort::on_recv(ch[1], take(1)),
                         gort::on_recv(ch[2], take(2)));
          }
        }
        cons.done();
      });
    prod.wait();
    for (auto& c : ch) c.close();
    cons.wait();
    const delivery_count d = count_deliveries(got, np * per);
    CHECK(d.out_of_range == 0);
    CHECK(d.repeated == 0);
    CHECK(d.total == np * per);
  });
}

}  // namespace

TEST_CASE("selects sending and receiving on shared channels: exactly once", "[select][stress]") {
  no_procs_env env;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(0u, 2u);
  select_exchange(procs, cap, false);
}

TEST_CASE("selects with timeouts racing wakers: exactly once, no stale node matched", "[select][stress]") {
  no_procs_env env;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(0u, 2u);
  select_exchange(procs, cap, true);
}

TEST_CASE("select against plain send and recv, the same channel twice in one select", "[select]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  gort::run(with_procs(procs), [] {
    gort::chan<int> ch;
    const int n = static_cast<int>(20000 / test_scale());
    gort::chan<long> result(1);
    gort::go([ch, n, result] {
      long sum = 0;
      int count = 0;
      while (count < n) {
        // Two receive cases on one channel, plus a send case on it too: the channel is
        // locked once, and our own send can never meet our own receive.
        gort::select(gort::on_recv(ch, [&](std::optional<int> v) { sum += *v, ++count; }),
                     gort::on_recv(ch, [&](std::optional<int> v) { sum += *v, ++count; }));
      }
      result.send(sum);
    });
    for (int i = 1; i <= n; ++i) ch.send(i);
    CHECK(result.recv() == static_cast<long>(n) * (n + 1) / 2);

    // A send and a receive case on the same unbuffered channel, against plain partners.
    gort::chan<long> tally(1);
    gort::go([ch, n, tally] {
      long got = 0;
      int sends = 0, recvs = 0;
      while (sends + recvs < n) {
        gort::select(gort::on_send(ch, -1, [&] { ++sends; }),
                     gort::on_recv(ch, [&](std::optional<int> v) { got += *v, ++recvs; }));
      }
      tally.send(got * 100000 + recvs);
      tally.send(sends);
    });
    long sent = 0;
    int want_recv = 0, took = 0;
    // Alternate: offer a value, or take one, until the selecting G did n operations.
    for (int i = 0; want_recv + took < n; ++i) {
      if (i % 2) {
        ch.send(i);
        sent += i;
        ++want_recv;
      } else {
        EXPECT(ch.recv() == -1);
        ++took;
      }
    }
    const long g = *tally.recv();
    CHECK(g % 100000 == want_recv);
    CHECK(g / 100000 == sent);
    CHECK(tally.recv() == took);
  });
}

TEST_CASE("select from a plain OS thread blocks the thread", "[select][thread]") {
  gort::chan<int> a, b;
  std::thread t([a, b] {
    std::this_thread::sleep_for(2ms);
    b.send(9);
    a.close();
  });
  int v = 0;
  auto i = gort::select(gort::on_recv(a, [](std::optional<int>) {}),
                        gort::on_recv(b, [&](std::optional<int> x) { v = *x; }));
  CHECK(i == 1);
  CHECK(v == 9);
  std::optional<int> w = 1;
  i = gort::select(gort::on_recv(a, [&](std::optional<int> x) { w = x; }),
                   gort::on_timeout(10s, [] {}));
  CHECK(i == 0);
  CHECK(w == std::nullopt);
  t.join();
  auto t0 = steady::now();
  CHECK(gort::select(gort::on_recv(b, [](std::optional<int>) {}), gort::on_timeout(5ms, [] {})) == 1);
  CHECK(steady::now() - t0 >= 5ms);
}

TEST_CASE("select with move-only values and moved-from handles", "[select][errors]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    gort::chan<std::unique_ptr<int>> ch(1);
    auto i = gort::select(gort::on_send(ch, std::make_unique<int>(5), [] {}));
    CHECK(i == 0);
    std::unique_ptr<int> got;
    i = gort::select(gort::on_recv(ch, [&](std::optional<std::unique_ptr<int>> v) { got = std::move(*v); }));
    CHECK(i == 0);
    REQUIRE(got);
    CHECK(*got == 5);

    gort::chan<int> a;
    gort::chan<int> b = std::move(a);
    CHECK_THROWS_WITH(gort::select(gort::on_recv(a, [](std::optional<int>) {})),
                      ContainsSubstring("gort::chan::select on_recv") && ContainsSubstring("moved-from"));
    CHECK_THROWS_AS(gort::select(gort::on_send(a, 1, [] {})), std::logic_error);
  });
}

TEST_CASE("many selects over many channels (more cases than fit on the stack)", "[select]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    constexpr int k = 20;
    std::vector<gort::chan<int>> ch;
    for (int i = 0; i < k; ++i) ch.emplace_back(0);
    gort::chan<int> res(1);
    gort::go([ch, res] {
      int sum = 0;
      for (int round = 0; round < k; ++round) {
        int v = 0;
        auto on = [&](int) { return [&](std::optional<int> x) { v = *x; }; };
        gort::select(gort::on_recv(ch[0], on(0)), gort::on_recv(ch[1], on(1)), gort::on_recv(ch[2], on(2)),
                     gort::on_recv(ch[3], on(3)), gort::on_recv(ch[4], on(4)), gort::on_recv(ch[5], on(5)),
                     gort::on_recv(ch[6], on(6)), gort::on_recv(ch[7], on(7)), gort::on_recv(ch[8], on(8)),
                     gort::on_recv(ch[9], on(9)), gort::on_recv(ch[10], on(10)), gort::on_recv(ch[11], on(11)),
                     gort::on_recv(ch[12], on(12)), gort::on_recv(ch[13], on(13)), gort::on_recv(ch[14], on(14)),
                     gort::on_recv(ch[15], on(15)), gort::on_recv(ch[16], on(16)), gort::on_recv(ch[17], on(17)),
                     gort::on_recv(ch[18], on(18)), gort::on_recv(ch[19], on(19)));
        sum += v;
      }
      res.send(sum);
    });
    int want = 0;
    for (int i = 0; i < k; ++i) {
      ch[(i * 7) % k].send(i + 1);
      want += i + 1;
    }
    CHECK(res.recv() == want);
  });
}

TEST_CASE("a closed, drained buffered channel counts as ready: chosen uniformly with another", "[select][fairness]") {
  no_procs_env env;
  auto counts = gort::run(with_procs(1), [] {
    gort::chan<int> closed(4), ready(1);
    closed.close();
    ready.send(0);
    std::array<long, 2> n{};
    const long draws = 50000 / test_scale();
    for (long d = 0; d < draws; ++d) {
      const bool second = gort::select(gort::on_recv(closed, [](std::optional<int>) {}),
                                       gort::on_recv(ready, [](std::optional<int>) {})) == 1;
      ++n[second];
      if (second) ready.send(0);
    }
    return n;
  });
  const double chi2 = chi2_uniform(counts);
  INFO("counts " << counts[0] << " " << counts[1] << " chi2 " << chi2);
  CHECK(chi2 < 33.0);  // 1 degree of freedom: P(chi2 > 33) is about 1e-8
}

TEST_CASE("select over buffered channels closed by their producers: drained before closed, in order", "[select][close][stress]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(1u, 16u);
  gort::run(with_procs(procs), [cap] {
    constexpr int k = 4;
    const int rounds = static_cast<int>(20 / test_scale()) + 1;
    const long per = 20000 / test_scale();
    for (int r = 0; r < rounds; ++r) {
      std::vector<gort::chan<long>> ch;
      for (int j = 0; j < k; ++j) ch.emplace_back(cap);
      for (int j = 0; j < k; ++j)
        gort::go([c = ch[j], per] {
          for (long i = 0; i < per; ++i) c.send(i);
          c.close();
        });
      // The only receiver: a channel's close must come after all of its values, in order. A
      // channel seen closed is swapped for one nobody sends on (Go code would nil it): a closed
      // channel is always ready, and selecting it again and again would starve the producers
      // still running on a single P.
      gort::chan<long> never;
      std::vector<gort::chan<long>> src = ch;
      std::array<long, k> next{};
      std::array<bool, k> closed{};
      int open = k;
      while (open > 0) {
        auto on = [&](int j) {
          return [&, j](std::optional<long> v) {
            if (v) {
              EXPECT(!closed[j]);
              EXPECT(*v == next[j]);
              ++next[j];
            } else if (!closed[j]) {
              EXPECT(next[j] == per);  // drained before the close was seen
              closed[j] = true;
              --open;
            }
          };
        };
        gort::select(gort::on_recv(src[0], on(0)), gort::on_recv(src[1], on(1)),
                     gort::on_recv(src[2], on(2)), gort::on_recv(src[3], on(3)));
        for (int j = 0; j < k; ++j)
          if (closed[j]) src[j] = never;
      }
      for (int j = 0; j < k; ++j) REQUIRE(next[j] == per);
      for (auto& c : ch) REQUIRE(c.recv() == std::nullopt);
    }
  });
}
