// runtime/wait: the blocking primitive under channels, select and the sync types, on its own:
// a party blocked on a wait_state is released exactly once, by a waker that claimed it
// (block returns true and sees the waker's note) or by its deadline (block returns false,
// never early, and no claim succeeds afterwards).
//
// The G oracle runs in a one-P runtime, where scheduling is deterministic: a driver G takes
// random steps (start a blocker with no, a past, a near or a far deadline; claim one; sleep
// past a deadline; yield) against a model, and after every step checks each blocker against
// it. The model knows a claim must succeed while the deadline is still ahead, must fail once
// the deadline passed before a yield (a yield runs the P's due timers, and the Gs they wake
// run before the yielder gets the P back), and may go either way in between, its outcome then
// fixing what block must return. After two yields every released blocker has returned. A
// failure names the seed and step.
//
// The thread oracle does the same for plain OS threads (the futex path, which times itself
// out), and the stress tests race many wakers against near deadlines at procs = 2 and 4 with
// blocked Gs and threads mixed, checking that every wait_state resolves exactly once.
//
// Publication: a blocker publishes its wait_state under a per-blocker lock that block's
// `unlock` transition releases, and wakers claim only under that lock, as the runtime's
// callers do; so no waker sees a wait_state whose owner has not committed to sleeping.
#include <catch2/catch_test_macros.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gort/gort.hpp"
#include "note.hpp"
#include "test_util.hpp"
#include "wait.hpp"

namespace rt = gort::rt;

namespace {

struct blocker {
  rt::wait_state ws;
  std::int64_t deadline = 0;  // 0: none
  std::atomic<std::uint32_t> lock{0};
  std::atomic<bool> published{false};
  // Written by the blocked party once block returns.
  std::atomic<int> returns{0};
  std::atomic<bool> result{false};
  std::atomic<std::int64_t> returned_at{0};
  std::atomic<void*> note_seen{nullptr};  // ws.winner as the released party read it
  int note = 0;  // its address: the note the G oracle's driver leaves when it claims
};

void unlock_blocker(rt::fiber*, void* arg) { rt::spin_unlock(static_cast<blocker*>(arg)->lock); }

// The blocked party: a G or an OS thread. The caller of block is a runtime entry point with
// preemption held off, and publishes ws under the lock that `unlock` releases.
void block_on(blocker* b) {
  bool r;
  {
    rt::nopreempt_scope np;
    rt::spin_lock(b->lock);
    b->published.store(true, std::memory_order_relaxed);
    r = rt::block(b->ws, b->deadline, "wait oracle", {unlock_blocker, b});
  }
  b->returned_at.store(rt::nanotime(), std::memory_order_relaxed);
  b->note_seen.store(b->ws.winner, std::memory_order_relaxed);
  b->result.store(r, std::memory_order_relaxed);
  b->returns.fetch_add(1, std::memory_order_release);
}

// A waker: claims b if it is published and still pending; on success leaves `note` for the
// released party and finishes. Returns whether it claimed.
bool try_release(blocker* b, void* note) {
  rt::nopreempt_scope np;
  rt::spin_lock(b->lock);
  const bool won = b->published.load(std::memory_order_relaxed) && rt::claim(b->ws);
  rt::spin_unlock(b->lock);
  if (won) {
    b->ws.winner = note;
    rt::finish(b->ws);
  }
  return won;
}

std::int64_t range(std::mt19937_64& rng, std::int64_t lo, std::int64_t hi) {  // inclusive
  return lo + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(hi - lo + 1));
}

