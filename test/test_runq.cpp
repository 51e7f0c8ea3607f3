// runtime/runq.hpp: the local run queue on its own, without a scheduler: which end each
// operation uses, the bounds, and that under concurrent thieves every G put in is taken out
// exactly once.
#include <catch2/catch_test_macros.hpp>

#include <atomic>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "runq.hpp"
#include "test_util.hpp"

using gort::rt::g;
using gort::rt::runq;

namespace {

// Tokens stand in for Gs: the queue only stores and returns the pointers.
struct token {
  int id;
};

g* as_g(token& t) { return reinterpret_cast<g*>(&t); }
int id_of(g* gp) { return reinterpret_cast<token*>(gp)->id; }

std::vector<token> make_tokens(int n) {
  std::vector<token> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)].id = i;
  return v;
}

int get_id(runq& q) {
  bool inherit = false;
  g* gp = q.get(inherit);
  return gp ? id_of(gp) : -1;
}

}  // namespace

TEST_CASE("runq: the owner runs the newest first; put_back and get_oldest use the old end") {
  auto t = make_tokens(8);
  runq q;
  for (int i = 0; i < 4; ++i) REQUIRE(q.put(as_g(t[static_cast<std::size_t>(i)])));
  REQUIRE(q.length() == 4);
  CHECK(get_id(q) == 3);
  CHECK(get_id(q) == 2);
  // Back of the line: after everything queued, in the order put.
  REQUIRE(q.put_back(as_g(t[4])));
  REQUIRE(q.put_back(as_g(t[5])));
  CHECK(get_id(q) == 1);
  CHECK(get_id(q) == 0);
  CHECK(get_id(q) == 4);
  CHECK(get_id(q) == 5);
  CHECK(get_id(q) == -1);
  CHECK(q.empty());

  for (int i = 0; i < 4; ++i) REQUIRE(q.put(as_g(t[static_cast<std::size_t>(i)])));
  g* o = q.get_oldest();
  REQUIRE(o);
  CHECK(id_of(o) == 0);
  CHECK(get_id(q) == 3);
}

TEST_CASE("runq: runnext runs before the ring and its displaced G goes to the new end") {
  auto t = make_tokens(4);
  runq q;
  REQUIRE(q.put(as_g(t[0])));
  CHECK(q.put_next(as_g(t[1])) == nullptr);
  g* displaced = q.put_next(as_g(t[2]));
  REQUIRE(displaced);
  CHECK(id_of(displaced) == 1);
  REQUIRE(q.put(displaced));
  CHECK(q.only_next() == false);
  bool inherit = false;
  g* gp = q.get(inherit);
  REQUIRE(gp);
  CHECK(id_of(gp) == 2);
  CHECK(inherit);
  gp = q.get(inherit);
  REQUIRE(gp);
  CHECK(id_of(gp) == 1);
  CHECK_FALSE(inherit);
  CHECK(get_id(q) == 0);
  CHECK(q.empty());
}

TEST_CASE("runq: 256 slots from either end, positions wrap many times") {
  auto t = make_tokens(300);
  runq q;
  for (int round = 0; round < 40; ++round) {
    // Alternate ends so head and tail both wrap past the 512 positions repeatedly.
    for (int i = 0; i < 256; ++i) {
      bool ok = (i + round) % 2 ? q.put(as_g(t[static_cast<std::size_t>(i)]))
                                : q.put_back(as_g(t[static_cast<std::size_t>(i)]));
      REQUIRE(ok);
    }
    CHECK(q.full());
    CHECK_FALSE(q.put(as_g(t[256])));
    CHECK_FALSE(q.put_back(as_g(t[257])));
    std::vector<int> seen(256, 0);
    for (int i = 0; i < 256; ++i) {
      g* gp = round % 2 ? q.get_oldest() : [&] {
        bool inh;
        return q.get(inh);
      }();
      REQUIRE(gp);
      seen[static_cast<std::size_t>(id_of(gp))]++;
    }
    for (int c : seen) REQUIRE(c == 1);
    REQUIRE(q.empty());
  }
}

