// gort: the blocking primitive (wait.hpp): block, finish and the deadline's fire.
#include "wait.hpp"

#include <new>

#include "fork.hpp"
#include "note.hpp"
#include "proc.hpp"
#include "timer_sleeper.hpp"

namespace gort::rt {

namespace {

void deadline_fire(timer* t) {
  auto* ws = static_cast<wait_state*>(t->arg);
  std::uint32_t expect = wait_state::pending;
  if (ws->v.compare_exchange_strong(expect, wait_state::timed_out, std::memory_order_acq_rel))
    ready(ws->gp, queue_at::back);
}

struct block_ctx {
  wait_state* ws;
  transition unlock;
  p* timers_of;  // the P whose heap has room reserved for the deadline, if any
};

// After the G is off its stack: arm the deadline, then let wakers at it. Allocates nothing
// (the room was reserved before the switch).
void block_commit(fiber* f, void* arg) {
  auto* bc = static_cast<block_ctx*>(arg);
  wait_state* ws = bc->ws;
  transition unlock = bc->unlock;  // bc lives on the parked stack: read before unlocking
  if (ws->tm.when) arm_timer_reserved(bc->timers_of, &ws->tm);  // may fire, and ws vanish, at once
  if (unlock.fn) unlock.fn(f, unlock.arg);
}

// Room on pp's timer heap for a deadline; false if memory ran out.
bool reserve_timer(p* pp) noexcept {
  try {
    pp->tm.reserve();
    return true;
  } catch (const std::bad_alloc&) {
    return false;
  }
}

}  // namespace

void finish(wait_state& ws) noexcept {
  if (g* gp = ws.gp) {
    ws.v.store(wait_state::done, std::memory_order_release);
    ready(gp);
  } else {
    std::atomic<std::uint32_t>* word = &ws.v;
    word->store(wait_state::done, std::memory_order_release);
    futex_wake(word, 1);  // harmless if the thread already saw `done` and left
  }
  if (!getm()) foreign_leave();  // counted by claim or take_sole (waker_enter)
}

void await_finish(wait_state& ws) noexcept {
  GORT_ASSERT(ws.gp == nullptr, "await_finish: the party already blocked");
  for (int spins = 0;; ++spins) {
    const std::uint32_t v = ws.v.load(std::memory_order_acquire);
    if (v == wait_state::done) return;
    GORT_ASSERT(v == wait_state::claimed, "await_finish: state neither claimed nor done");
    if (spins < 64) cpu_relax();
    else futex_wait(&ws.v, v);  // finish() with no G stores done, then wakes the word
  }
}

bool block(wait_state& ws, std::int64_t deadline_ns, const char* reason, transition unlock) noexcept {
  // The caller, a runtime entry point, holds preemption off (park checks).
  if (g* gp = getg()) {
    p* pp = getm()->curp;
    if (deadline_ns && !reserve_timer(pp)) {
      // No memory for the deadline's timer: the wait ends at once as if it had passed (nothing
      // can claim ws after this CAS), or, if a waker claimed it already, waits for that waker
      // without a deadline.
      std::uint32_t expect = wait_state::pending;
      if (ws.v.compare_exchange_strong(expect, wait_state::timed_out, std::memory_order_acq_rel)) {
        if (unlock.fn) unlock.fn(nullptr, unlock.arg);
        return false;
      }
      deadline_ns = 0;
    }
    ws.gp = gp;
    ws.tm.when = deadline_ns;
    ws.tm.fire = deadline_fire;
    ws.tm.arg = &ws;
    block_ctx bc{&ws, unlock, pp};
    park(reason, {block_commit, &bc});
    const bool woken = ws.v.load(std::memory_order_acquire) == wait_state::done;
    if (deadline_ns) timer_stop(&ws.tm);  // also waits out a fire that lost to the waker
    return woken;
  }
  ws.gp = nullptr;
  if (forked()) [[unlikely]]
    forked_fail(reason);  // its waker may be a G, which would never run
  if (unlock.fn) unlock.fn(nullptr, unlock.arg);
  for (;;) {
    std::uint32_t v = ws.v.load(std::memory_order_acquire);
    if (v == wait_state::done) return true;
    if (v == wait_state::pending && deadline_ns) {
      if (nanotime() >= deadline_ns) {
        if (ws.v.compare_exchange_strong(v, wait_state::timed_out, std::memory_order_acq_rel))
          return false;
        continue;  // claimed meanwhile: wait for done
      }
      futex_wait_until(&ws.v, v, deadline_ns);
    } else {
      futex_wait(&ws.v, v);
    }
  }
}

}  // namespace gort::rt
