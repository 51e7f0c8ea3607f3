// gort: the M lifecycle (Go's newm ... mexit): creating Ms and their threads, handing a P to an
// idle or new M (startm, handoffp), parking an M that has nothing to do (stopm), wiring Ms to
// locked Gs (stoplockedm, startlockedm), an M's start and exit, the idle-M list, and the
// runtime's per-M random numbers.
//
// Who creates Ms: boot (the first M and the parked reserve) and, once the runtime runs, only
// the M factory (mfactory.cpp). startm never creates one: with no idle M it gives the P to the
// M of a wired G waiting in the global queue (claim_m), or queues it for the factory. So
// nothing that hands Ps on (sysmon, the Ms, foreign threads waking a P) allocates or waits for
// a lock that thread creation takes and a G stopped by the preemption signal may hold.
//
// Concurrency: an M's own fields are written by its thread; another thread hands it a P only
// through m::nextp (a release store) followed by a wake-up of m::park, and the M takes it with
// an exchange (await_p), so a P is never held by two Ms. The idle-M list is under sched.lock.
#include "m.hpp"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <system_error>
#include <thread>

#include "alloc.hpp"
#include "check.hpp"
#include "mfactory.hpp"
#include "overflow.hpp"
#include "preempt.hpp"
#include "proc.hpp"
#include "timer_sleeper.hpp"

