// gort: the scheduler (Go's proc.go): the run queues' glue, idle Ps, spinning, stealing and
// findrunnable, switching between Gs, readying, parking and yielding, and cooperative
// preemption. The protocols are described in docs/design.md ("Scheduler"); the comments here
// name the invariants each step relies on.
//
// Concurrency: a P's run queue and timers are touched by the M holding the P (owner) and by
// thieves (runq.hpp, timer.hpp); the global queue and the idle-P list only under sched.lock;
// npidle and nmspinning are seq_cst counters read without the lock (the "delicate dance" in
// findrunnable relies on that order).
#include "proc.hpp"

#include <algorithm>
#include <thread>

#include "alloc.hpp"
#include "clock.hpp"
#include "fork.hpp"
#include "g.hpp"
#include "kernel_wait.hpp"
#include "m.hpp"
#include "pin.hpp"
#include "timer_sleeper.hpp"

namespace gort::rt {

sched_t sched;

namespace {
// Initial-exec: one fs/tpidr-relative load, and safe to read in the preemption signal handler
// (no lazy TLS allocation).
__attribute__((tls_model("initial-exec"))) thread_local m* tls_m = nullptr;
}  // namespace

// Here, beside yield, park and ready, rather than in m.cpp: the compiler may inline it within
// this file (the asm still forces a fresh read each time), which saves a call on every switch
// (3 of ~172 instructions per yield, callgrind).
m* getm() noexcept {
  // The asm makes this function opaque: no caller may cache its result across a switch, and
  // the compiler cannot prove it pure and merge two calls. (docs/design.md "Thread-local state")
  asm volatile("" ::: "memory");
  m* mp = tls_m;
  // The G was found asleep in a system call and lost its P (kernel_wait.cpp): this runtime
  // call is where it takes one back. Set only while the G runs its own code, so this is the
  // first runtime call since; runtime code never sees it set.
  if (mp && mp->kstate.load(std::memory_order_relaxed)) [[unlikely]]
    return kernel_rejoin(mp);
  return mp;
}

m* getm_raw() noexcept {
  asm volatile("" ::: "memory");
  return tls_m;
}

void setm(m* mp) noexcept { tls_m = mp; }

namespace {

// Ring-overflow batch: half the ring plus the G being put.
constexpr std::uint32_t spill_batch = runq::size / 2 + 1;
// Consecutive schedules between two looks at the global queue. Prime, like Go's: a loop of
// two Gs spawning each other cannot fall into step with it.
constexpr std::uint32_t global_check_period = 61;
// A G buried under newer ones in its P's ring is run first once it has waited this many time
// slices, at most one such G per that period (fast_next). Measured on skynet (1.1M Gs, 150 ms):
// at 1 slice the picks came every 10 ms, each opened another subtree while the last was still
// running, and 1 run in 8 overflowed the ring and kept 15,000 stacks alive instead of 500.
constexpr std::int64_t stale_slices = 10;
// Steal rounds over all Ps before giving up (the last one also takes runnext and timers).
constexpr int steal_tries = 4;
// ready() into an empty runnext defers its wake-up (sched.hpp, p::defer_wake) by this many of
// the readier's runtime calls. A ping-pong partner blocks at its first call (the receive after
// its send), so 2 lets the pair stay on one P; a producer that keeps going wakes a P at its
// second call after the hand-off, one item later than Go would.
constexpr std::uint32_t defer_wake_calls = 2;

// How long a spinning M keeps looking before it parks (see findrunnable).
constexpr std::int64_t spin_before_park_ns = 20'000;
// How long a thief leaves a running P's runnext alone before taking it (Go: 3 us).
constexpr std::int64_t runnext_grace_ns = 3'000;
// A running P's ring of at most short_ring Gs is left alone by thieves until its oldest G has
// waited ring_grace_ns, unless the P spawned within its last spawn_recent schedules (steal_work,
// ring_aged). Measured on bench/select (4 producers feeding one consumer, procs = 2): the
// consumer's P readies a producer every few values and a thief took each one across cores at
// once, 400,000 steals per 2M selects, so the row cost 210-240 ns whenever this VM's two vCPUs
// sat far apart (a cache-line round trip of 450 ns instead of 100) and 70-75 ns when close;
// with the grace about 22,000 steals, 130-145 ns far and 64-68 ns close. 8: a hand-off
// pipeline keeps a few Gs queued (select up to 3, chanthru up to 7; limits of 2 and 4 helped
// chanthru less). Spawners are exempt: with the length test alone skynet ran 5-20% slower
// when far apart, its rings falling to 8 or fewer at every subtree's end; with the exemption
// skynet, fib and spawn measure as before. 3 us as for runnext (10 us measured no better).
// 64 schedules is not tuned: the pipelines above spawn only when they start.
constexpr std::uint32_t short_ring = 8;
constexpr std::int64_t ring_grace_ns = runnext_grace_ns;
constexpr std::uint32_t spawn_recent = 64;

// ---------------------------------------------------------------------------------------------
// Run queues

void globrunqput_batch(g* head, g* tail, std::uint32_t n) GORT_REQUIRES(sched.lock) {
  sched.lock.assert_held();
  tail->schedlink = nullptr;
  if (sched.gtail) sched.gtail->schedlink = head;
  else sched.ghead = head;
  sched.gtail = tail;
  sched.nglobal.fetch_add(n, std::memory_order_release);
}

}  // namespace

void globrunqput(g* gp) {
  spin_guard l(sched.lock);
  globrunqput_batch(gp, gp, 1);
}

bool globrunqremove(g* gp) {
  sched.lock.assert_held();
  g* prev = nullptr;
  for (g* q = sched.ghead; q; prev = q, q = q->schedlink) {
    if (q != gp) continue;
    (prev ? prev->schedlink : sched.ghead) = q->schedlink;
    if (sched.gtail == q) sched.gtail = prev;
    q->schedlink = nullptr;
    sched.nglobal.fetch_sub(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

g* globrunq_find_wired(bool take) {
  sched.lock.assert_held();
  for (g* gp = sched.ghead; gp; gp = gp->schedlink) {
    if (!gp->lockedm) continue;
    if (take) globrunqremove(gp);
    return gp;
  }
  return nullptr;
}

namespace {

// Takes a fair share of the global queue: the first is returned, the rest go to pp's ring,
// which callers guarantee has room (it is empty, or max == 1).
g* globrunqget(p* pp, std::uint32_t max) GORT_REQUIRES(sched.lock) {
  sched.lock.assert_held();
  std::uint32_t n = sched.nglobal.load(std::memory_order_relaxed);
  if (n == 0) return nullptr;
  std::uint32_t take = std::min(n, n / sched.nprocs + 1);
  if (max && take > max) take = max;
  take = std::min(take, runq::size / 2);
  g* first = sched.ghead;
  g* cur = first;
  for (std::uint32_t i = 0; i < take; ++i) {
    g* nx = cur->schedlink;
    if (i > 0) pp->q.owner().put_back(cur);  // in order at the back: they run after what is queued
    sched.ghead = nx;
    cur = nx;
  }
  if (!sched.ghead) sched.gtail = nullptr;
  sched.nglobal.fetch_sub(take, std::memory_order_relaxed);
  first->schedlink = nullptr;
  return first;
}

// The ring is full: its oldest half and gp go to the global queue in one locked splice.
void runqput_slow(p* pp, g* gp, queue_at where) {
  g* batch[spill_batch];
  for (;;) {
    std::uint32_t n = pp->q.owner().grab_half_for_spill(batch);
    if (n == 0) {  // a thief made room meanwhile
      if (where == queue_at::back ? pp->q.owner().put_back(gp) : pp->q.owner().put(gp)) return;
      continue;
    }
    batch[n++] = gp;
    for (std::uint32_t i = 0; i + 1 < n; ++i) batch[i]->schedlink = batch[i + 1];
    spin_guard l(sched.lock);
    globrunqput_batch(batch[0], batch[n - 1], n);
    return;
  }
}

// The back-of-the-line half of runqput, inline for yield's after-switch commit.
inline void runqput_back(p* pp, g* gp) {
  // The old end stays sorted by stamp (runq.hpp): no newer than the G it goes behind.
  std::int64_t stamp = pp->stamp_ns.load(std::memory_order_relaxed);
  if (g* old = pp->q.owner().peek_oldest()) stamp = std::min(stamp, old->queued_at.load(std::memory_order_relaxed));
  gp->queued_at.store(stamp, std::memory_order_relaxed);
  if (!pp->q.owner().put_back(gp, sched.nprocs == 1)) [[unlikely]] runqput_slow(pp, gp, queue_at::back);
}

}  // namespace

// Owner P only. next: into runnext (the G it displaces goes to the ring's new end); else at
// the ring's old end, the back of the line (see runq.hpp).
bool runqput(p* pp, g* gp, queue_at where) {
  if (where == queue_at::back) {
    runqput_back(pp, gp);
    return true;
  }
  const bool alone = sched.nprocs == 1;
  gp = pp->q.owner().put_next(gp, alone);
  if (!gp) return false;
  gp->queued_at.store(pp->stamp_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  if (!pp->q.owner().put(gp, alone)) runqput_slow(pp, gp, queue_at::next);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Idle Ps (sched.lock held)

namespace {
// npidle == length of sched.pidle, and no P twice on the list (debug builds; O(nprocs)).
void check_pidle() GORT_REQUIRES(sched.lock) {
#if GORT_DEBUG
  std::uint32_t n = 0;
  for (p* q = sched.pidle; q; q = q->link) {
    GORT_ASSERT(q->status.load(std::memory_order_relaxed) == pidle, "P %u on the idle list is not idle", q->id);
    GORT_ASSERT(++n <= sched.nprocs, "the idle P list has a cycle");
  }
  GORT_ASSERT(n == sched.npidle.load(std::memory_order_relaxed),
              "npidle = %u but the idle list holds %u Ps", sched.npidle.load(std::memory_order_relaxed), n);
#endif
}
}  // namespace

void pidleput(p* pp) {
  sched.lock.assert_held();
  GORT_ASSERT(!pp->link, "P %u is already on the idle list", pp->id);
  // While running, nobody idles a P that has Gs queued (shutdown abandons them).
  GORT_ASSERT(pp->q.empty() || !running(std::memory_order_relaxed), "P %u goes idle with Gs queued", pp->id);
  pp->status.store(pidle, std::memory_order_relaxed);
  pp->link = sched.pidle;
  sched.pidle = pp;
  sched.npidle.fetch_add(1, std::memory_order_seq_cst);
  check_pidle();
}

namespace {

// A P leaves the idle list: if sysmon sleeps because every P was idle, it must watch again.
void pidle_taken() GORT_REQUIRES(sched.lock) {
  if (sched.npidle.fetch_sub(1, std::memory_order_seq_cst) == 0) GORT_THROW("npidle went negative");
  check_pidle();
  if (sched.sysmon_wait.load(std::memory_order_seq_cst)) {
    sched.sysmon_wait.store(0, std::memory_order_relaxed);
    sched.sysmon_since.store(nanotime(), std::memory_order_relaxed);
    sched.sysmon_note.wakeup();
  }
}

// Takes pp itself off the idle list, if it is there.
bool pidleremove(p* pp) GORT_REQUIRES(sched.lock) {
  for (p** at = &sched.pidle; *at; at = &(*at)->link) {
    if (*at == pp) {
      *at = pp->link;
      pp->link = nullptr;
      pidle_taken();
      return true;
    }
  }
  return false;
}

}  // namespace

p* pidleget() {
  sched.lock.assert_held();
  p* pp = sched.pidle;
  if (pp) {
    sched.pidle = pp->link;
    pp->link = nullptr;
    pidle_taken();
  }
  return pp;
}

p* take_idle_p(p* prefer) {
  spin_guard l(sched.lock);
  if (prefer && pidleremove(prefer)) return prefer;
  return pidleget();
}

bool others_idle() noexcept {
  return sched.npidle.load(std::memory_order_relaxed) +
             sched.nmspinning.load(std::memory_order_relaxed) + 1 >= sched.nprocs;
}

void acquirep(m* mp, p* pp, acquire_mode mode) {
  GORT_ASSERT(!mp->curp, "M %u acquires P %u while holding P %u", mp->id, pp->id,
              mp->curp ? mp->curp->id : 0u);
  mp->curp = pp;
  pp->curm.store(mp, std::memory_order_relaxed);
  pp->status.store(prunning, std::memory_order_release);
  // In the preemption signal handler the interrupted code may be inside mimalloc or hwloc on
  // this very thread: no heap creation and no rebinding there (the M does both the next time
  // it acquires a P the ordinary way).
  if (mode == acquire_mode::in_signal) return;
  heap_adopt(mp, pp);
  if (pp->cpu >= 0 && mp->bound_cpu != pp->cpu) {
    bind_thread(pp->cpu);
    mp->bound_cpu = pp->cpu;
  }
}

p* releasep(m* mp) {
  p* pp = mp->curp;
  GORT_ASSERT(pp && pp->curm.load(std::memory_order_relaxed) == mp,
              "M %u releases P %u, which names M %d as its holder (status %u)", mp->id, pp ? pp->id : 0u,
              pp && pp->curm.load(std::memory_order_relaxed) ? int(pp->curm.load(std::memory_order_relaxed)->id) : -1,
              pp ? pp->status.load(std::memory_order_relaxed) : 0u);
  pp->curm.store(nullptr, std::memory_order_relaxed);
  mp->curp = nullptr;
  return pp;
}

// ---------------------------------------------------------------------------------------------
// Waking and spinning

// Starts a spinning M if there is an idle P and nobody is spinning: the spinner will find the
// work just published. No StoreLoad fence here, unlike a textbook Dekker: work published to the
// caller's own P is run by that P even if no M is woken (so nothing is lost, at worst a core
// idles briefly), and the fence would cost every spawn and wake-up. Work published without a P
// (foreign threads, ready from a plain thread) fences before calling this. See docs/design.md.
void wakep() noexcept {
  if (sched.npidle.load(std::memory_order_seq_cst) == 0) return;
  if (sched.nmspinning.load(std::memory_order_seq_cst) != 0) return;
  std::uint32_t zero = 0;
  if (!sched.nmspinning.compare_exchange_strong(zero, 1, std::memory_order_seq_cst)) return;
  startm(nullptr, spin::yes);
}

namespace {

// mp stops spinning; nmspinning never goes below zero. Returns the count before.
std::uint32_t stop_spinning(m* mp) {
  GORT_ASSERT(mp->spinning, "M %u stops spinning but was not", mp->id);
  mp->spinning = false;
  const std::uint32_t before = sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst);
  if (before == 0) GORT_THROW("nmspinning went negative (M %u)", mp->id);
  return before;
}

void start_spinning(m* mp) {
  GORT_ASSERT(!mp->spinning, "M %u starts spinning twice", mp->id);
  mp->spinning = true;
  sched.nmspinning.fetch_add(1, std::memory_order_seq_cst);
}

// A spinning M that found work stops spinning; if it was the last spinner it wakes another,
// so a burst of new work is picked up by more than one M.
void resetspinning(m* mp) {
  if (stop_spinning(mp) == 1) wakep();
}

// Whether a thief may take from p2's ring now. A running P with a short ring that is not
// spawning is usually handing Gs over that it runs itself a moment later (a consumer readying
// the producers it drains, woken waiters): moving each to another core costs more in cache
// traffic than running it here, and in a pipeline every item then crosses cores. So such a
// ring is taken only once its oldest G has stood there for ring_grace_ns, as this thief sees
// it across its looks (the watch: the G at the old end and when this thief first saw it there;
// the owner runs the newest first, so an oldest G that stays put is really waiting). Idle or
// blocked Ps, long rings and Ps that are spawning (fork-join: what they queue is new work to
// spread) are stolen from at once. A G waits at most the grace longer than before for an idle
// P: the thief keeps looking meanwhile (findrunnable does not park while any ring holds work).
bool ring_aged(m* mp, p* p2) {
  const auto q = p2->q.thief();
  const std::uint32_t len = q.ring_length();
  if (len == 0 || len > short_ring || p2->status.load(std::memory_order_relaxed) != prunning ||
      p2->schedtick.load(std::memory_order_relaxed) - q.spawn_tick() < spawn_recent ||
      p2->id >= mp->watch.size())
    return true;
  m::ring_watch& w = mp->watch[p2->id];
  g* oldest = q.peek_oldest();
  const std::int64_t now = nanotime();
  if (w.oldest != oldest) {
    w.oldest = oldest;
    w.since = now;
    return false;
  }
  return now - w.since >= ring_grace_ns;
}

g* steal_work(m* mp, p* pp) {
  const std::uint32_t n = sched.nprocs;
  std::int64_t now = 0;
  for (int i = 0; i < steal_tries; ++i) {
    bool last = i == steal_tries - 1;
    std::uint32_t pos = static_cast<std::uint32_t>(fastrand(mp) % n);
    std::uint32_t inc = sched.steal_strides[fastrand(mp) % sched.steal_strides.size()];
    for (std::uint32_t k = 0; k < n; ++k, pos = (pos + inc) % n) {
      if (!running(std::memory_order_relaxed)) return nullptr;
      p* p2 = sched.ps[pos];
      if (p2 == pp) continue;
      if (last) {
        // Run the victim's due timers: it may be stuck in a long G, or idle.
        check_timers(p2, now);
        if (g* gp = pp->q.owner().get()) return gp;
        // A running P's runnext is usually the partner its G is about to hand over to (a
        // channel ping-pong, a woken waiter): stealing it at once moves every hand-off across
        // cores. Give the victim a moment to run it itself first, as Go does (runqgrab).
        // And if it scheduled anything meanwhile, it is handing Gs over through runnext right
        // now (a ping-pong pair): what sits there is a fresh hand-off, not a G left waiting,
        // and taking it would split the pair across cores (measured: ~6,000 such steals per
        // million round trips at procs = 2 before this check).
        if (!ring_aged(mp, p2)) continue;
        bool take_next = last;
        if (p2->q.only_next() && p2->status.load(std::memory_order_relaxed) == prunning) {
          const std::uint32_t tick = p2->schedtick.load(std::memory_order_relaxed);
          const std::int64_t until = nanotime() + runnext_grace_ns;
          while (nanotime() < until) cpu_relax();
          if (p2->schedtick.load(std::memory_order_relaxed) != tick) take_next = false;
        }
        if (std::uint32_t got = p2->q.thief().grab(pp->q.owner(), take_next)) return pp->q.owner().commit_steal(got);
        continue;
      }
      if (!ring_aged(mp, p2)) continue;
      if (std::uint32_t got = p2->q.thief().grab(pp->q.owner(), false)) return pp->q.owner().commit_steal(got);
    }
  }
  return nullptr;
}

// Finds a G to run, blocking the M when there is none. Called on g0 with a P held; returns
// with a P held, or null on shutdown (no P held then).
g* findrunnable(m* mp) {
top:
  if (!running()) {
    if (mp->curp) {
      spin_guard l(sched.lock);
      pidleput(releasep(mp));
    }
    return nullptr;
  }
  p* pp = mp->curp;
  std::int64_t now = nanotime();
  pp->stamp_ns.store(now, std::memory_order_relaxed);  // fresh stamps for what this P queues next (runqput)
  check_timers(pp, now);

  if (g* gp = pp->q.owner().get()) return gp;

  if (sched.nglobal.load(std::memory_order_acquire)) {
    spin_guard l(sched.lock);
    if (g* gp = globrunqget(pp, 0)) return gp;
  }

  // Spin (steal) only while spinners are fewer than half the busy Ps: more would burn CPU
  // without finding more work.
  std::uint32_t busy = sched.nprocs - sched.npidle.load(std::memory_order_seq_cst);
  if (mp->spinning || 2 * sched.nmspinning.load(std::memory_order_seq_cst) < busy) {
    if (!mp->spinning) start_spinning(mp);
    if (g* gp = steal_work(mp, pp)) return gp;
    // Keep looking for a short while before parking: a producer that outpaces us by a hair
    // would otherwise pay a futex wake-up (microseconds) for every batch it publishes, and we
    // a sleep. Bounded, so an idle runtime still parks within spin_before_park_ns.
    std::int64_t until = nanotime() + spin_before_park_ns;
    do {
      for (int i = 0; i < 64; ++i) cpu_relax();
      if (g* gp = pp->q.owner().get()) return gp;
      if (sched.nglobal.load(std::memory_order_acquire)) {
        spin_guard l(sched.lock);
        if (g* gp = globrunqget(pp, 0)) return gp;
      }
      if (g* gp = steal_work(mp, pp)) return gp;
    } while (nanotime() < until && running(std::memory_order_relaxed));
  }

  // The delicate dance (Go's name for it). Nothing found: give the P back and stop spinning,
  // then, after a StoreLoad fence, look at every source once more. Work published between our
  // checks and the pidleput would otherwise be missed: its publisher read npidle and
  // nmspinning before our stores and so woke nobody, and our second look reads after them.
  {
    spin_guard l(sched.lock);
    if (sched.nglobal.load(std::memory_order_relaxed)) {
      if (g* gp = globrunqget(pp, 0)) return gp;
    }
    pidleput(releasep(mp));
  }
  bool was_spinning = mp->spinning;
  if (was_spinning) stop_spinning(mp);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool work = sched.nglobal.load(std::memory_order_seq_cst) != 0;
  for (p* p2 : sched.ps)
    if (!work && !p2->q.empty()) work = true;
  if (work) {
    if (acquire_idle_p(mp)) {
      if (was_spinning) start_spinning(mp);
      goto top;
    }
  }

  if (!park_idle(mp)) return nullptr;
  goto top;
}

// ---------------------------------------------------------------------------------------------
// Switching

// Next G for this P without leaving the G's stack: the fast path of yield, park and exit.
// Null means "go to g0" (nothing local, or the runtime is stopping).
// `fire`: run due timers here. Not when a G is parking: its commit has not run yet, so it may
// still hold the lock of the very object a timer's fire touches (a channel, a mutex). Then due
// timers send us through g0, whose findrunnable runs them after the commit.
[[gnu::noinline]] g* fast_next_full(p* pp, bool fire) {
  if (!running(std::memory_order_relaxed)) return nullptr;
  std::int64_t now = 0;
  if (fire) {
    check_timers(pp, now);
  } else if (std::int64_t w = pp->tm.next(); w && w <= nanotime()) {
    return nullptr;
  }
  const bool alone = sched.nprocs == 1;
  if (--pp->global_countdown == 0) {
    // Fairness: the global queue, then the ring's oldest G if it has waited a time slice, so
    // neither spilled Gs nor the ring's old end starve behind a pair of Gs readying each other
    // through runnext, or behind newer Gs (the owner otherwise runs the newest first: runq.hpp).
    pp->global_countdown = global_check_period;
    const std::int64_t tick = nanotime();
    pp->stamp_ns.store(tick, std::memory_order_relaxed);
    if (sched.nglobal.load(std::memory_order_relaxed)) {
      spin_guard l(sched.lock);
      if (g* gp = globrunqget(pp, 1)) return gp;
    }
    // At most one such pick per stale_period: in a long fork-join run every deferred sibling
    // is "stale", and each pick opens another subtree whose pending children stay queued
    // until it is done (runq.hpp).
    const std::int64_t stale_period = stale_slices * sched.time_slice_ns;
    if (tick - pp->stale_pick_ns >= stale_period) {
      g* old = pp->q.owner().peek_oldest();
      if (old && tick - old->queued_at.load(std::memory_order_relaxed) >= stale_period) {
        if (g* gp = pp->q.owner().get_oldest(alone)) {
          pp->stale_pick_ns = tick;
          return gp;
        }
      }
    }
  }
  return pp->q.owner().get(alone);
}

// The common case inline (no timer armed on this P, not the 1-in-61 look): a few loads and the
// run-queue pop, so that yield and park pay no call frame for it; everything else in
// fast_next_full, out of line.
inline g* fast_next(p* pp, bool fire) {
  if (pp->tm.next() != 0 || pp->global_countdown == 1 || !running(std::memory_order_relaxed))
      [[unlikely]]
    return fast_next_full(pp, fire);
  --pp->global_countdown;
  return pp->q.owner().get(sched.nprocs == 1);
}

}  // namespace

namespace {
// A new time slice on mp's P (sysmon watches this); also cancels a pending preemption request.
inline void new_slice(m* mp) {
  p* pp = mp->curp;
  pp->schedtick.store(pp->schedtick.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}
}  // namespace

void execute_on(m* mp, g* next) {
  mp->curg = next;
  next->curm = mp;
  set_status(next, gstatus::runnable, gstatus::running);
  new_slice(mp);
}

void resume_on(m* mp, g* gp) {
  const gstatus s = gp->status.load(std::memory_order_relaxed);
  GORT_ASSERT(s == gstatus::running || s == gstatus::runnable,
              "G %llu resumed on its M while %d", static_cast<unsigned long long>(gp->id), static_cast<int>(s));
  (void)s;
  mp->curg = gp;
  gp->curm = mp;
  gp->status.store(gstatus::running, std::memory_order_relaxed);
  new_slice(mp);
}

namespace {

// The G a leaving G switches to directly: a local one, or null to go through g0 — always when
// mp is wired to its G, and when the next G is wired to another M (then mp->handoff carries it
// to g0, which hands it over).
inline g* next_here(m* mp, bool fire) {
  if (mp->lockedg) return nullptr;
  g* next = fast_next(mp->curp, fire);
  if (next && next->lockedm && next->lockedm != mp) {
    mp->handoff = next;
    return nullptr;
  }
  return next;
}

// Switches from the running G gp directly to next (no detour through g0).
void switch_g(m* mp, g* gp, g* next, transition tr) {
  gp->fib.after = tr.fn;
  gp->fib.after_arg = tr.arg;
  execute_on(mp, next);
  gp->fib.switch_to(next->fib, mp->eh);
}

}  // namespace

// Leaves the running G gp: switches to next (a local G) or to g0, then runs `tr` on the other
// side. Returns when gp is resumed (never, if dying).
void leave_to(m* mp, g* gp, g* next, transition tr, leave_mode mode) {
  const bool dying = mode == leave_mode::dying;
  gp->fib.after = tr.fn;
  gp->fib.after_arg = tr.arg;
  fiber* to;
  if (next) {
    execute_on(mp, next);
    to = &next->fib;
  } else {
    mp->curg = nullptr;
    to = &mp->g0;
  }
  // One call for both cases: every resume then returns through the same call sites, which keeps
  // the CPU's return-address predictor right (arch::gort_jump_ret).
  gp->fib.switch_to(*to, mp->eh, dying);
  if (dying) std::abort();  // a finished G is never resumed
}

void leave(g* gp, transition tr, leave_mode mode) {
  m* mp = gp->curm;
  GORT_ASSERT(mp == getm_raw() && mp->curp && !mp->kstate.load(std::memory_order_relaxed),
              "G %llu leaves from a thread that does not run it with a P", static_cast<unsigned long long>(gp->id));
  leave_to(mp, gp, next_here(mp, mode == leave_mode::dying), tr, mode);
}

void schedule(m* mp) {
  for (;;) {
    g* gp;
    if (mp->lockedg) {
      // Wired to one G that just left (parked, yielded, or queued after a blocking call): wait
      // until it is dequeued somewhere and our P comes back with it.
      if (!stoplockedm(mp)) return;
      gp = mp->lockedg;
    } else {
      if (!mp->curp && !park_idle(mp)) return;  // gave its P away, or back from a blocking call
      gp = std::exchange(mp->handoff, nullptr);
      if (!gp) gp = findrunnable(mp);
      if (!gp) return;
      if (mp->spinning) resetspinning(mp);
      if (gp->lockedm && gp->lockedm != mp) {
        startlockedm(mp, gp);
        continue;
      }
    }
    execute_on(mp, gp);
    mp->g0.switch_to(gp->fib, mp->eh);
    // Back on g0: a G left with nothing local to switch to (its transition already ran).
  }
}

namespace {

void park_commit(fiber* f, void* arg) {
  auto* inner = static_cast<transition*>(arg);
  transition t = *inner;  // lives on the parking G's stack: read before the G can be readied
  set_status(g_of(f), gstatus::running, gstatus::waiting, std::memory_order_release);
  if (t.fn) t.fn(f, t.arg);
}

// arg: the P the G yielded on; the arriving side runs on the same M, still holding it.
void yield_commit(fiber* f, void* arg) {
  g* gp = g_of(f);
  set_status(gp, gstatus::running, gstatus::runnable);
  runqput_back(static_cast<p*>(arg), gp);
}

// A cooperative preemption's: to the global queue, as Go's is (see preempt_check).
void yield_global_commit(fiber* f, void*) {
  g* gp = g_of(f);
  set_status(gp, gstatus::running, gstatus::runnable);
  globrunqput(gp);
}

}  // namespace

void ready(g* gp, queue_at where) noexcept {
  set_status(gp, gstatus::waiting, gstatus::runnable, std::memory_order_release);
  requeue(gp, where);
}

void requeue(g* gp, queue_at where) noexcept {
  GORT_ASSERT(gp->status.load(std::memory_order_relaxed) == gstatus::runnable,
              "G %llu queued while %d", static_cast<unsigned long long>(gp->id),
              static_cast<int>(gp->status.load(std::memory_order_relaxed)));
  m* mp = getm();
  nopreempt_scope np(mp ? mp->curg : nullptr);
  p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    // Into an empty runnext with some P idle: the wake-up waits for the readier's next runtime
    // calls (docs/design.md "Deferred wake-ups"), which usually run the G here first.
    const bool to_ring = runqput(pp, gp, where);
    if (!to_ring && sched.npidle.load(std::memory_order_relaxed) != 0) {
      pp->defer_wake.store(defer_wake_calls, std::memory_order_relaxed);
      pp->defer_tick = pp->schedtick.load(std::memory_order_relaxed);
      return;
    }
  } else {
    globrunqput(gp);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // see wakep
    // A plain thread's wake-up during shutdown starts no M: shutdown may have collected the
    // Ms to join already. The G stays queued and is abandoned with the rest.
    if (!running(std::memory_order_seq_cst)) return;
  }
  wakep();
}

void park(const char* reason, transition commit) noexcept {
  // Every caller is a runtime entry point, which holds preemption off already (sched.hpp).
  g* gp = getg();
  GORT_ASSERT(gp && gp->nopreempt.load(std::memory_order_relaxed) > 0,
              "park (%s) from %s", reason, gp ? "a G with preemption on" : "a thread that is no G");
  if (forked()) [[unlikely]]
    forked_fail(reason);
  gp->wait_reason = reason;
  leave(gp, {park_commit, &commit}, leave_mode::resumable);
  gp->wait_reason = nullptr;
}

namespace {
// A yield that found no local G to switch to (next_here returned null): carry on, unless the
// runtime is stopping (then g0 must get control back so the M can exit), or g0 has a G to hand
// to its M, or this G is wired to this M (its yield goes through the queue like anyone's, and
// g0 waits for it). Out of line, so that the common case keeps few values live.
[[gnu::noinline]] void yield_to_g0(m* mp, g* gp, p* pp, transition tr) noexcept {
  if (!mp->handoff && !mp->lockedg && running(std::memory_order_relaxed)) {
    // Still a scheduling point, as Go's Gosched is: a new slice, so sysmon does not signal a
    // G that yields often but finds nobody else to run.
    pp->schedtick.store(pp->schedtick.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return;
  }
  leave_to(mp, gp, nullptr, tr, leave_mode::resumable);
}

[[gnu::always_inline]] inline void yield_via(bool global) noexcept {
  m* mp = getm();
  g* gp = mp ? mp->curg : nullptr;
  if (!gp) {
    std::this_thread::yield();
    return;
  }
  if (forked()) [[unlikely]]
    forked_fail("gort::yield");
  nopreempt_scope np(gp);  // before reading curp: a preemption could hand the P away
  p* pp = mp->curp;
  transition tr = global ? transition{yield_global_commit, nullptr} : transition{yield_commit, pp};
  g* next = next_here(mp, true);
  if (!next) [[unlikely]]
    return yield_to_g0(mp, gp, pp, tr);
  switch_g(mp, gp, next, tr);
}
}  // namespace

void yield_g() noexcept { yield_via(false); }

bool can_spin(int iter) noexcept {
  // Go's sync_runtime_canSpin: a few rounds only, only with another P running (the holder may
  // be on it, about to unlock) and nothing queued here that spinning would delay.
  if (iter >= 4) return false;
  m* mp = getm();
  if (!mp || !mp->curp) {
    static const bool multi = std::thread::hardware_concurrency() > 1;
    return multi;
  }
  if (sched.nprocs <= 1 || others_idle()) return false;
  return mp->curp->q.empty();
}

void give_way() noexcept {
  m* mp = getm();
  g* gp = mp ? mp->curg : nullptr;
  if (gp && mp->curp && gp->nopreempt.load(std::memory_order_relaxed) == 0) yield_via(false);
}

namespace {
// The common tail of preempt_check: yield if sysmon asked this slice to.
inline void preempt_if_asked(g* gp, p* pp) noexcept {
  if (gp->nopreempt.load(std::memory_order_relaxed) != 0) return;
  if (pp->preempt_req.load(std::memory_order_relaxed) != pp->schedtick.load(std::memory_order_relaxed))
    return;
  // To the global queue, as Go's preemption does: this P takes it back within 61 schedules
  // (fast_next), after the Gs it queued. The ring's back of the line would be behind every
  // deferred sibling of a fork-join run, and a preempted parent would hold its children's
  // stacks until the whole rest of the tree had run.
  yield_via(true);
}

// preempt_check with a deferred wake-up pending (ready): count the readier's call, and wake an
// idle P at the last one unless this P has scheduled since or runnext was emptied. Out of line,
// so that the common path of preempt_check needs no frame.
[[gnu::noinline]] void preempt_check_deferred(m* mp, g* gp) noexcept {
  {
    // Not preemptible while it writes to the P: an asynchronous preemption after preempt_check
    // read m->curp may have handed that P to another M (and this M another P).
    nopreempt_scope np(gp);
    if (p* pp = mp->curp) {
      if (pp->schedtick.load(std::memory_order_relaxed) != pp->defer_tick || !pp->q.has_next()) {
        pp->defer_wake.store(0, std::memory_order_relaxed);  // ran here, or a thief took it
      } else {
        const std::uint32_t left = pp->defer_wake.load(std::memory_order_relaxed) - 1;
        pp->defer_wake.store(left, std::memory_order_relaxed);
        if (left == 0) wakep();
      }
    }
  }
  if (p* pp = mp->curp) preempt_if_asked(gp, pp);
}
}  // namespace

void preempt_check() noexcept {
  m* mp = getm();
  if (!mp) return;
  g* gp = mp->curg;
  p* pp = mp->curp;
  if (!gp || !pp) return;
  if (pp->defer_wake.load(std::memory_order_relaxed)) [[unlikely]]
    return preempt_check_deferred(mp, gp);
  preempt_if_asked(gp, pp);
}

}  // namespace gort::rt
