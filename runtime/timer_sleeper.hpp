// gort: arming timers on a P, and the timer sleeper (timer_sleeper.cpp): the one idle M that
// sleeps with a timeout until the earliest timer of any P, and is woken when an earlier one is
// armed. See docs/design.md "Timers" for the lost-wake-up protocol.
#pragma once

#include <cstdint>

#include "sched.hpp"
#include "timer.hpp"

namespace gort::rt {

// Arms t (t->when and t->fire set) on pp's heap and, if it became pp's earliest, makes sure the
// timer sleeper wakes for it. t may fire (on another M) as soon as this returns.
void arm_timer(p* pp, timer* t);
// arm_timer into room made by pp->tm.reserve(): allocates nothing, for a park's commit.
void arm_timer_reserved(p* pp, timer* t) noexcept;
// From inside t's own fire: arms t again on the heap firing it (timers::rearm_in_fire).
void rearm_timer_in_fire(timer* t) noexcept;
// Arms t on the caller's P. On an M without a P (a timer's fire on g0): P 0's heap. On a thread
// that is no M: P 0's heap, counted as a foreign submitter so shutdown waits for it; throws
// std::logic_error naming `who` when no runtime runs.
void arm_timer_here(timer* t, const char* who);
// A P's earliest timer changed to `when` (handoffp, after the P went idle with timers).
void timer_armed(std::int64_t when);
// Parks an M that holds no P until it is given one (true) or the runtime stops (false); one
// such M at a time sleeps with a timeout as the timer sleeper.
bool park_idle(m* mp);
// Runs pp's due timers; `now` is read lazily (0: not read yet) and returned through it.
void check_timers(p* pp, std::int64_t& now);

}  // namespace gort::rt
