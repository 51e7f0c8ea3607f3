// runtime/runq.hpp: the local run queue on its own, without a scheduler: which end each
// operation uses, the bounds, that the owner's operations are reachable only through its view,
// and that under concurrent thieves every G put in is taken out exactly once, from the end the
// header promises. The concurrent cases also run at ring sizes 4 and 8, where full rings,
// spills and wrap-around happen every few operations.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "runq.hpp"
#include "test_util.hpp"

using gort::rt::basic_runq;
using gort::rt::g;
using gort::rt::runq;

namespace {

// Tokens stand in for Gs: the queue only stores and returns the pointers. `rank` is the
// owner's record of where it put the token (see the order-checking stress below).
struct token {
  int id;
  long rank = 0;
  long seq = 0;  // when the owner last put it in the ring; only the owner reads it
};

g* as_g(token& t) { return reinterpret_cast<g*>(&t); }
token& tok(g* gp) { return *reinterpret_cast<token*>(gp); }
int id_of(g* gp) { return tok(gp).id; }

std::vector<token> make_tokens(int n) {
  std::vector<token> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)].id = i;
  return v;
}

template <class Q>
int get_id(Q& q) {
  g* gp = q.owner().get();
  return gp ? id_of(gp) : -1;
}

// What compiles on which handle.
template <class T>
concept can_put = requires(T& t, g* gp) { t.put(gp); };
template <class T>
concept can_put_back = requires(T& t, g* gp) { t.put_back(gp); };
template <class T>
concept can_get = requires(T& t) { t.get(); };
template <class T>
concept can_spill = requires(T& t, g** out) { t.grab_half_for_spill(out); };
template <class T>
concept can_commit = requires(T& t) { t.commit_steal(1u); };
template <class T>
concept can_grab_into_owner = requires(T& t, runq::owner_view dst) { t.grab(dst, false); };
template <class T>
concept can_grab_into_ring = requires(T& t, runq& dst) { t.grab(dst, false); };

}  // namespace

TEST_CASE("the owner's operations are reachable only through owner() and stealing only through thief()",
          "[runq][types]") {
  // The ring itself offers neither side's operations, only the two views and the hints.
  STATIC_REQUIRE_FALSE(can_put<runq>);
  STATIC_REQUIRE_FALSE(can_put_back<runq>);
  STATIC_REQUIRE_FALSE(can_get<runq>);
  STATIC_REQUIRE_FALSE(can_spill<runq>);
  STATIC_REQUIRE_FALSE(can_commit<runq>);
  STATIC_REQUIRE_FALSE(can_grab_into_owner<runq>);
  // A thief cannot push, pop or publish; it steals only into a queue it owns.
  STATIC_REQUIRE_FALSE(can_put<runq::thief_view>);
  STATIC_REQUIRE_FALSE(can_put_back<runq::thief_view>);
  STATIC_REQUIRE_FALSE(can_get<runq::thief_view>);
  STATIC_REQUIRE_FALSE(can_spill<runq::thief_view>);
  STATIC_REQUIRE_FALSE(can_commit<runq::thief_view>);
  STATIC_REQUIRE(can_grab_into_owner<runq::thief_view>);
  STATIC_REQUIRE_FALSE(can_grab_into_ring<runq::thief_view>);
  // The owner's view has the owner's operations.
  STATIC_REQUIRE(can_put<runq::owner_view>);
  STATIC_REQUIRE(can_put_back<runq::owner_view>);
  STATIC_REQUIRE(can_get<runq::owner_view>);
  STATIC_REQUIRE(can_spill<runq::owner_view>);
  STATIC_REQUIRE(can_commit<runq::owner_view>);
  // Views come only from owner() and thief(), and cost no more than a reference.
  STATIC_REQUIRE_FALSE(std::is_constructible_v<runq::owner_view, runq&>);
  STATIC_REQUIRE_FALSE(std::is_constructible_v<runq::thief_view, runq&>);
  STATIC_REQUIRE(sizeof(runq::owner_view) == sizeof(void*));
  STATIC_REQUIRE(sizeof(runq::thief_view) == sizeof(void*));
  STATIC_REQUIRE(runq::size == 256);
}

