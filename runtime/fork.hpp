// gort: fork() while a runtime runs (fork.cpp).
//
// The child of a fork has one thread, the one that called fork; the runtime's other Ms, sysmon
// and the thread waiting in run() do not exist there, and the locks they held stay held. So
// the child's copy of the runtime is dead (sched.state == run_state::forked): the scheduler
// entry points check for it and fail with a message that names fork (forked_fail), run()
// refuses to start, and exec, _exit and exit work as in any child. fork+exec from a G or a
// plain thread (std::system, popen, posix_spawn, fork then exec) keeps working.
#pragma once

#include "sched.hpp"

namespace gort::rt {

// Installs the pthread_atfork handlers, once per process (run_main calls it).
void install_fork_handlers();

// Whether this process is a child forked while a runtime ran.
inline bool forked() noexcept {
  return sched.state.load(std::memory_order_relaxed) == run_state::forked;
}

// "gort: fatal: <what> in a child process forked while a runtime ran ..." and abort: for the
// noexcept entry points (park, yield, a plain thread's block).
[[noreturn, gnu::cold]] void forked_fail(const char* what) noexcept;

// The message of the std::logic_error thrown by run() and go/spawn in such a child.
[[gnu::cold]] const char* forked_message() noexcept;

}  // namespace gort::rt
