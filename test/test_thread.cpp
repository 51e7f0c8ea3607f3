// gort::thread: std::thread semantics (join, detach, ids, swap and move, argument passing,
// misuse errors, terminate on a joinable handle's end) and joins from plain OS threads.
//
// Every test case boots its own runtime with gort::run. As in test_sched, results are mostly
// carried out of run and asserted on the test thread.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "child.hpp"
#include "gort/gort.hpp"
#include "test_util.hpp"

using Catch::Matchers::ContainsSubstring;


TEST_CASE("thread::join waits for the body and publishes its writes", "[thread]") {
  no_procs_env env;
  const auto r = gort::run(with_procs(2), [] {
    std::vector<long> data(1000, 0);  // plain memory: join must order the writes before us
    std::uint64_t body_id = 0;
    gort::thread t([&data, &body_id] {
      body_id = gort::detail::current_g_id();
      for (std::size_t i = 0; i < data.size(); ++i) {
        data[i] = static_cast<long>(i);
        if (i % 100 == 0) gort::yield();
      }
    });
    const gort::thread::id id = t.get_id();
    const bool joinable_before = t.joinable();
    t.join();
    return std::make_tuple(std::accumulate(data.begin(), data.end(), 0L), joinable_before,
                           t.joinable(), id.value() == body_id, t.get_id() == gort::thread::id());
  });
  CHECK(std::get<0>(r) == 999L * 1000 / 2);
  CHECK(std::get<1>(r));
  CHECK_FALSE(std::get<2>(r));
  CHECK(std::get<3>(r));
  CHECK(std::get<4>(r));
}

TEST_CASE("thread misuse throws system_error like std::thread", "[thread]") {
  no_procs_env env;
  struct results {
    std::error_code join_twice, detach_after_join, join_default, detach_default, self_join;
    bool default_joinable = true;
    std::string self_join_what;
  };
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const std::system_error& e) {
      return e.code();
    }
    return std::error_code();
  };
  const results r = gort::run(with_procs(2), [&] {
    gort::wait_group assigned;
    results out;
    gort::thread t([] { gort::yield(); });
    t.join();
    out.join_twice = code_of([&] { t.join(); });
    out.detach_after_join = code_of([&] { t.detach(); });
    gort::thread d;
    out.default_joinable = d.joinable();
    out.join_default = code_of([&] { d.join(); });
    out.detach_default = code_of([&] { d.detach(); });

    // A thread joining itself: the body waits until its handle is in place.
    assigned.add(1);
    gort::thread self;
    std::error_code self_code;
    std::string what;
    self = gort::thread([&] {
      assigned.wait();
      try {
        self.join();
      } catch (const std::system_error& e) {
        self_code = e.code();
        what = e.what();
      }
    });
    assigned.done();
    self.join();
    out.self_join = self_code;
    out.self_join_what = what;
    return out;
  });
  const auto inval = std::make_error_code(std::errc::invalid_argument);
  CHECK(r.join_twice == inval);
  CHECK(r.detach_after_join == inval);
  CHECK_FALSE(r.default_joinable);
  CHECK(r.join_default == inval);
  CHECK(r.detach_default == inval);
  CHECK(r.self_join == std::make_error_code(std::errc::resource_deadlock_would_occur));
  CHECK_THAT(r.self_join_what, ContainsSubstring("join"));
}

TEST_CASE("a detached thread still runs to completion", "[thread]") {
  no_procs_env env;
  const auto r = gort::run(with_procs(2), [&] {
    gort::wait_group wg;
    std::atomic<int> ran{0};
    constexpr int n = 200;
    wg.add(n);
    bool all_unjoinable = true;
    for (int i = 0; i < n; ++i) {
      gort::thread t([&ran, &wg](int k) {
        for (int y = 0; y < k % 4; ++y) gort::yield();
        ran.fetch_add(1);
        wg.done();
      }, i);
      t.detach();
      all_unjoinable = all_unjoinable && !t.joinable() && t.get_id() == gort::thread::id();
    }
    wg.wait();
    return std::make_pair(ran.load(), all_unjoinable);
  });
  CHECK(r.first == 200);
  CHECK(r.second);
}

TEST_CASE("thread ids are distinct, and default once joined", "[thread]") {
  no_procs_env env;
  struct results {
    std::size_t distinct = 0;
    bool none_default = false;
    bool match_body = true;
    bool default_after_join = true;
    bool ordered = false;
    std::string printed;
  };
  const results r = gort::run(with_procs(4), [] {
    results out;
    constexpr int n = 50;
    std::vector<gort::thread> ts;
    std::vector<std::uint64_t> body_ids(n, 0);
    for (int i = 0; i < n; ++i)
      ts.emplace_back([&body_ids, i] { body_ids[static_cast<std::size_t>(i)] = gort::detail::current_g_id(); });
    std::set<gort::thread::id> ids;
    for (auto& t : ts) ids.insert(t.get_id());
    out.distinct = ids.size();
    out.none_default = ids.count(gort::thread::id()) == 0;
    std::vector<gort::thread::id> before;
    for (auto& t : ts) before.push_back(t.get_id());
    for (int i = 0; i < n; ++i) {
      ts[static_cast<std::size_t>(i)].join();
      out.match_body = out.match_body && before[static_cast<std::size_t>(i)].value() == body_ids[static_cast<std::size_t>(i)];
      out.default_after_join = out.default_after_join && ts[static_cast<std::size_t>(i)].get_id() == gort::thread::id();
    }
    out.ordered = gort::thread::id() < before[0] && before[0] != before[1];
    std::ostringstream os;
    os << before[0];
    out.printed = os.str();
    out.printed += out.printed == std::to_string(before[0].value()) ? " ok" : " mismatch";
    return out;
  });
  CHECK(r.distinct == 50);
  CHECK(r.none_default);
  CHECK(r.match_body);
  CHECK(r.default_after_join);
  CHECK(r.ordered);
  CHECK_THAT(r.printed, ContainsSubstring(" ok"));
  CHECK(gort::thread::hardware_concurrency() == std::thread::hardware_concurrency());
}