TEST_CASE("the owner runs the newest first; put_back and get_oldest use the old end", "[runq][order]") {
  auto t = make_tokens(8);
  runq q;
  auto o = q.owner();
  for (int i = 0; i < 4; ++i) REQUIRE(o.put(as_g(t[static_cast<std::size_t>(i)])));
  REQUIRE(q.length() == 4);
  CHECK(get_id(q) == 3);
  CHECK(get_id(q) == 2);
  // Back of the line: after everything queued, in the order put.
  REQUIRE(o.put_back(as_g(t[4])));
  REQUIRE(o.put_back(as_g(t[5])));
  CHECK(get_id(q) == 1);
  CHECK(get_id(q) == 0);
  CHECK(get_id(q) == 4);
  CHECK(get_id(q) == 5);
  CHECK(get_id(q) == -1);
  CHECK(q.empty());

  for (int i = 0; i < 4; ++i) REQUIRE(o.put(as_g(t[static_cast<std::size_t>(i)])));
  CHECK(id_of(o.peek_oldest()) == 0);
  g* old = o.get_oldest();
  REQUIRE(old);
  CHECK(id_of(old) == 0);
  CHECK(o.ring_length() == 3);
  CHECK(get_id(q) == 3);
}

TEST_CASE("runnext runs before the ring and its displaced G goes to the new end", "[runq][runnext]") {
  auto t = make_tokens(4);
  runq q;
  auto o = q.owner();
  REQUIRE(o.put(as_g(t[0])));
  CHECK(o.put_next(as_g(t[1])) == nullptr);
  CHECK(q.has_next());
  g* displaced = o.put_next(as_g(t[2]));
  REQUIRE(displaced);
  CHECK(id_of(displaced) == 1);
  REQUIRE(o.put(displaced));
  CHECK_FALSE(q.only_next());
  CHECK(q.length() == 3);
  CHECK(o.ring_length() == 2);
  CHECK(get_id(q) == 2);  // runnext
  CHECK_FALSE(q.has_next());
  CHECK(get_id(q) == 1);  // then the newest of the ring
  CHECK(get_id(q) == 0);
  CHECK(get_id(q) == -1);
  CHECK(q.empty());
}

TEMPLATE_TEST_CASE("a ring of N slots holds exactly N from either end while positions wrap",
                   "[runq][bounds]", basic_runq<4>, basic_runq<8>, runq) {
  constexpr int n = static_cast<int>(TestType::size);
  auto t = make_tokens(n + 2);
  TestType q;
  auto o = q.owner();
  for (int round = 0; round < 40; ++round) {
    // Alternate ends so head and tail both wrap past the 2N positions repeatedly.
    for (int i = 0; i < n; ++i) {
      g* gp = as_g(t[static_cast<std::size_t>(i)]);
      REQUIRE(((i + round) % 2 ? o.put(gp) : o.put_back(gp)));
    }
    CHECK(o.full());
    CHECK(o.ring_length() == TestType::size);
    CHECK_FALSE(o.put(as_g(t[static_cast<std::size_t>(n)])));
    CHECK_FALSE(o.put_back(as_g(t[static_cast<std::size_t>(n + 1)])));
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    for (int i = 0; i < n; ++i) {
      g* gp = round % 2 ? o.get_oldest() : o.get();
      REQUIRE(gp);
      seen[static_cast<std::size_t>(id_of(gp))]++;
    }
    for (int c : seen) REQUIRE(c == 1);
    REQUIRE(q.empty());
    REQUIRE(o.get() == nullptr);
    REQUIRE(o.get_oldest() == nullptr);
  }
}