// A deadline of a random kind: none, already past, near (microseconds to a millisecond ahead)
// or far (never reached while the test runs).
std::int64_t random_deadline(std::mt19937_64& rng, std::int64_t now) {
  switch (rng() % 4) {
    case 0: return 0;
    case 1: return now - range(rng, 1, 1'000'000);
    case 2: return now + range(rng, 20'000, 1'000'000);
    default: return now + 60'000'000'000;
  }
}

// ---------------------------------------------------------------------------------------------
// G oracle (procs = 1)

struct g_oracle {
  enum state { blocked, claimed, timed_out };
  struct entry {
    std::unique_ptr<blocker> b;
    state st = blocked;
    bool parked = false;  // seen published after a settle: parked, its deadline armed
  };
  std::mt19937_64 rng;
  std::vector<entry> es;
  std::string failure;
  int late_claims[2] = {};  // claims made after the deadline passed: [lost, won]
  int step_no = 0;
  const char* step_name = "";
  std::size_t step_target = 0;

  explicit g_oracle(std::uint64_t seed) : rng(seed) {}

  template <class F>
  void expect(bool ok, F&& what) {
    if (ok || !failure.empty()) return;
    std::ostringstream d;
    d << "step " << step_no << " (" << step_name << ", blocker " << step_target << "): " << what();
    failure = d.str();
  }

  std::string who(std::size_t i) const {
    std::ostringstream d;
    d << "blocker " << i << " (deadline " << (es[i].b->deadline ? "set" : "none") << ", state " << es[i].st << ")";
    return d.str();
  }

  // Every blocker against the model. `settled`: a settle just ended; then every released
  // blocker has returned.
  void verify(bool settled) {
    for (std::size_t i = 0; i < es.size(); ++i) {
      entry& e = es[i];
      blocker& b = *e.b;
      const int n = b.returns.load(std::memory_order_acquire);
      expect(n <= 1, [&] { return who(i) + " returned " + std::to_string(n) + " times"; });
      if (n == 0) {
        expect(!settled || e.st == blocked, [&] { return who(i) + " released but not returned after two yields"; });
        continue;
      }
      const bool r = b.result.load(std::memory_order_relaxed);
      switch (e.st) {
        case blocked:
          // Nobody claimed it: only its deadline can have released it, and not early.
          expect(!r && b.deadline != 0 && b.returned_at.load() >= b.deadline,
                 [&] { return who(i) + " returned " + std::to_string(r) + " unclaimed, before its deadline or without one"; });
          e.st = timed_out;
          break;
        case claimed:
          expect(r && b.note_seen.load() == &b.note, [&] { return who(i) + " claimed but block returned " + std::to_string(r) + " or without the note"; });
          break;
        case timed_out:
          expect(!r && b.returned_at.load() >= b.deadline, [&] { return who(i) + " timed out but block returned " + std::to_string(r) + " or early"; });
          break;
      }
    }
  }

  // Two yields: the first runs the P's due timers and everything queued; Gs that a deadline
  // released during it (a blocker that parked in it with a past deadline) run before the
  // second returns. Blockers published before the settle whose deadline had passed when it
  // began have then returned.
  void settle() {
    const std::int64_t t = rt::nanotime();
    gort::yield();
    gort::yield();
    for (std::size_t i = 0; i < es.size(); ++i) {
      entry& e = es[i];
      if (e.st == blocked && e.parked && e.b->deadline && e.b->deadline <= t) {
        expect(e.b->returns.load(std::memory_order_acquire) == 1,
               [&] { return who(i) + ": its deadline passed before the settle, but it did not time out"; });
      }
      if (e.b->published.load(std::memory_order_relaxed)) e.parked = true;
    }
    verify(true);
  }

  void start() {
    step_name = "start";
    step_target = es.size();
    es.emplace_back();
    entry& e = es.back();
    e.b = std::make_unique<blocker>();
    e.b->deadline = random_deadline(rng, rt::nanotime());
    blocker* b = e.b.get();
    gort::go([b] { block_on(b); });
    settle();
    expect(b->published.load(std::memory_order_relaxed), [] { return std::string("a new blocker did not run in two yields"); });
  }

  // Claims blocker i and checks the outcome against the model.
  void claim_at(std::size_t i, bool resolved) {
    entry& e = es[i];
    step_target = i;
    const bool returned = e.b->returns.load(std::memory_order_acquire) == 1;
    const std::int64_t now = rt::nanotime();
    const bool got = try_release(e.b.get(), &e.b->note);
    if (resolved || returned) {
      expect(!got, [&] { return who(i) + ": a second claim, or a claim after the party returned, succeeded"; });
      if (got) e.st = claimed;
      return;
    }
    if (e.b->deadline == 0 || now < e.b->deadline)
      expect(got, [&] { return who(i) + ": claim failed before the deadline"; });
    else ++late_claims[got];
    e.st = got ? claimed : timed_out;
  }

  void claim_one(bool resolved) {
    std::vector<std::size_t> pool;
    for (std::size_t i = 0; i < es.size(); ++i)
      if ((es[i].st == blocked) != resolved) pool.push_back(i);
    if (pool.empty()) return;
    step_name = resolved ? "claim a resolved one" : "claim";
    claim_at(pool[rng() % pool.size()], resolved);
  }

  // Lets a near deadline pass without a scheduling point, then claims that blocker: the
  // claim races the deadline's fire, which the model leaves open.
  void claim_late() {
    std::vector<std::size_t> pool;
    const std::int64_t now = rt::nanotime();
    for (std::size_t i = 0; i < es.size(); ++i)
      if (es[i].st == blocked && es[i].b->deadline > now && es[i].b->deadline < now + 1'000'000) pool.push_back(i);
    if (pool.empty()) return;
    step_name = "claim after the deadline";
    const std::size_t i = pool[rng() % pool.size()];
    while (rt::nanotime() <= es[i].b->deadline) rt::cpu_relax();
    claim_at(i, false);
  }

  // Sleeps past a random blocked blocker's deadline, or a moment when none has one ahead.
  void sleep_past() {
    std::vector<std::size_t> pool;
    const std::int64_t now = rt::nanotime();
    for (std::size_t i = 0; i < es.size(); ++i)
      if (es[i].st == blocked && es[i].b->deadline > now && es[i].b->deadline < now + 2'000'000) pool.push_back(i);
    step_name = "sleep";
    std::int64_t until = now + range(rng, 1'000, 200'000);
    if (!pool.empty()) {
      step_target = pool[rng() % pool.size()];
      until = es[step_target].b->deadline + 1;
    }
    gort::sleep_until(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(until)));
    settle();
  }

  void step(int n) {
    step_no = n;
    const std::uint64_t roll = rng() % 100;
    std::size_t live = 0;
    for (const entry& e : es) live += e.st == blocked;
    if (roll < 30 && live < 48) start();
    else if (roll < 60) claim_one(false);
    else if (roll < 68) claim_one(true);
    else if (roll < 76) claim_late();
    else if (roll < 84) sleep_past();
    else {
      step_name = "settle";
      settle();
    }
    verify(false);
  }

  void finish_all() {
    step_name = "release the rest";
    for (std::size_t i = 0; i < es.size(); ++i) {
      if (es[i].st != blocked) continue;
      step_target = i;
      const bool returned = es[i].b->returns.load(std::memory_order_acquire) == 1;
      const bool got = try_release(es[i].b.get(), &es[i].b->note);
      expect(!(returned && got), [&] { return who(i) + ": claimed after it returned"; });
      es[i].st = got ? claimed : timed_out;
    }
    settle();
    for (std::size_t i = 0; i < es.size(); ++i)
      expect(es[i].b->returns.load() == 1, [&] { return who(i) + " never returned"; });
  }
};

}  // namespace

