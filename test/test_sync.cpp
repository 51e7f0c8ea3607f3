// gort/sync.hpp: mutex, shared_mutex, condition_variable, semaphore, call_once, latch, barrier,
// used from Gs and from plain OS threads. Counts are exact; procs 1, 2 and 4 where it matters.
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "gort/gort.hpp"
#include "gort/sync.hpp"
#include "test_util.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::ContainsSubstring;
using steady = std::chrono::steady_clock;

namespace {

// Starts n Gs running f(i) and waits for them.
template <class F>
void gs(int n, F f) {
  gort::wait_group wg;
  wg.add(n);
  for (int i = 0; i < n; ++i)
    gort::go([&wg, &f, i] {
      f(i);
      wg.done();
    });
  wg.wait();
}

void atomic_max(std::atomic<int>& m, int v) {
  int cur = m.load();
  while (cur < v && !m.compare_exchange_weak(cur, v)) {
  }
}

}  // namespace

TEST_CASE("mutex: 1000 Gs x 10000 increments under lock_guard are exact", "[mutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int ng = 1000;
  const long per = 10'000 / test_scale();
  const long total = gort::run(with_procs(procs), [&] {
    gort::mutex mu;
    long counter = 0;  // plain: only the mutex orders the increments
    gs(ng, [&](int) {
      for (long k = 0; k < per; ++k) {
        std::lock_guard<gort::mutex> l(mu);
        ++counter;
      }
    });
    return counter;
  });
  CHECK(total == ng * per);
}

TEST_CASE("mutex: scoped_lock over two mutexes, taken in both orders, is exact and deadlock-free", "[mutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int ng = 200;
  const long per = 5'000 / test_scale();
  const auto r = gort::run(with_procs(procs), [&] {
    gort::mutex a, b;
    long ca = 0, cb = 0;
    gs(ng, [&](int i) {
      for (long k = 0; k < per; ++k) {
        if (i & 1) {
          std::scoped_lock l(a, b);
          ++ca;
          ++cb;
        } else {
          std::scoped_lock l(b, a);
          ca += 2;
          --cb;
        }
      }
    });
    return std::pair(ca, cb);
  });
  CHECK(r.first == (ng / 2) * per * 3);
  CHECK(r.second == 0);
}

TEST_CASE("mutex: OS threads and Gs share one mutex", "[mutex][thread]") {
  no_procs_env env;
  const long per = 20'000 / test_scale();
  const auto total = gort::run(with_procs(2), [&] {
    gort::mutex mu;
    long counter = 0;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&] {
        for (long k = 0; k < per; ++k) {
          std::lock_guard<gort::mutex> l(mu);
          ++counter;
        }
      });
    gs(100, [&](int) {
      for (long k = 0; k < per / 10; ++k) {
        std::unique_lock<gort::mutex> l(mu);
        ++counter;
      }
    });
    for (auto& t : ts) t.join();
    return counter;
  });
  CHECK(total == 4 * per + 100 * (per / 10));
}

