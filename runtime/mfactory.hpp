// gort: the M factory (mfactory.cpp), Go's template thread: the one thread that creates Ms
// once the runtime runs, so that sysmon, the preemption signal handler and every hand-off
// path never allocate or create a thread themselves.
#pragma once

#include "m.hpp"
#include "sched.hpp"

namespace gort::rt {

// Boot, after the reserve and before the first M: starts the factory thread. If the OS refuses it,
// startm creates Ms itself, as before there was a factory (one warning).
void mfactory_start();
// Shutdown: tells the factory to stop (it creates no M from here on) and wakes it.
void mfactory_quit() noexcept;
// Whether the factory thread is still running (shutdown waits for it with the Ms; deadlock.cpp
// counts it among the runtime's threads).
bool mfactory_alive() noexcept;
// Shutdown, once mfactory_alive() is false: joins the thread.
void mfactory_join();

// startm found no M for pp: queues pp for a new M (spinning: the caller counted that M in
// sched.nmspinning). False when there is no factory: the caller creates the M itself.
// The caller pokes the factory (mfactory_poke) once it has released sched.lock.
bool mfactory_request(p* pp, spin spinning) GORT_REQUIRES(sched.lock);
// Takes a queued P (spinning: whether its M was to spin); null when none.
p* mfactory_take(spin* spinning) GORT_REQUIRES(sched.lock);
// Whether any P is queued (a hint, without the lock).
bool mfactory_pending() noexcept;
// Wakes the factory: a request is queued, or the parked reserve is short. A futex wake-up at
// most; usable from sysmon and from a signal handler.
void mfactory_poke() noexcept;

}  // namespace gort::rt