TEST_CASE("wait: at procs = 1 each blocked G is released once, as a model of claims and deadlines says") {
  no_procs_env np;
  // 40 seeds of 300 steps: 0.5 s natively, about 2,500 claimed and 1,100 timed-out blockers
  // and 190 claims made after a deadline had passed (at one P these all win: no scheduling
  // point lets the timer fire first; the stress tests see that race lost too).
  const int seeds = static_cast<int>(std::max(3L, 40 / test_scale()));
  constexpr int steps = 300;
  int outcomes[3] = {};
  int late[2] = {};
  for (int s = 0; s < seeds; ++s) {
    const std::uint64_t seed = 0x3a17'0000u + static_cast<std::uint64_t>(s);
    std::string failure;
    gort::run(with_procs(1), [&] {
      g_oracle o(seed);
      for (int n = 0; n < steps && o.failure.empty(); ++n) o.step(n);
      o.finish_all();
      failure = o.failure;
      for (const auto& e : o.es) ++outcomes[e.st];
      late[0] += o.late_claims[0];
      late[1] += o.late_claims[1];
    });
    INFO("seed " << seed);
    REQUIRE(failure == "");
  }
  // Every way out was taken: claimed, timed out, and claims after the deadline passed.
  CHECK(outcomes[g_oracle::claimed] > 0);
  CHECK(outcomes[g_oracle::timed_out] > 0);
  CHECK(late[0] + late[1] > 0);
}

