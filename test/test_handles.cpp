// Handles and the runtime's lifetime: task and thread handles that outlive run() (docs/api.md,
// "Handles and the runtime's lifetime"), where a dropped task's result is destroyed, and
// channels and sync objects used from plain threads after the Gs parked on them were abandoned.
//
// The cases that would hang or die without the guarantees they check run in a child process
// with an alarm (child.hpp).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "child.hpp"
#include "gort/chan.hpp"
#include "gort/gort.hpp"
#include "gort/sync.hpp"
#include "test_util.hpp"

using Catch::Matchers::ContainsSubstring;

namespace {

// A result that counts its live instances and owns heap memory (a leak or a double destroy
// shows under ASan).
std::atomic<long> tracked_live{0};
struct tracked {
  std::string payload;
  explicit tracked(int i) : payload(std::string(64, 'x') + std::to_string(i)) { tracked_live.fetch_add(1); }
  tracked(tracked&& o) noexcept : payload(std::move(o.payload)) { tracked_live.fetch_add(1); }
  tracked(const tracked&) = delete;
  tracked& operator=(const tracked&) = delete;
  ~tracked() { tracked_live.fetch_sub(1); }
};

// Something to wait on for ever. Never freed (abandoned Gs keep pointing at it) and reachable
// from here, so LeakSanitizer does not count it.
gort::wait_group* forever() {
  static auto* all = new std::vector<gort::wait_group*>;
  auto* w = new gort::wait_group;
  w->add(1);
  all->push_back(w);
  return w;
}

}  // namespace

TEST_CASE("tasks destroyed after run returns: finished, joined, unjoined and abandoned", "[handles]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  const int n = 200;
  for (long iter = 0; iter < 20 / test_scale() + 1; ++iter) {
    tracked_live = 0;
    std::vector<std::uint64_t> ids;
    std::vector<int> joined_values;
    std::vector<gort::task<tracked>> tasks = gort::run(with_procs(procs), [&] {
      std::vector<gort::task<tracked>> v;
      gort::wait_group finished;
      for (int i = 0; i < n; ++i) {
        finished.add(1);
        v.push_back(gort::spawn([i, &finished] {
          finished.done();
          return tracked(i);
        }));
      }
      // Never finish: abandoned at shutdown, still held by their tasks.
      gort::wait_group* never = forever();
      for (int i = 0; i < 5; ++i) v.push_back(gort::spawn([never] {
        never->wait();
        return tracked(-1);
      }));
      finished.wait();
      for (int i = 0; i < n; i += 2) joined_values.push_back(std::stoi(v[static_cast<std::size_t>(i)].join().payload.substr(64)));
      for (auto& t : v) ids.push_back(t.id());
      return v;
    });
    REQUIRE(tasks.size() == static_cast<std::size_t>(n + 5));
    REQUIRE(joined_values.size() == static_cast<std::size_t>(n / 2));
    for (int k = 0; k < n / 2; ++k) CHECK(joined_values[static_cast<std::size_t>(k)] == 2 * k);
    // Every result a task produced is gone: joined ones were moved out and destroyed, the
    // others destroyed at shutdown. Abandoned tasks never made one.
    CHECK(tracked_live.load() == 0);
    for (std::size_t k = 0; k < tasks.size(); ++k) {
      CHECK(tasks[k].valid() == (k % 2 == 1 || k >= static_cast<std::size_t>(n)));
      CHECK(tasks[k].id() == ids[k]);  // readable after run
    }
    tasks.clear();  // the point: no access to the unmapped G
    CHECK(tracked_live.load() == 0);
  }
}

TEST_CASE("join after run returns throws and empties the task; a new runtime is unaffected", "[handles]") {
  no_procs_env env;
  std::optional<gort::task<int>> done, stuck;
  gort::run(with_procs(2), [&] {
    done = gort::spawn([] { return 7; });
    gort::wait_group* never = forever();
    stuck = gort::spawn([never] {
      never->wait();
      return 8;
    });
  });
  // A second runtime: its Gs get other ids; the old handles stay inert in it too.
  const bool inert_in_new_run = gort::run(with_procs(1), [&] {
    bool threw = false;
    try {
      (void)done->join();
    } catch (const std::logic_error& e) {
      threw = std::string(e.what()).find("has shut down") != std::string::npos;
    }
    return threw && !done->valid() && gort::spawn([] { return 1; }).join() == 1;
  });
  CHECK(inert_in_new_run);
  REQUIRE(stuck->valid());
  CHECK_THROWS_WITH(stuck->join(), ContainsSubstring("the runtime that ran this task has shut down"));
  CHECK_FALSE(stuck->valid());
  CHECK_THROWS_WITH(stuck->join(), ContainsSubstring("task has no G"));
  stuck.reset();
  done.reset();
}