namespace gort::rt {

std::uint64_t fastrand(m* mp) noexcept {
  std::uint64_t x = mp->rand;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  mp->rand = x;
  return x * 0x2545F4914F6CDD1Dull;
}

std::uint64_t fastrand_any() noexcept {
  if (m* mp = getm()) return fastrand(mp);
  // A plain thread: its own state, seeded from its address (distinct per thread).
  thread_local std::uint64_t state = 0;
  if (!state) state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<std::uintptr_t>(&state);
  std::uint64_t x = state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

// ---------------------------------------------------------------------------------------------
// The idle-M list (sched.lock held)

namespace {
// nmidle == length of sched.midle, and no cycle (debug builds; O(idle Ms)).
void check_midle() GORT_REQUIRES(sched.lock) {
#if GORT_DEBUG
  std::uint32_t n = 0;
  for (m* q = sched.midle; q; q = q->link)
    GORT_ASSERT(++n <= sched.ms.size(), "the idle M list has a cycle");
  GORT_ASSERT(n == sched.nmidle, "nmidle = %u but the idle list holds %u Ms", sched.nmidle, n);
#endif
}
}  // namespace

void mput(m* mp) {
  sched.lock.assert_held();
  GORT_ASSERT(!mp->link && !mp->spinning, "M %u goes idle spinning or still linked", mp->id);
  mp->link = sched.midle;
  sched.midle = mp;
  sched.nmidle++;
  check_midle();
}

m* mget() {
  sched.lock.assert_held();
  m* mp = sched.midle;
  if (mp) {
    sched.midle = mp->link;
    mp->link = nullptr;
    sched.nmidle--;
  }
  check_midle();
  return mp;
}

bool mremove(m* mp) {
  sched.lock.assert_held();
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

// ---------------------------------------------------------------------------------------------
// Creating and starting Ms

namespace {

void mstart(m* mp, bool spare);

// The OS refusing threads (RLIMIT_NPROC, kernel.threads-max, memory) is reported once per
// episode, which runs from a failed thread creation to the next successful one. Every hand-off
// that needs a new M tries again meanwhile (sysmon hands a P on every few ticks while Gs sit in
// blocking calls), thousands of times in a run, and each failure would say the same thing.
// Process-wide, like the limits that cause it. Set under sched.lock (stopm reads it there).
std::atomic<bool> refusing{false};

// Spares created whose threads have not yet parked (mstart): a thread's start-up allocates
// (thread_local destructors, the alternate signal stack) and so may wait on a lock a held G
// holds. A spare goes on the idle list only once that is behind it, ready to take a P with
// nothing left to allocate.
std::uint32_t spares_starting GORT_GUARDED_BY(sched.lock) = 0;

void threads_refused(const std::system_error& e, std::size_t have) {
  std::fprintf(stderr,
               "gort: warning: the OS refused a new thread (%s); gort keeps running on the %zu "
               "threads (Ms) it has and warns again only after a thread has been created\n",
               e.code().message().c_str(), have);
}

void thread_created() noexcept {
  if (refusing.load(std::memory_order_relaxed)) refusing.store(false, std::memory_order_relaxed);
}

[[noreturn]] void die_threads() {
  GORT_THROW("the program needs more than config.max_threads = %u OS threads (Ms in blocking "
             "calls, locked to Gs or held for preemption); raise max_threads or block less",
             sched.max_threads);
}

}  // namespace

m* newm(p* pp, spin spinning) {
  std::size_t nm;
  {
    spin_guard l(sched.lock);
    nm = sched.ms.size();
    if (!pp && nm < sched.max_threads) spares_starting++;
  }
  if (nm >= sched.max_threads) die_threads();
  auto* mp = new m;
  mp->watch.resize(sched.nprocs);
  // heap_adopt appends here when the M first holds a P, possibly one handed to it by sysmon
  // while a held G holds the allocator's lock: room for every P now, on the factory.
  mp->homes.reserve(sched.nprocs);
  mp->spinning = spinning == spin::yes;
  mp->nextp_store(pp);
  {
    spin_guard l(sched.lock);
    mp->id = static_cast<std::uint32_t>(sched.ms.push_back_unlocked_growth(mp, sched.lock));
  }
  mp->rand = 0x9E3779B97F4A7C15ull * (std::uint64_t{mp->id} + 1) ^ reinterpret_cast<std::uintptr_t>(mp);
  sched.nmrunning.fetch_add(1);
  try {
    mp->thr = std::thread(mstart, mp, pp == nullptr);
  } catch (const std::system_error& e) {
    // No thread: undo and give the P back. An idle P holds no Gs (pidleput), so its queue goes
    // to the global queue, where the Ms that exist find it when they next look for work.
    // Nobody else holds the P's run queue now: it was on its way to the M that never started.
    sched.nmrunning.fetch_sub(1);
    bool moved = false;
    if (pp) {
      while (g* gp = pp->q.owner().get_oldest()) {
        globrunqput(gp);
        moved = true;
      }
      if (g* gp = pp->q.owner().get()) {  // runnext
        globrunqput(gp);
        moved = true;
      }
    }
    std::size_t have;
    bool first;
    m* idle = nullptr;
    {
      spin_guard l(sched.lock);
      // Not pop_back: another M may have been pushed since this one.
      sched.ms.erase(std::find(sched.ms.begin(), sched.ms.end(), mp));
      have = sched.ms.size();
      first = !refusing.exchange(true, std::memory_order_relaxed);
      if (!pp) spares_starting--;
      // An M that went idle since the caller looked (startm's mget) takes the P and the work
      // instead: it may have checked the global queue before these Gs arrived (stopm).
      if (pp && (moved || sched.nglobal.load(std::memory_order_relaxed) != 0)) idle = mget();
      if (idle) idle->nextp_store(pp);
      else if (pp) pidleput(pp);
      if (spinning == spin::yes && sched.nmspinning.fetch_sub(1) == 0) GORT_THROW("nmspinning went negative");
    }
    delete mp;
    if (idle) idle->park.wakeup();
    if (first) threads_refused(e, have);
    return nullptr;
  }
  thread_created();
  return mp;
}

std::uint32_t nmidle_soon() {
  sched.lock.assert_held();
  return sched.nmidle + spares_starting;
}

namespace {

// Takes the first G in the global queue that is wired to an M (held for preemption, or locked
// to its thread) out of the queue; its M waits for a P (await_p) to run it. O(global queue);
// only when no idle M exists.
g* take_wired() GORT_REQUIRES(sched.lock) { return globrunq_find_wired(true); }

bool has_wired() GORT_REQUIRES(sched.lock) { return globrunq_find_wired(false) != nullptr; }

// pp goes to the M of a wired G, which runs that G alone until the G leaves: Gs queued on pp
// would wait behind it, for ever if it blocks on a lock that one of them holds (a G held inside
// malloc, say, moved to a run queue from the global one). They go to the global queue, where
// any M finds them and where take_wired reaches the wired ones among them. pp belongs to no M
// yet, so nobody else takes from its queue as owner (thieves may still steal).
void spill_local(p* pp) {
  while (g* gp = pp->q.owner().get_oldest()) globrunqput(gp);
  if (g* gp = pp->q.owner().get()) globrunqput(gp);  // runnext
}

}  // namespace

m* claim_m(p* pp) {
  m* mp;
  {
    spin_guard l(sched.lock);
    mp = mget();
    if (mp) mp->spinning = false;
  }
  if (!mp) {
    // The wired Gs queued on pp (held Gs a thief or the global queue's fair share brought
    // there) are candidates too: among them may be the one whose lock everyone waits for.
    spill_local(pp);
    spin_guard l(sched.lock);
    if (g* gp = take_wired()) mp = gp->lockedm;
  }
  mfactory_poke();  // the reserve, for the next G to hold (only wakes a sleeping factory)
  return mp;
}

void reroute_requests() {
  for (;;) {
    p* pp;
    spin s;
    m* nm;
    g* wired = nullptr;
    {
      spin_guard l(sched.lock);
      if (!mfactory_pending()) return;
      nm = mget();
      if (!nm && !(wired = take_wired())) return;
      pp = mfactory_take(&s);
      if (!wired) {
        nm->spinning = s == spin::yes;
      } else {
        nm = wired->lockedm;
        if (s == spin::yes && sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 0)
          GORT_THROW("nmspinning went negative");
      }
    }
    nm->nextp_store(pp);
    nm->park.wakeup();
  }
}

void fail_requests() {
  for (;;) {
    p* pp;
    spin s;
    {
      spin_guard l(sched.lock);
      pp = mfactory_take(&s);
    }
    if (!pp) return;
    spill_local(pp);
    m* idle = nullptr;
    {
      spin_guard l(sched.lock);
      if (s == spin::yes && sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 0)
        GORT_THROW("nmspinning went negative");
      // As in newm's failure path: an M that went idle since may have looked at the global
      // queue before these Gs arrived.
      if (sched.nglobal.load(std::memory_order_relaxed) != 0) idle = mget();
      if (!idle) pidleput(pp);
    }
    if (idle) {
      idle->nextp_store(pp);
      idle->park.wakeup();
    }
  }
}

bool m_available(p* pp) {
  if (!pp->q.empty()) return true;  // claim_m looks for a wired G there: the answer comes then
  spin_guard l(sched.lock);
  return sched.nmidle != 0 || has_wired();
}

bool m_within_limit() {
  spin_guard l(sched.lock);
  return nmidle_soon() != 0 || has_wired() || sched.ms.size() < sched.max_threads;
}

// With spin::yes the caller has already counted the new M in nmspinning.
void startm(p* pp, spin spinning) {
  m* nm;
  g* wired = nullptr;
  bool queued = false;
  {
    spin_guard l(sched.lock);
    if (!pp) {
      pp = pidleget();
      if (!pp) {
        if (spinning == spin::yes && sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 0)
          GORT_THROW("nmspinning went negative");
        return;
      }
    }
    nm = mget();
    if (nm) nm->spinning = spinning == spin::yes;
  }
  if (!nm) {
    // Before looking for a wired G: pp's queue may hold one (see claim_m).
    spill_local(pp);
    spin_guard l(sched.lock);
    if ((wired = take_wired())) {
      // No idle M, but one waits for a P to run its wired G: it takes this one. It does not
      // spin (it has a G to run), so a spinning count made for the M is given back.
      nm = wired->lockedm;
      if (spinning == spin::yes && sched.nmspinning.fetch_sub(1, std::memory_order_seq_cst) == 0)
        GORT_THROW("nmspinning went negative");
    } else if (mfactory_request(pp, spinning)) {
      queued = true;
    }
  }
  if (queued) {
    mfactory_poke();
    return;
  }
  if (!nm) {
    newm(pp, spinning);  // no factory thread (the OS refused it at boot)
    return;
  }
  nm->nextp_store(pp);
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

// ---------------------------------------------------------------------------------------------
// Parking and handing off

p* await_p(m* mp) noexcept {
  for (;;) {
    mp->park.clear();  // a wake-up from before this comes with nextp set: checked next
    if (p* pp = mp->nextp_take()) return pp;
    if (!running()) return nullptr;
    mp->park.sleep();
  }
}

bool stopm(m* mp) {
  p* got = nullptr;
  {
    spin_guard l(sched.lock);
    // While the OS refuses threads, the wake-up meant for queued work may have found no idle M
    // and failed to create one (newm), leaving the work and an idle P behind: this M takes them.
    // The check and newm's failure path both run under sched.lock, so one of them sees the
    // other. Otherwise the wake-up's new M runs the work.
    if (refusing.load(std::memory_order_relaxed) && sched.nglobal.load(std::memory_order_relaxed) != 0)
      got = pidleget();
    if (!got) mput(mp);
  }
  if (got) {
    acquirep(mp, got);
    return true;
  }
  p* pp = await_p(mp);
  if (pp) acquirep(mp, pp);
  return pp != nullptr;
}

// Finds a user for a P whose M cannot run Gs on it now (the M is in a blocking call, held for
// preemption, or wired to a G that is not runnable). Work waiting: an M runs it. None: the P
// goes idle, unless nobody at all is looking for work, in which case a spinning M takes it so
// that work arriving later is not left to a P nobody watches.
void handoffp(p* pp) {
  if (!pp->q.empty() || sched.nglobal.load(std::memory_order_acquire)) {
    startm(pp, spin::no);
    return;
  }
  std::uint32_t zero = 0;
  if (sched.nmspinning.load(std::memory_order_seq_cst) + sched.npidle.load(std::memory_order_seq_cst) == 0 &&
      sched.nmspinning.compare_exchange_strong(zero, 1, std::memory_order_seq_cst)) {
    startm(pp, spin::yes);
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
  if (work) startm(pp, spin::no);
  // Its timers now belong to an idle P: make sure the timer sleeper knows about them.
  else if (when) timer_armed(when);
}

bool stoplockedm(m* mp) {
  if (mp->curp) {
    if (running()) {
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

void startlockedm(m* mp, g* gp) {
  m* lm = gp->lockedm;
  GORT_ASSERT(lm && lm != mp, "G %llu handed to its own M", static_cast<unsigned long long>(gp->id));
  p* pp = releasep(mp);
  lm->nextp_store(pp);
  lm->park.wakeup();
}

// ---------------------------------------------------------------------------------------------
// An M's thread

namespace {

void mexit(m* mp) {
  heaps_release(mp);
  mp->g0.destroy();
  setm(nullptr);
  sched.nmrunning.fetch_sub(1);
}

// spare: started without a P; it parks itself on the idle list once its start-up is done.
void mstart(m* mp, bool spare) {
  setm(mp);
  mp->tid = static_cast<unsigned long>(pthread_self());
  mp->has_cpuclock = pthread_getcpuclockid(pthread_self(), &mp->cpuclock) == 0;
  mp->g0.init_thread();
  mp->eh = thread_eh_globals();
  ensure_altstack();
  // The thread inherited the signal mask of whoever created it (run's caller, sysmon or another
  // M). Unblock what the runtime's handlers need, and nothing else: a program that blocks
  // everything before gort::run to take its signals with sigwait keeps them that way.
  unblock_fault_signals();
  unblock_preempt_signal();
  if (spare) {
    {
      spin_guard l(sched.lock);
      spares_starting--;
      mput(mp);
    }
    reroute_requests();  // the M factory made it for a queued P, if there is one
  }
  if (p* pp = spare ? await_p(mp) : mp->nextp_take()) acquirep(mp, pp);
  if (mp->curp) schedule(mp);  // a spare without a P: the runtime stopped
  mexit(mp);
}

}  // namespace

}  // namespace gort::rt