TEST_CASE("mutex: starvation mode hands the lock to a waiter blocked for over 1 ms", "[mutex]") {
  no_procs_env env;
  // Procs >= 2: the hog never blocks, so the waiter needs a P of its own to run at all.
  const unsigned procs = GENERATE(2u, 4u);
  const auto r = gort::run(with_procs(procs), [] {
    gort::mutex mu;
    std::atomic<bool> stop{false};
    std::atomic<long> hog_iters{0};
    std::atomic<bool> hog_running{false};
    gort::wait_group wg;
    wg.add(1);
    gort::go([&] {
      hog_running = true;
      while (!stop.load(std::memory_order_relaxed)) {
        mu.lock();
        // About a microsecond inside: a woken waiter on another P practically never finds
        // the mutex free in normal mode, since the hog relocks within nanoseconds.
        for (int k = 0; k < 300; ++k) asm volatile("" ::: "memory");
        mu.unlock();
        hog_iters.fetch_add(1, std::memory_order_relaxed);
      }
      wg.done();
    });
    while (!hog_running) gort::yield();
    long worst = 0;
    for (int round = 0; round < 5; ++round) {
      const long before = hog_iters.load();
      mu.lock();
      const long during = hog_iters.load() - before;
      mu.unlock();
      worst = std::max(worst, during);
      gort::sleep_for(2ms);
    }
    stop = true;
    wg.wait();
    return std::pair(worst, hog_iters.load());
  });
  INFO("hog iterations while the waiter waited (worst of 5): " << r.first << " of " << r.second);
  // ~1 us per hog iteration: starvation mode after 1 ms means about a thousand iterations.
  // Without hand-off the waiter waits for as long as the hog runs.
  CHECK(r.first < 200'000);
}

TEST_CASE("mutex: unlock of an unlocked mutex throws operation_not_permitted", "[mutex]") {
  no_procs_env env;
  auto check = [] {
    gort::mutex mu;
    try {
      mu.unlock();
      FAIL("no exception");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::operation_not_permitted);
      CHECK_THAT(e.what(), ContainsSubstring("gort::mutex::unlock"));
    }
    mu.lock();
    mu.unlock();
    CHECK_THROWS_AS(mu.unlock(), std::system_error);
    CHECK(mu.try_lock());  // the failed unlock left it consistent
    mu.unlock();
    gort::shared_mutex rw;
    CHECK_THROWS_AS(rw.unlock(), std::system_error);
    CHECK_THROWS_AS(rw.unlock_shared(), std::system_error);
    rw.lock_shared();
    CHECK_THROWS_AS(rw.unlock(), std::system_error);
    rw.unlock_shared();
  };
  check();  // plain thread, no runtime
  gort::run(with_procs(1), check);
}

TEST_CASE("mutex: try_lock_for and try_lock_until time out, then succeed once free", "[mutex]") {
  no_procs_env env;
  auto body = [] {
    gort::mutex mu;
    mu.lock();
    auto t0 = steady::now();
    CHECK_FALSE(mu.try_lock_for(20ms));
    CHECK(steady::now() - t0 >= 20ms);
    t0 = steady::now();
    CHECK_FALSE(mu.try_lock_until(std::chrono::system_clock::now() + 15ms));
    CHECK(steady::now() - t0 >= 14ms);
    CHECK_FALSE(mu.try_lock_for(0ms));
    CHECK_FALSE(mu.try_lock());
    // A timed-out waiter left nothing behind: the lock still works both ways.
    mu.unlock();
    CHECK(mu.try_lock_for(1ms));
    mu.unlock();
    // A timed waiter that does get it.
    mu.lock();
    std::atomic<bool> got{false};
    gort::thread t([&] {
      got = mu.try_lock_for(10s);
      if (got) mu.unlock();
    });
    gort::sleep_for(5ms);  // let it block (the assertion does not depend on it)
    mu.unlock();
    t.join();
    CHECK(got);
  };
  const unsigned procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), body);
}

TEST_CASE("mutex: timed waiters that give up mixed with plain lockers lose nothing", "[mutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const long per = 2'000 / test_scale();
  const auto r = gort::run(with_procs(procs), [&] {
    gort::mutex mu;
    long counter = 0;
    std::atomic<long> gave_up{0};
    gs(64, [&](int i) {
      for (long k = 0; k < per; ++k) {
        if (i % 4 == 0) {
          if (!mu.try_lock_for(std::chrono::microseconds(k % 50))) {
            ++gave_up;
            continue;
          }
        } else {
          mu.lock();
        }
        ++counter;
        if (k % 16 == 0) gort::yield();  // holders that get descheduled make waiters queue
        mu.unlock();
      }
    });
    return std::pair(counter, gave_up.load());
  });
  CHECK(r.first + r.second == 64 * per);
}

