// gort: asynchronous preemption (preempt.cpp): the SIGURG handler that holds a G overstaying its
// slice on its own M, and sysmon's side of it.
#pragma once

#include "sched.hpp"

namespace gort::rt {

// Installs the SIGURG handler, chaining to the action found (signals gort did not send go
// there). Returns whether this call installed it: false if it already was, or if sigaction
// failed (then sched.async_preempt is turned off, with a warning). Not thread-safe: run_main
// calls it before starting any M.
bool install_preempt_handler();
// Puts back the action install_preempt_handler found, unless a handler installed since has
// replaced ours (then both stay). Call only once no M runs.
void uninstall_preempt_handler();
// Unblocks SIGURG in the calling thread if the handler is installed (mstart: an M inherits the
// signal mask of the thread that created it). The rest of the mask is left alone.
void unblock_preempt_signal() noexcept;
// Sends mp the preemption signal (sysmon).
void preempt_m(m* mp) noexcept;

// Shutdown, in the handler, for a G queued globally wired to mp, which waited there for a P
// that never came: runs gp on, on mp with a P (handed over, or an idle one, gp then taken out
// of the queue), so that it reaches its next runtime call and lets go of what it holds. False
// if no P came before shutdown's cut-off (boot.cpp).
bool resume_wired_for_shutdown(m* mp, g* gp) noexcept;
// Shutdown cut gp off where it runs: it did not reach the runtime in time (boot.cpp,
// shutdown_cut_off). It is abandoned mid-code, with whatever it holds; g0 exits the thread.
[[noreturn]] void cut_off(m* mp, g* gp) noexcept;

}  // namespace gort::rt