TEST_CASE("runq: a spill takes the oldest half") {
  auto t = make_tokens(256);
  runq q;
  for (int i = 0; i < 256; ++i) REQUIRE(q.put(as_g(t[static_cast<std::size_t>(i)])));
  g* out[runq::size / 2];
  REQUIRE(q.grab_half_for_spill(out) == runq::size / 2);
  for (std::uint32_t i = 0; i < runq::size / 2; ++i) CHECK(id_of(out[i]) == static_cast<int>(i));
  CHECK(q.length() == 128);
  CHECK(q.grab_half_for_spill(out) == 0);  // not full any more
  CHECK(get_id(q) == 255);
}

TEST_CASE("runq: thieves take the oldest half and leave the newest to the owner") {
  auto t = make_tokens(10);
  runq victim, thief;
  for (int i = 0; i < 10; ++i) REQUIRE(victim.put(as_g(t[static_cast<std::size_t>(i)])));
  std::uint32_t n = victim.grab(thief, false);
  REQUIRE(n == 5);
  g* first = thief.commit_steal(n);
  CHECK(id_of(first) == 4);
  std::vector<int> rest;
  for (int id; (id = get_id(thief)) >= 0;) rest.push_back(id);
  CHECK(rest == std::vector<int>{3, 2, 1, 0});
  CHECK(get_id(victim) == 9);

  // runnext is taken only when asked and the ring is empty.
  runq v2, th2;
  v2.put_next(as_g(t[7]));
  CHECK(v2.only_next());
  CHECK(v2.grab(th2, false) == 0);
  REQUIRE(v2.grab(th2, true) == 1);
  CHECK(id_of(th2.commit_steal(1)) == 7);
  CHECK(v2.empty());
}

TEST_CASE("runq: under concurrent thieves every G is taken exactly once") {
  const int rounds = 200 / static_cast<int>(test_scale()) + 2;
  const int per_round = 20000 / static_cast<int>(test_scale()) + 500;
  constexpr int nthieves = 3;
  for (int round = 0; round < rounds; ++round) {
    auto t = make_tokens(per_round);
    std::vector<std::atomic<int>> taken(static_cast<std::size_t>(per_round));
    runq q;
    std::atomic<bool> done{false};
    std::atomic<long> thief_got{0};
    std::vector<std::thread> thieves;
    for (int k = 0; k < nthieves; ++k) {
      thieves.emplace_back([&] {
        runq mine;
        while (!done.load(std::memory_order_acquire) || !q.empty()) {
          std::uint32_t n = q.grab(mine, true);
          if (n == 0) continue;
          taken[static_cast<std::size_t>(id_of(mine.commit_steal(n)))]++;
          long got = 1;
          bool inh;
          while (g* gp = mine.get(inh)) {
            taken[static_cast<std::size_t>(id_of(gp))]++;
            ++got;
          }
          thief_got.fetch_add(got);
        }
      });
    }
    // The owner: pushes at both ends, runnext, pops at both ends, at random.
    std::mt19937 rng(static_cast<unsigned>(round));
    int next = 0;
    long owner_got = 0;
    auto take = [&](g* gp) {
      if (!gp) return;
      taken[static_cast<std::size_t>(id_of(gp))]++;
      ++owner_got;
    };
    std::vector<g*> overflow;  // what a full ring refused (the scheduler would spill it)
    while (next < per_round) {
      switch (rng() % 6) {
        case 0:
        case 1:
          if (!q.put(as_g(t[static_cast<std::size_t>(next)]))) overflow.push_back(as_g(t[static_cast<std::size_t>(next)]));
          ++next;
          break;
        case 2:
          if (!q.put_back(as_g(t[static_cast<std::size_t>(next)]))) overflow.push_back(as_g(t[static_cast<std::size_t>(next)]));
          ++next;
          break;
        case 3:
          if (g* old = q.put_next(as_g(t[static_cast<std::size_t>(next)])))
            if (!q.put(old)) overflow.push_back(old);
          ++next;
          break;
        case 4: {
          bool inh;
          take(q.get(inh));
          break;
        }
        default:
          take(q.get_oldest());
      }
    }
    for (g* gp : overflow) take(gp);
    done.store(true, std::memory_order_release);
    // The owner drains what is left, racing the thieves to the end.
    for (;;) {
      bool inh;
      g* gp = q.get(inh);
      if (!gp) break;
      take(gp);
    }
    for (auto& th : thieves) th.join();
    for (int i = 0; i < per_round; ++i) REQUIRE(taken[static_cast<std::size_t>(i)].load() == 1);
    REQUIRE(owner_got + thief_got.load() == per_round);
  }
}