TEST_CASE("mutex: the last user may destroy it right after unlocking", "[mutex]") {
  // std::mutex semantics: once every other user's unlock has happened before our lock, we may
  // lock, unlock and destroy, even while the others are still returning from unlock(). With
  // contention (waiters, wake-ups, starvation hand-offs) an unlocker that touched the mutex
  // after releasing it would write freed memory here (caught by ASan, or a crash).
  no_procs_env env;
  const unsigned procs = GENERATE(2u, 4u);
  const int rounds = static_cast<int>(2000 / test_scale());
  const int users = 6;
  std::atomic<int> destroyed{0};
  gort::run(with_procs(procs), [&] {
    gort::wait_group wg;
    wg.add(rounds * users);
    for (int r = 0; r < rounds; ++r) {
      auto* mu = new gort::mutex;
      auto* count = new int(0);
      for (int u = 0; u < users; ++u)
        gort::go([&, mu, count] {
          int c;
          for (int k = 0; k < 20; ++k) {
            mu->lock();
            c = ++*count;
            mu->unlock();
          }
          if (c == users * 20) {  // the last increment: everyone else has unlocked for good
            mu->lock();
            mu->unlock();
            delete mu;
            delete count;
            ++destroyed;
          }
          wg.done();
        });
    }
    wg.wait();
  });
  CHECK(destroyed == rounds);
}

TEST_CASE("shared_mutex: readers share, writers exclude", "[rwmutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int nreaders = 8;
  const auto r = gort::run(with_procs(procs), [&] {
    gort::shared_mutex rw;
    // Parallel readers: each holds the shared lock until all have it at once.
    std::atomic<int> inside{0}, max_inside{0};
    gs(nreaders, [&](int) {
      std::shared_lock<gort::shared_mutex> l(rw);
      atomic_max(max_inside, ++inside);
      while (inside.load() < nreaders && max_inside.load() < nreaders) gort::yield();
    });
    // Mixed: count who is inside and assert the invariants from inside.
    std::atomic<int> readers{0}, writers{0};
    std::atomic<long> violations{0}, writes{0}, reads{0};
    long guarded = 0;
    const long per = 2'000 / test_scale();
    gs(40, [&](int i) {
      for (long k = 0; k < per; ++k) {
        if (i % 5 == 0) {
          std::unique_lock<gort::shared_mutex> l(rw);
          if (++writers != 1 || readers.load() != 0) ++violations;
          ++guarded;
          ++writes;
          if (k % 8 == 0) gort::yield();
          --writers;
        } else {
          std::shared_lock<gort::shared_mutex> l(rw);
          ++readers;
          if (writers.load() != 0) ++violations;
          ++reads;
          if (k % 8 == 0) gort::yield();
          --readers;
        }
      }
    });
    return std::tuple(max_inside.load(), violations.load(), guarded, writes.load(), reads.load(), per);
  });
  const auto [max_inside, violations, guarded, writes, reads, per] = r;
  CHECK(max_inside == nreaders);
  CHECK(violations == 0);
  CHECK(guarded == 8 * per);
  CHECK(writes == 8 * per);
  CHECK(reads == 32 * per);
}

TEST_CASE("shared_mutex: timed lock and lock_shared time out behind a holder", "[rwmutex]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    gort::shared_mutex rw;
    rw.lock_shared();
    CHECK_FALSE(rw.try_lock_for(10ms));
    CHECK(rw.try_lock_shared_for(10ms));  // the timed-out writer left no pending mark behind
    rw.unlock_shared();
    rw.unlock_shared();
    rw.lock();
    CHECK_FALSE(rw.try_lock_shared_for(10ms));
    CHECK_FALSE(rw.try_lock_shared_until(std::chrono::system_clock::now() + 5ms));
    rw.unlock();
    CHECK(rw.try_lock());
    rw.unlock();
  });
}