TEMPLATE_TEST_CASE("a spill takes the oldest half of a full ring and nothing from a ring with room",
                   "[runq][spill]", basic_runq<4>, basic_runq<8>, runq) {
  constexpr std::uint32_t n = TestType::size;
  auto t = make_tokens(static_cast<int>(n) + 8);
  TestType q;
  auto o = q.owner();
  // Start off position 0 so the spilled half straddles the wrap for small N.
  for (std::uint32_t i = 0; i < 3; ++i) REQUIRE(o.put(as_g(t[n + i])));
  for (std::uint32_t i = 0; i < 3; ++i) REQUIRE(o.get_oldest());
  for (std::uint32_t i = 0; i < n; ++i) REQUIRE(o.put(as_g(t[i])));
  g* out[n / 2];
  REQUIRE(o.grab_half_for_spill(out) == n / 2);
  for (std::uint32_t i = 0; i < n / 2; ++i) CHECK(id_of(out[i]) == static_cast<int>(i));
  CHECK(q.length() == n / 2);
  CHECK(o.grab_half_for_spill(out) == 0);  // not full any more
  CHECK(get_id(q) == static_cast<int>(n - 1));
  CHECK(id_of(o.get_oldest()) == static_cast<int>(n / 2));
}

TEST_CASE("thieves take the oldest half and leave the newest to the owner", "[runq][steal]") {
  auto t = make_tokens(10);
  runq victim, thief;
  for (int i = 0; i < 10; ++i) REQUIRE(victim.owner().put(as_g(t[static_cast<std::size_t>(i)])));
  std::uint32_t n = victim.thief().grab(thief.owner(), false);
  REQUIRE(n == 5);
  CHECK(thief.empty());  // copied, not yet published
  g* first = thief.owner().commit_steal(n);
  CHECK(id_of(first) == 4);
  CHECK(thief.length() == 4);
  std::vector<int> rest;
  for (int id; (id = get_id(thief)) >= 0;) rest.push_back(id);
  CHECK(rest == std::vector<int>{3, 2, 1, 0});
  CHECK(get_id(victim) == 9);

  // runnext is taken only when asked and the ring is empty.
  runq v2, th2;
  v2.owner().put_next(as_g(t[7]));
  CHECK(v2.thief().only_next());
  CHECK(v2.thief().grab(th2.owner(), false) == 0);
  REQUIRE(v2.thief().grab(th2.owner(), true) == 1);
  CHECK(id_of(th2.owner().commit_steal(1)) == 7);
  CHECK(v2.empty());
  CHECK(th2.empty());
}

TEST_CASE("with a single P (alone) the owner's operations give the same results", "[runq][alone]") {
  // The `alone` paths replace RMWs by plain stores; without thieves both must agree on every
  // result, including at full and empty and across wrap-around (a ring of 8).
  auto t = make_tokens(4000);
  basic_runq<8> shared, alone;
  auto so = shared.owner();
  auto ao = alone.owner();
  std::mt19937 rng(7);
  int next = 0;
  while (next < 4000) {
    g* gp = as_g(t[static_cast<std::size_t>(next)]);
    switch (rng() % 5) {
      case 0:
        REQUIRE(so.put(gp) == ao.put(gp, true));
        ++next;
        break;
      case 1:
        REQUIRE(so.put_back(gp) == ao.put_back(gp, true));
        ++next;
        break;
      case 2:
        REQUIRE(so.put_next(gp) == ao.put_next(gp, true));
        ++next;
        break;
      case 3:
        REQUIRE(so.get() == ao.get(true));
        break;
      default:
        REQUIRE(so.get_oldest() == ao.get_oldest(true));
    }
    REQUIRE(shared.length() == alone.length());
    REQUIRE(so.ring_length() == ao.ring_length());
  }
  while (g* gp = so.get()) REQUIRE(ao.get(true) == gp);
  REQUIRE(alone.empty());
}