// ---------------------------------------------------------------------------------------------
// OS threads (the futex path)

TEST_CASE("wait: a blocked OS thread is released once, by its claimer or not before its deadline") {
  const int rounds = static_cast<int>(std::max(4L, 60 / test_scale()));  // 0.15 s natively
  constexpr int nthreads = 6;
  std::mt19937_64 rng(0x7ead);
  int claimed = 0, timed_out = 0;
  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    std::vector<std::unique_ptr<blocker>> bs;
    std::vector<std::thread> ts;
    const std::int64_t now = rt::nanotime();
    for (int i = 0; i < nthreads; ++i) {
      bs.push_back(std::make_unique<blocker>());
      bs.back()->deadline = random_deadline(rng, now);
      ts.emplace_back(block_on, bs.back().get());
    }
    for (auto& b : bs)
      while (!b->published.load()) std::this_thread::yield();
    std::vector<int> order(nthreads), got(nthreads), notes(nthreads);
    for (int i = 0; i < nthreads; ++i) order[static_cast<std::size_t>(i)] = i;
    std::shuffle(order.begin(), order.end(), rng);
    for (int i : order) {
      const auto k = static_cast<std::size_t>(i);
      // Time moves on between claims, so some near deadlines pass first.
      std::this_thread::sleep_for(std::chrono::microseconds(range(rng, 0, 400)));
      blocker& b = *bs[k];
      const bool returned = b.returns.load(std::memory_order_acquire) == 1;
      const std::int64_t t = rt::nanotime();
      got[k] = try_release(&b, &notes[k]);
      if (returned) CHECK(!got[k]);
      if (b.deadline == 0 || t < b.deadline) CHECK(got[k]);
    }
    for (auto& t : ts) t.join();
    for (std::size_t k = 0; k < bs.size(); ++k) {
      blocker& b = *bs[k];
      CHECK(b.returns.load() == 1);
      CHECK(b.result.load() == static_cast<bool>(got[k]));
      if (got[k]) {
        CHECK(b.note_seen.load() == &notes[k]);
        ++claimed;
      } else {
        CHECK(b.deadline != 0);
        CHECK(b.returned_at.load() >= b.deadline);
        ++timed_out;
      }
      CHECK(!rt::claim(b.ws));  // resolved for good
    }
  }
  // Both ways out were exercised.
  CHECK(claimed > 0);
  CHECK(timed_out > 0);
}

// ---------------------------------------------------------------------------------------------
// Stress