TEST_CASE("threads swap and move", "[thread]") {
  no_procs_env env;
  struct results {
    bool swapped = false, free_swapped = false, move_ctor = false, move_assign = false;
    bool self_swap = false;
    int sum = 0;
  };
  const results r = gort::run(with_procs(2), [] {
    results out;
    std::atomic<int> sum{0};
    gort::thread a([&sum] { sum.fetch_add(1); });
    gort::thread b([&sum] { sum.fetch_add(10); });
    const auto ia = a.get_id(), ib = b.get_id();
    a.swap(b);
    out.swapped = a.get_id() == ib && b.get_id() == ia;
    swap(a, b);  // found by ADL: gort::swap
    out.free_swapped = a.get_id() == ia && b.get_id() == ib;

    gort::thread c(std::move(a));
    out.move_ctor = !a.joinable() && c.joinable() && c.get_id() == ia;
    gort::thread d;
    d = std::move(b);
    out.move_assign = !b.joinable() && d.get_id() == ib;
    gort::thread empty;
    empty.swap(a);  // two empty threads
    out.self_swap = !empty.joinable() && !a.joinable();
    c.join();
    d.join();
    out.sum = sum.load();
    return out;
  });
  CHECK(r.swapped);
  CHECK(r.free_swapped);
  CHECK(r.move_ctor);
  CHECK(r.move_assign);
  CHECK(r.self_swap);
  CHECK(r.sum == 11);
}

TEST_CASE("thread passes arguments like std::thread", "[thread]") {
  no_procs_env env;
  const auto r = gort::run(with_procs(2), [] {
    int by_ref = 0;
    std::string source = "copy me";
    gort::thread t([](int& out, std::string s, std::unique_ptr<int> p) { out = static_cast<int>(s.size()) + *p; },
                   std::ref(by_ref), source, std::make_unique<int>(100));
    source.clear();  // the thread has its own copy already
    t.join();
    return by_ref;
  });
  CHECK(r == 107);
}

TEST_CASE("destroying or overwriting a joinable thread calls std::terminate", "[thread]") {
  SECTION("destroyed") {
    const child_result r = run_in_child([] {
      unsetenv("GORT_PROCS");
      gort::run(with_procs(2), [] {
        gort::thread t([] {});
        // t leaves scope joinable
      });
      std::fprintf(stderr, "survived\n");
    }, 120);
    INFO("child output:\n" << r.out);
    REQUIRE(WIFSIGNALED(r.status));
    CHECK(WTERMSIG(r.status) == SIGABRT);
    CHECK(r.out.find("survived") == std::string::npos);
  }
  SECTION("move-assigned over") {
    const child_result r = run_in_child([] {
      unsetenv("GORT_PROCS");
      gort::run(with_procs(2), [] {
        gort::thread t([] {});
        gort::thread u([] {});
        t = std::move(u);
        t.join();
      });
      std::fprintf(stderr, "survived\n");
    }, 120);
    INFO("child output:\n" << r.out);
    REQUIRE(WIFSIGNALED(r.status));
    CHECK(WTERMSIG(r.status) == SIGABRT);
  }
  SECTION("control: joined and detached threads end normally") {
    const child_result r = run_in_child([] {
      unsetenv("GORT_PROCS");
      gort::run(with_procs(2), [] {
        gort::thread t([] {});
        gort::thread u([] {});
        t.join();
        u.detach();
      });
    }, 120);
    INFO("child output:\n" << r.out);
    REQUIRE(WIFEXITED(r.status));
    CHECK(WEXITSTATUS(r.status) == 0);
    CHECK(r.out.find("Sanitizer") == std::string::npos);
  }
}

TEST_CASE("a gort::thread can be joined from a plain OS thread", "[thread]") {
  no_procs_env env;
  const auto r = gort::run(with_procs(2), [&] {
    gort::wait_group joined;
    long value = 0;  // plain: the join on the OS thread orders it
    std::atomic<bool> joined_ok{false};
    gort::thread t([&value] {
      for (int i = 0; i < 50; ++i) gort::yield();
      value = 1234;
    });
    joined.add(1);
    long seen = 0;
    std::thread os([&] {
      t.join();  // blocks this OS thread on a futex
      joined_ok = !t.joinable();
      seen = value;
      joined.done();
    });
    joined.wait();  // parks the main G, so its P is free for t
    os.join();
    return std::make_pair(seen, joined_ok.load());
  });
  CHECK(r.first == 1234);
  CHECK(r.second);
}