TEST_CASE("condition_variable: producers and consumers through a bounded queue lose nothing", "[cv]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const long per = 5'000 / test_scale();
  const int np = 8, nc = 8;
  const auto r = gort::run(with_procs(procs), [&] {
    gort::mutex mu;
    gort::condition_variable not_full, not_empty;
    std::deque<long> q;
    const std::size_t cap = 16;
    int producers_left = np;
    long sum = 0, count = 0;
    std::vector<int> seen(static_cast<std::size_t>(np * per), 0);
    gort::wait_group wg;
    wg.add(np + nc);
    for (int p = 0; p < np; ++p)
      gort::go([&, p] {
        for (long k = 0; k < per; ++k) {
          std::unique_lock<gort::mutex> l(mu);
          not_full.wait(l, [&] { return q.size() < cap; });
          q.push_back(p * per + k);
          not_empty.notify_one();
        }
        std::lock_guard<gort::mutex> l(mu);
        if (--producers_left == 0) not_empty.notify_all();
        wg.done();
      });
    for (int c = 0; c < nc; ++c)
      gort::go([&] {
        for (;;) {
          std::unique_lock<gort::mutex> l(mu);
          not_empty.wait(l, [&] { return !q.empty() || producers_left == 0; });
          if (q.empty()) break;
          long v = q.front();
          q.pop_front();
          not_full.notify_one();
          ++seen[static_cast<std::size_t>(v)];
          sum += v;
          ++count;
        }
        wg.done();
      });
    wg.wait();
    const bool once_each = std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; });
    return std::tuple(count, sum, once_each);
  });
  const long n = np * per;
  CHECK(std::get<0>(r) == n);
  CHECK(std::get<1>(r) == n * (n - 1) / 2);
  CHECK(std::get<2>(r));
}

TEST_CASE("condition_variable: notify_all wakes every waiter; wait_for times out", "[cv]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [] {
    gort::mutex mu;
    gort::condition_variable cv;
    const int n = 50;
    int waiting = 0, woken = 0;
    bool go = false;
    gort::wait_group wg;
    wg.add(n);
    for (int i = 0; i < n; ++i)
      gort::go([&] {
        std::unique_lock<gort::mutex> l(mu);
        ++waiting;
        cv.notify_all();  // the main G waits for everyone to be waiting
        cv.wait(l, [&] { return go; });
        ++woken;
        wg.done();
      });
    {
      std::unique_lock<gort::mutex> l(mu);
      cv.wait(l, [&] { return waiting == n; });
      go = true;
    }
    cv.notify_all();
    wg.wait();
    CHECK(woken == n);

    std::unique_lock<gort::mutex> l(mu);
    auto t0 = steady::now();
    CHECK(cv.wait_for(l, 10ms) == std::cv_status::timeout);
    CHECK(steady::now() - t0 >= 10ms);
    CHECK(l.owns_lock());
    CHECK_FALSE(cv.wait_for(l, 5ms, [] { return false; }));
    CHECK(cv.wait_until(l, std::chrono::system_clock::now() + 5ms) == std::cv_status::timeout);
    CHECK(cv.wait_for(l, 1s, [] { return true; }));
    l.unlock();
    CHECK_THROWS_AS(cv.wait(l), std::system_error);
  });
}

TEST_CASE("condition_variable: an OS thread and a G ping-pong", "[cv][thread]") {
  no_procs_env env;
  const int rounds = 2'000 / static_cast<int>(test_scale());
  const int r = gort::run(with_procs(2), [&] {
    gort::mutex mu;
    gort::condition_variable cv;
    int turn = 0;  // even: the G, odd: the thread
    std::thread t([&] {
      for (int i = 0; i < rounds; ++i) {
        std::unique_lock<gort::mutex> l(mu);
        cv.wait(l, [&] { return turn % 2 == 1; });
        ++turn;
        cv.notify_all();
      }
    });
    for (int i = 0; i < rounds; ++i) {
      std::unique_lock<gort::mutex> l(mu);
      cv.wait(l, [&] { return turn % 2 == 0; });
      ++turn;
      cv.notify_all();
    }
    t.join();
    return turn;
  });
  CHECK(r == 2 * rounds);
}

