// gort: the M lifecycle (m.cpp): creating, starting, parking and waking Ms, the idle-M list,
// handing a P to another M, and an M's exit.
#pragma once

#include <cstdint>

#include "sched.hpp"

namespace gort::rt {

// Whether a newly started M counts as spinning (the caller already counted it in
// sched.nmspinning) or arrives with work to run.
enum class spin : bool { no, yes };

// Creates an M, handing it pp (null: a spare that parks until handed one). Null (and pp back on
// the idle list) when the OS refuses a thread.
m* newm(p* pp, spin spinning);
// Hands pp (or any idle P) to an idle M, creating one if none is idle.
void startm(p* pp, spin spinning);
// Finds a user for a P whose M cannot run Gs on it now (blocking call, held for preemption,
// wired to a G that is not runnable).
void handoffp(p* pp);
// Whether a P handed on now would find an M without going over config.max_threads: an idle M,
// or room for a new one. A hint (the answer may change at once); sysmon asks before it takes a
// P from a G asleep in a plain system call, which is an optimisation, never worth the fatal
// error that needing more than max_threads Ms is.
bool m_available();
// Parks mp until startm hands it a P (true) or the runtime stops (false).
bool stopm(m* mp);
// Sleeps on mp's note until a P is handed to it or the runtime stops (null). Atomics and futex
// calls only: usable in the preemption signal handler.
p* await_p(m* mp) noexcept;
// Takes an idle P for mp, if there is one.
bool acquire_idle_p(m* mp);
// The M of a G locked to it whose G is not runnable: gives its P away and sleeps until the G is
// dequeued somewhere and its P comes back (startlockedm). False on shutdown.
bool stoplockedm(m* mp);
// gp (runnable, just dequeued by mp) may only run on gp->lockedm: mp gives it its own P.
void startlockedm(m* mp, g* gp);

// The idle-M list (sched.lock held).
void mput(m* mp) GORT_REQUIRES(sched.lock);
m* mget() GORT_REQUIRES(sched.lock);
bool mremove(m* mp) GORT_REQUIRES(sched.lock);

// xorshift64*: the runtime's one PRNG, per-M state, no sharing.
std::uint64_t fastrand(m* mp) noexcept;
// For code that may run on a plain thread (no M): a per-thread generator.
std::uint64_t fastrand_any() noexcept;

}  // namespace gort::rt
