// gort: the M lifecycle (m.cpp): creating, starting, parking and waking Ms, the idle-M list,
// handing a P to another M, and an M's exit.
#pragma once

#include <cstdint>

#include "sched.hpp"

namespace gort::rt {

// Whether a newly started M counts as spinning (the caller already counted it in
// sched.nmspinning) or arrives with work to run.
enum class spin : bool { no, yes };

// Creates an M, handing it pp (null: a spare, which parks itself once started). Null (and pp
// back on the idle list) when the OS refuses a thread. Allocates and creates a thread: boot and
// the M factory (mfactory.cpp) only.
m* newm(p* pp, spin spinning);
// Hands pp (or any idle P) to an idle M; with none, to the M of a wired G waiting in the global
// queue, else to a new M that the M factory creates. Never allocates or creates a thread.
void startm(p* pp, spin spinning);
// For sysmon, which must hand a held G's P (pp) on without waiting for a new M: a parked M
// (taken off the idle list), or the M of a wired G (held for preemption or locked) taken off
// the global queue (pp's queued Gs move there first), which is then that M's to run. Null if
// neither exists. Pokes the M factory for the reserve. The caller gives the M pp (nextp_store,
// then park.wakeup()).
m* claim_m(p* pp);
// Whether claim_m(pp) may find an M now. A hint (the answer may change at once).
bool m_available(p* pp);
// Whether a P handed on now finds an M without going over config.max_threads: an idle (or
// starting) M, an M waiting to run its wired G, or room for the factory to create one. A hint.
// sysmon asks before taking a P from a G asleep in a plain system call (kernel_wait.cpp):
// that hand-off is an optimisation, never worth the fatal error of needing more Ms.
bool m_within_limit();
// Hands Ps queued for the M factory to Ms that exist and can take them (parked, or waiting
// for a P to run a wired G in the global queue). sysmon calls it at every look, each new spare
// once parked.
void reroute_requests();
// The OS refused the M factory a thread: the queued Ps go idle, their Gs to the global queue.
void fail_requests();
// Idle Ms, counting spares that are starting and will park (sched.lock held).
std::uint32_t nmidle_soon() GORT_REQUIRES(sched.lock);
// Finds a user for a P whose M cannot run Gs on it now (blocking call, held for preemption,
// wired to a G that is not runnable).
void handoffp(p* pp);
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