// Every turn change wakes all waiters, and each woken one re-enqueues and unlocks the mutex
// before it blocks: notifiers keep claiming nodes whose owners have not blocked yet. Such an
// owner must stay until its notifier has finished walking the wake chain through its node
// (ASan reports the node's frame as out of scope otherwise; without ASan, turns are lost).
TEST_CASE("condition_variable: a waiter notified before it blocks outlives its notifier's chain", "[cv][thread]") {
  no_procs_env env;
  const unsigned procs = GENERATE(2u, 4u);
  const int parties = 6;  // five Gs and one OS thread
  const int rounds = 3'000 / static_cast<int>(test_scale());
  const auto r = gort::run(with_procs(procs), [&] {
    gort::mutex mu;
    gort::condition_variable cv;
    long turn = 0;
    std::vector<int> done(parties, 0);
    auto party = [&](int me) {
      for (int i = 0; i < rounds; ++i) {
        std::unique_lock<gort::mutex> l(mu);
        cv.wait(l, [&] { return turn % parties == me; });
        ++turn;
        ++done[static_cast<std::size_t>(me)];
        cv.notify_all();
      }
    };
    std::thread t(party, parties - 1);
    gs(parties - 1, party);
    t.join();
    return std::pair(turn, done);
  });
  CHECK(r.first == static_cast<long>(parties) * rounds);
  for (int d : r.second) CHECK(d == rounds);
}

TEST_CASE("semaphore: at most N holders, and exactly N reached", "[semaphore]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int limit = 5;
  const long per = 500 / test_scale();
  const auto r = gort::run(with_procs(procs), [&] {
    gort::semaphore sem(limit);
    std::atomic<int> in{0}, max_in{0};
    std::atomic<long> total{0};
    gs(64, [&](int) {
      for (long k = 0; k < per; ++k) {
        sem.acquire();
        atomic_max(max_in, ++in);
        // Hold on (a bounded while) until N holders were seen together: with few iterations
        // (TSan, qemu) a plain yield may never line up N of them.
        for (int y = 0; y < 200 && max_in.load() < limit; ++y) gort::yield();
        gort::yield();
        --in;
        ++total;
        sem.release();
      }
    });
    // Timeouts: none left, then one released.
    for (int i = 0; i < limit; ++i) sem.acquire();
    const bool timed_out = !sem.try_acquire_for(5ms) && !sem.try_acquire();
    sem.release(limit);
    const bool got = sem.try_acquire_for(1ms);
    return std::tuple(max_in.load(), total.load(), timed_out, got);
  });
  CHECK(std::get<0>(r) == limit);
  CHECK(std::get<1>(r) == 64 * per);
  CHECK(std::get<2>(r));
  CHECK(std::get<3>(r));
  CHECK_THROWS_AS(gort::semaphore(-1), std::invalid_argument);
  gort::semaphore s(gort::semaphore::max());
  CHECK_THROWS_AS(s.release(), std::invalid_argument);
}

TEST_CASE("semaphore: release(n) wakes n parked waiters; OS threads too", "[semaphore][thread]") {
  no_procs_env env;
  gort::run(with_procs(2), [] {
    gort::semaphore sem(0);
    std::atomic<int> through{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i)
      ts.emplace_back([&] {
        sem.acquire();
        ++through;
      });
    gort::wait_group wg;
    wg.add(7);
    for (int i = 0; i < 7; ++i)
      gort::go([&] {
        sem.acquire();
        ++through;
        wg.done();
      });
    sem.release(4);
    sem.release(6);
    wg.wait();
    for (auto& t : ts) t.join();
    CHECK(through == 10);
    CHECK_FALSE(sem.try_acquire());
  });
}

// A waiter that gets its unit may destroy the semaphore at once; release() must not touch it
// after waking that waiter (it used to finish waiters under the queue lock and then release the
// lock and add the units left over: a use after free that ASan reports).
TEST_CASE("semaphore: a waiter may destroy it as soon as its acquire returns",
          "[semaphore][lifetime]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  gort::run(with_procs(procs), [] {
    const int rounds = 2000 / test_scale();
    std::atomic<int> destroyed{0};
    for (int i = 0; i < rounds; ++i) {
      auto* sem = new gort::semaphore(0);
      std::atomic<bool> parked{false};
      // A plain thread as the waiter: the release's wake-up runs it at once on the other CPU,
      // concurrently with the rest of release().
      std::thread waiter([&] {
        parked.store(true);
        sem->acquire();
        delete sem;  // the releaser may still be inside release()
        destroyed.fetch_add(1);
      });
      while (!parked.load()) gort::yield();
      if (i % 2) gort::yield();  // sometimes before it parks (fast path), mostly after
      sem->release(2);  // one unit for the waiter, one left over: the slow path's tail
      gort::blocking([&] { waiter.join(); });
    }
    CHECK(destroyed.load() == rounds);
  });
}