namespace {

// One round: blocked Gs and OS threads with near deadlines; waker Gs claim at random while the
// deadlines pass; then the main G releases whatever is left. Returns a description of the
// first broken invariant, or "".
std::string stress_round(std::mt19937_64& rng, int& claimed, int& timed_out) {
  // Deadlines within 300 us of the start, about a round's length: natively ~40% of blockers
  // are claimed and ~60% time out, so most resolutions race. 600 rounds: ~1 s natively.
  constexpr int ng = 24, nt = 4, nwakers = 4;
  constexpr int n = ng + nt;
  std::vector<std::unique_ptr<blocker>> bs;
  std::unique_ptr<std::atomic<int>[]> wins(new std::atomic<int>[n]);    // successful claims
  std::unique_ptr<std::atomic<int>[]> winner(new std::atomic<int>[n]);  // who made the last one
  int notes[nwakers + 1];
  const std::int64_t now = rt::nanotime();
  for (int i = 0; i < n; ++i) {
    bs.push_back(std::make_unique<blocker>());
    wins[i].store(0);
    winner[i].store(-1);
    bs.back()->deadline = rng() % 4 == 0 ? 0 : now + range(rng, 0, 300'000);
  }
  std::vector<gort::task<void>> gs;
  for (int i = 0; i < ng; ++i) gs.push_back(gort::spawn(block_on, bs[static_cast<std::size_t>(i)].get()));
  std::vector<std::thread> ts;
  for (int i = ng; i < n; ++i) ts.emplace_back(block_on, bs[static_cast<std::size_t>(i)].get());
  std::vector<gort::task<void>> ws;
  for (int w = 0; w < nwakers; ++w) {
    const std::uint64_t wseed = rng();
    ws.push_back(gort::spawn([&, w, wseed] {
      std::mt19937_64 r(wseed);
      for (int k = 0; k < 3 * n; ++k) {
        const auto i = static_cast<std::size_t>(r() % n);
        if (try_release(bs[i].get(), &notes[w])) {
          winner[i].store(w);
          wins[i].fetch_add(1);
        }
        if (r() % 4 == 0) gort::yield();
      }
    }));
  }
  for (auto& w : ws) w.join();
  // The rest, once all have published (those without a deadline wait for this).
  for (int i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    while (!bs[k]->published.load()) gort::yield();
    if (try_release(bs[k].get(), &notes[nwakers])) {
      winner[i].store(nwakers);
      wins[i].fetch_add(1);
    }
  }
  for (auto& g : gs) g.join();
  gort::blocking([&] {
    for (auto& t : ts) t.join();
  });
  for (int i = 0; i < n; ++i) {
    blocker& b = *bs[static_cast<std::size_t>(i)];
    const int w = wins[i].load();
    const bool r = b.result.load();
    std::ostringstream d;
    d << (i < ng ? "G" : "thread") << " blocker " << i << ": returns " << b.returns.load() << ", result " << r
      << ", successful claims " << w << ", deadline " << (b.deadline ? b.deadline - now : 0) << " ns from start";
    if (b.returns.load() != 1 || w > 1 || r != (w == 1)) return d.str();
    if (r) {
      if (b.note_seen.load() != &notes[winner[i].load()]) return d.str() + ": without its claimer's note";
      ++claimed;
    } else {
      if (b.deadline == 0 || b.returned_at.load() < b.deadline) return d.str() + ": timed out early or without a deadline";
      ++timed_out;
    }
    if (rt::claim(b.ws)) return d.str() + ": claimable after it was resolved";
  }
  return "";
}

void stress(unsigned procs) {
  no_procs_env np;
  const int rounds = static_cast<int>(std::max(10L, 600 / test_scale()));
  int claimed = 0, timed_out = 0;
  std::string failure;
  int failed_round = -1;
  gort::run(with_procs(procs), [&] {
    std::mt19937_64 rng(0x5175 + procs);
    for (int r = 0; r < rounds && failure.empty(); ++r) {
      failure = stress_round(rng, claimed, timed_out);
      if (!failure.empty()) failed_round = r;
    }
  });
  INFO("procs " << procs << ", round " << failed_round);
  REQUIRE(failure == "");
  // Wakers won some races and deadlines others.
  CHECK(claimed > 0);
  CHECK(timed_out > 0);
}

}  // namespace

TEST_CASE("wait: with wakers racing deadlines at procs = 2, every wait_state resolves exactly once") { stress(2); }

TEST_CASE("wait: with wakers racing deadlines at procs = 4, every wait_state resolves exactly once") { stress(4); }
