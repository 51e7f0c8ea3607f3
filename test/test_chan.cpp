// Channels: FIFO, exactly-once delivery, close semantics, timeouts, move-only elements, plain
// OS threads on either end, misuse errors. Select has its own file (test_select.cpp).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
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

namespace {

// Element counting constructions and destructions, to catch leaks and double destroys.
std::atomic<long> live{0};
struct counted {
  long v = 0;
  explicit counted(long x) : v(x) { live.fetch_add(1); }
  counted(counted&& o) noexcept : v(o.v) {
    o.v = -1;
    live.fetch_add(1);
  }
  counted(const counted&) = delete;
  counted& operator=(const counted&) = delete;
  ~counted() { live.fetch_sub(1); }
};

}  // namespace

TEST_CASE("buffered channel: FIFO, size, capacity, drain after close", "[chan]") {
  no_procs_env env;
  expect_none en;
  gort::run(with_procs(1), [] {
    gort::chan<int> ch(4);
    CHECK(ch.capacity() == 4);
    CHECK(ch.size() == 0);
    for (int i = 0; i < 4; ++i) ch.send(i);
    CHECK(ch.size() == 4);
    int x = 99;
    CHECK_FALSE(ch.try_send(x));
    CHECK(x == 99);
    for (int i = 0; i < 2; ++i) CHECK(ch.recv() == i);
    ch.send(4);
    ch.send(5);
    ch.close();
    for (int i = 2; i < 6; ++i) CHECK(ch.recv() == i);
    CHECK(ch.recv() == std::nullopt);
    CHECK(ch.try_recv() == std::nullopt);
    CHECK(ch.size() == 0);
  });
}

TEST_CASE("unbuffered send completes only when a receiver took the value", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  gort::run(with_procs(procs), [] {
    const int rounds = static_cast<int>(20000 / test_scale());
    gort::chan<int> ch;
    std::atomic<int> taken{0};
    auto t = gort::spawn([&] {
      for (int i = 0; i < rounds; ++i) {
        auto v = ch.recv();
        EXPECT(v == i);
        taken.store(i + 1);
      }
    });
    for (int i = 0; i < rounds; ++i) {
      ch.send(i);
      // The receiver has the value (it may not have stored `taken` yet, but it cannot be
      // more than one behind: it blocks in the next recv until our next send).
      REQUIRE(taken.load() >= i);
    }
    t.join();
    CHECK(taken.load() == rounds);
  });
}

TEST_CASE("try_send and try_recv on an unbuffered channel need a parked partner", "[chan]") {
  no_procs_env env;
  expect_none en;
  gort::run(with_procs(2), [] {
    gort::chan<int> ch;
    int v = 5;
    CHECK_FALSE(ch.try_send(v));
    CHECK(v == 5);
    CHECK(ch.try_recv() == std::nullopt);
    gort::chan<int> done(1);
    gort::go([ch, done] { done.send(*ch.recv()); });
    // The receiver parks eventually; keep offering until it takes the value.
    while (!ch.try_send(v)) gort::yield();
    CHECK(done.recv() == 5);
  });
}

TEST_CASE("move-only elements: unique_ptr through buffered and unbuffered channels", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto cap = GENERATE(0u, 1u, 16u);
  gort::run(with_procs(2), [cap] {
    gort::chan<std::unique_ptr<int>> ch(cap);
    const int n = static_cast<int>(10000 / test_scale());
    auto t = gort::spawn([ch, n] {
      for (int i = 0; i < n; ++i) ch.send(std::make_unique<int>(i));
      ch.close();
    });
    int i = 0;
    while (auto p = ch.recv()) {
      REQUIRE(*p);
      REQUIRE(**p == i);
      ++i;
    }
    t.join();
    CHECK(i == n);
    auto up = std::make_unique<int>(7);
    CHECK_THROWS_AS(ch.try_send(up), gort::closed_channel);
    REQUIRE(up);  // a failed send leaves the value where it was
    CHECK(*up == 7);
  });
}