TEST_CASE("under concurrent thieves every G is taken exactly once (overflow kept aside)", "[runq][stress]") {
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
        auto mo = mine.owner();
        while (!done.load(std::memory_order_acquire) || !q.empty()) {
          std::uint32_t n = q.thief().grab(mo, true);
          if (n == 0) continue;
          taken[static_cast<std::size_t>(id_of(mo.commit_steal(n)))]++;
          long got = 1;
          while (g* gp = mo.get()) {
            taken[static_cast<std::size_t>(id_of(gp))]++;
            ++got;
          }
          thief_got.fetch_add(got);
        }
      });
    }
    // The owner: pushes at both ends, runnext, pops at both ends, at random.
    auto o = q.owner();
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
      g* gp = as_g(t[static_cast<std::size_t>(next)]);
      switch (rng() % 6) {
        case 0:
        case 1:
          if (!o.put(gp)) overflow.push_back(gp);
          ++next;
          break;
        case 2:
          if (!o.put_back(gp)) overflow.push_back(gp);
          ++next;
          break;
        case 3:
          if (g* old = o.put_next(gp))
            if (!o.put(old)) overflow.push_back(old);
          ++next;
          break;
        case 4:
          take(o.get());
          break;
        default:
          take(o.get_oldest());
      }
    }
    for (g* gp : overflow) take(gp);
    done.store(true, std::memory_order_release);
    // The owner drains what is left, racing the thieves to the end.
    while (g* gp = o.get()) take(gp);
    for (auto& th : thieves) th.join();
    for (int i = 0; i < per_round; ++i) REQUIRE(taken[static_cast<std::size_t>(i)].load() == 1);
    REQUIRE(owner_got + thief_got.load() == per_round);
  }
}

namespace {

// The scheduler's overflow path (runqput_slow): on a full ring, spill the oldest half and gp
// to the global queue; if a thief made room meanwhile, retry the put.
template <class Q, class OnSpill>
void put_or_spill(typename Q::owner_view o, g* gp, bool back, OnSpill&& on_spill) {
  g* batch[Q::size / 2];
  for (;;) {
    if (back ? o.put_back(gp) : o.put(gp)) return;
    std::uint32_t n = o.grab_half_for_spill(batch);
    if (n == 0) continue;
    on_spill(batch, n, gp);
    return;
  }
}

}  // namespace

