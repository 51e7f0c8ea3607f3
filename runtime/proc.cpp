// gort: the scheduler. The protocols are described in docs/design.md ("Scheduler"); the
// comments here name the invariants each step relies on.
#include <mimalloc.h>
#include <pthread.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <numeric>
#include <stdexcept>
#include <string>
#include <system_error>

#include "gort_build_config.h"
#include "overflow.hpp"
#include "pin.hpp"
#include "san.hpp"
#include "sched.hpp"

#if GORT_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

namespace gort::rt {

sched_t sched;

namespace {
// Decided once per process, at load time, because rt::alloc may run before, between and after
// runtimes and every block must go back to the allocator it came from. Memcheck tracks malloc,
// not mimalloc's heap API, so under Valgrind the runtime uses malloc and its checks see every
// block; TSan intercepts malloc but not mimalloc, and would take a block freed by one G and
// reused by another for a race between them.
bool detect_system_alloc() noexcept {
#if GORT_TSAN
  return true;
#elif GORT_HAVE_VALGRIND
  return RUNNING_ON_VALGRIND != 0;
#else
  return false;
#endif
}
[[maybe_unused]] const bool system_alloc_decided = (sched.system_alloc = detect_system_alloc(), true);
}  // namespace

namespace {

// Initial-exec: one fs/tpidr-relative load, and safe to read in the preemption signal handler
// (no lazy TLS allocation).
__attribute__((tls_model("initial-exec"))) thread_local m* tls_m = nullptr;

// Ring-overflow batch: half the ring plus the G being put.
constexpr std::uint32_t spill_batch = runq::size / 2 + 1;
// A P keeps at most this many dead Gs; past it, half go to the global free list.
constexpr std::uint32_t gfree_max = 64;
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
// G ids handed to a P at a time.
constexpr std::uint64_t goid_batch = 16;

std::uint64_t fastrand(m* mp) noexcept {
  // xorshift64*: per-M state, no sharing.
  std::uint64_t x = mp->rand;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  mp->rand = x;
  return x * 0x2545F4914F6CDD1Dull;
}

// For stealing: visit every P once per pass, starting at a random P and stepping by a random
// stride coprime with nprocs (so the walk is a permutation).
std::vector<std::uint32_t> coprimes;

static_assert(offsetof(g, fib) == 0, "g_of relies on the fiber being first");

// ---------------------------------------------------------------------------------------------
// Run queues

void globrunqput_batch(g* head, g* tail, std::uint32_t n) {
  // sched.lock held
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

namespace {

// sched.lock held. Takes a fair share of the global queue: the first is returned, the rest go
// to pp's ring, which callers guarantee has room (it is empty, or max == 1).
g* globrunqget(p* pp, std::uint32_t max) {
  std::uint32_t n = sched.nglobal.load(std::memory_order_relaxed);
  if (n == 0) return nullptr;
  std::uint32_t take = std::min(n, n / sched.nprocs + 1);
  if (max && take > max) take = max;
  take = std::min(take, runq::size / 2);
  g* first = sched.ghead;
  g* cur = first;
  for (std::uint32_t i = 0; i < take; ++i) {
    g* nx = cur->schedlink;
    if (i > 0) pp->q.put_back(cur);  // in order at the back: they run after what is queued
    sched.ghead = nx;
    cur = nx;
  }
  if (!sched.ghead) sched.gtail = nullptr;
  sched.nglobal.fetch_sub(take, std::memory_order_relaxed);
  first->schedlink = nullptr;
  return first;
}

// The ring is full: its oldest half and gp go to the global queue in one locked splice.
void runqput_slow(p* pp, g* gp, bool back) {
  g* batch[spill_batch];
  for (;;) {
    std::uint32_t n = pp->q.grab_half_for_spill(batch);
    if (n == 0) {  // a thief made room meanwhile
      if (back ? pp->q.put_back(gp) : pp->q.put(gp)) return;
      continue;
    }
    batch[n++] = gp;
    for (std::uint32_t i = 0; i + 1 < n; ++i) batch[i]->schedlink = batch[i + 1];
    spin_guard l(sched.lock);
    globrunqput_batch(batch[0], batch[n - 1], n);
    return;
  }
}

// Owner P only. next: into runnext (the G it displaces goes to the ring's new end); else at
// the ring's old end, the back of the line (see runq.hpp). False when gp went into an empty
// runnext and the ring got nothing.
// The back-of-the-line half of runqput, inline for yield's after-switch commit.
inline void runqput_back(p* pp, g* gp) {
  // The old end stays sorted by stamp (runq.hpp): no newer than the G it goes behind.
  std::int64_t stamp = pp->tick_ns.load(std::memory_order_relaxed);
  if (g* old = pp->q.peek_oldest()) stamp = std::min(stamp, old->queued_at.load(std::memory_order_relaxed));
  gp->queued_at.store(stamp, std::memory_order_relaxed);
  if (!pp->q.put_back(gp, sched.nprocs == 1)) [[unlikely]] runqput_slow(pp, gp, true);
}

bool runqput(p* pp, g* gp, bool next) {
  if (!next) {
    runqput_back(pp, gp);
    return true;
  }
  const bool alone = sched.nprocs == 1;
  gp = pp->q.put_next(gp, alone);
  if (!gp) return false;
  gp->queued_at.store(pp->tick_ns.load(std::memory_order_relaxed), std::memory_order_relaxed);
  if (!pp->q.put(gp, alone)) runqput_slow(pp, gp, false);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Idle Ps and Ms (sched.lock held)

void pidleput(p* pp) {
  pp->status.store(pidle, std::memory_order_relaxed);
  pp->link = sched.pidle;
  sched.pidle = pp;
  sched.npidle.fetch_add(1, std::memory_order_seq_cst);
}

// A P leaves the idle list: if sysmon sleeps because every P was idle, it must watch again.
void pidle_taken() {
  sched.npidle.fetch_sub(1, std::memory_order_seq_cst);
  if (sched.sysmon_wait.load(std::memory_order_seq_cst)) {
    sched.sysmon_wait.store(0, std::memory_order_relaxed);
    sched.sysmon_since.store(nanotime(), std::memory_order_relaxed);
    sched.sysmon_note.wakeup();
  }
}

p* pidleget() {
  p* pp = sched.pidle;
  if (pp) {
    sched.pidle = pp->link;
    pp->link = nullptr;
    pidle_taken();
  }
  return pp;
}

// Takes pp itself off the idle list, if it is there.
bool pidleremove(p* pp) {
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

void mput(m* mp) {
  mp->link = sched.midle;
  sched.midle = mp;
  sched.nmidle++;
}

m* mget() {
  m* mp = sched.midle;
  if (mp) {
    sched.midle = mp->link;
    mp->link = nullptr;
    sched.nmidle--;
  }
  return mp;
}

bool mremove(m* mp) {
  for (m** pp = &sched.midle; *pp; pp = &(*pp)->link) {
    if (*pp == mp) {
      *pp = mp->link;
      mp->link = nullptr;
      sched.nmidle--;
      return true;
    }
  }
  return false;
}

}  // namespace

void acquirep(m* mp, p* pp, bool in_signal) {
  mp->curp = pp;
  pp->curm.store(mp, std::memory_order_relaxed);
  pp->status.store(prunning, std::memory_order_release);
  // In the preemption signal handler the interrupted code may be inside mimalloc or hwloc on
  // this very thread: no heap creation and no rebinding there (the M does both the next time
  // it acquires a P the ordinary way).
  if (in_signal) return;
  if (!pp->home && !sched.system_alloc) {
    // First M to hold this P becomes its home: the heap is created (and so owned) here.
    pp->home = mp;
    pp->heap = reinterpret_cast<mi_heap_s*>(mi_heap_new());
    mp->homes.push_back(pp);
  }
  if (pp->cpu >= 0 && mp->bound_cpu != pp->cpu) {
    bind_thread(pp->cpu);
    mp->bound_cpu = pp->cpu;
  }
}

p* releasep(m* mp) {
  p* pp = mp->curp;
  pp->curm.store(nullptr, std::memory_order_relaxed);
  mp->curp = nullptr;
  return pp;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Ms

void mstart(m* mp);
void startm(p* pp, bool spinning);

[[noreturn]] void die_threads() {
  std::fprintf(stderr, "gort: fatal: the program needs more than config.max_threads = %u OS threads "
               "(Ms in blocking calls, locked to Gs or held for preemption); raise max_threads or "
               "block less\n", sched.max_threads);
  std::fflush(stderr);
  std::abort();
}

m* newm(p* pp, bool spinning) {
  std::size_t nm;
  {
    spin_guard l(sched.lock);
    nm = sched.ms.size();
  }
  if (nm >= sched.max_threads) die_threads();
  auto* mp = new m;
  mp->spinning = spinning;
  mp->rand = 0x9E3779B97F4A7C15ull * (std::uint64_t{mp->id} + 1) ^ reinterpret_cast<std::uintptr_t>(mp);
  mp->nextp_store(pp);
  {
    spin_guard l(sched.lock);
    mp->id = static_cast<std::uint32_t>(sched.ms.size());
    sched.ms.push_back(mp);
  }
  sched.nmrunning.fetch_add(1);
  try {
    mp->thr = std::thread(mstart, mp);
  } catch (const std::system_error& e) {
    // No thread: undo, give the P back. The work stays queued for the Ms that exist.
    std::fprintf(stderr, "gort: warning: cannot start an M thread: %s\n", e.what());
    sched.nmrunning.fetch_sub(1);
    spin_guard l(sched.lock);
    sched.ms.pop_back();
    if (pp) pidleput(pp);
    if (spinning) sched.nmspinning.fetch_sub(1);
    delete mp;
    return nullptr;
  }
  return mp;
}

// Hands pp (or any idle P) to an idle M, creating one if none is idle. With `spinning`, the
// caller has already counted the new M in nmspinning.
void startm(p* pp, bool spinning) {
  m* nm;
  {
    spin_guard l(sched.lock);
    if (!pp) {
      pp = pidleget();
      if (!pp) {
        if (spinning) sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
    }
    nm = mget();
    if (nm) {
      nm->spinning = spinning;
      nm->nextp_store(pp);
    }
  }
  if (!nm) {
    newm(pp, spinning);
    return;
  }
  nm->park.wakeup();
}

// Takes an idle P for mp, if there is one.
bool acquire_idle_p(m* mp) {
  p* pp;
  {
    spin_guard l(sched.lock);
    pp = pidleget();
  }
  if (pp) acquirep(mp, pp);
  return pp != nullptr;
}

}  // namespace

p* await_p(m* mp) noexcept {
  for (;;) {
    mp->park.clear();  // a wake-up from before this comes with nextp set: checked next
    if (p* pp = mp->nextp_take()) return pp;
    if (sched.state.load(std::memory_order_acquire) != 1) return nullptr;
    mp->park.sleep();
  }
}

namespace {

// Parks the M until startm hands it a P. Returns false on shutdown.
bool stopm(m* mp) {
  {
    spin_guard l(sched.lock);
    mput(mp);
  }
  p* pp = await_p(mp);
  if (pp) acquirep(mp, pp);
  return pp != nullptr;
}

enum class timed_stop { got_p, woke, shutdown };

// Like stopm, but also wakes at `until` or when poked (a new earlier timer). On "woke" the M
// holds no P and is off the idle list.
timed_stop stopm_until(m* mp, std::int64_t until) {
  {
    spin_guard l(sched.lock);
    mput(mp);
  }
  // No park.clear() here: park_idle cleared it before publishing this M as the timer sleeper,
  // and a poke that arrived since (a timer earlier than `until`) must stay set.
  for (;;) {
    if (p* pp = mp->nextp_take()) {
      acquirep(mp, pp);
      return timed_stop::got_p;
    }
    if (sched.state.load(std::memory_order_acquire) != 1) return timed_stop::shutdown;
    mp->park.sleep_until(until);  // woken, poked or timed out: the checks below tell which
    spin_guard l(sched.lock);
    if (mp->nextp_peek()) continue;  // claimed by startm meanwhile: take the P above
    mremove(mp);
    return timed_stop::woke;
  }
}

}  // namespace

p* take_idle_p(p* prefer) {
  spin_guard l(sched.lock);
  if (prefer && pidleremove(prefer)) return prefer;
  return pidleget();
}

// Finds a user for a P whose M cannot run Gs on it now (the M is in a blocking call, held for
// preemption, or wired to a G that is not runnable). Work waiting: an M runs it. None: the P
// goes idle, unless nobody at all is looking for work, in which case a spinning M takes it so
// that work arriving later is not left to a P nobody watches.
void handoffp(p* pp) {
  if (!pp->q.empty() || sched.nglobal.load(std::memory_order_acquire)) {
    startm(pp, false);
    return;
  }
  std::uint32_t zero = 0;
  if (sched.nmspinning.load(std::memory_order_seq_cst) + sched.npidle.load(std::memory_order_seq_cst) == 0 &&
      sched.nmspinning.compare_exchange_strong(zero, 1, std::memory_order_seq_cst)) {
    startm(pp, true);
    return;
  }
  std::int64_t when = 0;
  bool work;
  {
    spin_guard l(sched.lock);
    work = sched.nglobal.load(std::memory_order_relaxed) != 0;
    if (!work) {
      when = pp->tm.next();
      pidleput(pp);
    }
  }
  if (work) startm(pp, false);
  // Its timers now belong to an idle P: make sure the timer sleeper knows about them.
  else if (when) timer_armed(when);
}

namespace {

// The M of a G locked to it (lock_os_thread) whose G is not runnable: gives its P away and
// sleeps until whoever dequeues the G hands a P back (startlockedm). False on shutdown.
bool stoplockedm(m* mp) {
  if (mp->curp) {
    if (sched.state.load(std::memory_order_acquire) == 1) {
      handoffp(releasep(mp));
    } else {
      spin_guard l(sched.lock);
      pidleput(releasep(mp));
    }
  }
  p* pp = await_p(mp);
  if (pp) acquirep(mp, pp);
  return pp != nullptr;
}

// gp (runnable, just dequeued by mp) may only run on gp->lockedm: mp gives it its own P and
// goes without. The locked M then runs gp itself.
void startlockedm(m* mp, g* gp) {
  m* lm = gp->lockedm;
  p* pp = releasep(mp);
  lm->nextp_store(pp);
  lm->park.wakeup();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Waking

m* getm() noexcept {
  // The asm makes this function opaque: no caller may cache its result across a switch, and
  // the compiler cannot prove it pure and merge two calls. (docs/design.md "Thread-local state")
  asm volatile("" ::: "memory");
  return tls_m;
}

// Starts a spinning M if there is an idle P and nobody is spinning: the spinner will find the
// work just published. No StoreLoad fence here, unlike a textbook Dekker: work published to the
// caller's own P is run by that P even if no M is woken (so nothing is lost, at worst a core
// idles briefly), and the fence would cost every spawn and wake-up. Work published without a P
// (foreign threads) goes through publish_global, which does fence. See docs/design.md.
void wakep() noexcept {
  if (sched.npidle.load(std::memory_order_seq_cst) == 0) return;
  if (sched.nmspinning.load(std::memory_order_seq_cst) != 0) return;
  std::uint32_t zero = 0;
  if (!sched.nmspinning.compare_exchange_strong(zero, 1, std::memory_order_seq_cst)) return;
  startm(nullptr, true);
}

namespace {

// A spinning M that found work stops spinning; if it was the last spinner it wakes another,
// so a burst of new work is picked up by more than one M.
void resetspinning(m* mp) {
  mp->spinning = false;
  if (sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 1) wakep();
}

std::int64_t earliest_timer() {
  std::int64_t best = 0;
  for (p* pp : sched.ps) {
    std::int64_t w = pp->tm.next();
    if (w && (!best || w < best)) best = w;
  }
  return best;
}

// A timer earlier than anything the timer sleeper waits for was armed: wake it, or, if no M
// sleeps on timers, get one going.
void timer_poke(std::int64_t when) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  m* s = sched.timer_sleeper.load(std::memory_order_seq_cst);
  if (s) {
    std::int64_t until = sched.timer_sleep_until.load(std::memory_order_seq_cst);
    if (until == 0 || when < until) s->park.wakeup();
    return;
  }
  wakep();
}

void check_timers(p* pp, std::int64_t& now) {
  std::int64_t next = pp->tm.next();
  if (next == 0) return;
  if (!now) now = nanotime();
  if (next <= now) pp->tm.run(now);
}

g* steal_work(m* mp, p* pp) {
  const std::uint32_t n = sched.nprocs;
  std::int64_t now = 0;
  for (int i = 0; i < steal_tries; ++i) {
    bool last = i == steal_tries - 1;
    std::uint32_t pos = static_cast<std::uint32_t>(fastrand(mp) % n);
    std::uint32_t inc = coprimes[fastrand(mp) % coprimes.size()];
    for (std::uint32_t k = 0; k < n; ++k, pos = (pos + inc) % n) {
      if (sched.state.load(std::memory_order_relaxed) != 1) return nullptr;
      p* p2 = sched.ps[pos];
      if (p2 == pp) continue;
      if (last) {
        // Run the victim's due timers: it may be stuck in a long G, or idle.
        check_timers(p2, now);
        bool inherit;
        if (g* gp = pp->q.get(inherit)) return gp;
        // A running P's runnext is usually the partner its G is about to hand over to (a
        // channel ping-pong, a woken waiter): stealing it at once moves every hand-off across
        // cores. Give the victim a moment to run it itself first, as Go does (runqgrab).
        // And if it scheduled anything meanwhile, it is handing Gs over through runnext right
        // now (a ping-pong pair): what sits there is a fresh hand-off, not a G left waiting,
        // and taking it would split the pair across cores (measured: ~6,000 such steals per
        // million round trips at procs = 2 before this check).
        bool take_next = last;
        if (p2->q.only_next() && p2->status.load(std::memory_order_relaxed) == prunning) {
          const std::uint32_t tick = p2->schedtick.load(std::memory_order_relaxed);
          const std::int64_t until = nanotime() + runnext_grace_ns;
          while (nanotime() < until) cpu_relax();
          if (p2->schedtick.load(std::memory_order_relaxed) != tick) take_next = false;
        }
        if (std::uint32_t got = p2->q.grab(pp->q, take_next)) return pp->q.commit_steal(got);
        continue;
      }
      if (std::uint32_t got = p2->q.grab(pp->q, false)) return pp->q.commit_steal(got);
    }
  }
  return nullptr;
}

// Parks an M that holds no P until it is given one (true) or the runtime stops (false).
// One idle M at a time sleeps with a timeout, until the earliest timer of any P (the timer
// sleeper); the others sleep until startm hands them a P. Every M that goes idle comes through
// here, so an armed timer always has a sleeper watching it.
bool park_idle(m* mp) {
  std::int64_t until = earliest_timer();
  m* none = nullptr;
  // Cleared before this M can be seen as the timer sleeper: a timer armed between the CAS and
  // the sleep (one that `again` below misses) pokes the note, and the poke must not be erased.
  mp->park.clear();
  if (until && sched.timer_sleeper.compare_exchange_strong(none, mp, std::memory_order_seq_cst)) {
    sched.timer_sleep_until.store(until, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    std::int64_t again = earliest_timer();  // a timer armed before we published is seen here
    if (again && again < until) {
      until = again;
      sched.timer_sleep_until.store(until, std::memory_order_seq_cst);
    }
    timed_stop r = until > nanotime() ? stopm_until(mp, until) : timed_stop::woke;
    sched.timer_sleep_until.store(0, std::memory_order_seq_cst);
    sched.timer_sleeper.store(nullptr, std::memory_order_seq_cst);
    if (r == timed_stop::got_p) {
      // Claimed for other work: the timers it watched need a new sleeper (wakep starts an M
      // that becomes one if it finds nothing else to do).
      if (std::int64_t w = earliest_timer()) timer_poke(w);
      return true;
    }
    if (r == timed_stop::shutdown) {
      spin_guard l(sched.lock);
      mremove(mp);
      return false;
    }
    // Deadline reached or poked: take an idle P and run timers, if there is a P to be had.
    if (acquire_idle_p(mp)) return true;
    // Every P is busy: their Ms run their timers at their next schedule. Sleep until a P
    // frees up (its M then becomes the timer sleeper).
  }
  return stopm(mp);
}

// Finds a G to run, blocking the M when there is none. Called on g0 with a P held; returns
// with a P held, or null on shutdown (no P held then).
g* findrunnable(m* mp) {
top:
  if (sched.state.load(std::memory_order_acquire) != 1) {
    if (mp->curp) {
      spin_guard l(sched.lock);
      pidleput(releasep(mp));
    }
    return nullptr;
  }
  p* pp = mp->curp;
  std::int64_t now = nanotime();
  pp->tick_ns.store(now, std::memory_order_relaxed);  // fresh stamps for what this P queues next (runqput)
  check_timers(pp, now);

  bool inherit;
  if (g* gp = pp->q.get(inherit)) return gp;

  if (sched.nglobal.load(std::memory_order_acquire)) {
    spin_guard l(sched.lock);
    if (g* gp = globrunqget(pp, 0)) return gp;
  }

  // Spin (steal) only while spinners are fewer than half the busy Ps: more would burn CPU
  // without finding more work.
  std::uint32_t busy = sched.nprocs - sched.npidle.load(std::memory_order_seq_cst);
  if (mp->spinning || 2 * sched.nmspinning.load(std::memory_order_seq_cst) < busy) {
    if (!mp->spinning) {
      mp->spinning = true;
      sched.nmspinning.fetch_add(1, std::memory_order_seq_cst);
    }
    if (g* gp = steal_work(mp, pp)) return gp;
    // Keep looking for a short while before parking: a producer that outpaces us by a hair
    // would otherwise pay a futex wake-up (microseconds) for every batch it publishes, and we
    // a sleep. Bounded, so an idle runtime still parks within spin_before_park_ns.
    std::int64_t until = nanotime() + spin_before_park_ns;
    do {
      for (int i = 0; i < 64; ++i) cpu_relax();
      if (g* gp = pp->q.get(inherit)) return gp;
      if (sched.nglobal.load(std::memory_order_acquire)) {
        spin_guard l(sched.lock);
        if (g* gp = globrunqget(pp, 0)) return gp;
      }
      if (g* gp = steal_work(mp, pp)) return gp;
    } while (nanotime() < until && sched.state.load(std::memory_order_relaxed) == 1);
  }

  // Nothing. Give the P back, then look once more: work published between our checks and the
  // pidleput would otherwise be missed (its publisher saw no idle P and woke nobody).
  {
    spin_guard l(sched.lock);
    if (sched.nglobal.load(std::memory_order_relaxed)) {
      if (g* gp = globrunqget(pp, 0)) return gp;
    }
    pidleput(releasep(mp));
  }
  bool was_spinning = mp->spinning;
  if (was_spinning) {
    mp->spinning = false;
    sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool work = sched.nglobal.load(std::memory_order_seq_cst) != 0;
  for (p* p2 : sched.ps)
    if (!work && !p2->q.empty()) work = true;
  if (work) {
    if (acquire_idle_p(mp)) {
      if (was_spinning) {
        mp->spinning = true;
        sched.nmspinning.fetch_add(1, std::memory_order_seq_cst);
      }
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
  if (sched.state.load(std::memory_order_relaxed) != 1) return nullptr;
  std::int64_t now = 0;
  if (fire) {
    check_timers(pp, now);
  } else if (std::int64_t w = pp->tm.next(); w && w <= nanotime()) {
    return nullptr;
  }
  bool inherit;
  const bool alone = sched.nprocs == 1;
  if (--pp->global_countdown == 0) {
    // Fairness: the global queue, then the ring's oldest G if it has waited a time slice, so
    // neither spilled Gs nor the ring's old end starve behind a pair of Gs readying each other
    // through runnext, or behind newer Gs (the owner otherwise runs the newest first: runq.hpp).
    pp->global_countdown = global_check_period;
    const std::int64_t tick = nanotime();
    pp->tick_ns.store(tick, std::memory_order_relaxed);
    if (sched.nglobal.load(std::memory_order_relaxed)) {
      spin_guard l(sched.lock);
      if (g* gp = globrunqget(pp, 1)) return gp;
    }
    // At most one such pick per stale_period: in a long fork-join run every deferred sibling
    // is "stale", and each pick opens another subtree whose pending children stay queued
    // until it is done (runq.hpp).
    const std::int64_t stale_period = stale_slices * sched.time_slice_ns;
    if (tick - pp->stale_pick_ns >= stale_period) {
      g* old = pp->q.peek_oldest();
      if (old && tick - old->queued_at.load(std::memory_order_relaxed) >= stale_period) {
        if (g* gp = pp->q.get_oldest(alone)) {
          pp->stale_pick_ns = tick;
          return gp;
        }
      }
    }
  }
  return pp->q.get(inherit, alone);
}

// The common case inline (no timer armed on this P, not the 1-in-61 look): a few loads and the
// run-queue pop, so that yield and park pay no call frame for it; everything else in
// fast_next_full, out of line.
inline g* fast_next(p* pp, bool fire) {
  if (pp->tm.next() != 0 || pp->global_countdown == 1 ||
      sched.state.load(std::memory_order_relaxed) != 1) [[unlikely]]
    return fast_next_full(pp, fire);
  --pp->global_countdown;
  bool inherit;
  return pp->q.get(inherit, sched.nprocs == 1);
}

}  // namespace

void execute_on(m* mp, g* next) {
  mp->curg = next;
  next->curm = mp;
  next->status.store(gstatus::running, std::memory_order_relaxed);
  // A new time slice (sysmon watches this); also cancels a pending preemption request.
  p* pp = mp->curp;
  pp->schedtick.store(pp->schedtick.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
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

// Leaves the running G gp: switches to the next local G or to g0, then runs `tr` on the other
// side. Returns when gp is resumed (never, if dying).
}  // namespace

void leave_to(m* mp, g* gp, g* next, transition tr, bool dying) {
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

namespace {

void leave(g* gp, transition tr, bool dying) {
  m* mp = gp->curm;
  leave_to(mp, gp, next_here(mp, dying), tr, dying);
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

void mexit(m* mp) {
  // Heaps are owned by the thread that created them: this M deletes its Ps' heaps (their
  // live blocks migrate to the default heap and stay valid).
  for (p* pp : mp->homes) {
    mi_heap_delete(reinterpret_cast<mi_heap_t*>(pp->heap));
    pp->heap = nullptr;
  }
  mp->g0.destroy();
  tls_m = nullptr;
  sched.nmrunning.fetch_sub(1);
}

void mstart(m* mp) {
  tls_m = mp;
  mp->tid = static_cast<unsigned long>(pthread_self());
  mp->g0.init_thread();
  mp->eh = thread_eh_globals();
  ensure_altstack();
  if (p* pp = mp->nextp_take()) acquirep(mp, pp, false);
  schedule(mp);  // without a P it parks first (a spare M)
  mexit(mp);
}

// ---------------------------------------------------------------------------------------------
// Gs

// Free lists. A P keeps up to gfree_max dead Gs; past that, half of them move to the global
// list as one chain, and a P that runs out takes one whole chain back. Moving chains, not Gs,
// matters: a dead G's descriptor was last written by the P where it died, so walking a list of
// them one by one is a cache miss per G, which a lock-holding loop would serialise (measured:
// that loop was 65% of g_reserve_new's time in the spawn benchmark at procs = 2). The chain
// to give away is this P's own most recent Gs, whose lines it still holds.
// gfree_lock held.
void gfpush_chain(g* head, std::uint32_t n) {
  head->gfree_next_chain = sched.gfree;
  head->gfree_chain_len = n;
  sched.gfree = head;
  sched.ngfree.fetch_add(n, std::memory_order_relaxed);
}

// gfree_lock held, sched.gfree non-null.
g* gfget_chain(std::uint32_t& n) {
  g* head = sched.gfree;
  n = head->gfree_chain_len;
  sched.gfree = head->gfree_next_chain;
  const std::uint32_t left = sched.ngfree.load(std::memory_order_relaxed) - n;
  sched.ngfree.store(left, std::memory_order_relaxed);
  sched.ngfree_low = std::min(sched.ngfree_low, left);
  return head;
}

void gfput(p* pp, g* gp) {
  gp->status.store(gstatus::idle, std::memory_order_relaxed);
  if (!pp) {
    gp->schedlink = nullptr;
    spin_guard l(sched.gfree_lock);
    gfpush_chain(gp, 1);
    return;
  }
  gp->schedlink = pp->gfree;
  pp->gfree = gp;
  if (++pp->ngfree >= gfree_max) {
    g* head = pp->gfree;
    g* last = head;
    for (std::uint32_t i = 1; i < gfree_max / 2; ++i) last = last->schedlink;
    pp->gfree = last->schedlink;
    pp->ngfree -= gfree_max / 2;
    last->schedlink = nullptr;
    spin_guard l(sched.gfree_lock);
    gfpush_chain(head, gfree_max / 2);
  }
}

g* gfget(p* pp) {
  if (pp && !pp->gfree) {
    if (sched.ngfree.load(std::memory_order_relaxed) == 0) return nullptr;
    spin_guard l(sched.gfree_lock);
    if (!sched.gfree) return nullptr;
    pp->gfree = gfget_chain(pp->ngfree);
  }
  if (pp && pp->gfree) {
    g* gp = pp->gfree;
    pp->gfree = gp->schedlink;
    pp->ngfree--;
    // The next spawn's descriptor (and the frame area below it): start fetching it now.
    if (pp->gfree) __builtin_prefetch(pp->gfree, 1);
    return gp;
  }
  if (!pp) {
    spin_guard l(sched.gfree_lock);
    if (!sched.gfree) return nullptr;
    std::uint32_t n;
    g* gp = gfget_chain(n);
    if (g* rest = gp->schedlink) gfpush_chain(rest, n - 1);
    return gp;
  }
  return nullptr;
}

constexpr std::size_t g_reserve = (sizeof(g) + 63) & ~std::size_t{63};

// Scavenging. The free lists keep a dead G's stack committed, which is what makes spawning
// cheap, but after a spike of a million Gs it would also keep gigabytes resident for good.
// sysmon calls this once per scavenge_period: it frees half of the global list's low-water
// mark over that period (the Gs no spawn needed), beyond a reserve, and each freed G's stack
// goes back to the pool with its memory released (then trim() unmaps chunks left empty).
// Halving rather than freeing the whole surplus at once keeps a program that spikes every few
// seconds from paying for fresh pages every time. Per-P lists (at most gfree_max each) and
// the main G are never touched. Returns the number of Gs freed.

}  // namespace

std::size_t scavenge_gs() noexcept {
  g* chains = nullptr;  // detached chains, linked through gfree_next_chain
  std::uint32_t taken = 0;
  {
    spin_guard l(sched.gfree_lock);
    const std::uint32_t low = sched.ngfree_low;
    const std::uint32_t want = low > scavenge_keep ? (low - scavenge_keep + 1) / 2 : 0;
    while (taken < want && sched.gfree) {
      std::uint32_t k;
      g* h = gfget_chain(k);
      h->gfree_next_chain = chains;
      h->gfree_chain_len = k;
      chains = h;
      taken += k;
    }
    sched.ngfree_low = sched.ngfree.load(std::memory_order_relaxed);
  }
  if (!taken) return 0;
  // Out of allg (the deadlock report and teardown walk it), in batches so that the scheduler
  // never waits long for sched.lock: each removal is a swap with the last entry.
  constexpr std::uint32_t batch = 256;
  g* h = chains;
  g* gp = h;
  while (gp) {
    spin_guard l(sched.lock);
    for (std::uint32_t k = 0; k < batch && gp; ++k) {
      g* last = sched.allg.back();
      sched.allg[gp->allg_index] = last;
      last->allg_index = gp->allg_index;
      sched.allg.pop_back();
      if (!(gp = gp->schedlink) && (h = h->gfree_next_chain)) gp = h;
    }
  }
  for (h = chains; h;) {
    g* next_chain = h->gfree_next_chain;
    for (gp = h; gp;) {
      g* next = gp->schedlink;
      gp->fib.destroy();
      const stack s = gp->stk;
      gp->~g();
      sched.stacks->release(s);
      gp = next;
    }
    h = next_chain;
  }
  sched.stacks->trim();
  return taken;
}

namespace {

g* gcreate() {
  stack s = sched.stacks->get();  // std::bad_alloc on ENOMEM
  void* at = static_cast<char*>(s.top()) - g_reserve;
  g* gp = ::new (at) g;
  gp->stk = s;
  spin_guard l(sched.lock);
  gp->allg_index = static_cast<std::uint32_t>(sched.allg.size());
  sched.allg.push_back(gp);
  return gp;
}

std::uint64_t new_goid(p* pp) {
  if (!pp) return sched.goid_gen.fetch_add(1, std::memory_order_relaxed) + 1;
  if (pp->goid_next == pp->goid_end) {
    pp->goid_next = sched.goid_gen.fetch_add(goid_batch, std::memory_order_relaxed) + 1;
    pp->goid_end = pp->goid_next + goid_batch;
  }
  return pp->goid_next++;
}

[[noreturn]] void die_exception(g* gp, const char* what) {
  std::fprintf(stderr, "gort: G %llu terminated by exception: %s\n",
               static_cast<unsigned long long>(gp->id), what);
  std::fflush(stderr);
  std::terminate();
}

void recycle(g* gp) {
  if (gp->destroy) gp->destroy(gp->frame);
  if (gp->frame_on_heap) free_mem(gp->frame);
  gp->frame = nullptr;
  gp->frame_on_heap = false;
  gp->destroy = nullptr;
  stack_pool::set_owner(gp->stk, 0);
  m* mp = getm();
  gfput(mp ? mp->curp : nullptr, gp);
}

void goexit_commit(fiber* f, void*) {
  g* gp = g_of(f);
  if (gp->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) recycle(gp);
}

[[noreturn]] void goexit(g* gp) {
  gp->nopreempt.store(1, std::memory_order_relaxed);  // runtime code from here on
  if (gp->lockedm) {
    // Still locked (lock_os_thread without unlock): the wiring ends with the G.
    gp->curm->lockedg = nullptr;
    gp->lockedm = nullptr;
    gp->locked = 0;
  }
  if (gp->joinable) {
    std::uintptr_t old = gp->join_state.exchange(1, std::memory_order_acq_rel);
    if (old > 1) wake(reinterpret_cast<waiter*>(old));
  }
  gp->status.store(gstatus::dead, std::memory_order_release);
  leave(gp, {goexit_commit, nullptr}, true);
  std::abort();
}

void g_entry(fiber*, void* arg) {
  g* gp = static_cast<g*>(arg);
  gp->nopreempt.store(0, std::memory_order_relaxed);  // out of the scheduler, into user code
  try {
    gp->body(gp->frame);
  } catch (const std::exception& e) {
    die_exception(gp, e.what());
  } catch (...) {
    die_exception(gp, "an exception not derived from std::exception");
  }
  goexit(gp);
}

void park_commit(fiber* f, void* arg) {
  auto* inner = static_cast<transition*>(arg);
  transition t = *inner;  // lives on the parking G's stack: read before the G can be readied
  g_of(f)->status.store(gstatus::waiting, std::memory_order_release);
  if (t.fn) t.fn(f, t.arg);
}

// arg: the P the G yielded on; the arriving side runs on the same M, still holding it.
void yield_commit(fiber* f, void* arg) {
  g* gp = g_of(f);
  gp->status.store(gstatus::runnable, std::memory_order_relaxed);
  runqput_back(static_cast<p*>(arg), gp);
}

// A cooperative preemption's: to the global queue, as Go's is (see preempt_check).
void yield_global_commit(fiber* f, void*) {
  g* gp = g_of(f);
  gp->status.store(gstatus::runnable, std::memory_order_relaxed);
  globrunqput(gp);
}

}  // namespace

void ready(g* gp, bool next) noexcept {
  m* mp = getm();
  nopreempt_scope np(mp ? mp->curg : nullptr);
  gp->status.store(gstatus::runnable, std::memory_order_release);
  p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    // Into an empty runnext with some P idle: the wake-up waits for the readier's next runtime
    // calls (docs/design.md "Deferred wake-ups"), which usually run the G here first.
    const bool to_ring = runqput(pp, gp, next);
    if (!to_ring && sched.npidle.load(std::memory_order_relaxed) != 0) {
      pp->defer_wake.store(defer_wake_calls, std::memory_order_relaxed);
      pp->defer_tick = pp->schedtick.load(std::memory_order_relaxed);
      return;
    }
  } else {
    globrunqput(gp);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // see wakep
  }
  wakep();
}

void park(const char* reason, transition commit) noexcept {
  // Every caller is a runtime entry point, which holds preemption off already (sched.hpp).
  g* gp = getg();
  assert(gp && gp->nopreempt.load(std::memory_order_relaxed) > 0 && "park: preemption must be off");
  gp->wait_reason = reason;
  leave(gp, {park_commit, &commit}, false);
  gp->wait_reason = nullptr;
}

namespace {
// A yield that found no local G to switch to (next_here returned null): carry on, unless the
// runtime is stopping (then g0 must get control back so the M can exit), or g0 has a G to hand
// to its M, or this G is wired to this M (its yield goes through the queue like anyone's, and
// g0 waits for it). Out of line, so that the common case keeps few values live.
[[gnu::noinline]] void yield_to_g0(m* mp, g* gp, p* pp, transition tr) noexcept {
  if (!mp->handoff && !mp->lockedg && sched.state.load(std::memory_order_relaxed) == 1) {
    // Still a scheduling point, as Go's Gosched is: a new slice, so sysmon does not signal a
    // G that yields often but finds nobody else to run.
    pp->schedtick.store(pp->schedtick.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return;
  }
  leave_to(mp, gp, nullptr, tr, false);
}

[[gnu::always_inline]] inline void yield_via(bool global) noexcept {
  m* mp = getm();
  g* gp = mp ? mp->curg : nullptr;
  if (!gp) {
    std::this_thread::yield();
    return;
  }
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

void wake(waiter* w) noexcept {
  if (g* gp = w->gp) {
    ready(gp);
  } else {
    w->flag.store(1, std::memory_order_release);
    futex_wake(&w->flag, 1);
  }
}

void wait_on(waiter& w, const char* reason, transition unlock) noexcept {
  if (g* gp = getg()) {
    w.gp = gp;
    park(reason, unlock);
    return;
  }
  w.gp = nullptr;
  w.flag.store(0, std::memory_order_relaxed);
  if (unlock.fn) unlock.fn(nullptr, unlock.arg);
  while (w.flag.load(std::memory_order_acquire) == 0) futex_wait(&w.flag, 0);
}

void* alloc(std::size_t n) {
  m* mp = getm();
  nopreempt_scope np(mp ? mp->curg : nullptr);
  p* pp = mp ? mp->curp : nullptr;
  void* r = sched.system_alloc ? std::malloc(n)
            : (pp && pp->home == mp && pp->heap)
                ? mi_heap_malloc(reinterpret_cast<mi_heap_t*>(pp->heap), n)
                : mi_malloc(n);
  if (!r) throw std::bad_alloc();
  return r;
}

void free_mem(void* ptr) noexcept {
  if (sched.system_alloc) std::free(ptr);
  else mi_free(ptr);
}

void timer_armed(std::int64_t when) { timer_poke(when); }

// ---------------------------------------------------------------------------------------------
// G lifecycle (the detail:: entry points of gort.hpp)

g* g_reserve_new(std::size_t size, std::size_t align, void** frame) {
  if (align > 64) throw std::invalid_argument("gort: a G's callable needs alignment <= 64");
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  if (!pp) {
    // A foreign thread: count ourselves in before looking at the state, so shutdown waits for
    // us (it sets the state, then waits for foreign == 0).
    sched.foreign.fetch_add(1, std::memory_order_seq_cst);
    if (sched.state.load(std::memory_order_seq_cst) != 1) {
      sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
      throw std::logic_error("gort: no runtime is running (start one with gort::run)");
    }
  }
  g* gp = gfget(pp);
  if (!gp) {
    try {
      gp = gcreate();
    } catch (...) {
      if (!pp) sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
      throw;
    }
  }
  gp->id = new_goid(pp);
  char* lim = reinterpret_cast<char*>(gp);
  if (size <= sched.frame_budget) {
    gp->frame = reinterpret_cast<void*>((reinterpret_cast<std::uintptr_t>(lim) - size) & ~(std::uintptr_t{align} - 1));
    gp->frame_on_heap = false;
  } else {
    try {
      gp->frame = alloc(size + 64);
    } catch (...) {
      gfput(pp, gp);
      if (!pp) sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
      throw;
    }
    gp->frame_on_heap = true;
  }
  *frame = gp->frame;
  return gp;
}

namespace {
// Makes a reserved G (frame placed) ready to run: its fiber, its hold count, its owner tag.
void g_prepare(g* gp, gort::detail::body_fn body, gort::detail::destroy_fn destroy, bool joinable) noexcept {
  gp->body = body;
  gp->destroy = destroy;
  gp->joinable = joinable;
  gp->refs.store(joinable ? 2 : 1, std::memory_order_relaxed);
  gp->nopreempt.store(1, std::memory_order_relaxed);  // g_entry clears it
  gp->lockedm = nullptr;
  gp->locked = 0;
  gp->join_state.store(0, std::memory_order_relaxed);
  char* top = gp->frame_on_heap ? reinterpret_cast<char*>(gp) : static_cast<char*>(gp->frame);
  char* lo = static_cast<char*>(gp->stk.lo);
  gp->fib.init(lo, static_cast<std::size_t>(top - lo) & ~std::size_t{15}, g_entry, gp);
  stack_pool::set_owner(gp->stk, gp->id);
  gp->status.store(gstatus::runnable, std::memory_order_release);
}
}  // namespace

bool g_launch(g* gp, gort::detail::body_fn body, gort::detail::destroy_fn destroy, bool joinable) noexcept {
  g_prepare(gp, body, destroy, joinable);
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  if (pp) {
    runqput(pp, gp, true);
    wakep();
    // One slot left: the spawner's own, at the back of the line (give_way).
    return pp->q.ring_length() >= runq::size - 1;
  }
  globrunqput(gp);
  std::atomic_thread_fence(std::memory_order_seq_cst);  // see wakep
  wakep();
  sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
  return false;
}

void g_unreserve(g* gp) noexcept {
  if (gp->frame_on_heap) free_mem(gp->frame);
  gp->frame = nullptr;
  gp->frame_on_heap = false;
  gp->destroy = nullptr;
  m* mp = getm();
  p* pp = mp ? mp->curp : nullptr;
  gfput(pp, gp);
  if (!pp) sched.foreign.fetch_sub(1, std::memory_order_seq_cst);
}

namespace {
struct join_ctx {
  g* target;
  waiter* w;
};
void join_commit(fiber*, void* arg) {
  auto* jc = static_cast<join_ctx*>(arg);
  g* target = jc->target;
  waiter* w = jc->w;
  std::uintptr_t expect = 0;
  // After a successful CAS the joiner may be woken (and its stack reused) at any moment: touch
  // nothing of it afterwards.
  if (!target->join_state.compare_exchange_strong(expect, reinterpret_cast<std::uintptr_t>(w),
                                                  std::memory_order_acq_rel))
    wake(w);  // finished meanwhile
}
}  // namespace

void g_join_wait(g* target) {
  if (target->join_state.load(std::memory_order_acquire) == 1) return;
  waiter w;
  join_ctx jc{target, &w};
  wait_on(w, "join", {join_commit, &jc});
}

void g_drop(g* gp) noexcept {
  if (gp->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) recycle(gp);
}

// ---------------------------------------------------------------------------------------------
// Boot and shutdown

namespace {

struct main_ctx {
  gort::detail::body_fn body;
  void* frame;
  note done;
};

void main_body(void* p) {
  auto* mc = *static_cast<main_ctx**>(p);
  mc->body(mc->frame);  // captures its own exceptions (gort.hpp run())
  sched.main_g.store(nullptr);  // Gs left waiting now are abandoned, not dead-locked
  mc->done.wakeup();
}

unsigned procs_from(const config& cfg) {
  unsigned n = cfg.procs;
  if (const char* env = std::getenv("GORT_PROCS"); env && *env) {
    char* end = nullptr;
    unsigned long v = std::strtoul(env, &end, 10);
    if (*end != '\0' || v == 0 || v > 4096)
      throw std::invalid_argument(std::string("gort: GORT_PROCS='") + env +
                                  "' is not a processor count in 1..4096");
    n = static_cast<unsigned>(v);
  }
  if (n > 4096)
    throw std::invalid_argument("gort: config.procs = " + std::to_string(n) +
                                " is out of range (at most 4096)");
  if (n == 0) n = allowed_cpus();
  return n;
}

bool env_bool(const char* name, bool def) {
  const char* env = std::getenv(name);
  if (!env || !*env) return def;
  if (!std::strcmp(env, "1")) return true;
  if (!std::strcmp(env, "0")) return false;
  throw std::invalid_argument(std::string("gort: ") + name + "='" + env + "' is not 0 or 1");
}

// "10ms", "250us", "1s", "500000ns".
std::int64_t env_duration_ns(const char* name, std::int64_t def) {
  const char* env = std::getenv(name);
  if (!env || !*env) return def;
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(env, &end, 10);
  std::int64_t unit = 0;
  if (end != env && errno == 0) {
    if (!std::strcmp(end, "ns")) unit = 1;
    else if (!std::strcmp(end, "us")) unit = 1'000;
    else if (!std::strcmp(end, "ms")) unit = 1'000'000;
    else if (!std::strcmp(end, "s")) unit = 1'000'000'000;
  }
  if (!unit || v > 3'600'000'000'000ull / static_cast<unsigned long long>(unit))
    throw std::invalid_argument(std::string("gort: ") + name + "='" + env +
                                "' is not a duration such as 10ms, 500us or 1s");
  return static_cast<std::int64_t>(v) * unit;
}

void configure_preemption(const config& cfg) {
  std::int64_t slice = env_duration_ns("GORT_TIME_SLICE", cfg.time_slice.count());
  if (slice < 100'000)
    throw std::invalid_argument("gort: time_slice = " + std::to_string(slice) +
                                " ns is too short (at least 100us)");
  sched.time_slice_ns = slice;
  sched.async_preempt = env_bool("GORT_ASYNC_PREEMPT", cfg.async_preempt);
  sched.sysmon_on = env_bool("GORT_SYSMON", cfg.sysmon);
  const std::int64_t scavenge = env_duration_ns("GORT_SCAVENGE_PERIOD", cfg.scavenge_period.count());
  if (scavenge < 0)
    throw std::invalid_argument("gort: scavenge_period = " + std::to_string(scavenge) +
                                " ns is negative (0 turns scavenging off)");
  sched.scavenge_period_ns = scavenge;
  sched.detect_deadlock = env_bool("GORT_DEADLOCK", cfg.detect_deadlock);
  unsigned long maxt = cfg.max_threads;
  if (const char* env = std::getenv("GORT_MAX_THREADS"); env && *env) {
    char* end = nullptr;
    maxt = std::strtoul(env, &end, 10);
    if (*end != '\0' || maxt == 0 || maxt > 1'000'000)
      throw std::invalid_argument(std::string("gort: GORT_MAX_THREADS='") + env +
                                  "' is not a thread count in 1..1000000");
  }
  if (maxt == 0) throw std::invalid_argument("gort: config.max_threads must be at least 1");
  sched.max_threads = static_cast<std::uint32_t>(maxt);
}

void teardown() {
  for (g* gp : sched.allg) gp->fib.destroy();
  sched.allg.clear();
  for (p* pp : sched.ps) {
    pp->tm.clear();
    delete pp;
  }
  sched.ps.clear();
  for (m* mp : sched.ms) delete mp;
  sched.ms.clear();
  delete sched.stacks;
  sched.stacks = nullptr;
  sched.ghead = sched.gtail = nullptr;
  sched.nglobal = 0;
  sched.pidle = nullptr;
  sched.npidle = 0;
  sched.midle = nullptr;
  sched.nmidle = 0;
  sched.nmspinning = 0;
  sched.gfree = nullptr;
  sched.ngfree = 0;
  sched.ngfree_low = 0;
  sched.timer_sleeper = nullptr;
  sched.timer_sleep_until = 0;
  sched.sysmon_wait = 0;
}

}  // namespace

int count_threads() noexcept;
void install_preempt_handler();
void uninstall_preempt_handler();
void sysmon_start();
void sysmon_stop();

void run_main(const config& cfg, gort::detail::body_fn body, void* frame) {
  unsigned n = procs_from(cfg);
  auto pool = std::make_unique<stack_pool>(cfg.stack_size);  // validates stack_size
  int stopped = 0;
  if (!sched.state.compare_exchange_strong(stopped, 3, std::memory_order_acq_rel))
    throw std::logic_error("gort::run: a runtime is already running in this process");

  try {
    configure_preemption(cfg);
  } catch (...) {
    sched.state.store(0);
    throw;
  }
  install_overflow_handler();
  if (sched.async_preempt && sched.sysmon_on) install_preempt_handler();
  sched.cfg = cfg;
  sched.stacks = pool.release();
  sched.stack_size = cfg.stack_size;
  sched.frame_budget = cfg.stack_size / 4;
  sched.nprocs = n;
  coprimes.clear();
  for (std::uint32_t i = 1; i <= n; ++i)
    if (std::gcd(i, n) == 1) coprimes.push_back(i);
  std::vector<int> cpus = place_procs(cfg.pin, n);
  for (unsigned i = 0; i < n; ++i) {
    auto* pp = new p;
    pp->id = i;
    if (!cpus.empty()) pp->cpu = cpus[i];
    sched.ps.push_back(pp);
  }
  for (unsigned i = n; i-- > 1;) pidleput(sched.ps[i]);

  main_ctx mc{body, frame, {}};
  g* mg;
  try {
    mg = gcreate();
  } catch (...) {
    teardown();
    sched.state.store(0);
    throw;
  }
  mg->id = sched.goid_gen.fetch_add(1) + 1;
  mg->frame = reinterpret_cast<char*>(mg) - 64;
  *static_cast<main_ctx**>(mg->frame) = &mc;
  mg->frame_on_heap = false;
  g_prepare(mg, main_body, nullptr, false);
  sched.main_g.store(mg);
  // Threads that are not ours (deadlock.cpp), counted before we create any.
#if GORT_TSAN
  // TSan starts a background thread of its own at the process's first pthread_create. Make
  // that happen now, so that it is counted here and never passes for a new foreign thread.
  std::thread([] {}).join();
#endif
  sched.threads_at_start = count_threads();
  sched.sysmon_since.store(nanotime(), std::memory_order_relaxed);
  runqput(sched.ps[0], mg, false);
  sched.state.store(1, std::memory_order_seq_cst);
  sched.extra_spares = 0;
#if GORT_ASAN
  // Under ASan a starting thread allocates (ASan's thread set-up frees into its quarantine)
  // before it reaches gort, so it needs the allocator's size-class locks. A G held for
  // preemption inside ASan's allocator (preempt.cpp) keeps such a lock, and a hand-off that
  // has to create the M meant to carry a P back to it then hangs at the thread's start: seen
  // once in CI with 100 us slices. Parked spares make hand-offs reuse threads instead; more
  // than this many Gs held at once still creates threads, as without ASan. Started before the
  // first M, so that main_fn sees them all.
  if (sched.sysmon_on && sched.async_preempt && sched.max_threads >= 64)
    for (; sched.extra_spares < 16; ++sched.extra_spares) newm(nullptr, false);
#endif
  if (!newm(sched.ps[0], false)) {
    std::fprintf(stderr, "gort: cannot start the first M\n");
    std::abort();
  }
  // One spare M, parked: the first hand-off (a preemption, a long blocking call) would
  // otherwise wait for a thread to be created, measured at 2-4 ms here.
  if (sched.sysmon_on && sched.max_threads > 1) newm(nullptr, false);
  sysmon_start();

  mc.done.sleep();

  // Shutdown: stop taking foreign work, wait for foreign submitters in flight, then wake every
  // M so it sees the state and exits. Ms running a G exit when that G next enters the
  // scheduler; the G is abandoned.
  sched.state.store(2, std::memory_order_seq_cst);
  sched.sysmon_note.wakeup();  // it stops Gs that are still running (sysmon.cpp)
  while (sched.foreign.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  std::vector<m*> ms;
  {
    spin_guard l(sched.lock);
    ms = sched.ms;
  }
  for (;;) {
    for (m* mp : ms) mp->park.wakeup();
    if (sched.nmrunning.load() == 0) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    spin_guard l(sched.lock);
    ms = sched.ms;
  }
  sysmon_stop();  // before the joins: it may still be signalling a thread on its way out
  for (m* mp : ms)
    if (mp->thr.joinable()) mp->thr.join();
  uninstall_preempt_handler();
  teardown();
  sched.state.store(0, std::memory_order_seq_cst);
}

}  // namespace gort::rt