TEST_CASE("elements are constructed and destroyed exactly once, leftovers too", "[chan]") {
  no_procs_env env;
  expect_none en;
  live.store(0);
  gort::run(with_procs(2), [] {
    {
      gort::chan<counted> ch(8);
      for (long i = 0; i < 8; ++i) ch.send(counted(i));
      for (long i = 0; i < 3; ++i) CHECK(ch.recv()->v == i);
      counted c(100);
      CHECK(ch.try_send(c));
      CHECK(c.v == -1);  // moved from on success
      ch.send(counted(200));
      ch.send(counted(201));
      counted d(101);
      CHECK_FALSE(ch.try_send(d));
      CHECK(d.v == 101);  // untouched on failure
      CHECK(ch.size() == 8);
    }  // the last handle goes: the 8 buffered elements are destroyed
    CHECK(live.load() == 0);
  });
  CHECK(live.load() == 0);
}

TEST_CASE("send_for and recv_for time out and succeed", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [] {
    gort::chan<int> ch;
    auto t0 = steady::now();
    CHECK(ch.recv_for(20ms) == std::nullopt);
    CHECK(steady::now() - t0 >= 20ms);
    int v = 3;
    t0 = steady::now();
    CHECK_FALSE(ch.send_for(v, 20ms));
    CHECK(steady::now() - t0 >= 20ms);
    CHECK(v == 3);
    CHECK_FALSE(ch.send_for(v, 0ms));
    CHECK(ch.recv_for(-1ms) == std::nullopt);

    // Success well within the limit: a partner shows up after a short while.
    gort::go([ch] {
      gort::sleep_for(5ms);
      ch.send(11);
    });
    CHECK(ch.recv_for(10s) == 11);
    gort::chan<int> got(1);
    gort::go([ch, got] {
      gort::sleep_for(5ms);
      got.send(*ch.recv());
    });
    CHECK(ch.send_for(v, 10s));
    CHECK(got.recv() == 3);

    // A timed-out waiter leaves nothing behind: the next pair meets normally, many times.
    const int rounds = static_cast<int>(2000 / test_scale());
    for (int i = 0; i < rounds; ++i) {
      CHECK(ch.recv_for(1us) == std::nullopt);
      int w = i;
      CHECK_FALSE(ch.send_for(w, 1us));
    }
    gort::go([ch] { ch.send(42); });
    CHECK(ch.recv() == 42);
  });
}

namespace {

// recv_for(d) and send_for(d) on a channel (capacity cap) that has nothing for them, with a d
// too long for "now + d" to be represented: each must park and stay parked until a partner
// comes, then complete with the partner's value. The G stays alive (on `hold`) until the end,
// so that its descriptor can be read while it is checked for being parked.
template <class D>
void too_long_is_forever(D d, std::size_t cap) {
  {
    gort::chan<int> ch(cap), out(1), hold;
    std::atomic<gort::rt::g*> gp{nullptr};
    std::atomic<bool> returned{false};
    gort::go([=, &gp, &returned] {
      gp.store(gort::rt::getg());
      const std::optional<int> v = ch.recv_for(d);
      returned.store(true);
      out.send(v ? *v : -1);
      (void)hold.recv();
    });
    CHECK(parks_without_returning(gp, returned));
    gort::sleep_for(20ms);  // not synchronisation: a wrong but finite deadline would expire here
    CHECK_FALSE(returned.load());
    CHECK(ch.send_for(42, 5s));
    CHECK(out.recv() == 42);
    hold.close();
  }
  {
    gort::chan<int> ch(cap), out(1), hold;
    for (std::size_t i = 0; i < cap; ++i) ch.send(-2);  // full: the send has to wait
    std::atomic<gort::rt::g*> gp{nullptr};
    std::atomic<bool> returned{false};
    gort::go([=, &gp, &returned] {
      gp.store(gort::rt::getg());
      const bool ok = ch.send_for(7, d);
      returned.store(true);
      out.send(ok ? 1 : 0);
      (void)hold.recv();
    });
    CHECK(parks_without_returning(gp, returned));
    gort::sleep_for(20ms);
    CHECK_FALSE(returned.load());
    for (std::size_t i = 0; i < cap; ++i) CHECK(ch.recv_for(5s) == -2);
    CHECK(ch.recv_for(5s) == 7);
    CHECK(out.recv() == 1);
    hold.close();
  }
}

}  // namespace

TEST_CASE("send_for and recv_for with a duration too long to represent wait without limit", "[chan]") {
  no_procs_env env;
  const auto procs = GENERATE(1u, 2u);
  const std::size_t cap = GENERATE(0u, 1u);
  gort::run(with_procs(procs), [cap] {
    too_long_is_forever(std::chrono::nanoseconds::max(), cap);
    too_long_is_forever(std::chrono::hours::max(), cap);
    too_long_is_forever(std::chrono::duration<double>(1e30), cap);
    too_long_is_forever(std::chrono::nanoseconds::max() - std::chrono::hours(1), cap);
  });
}