TEST_CASE("gort::thread joined or detached after run returns", "[handles][thread]") {
  no_procs_env env;
  std::optional<gort::thread> finished, abandoned, detached;
  std::atomic<bool> ran{false};
  gort::run(with_procs(2), [&] {
    finished.emplace([&ran] { ran = true; });
    gort::wait_group* never = forever();
    abandoned.emplace([never] { never->wait(); });
    detached.emplace([] {});
    while (!ran) gort::yield();
  });
  const std::uint64_t fid = finished->get_id().value();
  CHECK(fid != 0);
  for (gort::thread* t : {&*finished, &*abandoned}) {
    REQUIRE(t->joinable());
    try {
      t->join();
      FAIL("join after run returned normally");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::make_error_code(std::errc::no_such_process));
      CHECK_THAT(std::string(e.what()), ContainsSubstring("gort::thread::join: the runtime that ran this thread has shut down"));
    }
    CHECK_FALSE(t->joinable());
  }
  detached->detach();  // a no-op on the G
  CHECK_FALSE(detached->joinable());
}

TEST_CASE("a plain thread joining a G that shutdown abandons is woken and told", "[handles][thread]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  auto r = run_in_child([procs] {
    for (long iter = 0; iter < 50 / test_scale() + 1; ++iter) {
      gort::task<int> t;
      std::atomic<int> outcome{0};  // 1: threw "has shut down"; 2: anything else
      std::atomic<bool> joining{false};
      std::thread joiner;
      gort::run(with_procs(procs), [&] {
        gort::wait_group* never = forever();
        t = gort::spawn([never] {
          never->wait();
          return 1;
        });
        joiner = std::thread([&] {
          joining = true;
          try {
            (void)t.join();
            outcome = 2;
          } catch (const std::logic_error& e) {
            outcome = std::string(e.what()).find("has shut down") != std::string::npos ? 1 : 2;
          }
        });
        while (!joining) gort::yield();
        // Some iterations return while the thread sleeps in join, some before it joins.
        for (long k = 0; k < iter % 4; ++k) gort::yield();
      });
      joiner.join();
      if (outcome != 1) {
        std::printf("iteration %ld: outcome %d\n", iter, outcome.load());
        std::exit(1);
      }
      if (t.valid()) std::exit(4);
    }
  }, 120);
  INFO(r.out);
  CHECK(r.exited(0));
}

namespace {

// A result whose destructor locks a gort::mutex and records on which G it runs.
struct dtor_probe {
  gort::mutex* mu = nullptr;
  std::atomic<bool>* entered = nullptr;
  std::atomic<std::uint64_t>* ran_on = nullptr;
  std::atomic<int>* runs = nullptr;
  dtor_probe() = default;
  dtor_probe(gort::mutex* m, std::atomic<bool>* e, std::atomic<std::uint64_t>* on, std::atomic<int>* n)
      : mu(m), entered(e), ran_on(on), runs(n) {}
  dtor_probe(dtor_probe&& o) noexcept
      : mu(std::exchange(o.mu, nullptr)), entered(o.entered), ran_on(o.ran_on), runs(o.runs) {}
  dtor_probe& operator=(dtor_probe&&) = delete;
  ~dtor_probe() {
    if (!mu) return;  // moved from
    entered->store(true);
    std::lock_guard<gort::mutex> l(*mu);  // contended: may park, which only the right G may do
    ran_on->store(gort::detail::current_g_id());
    runs->fetch_add(1);
  }
};

}  // namespace

TEST_CASE("a dropped task's result is destroyed on its own G, which may park", "[handles][mutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  auto r = run_in_child([procs] {
    const long iters = 2000 / test_scale() + 1;
    const long bad = gort::run(with_procs(procs), [iters] {
      long wrong = 0;
      gort::mutex mu;
      for (long i = 0; i < iters; ++i) {
        std::atomic<bool> entered{false};
        std::atomic<std::uint64_t> ran_on{0};
        std::atomic<int> runs{0};
        gort::chan<int> start;
        mu.lock();
        auto t = gort::spawn([start, &mu, &entered, &ran_on, &runs]() mutable {
          (void)start.recv();
          return dtor_probe(&mu, &entered, &ran_on, &runs);
        });
        const std::uint64_t tid = t.id();
        { auto drop = std::move(t); }  // dropped before the G finished: it is parked in recv
        start.send(1);
        while (!entered) gort::yield();
        mu.unlock();
        while (runs.load() == 0) gort::yield();
        gort::yield();
        if (runs.load() != 1 || ran_on.load() != tid) ++wrong;
      }
      return wrong;
    });
    if (bad != 0) {
      std::printf("%ld destructors ran on the wrong G or more than once\n", bad);
      std::exit(1);
    }
  }, 120);
  INFO(r.out);
  CHECK(r.exited(0));
  CHECK_FALSE(r.out.find("deadlock") != std::string::npos);
}

