// gort: arming timers on a P, and the timer sleeper: the one idle M that sleeps with a timeout
// until the earliest timer of any P, so an armed timer always has an M watching it.
//
// The lost-wake-up protocol (docs/design.md "Timers"), a Dekker pair on seq_cst atomics:
//   sleeper: clear its note; CAS itself into sched.timer_sleeper; store timer_sleep_until;
//            fence; read every P's earliest timer again; sleep until the earliest.
//   armer:   add the timer to its heap (which publishes the heap's `next`); fence; read
//            timer_sleeper and timer_sleep_until; poke the sleeper if the new timer is earlier
//            (or start an M with wakep if there is no sleeper).
// Either the sleeper's second look sees the new timer, or the armer sees the sleeper and pokes
// it; the note was cleared before the sleeper became visible, so a poke is never erased.
#include "timer_sleeper.hpp"

#include <stdexcept>
#include <string>

#include "clock.hpp"
#include "m.hpp"
#include "proc.hpp"

namespace gort::rt {

namespace {

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
  bool claimed = false;
  for (;;) {
    if (p* pp = mp->nextp_take()) {
      acquirep(mp, pp);
      return timed_stop::got_p;
    }
    if (!running()) return timed_stop::shutdown;
    // Woken, poked or timed out: the checks below tell which. Once claimed, only the P ends
    // the wait (the claimer's wake-up follows its nextp store).
    if (claimed) mp->park.sleep();
    else mp->park.sleep_until(until);
    spin_guard l(sched.lock);
    if (mp->nextp_peek()) continue;  // claimed and handed a P meanwhile: take it above
    // Taken off the idle list (mget: startm, claim_m, reroute_requests) but its P not stored
    // yet, which its claimer does after dropping the lock: wait for it. Going on as a free M
    // would put it on the idle list again, still claimed (and spinning, if so claimed).
    if (!mremove(mp)) {
      claimed = true;
      mp->park.clear();
      continue;
    }
    return timed_stop::woke;
  }
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

}  // namespace

void arm_timer(p* pp, timer* t) {
  const std::int64_t when = t->when;  // read first: once armed, t may fire and be reused
  if (pp->tm.add(t)) timer_poke(when);
}

void arm_timer_reserved(p* pp, timer* t) noexcept {
  const std::int64_t when = t->when;
  if (pp->tm.add_reserved(t)) timer_poke(when);
}

void rearm_timer_in_fire(timer* t) noexcept {
  const std::int64_t when = t->when;
  if (timers::rearm_in_fire(t)) timer_poke(when);
}

void arm_timer_here(timer* t, const char* who) {
  if (m* mp = getm()) {
    arm_timer(mp->curp ? mp->curp : sched.ps[0], t);
    return;
  }
  if (!foreign_enter())
    throw std::logic_error(std::string(who) + ": no runtime is running (start one with gort::run)");
  arm_timer(sched.ps[0], t);
  foreign_leave();
}

void timer_armed(std::int64_t when) { timer_poke(when); }

void check_timers(p* pp, std::int64_t& now) {
  std::int64_t next = pp->tm.next();
  if (next == 0) return;
  if (!now) now = nanotime();
  if (next <= now) pp->tm.run(now);
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

}  // namespace gort::rt
