// gort: the way back from a blocking call (blocking.cpp), shared by gort::blocking and by a G
// found asleep in a plain system call (kernel_wait.cpp).
#pragma once

#include "sched.hpp"

namespace gort::rt {

// mp, holding pp, enters the blocking-call state: pp is marked psyscall with a new
// syscalltick (the word goes to mp->oldp_word) and let go (curp null); sysmon may retake it
// from the status store on. gp is the G making the call (m::callg, for shutdown); the caller
// deals with curg.
void syscall_leave(m* mp, p* pp, g* gp) noexcept;

// mp is in the blocking-call state (no G, no P; oldp and oldp_word name the P the call let
// go) and gp, the G that made the call, runs on mp's thread again: takes oldp back if nobody
// took it (same slice, then a cooperative preemption check), else any idle P (a new slice);
// with none, gp goes to the global queue and leaves mp (it resumes on whichever M runs it).
void syscall_return(m* mp, g* gp) noexcept;

}  // namespace gort::rt