TEST_CASE("call_once: runs once under contention, and again after an exception", "[once]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  gort::run(with_procs(procs), [] {
    gort::once_flag flag;
    std::atomic<int> runs{0};
    std::atomic<int> after{0};
    gs(200, [&](int) {
      gort::call_once(flag, [&] {
        ++runs;
        gort::sleep_for(1ms);  // others pile up and park meanwhile
      });
      ++after;
    });
    CHECK(runs == 1);
    CHECK(after == 200);

    gort::once_flag flag2;
    std::atomic<int> calls{0}, threw{0}, ok{0};
    gs(100, [&](int) {
      try {
        gort::call_once(flag2, [&](int add) {
          if (calls.fetch_add(add) < 2) {
            gort::yield();
            throw std::runtime_error("first two fail");
          }
        }, 1);
        ++ok;
      } catch (const std::runtime_error&) {
        ++threw;
      }
    });
    CHECK(calls == 3);
    CHECK(threw == 2);
    CHECK(ok == 98);
  });
}

TEST_CASE("latch: waiters released when the count reaches zero", "[latch]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int rounds = 200 / static_cast<int>(test_scale());
  gort::run(with_procs(procs), [&] {
    for (int round = 0; round < rounds; ++round) {
      // On the stack and destroyed right after wait: the last count_down must be done with it.
      gort::latch l(10);
      std::atomic<int> before{0};
      std::atomic<int> bad{0};
      gort::wait_group wg;
      wg.add(20);
      for (int i = 0; i < 10; ++i)
        gort::go([&] {
          ++before;
          l.count_down();
          wg.done();
        });
      for (int i = 0; i < 10; ++i)
        gort::go([&] {
          l.wait();
          if (before.load() != 10) ++bad;
          wg.done();
        });
      l.wait();
      CHECK(before == 10);
      CHECK(l.try_wait());
      wg.wait();
      CHECK(bad == 0);
    }
    gort::latch l2(3);
    CHECK_FALSE(l2.try_wait());
    CHECK_THROWS_AS(l2.count_down(4), std::invalid_argument);
    l2.count_down(2);
    l2.arrive_and_wait();
    CHECK(l2.try_wait());
  });
}

TEST_CASE("barrier: phases in step, completion once per phase, arrive_and_drop", "[barrier]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u, 4u);
  const int n = 16, phases = 200 / static_cast<int>(test_scale());
  gort::run(with_procs(procs), [&] {
    std::atomic<int> completions{0};
    std::atomic<int> bad{0};
    std::vector<int> at(n, 0);  // each G's phase; the completion checks they all agree
    auto on_complete = [&]() noexcept {
      const int c = completions.load();
      for (int v : at)
        if (v != c) ++bad;
      ++completions;
    };
    gort::barrier<decltype(on_complete)> b(n, on_complete);
    gs(n, [&](int i) {
      for (int ph = 0; ph < phases; ++ph) {
        at[static_cast<std::size_t>(i)] = ph;  // before arriving: the completion reads it
        b.arrive_and_wait();
        // Released only after this phase's completion, and the next cannot complete without us.
        if (completions.load() != ph + 1) ++bad;
      }
    });
    CHECK(completions == phases);
    CHECK(bad == 0);

    // arrive_and_drop: half the participants leave after phase 0.
    std::atomic<int> done{0};
    gort::barrier<> b2(8);
    gs(8, [&](int i) {
      if (i < 4) {
        b2.arrive_and_drop();
      } else {
        for (int ph = 0; ph < 10; ++ph) b2.arrive_and_wait();
      }
      ++done;
    });
    CHECK(done == 8);
  });
}
