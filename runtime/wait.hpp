// gort: blocking with more than one way out — the primitive under channels, select, the
// sync types and every deadline.
//
// A blocked G (or plain OS thread) can be released by a waker, by its deadline, or, in a
// select, by any of several wakers on different objects. Exactly one of them must win, and
// the loser must not touch the blocked party afterwards. So each blocking call owns a
// wait_state whose word moves once out of `pending`:
//
//   pending --claim()--> claimed --finish()--> done        a waker won
//   pending --deadline------------------------> timed_out  the deadline won
//
// A waker that claimed publishes its result (copies a channel value, records the select case
// in `winner`) and then calls finish(). One that fails to claim leaves the waiter alone: it
// was already taken by someone else or timed out, and its owner removes it from wherever it
// is queued when it resumes. The deadline is a timer on the blocked G's P (for a G) or a
// futex timeout (for a thread); block() disarms it, and waits for a fire already under way,
// before returning, so the wait_state can live on the blocked caller's stack.
#pragma once

#include <atomic>
#include <cstdint>

#include "sched.hpp"
#include "timer.hpp"

namespace gort::rt {

struct wait_state {
  enum : std::uint32_t { pending = 0, claimed = 1, timed_out = 2, done = 3 };
  std::atomic<std::uint32_t> v{pending};  // also the futex word of a blocked OS thread
  g* gp = nullptr;                        // the blocked G; null for an OS thread
  void* winner = nullptr;                 // the claimer's note to the woken party
  timer tm;                               // the deadline, for a G
};

// A waker that took a party off a queue (claim, or take_sole) owns it until finish(). A plain
// thread counts itself in sched.foreign for that time: the party may be a G, whose node,
// wait_state and descriptor live on its stack, and a shutdown that abandoned it unmaps that
// stack after waiting for sched.foreign to drain (g_shutdown). The count starts under the
// queue's lock, so a shutdown that takes that lock afterwards (to detach the abandoned G)
// sees it. finish() ends it, on the same thread.
inline void waker_enter() noexcept {
  if (!getm()) sched.foreign.fetch_add(1, std::memory_order_seq_cst);
}

// Waker: takes the exclusive right to release ws. True: publish results, then finish(ws).
inline bool claim(wait_state& ws) noexcept {
  std::uint32_t expect = wait_state::pending;
  if (!ws.v.compare_exchange_strong(expect, wait_state::claimed, std::memory_order_acq_rel))
    return false;
  waker_enter();
  return true;
}

// Waker: takes a party that nobody else can race for (no deadline, not a select) without a
// claim; finish(ws) follows as after claim().
inline void take_sole(wait_state&) noexcept { waker_enter(); }

// Releases the party blocked on ws (claimed by the caller). Its memory may vanish as soon as
// this returns, or for a thread, as soon as the state is stored: nothing is read after that.
void finish(wait_state& ws) noexcept;

// For a party that published ws and found it claimed before it could block (ws.gp still null):
// returns once the claimer's finish() has stored `done`, after which the claimer reads nothing
// of ws. Claimers finish after dropping their queue lock (wake_chain), so leaving on `claimed`
// would free the node under a claimer still walking its chain. The wait is the claimer's few
// instructions to finish(); a claimer descheduled by the OS costs a futex sleep, not a spin.
void await_finish(wait_state& ws) noexcept;

// Blocks the calling G or OS thread on ws until finish() (returns true) or until the
// CLOCK_MONOTONIC deadline passes with ws unclaimed (returns false; no waker can claim it
// any more). deadline_ns == 0: no deadline. `unlock` runs once the caller is committed to
// sleeping: after the G is off its stack, or before the thread sleeps. The caller must have
// published ws (where wakers find it) before calling, under the lock that `unlock` releases.
bool block(wait_state& ws, std::int64_t deadline_ns, const char* reason, transition unlock) noexcept;

// Commits for block() and park() that release the lock under which the caller published
// itself: run once the G is off its stack, so a waker that takes the lock to find the caller
// never sees a G still running. The analysis cannot follow a lock released in another function.
inline void unlock_word_commit(fiber*, void* l) noexcept GORT_NO_TSA {
  spin_unlock(*static_cast<std::atomic<std::uint32_t>*>(l));
}
inline void unlock_spinlock_commit(fiber*, void* l) noexcept GORT_NO_TSA { static_cast<spinlock*>(l)->unlock(); }
inline transition unlocking(std::atomic<std::uint32_t>& l) noexcept { return {unlock_word_commit, &l}; }
inline transition unlocking(spinlock& l) noexcept { return {unlock_spinlock_commit, &l}; }

}  // namespace gort::rt
