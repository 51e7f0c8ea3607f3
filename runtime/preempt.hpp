// gort: asynchronous preemption (preempt.cpp): the SIGURG handler that holds a G overstaying its
// slice on its own M, and sysmon's side of it.
#pragma once

#include "sched.hpp"

namespace gort::rt {

void install_preempt_handler();
void uninstall_preempt_handler();
// Sends mp the preemption signal (sysmon).
void preempt_m(m* mp) noexcept;

}  // namespace gort::rt
