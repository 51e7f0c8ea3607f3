// gort: a G asleep in the kernel outside gort::blocking (kernel_wait.cpp) — a plain read(), a
// futex wait under std::mutex — loses its P as a gort::blocking call does.
#pragma once

#include <cstdint>

#include "sched.hpp"

namespace gort::rt {

// Whether the interrupted context `uctx` (the preemption handler's third argument) sits in a
// system call: at a syscall/svc instruction (a call the signal interrupted and the kernel will
// restart, or one about to be made) or just after one that returned EINTR.
bool in_syscall(const void* uctx) noexcept;

// Handler: puts mp, which holds pp and runs gp in gp's own code, in the blocking-call state
// with gp still current (m::kstate), and pokes sysmon to retake pp.
void kernel_enter(m* mp, g* gp, p* pp) noexcept;

// The G of mp, in kstate, made a runtime call (getm): it takes a P again as blocking_exit does,
// and may go on on another M. Returns the calling thread's M afterwards. A no-op returning mp
// if the state was already taken back.
m* kernel_rejoin(m* mp) noexcept;

// Handler, on sysmon's request: mp's G, in kstate, runs its own code again. It takes a P back,
// or waits for one in the handler with the G queued and wired to mp (as a held G does).
void kernel_rejoin_in_signal(m* mp, g* gp) noexcept;

// sysmon: mp's CPU time so far, or -1 if unknown (the thread has not started or has ended).
std::int64_t thread_cpu_ns(const m* mp) noexcept;

// sysmon, each look while sched.nkernel > 0: signals every M in kstate whose G has used
// kernel_run_ns of CPU since sysmon last looked at it, so the handler returns it to a P.
// Returns whether any such M ran at all since the last look (sysmon then looks again soon).
bool watch_kernel_ms() noexcept;

}  // namespace gort::rt
