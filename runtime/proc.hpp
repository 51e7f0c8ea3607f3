// gort: the scheduler's entry points (proc.cpp): the run queues' glue, idle Ps, readying,
// parking and yielding, switching between Gs, and cooperative preemption.
#pragma once

#include <cstdint>

#include "check.hpp"
#include "sched.hpp"

namespace gort::rt {

// Where a readied or spawned G goes in its P's queue: `next` (runnext: it runs next, with its
// waker's data still in cache) or `back` (the back of the line: timers due at once must run in
// deadline order, behind what is already queued).
enum class queue_at : bool { back, next };

// Makes a waiting G runnable on the current P (a plain thread: the global queue).
void ready(g* gp, queue_at where = queue_at::next) noexcept;
// Queues a G that is runnable already and off its stack (a blocking call that came back to no
// P), as ready does.
void requeue(g* gp, queue_at where) noexcept;
// Blocks the current G; the caller holds preemption off (as every runtime entry point does).
// `commit` runs once the G is off its stack (docs/design.md "Park protocol").
void park(const char* reason, transition commit) noexcept;
void yield_g() noexcept;
// Yields unless the running G is in a no-preemption region (its own or the runtime's).
void give_way() noexcept;
// Cooperative preemption: yields if sysmon asked the running G to (its slice is over). Called
// at runtime entry points that may take long in a loop (channel ops, spawning).
void preempt_check() noexcept;

// Starts a spinning M if there is an idle P and nobody spins (proc.cpp says why no fence).
void wakep() noexcept;

// Run queues. runqput: into pp's queue (pp held by the caller's M). False when gp went into an
// empty runnext and the ring got nothing.
bool runqput(p* pp, g* gp, queue_at where);
void globrunqput(g* gp);
// Takes gp out of the global queue if it is there (O(queue); shutdown only: preempt.cpp).
bool globrunqremove(g* gp) GORT_REQUIRES(sched.lock);
// The first G in the global queue wired to an M (lockedm), which waits for a P to run it;
// unlinked if `take`. A walk of the queue: only when no idle M exists (m.cpp, take_wired).
g* globrunq_find_wired(bool take) GORT_REQUIRES(sched.lock);
// The global queue's length, a hint read without the lock.
inline std::uint32_t global_queue_hint() noexcept {
  return sched.nglobal.load(std::memory_order_acquire);
}

// Idle Ps (sched.lock held).
void pidleput(p* pp) GORT_REQUIRES(sched.lock);
p* pidleget() GORT_REQUIRES(sched.lock);
// `prefer` if it is idle, else any idle P, else null.
p* take_idle_p(p* prefer);
// Whether every P but the caller's is idle or looking for work.
bool others_idle() noexcept;
// Whether a G waiting for a lock should spin once more (round `iter`, from 0) before parking:
// only if another P is running (its G may hold the lock) and nothing waits in the caller's queue.
bool can_spin(int iter) noexcept;
// The number of Ps of the running runtime.
inline std::uint32_t nprocs() noexcept { return sched.nprocs; }

// How an M comes to hold a P: normally, or inside the preemption signal handler, where the
// interrupted code may be inside the allocator or hwloc on this very thread (no heap creation
// and no CPU rebinding then).
enum class acquire_mode : bool { normal, in_signal };
void acquirep(m* mp, p* pp, acquire_mode mode = acquire_mode::normal);
p* releasep(m* mp);

// mp (holding a P) now runs gp, a runnable G: a new time slice.
void execute_on(m* mp, g* gp);
// mp (holding a P again) carries on with gp, which never left it: a blocking call or a hold for
// preemption ended (gp is running, or runnable if sysmon queued it meanwhile). A new slice.
void resume_on(m* mp, g* gp);
// Whether a leaving G ever comes back: `dying` is a G's exit (its stack is recycled).
enum class leave_mode : bool { resumable, dying };
// Switches the running G gp to next (null: mp's g0), running `tr` once gp is off its stack.
void leave_to(m* mp, g* gp, g* next, transition tr, leave_mode mode);
// Leaves the running G gp for the next local G, or g0 (goexit, park).
void leave(g* gp, transition tr, leave_mode mode);
// The scheduler loop on an M's g0: returns when the runtime stops.
void schedule(m* mp);

}  // namespace gort::rt