TEST_CASE("timed waits racing with partners: each value delivered exactly once", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  gort::run(with_procs(procs), [] {
    const long n = 20000 / test_scale();
    gort::chan<long> ch;
    gort::chan<long> sum_ch(1);
    gort::go([ch, n] {
      // The sender keeps retrying with short timeouts: some sends time out, none is lost or
      // duplicated.
      for (long i = 1; i <= n; ++i) {
        long v = i;
        while (!ch.send_for(v, std::chrono::microseconds(1 + i % 7))) {
        }
        EXPECT(v == i);
      }
      ch.close();
    });
    gort::go([ch, sum_ch, n] {
      // The receiver also retries with short timeouts until it has all n, in order.
      long sum = 0, count = 0;
      while (count < n) {
        auto v = ch.recv_for(std::chrono::microseconds(1 + count % 5));
        if (!v) continue;
        EXPECT(*v == count + 1);
        sum += *v;
        ++count;
      }
      EXPECT(ch.recv() == std::nullopt);  // nothing more: closed and drained
      sum_ch.send(count * 1'000'000'000 + sum);
    });
    const long r = *sum_ch.recv();
    CHECK(r / 1'000'000'000 == n);
    CHECK(r % 1'000'000'000 == n * (n + 1) / 2);
  });
}

namespace {

// 8 producers x 8 consumers; every value received exactly once, each producer's values in
// the order sent. Values encode (producer, sequence).
void many_to_many(unsigned procs, std::size_t cap) {
  gort::run(with_procs(procs), [cap] {
    constexpr int np = 8, nc = 8;
    const long per = 1'000'000 / test_scale() / np;
    gort::chan<std::uint64_t> ch(cap);
    std::vector<std::vector<std::uint32_t>> seen(nc);
    gort::wait_group prod, cons;
    prod.add(np);
    cons.add(nc);
    for (int p = 0; p < np; ++p) {
      gort::go([&, p] {
        for (long i = 0; i < per; ++i) ch.send((std::uint64_t(p) << 32) | std::uint64_t(i));
        prod.done();
      });
    }
    for (int c = 0; c < nc; ++c) {
      gort::go([&, c] {
        std::vector<long> last(np, -1);
        auto& mine = seen[c];
        while (auto v = ch.recv()) {
          const auto p = static_cast<int>(*v >> 32);
          const auto i = static_cast<long>(*v & 0xffffffffu);
          EXPECT(p < np);
          if (p >= np) break;
          EXPECT(i > last[p]);  // per-producer order, as seen by any one consumer
          last[p] = i;
          mine.push_back(static_cast<std::uint32_t>(*v >> 32) * static_cast<std::uint32_t>(per) +
                         static_cast<std::uint32_t>(i));
        }
        cons.done();
      });
    }
    prod.wait();
    ch.close();
    cons.wait();
    const delivery_count d = count_deliveries(seen, np * per);
    CHECK(d.out_of_range == 0);
    CHECK(d.repeated == 0);
    CHECK(d.total == np * per);
  });
}

}  // namespace

TEST_CASE("8 producers x 8 consumers, buffered: exactly once, per-producer order", "[chan][stress]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  many_to_many(procs, 64);
}

TEST_CASE("8 producers x 8 consumers, unbuffered: exactly once, per-producer order", "[chan][stress]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  many_to_many(procs, 0);
}

TEST_CASE("per-producer order holds end to end with a single consumer", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto cap = GENERATE(0u, 3u);
  gort::run(with_procs(4), [cap] {
    constexpr int np = 8;
    const long per = 200000 / test_scale() / np;
    gort::chan<std::uint64_t> ch(cap);
    for (int p = 0; p < np; ++p)
      gort::go([ch, p, per] {
        for (long i = 0; i < per; ++i) ch.send((std::uint64_t(p) << 32) | std::uint64_t(i));
      });
    std::vector<long> next(np, 0);
    for (long k = 0; k < np * per; ++k) {
      auto v = *ch.recv();
      const auto p = static_cast<int>(v >> 32);
      REQUIRE(static_cast<long>(v & 0xffffffffu) == next[p]);
      ++next[p];
    }
    for (int p = 0; p < np; ++p) CHECK(next[p] == per);
    CHECK(ch.try_recv() == std::nullopt);
  });
}

namespace {

// The concurrent prime sieve (Go's classic): a generator and a chain of filter Gs.
void filter(gort::chan<int> in, gort::chan<int> out, int prime) {
  for (;;) {
    int i = *in.recv();
    if (i % prime != 0) out.send(i);
  }
}

}  // namespace

TEST_CASE("concurrent prime sieve: a chain of 1000 filter Gs yields the first 1000 primes", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  const int count = test_scale() >= 10 ? 300 : 1000;
  std::vector<int> got = gort::run(with_procs(procs), [count] {
    gort::chan<int> ch;
    gort::go([ch] {
      for (int i = 2;; ++i) ch.send(i);
    });
    std::vector<int> primes;
    for (int i = 0; i < count; ++i) {
      int prime = *ch.recv();
      primes.push_back(prime);
      gort::chan<int> next;
      gort::go(filter, ch, next, prime);
      ch = next;
    }
    return primes;  // the chain is abandoned with the runtime, as in Go
  });
  std::vector<int> want;
  for (int n = 2; static_cast<int>(want.size()) < count; ++n) {
    bool prime = true;
    for (int d = 2; d * d <= n; ++d)
      if (n % d == 0) {
        prime = false;
        break;
      }
    if (prime) want.push_back(n);
  }
  CHECK(got == want);
  CHECK(got.back() == (count == 1000 ? 7919 : 1987));
}

TEST_CASE("close wakes every blocked sender and receiver with the right outcome", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(0u, 2u);
  gort::run(with_procs(procs), [cap] {
    const int rounds = static_cast<int>(200 / test_scale()) + 1;
    for (int r = 0; r < rounds; ++r) {
      // Receivers block on an empty channel; close lets all of them go with nullopt.
      gort::chan<int> ch(cap);
      constexpr int nr = 10;
      std::atomic<int> closed_seen{0}, values{0};
      gort::wait_group wg;
      wg.add(nr);
      for (int i = 0; i < nr; ++i)
        gort::go([&] {
          if (ch.recv()) values.fetch_add(1);
          else closed_seen.fetch_add(1);
          wg.done();
        });
      gort::sleep_for(100us);  // usually they are parked by now; the outcome is the same if not
      ch.close();
      wg.wait();
      REQUIRE(closed_seen.load() == nr);
      REQUIRE(values.load() == 0);

      // Senders block on a full channel; close makes each throw closed_channel, and the
      // buffered values still drain.
      gort::chan<int> sc(cap);
      for (unsigned i = 0; i < cap; ++i) sc.send(static_cast<int>(i));
      std::atomic<int> threw{0}, sent{0};
      wg.add(nr);
      for (int i = 0; i < nr; ++i)
        gort::go([&, i] {
          try {
            sc.send(1000 + i);
            sent.fetch_add(1);
          } catch (const gort::closed_channel& e) {
            EXPECT(std::string(e.what()).find("gort::") == 0);
            threw.fetch_add(1);
          }
          wg.done();
        });
      gort::sleep_for(100us);
      sc.close();
      wg.wait();
      REQUIRE(threw.load() == nr);
      REQUIRE(sent.load() == 0);
      for (unsigned i = 0; i < cap; ++i) REQUIRE(sc.recv() == static_cast<int>(i));
      REQUIRE(sc.recv() == std::nullopt);
    }
  });
}

TEST_CASE("close racing with senders and receivers: nothing lost, nothing duplicated", "[chan]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  auto cap = GENERATE(0u, 4u);
  gort::run(with_procs(procs), [cap] {
    const int rounds = static_cast<int>(300 / test_scale()) + 1;
    for (int r = 0; r < rounds; ++r) {
      gort::chan<int> ch(cap);
      constexpr int ns = 4, nr = 4, per = 50;
      std::atomic<long> sent_sum{0}, recv_sum{0};
      gort::wait_group wg;
      wg.add(ns + nr);
      for (int s = 0; s < ns; ++s)
        gort::go([&, s] {
          try {
            for (int i = 0; i < per; ++i) {
              const int v = s * per + i + 1;
              ch.send(v);
              sent_sum.fetch_add(v);  // only values whose send returned normally
            }
          } catch (const gort::closed_channel&) {
          }
          wg.done();
        });
      for (int q = 0; q < nr; ++q)
        gort::go([&] {
          while (auto v = ch.recv()) recv_sum.fetch_add(*v);
          wg.done();
        });
      gort::yield();
      ch.close();
      wg.wait();
      REQUIRE(recv_sum.load() == sent_sum.load());
    }
  });
}

TEST_CASE("plain OS threads feed Gs and Gs feed a plain OS thread", "[chan][thread]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u);
  auto cap = GENERATE(0u, 16u);
  const long per = 20000 / test_scale();
  gort::chan<long> in(cap), out(cap);
  std::atomic<long> out_sum{0}, out_count{0};
  // Plain std::threads: producers feeding the Gs, and a consumer of what the Gs produce. They
  // start from inside the runtime so that the deadlock detector knows threads outside it
  // exist (it cannot see that they hold channels). Nothing in a G may block its thread
  // (joining a std::thread from a G would hold the G's processor), so the producers report
  // completion on a channel and all are joined after the runtime is gone.
  constexpr int nthreads = 3, nworkers = 4;
  gort::chan<int> finished(nthreads);
  std::vector<std::thread> producers;
  std::thread consumer;
  gort::run(with_procs(procs), [&] {
    consumer = std::thread([&] {
      while (auto v = out.recv()) {
        out_sum.fetch_add(*v);
        out_count.fetch_add(1);
      }
    });
    for (int t = 0; t < nthreads; ++t)
      producers.emplace_back([&, t] {
        for (long i = 0; i < per; ++i) in.send(t * per + i);
        finished.send(t);
      });
    gort::wait_group wg;
    wg.add(nworkers);
    for (int w = 0; w < nworkers; ++w)
      gort::go([&] {
        while (auto v = in.recv()) out.send(*v * 2);
        wg.done();
      });
    for (int t = 0; t < nthreads; ++t) finished.recv();
    in.close();
    wg.wait();
    out.close();
  });
  for (auto& t : producers) t.join();
  consumer.join();
  const long n = 3 * per;
  CHECK(out_count.load() == n);
  CHECK(out_sum.load() == n * (n - 1));
}

TEST_CASE("OS threads alone: channels block threads when no runtime runs", "[chan][thread]") {
  gort::chan<int> ch;
  std::thread t([ch] {
    for (int i = 0; i < 1000; ++i) ch.send(i);
    ch.close();
  });
  long sum = 0;
  while (auto v = ch.recv()) sum += *v;
  t.join();
  CHECK(sum == 999 * 1000 / 2);
  auto t0 = steady::now();
  CHECK(ch.recv_for(10ms) == std::nullopt);  // closed: immediate
  CHECK(steady::now() - t0 < 5s);
  gort::chan<int> empty;
  t0 = steady::now();
  CHECK(empty.recv_for(10ms) == std::nullopt);
  CHECK(steady::now() - t0 >= 10ms);
}

TEST_CASE("misuse: closed channels and null handles throw clear errors", "[chan][errors]") {
  no_procs_env env;
  expect_none en;
  gort::run(with_procs(1), [] {
    gort::chan<int> ch(1);
    ch.close();
    CHECK_THROWS_AS(ch.send(1), gort::closed_channel);
    CHECK_THROWS_WITH(ch.send(1), ContainsSubstring("gort::chan::send: send on a closed channel"));
    CHECK_THROWS_WITH(ch.close(), ContainsSubstring("gort::chan::close: close of a closed channel"));
    int v = 1;
    CHECK_THROWS_AS(ch.try_send(v), gort::closed_channel);
    CHECK_THROWS_AS(ch.send_for(v, 1ms), gort::closed_channel);
    static_assert(std::is_base_of_v<std::logic_error, gort::closed_channel>);

    gort::chan<int> a(2);
    gort::chan<int> b = std::move(a);
    CHECK_FALSE(static_cast<bool>(a));
    CHECK_THROWS_WITH(a.send(1), ContainsSubstring("gort::chan::send") && ContainsSubstring("moved-from"));
    CHECK_THROWS_AS(a.recv(), std::logic_error);
    CHECK_THROWS_AS(a.close(), std::logic_error);
    CHECK_THROWS_AS(a.size(), std::logic_error);
    CHECK_THROWS_WITH(a.try_recv(), ContainsSubstring("gort::chan::try_recv"));
    gort::chan<int> z(0);  // 0 is a capacity, not a null pointer
    CHECK(z.capacity() == 0);
    b.send(5);  // the channel itself still works through the other handle
    CHECK(b.recv() == 5);
    a = b;  // a null handle can be given a channel
    a.send(6);
    CHECK(b.recv() == 6);
    CHECK(a == b);
    CHECK_THROWS_WITH(gort::chan<int>(std::size_t{1} << 60), ContainsSubstring("gort::chan: capacity"));
  });
}

// ---- buffered channels: the lock-free ring's edge cases ---------------------------------------

namespace {

// An element whose n-th move takes a few microseconds (1: the move into the ring, 2: the move
// out of it): a copy into or out of the ring stays in progress long enough for other parties
// to overtake it, which is when a ring must wait to answer "full" or "empty" exactly.
struct slow {
  long v = 0;
  int moves = 0, slow_at = 0;
  slow(long x, int at) : v(x), slow_at(at) {}
  slow(slow&& o) noexcept : v(o.v), moves(o.moves + 1), slow_at(o.slow_at) {
    if (moves == slow_at)
      for (int i = 0; i < 400; ++i) asm volatile("");  // a loop the compiler keeps
  }
  slow& operator=(slow&& o) noexcept {
    v = o.v;
    moves = o.moves;
    slow_at = o.slow_at;
    return *this;
  }
  slow(const slow&) = delete;
  slow& operator=(const slow&) = delete;
};

}  // namespace

TEST_CASE("try_send fails only on a full buffer, even while receives are still copying out", "[chan][ring]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  auto cap = GENERATE(1u, 4u);
  gort::run(with_procs(procs), [cap] {
    constexpr int nc = 3;
    const long n = 60000 / test_scale();
    gort::chan<slow> ch(cap);
    std::atomic<long> received{0}, sum{0};
    gort::wait_group wg;
    wg.add(nc);
    for (int c = 0; c < nc; ++c)
      gort::go([&] {
        long s = 0;
        while (auto v = ch.recv()) {
          s += v->v;
          received.fetch_add(1);  // after the receive returned: that value has left the buffer
        }
        sum.fetch_add(s);
        wg.done();
      });
    long tried = 0, failed = 0;
    for (long i = 0; i < n; ++i) {  // i values sent so far, all by this G
      const long r = received.load();
      // Every other value is slow to copy out: the buffer fills, and a pop is still copying
      // while a later one has completed.
      slow x(i, i % 2 ? 0 : 2);
      if (i - r < static_cast<long>(cap)) {
        // At most i - r values are buffered (receives in progress may have taken some): room.
        ++tried;
        if (!ch.try_send(x)) {
          ++failed;
          ch.send(std::move(x));
        }
      } else {
        ch.send(std::move(x));
      }
    }
    ch.close();
    wg.wait();
    CHECK(failed == 0);
    CHECK(tried > 0);
    CHECK(sum.load() == n * (n - 1) / 2);
  });
}

TEST_CASE("try_recv fails only on an empty buffer, even while sends are still copying in", "[chan][ring]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  auto cap = GENERATE(2u, 64u);
  gort::run(with_procs(procs), [cap] {
    constexpr int np = 3;
    const long per = 20000 / test_scale();
    gort::chan<slow> ch(cap);
    std::atomic<long> sent{0};
    // Each producer holds its own handle: it may still be inside its last send when this G,
    // having received everything, drops the channel.
    for (int p = 0; p < np; ++p)
      gort::go([ch, &sent, p, per] {
        for (long i = 0; i < per; ++i) {
          ch.send(slow(p * per + i, i % 2 ? 0 : 1));  // pushes in progress, overtaken
          sent.fetch_add(1);  // after the send returned: that value is in the buffer or taken
        }
      });
    long got = 0, sum = 0, tried = 0, failed = 0;
    while (got < np * per) {  // the only receiver
      const long s = sent.load();
      std::optional<slow> v;
      if (s - got > 0) {  // at least s - got values are buffered: one is there
        ++tried;
        v = ch.try_recv();
        if (!v) {
          ++failed;
          v = ch.recv();
        }
      } else {
        v = ch.recv();
      }
      sum += v->v;
      ++got;
    }
    CHECK(failed == 0);
    CHECK(tried > 0);
    CHECK(sum == np * per * (np * per - 1) / 2);
    CHECK(ch.try_recv() == std::nullopt);
  });
}

TEST_CASE("close racing lock-free sends: a lone receiver drains every value whose send returned", "[chan][ring]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  auto cap = GENERATE(1u, 3u, 64u);
  gort::run(with_procs(procs), [cap] {
    const int rounds = static_cast<int>(300 / test_scale()) + 1;
    for (int r = 0; r < rounds; ++r) {
      gort::chan<slow> ch(cap);
      constexpr int ns = 3;
      std::atomic<long> sent_sum{0}, sent_n{0};
      std::atomic<int> stopped{0};
      gort::wait_group wg;
      wg.add(ns);
      for (int s = 0; s < ns; ++s)
        gort::go([&, s] {
          try {
            for (long i = 1;; ++i) {
              const long v = s * 1'000'000 + i;
              ch.send(slow(v, 1 + i % 2));
              sent_sum.fetch_add(v);  // counted only once the send returned normally
              sent_n.fetch_add(1);
            }
          } catch (const gort::closed_channel&) {
            stopped.fetch_add(1);
          }
          wg.done();
        });
      // The only receiver: once it sees the close, nothing may be left behind.
      auto rx = gort::spawn([&] {
        long sum = 0;
        while (auto v = ch.recv()) sum += v->v;
        return sum;
      });
      for (int i = 0; i < r % 7; ++i) gort::yield();
      ch.close();
      const long got = rx.join();
      wg.wait();
      REQUIRE(stopped.load() == ns);
      REQUIRE(got == sent_sum.load());
      REQUIRE(ch.size() == 0);
      REQUIRE(ch.try_recv() == std::nullopt);
    }
  });
}

TEST_CASE("8 producers x 8 consumers through 1 and 3 slots: every full/empty transition parks", "[chan][stress]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(1u, 3u);
  many_to_many(procs, cap);
}

TEST_CASE("a chain of Gs over one-slot channels: no wake-up lost across many full/empty turns", "[chan][ring]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(1u, 2u, 4u);
  auto cap = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [cap] {
    constexpr int stages = 8;
    const long n = 100000 / test_scale();
    std::vector<gort::chan<long>> link;
    for (int i = 0; i <= stages; ++i) link.emplace_back(cap);
    for (int s = 0; s < stages; ++s)
      gort::go([in = link[s], out = link[s + 1]] {
        while (auto v = in.recv()) out.send(*v + 1);
        out.close();
      });
    gort::go([in = link[0], n] {
      for (long i = 0; i < n; ++i) in.send(i);
      in.close();
    });
    long next = stages, count = 0;
    while (auto v = link[stages].recv()) {
      EXPECT(*v == next);  // FIFO through every stage
      ++next;
      ++count;
    }
    CHECK(count == n);
  });
}

TEST_CASE("timed and plain operations mixed on a small buffer: exactly once, in order", "[chan][ring]") {
  no_procs_env env;
  expect_none en;
  auto procs = GENERATE(2u, 4u);
  auto cap = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [cap] {
    // Timed-out waiters leave their nodes behind until they take them back; flags set for them
    // must not strand a value or a waiter.
    const long n = 20000 / test_scale();
    constexpr int np = 2;
    gort::chan<long> ch(cap);
    for (int p = 0; p < np; ++p)
      gort::go([ch, p, n] {
        for (long i = 0; i < n; ++i) {
          long v = p * n + i;
          if (i % 2) {
            while (!ch.send_for(v, std::chrono::microseconds(1 + i % 3))) {
            }
          } else {
            ch.send(v);
          }
        }
      });
    std::atomic<long> total{0}, count{0};
    gort::wait_group wg;
    constexpr int nc = 2;
    wg.add(nc);
    for (int c = 0; c < nc; ++c)
      gort::go([&, c] {
        std::array<long, np> last{-1, -1};
        while (count.load() < np * n) {
          std::optional<long> v =
              c == 0 ? ch.recv_for(std::chrono::microseconds(1 + count.load() % 4)) : ch.try_recv();
          if (!v) {
            if (c == 1) gort::yield();
            continue;
          }
          const long p = *v / n;
          EXPECT(*v % n > last[p]);  // per-producer order
          last[p] = *v % n;
          total.fetch_add(*v);
          count.fetch_add(1);
        }
        wg.done();
      });
    wg.wait();
    const long m = np * n;
    CHECK(count.load() == m);
    CHECK(total.load() == m * (m - 1) / 2);
    CHECK(ch.try_recv() == std::nullopt);
  });
}