// The owner keeps a model of its ring: S, every G it put there and has not taken back, keyed by
// a rank that orders the ring. put gives a G a rank above all others, put_back one below all
// others, so the ring is always sorted by rank from the old end to the new end. Thieves only
// ever remove the lowest ranks. So when the owner's get returns the G of rank r, every G of S
// above r can only have been stolen (LIFO at the owner's end); get_oldest and a spill likewise
// prove that every G of S below what they return was stolen (FIFO at the thieves' end). Those
// Gs are marked, and at the end each must have been taken by a thief: a G taken from the wrong
// end would be taken by the owner after being marked. And when get proves a G above r stolen
// while r stayed, r must have entered the ring after that G (a thief at the old end would have
// taken r first), which catches thieves taking from the wrong end. Each thief checks that a
// batch comes out newest first in strictly falling rank: a steal copies a run in order.
TEMPLATE_TEST_CASE("under concurrent thieves and spills every G is taken exactly once and in ring order",
                   "[runq][stress]", basic_runq<4>, basic_runq<8>, runq) {
  using Q = TestType;
  const int rounds = 60 / static_cast<int>(test_scale()) + 2;
  const int per_round = 20000 / static_cast<int>(test_scale()) + 500;
  constexpr int nthieves = 2;
  long spills = 0, steals = 0;
  for (int round = 0; round < rounds; ++round) {
    auto t = make_tokens(per_round);
    std::vector<std::atomic<int>> by_owner(static_cast<std::size_t>(per_round));
    std::vector<std::atomic<int>> by_thief(static_cast<std::size_t>(per_round));
    Q q;
    std::atomic<bool> done{false};
    std::atomic<long> thief_batches{0};
    std::atomic<int> thief_errors{0};
    std::atomic<int> started{0};
    std::vector<std::thread> thieves;
    for (int k = 0; k < nthieves; ++k) {
      thieves.emplace_back([&] {
        Q mine;
        auto mo = mine.owner();
        started.fetch_add(1);
        while (!done.load(std::memory_order_acquire) || !q.empty()) {
          const std::uint32_t n = q.thief().grab(mo, true);
          if (n == 0) continue;
          if (n > Q::size / 2) thief_errors.fetch_add(1);
          g* gp = mo.commit_steal(n);
          long prev_rank = tok(gp).rank;
          by_thief[static_cast<std::size_t>(id_of(gp))].fetch_add(1);
          std::uint32_t got = 1;
          while ((gp = mo.get())) {
            if (tok(gp).rank >= prev_rank) thief_errors.fetch_add(1);  // newest first
            prev_rank = tok(gp).rank;
            by_thief[static_cast<std::size_t>(id_of(gp))].fetch_add(1);
            ++got;
          }
          if (got != n) thief_errors.fetch_add(1);
          thief_batches.fetch_add(1);
        }
      });
    }

    while (started.load() < nthieves) std::this_thread::yield();  // race from the first G on
    auto o = q.owner();
    std::mt19937 rng(static_cast<unsigned>(round) * 7919u + Q::size);
    std::map<long, int> in_ring;  // S: rank -> id
    g* runnext = nullptr;         // the owner's record of runnext
    std::vector<char> stolen(static_cast<std::size_t>(per_round), 0);  // proven stolen by the model
    std::deque<g*> global;        // the spill target
    long hi = 0, lo = -1;         // next ranks at the new and the old end
    long seq = 0;                 // counts the owner's insertions
    int next = 0;
    int model_errors = 0;

    auto owner_takes = [&](g* gp) { by_owner[static_cast<std::size_t>(id_of(gp))].fetch_add(1); };
    auto mark_stolen = [&](auto first, auto last) {
      for (auto it = first; it != last; ++it) stolen[static_cast<std::size_t>(it->second)] = 1;
      in_ring.erase(first, last);
    };
    // gp came out of the ring: it must be in S; returns its place.
    auto find = [&](g* gp) {
      auto it = in_ring.find(tok(gp).rank);
      if (it == in_ring.end() || it->second != id_of(gp)) ++model_errors;
      return it;
    };
    auto on_spill = [&](g** batch, std::uint32_t n, g* gp) {
      ++spills;
      if (n != Q::size / 2) ++model_errors;
      // The oldest half, in order: everything of S below its newest that it lacks was stolen.
      for (std::uint32_t i = 0; i < n; ++i) {
        if (i > 0 && tok(batch[i]).rank <= tok(batch[i - 1]).rank) ++model_errors;
        auto it = find(batch[i]);
        if (it == in_ring.end()) continue;
        mark_stolen(in_ring.begin(), it);
        in_ring.erase(it);
        global.push_back(batch[i]);
      }
      global.push_back(gp);
    };
    auto insert = [&](g* gp, bool back) {
      tok(gp).rank = back ? lo-- : hi++;
      tok(gp).seq = ++seq;
      const std::size_t before = in_ring.size();
      in_ring.emplace(tok(gp).rank, id_of(gp));
      put_or_spill<Q>(o, gp, back, [&](g** batch, std::uint32_t n, g* spilled) {
        in_ring.erase(tok(spilled).rank);
        if (before < Q::size) ++model_errors;  // full, so S held at least N
        on_spill(batch, n, spilled);
      });
    };
    auto get = [&] {
      g* gp = o.get();
      if (runnext) {
        if (gp == runnext) {
          runnext = nullptr;
          owner_takes(gp);
          return;
        }
        stolen[static_cast<std::size_t>(id_of(runnext))] = 1;
        runnext = nullptr;
      }
      if (!gp) {
        mark_stolen(in_ring.begin(), in_ring.end());
        return;
      }
      auto it = find(gp);
      if (it != in_ring.end()) {
        // A G above gp was stolen while gp stayed: thieves take from the old end, so gp was
        // not in the ring then; it went in later, at the old end.
        for (auto e = std::next(it); e != in_ring.end(); ++e)
          if (t[static_cast<std::size_t>(e->second)].seq > tok(gp).seq) ++model_errors;
        mark_stolen(std::next(it), in_ring.end());
        in_ring.erase(it);
      }
      owner_takes(gp);
    };

    // The last N Gs are kept for the end of the round, so that a round always sees a steal.
    const int reserve = static_cast<int>(Q::size);
    while (next < per_round - reserve) {
      switch (rng() % 9) {
        case 0:
        case 1:
        case 2:
          insert(as_g(t[static_cast<std::size_t>(next++)]), false);
          break;
        case 3:
          insert(as_g(t[static_cast<std::size_t>(next++)]), true);
          break;
        case 4: {
          g* gp = as_g(t[static_cast<std::size_t>(next++)]);
          g* old = o.put_next(gp);
          if (old != runnext) {
            if (old) ++model_errors;  // runnext holds what the owner put there, or was stolen
            if (runnext) stolen[static_cast<std::size_t>(id_of(runnext))] = 1;
          }
          runnext = gp;
          if (old) insert(old, false);
          break;
        }
        case 5:
        case 6:
          get();
          break;
        case 7: {
          g* gp = o.get_oldest();
          if (!gp) {
            mark_stolen(in_ring.begin(), in_ring.end());
            break;
          }
          auto it = find(gp);
          if (it != in_ring.end()) {
            mark_stolen(in_ring.begin(), it);
            in_ring.erase(it);
          }
          owner_takes(gp);
          break;
        }
        default:
          // The global queue: run one, or requeue one at the back of the line (globrunqget).
          if (global.empty()) break;
          if (rng() % 2) {
            owner_takes(global.front());
          } else {
            insert(global.front(), true);
          }
          global.pop_front();
      }
    }
    // On a loaded machine the thieves may not have run at all so far: put the reserve in and
    // wait for a steal (the thieves grab until done, and the ring now holds at least one G).
    while (next < per_round) insert(as_g(t[static_cast<std::size_t>(next++)]), false);
    while (thief_batches.load() == 0) std::this_thread::yield();
    done.store(true, std::memory_order_release);
    // The owner drains what is left, racing the thieves to the end.
    while (!in_ring.empty() || runnext) get();
    for (g* gp : global) owner_takes(gp);
    for (auto& th : thieves) th.join();
    steals += thief_batches.load();

    REQUIRE(model_errors == 0);
    REQUIRE(thief_errors.load() == 0);
    long owner_got = 0, thief_got = 0;
    for (int i = 0; i < per_round; ++i) {
      const auto k = static_cast<std::size_t>(i);
      const int bo = by_owner[k].load(), bt = by_thief[k].load();
      INFO("G " << i << ": taken by the owner " << bo << ", by thieves " << bt << ", proven stolen "
                << int{stolen[k]});
      REQUIRE(bo + bt == 1);
      if (stolen[k]) REQUIRE(bt == 1);
      owner_got += bo;
      thief_got += bt;
    }
    REQUIRE(owner_got + thief_got == per_round);
  }
  // The case exercised what it is about: the 4 and 8 rings fill every few operations (native:
  // thousands of spills a round; for 256 a full ring is rare). Under emulation or TSan
  // (test_scale > 1) the thieves can keep so small a ring from ever filling (qemu-aarch64: 0
  // spills against 83,000 steals), which says nothing about the ring.
  INFO("spills " << spills << ", steals " << steals);
  if (Q::size <= 8 && test_scale() == 1) CHECK(spills > 0);
}