TEST_CASE("a joined or late-dropped task's result is destroyed by the joiner or dropper", "[handles]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  const long iters = 2000 / test_scale() + 1;
  const long bad = gort::run(with_procs(procs), [iters] {
    long wrong = 0;
    gort::mutex mu;
    const std::uint64_t me = gort::detail::current_g_id();
    for (long i = 0; i < iters; ++i) {
      std::atomic<bool> entered{false};
      std::atomic<std::uint64_t> ran_on{0};
      std::atomic<int> runs{0};
      auto t = gort::spawn([&] { return dtor_probe(&mu, &entered, &ran_on, &runs); });
      const std::uint64_t tid = t.id();
      if (i % 2 == 0) {
        { dtor_probe p = t.join(); }  // destroyed here, by us
        if (runs.load() != 1 || ran_on.load() != me) ++wrong;
      } else {
        gort::yield();  // usually done by now: then we destroy it, else its G does
        { auto drop = std::move(t); }
        while (runs.load() == 0) gort::yield();
        if (runs.load() != 1 || (ran_on.load() != me && ran_on.load() != tid)) ++wrong;
      }
    }
    return wrong;
  });
  CHECK(bad == 0);
}


TEST_CASE("a plain thread uses channels whose parked Gs were abandoned", "[handles][chan]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  auto r = run_in_child([procs] {
    for (long iter = 0; iter < 20 / test_scale() + 1; ++iter) {
      gort::chan<int> unbuf;      // parked receivers and selects
      gort::chan<int> buf(2);     // full, parked senders
      gort::chan<int> quiet(1);   // parked receivers, then closed from outside
      gort::run(with_procs(procs), [&] {
        gort::wait_group up;
        const int k = 4;
        up.add(4 * k);
        buf.send(100);
        buf.send(101);
        for (int i = 0; i < k; ++i) {
          gort::go([unbuf, &up] {
            up.done();
            (void)unbuf.recv();
          });
          gort::go([buf, &up, i] {
            up.done();
            buf.send(i);
          });
          gort::go([quiet, &up] {
            up.done();
            (void)quiet.recv();
          });
          gort::go([unbuf, buf, &up] {
            up.done();
            gort::select(gort::on_recv(unbuf, [](std::optional<int>) {}),
                         gort::on_send(buf, 7, [] {}));
          });
        }
        up.wait();
        for (int i = 0; i < 8; ++i) gort::yield();
      });
      // Unbuffered: no receiver is left, so a send from a plain thread waits for ours.
      if (unbuf.try_send(1)) std::exit(10);
      std::thread sender([unbuf] { unbuf.send(5); });
      const std::optional<int> got = unbuf.recv();
      sender.join();
      if (!got || *got != 5) std::exit(11);
      // Buffered: the two values sent by main, and nothing from the abandoned senders.
      const std::optional<int> a = buf.recv(), b = buf.recv();
      if (!a || !b || *a != 100 || *b != 101) std::exit(12);
      if (buf.try_recv()) std::exit(13);
      if (!buf.try_send(3) || *buf.recv() != 3) std::exit(14);
      // Closing releases nobody, and receives then report closed.
      quiet.close();
      if (quiet.recv()) std::exit(15);
      unbuf.close();
      buf.close();
    }
  }, 120);
  INFO(r.out);
  CHECK(r.exited(0));
}

TEST_CASE("a mutex held by an abandoned G, with abandoned waiters, used from outside", "[handles][mutex]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  auto r = run_in_child([procs] {
    for (long iter = 0; iter < 20 / test_scale() + 1; ++iter) {
      auto* mu = new gort::mutex;
      gort::run(with_procs(procs), [mu] {
        gort::wait_group up;
        gort::wait_group* never = forever();
        up.add(1);
        gort::go([mu, never, &up] {
          mu->lock();
          up.done();
          never->wait();  // abandoned holding mu
        });
        up.wait();
        up.add(6);
        for (int i = 0; i < 6; ++i)
          gort::go([mu, &up] {
            up.done();
            mu->lock();  // queued behind the holder, abandoned there
          });
        up.wait();
        for (int i = 0; i < 8; ++i) gort::yield();
      });
      // Documented: still locked (by the abandoned G); any thread may unlock it, and it then
      // works as a fresh mutex for plain threads.
      if (mu->try_lock()) std::exit(20);
      mu->unlock();
      long count = 0;
      std::vector<std::thread> ts;
      for (int t = 0; t < 3; ++t)
        ts.emplace_back([mu, &count] {
          for (int i = 0; i < 2000; ++i) {
            std::lock_guard<gort::mutex> l(*mu);
            ++count;
          }
        });
      for (auto& t : ts) t.join();
      if (count != 6000) std::exit(21);
      delete mu;  // destroying it is safe too
    }
  }, 120);
  INFO(r.out);
  CHECK(r.exited(0));
}

TEST_CASE("a wait_group with abandoned waiters is released and reused from outside", "[handles]") {
  no_procs_env env;
  const unsigned procs = GENERATE(1u, 2u);
  auto r = run_in_child([procs] {
    auto* wg = new gort::wait_group;
    for (long iter = 0; iter < 20 / test_scale() + 1; ++iter) {
      wg->add(1);
      gort::run(with_procs(procs), [wg] {
        gort::wait_group up;
        up.add(5);
        for (int i = 0; i < 5; ++i)
          gort::go([wg, &up] {
            up.done();
            wg->wait();
          });
        up.wait();
        for (int i = 0; i < 8; ++i) gort::yield();
      });
      wg->done();  // nobody left to wake; the count is back to zero
      wg->wait();
    }
    delete wg;
  }, 120);
  INFO(r.out);
  CHECK(r.exited(0));
}
