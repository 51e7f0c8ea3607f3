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

}  // namespace gort::rt
